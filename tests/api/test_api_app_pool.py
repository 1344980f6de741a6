"""``api_helpers.make_app`` lends an app built once per test process: a lent app
must be as ``create_app`` leaves it, whatever the test before it did."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.deps import get_session
from api.main import create_app
from api.settings import ApiSettings

import api_helpers
from api_helpers import make_app, release_apps, signup


def settings_in(folder: Path, **kw: object) -> ApiSettings:
    return ApiSettings(data_dir=folder, storage_url=str(folder / "storage"), **kw)  # type: ignore[arg-type]


def test_a_lent_app_is_as_create_app_leaves_it(engine: Engine, tmp_path: Path) -> None:
    first = make_app(engine, settings_in(tmp_path / "a"))
    first.state.predictor = object()
    first.state.anything = 1
    first.dependency_overrides[create_app] = lambda: None
    first.openapi()
    assert first.openapi_schema is not None
    before = dict(first.state._state)
    release_apps()

    settings = settings_in(tmp_path / "b")
    again = make_app(engine, settings)
    assert again is first  # built once, lent again
    fresh = create_app(settings)
    assert set(again.state._state) == set(fresh.state._state) == api_helpers.RESET_STATE
    for name, value in fresh.state._state.items():
        assert type(again.state._state[name]) is type(value), name
        assert again.state._state[name] is not before[name], name
    assert again.state.settings is settings
    assert again.state.storage.location("k") == fresh.state.storage.location("k")
    assert str(tmp_path / "b") in again.state.storage.location("k")
    assert again.openapi_schema is None
    assert again.middleware_stack is None
    assert set(again.dependency_overrides) == {get_session, api_helpers.get_session_factory}
    with TestClient(again) as client:
        signup(client)  # the sessions are on this test's engine
    release_apps()


def test_other_build_settings_build_another_app(engine: Engine, tmp_path: Path) -> None:
    one = make_app(engine, settings_in(tmp_path / "a"))
    release_apps()
    other = make_app(engine, settings_in(tmp_path / "b", max_json_bytes=1234))
    assert other is not one
    release_apps()
    assert make_app(engine, settings_in(tmp_path / "c")) is one
    release_apps()


def test_two_apps_at_once_are_two(engine: Engine, tmp_path: Path) -> None:
    a = make_app(engine, settings_in(tmp_path / "a"))
    b = make_app(engine, settings_in(tmp_path / "a"))
    assert a is not b
    release_apps()


def test_an_app_a_test_changed_is_not_lent_again(engine: Engine, tmp_path: Path) -> None:
    changed = make_app(engine, settings_in(tmp_path / "a"))

    @changed.get("/added")
    def added() -> dict[str, str]:
        return {}

    release_apps()
    again = make_app(engine, settings_in(tmp_path / "b"))
    assert again is not changed
    assert not any(getattr(r, "path", None) == "/added" for r in again.routes)
    release_apps()
