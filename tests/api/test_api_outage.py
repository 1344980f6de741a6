"""The API after a PostgreSQL restart: the pool replaces its dead connections at once.

Against a server of the test's own (``restartable_pg``), stopped with
``pg_ctl stop -m fast`` (every session ends with 57P01) and started again on the
same socket. The engine is the package's own (``database.session.make_engine``:
pre-ping on, the database's errors translated), as ``automl-api`` runs it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import text

from api.settings import ApiSettings
from database.session import make_engine

from api_helpers import make_app, signup
from pgtest import RestartableServer

#: Connections in the pool before the restart: each one is dead afterwards.
POOLED = 6


def test_the_first_requests_after_a_restart_succeed(
    restartable_pg: RestartableServer, tmp_path: Path
) -> None:
    engine = make_engine(restartable_pg.url("automl"))
    settings = ApiSettings(data_dir=tmp_path, storage_url=str(tmp_path / "storage"))
    try:
        with TestClient(make_app(engine, settings)) as client:
            account = signup(client)
            # A busy moment before the restart leaves several connections in the pool.
            held = [engine.connect() for _ in range(POOLED)]
            for conn in held:
                conn.execute(text("SELECT 1"))
            for conn in held:
                conn.close()
            assert engine.pool.checkedin() >= POOLED  # type: ignore[attr-defined]

            restartable_pg.stop()
            restartable_pg.start()

            answers = [client.get("/v1/me", headers=account.headers) for _ in range(POOLED + 2)]
            assert [r.status_code for r in answers] == [200] * (POOLED + 2), [
                r.text for r in answers if r.status_code != 200
            ]
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
    finally:
        engine.dispose()


def test_a_request_while_the_server_is_down_is_a_503_then_it_recovers(
    restartable_pg: RestartableServer, tmp_path: Path
) -> None:
    engine = make_engine(restartable_pg.url("automl"))
    settings = ApiSettings(data_dir=tmp_path, storage_url=str(tmp_path / "storage"))
    try:
        with TestClient(make_app(engine, settings)) as client:
            account = signup(client)
            restartable_pg.stop()
            down = client.get("/v1/me", headers=account.headers)
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] in {"database_unavailable", "busy"}
            not_ready = client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["database"] is False
            restartable_pg.start()
            assert client.get("/v1/me", headers=account.headers).status_code == 200
            assert client.get("/readyz").status_code == 200
    finally:
        engine.dispose()
