"""pipeline.definition: every rule of a definition, tried and broken.

Pure Python: no database. Each test builds a definition as a client would send it
and checks that it is accepted, or refused with a message naming the node and the
field.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pandas as pd
import pytest
from pydantic import ValidationError

from database.models.enums import NodeType, ProblemType
from pipeline.definition import (
    DatasetConfig,
    DatasetInfo,
    DefinitionError,
    ModelConfig,
    PreprocessConfig,
    SaveConfig,
    VisualizeConfig,
    WorkflowDefinition,
    check_runnable,
    definition_problems,
    hyperparameter_problem,
    infer_problem_type,
    infer_problem_type_from_metadata,
    resolve_problem_type,
    runnable_problems,
)

DATASET_ID = "6f1c1e36-4a8e-4bd5-9a51-55a4f1f0a001"


def node(node_id: str, node_type: str, **config: Any) -> dict[str, Any]:
    return {"id": node_id, "type": node_type, "config": config}


def edge(source: str, target: str) -> dict[str, str]:
    return {"source": source, "target": target}


def full(**model: Any) -> dict[str, Any]:
    """dataset -> preprocess -> model -> (visualize, save)."""
    return {
        "nodes": [
            node("data", "dataset", dataset_id=DATASET_ID),
            node("prep", "preprocess", impute="median", scale="minmax", test_size=0.25),
            node("m1", "model", **(model or {"algorithm": "random_forest"})),
            node("chart", "visualize", kind="feature_importance"),
            node("keep", "save", name="forest"),
        ],
        "edges": [
            edge("data", "prep"),
            edge("prep", "m1"),
            edge("m1", "chart"),
            edge("m1", "keep"),
        ],
    }


def refusal(body: dict[str, Any]) -> str:
    """The message of the refusal of ``body``."""
    with pytest.raises(ValidationError) as caught:
        WorkflowDefinition.model_validate(body)
    return " | ".join(str(e["msg"]) for e in caught.value.errors())


# --- accepted ---------------------------------------------------------------------------------
def test_a_full_definition_and_its_typed_configs() -> None:
    d = WorkflowDefinition.model_validate(full())
    assert d.node("data").config_as(DatasetConfig) == DatasetConfig(dataset_id=DATASET_ID)
    assert d.node("prep").typed_config() == PreprocessConfig(
        impute="median", scale="minmax", encode="onehot", test_size=0.25
    )
    assert d.node("m1").typed_config() == ModelConfig(algorithm="random_forest")
    assert d.node("chart").typed_config() == VisualizeConfig(kind="feature_importance")
    assert d.node("keep").typed_config() == SaveConfig(name="forest")
    # Stored as given: defaults are not written into the JSON.
    assert d.model_dump(mode="json", exclude_none=True)["nodes"][1]["config"] == {
        "impute": "median",
        "scale": "minmax",
        "test_size": 0.25,
    }


def test_defaults_and_empty_drafts() -> None:
    assert WorkflowDefinition.model_validate({}).nodes == []
    d = WorkflowDefinition.model_validate(
        {
            "nodes": [
                node("d", "dataset"),
                node("p", "preprocess"),
                node("m", "model", algorithm="kmeans"),
            ],
            "edges": [edge("d", "p"), edge("p", "m")],
        }
    )
    assert d.node("d").config_as(DatasetConfig) == DatasetConfig(dataset_id=None, version=None)
    assert d.node("p").config_as(PreprocessConfig) == PreprocessConfig(
        impute="mean", scale="standard", encode="onehot", test_size=0.2
    )
    with pytest.raises(TypeError):
        d.node("p").config_as(ModelConfig)


def test_a_model_may_read_a_dataset_directly_and_branches_may_share_a_workflow() -> None:
    body = {
        "nodes": [
            node("a", "dataset", dataset_id=DATASET_ID),
            node("b", "dataset", dataset_id=str(uuid.uuid4()), version=3),
            node("ma", "model", algorithm="ridge"),
            node("pb", "preprocess", encode="ordinal"),
            node("mb", "model", algorithm="logistic_regression", hyperparameters={"C": 0.5}),
            node("mb2", "model", algorithm="gradient_boosting"),
            node("va", "visualize", kind="residuals"),
            node("vb", "visualize", kind="confusion_matrix"),
            node("sb", "save", name="b"),
            node("sb2", "save", name="b2"),
        ],
        "edges": [
            edge("a", "ma"),
            edge("b", "pb"),
            edge("pb", "mb"),
            edge("pb", "mb2"),
            edge("ma", "va"),
            edge("mb", "vb"),
            edge("mb", "sb"),
            edge("mb2", "sb2"),
        ],
    }
    d = WorkflowDefinition.model_validate(body)
    assert set(d.dataset_ids()) == {"a", "b"}
    assert d.dataset_ids()["a"] == uuid.UUID(DATASET_ID)
    assert d.dataset_node("vb") == "b" and d.dataset_node("va") == "a"


# --- structure ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("duplicate_id", "used twice"),
        ("unknown_node", "names unknown node 'ghost'"),
        ("self_edge", "joins a node to itself"),
        ("duplicate_edge", "given twice"),
        ("cycle", "cycle"),
        ("into_dataset", "dataset node 'data' has an incoming edge"),
        ("no_input", "node 'orphan' has no input"),
    ],
)
def test_structure_rules(change: str, words: str) -> None:
    body = full()
    if change == "duplicate_id":
        body["nodes"].append(node("m1", "model", algorithm="ridge"))
    elif change == "unknown_node":
        body["edges"].append(edge("m1", "ghost"))
    elif change == "self_edge":
        body["edges"].append(edge("m1", "m1"))
    elif change == "duplicate_edge":
        body["edges"].append(edge("data", "prep"))
    elif change == "cycle":
        body["edges"].append(edge("keep", "prep"))
    elif change == "into_dataset":
        body["edges"].append(edge("prep", "data"))
    elif change == "no_input":
        body["nodes"].append(node("orphan", "model", algorithm="ridge"))
    assert words in refusal(body)


def test_sizes_ids_labels_and_json_are_bounded() -> None:
    many = {"nodes": [node(f"d{i}", "dataset") for i in range(201)]}
    assert "at most 200" in refusal(many)
    edges = {"nodes": [node("d", "dataset")], "edges": [edge("d", "x")] * 1001}
    assert "at most 1000" in refusal(edges)
    for bad_id in ("", "a b", "x" * 101, "é"):
        assert refusal({"nodes": [node(bad_id, "dataset")]})
    labelled = full()
    labelled["nodes"][0]["label"] = "x" * 201
    assert refusal(labelled)
    labelled["nodes"][0]["label"] = "a\x00b"
    assert "NUL" in refusal(labelled)
    labelled["nodes"][0]["label"] = "Iris"
    assert WorkflowDefinition.model_validate(labelled).node("data").label == "Iris"
    assert "'dataset'" in refusal({"nodes": [node("d", "teleport")]})
    assert "NUL" in refusal(full(algorithm="ridge", hyperparameters={"solver": "a\x00"}))
    assert "finite" in refusal(full(algorithm="ridge", hyperparameters={"alpha": float("inf")}))
    deep: dict[str, Any] = {}
    for _ in range(40):
        deep = {"x": deep}
    assert "deeper" in refusal(full(algorithm="ridge", hyperparameters=deep))
    extra = full()
    extra["nodes"][0]["colour"] = "red"
    assert refusal(extra)


# --- configs ------------------------------------------------------------------------------------
def with_config(node_id: str, **config: Any) -> dict[str, Any]:
    body = full()
    for n in body["nodes"]:
        if n["id"] == node_id:
            n["config"] = config
    return body


@pytest.mark.parametrize(
    ("node_id", "config", "words"),
    [
        ("data", {"dataset_id": "nope"}, "node 'data': config.dataset_id:"),
        ("data", {"version": 0}, "node 'data': config.version:"),
        ("data", {"version": "3"}, "node 'data': config.version:"),
        ("data", {"version": True}, "node 'data': config.version:"),
        ("data", {"version": 2**31}, "node 'data': config.version:"),
        ("data", {"path": "/etc"}, "node 'data': config.path: unknown key; allowed: dataset_id"),
        ("prep", {"impute": "zero"}, "node 'prep': config.impute:"),
        ("prep", {"scale": "robust"}, "node 'prep': config.scale:"),
        ("prep", {"encode": "hash"}, "node 'prep': config.encode:"),
        ("prep", {"test_size": 0}, "node 'prep': config.test_size:"),
        ("prep", {"test_size": 1}, "node 'prep': config.test_size:"),
        ("prep", {"test_size": "0.2"}, "node 'prep': config.test_size:"),
        ("prep", {"imputer": "mean"}, "node 'prep': config.imputer: unknown key"),
        ("m1", {}, "node 'm1': config.algorithm: Field required"),
        ("m1", {"algorithm": "xgboost"}, "node 'm1': config.algorithm:"),
        ("m1", {"algorithm": "ridge", "hyperparameters": []}, "node 'm1': config.hyperparameters:"),
        ("m1", {"algorithm": "ridge", "params": {}}, "node 'm1': config.params: unknown key"),
        ("chart", {}, "node 'chart': config.kind: Field required"),
        ("chart", {"kind": "pie"}, "node 'chart': config.kind:"),
        ("keep", {}, "node 'keep': config.name: Field required"),
        ("keep", {"name": "  "}, "node 'keep': config.name:"),
        ("keep", {"name": "x" * 256}, "node 'keep': config.name:"),
        # Refused by the JSON guard of every config, before the typed config.
        ("keep", {"name": "a\x00b"}, "may not contain NUL characters"),
    ],
)
def test_config_rules(node_id: str, config: dict[str, Any], words: str) -> None:
    assert words in refusal(with_config(node_id, **config))


def test_save_name_bounds() -> None:
    d = WorkflowDefinition.model_validate(with_config("keep", name=" " + "x" * 255 + " "))
    assert d.node("keep").config_as(SaveConfig).name == "x" * 255


# --- hyperparameters ----------------------------------------------------------------------
def test_unknown_hyperparameters_are_refused_with_the_valid_ones() -> None:
    message = refusal(full(algorithm="random_forest", hyperparameters={"n_trees": 10}))
    assert "node 'm1': config.hyperparameters: unknown parameter 'n_trees' for" in message
    assert "RandomForestClassifier" in message and "n_estimators" in message
    message = refusal(full(algorithm="ridge", hyperparameters={"n_estimators": 10}))
    assert "unknown parameter 'n_estimators' for Ridge; valid: alpha" in message


@pytest.mark.parametrize(
    ("algorithm", "params"),
    [
        ("random_forest", {"n_estimators": -1}),
        ("random_forest", {"n_estimators": 2.5}),
        ("random_forest", {"max_depth": "deep"}),
        ("random_forest", {"criterion": "purity"}),
        ("logistic_regression", {"C": -1.0}),
        ("logistic_regression", {"solver": "newton"}),
        ("ridge", {"alpha": -1}),
        ("kmeans", {"n_clusters": 0}),
        ("kmeans", {"init": "smart"}),
        ("gradient_boosting", {"learning_rate": -0.1}),
        ("linear_regression", {"fit_intercept": "yes"}),
    ],
)
def test_invalid_values_are_refused_by_scikit_learn(algorithm: str, params: dict[str, Any]) -> None:
    message = refusal(full(algorithm=algorithm, hyperparameters=params))
    name = next(iter(params))
    assert "node 'm1': config.hyperparameters:" in message and name in message


@pytest.mark.parametrize(
    ("algorithm", "params", "says"),
    [
        (
            "random_forest",
            {"n_estimators": 2**70},
            "'n_estimators' must be at least 1 and at most 5000",
        ),
        (
            "random_forest",
            {"n_estimators": 5001},
            "'n_estimators' must be at least 1 and at most 5000; got 5001",
        ),
        (
            "gradient_boosting",
            {"n_estimators": 10**6},
            "'n_estimators' must be at least 1 and at most 5000",
        ),
        ("random_forest", {"max_depth": 1001}, "'max_depth' must be at least 1 and at most 1000"),
        (
            "random_forest",
            {"max_features": 10**9},
            "'max_features' must be greater than 0 and at most 100000",
        ),
        ("logistic_regression", {"C": 0}, "'C' must be greater than 0 and at most 1000000; got 0"),
        ("logistic_regression", {"C": 1e7}, "'C' must be greater than 0 and at most 1000000"),
        (
            "logistic_regression",
            {"max_iter": 10**7},
            "'max_iter' must be at least 0 and at most 1000000",
        ),
        ("kmeans", {"n_clusters": 10**5}, "'n_clusters' must be at least 1 and at most 10000"),
        ("kmeans", {"n_init": 10**4}, "'n_init' must be at least 1 and at most 1000"),
        ("ridge", {"alpha": 1e300}, "'alpha' must be at least 0 and at most 1000000"),
        (
            "ridge",
            {"random_state": 2**32},
            "'random_state' must be at least 0 and at most 4294967295",
        ),
    ],
)
def test_numbers_outside_the_platform_ranges_are_refused_naming_the_range(
    algorithm: str, params: dict[str, Any], says: str
) -> None:
    message = refusal(full(algorithm=algorithm, hyperparameters=params))
    assert "node 'm1': config.hyperparameters: parameter " + says in message


def test_the_ends_of_each_range_are_accepted() -> None:
    for algorithm, params in (
        ("random_forest", {"n_estimators": 5000, "max_depth": 1000, "max_features": 0.5}),
        ("random_forest", {"n_estimators": 1, "max_depth": 1, "min_samples_leaf": 0.1}),
        ("logistic_regression", {"C": 1e6, "max_iter": 1_000_000}),
        ("kmeans", {"n_clusters": 10_000, "n_init": 1000}),
        ("ridge", {"alpha": 0, "random_state": 2**32 - 1}),
    ):
        WorkflowDefinition.model_validate(full(algorithm=algorithm, hyperparameters=params))


def test_every_numeric_hyperparameter_has_a_range() -> None:
    """Each parameter scikit-learn bounds by a numeric interval has the platform's range."""
    from sklearn.utils._param_validation import Interval

    from pipeline.estimators import ALGORITHMS, RANGES

    missing = {
        f"{cls.__name__}.{name}"
        for classes in ALGORITHMS.values()
        for cls in classes.values()
        for name, rules in cls._parameter_constraints.items()
        if any(isinstance(rule, Interval) for rule in rules) and name not in RANGES
    }
    assert not missing
    assert all(r.low <= r.high and r.high < float("inf") for r in RANGES.values())


def test_the_worker_threads_go_to_the_estimator_but_not_the_saved_model() -> None:
    from pipeline.estimators import build_estimator

    forest = build_estimator("random_forest", ProblemType.CLASSIFICATION, {}, n_jobs=4)
    assert forest.get_params()["n_jobs"] == 4
    ridge = build_estimator("ridge", ProblemType.REGRESSION, {}, n_jobs=4)
    assert "n_jobs" not in ridge.get_params()
    # Its n_jobs does nothing since scikit-learn 1.8, and warns: left unset.
    logistic = build_estimator("logistic_regression", ProblemType.CLASSIFICATION, {}, n_jobs=4)
    assert logistic.get_params()["n_jobs"] is None


def test_platform_parameters_are_refused_and_random_state_allowed() -> None:
    for name, value in (("n_jobs", 2), ("n_jobs", 1), ("verbose", 1)):
        message = refusal(full(algorithm="random_forest", hyperparameters={name: value}))
        assert f"parameter {name!r} is set by the platform" in message
    WorkflowDefinition.model_validate(
        full(algorithm="random_forest", hyperparameters={"random_state": 42})
    )


def test_either_estimator_is_enough_on_save_and_the_chosen_one_on_run() -> None:
    classifier_only = {"class_weight": "balanced"}
    regressor_only = {"criterion": "absolute_error"}
    for params in (classifier_only, regressor_only):
        WorkflowDefinition.model_validate(full(algorithm="random_forest", hyperparameters=params))
        assert hyperparameter_problem("random_forest", params) is None
    assert hyperparameter_problem(
        "random_forest", regressor_only, ProblemType.CLASSIFICATION
    ) and "RandomForestClassifier" in str(
        hyperparameter_problem("random_forest", regressor_only, ProblemType.CLASSIFICATION)
    )
    assert hyperparameter_problem("random_forest", regressor_only, ProblemType.REGRESSION) is None
    assert hyperparameter_problem("gradient_boosting", {"loss": "huber"}) is None
    assert hyperparameter_problem(
        "gradient_boosting", {"loss": "huber"}, ProblemType.CLASSIFICATION
    )


# --- shape ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("nodes", "edges", "words"),
    [
        (
            [node("d", "dataset"), node("v", "visualize", kind="residuals")],
            [edge("d", "v")],
            "visualize node 'v' takes a model node or an automl node as input,"
            " not the dataset node 'd'",
        ),
        (
            [node("d", "dataset"), node("s", "save", name="x")],
            [edge("d", "s")],
            "save node 's' takes a model node or an automl node as input",
        ),
        (
            [node("d", "dataset"), node("p", "preprocess"), node("s", "save", name="x")],
            [edge("d", "p"), edge("p", "s")],
            "save node 's' takes a model node or an automl node as input,"
            " not the preprocess node 'p'",
        ),
        (
            [node("d", "dataset"), node("p", "preprocess"), node("q", "preprocess")],
            [edge("d", "p"), edge("p", "q")],
            "preprocess node 'q' takes a dataset node as input",
        ),
        (
            [node("d", "dataset"), node("m", "model", algorithm="ridge"), node("p", "preprocess")],
            [edge("d", "m"), edge("m", "p")],
            "preprocess node 'p' takes a dataset node as input, not the model node 'm'",
        ),
        (
            [
                node("d", "dataset"),
                node("m", "model", algorithm="ridge"),
                node("n", "model", algorithm="ridge"),
            ],
            [edge("d", "m"), edge("m", "n")],
            "model node 'n' takes a preprocess node or a dataset node as input",
        ),
        (
            [node("d", "dataset"), node("e", "dataset"), node("p", "preprocess")],
            [edge("d", "p"), edge("e", "p")],
            "preprocess node 'p' takes exactly one input (a dataset node), not 2",
        ),
        (
            [
                node("d", "dataset"),
                node("m", "model", algorithm="ridge"),
                node("n", "model", algorithm="ridge"),
                node("s", "save", name="x"),
            ],
            [edge("d", "m"), edge("d", "n"), edge("m", "s"), edge("n", "s")],
            "save node 's' takes exactly one input",
        ),
        (
            [
                node("d", "dataset"),
                node("p", "preprocess"),
                node("m", "model", algorithm="ridge"),
            ],
            [edge("d", "p"), edge("d", "m"), edge("p", "m")],
            "model node 'm' takes exactly one input",
        ),
    ],
)
def test_shape_rules(nodes: list[Any], edges: list[Any], words: str) -> None:
    assert words in refusal({"nodes": nodes, "edges": edges})


def test_every_problem_is_reported_at_once() -> None:
    body = full(algorithm="ridge", hyperparameters={"n_trees": 1})
    body["nodes"][1]["config"]["colour"] = "red"
    body["nodes"].append(node("v2", "visualize", kind="residuals"))
    body["edges"].append(edge("data", "v2"))
    problems = definition_problems(WorkflowDefinition.model_construct(**_parsed(body)))
    assert len(problems) == 3, problems
    assert [p.split(":")[0] for p in problems[:2]] == ["node 'prep'", "node 'm1'"]


def _parsed(body: dict[str, Any]) -> dict[str, Any]:
    """The nodes and edges as models, without the definition's own validation."""
    from pipeline.definition import WorkflowEdge, WorkflowNode

    return {
        "nodes": [WorkflowNode.model_validate(n) for n in body["nodes"]],
        "edges": [WorkflowEdge.model_validate(e) for e in body["edges"]],
    }


# --- navigation -----------------------------------------------------------------------------
def test_order_inputs_outputs_downstream() -> None:
    body = full()
    body["nodes"].reverse()  # the order of the list must not break the topological order
    d = WorkflowDefinition.model_validate(body)
    order = d.order()
    assert order == ["data", "prep", "m1", "keep", "chart"]
    assert order == WorkflowDefinition.model_validate(copy.deepcopy(body)).order()
    for e in d.edges:
        assert order.index(e.source) < order.index(e.target)
    assert d.inputs("m1") == ["prep"] and d.inputs("data") == []
    assert d.outputs("m1") == ["chart", "keep"]
    assert d.downstream("prep") == {"m1", "chart", "keep"}
    assert d.downstream("keep") == set()
    assert d.dataset_node("keep") == "data"
    with pytest.raises(KeyError):
        d.node("ghost")


# --- problem types ---------------------------------------------------------------------------
def test_infer_problem_type() -> None:
    regression = ProblemType.REGRESSION
    classification = ProblemType.CLASSIFICATION
    assert infer_problem_type(pd.Series([1.5, 2.0, 3.0])) == regression
    assert infer_problem_type(pd.Series([0.0, 1.0, 1.0, None])) == classification
    assert infer_problem_type(pd.Series(range(21))) == regression
    assert infer_problem_type(pd.Series(list(range(20)) * 2)) == classification
    assert infer_problem_type(pd.Series(["a", "b"] * 30)) == classification
    assert infer_problem_type(pd.Series([f"id{i}" for i in range(50)])) == classification
    assert infer_problem_type(pd.Series([True, False])) == classification
    assert infer_problem_type(pd.Series([None, None], dtype=float)) == classification


def test_infer_problem_type_from_metadata() -> None:
    assert infer_problem_type_from_metadata({"dtype": "str"}) == ProblemType.CLASSIFICATION
    assert infer_problem_type_from_metadata({"dtype": "bool"}) == ProblemType.CLASSIFICATION
    assert infer_problem_type_from_metadata({"dtype": "float64"}) is None
    assert infer_problem_type_from_metadata({"dtype": "int64"}) is None
    assert infer_problem_type_from_metadata({"dtype": "int64", "n_unique": 3}) == (
        ProblemType.CLASSIFICATION
    )
    assert infer_problem_type_from_metadata({"dtype": "float64", "n_unique": 300}) == (
        ProblemType.REGRESSION
    )
    assert infer_problem_type_from_metadata({"dtype": "datetime64[ns]"}) is None
    assert infer_problem_type_from_metadata({}) is None


def test_resolve_problem_type() -> None:
    c, r, k = ProblemType.CLASSIFICATION, ProblemType.REGRESSION, ProblemType.CLUSTERING
    assert resolve_problem_type("kmeans", c, r) == k
    assert resolve_problem_type("random_forest", c, r) == c
    assert resolve_problem_type("random_forest", r, c) == r
    for declared in (None, ProblemType.OTHER, k):
        assert resolve_problem_type("random_forest", declared, r) == r
        assert resolve_problem_type("random_forest", declared, None) is None


# --- runnable ---------------------------------------------------------------------------------
IRIS = DatasetInfo(
    ProblemType.CLASSIFICATION, "species", ("sepal_length", "species"), ProblemType.CLASSIFICATION
)
HOUSES = DatasetInfo(ProblemType.REGRESSION, "price", ("rooms", "price"))


def runnable(body: dict[str, Any], info: DatasetInfo = IRIS) -> list[str]:
    return runnable_problems(WorkflowDefinition.model_validate(body), {"data": info})


def test_runnable_on_matching_datasets() -> None:
    assert runnable(full()) == []
    assert runnable(full(algorithm="ridge"), HOUSES) == []
    check_runnable(WorkflowDefinition.model_validate(full()), {"data": IRIS})


def test_runnable_needs_nodes_and_datasets() -> None:
    assert runnable_problems(WorkflowDefinition(), {}) == ["the workflow has no nodes"]
    draft = full()
    del draft["nodes"][0]["config"]["dataset_id"]
    assert runnable(draft) == ["dataset node 'data' names no dataset (config.dataset_id)"]
    problems = runnable_problems(WorkflowDefinition.model_validate(full()), {})
    assert problems == ["dataset node 'data': nothing is known of its dataset"]
    with pytest.raises(DefinitionError) as caught:
        check_runnable(WorkflowDefinition.model_validate(draft), {})
    assert caught.value.problems and "names no dataset" in str(caught.value)


def test_supervised_models_need_a_target_that_exists() -> None:
    [problem] = runnable(full(), DatasetInfo(ProblemType.CLASSIFICATION, None, ("a", "b")))
    assert "node 'm1': random_forest needs a target column" in problem
    [problem] = runnable(full(), DatasetInfo(ProblemType.CLASSIFICATION, "colour", ("a", "b")))
    assert "target column 'colour' is not a column" in problem
    # Columns not known yet: the worker checks against the data.
    assert runnable(full(), DatasetInfo(ProblemType.CLASSIFICATION, "colour", None)) == []
    # Clustering needs no target.
    kmeans = full(algorithm="kmeans")
    kmeans["nodes"] = kmeans["nodes"][:3] + kmeans["nodes"][4:]
    kmeans["edges"] = [e for e in kmeans["edges"] if e["target"] != "chart"]
    assert runnable(kmeans, DatasetInfo(None, None, ("a", "b"))) == []


@pytest.mark.parametrize(
    ("algorithm", "info", "words"),
    [
        ("linear_regression", IRIS, "linear_regression is for regression"),
        ("ridge", IRIS, "ridge is for regression"),
        ("logistic_regression", HOUSES, "logistic_regression is for classification"),
        (
            "ridge",
            DatasetInfo(None, "species", ("species",), ProblemType.CLASSIFICATION),
            "classification problem",
        ),
        (
            "logistic_regression",
            DatasetInfo(ProblemType.OTHER, "price", ("price",), ProblemType.REGRESSION),
            "regression problem",
        ),
    ],
)
def test_algorithms_suit_the_problem_type(algorithm: str, info: DatasetInfo, words: str) -> None:
    body = full(algorithm=algorithm)
    body["nodes"][3]["config"]["kind"] = "feature_importance"
    problems = runnable(body, info)
    assert any(words in p and "node 'm1'" in p for p in problems), problems


def test_unknown_problem_types_wait_for_the_data() -> None:
    info = DatasetInfo(None, "y", ("x", "y"), None)
    assert runnable(full(algorithm="ridge"), info) == []
    assert runnable(full(algorithm="logistic_regression"), info) == []


@pytest.mark.parametrize(
    ("algorithm", "kind", "info", "ok"),
    [
        ("random_forest", "confusion_matrix", IRIS, True),
        ("random_forest", "confusion_matrix", HOUSES, False),
        ("random_forest", "residuals", HOUSES, True),
        ("random_forest", "residuals", IRIS, False),
        ("random_forest", "feature_importance", IRIS, True),
        ("ridge", "feature_importance", HOUSES, True),
        ("kmeans", "feature_importance", IRIS, False),
        ("kmeans", "confusion_matrix", IRIS, False),
        ("kmeans", "residuals", HOUSES, False),
    ],
)
def test_visualizations_suit_the_model(
    algorithm: str, kind: str, info: DatasetInfo, ok: bool
) -> None:
    body = full(algorithm=algorithm)
    body["nodes"][3]["config"]["kind"] = kind
    problems = runnable(body, info)
    if ok:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(f"node 'chart': {kind} shows")


def test_hyperparameters_are_checked_against_the_chosen_estimator() -> None:
    body = full(algorithm="random_forest", hyperparameters={"criterion": "squared_error"})
    body["nodes"][3]["config"]["kind"] = "feature_importance"
    assert runnable(body, HOUSES) == []
    [problem] = runnable(body, IRIS)
    assert problem.startswith("node 'm1': config.hyperparameters:")
    assert "RandomForestClassifier" in problem


def test_dataset_info_from_metadata() -> None:
    metadata = {
        "columns": [
            {"name": "rooms", "dtype": "int64"},
            {"name": "label", "dtype": "str", "kind": "categorical"},
        ]
    }
    info = DatasetInfo.from_metadata(None, "label", metadata)
    assert info.columns == ("rooms", "label")
    assert info.target_problem_type == ProblemType.CLASSIFICATION
    for broken in (None, {}, {"columns": "x"}, {"columns": [{"dtype": "int64"}]}):
        assert DatasetInfo.from_metadata(None, "label", broken).columns is None  # type: ignore[arg-type]
    frame = pd.DataFrame({"x": [1.5, 2.5], "y": [0.5, 1.5]})
    assert DatasetInfo.from_frame(frame, None, "y").target_problem_type == ProblemType.REGRESSION


def test_node_types_match_the_database_enum() -> None:
    from pipeline.definition import CONFIG_MODELS, INPUT_TYPES

    assert set(CONFIG_MODELS) == set(NodeType) == set(INPUT_TYPES)
