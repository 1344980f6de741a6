"""pipeline.execute: each node type on scikit-learn's bundled data and small frames.

Pure Python: the dataset loader is a dictionary. Every output goes through
``json.dumps(..., allow_nan=False)``, as the worker stores it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from database.models.enums import ProblemType
from pipeline.definition import WorkflowDefinition, WorkflowNode
from pipeline.execute import (
    MAX_RESIDUAL_POINTS,
    LoadedDataset,
    NodeFailed,
    NodeOutcome,
    TrainedModel,
    execute_node,
)

IRIS = load_iris(as_frame=True).frame  # target: 0, 1, 2
CANCER = load_breast_cancer(as_frame=True).frame  # target: 0, 1
DIABETES = load_diabetes(as_frame=True).frame  # target: a float


def iris(problem_type: ProblemType | str | None = ProblemType.CLASSIFICATION) -> LoadedDataset:
    return LoadedDataset(IRIS, "target", problem_type, "iris")


def people(rows: int = 60) -> pd.DataFrame:
    """Categorical columns, missing values, a text target with some missing."""
    rng = np.random.default_rng(1)
    age = rng.integers(18, 80, rows).astype(float)
    income = rng.normal(50_000, 15_000, rows)
    city = rng.choice(["Paris", "Lyon", "Nice"], rows).astype(object)
    age[::7] = np.nan
    city[::5] = None
    bought = np.where(income + 400 * np.nan_to_num(age, nan=40) > 65_000, "yes", "no").astype(
        object
    )
    bought[3] = None
    bought[11] = None
    return pd.DataFrame(
        {
            "age": age,
            "income": income,
            "city": city,
            "member": rng.choice([True, False], rows),
            "signed_up": pd.date_range("2024-01-01", periods=rows, freq="D"),
            "bought": bought,
        }
    )


def chain(
    *,
    algorithm: str = "logistic_regression",
    hyperparameters: dict[str, Any] | None = None,
    preprocess: dict[str, Any] | None = None,
    kind: str | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """dataset -> [preprocess] -> model -> [visualize] -> [save]."""
    model: dict[str, Any] = {"algorithm": algorithm}
    if hyperparameters is not None:
        model["hyperparameters"] = hyperparameters
    nodes: list[dict[str, Any]] = [{"id": "data", "type": "dataset", "config": {}}]
    edges: list[dict[str, str]] = []
    source = "data"
    if preprocess is not None:
        nodes.append({"id": "prep", "type": "preprocess", "config": preprocess})
        edges.append({"source": "data", "target": "prep"})
        source = "prep"
    nodes.append({"id": "model", "type": "model", "config": model})
    edges.append({"source": source, "target": "model"})
    if kind is not None:
        nodes.append({"id": "chart", "type": "visualize", "config": {"kind": kind}})
        edges.append({"source": "model", "target": "chart"})
    if save:
        nodes.append({"id": "keep", "type": "save", "config": {"name": "my model"}})
        edges.append({"source": "model", "target": "keep"})
    return {"nodes": nodes, "edges": edges}


def run(
    body: dict[str, Any], datasets: Mapping[str, LoadedDataset], *, n_jobs: int = 1
) -> dict[str, Any]:
    """Every node in order, as the worker does: node id -> NodeOutcome, or the
    NodeFailed message, or "skipped" downstream of a failure."""
    definition = WorkflowDefinition.model_validate(body)

    def load(node: WorkflowNode) -> LoadedDataset:
        return datasets[node.id]

    values: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for node_id in definition.order():
        if any(not isinstance(results.get(i), NodeOutcome) for i in definition.inputs(node_id)):
            results[node_id] = "skipped"
            continue
        try:
            outcome = execute_node(definition, node_id, values, load, n_jobs=n_jobs)
        except NodeFailed as exc:
            results[node_id] = str(exc)
            continue
        json.dumps(outcome.output, allow_nan=False)
        values[node_id] = outcome.value
        results[node_id] = outcome
    return results


def metrics(results: dict[str, Any]) -> dict[str, float]:
    found: dict[str, float] = results["model"].output["metrics"]
    return found


# --- classification -----------------------------------------------------------------------------
def test_logistic_regression_on_iris() -> None:
    results = run(
        chain(preprocess={}, kind="confusion_matrix", hyperparameters={"max_iter": 500}),
        {"data": iris()},
    )
    data = results["data"].output
    assert data["rows"] == 150 and data["columns"] == 5
    assert data["target_column"] == "target" and data["problem_type"] == "classification"
    prep = results["prep"].output
    assert (prep["train_rows"], prep["test_rows"], prep["dropped_rows"]) == (120, 30, 0)
    assert prep["stratified"] is True and len(prep["features"]) == 4
    model = results["model"].output
    assert model["estimator"] == "LogisticRegression" and model["problem_type"] == "classification"
    assert model["hyperparameters"] == {"max_iter": 500}
    assert model["metrics"]["accuracy"] > 0.8
    assert 0.8 < model["metrics"]["f1"] <= 1 and 0.8 < model["metrics"]["roc_auc"] <= 1
    chart = results["chart"].output
    assert chart["labels"] == [0, 1, 2]
    matrix = np.array(chart["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 30
    assert np.trace(matrix) / 30 == pytest.approx(model["metrics"]["accuracy"])


def test_binary_metrics_and_coefficients_on_breast_cancer() -> None:
    dataset = LoadedDataset(CANCER, "target", None, "cancer")  # inferred: classification
    results = run(chain(kind="feature_importance", save=False), {"data": dataset})
    model = results["model"].output
    assert model["problem_type"] == "classification"
    assert model["metrics"]["accuracy"] > 0.9 and model["metrics"]["roc_auc"] > 0.9
    assert any("positive class 1" in n for n in model["notes"])
    chart = results["chart"].output
    assert chart["method"] == "abs(coef_)" and chart["total_features"] == 30
    assert chart["importances"] == sorted(chart["importances"], reverse=True)
    assert set(chart["features"]) <= set(CANCER.columns)


@pytest.mark.parametrize("algorithm", ["random_forest", "gradient_boosting"])
def test_tree_ensembles_classify_iris(algorithm: str) -> None:
    results = run(
        chain(
            algorithm=algorithm,
            hyperparameters={"n_estimators": 15, "max_depth": 3},
            kind="feature_importance",
        ),
        {"data": iris("classification")},  # the snapshot's text form
    )
    model = results["model"].output
    assert model["estimator"].endswith("Classifier")
    assert model["metrics"]["accuracy"] > 0.8
    chart = results["chart"].output
    assert chart["method"] == "feature_importances_"
    assert sum(chart["importances"]) == pytest.approx(1.0)
    assert chart["features"][0].startswith("petal")


def test_the_fit_uses_the_workers_threads_and_the_saved_model_does_not_keep_them() -> None:
    results = run(
        chain(algorithm="random_forest", hyperparameters={"n_estimators": 10}),
        {"data": iris()},
        n_jobs=2,
    )
    assert results["model"].output["hyperparameters"] == {"n_estimators": 10}
    saved = joblib.load(io.BytesIO(results["keep"].artifact))
    assert saved[-1].n_jobs is None
    assert "n_jobs" not in results["keep"].model.hyperparameters


# --- regression ---------------------------------------------------------------------------------
def test_ridge_on_diabetes_with_residuals() -> None:
    dataset = LoadedDataset(DIABETES, "target", ProblemType.REGRESSION, "diabetes")
    results = run(
        chain(algorithm="ridge", hyperparameters={"alpha": 0.1}, kind="residuals"),
        {"data": dataset},
    )
    model = results["model"].output
    assert model["estimator"] == "Ridge"
    assert model["metrics"]["r2"] > 0.3
    assert model["metrics"]["rmse"] > 0 and model["metrics"]["mae"] > 0
    chart = results["chart"].output
    assert chart["points"] == chart["total_points"] == model["test_rows"] == 89
    residuals = np.array(chart["actual"]) - np.array(chart["predicted"])
    assert residuals == pytest.approx(np.array(chart["residuals"]))
    assert chart["summary"]["rmse"] == pytest.approx(model["metrics"]["rmse"])


def test_random_forest_regression_is_inferred_from_the_target() -> None:
    dataset = LoadedDataset(DIABETES, "target", ProblemType.OTHER, "diabetes")
    results = run(
        chain(algorithm="random_forest", hyperparameters={"n_estimators": 10}, kind="residuals"),
        {"data": dataset},
    )
    assert results["data"].output["problem_type"] == "regression"
    assert results["model"].output["estimator"] == "RandomForestRegressor"
    assert set(metrics(results)) == {"r2", "rmse", "mae"}
    assert results["keep"].model.problem_type == ProblemType.REGRESSION


def test_residuals_are_capped_to_a_fixed_sample() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=6000)})
    frame["y"] = 3 * frame["x"] + rng.normal(scale=0.1, size=6000)
    dataset = LoadedDataset(frame, "y", ProblemType.REGRESSION, "line")
    body = chain(algorithm="linear_regression", kind="residuals", save=False)
    first = run(body, {"data": dataset})["chart"].output
    assert first["points"] == MAX_RESIDUAL_POINTS and first["total_points"] == 1200
    assert len(first["actual"]) == len(first["residuals"]) == MAX_RESIDUAL_POINTS
    assert run(body, {"data": dataset})["chart"].output == first


# --- clustering ---------------------------------------------------------------------------------
def test_kmeans_silhouette() -> None:
    dataset = LoadedDataset(IRIS.drop(columns=["target"]), None, None, "iris")
    results = run(chain(algorithm="kmeans", hyperparameters={"n_clusters": 3}), {"data": dataset})
    model = results["model"].output
    assert model["problem_type"] == "clustering" and model["estimator"] == "KMeans"
    assert -1 <= model["metrics"]["silhouette"] <= 1
    assert model["metrics"]["n_clusters"] == 3 and model["metrics"]["inertia"] > 0
    artifact = joblib.load(io.BytesIO(results["keep"].artifact))
    assert set(artifact.predict(IRIS.head(5))) <= {0, 1, 2}  # the target column is ignored


# --- preprocessing, categorical columns, missing values ----------------------------------------
@pytest.mark.parametrize("encode", ["onehot", "ordinal"])
def test_categorical_columns_and_missing_values(encode: str) -> None:
    frame = people()
    dataset = LoadedDataset(frame, "bought", None, "people")
    results = run(
        chain(
            algorithm="random_forest",
            hyperparameters={"n_estimators": 10},
            preprocess={"impute": "most_frequent", "encode": encode, "test_size": 0.25},
            kind="feature_importance",
        ),
        {"data": dataset},
    )
    prep = results["prep"].output
    assert prep["dropped_rows"] == 2
    assert prep["train_rows"] + prep["test_rows"] == 58
    assert prep["numeric_features"] == ["age", "income"]
    assert prep["categorical_features"] == ["city", "member"]
    assert prep["date_features"] == ["signed_up"]  # dates become features (issue 15)
    features = results["chart"].output["features"]
    if encode == "onehot":
        assert "city_Paris" in features
    else:
        assert "city" in features
    # The saved pipeline takes raw rows: missing values, unseen categories, extra columns.
    outcome = results["keep"]
    assert outcome.output["artifact_bytes"] == len(outcome.artifact)
    model = joblib.load(io.BytesIO(outcome.artifact))
    raw = frame.head(6).copy()
    raw.loc[0, "city"] = "Marseille"
    raw.loc[1, "age"] = np.nan
    assert set(model.predict(raw)) <= {"yes", "no"}
    record = outcome.model
    assert record.name == "my model" and record.algorithm == "random_forest"
    assert record.problem_type == ProblemType.CLASSIFICATION
    assert record.metrics == results["model"].output["metrics"]
    assert record.hyperparameters == {"n_estimators": 10}


def test_scaling_and_encoding_options() -> None:
    frame = people()
    dataset = LoadedDataset(frame, "bought", ProblemType.CLASSIFICATION, "people")
    for config in (
        {"scale": "minmax"},
        {"scale": "none", "impute": "median"},
        {"encode": "none"},
    ):
        results = run(chain(preprocess=config), {"data": dataset})
        assert isinstance(results["model"], NodeOutcome), (config, results["model"])
        if config.get("encode") == "none":
            assert results["prep"].output["categorical_features"] == []
            assert results["prep"].output["ignored_columns"]["city"] == "encode is none"


def test_impute_none_with_missing_values_fails_the_model_with_scikit_learns_words() -> None:
    dataset = LoadedDataset(people(), "bought", None, "people")
    results = run(chain(preprocess={"impute": "none"}, kind="confusion_matrix"), {"data": dataset})
    assert isinstance(results["prep"], NodeOutcome)
    message = results["model"]
    assert isinstance(message, str) and message.startswith("node 'model': fitting")
    assert "NaN" in message and "Traceback" not in message
    assert results["chart"] == results["keep"] == "skipped"


def test_a_model_fed_by_a_dataset_uses_the_default_preprocessing() -> None:
    direct = run(chain(save=False), {"data": iris()})
    explicit = run(chain(preprocess={}, save=False), {"data": iris()})
    assert metrics(direct) == metrics(explicit)


def test_two_models_share_a_preprocess_node_without_sharing_state() -> None:
    body = chain(preprocess={}, save=False)
    body["nodes"].append({"id": "other", "type": "model", "config": {"algorithm": "kmeans"}})
    body["edges"].append({"source": "prep", "target": "other"})
    results = run(body, {"data": iris()})
    assert isinstance(results["other"], NodeOutcome)
    assert metrics(results)["accuracy"] > 0.8


def test_stratification_needs_two_rows_per_class() -> None:
    frame = IRIS.copy()
    frame.loc[0, "target"] = 9  # a class with one row
    results = run(chain(preprocess={}, save=False), {"data": iris()})
    assert results["prep"].output["stratified"] is True
    dataset = LoadedDataset(frame, "target", ProblemType.CLASSIFICATION, "iris")
    results = run(chain(preprocess={}, save=False), {"data": dataset})
    assert results["prep"].output["stratified"] is False
    assert isinstance(results["model"], NodeOutcome)


# --- failures -----------------------------------------------------------------------------------
def test_dataset_failures() -> None:
    body = chain(save=False)
    missing_target = LoadedDataset(IRIS, "colour", None, "iris")
    assert "'colour' is not a column" in run(body, {"data": missing_target})["data"]
    empty = LoadedDataset(IRIS.head(0), "target", None, "iris")
    assert "has no rows" in run(body, {"data": empty})["data"]
    only_target = LoadedDataset(IRIS[["target"]], "target", None, "iris")
    assert "no feature columns" in run(body, {"data": only_target})["model"]
    two_rows = LoadedDataset(IRIS.head(1), "target", None, "iris")
    assert "at least 2" in run(body, {"data": two_rows})["model"]


def test_run_time_checks_against_the_data() -> None:
    # Accepted on save (the problem type was not known), refused by the data.
    no_target = LoadedDataset(IRIS, None, None, "iris")
    assert "needs a target column" in run(chain(save=False), {"data": no_target})["model"]
    regression = LoadedDataset(DIABETES, "target", None, "diabetes")
    message = run(chain(save=False), {"data": regression})["model"]
    assert "logistic_regression is for classification" in message
    results = run(
        chain(algorithm="ridge", kind="confusion_matrix", save=False), {"data": regression}
    )
    assert isinstance(results["model"], NodeOutcome)
    assert "confusion_matrix shows a classification model" in results["chart"]
    text = LoadedDataset(people(), "bought", ProblemType.REGRESSION, "people")
    assert "needs a numeric target" in run(chain(algorithm="ridge"), {"data": text})["model"]


def test_invalid_hyperparameters_fail_the_node() -> None:
    # Valid for the regressor (so accepted on save), not for the classifier iris needs.
    body = chain(algorithm="random_forest", hyperparameters={"criterion": "squared_error"})
    message = run(body, {"data": iris()})["model"]
    assert message.startswith("node 'model': config.hyperparameters:")
    assert "RandomForestClassifier" in message
    # Only fitting can tell: more clusters than rows.
    small = LoadedDataset(IRIS.head(20), None, None, "iris")
    body = chain(algorithm="kmeans", hyperparameters={"n_clusters": 50})
    results = run(body, {"data": small})
    assert "fitting KMeans failed" in results["model"] and results["keep"] == "skipped"


def test_a_stored_definition_that_no_longer_validates_fails_its_node() -> None:
    definition = WorkflowDefinition.model_validate(chain(save=False))
    definition.node("model").config["hyperparameters"] = {"n_trees": 3}
    outcome = execute_node(definition, "data", {}, lambda node: iris())
    with pytest.raises(NodeFailed, match="unknown parameter 'n_trees'"):
        execute_node(definition, "model", {"data": outcome.value}, lambda node: iris())


# --- determinism and JSON --------------------------------------------------------------------
def test_runs_are_repeatable() -> None:
    body = chain(
        algorithm="random_forest",
        hyperparameters={"n_estimators": 10},
        preprocess={"test_size": 0.3},
        kind="feature_importance",
    )
    first, second = run(body, {"data": iris()}), run(body, {"data": iris()})
    for node_id in ("prep", "model", "chart"):
        assert first[node_id].output == second[node_id].output
    model = first["model"].value
    assert isinstance(model, TrainedModel)
    assert model.pipeline[-1].random_state == 0  # fixed when the user gives none


def test_outputs_are_plain_json() -> None:
    dataset = LoadedDataset(people(), "bought", None, "people")
    results = run(chain(preprocess={}, kind="confusion_matrix"), {"data": dataset})
    for outcome in results.values():
        assert isinstance(outcome, NodeOutcome)
        text = json.dumps(outcome.output, allow_nan=False)
        assert json.loads(text) == outcome.output
    assert results["chart"].output["labels"] == ["no", "yes"]


def test_nullable_dtypes_from_parquet() -> None:
    """pd.NA in nullable integer, boolean, string and category columns."""
    rng = np.random.default_rng(2)
    rows = 60
    frame = pd.DataFrame(
        {
            "count": pd.array(rng.integers(0, 10, rows), dtype="Int64"),
            "kind": pd.Categorical(rng.choice(["x", "y", None], rows)),
            "code": pd.array(rng.choice(["p", "q", None], rows), dtype="string[python]"),
            "flag": pd.array(rng.choice([True, False, None], rows), dtype="boolean"),
            "label": pd.array(rng.choice(["u", "v"], rows), dtype="string[python]"),
        }
    )
    frame.loc[3, "count"] = pd.NA
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    frame = pd.read_parquet(io.BytesIO(buffer.getvalue()))
    dataset = LoadedDataset(frame, "label", None, "nullable")
    body = chain(preprocess={"encode": "onehot"}, kind="confusion_matrix")
    results = run(body, {"data": dataset})
    assert isinstance(results["model"], NodeOutcome), results["model"]
    assert results["chart"].output["labels"] == ["u", "v"]
    model = joblib.load(io.BytesIO(results["keep"].artifact))
    assert set(model.predict(frame.head(10))) <= {"u", "v"}


def test_progress_is_reported_at_each_natural_step() -> None:
    definition = WorkflowDefinition.model_validate(
        chain(preprocess={"impute": "mean"}, kind="confusion_matrix")
    )
    datasets = {"data": iris()}
    values: dict[str, Any] = {}
    calls: dict[str, list[tuple[float, str | None]]] = {}
    for node_id in definition.order():
        seen = calls.setdefault(node_id, [])

        def progress(fraction: float, message: str | None = None, seen: Any = seen) -> None:
            seen.append((fraction, message))

        outcome = execute_node(
            definition, node_id, values, lambda node: datasets[node.id], progress=progress
        )
        values[node_id] = outcome.value
    assert list(calls) == ["data", "prep", "model", "chart", "keep"]
    for node_id, seen in calls.items():
        fractions = [f for f, _ in seen]
        assert seen and fractions == sorted(fractions), node_id
        assert all(0 <= f <= 1 for f in fractions) and fractions[-1] == 1.0, node_id
        assert all(isinstance(m, str) and m for _, m in seen), node_id
    assert calls["data"] == [(1.0, "loaded 150 rows and 5 columns of 'iris'")]
    assert calls["prep"][0][1] is not None and calls["prep"][0][1].startswith(
        "120 training rows and 30 test rows (stratified); 4 features (4 numeric, 0 categorical)"
    )
    model = [m for _, m in calls["model"]]
    assert model[0] == "fitting LogisticRegression on 120 rows and 4 features"
    assert model[-1] is not None and model[-1].startswith("test metrics: accuracy ")
    assert calls["keep"][-1][1] is not None and "serialized" in calls["keep"][-1][1]
