"""Run and inspect the alembic migrations from Python (the CLI and the tests), and the
few helpers the migration files share.

The migrations live at the repository root (``alembic/``, ``alembic.ini``).

The helpers (``function``, ``trigger``, ``create``, ``replace``, ``drop``,
``revoke_execute_from_public``) build the alembic-utils entities of ``public`` and
run their operations: what every migration used to spell out in full. Migrations
already applied call them too, so what they emit must never change: a new need is a
new helper (or a keyword with the old behaviour as its default).
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic_utils.pg_function import PGFunction
from alembic_utils.pg_trigger import PGTrigger
from alembic_utils.replaceable_entity import ReplaceableEntity
from sqlalchemy.engine import Connection, Engine

from alembic import command, op
from database.config import PROJECT_ROOT

ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"

# alembic's `context` and `op` are process-wide: two threads migrating at once
# would run on each other's connections. Processes are kept apart by the advisory
# lock in alembic/env.py; threads of one process by this lock.
_PROCESS_LOCK = threading.Lock()


def alembic_config(
    bind: Engine | Connection | None = None, *, ini: Path = ALEMBIC_INI, quiet: bool = False
) -> Config:
    """An alembic Config for this repository; ``bind`` overrides DATABASE_URL."""
    cfg = Config(str(ini))
    if bind is not None:
        cfg.attributes["connection"] = bind
    if quiet:
        cfg.attributes["skip_logging"] = True
    return cfg


def upgrade(
    bind: Engine | Connection | None = None, revision: str = "head", *, quiet: bool = False
) -> None:
    with _PROCESS_LOCK:
        command.upgrade(alembic_config(bind, quiet=quiet), revision)


def downgrade(
    bind: Engine | Connection | None = None, revision: str = "base", *, quiet: bool = False
) -> None:
    with _PROCESS_LOCK:
        command.downgrade(alembic_config(bind, quiet=quiet), revision)


def heads() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def current(connection: Connection) -> tuple[str, ...]:
    """The revisions the database is at (empty before the first migration)."""
    return tuple(MigrationContext.configure(connection).get_current_heads())


# --- helpers for the migration files (alembic/versions) ---------------------------------


def function(signature: str, definition: str) -> PGFunction:
    """The function ``public.<signature>`` (``definition``: from ``returns`` on)."""
    return PGFunction(schema="public", signature=signature, definition=definition)


def trigger(name: str, table: str, definition: str, *, constraint: bool = False) -> PGTrigger:
    """The trigger ``name`` on ``public.<table>`` (``definition``: after its name)."""
    return PGTrigger(
        schema="public",
        signature=name,
        on_entity=f"public.{table}",
        is_constraint=constraint,
        definition=definition,
    )


# The three entity operations are registered on ``op`` by alembic-utils at import time,
# which mypy cannot see.


def create(*entities: ReplaceableEntity) -> None:
    """``op.create_entity`` of each, in order."""
    for entity in entities:
        op.create_entity(entity)  # type: ignore[attr-defined]


def replace(*entities: ReplaceableEntity) -> None:
    """``op.replace_entity`` of each, in order (a trigger is dropped and created again)."""
    for entity in entities:
        op.replace_entity(entity)  # type: ignore[attr-defined]


def drop(*entities: ReplaceableEntity) -> None:
    """``op.drop_entity`` of each, in order (triggers before their table and function)."""
    for entity in entities:
        op.drop_entity(entity)  # type: ignore[attr-defined]


def revoke_execute_from_public(*signatures: str) -> None:
    """REVOKE EXECUTE ... FROM PUBLIC on each function, named with its schema and its
    argument types (``public.fn(uuid, text)``); the apps' role gets what it needs from
    ``database.grants``."""
    for signature in signatures:
        op.execute(f"REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC")


def grant_execute_like(signature: str, like: str) -> None:
    """GRANT EXECUTE on the function ``signature`` to every role that may EXECUTE
    ``like`` now (both named with schema and argument types), so a deployed
    database's apps' role and operators keep working after the migration without
    ``automl-db grant`` being run again (a fresh one gets both from ``database.grants``)."""
    op.execute(
        f"""
        DO $$
        DECLARE r record;
        BEGIN
            FOR r IN
                SELECT DISTINCT a.grantee::regrole::text AS role
                FROM pg_proc p, aclexplode(p.proacl) a
                WHERE p.oid = '{like}'::regprocedure
                  AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0
                  AND a.grantee <> p.proowner
            LOOP
                EXECUTE format('GRANT EXECUTE ON FUNCTION {signature} TO %s', r.role);
            END LOOP;
        END $$"""
    )
