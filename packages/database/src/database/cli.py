"""``automl-db``: the database's command line (typer + rich).

``automl-db --help`` lists the commands, ``automl-db COMMAND --help`` their options
(docs/cli.md has them all). Long work (verify, purge, clean, seed) shows a progress
bar on standard error when it is a terminal; reports go to standard output.

Exit codes (:class:`Exit`, docs/cli.md):

0  done; the database is as it should be
1  a failure found or an act refused: ``status`` behind head or a trigger missing,
   ``verify`` found drift, ``down`` refused while the server is in use, a refusal
   of the database (a named exception of ``database.errors``: unknown user, role,
   price book...)
2  usage: a bad option or argument, an invalid setting (``DATABASE_URL`` not a
   PostgreSQL URL, ...)
3  the database cannot be reached (``DATABASE_URL`` named without its password),
   or the embedded server cannot start
130 interrupted (Ctrl-C)

Expected failures are one line on standard error (``automl-db COMMAND: ...``),
never a traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection, Engine

from database import embedded, migrations, seed
from database.config import DatabaseSettings, InvalidDatabaseURL, get_settings
from database.progress import Progress
from database.session import make_engine
from database.triggers import expected_triggers

try:  # typer >= 0.26 carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - an older typer on click
    from click import exceptions as click_errors  # type: ignore[no-redef]


class Exit(enum.IntEnum):
    """``automl-db``'s exit codes (docs/cli.md)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    INTERRUPTED = 130


# --- what `up` and `status` print ---------------------------------------------------------
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


# --- output: reports on stdout, errors and progress on stderr -----------------------------
def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _console() -> Any:
    """The console progress bars are drawn on (standard error)."""
    from rich.console import Console

    return Console(stderr=True)


class _Bar:
    """A task of a rich progress bar; does nothing when not on a terminal."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress = progress
        self._task = task
        self._label = ""

    @property
    def counts(self) -> Progress | None:
        """The domain modules' ``progress(done, total, what)`` callback drawing this
        bar (counts, percent), or None off a terminal: then the work counts nothing
        for it (``database.progress``)."""
        if self._progress is None:
            return None

        def draw(done: int, total: int, what: str) -> None:
            self.update(
                completed=done, total=max(total, done), description=f"{self._label}: {what}"
            )

        return draw

    def stage(self, label: str) -> Progress | None:
        """A new stage of the same bar (``seed --demo``: the packages, then the demo):
        its label, its count from zero; its callback."""
        self._label = label
        self.update(completed=0, total=None, description=label)
        return self.counts

    def update(
        self,
        *,
        advance: float | None = None,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
    ) -> None:
        if self._progress is None:
            return
        changes: dict[str, Any] = {}
        if advance is not None:
            changes["advance"] = advance
        if completed is not None:
            changes["completed"] = completed
        if total is not None:
            changes["total"] = total
        if description is not None:
            changes["description"] = description
        self._progress.update(self._task, **changes)


@contextlib.contextmanager
def progress(description: str, total: float | None = None) -> Iterator[_Bar]:
    """A progress bar (``total`` None: one that pulses, with the time elapsed, until
    counts come) on standard error while the block runs, when that is a terminal;
    else nothing. Its ``counts`` is the callback the domain modules advance
    (``database.progress``): done of total, and the percent."""
    console = _console()
    if not console.is_terminal:
        yield _Bar()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        shown = _Bar(bar, bar.add_task(description, total=total))
        shown._label = description
        yield shown


# --- the commands' work (settings, options) -> exit code ----------------------------------
class EmbeddedServerFailed(Exception):
    """The embedded PostgreSQL could not be started or attached to (exit 3)."""


def _url(settings: DatabaseSettings) -> URL:
    """The database's URL; starting the embedded server when DATABASE_URL is unset,
    its failure (a data folder that cannot be created, initdb or pg_ctl refusing)
    raised as :class:`EmbeddedServerFailed`."""
    if not settings.uses_embedded:
        return settings.url()
    try:
        return settings.url()
    except Exception as exc:
        raise EmbeddedServerFailed(_reason(exc)) from exc


def cmd_up(settings: DatabaseSettings) -> int:
    url = _url(settings)  # starts the embedded server when DATABASE_URL is unset
    if settings.uses_embedded:
        # The one line about the embedded server (its own INFO chatter is quiet:
        # database.logs.QUIET), printed here and not by every process that attaches.
        print(f"embedded PostgreSQL running, data in {settings.data_dir / 'pg'}")
    engine = make_engine(url, settings)
    try:
        with progress("migrating and seeding", total=2) as bar:
            migrations.upgrade(engine, quiet=True)
            bar.update(advance=1)
            seeded = seed.seed(engine)
            bar.update(advance=1)
    finally:
        engine.dispose()
    report = _report(settings, url)
    print(seeded.render())
    print(report.render())
    if settings.uses_embedded:
        print(f"\nconnect with: DATABASE_URL='{url.render_as_string(hide_password=True)}'")
    return Exit.OK if report.healthy else Exit.FAILED


def cmd_status(settings: DatabaseSettings) -> int:
    if settings.uses_embedded and not (settings.data_dir / "pg" / "postmaster.pid").exists():
        _err(
            f"embedded PostgreSQL is not running (data folder {settings.data_dir / 'pg'}): "
            "run `automl-db up` or `make run`"
        )
        return Exit.FAILED
    report = _report(settings, _url(settings))
    print(report.render())
    return Exit.OK if report.healthy else Exit.FAILED


def cmd_down(settings: DatabaseSettings, args: Any) -> int:
    """Stop the embedded server. Exit 1, naming them, while live processes use it
    (unless ``--force``), and whenever it still runs afterwards."""
    if not settings.uses_embedded:
        _err("DATABASE_URL names an external server: nothing to stop")
        return Exit.OK
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
        return Exit.OK
    if result.state == "stopped":
        forced = f"; it was still used by {users}" if result.holders else ""
        print(f"embedded PostgreSQL stopped{stale}{forced}")
        return Exit.OK
    if result.state == "in_use":
        _err(
            f"embedded PostgreSQL not stopped: in use by {users}{stale}. Stop them first"
            " (Ctrl-C in `make run`), or run `automl-db down --force`"
        )
        return Exit.FAILED
    _err(f"embedded PostgreSQL did not stop: {result.reason}{stale}")
    return Exit.FAILED


def _engine_for_admin(settings: DatabaseSettings) -> Engine:
    return make_engine(_url(settings), settings)


def cmd_verify(settings: DatabaseSettings, args: Any) -> int:
    from database.billing import record_reconciliation
    from database.errors import DatabaseError
    from database.verify import verify

    engine = _engine_for_admin(settings)
    try:
        started = dt.datetime.now(dt.UTC)
        what = "checking and repairing" if args.repair else "checking"
        with progress(what) as bar:
            report = verify(
                engine, user_ids=args.user or None, repair=args.repair, progress=bar.counts
            )
            bar.update(description="recording the run")
            try:
                # Every verify is kept (reconciliation_runs), with what a repair changed.
                run_id = record_reconciliation(
                    engine, report, source="cli", started_at=started, repair=args.repair
                )
            except DatabaseError as exc:  # a role without INSERT there: report, go on
                _err(f"automl-db verify: run not recorded: {exc}")
                run_id = None
    finally:
        engine.dispose()
    print(report.render())
    if run_id is not None:
        print(f"recorded as reconciliation run {run_id}")
    return Exit.OK if report.ok else Exit.FAILED


def cmd_prices(settings: DatabaseSettings, args: Any) -> int:
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
                        _err(f"automl-db prices: {spec!r} is not SKU=CREDITS[/UNIT]")
                        return Exit.USAGE
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
                    _err(f"automl-db prices: {exc}")
                    return Exit.FAILED
                print(f"price book {book.id} ({book.tier}) in force from {book.effective_from}")
                return Exit.OK
            for book in billing.books(session, args.tier):
                end = book.effective_to.isoformat() if book.effective_to else "open"
                print(f"{book.tier} {book.id} {book.effective_from.isoformat()} .. {end}")
                for sku, p in sorted(book.items.items()):
                    print(f"  {sku:<20} {p.credits_per_unit:>8} credits / {p.unit}")
    finally:
        engine.dispose()
    return Exit.OK


def cmd_purge(settings: DatabaseSettings, args: Any) -> int:
    from database.lifecycle import purge

    engine = _engine_for_admin(settings)
    try:
        verb = "counting" if args.dry_run else "purging"
        with progress(f"{verb} users deleted over {args.older_than_days} days ago") as bar:
            report = purge(
                engine,
                older_than_days=args.older_than_days,
                batch_size=args.batch_size,
                dry_run=args.dry_run,
                max_batches=args.max_batches,
                counts=bar.counts,
            )
    except ValueError as exc:
        _err(f"automl-db purge: {exc}")
        return Exit.USAGE
    finally:
        engine.dispose()
    print(report.render())
    return Exit.OK


def cmd_clean(settings: DatabaseSettings, args: Any) -> int:
    from database.clean import TARGETS, clean

    if args.before > dt.datetime.now(dt.UTC):
        _err("automl-db clean: --before is in the future")
        return Exit.USAGE
    what = args.what or TARGETS
    engine = _engine_for_admin(settings)
    try:
        label = "counting rows older than --before" if args.dry_run else "removing rows"
        with progress(label) as bar:
            report = clean(
                engine,
                args.before,
                what=what,
                archive=args.archive,
                dry_run=args.dry_run,
                batch_size=args.batch_size,
                progress=bar.counts,
            )
    finally:
        engine.dispose()
    print(report.render())
    return Exit.OK


def cmd_grant(settings: DatabaseSettings, args: Any) -> int:
    from database.errors import RoleNotFound, UnsafeRole
    from database.grants import grant

    engine = _engine_for_admin(settings)
    try:
        with engine.begin() as conn:
            report = grant(conn, args.role, create=args.create, operator=args.operator)
    except (RoleNotFound, UnsafeRole) as exc:
        _err(f"automl-db grant: {exc}")
        return Exit.FAILED
    finally:
        engine.dispose()
    print(report.render())
    return Exit.OK


def cmd_inference_retention(settings: DatabaseSettings, args: Any) -> int:
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
    return Exit.OK


def cmd_charge_usage(settings: DatabaseSettings, args: Any) -> int:
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
    return Exit.OK


def cmd_users(settings: DatabaseSettings, args: Any) -> int:
    from sqlalchemy.orm import Session

    from database import errors, identity
    from database.models import UserRole

    role = UserRole.ADMIN if args.action == "promote" else UserRole.USER
    engine = _engine_for_admin(settings)
    try:
        with Session(engine) as session:
            user = identity.set_role(session, args.email, role)
    except errors.DatabaseError as exc:
        if _unreachable(exc):
            raise
        _err(f"automl-db users {args.action}: {exc}")
        return Exit.FAILED
    finally:
        engine.dispose()
    print(f"user {user.id} ({args.email}) is now {user.role.value}")
    return Exit.OK


def cmd_seed(settings: DatabaseSettings, args: Any) -> int:
    if args.new_key and not args.demo:
        _err("automl-db seed: --new-key goes with --demo")
        return Exit.USAGE
    seed_demo: Callable[..., Any] | None = None
    if args.demo:
        try:  # the workers' package trains and saves the models (it is in the workspace)
            from workers.demo import seed_demo
        except ImportError as exc:
            _err(f"automl-db seed --demo needs the workers and pipeline packages: {exc}")
            return Exit.USAGE
    engine = make_engine(_url(settings), settings)
    try:
        with progress("seeding credit packages and tutorials") as bar:
            report = seed.seed(engine, bar.counts)
            demo = None
            if seed_demo is not None:
                from database.storage import default_storage

                demo = seed_demo(
                    engine,
                    default_storage(settings),
                    new_key=args.new_key,
                    progress=bar.stage("seeding the demo registry (training small models)"),
                )
        print(report.render())
        if demo is not None:
            # The demo owner's key, when one was issued, is shown here once, on purpose
            # (the operator asked for it), like the API shows a key at sign-up.
            print(demo.render())
    finally:
        engine.dispose()
    return Exit.OK


# --- failures as one line ---------------------------------------------------------------
def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (refused, unknown host,
    no such socket, authentication failed, the server went away)."""
    import psycopg
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import OperationalError as SAOperationalError

    from database.errors import ConnectionLost

    if isinstance(exc, ConnectionLost):
        return True
    if isinstance(exc, SAOperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, psycopg.OperationalError)


def _reason(exc: BaseException) -> str:
    """The last useful line of a connection error, without any secret."""
    from database.logs import redact_text

    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    # psycopg: 'connection failed: connection to server at "h" (...), port 1 failed:
    # Connection refused' then '\tIs the server running on that host ...?'
    reason = lines[0] if lines else type(orig).__name__
    if reason.startswith("(") and ")" in reason:  # SQLAlchemy's "(psycopg.Operational...)"
        reason = reason.split(")", 1)[1].strip()
    return redact_text(reason)[:300]


def _where(settings: DatabaseSettings | None) -> str:
    if settings is None:
        return "the database"
    if settings.uses_embedded:
        return f"the embedded PostgreSQL (data folder {settings.data_dir / 'pg'})"
    assert settings.database_url is not None
    from database.config import normalise_url

    url = normalise_url(settings.database_url.get_secret_value())
    return f"DATABASE_URL={url.set(drivername='postgresql').render_as_string(hide_password=True)}"


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"
    return str(exc)


def _run(name: str, command: Callable[..., int], args: Any = None) -> int:
    """Run ``command`` with the settings; every expected failure is one line on
    standard error and an exit code (module doc), never a traceback."""
    from database.errors import DatabaseError

    try:
        settings = get_settings()
    except Exception as exc:  # pydantic ValidationError wrapping InvalidDatabaseURL
        _err(f"automl-db: invalid settings: {_first_error(exc)}")
        return Exit.USAGE
    try:
        return int(command(settings) if args is None else command(settings, args))
    except InvalidDatabaseURL as exc:
        _err(f"automl-db: {exc}")
        return Exit.USAGE
    except EmbeddedServerFailed as exc:
        _err(f"automl-db {name}: {_where(settings)} did not start: {exc}")
        return Exit.UNREACHABLE
    except Exception as exc:
        if _unreachable(exc):
            _err(f"automl-db {name}: cannot reach {_where(settings)}: {_reason(exc)}")
            return Exit.UNREACHABLE
        if isinstance(exc, DatabaseError):
            _err(f"automl-db {name}: {exc} ({type(exc).__name__})")
            return Exit.FAILED
        if isinstance(exc, OSError):  # a folder or file the command was given
            where = f": {exc.filename}" if exc.filename else ""
            _err(f"automl-db {name}: {exc.strerror or exc}{where}")
            return Exit.FAILED
        raise


# --- the command line ---------------------------------------------------------------------
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        mine = version("automl-database")
    except PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        mine = "unknown"
    return f"automl-db {mine} (schema head {', '.join(migrations.heads())})"


def _print_version(value: bool) -> None:
    if value:
        print(_version())
        raise typer.Exit(Exit.OK)


def _before(value: str) -> dt.datetime:
    """A date (midnight UTC) or an ISO datetime with a time zone."""
    if isinstance(value, dt.datetime):
        return value
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"not a date: {value!r} (YYYY-MM-DD, or an ISO datetime with a time zone)"
        ) from None
    if parsed.tzinfo is None:
        raise typer.BadParameter("give the datetime a time zone (e.g. ...T00:00:00Z)")
    return parsed


def _targets(value: str) -> list[str]:
    from database.clean import TARGETS

    if isinstance(value, list):
        return value
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(TARGETS))
    if not names or unknown:
        raise typer.BadParameter(f"choose among {','.join(TARGETS)} (got {value!r})")
    return names


def _date(value: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"not a date (YYYY-MM-DD): {value!r}") from None


class Tier(enum.StrEnum):
    """The tiers a price book is for."""

    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


app = typer.Typer(
    name="automl-db",
    help=(
        "The AutoML platform's database: start the embedded PostgreSQL (or use"
        " DATABASE_URL), migrate, seed, check and repair, retention, grants.\n\n"
        "Exit codes: 0 ok; 1 a failure found or an act refused; 2 usage (bad option,"
        " invalid setting); 3 the database cannot be reached; 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
users_app = typer.Typer(
    help="An operator's acts on accounts: make the first admin (promote), or undo it (demote).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
prices_app = typer.Typer(
    help="Show the price books, or start a new one (an operator's act).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(users_app, name="users")
app.add_typer(prices_app, name="prices")


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version (and the schema's head revision) and exit.",
        ),
    ] = False,
) -> None:
    """The AutoML platform's database."""


@app.command()
def up() -> int:
    """Start the embedded PostgreSQL (unless DATABASE_URL names a server), migrate to
    head, seed, and print the revision, tables and triggers. Exit 1 if something is
    missing afterwards."""
    return _run("up", cmd_up)


@app.command()
def status() -> int:
    """Print the revision, tables and triggers without changing anything. Exit 1 when
    the database is behind head or a trigger is missing (or the embedded server is
    not running)."""
    return _run("status", cmd_status)


@app.command()
def down(
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Stop it even while live processes use it (they lose their connections).",
        ),
    ] = False,
) -> int:
    """Stop the embedded PostgreSQL. Exit 1, naming them, while live processes use it."""
    return _run("down", cmd_down, SimpleNamespace(force=force))


@app.command("seed")
def seed_command(
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Also a model registry to explore: demo users, datasets, trained models,"
            " versions, aliases, lineage, a public and a shared model, downloads (idempotent).",
        ),
    ] = False,
    new_key: Annotated[
        bool,
        typer.Option(
            "--new-key",
            help="With --demo: issue (and print once) another API key for the demo owner.",
        ),
    ] = False,
) -> int:
    """Insert the credit packages and tutorials (idempotent; `up` runs it)."""
    return _run("seed", cmd_seed, SimpleNamespace(demo=demo, new_key=new_key))


@app.command()
def verify(
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Recompute drifted counters, storage and registry counts (logged in"
            " derived_repairs); the ledger and balances are never rewritten.",
        ),
    ] = False,
    user: Annotated[
        list[uuid.UUID] | None,
        typer.Option("--user", metavar="ID", help="Check only this user (repeatable)."),
    ] = None,
) -> int:
    """Check balances, ledger chains, counters, storage and the registry's counts
    (recorded as a reconciliation run). Exit 1 on drift."""
    return _run("verify", cmd_verify, SimpleNamespace(repair=repair, user=user or None))


@app.command()
def purge(
    older_than_days: Annotated[
        int,
        typer.Option(
            "--older-than-days", metavar="DAYS", help="Retention window in days (minimum 30)."
        ),
    ] = 30,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, metavar="N", help="Rows deleted per transaction.")
    ] = 500,
    max_batches: Annotated[
        int | None,
        typer.Option(
            "--max-batches",
            min=1,
            metavar="N",
            help="Stop after this many batches (run again to continue).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, remove nothing.")] = False,
) -> int:
    """Hard-delete the data of users deleted (and workflows soft-deleted) long ago,
    leaving tombstones."""
    args = SimpleNamespace(
        older_than_days=older_than_days,
        batch_size=batch_size,
        max_batches=max_batches,
        dry_run=dry_run,
    )
    return _run("purge", cmd_purge, args)


@app.command()
def clean(
    before: Annotated[
        dt.datetime,
        typer.Option(
            "--before",
            parser=_before,
            metavar="DATE",
            help="Remove what ended before this date (YYYY-MM-DD, UTC) or ISO datetime"
            " with a time zone.",
        ),
    ],
    what: Annotated[
        list[str] | None,
        typer.Option(
            "--what",
            parser=_targets,
            metavar="LIST",
            help="Comma-separated among jobs,webhooks,sessions,audit,inference (default all).",
        ),
    ] = None,
    archive: Annotated[
        Path | None,
        typer.Option(
            "--archive",
            metavar="DIR",
            help="Write every removed row to Parquet files in DIR first (fsynced before"
            " the delete commits).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, remove nothing.")] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, metavar="N", help="Rows per transaction.")
    ] = 1000,
) -> int:
    """Retention: remove finished jobs, handled webhook events, ended sessions, whole
    audit months and inference partitions older than --before, in resumable batches."""
    # --what given once is a list (the parser's); typer wraps a list option in a list.
    targets: list[str] | None = None
    if what:
        targets = [t for item in what for t in (item if isinstance(item, list) else [item])]
    args = SimpleNamespace(
        before=before, what=targets, archive=archive, dry_run=dry_run, batch_size=batch_size
    )
    return _run("clean", cmd_clean, args)


@app.command()
def grant(
    role: Annotated[
        str, typer.Argument(help="The role the API and workers (or the operators) connect as.")
    ],
    operator: Annotated[
        bool,
        typer.Option(
            "--operator",
            help="An operator's role: credit packages, users' tiers, credit adjustments.",
        ),
    ] = False,
    create: Annotated[
        bool,
        typer.Option("--create", help="Create the role (LOGIN, no password) if it does not exist."),
    ] = False,
) -> int:
    """Give the applications' role (or, with --operator, an operator's) least privilege."""
    args = SimpleNamespace(role=role, operator=operator, create=create)
    return _run("grant", cmd_grant, args)


@users_app.command()
def promote(email: Annotated[str, typer.Argument(help="The account's email.")]) -> int:
    """Make the user of EMAIL an admin (how the first admin comes to be)."""
    return _run("users promote", cmd_users, SimpleNamespace(action="promote", email=email))


@users_app.command()
def demote(email: Annotated[str, typer.Argument(help="The account's email.")]) -> int:
    """Make the admin of EMAIL a user again."""
    return _run("users demote", cmd_users, SimpleNamespace(action="demote", email=email))


@app.command("inference-retention")
def inference_retention(
    before: Annotated[
        dt.date,
        typer.Option(
            "--before",
            parser=_date,
            metavar="YYYY-MM-DD",
            help="Drop every month ending on or before this date (UTC); never the current one.",
        ),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List, drop nothing.")] = False,
) -> int:
    """Drop the months of the inference request log that end on or before a date."""
    return _run(
        "inference-retention",
        cmd_inference_retention,
        SimpleNamespace(before=before, dry_run=dry_run),
    )


@app.command("charge-usage")
def charge_usage(
    now: Annotated[
        bool, typer.Option("--now", help="Charge up to now, not only the hours that ended.")
    ] = False,
) -> int:
    """Charge uncharged usage (predictions) through the ledger (what the worker does
    every hour)."""
    return _run("charge-usage", cmd_charge_usage, SimpleNamespace(now=now))


@prices_app.command("show")
def prices_show(
    tier: Annotated[Tier | None, typer.Option("--tier", help="Only this tier's books.")] = None,
) -> int:
    """Every price book and its items."""
    args = SimpleNamespace(action="show", tier=tier.value if tier else None)
    return _run("prices", cmd_prices, args)


@prices_app.command("set")
def prices_set(
    tier: Annotated[Tier, typer.Option("--tier", help="The tier the book is for.")],
    prices: Annotated[
        list[str],
        typer.Argument(
            metavar="SKU=CREDITS[/UNIT]...",
            help="The prices that change (a new sku needs its unit: job, node,"
            " thousand_rows, gb_month).",
        ),
    ],
    description: Annotated[
        str | None, typer.Option("--description", metavar="TEXT", help="What the new book is for.")
    ] = None,
) -> int:
    """A new book from now: the book in force, changed."""
    args = SimpleNamespace(action="set", tier=tier.value, prices=prices, description=description)
    return _run("prices", cmd_prices, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``automl-db`` with ``argv`` (default: the process's) and return its exit
    code; a usage error exits (SystemExit 2) after one line on standard error."""
    from database import logs

    # The process's logging as it was is restored afterwards (a test calling main
    # keeps its own); the console script's process ends anyway.
    configured = logs.is_configured()
    if not configured:
        logs.setup("automl-db", stream=sys.stderr, capture_warnings=False)
    try:
        return _main(argv)
    finally:
        if not configured:
            logs.reset()


def _main(argv: Sequence[str] | None) -> int:
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = command.main(args=args, prog_name="automl-db", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        _err(exc.ctx.get_help() if exc.ctx is not None else str(exc))
        raise SystemExit(Exit.USAGE) from None
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "automl-db"
        _err(f"{where}: {exc.format_message()} (see {where} --help)")
        raise SystemExit(Exit.USAGE) from None
    except click_errors.ClickException as exc:
        _err(f"automl-db: {exc.format_message()}")
        raise SystemExit(exc.exit_code) from None
    except (typer.Abort, KeyboardInterrupt):
        _err("automl-db: interrupted")
        return Exit.INTERRUPTED
    if isinstance(result, int):
        return int(result)
    return Exit.OK


def run() -> None:
    """The ``automl-db`` console script."""
    raise SystemExit(main())


if __name__ == "__main__":
    run()
