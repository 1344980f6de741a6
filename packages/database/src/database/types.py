"""Column types shared by every model, and the one check of a datetime's range."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

#: The instants every layer can hold. Python's ``datetime`` spans the years 1 to
#: 9999 (PostgreSQL's ``timestamptz`` far more: 4713 BC to 294276 AD), and a value
#: must stay inside that span in UTC and in whatever time zone it is read back in
#: (psycopg returns ``timestamptz`` in the session's zone; offsets reach ±16 h):
#: hence a day's margin at each end.
MIN_DATETIME = dt.datetime(1, 1, 2, tzinfo=dt.UTC)
MAX_DATETIME = dt.datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=dt.UTC)


class InvalidDatetime(ValueError):
    """A datetime that is naive, has no UTC equivalent, or lies outside
    ``MIN_DATETIME`` .. ``MAX_DATETIME``."""


def check_datetime(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC, when every layer can hold it; :class:`InvalidDatetime` otherwise.

    The one check of a datetime's range: the column type below, the API's request
    models and its pagination cursors all call it, so a date at the edge of the
    calendar (``0001-01-01T00:00:00+14:00`` is in year 0 in UTC) is refused as
    bad input instead of overflowing in ``astimezone`` or in the driver.
    """
    if not isinstance(value, dt.datetime):
        raise InvalidDatetime(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise InvalidDatetime("naive datetime refused: give a timezone-aware datetime")
    try:
        utc = value.astimezone(dt.UTC)
    except OverflowError:
        utc = None
    if utc is None or not MIN_DATETIME <= utc <= MAX_DATETIME:
        raise InvalidDatetime(
            f"datetime out of range: give one between {MIN_DATETIME.isoformat()}"
            f" and {MAX_DATETIME.isoformat()} (UTC)"
        )
    return utc


class UtcDateTime(TypeDecorator[dt.datetime]):
    """``timestamptz`` that refuses naive datetimes and always returns UTC.

    After Airflow's ``UtcDateTime``: a naive datetime is ambiguous, so it is an error
    rather than a silent guess at the server's time zone. A datetime out of
    :func:`check_datetime`'s range is an error too (``InvalidDatetime``; an engine
    of ``database.session`` raises it as ``database.errors.InvalidValue``).
    """

    impl = TIMESTAMP(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        return check_datetime(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.astimezone(dt.UTC)
