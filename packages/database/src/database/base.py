"""Declarative base, naming convention and the small mixins every model composes."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, FetchedValue, MetaData, Text, event, func, inspect, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from database.types import UtcDateTime

# Every constraint and index gets a predictable name, so migrations can always
# find what they drop. All names stay under PostgreSQL's 63-character limit
# (tests/test_schema.py checks it).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        uuid.UUID: UUID(as_uuid=True),
        dt.datetime: UtcDateTime(),
        str: Text(),
        dict[str, Any]: JSONB(),
        list[Any]: JSONB(),
    }
    # Values the database fills (ids, timestamps, trigger-maintained columns)
    # come back with the INSERT/UPDATE itself (RETURNING), never as a lazy load.
    __mapper_args__ = {"eager_defaults": True}

    def __repr__(self) -> str:
        # Never triggers a load (an expired object stays expired) and never shows
        # column values, so nothing secret can leak through a log line.
        state = inspect(self)
        ident = state.identity
        key = ident[0] if ident and len(ident) == 1 else ident
        return f"<{type(self).__name__} id={key!s}>"


class IDMixin:
    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("gen_random_uuid()"), sort_order=-100
    )


class CreatedAtMixin:
    created_at: Mapped[dt.datetime] = mapped_column(server_default=func.now(), sort_order=100)


class TimestampMixin(CreatedAtMixin):
    # Maintained by the set_updated_at trigger (sql/triggers/updated_at.sql).
    updated_at: Mapped[dt.datetime] = mapped_column(
        server_default=func.now(), server_onupdate=FetchedValue(), sort_order=101
    )


@event.listens_for(TimestampMixin, "before_update", propagate=True)
def _updated_at_is_the_databases(mapper: Any, connection: Any, target: Any) -> None:
    # set_updated_at stamps the row whatever the client sends; dropping a value the
    # code assigned makes the object read the stamped one back after the UPDATE.
    state = inspect(target)
    if "updated_at" in state.committed_state:
        state.dict.pop("updated_at", None)
        state.committed_state.pop("updated_at", None)


def counter_column() -> Mapped[int]:
    """A column only triggers write: default 0, and refreshed after every flush."""
    return mapped_column(server_default=text("0"), server_onupdate=FetchedValue(), nullable=False)


def big_counter_column() -> Mapped[int]:
    return mapped_column(
        BigInteger, server_default=text("0"), server_onupdate=FetchedValue(), nullable=False
    )
