"""Issue 15 through the API: PATCH a dataset, criteria, an evaluation run end to end
(queued and charged, scored by the worker's handler, rows and plots read back, rows
removed with the run)."""

from __future__ import annotations

import io
import json
import threading
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from sqlalchemy import Engine

from api.settings import ApiSettings
from database import jobs
from database.storage import make_storage
from workers import kinds

from api_helpers import give_credits, ingested, make_dataset, ready_dataset, rows, scalar

PNG = b"\x89PNG\r\n\x1a\n"


# --- PATCH /v1/datasets/{id} -------------------------------------------------------------
def test_patch_refuses_a_target_that_is_not_a_column(client, account, engine):
    dataset = ready_dataset(client, account, engine)["dataset"]
    r = client.patch(
        f"/v1/datasets/{dataset['id']}", headers=account.headers, json={"target_column": "nope"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "target_not_a_column"
    assert "'nope'" in r.json()["error"]["message"]
    assert scalar(engine, "SELECT target_column FROM datasets WHERE id = :i", i=dataset["id"]) == (
        "species"
    )


def test_patch_changes_what_is_sent(client, account, engine):
    dataset = ready_dataset(client, account, engine)["dataset"]
    r = client.patch(
        f"/v1/datasets/{dataset['id']}",
        headers=account.headers,
        json={
            "name": "iris 2",
            "target_column": "sepal_length",
            "problem_type": "regression",
            "ignored_columns": ["species"],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["target_column"], body["problem_type"]) == (
        "iris 2",
        "sepal_length",
        "regression",
    )
    assert body["ignored_columns"] == ["species"]
    r = client.patch(f"/v1/datasets/{dataset['id']}", headers=account.headers, json={})
    assert r.status_code == 200 and r.json()["ignored_columns"] == ["species"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"ignored_columns": ["ghost"]}, "ignored_columns_invalid"),
        ({"ignored_columns": ["species"]}, "ignored_columns_invalid"),  # the target
        ({"ignored_columns": ["sepal_width", "sepal_width"]}, "ignored_columns_invalid"),
        ({"problem_type": "regression"}, "problem_type_mismatch"),  # species is text
        ({"name": None}, "validation_error"),
        ({"target_column": "a\x00b"}, "validation_error"),
        ({"target_column": 5}, "validation_error"),
        ({"surprise": 1}, "validation_error"),
    ],
)
def test_patch_refusals(client, account, engine, body, code):
    dataset = ready_dataset(client, account, engine)["dataset"]
    r = client.patch(f"/v1/datasets/{dataset['id']}", headers=account.headers, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code


def test_patch_before_ingestion_and_for_others(client, account, other, engine):
    dataset = make_dataset(client, account)["dataset"]
    r = client.patch(
        f"/v1/datasets/{dataset['id']}", headers=account.headers, json={"target_column": "x"}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "columns_unknown"
    r = client.patch(f"/v1/datasets/{dataset['id']}", headers=account.headers, json={"name": "n"})
    assert r.status_code == 200
    r = client.patch(f"/v1/datasets/{dataset['id']}", headers=other.headers, json={"name": "x"})
    assert r.status_code == 404


# --- criteria ----------------------------------------------------------------------------
def test_criteria_create_list_and_refuse(client, account, other):
    ok = client.post(
        "/v1/evaluation-criteria",
        headers=account.headers,
        json={
            "name": "accurate",
            "kind": "metric_threshold",
            "metric": "accuracy",
            "operator": ">=",
            "threshold": 0.9,
            "slice": {"column": "region", "equals": "EU"},
        },
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["slice"] == {"column": "region", "equals": "EU"}
    again = client.post(
        "/v1/evaluation-criteria",
        headers=account.headers,
        json={"name": "accurate", "kind": "row_rule", "rule": "predicted_equals_actual"},
    )
    assert again.status_code == 409
    for bad in (
        {"name": "a", "kind": "metric_threshold", "metric": "accuracy"},
        {"name": "b", "kind": "row_rule", "rule": "absolute_error_le"},
        {"name": "c", "kind": "row_rule", "rule": "predicted_equals_actual", "tolerance": 1},
        {"name": "d", "kind": "row_rule", "rule": "absolute_error_le", "tolerance": -1},
        {
            "name": "e",
            "kind": "metric_threshold",
            "metric": "accuracy",
            "operator": "=",
            "threshold": 1,
        },
        {
            "name": "f",
            "kind": "row_rule",
            "rule": "predicted_equals_actual",
            "slice": {"column": "r", "equals": "x", "sql": "1=1"},
        },
        {
            "name": "g",
            "kind": "metric_threshold",
            "metric": "DROP TABLE",
            "operator": ">",
            "threshold": 1,
        },
        {
            "name": "h",
            "kind": "metric_threshold",
            "metric": "accuracy",
            "operator": ">",
            "threshold": "0.9",
        },
    ):
        r = client.post("/v1/evaluation-criteria", headers=account.headers, json=bad)
        assert r.status_code == 422, (bad, r.text)
    listed = client.get("/v1/evaluation-criteria", headers=account.headers).json()
    assert [c["name"] for c in listed["items"]] == ["accurate"]
    assert client.get("/v1/evaluation-criteria", headers=other.headers).json()["items"] == []


# --- an evaluation, end to end -----------------------------------------------------------
def _frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"a": rng.normal(size=n), "region": np.where(np.arange(n) % 2 == 0, "EU", "US")}
    )
    frame["label"] = np.where(frame["a"] + rng.normal(scale=0.7, size=n) > 0, "yes", "no")
    return frame


def _model_version(
    engine: Engine, storage: Any, user_id: str, frame: pd.DataFrame, problem: str
) -> str:
    model = make_pipeline(
        ColumnTransformer(
            [("n", "passthrough", ["a"]), ("c", OneHotEncoder(), ["region"])], remainder="drop"
        ),
        LogisticRegression(),
    ).fit(frame.drop(columns="label"), frame["label"])
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    location = storage.write_bytes(f"models/{uuid.uuid4()}.joblib", buffer.getvalue())
    [model_row] = rows(
        engine,
        "INSERT INTO models (user_id, name, algorithm, problem_type, s3_path)"
        " VALUES (:u, :n, 'logistic_regression', CAST(:p AS problem_type), :s) RETURNING id",
        u=user_id,
        n=f"m-{uuid.uuid4().hex[:6]}",
        p=problem,
        s=location,
    )
    [registered] = rows(
        engine,
        "INSERT INTO registered_models (user_id, name) VALUES (:u, :n) RETURNING id",
        u=user_id,
        n=f"rm-{uuid.uuid4().hex[:6]}",
    )
    [version] = rows(
        engine,
        "INSERT INTO model_versions (registered_model_id, model_id) VALUES (:r, :m) RETURNING id",
        r=registered.id,
        m=model_row.id,
    )
    return str(version.id)


def _dataset_version(client, account, engine, storage, frame: pd.DataFrame) -> str:
    dataset = make_dataset(client, account, target_column="label", problem_type="classification")
    version_id = dataset["version"]["id"]
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    location = storage.write_bytes(f"processed/{version_id}.parquet", buffer.getvalue())
    columns = {
        "columns": [
            {"name": "a", "kind": "numeric"},
            {"name": "region", "kind": "categorical"},
            {"name": "label", "kind": "categorical"},
        ]
    }
    ingested(engine, version_id, columns=columns)
    rows(engine, "UPDATE dataset_versions SET s3_path = :s WHERE id = :i", s=location, i=version_id)
    return version_id


def _work(engine: Engine, storage: Any) -> str:
    claim = jobs.claim(engine, "job", "test-worker", 60)
    assert claim is not None
    context = kinds.Context(
        engine=engine, storage=storage, lease_seconds=60, max_attempts=3, stop=threading.Event()
    )
    return kinds.dispatch(context, claim)


@pytest.fixture
def storage(api_settings: ApiSettings) -> Any:
    return make_storage(str(api_settings.storage_url))


def test_an_evaluation_end_to_end(client, account, other, engine, storage):
    give_credits(engine, account.user_id, 100)
    frame = _frame()
    version = _model_version(engine, storage, account.user_id, frame, "classification")
    data = _dataset_version(client, account, engine, storage, frame)
    strict = client.post(
        "/v1/evaluation-criteria",
        headers=account.headers,
        json={
            "name": "perfect",
            "kind": "metric_threshold",
            "metric": "accuracy",
            "operator": ">=",
            "threshold": 1.0,
        },
    ).json()
    exact = client.post(
        "/v1/evaluation-criteria",
        headers=account.headers,
        json={
            "name": "exact EU",
            "kind": "row_rule",
            "rule": "predicted_equals_actual",
            "slice": {"column": "region", "equals": "EU"},
        },
    ).json()
    balance = scalar(engine, "SELECT credit_balance FROM users WHERE id = :u", u=account.user_id)
    r = client.post(
        "/v1/evaluations",
        headers=account.headers,
        json={
            "model_version_id": version,
            "dataset_version_id": data,
            "criteria_ids": [strict["id"], exact["id"]],
        },
    )
    assert r.status_code == 202, r.text
    run = r.json()
    assert run["status"] == "queued" and run["metrics"] is None
    charged = scalar(engine, "SELECT credit_balance FROM users WHERE id = :u", u=account.user_id)
    assert charged == balance - 2
    # Others see nothing of it.
    assert client.get(f"/v1/evaluations/{run['id']}", headers=other.headers).status_code == 404

    assert _work(engine, storage) == "completed"
    done = client.get(f"/v1/evaluations/{run['id']}", headers=account.headers).json()
    assert done["status"] == "completed"
    assert 0.5 < done["metrics"]["accuracy"] < 1.0
    results = {c["name"]: c for c in done["criteria_results"]}
    assert results["perfect"]["passed"] is False
    assert done["passed"] is False and done["row_count"] == 60

    # Per-row results match the model's predictions.
    location = scalar(
        engine,
        "SELECT s3_path FROM models m JOIN model_versions v ON v.model_id = m.id WHERE v.id = :v",
        v=version,
    )
    with storage.open_read(location) as stream:
        model = joblib.load(io.BytesIO(stream.read()))
    expected = model.predict(frame.drop(columns="label"))
    got: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get(
            f"/v1/evaluations/{run['id']}/rows",
            headers=account.headers,
            params={"limit": 25, **({"cursor": cursor} if cursor else {})},
        ).json()
        got.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [g["row_index"] for g in got] == list(range(60))
    assert [g["prediction"] for g in got] == list(expected)
    failing = client.get(
        f"/v1/evaluations/{run['id']}/rows",
        headers=account.headers,
        params={"passed": "false", "limit": 200},
    ).json()["items"]
    wrong_eu = [
        i for i in range(60) if frame["region"][i] == "EU" and expected[i] != frame["label"][i]
    ]
    assert [f["row_index"] for f in failing] == wrong_eu
    assert done["failed_row_count"] == len(wrong_eu)
    assert results["exact EU"]["failed_rows"] == len(wrong_eu)

    # Plots of the run and of the version (drawn from this run).
    for kind in ("roc", "pr", "confusion_matrix", "calibration", "feature_importance"):
        for base in (f"/v1/evaluations/{run['id']}", f"/v1/model-versions/{version}"):
            png = client.get(f"{base}/plots/{kind}.png", headers=account.headers)
            assert png.status_code == 200 and png.content.startswith(PNG), (base, kind)
            svg = client.get(f"{base}/plots/{kind}.svg", headers=account.headers)
            assert ET.fromstring(svg.content).tag.endswith("svg")
            assert (
                json.loads(
                    client.get(f"{base}/plots/{kind}.json", headers=account.headers).content
                )["kind"]
                == kind
            )
    r = client.get(f"/v1/evaluations/{run['id']}/plots/residuals.png", headers=account.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "plot_not_for_problem_type"
    r = client.get(f"/v1/model-versions/{version}/plots/trials.png", headers=account.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_trials"
    r = client.get(f"/v1/evaluations/{run['id']}/plots/pie.png", headers=account.headers)
    assert r.status_code == 422
    r = client.get(f"/v1/model-versions/{version}/plots/roc.png", headers=other.headers)
    assert r.status_code == 404

    # The rows leave with the run.
    assert (
        scalar(
            engine,
            "SELECT count(*) FROM evaluation_row_results WHERE evaluation_run_id = :r",
            r=run["id"],
        )
        == 60
    )
    rows(engine, "DELETE FROM evaluation_runs WHERE id = :r", r=run["id"])
    assert (
        scalar(
            engine,
            "SELECT count(*) FROM evaluation_row_results WHERE evaluation_run_id = :r",
            r=run["id"],
        )
        == 0
    )


def test_evaluation_refusals(client, account, other, engine, storage):
    give_credits(engine, account.user_id, 100)
    frame = _frame(10)
    theirs = _model_version(engine, storage, other.user_id, frame, "classification")
    mine = _model_version(engine, storage, account.user_id, frame, "classification")
    data = _dataset_version(client, account, engine, storage, frame)

    def post(**body: Any) -> Any:
        return client.post(
            "/v1/evaluations",
            headers=account.headers,
            json={"model_version_id": mine, "dataset_version_id": data, "criteria_ids": [], **body},
        )

    assert post(model_version_id=theirs).status_code == 404  # private: not readable
    assert post(model_version_id=str(uuid.uuid4())).status_code == 404
    assert post(criteria_ids=[str(uuid.uuid4())]).status_code == 404
    not_ingested = make_dataset(client, account)["version"]["id"]
    r = post(dataset_version_id=not_ingested)
    assert r.status_code == 409 and r.json()["error"]["code"] == "dataset_version_not_ready"
    r = client.get(f"/v1/model-versions/{mine}/plots/roc.png", headers=account.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_evaluation"
    r = client.get(f"/v1/model-versions/{mine}/plots/residuals.svg", headers=account.headers)
    assert r.status_code == 422
    broke = client.post(
        "/v1/evaluations",
        headers=other.headers,
        json={"model_version_id": theirs, "dataset_version_id": data, "criteria_ids": []},
    )
    assert broke.status_code == 404  # not their dataset version


def test_an_evaluation_costs_credits(engine, api_settings, storage):
    from sqlalchemy.orm import Session

    from database import billing
    from database.models import UserTier

    from api_helpers import make_app, signup

    # Priced by the book in force (sku evaluation), like a run's nodes.
    with Session(engine) as s:
        for tier in UserTier:
            billing.set_prices(s, tier=tier, prices={"evaluation": 10**6})
        s.commit()
    with TestClient(make_app(engine, api_settings)) as client:
        account = signup(client)
        frame = _frame(10)
        version = _model_version(engine, storage, account.user_id, frame, "classification")
        data = _dataset_version(client, account, engine, storage, frame)
        r = client.post(
            "/v1/evaluations",
            headers=account.headers,
            json={"model_version_id": version, "dataset_version_id": data, "criteria_ids": []},
        )
        assert r.status_code == 402, r.text
        assert scalar(engine, "SELECT count(*) FROM evaluation_runs") == 0
        assert scalar(engine, "SELECT count(*) FROM jobs WHERE kind = 'evaluation'") == 0


def test_data_the_model_cannot_score_fails_the_job_and_refunds(client, account, engine, storage):
    give_credits(engine, account.user_id, 100)
    frame = _frame(20)
    version = _model_version(engine, storage, account.user_id, frame, "classification")
    data = _dataset_version(client, account, engine, storage, frame.drop(columns=["a"]))
    before = scalar(engine, "SELECT credit_balance FROM users WHERE id = :u", u=account.user_id)
    run = client.post(
        "/v1/evaluations",
        headers=account.headers,
        json={"model_version_id": version, "dataset_version_id": data, "criteria_ids": []},
    ).json()
    assert _work(engine, storage) == "failed"
    done = client.get(f"/v1/evaluations/{run['id']}", headers=account.headers).json()
    assert done["status"] == "failed" and "could not predict" in done["error_message"]
    assert done["metrics"] is None
    after = scalar(engine, "SELECT credit_balance FROM users WHERE id = :u", u=account.user_id)
    assert after == before
    r = client.get(f"/v1/evaluations/{run['id']}/plots/roc.png", headers=account.headers)
    assert r.status_code == 409


def test_a_cancel_asked_while_scoring_writes_nothing_and_refunds(client, account, engine, storage):
    from sqlalchemy.orm import Session

    give_credits(engine, account.user_id, 100)
    frame = _frame(20)
    version = _model_version(engine, storage, account.user_id, frame, "classification")
    data = _dataset_version(client, account, engine, storage, frame)
    before = scalar(engine, "SELECT credit_balance FROM users WHERE id = :u", u=account.user_id)
    run = client.post(
        "/v1/evaluations",
        headers=account.headers,
        json={"model_version_id": version, "dataset_version_id": data, "criteria_ids": []},
    ).json()
    claim = jobs.claim(engine, "job", "test-worker", 60)
    assert claim is not None and str(claim.id) == run["job_id"]
    with Session(engine) as session:
        jobs.cancel_job(session, uuid.UUID(str(account.user_id)), claim.id)
        session.commit()
    context = kinds.Context(
        engine=engine, storage=storage, lease_seconds=60, max_attempts=3, stop=threading.Event()
    )
    assert kinds.dispatch(context, claim) == "cancelled"
    done = client.get(f"/v1/evaluations/{run['id']}", headers=account.headers).json()
    assert done["status"] == "cancelled" and done["metrics"] is None
    count = "SELECT count(*) FROM evaluation_row_results WHERE evaluation_run_id = :r"
    assert scalar(engine, count, r=run["id"]) == 0
    after = scalar(engine, "SELECT credit_balance FROM users WHERE id = :u", u=account.user_id)
    assert after == before
