"""Issue 15: scoring against criteria and the plots, on constructed frames (no database)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from pipeline import plots
from pipeline.evaluate import EvaluationFailed, score

PNG = b"\x89PNG\r\n\x1a\n"


class Fixed:
    """A "model" whose predictions are given: the criteria's arithmetic is checked exactly."""

    def __init__(self, predictions: list, proba: list | None = None, classes: list | None = None):
        self.predictions = np.asarray(predictions)
        self.proba = None if proba is None else np.asarray(proba, dtype=float)
        if classes is not None:
            self.classes_ = np.asarray(classes)

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return self.predictions[: len(x)]

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        assert self.proba is not None
        return self.proba[: len(x)]


def _classifier_frame(n: int = 80) -> tuple[pd.DataFrame, object]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"a": rng.normal(size=n), "region": np.where(np.arange(n) % 2 == 0, "EU", "US")}
    )
    frame["label"] = np.where(frame["a"] + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    model = make_pipeline(
        ColumnTransformer(
            [("n", "passthrough", ["a"]), ("c", OneHotEncoder(), ["region"])], remainder="drop"
        ),
        LogisticRegression(),
    ).fit(frame.drop(columns="label"), frame["label"])
    return frame, model


def _regression_frame(n: int = 60) -> tuple[pd.DataFrame, object]:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n)})
    frame["y"] = 3 * frame["x"] + rng.normal(scale=0.1, size=n)
    model = LinearRegression().fit(frame[["x", "z"]], frame["y"])
    return frame, model


def test_metric_threshold_passes_and_fails():
    frame = pd.DataFrame({"f": [0, 1, 2, 3], "y": ["a", "b", "a", "b"]})
    model = Fixed(["a", "b", "a", "a"], classes=["a", "b"])  # accuracy 0.75
    scored = score(
        model,
        frame,
        "y",
        "classification",
        [
            {
                "id": 1,
                "name": "easy",
                "kind": "metric_threshold",
                "metric": "accuracy",
                "operator": ">=",
                "threshold": 0.75,
            },
            {
                "id": 2,
                "name": "hard",
                "kind": "metric_threshold",
                "metric": "accuracy",
                "operator": ">",
                "threshold": 0.75,
            },
            {
                "id": 3,
                "name": "absent",
                "kind": "metric_threshold",
                "metric": "rmse",
                "operator": "<",
                "threshold": 1.0,
            },
        ],
        importance=False,
    )
    by_name = {r["name"]: r for r in scored.criteria_results}
    assert by_name["easy"]["passed"] is True and by_name["easy"]["value"] == 0.75
    assert by_name["hard"]["passed"] is False
    assert by_name["absent"]["passed"] is False and "rmse" in by_name["absent"]["reason"]
    assert scored.passed is False


def test_row_rules_per_row_and_on_a_slice():
    frame = pd.DataFrame({"region": ["EU", "US", "EU", "US", "EU"], "y": [1.0, 2.0, 3.0, 4.0, 5.0]})
    model = Fixed([1.5, 2.0, 6.0, 4.2, 5.0])  # errors 0.5, 0, 3, 0.2, 0
    criteria = [
        {
            "id": 1,
            "name": "close",
            "kind": "row_rule",
            "rule": "absolute_error_le",
            "tolerance": 0.5,
        },
        {
            "id": 2,
            "name": "exact in EU",
            "kind": "row_rule",
            "rule": "predicted_equals_actual",
            "slice": {"column": "region", "equals": "EU"},
        },
    ]
    scored = score(model, frame, "y", "regression", criteria, importance=False)
    rows = scored.rows
    assert rows["row_index"].tolist() == [0, 1, 2, 3, 4]
    assert rows["error"].tolist() == pytest.approx([0.5, 0.0, 3.0, 0.2, 0.0])
    assert rows["criteria_passed"].tolist() == [
        [True, False],
        [True, None],  # US: outside the second rule's slice
        [False, False],
        [True, None],
        [True, True],
    ]
    assert rows["passed"].tolist() == [False, True, False, True, True]
    results = {r["name"]: r for r in scored.criteria_results}
    assert results["close"] == {**results["close"], "passed": False, "failed_rows": 1, "rows": 5}
    assert results["exact in EU"]["failed_rows"] == 2 and results["exact in EU"]["rows"] == 3
    assert scored.failed_rows == 2


def test_per_row_results_match_the_predictions():
    frame, model = _classifier_frame()
    frame.loc[3, "label"] = None  # no target: left out, the other rows keep their index
    scored = score(model, frame, "label", "classification", importance=False)
    kept = frame.drop(index=3)
    expected = model.predict(kept.drop(columns="label"))
    assert scored.rows["row_index"].tolist() == kept.index.tolist()
    assert scored.rows["prediction"].tolist() == list(expected)
    assert scored.rows["actual"].tolist() == kept["label"].tolist()
    assert scored.rows["error"].tolist() == [
        float(p != a) for p, a in zip(expected, kept["label"], strict=True)
    ]
    proba = model.predict_proba(kept.drop(columns="label"))[:, 1]
    assert scored.rows["score"].to_numpy() == pytest.approx(proba)
    assert scored.metrics["accuracy"] == pytest.approx(float((expected == kept["label"]).mean()))


def test_a_slice_column_that_does_not_exist_fails_the_criterion():
    frame = pd.DataFrame({"y": [1.0, 2.0]})
    scored = score(
        Fixed([1.0, 2.0]),
        frame,
        "y",
        "regression",
        [
            {
                "id": 1,
                "name": "s",
                "kind": "metric_threshold",
                "metric": "mae",
                "operator": "<=",
                "threshold": 1,
                "slice": {"column": "nope", "equals": 1},
            }
        ],
        importance=False,
    )
    assert scored.criteria_results[0]["passed"] is False
    assert "nope" in scored.criteria_results[0]["reason"]


def test_unscorable_data_is_a_clear_failure():
    frame = pd.DataFrame({"y": ["a", "b"]})
    with pytest.raises(EvaluationFailed, match="no target column 'target'"):
        score(Fixed([1, 2]), frame, "target", "regression")
    with pytest.raises(EvaluationFailed, match="numeric"):
        score(Fixed(["a", "b"]), frame, "y", "regression")
    with pytest.raises(EvaluationFailed, match="no row"):
        score(Fixed([1.0]), pd.DataFrame({"y": [None]}), "y", "regression")


def _renders(kind: str, data: dict) -> None:
    png = plots.render(kind, data, "png")
    assert png.startswith(PNG)
    svg = plots.render(kind, data, "svg")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert plots.render(kind, data, "json").startswith(b'{"kind"')


def test_every_classification_plot_renders():
    frame, model = _classifier_frame()
    scored = score(model, frame, "label", "classification")
    for kind in ("roc", "pr", "confusion_matrix", "calibration", "feature_importance"):
        assert scored.plot_data[kind] is not None, kind
        _renders(kind, scored.plot_data[kind])
    assert scored.plot_data["feature_importance"]["features"][0] == "a"


def test_every_regression_plot_renders_and_trials_too():
    frame, model = _regression_frame()
    scored = score(model, frame, "y", "regression")
    for kind in ("residuals", "feature_importance"):
        _renders(kind, scored.plot_data[kind])
    trials = plots.trials_data(
        [{"metrics": {"r2": 0.5}}, {"metrics": {"r2": 0.4}}, {"metrics": {"r2": 0.9}}], "r2"
    )
    assert trials["best_so_far"] == [0.5, 0.5, 0.9]
    _renders("trials", trials)


def test_multiclass_curves_are_one_vs_rest():
    frame = pd.DataFrame({"a": np.arange(30) % 3 + np.linspace(0, 0.3, 30)})
    frame["y"] = (np.arange(30) % 3).astype(str)
    model = LogisticRegression().fit(frame[["a"]], frame["y"])
    scored = score(model, frame, "y", "classification", importance=False)
    assert len(scored.plot_data["roc"]["curves"]) == 3
    _renders("roc", scored.plot_data["roc"])


def test_a_kind_for_another_problem_type_is_named():
    assert plots.kind_problem("roc", "regression") is not None
    assert plots.kind_problem("residuals", "classification") is not None
    assert plots.kind_problem("feature_importance", "regression") is None
    assert "unknown" in (plots.kind_problem("pie", "regression") or "")
