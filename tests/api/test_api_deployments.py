"""Deployments and predictions through the API (issue 14; docs/serving.md).

Real models (scikit-learn pipelines built like the worker's), real storage, the
real database. Predictions are compared with the model's own ``predict``.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from serving_helpers import NUMERIC, Registered, fit, frame, register
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from api.settings import ApiSettings
from database import billing, jobs, metering, registry
from database.models import ModelPermission, UserTier
from database.storage import LocalStorage
from workers.kinds import Context, dispatch

from api_helpers import Account, give_credits, make_app, scalar
from factories import make_dataset, make_version

PARQUET = "application/vnd.apache.parquet"


def set_prediction_price(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, credits_per_1000: int
) -> None:
    """Every tier's price book prices predicted rows at ``credits_per_1000`` from now
    (a new book: database.billing.set_prices), and admission estimates with it."""
    with Session(engine) as s:
        for tier in UserTier:
            billing.set_prices(s, tier=tier, prices={"predicted_rows": credits_per_1000})
        s.commit()
    monkeypatch.setattr(
        metering,
        "FIRST_BOOK_PRICES",
        metering.Prices(predicted_rows_per_1000=Decimal(credits_per_1000)),
    )


@pytest.fixture(autouse=True)
def free_predictions(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> Iterator[None]:
    """Predictions cost nothing here (a price book at 0): these tests are about
    serving; what a prediction costs is test_a_user_who_cannot_pay's and
    tests/api/test_api_usage.py's."""
    set_prediction_price(engine, monkeypatch, 0)
    yield


@pytest.fixture
def storage(api_settings: ApiSettings) -> LocalStorage:
    return LocalStorage(api_settings.storage_location())


@pytest.fixture
def model(engine: Engine, storage: LocalStorage, account: Account) -> Registered:
    return register(engine, storage, account.user_id)


def deploy(client: TestClient, account: Account, **body: Any) -> dict[str, Any]:
    body.setdefault("name", f"d-{uuid.uuid4().hex[:8]}")
    r = client.post("/v1/deployments", headers=account.headers, json=body)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def deployment(client: TestClient, account: Account, model: Registered) -> dict[str, Any]:
    return deploy(client, account, model_version_id=str(model.version_id))


def url(deployment: dict[str, Any], what: str = "predict") -> str:
    return f"/v1/deployments/{deployment['id']}/{what}"


def records(rows: int = 5, seed: int = 3) -> list[dict[str, Any]]:
    x, _ = frame(rows, seed)
    return x.to_dict(orient="records")


def expected(model: Registered, recs: list[dict[str, Any]]) -> tuple[list[Any], np.ndarray]:
    x = pd.DataFrame(recs).astype({c: float for c in NUMERIC})
    return list(model.pipeline.predict(x)), model.pipeline.predict_proba(x)


def assert_same(model: Registered, body: dict[str, Any], recs: list[dict[str, Any]]) -> None:
    predictions, proba = expected(model, recs)
    assert body["predictions"] == predictions
    classes = [str(c) for c in model.pipeline.classes_]
    got = np.array([[row[c] for c in classes] for row in body["probabilities"]])
    np.testing.assert_allclose(got, proba)
    assert body["model_version_id"] == str(model.version_id)


# --- deployments ------------------------------------------------------------------------------
def test_create_get_list_stop(
    client: TestClient, account: Account, model: Registered, engine: Engine
) -> None:
    d = deploy(client, account, model_version_id=str(model.version_id), config={"timeout_ms": 500})
    assert d["status"] == "active" and d["config"] == {"timeout_ms": 500}
    assert scalar(engine, "SELECT is_deployed FROM models WHERE id = :m", m=model.model_id)
    r = client.get(f"/v1/deployments/{d['id']}", headers=account.headers)
    assert r.status_code == 200 and r.json()["name"] == d["name"]
    listed = client.get("/v1/deployments", headers=account.headers).json()
    assert [i["id"] for i in listed["items"]] == [d["id"]]
    r = client.post(url(d, "stop"), headers=account.headers)
    assert r.status_code == 200 and r.json()["status"] == "stopped"
    assert not scalar(engine, "SELECT is_deployed FROM models WHERE id = :m", m=model.model_id)
    # Stopping again changes nothing; a stopped deployment does not predict (409).
    assert client.post(url(d, "stop"), headers=account.headers).json()["status"] == "stopped"
    r = client.post(url(d), headers=account.headers, json={"records": records(1)})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "deployment_not_serving"


def test_name_unique_and_bad_bodies(
    client: TestClient, account: Account, model: Registered
) -> None:
    d = deploy(client, account, model_version_id=str(model.version_id))
    r = client.post(
        "/v1/deployments",
        headers=account.headers,
        json={"name": d["name"], "model_version_id": str(model.version_id)},
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "name_taken"
    for body in (
        {"name": "x"},
        {"name": "x", "model_version_id": str(model.version_id), "alias": "champion"},
        {"name": "x", "registered_model_id": str(model.registered_model_id)},
        {"name": "x", "model_version_id": str(model.version_id), "config": {"timeout_ms": 0}},
        {"name": "x", "model_version_id": str(model.version_id), "config": {"max_batch_rows": "5"}},
        {"name": "\x00", "model_version_id": str(model.version_id)},
    ):
        r = client.post("/v1/deployments", headers=account.headers, json=body)
        assert r.status_code == 422, (body, r.text)
    r = client.post(
        "/v1/deployments",
        headers=account.headers,
        json={"name": "x", "model_version_id": str(uuid.uuid4())},
    )
    assert r.status_code == 404


def test_another_users_deployment_is_not_found(
    client: TestClient, account: Account, other: Account, deployment: dict[str, Any]
) -> None:
    assert (
        client.get(f"/v1/deployments/{deployment['id']}", headers=other.headers).status_code == 404
    )
    r = client.post(url(deployment), headers=other.headers, json={"records": records(1)})
    assert r.status_code == 404, r.text
    assert client.post(url(deployment, "stop"), headers=other.headers).status_code == 404
    assert client.get("/v1/deployments", headers=other.headers).json()["items"] == []
    r = client.post(url(deployment), json={"records": records(1)})
    assert r.status_code == 401


def test_deploy_another_users_model_needs_deploy_permission(
    client: TestClient, account: Account, other: Account, model: Registered, engine: Engine
) -> None:
    body = {"name": "theirs", "model_version_id": str(model.version_id)}
    r = client.post("/v1/deployments", headers=other.headers, json=body)
    assert r.status_code == 404
    with Session(engine) as session:
        session.execute(
            text("UPDATE registered_models SET visibility = 'shared' WHERE id = :r"),
            {"r": model.registered_model_id},
        )
        registry.grant_permission(
            session, model.registered_model_id, other.user_id, ModelPermission.DOWNLOAD
        )
        session.commit()
    assert client.post("/v1/deployments", headers=other.headers, json=body).status_code == 404
    with Session(engine) as session:
        registry.grant_permission(
            session, model.registered_model_id, other.user_id, ModelPermission.DEPLOY
        )
        session.commit()
    d = client.post("/v1/deployments", headers=other.headers, json=body).json()
    assert d["status"] == "active"
    recs = records(2)
    r = client.post(url(d), headers=other.headers, json={"records": recs})
    assert r.status_code == 200, r.text
    assert_same(model, r.json(), recs)
    # The grant taken back: the grantee's deployment stops serving at once.
    with Session(engine) as session:
        registry.revoke_permission(session, model.registered_model_id, other.user_id)
        session.commit()
    r = client.post(url(d), headers=other.headers, json={"records": recs})
    assert r.status_code == 409 and r.json()["error"]["code"] == "deployment_not_serving"


# --- predictions ------------------------------------------------------------------------------
def test_predictions_equal_the_models_own_in_every_shape(
    client: TestClient, account: Account, model: Registered, deployment: dict[str, Any]
) -> None:
    recs = records(7)
    x = pd.DataFrame(recs)
    columns = list(x.columns)
    bodies: list[tuple[Any, dict[str, str] | None]] = [
        ({"records": recs}, None),
        ({"dataframe_records": recs}, None),
        ({"dataframe_split": {"columns": columns, "data": x.values.tolist()}}, None),
        ({"instances": recs}, None),
        ({"inputs": recs}, None),
        ({"instances": x[[*NUMERIC, "colour"]].values.tolist()}, None),
    ]
    for body, _ in bodies:
        r = client.post(url(deployment), headers=account.headers, json=body)
        assert r.status_code == 200, (body, r.text)
        assert_same(model, r.json(), recs)
    csv = x.to_csv(index=False).encode()
    r = client.post(
        url(deployment), headers={**account.headers, "Content-Type": "text/csv"}, content=csv
    )
    assert r.status_code == 200, r.text
    assert_same(model, r.json(), recs)
    buffer = io.BytesIO()
    x.to_parquet(buffer)
    for media in (PARQUET, "application/x-parquet"):
        r = client.post(
            url(deployment),
            headers={**account.headers, "Content-Type": media},
            content=buffer.getvalue(),
        )
        assert r.status_code == 200, r.text
        assert_same(model, r.json(), recs)


def test_null_is_a_missing_value_and_extra_columns_are_ignored(
    client: TestClient, account: Account, model: Registered, deployment: dict[str, Any]
) -> None:
    recs = records(3)
    recs[0]["sepal_length"] = None
    recs[1]["colour"] = None
    sent = [{**r, "unknown": 1} for r in recs]
    r = client.post(url(deployment), headers=account.headers, json={"records": sent})
    assert r.status_code == 200, r.text
    x = pd.DataFrame(recs)
    x["colour"] = x["colour"].astype(object).where(x["colour"].notna(), np.nan)
    assert r.json()["predictions"] == list(model.pipeline.predict(x))


def test_a_regressor_answers_predictions_only(
    client: TestClient, account: Account, engine: Engine, storage: LocalStorage
) -> None:
    reg = register(engine, storage, account.user_id, fit("regression"), problem_type="regression")
    d = deploy(client, account, model_version_id=str(reg.version_id))
    recs = records(4)
    r = client.post(url(d), headers=account.headers, json={"records": recs})
    assert r.status_code == 200, r.text
    assert "probabilities" not in r.json()
    np.testing.assert_allclose(r.json()["predictions"], reg.pipeline.predict(pd.DataFrame(recs)))


def test_without_signature_the_training_columns_are_checked(
    client: TestClient, account: Account, engine: Engine, storage: LocalStorage
) -> None:
    reg = register(engine, storage, account.user_id, fit("logistic"), signature=None)
    d = deploy(client, account, model_version_id=str(reg.version_id))
    recs = records(4)
    r = client.post(url(d), headers=account.headers, json={"records": recs})
    assert r.status_code == 200, r.text
    assert_same(reg, r.json(), recs)
    r = client.post(url(d), headers=account.headers, json={"records": [{"sepal_length": 1.0}]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_columns"
    bad = [{**recs[0], "sepal_width": "wide"}]
    r = client.post(url(d), headers=account.headers, json={"records": bad})
    assert r.status_code == 422 and "sepal_width" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"", "application/json", 422, "empty_body"),
        (b"   ", None, 422, "empty_body"),
        (b"{not json", "application/json", 422, "invalid_json"),
        (b'{"records": [{"a": 1}', "application/json", 422, "invalid_json"),
        (b"\xff\xfe", "application/json", 422, "invalid_json"),
        (b"[1, 2]", "application/json", 422, "invalid_input"),
        (b'{"records": []}', "application/json", 422, "empty_input"),
        (b'{"dataframe_split": {"columns": ["a"], "data": []}}', None, 422, "empty_input"),
        (b'{"records": [1, 2]}', None, 422, "invalid_input"),
        (b'{"records": [], "instances": []}', None, 422, "invalid_input"),
        (
            b'{"dataframe_split": {"columns": ["a", "a"], "data": [[1, 2]]}}',
            None,
            422,
            "invalid_input",
        ),
        (b'{"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}', None, 422, "invalid_input"),
        (b"a,b\n1,2\n", "text/plain", 415, "unsupported_media_type"),
        (b"not parquet", PARQUET, 422, "invalid_parquet"),
        (b"sepal_length\n", "text/csv", 422, "empty_input"),
        (b'{"records": [{"sepal\\u0000": 1}]}', None, 422, "missing_columns"),
    ],
)
def test_bad_bodies_are_clear_4xx(
    client: TestClient,
    account: Account,
    deployment: dict[str, Any],
    body: bytes,
    content_type: str | None,
    status: int,
    code: str,
) -> None:
    headers = dict(account.headers)
    if content_type:
        headers["Content-Type"] = content_type
    r = client.post(url(deployment), headers=headers, content=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_missing_columns_and_wrong_types_are_named(
    client: TestClient, account: Account, deployment: dict[str, Any]
) -> None:
    recs = records(2)
    for r in recs:
        del r["petal_length"]
        del r["colour"]
    r = client.post(url(deployment), headers=account.headers, json={"records": recs})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "missing_columns"
    assert error["details"]["missing"] == ["petal_length", "colour"]
    assert "petal_length" in error["message"] and "colour" in error["message"]
    recs = records(2)
    recs[1]["sepal_width"] = "wide"
    recs[0]["colour"] = 3
    recs[0]["sepal_length"] = True
    r = client.post(url(deployment), headers=account.headers, json={"records": recs})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "wrong_types"
    assert set(error["details"]["columns"]) == {"sepal_width", "colour", "sepal_length"}
    assert '"wide"' in error["details"]["columns"]["sepal_width"]


def test_too_many_rows_and_a_100_mb_body(
    client: TestClient, account: Account, model: Registered
) -> None:
    d = deploy(
        client, account, model_version_id=str(model.version_id), config={"max_batch_rows": 3}
    )
    r = client.post(url(d), headers=account.headers, json={"records": records(4)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_rows"
    huge = b'{"records": [' + b" " * (100 * 1024 * 1024) + b"]}"
    r = client.post(
        url(d), headers={**account.headers, "Content-Type": "application/json"}, content=huge
    )
    assert r.status_code == 413, r.text[:200]
    assert r.json()["error"]["code"] == "body_too_large"


def test_a_model_missing_from_storage_is_a_clear_error(
    client: TestClient, account: Account, model: Registered, storage: LocalStorage, engine: Engine
) -> None:
    location = scalar(engine, "SELECT s3_path FROM models WHERE id = :m", m=model.model_id)
    d = deploy(client, account, model_version_id=str(model.version_id))
    storage.delete(location)
    r = client.post(url(d), headers=account.headers, json={"records": records(1)})
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_unavailable"


def test_an_incompatible_environment_fails_the_deployment(
    client: TestClient, account: Account, engine: Engine, storage: LocalStorage
) -> None:
    reg = register(engine, storage, account.user_id, environment={"sklearn": "0.1.0"})
    d = deploy(client, account, model_version_id=str(reg.version_id))
    assert d["status"] == "failed" and "sklearn 0.1.0" in d["error_message"]
    r = client.post(url(d), headers=account.headers, json={"records": records(1)})
    assert r.status_code == 409


def test_the_model_is_loaded_once(
    client: TestClient, app: FastAPI, account: Account, deployment: dict[str, Any]
) -> None:
    for _ in range(3):
        r = client.post(url(deployment), headers=account.headers, json={"records": records(1)})
        assert r.status_code == 200
    assert app.state.predictor.cache.loads == 1


# --- aliases ----------------------------------------------------------------------------------
def _set_alias(engine: Engine, registered_model_id: uuid.UUID, version: int) -> None:
    with Session(engine) as session:
        registry.set_alias(session, registered_model_id, "champion", version)
        session.commit()


def test_alias_switch_under_load_loses_no_request(
    client: TestClient, account: Account, engine: Engine, storage: LocalStorage
) -> None:
    v1 = register(engine, storage, account.user_id, fit(seed=1))
    v2 = register(
        engine, storage, account.user_id, fit(seed=2), registered_model_id=v1.registered_model_id
    )
    _set_alias(engine, v1.registered_model_id, v1.version)
    d = deploy(client, account, registered_model_id=str(v1.registered_model_id), alias="champion")
    assert scalar(engine, "SELECT is_deployed FROM models WHERE id = :m", m=v1.model_id)
    recs = records(3)
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set() or len(answers) < 40:
            r = client.post(url(d), headers=account.headers, json={"records": recs})
            answers.append((r.status_code, r.json().get("model_version_id")))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    while len(answers) < 10:
        time.sleep(0.01)
    _set_alias(engine, v1.registered_model_id, v2.version)
    seen = len(answers)
    while len(answers) < seen + 20:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(30)
    statuses = {s for s, _ in answers}
    assert statuses == {200}
    served = [v for _, v in answers]
    assert set(served) == {str(v1.version_id), str(v2.version_id)}
    # Once moved, the new version answers (requests started after the move).
    assert served[-1] == str(v2.version_id)
    r = client.post(url(d), headers=account.headers, json={"records": recs})
    assert_same(v2, r.json(), recs)
    deployed = dict(
        (row.id, row.is_deployed)
        for row in engine.connect().execute(
            text("SELECT id, is_deployed FROM models WHERE id IN (:a, :b)"),
            {"a": v1.model_id, "b": v2.model_id},
        )
    )
    assert deployed == {v1.model_id: False, v2.model_id: True}


def test_an_alias_that_points_nowhere(
    client: TestClient, account: Account, engine: Engine, storage: LocalStorage
) -> None:
    v1 = register(engine, storage, account.user_id)
    r = client.post(
        "/v1/deployments",
        headers=account.headers,
        json={"name": "x", "registered_model_id": str(v1.registered_model_id), "alias": "gold"},
    )
    assert r.status_code == 404
    _set_alias(engine, v1.registered_model_id, v1.version)
    d = deploy(client, account, registered_model_id=str(v1.registered_model_id), alias="champion")
    with Session(engine) as session:
        registry.delete_alias(session, v1.registered_model_id, "champion")
        session.commit()
    r = client.post(url(d), headers=account.headers, json={"records": records(1)})
    assert r.status_code == 409 and "points at no version" in r.json()["error"]["message"]


# --- batch ------------------------------------------------------------------------------------
def test_batch_job_end_to_end(
    client: TestClient,
    account: Account,
    model: Registered,
    deployment: dict[str, Any],
    engine: Engine,
    storage: LocalStorage,
) -> None:
    x, _ = frame(2500, seed=9)
    buffer = io.BytesIO()
    x.to_parquet(buffer)
    with engine.begin() as conn:
        dataset = make_dataset(conn, account.user_id)
        location = storage.write_bytes(f"datasets/{account.user_id}/x.parquet", buffer.getvalue())
        version = make_version(
            conn,
            dataset,
            s3_path=location,
            row_count=len(x),
            status="completed",
            parquet=len(buffer.getvalue()),
        )
    r = client.post(
        url(deployment, "batch"), headers=account.headers, json={"dataset_version_id": str(version)}
    )
    assert r.status_code == 402, r.text
    give_credits(engine, account.user_id, 100)
    r = client.post(
        url(deployment, "batch"), headers=account.headers, json={"dataset_version_id": str(version)}
    )
    assert r.status_code == 202, r.text
    batch = r.json()
    # Priced by the book: the job sku (1) plus batch_rows (1 per 1,000 rows) for each of
    # the 3 started thousands of 2,500 rows; the job keeps its price lines.
    assert batch["status"] == "queued" and batch["credit_cost"] == 4
    with engine.begin() as conn:
        lines = conn.execute(
            text(
                "SELECT i.sku, l.quantity, l.credits FROM job_price_items AS l"
                " JOIN price_items AS i ON i.id = l.price_item_id WHERE l.job_id = :j"
                " ORDER BY i.sku"
            ),
            {"j": batch["job_id"]},
        ).all()
    assert [tuple(r) for r in lines] == [("batch_rows", 3, 3), ("job", 1, 1)]
    r = client.get(f"{url(deployment, 'batch')}/{batch['job_id']}/output", headers=account.headers)
    assert r.status_code == 409
    claim = jobs.claim(engine, "job", "test-worker", 60)
    assert claim is not None and str(claim.id) == batch["job_id"]
    context = Context(
        engine=engine, storage=storage, lease_seconds=60, max_attempts=3, stop=threading.Event()
    )
    assert dispatch(context, claim) == "completed"
    done = client.get(f"{url(deployment, 'batch')}/{batch['job_id']}", headers=account.headers)
    assert done.json()["status"] == "completed" and done.json()["rows"] == len(x)
    r = client.get(f"{url(deployment, 'batch')}/{batch['job_id']}/output", headers=account.headers)
    assert r.status_code == 200
    out = pd.read_parquet(io.BytesIO(r.content))
    assert out["prediction"].tolist() == list(model.pipeline.predict(x))
    proba = model.pipeline.predict_proba(x)
    for i, label in enumerate(model.pipeline.classes_):
        np.testing.assert_allclose(out[f"probability_{label}"], proba[:, i])
    assert client.get(f"/v1/jobs/{batch['job_id']}", headers=account.headers).status_code == 200


def test_batch_of_a_version_not_ready(
    client: TestClient, account: Account, deployment: dict[str, Any], engine: Engine
) -> None:
    with engine.begin() as conn:
        version = make_version(conn, make_dataset(conn, account.user_id))
    r = client.post(
        url(deployment, "batch"), headers=account.headers, json={"dataset_version_id": str(version)}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "dataset_version_not_ready"
    r = client.post(
        url(deployment, "batch"),
        headers=account.headers,
        json={"dataset_version_id": str(uuid.uuid4())},
    )
    assert r.status_code == 409


# --- the serving process, and the API forwarding to it -----------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serving_url(engine: Engine, api_settings: ApiSettings) -> Iterator[str]:
    """``automl-serve``'s app on this test's database, in a thread (uvicorn)."""
    import uvicorn

    from api.serving.app import create_app

    factory = sessionmaker(bind=engine, expire_on_commit=False)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(api_settings, factory), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_the_api_forwards_to_the_serving_process(
    engine: Engine,
    api_settings: ApiSettings,
    serving_url: str,
    client: TestClient,
    account: Account,
    model: Registered,
    deployment: dict[str, Any],
) -> None:
    import httpx

    proxied = make_app(engine, api_settings.model_copy(update={"serving_url": serving_url}))
    recs = records(4)
    with TestClient(proxied) as via_api:
        r = via_api.post(url(deployment), headers=account.headers, json={"records": recs})
        assert r.status_code == 200, r.text
        assert_same(model, r.json(), recs)
        bad = via_api.post(url(deployment), headers=account.headers, content=b"{bad")
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_json"
        assert via_api.post(url(deployment), json={"records": recs}).status_code == 401
    direct = httpx.post(
        serving_url + url(deployment), headers=account.headers, json={"records": recs}
    )
    assert direct.status_code == 200
    assert json.loads(direct.content) == r.json()


def test_an_unreachable_serving_process_is_503(
    engine: Engine, api_settings: ApiSettings, account: Account, deployment: dict[str, Any]
) -> None:
    port = _free_port()
    proxied = make_app(
        engine, api_settings.model_copy(update={"serving_url": f"http://127.0.0.1:{port}"})
    )
    with TestClient(proxied) as via_api:
        r = via_api.post(url(deployment), headers=account.headers, json={"records": records(1)})
    assert r.status_code == 503 and r.json()["error"]["code"] == "serving_unavailable"


def test_a_user_who_cannot_pay_gets_402_before_the_model_runs(
    client: TestClient,
    account: Account,
    engine: Engine,
    deployment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_prediction_price(engine, monkeypatch, 1)
    r = client.post(url(deployment), headers=account.headers, json={"records": records(3)})
    assert r.status_code == 402 and r.json()["error"]["code"] == "payment_required", r.text
    give_credits(engine, account.user_id, 1)
    r = client.post(url(deployment), headers=account.headers, json={"records": records(3)})
    assert r.status_code == 200, r.text
    # The request log is written in batches off the request path: now, for the test.
    client.app.state.predictor.flush()  # type: ignore[attr-defined]
    logged = [
        row[0]
        for row in engine.connect().execute(
            text(
                "SELECT status::text FROM inference_requests WHERE deployment_id = :d"
                " ORDER BY created_at"
            ),
            {"d": deployment["id"]},
        )
    ]
    assert logged == ["refused", "ok"]
    used = scalar(
        engine,
        "SELECT coalesce(sum(quantity), 0) FROM usage_events WHERE deployment_id = :d",
        d=deployment["id"],
    )
    assert used == 3


def test_the_fast_preprocessing_answers_the_models_own_bits(
    client: TestClient, account: Account, model: Registered, deployment: dict[str, Any]
) -> None:
    # The platform's preprocessing is computed without scikit-learn's machinery
    # (pipeline.serving.FastPreprocess): the answer's probabilities are the model's
    # own to the last bit (JSON floats round-trip exactly), with nulls and an unknown
    # category in the request.
    recs = records(4)
    recs[0]["sepal_length"] = None
    recs[1]["colour"] = None
    recs[2]["colour"] = "ultraviolet"
    r = client.post(url(deployment), headers=account.headers, json={"records": recs})
    assert r.status_code == 200, r.text
    loaded = client.app.state.predictor.cache.peek(str(model.version_id))  # type: ignore[attr-defined]
    assert loaded is not None and loaded.fast is not None
    x = pd.DataFrame(recs).astype({c: float for c in NUMERIC})
    x["colour"] = x["colour"].astype(object).where(x["colour"].notna(), np.nan)
    classes = [str(c) for c in model.pipeline.classes_]
    got = [[row[c] for c in classes] for row in r.json()["probabilities"]]
    assert got == model.pipeline.predict_proba(x).tolist()
    assert r.json()["predictions"] == list(model.pipeline.predict(x))
