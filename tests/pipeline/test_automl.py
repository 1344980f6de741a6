"""The automl node: FLAML's search, every trial reported, the best pipeline kept.

Tiny data and budgets of 1-2 seconds (``max_trials`` keeps a search short where the
number of trials does not matter): these tests check what is recorded and returned,
never how good or fast the search is (bench/automl.py measures that).
"""

from __future__ import annotations

import io
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sklearn.datasets import load_diabetes, load_iris

from database.models.enums import ProblemType
from pipeline import automl
from pipeline.definition import (
    AutoMLConfig,
    DatasetInfo,
    PreprocessConfig,
    WorkflowDefinition,
    WorkflowNode,
    runnable_problems,
)
from pipeline.execute import LoadedDataset, NodeFailed, build_transformer, execute_node

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

IRIS = load_iris(as_frame=True).frame
IRIS["target"] = IRIS["target"].map({0: "setosa", 1: "versicolor", 2: "virginica"})


def definition(config: dict[str, Any], *, save: bool = True) -> WorkflowDefinition:
    nodes = [
        {"id": "data", "type": "dataset", "config": {}},
        {"id": "prep", "type": "preprocess", "config": {}},
        {"id": "search", "type": "automl", "config": config},
    ]
    edges = [{"source": "data", "target": "prep"}, {"source": "prep", "target": "search"}]
    if save:
        nodes.append({"id": "keep", "type": "save", "config": {"name": "best"}})
        edges.append({"source": "search", "target": "keep"})
    return WorkflowDefinition.model_validate({"nodes": nodes, "edges": edges})


def run_all(
    parsed: WorkflowDefinition, loaded: LoadedDataset, trials: list[dict[str, Any]]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    outcomes: dict[str, Any] = {}

    def load(node: WorkflowNode) -> LoadedDataset:
        return loaded

    for node_id in parsed.order():
        upstream = {u: values[u] for u in parsed.inputs(node_id)}
        outcome = execute_node(parsed, node_id, upstream, load, on_trial=trials.append)
        values[node_id] = outcome.value
        outcomes[node_id] = outcome
    return outcomes


def test_a_search_finds_a_model_and_reports_every_trial() -> None:
    trials: list[dict[str, Any]] = []
    notes: list[tuple[float, str | None]] = []
    x = IRIS.drop(columns=["target"])
    result = automl.search(
        build_transformer(PreprocessConfig(), list(x.columns), []),
        x,
        IRIS["target"].to_numpy(),
        ProblemType.CLASSIFICATION,
        time_budget_s=2,
        folds=3,
        learners=("lgbm", "rf", "lrl1"),
        on_trial=trials.append,
        progress=lambda fraction, message=None: notes.append((fraction, message)),
    )
    assert result.trials == len(trials) >= 1
    assert [t["number"] for t in trials] == list(range(1, len(trials) + 1))
    for trial in trials:
        assert trial["learner"] in ("lgbm", "rf", "lrl1")
        assert trial["metric"] == "accuracy"
        assert trial["status"] in ("finished", "failed")
        assert isinstance(trial["config"], dict)
        if trial["status"] == "finished":
            assert 0 <= trial["score"] <= 1
            assert trial["seconds"] >= 0
            # Each fold's score (FLAML's own folds, no refit); the trial's is their mean.
            assert len(trial["fold_scores"]) == 3
            assert all(0 <= f <= 1 for f in trial["fold_scores"])
            assert sum(trial["fold_scores"]) / 3 == pytest.approx(trial["score"])
    finished = [t["score"] for t in trials if t["status"] == "finished"]
    assert result.best_score == pytest.approx(max(finished))
    assert result.learner in ("lgbm", "rf", "lrl1")
    # The pipeline answers in the original labels, on the raw columns.
    predicted = result.pipeline.predict(x.head(10))
    assert set(predicted) <= {"setosa", "versicolor", "virginica"}
    assert result.pipeline.predict_proba(x.head(3)).shape == (3, 3)
    assert any(m and m.startswith("trial 1:") for _, m in notes)
    assert all(0 <= f <= 1 for f, _ in notes)


def test_fold_scores_of_a_loss_are_the_metric_per_fold() -> None:
    trials: list[dict[str, Any]] = []
    frame = load_diabetes(as_frame=True).frame
    x = frame.drop(columns=["target"])
    automl.search(
        build_transformer(PreprocessConfig(), list(x.columns), []),
        x,
        frame["target"].to_numpy(),
        ProblemType.REGRESSION,
        time_budget_s=30,
        metric="rmse",
        folds=4,
        max_trials=3,
        learners=("lgbm",),
        on_trial=trials.append,
    )
    finished = [t for t in trials if t["status"] == "finished"]
    assert finished
    for trial in finished:
        # rmse is FLAML's loss itself: the folds' values are rmse, all positive,
        # and not all alike (four different folds).
        assert len(trial["fold_scores"]) == 4
        assert all(f > 0 for f in trial["fold_scores"])
        assert len(set(trial["fold_scores"])) > 1
        assert sum(trial["fold_scores"]) / 4 == pytest.approx(trial["score"])


def test_the_best_so_far_goes_to_each_save_node_as_it_is_found() -> None:
    trials: list[dict[str, Any]] = []
    interims: list[tuple[str, int, Any]] = []
    values: dict[str, Any] = {}
    loaded = LoadedDataset(IRIS, "target", None, "iris")
    config = {"time_budget_s": 30, "folds": 3, "estimators": ["rf", "lgbm"], "max_trials": 6}
    parsed = definition(config)
    for node_id in ("data", "prep", "search"):
        upstream = {u: values[u] for u in parsed.inputs(node_id)}
        values[node_id] = execute_node(
            parsed,
            node_id,
            upstream,
            lambda node: loaded,
            on_trial=trials.append,
            on_interim=lambda node, trial, outcome: interims.append((node, trial, outcome)),
        ).value
    assert interims, "the first finished trial is a best so far"
    numbers = [trial for _, trial, _ in interims]
    assert numbers == sorted(set(numbers))
    by_number = {t["number"]: t for t in trials}
    best = None
    for node, number, outcome in interims:
        assert node == "keep"
        trial = by_number[number]
        # a best so far: no earlier finished trial scored higher
        earlier = [t["score"] for t in trials if t["number"] < number and t["score"] is not None]
        assert all(trial["score"] >= e for e in earlier)
        assert best is None or trial["score"] > best
        best = trial["score"]
        assert outcome.model.hyperparameters["learner"] == trial["learner"]
        assert outcome.output["kept_from"]["trial"] == number
        assert outcome.output["kept_from"]["cv_score"] == pytest.approx(trial["score"])
        model = joblib.load(io.BytesIO(outcome.artifact))
        predicted = model.predict(IRIS.drop(columns=["target"]).head(20))
        assert set(predicted) <= {"setosa", "versicolor", "virginica"}


def test_no_save_node_no_best_so_far() -> None:
    interims: list[Any] = []
    values: dict[str, Any] = {}
    loaded = LoadedDataset(IRIS, "target", None, "iris")
    parsed = definition({"time_budget_s": 30, "folds": 3, "max_trials": 2}, save=False)
    for node_id in ("data", "prep", "search"):
        upstream = {u: values[u] for u in parsed.inputs(node_id)}
        values[node_id] = execute_node(
            parsed, node_id, upstream, lambda node: loaded, on_interim=interims.append
        ).value
    assert interims == []


def test_the_pacer_holds_a_best_while_the_last_one_is_recent() -> None:
    called: list[Any] = []
    pacer = automl._Pacer(called.append)
    first, second, third = object(), object(), object()
    pacer.offer(first)  # type: ignore[arg-type]
    assert called == [first]
    pacer.ready_at = float("inf")  # as if the last call had been slow
    pacer.offer(second)  # type: ignore[arg-type]
    pacer.offer(third)  # type: ignore[arg-type]
    pacer.offer(None)
    assert called == [first]  # held; the newer best replaced the older
    pacer.ready_at = 0.0
    pacer.offer(None)  # the next trial's end
    assert called == [first, third]
    pacer.offer(None)
    assert called == [first, third]


def test_max_trials_bounds_the_search() -> None:
    trials: list[dict[str, Any]] = []
    x = IRIS.drop(columns=["target"])
    result = automl.search(
        build_transformer(PreprocessConfig(), list(x.columns), []),
        x,
        IRIS["target"].to_numpy(),
        ProblemType.CLASSIFICATION,
        time_budget_s=30,
        folds=3,
        max_trials=3,
        learners=("lgbm",),
        on_trial=trials.append,
    )
    assert result.trials == len(trials) == 3


def test_the_node_and_save_give_a_model_that_loads_and_predicts() -> None:
    trials: list[dict[str, Any]] = []
    parsed = definition(
        {"time_budget_s": 1, "folds": 3, "estimators": ["rf", "lrl1"], "max_trials": 4}
    )
    outcomes = run_all(parsed, LoadedDataset(IRIS, "target", None, "iris"), trials)
    output = outcomes["search"].output
    assert output["algorithm"] == "automl"
    assert output["problem_type"] == "classification"
    assert output["search"]["trials"] == len(trials) >= 1
    assert output["search"]["learner"] == output["hyperparameters"]["learner"]
    assert 0 <= output["metrics"]["accuracy"] <= 1  # on the held-out test rows
    saved = outcomes["keep"]
    assert saved.model is not None and saved.model.algorithm == "automl"
    assert saved.artifact is not None
    model = joblib.load(io.BytesIO(saved.artifact))
    assert set(model.predict(IRIS.drop(columns=["target"]).head())) <= set(IRIS["target"])


def test_regression_searches_with_r2_by_default() -> None:
    trials: list[dict[str, Any]] = []
    frame = load_diabetes(as_frame=True).frame.head(150)
    parsed = definition({"time_budget_s": 1, "folds": 3, "estimators": ["rf"]}, save=False)
    outcomes = run_all(parsed, LoadedDataset(frame, "target", "regression", "d"), trials)
    output = outcomes["search"].output
    assert output["search"]["metric"] == "r2"
    assert output["problem_type"] == "regression"
    assert trials and all(t["metric"] == "r2" for t in trials)
    assert "rmse" in output["metrics"]


def test_a_search_that_cannot_cross_validate_fails_with_the_reason() -> None:
    frame = IRIS.copy()
    frame.loc[frame.index[:146], "target"] = "many"
    frame.loc[frame.index[146:], "target"] = "few"  # 4 rows, 3 or fewer for training
    parsed = definition({"time_budget_s": 1, "folds": 5}, save=False)
    with pytest.raises(NodeFailed, match="5-fold cross-validation needs 5 rows of every class"):
        run_all(parsed, LoadedDataset(frame, "target", None, "iris"), [])


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"time_budget_s": 0}, "greater than or equal to 1"),
        ({"time_budget_s": 3601}, "less than or equal to 3600"),
        ({"time_budget_s": "60"}, "valid integer"),
        ({"time_budget_s": 1.5}, "valid integer"),
        ({"metric": "precision"}, "metric"),
        ({"estimators": ["catboost"]}, "estimators"),
        ({"estimators": []}, "at least 1"),
        ({"estimators": ["rf", "rf"]}, "a learner is named twice"),
        ({"folds": 1}, "greater than or equal to 2"),
        ({"folds": 21}, "less than or equal to 20"),
        ({"max_trials": 0}, "greater than or equal to 1"),
        ({"seed": -1}, "greater than or equal to 0"),
        ({"budget": 60}, "unknown key"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(config: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        definition(config)
    assert fragment in str(caught.value)
    assert "node 'search': config." in str(caught.value)


def test_defaults() -> None:
    config = AutoMLConfig()
    assert (config.time_budget_s, config.metric, config.folds, config.estimators) == (
        60,
        None,
        5,
        None,
    )


@pytest.mark.parametrize(
    ("config", "problem_type", "fragment"),
    [
        ({"metric": "r2"}, ProblemType.CLASSIFICATION, "the metric 'r2' measures regression"),
        ({"metric": "accuracy"}, ProblemType.REGRESSION, "measures classification"),
        ({"estimators": ["lrl1", "rf"]}, ProblemType.REGRESSION, "the learners lrl1 only classify"),
        ({}, ProblemType.CLUSTERING, "automl searches classification or regression models"),
    ],
)
def test_a_config_that_does_not_suit_the_data_cannot_run(
    config: dict[str, Any], problem_type: ProblemType, fragment: str
) -> None:
    info = DatasetInfo(problem_type, "target", ("a", "target"))
    problems = runnable_problems(definition(config), {"data": info})
    assert any(fragment in p for p in problems), problems


def test_no_target_cannot_run() -> None:
    problems = runnable_problems(definition({}), {"data": DatasetInfo(None, None, ("a",))})
    assert any("automl needs a target column" in p for p in problems)


def test_the_search_runs_on_a_dask_cluster() -> None:
    distributed = pytest.importorskip("distributed")
    x = IRIS.drop(columns=["target"])
    with (
        distributed.LocalCluster(
            # joblib sends work to a cluster of two cores or more (with one, its
            # Dask backend runs everything in the caller, sequentially).
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
        distributed.get_task_stream(client) as stream,
    ):
        result = automl.search(
            build_transformer(PreprocessConfig(), list(x.columns), []),
            x,
            IRIS["target"].to_numpy(),
            ProblemType.CLASSIFICATION,
            time_budget_s=2,
            folds=3,
            max_trials=2,
            learners=("rf",),
            n_jobs=2,
            scheduler=cluster.scheduler_address,
        )
    assert result.trials >= 1
    assert np.isin(result.pipeline.predict(x.head()), IRIS["target"].unique()).all()
    # The forests' fits ran as tasks on the cluster's worker.
    assert len(stream.data) > 0


def test_label_decoded_refits_and_decodes() -> None:
    from sklearn.linear_model import LogisticRegression

    x = IRIS.drop(columns=["target"]).to_numpy()
    model = automl.LabelDecoded(LogisticRegression(max_iter=500)).fit(x, IRIS["target"])
    assert list(model.classes_) == ["setosa", "versicolor", "virginica"]
    assert set(pd.unique(model.predict(x))) <= set(model.classes_)


def test_text_columns_and_gaps_go_through_the_preprocess_node() -> None:
    rng = np.random.default_rng(0)
    rows = 120
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows).astype(float),
            "city": rng.choice(["Paris", "Oslo", "Rome"], rows),
            "label": rng.choice(["yes", "no"], rows),
        }
    )
    frame.loc[::9, "age"] = np.nan
    frame.loc[::11, "city"] = None
    trials: list[dict[str, Any]] = []
    parsed = definition(
        {"time_budget_s": 1, "folds": 3, "estimators": ["lgbm", "lrl1"], "max_trials": 4}
    )
    outcomes = run_all(parsed, LoadedDataset(frame, "label", None, "people"), trials)
    assert trials
    model = joblib.load(io.BytesIO(outcomes["keep"].artifact))
    assert set(model.predict(frame.drop(columns=["label"]).head(20))) <= {"yes", "no"}
