"""The storage trigger's price: one generic function against the per-table one it replaced.

``python -m bench.storage_trigger [--quick]``: since ``c18a00000001`` every table whose
files count in ``users.storage_used_bytes`` calls ``users_adjust_storage(size columns...)``,
which builds its statement from the trigger's arguments and runs it with ``EXECUTE`` (a
plan per statement). Before, each table had a function of its own with the query
written out (a plan cached by PL/pgSQL). Both run here side by side on two scratch
tables of the same shape (``user_id``, ``size_bytes``) in a migrated database:

* **single-row statements**: a server-side loop of single-row INSERTs, then one of
  single-row DELETEs (the path of an upload, a saved model, a batch output): time per
  statement, trigger included;
* **one bulk statement**: an INSERT ... SELECT of ``rows`` rows for one user (the
  transition table, then one aggregated update).

Rounds alternate the two sides and rotate their order; ratios are medians of per-round
ratios. It prints a markdown table (docs/performance.md, "The storage trigger").
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench import sections
from bench.server import BenchDatabase, load_average, machine_description

# users_adjust_model_storage() as at c14c00000001 (the models' and batch outputs'
# function), renamed: the per-table form, its query written out.
STATIC = """
CREATE FUNCTION public.bench_static_storage() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_ids uuid[];
    v_deltas bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas
          FROM (SELECT r.user_id, sum(coalesce(r.size_bytes, 0)) AS n
                  FROM new_rows AS r GROUP BY r.user_id) AS s;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas
          FROM (SELECT r.user_id, -sum(coalesce(r.size_bytes, 0)) AS n
                  FROM old_rows AS r GROUP BY r.user_id) AS s;
    ELSE
        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas
          FROM (SELECT c.user_id, sum(c.n) AS n
                  FROM (SELECT r.user_id, coalesce(r.size_bytes, 0) AS n FROM new_rows AS r
                        UNION ALL
                        SELECT r.user_id, -coalesce(r.size_bytes, 0) FROM old_rows AS r) AS c
                 GROUP BY c.user_id) AS s;
    END IF;
    PERFORM public.users_apply_deltas('storage_used_bytes', v_ids, v_deltas);
    RETURN NULL;
END $$;
"""

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"

SIDES = {
    "per-table (before)": "public.bench_static_storage()",
    "generic (c18a00000001)": "public.users_adjust_storage('size_bytes')",
}


def _setup(conn: Any) -> str:
    conn.execute(STATIC)
    user = conn.execute(
        "INSERT INTO users (email) VALUES ('bench-storage@example.com') RETURNING id"
    ).fetchone()[0]
    for i, call in enumerate(SIDES.values()):
        conn.execute(
            f"CREATE TABLE bench_storage_{i} (id bigserial PRIMARY KEY,"
            " user_id uuid NOT NULL, size_bytes bigint)"
        )
        for event, ref in (
            ("INSERT", "NEW TABLE AS new_rows"),
            ("DELETE", "OLD TABLE AS old_rows"),
        ):
            conn.execute(
                f"CREATE TRIGGER bench_{event.lower()} AFTER {event} ON bench_storage_{i}"
                f" REFERENCING {ref} FOR EACH STATEMENT EXECUTE FUNCTION {call}"
            )
    return str(user)


def _single_rows(conn: Any, table: str, user: str, n: int) -> float:
    """Microseconds per single-row statement (n inserts, then n deletes)."""
    t0 = time.perf_counter()
    conn.execute(
        f"DO $$ BEGIN FOR i IN 1..{n} LOOP"
        f" INSERT INTO {table} (user_id, size_bytes) VALUES ('{user}', 10);"
        " END LOOP; END $$"
    )
    conn.execute(
        f"DO $$ DECLARE v bigint; BEGIN FOR v IN SELECT id FROM {table} LOOP"
        f" DELETE FROM {table} WHERE id = v; END LOOP; END $$"
    )
    return (time.perf_counter() - t0) / (2 * n) * 1e6


def _bulk(conn: Any, table: str, user: str, rows: int) -> float:
    """Seconds for one INSERT of ``rows`` rows (the table is emptied after, untimed)."""
    t0 = time.perf_counter()
    conn.execute(
        f"INSERT INTO {table} (user_id, size_bytes)"
        f" SELECT '{user}', g FROM generate_series(1, {rows}) AS g"
    )
    seconds = time.perf_counter() - t0
    conn.execute(f"DELETE FROM {table}")
    conn.execute(f"VACUUM {table}")
    return seconds


def run(statements: int, rows: int, rounds: int) -> dict[str, Any]:
    db = BenchDatabase()
    try:
        with db.connect() as conn:
            user = _setup(conn)
            names = list(SIDES)
            single: dict[str, list[float]] = {k: [] for k in names}
            bulk: dict[str, list[float]] = {k: [] for k in names}
            for r in range(rounds):
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    table = f"bench_storage_{names.index(name)}"
                    single[name].append(_single_rows(conn, table, user, statements))
                    conn.execute(f"VACUUM {table}")
                for name in order:
                    table = f"bench_storage_{names.index(name)}"
                    bulk[name].append(_bulk(conn, table, user, rows))
            left = conn.execute("SELECT storage_used_bytes FROM users WHERE id = %s", (user,))
            row = left.fetchone()
            storage_after = row[0] if row else None
        before, after = names
        return {
            "statements": statements,
            "rows": rows,
            "rounds": rounds,
            "single_us": {k: statistics.median(v) for k, v in single.items()},
            "single_ratio": statistics.median(
                a / b for a, b in zip(single[after], single[before], strict=True)
            ),
            "single_ratio_range": (
                min(a / b for a, b in zip(single[after], single[before], strict=True)),
                max(a / b for a, b in zip(single[after], single[before], strict=True)),
            ),
            "bulk_ms": {k: statistics.median(v) * 1000 for k, v in bulk.items()},
            "bulk_ratio": statistics.median(
                a / b for a, b in zip(bulk[after], bulk[before], strict=True)
            ),
            "bulk_ratio_range": (
                min(a / b for a, b in zip(bulk[after], bulk[before], strict=True)),
                max(a / b for a, b in zip(bulk[after], bulk[before], strict=True)),
            ),
            "storage_after": storage_after,
            "server": db.server_version,
            "machine": machine_description(),
            "load": load_average(),
        }
    finally:
        db.close()


TITLE = "## The storage trigger: one function (c18a00000001)"

INTRO = """\
`python -m bench.storage_trigger` (`bench/storage_trigger.py`; `--quick` for a smoke run,
which writes nothing). Since `c18a00000001` dataset versions, models and batch outputs are
counted in `users.storage_used_bytes` by one function, `users_adjust_storage(size columns...)`,
which builds its statement from the trigger's arguments and runs it with `EXECUTE`: a parse
and a plan on every statement, where the per-table functions it replaced had their query
written out and planned once per session. Both run side by side on two scratch tables of the
same shape (`user_id`, `size_bytes`) in a migrated database; rounds alternate the sides and
rotate their order; ratios are medians of per-round ratios (range in brackets)."""

READING = """\
Not a goal, a price, and noisy when the machine is shared (compare the load average with the
cores: every time is inflated and the ranges are wide; read the medians). A single-row
statement on a counted table (an upload's version, a saved model, a batch output, and every
UPDATE of such a row, a status change included) pays one more plan for the storage trigger;
the ratio above is against a scratch table whose only other work is the insert itself (on
the real tables, with their other triggers and indexes, the share is smaller). A bulk
statement pays it once, so bulk loads (section 3) are unchanged within the noise. The rules
are the same (`tests/test_storage.py`, `tests/test_storage_function.py`). If the single-row
price matters more than one piece of SQL, the way back is per-table functions again (their
body is `STATIC` in `bench/storage_trigger.py`)."""


def report(res: dict[str, Any]) -> str:
    """The section of docs/performance.md."""
    before, after = list(SIDES)
    lo, hi = res["single_ratio_range"]
    blo, bhi = res["bulk_ratio_range"]
    table = [
        "| statement | per-table function (before) | generic function"
        " | generic / per-table: median (range) |",
        "|---|---|---|---|",
        f"| single-row INSERT or DELETE, per statement | {res['single_us'][before]:.0f} us"
        f" | {res['single_us'][after]:.0f} us | **{res['single_ratio']:.2f}**"
        f" ({lo:.2f}-{hi:.2f}) |",
        f"| one INSERT of {res['rows']:,} rows | {res['bulk_ms'][before]:.0f} ms"
        f" | {res['bulk_ms'][after]:.0f} ms | **{res['bulk_ratio']:.2f}**"
        f" ({blo:.2f}-{bhi:.2f}) |",
    ]
    conditions = (
        f"{res['rounds']} rounds of {res['statements']:,} single-row statements each way;"
        f" PostgreSQL {res['server']}; load average at the end {res['load']} on"
        f" {res['machine'].get('cores', '?')} cores; `storage_used_bytes` after every delete:"
        f" {res['storage_after']} (as it must be)."
    )
    return "\n\n".join([TITLE, INTRO, "\n".join(table), conditions, READING])


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.storage_trigger", description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    statements, rows, rounds = (300, 10_000, 2) if args.quick else (2_000, 100_000, 6)
    section = report(run(statements, rows, rounds))
    print(section)
    if not args.quick:
        sections.write_section(DOC, section, TITLE)


if __name__ == "__main__":
    main()
