"""The trigger functions and triggers of ``sql/triggers/*.sql`` as alembic-utils entities.

``sql/triggers`` is the one copy of that SQL. Each file holds ``CREATE FUNCTION``
and ``CREATE TRIGGER`` statements; ``alembic/env.py`` registers what this module
reads so ``alembic revision --autogenerate`` sees a changed trigger like a changed
column, and ``automl-db status`` checks that every trigger is installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import sqlparse
from alembic_utils.pg_function import PGFunction
from alembic_utils.pg_trigger import PGTrigger
from alembic_utils.replaceable_entity import ReplaceableEntity

from database.config import PROJECT_ROOT

SQL_DIR = PROJECT_ROOT / "sql" / "triggers"

_FUNCTION = re.compile(r"^CREATE\s+(OR\s+REPLACE\s+)?FUNCTION\s", re.I)
_TRIGGER = re.compile(r"^CREATE\s+(CONSTRAINT\s+)?TRIGGER\s", re.I)


class TriggerSQLError(ValueError):
    """A statement in sql/triggers that is not a function or a trigger."""


@dataclass(frozen=True)
class TriggerName:
    table: str
    name: str


def _statements(path: Path) -> list[str]:
    out = []
    for raw in sqlparse.split(path.read_text()):
        # Drop the comment lines before the statement; keep the body as written.
        lines = raw.strip().splitlines()
        while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
            lines.pop(0)
        statement = "\n".join(lines).strip().rstrip(";").strip()
        if statement:
            out.append(statement)
    return out


def load_entities(sql_dir: Path = SQL_DIR) -> list[ReplaceableEntity]:
    """Functions first, then triggers, in file order."""
    functions: list[ReplaceableEntity] = []
    triggers: list[ReplaceableEntity] = []
    for path in sorted(sql_dir.glob("*.sql")):
        for statement in _statements(path):
            if _FUNCTION.match(statement):
                functions.append(PGFunction.from_sql(statement))
            elif _TRIGGER.match(statement):
                triggers.append(PGTrigger.from_sql(statement))
            else:
                first = statement.splitlines()[0]
                raise TriggerSQLError(f"{path.name}: not a function or trigger: {first}")
    return functions + triggers


def expected_triggers(sql_dir: Path = SQL_DIR) -> list[TriggerName]:
    return [
        TriggerName(table=e.on_entity.split(".", 1)[1], name=e.signature)
        for e in load_entities(sql_dir)
        if isinstance(e, PGTrigger)
    ]
