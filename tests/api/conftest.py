"""Fixtures of the API tests: the app on this test's database, clients, accounts.

The app is built by ``api.main.create_app`` with its session dependency
overridden to use the test's own database (a fresh clone of the migrated
template), and its storage in the test's temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from api_helpers import WEBHOOK_SECRET, Account, make_app, signup
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.settings import ApiSettings
from database.seed import seed

# Without packages, every conftest.py is imported as module "conftest", and
# pytest leaves the last one loaded (this one: tests/api is collected before
# tests/test_*.py) in sys.modules. The tests of tests/ import their helpers with
# `from conftest import ...`: names this module does not define are looked up in
# tests/conftest.py (PEP 562), so those imports keep working.
_ROOT_CONFTEST = str(Path(__file__).resolve().parents[1] / "conftest.py")
_root: ModuleType | None = None


def pytest_plugin_registered(plugin: Any, plugin_name: str, manager: Any) -> None:
    global _root
    if _root is None:
        _root = manager.get_plugin(_ROOT_CONFTEST)


def __getattr__(name: str) -> Any:
    if _root is not None and not name.startswith("__"):
        return getattr(_root, name)
    raise AttributeError(name)


@pytest.fixture
def api_settings(tmp_path: Path) -> ApiSettings:
    return ApiSettings(
        data_dir=tmp_path,
        storage_url=str(tmp_path / "storage"),
        dev_purchases=True,
        stripe_webhook_secret=WEBHOOK_SECRET,
        max_upload_bytes=1024 * 1024,
    )


@pytest.fixture
def app(engine: Engine, api_settings: ApiSettings) -> FastAPI:
    return make_app(engine, api_settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def account(client: TestClient) -> Account:
    return signup(client)


@pytest.fixture
def other(client: TestClient) -> Account:
    """A second user, for the cross-user checks."""
    return signup(client)


@pytest.fixture
def seeded(engine: Engine) -> None:
    seed(engine)
