"""How data is retired: soft delete, restore, and the purge the workers schedule.

- ``soft_delete_user`` marks the account deleted (``is_deleted``, ``deleted_at``);
  nothing is removed, so ``restore_user`` within ``RETENTION_DAYS`` (30) brings
  everything back. A deleted user cannot buy credits (ML005).
- ``purge`` hard-deletes the data of users deleted more than ``older_than_days``
  ago (never fewer than ``RETENTION_DAYS``, so nothing restorable is touched):
  experiments and their runs, models, tutorial progress, ingestion jobs, dataset
  profiles, versions and datasets, the jobs the ledger does not refer to (with
  their nodes), the snapshots no remaining job runs, workflows, and the stored
  files of versions, models, uploads and batch predictions' outputs (their
  ``batch_outputs`` rows, even of a job the ledger keeps). Then it erases the
  account's personal data (email, full name, OAuth identity) and sets
  ``purged_at``: the row stays as a tombstone, so the ledger, which is never
  deleted, still adds up. The user's audit events stay, without the IP addresses
  and user agents of what they did (``database.audit.redact_user``). Jobs the
  ledger refers to stay, with their nodes and snapshots. Soft-deleted workflows older
  than the window are deleted too (their snapshots and jobs stay; the snapshots'
  ``workflow_id`` becomes NULL).
- Purge works in bounded batches, each its own transaction of at most
  ``batch_size`` deleted rows. Users are locked with ``FOR NO KEY UPDATE SKIP
  LOCKED`` and rows with ``FOR UPDATE SKIP LOCKED``, so a purge never waits for
  the apps, and two purges never work on the same rows. Interrupt it at any point
  and run it again: it continues where it stopped.

Stored files are removed by a ``FileRemover`` *before* the batch that deleted
their rows commits. If the commit then fails, the rows stay and the next run
deletes them (a remover treats a missing file as done); the other order would
leave files no row names any more, which nothing would ever find again. By
default the remover is the storage the API and the workers use
(:func:`database.storage.default_storage`, ``STORAGE_URL``: a folder or
``s3://...``), so a purge removes the objects wherever they live.
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from database import audit, errors
from database._tx import atomic
from database.models import User, Workflow
from database.progress import Progress
from database.storage import default_storage

#: Days a soft-deleted user (or workflow) can be restored; purge never acts sooner.
RETENTION_DAYS = 30

__all__ = [
    "RETENTION_DAYS",
    "FileRemover",
    "LocalFileRemover",
    "PurgeReport",
    "purge",
    "restore_user",
    "restore_workflow",
    "soft_delete_user",
    "soft_delete_workflow",
]


def _id(obj: object) -> uuid.UUID:
    if isinstance(obj, uuid.UUID):
        return obj
    if isinstance(obj, str):
        return uuid.UUID(obj)
    ident = getattr(obj, "id", None)
    if isinstance(ident, uuid.UUID):
        return ident
    raise TypeError(f"expected a model instance or a UUID, got {type(obj).__name__}")


def _now(session_or_conn: Session | Connection, now: dt.datetime | None) -> dt.datetime:
    if now is not None:
        if now.tzinfo is None:
            raise ValueError("naive datetime refused: give a timezone-aware datetime")
        return now
    value = session_or_conn.execute(text("SELECT now()")).scalar_one()
    assert isinstance(value, dt.datetime)
    return value


# --- users -------------------------------------------------------------------------------
def soft_delete_user(
    session: Session, user: uuid.UUID | User, *, at: dt.datetime | None = None
) -> User:
    """Mark the user deleted (idempotent: a second call keeps the first ``deleted_at``).

    One transaction (the session's own, or a savepoint in the caller's). Raises
    ``UserNotFound``.
    """
    user_id = _id(user)
    with atomic(session):
        when = _now(session, at)
        session.execute(
            update(User)
            .where(User.id == user_id, User.is_deleted.is_(False))
            .values(is_deleted=True, deleted_at=when)
            .execution_options(synchronize_session=False)
        )
        found = session.get(User, user_id, populate_existing=True)
        if found is None:
            raise errors.UserNotFound(f"user {user_id} does not exist")
    return found


def restore_user(
    session: Session, user: uuid.UUID | User, *, now: dt.datetime | None = None
) -> User:
    """Undo ``soft_delete_user`` within ``RETENTION_DAYS`` (idempotent on an active user).

    Raises ``UserNotFound``, ``UserPurged`` (only the tombstone is left) and
    ``RestoreWindowExpired`` (deleted more than ``RETENTION_DAYS`` ago: purge may
    already have started on the data).
    """
    user_id = _id(user)
    with atomic(session):
        row = session.execute(
            select(User.is_deleted, User.deleted_at, User.purged_at)
            .where(User.id == user_id)
            .with_for_update(key_share=True)
        ).one_or_none()
        if row is None:
            raise errors.UserNotFound(f"user {user_id} does not exist")
        if row.purged_at is not None:
            raise errors.UserPurged(f"user {user_id} was purged on {row.purged_at:%Y-%m-%d}")
        if row.is_deleted:
            limit = _now(session, now) - dt.timedelta(days=RETENTION_DAYS)
            if row.deleted_at < limit:
                raise errors.RestoreWindowExpired(
                    f"user {user_id} was deleted on {row.deleted_at:%Y-%m-%d}, more than"
                    f" {RETENTION_DAYS} days ago"
                )
            session.execute(
                update(User)
                .where(User.id == user_id)
                .values(is_deleted=False, deleted_at=None)
                .execution_options(synchronize_session=False)
            )
        found = session.get(User, user_id, populate_existing=True)
        assert found is not None
    return found


# --- workflows ---------------------------------------------------------------------------
def soft_delete_workflow(
    session: Session, workflow: uuid.UUID | Workflow, *, at: dt.datetime | None = None
) -> Workflow:
    """Mark a workflow deleted (it leaves ``workflow_count``); idempotent."""
    workflow_id = _id(workflow)
    with atomic(session):
        when = _now(session, at)
        session.execute(
            update(Workflow)
            .where(Workflow.id == workflow_id, Workflow.is_deleted.is_(False))
            .values(is_deleted=True, deleted_at=when)
            .execution_options(synchronize_session=False)
        )
        found = session.get(Workflow, workflow_id, populate_existing=True)
        if found is None:
            raise errors.ReferenceViolation(f"workflow {workflow_id} does not exist")
    return found


def restore_workflow(session: Session, workflow: uuid.UUID | Workflow) -> Workflow:
    """Undo ``soft_delete_workflow`` while the workflow exists (purge deletes it)."""
    workflow_id = _id(workflow)
    with atomic(session):
        session.execute(
            update(Workflow)
            .where(Workflow.id == workflow_id, Workflow.is_deleted.is_(True))
            .values(is_deleted=False, deleted_at=None)
            .execution_options(synchronize_session=False)
        )
        found = session.get(Workflow, workflow_id, populate_existing=True)
        if found is None:
            raise errors.ReferenceViolation(f"workflow {workflow_id} does not exist (purged?)")
    return found


# --- stored files ------------------------------------------------------------------------
class FileRemover(Protocol):
    """Removes one stored file (a path or URI). True if removed, False if there was
    nothing to remove or it is not this remover's to remove. Raises on failure: the
    purge batch then rolls back and the rows stay for the next run."""

    def __call__(self, location: str) -> bool: ...


class LocalFileRemover:
    """Deletes files (or directories) under ``root``, the data folder.

    Relative paths are taken under ``root``; ``file://`` URIs and absolute paths
    must resolve inside it. Anything else (``s3://`` and other remote URIs, paths
    outside the folder) is left alone and reported as skipped: a deployment that
    stores files elsewhere passes its own remover.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def __call__(self, location: str) -> bool:
        parsed = urlparse(location)
        if parsed.scheme == "file":
            path = Path(unquote(parsed.path))
        elif parsed.scheme and len(parsed.scheme) > 1:  # s3://, gs://, https://
            return False
        else:
            path = Path(location)
        if not path.is_absolute():
            path = self.root / path
        path = path.resolve()
        if path == self.root or not path.is_relative_to(self.root):
            return False
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=False)
            return True
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True


def default_file_remover() -> FileRemover:
    """The storage the API and the workers share (``STORAGE_URL``: a folder, or
    ``s3://...``), then the data folder for a path relative to it."""
    from database.config import get_settings

    storage = default_storage()
    local = LocalFileRemover(get_settings().data_dir)

    def remove(location: str) -> bool:
        return storage.delete(location) or local(location)

    return remove


# --- purge -------------------------------------------------------------------------------
@dataclass
class PurgeReport:
    dry_run: bool = False
    #: Rows deleted (or, dry run, to delete) per table.
    rows: Counter[str] = field(default_factory=Counter)
    users_purged: int = 0
    #: Users whose rows another transaction held locked: left for the next run.
    users_skipped: int = 0
    workflows_purged: int = 0
    files_removed: int = 0
    files_skipped: int = 0
    batches: int = 0
    #: Stored files named by the rows of the current batch.
    paths: list[str] = field(default_factory=list, repr=False)

    def add(self, batch: PurgeReport) -> None:
        self.rows.update(batch.rows)
        self.users_purged += batch.users_purged
        self.files_removed += batch.files_removed
        self.files_skipped += batch.files_skipped

    def render(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"purge {verb}:"]
        for table, n in sorted(self.rows.items()):
            if n:
                lines.append(f"  {table}: {n}")
        if not any(self.rows.values()):
            lines.append("  nothing")
        lines.append(
            f"users {'to purge' if self.dry_run else 'purged (now tombstones)'}: "
            f"{self.users_purged}"
        )
        lines.append(f"soft-deleted workflows: {self.workflows_purged}")
        if not self.dry_run:
            lines.append(
                f"files removed: {self.files_removed}, not found or not local: "
                f"{self.files_skipped}; batches: {self.batches}"
            )
        if self.users_skipped:
            lines.append(f"users skipped (rows locked by others; next run): {self.users_skipped}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Step:
    table: str
    #: Extra condition on the table's rows (alias x), besides belonging to the users.
    where: str = "true"
    #: The row's children are gone: a parent is deleted only then (see _STEPS).
    ready: str = "true"
    #: A column naming a stored file, collected before the row goes.
    path: str | None = None
    #: How to name the owning users (alias x) when the table has no user_id.
    owner: str = "x.user_id = ANY(:uids)"
    #: A table of a later migration: skipped while it does not exist.
    optional: bool = False
    #: The column that names a row (``ctid`` for a table keyed by other columns).
    key: str = "id"


_NOT_IN_LEDGER = "NOT EXISTS (SELECT 1 FROM credit_transactions AS t WHERE t.job_id = x.{col})"

# Children before parents: every cascade is a step of its own, so a batch stays
# within its row budget and every removed row is counted.
# A parent goes only once its children are gone (a child another transaction holds
# locked is skipped, and its parent with it, instead of waiting in a cascade).
_STEPS: tuple[_Step, ...] = (
    _Step("api_keys", optional=True),  # first: a purged account authenticates nothing
    _Step("user_sessions", optional=True),  # nor any of its sessions
    _Step("email_verifications", optional=True),
    # Evaluation (issue 15): a run's per-row results go with it (ON DELETE CASCADE).
    _Step("evaluation_runs", optional=True),
    _Step("evaluation_criteria", optional=True),
    _Step("experiment_runs"),
    _Step(
        "experiments",
        ready="NOT EXISTS (SELECT 1 FROM experiment_runs AS r WHERE r.experiment_id = x.id)",
    ),
    # Deployments first: they name versions and trained models (a stopped or active
    # one goes; models.is_deployed follows by trigger).
    _Step("deployments", optional=True),
    # The registry: the grants the user holds and the grants on the user's models, then
    # the versions (their metrics, aliases, lineage edges and downloads go with them:
    # model_downloads refuses a DELETE of its own, ML062), then the registered models.
    _Step(
        "registered_model_permissions",
        key="ctid",
        owner="(x.user_id = ANY(:uids) OR x.registered_model_id IN"
        " (SELECT r.id FROM registered_models AS r WHERE r.user_id = ANY(:uids)))",
        optional=True,
    ),
    _Step("model_versions", optional=True),
    _Step(
        "registered_models",
        ready="NOT EXISTS (SELECT 1 FROM model_versions AS v WHERE v.registered_model_id = x.id)"
        " AND NOT EXISTS (SELECT 1 FROM registered_model_permissions AS p"
        " WHERE p.registered_model_id = x.id)",
        optional=True,
    ),
    _Step("models", path="s3_path"),
    _Step("user_tutorial_progress"),
    _Step("ingestion_jobs", path="source_path"),
    _Step(
        "dataset_profiles",
        owner="x.dataset_version_id IN (SELECT v.id FROM dataset_versions AS v"
        " WHERE v.user_id = ANY(:uids))",
    ),
    _Step(
        "dataset_versions",
        path="s3_path",
        ready="NOT EXISTS (SELECT 1 FROM dataset_profiles AS p WHERE p.dataset_version_id = x.id)"
        " AND NOT EXISTS (SELECT 1 FROM ingestion_jobs AS i WHERE i.dataset_version_id = x.id)",
    ),
    _Step(
        "datasets",
        ready="NOT EXISTS (SELECT 1 FROM dataset_versions AS v WHERE v.dataset_id = x.id)",
    ),
    # Billing (issue 16): an alert's deliveries, then its events, then the alert.
    _Step(
        "billing_alert_deliveries",
        owner="x.alert_id IN (SELECT a.id FROM billing_alerts AS a WHERE a.user_id = ANY(:uids))",
        optional=True,
    ),
    _Step(
        "billing_alert_events",
        ready="NOT EXISTS (SELECT 1 FROM billing_alert_deliveries AS d WHERE d.event_id = x.id)",
        optional=True,
    ),
    _Step(
        "billing_alerts",
        ready="NOT EXISTS (SELECT 1 FROM billing_alert_events AS e WHERE e.alert_id = x.id)",
        optional=True,
    ),
    # A batch prediction's output file goes, whether or not the ledger keeps its job
    # (storage_used_bytes follows by trigger).
    _Step("batch_outputs", path="location", optional=True),
    # A job's price lines go with the job (kept with it while the ledger names it).
    _Step(
        "job_price_items",
        key="ctid",
        owner="x.job_id IN (SELECT j.id FROM jobs AS j WHERE j.user_id = ANY(:uids))",
        where=_NOT_IN_LEDGER.format(col="job_id"),
        optional=True,
    ),
    _Step("job_nodes", where=_NOT_IN_LEDGER.format(col="job_id")),
    _Step(
        "jobs",
        where=_NOT_IN_LEDGER.format(col="id"),
        ready="NOT EXISTS (SELECT 1 FROM job_nodes AS n WHERE n.job_id = x.id)"
        " AND NOT EXISTS (SELECT 1 FROM job_price_items AS p WHERE p.job_id = x.id)"
        " AND NOT EXISTS (SELECT 1 FROM batch_outputs AS b WHERE b.job_id = x.id)",
    ),
    _Step(
        "workflow_snapshots",
        # Kept while a job the ledger refers to runs it.
        where="NOT EXISTS (SELECT 1 FROM jobs AS j JOIN credit_transactions AS t"
        " ON t.job_id = j.id WHERE j.workflow_snapshot_id = x.id)",
        ready="NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.workflow_snapshot_id = x.id)",
    ),
    _Step("workflows"),
)

_UIDS = bindparam("uids", type_=ARRAY(UUID(as_uuid=True)))


def _delete(step: _Step) -> str:
    returning = f"x.{step.path}" if step.path else "NULL"
    return (
        f"DELETE FROM {step.table} AS x WHERE x.{step.key} IN ("
        f"SELECT x.{step.key} FROM {step.table} AS x WHERE {step.owner} AND {step.where}"
        f" AND {step.ready} LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING {returning}"
    )


def _count(step: _Step) -> str:
    return f"SELECT count(*) FROM {step.table} AS x WHERE {step.owner} AND {step.where}"


def _remaining(step: _Step) -> str:
    return f"EXISTS (SELECT 1 FROM {step.table} AS x WHERE {step.owner} AND {step.where})"


_ELIGIBLE = (
    "SELECT u.id FROM users AS u WHERE u.is_deleted AND u.purged_at IS NULL"
    " AND u.deleted_at < :cutoff AND u.id <> ALL(:skip)"
)


#: Tables that refer to users and whose rows purge keeps: the ledger, the repair log,
#: the downloads the user made of other users' models (append-only, like the ledger;
#: the downloads of the user's own versions go with the versions); the invoices
#: (financial history, like the ledger) and the reconciliation adjustments (the
#: repair log, like derived_repairs). Metering's (issue 14) stay too: the request log
#: (retention drops whole months of it, database.metering.drop_partitions_before),
#: the usage and its charges (the financial history that the ledger's usage charges
#: add up to) and the meter; the holds expire within minutes and metering's sweep
#: removes them.
KEPT_TABLES = frozenset(
    {
        "credit_transactions",
        "derived_repairs",
        "model_downloads",
        "inference_requests",
        "usage_events",
        "usage_charges",
        "usage_meters",
        "usage_holds",
        "billing_invoices",
        "reconciliation_adjustments",
    }
)


def purge_tables(conn: Connection) -> tuple[_Step, ...]:
    """The purge steps whose tables exist in this database."""
    present = set(
        conn.execute(
            text(
                "SELECT c.relname FROM pg_class AS c"
                " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')"
            )
        ).scalars()
    )
    return tuple(step for step in _STEPS if step.table in present or not step.optional)


def _tombstone_sql(steps: Sequence[_Step]) -> str:
    # One user at a time (uids = [id]): the tombstone is written only when none of
    # the user's purgeable rows is left, locked by someone else or not.
    nothing_left = " AND ".join(f"NOT {_remaining(step)}" for step in steps)
    return (
        "UPDATE users SET email = NULL, full_name = NULL, oauth_provider = NULL,"
        " oauth_id = NULL, email_verified = false, password_hash = NULL,"
        " password_changed_at = NULL, purged_at = :now"
        f" WHERE id = (:uids)[1] AND purged_at IS NULL AND {nothing_left}"
    )


_pick_users = text(f"{_ELIGIBLE} ORDER BY u.id LIMIT :n FOR NO KEY UPDATE SKIP LOCKED").bindparams(
    bindparam("skip", type_=ARRAY(UUID(as_uuid=True)))
)

_delete_workflows = text(
    "DELETE FROM workflows AS x WHERE x.id IN (SELECT w.id FROM workflows AS w"
    " WHERE w.is_deleted AND w.deleted_at < :cutoff LIMIT :n FOR UPDATE SKIP LOCKED)"
)


def _is_lock_timeout(exc: BaseException) -> bool:
    """LockTimeout, translated or not (an engine without errors.install)."""
    return isinstance(exc, errors.LockTimeout) or isinstance(
        errors.translate(exc), errors.LockTimeout
    )


def _set_lock_timeout(conn: Connection, lock_timeout_ms: int | None) -> None:
    if lock_timeout_ms is None:
        from database.config import get_settings

        lock_timeout_ms = get_settings().lock_timeout_ms
    conn.execute(text("SELECT set_config('lock_timeout', :v, true)"), {"v": f"{lock_timeout_ms}ms"})


def _purge_batch(
    conn: Connection,
    steps: Sequence[_Step],
    uids: list[uuid.UUID],
    batch_size: int,
    now: dt.datetime,
    batch: PurgeReport,
) -> list[uuid.UUID]:
    """Delete at most ``batch_size`` rows of ``uids``; tombstone the users left empty.

    Returns the users that are not empty although no step found anything more to
    delete: some of their rows are locked by others (SKIP LOCKED passed them over).
    """
    budget = batch_size
    for step in steps:
        deleted = (
            conn.execute(text(_delete(step)).bindparams(_UIDS), {"uids": uids, "n": budget})
            .scalars()
            .all()
        )
        batch.rows[step.table] += len(deleted)
        batch.paths.extend(p for p in deleted if p)
        budget -= len(deleted)
        if budget == 0:
            return []  # more to do: the next batch takes the same users again
    busy = []
    tombstone = text(_tombstone_sql(steps)).bindparams(_UIDS)
    for uid in uids:
        if conn.execute(tombstone, {"uids": [uid], "now": now}).rowcount:
            batch.users_purged += 1
            # The audit trail stays; the IP addresses and user agents of what the
            # user did leave it (database.audit.redact_user).
            audit.redact_user(conn, uid)
        else:
            busy.append(uid)
    return busy


def purge(
    engine: Engine,
    *,
    older_than_days: int = RETENTION_DAYS,
    batch_size: int = 500,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    remove_file: FileRemover | None = None,
    max_batches: int | None = None,
    progress: Callable[[PurgeReport], None] | None = None,
    lock_timeout_ms: int | None = None,
    counts: Progress | None = None,
) -> PurgeReport:
    """Purge users deleted, and workflows soft-deleted, more than ``older_than_days`` ago.

    ``batch_size`` bounds the rows deleted per transaction (and the users taken per
    batch). ``max_batches`` stops early (a scheduler's time slice; the next run
    continues). ``now`` replaces the database clock (tests). ``progress`` is called
    after each batch. A batch whose cascade would wait longer than
    ``lock_timeout_ms`` (default ``DB_LOCK_TIMEOUT_MS``) for a row someone holds is
    rolled back and its users left for the next run. Returns what was removed.

    ``counts(done, total, what)`` (``database.progress``): with it, the rows to
    remove are counted first (as a dry run does), then each batch advances ``done``
    by the rows it removed; a dry run advances per table counted. A run stopped by
    ``max_batches`` ends short of the total.
    """
    if older_than_days < RETENTION_DAYS:
        raise ValueError(
            f"older_than_days must be at least {RETENTION_DAYS}: users deleted more recently"
            " can still be restored"
        )
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    remover = remove_file if remove_file is not None else default_file_remover()
    report = PurgeReport(dry_run=dry_run)

    with engine.connect() as conn:
        with conn.begin():
            current = _now(conn, now)
            steps = purge_tables(conn)
        cutoff = current - dt.timedelta(days=older_than_days)
        if dry_run:
            with conn.begin():
                _dry_run(conn, steps, cutoff, report, counts)
            return report
        total = 0
        if counts is not None:
            counted = PurgeReport(dry_run=True)
            with conn.begin():
                _dry_run(conn, steps, cutoff, counted)
            total = sum(counted.rows.values())
            counts(0, total, "counted")

        def advance(what: str) -> None:
            if counts is not None:
                done = sum(report.rows.values())
                counts(done, max(total, done), what)

        skip: list[uuid.UUID] = []
        users_per_batch = batch_size
        while max_batches is None or report.batches < max_batches:
            batch = PurgeReport()
            uids: list[uuid.UUID] = []
            try:
                with conn.begin():
                    _set_lock_timeout(conn, lock_timeout_ms)
                    uids = list(
                        conn.execute(
                            _pick_users, {"cutoff": cutoff, "skip": skip, "n": users_per_batch}
                        )
                        .scalars()
                        .all()
                    )
                    if not uids:
                        break
                    skip.extend(_purge_batch(conn, steps, uids, batch_size, current, batch))
                    _remove_files(remover, batch.paths, batch)
            except (errors.LockTimeout, DBAPIError) as exc:
                if not _is_lock_timeout(exc):
                    raise
                # A row of these users is held by someone (a cascade or SET NULL had to
                # wait): the batch is rolled back. Go on one user at a time, so only
                # the user whose row is held waits for the next run.
                if len(uids) > 1:
                    users_per_batch = 1
                else:
                    skip.extend(uids)
                batch = PurgeReport()
            report.add(batch)
            report.users_skipped = len(skip)
            report.batches += 1
            if progress is not None:
                progress(report)
            advance("users")

        while max_batches is None or report.batches < max_batches:
            try:
                with conn.begin():
                    _set_lock_timeout(conn, lock_timeout_ms)
                    n = conn.execute(
                        _delete_workflows, {"cutoff": cutoff, "n": batch_size}
                    ).rowcount
            except (errors.LockTimeout, DBAPIError) as exc:
                if not _is_lock_timeout(exc):
                    raise
                break  # a snapshot of theirs is held: the next run
            report.batches += 1
            report.workflows_purged += n
            report.rows["workflows"] += n
            if progress is not None:
                progress(report)
            advance("workflows")
            if n < batch_size:
                break
    if counts is not None:
        done = sum(report.rows.values())
        if max_batches is not None and report.batches >= max_batches:
            counts(done, max(total, done), "stopped at --max-batches")  # the rest: next run
        else:  # done: fewer than counted when rows were held by others (skipped)
            counts(done, done, "done")
    return report


def _remove_files(remover: FileRemover, paths: Sequence[str], report: PurgeReport) -> None:
    for location in dict.fromkeys(paths):  # each once, in order
        if remover(location):
            report.files_removed += 1
        else:
            report.files_skipped += 1


def _dry_run(
    conn: Connection,
    steps: Sequence[_Step],
    cutoff: dt.datetime,
    report: PurgeReport,
    counts: Progress | None = None,
) -> None:
    uids = list(
        conn.execute(
            text(_ELIGIBLE).bindparams(bindparam("skip", type_=ARRAY(UUID(as_uuid=True)))),
            {"cutoff": cutoff, "skip": []},
        ).scalars()
    )
    report.users_purged = len(uids)
    for i, step in enumerate(steps if uids else ()):
        report.rows[step.table] += conn.execute(
            text(_count(step)).bindparams(_UIDS), {"uids": uids}
        ).scalar_one()
        if counts is not None:
            counts(i + 1, len(steps) + 1, step.table)
    n = conn.execute(
        text(
            "SELECT count(*) FROM workflows WHERE is_deleted AND deleted_at < :cutoff"
            " AND user_id <> ALL(:uids)"
        ).bindparams(_UIDS),
        {"cutoff": cutoff, "uids": uids},
    ).scalar_one()
    report.workflows_purged = n
    report.rows["workflows"] += n
    if counts is not None:
        counts(len(steps) + 1, len(steps) + 1, "workflows")
