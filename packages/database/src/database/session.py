"""Engines and sessions for the API (``get_db``) and the workers (``session_scope``).

Pooling follows the settings (20 connections, 10 overflow, pre-ping by default);
every connection carries the statement and lock timeouts, and every engine made
here raises ``database.errors`` exceptions.

Pre-ping (``DB_POOL_PRE_PING``) tests a pooled connection before handing it out,
so one that died while it sat in the pool (a restart of the server) is replaced
instead of failing the caller's first statement. It costs a round trip at every
checkout; ``DB_POOL_PRE_PING_IDLE_S`` (default 0: every checkout) tests only a
connection idle in the pool for longer than that, so under load (connections come
back and go out within milliseconds) there is no ping, at the price of a restart of
the server quicker than that failing the next statement of a recently used
connection (the API's guarantee, ``tests/api/test_api_outage.py``, needs 0).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from database import errors, tracing
from database.config import DatabaseSettings, get_settings


def _engine_kwargs(settings: DatabaseSettings) -> dict[str, Any]:
    return {
        "echo": settings.echo,
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        # With an idle threshold, _ping_after_idle does the pre-ping instead of the pool.
        "pool_pre_ping": settings.pool_pre_ping and not settings.pool_pre_ping_idle_s,
        "pool_timeout": settings.pool_timeout_s,
        "connect_args": {"options": settings.connect_options()},
        # Secrets stay out of logs: echo shows statements, never parameters.
        "hide_parameters": True,
    }


#: Where a pooled connection's last return to the pool is kept (its record's ``info``).
_IDLE_SINCE = "automl_idle_since"


def _ping_after_idle(engine: Engine, settings: DatabaseSettings) -> None:
    """Pre-ping only the connections idle in the pool longer than
    ``pool_pre_ping_idle_s`` (SQLAlchemy's own pre-ping tests every checkout). A
    connection that fails the ping is replaced (``DisconnectionError``: the pool
    discards it and connects again)."""
    if not (settings.pool_pre_ping and settings.pool_pre_ping_idle_s):
        return
    idle_s = settings.pool_pre_ping_idle_s
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _handed_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since <= idle_s:
            return  # new, or back in the pool a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise sa_exc.DisconnectionError(
                "a pooled connection failed its pre-ping; reconnecting"
            ) from exc


def make_engine(url: URL | str | None = None, settings: DatabaseSettings | None = None) -> Engine:
    """A new engine on ``url`` (default: the configured or embedded database)."""
    settings = settings or get_settings()
    engine = create_engine(url or settings.url(), **_engine_kwargs(settings))
    _ping_after_idle(engine, settings)
    tracing.instrument_engine(engine)  # a span a statement when tracing is on
    return errors.install(engine)


def make_async_engine(
    url: URL | str | None = None, settings: DatabaseSettings | None = None
) -> AsyncEngine:
    """An asyncio engine on psycopg's async driver."""
    settings = settings or get_settings()
    engine = create_async_engine(url or settings.url(), **_engine_kwargs(settings))
    _ping_after_idle(engine.sync_engine, settings)
    errors.install(engine.sync_engine)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def make_async_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(bind=engine, expire_on_commit=False)


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process-wide engine (one pool per process)."""
    return make_engine()


@lru_cache(maxsize=1)
def get_sessionmaker() -> sessionmaker[Session]:
    return make_sessionmaker(get_engine())


@lru_cache(maxsize=1)
def get_async_engine() -> AsyncEngine:
    return make_async_engine()


@lru_cache(maxsize=1)
def get_async_sessionmaker() -> async_sessionmaker[AsyncSession]:
    return make_async_sessionmaker(get_async_engine())


def get_db() -> Iterator[Session]:
    """FastAPI dependency: one session per request, closed afterwards.

    The endpoint commits what it means to keep; anything left uncommitted is
    rolled back when the session closes.
    """
    with get_sessionmaker()() as session:
        yield session


@contextmanager
def session_scope(factory: sessionmaker[Session] | None = None) -> Iterator[Session]:
    """Workers' unit of work: commit on success, roll back on any error."""
    with (factory or get_sessionmaker())() as session, session.begin():
        yield session


async def get_async_db() -> AsyncIterator[AsyncSession]:
    async with get_async_sessionmaker()() as session:
        yield session


@asynccontextmanager
async def async_session_scope(
    factory: async_sessionmaker[AsyncSession] | None = None,
) -> AsyncIterator[AsyncSession]:
    async with (factory or get_async_sessionmaker())() as session, session.begin():
        yield session


def reset() -> None:
    """Forget the cached engines (tests, or after changing the environment)."""
    for cached in (get_engine, get_async_engine):
        if cached.cache_info().currsize:
            engine = cached()
            if isinstance(engine, AsyncEngine):
                engine.sync_engine.dispose()
            else:
                engine.dispose()
    for fn in (get_engine, get_sessionmaker, get_async_engine, get_async_sessionmaker):
        fn.cache_clear()
    get_settings.cache_clear()
