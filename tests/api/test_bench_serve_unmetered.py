"""bench/serve_unmetered.py, the serving benchmark's "ours, metering off" side (issue 14):
its predictor answers what the metered one answers and meters nothing (no
``inference_requests`` row, no hold, no credit taken, no quota counted).

No timing is asserted. The API's in-process predictor is replaced in this test's app
only, as the launcher replaces ``automl-serve``'s in its own process.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

from fastapi.testclient import TestClient
from serving_helpers import frame, register
from sqlalchemy import Engine, text

from api.settings import ApiSettings
from database.storage import LocalStorage

from api_helpers import Account, give_credits, scalar
from pgtest import ROOT

sys.path.insert(0, str(ROOT))

from bench.serve_unmetered import UnmeteredPredictor  # noqa: E402


def _deploy(client: TestClient, account: Account, version_id: uuid.UUID) -> str:
    r = client.post(
        "/v1/deployments",
        headers=account.headers,
        json={"name": f"d-{uuid.uuid4().hex[:8]}", "model_version_id": str(version_id)},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _count(engine: Engine, sql: str, **params: Any) -> int:
    return int(scalar(engine, sql, **params))


def test_metering_off_answers_the_same_and_meters_nothing(
    client: TestClient, account: Account, engine: Engine, api_settings: ApiSettings
) -> None:
    storage = LocalStorage(api_settings.storage_location())
    give_credits(engine, account.user_id, 10)
    model = register(engine, storage, account.user_id)
    on_id = _deploy(client, account, model.version_id)
    off_id = _deploy(client, account, model.version_id)
    with engine.begin() as conn:  # a quota on the key: metering would count it
        conn.execute(
            text("UPDATE api_keys SET rate_limit_per_minute = 1000 WHERE id = :k"),
            {"k": account.key_id},
        )
    x, _ = frame(5, 7)
    body = {"records": x.to_dict(orient="records")}

    # The metered predictor (the app's own): twice, the long way then the quick way.
    on = [
        client.post(f"/v1/deployments/{on_id}/predict", headers=account.headers, json=body)
        for _ in range(2)
    ]
    client.app.state.predictor.flush()  # type: ignore[attr-defined]
    balance = _count(engine, "SELECT credit_balance FROM users WHERE id = :u", u=account.user_id)
    used = _count(
        engine,
        "SELECT coalesce(sum(used), 0) FROM api_key_usage_windows WHERE api_key_id = :k",
        k=account.key_id,
    )

    off_predictor = UnmeteredPredictor(storage, api_settings.serve_cache_bytes)
    client.app.state.predictor = off_predictor  # type: ignore[attr-defined]
    off = [
        client.post(f"/v1/deployments/{off_id}/predict", headers=account.headers, json=body)
        for _ in range(2)
    ]
    assert [r.status_code for r in on + off] == [200] * 4, [r.text for r in on + off]
    assert on[0].json() == on[1].json() == off[0].json() == off[1].json()
    assert len(off[0].json()["predictions"]) == 5
    assert off_predictor.log is None and off_predictor.leases is None
    off_predictor.flush()

    # The metered side logged; the unmetered one wrote nothing anywhere.
    logged = "SELECT count(*) FROM inference_requests WHERE deployment_id = :d"
    assert _count(engine, logged, d=on_id) == 2
    assert _count(engine, logged, d=off_id) == 0
    assert (
        _count(engine, "SELECT count(*) FROM usage_holds WHERE user_id = :u", u=account.user_id)
        == 0
    )
    assert (
        _count(engine, "SELECT credit_balance FROM users WHERE id = :u", u=account.user_id)
        == balance
    )
    assert (
        _count(
            engine,
            "SELECT coalesce(sum(used), 0) FROM api_key_usage_windows WHERE api_key_id = :k",
            k=account.key_id,
        )
        == used
    )

    # A stopped deployment is refused as ever (the long way's deployments.serving).
    r = client.post(f"/v1/deployments/{off_id}/stop", headers=account.headers)
    assert r.status_code == 200, r.text
    r = client.post(f"/v1/deployments/{off_id}/predict", headers=account.headers, json=body)
    assert r.status_code == 409, r.text
