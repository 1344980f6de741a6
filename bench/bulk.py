"""Section 3: bulk loads with all triggers on against the project's triggers off.

Two loads of ``rows`` rows each (100,000 by default), each as one
``INSERT ... SELECT generate_series`` and as ``COPY ... FROM STDIN``:

* ``datasets``: rows spread round-robin over all the bench users; the trigger
  that runs is ``users_inc_dataset_count`` (statement level, transition table).
* ``versions``: dataset versions, ten per dataset, one dataset per user, with
  their sizes; the triggers that run are ``users_adjust_storage_insert``
  (statement level) and ``dataset_versions_number``, whose ``WHEN
  (NEW.version_number IS NULL)`` is false because the load gives the numbers
  (with the triggers off it has to). ``versions-auto`` loads the same rows
  without numbers, triggers on, against the same ``off`` load: the price of
  letting the database number them.

"off" is ``ALTER TABLE <loaded table> DISABLE TRIGGER USER``: foreign keys are
still checked. Every load starts from the same state (tables emptied, counters
reset, ``VACUUM``, ``CHECKPOINT``); on and off alternate and their order rotates.
After every load with triggers on, the counters are compared with the tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.ledger import user_uuid_sql
from bench.server import BenchDatabase


@dataclass
class BulkRun:
    load: str  # datasets | versions | versions-auto
    method: str  # statement | copy
    triggers: str  # on | off
    rep: int
    rows: int
    seconds: float
    server_cpu_s: float | None
    counters_ok: bool | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _uuid_text(n: int) -> str:
    s = f"{n:032d}"
    return f"{s[:8]}-{s[8:12]}-{s[12:16]}-{s[16:20]}-{s[20:]}"


def _copy_data(load: str, rows: int, n_users: int) -> bytes:
    lines = []
    if load == "datasets":
        for g in range(rows):
            lines.append(f"{_uuid_text(1 + g % n_users)}\tbench dataset {g}\tloaded by bench\n")
    else:
        for g in range(rows):
            u = _uuid_text(1 + g % n_users)
            lines.append(
                f"{u}\t{u}\t{1 + g // n_users}\tfile{g}.csv\tcsv\t{1000 + g}\t{400 + g}"
                "\t100\t10\tcompleted\n"
            )
    return "".join(lines).encode()


VERSION_COLUMNS = (
    "dataset_id, user_id, version_number, original_filename, original_format,"
    " original_size_bytes, parquet_size_bytes, row_count, column_count, status"
)


def _statement(load: str, rows: int, n_users: int) -> str:
    u = user_uuid_sql(f"1 + g % {n_users}")
    if load == "datasets":
        return (
            f"INSERT INTO datasets (user_id, name, description) "
            f"SELECT {u}, 'bench dataset ' || g, 'loaded by bench' "
            f"FROM generate_series(0, {rows - 1}) AS g"
        )
    if load == "versions":
        return (
            f"INSERT INTO dataset_versions ({VERSION_COLUMNS}) "
            f"SELECT {u}, {u}, 1 + g / {n_users}, 'file' || g || '.csv', 'csv', "
            f"1000 + g, 400 + g, 100, 10, 'completed' "
            f"FROM generate_series(0, {rows - 1}) AS g"
        )
    # versions-auto: the same rows, version_number left to dataset_versions_number
    return (
        "INSERT INTO dataset_versions (dataset_id, user_id, original_filename, original_format,"
        " original_size_bytes, parquet_size_bytes, row_count, column_count, status) "
        f"SELECT {u}, {u}, 'file' || g || '.csv', 'csv', "
        f"1000 + g, 400 + g, 100, 10, 'completed' "
        f"FROM generate_series(0, {rows - 1}) AS g"
    )


def _target(load: str) -> str:
    return "datasets" if load == "datasets" else "dataset_versions"


def reset(db: BenchDatabase, load: str, n_users: int) -> None:
    """Empty datasets and versions, counters back to what the tables say."""
    versions = load != "datasets"
    db.script(
        f"""
{db.truncate_sql("datasets", "dataset_versions")}
ALTER TABLE users DISABLE TRIGGER USER;
ALTER TABLE datasets DISABLE TRIGGER USER;
UPDATE users SET dataset_count = 0, storage_used_bytes = 0
 WHERE dataset_count <> 0 OR storage_used_bytes <> 0;
{
            f'''INSERT INTO datasets (id, user_id, name)
SELECT {user_uuid_sql("g")}, {user_uuid_sql("g")}, 'bench dataset ' || g
  FROM generate_series(1, {n_users}) AS g;
UPDATE users SET dataset_count = 1
 WHERE id IN (SELECT {user_uuid_sql("g")} FROM generate_series(1, {n_users}) AS g);'''
            if versions
            else ""
        }
ALTER TABLE datasets ENABLE TRIGGER USER;
ALTER TABLE dataset_versions ENABLE TRIGGER USER;
ALTER TABLE users ENABLE TRIGGER USER;
VACUUM ANALYZE users;
VACUUM ANALYZE datasets;
VACUUM ANALYZE dataset_versions;
CHECKPOINT;
"""
    )


def counters_consistent(db: BenchDatabase) -> bool:
    rows = db.sql(
        """
SELECT count(*) FROM users AS u
  LEFT JOIN (SELECT user_id, count(*) AS n FROM datasets GROUP BY user_id) AS d
         ON d.user_id = u.id
  LEFT JOIN (SELECT user_id,
                    sum(coalesce(original_size_bytes, 0) + coalesce(parquet_size_bytes, 0)) AS b
               FROM dataset_versions GROUP BY user_id) AS v
         ON v.user_id = u.id
 WHERE u.dataset_count <> coalesce(d.n, 0) OR u.storage_used_bytes <> coalesce(v.b, 0)
"""
    )
    return rows[0][0] == 0


def load_once(
    db: BenchDatabase,
    load: str,
    method: str,
    triggers: str,
    rep: int,
    *,
    rows: int,
    n_users: int,
    copy_data: dict[str, bytes],
) -> BulkRun:
    reset(db, load, n_users)
    if triggers == "off":
        db.script(f"ALTER TABLE {_target(load)} DISABLE TRIGGER USER;")
    with db.connect() as conn:
        cpu0 = db.server_cpu_seconds()
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            if method == "statement":
                cur.execute(_statement(load, rows, n_users))
            else:
                columns = "user_id, name, description" if load == "datasets" else VERSION_COLUMNS
                with cur.copy(f"COPY {_target(load)} ({columns}) FROM STDIN") as cp:
                    cp.write(copy_data[load])
        elapsed = time.perf_counter() - t0
        cpu1 = db.server_cpu_seconds()
    ok: bool | None = None
    if triggers == "off":
        db.script(f"ALTER TABLE {_target(load)} ENABLE TRIGGER USER;")
    else:
        ok = counters_consistent(db)
    return BulkRun(
        load=load,
        method=method,
        triggers=triggers,
        rep=rep,
        rows=rows,
        seconds=elapsed,
        server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        counters_ok=ok,
    )


def run(
    db: BenchDatabase,
    *,
    rows: int,
    n_users: int,
    reps: int,
    log: Callable[[str], None] = print,
) -> list[BulkRun]:
    copy_data = {
        "datasets": _copy_data("datasets", rows, n_users),
        "versions": _copy_data("versions", rows, n_users),
    }
    plan = [
        ("datasets", "statement", ("on", "off")),
        ("datasets", "copy", ("on", "off")),
        ("versions", "statement", ("on", "off")),
        ("versions", "copy", ("on", "off")),
        ("versions-auto", "statement", ("on",)),
    ]

    runs: list[BulkRun] = []
    # Each load starts with an explicit VACUUM; autovacuum waking up on the previous
    # load's table in the middle of the next one is noise, not the cost of a rule.
    tables = ("users", "datasets", "dataset_versions")
    db.script("".join(f"ALTER TABLE {t} SET (autovacuum_enabled = off);\n" for t in tables))
    try:
        _run_plan(
            db, plan, runs, reps=reps, rows=rows, n_users=n_users, copy_data=copy_data, log=log
        )
    finally:
        db.script("".join(f"ALTER TABLE {t} RESET (autovacuum_enabled);\n" for t in tables))
    return runs


def _run_plan(
    db: BenchDatabase,
    plan: list[tuple[str, str, tuple[str, ...]]],
    runs: list[BulkRun],
    *,
    reps: int,
    rows: int,
    n_users: int,
    copy_data: dict[str, bytes],
    log: Callable[[str], None],
) -> None:
    for rep in range(reps):
        for i, (load, method, states) in enumerate(plan):
            if load == "versions-auto" and rep > 0:
                continue  # context, not a goal: measured once
            order = list(states) if (rep + i) % 2 == 0 else list(reversed(states))
            for state in order:
                r = load_once(
                    db, load, method, state, rep, rows=rows, n_users=n_users, copy_data=copy_data
                )
                runs.append(r)
                flag = "" if r.counters_ok in (None, True) else "  COUNTERS WRONG"
                log(
                    f"  bulk {load:13s} {method:9s} triggers {state:3s} rep {rep + 1}/{reps}"
                    f" {r.seconds:6.2f}s{flag}"
                )
