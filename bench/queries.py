"""Section 4: hot queries as the tables grow (10 thousand, 100 thousand, 1 million).

At each tier the four tables (jobs, credit_transactions, datasets, models) hold
that many rows each, spread round-robin over the bench users (10,000 by
default), created one second apart in insertion order. The data is generated
set-based (``INSERT ... SELECT generate_series``) with the triggers (and
foreign-key checks) off via ``session_replication_role = replica`` when the
role may set it (otherwise ``DISABLE TRIGGER USER``), and made consistent by
construction: ledger rows carry the running balance, and users' derived columns
are set from the tables afterwards. Then ``ANALYZE``.

Five *probe* users own a fixed number of rows in every table (200 by default),
written interleaved with everybody else's during the first tier: their pages
have the same content at every tier, so the buffers a query touches for them
can only change if its cost depends on the size of the table. (A typical user's
page fills up as the tables grow: at 10 thousand jobs a user has one job, at 1
million a hundred; those numbers are reported too, for context.)

Each query runs under ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)``, once to warm
the catalog caches and once measured; shared hit + read blocks of the executor
(planning excluded) are the "buffers".
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.ledger import user_uuid_sql
from bench.server import BenchDatabase

PROBES = 5
QUERIES: dict[str, str] = {
    "jobs_by_status": (
        "SELECT * FROM jobs WHERE user_id = %(u)s AND status = 'completed'"
        " ORDER BY created_at DESC LIMIT 20"
    ),
    "queue_claim": (
        "SELECT id FROM jobs WHERE status = 'queued'"
        " ORDER BY priority DESC, created_at LIMIT 1 FOR UPDATE SKIP LOCKED"
    ),
    # As the API asks it (database.credits.ledger_month, c16g00000001): the index is
    # (user_id, calendar month), so the month orders first and each month's entries
    # are sorted.
    "ledger_page": (
        "SELECT * FROM credit_transactions WHERE user_id = %(u)s"
        " ORDER BY date_trunc('month', created_at AT TIME ZONE 'UTC') DESC, created_at DESC,"
        " id DESC LIMIT 50"
    ),
    "models": "SELECT * FROM models WHERE user_id = %(u)s ORDER BY created_at DESC LIMIT 20",
    "datasets": "SELECT * FROM datasets WHERE user_id = %(u)s ORDER BY created_at DESC LIMIT 20",
}
QUERY_TITLES = {
    "jobs_by_status": "a user's jobs by status, newest first (LIMIT 20)",
    "queue_claim": "the queue claim (LIMIT 1 FOR UPDATE SKIP LOCKED)",
    "ledger_page": "a user's ledger page, newest first (LIMIT 50)",
    "models": "a user's models, newest first (LIMIT 20)",
    "datasets": "a user's datasets, newest first (LIMIT 20)",
}


@dataclass
class QueryPoint:
    tier: int
    query: str
    probe_buffers: float  # median over the probe users
    probe_rows: float
    probe_ms: float
    typical_buffers: float  # median over sampled ordinary users
    typical_rows: float
    plan: str
    generate_seconds: float = 0.0
    sizes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _user(n: str) -> str:
    return user_uuid_sql(n)


def _snapshot(n: str) -> str:
    # Workflow snapshot of user n: ids 10^12 + n, apart from the users' ids.
    return user_uuid_sql(f"1000000000000 + ({n})")


def prepare(db: BenchDatabase, n_users: int) -> str:
    """Empty the four tables, zero the derived columns, one snapshot per user.

    Returns how triggers are switched off while generating.
    """
    mode = "replica"
    try:
        with db.connect() as c:
            c.execute("SET session_replication_role = replica")
    except Exception:
        mode = "disable"
    db.script(
        f"""
{db.truncate_sql("credit_transactions", "jobs", "models", "datasets", "workflow_snapshots")}
ALTER TABLE credit_transactions DISABLE TRIGGER USER;
ALTER TABLE users DISABLE TRIGGER USER;
UPDATE users SET credit_balance = 0, dataset_count = 0, model_count = 0, storage_used_bytes = 0
 WHERE (credit_balance, dataset_count, model_count, storage_used_bytes) <> (0, 0, 0, 0);
INSERT INTO workflow_snapshots (id, user_id, snapshot_data)
SELECT {_snapshot("g")}, {_user("g")}, '{{"nodes": [], "edges": []}}'::jsonb
  FROM generate_series(1, {n_users}) AS g;
ALTER TABLE credit_transactions ENABLE TRIGGER USER;
ALTER TABLE users ENABLE TRIGGER USER;
VACUUM ANALYZE users;
"""
    )
    return mode


def _user_expr(first_tier: bool, n_users: int, k_probe: int, tier1: int) -> str:
    """User number of generated row g."""
    regular = f"{PROBES} + 1 + g % {n_users - PROBES}"
    if not first_tier:
        return regular
    stride = max(2, tier1 // (PROBES * k_probe))
    return (
        f"CASE WHEN g % {stride} = 0 AND g / {stride} <= {PROBES * k_probe}"
        f" THEN 1 + (g / {stride}) % {PROBES} ELSE {regular} END"
    )


def grow(
    db: BenchDatabase,
    lo: int,
    hi: int,
    *,
    n_users: int,
    k_probe: int,
    tier1: int,
    mode: str,
    log: Callable[[str], None] = print,
) -> float:
    """Add rows lo+1..hi to each of the four tables; seconds taken."""
    uexpr = _user_expr(lo == 0, n_users, k_probe, tier1)
    src = (
        f"SELECT g, {uexpr} AS un,"
        " timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' AS ts"
        f" FROM generate_series({lo + 1}, {hi}) AS g"
    )
    if mode == "replica":
        off = "SET session_replication_role = replica;"
        on = "SET session_replication_role = origin;"
    else:
        tables = ("users", "credit_transactions", "jobs", "models", "datasets")
        off = "".join(f"ALTER TABLE {t} DISABLE TRIGGER USER;\n" for t in tables)
        on = "".join(f"ALTER TABLE {t} ENABLE TRIGGER USER;\n" for t in tables)
    # Ids are md5(table letter || g): as random as gen_random_uuid() (so the primary
    # keys grow like the real ones), without its read of /dev/urandom per row.
    statements = {
        "jobs": f"""
INSERT INTO jobs (id, user_id, workflow_snapshot_id, status, priority, credit_cost,
                  created_at, updated_at)
SELECT md5('j' || s.g)::uuid, {_user("s.un")}, {_snapshot("s.un")},
       (CASE s.g % 100 WHEN 0 THEN 'queued' WHEN 1 THEN 'running' WHEN 2 THEN 'failed'
             WHEN 3 THEN 'failed' WHEN 4 THEN 'cancelled' WHEN 5 THEN 'pending'
             ELSE 'completed' END)::job_status,
       s.g % 3, 10, s.ts, s.ts
  FROM ({src}) AS s;""",
        "credit_transactions": f"""
INSERT INTO credit_transactions (id, user_id, type, amount, balance_after, description, actor,
                                 created_at)
SELECT md5('t' || w.g)::uuid, w.uid, 'adjustment', 1, w.balance_after, 'bench', 'bench', w.ts
  FROM (SELECT s.g, s.ts, u.id AS uid,
               u.credit_balance + row_number() OVER (PARTITION BY s.un ORDER BY s.g)
                   AS balance_after
          FROM ({src}) AS s JOIN users AS u ON u.id = {_user("s.un")}) AS w
 ORDER BY w.g;""",
        "datasets": f"""
INSERT INTO datasets (id, user_id, name, created_at, updated_at)
SELECT md5('d' || s.g)::uuid, {_user("s.un")}, 'dataset ' || s.g, s.ts, s.ts FROM ({src}) AS s;""",
        "models": f"""
INSERT INTO models (id, user_id, name, algorithm, problem_type, created_at, updated_at)
SELECT md5('m' || s.g)::uuid, {_user("s.un")}, 'model ' || s.g, 'xgboost', 'classification',
       s.ts, s.ts
  FROM ({src}) AS s;""",
        "users": f"""
UPDATE users AS u
   SET credit_balance = u.credit_balance + c.n, dataset_count = u.dataset_count + c.n,
       model_count = u.model_count + c.n
  FROM (SELECT {_user("s.un")} AS uid, count(*)::int AS n FROM ({src}) AS s GROUP BY 1) AS c
 WHERE u.id = c.uid;""",
    }
    t0 = time.perf_counter()
    timings = {}
    for name, statement in statements.items():
        t = time.perf_counter()
        db.script(f"{off}\n{statement}\n{on}")
        timings[name] = time.perf_counter() - t
    t = time.perf_counter()
    db.script(
        "VACUUM ANALYZE users;\nANALYZE jobs;\nANALYZE credit_transactions;\n"
        "ANALYZE datasets;\nANALYZE models;\n"
    )
    timings["analyze"] = time.perf_counter() - t
    log("    generate " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return time.perf_counter() - t0


def _walk(node: dict[str, Any]) -> list[str]:
    label = node["Node Type"]
    if "Index Name" in node:
        label += f" using {node['Index Name']}"
    elif "Relation Name" in node:
        label += f" on {node['Relation Name']}"
    out = [label]
    for child in node.get("Plans", []):
        out += _walk(child)
    return out


def explain(conn: Any, sql: str, params: dict[str, Any]) -> tuple[int, int, float, str]:
    """(buffers, rows, ms, plan) of one execution, in a transaction rolled back."""
    with conn.transaction(force_rollback=True):
        doc = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params).fetchone()[0]
    if isinstance(doc, str):
        doc = json.loads(doc)
    top = doc[0]
    plan = top["Plan"]
    buffers = int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))
    return (
        buffers,
        int(plan.get("Actual Rows", 0)),
        float(top["Execution Time"]),
        " -> ".join(_walk(plan)),
    )


def measure(db: BenchDatabase, tier: int, n_users: int) -> list[QueryPoint]:
    probes = [_uuid(i) for i in range(1, PROBES + 1)]
    step = max(1, (n_users - PROBES) // 20)
    typical = [_uuid(PROBES + 1 + i * step) for i in range(20)]
    points = []
    with db.connect() as conn:
        for name, sql in QUERIES.items():
            per_user = name != "queue_claim"
            results = []
            for u in probes if per_user else [None]:
                params = {"u": u} if u else {}
                explain(conn, sql, params)  # warm
                results.append(explain(conn, sql, params))
            typ = []
            if per_user:
                for u in typical:
                    explain(conn, sql, {"u": u})
                    typ.append(explain(conn, sql, {"u": u}))
            points.append(
                QueryPoint(
                    tier=tier,
                    query=name,
                    probe_buffers=statistics.median(r[0] for r in results),
                    probe_rows=statistics.median(r[1] for r in results),
                    probe_ms=statistics.median(r[2] for r in results),
                    typical_buffers=statistics.median(r[0] for r in typ) if typ else float("nan"),
                    typical_rows=statistics.median(r[1] for r in typ) if typ else float("nan"),
                    plan=results[-1][3],
                )
            )
    return points


def _uuid(n: int) -> str:
    s = f"{n:032d}"
    return f"{s[:8]}-{s[8:12]}-{s[12:16]}-{s[16:20]}-{s[20:]}"


def table_sizes(db: BenchDatabase) -> dict[str, int]:
    rows = db.sql(
        "SELECT relname, pg_total_relation_size(oid) FROM pg_class"
        " WHERE relname IN ('jobs', 'credit_transactions', 'datasets', 'models')"
    )
    return {name: int(size) for name, size in rows}


def run(
    db: BenchDatabase,
    *,
    tiers: Sequence[int],
    n_users: int,
    deadline: float | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[QueryPoint], list[str]]:
    """Points measured, and a note per tier skipped to stay within ``deadline``
    (a ``time.perf_counter()`` value; the next tier's generation time is projected
    from the previous tier's time per row)."""
    k_probe = probe_rows_per_table(tiers)
    mode = prepare(db, n_users)
    points: list[QueryPoint] = []
    skipped: list[str] = []
    lo = 0
    per_row = 0.0
    for tier in tiers:
        if deadline is not None and per_row:
            projected = per_row * (tier - lo) * 1.8
            left = deadline - time.perf_counter()
            if projected > left:
                note = (
                    f"{tier:,} rows skipped: generating it was projected to take"
                    f" {projected:.0f} s (from the previous tier's {per_row * 1e6:.0f} us per row)"
                    f" and {max(left, 0):.0f} s of the time budget were left"
                )
                skipped.append(note)
                log(f"  queries: {note}")
                continue
        seconds = grow(
            db, lo, tier, n_users=n_users, k_probe=k_probe, tier1=tiers[0], mode=mode, log=log
        )
        per_row = seconds / (tier - lo)
        lo = tier
        sizes = table_sizes(db)
        log(
            f"  queries: generated {tier:,} rows per table in {seconds:.1f}s"
            f" (jobs {sizes.get('jobs', 0) / 2**20:.0f} MiB with indexes)"
        )
        for p in measure(db, tier, n_users):
            p.generate_seconds = seconds
            p.sizes = sizes
            points.append(p)
            log(
                f"  queries {tier:>9,} {p.query:15s} probe {p.probe_buffers:5.0f} buffers"
                f" {p.probe_rows:4.0f} rows {p.probe_ms:7.3f} ms | typical user"
                f" {p.typical_buffers:5.0f} buffers {p.typical_rows:4.0f} rows"
            )
    return points, skipped


def probe_rows_per_table(tiers: Sequence[int]) -> int:
    return max(20, min(200, tiers[0] // (PROBES * 5)))
