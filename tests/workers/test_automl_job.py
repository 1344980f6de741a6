"""The automl node in a job: trials recorded as experiment runs, progress, cancel, price.

Real PostgreSQL and a real worker; tiny data (iris) and budgets of 1-2 seconds for
the searches that must finish. The cancel test gives the search a budget it never
reaches and waits for states (the first trial recorded, the job cancelled), never
for time.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import joblib
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from test_runner_e2e import job_status, node_status, refunds, running
from test_worker_e2e import (
    assert_books_balance,
    balance,
    ingested_dataset,
    iris_csv,
    job_detail,
    value,
    wait_for,
)

from database import registry
from workers.main import Worker

from api_helpers import Account, rows

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def automl_definition(dataset_id: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "data", "type": "dataset", "config": {"dataset_id": dataset_id}},
            {"id": "prep", "type": "preprocess", "config": {"test_size": 0.3}},
            {"id": "search", "type": "automl", "config": config},
            {"id": "chart", "type": "visualize", "config": {"kind": "confusion_matrix"}},
            {"id": "keep", "type": "save", "config": {"name": "iris best"}},
        ],
        "edges": [
            {"source": "data", "target": "prep"},
            {"source": "prep", "target": "search"},
            {"source": "search", "target": "chart"},
            {"source": "search", "target": "keep"},
        ],
    }


def create(client: TestClient, account: Account, definition: dict[str, Any]) -> Any:
    return client.post(
        "/v1/workflows", headers=account.headers, json={"name": "search", "definition": definition}
    )


def start(client: TestClient, account: Account, definition: dict[str, Any]) -> str:
    r = create(client, account, definition)
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/workflows/{r.json()['id']}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["job"]["id"])


def trial_runs(engine: Engine, job_id: str) -> list[Any]:
    return rows(
        engine,
        "SELECT r.*, r.status::text AS run_status FROM experiment_runs AS r"
        " WHERE r.job_id = :j ORDER BY r.trial_number",
        j=job_id,
    )


def test_a_search_job_saves_the_best_model_and_records_every_trial(
    client: TestClient, account: Account, drain: Callable[..., Worker], engine: Engine
) -> None:
    dataset = ingested_dataset(client, account, drain, iris_csv())
    config = {"time_budget_s": 2, "folds": 3, "estimators": ["lgbm", "rf", "lrl1"], "seed": 1}
    job_id = start(client, account, automl_definition(dataset["dataset"]["id"], config))
    drain()
    job = job_detail(client, account, job_id)
    assert job["status"] == "completed", job
    nodes = {n["node_id"]: n for n in job["nodes"]}
    assert {n: v["status"] for n, v in nodes.items()} == dict.fromkeys(nodes, "success")
    search = nodes["search"]["output_data"]["search"]
    runs = trial_runs(engine, job_id)
    # Every trial is a run of the search's experiment, numbered 1..n.
    assert len(runs) == search["trials"] >= 1
    assert [r.trial_number for r in runs] == list(range(1, len(runs) + 1))
    assert len({r.experiment_id for r in runs}) == 1
    experiment_id = runs[0].experiment_id
    experiment = rows(engine, "SELECT * FROM experiments WHERE id = :id", id=experiment_id)[0]
    assert experiment.primary_metric == "accuracy"
    assert str(experiment.dataset_id) == dataset["dataset"]["id"]
    for run in runs:
        assert run.user_id == account.user_id
        assert run.parameters["learner"] in ("lgbm", "rf", "lrl1")
        assert isinstance(run.parameters["hyperparameters"], dict)
        assert run.duration_seconds is not None and run.duration_seconds >= 0
        if run.run_status == "finished":
            assert 0 <= run.metrics["accuracy"] <= 1
            # Every fold's score, in order; their mean is the trial's score (no refit).
            assert len(run.fold_scores) == 3
            assert sum(run.fold_scores) / 3 == pytest.approx(run.metrics["accuracy"])
    # The runs' API output carries the trial: number, parameters, fold scores, status.
    r = client.get(f"/v1/experiments/{runs[0].experiment_id}", headers=account.headers)
    assert r.status_code == 200, r.text
    shown = {run["trial_number"]: run for run in r.json()["runs"]}
    assert sorted(shown) == [r.trial_number for r in runs]
    for run in runs:
        out = shown[run.trial_number]
        assert out["fold_scores"] == run.fold_scores
        assert out["parameters"]["learner"] == run.parameters["learner"]
        assert out["duration_seconds"] == run.duration_seconds
        assert out["status"] == run.run_status
    # The saved model is the best trial's, and the results name it.
    [model] = rows(engine, "SELECT * FROM models WHERE job_id = :j", j=job_id)
    assert model.algorithm == "automl"
    assert model.hyperparameters["learner"] == search["learner"]
    best = job["results"]["automl"]["search"]["best"]
    assert best["score"] == pytest.approx(search["best_cv_score"])
    [linked] = [r for r in runs if r.model_id is not None]
    assert str(linked.id) == best["run_id"] and linked.model_id == model.id
    assert linked.metrics["accuracy"] == max(
        r.metrics["accuracy"] for r in runs if r.run_status == "finished"
    )
    # Progress went through the job's log: one line per trial at least.
    lines = [
        r.message
        for r in rows(
            engine,
            "SELECT message FROM job_logs WHERE job_id = :j AND node_id = 'search'",
            j=job_id,
        )
    ]
    assert any(line.startswith("trial 1:") and "best so far" in line for line in lines)
    # Registered as a version, the model's lineage reaches the job, whose runs are the
    # trials: version -> produced_by job -> every trial (docs/automl.md, "Lineage").
    with Session(engine) as session, session.begin():
        registered = registry.create_registered_model(session, account.user_id, "iris search")
        version = registry.register_version(session, registered.id, model.id)
        version_id = version.id
    [edge] = rows(
        engine,
        "SELECT job_id FROM model_lineage WHERE child_version_id = :v"
        " AND relation = 'produced_by' AND job_id IS NOT NULL",
        v=version_id,
    )
    assert str(edge.job_id) == job_id
    reached = rows(engine, "SELECT id FROM experiment_runs WHERE job_id = :j", j=edge.job_id)
    assert {r.id for r in reached} == {r.id for r in runs}
    assert_books_balance(engine)


def test_cancel_mid_search_keeps_the_trials_and_the_best_model_so_far(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    make_worker: Callable[..., Worker],
    engine: Engine,
) -> None:
    dataset = ingested_dataset(client, account, drain, iris_csv())
    before = balance(client, account)
    config = {"time_budget_s": 600, "folds": 3, "estimators": ["rf", "lgbm"]}
    definition = automl_definition(dataset["dataset"]["id"], config)
    definition["nodes"][-1]["config"]["register"] = {"name": "iris search", "alias": "kept"}
    job_id = start(client, account, definition)
    price = before - balance(client, account)
    assert price > 0
    worker = make_worker(slots=1)
    with running(worker):
        # The child sends the best model so far right after the trial that found it,
        # so once trial 2 is recorded, trial 1's model (at least) has reached the worker.
        wait_for(lambda: len(trial_runs(engine, job_id)) >= 2, "two trials", seconds=120)
        r = client.post(f"/v1/jobs/{job_id}/cancel", headers=account.headers)
        assert r.status_code == 200, r.text
        wait_for(lambda: job_status(engine, job_id) == "cancelled", "the cancel", seconds=30)
    assert node_status(engine, job_id, "search") == "failed"  # a started node never skips
    assert node_status(engine, job_id, "chart") == "skipped"
    # The save node saved the best trial so far: a model, registered as a version.
    assert node_status(engine, job_id, "keep") == "success"
    kept = trial_runs(engine, job_id)
    assert len(kept) >= 2
    job = job_detail(client, account, job_id)
    assert "best model so far" in job["error_message"]
    search = job["results"]["automl"]["search"]
    assert search["trials"] == len(kept)
    best = search["best"]
    assert best is not None and best["learner"] in ("rf", "lgbm")
    finished = [r.metrics["accuracy"] for r in kept if r.run_status == "finished"]
    assert best["score"] == pytest.approx(max(finished))
    [model] = rows(engine, "SELECT * FROM models WHERE job_id = :j", j=job_id)
    [linked] = [r for r in kept if r.model_id is not None]
    assert linked.model_id == model.id
    assert search["kept"] == {"trial": linked.trial_number, "save_node": "keep"}
    assert model.algorithm == "automl"
    assert model.hyperparameters["learner"] == linked.parameters["learner"]
    assert 0 <= model.metrics["accuracy"] <= 1  # scored on the held-out rows
    r = client.get(f"/v1/models/{model.id}/artifact", headers=account.headers)
    assert r.status_code == 200, r.text
    fitted = joblib.load(io.BytesIO(r.content))
    raw = pd.read_csv(io.BytesIO(iris_csv())).drop(columns=["species"]).head(10)
    assert set(fitted.predict(raw)) <= {"setosa", "versicolor", "virginica"}
    [node] = rows(
        engine,
        "SELECT output_data FROM job_nodes WHERE job_id = :j AND node_id = 'keep'",
        j=job_id,
    )
    assert node.output_data["kept_from"]["trial"] == linked.trial_number
    [version] = rows(
        engine,
        "SELECT v.id FROM model_versions AS v JOIN registered_models AS m"
        " ON m.id = v.registered_model_id WHERE v.model_id = :m AND m.name = 'iris search'",
        m=model.id,
    )
    assert version.id is not None
    # The job delivered a model: its charge stands (no refund).
    assert refunds(engine, job_id) == 0
    assert balance(client, account) == before - price
    assert_books_balance(engine)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"time_budget_s": 0}, "config.time_budget_s"),
        ({"time_budget_s": 10**9}, "config.time_budget_s"),
        ({"time_budget_s": "60"}, "config.time_budget_s"),
        ({"metric": "nope"}, "config.metric"),
        ({"estimators": ["catboost"]}, "config.estimators"),
        ({"folds": 1}, "config.folds"),
        ({"max_trials": -1}, "config.max_trials"),
        ({"time_budget_s": 5, "extra": 1}, "unknown key"),
        ({"metric": "accuracy\x00"}, "config"),
    ],
)
def test_bad_configs_are_422_at_the_api(
    client: TestClient, account: Account, config: dict[str, Any], fragment: str
) -> None:
    definition = automl_definition("", config)
    definition["nodes"][0]["config"] = {}  # a draft: only the automl node is wrong
    r = create(client, account, definition)
    assert r.status_code == 422, r.text
    assert fragment in r.text


def test_a_metric_of_the_wrong_problem_is_422_at_run(
    client: TestClient, account: Account, drain: Callable[..., Worker], engine: Engine
) -> None:
    dataset = ingested_dataset(client, account, drain, iris_csv())
    r = create(client, account, automl_definition(dataset["dataset"]["id"], {"metric": "rmse"}))
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/workflows/{r.json()['id']}/run", headers=account.headers)
    assert r.status_code == 422, r.text
    assert "the metric 'rmse' measures regression" in r.text
    assert value(engine, "SELECT count(*) FROM jobs") == 0


def test_the_price_grows_with_the_budget(client: TestClient, account: Account) -> None:
    prices = {}
    for budget in (60, 61, 600):
        definition = automl_definition("", {"time_budget_s": budget})
        definition["nodes"][0]["config"] = {}  # a draft: no dataset yet
        r = create(client, account, definition)
        assert r.status_code == 201, r.text
        prices[budget] = r.json()["estimated_credits"]
    # 10 credits per started minute of budget (the price book's automl_minute).
    assert prices[61] - prices[60] == 10
    assert prices[600] - prices[60] == 90


def test_the_automl_config_is_in_the_openapi_schema(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    config = schemas["AutoMLConfig"]
    assert config["additionalProperties"] is False
    budget = config["properties"]["time_budget_s"]
    assert (budget["minimum"], budget["maximum"], budget["default"]) == (1, 3600, 60)
    assert "accuracy" in str(config["properties"]["metric"])
    assert "lgbm" in str(config["properties"]["estimators"])
    assert {"ModelConfig", "PreprocessConfig", "SaveConfig"} <= set(schemas)
