"""Fixtures of the API tests: the app on this test's database, clients, accounts.

The app is built by ``api.main.create_app`` with its session dependency
overridden to use the test's own database (a fresh clone of the migrated
template), and its storage in the test's temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.settings import ApiSettings, Identity
from database.seed import seed

from api_helpers import WEBHOOK_SECRET, Account, make_app, signup


@pytest.fixture
def api_settings(tmp_path: Path) -> ApiSettings:
    return ApiSettings(
        data_dir=tmp_path,
        storage_url=str(tmp_path / "storage"),
        dev_purchases=True,
        stripe_webhook_secret=WEBHOOK_SECRET,
        max_upload_bytes=1024 * 1024,
        # Tests sign up and log in many times from one address: the abuse limits
        # have tests of their own (test_api_auth.py).
        identity=Identity(signup_per_ip=100_000, login_per_ip=100_000),
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
