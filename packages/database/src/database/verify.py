"""The invariants of the users' derived columns, checked and (counters only) repaired.

For every user:

- ``credit_balance`` equals the sum of the user's ledger entries;
- the ``balance_after`` chain is consistent: taken in the order the entries took
  the user's lock, each entry's ``balance_after`` is the previous one plus its
  ``amount`` (starting from 0), and the last one is ``credit_balance``;
- ``dataset_count``, ``workflow_count`` (workflows not soft-deleted),
  ``model_count`` and ``storage_used_bytes`` (dataset versions' original and
  Parquet bytes, plus models' bytes) equal their values recomputed from the
  tables, with the rules of sql/triggers/counters.sql and storage.sql.

Besides drift, it reports ledger entries that no rule in force could have
produced: a purchase without a package or without a payment reference (ML020
refuses them now), an adjustment without an actor. Such rows predate the rules (or
were written with the triggers disabled); they are listed for a human to look at,
never changed.

The check walks the entries in ``(created_at, id)`` order in SQL. That order need
not be the order in which the entries took the user's lock (``created_at`` was long
the start of the entry's *transaction*, and raw SQL can date a row), so only for a
user whose walk breaks does it ask whether *some* order makes a chain from 0 to
``credit_balance``: an Eulerian trail in the graph whose edges are the entries,
from ``balance_after - amount`` to ``balance_after`` (each balance in as often as
out, but 0 one more out and the final balance one more in, all edges connected).
That is exact, and costs nothing for users whose walk does not break.

The users' next billing alert thresholds (``alert_*``, c16c00000001) equal what the
user's active alerts and this month's ledger say (``database.billing``); reported only.

The registry's derived columns, reported under the owner of the row:

- ``model_versions.download_count`` equals the number of the version's granted
  ``model_downloads`` (sql/triggers/registry.sql keeps it per statement);
- ``registered_models.last_version_number`` is at least the highest version number
  of the model (the next version takes the counter plus one: below the highest, it
  would give a number again). Above it is right: deleted versions' numbers are not
  given again.

``repair=True`` fixes counters and storage through ``public.users_repair_derived``
(sql/triggers/repair.sql): it recomputes under the user's row lock, and the guard
trigger logs every corrected column in ``derived_repairs``; the registry's columns
of the same user through ``public.registry_repair_derived`` (same file, same log,
with the row's id). The ledger and the balance are never rewritten; their drift
stays in the report.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from database.progress import Progress

#: Columns ``repair`` may correct.
REPAIRABLE = (
    "dataset_count",
    "workflow_count",
    "model_count",
    "storage_used_bytes",
    "download_count",
    "last_version_number",
)

_IDS = bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))

# One statement, one snapshot: a counter and the rows it counts commit together, so
# a consistent database shows no drift however busy it is. Only drifting users (and
# users whose created_at walk breaks) come back.
_CHECK = text(
    """
WITH walk AS (
    SELECT t.user_id, t.amount, t.balance_after,
           t.balance_after - t.amount
               IS DISTINCT FROM lag(t.balance_after, 1, 0) OVER w AS broken,
           lead(t.id) OVER w IS NULL AS newest
      FROM credit_transactions AS t
     WHERE (CAST(:ids AS uuid[]) IS NULL OR t.user_id = ANY(:ids))
    WINDOW w AS (PARTITION BY t.user_id ORDER BY t.created_at, t.id)
), ledger AS (
    SELECT user_id, sum(amount) AS total, count(*) FILTER (WHERE broken) AS breaks,
           max(balance_after) FILTER (WHERE newest) AS latest
      FROM walk GROUP BY user_id
), ds AS (
    SELECT user_id, count(*) AS n FROM datasets GROUP BY user_id
), wf AS (
    SELECT user_id, count(*) AS n FROM workflows WHERE NOT is_deleted GROUP BY user_id
), md AS (
    SELECT user_id, count(*) AS n FROM models GROUP BY user_id
), st AS (
    SELECT b.user_id, sum(b.n) AS n
      FROM (SELECT user_id, coalesce(original_size_bytes, 0) + coalesce(parquet_size_bytes, 0) AS n
              FROM dataset_versions
            UNION ALL
            SELECT user_id, coalesce(size_bytes, 0) FROM models
            UNION ALL
            SELECT user_id, size_bytes FROM batch_outputs) AS b
     GROUP BY b.user_id
), checked AS (
    SELECT u.id, u.email, u.credit_balance,
           coalesce(l.total, 0)::bigint AS ledger_sum,
           coalesce(l.latest, 0)::bigint AS latest_balance_after,
           coalesce(l.breaks, 0)::bigint AS breaks,
           u.dataset_count, coalesce(ds.n, 0)::bigint AS datasets,
           u.workflow_count, coalesce(wf.n, 0)::bigint AS workflows,
           u.model_count, coalesce(md.n, 0)::bigint AS models,
           u.storage_used_bytes, coalesce(st.n, 0)::bigint AS storage
      FROM users AS u
      LEFT JOIN ledger AS l ON l.user_id = u.id
      LEFT JOIN ds ON ds.user_id = u.id
      LEFT JOIN wf ON wf.user_id = u.id
      LEFT JOIN md ON md.user_id = u.id
      LEFT JOIN st ON st.user_id = u.id
     WHERE (CAST(:ids AS uuid[]) IS NULL OR u.id = ANY(:ids))
)
SELECT c.* FROM checked AS c
 WHERE c.credit_balance <> c.ledger_sum OR c.breaks > 0
    OR c.credit_balance <> c.latest_balance_after
    OR c.dataset_count <> c.datasets OR c.workflow_count <> c.workflows
    OR c.model_count <> c.models OR c.storage_used_bytes <> c.storage
 ORDER BY c.id
"""
).bindparams(_IDS)

# The registry's derived columns, under the owner of the row (one statement: the
# counts and the rows they count are one snapshot). Only drifting rows come back.
_REGISTRY = text(
    """
SELECT v.user_id, u.email, 'download_count' AS check_name, v.id AS row_id,
       v.registered_model_id, v.version, v.download_count AS stored,
       coalesce(d.n, 0)::bigint AS expected
  FROM model_versions AS v
  JOIN users AS u ON u.id = v.user_id
  LEFT JOIN (SELECT model_version_id, count(*) AS n FROM model_downloads
              WHERE granted GROUP BY model_version_id) AS d ON d.model_version_id = v.id
 WHERE v.download_count <> coalesce(d.n, 0)
   AND (CAST(:ids AS uuid[]) IS NULL OR v.user_id = ANY(:ids))
UNION ALL
SELECT r.user_id, u.email, 'last_version_number', r.id, r.id, NULL,
       r.last_version_number, m.highest
  FROM registered_models AS r
  JOIN users AS u ON u.id = r.user_id
  JOIN (SELECT registered_model_id, max(version)::bigint AS highest FROM model_versions
         GROUP BY registered_model_id) AS m ON m.registered_model_id = r.id
 WHERE r.last_version_number < m.highest
   AND (CAST(:ids AS uuid[]) IS NULL OR r.user_id = ANY(:ids))
 ORDER BY 1, 3, 4
"""
).bindparams(_IDS)

_COUNT = text(
    "SELECT count(*) FROM users AS u WHERE (CAST(:ids AS uuid[]) IS NULL OR u.id = ANY(:ids))"
).bindparams(_IDS)

# Entries no rule in force could have produced (they predate it): see the module doc.
_UNPRODUCED = text(
    """
SELECT t.id, t.user_id, t.type::text AS type, t.amount,
       CASE WHEN t.type = 'purchase' AND t.package_id IS NULL
                 THEN 'a purchase without a package'
            WHEN t.type = 'purchase'
                 THEN 'a purchase without a payment reference'
            ELSE 'an adjustment without an actor' END AS problem
  FROM credit_transactions AS t
 WHERE (CAST(:ids AS uuid[]) IS NULL OR t.user_id = ANY(:ids))
   AND ((t.type = 'purchase'
         AND (t.package_id IS NULL OR coalesce(btrim(t.stripe_payment_id), '') = ''))
     OR (t.type = 'adjustment' AND coalesce(btrim(t.actor), '') = ''))
 ORDER BY t.user_id, t.created_at, t.id
"""
).bindparams(_IDS)

_ENTRIES = text(
    "SELECT t.amount, t.balance_after FROM credit_transactions AS t WHERE t.user_id = :user_id"
)


@dataclass(frozen=True)
class Drift:
    """One invariant one user breaks: the stored value and the expected one."""

    user_id: uuid.UUID
    check: str
    stored: int
    expected: int | None
    message: str
    #: The drifting row when it is not the user's own (a model version, a registered model).
    row_id: uuid.UUID | None = None

    @property
    def repairable(self) -> bool:
        return self.check in REPAIRABLE


@dataclass(frozen=True)
class Unproduced:
    """A ledger entry no rule in force could have produced (it predates the rule)."""

    entry_id: uuid.UUID
    user_id: uuid.UUID
    type: str
    amount: int
    problem: str


@dataclass(frozen=True)
class Repair:
    """One value a repair corrected: the row (``table``, ``row_id``; the user's own
    row for ``users``, where ``row_id`` is None), the column, its old and new value.
    Recorded as a reconciliation adjustment of the run (database.billing)."""

    user_id: uuid.UUID
    table: str
    row_id: uuid.UUID | None
    column: str
    old: int
    new: int

    @property
    def label(self) -> str:
        """The column as ``Report.repaired`` names it (a registry row with its id)."""
        if self.row_id is None:
            return self.column
        return f"{self.column} of {_SINGULAR.get(self.table, self.table)} {self.row_id}"


_SINGULAR = {"model_versions": "model version", "registered_models": "registered model"}


@dataclass
class Report:
    users_checked: int = 0
    drift: list[Drift] = field(default_factory=list)
    #: Ledger entries no rule could have produced (reported, never changed).
    unproduced: list[Unproduced] = field(default_factory=list)
    emails: dict[uuid.UUID, str | None] = field(default_factory=dict)
    #: Columns corrected by ``repair``: (user, column, old value, recomputed value).
    repaired: list[tuple[uuid.UUID, str, int, int]] = field(default_factory=list)
    #: The same corrections with their table and row (reconciliation adjustments).
    repairs: list[Repair] = field(default_factory=list)
    #: Metering invariants broken (database.metering.verify_usage): (user, problem).
    #: Reported, never repaired.
    usage: list[tuple[uuid.UUID, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.drift and not self.unproduced and not self.usage

    def users(self) -> list[uuid.UUID]:
        return sorted({d.user_id for d in self.drift})

    def render(self) -> str:
        lines = []
        for user_id, column, old, new in self.repaired:
            lines.append(f"repaired user {user_id}: {column} {old} -> {new}")
        by_user: dict[uuid.UUID, list[Drift]] = {}
        for d in self.drift:
            by_user.setdefault(d.user_id, []).append(d)
        for user_id in sorted(by_user):
            email = self.emails.get(user_id)
            lines.append(f"user {user_id} ({email or 'purged'}):")
            for d in by_user[user_id]:
                note = "  [repairable: automl-db verify --repair]" if d.repairable else ""
                lines.append(f"  {d.message}{note}")
        for u in self.unproduced:
            lines.append(
                f"ledger entry {u.entry_id} of user {u.user_id}: {u.problem}"
                f" ({u.type} of {u.amount}), which no rule allows now"
            )
        for user_id, problem in self.usage:
            lines.append(f"usage of user {user_id}: {problem}")
        state = (
            "no drift"
            if not self.drift
            else f"DRIFT in {len(by_user)} user{'s' if len(by_user) != 1 else ''}"
        )
        if self.unproduced:
            n = len(self.unproduced)
            state += f"; {n} ledger entr{'ies' if n != 1 else 'y'} no rule could have produced"
        if self.usage:
            state += f"; {len(self.usage)} usage problem{'s' if len(self.usage) != 1 else ''}"
        lines.append(f"verified {self.users_checked} users: {state}")
        return "\n".join(lines)


def chain_consistent(entries: Iterable[tuple[int, int]], final: int) -> bool:
    """Whether some order of ``(amount, balance_after)`` entries chains 0 -> ``final``.

    Each entry is an edge from ``balance_after - amount`` to ``balance_after``; the
    chain exists iff the edges form one Eulerian trail from 0 to ``final``. A
    negative balance anywhere breaks it.
    """
    out: Counter[int] = Counter()
    into: Counter[int] = Counter()
    parent: dict[int, int] = {}

    def find(v: int) -> int:
        parent.setdefault(v, v)
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    edges = 0
    for amount, after in entries:
        before = after - amount
        if before < 0 or after < 0:
            return False
        out[before] += 1
        into[after] += 1
        parent[find(before)] = find(after)
        edges += 1
    if edges == 0:
        return final == 0
    nodes = set(out) | set(into) | {0, final}
    for v in nodes:
        if out[v] - into[v] != (v == 0) - (v == final):
            return False
    root = find(0)
    return all(find(v) == root for v in set(out) | set(into))


def _drift(row: object, conn: Connection | Session) -> list[Drift]:
    r = row._mapping  # type: ignore[attr-defined]
    uid: uuid.UUID = r["id"]
    found: list[Drift] = []
    balance = r["credit_balance"]
    if balance != r["ledger_sum"]:
        found.append(
            Drift(
                uid,
                "credit_balance",
                balance,
                r["ledger_sum"],
                f"credit_balance {balance} != sum of the ledger {r['ledger_sum']}",
            )
        )
    if r["breaks"] > 0 or balance != r["latest_balance_after"]:
        entries = [(a, b) for a, b in conn.execute(_ENTRIES, {"user_id": uid})]
        if not chain_consistent(entries, balance):
            found.append(
                Drift(
                    uid,
                    "balance_after",
                    balance,
                    None,
                    f"the balance_after chain of {len(entries)} entries does not lead "
                    f"from 0 to credit_balance {balance}"
                    f" (latest by created_at: {r['latest_balance_after']})",
                )
            )
    for column, expected, what in (
        ("dataset_count", "datasets", "datasets"),
        ("workflow_count", "workflows", "workflows not deleted"),
        ("model_count", "models", "models"),
        ("storage_used_bytes", "storage", "bytes in dataset versions, models and batch outputs"),
    ):
        if r[column] != r[expected]:
            found.append(
                Drift(
                    uid,
                    column,
                    r[column],
                    r[expected],
                    f"{column} {r[column]} != {r[expected]} {what}",
                )
            )
    return found


#: The checks of :func:`check`, in order: one statement each (the first, per
#: drifting user, also walks the user's ledger).
CHECKS = (
    "users",
    "balances, ledgers, counters, storage",
    "the registry's counts",
    "unproduced ledger entries",
    "usage against the ledger",
)


def check(
    conn: Connection | Session,
    user_ids: Sequence[uuid.UUID] | None = None,
    progress: Progress | None = None,
) -> Report:
    """Check the invariants in ``conn``'s current transaction; the report.
    ``progress(done, total, check)`` after each of :data:`CHECKS` (they are whole
    statements over every user, one snapshot: the progress is per check)."""
    ids = list(user_ids) if user_ids is not None else None

    def done(i: int) -> None:
        if progress is not None:
            progress(i + 1, len(CHECKS), CHECKS[i])

    report = Report(users_checked=conn.execute(_COUNT, {"ids": ids}).scalar_one())
    done(0)
    for row in conn.execute(_CHECK, {"ids": ids}).all():
        report.emails[row.id] = row.email
        report.drift.extend(_drift(row, conn))
    done(1)
    for r in conn.execute(_REGISTRY, {"ids": ids}):
        report.emails.setdefault(r.user_id, r.email)
        report.drift.append(_registry_drift(r))
    done(2)
    report.unproduced = [
        Unproduced(r.id, r.user_id, r.type, r.amount, r.problem)
        for r in conn.execute(_UNPRODUCED, {"ids": ids})
    ]
    done(3)
    from database.billing import alert_threshold_drift
    from database.metering import verify_usage

    report.usage = verify_usage(conn, ids)
    # The users' next billing alert thresholds (c16c00000001): reported, not repaired
    # (billing_alerts_sync recomputes them on the next change of the user's alerts).
    for user_id, column, stored, expected in alert_threshold_drift(conn, ids):
        report.drift.append(
            Drift(
                user_id,
                column,
                -1 if stored is None else stored,
                expected,
                f"{column} {'NULL' if stored is None else stored} != "
                f"{'NULL' if expected is None else expected} from the user's active"
                " billing alerts and this month's ledger",
            )
        )
    done(4)
    return report


def _registry_drift(r: Any) -> Drift:
    if r.check_name == "download_count":
        message = (
            f"model version {r.row_id} (version {r.version} of registered model"
            f" {r.registered_model_id}): download_count {r.stored} != {r.expected}"
            " granted downloads"
        )
    else:
        message = (
            f"registered model {r.row_id}: last_version_number {r.stored} < its highest"
            f" version {r.expected} (the next version would take a number given already)"
        )
    return Drift(r.user_id, r.check_name, r.stored, r.expected, message, row_id=r.row_id)


def repairs_of_user(conn: Connection | Session, user_id: uuid.UUID) -> list[Repair]:
    """Recompute one user's counters and storage, and the registry's derived columns
    of the user's registered models and versions: every value corrected."""
    rows = conn.execute(
        text("SELECT column_name, old_value, new_value FROM public.users_repair_derived(:u)"),
        {"u": user_id},
    )
    out = [Repair(user_id, "users", None, c, o, n) for c, o, n in rows]
    registry = conn.execute(
        text(
            "SELECT table_name, row_id, column_name, old_value, new_value"
            " FROM public.registry_repair_derived(:u)"
        ),
        {"u": user_id},
    )
    out.extend(Repair(user_id, t, r, c, o, n) for t, r, c, o, n in registry)
    return out


def repair_user(conn: Connection | Session, user_id: uuid.UUID) -> list[tuple[str, int, int]]:
    """:func:`repairs_of_user` as (what, old, new), a registry row named with its id."""
    return [(r.label, r.old, r.new) for r in repairs_of_user(conn, user_id)]


def _record(report: Report, repairs: list[Repair]) -> None:
    report.repairs.extend(repairs)
    report.repaired.extend((r.user_id, r.label, r.old, r.new) for r in repairs)


def verify(
    bind: Engine | Connection | Session,
    *,
    user_ids: Sequence[uuid.UUID] | None = None,
    repair: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Check every user (or ``user_ids``); with ``repair``, fix counters and storage.

    ``progress(done, total, what)`` (``database.progress``): the checks
    (:data:`CHECKS`), then, when there is something to repair, each user repaired
    and the checks again (``total`` grows then, once).

    With an Engine, the check runs in its own REPEATABLE READ transaction (one
    snapshot, so a busy database shows no passing drift) and each user's repair in
    its own transaction; the report then describes what is left after the repairs.
    With a Connection or Session, everything runs in the caller's transaction, which
    the caller commits; make it REPEATABLE READ on a busy database, as the main
    check and the per-user chain check are separate statements.
    """
    steps = _Steps(progress)
    if not isinstance(bind, Engine):
        report = check(bind, user_ids, steps.checks())
        if repair:
            _repair(bind, report, steps)
            report = _recheck(bind, report, user_ids, steps.checks())
        return report

    with bind.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            report = check(conn, user_ids, steps.checks())
    if repair and any(d.repairable for d in report.drift):
        users = sorted({d.user_id for d in report.drift if d.repairable})
        steps.more(len(users) + len(CHECKS))
        with bind.connect() as conn:
            for user_id in users:
                with conn.begin():
                    _record(report, repairs_of_user(conn, user_id))
                steps.one(f"repaired user {user_id}")
            with conn.begin():
                report = _recheck(conn, report, user_ids, steps.checks())
    return report


class _Steps:
    """One count over verify's stages: the checks, the repairs, the checks again."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.done = 0
        self.total = len(CHECKS)

    def more(self, n: int) -> None:
        self.total += n

    def one(self, what: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, what)

    def checks(self) -> Progress | None:
        if self.progress is None:
            return None
        return lambda _done, _total, what: self.one(what)


def _repair(conn: Connection | Session, report: Report, steps: _Steps | None = None) -> None:
    users = sorted({d.user_id for d in report.drift if d.repairable})
    if steps is not None:
        steps.more(len(users) + len(CHECKS))
    for user_id in users:
        _record(report, repairs_of_user(conn, user_id))
        if steps is not None:
            steps.one(f"repaired user {user_id}")


def _recheck(
    conn: Connection | Session,
    before: Report,
    user_ids: Sequence[uuid.UUID] | None,
    progress: Progress | None = None,
) -> Report:
    after = check(conn, user_ids, progress)
    after.repaired = before.repaired
    after.repairs = before.repairs
    after.emails = {**before.emails, **after.emails}
    return after
