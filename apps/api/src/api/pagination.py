"""Keyset pagination: ``limit`` and an opaque ``cursor``, newest first.

A list is ordered by ``(created_at DESC, id DESC)`` (or another key column and
the id), which every list's index serves: ``(user_id, created_at)`` on each owned
table. The cursor is the last row's key, so a page costs the same however deep it
is, and rows inserted meanwhile neither repeat nor shift the next page. (The
ledger's index is ``(user_id, calendar month)``: its lists pass ``group``, the month
of the key, which orders first and bounds the scan; a page then costs the user's
entries of the months it spans.) A cursor
that does not decode to a key of the list's kind (a datetime: aware and within
``database.types.check_datetime``'s range; an int: within int4) is 422
``invalid_cursor``, on every list: they all decode it here.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from api.errors import ApiError
from database.types import check_datetime

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page (at most 200).")]
CursorQuery = Annotated[
    str | None,
    Query(max_length=200, description="The `next_cursor` of the previous page."),
]


def _describe_page(schema: dict[str, Any], cls: type) -> None:
    """``Page[DatasetOut]``'s description names its items (a parametrized class has no
    docstring of its own)."""
    item = cls.__name__.partition("[")[2].rstrip("]") or "item"
    schema.setdefault("description", f"A page of {item} items, newest first.")


class Page(BaseModel, Generic[T]):
    """A page of a list, newest first; ``next_cursor`` fetches the next."""

    model_config = ConfigDict(use_attribute_docstrings=True, json_schema_extra=_describe_page)

    items: list[T]
    """The page's items (at most ``limit``)."""
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page; null on the last page."""


def _invalid() -> ApiError:
    return ApiError(422, "invalid_cursor", "the cursor is not one this API returned")


def encode_cursor(key: Any, ident: uuid.UUID) -> str:
    value = key.isoformat() if isinstance(key, dt.datetime) else key
    raw = json.dumps([value, str(ident)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: type) -> tuple[Any, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value, ident = json.loads(raw)
        parsed_id = uuid.UUID(str(ident))
        if kind is dt.datetime:
            # Aware and in range (database.types.check_datetime: InvalidDatetime is a
            # ValueError), or no comparison with it can be bound.
            key: Any = check_datetime(dt.datetime.fromisoformat(value))
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("not an int")
            if not -(2**31) <= value < 2**31:
                raise ValueError("out of range")
            key = value
        else:  # pragma: no cover - no other kinds are used
            raise ValueError(kind)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise _invalid() from None
    return key, parsed_id


def encode_seq_cursor(key: int) -> str:
    raw = json.dumps([key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_seq_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        (value,) = json.loads(raw)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("not an int")
        if not 0 <= value < 2**31:
            raise ValueError("out of range")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise _invalid() from None
    return value


def paginate_by_key(
    session: Session,
    stmt: Select[Any],
    key: InstrumentedAttribute[Any],
    *,
    limit: int,
    cursor: str | None,
    descending: bool = False,
) -> tuple[Sequence[Any], str | None]:
    """One page of ``stmt``'s rows ordered by ``key`` alone, an integer unique within
    what ``stmt`` selects (a job's log lines by ``seq``: oldest first by default)."""
    if cursor:
        last = decode_seq_cursor(cursor)
        stmt = stmt.where(key < last if descending else key > last)
    rows = session.scalars(
        stmt.order_by(key.desc() if descending else key.asc()).limit(limit + 1)
    ).all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_seq_cursor(getattr(rows[-1], key.key))
    return rows, next_cursor


def paginate(
    session: Session,
    stmt: Select[Any],
    key: InstrumentedAttribute[Any],
    ident: InstrumentedAttribute[Any],
    *,
    limit: int,
    cursor: str | None,
    descending: bool = True,
    kind: type = dt.datetime,
    group: Callable[[Any], ColumnElement[Any]] | None = None,
) -> tuple[Sequence[Any], str | None]:
    """One page of ``stmt``'s rows (model instances) ordered by ``(key, ident)``.
    ``group`` maps the key (a column or a value) to a coarser key that the index
    holds instead of it and that grows with it (the ledger's month): rows are
    ordered by it first (the same order), and a cursor bounds it too."""
    if cursor:
        last_key, last_id = decode_cursor(cursor, kind)
        if descending:
            # key <= last_key bounds the index scan; the OR breaks ties by id.
            stmt = stmt.where(
                key <= last_key, or_(key < last_key, and_(key == last_key, ident < last_id))
            )
        else:
            stmt = stmt.where(
                key >= last_key, or_(key > last_key, and_(key == last_key, ident > last_id))
            )
        if group is not None:
            stmt = stmt.where(
                group(key) <= group(last_key) if descending else group(key) >= group(last_key)
            )
    order: tuple[Any, ...] = (key.desc(), ident.desc()) if descending else (key.asc(), ident.asc())
    if group is not None:
        order = (group(key).desc() if descending else group(key).asc(), *order)
    rows = session.scalars(stmt.order_by(*order).limit(limit + 1)).all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(getattr(last, key.key), getattr(last, ident.key))
    return rows, next_cursor
