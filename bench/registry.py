"""The model registry as versions grow: lineage and metric search (issue 13).

    python -m bench.registry            tiers 10,000, 100,000, 1,000,000 versions; writes
                                        the "6. The model registry" section of
                                        docs/performance.md
    python -m bench.registry --quick    tiers 5,000 and 20,000; bench/results/ only
    python -m bench --only registry     the same inside the full run (its tiers: --tiers)

At each tier ``model_versions`` holds that many versions: registered models of
``CHAIN`` (20) versions each, spread round-robin over the bench users, every
version a trained model of its own (``models``), two metrics on the ``test`` split
(``accuracy``, ``f1``: 0.5-1.0, spread by a hash) and, from version 2 on, one
lineage edge to the version before it (``retrained_from``, every third
``tuned_from``): each registered model is a chain of 20. One registered model in
five is public. The larger tiers add new registered models to the smaller.

Loading: set-based (``INSERT ... SELECT generate_series``) with the triggers and
foreign-key checks off (``session_replication_role = replica``) and consistent by
construction, as the numbering trigger would have made it: versions 1..20 per
registered model, ``user_id`` the owner's, ``last_version_number`` = 20,
``download_count`` 0. ``verify``'s registry check runs at the end of every tier and
must find no drift. The load through the triggers is measured besides, at one
size: versions numbered one by one by ``model_versions_number`` (row-level: it
takes the registered model's row), metrics, lineage (``model_lineage_no_cycle``:
a recursive check per edge) and downloads counted by the statement-level trigger,
against the same rows loaded with the triggers off.

Queries, each under ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` (second execution;
buffers = the executor's shared hit + read blocks, planning excluded):

- **lineage up** and **lineage down**, depth 10: ``database.registry.lineage``
  itself (the statement it sends is captured and explained with its parameters),
  from version 20 (up) and version 1 (down) of five *probe* registered models made
  in the first tier, whose chains are the same at every tier;
- **metric search**: the versions a user may see (own or public) with
  ``accuracy > 0.9`` on ``test``, best first, first page of 50, through the index
  ``(metric, split, value)``: ``database.registry.search_versions`` itself, the
  API's search (the statement it sends is captured and explained).

Flat means the buffers at the largest tier are at most ``GOAL`` (2) times those at
the smallest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import sections

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "performance.md"
TITLE = "## 6. The model registry as versions grow"
CHAIN = 20
PROBES = 5
DEPTH = 10
PAGE = 50
THRESHOLD = 0.9
GOAL = 2.0
TIERS = (10_000, 100_000, 1_000_000)
QUICK_TIERS = (5_000, 20_000)

TITLES = {
    "lineage_up": f"lineage up, depth {DEPTH} (`registry.lineage`)",
    "lineage_down": f"lineage down, depth {DEPTH} (`registry.lineage`)",
    "metric_search": (
        f"metric search: accuracy > {THRESHOLD}, own or public, best first, first {PAGE}"
    ),
}


@dataclass
class Point:
    tier: int
    query: str
    buffers: float  # median over the probes
    rows: float
    ms: float
    plan: str
    load_seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _user(expr: str) -> str:
    from bench.ledger import user_uuid_sql

    return user_uuid_sql(expr)


def _id(prefix: str, expr: str) -> str:
    return f"md5('{prefix}' || ({expr}))::uuid"


def prepare(db: Any) -> None:
    """Empty the registry and the trained models."""
    db.script(
        db.truncate_sql(
            "model_downloads",
            "model_lineage",
            "model_version_metrics",
            "model_aliases",
            "registered_model_permissions",
            "model_versions",
            "registered_models",
            "models",
        )
    )


def _statements(
    lo: int, hi: int, n_users: int, prefix: str = "", numbered: bool = True
) -> dict[str, str]:
    """Versions lo+1..hi (registered models lo/CHAIN+1..hi/CHAIN), set-based.
    ``numbered``: the rows carry their numbers, owners and counters (triggers off);
    otherwise the numbering trigger gives them."""
    rm = f"(({{g}} - 1) / {CHAIN} + 1)"
    owner = f"(1 + {rm.format(g='{g}')} % {n_users})"

    def r(g: str) -> str:
        return rm.format(g=g)

    def o(g: str) -> str:
        return owner.format(g=g)

    src = f"generate_series({lo + 1}, {hi}) AS g"
    rms = f"generate_series({lo // CHAIN + 1}, {hi // CHAIN}) AS k"
    return {
        "registered_models": f"""
INSERT INTO registered_models (id, user_id, name, visibility, last_version_number)
SELECT {_id(prefix + "r", "k")}, {_user(f"1 + k % {n_users}")}, '{prefix}rm ' || k,
       (CASE WHEN k % 5 = 0 THEN 'public' ELSE 'private' END)::model_visibility,
       {CHAIN if numbered else 0}
  FROM {rms};""",
        "models": f"""
INSERT INTO models (id, user_id, name, algorithm, problem_type)
SELECT {_id(prefix + "m", "g")}, {_user(o("g"))}, 'model ' || g, 'random_forest',
       'classification'
  FROM {src};""",
        "model_versions": f"""
INSERT INTO model_versions (id, registered_model_id, user_id, version, model_id,
                            primary_metric)
SELECT {_id(prefix + "v", "g")}, {_id(prefix + "r", r("g"))}, {_user(o("g"))},
       (g - 1) % {CHAIN} + 1, {_id(prefix + "m", "g")}, 'accuracy'
  FROM {src};"""
        if numbered
        else f"""
INSERT INTO model_versions (id, registered_model_id, model_id, primary_metric)
SELECT {_id(prefix + "v", "g")}, {_id(prefix + "r", r("g"))}, {_id(prefix + "m", "g")},
       'accuracy'
  FROM {src} ORDER BY g;""",
        "model_version_metrics": f"""
INSERT INTO model_version_metrics (model_version_id, metric, split, value)
SELECT {_id(prefix + "v", "g")}, x.metric, 'test',
       0.5 + (abs(hashtext(x.metric || g)) % 1000000) / 2000000.0
  FROM {src}, (VALUES ('accuracy'), ('f1')) AS x(metric);""",
        "model_lineage": f"""
INSERT INTO model_lineage (child_version_id, relation, parent_version_id)
SELECT {_id(prefix + "v", "g")},
       (CASE WHEN (g - 1) % {CHAIN} % 3 = 2 THEN 'tuned_from' ELSE 'retrained_from' END)
           ::lineage_relation,
       {_id(prefix + "v", "g - 1")}
  FROM {src} WHERE (g - 1) % {CHAIN} > 0;""",
    }


def grow(db: Any, lo: int, hi: int, n_users: int, log: Callable[[str], None]) -> dict[str, float]:
    """Add versions lo+1..hi with the triggers off; seconds per table."""
    timings: dict[str, float] = {}
    for table, statement in _statements(lo, hi, n_users).items():
        t = time.perf_counter()
        db.script(
            "SET session_replication_role = replica;\n"
            f"{statement}\nSET session_replication_role = origin;\n"
        )
        timings[table] = time.perf_counter() - t
    t = time.perf_counter()
    db.script(
        "ANALYZE registered_models;\nANALYZE models;\nANALYZE model_versions;\n"
        "ANALYZE model_version_metrics;\nANALYZE model_lineage;\n"
    )
    timings["analyze"] = time.perf_counter() - t
    log("    registry load " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return timings


def load_through_triggers(db: Any, rows: int, n_users: int) -> dict[str, Any]:
    """The same ``rows`` versions loaded with the triggers on (the numbering trigger
    numbers them; lineage checked for cycles; downloads counted per statement) and
    off; seconds per table each way, and the ratio of the totals."""
    out: dict[str, Any] = {"rows": rows}
    for mode in ("off", "on"):
        prepare(db)
        # On: the database numbers the versions and sets their owner and counters.
        statements = _statements(0, rows, n_users, prefix="t", numbered=mode == "off")
        statements["model_downloads"] = f"""
INSERT INTO model_downloads (model_version_id, format, granted)
SELECT {_id("tv", "g")}, 'joblib', true FROM generate_series(1, {rows}) AS g;"""
        if mode == "off":
            statements["model_downloads"] += f"""
UPDATE model_versions SET download_count = 1
 WHERE id IN (SELECT {_id("tv", "g")} FROM generate_series(1, {rows}) AS g);"""
        seconds: dict[str, float] = {}
        db.script("CHECKPOINT;")
        for table, statement in statements.items():
            t = time.perf_counter()
            if mode == "off":
                db.script(
                    "SET session_replication_role = replica;\n"
                    f"{statement}\nSET session_replication_role = origin;\n"
                )
            else:
                db.script(statement)
            seconds[table] = time.perf_counter() - t
        out[mode] = seconds
        out[f"{mode}_total"] = sum(seconds.values())
        drift = _drift(db)
        out[f"{mode}_drift"] = drift
    out["ratio"] = out["on_total"] / out["off_total"]
    prepare(db)
    return out


def _drift(db: Any) -> int:
    """Rows of the registry that verify's check reports (0: consistent)."""
    from database.verify import _REGISTRY

    return len(db.sql(str(_REGISTRY).replace(":ids", "%(ids)s"), {"ids": None}))


def _captured(
    engine: Any, call: Callable[[Any], Any], which: int = -1
) -> tuple[str, dict[str, Any]]:
    """The statement ``call(session)`` sent (the last unless ``which`` says; the
    metric search's first is the one through the metric index), and its parameters."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    seen: list[tuple[str, Any]] = []

    def listen(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        with Session(engine) as session:
            call(session)
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    statement, params = seen[which]
    return statement, dict(params or {})


def _probe(k: int, version: int) -> uuid.UUID:
    import hashlib

    g = (k - 1) * CHAIN + version
    return uuid.UUID(hashlib.md5(f"v{g}".encode()).hexdigest())


def measure(db: Any, engine: Any, tier: int, n_users: int) -> list[Point]:
    from bench.queries import explain
    from database import registry

    # Probe registered models 1..5: made in the first tier, the same at every tier.
    calls: dict[str, list[tuple[str, dict[str, Any]]]] = {"lineage_up": [], "lineage_down": []}
    for k in range(1, PROBES + 1):
        top, first = _probe(k, CHAIN), _probe(k, 1)
        calls["lineage_up"].append(
            _captured(engine, lambda s, v=top: registry.lineage(s, v, "up", depth=DEPTH))
        )
        calls["lineage_down"].append(
            _captured(engine, lambda s, v=first: registry.lineage(s, v, "down", depth=DEPTH))
        )
    order = registry.parse_order("metrics.accuracy DESC")
    users = [uuid.UUID(int=1 + k) for k in range(PROBES)]
    calls["metric_search"] = [
        _captured(
            engine,
            lambda s, u=u: registry.search_versions(
                s, u, filter=f"metrics.accuracy > {THRESHOLD}", order=order, limit=PAGE
            ),
            which=0,
        )
        for u in users
    ]
    points = []
    with db.connect() as conn:
        for name, runs in calls.items():
            results = []
            for statement, params in runs:
                explain(conn, statement, params)  # warm
                results.append(explain(conn, statement, params))
            points.append(
                Point(
                    tier=tier,
                    query=name,
                    buffers=statistics.median(r[0] for r in results),
                    rows=statistics.median(r[1] for r in results),
                    ms=statistics.median(r[2] for r in results),
                    plan=results[-1][3],
                )
            )
    return points


def run(
    db: Any,
    *,
    tiers: Sequence[int],
    n_users: int,
    trigger_rows: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The section's results: the load through the triggers, then the tiers."""
    from sqlalchemy import create_engine

    tiers = [t - t % CHAIN for t in tiers]
    out: dict[str, Any] = {"tiers": tiers, "chain": CHAIN, "depth": DEPTH, "goal": GOAL}
    t0 = time.perf_counter()
    out["triggers"] = load_through_triggers(db, trigger_rows, n_users)
    tr = out["triggers"]
    log(
        f"  registry: {trigger_rows:,} versions loaded with triggers in {tr['on_total']:.2f}s,"
        f" without in {tr['off_total']:.2f}s (on / off {tr['ratio']:.2f});"
        f" drift after: {tr['on_drift']} / {tr['off_drift']}"
    )
    engine = create_engine(db.url, pool_size=1)
    points: list[Point] = []
    drift: dict[int, int] = {}
    lo = 0
    try:
        for tier in tiers:
            timings = grow(db, lo, tier, n_users, log)
            lo = tier
            drift[tier] = _drift(db)
            for p in measure(db, engine, tier, n_users):
                p.load_seconds = timings
                points.append(p)
                log(
                    f"  registry {tier:>9,} {p.query:14s} {p.buffers:5.0f} buffers"
                    f" {p.rows:4.0f} rows {p.ms:7.3f} ms"
                )
    finally:
        engine.dispose()
    out["points"] = [p.as_dict() for p in points]
    out["drift"] = drift
    out["seconds"] = time.perf_counter() - t0
    return out


# -- report ---------------------------------------------------------------------------


def table(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for p in results.get("points", []):
        by.setdefault(p["query"], []).append(p)
    for pts in by.values():
        pts.sort(key=lambda p: p["tier"])
    return by


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    rows = []
    for name, pts in table(results).items():
        if len(pts) < 2:
            continue
        first, last = pts[0]["buffers"], pts[-1]["buffers"]
        ratio = last / first if first else float("inf")
        rows.append(
            (
                f"registry, {TITLES[name]}: buffers, {pts[0]['tier']:,} -> {pts[-1]['tier']:,}"
                " versions",
                f"<= {results.get('goal', GOAL):g}x",
                f"{first:.0f} -> {last:.0f} ({ratio:.2f}x)",
                ratio <= results.get("goal", GOAL),
            )
        )
    return rows


def render_section(results: dict[str, Any], machine: dict[str, str] | None = None) -> str:
    out = [TITLE, ""]
    w = out.append
    w(
        "`python -m bench.registry` (`bench/registry.py`; also `python -m bench --only"
        f" registry`). At each tier `model_versions` holds that many versions: registered"
        f" models of {results['chain']} versions each (one in five public), spread over the"
        " bench users, each version a trained model of its own, two metric rows (`accuracy`,"
        " `f1` on `test`) and, from version 2 on, a lineage edge to the version before"
        " (`retrained_from`, every third `tuned_from`). Loaded set-based with the triggers"
        " off (`session_replication_role = replica`), consistent by construction (numbers"
        " 1..20, the owner's `user_id`, the counter at 20); verify's registry check after"
        " each tier found "
        + ", ".join(f"{n} drifting rows at {t:,}" for t, n in results["drift"].items())
        + ". The larger tiers add to the smaller."
    )
    w("")
    w(
        f"Lineage: `database.registry.lineage` itself, depth {results['depth']}: the statement"
        " it sends is captured and run under `EXPLAIN (ANALYZE, BUFFERS)` with its"
        " parameters, up from version 20 and down from version 1 of five probe registered"
        " models made in the first tier (their chains are the same at every tier). Metric"
        " search: `database.registry.search_versions` itself (the API's `GET"
        " /v1/model-versions?filter=metrics.accuracy > 0.9&order_by=metrics.accuracy DESC`),"
        " through the index `(metric, split, value)` with the visibility rule of"
        " `registry.readable()` (own, public, or shared with a grant); its statement is"
        " captured and explained the same way. Buffers are"
        " shared hit + read of the executor (planning excluded, second execution), median"
        " over five probes (lineage) or five users (search)."
    )
    w("")
    if machine:
        w(
            f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, load"
            f" average at the start {machine.get('load_average_at_start', '?')}"
            f"{' (' + machine['note'] + ')' if machine.get('note') else ''}. Finished"
            f" {results.get('finished_at', '?')}. Buffers do not depend on the load;"
            " times do, and the machine was shared: read them as context only."
        )
        w("")
    by = table(results)
    tiers = sorted({p["tier"] for pts in by.values() for p in pts})
    w(
        "| query | "
        + " | ".join(f"{t:,} versions" for t in tiers)
        + f" | {tiers[-1]:,} / {tiers[0]:,} | flat (<= {results['goal']:g}x)? |"
    )
    w("|---|" + "---|" * (len(tiers) + 2))
    for name, pts in by.items():
        cells = [f"{p['buffers']:.0f} buf, {p['rows']:.0f} rows, {p['ms']:.2f} ms" for p in pts]
        first, last = pts[0]["buffers"], pts[-1]["buffers"]
        ratio = last / first if first else float("inf")
        met = ratio <= results["goal"]
        w(
            f"| {TITLES[name]} | "
            + " | ".join(cells)
            + f" | **{ratio:.2f}x** | {'yes' if met else '**no**'} |"
        )
    w("")
    w("Plans at the largest tier:")
    w("")
    for name, pts in by.items():
        w(f"- {TITLES[name]}: `{pts[-1]['plan']}`")
    w("")
    loads = {p["tier"]: p["load_seconds"] for p in results["points"]}
    w("Load (triggers off, seconds, this tier's new rows only):")
    w("")
    w("| tier | registered models | models | versions | metric rows | lineage | ANALYZE |")
    w("|---|---|---|---|---|---|---|")
    for t in tiers:
        s = loads.get(t, {})
        w(
            f"| {t:,} | {s.get('registered_models', 0):.1f} | {s.get('models', 0):.1f}"
            f" | {s.get('model_versions', 0):.1f} | {s.get('model_version_metrics', 0):.1f}"
            f" | {s.get('model_lineage', 0):.1f} | {s.get('analyze', 0):.1f} |"
        )
    w("")
    tr = results["triggers"]
    w(
        f"Through the triggers, {tr['rows']:,} versions (one run, on a shared machine):"
        f" **{tr['on_total']:.2f} s with the triggers, {tr['off_total']:.2f} s without"
        f" (on / off {tr['ratio']:.2f})**; verify's check afterwards: {tr['on_drift']} and"
        f" {tr['off_drift']} drifting rows. Per statement, on / off:"
        + "".join(f" {k} {tr['on'][k]:.2f} / {tr['off'].get(k, 0):.2f};" for k in tr["on"])
        + " The numbering trigger is row-level (each version takes its registered model's"
        " row and the next number from its counter), so a bulk load of many versions of"
        " one model serializes on that row; the lineage trigger checks each edge for a"
        " cycle by a recursive walk up its chain (up to 19 steps here), under one"
        " transaction lock; the downloads are counted once per statement (one UPDATE per"
        " version touched). The tiers above are loaded with the triggers off and"
        " consistent by construction, as the other query tiers are."
    )
    w("")
    w(LINEAGE_TRIGGER_FIX)
    w("")
    w(REGISTRY_ANALYSIS)
    return "\n".join(out)


LINEAGE_TRIGGER_FIX = """\
**Found and fixed by this benchmark: the cycle check was quadratic in a bulk load.** The first
full run (2026-12-07 07:50 UTC, `bench/results/registry-20261207-075028.json`) loaded the
10,000 versions through the triggers in 95.0 s against 2.7 s without (34.7 times), 90.4 s of it
the 9,500 lineage edges. `model_lineage_no_cycle()` walked up with `JOIN up ON
l.child_version_id = up.id`; planned while `model_lineage` had no statistics (the first rows of
a bulk load, or any table autovacuum has not analyzed yet), each step of the walk became a scan
of every edge (`Index Only Scan ... Index Cond: parent_version_id IS NOT NULL` joined to the work
table), and the plan stays cached for the whole statement. Migration `c13d00000001` makes each
step a `LATERAL` subquery kept apart by `OFFSET 0` (without it the planner pulls the subquery up
into the same join: a second run with `LATERAL` and `enable_seqscan = off` alone still took
146 s) and sets `enable_seqscan = off` on the function (as `dataset_versions_number()` has):
one descent of `uq_model_lineage_edge` per step whatever the statistics (61 buffers for a walk
of 19 steps instead of 323 at 950 edges, growing with the table). Measured in isolation, the
same 9,500 edges into a fresh table: 131.9 s before, 1.6 s after. The table above is from a run
with the fix; the rule is unchanged (a cycle within one statement is still refused, tested)."""


REGISTRY_ANALYSIS = """\
Why flat: the lineage walk is one index descent per step (`uq_model_lineage_edge`, led by
`child_version_id`, going up; `ix_model_lineage_parent_version_id` going down) and stops at
the depth limit, so its cost is the depth times the B-tree's height, whatever the number of
versions; the height grows by one level somewhere between the tiers (a buffer per step at
most). The metric search walks `ix_model_version_metrics_metric_split_value` backwards from
the highest accuracy and stops at the first page's last row; each candidate costs its
version's and its registered model's rows (and the owner's, for `NOT is_deleted`), and the
share of candidates the caller may see (here one in five public) is the same at every tier,
so the page costs the same: about 2,000 buffers for 50 rows, 40 per row returned, as four
candidates in five belong to someone else's private model and are read only to be refused. It
would not stay flat for a filter the index cannot order by
(`tags.team = 'x'` with few matches among the best scores walks far down the index before
the page fills): such filters need their own index or a bound on the walk."""


def write_section(doc: Path, section: str) -> None:
    """Replace (or add, before "## Fit inside a job" or "## What was changed for this")
    the section in ``doc``."""
    sections.write_section(
        doc, section, TITLE, before=("\n## Fit inside a job", sections.WHAT_WAS_CHANGED)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.registry", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tiers", default=None, help="e.g. 10000,100000,1000000")
    p.add_argument("--users", type=int, default=1_000)
    p.add_argument("--trigger-rows", type=int, default=None, help="default 10000 (quick 2000)")
    p.add_argument("--doc", default=None, help="report path ('-' for none)")
    p.add_argument("--note", default="", help="a word on the machine's conditions")
    a = p.parse_args(argv)
    from bench.ledger import create_users
    from bench.server import BenchDatabase, machine_description

    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    machine = machine_description()
    if a.note:
        machine["note"] = a.note
    tiers = (
        tuple(int(x.replace("_", "")) for x in a.tiers.split(","))
        if a.tiers
        else (QUICK_TIERS if a.quick else TIERS)
    )
    log(f"machine: {machine['cpu']}, load {machine['load_average_at_start']}")
    db = BenchDatabase()
    try:
        create_users(db, a.users)
        results = run(
            db,
            tiers=tiers,
            n_users=a.users,
            trigger_rows=a.trigger_rows or (2_000 if a.quick else 10_000),
            log=log,
        )
    finally:
        db.close()
    results["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results["machine"] = machine
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = RESULTS / f"registry-{stamp}{'-quick' if a.quick else ''}.json"
    raw.write_text(json.dumps(results, indent=2, default=str))
    section = render_section(results, machine)
    print()
    print(section)
    doc = None if a.doc == "-" else Path(a.doc) if a.doc else (None if a.quick else DOC)
    if doc is not None:
        write_section(doc, section)
        log(f"report: {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
