"""Writing an evaluation's per-row results vs COPY of the same rows into a bare table.

    python -m bench.evaluation --rows 1000000 --reps 3     the full run (the goal's size)
    python -m bench.evaluation --rows 50000 --reps 3       a short run (what was run today)

Needs a database migrated to head: ``BENCH_DATABASE_URL`` (or ``DATABASE_URL``; with
neither, the embedded server of ``automl-db up``). It writes into a throw-away user's
rows and removes them at the end.

- **ours**: :func:`database.evaluation.write_row_results` into
  ``evaluation_row_results`` (hash-partitioned, primary key, the failing rows'
  partial index, the foreign key to the run, the ML117 UPDATE trigger, which a COPY
  does not fire), in one transaction with its commit, for a fresh run each time;
- **bare**: the same rows, the same psycopg ``COPY ... FROM STDIN`` with
  ``write_row``, into a plain table of the same columns (no key, no index, no
  partitions), committed.

The sides alternate, the order rotating per repetition; the ratio is the median of
the per-repetition ratios ours / bare. Goal: <= 2.0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
GOAL = 2.0
BARE = "bench_bare_row_results"


def _engine() -> Engine:
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        from database.session import make_engine

        return make_engine()
    return create_engine(url)


def _rows(n: int) -> list[tuple[Any, ...]]:
    # A classification's rows: two row rules, one in ten rows failing.
    return [
        (
            i,
            "yes" if i % 3 else "no",
            "yes" if i % 10 else "no",
            (i % 997) / 997,
            float(i % 10 == 0),
            [i % 10 != 0, None if i % 2 else True],
            i % 10 != 0,
        )
        for i in range(n)
    ]


def _setup(engine: Engine) -> uuid.UUID:
    """A throw-away user with what a run needs (raw SQL: no API, no worker)."""
    with engine.begin() as conn:
        user = conn.execute(
            text("INSERT INTO users (email) VALUES (:e) RETURNING id"),
            {"e": f"bench-{uuid.uuid4().hex[:8]}@example.com"},
        ).scalar_one()
        conn.execute(text(f"DROP TABLE IF EXISTS {BARE}"))
        conn.execute(
            text(
                f"CREATE TABLE {BARE} (evaluation_run_id uuid NOT NULL, row_index bigint NOT NULL,"
                " prediction text, actual text, score double precision, error double precision,"
                " criteria_passed boolean[] NOT NULL, passed boolean NOT NULL)"
            )
        )
    return user


def _new_run(engine: Engine, user: uuid.UUID) -> uuid.UUID:
    with engine.begin() as conn:
        q = conn.execute
        dataset = q(
            text("INSERT INTO datasets (user_id, name) VALUES (:u, 'b') RETURNING id"), {"u": user}
        ).scalar_one()
        version = q(
            text(
                "INSERT INTO dataset_versions (dataset_id, user_id, status) VALUES (:d, :u,"
                " 'completed') RETURNING id"
            ),
            {"d": dataset, "u": user},
        ).scalar_one()
        model = q(
            text(
                "INSERT INTO models (user_id, name, algorithm, problem_type) VALUES"
                " (:u, :n, 'x', 'classification') RETURNING id"
            ),
            {"u": user, "n": uuid.uuid4().hex},
        ).scalar_one()
        registered = q(
            text("INSERT INTO registered_models (user_id, name) VALUES (:u, :n) RETURNING id"),
            {"u": user, "n": uuid.uuid4().hex[:12]},
        ).scalar_one()
        mv = q(
            text(
                "INSERT INTO model_versions (registered_model_id, model_id) VALUES (:r, :m)"
                " RETURNING id"
            ),
            {"r": registered, "m": model},
        ).scalar_one()
        snapshot = q(
            text(
                "INSERT INTO workflow_snapshots (user_id, snapshot_data) VALUES (:u, '{}')"
                " RETURNING id"
            ),
            {"u": user},
        ).scalar_one()
        job = q(
            text(
                "INSERT INTO jobs (user_id, workflow_snapshot_id, kind, status) VALUES"
                " (:u, :s, 'evaluation', 'queued') RETURNING id"
            ),
            {"u": user, "s": snapshot},
        ).scalar_one()
        run: uuid.UUID = q(
            text(
                "INSERT INTO evaluation_runs (user_id, job_id, model_version_id,"
                " dataset_version_id) VALUES (:u, :j, :m, :d) RETURNING id"
            ),
            {"u": user, "j": job, "m": mv, "d": version},
        ).scalar_one()
    return run


def _ours(engine: Engine, run: uuid.UUID, rows: list[tuple[Any, ...]]) -> float:
    from database import evaluation

    with Session(engine) as session:
        start = time.perf_counter()
        evaluation.write_row_results(session, run, rows)
        session.commit()
        return time.perf_counter() - start


def _bare(engine: Engine, run: uuid.UUID, rows: list[tuple[Any, ...]]) -> float:
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        start = time.perf_counter()
        with (
            raw.cursor() as cursor,
            cursor.copy(
                f"COPY {BARE} (evaluation_run_id, row_index, prediction, actual, score, error,"
                " criteria_passed, passed) FROM STDIN"
            ) as copy,
        ):
            for row in rows:
                copy.write_row((run, *row))
        raw.commit()
        return time.perf_counter() - start


def run(rows: int, reps: int) -> dict[str, Any]:
    engine = _engine()
    user = _setup(engine)
    data = _rows(rows)
    points = []
    try:
        for rep in range(reps):
            run_id = _new_run(engine, user)
            sides = [("ours", _ours), ("bare", _bare)]
            if rep % 2:
                sides.reverse()
            timed = {name: fn(engine, run_id, data) for name, fn in sides}
            points.append({**timed, "ratio": timed["ours"] / timed["bare"]})
            print(
                f"rep {rep + 1}: ours {timed['ours']:.2f}s, bare {timed['bare']:.2f}s,"
                f" ratio {timed['ours'] / timed['bare']:.2f}",
                flush=True,
            )
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {BARE}"))
            conn.execute(text("DELETE FROM evaluation_runs WHERE user_id = :u"), {"u": user})
            conn.execute(text("DELETE FROM jobs WHERE user_id = :u"), {"u": user})
            conn.execute(text("DELETE FROM users WHERE id = :u"), {"u": user})
        engine.dispose()
    ratio = statistics.median(p["ratio"] for p in points)
    return {
        "rows": rows,
        "reps": reps,
        "points": points,
        "ratio": ratio,
        "goal": GOAL,
        "met": ratio <= GOAL,
        "rows_per_s_ours": rows / statistics.median(p["ours"] for p in points),
        "rows_per_s_bare": rows / statistics.median(p["bare"] for p in points),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluation")
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_ROWS", 1_000_000)))
    parser.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", 3)))
    args = parser.parse_args(argv)
    result = run(args.rows, args.reps)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.rows} rows: ours / bare = {result['ratio']:.2f} (goal <= {GOAL}:"
        f" {'met' if result['met'] else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
