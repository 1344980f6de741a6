"""The audit trail while PostgreSQL goes away and comes back (issue 17's closing
note): audit-writing requests answer 503 while it is down (never a 500), work again
after, and no audit row is ever written without the change it records, or a change
without its row (the trigger's row is in the change's own transaction).

Against a server of the test's own (``restartable_pg``), stopped with
``pg_ctl stop -m fast`` while requests are in flight.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import text

from api.settings import ApiSettings
from database.session import make_engine

from api_helpers import make_app, signup
from pgtest import RestartableServer


def _consistent(engine, user_id: str) -> tuple[int, int]:
    """(keys, their ``api_key.created`` rows): every key of the user has exactly one
    row, every row names a key that exists, each with the request's actor."""
    with engine.connect() as conn:
        keys = {
            r[0]
            for r in conn.execute(
                text("SELECT id FROM api_keys WHERE user_id = :u"), {"u": user_id}
            )
        }
        rows = conn.execute(
            text(
                "SELECT entity_id, actor_user_id, request_id FROM audit_events"
                " WHERE action = 'api_key.created' AND subject_user_id = :u"
            ),
            {"u": user_id},
        ).all()
    assert sorted(r[0] for r in rows) == sorted(keys), (
        "an audit row without its key, or a key without its row"
    )
    # The sign-up's first key is the new user's doing too.
    assert all(str(r[1]) == user_id and r[2] for r in rows), rows
    return len(keys), len(rows)


def test_audited_writes_during_an_outage_are_503_then_work_and_leave_no_partial_row(
    restartable_pg: RestartableServer, tmp_path: Path
) -> None:
    engine = make_engine(restartable_pg.url("automl"))
    settings = ApiSettings(data_dir=tmp_path, storage_url=str(tmp_path / "storage"))
    try:
        with TestClient(make_app(engine, settings), raise_server_exceptions=False) as client:
            account = signup(client)
            user_id = str(account.user_id)

            # Requests in flight when the server stops: each is a 201 or a 503.
            started = threading.Event()
            statuses: list[int] = []
            lock = threading.Lock()

            def create(i: int) -> None:
                r = client.post("/v1/api-keys", json={"name": f"k{i}"}, headers=account.headers)
                with lock:
                    statuses.append(r.status_code)
                    if len(statuses) >= 5:
                        started.set()

            with ThreadPoolExecutor(max_workers=4) as pool:
                futures = [pool.submit(create, i) for i in range(40)]
                started.wait(timeout=120)
                restartable_pg.stop()
                for f in futures:
                    f.result()
            assert set(statuses) <= {201, 503}, statuses
            assert 503 in statuses and 201 in statuses, statuses

            # While it is down: a 503 for an audited write (a key's creation, a
            # revocation), for a read of the trail, and for authentication itself.
            for r in (
                client.post("/v1/api-keys", json={"name": "down"}, headers=account.headers),
                client.get("/v1/audit-events", headers=account.headers),
            ):
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] in {"database_unavailable", "busy"}

            restartable_pg.start()
            r = client.post("/v1/api-keys", json={"name": "after"}, headers=account.headers)
            assert r.status_code == 201, r.text
            key_id = r.json()["id"]
            revoked = client.delete(f"/v1/api-keys/{key_id}", headers=account.headers)
            assert revoked.status_code in (200, 204), revoked.text
            trail = client.get(
                "/v1/audit-events", params={"action": "api_key."}, headers=account.headers
            )
            assert trail.status_code == 200, trail.text
            actions = {(e["action"], e["entity_id"]) for e in trail.json()["items"]}
            assert ("api_key.created", key_id) in actions
            assert ("api_key.revoked", key_id) in actions

        keys, rows = _consistent(engine, user_id)
        # The sign-up's key, the in-flight ones that committed (a 201, or a 503 whose
        # COMMIT reached the server before it stopped), and the one made after.
        assert keys == rows >= 2 + statuses.count(201)
    finally:
        engine.dispose()
