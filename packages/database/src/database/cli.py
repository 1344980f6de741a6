"""``automl-db``: the database's command line.

automl-db up       start the embedded PostgreSQL (unless DATABASE_URL names a
                   server), migrate to head, print what is installed
automl-db status   print the same without changing anything; exit 1 when the
                   database is behind head or a trigger is missing
automl-db down     stop the embedded PostgreSQL
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection

from database import embedded, migrations
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
                " AND c.relkind IN ('r', 'p') AND c.relname <> 'alembic_version' ORDER BY 1"
            )
        ).scalars()
    )
    installed: dict[str, list[str]] = {}
    for table, name in connection.execute(
        text(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal"
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
    finally:
        engine.dispose()
    report = _report(settings, url)
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


def cmd_down(settings: DatabaseSettings) -> int:
    if not settings.uses_embedded:
        print("DATABASE_URL names an external server: nothing to stop", file=sys.stderr)
        return 0
    stopped = embedded.stop(settings.data_dir)
    print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
    return 0


COMMANDS = {"up": cmd_up, "status": cmd_status, "down": cmd_down}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="automl-db", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start (embedded) PostgreSQL, migrate to head, print the schema")
    sub.add_parser("status", help="print revision, tables and triggers; exit 1 if not at head")
    sub.add_parser("down", help="stop the embedded PostgreSQL")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic ValidationError wrapping InvalidDatabaseURL
        print(f"automl-db: invalid settings: {_first_error(exc)}", file=sys.stderr)
        return 2
    try:
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
