"""Runs (snapshot, price, queue, charge: one transaction) and jobs (list, detail, cancel)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api.settings import ApiSettings

from api_helpers import (
    DEFINITION_PRICE,
    Account,
    definition,
    give_credits,
    ingested,
    make_app,
    make_dataset,
    make_workflow,
    ready_dataset,
    rows,
    runnable_workflow,
    scalar,
    signup,
)


def _state(engine: Engine, user_id: uuid.UUID) -> tuple[Any, ...]:
    return (
        scalar(engine, "SELECT credit_balance FROM users WHERE id = :u", u=user_id),
        scalar(engine, "SELECT count(*) FROM workflow_snapshots WHERE user_id = :u", u=user_id),
        scalar(engine, "SELECT count(*) FROM jobs WHERE user_id = :u", u=user_id),
        scalar(engine, "SELECT count(*) FROM job_nodes WHERE user_id = :u", u=user_id),
        scalar(engine, "SELECT count(*) FROM credit_transactions WHERE user_id = :u", u=user_id),
    )


def test_run_snapshots_prices_queues_and_charges(
    client: TestClient, account: Account, engine: Engine
) -> None:
    wf = runnable_workflow(client, account, engine)
    give_credits(engine, account.user_id, 100)
    r = client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers, json={"priority": 5})
    assert r.status_code == 201, r.text
    job = r.json()["job"]
    assert r.json()["balance"] == 100 - DEFINITION_PRICE
    assert job["status"] == "queued" and job["credit_cost"] == DEFINITION_PRICE
    assert job["priority"] == 5 and job["workflow_id"] == wf["id"]

    [(snapshot_data,)] = rows(
        engine,
        "SELECT snapshot_data FROM workflow_snapshots WHERE id = :id",
        id=job["workflow_snapshot_id"],
    )
    assert snapshot_data["definition"] == wf["definition"]
    dataset = client.get(
        f"/v1/datasets/{wf['definition']['nodes'][0]['config']['dataset_id']}",
        headers=account.headers,
    ).json()
    assert snapshot_data["dataset_versions"] == {
        "data": {
            "dataset_id": dataset["id"],
            "version_id": dataset["current_version_id"],
            "version_number": 1,
            "problem_type": "classification",
            "target_column": "species",
            "ignored_columns": [],
        }
    }
    [(kind, amount, job_id)] = rows(
        engine,
        "SELECT type, amount, job_id FROM credit_transactions"
        " WHERE user_id = :u AND type = 'consumption'",
        u=account.user_id,
    )
    assert (kind, amount, str(job_id)) == ("consumption", -DEFINITION_PRICE, job["id"])

    detail = client.get(f"/v1/jobs/{job['id']}", headers=account.headers)
    assert detail.status_code == 200
    nodes = {n["node_id"]: (n["node_type"], n["status"]) for n in detail.json()["nodes"]}
    assert nodes == {
        "data": ("dataset", "pending"),
        "clean": ("preprocess", "pending"),
        "train": ("model", "pending"),
        "keep": ("save", "pending"),
    }
    # The snapshot is frozen: editing the workflow leaves the job's copy alone.
    client.patch(
        f"/v1/workflows/{wf['id']}",
        headers=account.headers,
        json={"definition": {"nodes": [], "edges": []}},
    )
    again = rows(
        engine,
        "SELECT snapshot_data FROM workflow_snapshots WHERE id = :id",
        id=job["workflow_snapshot_id"],
    )
    assert again[0][0] == snapshot_data
    assert client.get("/v1/credits/balance", headers=account.headers).json() == {
        "balance": 100 - DEFINITION_PRICE
    }


def test_too_few_credits_is_402_and_changes_nothing(
    client: TestClient, account: Account, engine: Engine
) -> None:
    wf = runnable_workflow(client, account, engine)
    give_credits(engine, account.user_id, DEFINITION_PRICE - 1)
    before = _state(engine, account.user_id)
    r = client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers)
    assert r.status_code == 402, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_credits"
    assert err["details"]["balance"] == DEFINITION_PRICE - 1
    assert err["details"]["price"] == DEFINITION_PRICE
    assert _state(engine, account.user_id) == before
    assert client.get("/v1/jobs", headers=account.headers).json()["items"] == []


def test_runs_need_a_runnable_workflow(
    client: TestClient, account: Account, engine: Engine
) -> None:
    empty = make_workflow(client, account)  # dataset node without a dataset
    r = client.post(f"/v1/workflows/{empty['id']}/run", headers=account.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_workflow"
    draft = client.post("/v1/workflows", headers=account.headers, json={"name": "d"}).json()
    r = client.post(f"/v1/workflows/{draft['id']}/run", headers=account.headers)
    assert r.status_code == 422
    wf = runnable_workflow(client, account, engine)
    client.delete(f"/v1/workflows/{wf['id']}", headers=account.headers)
    r = client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "workflow_deleted"
    bad = client.post(
        f"/v1/workflows/{wf['id']}/run", headers=account.headers, json={"priority": 10**12}
    )
    assert bad.status_code == 422


def _refused(
    client: TestClient, account: Account, engine: Engine, wf: dict[str, Any], status: int
) -> dict[str, Any]:
    """Run ``wf``, expecting a refusal with ``status`` that writes and charges nothing."""
    before = _state(engine, account.user_id)
    r = client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers)
    assert r.status_code == status, r.text
    assert _state(engine, account.user_id) == before
    error: dict[str, Any] = r.json()["error"]
    return error


def test_a_run_waits_for_ingestion(client: TestClient, account: Account, engine: Engine) -> None:
    """409 dataset_not_ready while the version is pending, processing or failed."""
    dataset = make_dataset(client, account, target_column="species", problem_type="classification")
    wf = make_workflow(client, account, dataset["dataset"]["id"])
    give_credits(engine, account.user_id, 100)
    version_id = dataset["version"]["id"]
    for status in ("pending", "processing", "failed"):
        ingested(engine, version_id, status=status)
        error = _refused(client, account, engine, wf, 409)
        assert error["code"] == "dataset_not_ready"
        assert error["details"] == {
            "node": "data",
            "dataset_id": dataset["dataset"]["id"],
            "version": 1,
            "status": status,
        }
    assert client.get("/v1/credits/balance", headers=account.headers).json()["balance"] == 100
    assert client.get("/v1/jobs", headers=account.headers).json()["items"] == []
    ingested(engine, version_id)
    assert client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers).status_code == 201


def _workflow(client: TestClient, account: Account, body: dict[str, Any]) -> dict[str, Any]:
    body = {"name": "w", "definition": body}
    r = client.post("/v1/workflows", headers=account.headers, json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_a_run_reads_the_version_the_node_names(
    client: TestClient, account: Account, engine: Engine
) -> None:
    dataset_id = ready_dataset(client, account, engine)["dataset"]["id"]
    second = client.post(
        f"/v1/datasets/{dataset_id}/versions",
        headers=account.headers,
        files={"file": ("iris.csv", b"sepal_length,species\n1.0,a\n2.0,b\n", "text/csv")},
    )
    assert second.status_code == 201, second.text
    give_credits(engine, account.user_id, 100)
    body = definition(dataset_id)
    # The current version (2) is still pending; version 1 is ingested.
    current = _workflow(client, account, body)
    assert _refused(client, account, engine, current, 409)["details"]["version"] == 2
    body["nodes"][0]["config"]["version"] = 1
    pinned = _workflow(client, account, body)
    r = client.post(f"/v1/workflows/{pinned['id']}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    [(frozen,)] = rows(
        engine,
        "SELECT snapshot_data -> 'dataset_versions' -> 'data' FROM workflow_snapshots"
        " WHERE id = :id",
        id=r.json()["job"]["workflow_snapshot_id"],
    )
    assert frozen["version_number"] == 1
    body["nodes"][0]["config"]["version"] = 7
    missing = _workflow(client, account, body)
    error = _refused(client, account, engine, missing, 422)
    assert error["code"] == "invalid_workflow" and "no version 7" in error["message"]
    assert error["details"] == {"node": "data", "dataset_id": dataset_id, "version": 7}


def test_a_run_checks_the_definition_against_the_dataset(
    client: TestClient, account: Account, engine: Engine
) -> None:
    give_credits(engine, account.user_id, 100)
    classified = ready_dataset(client, account, engine)["dataset"]["id"]
    body = definition(classified)
    body["nodes"][2]["config"] = {"algorithm": "linear_regression"}
    error = _refused(client, account, engine, _workflow(client, account, body), 422)
    assert error["code"] == "invalid_workflow"
    assert "node 'train'" in error["message"] and "regression" in error["message"]
    assert error["details"]["problems"] == [error["message"]]

    # Valid for a regressor, not for the classifier this dataset needs.
    body = definition(classified)
    body["nodes"][2]["config"]["hyperparameters"] = {"criterion": "squared_error"}
    error = _refused(client, account, engine, _workflow(client, account, body), 422)
    assert "RandomForestClassifier" in error["message"], error

    no_target = make_dataset(client, account)
    ingested(engine, no_target["version"]["id"])
    wf = make_workflow(client, account, no_target["dataset"]["id"])
    error = _refused(client, account, engine, wf, 422)
    assert "needs a target column" in error["message"]

    ghost = make_dataset(client, account, target_column="colour")
    ingested(engine, ghost["version"]["id"])
    wf = make_workflow(client, account, ghost["dataset"]["id"])
    error = _refused(client, account, engine, wf, 422)
    assert "'colour' is not a column" in error["message"]
    # Unknown columns (no metadata yet): the worker checks them against the data.
    ingested(engine, ghost["version"]["id"], columns=None)
    assert client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers).status_code == 201

    # Problem type inferred from the target's metadata: text is classification.
    inferred = ready_dataset(client, account, engine, problem_type="other")["dataset"]["id"]
    body = definition(inferred)
    body["nodes"][2]["config"] = {"algorithm": "ridge"}
    error = _refused(client, account, engine, _workflow(client, account, body), 422)
    assert "ridge is for regression" in error["message"]


def test_a_stored_definition_outside_the_hyperparameter_ranges_is_not_run(
    client: TestClient, account: Account, engine: Engine
) -> None:
    """Written before the ranges existed (or by hand): the run refuses it, uncharged."""
    give_credits(engine, account.user_id, 100)
    wf = runnable_workflow(client, account, engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE workflows SET definition = jsonb_set(definition,"
                " '{nodes,2,config,hyperparameters}', '{\"n_estimators\": 1180591620717411303424}')"
                " WHERE id = :id"
            ),
            {"id": wf["id"]},
        )
    error = _refused(client, account, engine, wf, 422)
    assert error["code"] == "invalid_workflow"
    assert (
        "node 'train': config.hyperparameters: parameter 'n_estimators' must be at least 1"
        " and at most 5000" in error["message"]
    )


def test_concurrent_jobs_limit_is_403_before_charging(
    engine: Engine, api_settings: ApiSettings
) -> None:
    settings = api_settings.model_copy(deep=True)
    settings.tier_limits.free.max_running_jobs = 1
    with TestClient(make_app(engine, settings)) as client:
        account = signup(client)
        wf = runnable_workflow(client, account, engine)
        give_credits(engine, account.user_id, 100)
        first = client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers)
        assert first.status_code == 201
        before = _state(engine, account.user_id)
        second = client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers)
        assert second.status_code == 403
        assert second.json()["error"]["code"] == "job_limit_reached"
        assert _state(engine, account.user_id) == before
        # A finished job frees its place (queued, running, completed: its life).
        for change in ("status = 'running', started_at = now()", "status = 'completed'"):
            rows(
                engine,
                f"UPDATE jobs SET {change}, completed_at = now() WHERE id = :id",
                id=first.json()["job"]["id"],
            )
        third = client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers)
        assert third.status_code == 201


def _run(client: TestClient, account: Account, wf: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()["job"]
    return job


def test_list_jobs_by_status(client: TestClient, account: Account, engine: Engine) -> None:
    wf = runnable_workflow(client, account, engine)
    give_credits(engine, account.user_id, 100)
    a, b = _run(client, account, wf), _run(client, account, wf)
    rows(
        engine, "UPDATE jobs SET status = 'running', started_at = now() WHERE id = :id", id=a["id"]
    )
    everything = client.get("/v1/jobs", headers=account.headers).json()["items"]
    assert [j["id"] for j in everything] == [b["id"], a["id"]]
    running = client.get("/v1/jobs", headers=account.headers, params={"status": "running"})
    assert [j["id"] for j in running.json()["items"]] == [a["id"]]
    page = client.get("/v1/jobs", headers=account.headers, params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = client.get(
        "/v1/jobs", headers=account.headers, params={"limit": 1, "cursor": page["next_cursor"]}
    ).json()
    assert [j["id"] for j in rest["items"]] == [a["id"]] and rest["next_cursor"] is None
    bad = client.get("/v1/jobs", headers=account.headers, params={"status": "sleeping"})
    assert bad.status_code == 422


def test_cancel_a_queued_job_refunds_at_once(
    client: TestClient, account: Account, engine: Engine
) -> None:
    wf = runnable_workflow(client, account, engine)
    give_credits(engine, account.user_id, 50)
    job = _run(client, account, wf)
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=account.headers)
    assert r.status_code == 200, r.text
    assert r.json()["job"]["status"] == "cancelled"
    assert r.json()["refunded_credits"] == DEFINITION_PRICE
    assert client.get("/v1/credits/balance", headers=account.headers).json()["balance"] == 50
    ledger = client.get("/v1/credits/transactions", headers=account.headers).json()["items"]
    assert [t["type"] for t in ledger] == ["refund", "consumption", "adjustment"]
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=account.headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"
    assert client.get("/v1/credits/balance", headers=account.headers).json()["balance"] == 50


def test_cancel_a_running_job_marks_it_for_the_worker(
    client: TestClient, account: Account, engine: Engine
) -> None:
    wf = runnable_workflow(client, account, engine)
    give_credits(engine, account.user_id, 50)
    job = _run(client, account, wf)
    rows(
        engine,
        "UPDATE jobs SET status = 'running', started_at = now() WHERE id = :id",
        id=job["id"],
    )
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=account.headers)
    assert r.status_code == 200
    body = r.json()
    assert body["job"]["status"] == "running" and body["job"]["cancel_requested_at"]
    assert body["refunded_credits"] == 0
    assert client.get("/v1/credits/balance", headers=account.headers).json()["balance"] == (
        50 - DEFINITION_PRICE
    )
    second = client.post(f"/v1/jobs/{job['id']}/cancel", headers=account.headers).json()
    assert second["job"]["cancel_requested_at"] == body["job"]["cancel_requested_at"]


def test_another_users_job_is_not_found(
    client: TestClient, account: Account, other: Account, engine: Engine
) -> None:
    wf = runnable_workflow(client, other, engine)
    give_credits(engine, other.user_id, 50)
    theirs = _run(client, other, wf)["id"]
    missing = str(uuid.uuid4())
    for jid in (theirs, missing):
        got = client.get(f"/v1/jobs/{jid}", headers=account.headers)
        cancel = client.post(f"/v1/jobs/{jid}/cancel", headers=account.headers)
        assert got.status_code == cancel.status_code == 404
        assert got.json()["error"]["code"] == "not_found"
    assert client.get("/v1/jobs", headers=account.headers).json()["items"] == []
    assert client.get(f"/v1/jobs/{theirs}", headers=other.headers).json()["status"] == "queued"


def test_concurrent_runs_charge_each_credit_once(
    app: Any, client: TestClient, account: Account, engine: Engine
) -> None:
    """Eight runs at once with credits for two: two are queued, six get 402."""
    from concurrent.futures import ThreadPoolExecutor

    wf = runnable_workflow(client, account, engine)
    give_credits(engine, account.user_id, DEFINITION_PRICE * 2 + 1)
    rows(engine, "UPDATE users SET tier = 'enterprise' WHERE id = :id", id=account.user_id)

    def run(_: int) -> int:
        with TestClient(app) as own:
            # The user's lock not granted within DB_LOCK_TIMEOUT_MS (a loaded machine) is
            # the API's retryable 503 busy, nothing charged: a client asks again.
            for _attempt in range(10):
                r = own.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers)
                if r.status_code != 503 or r.json()["error"]["code"] != "busy":
                    break
            return r.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(run, range(8)))
    assert statuses == [201, 201] + [402] * 6
    assert client.get("/v1/credits/balance", headers=account.headers).json()["balance"] == 1
    assert scalar(engine, "SELECT count(*) FROM jobs WHERE user_id = :u", u=account.user_id) == 2
