"""``automl-db``: the database's command line.

automl-db up       start the embedded PostgreSQL (unless DATABASE_URL names a
                   server), migrate to head, print what is installed
automl-db status   print the same without changing anything; exit 1 when the
                   database is behind head or a trigger is missing
automl-db down     stop the embedded PostgreSQL; exit 1, naming them, while live
                   processes use it (--force stops it anyway)
automl-db seed     insert the credit packages and tutorials (idempotent; `up`
                   runs it after migrating); --demo adds a model registry to explore
                   (demo users, datasets, trained models, versions, lineage, sharing,
                   downloads; idempotent), printing the demo owner's API key once
automl-db users promote|demote EMAIL
                   make the user of EMAIL an admin (or a user again): how the
                   first admin comes to be (an operator's act, no actor needed)
automl-db inference-retention --before DATE [--dry-run]
                   drop the request log's months ending on or before DATE
automl-db charge-usage [--now]
                   charge uncharged usage through the ledger (what the worker does)
automl-db prices   show the price books (`show [--tier T]`), or start a new one
                   (`set --tier T SKU=CREDITS ...`): an operator's act
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
from typing import Any

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
                " AND c.relkind IN ('r', 'p') AND c.relname <> 'alembic_version'"
                " AND NOT c.relispartition ORDER BY 1"  # a partition is its table's
            )
        ).scalars()
    )
    installed: dict[str, list[str]] = {}
    for table, name in connection.execute(
        text(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal"
            " AND NOT c.relispartition ORDER BY 1, 2"
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
    import datetime as dt

    from database.billing import record_reconciliation
    from database.errors import DatabaseError
    from database.verify import verify

    engine = _engine_for_admin(settings)
    try:
        started = dt.datetime.now(dt.UTC)
        report = verify(engine, user_ids=args.user or None, repair=args.repair)
        try:
            # Every verify is kept (reconciliation_runs), with what a repair changed.
            run_id = record_reconciliation(
                engine, report, source="cli", started_at=started, repair=args.repair
            )
        except DatabaseError as exc:  # a role without INSERT there: report, go on
            print(f"automl-db verify: run not recorded: {exc}", file=sys.stderr)
            run_id = None
    finally:
        engine.dispose()
    print(report.render())
    if run_id is not None:
        print(f"recorded as reconciliation run {run_id}")
    return 0 if report.ok else 1


def cmd_prices(settings: DatabaseSettings, args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    from database import billing
    from database.errors import DatabaseError

    engine = _engine_for_admin(settings)
    try:
        with Session(engine) as session:
            if args.action == "set":
                prices: dict[str, int] = {}
                units: dict[str, str] = {}
                for spec in args.prices:
                    sku, _, value = spec.partition("=")
                    credits, _, unit = value.partition("/")
                    if not sku or not credits.isdigit():
                        print(
                            f"automl-db prices: {spec!r} is not SKU=CREDITS[/UNIT]", file=sys.stderr
                        )
                        return 2
                    prices[sku] = int(credits)
                    if unit:
                        units[sku] = unit
                try:
                    book = billing.set_prices(
                        session,
                        tier=args.tier,
                        prices=prices,
                        units=units,
                        description=args.description,
                    )
                except (DatabaseError, ValueError) as exc:
                    print(f"automl-db prices: {exc}", file=sys.stderr)
                    return 1
                print(f"price book {book.id} ({book.tier}) in force from {book.effective_from}")
                return 0
            for book in billing.books(session, args.tier):
                end = book.effective_to.isoformat() if book.effective_to else "open"
                print(f"{book.tier} {book.id} {book.effective_from.isoformat()} .. {end}")
                for sku, p in sorted(book.items.items()):
                    print(f"  {sku:<20} {p.credits_per_unit:>8} credits / {p.unit}")
    finally:
        engine.dispose()
    return 0


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


def cmd_inference_retention(settings: DatabaseSettings, args: argparse.Namespace) -> int:
    """Drop the request log's months that end on or before ``--before`` (whole
    partitions: DDL as the owner; the rows are never DELETEd)."""
    from database import metering

    engine = _engine_for_admin(settings)
    try:
        names = metering.drop_partitions_before(engine, args.before, dry_run=args.dry_run)
    finally:
        engine.dispose()
    verb = "would drop" if args.dry_run else "dropped"
    print(f"{verb} {len(names)} partition(s) of inference_requests: {', '.join(names) or '-'}")
    return 0


def cmd_charge_usage(settings: DatabaseSettings, args: argparse.Namespace) -> int:
    """Charge uncharged usage through the ledger (the closed hours; ``--now``: all)."""
    from database import metering

    engine = _engine_for_admin(settings)
    try:
        report = metering.charge_usage(
            engine, through=dt.datetime.now(dt.UTC) if args.now else None
        )
    finally:
        engine.dispose()
    print(report.render())
    for user_id, why in sorted(report.unpaid.items()):
        print(f"  user {user_id} left uncharged: {why}")
    return 0


def cmd_users(settings: DatabaseSettings, args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    from database import errors, identity
    from database.models import UserRole

    role = UserRole.ADMIN if args.action == "promote" else UserRole.USER
    engine = _engine_for_admin(settings)
    try:
        with Session(engine) as session:
            user = identity.set_role(session, args.email, role)
    except errors.DatabaseError as exc:
        print(f"automl-db users {args.action}: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"user {user.id} ({args.email}) is now {user.role.value}")
    return 0


def cmd_seed(settings: DatabaseSettings, args: argparse.Namespace) -> int:
    if args.new_key and not args.demo:
        print("automl-db seed: --new-key goes with --demo", file=sys.stderr)
        return 2
    seed_demo: Callable[..., Any] | None = None
    if args.demo:
        try:  # the workers' package trains and saves the models (it is in the workspace)
            from workers.demo import seed_demo
        except ImportError as exc:
            print(
                f"automl-db seed --demo needs the workers and pipeline packages: {exc}",
                file=sys.stderr,
            )
            return 2
    engine = make_engine(settings.url(), settings)
    try:
        report = seed.seed(engine)
        print(report.render())
        if seed_demo is not None:
            from database.storage import default_storage

            demo = seed_demo(engine, default_storage(settings), new_key=args.new_key)
            # The demo owner's key, when one was issued, is shown here once, on purpose
            # (the operator asked for it), like the API shows a key at sign-up.
            print(demo.render())
    finally:
        engine.dispose()
    return 0


COMMANDS: dict[str, Callable[..., int]] = {
    "seed": cmd_seed,
    "up": cmd_up,
    "status": cmd_status,
    "down": cmd_down,
    "verify": cmd_verify,
    "purge": cmd_purge,
    "grant": cmd_grant,
    "users": cmd_users,
    "inference-retention": cmd_inference_retention,
    "charge-usage": cmd_charge_usage,
    "prices": cmd_prices,
    "clean": cmd_clean,
}
WITH_ARGS = {
    "verify",
    "purge",
    "grant",
    "down",
    "seed",
    "users",
    "inference-retention",
    "charge-usage",
    "prices",
    "clean",
}


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


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
    seed_parser = sub.add_parser(
        "seed", help="insert the credit packages and tutorials (idempotent)"
    )
    seed_parser.add_argument(
        "--demo",
        action="store_true",
        help="also a model registry to explore: demo users, datasets, trained models,"
        " versions, aliases, lineage, a public and a shared model, downloads (idempotent)",
    )
    seed_parser.add_argument(
        "--new-key",
        action="store_true",
        help="with --demo: issue (and print once) another API key for the demo owner",
    )
    verify = sub.add_parser(
        "verify",
        help="check balances, ledger chains, counters, storage and the registry's counts;"
        " exit 1 on drift",
    )
    verify.add_argument(
        "--repair",
        action="store_true",
        help="recompute drifted counters, storage and registry counts (logged in"
        " derived_repairs);"
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
    users = sub.add_parser("users", help="an operator's acts on accounts: promote, demote")
    users.add_argument(
        "action", choices=("promote", "demote"), help="promote: make admin; demote: make user"
    )
    users.add_argument("email", help="the account's email")
    retention = sub.add_parser(
        "inference-retention",
        help="drop the months of the inference request log that end on or before a date",
    )
    retention.add_argument(
        "--before",
        type=_date,
        required=True,
        metavar="YYYY-MM-DD",
        help="drop every month ending on or before this date (UTC); never the current one",
    )
    retention.add_argument("--dry-run", action="store_true", help="list, drop nothing")
    charge = sub.add_parser(
        "charge-usage", help="charge uncharged usage (predictions) through the ledger"
    )
    charge.add_argument(
        "--now", action="store_true", help="charge up to now, not only the hours that ended"
    )
    prices = sub.add_parser(
        "prices", help="show the price books, or start a new one (an operator's act)"
    )
    prices_sub = prices.add_subparsers(dest="action", required=True)
    show = prices_sub.add_parser("show", help="every price book and its items")
    show.add_argument("--tier", choices=("free", "pro", "enterprise"), default=None)
    set_ = prices_sub.add_parser("set", help="a new book from now: the book in force, changed")
    set_.add_argument("--tier", choices=("free", "pro", "enterprise"), required=True)
    set_.add_argument("--description", default=None)
    set_.add_argument(
        "prices",
        nargs="+",
        metavar="SKU=CREDITS[/UNIT]",
        help="the prices that change (a new sku needs its unit: job, node,"
        " thousand_rows, gb_month)",
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
