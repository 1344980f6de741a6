"""Alembic environment: models, enums and the trigger entities of sql/triggers.

- The URL comes from DATABASE_URL (database.config), or from a Connection or
  Engine passed in ``config.attributes["connection"]`` (tests, pytest-alembic).
- An advisory lock is held while migrating, so two processes starting at once
  cannot both migrate: the second waits, then finds the database at head.
- Nothing touches the connection before ``begin_transaction()`` (SQLAlchemy 2.x
  would open a transaction that alembic never commits).
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic_utils.pg_function import PGFunction
from alembic_utils.pg_trigger import PGTrigger
from alembic_utils.replaceable_entity import register_entities
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

import database.models  # noqa: F401  (registers every table on Base.metadata)
from alembic import context
from database.base import Base
from database.errors import install as install_error_translation
from database.session import make_engine
from database.triggers import load_entities
from database.types import UtcDateTime

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata
# Only functions and triggers are ours to manage: grants (automl-db grant), policies
# or views made outside the migrations must not become "differences".
register_entities(load_entities(), entity_types=[PGFunction, PGTrigger])

# Any fixed 64-bit key; pg_locks shows it while a migration runs.
MIGRATION_LOCK_KEY = 7_305_001_042


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    # alembic-utils creates triggers against the live database to compare them, so
    # a trigger on a table that does not exist yet cannot be compared
    # (olirice/alembic_utils#79): generate the table first, its triggers next.
    if isinstance(obj, PGTrigger) and not reflected:
        table = obj.on_entity.split(".", 1)[1]
        return table in _existing_tables
    # The hash partitions of evaluation_row_results are made by its migration, not
    # by a model (the models know only the partitioned parent).
    # (Their row triggers are clones of the parent's, made by PostgreSQL.)
    if type_ == "table" and reflected and compare_to is None and name:
        return not name.startswith("evaluation_row_results_p")
    if isinstance(obj, PGTrigger) and reflected:
        return not obj.on_entity.split(".", 1)[1].startswith("evaluation_row_results_p")
    return True


_existing_tables: set[str] = set()


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations do not import the package's types: UtcDateTime is plain timestamptz.
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.TIMESTAMP(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=False,
        include_object=include_object,
        render_item=render_item,
        transaction_per_migration=False,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        # The apps' statement timeout does not apply to an index build or a backfill;
        # each migration sets its own lock_timeout.
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        _existing_tables.update(inspect(connection).get_table_names())
        context.run_migrations()


def run_migrations_offline() -> None:
    from database.config import get_settings

    context.configure(
        url=get_settings().url().render_as_string(hide_password=False),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    engine: Engine = given if isinstance(given, Engine) else make_engine()
    install_error_translation(engine)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        if given is None:
            engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
