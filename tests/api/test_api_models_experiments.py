"""Models (detail, artifact), experiments (runs, comparison), tutorials and progress."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.settings import ApiSettings

from api_helpers import Account, give_credits, make_dataset, rows, runnable_workflow, scalar


def _job(client: TestClient, account: Account, engine: Engine) -> str:
    wf = runnable_workflow(client, account, engine)
    give_credits(engine, account.user_id, 100)
    r = client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    job_id: str = r.json()["job"]["id"]
    return job_id


def _model(
    engine: Engine,
    account: Account,
    *,
    job_id: str | None = None,
    name: str = "rf",
    metrics: dict[str, Any] | None = None,
    path: str | None = None,
) -> str:
    """A model row, as the workers write one after training."""
    model_id: str = str(
        scalar(
            engine,
            "INSERT INTO models (user_id, job_id, name, algorithm, problem_type, metrics,"
            " hyperparameters, s3_path) VALUES (:u, :j, :n, 'random_forest', 'classification',"
            " CAST(:m AS jsonb), '{\"n_estimators\": 100}', :p) RETURNING id",
            u=account.user_id,
            j=job_id,
            n=name,
            m=json.dumps(metrics or {"accuracy": 0.9}),
            p=path,
        )
    )
    return model_id


def test_models_list_detail_and_artifact(
    client: TestClient, account: Account, engine: Engine, api_settings: ApiSettings
) -> None:
    artifact = Path(api_settings.storage_location()) / "models" / "rf.joblib"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"\x80model-bytes")
    job_id = _job(client, account, engine)
    with_file = _model(engine, account, job_id=job_id, path=str(artifact))
    without = _model(engine, account, name="draft")

    listed = client.get("/v1/models", headers=account.headers).json()["items"]
    assert {m["id"]: m["has_artifact"] for m in listed} == {with_file: True, without: False}
    detail = client.get(f"/v1/models/{with_file}", headers=account.headers)
    assert detail.status_code == 200
    assert detail.json()["metrics"] == {"accuracy": 0.9}
    assert detail.json()["hyperparameters"] == {"n_estimators": 100}
    assert detail.json()["job_id"] == job_id

    download = client.get(f"/v1/models/{with_file}/artifact", headers=account.headers)
    assert download.status_code == 200 and download.content == b"\x80model-bytes"
    assert "attachment" in download.headers["content-disposition"]
    none = client.get(f"/v1/models/{without}/artifact", headers=account.headers)
    assert none.status_code == 404 and none.json()["error"]["code"] == "artifact_not_found"
    artifact.unlink()
    gone = client.get(f"/v1/models/{with_file}/artifact", headers=account.headers)
    assert gone.status_code == 404


def test_artifacts_outside_storage_are_never_served(
    client: TestClient, account: Account, engine: Engine
) -> None:
    for path in ("/etc/passwd", "../../etc/passwd", "s3://elsewhere/x"):
        model_id = _model(engine, account, path=path)
        r = client.get(f"/v1/models/{model_id}/artifact", headers=account.headers)
        assert r.status_code == 404, path


def test_another_users_model_is_not_found(
    client: TestClient, account: Account, other: Account, engine: Engine
) -> None:
    theirs = _model(engine, other)
    for suffix in ("", "/artifact"):
        a = client.get(f"/v1/models/{theirs}{suffix}", headers=account.headers)
        b = client.get(f"/v1/models/{uuid.uuid4()}{suffix}", headers=account.headers)
        assert a.status_code == b.status_code == 404 and a.json() == b.json()
    assert client.get("/v1/models", headers=account.headers).json()["items"] == []


def test_experiments_group_and_compare_runs(
    client: TestClient, account: Account, engine: Engine
) -> None:
    dataset_id = make_dataset(client, account)["dataset"]["id"]
    r = client.post(
        "/v1/experiments",
        headers=account.headers,
        json={"name": "churn", "dataset_id": dataset_id, "primary_metric": "rmse"},
    )
    assert r.status_code == 201, r.text
    exp = r.json()
    job_id = _job(client, account, engine)
    a = _model(engine, account, job_id=job_id, name="a", metrics={"rmse": 3.0, "r2": 0.5})
    b = _model(engine, account, name="b", metrics={"rmse": 1.5, "r2": 0.8})
    c = _model(engine, account, name="c", metrics={"r2": 0.1})
    url = f"/v1/experiments/{exp['id']}/runs"
    run_a = client.post(url, headers=account.headers, json={"model_id": a})
    assert run_a.status_code == 201, run_a.text
    assert run_a.json()["job_id"] == job_id  # the model's job, recorded with it
    assert run_a.json()["metrics"] == {"rmse": 3.0, "r2": 0.5}
    run_b = client.post(url, headers=account.headers, json={"model_id": b, "notes": "tuned"})
    run_c = client.post(url, headers=account.headers, json={"model_id": c})
    dup = client.post(url, headers=account.headers, json={"model_id": a})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "run_exists"
    empty = client.post(url, headers=account.headers, json={})
    assert empty.status_code == 422

    detail = client.get(f"/v1/experiments/{exp['id']}", headers=account.headers).json()
    assert len(detail["runs"]) == 3
    comparison = detail["comparison"]
    assert comparison["metric"] == "rmse" and comparison["direction"] == "min"
    assert comparison["ranking"] == [run_b.json()["id"], run_a.json()["id"]]
    assert comparison["best_run_id"] == run_b.json()["id"]
    assert comparison["metrics"] == ["r2", "rmse"]
    assert run_c.json()["id"] not in comparison["ranking"]
    # The copied metrics survive the model.
    rows(engine, "DELETE FROM models WHERE id = :id", id=b)
    after = client.get(f"/v1/experiments/{exp['id']}", headers=account.headers).json()
    assert after["comparison"]["best_run_id"] == run_b.json()["id"]
    listed = client.get("/v1/experiments", headers=account.headers).json()["items"]
    assert [e["id"] for e in listed] == [exp["id"]]


def test_experiment_refusals_and_cross_user(
    client: TestClient, account: Account, other: Account, engine: Engine
) -> None:
    their_dataset = make_dataset(client, other)["dataset"]["id"]
    r = client.post(
        "/v1/experiments", headers=account.headers, json={"name": "x", "dataset_id": their_dataset}
    )
    assert r.status_code == 404
    mine = client.post("/v1/experiments", headers=account.headers, json={"name": "x"}).json()
    their_model = _model(engine, other)
    r = client.post(
        f"/v1/experiments/{mine['id']}/runs",
        headers=account.headers,
        json={"model_id": their_model},
    )
    assert r.status_code == 404
    their_job = _job(client, other, engine)
    r = client.post(
        f"/v1/experiments/{mine['id']}/runs", headers=account.headers, json={"job_id": their_job}
    )
    assert r.status_code == 404
    theirs = client.post("/v1/experiments", headers=other.headers, json={"name": "t"}).json()
    for url in (f"/v1/experiments/{theirs['id']}", f"/v1/experiments/{uuid.uuid4()}"):
        assert client.get(url, headers=account.headers).status_code == 404
    r = client.post(
        f"/v1/experiments/{theirs['id']}/runs",
        headers=account.headers,
        json={"model_id": _model(engine, account)},
    )
    assert r.status_code == 404
    assert scalar(engine, "SELECT count(*) FROM experiment_runs") == 0


@pytest.mark.usefixtures("seeded")
def test_tutorials_and_progress(client: TestClient, account: Account, other: Account) -> None:
    listed = client.get("/v1/tutorials", headers=account.headers).json()
    slugs = [t["slug"] for t in listed["items"]]
    assert slugs == ["first-model", "preprocessing", "experiments"]
    assert all(t["progress"] is None for t in listed["items"])
    first = listed["items"][0]
    url = f"/v1/tutorials/{first['id']}/progress"
    r = client.put(url, headers=account.headers, json={"current_step": 1, "completed_steps": [0]})
    assert r.status_code == 200, r.text
    assert r.json()["is_completed"] is False and r.json()["completed_at"] is None
    done = client.put(
        url,
        headers=account.headers,
        json={"current_step": 3, "completed_steps": [0, 1, 2, 3, 3], "is_completed": True},
    )
    assert done.status_code == 200
    assert done.json()["completed_steps"] == [0, 1, 2, 3] and done.json()["completed_at"]
    again = client.put(
        url, headers=account.headers, json={"current_step": 3, "is_completed": True}
    ).json()
    assert again["completed_at"] == done.json()["completed_at"]
    beyond = client.put(url, headers=account.headers, json={"current_step": 4})
    assert beyond.status_code == 422 and beyond.json()["error"]["code"] == "invalid_step"
    huge = client.put(url, headers=account.headers, json={"current_step": 10**20})
    assert huge.status_code == 422
    missing = client.put(
        f"/v1/tutorials/{uuid.uuid4()}/progress", headers=account.headers, json={"current_step": 0}
    )
    assert missing.status_code == 404
    mine = client.get("/v1/tutorials", headers=account.headers).json()["items"][0]
    assert mine["progress"]["is_completed"] is True
    # Progress is per user.
    theirs = client.get("/v1/tutorials", headers=other.headers).json()["items"][0]
    assert theirs["progress"] is None
    page = client.get("/v1/tutorials", headers=account.headers, params={"limit": 2}).json()
    rest = client.get(
        "/v1/tutorials", headers=account.headers, params={"cursor": page["next_cursor"]}
    ).json()
    assert [t["slug"] for t in page["items"] + rest["items"]] == slugs
