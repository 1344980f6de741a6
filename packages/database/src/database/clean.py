"""Retention (``automl-db clean``, after Airflow's ``db clean``): remove what is older
than a date, in bounded batches, optionally archived to Parquet first.

What each target removes (``--what``; all by default):

- ``jobs``: finished jobs (completed, failed, cancelled) that finished before the
  date, with their nodes and log lines. A job something still refers to is kept
  whole, but its log lines go: the ledger (a charge or refund names it, and the
  ledger is never deleted), a trained model, an experiment run, a lineage edge, or
  any other table's foreign key (found in the catalog, so a later table counts too).
- ``webhooks``: Stripe webhook events received before the date, except those still
  ``received`` (never handled: an operator should look at them first). Stripe stops
  redelivering after three days, and a redelivered payment is refused by the ledger
  anyway (its payment id is unique).
- ``sessions``: login sessions (``user_sessions``, the identity system's) that
  expired or were revoked before the date; skipped while the table does not exist.
- ``audit``: whole month partitions of ``audit_events`` that end on or before the
  date (``DROP TABLE``: the owner's DDL, the one way rows leave the append-only
  trail; a month the date cuts stays whole). Rows the DEFAULT partition holds are
  counted, not removed.
- ``inference``: the metering system's partitions, through
  ``database.metering.drop_partitions_before(engine, date)``; skipped with a message
  when that system is not installed.

Each batch is one transaction: select at most ``batch_size`` rows (``FOR UPDATE
SKIP LOCKED``: never waits for the apps), and with ``--archive`` write them to a
*pending* file (``DIR/<table>/.<table>-<hash>.parquet.pending``: hidden, never a
``*.parquet``; fsynced, via a temporary and a rename), delete them, commit; after the
commit the pending file is renamed to its final name and the folder fsynced. The
archive is on disk before the delete commits, and joins the archive (``*.parquet``)
only once it has. A kill leaves the rows (maybe with a pending file of them), or a
pending file and no rows (killed between the commit and the rename). Each step of a
run with ``--archive`` first settles such files, the database deciding: it locks the
file's rows (``FOR UPDATE``, at most ``lock_timeout``); rows there mean the delete
never committed, so the file is removed and the run archives the rows again; none
there mean it committed, so the file is promoted to its final name; still locked (a
live run's batch, or a killed run's the server has not yet noticed) means it is left,
with a note, for a later run. One transaction deletes a whole batch, so a file whose
rows are only partly there was rolled back and its missing rows removed by something
else (an archiving run archives what it deletes): it is removed too, with a note. And
a batch that locks a row a pending file holds removes that file (its writer ended
without deleting the row), so a file left while locked is never promoted over rows
archived since. Run it again, with any batch size: it continues where it stopped,
loses nothing, and archives no row twice (tests/test_clean.py SIGKILLs a real
``automl-db clean`` mid-work and re-runs it with another batch size). A kill while a
file is being written leaves its temporary (``.<name>.<pid>.tmp``, never a
``*.parquet``); the next run with ``--archive`` removes the temporaries of processes
that no longer exist on this machine. Right after a kill the server may take a moment
to notice the client is gone; until it has, the rows of the killed run's open batch
stay locked and a run skips them (``SKIP LOCKED``): a run that reports fewer rows
than expected is simply run again. Archive files are
``DIR/<table>/<table>-<hash>.parquet`` (a batch) and
``DIR/audit_events/<partition>.parquet`` (a month); every column is kept, UUIDs,
enums, addresses and JSON as strings.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from database import audit, errors
from database.models.enums import JobStatus
from database.progress import Progress

TARGETS = ("jobs", "webhooks", "sessions", "audit", "inference")
FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)

__all__ = ["FINISHED", "TARGETS", "CleanReport", "clean"]


@dataclass
class CleanReport:
    before: dt.datetime
    dry_run: bool = False
    #: Rows removed (dry run: to remove) per table.
    rows: Counter[str] = field(default_factory=Counter)
    #: Partitions dropped (dry run: to drop), with their rows.
    partitions: list[tuple[str, int]] = field(default_factory=list)
    #: What was skipped, and why.
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    batches: int = 0

    def render(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"clean before {self.before.isoformat()} {verb}:"]
        for table, n in sorted(self.rows.items()):
            lines.append(f"  {table}: {n} rows")
        for name, n in self.partitions:
            lines.append(
                f"  partition {name}: {n} rows ({'to drop' if self.dry_run else 'dropped'})"
            )
        if not self.rows and not self.partitions:
            lines.append("  nothing")
        if not self.dry_run:
            lines.append(f"batches: {self.batches}; archive files written: {len(self.files)}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


@dataclass(frozen=True)
class _Step:
    table: str
    #: Which rows go (alias x; :before is the date).
    where: str
    #: Columns naming a row, for the DELETE and the archive file's name.
    ident: tuple[str, ...] = ("id",)
    #: What a dry run counts, when ``where`` also waits for children to go first.
    count_where: str | None = None


def _finished(alias: str) -> str:
    statuses = ", ".join(f"'{s.value}'" for s in FINISHED)
    return (
        f"{alias}.status IN ({statuses})"
        f" AND coalesce({alias}.completed_at, {alias}.updated_at) < :before"
    )


def _job_referrers(conn: Connection) -> list[tuple[str, str]]:
    """(table, column) of every foreign key to jobs.id but the nodes' and logs'."""
    return [
        (r.table, r.column)
        for r in conn.execute(
            text(
                "SELECT c.conrelid::regclass::text AS table, a.attname AS column"
                " FROM pg_constraint AS c"
                " CROSS JOIN LATERAL unnest(c.conkey, c.confkey) AS k(attnum, refnum)"
                " JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum"
                " JOIN pg_attribute AS r ON r.attrelid = c.confrelid AND r.attnum = k.refnum"
                " WHERE c.contype = 'f' AND c.confrelid = 'public.jobs'::regclass"
                " AND r.attname = 'id'"
                " AND c.conrelid NOT IN ('public.job_nodes'::regclass, 'public.job_logs'::regclass)"
                " ORDER BY 1, 2"
            )
        )
    ]


def _job_steps(conn: Connection) -> list[_Step]:
    kept = (
        " AND ".join(
            f"NOT EXISTS (SELECT 1 FROM {table} AS ref WHERE ref.{column} = j.id)"
            for table, column in _job_referrers(conn)
        )
        or "true"
    )
    deletable = f"SELECT j.id FROM jobs AS j WHERE {_finished('j')} AND {kept}"
    return [
        _Step(
            "job_logs",
            f"x.job_id IN (SELECT j.id FROM jobs AS j WHERE {_finished('j')})",
            ident=("job_id", "seq"),
        ),
        _Step("job_nodes", f"x.job_id IN ({deletable})"),
        _Step(
            "jobs",
            f"x.id IN ({deletable})"
            " AND NOT EXISTS (SELECT 1 FROM job_nodes AS n WHERE n.job_id = x.id)"
            " AND NOT EXISTS (SELECT 1 FROM job_logs AS l WHERE l.job_id = x.id)",
            count_where=f"x.id IN ({deletable})",
        ),
    ]


def _columns(conn: Connection, table: str) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in conn.execute(
            text(
                "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute AS a"
                " WHERE a.attrelid = to_regclass(:t) AND a.attnum > 0 AND NOT a.attisdropped"
                " ORDER BY a.attnum"
            ),
            {"t": f"public.{table}"},
        )
    ]


def _session_step(conn: Connection) -> _Step | None:
    names = {c for c, _ in _columns(conn, "user_sessions")}
    if not names:
        return None
    ends = [f"x.{c} < :before" for c in ("expires_at", "revoked_at") if c in names]
    if not ends or "id" not in names:
        return None
    return _Step("user_sessions", "(" + " OR ".join(ends) + ")")


_WEBHOOKS = _Step("stripe_webhook_events", "x.created_at < :before AND x.status <> 'received'")


# --- Parquet ------------------------------------------------------------------------------
def _arrow_schema(columns: Sequence[tuple[str, str]]) -> Any:
    import pyarrow as pa

    def kind(pg_type: str) -> Any:
        if pg_type == "timestamp with time zone":
            return pa.timestamp("us", tz="UTC")
        if pg_type in ("smallint", "integer", "bigint"):
            return pa.int64()
        if pg_type in ("real", "double precision"):
            return pa.float64()
        if pg_type == "boolean":
            return pa.bool_()
        return pa.string()

    return pa.schema([(name, kind(pg_type)) for name, pg_type in columns])


def _cell(value: Any, as_text: bool) -> Any:
    if value is None or not as_text:
        return value
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, separators=(",", ":"))
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)


def _records(
    rows: Iterable[Any], columns: Sequence[tuple[str, str]], schema: Any
) -> list[dict[str, Any]]:
    import pyarrow as pa

    text_columns = {f.name for f in schema if f.type == pa.string()}
    return [{c: _cell(row[c], c in text_columns) for c, _ in columns} for row in rows]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_parquet(path: Path, batches: Iterable[list[dict[str, Any]]], schema: Any) -> None:
    """Write to a temporary name, fsync, rename, fsync the folder: on disk for good
    before the caller deletes anything."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        with pq.ParquetWriter(fh, schema) as writer:
            for records in batches:
                writer.write_table(pa.Table.from_pylist(records, schema=schema))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _batch_name(table: str, rows: Sequence[Any], ident: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([str(row[c]) for c in ident]).encode())
    return f"{table}-{digest.hexdigest()[:24]}.parquet"


def _remove_stale_temporaries(archive: Path) -> list[Path]:
    """Remove the temporaries (``.<name>.<pid>.tmp``) of runs killed while writing:
    those whose process no longer exists on this machine."""
    removed: list[Path] = []
    if not archive.is_dir():
        return removed
    for path in archive.glob("*/.*.tmp"):
        try:
            pid = int(path.name.rsplit(".", 2)[-2])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _pending_path(final: Path) -> Path:
    """A batch's file until its delete commits: hidden and not ``*.parquet``, so no
    reader takes it for part of the archive."""
    return final.with_name(f".{final.name}.pending")


def _final_path(pending: Path) -> Path:
    return pending.with_name(pending.name[1 : -len(".pending")])


def _promote(pending: Path) -> Path:
    """Rename a committed batch's pending file to its final name, fsync the folder: from
    then on it is part of the archive. Already renamed (a concurrent run's recovery
    promoted it) is fine; gone under both names raises FileNotFoundError."""
    final = _final_path(pending)
    try:
        os.rename(pending, final)
    except FileNotFoundError:
        if not final.exists():
            raise
    _fsync_dir(final.parent)
    return final


def _pending_keys(path: Path, ident: Sequence[str]) -> set[tuple[str, ...]] | None:
    """The keys of a pending file's rows, as text (None: the file went meanwhile)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=list(ident))
    except FileNotFoundError:
        return None
    values = [table.column(c).to_pylist() for c in ident]
    return {tuple(str(v) for v in key) for key in zip(*values, strict=True)}


def _is_lock_timeout(exc: BaseException) -> bool:
    return isinstance(exc, errors.LockTimeout) or isinstance(
        errors.translate(exc), errors.LockTimeout
    )


def _recover_pending(
    conn: Connection,
    step: _Step,
    columns: Sequence[tuple[str, str]],
    archive: Path,
    report: CleanReport,
    lock_timeout_ms: int,
) -> None:
    """Settle the pending files of runs killed mid-batch, before this step's first batch:
    the rows decide, locked (waiting at most ``lock_timeout``) while the file is handled.
    Rows there: the batch's delete never committed, unlink (this run archives them
    again). None there: it committed before the rename, promote. Locked: leave it."""
    folder = archive / step.table
    if not folder.is_dir():
        return
    types = dict(columns)
    names = ", ".join(f"k{i}" for i in range(len(step.ident)))
    # Text keys cast to the columns' types (not the columns to text): the key's index is used.
    casts = ", ".join(f"CAST(k.k{i} AS {types[c]})" for i, c in enumerate(step.ident))
    arrays = ", ".join(f"CAST(:k{i} AS text[])" for i in range(len(step.ident)))
    select = text(
        f"SELECT x.ctid FROM {step.table} AS x"
        f" WHERE ({', '.join(f'x.{c}' for c in step.ident)})"
        f" IN (SELECT {casts} FROM unnest({arrays}) AS k({names}))"
        " FOR UPDATE OF x"
    )
    for pending in sorted(folder.glob(".*.pending")):
        keys = _pending_keys(pending, step.ident)
        if keys is None:
            continue
        params = {f"k{i}": [key[i] for key in keys] for i in range(len(step.ident))}
        try:
            with conn.begin():
                _set_lock_timeout(conn, lock_timeout_ms)
                present = len(conn.execute(select, params).all())
                if present:
                    # One transaction deletes a whole batch, so some rows gone means
                    # something else removed them after it rolled back: they are not
                    # this file's to archive (an archiving run archived them itself).
                    pending.unlink(missing_ok=True)
                    if present < len(keys):
                        report.notes.append(
                            f"{step.table}: removed {pending.name}, an interrupted batch whose"
                            f" delete never committed; {len(keys) - present} of its"
                            f" {len(keys)} rows were removed by something else since"
                        )
                else:
                    _promote(pending)
        except FileNotFoundError:
            continue  # settled by a concurrent run meanwhile
        except (DBAPIError, errors.LockTimeout) as exc:
            if not _is_lock_timeout(exc):
                raise
            report.notes.append(
                f"{step.table}: left {pending.name}: its rows are locked (a live run's batch,"
                " or a killed run's the server has not yet noticed); a later run settles it"
            )


def _unlink_superseded(
    folder: Path,
    ident: Sequence[str],
    rows: Sequence[Any],
    seen: dict[str, set[tuple[str, ...]]],
) -> None:
    """Unlink the pending files holding a row of this batch: this transaction holds the
    rows' locks, so the run that wrote such a file ended without deleting them (one left
    by recovery, its rows locked then, must not be promoted once this batch archives them)."""
    if not folder.is_dir():
        return
    batch = {tuple(str(row[c]) for c in ident) for row in rows}
    for pending in folder.glob(".*.pending"):
        keys = seen.get(pending.name)  # the name is the keys' hash: its keys never change
        if keys is None:
            keys = _pending_keys(pending, ident)
            if keys is None:
                continue
            seen[pending.name] = keys
        if not keys.isdisjoint(batch):
            pending.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the work -----------------------------------------------------------------------------
Hook = Callable[[str, str, CleanReport], None]


def _set_lock_timeout(conn: Connection, ms: int) -> None:
    conn.execute(text("SELECT set_config('lock_timeout', :v, true)"), {"v": f"{ms}ms"})


def _run_step(
    conn: Connection,
    step: _Step,
    before: dt.datetime,
    report: CleanReport,
    *,
    batch_size: int,
    archive: Path | None,
    hook: Hook | None,
    lock_timeout_ms: int,
) -> None:
    with conn.begin():
        columns = _columns(conn, step.table)
    schema = _arrow_schema(columns) if archive is not None else None
    key_list = ", ".join(f"x.{c}" for c in step.ident)
    select_rows = text(
        f"SELECT x.ctid::text AS _ctid, x.* FROM {step.table} AS x WHERE {step.where}"
        f" ORDER BY {key_list} LIMIT :n FOR UPDATE OF x SKIP LOCKED"
    )
    delete = text(f"DELETE FROM {step.table} AS x WHERE x.ctid = ANY(CAST(:ctids AS tid[]))")
    seen: dict[str, set[tuple[str, ...]]] = {}
    if archive is not None:
        _recover_pending(conn, step, columns, archive, report, lock_timeout_ms)
    while True:
        pending: Path | None = None
        with conn.begin():
            _set_lock_timeout(conn, lock_timeout_ms)
            rows = conn.execute(select_rows, {"before": before, "n": batch_size}).mappings().all()
            if not rows:
                return
            if archive is not None:
                folder = archive / step.table
                _unlink_superseded(folder, step.ident, rows, seen)
                pending = _pending_path(folder / _batch_name(step.table, rows, step.ident))
                _write_parquet(pending, [_records(rows, columns, schema)], schema)
                if hook is not None:
                    hook("archived", step.table, report)
            conn.execute(delete, {"ctids": [r["_ctid"] for r in rows]})
        if pending is not None:
            report.files.append(_promote(pending))
        report.rows[step.table] += len(rows)
        report.batches += 1
        if hook is not None:
            hook("committed", step.table, report)
        if len(rows) < batch_size:
            return


def _count(conn: Connection, step: _Step, before: dt.datetime) -> int:
    value = conn.execute(
        text(f"SELECT count(*) FROM {step.table} AS x WHERE {step.count_where or step.where}"),
        {"before": before},
    ).scalar_one()
    return int(value)


def _archive_partition(
    archive: Path, batch_size: int
) -> Callable[[Connection, audit.Partition], None]:
    def write(conn: Connection, part: audit.Partition) -> None:
        columns = _columns(conn, part.name)
        schema = _arrow_schema(columns)
        result = conn.execute(
            text(f'SELECT * FROM public."{part.name}" ORDER BY occurred_at, id').execution_options(
                stream_results=True, yield_per=batch_size
            )
        )

        def chunks() -> Iterable[list[dict[str, Any]]]:
            for partition in result.mappings().partitions(batch_size):
                yield _records(partition, columns, schema)

        _write_parquet(archive / "audit_events" / f"{part.name}.parquet", chunks(), schema)

    return write


def clean(
    engine: Engine,
    before: dt.datetime,
    *,
    what: Sequence[str] = TARGETS,
    archive: Path | None = None,
    dry_run: bool = False,
    batch_size: int = 1000,
    hook: Hook | None = None,
    lock_timeout_ms: int = 5000,
    progress: Progress | None = None,
) -> CleanReport:
    """Remove what ``what`` names that is older than ``before`` (aware datetime).

    ``hook(stage, table, report)`` is called after a batch's pending file is on disk
    (``archived``, before its delete commits) and after it commits and the file has
    its final name (``committed``): the tests interrupt a run there.
    ``progress(done, total, table)`` (``database.progress``): with it, the rows are
    counted first (in the transaction that finds the tables), then each committed
    batch advances ``done``; a dry run advances per table counted. Audit partitions
    and the inference log's months are dropped whole, after the rows.
    """
    if before.tzinfo is None:
        raise ValueError("naive datetime refused: give a timezone-aware datetime")
    unknown = sorted(set(what) - set(TARGETS))
    if unknown:
        raise ValueError(
            f"unknown target(s) {', '.join(unknown)}: choose from {', '.join(TARGETS)}"
        )
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = CleanReport(before=before, dry_run=dry_run)
    if archive is not None and not dry_run:
        stale = _remove_stale_temporaries(archive)
        if stale:
            report.notes.append(
                f"removed {len(stale)} temporary file(s) of an interrupted run (no row lost:"
                " their rows were not deleted)"
            )

    with engine.connect() as conn:
        with conn.begin():
            steps: list[_Step] = []
            if "jobs" in what:
                steps.extend(_job_steps(conn))
            if "webhooks" in what:
                steps.append(_WEBHOOKS)
            if "sessions" in what:
                session_step = _session_step(conn)
                if session_step is None:
                    report.notes.append("sessions: no user_sessions table here; skipped")
                else:
                    steps.append(session_step)
            total = 0
            if dry_run:
                for i, step in enumerate(steps):
                    n = _count(conn, step, before)
                    if n:
                        report.rows[step.table] += n
                    if progress is not None:
                        progress(i + 1, len(steps), step.table)
            elif progress is not None:
                total = sum(_count(conn, step, before) for step in steps)
                progress(0, total, "counted")
        if not dry_run:
            tables = [step.table for step in steps]

            def advance(stage: str, table: str, report: CleanReport) -> None:
                if hook is not None:
                    hook(stage, table, report)
                if progress is not None and stage == "committed":
                    done = sum(report.rows[t] for t in tables)
                    progress(done, max(total, done), table)

            for step in steps:
                _run_step(
                    conn,
                    step,
                    before,
                    report,
                    batch_size=batch_size,
                    archive=archive,
                    hook=advance if hook is not None or progress is not None else None,
                    lock_timeout_ms=lock_timeout_ms,
                )

    if "audit" in what:
        report.partitions.extend(
            audit.drop_partitions_before(
                engine,
                before,
                dry_run=dry_run,
                archive=_archive_partition(archive, batch_size) if archive is not None else None,
                lock_timeout_ms=lock_timeout_ms,
            )
        )
        if archive is not None and not dry_run:
            report.files.extend(
                archive / "audit_events" / f"{name}.parquet"
                for name, rows in report.partitions
                if rows
            )
        with engine.connect() as conn:
            stranded = conn.execute(
                text("SELECT count(*) FROM public.audit_events_default WHERE occurred_at < :b"),
                {"b": before},
            ).scalar_one()
        if stranded:
            report.notes.append(
                f"audit: {stranded} rows older than the date are in the DEFAULT partition; they"
                " leave once their month's partition exists (database.audit.ensure_partitions)"
            )
    if "inference" in what:
        _inference(engine, before, dry_run, report)
    if progress is not None:  # the partitions and the log's months, dropped whole: done
        end = len(steps) if dry_run else max(total, sum(report.rows[s.table] for s in steps))
        progress(end, end, "done")
    return report


def _inference(engine: Engine, before: dt.datetime, dry_run: bool, report: CleanReport) -> None:
    from database import metering

    drop = getattr(metering, "drop_partitions_before", None)
    if drop is None:
        report.notes.append(
            "inference: database.metering.drop_partitions_before is not here; skipped"
        )
        return
    if dry_run:
        report.notes.append("inference: dry run; the metering system's partitions are not counted")
        return
    result = drop(engine, before)
    report.notes.append(f"inference: database.metering.drop_partitions_before -> {result!r}")
