"""``automl-db seed``: credit packages and tutorials, upserted idempotently."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from database import cli
from database import session as db_session
from database.seed import CREDIT_PACKAGES, TUTORIALS, seed

from api_helpers import rows, scalar


def test_seed_is_idempotent(engine: Engine) -> None:
    first = seed(engine)
    assert first.inserted == {"packages": len(CREDIT_PACKAGES), "tutorials": len(TUTORIALS)}
    stamps = rows(engine, "SELECT name, updated_at FROM credit_packages ORDER BY name")
    second = seed(engine)
    assert second.inserted == {"packages": 0, "tutorials": 0}
    assert second.updated == {"packages": 0, "tutorials": 0}
    # Untouched rows keep their updated_at: nothing was rewritten.
    assert rows(engine, "SELECT name, updated_at FROM credit_packages ORDER BY name") == stamps
    assert scalar(engine, "SELECT count(*) FROM tutorials") == len(TUTORIALS)


def test_seed_restores_its_rows_and_keeps_others(engine: Engine) -> None:
    seed(engine)
    rows(engine, "UPDATE credit_packages SET credits = 1, is_active = false WHERE name = 'Starter'")
    rows(
        engine,
        "INSERT INTO credit_packages (name, credits, price_cents)"
        " VALUES ('Operator special', 7, 70)",
    )
    report = seed(engine)
    assert report.updated["packages"] == 1 and report.inserted["packages"] == 0
    assert tuple(
        rows(engine, "SELECT credits, is_active FROM credit_packages WHERE name = 'Starter'")[0]
    ) == (100, True)
    assert (
        scalar(engine, "SELECT credits FROM credit_packages WHERE name = 'Operator special'") == 7
    )


@pytest.fixture
def database_url(db_url: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    db_session.reset()
    yield db_url
    db_session.reset()


def test_cli_seed_and_up(
    engine: Engine, database_url: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["seed"]) == 0
    assert "credit packages 4 new" in capsys.readouterr().out
    assert scalar(engine, "SELECT count(*) FROM credit_packages") == len(CREDIT_PACKAGES)
    rows(engine, "DELETE FROM tutorials WHERE slug = 'experiments'")
    assert cli.main(["up"]) == 0  # migrates (already at head), then seeds
    out = capsys.readouterr().out
    assert "tutorials 1 new" in out
    assert scalar(engine, "SELECT count(*) FROM tutorials") == len(TUTORIALS)
