"""Fixtures of the client's tests: the real API (the app the API tests use, on this
test's own database), reached through ``automl.Client`` over FastAPI's TestClient
(an ``httpx.Client``), ``automl.AsyncClient`` over ``httpx.ASGITransport``, and (in
test_client_socket.py) over a real socket served by uvicorn."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

import automl
from api.mail import MemoryMailer
from api.settings import ApiSettings, Identity
from database import identity
from pipeline.storage import make_storage
from workers.main import Worker
from workers.settings import WorkerSettings

from api_helpers import WEBHOOK_SECRET, make_app, rows
from client_helpers import new_user, user_id

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The tests never read the machine's environment or ~/.config/automl."""
    for name in ("AUTOML_BASE_URL", "AUTOML_API_KEY", "AUTOML_TOKEN", "AUTOML_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTOML_CONFIG", str(tmp_path / "no-config.toml"))


@pytest.fixture
def api_settings(tmp_path: Path) -> ApiSettings:
    return ApiSettings(
        data_dir=tmp_path,
        storage_url=str(tmp_path / "storage"),
        dev_purchases=True,
        stripe_webhook_secret=WEBHOOK_SECRET,
        max_upload_bytes=4 * 1024 * 1024,
        events_poll_seconds=0.05,
        identity=Identity(signup_per_ip=100_000, login_per_ip=100_000),
    )


@pytest.fixture
def app(engine: Engine, api_settings: ApiSettings) -> FastAPI:
    return make_app(engine, api_settings)


@pytest.fixture
def http(app: FastAPI) -> Iterator[TestClient]:
    app.state.mailer = MemoryMailer()
    with TestClient(app) as c:
        yield c


@pytest.fixture
def mailer(app: FastAPI, http: TestClient) -> MemoryMailer:
    """The mails the API sent (kept in memory by ``http``, not printed)."""
    found: MemoryMailer = app.state.mailer
    return found


@pytest.fixture
def anon(http: TestClient) -> automl.Client:
    """No credentials."""
    return automl.Client(http_client=http)


@pytest.fixture
def client(http: TestClient) -> automl.Client:
    return new_user(http)


@pytest.fixture
def other(http: TestClient) -> automl.Client:
    return new_user(http)


@pytest.fixture
def admin(http: TestClient, engine: Engine) -> automl.Client:
    """An administrator (as ``automl-db users promote`` makes one)."""
    c = new_user(http)
    rows(engine, "UPDATE users SET role = 'admin' WHERE id = :u", u=c.signed_up.user.id)  # type: ignore[attr-defined]
    return c


@pytest.fixture
def credits(engine: Engine) -> Callable[[automl.Client, int], None]:
    from api_helpers import give_credits

    def give(c: automl.Client, amount: int) -> None:
        give_credits(engine, user_id(c), amount)  # type: ignore[arg-type]

    return give


@pytest.fixture
def drain(engine: Engine, api_settings: ApiSettings) -> Callable[[], Worker]:
    """Run a worker in this process until the queue is empty."""

    def run() -> Worker:
        settings = WorkerSettings(
            slots=1,
            lease_seconds=30,
            heartbeat_seconds=1.0,
            purge_hours=0,
            data_dir=api_settings.data_dir,
            storage_url=str(api_settings.storage_url),
        )
        worker = Worker(engine, make_storage(str(api_settings.storage_url)), settings)
        worker.run(until_idle=True)
        return worker

    return run


@pytest.fixture
def password() -> str:
    return "correct horse battery"


_ = identity  # the hasher is configured cheap by tests/conftest.py
