"""Riding out a lost database: which errors mean "the database is away", capped
exponential backoff, and one log line per change of state (lost, back).

Every touch of the database by the worker's loops (claims, recovery, heartbeats,
LISTEN) runs inside :meth:`DatabaseLink.touch`. An outage error (connection
refused or broken, the server shutting down or starting up: see
:func:`is_outage`) is logged once, when the database is first found away, not
with a traceback per attempt; the first touch that succeeds afterwards logs that
it is back. The caller waits :meth:`Backoff.next` between attempts: 0.5 s,
doubling, at most 30 s.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import exc as sa_exc

from database import errors


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be reached now, rather than that
    it refused a statement: retrying later is the remedy."""
    if isinstance(exc, errors.ConnectionLost):  # 57P01-57P03: shutdown, starting up
        return True
    if isinstance(exc, errors.DatabaseError):  # a refusal, a lock or statement timeout
        return False
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc,
        (
            sa_exc.OperationalError,  # refused, broken, too many connections
            sa_exc.InterfaceError,
            sa_exc.DisconnectionError,
            sa_exc.TimeoutError,  # no connection from the pool in time
            psycopg.OperationalError,  # the LISTEN connection, outside SQLAlchemy
            psycopg.InterfaceError,
        ),
    )


def describe(exc: BaseException) -> str:
    """One line about an error, for a log or the user: its type and the first line of
    its message; for a database error the server's own message, never the statement
    or its parameters (psycopg's connection messages name the host or socket, never a
    password). Bounded to 500 characters."""
    orig = getattr(exc, "orig", None)
    source = orig if orig is not None else exc
    diag = getattr(source, "diag", None)
    text = getattr(diag, "message_primary", None) or str(source)
    first = " ".join((text.splitlines() or [""])[0].split())
    return f"{type(source).__name__}: {first}"[:500] if first else type(source).__name__


class Backoff:
    """Capped exponential backoff: ``initial``, doubling, at most ``cap`` seconds,
    each delay shortened by up to ``jitter`` (a fraction) so that workers cut off
    together do not all come back at the same instant."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0, jitter: float = 0.1) -> None:
        if not 0 < initial <= cap:
            raise ValueError("backoff needs 0 < initial <= cap")
        self.initial, self.cap, self.jitter = initial, cap, jitter
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * (1 - self.jitter * random.random())

    def reset(self) -> None:
        self._next = self.initial


class DatabaseLink:
    """What one worker process knows of its database: reachable, or away since when.

    Shared by the worker's threads, so that an outage is logged once however many
    of them run into it, and its end once.
    """

    def __init__(self, log: logging.Logger, *, cap: float = 30.0) -> None:
        self.log = log
        self.cap = cap
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._back_at = float("-inf")

    @property
    def down(self) -> bool:
        return self._down_since is not None

    @contextmanager
    def touch(self, doing: str) -> Iterator[None]:
        """Run a touch of the database: an outage error is recorded (and re-raised),
        a success marks the database reachable."""
        started = time.monotonic()
        try:
            yield
        except Exception as exc:
            if is_outage(exc):
                self.lost(exc, doing, started=started)
            raise
        self.back()

    def lost(self, exc: BaseException, doing: str, *, started: float | None = None) -> None:
        """The database was found away. A failure of an attempt begun before the
        database last came back is old news and logs nothing."""
        with self._lock:
            if self._down_since is not None:
                return
            if started is not None and started < self._back_at:
                return
            self._down_since = time.monotonic()
        self.log.warning(
            "database lost (%s, while %s): retrying with backoff up to %.0f s",
            describe(exc),
            doing,
            self.cap,
        )

    def back(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            away = time.monotonic() - self._down_since
            self._down_since = None
            self._back_at = time.monotonic()
        self.log.warning("database back after %.1f s", away)
