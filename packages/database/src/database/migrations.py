"""Run and inspect the alembic migrations from Python (the CLI and the tests).

The migrations live at the repository root (``alembic/``, ``alembic.ini``).
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from alembic import command
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
