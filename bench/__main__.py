"""``python -m bench`` (``make bench``): run the benchmarks, write docs/performance.md.

    python -m bench                 the full run (about 11 minutes on 2 cores, with fit and queue,
                                    plus 4-6 for the registry's million versions)
    python -m bench --quick         a smoke run (about 2 minutes); writes only
                                    bench/results/, not docs/performance.md
    python -m bench --only ledger,hot --seconds 8 --reps 5
    python -m bench --only queue    the queue against pgqueuer alone (about 90 s at most)
    python -m bench.fit [--quick]   only the fit inside a job (bench/fit.py), which
                                    rewrites only its own section of the report
    python -m bench.registry [--quick]  only the registry's lineage and metric search
                                    (bench/registry.py), which rewrites only its section
    python -m bench serving [...]   the same as python -m bench.serving [...] (and
                                    python -m bench metering [...]: bench/metering.py)
    python -m bench.serving [--quick]  only serving (bench/serving.py: predict against
                                    MLflow's scoring server and a bare endpoint, batch),
                                    which rewrites only its own section
    python -m bench --only billing [--quick]
                                    the ledger's bytes per entry and the billing alerts'
                                    cost, synchronous_commit on and off (bench/billing.py,
                                    about 4 minutes; --quick about 1); same as
                                    python -m bench.billing
    python -m bench --only automl [--quick]
                                    the AutoML search vs FLAML (bench/automl.py, not in the
                                    default run: about 30 minutes); same as python -m bench.automl
    python -m bench --only audit [--quick]
                                    the audit trail's cost (bench/audit.py, about 4 minutes;
                                    3 with --quick); same as python -m bench.audit, which
                                    rewrites only its own section

The queue section needs pgqueuer, in the ``bench`` dependency group:
``uv run --group bench python -m bench`` (``make bench`` does it).

Every flag has an environment twin (``BENCH_SECONDS=8`` is ``--seconds 8``).
``BENCH_DATABASE_URL`` runs against an existing server (the role must be allowed to
create databases); otherwise a throw-away embedded PostgreSQL is started in a
temporary folder and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "performance.md"
SECTIONS = ("ledger", "hot", "bulk", "queue", "queries", "registry", "fit", "serving")
#: Sections run only when named in ``--only`` (long, and needing no database).
OPTIONAL_SECTIONS = ("automl", "billing", "audit")


@dataclass
class Config:
    quick: bool
    users: int
    clients: tuple[int, ...]
    hot_clients: tuple[int, ...]
    seconds: float
    reps: int
    bulk_rows: int
    bulk_reps: int
    tiers: tuple[int, ...]
    queue_jobs: int
    queue_users: int
    queue_slots: tuple[int, ...]
    queue_reps: int
    queue_budget: float
    synchronous_commit: str
    sections: tuple[str, ...]
    doc: Path | None
    budget: float


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> Config:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", default=env("BENCH_QUICK", "") not in ("", "0"))
    p.add_argument("--users", type=int, default=None, help="bench users (default 10000)")
    p.add_argument("--clients", default=env("BENCH_CLIENTS"), help="e.g. 1,8,32")
    p.add_argument("--hot-clients", default=env("BENCH_HOT_CLIENTS"), help="e.g. 8,32")
    p.add_argument("--seconds", type=float, default=None, help="pgbench seconds per point")
    p.add_argument("--reps", type=int, default=None, help="repetitions of every ledger point")
    p.add_argument("--bulk-rows", type=int, default=None)
    p.add_argument("--bulk-reps", type=int, default=None)
    p.add_argument("--tiers", default=env("BENCH_TIERS"), help="e.g. 10000,100000,1000000")
    p.add_argument("--queue-jobs", type=int, default=None, help="jobs per queue run")
    p.add_argument("--queue-users", type=int, default=None, help="users the jobs spread over")
    p.add_argument("--queue-slots", default=env("BENCH_QUEUE_SLOTS"), help="e.g. 1,4,16")
    p.add_argument("--queue-reps", type=int, default=None)
    p.add_argument(
        "--queue-budget",
        type=float,
        default=None,
        help="seconds the queue section may take (default 90); a repetition projected to"
        " overrun it is skipped (and the report says so). 0: no limit",
    )
    p.add_argument(
        "--synchronous-commit",
        default=env("BENCH_SYNCHRONOUS_COMMIT", "off"),
        choices=("on", "off", "local", "remote_write"),
        help="for the ledger runs (default off: measure CPU, not the disk's flush)",
    )
    p.add_argument("--only", default=env("BENCH_ONLY", ",".join(SECTIONS)))
    p.add_argument("--doc", default=env("BENCH_DOC"), help="report path ('-' for none)")
    p.add_argument(
        "--budget",
        type=float,
        default=float(env("BENCH_BUDGET", "630")),
        help="seconds the whole run may take; a query tier projected to overrun it is"
        " skipped (and the report says so). 0: no limit",
    )
    a = p.parse_args(argv)

    def pick(value: Any, name: str, full: Any, quick: Any, cast: Any = int) -> Any:
        if value is not None:
            return value
        if env(name):
            return cast(env(name))
        return quick if a.quick else full

    sections = tuple(s.strip() for s in a.only.split(",") if s.strip())
    unknown = set(sections) - set(SECTIONS) - set(OPTIONAL_SECTIONS)
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if a.doc == "-":
        doc = None
    elif a.doc:
        doc = Path(a.doc)
    else:
        doc = RESULTS / "performance-quick.md" if a.quick else DOC
    return Config(
        quick=a.quick,
        users=pick(a.users, "BENCH_USERS", 10_000, 1_000),
        clients=_ints(a.clients) if a.clients else ((1, 8) if a.quick else (1, 8, 32)),
        hot_clients=_ints(a.hot_clients) if a.hot_clients else ((8,) if a.quick else (8, 32)),
        seconds=pick(a.seconds, "BENCH_SECONDS", 4.0, 2.0, float),
        reps=pick(a.reps, "BENCH_REPS", 3, 1),
        bulk_rows=pick(a.bulk_rows, "BENCH_BULK_ROWS", 100_000, 10_000),
        bulk_reps=pick(a.bulk_reps, "BENCH_BULK_REPS", 3, 1),
        tiers=_ints(a.tiers)
        if a.tiers
        else ((1_000, 10_000) if a.quick else (10_000, 100_000, 1_000_000)),
        queue_jobs=pick(a.queue_jobs, "BENCH_QUEUE_JOBS", 600, 300),
        queue_users=pick(a.queue_users, "BENCH_QUEUE_USERS", 1_000, 1_000),
        queue_slots=_ints(a.queue_slots) if a.queue_slots else (1, 4, 16),
        queue_reps=pick(a.queue_reps, "BENCH_QUEUE_REPS", 3, 1),
        queue_budget=pick(a.queue_budget, "BENCH_QUEUE_BUDGET", 90.0, 90.0, float),
        synchronous_commit=a.synchronous_commit,
        sections=sections,
        doc=doc,
        budget=a.budget,
    )


#: ``python -m bench serving ...`` is ``python -m bench.serving ...`` (its own flags).
DELEGATED = ("serving", "metering")


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in DELEGATED:
        import importlib

        delegated: Any = importlib.import_module(f"bench.{args[0]}")
        return int(delegated.main(args[1:]))
    # A TERM (timeout, CI) unwinds like Ctrl-C, so the throw-away server is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cfg = parse_args(argv)
    if "automl" in cfg.sections:
        from bench import automl

        automl.main(["--quick"] if cfg.quick else [])
        cfg.sections = tuple(s for s in cfg.sections if s != "automl")
        if not cfg.sections:
            return 0
    if "billing" in cfg.sections:
        # The ledger's weight and the alert check's cost, sync commit on and off
        # (bench/billing.py, a few minutes; its own section of the report).
        from bench import billing

        billing_argv = ["--quick"] if cfg.quick else []
        if cfg.doc is None:
            billing_argv += ["--doc", "-"]
        elif not cfg.quick:
            billing_argv += ["--doc", str(cfg.doc)]
        billing.main(billing_argv)
        cfg.sections = tuple(s for s in cfg.sections if s != "billing")
        if not cfg.sections:
            return 0
    if "audit" in cfg.sections:
        from bench import audit

        audit.main(["--quick"] if cfg.quick else [])
        cfg.sections = tuple(s for s in cfg.sections if s != "audit")
        if not cfg.sections:
            return 0
    from bench import bulk, ledger, queries, report
    from bench import queue as queue_bench
    from bench.server import BenchDatabase, machine_description

    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    if "queue" in cfg.sections:
        try:
            import asyncpg  # noqa: F401
            import pgqueuer  # noqa: F401
        except ImportError:
            log(
                "queue section skipped: pgqueuer is not installed (it is in the bench"
                " dependency group: uv run --group bench python -m bench)"
            )
            cfg.sections = tuple(s for s in cfg.sections if s != "queue")
    machine = machine_description()
    log(
        f"machine: {machine['cpu']}, {machine['cores']} cores,"
        f" load {machine['load_average_at_start']}"
    )
    db = BenchDatabase()
    results: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()}
    }
    try:
        log(
            f"database {db.dbname} ({'embedded' if db.embedded else 'BENCH_DATABASE_URL'},"
            f" PostgreSQL {db.server_version}), migrated to head in {db.migrate_seconds:.1f}s"
        )
        db.sql(f'ALTER DATABASE "{db.dbname}" SET synchronous_commit = {cfg.synchronous_commit}')
        ledger.create_users(db, cfg.users)
        results["machine"] = machine
        results["server"] = {
            "version": db.server_version,
            "embedded": db.embedded,
            "settings": db.settings,
            "synchronous_commit_for_runs": cfg.synchronous_commit,
        }
        results["pgbench_version"] = db.pgbench_version()
        if "ledger" in cfg.sections or "hot" in cfg.sections:
            t0 = time.perf_counter()
            runs = ledger.run(
                db,
                n_users=cfg.users,
                clients=cfg.clients if "ledger" in cfg.sections else (),
                hot_clients=cfg.hot_clients if "hot" in cfg.sections else (),
                seconds=cfg.seconds,
                reps=cfg.reps,
                log=log,
            )
            results["ledger"] = [r.as_dict() for r in runs]
            if "ledger" in cfg.sections:
                results["anatomy"] = ledger.anatomy(db, n_users=cfg.users)
                log(
                    "  anatomy of a charge (us per statement): "
                    + ", ".join(f"{k} {min(v):.0f}" for k, v in results["anatomy"].items())
                )
            results["ledger_seconds"] = time.perf_counter() - t0
        if "bulk" in cfg.sections:
            t0 = time.perf_counter()
            runs_b = bulk.run(
                db, rows=cfg.bulk_rows, n_users=cfg.users, reps=cfg.bulk_reps, log=log
            )
            results["bulk"] = [r.as_dict() for r in runs_b]
            results["bulk_seconds"] = time.perf_counter() - t0
        if "queue" in cfg.sections:
            t0 = time.perf_counter()
            runs_q, conditions = queue_bench.run(
                db,
                n_jobs=cfg.queue_jobs,
                n_users=min(cfg.queue_users, cfg.users),
                slots=cfg.queue_slots,
                reps=cfg.queue_reps,
                log=log,
                budget_seconds=cfg.queue_budget,
            )
            results["queue"] = [r.as_dict() for r in runs_q]
            results["queue_conditions"] = conditions
            results["queue_seconds"] = time.perf_counter() - t0
        if "queries" in cfg.sections:
            t0 = time.perf_counter()
            deadline = started + cfg.budget if cfg.budget > 0 else None
            points, skipped = queries.run(
                db, tiers=cfg.tiers, n_users=cfg.users, deadline=deadline, log=log
            )
            results["queries"] = [p.as_dict() for p in points]
            results["queries_skipped"] = skipped
            results["queries_seconds"] = time.perf_counter() - t0
            results["probe_rows_per_table"] = queries.probe_rows_per_table(cfg.tiers)
        if "registry" in cfg.sections:
            from bench import registry

            t0 = time.perf_counter()
            results["registry"] = registry.run(
                db,
                tiers=registry.QUICK_TIERS
                if cfg.quick and not os.environ.get("BENCH_TIERS")
                else cfg.tiers,
                n_users=cfg.users,
                trigger_rows=2_000 if cfg.quick else 10_000,
                log=log,
            )
            results["registry"]["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            results["registry_seconds"] = time.perf_counter() - t0
        if "fit" in cfg.sections:
            from bench import fit

            t0 = time.perf_counter()
            size = (10_000, 30, 1) if cfg.quick else (40_000, 100, 3)
            results["fit"] = fit.run(
                rows=size[0], features=20, trees=size[1], reps=size[2], log=log
            )
            results["fit"]["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            results["fit_seconds"] = time.perf_counter() - t0
        if "serving" in cfg.sections:
            from bench import serving

            t0 = time.perf_counter()
            results["serving"] = serving.run(
                seconds=3.0 if cfg.quick else 10.0,
                reps=1 if cfg.quick else 3,
                clients=(1, 8),
                batch_rows=100_000 if cfg.quick else 1_000_000,
                log=log,
            )
            results["serving_seconds"] = time.perf_counter() - t0
    finally:
        db.close()
    results["total_seconds"] = time.perf_counter() - started
    results["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = RESULTS / f"bench-{stamp}{'-quick' if cfg.quick else ''}.json"
    raw.write_text(json.dumps(results, indent=2, default=str))
    log(f"raw results: {raw.relative_to(REPO)}")
    text = report.render(results)
    print()
    print(report.summary(results))
    if cfg.doc is not None:
        cfg.doc.parent.mkdir(parents=True, exist_ok=True)
        cfg.doc.write_text(text)
        log(f"report: {cfg.doc}")
    log(f"done in {results['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
