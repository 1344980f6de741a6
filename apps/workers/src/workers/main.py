"""The worker process: ``uv run automl-worker``.

One process runs up to ``WORKER_SLOTS`` pieces of work at once (threads; a job's
nodes run in a child process of its own, :mod:`workers.runner`). It is
woken by ``LISTEN automl_queue`` (the database notifies when work starts
waiting) and looks at the queue anyway every ``WORKER_POLL_SECONDS``, so a lost
notification costs a delay, never a job. A heartbeat thread renews the leases
of the work it holds. Periodically it recovers expired leases (work of dead
workers) and runs the lifecycle purge.

SIGTERM or SIGINT: no new work is taken; an ingestion in progress finishes, and
a job gives itself back to the queue at once: a node in progress (its child
process, :mod:`workers.runner`) is ended within ``WORKER_WATCH_SECONDS``. A second
signal does not force anything: kill -9 does, and the lease then expires and the
work is recovered (the job's child process dies with the worker).
"""

from __future__ import annotations

import argparse
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
from sqlalchemy import Engine

from database import lifecycle
from database.session import get_engine
from pipeline.storage import Storage, make_storage
from workers import queue, runner
from workers.execution import RunLimits, run_job
from workers.ingestion import run_ingestion
from workers.queue import Claim, LeaseLost
from workers.settings import WorkerSettings

log = logging.getLogger("workers")


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
        self.limits = RunLimits.from_settings(settings)
        self._next_recovery = 0.0
        self._next_purge = time.monotonic() + settings.purge_hours * 3600
        self.outcomes: list[tuple[Claim, str]] = []

    # --- signals and wake-ups ----------------------------------------------------------
    def stop(self, *_: Any) -> None:
        if not self.stopping.is_set():
            log.info("worker %s stopping: finishing or releasing its work", self.name)
        self.stopping.set()
        self._wake.set()

    # --- the loop ---------------------------------------------------------------------
    def run(self, *, until_idle: bool = False) -> None:
        """Work until stopped; with ``until_idle``, return once nothing waits or runs."""
        threads = [threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)]
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
        try:
            while not self.stopping.is_set():
                self._periodic()
                took = self._fill_slots()
                if until_idle and not took and not self._busy():
                    break
                self._wake.wait(self._wait_seconds(until_idle))
                self._wake.clear()
        finally:
            self.stopping.set()
            self._pool.shutdown(wait=True)
            self._finished.set()
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
            with self._lock:
                self._active[claimed.id] = claimed
            future = self._pool.submit(self._work, claimed)
            future.add_done_callback(self._done(claimed))
        return took

    def _done(self, claim: Claim) -> Callable[[Future[str]], None]:
        def callback(future: Future[str]) -> None:
            with self._lock:
                self._active.pop(claim.id, None)
            self._wake.set()

        return callback

    def _work(self, claim: Claim) -> str:
        log.info("%s %s claimed (attempt %d)", claim.kind, claim.id, claim.attempts)
        try:
            if claim.kind == "ingestion":
                outcome = run_ingestion(self.engine, self.storage, claim)
            else:
                outcome = run_job(
                    self.engine,
                    self.storage,
                    claim,
                    lease_seconds=self.settings.lease_seconds,
                    stop=self.stopping,
                    limits=self.limits,
                )
        except LeaseLost as exc:
            log.warning("%s", exc)
            outcome = "lease_lost"
        except Exception:
            # The lease is left to expire: recovery retries or fails (and refunds) it.
            log.exception(
                "%s %s: the worker failed; recovery will take it back", claim.kind, claim.id
            )
            outcome = "error"
        self.outcomes.append((claim, outcome))
        return outcome

    # --- background duties ------------------------------------------------------------
    def _heartbeat(self) -> None:
        """Renew the leases of the work in hand, until the last slot is done."""
        while not self._finished.wait(self.settings.heartbeat):
            with self._lock:
                claims = list(self._active.values())
            if not claims:
                continue
            try:
                lost = queue.renew_all(self.engine, claims, self.settings.lease_seconds)
            except Exception:
                log.warning("heartbeat failed; retrying", exc_info=True)
                continue
            for work_id in lost:
                log.warning("lease of %s lost: another worker took it over", work_id)

    def _listen(self) -> None:
        """LISTEN on the queue's channel; every notification wakes the loop."""
        while not self.stopping.is_set():
            try:
                # A connection of its own, outside the pool: it only waits.
                args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
                with psycopg.connect(*args, **kwargs, autocommit=True) as pg:
                    pg.execute(f"LISTEN {queue.CHANNEL}")
                    self._wake.set()  # whatever was queued while not listening
                    while not self.stopping.is_set():
                        for _ in pg.notifies(timeout=1.0, stop_after=1):
                            self._wake.set()
            except Exception:
                if self.stopping.is_set():
                    return
                log.warning("LISTEN connection lost; polling until it is back", exc_info=True)
                self.stopping.wait(min(5.0, self.settings.poll_seconds))

    def _periodic(self) -> None:
        now = time.monotonic()
        if now >= self._next_recovery:
            self._next_recovery = now + self.settings.recovery_seconds
            try:
                queue.recover_expired(
                    self.engine, self.settings.max_attempts, remove_file=self.storage.delete
                )
            except Exception:
                log.warning("lease recovery failed; will try again", exc_info=True)
        if self.settings.purge_hours and now >= self._next_purge:
            self._next_purge = now + self.settings.purge_hours * 3600
            try:
                report = lifecycle.purge(self.engine, remove_file=self.storage.delete)
                log.info("purge: %s", report.render())
            except Exception:
                log.warning("purge failed; will try at the next period", exc_info=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="automl-worker", description="Run ingestion and training jobs from the database queue."
    )
    parser.add_argument("--slots", type=int, help="jobs at once (default WORKER_SLOTS, 2)")
    parser.add_argument(
        "--until-idle",
        action="store_true",
        help="exit once nothing waits or runs (scripts and tests)",
    )
    parser.add_argument("--name", help="this worker's name in leases (default host:pid:random)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    settings = WorkerSettings()
    if args.slots is not None:
        settings.slots = max(1, args.slots)
    worker = Worker(
        get_engine(),
        make_storage(settings.storage_location(), extra_readable_roots=(settings.data_dir,)),
        settings,
        name=args.name,
    )
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run(until_idle=args.until_idle)
    return 0


def run() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    run()
