"""Section 5: the job queue, ours against pgqueuer, on the same server.

Trivial jobs (they do nothing) claimed and completed per second, with 1, 4 and
16 slots (jobs in hand at once), in one run, variants interleaved:

* ``ours``: ``N`` queued rows in ``jobs`` (pre-filled before the clock, the
  factories' shape: one workflow snapshot per user, status ``queued``), spread
  over ``--queue-users`` users so the user row lock of the completion is not the
  bottleneck. ``K`` threads, each in a loop: ``database.jobs.claim`` (the worker's
  claim: one statement, ``FOR UPDATE SKIP LOCKED``, in autocommit), nothing,
  ``database.jobs.finish_job(..., "completed")`` (the worker's completion: one
  statement in autocommit that locks the user, then ends the job if its lease
  holds). One engine made by ``database.session.make_engine`` (the production
  settings: pre-ping at every checkout, statement and lock timeouts), a pool of
  ``K``.
* ``ours, one user``: the same with every job of one user, so every completion
  waits for the same user row lock.
* ``ours, ping after idle``: ``ours`` on an engine that pre-pings only a connection
  idle in the pool for more than a second (``DB_POOL_PRE_PING_IDLE_S=1``, not the
  default): what the pre-ping's round trip costs.
* ``pgqueuer``: its own tables installed by its installer (``Queries.install``,
  what ``pgq install`` runs), the same ``N`` jobs enqueued before the clock (one
  ``enqueue`` call), ``K`` ``QueueManager`` instances (each its own asyncpg
  connection, as its own benchmark runs "workers") with ``batch_size=1`` (one job
  per dequeue; the completion buffer flushes at one entry), ``mode=drain``, an
  entrypoint that does nothing; asyncio on uvloop, as its command line runs.

Throughput is ``N`` over the time from the start (a server timestamp taken when
the consumers are released) to the last completion's commit time as the server
recorded it (``jobs.completed_at``; ``pgqueuer_log.created`` of the last
``successful`` entry), so neither side is charged for shutting down. After every
run each job must have been completed exactly once (ours: ``completed`` with
``attempts = 1``; pgqueuer: its table empty, ``N`` successful log entries). The section
keeps to a time budget: a repetition that would overrun it is skipped, and reported.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bench.ledger import user_uuid_sql
from bench.server import BenchDatabase
from database.config import DatabaseSettings
from database.jobs import Claim, claim, finish_job
from database.session import make_engine

# -- our queue's two calls, as the worker makes them ---------------------------------------
# workers.main claims with database.jobs.claim(engine, "job", ...) and a job ends with
# database.jobs.finish_job(Session(engine), claim, "completed", results=...)
# (workers.execution._finish).

LEASE_SECONDS = 60.0
#: What the worker writes into a completed job (workers.execution): nodes, metrics, models.
RESULTS: dict[str, object] = {"nodes": {}, "metrics": {}, "models": []}


def claim_job(engine: Engine, worker: str) -> Claim | None:
    """Take the next queued job: one statement, in autocommit."""
    return claim(engine, "job", worker, LEASE_SECONDS)


def complete_job(engine: Engine, job: Claim) -> None:
    """End the job as completed: one statement that locks its user, then ends the job
    if the lease holds."""
    with Session(engine) as session:
        finish_job(session, job, "completed", results=RESULTS)


# ----------------------------------------------------------------------------------------

VARIANTS = ("ours", "pgqueuer", "ours_one_user", "ours_ping_after_idle")
ENTRYPOINT = "bench_noop"


@dataclass
class QueueRun:
    variant: str
    slots: int
    rep: int
    jobs: int
    seconds: float  # first release to the last completion, server clock
    jobs_per_s: float
    wall_seconds: float  # until every consumer returned
    server_cpu_us_per_job: float | None
    client_cpu_us_per_job: float
    ok: bool
    detail: str
    # Transactions that completed jobs, per job: ours commits every completion on its
    # own (1.0); pgqueuer's buffer may log several in one statement.
    completion_commits_per_job: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _snapshot(n: str) -> str:
    # The queue's workflow snapshots: ids 3 * 10^12 + n, apart from users and others.
    return user_uuid_sql(f"3000000000000 + ({n})")


def prepare(db: BenchDatabase, n_users: int) -> str:
    """One workflow snapshot for each of users 1..n_users; pgqueuer's tables.

    Returns pgqueuer's version.
    """
    db.script(
        "INSERT INTO workflow_snapshots (id, user_id, snapshot_data)\n"
        f'SELECT {_snapshot("g")}, {user_uuid_sql("g")}, \'{{"nodes": [], "edges": []}}\'\n'
        f"  FROM generate_series(1, {n_users}) AS g ON CONFLICT DO NOTHING;\n"
    )
    import pgqueuer

    async def install() -> None:
        conn = await _asyncpg_connect(db)
        try:
            queries = pgqueuer.Queries.from_asyncpg_connection(conn)
            if not await queries.schema_is_installed():
                await queries.install()
        finally:
            await conn.close()

    _run_async(install())
    return str(pgqueuer.__version__)


def cleanup(db: BenchDatabase) -> None:
    """Remove the queue's jobs, snapshots and pgqueuer's tables."""
    import pgqueuer

    async def uninstall() -> None:
        conn = await _asyncpg_connect(db)
        try:
            await pgqueuer.Queries.from_asyncpg_connection(conn).uninstall()
        finally:
            await conn.close()

    _run_async(uninstall())
    db.script(
        db.truncate_sql("jobs")
        + f"DELETE FROM workflow_snapshots WHERE id >= {_snapshot('0')};\n"
        + "VACUUM ANALYZE jobs;\nVACUUM ANALYZE workflow_snapshots;\n"
    )


# -- ours ---------------------------------------------------------------------------------
def _fill_ours(db: BenchDatabase, n_jobs: int, n_users: int) -> None:
    """``n_jobs`` queued jobs, job g of user 1 + g % n_users, oldest first in g."""
    user = f"1 + g % {n_users}"
    db.script(
        db.truncate_sql("jobs")
        + "INSERT INTO jobs (user_id, workflow_snapshot_id, status, created_at)\n"
        f"SELECT {user_uuid_sql(user)}, {_snapshot(user)}, 'queued',\n"
        f"       now() - make_interval(secs => ({n_jobs} - g) / 1000.0)\n"
        f"  FROM generate_series(1, {n_jobs}) AS g;\n"
        "VACUUM ANALYZE jobs;\nCHECKPOINT;\n"
    )


Outcome = tuple[float, float, float, float, int, str, float]


def _run_ours(db: BenchDatabase, engine: Engine, slots: int, n_jobs: int) -> Outcome:
    """(seconds, wall seconds, server CPU s, client CPU s, completed, problem,
    completion commits per job)."""
    done = [0] * slots
    errors: list[str] = []
    start = threading.Barrier(slots + 1)

    def consume(i: int) -> None:
        worker = f"bench:{i}:{uuid.uuid4().hex[:6]}"
        try:
            start.wait()
            while (job := claim_job(engine, worker)) is not None:
                complete_job(engine, job)
                done[i] += 1
        except Exception as exc:  # noqa: BLE001 - reported, and the run marked failed
            errors.append(f"{type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(slots)]
    for t in threads:
        t.start()
    began = _server_now(db)
    cpu0, client0, wall0 = db.server_cpu_seconds(), time.process_time(), time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall0
    client = time.process_time() - client0
    time.sleep(0.1)
    cpu1 = db.server_cpu_seconds()
    rows = db.sql(
        "SELECT extract(epoch FROM max(completed_at) - %s::timestamptz),"
        " count(*) FILTER (WHERE status = 'completed' AND attempts = 1),"
        " count(*) FILTER (WHERE status <> 'completed' OR attempts <> 1)"
        " FROM jobs",
        (began,),
    )
    seconds, completed, other = rows[0]
    problem = "; ".join(errors[:3])
    if other or completed != n_jobs or sum(done) != n_jobs:
        problem = (
            f"{completed} of {n_jobs} completed once, {other} other, {sum(done)} counted; "
            + problem
        )
    server = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return float(seconds or wall), wall, server or 0.0, client, int(completed), problem, 1.0


# -- pgqueuer -----------------------------------------------------------------------------
async def _asyncpg_connect(db: BenchDatabase) -> Any:
    import asyncpg

    p = db.connect_params()
    return await asyncpg.connect(
        host=p["host"],
        port=int(p.get("port", 5432)),
        user=p["user"],
        password=p.get("password"),
        database=p["database"],
    )


def _run_async(coro: Any) -> Any:
    """Run ``coro`` on uvloop when there is one (as ``pgq run`` does)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _fill_pgqueuer(db: BenchDatabase, n_jobs: int) -> None:
    import pgqueuer

    async def fill() -> None:
        conn = await _asyncpg_connect(db)
        try:
            queries = pgqueuer.Queries.from_asyncpg_connection(conn)
            await conn.execute(
                f"TRUNCATE {queries.qbe.settings.queue_table},"
                f" {queries.qbe.settings.queue_table_log},"
                f" {queries.qbe.settings.statistics_table}"
            )
            await queries.enqueue([ENTRYPOINT] * n_jobs, [None] * n_jobs, [0] * n_jobs)
        finally:
            await conn.close()

    _run_async(fill())
    db.script("VACUUM ANALYZE pgqueuer;\nVACUUM ANALYZE pgqueuer_log;\nCHECKPOINT;\n")


def _run_pgqueuer(db: BenchDatabase, slots: int, n_jobs: int) -> Outcome:
    import pgqueuer
    from pgqueuer.types import QueueExecutionMode

    class BenchQueueManager(pgqueuer.QueueManager):
        """Its start-up check of the schema runs once before the clock, not in it."""

        checked: bool = False

        async def verify_structure(self) -> None:
            if not self.checked:
                await super().verify_structure()
                self.checked = True

    done = [0] * slots
    out: dict[str, Any] = {}

    async def main() -> None:
        conns = [await _asyncpg_connect(db) for _ in range(slots)]
        try:
            managers = []
            for i, conn in enumerate(conns):
                qm = BenchQueueManager(pgqueuer.Queries.from_asyncpg_connection(conn))

                def noop(_job: Any, i: int = i) -> None:
                    done[i] += 1

                async def entry(job: Any, count: Callable[[Any], None] = noop) -> None:
                    count(job)

                qm.entrypoint(ENTRYPOINT)(entry)
                await qm.verify_structure()
                managers.append(qm)
            out["began"] = _server_now(db)
            out["cpu0"] = db.server_cpu_seconds()
            out["client0"], out["wall0"] = time.process_time(), time.perf_counter()
            await asyncio.gather(
                *(
                    qm.run(
                        batch_size=1,
                        mode=QueueExecutionMode.drain,
                        dequeue_timeout=timedelta(seconds=0.2),
                    )
                    for qm in managers
                )
            )
            out["wall"] = time.perf_counter() - out["wall0"]
            out["client"] = time.process_time() - out["client0"]
        finally:
            for conn in conns:
                await conn.close()

    problem = ""
    try:
        _run_async(main())
    except Exception as exc:  # noqa: BLE001 - reported, and the run marked failed
        problem = f"{type(exc).__name__}: {exc}"[:300]
    time.sleep(0.1)
    cpu1 = db.server_cpu_seconds()
    rows = db.sql(
        "SELECT extract(epoch FROM max(created) - %s::timestamptz),"
        " count(*), (SELECT count(*) FROM pgqueuer), count(DISTINCT created)"
        " FROM pgqueuer_log WHERE status = 'successful'",
        (out.get("began"),),
    )
    seconds, completed, left, commits = rows[0]
    if left or completed != n_jobs or sum(done) != n_jobs:
        problem = (
            f"{completed} of {n_jobs} logged successful, {left} left, {sum(done)} run; " + problem
        )
    cpu0 = out.get("cpu0")
    server = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    wall = out.get("wall", float("nan"))
    return (
        float(seconds) if seconds is not None else wall,
        wall,
        server or 0.0,
        out.get("client", float("nan")),
        int(completed),
        problem,
        commits / n_jobs,
    )


# -- the section --------------------------------------------------------------------------
def _server_now(db: BenchDatabase) -> Any:
    return db.sql("SELECT clock_timestamp()")[0][0]


def run(
    db: BenchDatabase,
    *,
    n_jobs: int,
    n_users: int,
    slots: Sequence[int],
    reps: int,
    log: Callable[[str], None],
    budget_seconds: float = 0.0,
) -> tuple[list[QueueRun], dict[str, Any]]:
    """Every variant at every slot count, ``reps`` times, interleaved; the runs and
    the conditions (pgqueuer's version and settings, repetitions skipped).

    With ``budget_seconds`` (0: none) a repetition is started only when one more, as
    long as the slowest so far, still ends within the budget; the first always runs.
    """
    started = time.perf_counter()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    skipped = ""
    slowest = 0.0
    version = prepare(db, n_users)
    settings = DatabaseSettings().model_copy(update={"pool_size": max(slots), "max_overflow": 0})
    engine = make_engine(db.url, settings=settings)
    # The same, with the pre-ping only of a connection idle for more than a second
    # (DB_POOL_PRE_PING_IDLE_S=1, not the default): what the pre-ping's round trip costs.
    ping_engine = make_engine(
        db.url, settings=settings.model_copy(update={"pool_pre_ping_idle_s": 1.0})
    )
    runs: list[QueueRun] = []
    try:
        # Warm every path once (plans, catalog caches, the pools), not measured.
        _fill_ours(db, 200, n_users)
        _run_ours(db, engine, max(slots), 200)
        _fill_ours(db, 200, n_users)
        _run_ours(db, ping_engine, max(slots), 200)
        _fill_pgqueuer(db, 200)
        _run_pgqueuer(db, max(slots), 200)
        for rep in range(reps):
            elapsed = time.perf_counter() - started
            if rep and budget_seconds and elapsed + slowest > budget_seconds:
                skipped = (
                    f"{reps - rep} of {reps} repetitions skipped: one took up to {slowest:.0f} s"
                    f" and {max(0.0, budget_seconds - elapsed):.0f} s of the section's"
                    f" {budget_seconds:.0f} s were left"
                )
                log(f"  queue: {skipped}")
                break
            rep_started = time.perf_counter()
            for k in slots:
                order = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
                for variant in order:
                    if variant == "ours_one_user" and k == 1:
                        continue  # one slot: the same path as "ours", no one to wait for
                    if variant == "pgqueuer":
                        _fill_pgqueuer(db, n_jobs)
                        result = _run_pgqueuer(db, k, n_jobs)
                    elif variant == "ours_ping_after_idle":
                        _fill_ours(db, n_jobs, n_users)
                        result = _run_ours(db, ping_engine, k, n_jobs)
                    else:
                        _fill_ours(db, n_jobs, n_users if variant == "ours" else 1)
                        result = _run_ours(db, engine, k, n_jobs)
                    seconds, wall, server, client, completed, problem, commits = result
                    r = QueueRun(
                        variant=variant,
                        slots=k,
                        rep=rep,
                        jobs=n_jobs,
                        seconds=seconds,
                        jobs_per_s=n_jobs / seconds if seconds > 0 else float("nan"),
                        wall_seconds=wall,
                        server_cpu_us_per_job=server / n_jobs * 1e6 if server else None,
                        client_cpu_us_per_job=client / n_jobs * 1e6,
                        ok=not problem,
                        detail=problem,
                        completion_commits_per_job=commits,
                    )
                    runs.append(r)
                    log(
                        f"  queue {variant:>13} {k:>2} slots rep {rep + 1}:"
                        f" {r.jobs_per_s:7.0f} jobs/s"
                        + (
                            f", server CPU {r.server_cpu_us_per_job:.0f} us/job"
                            if r.server_cpu_us_per_job
                            else ""
                        )
                        + f", client CPU {r.client_cpu_us_per_job:.0f} us/job"
                        + (
                            f", {commits:.2f} completion commits/job"
                            if variant == "pgqueuer"
                            else ""
                        )
                        + (f"  PROBLEM: {problem}" if problem else "")
                    )
            slowest = max(slowest, time.perf_counter() - rep_started)
    finally:
        engine.dispose()
        ping_engine.dispose()
        cleanup(db)
    conditions = {
        "load_average_at_start": load,
        "reps_skipped": skipped,
        "pgqueuer_version": version,
        "pgqueuer_settings": "QueueManager.run(batch_size=1, mode=drain,"
        " dequeue_timeout=0.2 s), max_concurrent_tasks unset, durability durable (its"
        " default: every table logged), asyncpg driver, uvloop",
        "ours_engine": "database.session.make_engine with the production settings:"
        " pre-ping at every checkout,"
        f" statement_timeout and lock_timeout per session, pool_size {max(slots)}",
    }
    return runs, conditions
