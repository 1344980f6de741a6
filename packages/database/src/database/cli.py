"""``automl-db``: the database's command line.

automl-db up       start the embedded PostgreSQL (unless DATABASE_URL names a
                   server), migrate to head, print what is installed
automl-db status   print the same without changing anything; exit 1 when the
                   database is behind head or a trigger is missing
automl-db down     stop the embedded PostgreSQL; exit 1, naming them, while live
                   processes use it (--force stops it anyway)
automl-db seed     insert the credit packages and tutorials (idempotent; `up`
                   runs it after migrating)
automl-db clean    retention: remove finished jobs, old webhook events, ended
                   sessions, old audit months, inference partitions older than
                   --before, in batches, archived to Parquet first with --archive
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection, Engine

from database import embedded, migrations, seed
from database.config import DatabaseSettings, InvalidDatabaseURL, get_settings
from database.session import make_engine
from database.triggers import expected_triggers


@dataclass
class Report:
    url: URL
    embedded: bool
    revision: tuple[str, ...]
    head: tuple[str, ...]
    tables: list[str]
    triggers: dict[str, list[str]]
    missing_triggers: list[str] = field(default_factory=list)

    @property
    def at_head(self) -> bool:
        return set(self.revision) == set(self.head)

    @property
    def healthy(self) -> bool:
        return self.at_head and not self.missing_triggers

    def render(self) -> str:
        where = " (embedded)" if self.embedded else ""
        revision = ", ".join(self.revision) or "none (empty database)"
        state = "at head" if self.at_head else f"BEHIND head {', '.join(self.head)}"
        lines = [
            f"database: {self.url.render_as_string(hide_password=True)}{where}",
            f"revision: {revision} ({state})",
            f"tables ({len(self.tables)}): {', '.join(self.tables)}",
            f"triggers ({sum(len(v) for v in self.triggers.values())}):",
        ]
        for table, names in sorted(self.triggers.items()):
            lines.append(f"  {table}: {', '.join(names)}")
        if self.missing_triggers:
            lines.append(f"MISSING triggers: {', '.join(self.missing_triggers)}")
        return "\n".join(lines)


def inspect_database(connection: Connection, url: URL, is_embedded: bool) -> Report:
    tables = list(
        connection.execute(
            text(
                "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
                " AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
                " AND c.relname <> 'alembic_version' ORDER BY 1"
            )
        ).scalars()
    )
    installed: dict[str, list[str]] = {}
    for table, name in connection.execute(
        text(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal"
            " AND NOT c.relispartition"
            " ORDER BY 1, 2"
        )
    ):
        installed.setdefault(table, []).append(name)
    missing = [
        f"{t.table}.{t.name}"
        for t in expected_triggers()
        if t.name not in installed.get(t.table, [])
    ]
    return Report(
        url=url,
        embedded=is_embedded,
        revision=migrations.current(connection),
        head=migrations.heads(),
        tables=tables,
        triggers=installed,
        missing_triggers=missing,
    )


def _report(settings: DatabaseSettings, url: URL) -> Report:
    engine = make_engine(url, settings)
    try:
        with engine.connect() as connection:
            return inspect_database(connection, url, settings.uses_embedded)
    finally:
        engine.dispose()


def cmd_up(settings: DatabaseSettings) -> int:
    url = settings.url()  # starts the embedded server when DATABASE_URL is unset
    if settings.uses_embedded:
        print(f"embedded PostgreSQL running, data in {settings.data_dir / 'pg'}")
    engine = make_engine(url, settings)
    try:
        migrations.upgrade(engine, quiet=True)
        seeded = seed.seed(engine)
    finally:
        engine.dispose()
    report = _report(settings, url)
    print(seeded.render())
    print(report.render())
    if settings.uses_embedded:
        print(f"\nconnect with: DATABASE_URL='{url.render_as_string(hide_password=True)}'")
    return 0 if report.healthy else 1


def cmd_status(settings: DatabaseSettings) -> int:
    if settings.uses_embedded and not (settings.data_dir / "pg" / "postmaster.pid").exists():
        print(
            f"embedded PostgreSQL is not running (data folder {settings.data_dir / 'pg'}): "
            "run `automl-db up` or `make run`",
            file=sys.stderr,
        )
        return 1
    report = _report(settings, settings.url())
    print(report.render())
    return 0 if report.healthy else 1


def cmd_down(settings: DatabaseSettings, args: argparse.Namespace) -> int:
    """Stop the embedded server. Exit 1, naming them, while live processes use it
    (unless ``--force``), and whenever it still runs afterwards."""
    if not settings.uses_embedded:
        print("DATABASE_URL names an external server: nothing to stop", file=sys.stderr)
        return 0
    result = embedded.stop(settings.data_dir, force=args.force)
    stale = (
        f" (forgot {len(result.stale)} exited process(es) still listed:"
        f" {', '.join(map(str, result.stale))})"
        if result.stale
        else ""
    )
    users = ", ".join(h.render() for h in result.holders)
    if result.state == "not_running":
        print("embedded PostgreSQL was not running")
        return 0
    if result.state == "stopped":
        forced = f"; it was still used by {users}" if result.holders else ""
        print(f"embedded PostgreSQL stopped{stale}{forced}")
        return 0
    if result.state == "in_use":
        print(
            f"embedded PostgreSQL not stopped: in use by {users}{stale}. Stop them first"
            " (Ctrl-C in `make run`), or run `automl-db down --force`",
            file=sys.stderr,
        )
        return 1
    print(f"embedded PostgreSQL did not stop: {result.reason}{stale}", file=sys.stderr)
    return 1


def _engine_for_admin(settings: DatabaseSettings) -> Engine:
    return make_engine(settings.url(), settings)


def cmd_verify(settings: DatabaseSettings, args: argparse.Namespace) -> int:
    from database.verify import verify

    engine = _engine_for_admin(settings)
    try:
        report = verify(engine, user_ids=args.user or None, repair=args.repair)
    finally:
        engine.dispose()
    print(report.render())
    return 0 if report.ok else 1


def cmd_purge(settings: DatabaseSettings, args: argparse.Namespace) -> int:
    from database.lifecycle import purge

    engine = _engine_for_admin(settings)
    try:
        report = purge(
            engine,
            older_than_days=args.older_than_days,
            batch_size=args.batch_size,
            dry_run=args.dry_run,
            max_batches=args.max_batches,
        )
    except ValueError as exc:
        print(f"automl-db purge: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(report.render())
    return 0


def _before(value: str) -> dt.datetime:
    """A date (midnight UTC) or an ISO datetime with a time zone."""
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date: {value!r} (YYYY-MM-DD, or an ISO datetime with a time zone)"
        ) from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("give the datetime a time zone (e.g. ...T00:00:00Z)")
    return parsed


def _targets(value: str) -> list[str]:
    from database.clean import TARGETS

    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(TARGETS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose among {','.join(TARGETS)} (got {value!r})")
    return names


def cmd_clean(settings: DatabaseSettings, args: argparse.Namespace) -> int:
    from database.clean import TARGETS, clean

    if args.before > dt.datetime.now(dt.UTC):
        print("automl-db clean: --before is in the future", file=sys.stderr)
        return 2
    engine = _engine_for_admin(settings)
    try:
        report = clean(
            engine,
            args.before,
            what=args.what or TARGETS,
            archive=args.archive,
            dry_run=args.dry_run,
            batch_size=args.batch_size,
        )
    finally:
        engine.dispose()
    print(report.render())
    return 0


def cmd_grant(settings: DatabaseSettings, args: argparse.Namespace) -> int:
    from database.errors import RoleNotFound, UnsafeRole
    from database.grants import grant

    engine = _engine_for_admin(settings)
    try:
        with engine.begin() as conn:
            report = grant(conn, args.role, create=args.create, operator=args.operator)
    except (RoleNotFound, UnsafeRole) as exc:
        print(f"automl-db grant: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(report.render())
    return 0


def cmd_seed(settings: DatabaseSettings) -> int:
    engine = make_engine(settings.url(), settings)
    try:
        report = seed.seed(engine)
    finally:
        engine.dispose()
    print(report.render())
    return 0


COMMANDS: dict[str, Callable[..., int]] = {
    "seed": cmd_seed,
    "up": cmd_up,
    "status": cmd_status,
    "down": cmd_down,
    "verify": cmd_verify,
    "purge": cmd_purge,
    "grant": cmd_grant,
    "clean": cmd_clean,
}
WITH_ARGS = {"verify", "purge", "grant", "down", "clean"}


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="automl-db", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start (embedded) PostgreSQL, migrate to head, print the schema")
    sub.add_parser("status", help="print revision, tables and triggers; exit 1 if not at head")
    down = sub.add_parser(
        "down", help="stop the embedded PostgreSQL (exit 1 while live processes use it)"
    )
    down.add_argument(
        "--force",
        action="store_true",
        help="stop it even while live processes use it (they lose their connections)",
    )
    sub.add_parser("seed", help="insert the credit packages and tutorials (idempotent)")
    verify = sub.add_parser(
        "verify", help="check balances, ledger chains, counters and storage; exit 1 on drift"
    )
    verify.add_argument(
        "--repair",
        action="store_true",
        help="recompute drifted counters and storage (logged in derived_repairs);"
        " the ledger and balances are never rewritten",
    )
    verify.add_argument(
        "--user",
        action="append",
        type=uuid.UUID,
        metavar="ID",
        help="check only this user (repeatable)",
    )
    purge = sub.add_parser(
        "purge", help="hard-delete data of users deleted (and workflows soft-deleted) long ago"
    )
    purge.add_argument(
        "--older-than-days",
        type=int,
        default=30,
        help="retention window in days (default and minimum 30)",
    )
    purge.add_argument(
        "--batch-size",
        type=_positive,
        default=500,
        help="rows deleted per transaction (default 500)",
    )
    purge.add_argument(
        "--max-batches",
        type=_positive,
        default=None,
        help="stop after this many batches (run again to continue)",
    )
    purge.add_argument("--dry-run", action="store_true", help="count, remove nothing")
    clean = sub.add_parser(
        "clean",
        help="retention: remove what is older than --before, in batches (resumable)",
    )
    clean.add_argument(
        "--before",
        type=_before,
        required=True,
        metavar="DATE",
        help="remove what ended before this date (YYYY-MM-DD, UTC) or ISO datetime",
    )
    clean.add_argument(
        "--what",
        type=_targets,
        default=None,
        metavar="LIST",
        help="comma-separated among jobs,webhooks,sessions,audit,inference (default all)",
    )
    clean.add_argument(
        "--archive",
        type=Path,
        default=None,
        metavar="DIR",
        help="write every removed row to Parquet files in DIR first (fsynced before the delete)",
    )
    clean.add_argument("--dry-run", action="store_true", help="count, remove nothing")
    clean.add_argument(
        "--batch-size",
        type=_positive,
        default=1000,
        help="rows per transaction (default 1000)",
    )
    grant = sub.add_parser(
        "grant", help="give the applications' role (or, --operator, an operator's) least privilege"
    )
    grant.add_argument("role", help="the role the API and workers (or the operators) connect as")
    grant.add_argument(
        "--operator",
        action="store_true",
        help="an operator's role: credit packages, users' tiers, credit adjustments",
    )
    grant.add_argument(
        "--create",
        action="store_true",
        help="create the role (LOGIN, no password) if it does not exist",
    )
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic ValidationError wrapping InvalidDatabaseURL
        print(f"automl-db: invalid settings: {_first_error(exc)}", file=sys.stderr)
        return 2
    try:
        if args.command in WITH_ARGS:
            return COMMANDS[args.command](settings, args)
        return COMMANDS[args.command](settings)
    except InvalidDatabaseURL as exc:
        print(f"automl-db: {exc}", file=sys.stderr)
        return 2


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
