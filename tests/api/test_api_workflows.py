"""Workflows: validation of definitions, update, soft delete and restore, limits."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.settings import ApiSettings

from api_helpers import (
    DEFINITION_PRICE,
    Account,
    definition,
    make_app,
    make_dataset,
    make_workflow,
    scalar,
    signup,
)


def test_create_read_and_list(client: TestClient, account: Account, engine: Engine) -> None:
    dataset_id = make_dataset(client, account)["dataset"]["id"]
    created = make_workflow(client, account, dataset_id, name="churn")
    assert created["name"] == "churn" and created["is_deleted"] is False
    assert created["estimated_credits"] == DEFINITION_PRICE
    assert created["definition"]["nodes"][0]["config"] == {"dataset_id": dataset_id}
    got = client.get(f"/v1/workflows/{created['id']}", headers=account.headers)
    assert got.status_code == 200 and got.json() == created
    draft = client.post("/v1/workflows", headers=account.headers, json={"name": "draft"})
    assert draft.status_code == 201, draft.text
    assert draft.json()["definition"] == {"nodes": [], "edges": []}
    listed = client.get("/v1/workflows", headers=account.headers).json()["items"]
    assert [w["name"] for w in listed] == ["draft", "churn"]
    count = scalar(engine, "SELECT workflow_count FROM users WHERE id = :id", id=account.user_id)
    assert count == 2


def _broken(change: str) -> dict[str, Any]:
    d = definition(None)
    if change == "cycle":
        d["edges"].append({"source": "keep", "target": "clean"})
    elif change == "unknown_node":
        d["edges"].append({"source": "train", "target": "ghost"})
    elif change == "self_loop":
        d["edges"].append({"source": "train", "target": "train"})
    elif change == "duplicate_edge":
        d["edges"].append({"source": "data", "target": "clean"})
    elif change == "duplicate_id":
        d["nodes"].append({"id": "train", "type": "model", "config": {"algorithm": "ridge"}})
    elif change == "no_dataset_source":
        d["nodes"].append({"id": "orphan", "type": "model", "config": {"algorithm": "ridge"}})
    elif change == "into_dataset":
        d["edges"].append({"source": "clean", "target": "data"})
    elif change == "bad_type":
        d["nodes"][1]["type"] = "teleport"
    elif change == "bad_dataset_id":
        d["nodes"][0]["config"] = {"dataset_id": "nope"}
    elif change == "nul_in_config":
        d["nodes"][1]["config"] = {"impute": "me\x00an"}
    elif change == "extra_key":
        d["nodes"][1]["colour"] = "red"
    elif change == "unknown_hyperparameter":
        d["nodes"][2]["config"]["hyperparameters"] = {"n_trees": 10}
    elif change == "invalid_hyperparameter":
        d["nodes"][2]["config"]["hyperparameters"] = {"n_estimators": -1}
    elif change == "huge_hyperparameter":
        d["nodes"][2]["config"]["hyperparameters"] = {"n_estimators": 2**70}
    elif change == "fractional_hyperparameter_over_range":
        d["nodes"][2]["config"]["hyperparameters"] = {"max_depth": 1e308}
    elif change == "platform_hyperparameter":
        d["nodes"][2]["config"]["hyperparameters"] = {"n_jobs": 8}
    elif change == "unknown_config_key":
        d["nodes"][1]["config"]["imputer"] = "mean"
    elif change == "unknown_algorithm":
        d["nodes"][2]["config"]["algorithm"] = "xgboost"
    elif change == "bad_vocabulary":
        d["nodes"][1]["config"]["scale"] = "robust"
    elif change == "bad_test_size":
        d["nodes"][1]["config"]["test_size"] = 1.5
    elif change == "bad_version":
        d["nodes"][0]["config"]["version"] = 0
    elif change == "save_without_name":
        d["nodes"][3]["config"] = {}
    elif change == "visualize_fed_by_dataset":
        d["nodes"].append({"id": "chart", "type": "visualize", "config": {"kind": "residuals"}})
        d["edges"].append({"source": "data", "target": "chart"})
    elif change == "model_fed_by_model":
        d["nodes"].append({"id": "again", "type": "model", "config": {"algorithm": "ridge"}})
        d["edges"].append({"source": "train", "target": "again"})
    elif change == "two_inputs":
        d["nodes"].append({"id": "data2", "type": "dataset"})
        d["edges"].append({"source": "data2", "target": "clean"})
    return d


BROKEN = [
    "cycle",
    "unknown_node",
    "self_loop",
    "duplicate_edge",
    "duplicate_id",
    "no_dataset_source",
    "into_dataset",
    "bad_type",
    "bad_dataset_id",
    "nul_in_config",
    "extra_key",
    "unknown_hyperparameter",
    "invalid_hyperparameter",
    "huge_hyperparameter",
    "fractional_hyperparameter_over_range",
    "platform_hyperparameter",
    "unknown_config_key",
    "unknown_algorithm",
    "bad_vocabulary",
    "bad_test_size",
    "bad_version",
    "save_without_name",
    "visualize_fed_by_dataset",
    "model_fed_by_model",
    "two_inputs",
]


def test_invalid_definitions_are_422(client: TestClient, account: Account, engine: Engine) -> None:
    wf = make_workflow(client, account)
    for change in BROKEN:
        body = {"name": "x", "definition": _broken(change)}
        r = client.post("/v1/workflows", headers=account.headers, json=body)
        assert r.status_code == 422, (change, r.text)
        assert r.json()["error"]["code"] == "validation_error", change
        patch = client.patch(
            f"/v1/workflows/{wf['id']}",
            headers=account.headers,
            json={"definition": body["definition"]},
        )
        assert patch.status_code == 422, (change, patch.text)
    assert scalar(engine, "SELECT count(*) FROM workflows") == 1
    stored = client.get(f"/v1/workflows/{wf['id']}", headers=account.headers).json()
    assert stored["definition"] == wf["definition"]


def _refusal(client: TestClient, account: Account, change: str) -> str:
    """The messages of the 422 that creating ``_broken(change)`` gets, joined."""
    body = {"name": "x", "definition": _broken(change)}
    r = client.post("/v1/workflows", headers=account.headers, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    return " | ".join(e["msg"] for e in r.json()["error"]["details"]["errors"])


def test_refusals_name_the_node_and_the_field(client: TestClient, account: Account) -> None:
    message = _refusal(client, account, "unknown_hyperparameter")
    assert "node 'train': config.hyperparameters: unknown parameter 'n_trees'" in message
    assert "n_estimators" in message  # the valid ones are listed
    message = _refusal(client, account, "invalid_hyperparameter")
    assert "node 'train': config.hyperparameters:" in message and "n_estimators" in message
    assert "set by the platform" in _refusal(client, account, "platform_hyperparameter")
    message = _refusal(client, account, "huge_hyperparameter")
    assert (
        "node 'train': config.hyperparameters: parameter 'n_estimators' must be at least 1"
        " and at most 5000; got 1.18e+21"
    ) in message
    message = _refusal(client, account, "fractional_hyperparameter_over_range")
    assert "parameter 'max_depth' must be at least 1 and at most 1000" in message
    message = _refusal(client, account, "unknown_config_key")
    assert "node 'clean': config.imputer: unknown key" in message
    message = _refusal(client, account, "visualize_fed_by_dataset")
    assert "visualize node 'chart' takes a model node" in message
    assert "node 'keep': config.name" in _refusal(client, account, "save_without_name")


def test_configs_are_stored_as_given(client: TestClient, account: Account) -> None:
    d = definition(None)
    d["nodes"][2]["config"]["hyperparameters"] = {"max_depth": 3, "random_state": 7}
    d["nodes"][0]["config"] = {"version": 2}
    r = client.post("/v1/workflows", headers=account.headers, json={"name": "x", "definition": d})
    assert r.status_code == 201, r.text
    assert r.json()["definition"]["nodes"] == d["nodes"]


def test_dataset_nodes_must_name_the_callers_datasets(
    client: TestClient, account: Account, other: Account
) -> None:
    theirs = make_dataset(client, other)["dataset"]["id"]
    for dataset_id in (theirs, str(uuid.uuid4())):
        r = client.post(
            "/v1/workflows",
            headers=account.headers,
            json={"name": "x", "definition": definition(dataset_id)},
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_workflow"


def test_update(client: TestClient, account: Account) -> None:
    wf = make_workflow(client, account)
    url = f"/v1/workflows/{wf['id']}"
    r = client.patch(url, headers=account.headers, json={"name": "renamed", "description": "d"})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "renamed" and r.json()["description"] == "d"
    assert r.json()["definition"] == wf["definition"]
    smaller = {
        "nodes": [
            {"id": "d", "type": "dataset"},
            {"id": "m", "type": "model", "config": {"algorithm": "kmeans"}},
        ],
        "edges": [{"source": "d", "target": "m"}],
    }
    r = client.patch(url, headers=account.headers, json={"definition": smaller})
    assert r.status_code == 200 and r.json()["estimated_credits"] == 11
    cyclic = client.patch(url, headers=account.headers, json={"definition": _broken("cycle")})
    assert cyclic.status_code == 422
    assert client.get(url, headers=account.headers).json()["estimated_credits"] == 11
    cleared = client.patch(url, headers=account.headers, json={"description": None})
    assert cleared.json()["description"] is None and cleared.json()["name"] == "renamed"


def test_soft_delete_and_restore(client: TestClient, account: Account, engine: Engine) -> None:
    wf = make_workflow(client, account)
    url = f"/v1/workflows/{wf['id']}"
    count = "SELECT workflow_count FROM users WHERE id = :id"
    assert client.delete(url, headers=account.headers).status_code == 204
    assert scalar(engine, count, id=account.user_id) == 0
    got = client.get(url, headers=account.headers).json()
    assert got["is_deleted"] is True and got["deleted_at"] is not None
    assert client.get("/v1/workflows", headers=account.headers).json()["items"] == []
    trash = client.get("/v1/workflows", headers=account.headers, params={"deleted": True})
    assert [w["id"] for w in trash.json()["items"]] == [wf["id"]]
    locked = client.patch(url, headers=account.headers, json={"name": "x"})
    assert locked.status_code == 409 and locked.json()["error"]["code"] == "workflow_deleted"
    assert client.delete(url, headers=account.headers).status_code == 204  # idempotent

    restored = client.post(f"{url}/restore", headers=account.headers)
    assert restored.status_code == 200 and restored.json()["is_deleted"] is False
    assert scalar(engine, count, id=account.user_id) == 1
    assert client.post(f"{url}/restore", headers=account.headers).status_code == 200


def test_workflow_limit_is_403(engine: Engine, api_settings: ApiSettings) -> None:
    settings = api_settings.model_copy(deep=True)
    settings.tier_limits.free.max_workflows = 1
    with TestClient(make_app(engine, settings)) as client:
        account = signup(client)
        first = make_workflow(client, account)
        r = client.post("/v1/workflows", headers=account.headers, json={"name": "second"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "workflow_limit_reached"
        assert r.json()["error"]["details"]["limit"] == 1
        assert scalar(engine, "SELECT count(*) FROM workflows") == 1
        # A soft-deleted one frees its place; restoring it over the limit is refused.
        url = f"/v1/workflows/{first['id']}"
        assert client.delete(url, headers=account.headers).status_code == 204
        make_workflow(client, account, name="replacement")
        again = client.post(f"{url}/restore", headers=account.headers)
        assert again.status_code == 403
        assert client.get(url, headers=account.headers).json()["is_deleted"] is True


def test_another_users_workflow_is_not_found(
    client: TestClient, account: Account, other: Account
) -> None:
    theirs = make_workflow(client, other)["id"]
    missing = str(uuid.uuid4())
    answers: dict[str, list[Any]] = {}
    for wid in (theirs, missing):
        url = f"/v1/workflows/{wid}"
        answers[wid] = [
            client.get(url, headers=account.headers),
            client.patch(url, headers=account.headers, json={"name": "mine"}),
            client.delete(url, headers=account.headers),
            client.post(f"{url}/restore", headers=account.headers),
            client.post(f"{url}/run", headers=account.headers),
        ]
    for a, b in zip(answers[theirs], answers[missing], strict=True):
        assert a.status_code == b.status_code == 404
        assert a.json() == b.json()
    assert client.get(f"/v1/workflows/{theirs}", headers=other.headers).json()["name"] == "pipeline"


def test_concurrent_creates_cannot_pass_the_limit_together(
    engine: Engine, api_settings: ApiSettings
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    settings = api_settings.model_copy(deep=True)
    settings.tier_limits.free.max_workflows = 2
    app = make_app(engine, settings)
    with TestClient(app) as client:
        account = signup(client)

    def create(i: int) -> int:
        with TestClient(app) as own:
            r = own.post("/v1/workflows", headers=account.headers, json={"name": f"w{i}"})
            return r.status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = sorted(pool.map(create, range(6)))
    assert statuses == [201, 201, 403, 403, 403, 403]
    assert scalar(engine, "SELECT count(*) FROM workflows") == 2
