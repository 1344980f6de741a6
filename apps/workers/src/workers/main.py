"""The worker process: ``uv run automl-worker``.

One process runs up to ``WORKER_SLOTS`` pieces of work at once (threads; a job's
nodes run in a child process of its own, :mod:`workers.runner`). It is
woken by ``LISTEN automl_queue`` (the database notifies when work starts
waiting) and looks at the queue anyway every ``WORKER_POLL_SECONDS``, so a lost
notification costs a delay, never a job. A heartbeat thread renews the leases
of the work it holds. Periodically it recovers expired leases (work of dead
workers), runs metering's maintenance (request-log partitions ahead, usage
charged per closed hour, expired holds swept: ``WORKER_METERING_SECONDS``) and
the lifecycle purge.

The database may go away (a restart, a network cut): every touch of it by these
loops retries with capped exponential backoff (0.5 s to 30 s) and the worker goes
on when it is back, logging one line when it is lost and one when it is back
(:mod:`workers.outage`). Work in hand that hit the outage is given back to the
queue once the database returns, unless its lease was taken over meanwhile: then
it stops without writing (``LeaseLost``).

Each worker records itself in ``workers`` (``database.worker_registry``): at
start, at every heartbeat, and ``stopped_at`` at a clean exit; the API counts the
live ones.

SIGTERM or SIGINT: no new work is taken; an ingestion in progress finishes, and
a job gives itself back to the queue at once: a node in progress (its child
process, :mod:`workers.runner`) is ended within ``WORKER_WATCH_SECONDS``. A second
signal does not force anything: kill -9 does, and the lease then expires and the
work is recovered (the job's child process dies with the worker).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from database import audit, billing, lifecycle, logs, metering, tracing, verify, worker_registry
from database.session import get_engine
from pipeline.storage import Storage, make_storage
from workers import kinds, metrics, queue, runner
from workers.execution import RunLimits
from workers.outage import Backoff, DatabaseLink, is_outage
from workers.queue import Claim, LeaseLost
from workers.settings import WorkerSettings

log = logging.getLogger("workers")

#: The longest wait between two attempts to reach a lost database.
BACKOFF_CAP = 30.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        engine: Engine,
        storage: Storage,
        settings: WorkerSettings,
        *,
        name: str | None = None,
    ) -> None:
        self.engine = engine
        self.storage = storage
        self.settings = settings
        self.name = name or worker_name()
        self.stopping = threading.Event()
        self._finished = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[uuid.UUID, Claim] = {}
        self._pool = ThreadPoolExecutor(settings.slots, thread_name_prefix="slot")
        self._next_recovery = 0.0
        self._next_purge = time.monotonic() + settings.purge_hours * 3600
        self._next_metering = 0.0
        self._next_reconcile = time.monotonic() + settings.reconcile_hours * 3600
        self._next_alerts = 0.0
        self._alerts_thread: threading.Thread | None = None
        self.outcomes: list[tuple[Claim, str]] = []
        self.db = DatabaseLink(log, cap=BACKOFF_CAP)
        self.limits = RunLimits.from_settings(settings)
        self._context = kinds.Context(
            engine=engine,
            storage=storage,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            stop=self.stopping,
            on_outage=self._outage,
            tier_limits=settings.tier_limits,
            run_limits=self.limits,
        )

    # --- signals and wake-ups ----------------------------------------------------------
    def stop(self, *_: Any) -> None:
        if not self.stopping.is_set():
            log.info("worker %s stopping: finishing or releasing its work", self.name)
        self.stopping.set()
        self._wake.set()

    # --- the loop ---------------------------------------------------------------------
    def run(self, *, until_idle: bool = False) -> None:
        """Work until stopped; with ``until_idle``, return once nothing waits or runs.

        A lost database never ends the loop: it waits (with backoff) and goes on.
        Another error of the loop is logged and retried the same way, except with
        ``until_idle`` (scripts and tests), where it is raised.
        """
        metrics.setup(self.settings.slots)
        heartbeat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        threads = [heartbeat]
        if not until_idle:
            threads.append(threading.Thread(target=self._listen, name="listen", daemon=True))
        runner.warm_up()  # the forkserver of the jobs' processes, before any thread
        for thread in threads:
            thread.start()
        log.info(
            "worker %s started with %d slots of %d threads",
            self.name,
            self.settings.slots,
            self.limits.threads,
        )
        backoff = Backoff(cap=BACKOFF_CAP)
        try:
            while not self.stopping.is_set():
                try:
                    with self.db.touch("looking at the queue"):
                        self._periodic()
                        took = self._fill_slots()
                except Exception as exc:
                    if until_idle and not is_outage(exc):
                        raise
                    delay = backoff.next()
                    if is_outage(exc):
                        # Live workers renew their leases within a heartbeat of the
                        # database's return: recovery waits that long after it, so
                        # it takes back only the work of workers that are gone.
                        self._next_recovery = max(
                            self._next_recovery, time.monotonic() + self.settings.heartbeat
                        )
                        self._pause(delay, self._wake)
                    else:
                        log.exception("the worker's loop failed; again in %.1f s", delay)
                        self.stopping.wait(delay)
                    self._wake.clear()
                    continue
                backoff.reset()
                if until_idle and not took and not self._busy():
                    break
                self._wake.wait(self._wait_seconds(until_idle))
                self._wake.clear()
        finally:
            self.stopping.set()
            self._pool.shutdown(wait=True)
            if self._alerts_thread is not None:  # a round in flight records its attempts
                self._alerts_thread.join(timeout=ALERT_DELIVERY_JOIN_SECONDS)
            self._finished.set()
            heartbeat.join(timeout=self.settings.heartbeat)
            self._deregister()
            log.info("worker %s stopped", self.name)

    def _wait_seconds(self, until_idle: bool) -> float:
        if until_idle:
            return 0.05
        due = self._next_recovery - time.monotonic()
        return max(0.0, min(self.settings.poll_seconds, due))

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._active)

    def _free_slots(self) -> int:
        with self._lock:
            return self.settings.slots - len(self._active)

    def _fill_slots(self) -> bool:
        """Claim work while a slot is free: ingestions first (a user waits on them)."""
        took = False
        while self._free_slots() > 0 and not self.stopping.is_set():
            claimed = queue.claim(
                self.engine, "ingestion", self.name, self.settings.lease_seconds
            ) or queue.claim(self.engine, "job", self.name, self.settings.lease_seconds)
            if claimed is None:
                break
            took = True
            metrics.claimed(claimed)
            with self._lock:
                self._active[claimed.id] = claimed
            future = self._pool.submit(self._logged_work, claimed)
            future.add_done_callback(self._done(claimed))
        return took

    def _done(self, claim: Claim) -> Callable[[Future[str]], None]:
        def callback(future: Future[str]) -> None:
            with self._lock:
                self._active.pop(claim.id, None)
            self._wake.set()

        return callback

    def _logged_work(self, claim: Claim) -> str:
        """``_work`` with every line logged about it carrying its id and this worker's."""
        with logs.scope(worker_id=self.name, job_id=str(claim.id), job_kind=claim.kind):
            return self._work(claim)

    def _work(self, claim: Claim) -> str:
        log.info("%s %s claimed (attempt %d)", claim.kind, claim.id, claim.attempts)
        # The kind's handler (workers.kinds); errors are classed there: transient ones
        # wait and retry, permanent ones fail the work at once, and a lost database
        # comes back here (_outage): the work is given back once the database returns.
        started, outcome = time.monotonic(), "error"
        try:
            with tracing.span(
                f"{claim.kind} work", queue=claim.queue, kind=str(claim.kind), id=str(claim.id)
            ):
                outcome = kinds.dispatch(self._context, claim)
        finally:
            metrics.finished(claim, outcome, time.monotonic() - started)
        self.outcomes.append((claim, outcome))
        return outcome

    def _outage(self, claim: Claim, exc: BaseException) -> str | None:
        """A connection error under the work. If the database answers now, it was the
        work's own error (None: classed as transient, retried with backoff); if not, the
        database went away: wait for it and give the work back, the attempt not counted."""
        if self._database_answers():
            return None
        self.db.lost(exc, f"running {claim.kind} {claim.id}")
        return self._give_back_after_outage(claim)

    def _database_answers(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            if is_outage(exc):
                return False
            raise
        return True

    def _give_back_after_outage(self, claim: Claim) -> str:
        """The database went away under this work. Once it is back, the work goes
        back to the queue (this attempt not counted) if this worker still holds it;
        if its lease was taken over meanwhile, it stops here, writing nothing
        (``lease_lost``). A worker told to stop while the database is still away
        leaves the lease to expire: recovery takes the work back."""
        backoff = Backoff(cap=BACKOFF_CAP)
        while True:
            try:
                with (
                    self.db.touch(f"giving back {claim.kind} {claim.id}"),
                    Session(self.engine) as session,
                ):
                    dropped = queue.release(session, claim)
            except LeaseLost as exc:
                log.warning("%s during the database outage: it is left to its new holder", exc)
                return "lease_lost"
            except Exception as exc:
                if not is_outage(exc):
                    log.exception("%s %s: giving it back failed", claim.kind, claim.id)
                    return "error"
                if self.stopping.is_set():
                    log.warning(
                        "%s %s: stopping while the database is away; its lease will expire"
                        " and recovery takes it back",
                        claim.kind,
                        claim.id,
                    )
                    return "error"
                self._pause(backoff.next(), self.stopping)
                continue
            for location in dropped:
                self.storage.delete(location)
            log.info(
                "%s %s given back to the queue: the database went away under it",
                claim.kind,
                claim.id,
            )
            return "released"

    # --- background duties ------------------------------------------------------------
    def _heartbeat(self) -> None:
        """Record this worker as alive and renew the leases of the work in hand, until
        the last slot is done. The first beat is at once (it registers the worker);
        after a failure the next comes sooner (backoff, at most a heartbeat), so
        leases are renewed as soon as the database is back."""
        backoff = Backoff(initial=min(0.5, self.settings.heartbeat), cap=self.settings.heartbeat)
        while not self._finished.is_set():
            try:
                with self.db.touch("renewing leases"):
                    self._beat()
            except Exception as exc:
                if is_outage(exc):
                    self._pause(backoff.next(), self._finished)
                else:
                    log.warning("heartbeat failed; retrying", exc_info=True)
                    self._finished.wait(backoff.next())
                continue
            backoff.reset()
            self._finished.wait(self.settings.heartbeat)

    def _beat(self) -> None:
        with self.engine.begin() as conn:
            worker_registry.beat(
                conn,
                name=self.name,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                slots=self.settings.slots,
                lease_seconds=self.settings.lease_seconds,
            )
        self._renew()

    def _renew(self) -> None:
        with self._lock:
            claims = list(self._active.values())
        if not claims:
            return
        lost = queue.renew_all(self.engine, claims, self.settings.lease_seconds)
        for work_id in lost:
            log.warning("lease of %s lost: another worker took it over", work_id)

    def _pause(self, seconds: float, stop: threading.Event) -> None:
        """Wait ``seconds`` before trying a lost database again; less when ``stop`` is
        set or another thread found the database back."""
        deadline = time.monotonic() + seconds
        while self.db.down and not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stop.wait(min(left, 0.25))

    def _deregister(self) -> None:
        """A clean exit: no longer counted as alive. Best effort: a worker that
        cannot reach the database is not counted for long anyway."""
        try:
            with self.db.touch("deregistering"), self.engine.begin() as conn:
                worker_registry.stopped(conn, self.name)
        except Exception as exc:
            if not is_outage(exc):
                log.warning("could not record the worker as stopped", exc_info=True)

    def _listen(self) -> None:
        """LISTEN on the queue's channel; every notification wakes the loop."""
        backoff = Backoff(cap=min(BACKOFF_CAP, self.settings.poll_seconds))
        while not self.stopping.is_set():
            try:
                # A connection of its own, outside the pool: it only waits.
                args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
                with self.db.touch("listening"):
                    pg = psycopg.connect(*args, **kwargs, autocommit=True)
                with pg:
                    pg.execute(f"LISTEN {queue.CHANNEL}")
                    backoff.reset()
                    self._wake.set()  # whatever was queued while not listening
                    while not self.stopping.is_set():
                        for _ in pg.notifies(timeout=1.0, stop_after=1):
                            self._wake.set()
            except Exception as exc:
                if self.stopping.is_set():
                    return
                if is_outage(exc):
                    self.db.lost(exc, "listening")
                    self._pause(backoff.next(), self.stopping)
                else:
                    log.warning("LISTEN failed; polling until it is back", exc_info=True)
                    self.stopping.wait(backoff.next())

    def _periodic(self) -> None:
        """Recovery of expired leases and pruning of long-gone workers' rows, then the
        purge, each when due. A lost database is raised (the loop backs off); another
        failure is logged and tried at the next period."""
        now = time.monotonic()
        if now >= self._next_recovery:
            self._next_recovery = now + self.settings.recovery_seconds
            try:
                # Its own leases first: after an outage longer than a lease, this
                # worker must not take back the work it still has in hand.
                self._renew()
                queue.recover_expired(
                    self.engine, self.settings.max_attempts, remove_file=self.storage.delete
                )
                with self.engine.begin() as conn:
                    worker_registry.prune(conn)
                # The audit trail's month partitions, made ahead (nothing to do on
                # most calls: one catalog lookup).
                audit.ensure_partitions(self.engine)
            except Exception as exc:
                if is_outage(exc):
                    raise
                log.warning("lease recovery failed; will try again", exc_info=True)
        if self.settings.metering_seconds and now >= self._next_metering:
            self._next_metering = now + self.settings.metering_seconds
            try:
                done = metering.maintenance(self.engine, self.settings.inference_months_ahead)
                log.info("metering: %s", done.render())
            except Exception as exc:
                if is_outage(exc):
                    self._next_metering = now
                    raise
                log.warning("metering maintenance failed; will try again", exc_info=True)
        if self.settings.purge_hours and now >= self._next_purge:
            self._next_purge = now + self.settings.purge_hours * 3600
            try:
                report = lifecycle.purge(self.engine, remove_file=self.storage.delete)
                log.info("purge: %s", report.render())
            except Exception as exc:
                if is_outage(exc):
                    self._next_purge = now
                    raise
                log.warning("purge failed; will try at the next period", exc_info=True)
        self._billing(now)

    def _deliver_alerts(self) -> None:
        try:
            sent = billing.deliver_alerts(self.engine)
            if sent.delivered or sent.retried or sent.failed:
                log.info("billing alerts: %s", sent)
        except Exception as exc:
            # The loop notices an outage on its own; this round is retried when due.
            log.warning(
                "billing alert delivery failed; will try again%s",
                " (database unreachable)" if is_outage(exc) else "",
                exc_info=not is_outage(exc),
            )

    def _billing(self, now: float) -> None:
        """Deliver the billing alerts' outbox, and the daily verify, recorded as a
        reconciliation run (database.billing), each when due."""
        if self.settings.alert_delivery_seconds and now >= self._next_alerts:
            self._next_alerts = now + self.settings.alert_delivery_seconds
            # In its own thread, one at a time: a slow receiver never holds up the
            # job loop (each delivery round is bounded by its timeout anyway).
            if self._alerts_thread is None or not self._alerts_thread.is_alive():
                self._alerts_thread = threading.Thread(
                    target=self._deliver_alerts, name="billing-alerts", daemon=True
                )
                self._alerts_thread.start()
        if self.settings.reconcile_hours and now >= self._next_reconcile:
            self._next_reconcile = now + self.settings.reconcile_hours * 3600
            try:
                started = dt.datetime.now(dt.UTC)
                report = verify.verify(self.engine)
                billing.record_reconciliation(
                    self.engine, report, source=f"worker:{self.name}", started_at=started
                )
                if not report.ok:
                    log.warning("daily verify: %s", report.render())
            except Exception as exc:
                if is_outage(exc):
                    self._next_reconcile = now
                    raise
                log.warning("daily verify failed; will try at the next period", exc_info=True)


#: How long a stopping worker waits for a billing alert round in flight (it is
#: bounded by deliver_alerts' timeout, 10 s by default).
ALERT_DELIVERY_JOIN_SECONDS = 15.0


def start(args: argparse.Namespace, settings: WorkerSettings) -> int:
    """Run a worker with the parsed options (``workers.cli``) until signalled."""
    logs.setup("worker")
    if args.slots is not None:
        settings.slots = max(1, args.slots)
    worker = Worker(
        get_engine(),
        make_storage(settings.storage_location(), extra_readable_roots=(settings.data_dir,)),
        settings,
        name=args.name,
    )
    logs.bind_process(worker_id=worker.name)
    tracing.configure("automl-worker", worker.engine)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.metrics_host)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run(until_idle=args.until_idle)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``automl-worker`` (``workers.cli``: parsed before the heavy imports)."""
    from workers.cli import worker

    return worker(argv)


def run() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    run()
