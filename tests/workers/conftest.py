"""Fixtures of the worker tests: the API and workers on this test's database.

The API (as in tests/api) and in-process workers share the test's own database
and a storage folder under the test's temporary folder; ``drain`` runs a worker
until nothing waits or runs. ``worker_env`` is the environment of a worker run
as a separate process (``python -m workers``), for the kill and signal tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from api.settings import ApiSettings
from pipeline.storage import Storage, make_storage
from workers.main import Worker
from workers.settings import WorkerSettings

from api_helpers import Account, give_credits, make_app, signup


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def storage(storage_dir: Path) -> Storage:
    return make_storage(str(storage_dir))


@pytest.fixture
def client(engine: Engine, tmp_path: Path, storage_dir: Path) -> Iterator[TestClient]:
    settings = ApiSettings(
        data_dir=tmp_path, storage_url=str(storage_dir), max_upload_bytes=4 * 1024 * 1024
    )
    with TestClient(make_app(engine, settings)) as c:
        yield c


@pytest.fixture
def account(client: TestClient, engine: Engine) -> Account:
    acct = signup(client)
    give_credits(engine, acct.user_id, 500)
    return acct


@pytest.fixture
def worker_settings(tmp_path: Path, storage_dir: Path) -> WorkerSettings:
    return WorkerSettings(
        slots=2,
        lease_seconds=30,
        purge_hours=0,
        data_dir=tmp_path,
        storage_url=str(storage_dir),
    )


@pytest.fixture
def make_worker(
    engine: Engine, storage: Storage, worker_settings: WorkerSettings
) -> Callable[..., Worker]:
    def make(**changes: Any) -> Worker:
        settings = worker_settings.model_copy(update=changes)
        return Worker(engine, storage, settings)

    return make


@pytest.fixture
def drain(make_worker: Callable[..., Worker]) -> Callable[..., Worker]:
    """Run a worker until the queues are empty and its slots idle; the worker."""

    def run(**changes: Any) -> Worker:
        worker = make_worker(**changes)
        worker.run(until_idle=True)
        return worker

    return run


@pytest.fixture
def worker_env(db_url: URL, tmp_path: Path, storage_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "DB_"))}
    env.update(
        DATABASE_URL=db_url.render_as_string(hide_password=False),
        STORAGE_URL=str(storage_dir),
        AUTOML_DATA_DIR=str(tmp_path),
        WORKER_PURGE_HOURS="0",
        LOG_LEVEL="INFO",
    )
    return env
