"""Sections 1 and 2: charges per second through the ledger trigger.

Three ways to write one charge, each driven by pgbench with a script in
``bench/scripts``:

* ``trigger``: the project's path, one INSERT; ``credit_tx_before_insert`` locks
  the user's row, checks the balance, sets ``balance_after`` and updates
  ``users.credit_balance``.
* ``floor``: the same INSERT with the project's triggers disabled
  (``ALTER TABLE ... DISABLE TRIGGER USER``; foreign-key triggers stay). It keeps
  no balance: the cost of the row alone.
* ``app``: what users write without triggers (triggers disabled on
  ``credit_transactions`` and ``users``): ``BEGIN; SELECT ... FOR UPDATE``;
  INSERT with the balance the application computed; UPDATE users; ``COMMIT``.
* ``single``: the balance kept by hand in one statement, triggers off as for
  ``app``: ``WITH b AS (UPDATE users ... RETURNING credit_balance) INSERT ...``.
  The cheapest correct way to keep the balance, hence the limit for any trigger.

Every run starts from the same state (ledger emptied, every user re-seeded with
``SEED_CREDITS``, ``VACUUM``, ``CHECKPOINT``), variants are interleaved and their
order rotates from one repetition to the next. After every ``trigger`` and
``app`` run the ledger invariant is checked for every user (no lost update:
``credit_balance = sum(amount)``, every ``balance_after`` distinct, the lowest
equal to the balance), and deadlocks are read from ``pg_stat_database``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.server import BenchDatabase

SEED_CREDITS = 1_000_000_000

VARIANTS = ("trigger", "floor", "app", "single")
HOT_VARIANTS = ("trigger", "app")

SCRIPTS = {
    ("distinct", "trigger"): "ledger_trigger.sql",
    ("distinct", "floor"): "ledger_floor.sql",
    ("distinct", "app"): "ledger_app.sql",
    ("distinct", "single"): "ledger_cte.sql",
    ("hot", "trigger"): "hot_trigger.sql",
    ("hot", "app"): "hot_app.sql",
}


@dataclass
class LedgerRun:
    section: str  # "distinct" or "hot"
    variant: str
    clients: int
    rep: int
    tps: float
    transactions: int
    failed: int
    aborted_clients: int
    latency_ms: float
    server_cpu_us_per_tx: float | None
    deadlocks: int
    invariant_ok: bool | None
    invariant_detail: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def user_uuid_sql(expr: str) -> str:
    """The deterministic id of bench user number ``expr``: 32 decimal digits."""
    return f"lpad(({expr})::text, 32, '0')::uuid"


def create_users(db: BenchDatabase, n_users: int) -> None:
    """Users 1..n_users (the distinct-user runs) and n_users + 1 (the hot user)."""
    db.sql(
        "INSERT INTO users (id, email) "
        f"SELECT {user_uuid_sql('g')}, 'bench' || g || '@bench.test' "
        "FROM generate_series(1, %s) AS g",
        (n_users + 1,),
    )
    db.script("VACUUM ANALYZE users;")


def reset_ledger(db: BenchDatabase) -> None:
    """Empty ledger; every user holds SEED_CREDITS, with the entry that says so.

    Written with the triggers off, consistent by construction: one adjustment per
    user with balance_after = credit_balance = SEED_CREDITS. Seeding 10,000 users
    through the trigger would cost a second or two before every run.
    """
    db.script(
        f"""
{db.truncate_sql("credit_transactions")}
ALTER TABLE credit_transactions DISABLE TRIGGER USER;
ALTER TABLE users DISABLE TRIGGER USER;
UPDATE users SET credit_balance = {SEED_CREDITS} WHERE credit_balance <> {SEED_CREDITS};
INSERT INTO credit_transactions (user_id, type, amount, balance_after, description, actor)
SELECT id, 'adjustment', {SEED_CREDITS}, {SEED_CREDITS}, 'bench seed', 'bench' FROM users;
ALTER TABLE credit_transactions ENABLE TRIGGER USER;
ALTER TABLE users ENABLE TRIGGER USER;
VACUUM ANALYZE users;
VACUUM ANALYZE credit_transactions;
"""
    )


def set_triggers(db: BenchDatabase, variant: str) -> None:
    state = "ENABLE" if variant == "trigger" else "DISABLE"
    db.script(
        f"ALTER TABLE credit_transactions {state} TRIGGER USER;\n"
        f"ALTER TABLE users {state} TRIGGER USER;\n"
        "CHECKPOINT;\n"
    )


def check_invariant(db: BenchDatabase) -> tuple[bool, str]:
    """No lost update, for every user: the balance is the sum of the entries,
    each entry saw a balance no other entry saw, and the last one is the balance.

    Every entry after the seed is a charge of 1, so the balance_after values of a
    user must be distinct and the lowest must equal credit_balance.
    """
    rows = db.sql(
        """
SELECT count(*) AS users,
       count(*) FILTER (WHERE u.credit_balance <> l.total) AS sum_mismatch,
       count(*) FILTER (WHERE l.n <> l.n_distinct) AS duplicate_balance_after,
       count(*) FILTER (WHERE l.lowest <> u.credit_balance) AS last_mismatch,
       coalesce(sum(l.n), 0) AS entries
  FROM users AS u
  JOIN (SELECT user_id, sum(amount) AS total, count(*) AS n,
               count(DISTINCT balance_after) AS n_distinct, min(balance_after) AS lowest
          FROM credit_transactions GROUP BY user_id) AS l ON l.user_id = u.id
"""
    )
    users, sum_mm, dup, last_mm, entries = rows[0]
    ok = sum_mm == 0 and dup == 0 and last_mm == 0
    detail = (
        f"{users} users, {entries} entries: {sum_mm} balance/sum mismatches, "
        f"{dup} users with a repeated balance_after, {last_mm} last-balance mismatches"
    )
    return ok, detail


def _deadlocks(db: BenchDatabase) -> int:
    return int(
        db.sql("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")[0][0]
    )


def _rotate(items: Sequence[str], k: int) -> list[str]:
    k %= len(items)
    return list(items[k:]) + list(items[:k])


def run_one(
    db: BenchDatabase,
    section: str,
    variant: str,
    clients: int,
    rep: int,
    *,
    n_users: int,
    seconds: float,
) -> LedgerRun:
    reset_ledger(db)
    set_triggers(db, variant)
    defines: dict[str, Any] = {"hot": n_users + 1}
    if section == "distinct":
        # Client c charges users c+1, c+1+clients, c+1+2*clients, ...: no two
        # clients ever share a user.
        defines.update({"nclients": clients, "per": max(1, n_users // clients)})
    before = _deadlocks(db)
    result = db.pgbench(
        SCRIPTS[(section, variant)], clients=clients, seconds=seconds, defines=defines
    )
    deadlocks = _deadlocks(db) - before
    ok: bool | None = None
    detail = "floor keeps no balance: not checked"
    if variant != "floor":
        ok, detail = check_invariant(db)
        if section == "hot":
            verdict = verify_with_package(db)
            detail += f"; database.verify: {verdict}"
            if verdict.startswith("DRIFT"):
                ok = False
    return LedgerRun(
        section=section,
        variant=variant,
        clients=clients,
        rep=rep,
        tps=result.tps,
        transactions=result.transactions,
        failed=result.failed,
        aborted_clients=result.aborted_clients,
        latency_ms=result.latency_ms,
        server_cpu_us_per_tx=result.cpu_us_per_tx,
        deadlocks=deadlocks,
        invariant_ok=ok,
        invariant_detail=detail,
        seconds=result.seconds,
    )


def run(
    db: BenchDatabase,
    *,
    n_users: int,
    clients: Sequence[int],
    hot_clients: Sequence[int],
    seconds: float,
    reps: int,
    log: Callable[[str], None] = print,
) -> list[LedgerRun]:
    runs: list[LedgerRun] = []
    plan: list[tuple[str, int, Sequence[str]]] = [("distinct", c, VARIANTS) for c in clients]
    plan += [("hot", c, HOT_VARIANTS) for c in hot_clients]
    for rep in range(reps):
        for i, (section, c, variants) in enumerate(plan):
            for variant in _rotate(variants, rep + i):
                t0 = time.perf_counter()
                r = run_one(db, section, variant, c, rep, n_users=n_users, seconds=seconds)
                runs.append(r)
                cpu = (
                    f"{r.server_cpu_us_per_tx:5.0f} us/tx"
                    if r.server_cpu_us_per_tx is not None
                    else ""
                )
                flag = "" if r.invariant_ok in (None, True) else "  INVARIANT BROKEN"
                log(
                    f"  ledger {section:8s} c={c:<3d} rep {rep + 1}/{reps} {variant:8s}"
                    f" {r.tps:8.0f} tps  {cpu}  failed={r.failed} deadlocks={r.deadlocks}"
                    f"  ({time.perf_counter() - t0:.1f}s){flag}"
                )
    return runs


ANATOMY = {
    "floor_insert": "the ledger INSERT, triggers off (the floor)",
    "trigger_insert": "the ledger INSERT through the trigger",
    "floor_consumption": "a consumption (a job's charge) INSERT, triggers off",
    "trigger_consumption": "a consumption INSERT through the trigger",
    "users_update": "the trigger's balance UPDATE of users, alone (users triggers off)",
    "update_no_checks": "the same UPDATE on a copy of users without its CHECK constraints",
    "update_pk_only": "the same UPDATE on a copy of users with only its primary key",
}


def _job_uuid_sql(expr: str) -> str:
    return user_uuid_sql(f"2000000000000 + ({expr})")


def _anatomy_sql(kind: str, n: int, offset: int) -> str:
    u = user_uuid_sql(f"1 + ({offset} + i) % {{users}}")
    j = _job_uuid_sql(f"{offset} + i")
    body = {
        "floor_insert": (
            "INSERT INTO credit_transactions (user_id, type, amount, balance_after, description,"
            f" actor) VALUES ({u}, 'adjustment', -1, 0, 'bench floor', 'bench')"
        ),
        "trigger_insert": (
            "INSERT INTO credit_transactions (user_id, type, amount, description, actor)"
            f" VALUES ({u}, 'adjustment', -1, 'bench charge', 'bench')"
        ),
        "floor_consumption": (
            "INSERT INTO credit_transactions (user_id, type, amount, balance_after, job_id)"
            f" VALUES ({u}, 'consumption', -1, 0, {j})"
        ),
        "trigger_consumption": (
            "INSERT INTO credit_transactions (user_id, type, amount, job_id)"
            f" VALUES ({u}, 'consumption', -1, {j})"
        ),
        "users_update": "UPDATE users SET credit_balance = credit_balance - 1 WHERE id = {u}",
        "update_no_checks": (
            "UPDATE bench_users_no_checks SET credit_balance = credit_balance - 1 WHERE id = {u}"
        ),
        "update_pk_only": (
            "UPDATE bench_users_pk_only SET credit_balance = credit_balance - 1 WHERE id = {u}"
        ),
    }[kind].replace("{u}", u)
    return f"DO $$ BEGIN FOR i IN 1..{n} LOOP {body}; END LOOP; END $$"


def anatomy(
    db: BenchDatabase, *, n_users: int, n: int = 2000, reps: int = 3
) -> dict[str, list[float]]:
    """Server time per statement of the pieces of a charge, in a PL/pgSQL loop.

    One session, ``n`` statements per loop, each on another user; the pieces are
    interleaved and repeated. Server CPU of the backend when the server is ours
    (embedded), wall time otherwise. The copies of users have its rows and
    indexes (``bench_users_no_checks``) or only its primary key.
    """
    db.script(
        """
DROP TABLE IF EXISTS bench_users_no_checks, bench_users_pk_only;
CREATE TABLE bench_users_no_checks (LIKE users INCLUDING DEFAULTS INCLUDING INDEXES);
INSERT INTO bench_users_no_checks SELECT * FROM users;
CREATE TABLE bench_users_pk_only (LIKE users INCLUDING DEFAULTS);
ALTER TABLE bench_users_pk_only ADD PRIMARY KEY (id);
INSERT INTO bench_users_pk_only SELECT * FROM users;
VACUUM ANALYZE bench_users_no_checks;
VACUUM ANALYZE bench_users_pk_only;
"""
    )
    # One job per consumption: job k belongs to user 1 + k % n_users, like the loops'
    # users; each loop of every kind takes its own range of k.
    total = n * reps * len(ANATOMY)
    db.script(
        f"""
INSERT INTO workflow_snapshots (id, user_id, snapshot_data)
SELECT {_job_uuid_sql("1000000000 + g")}, {user_uuid_sql("g")}, '{{}}'::jsonb
  FROM generate_series(1, {n_users}) AS g
    ON CONFLICT DO NOTHING;
INSERT INTO jobs (id, user_id, workflow_snapshot_id, status)
SELECT {_job_uuid_sql("k")}, {user_uuid_sql(f"1 + k % {n_users}")},
       {_job_uuid_sql(f"1000000000 + 1 + k % {n_users}")}, 'completed'
  FROM generate_series(0, {total - 1}) AS k;
ANALYZE jobs;
"""
    )
    reset_ledger(db)
    out: dict[str, list[float]] = {k: [] for k in ANATOMY}
    offset = 0
    with db.connect() as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        proc = None
        if db.embedded:
            import psutil  # noqa: PLC0415

            proc = psutil.Process(pid)
        for rep in range(reps):
            for kind in _rotate(list(ANATOMY), rep):
                on = kind.startswith("trigger")
                state = "ENABLE" if on else "DISABLE"
                conn.execute(f"ALTER TABLE credit_transactions {state} TRIGGER USER")
                conn.execute(f"ALTER TABLE users {state} TRIGGER USER")
                sql = _anatomy_sql(kind, n, offset).replace("{users}", str(n_users))
                offset += n
                t0 = time.perf_counter()
                c0 = sum(proc.cpu_times()[:2]) if proc else 0.0
                conn.execute(sql)
                c1 = sum(proc.cpu_times()[:2]) if proc else 0.0
                spent = (c1 - c0) if proc else time.perf_counter() - t0
                out[kind].append(spent / n * 1e6)
        conn.execute("ALTER TABLE credit_transactions ENABLE TRIGGER USER")
        conn.execute("ALTER TABLE users ENABLE TRIGGER USER")
    db.script("DROP TABLE bench_users_no_checks, bench_users_pk_only;")
    reset_ledger(db)
    return out


def verify_with_package(db: BenchDatabase) -> str:
    """``automl-db verify``'s own check (database.verify), when that module exists."""
    try:
        from database import verify  # noqa: PLC0415
    except ImportError:
        return "database.verify not available"
    from sqlalchemy import create_engine  # noqa: PLC0415

    engine = create_engine(db.url)
    try:
        with engine.connect() as conn:
            report = verify.check(conn)
            return "ok" if report.ok else f"DRIFT: {report.render()[:500]}"
    except Exception as exc:  # report, do not fail the benchmark on another module
        return f"database.verify failed: {exc!r}"[:300]
    finally:
        engine.dispose()
