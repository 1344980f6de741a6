"""Scoring a fitted model on a frame against a user's criteria (issue 15; docs/evaluation.md).

Pure: no database, no storage. :func:`score` takes a fitted model (anything with
``predict``; ``predict_proba`` is used when there), the frame with the raw columns
and the target, the problem type and the criteria, and returns :class:`Scored`:

- ``metrics``: the whole set's (``pipeline.metrics``: accuracy, f1, roc_auc /
  rmse, mae, r2);
- ``criteria_results``: one per criterion, ``passed`` and why (the metric's value
  on its slice, or how many rows failed a row rule);
- ``rows``: one per scored row (``row_index`` is the row's position in the frame,
  rows without a target value are left out), with ``prediction``, ``actual``,
  ``score`` (binary: the positive class's probability), ``error`` (absolute error;
  classification: 1 when the class is wrong, else 0), ``criteria_passed`` (one
  entry per row rule, in the order given; None when the row is outside the rule's
  slice) and ``passed`` (every applicable row rule passed);
- ``plot_data``: what each plot kind draws (:mod:`pipeline.plots`), bounded in size.

A criterion is a mapping with the fields of ``evaluation_criteria``: ``kind``
(``metric_threshold``: ``metric``, ``operator``, ``threshold``; ``row_rule``:
``rule`` ``absolute_error_le`` with ``tolerance``, or ``predicted_equals_actual``)
and an optional ``slice`` ``{"column", "equals"}``. A criterion that cannot be
decided (a metric the problem type does not have, a slice column that does not
exist, a slice with no rows) fails, with the reason in ``reason``.
"""

from __future__ import annotations

import math
import operator as op
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

from database.models.enums import ProblemType
from pipeline import metrics as measure

#: Points a curve keeps at most (evenly picked), so plot data stays small.
MAX_CURVE_POINTS = 200
#: Points of a residuals plot at most (a fixed sample beyond).
MAX_RESIDUAL_POINTS = 1000
#: Rows permutation importance is computed on at most (a fixed sample beyond).
IMPORTANCE_ROWS = 2000
#: Features the importance plot lists at most (the most important).
MAX_IMPORTANCE_FEATURES = 30
#: Bins of the calibration curve.
CALIBRATION_BINS = 10

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": op.ge,
    ">": op.gt,
    "<=": op.le,
    "<": op.lt,
}
ROW_RULES = ("absolute_error_le", "predicted_equals_actual")


class EvaluationFailed(Exception):
    """The model cannot be scored on this frame; the message is for the user."""


@dataclass
class Scored:
    problem_type: ProblemType
    metrics: dict[str, float]
    criteria_results: list[dict[str, Any]]
    rows: pd.DataFrame
    plot_data: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r["passed"] for r in self.criteria_results)

    @property
    def failed_rows(self) -> int:
        return int((~self.rows["passed"]).sum())


def _sample(values: np.ndarray, limit: int) -> np.ndarray:
    if len(values) <= limit:
        return values
    return values[np.linspace(0, len(values) - 1, limit).round().astype(int)]


def _curve(x: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    picked = _sample(np.arange(len(x)), MAX_CURVE_POINTS)
    return {"x": [float(v) for v in x[picked]], "y": [float(v) for v in y[picked]]}


def _slice_mask(frame: pd.DataFrame, spec: Mapping[str, Any] | None) -> pd.Series | str:
    """The rows of the slice, or why there is none."""
    if not spec:
        return pd.Series(True, index=frame.index)
    column = spec.get("column")
    if column not in frame.columns:
        return f"slice column {column!r} is not a column of the data"
    equals = spec.get("equals")
    values = frame[column]
    mask = values == equals
    if not mask.any() and not isinstance(equals, str):
        mask = values.astype(str) == str(equals)
    mask = mask.fillna(False).astype(bool)
    if not mask.any():
        return f"no row has {column} = {equals!r}"
    return mask


def _metrics(
    problem_type: ProblemType,
    y: np.ndarray,
    pred: np.ndarray,
    proba: np.ndarray | None,
    classes: Sequence[Any],
) -> tuple[dict[str, float], list[str]]:
    if problem_type == ProblemType.CLASSIFICATION:
        return measure.classification(y, pred, proba, classes)
    return measure.regression(y.astype(float), pred.astype(float))


def _plot_data(
    problem_type: ProblemType,
    y: np.ndarray,
    pred: np.ndarray,
    proba: np.ndarray | None,
    classes: Sequence[Any],
    importance: dict[str, Any] | None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"feature_importance": importance}
    if problem_type == ProblemType.REGRESSION:
        residual = y.astype(float) - pred.astype(float)
        picked = _sample(np.arange(len(y)), MAX_RESIDUAL_POINTS)
        data["residuals"] = {
            "predicted": [float(v) for v in pred.astype(float)[picked]],
            "residual": [float(v) for v in residual[picked]],
        }
        return measure.json_safe(data)
    labels = list(classes) if len(classes) else sorted(set(y.tolist()) | set(pred.tolist()))
    matrix = confusion_matrix(y, pred, labels=labels)
    data["confusion_matrix"] = {
        "labels": [str(v) for v in labels],
        "matrix": matrix.astype(int).tolist(),
    }
    if proba is not None and len(classes) >= 2 and len(np.unique(y)) >= 2:
        # One curve per class (one-vs-rest); binary: the positive class only.
        targets = [1] if len(classes) == 2 else range(len(classes))
        roc, pr = [], []
        for i in targets:
            positive = y == classes[i]
            if positive.all() or not positive.any():
                continue
            fpr, tpr, _ = roc_curve(positive, proba[:, i])
            precision, recall, _ = precision_recall_curve(positive, proba[:, i])
            roc.append({"label": str(classes[i]), **_curve(fpr, tpr)})
            pr.append({"label": str(classes[i]), **_curve(recall, precision)})
        data["roc"] = {"curves": roc} if roc else None
        data["pr"] = {"curves": pr} if pr else None
        # Binary: the positive class's probability; else the top class's confidence.
        if len(classes) == 2:
            confidence, hit = proba[:, 1], (y == classes[1])
        else:
            confidence = proba.max(axis=1)
            hit = np.asarray(classes)[proba.argmax(axis=1)] == y
        edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, CALIBRATION_BINS - 1)
        mean_predicted, fraction, counts = [], [], []
        for b in range(CALIBRATION_BINS):
            inside = which == b
            if inside.any():
                mean_predicted.append(float(confidence[inside].mean()))
                fraction.append(float(hit[inside].mean()))
                counts.append(int(inside.sum()))
        data["calibration"] = {
            "mean_predicted": mean_predicted,
            "fraction_positive": fraction,
            "counts": counts,
        }
    else:
        data["roc"] = data["pr"] = data["calibration"] = None
    return measure.json_safe(data)


def _importance(model: Any, x: pd.DataFrame, y: np.ndarray) -> dict[str, Any] | None:
    """Permutation importance of the raw columns (model-agnostic), on a fixed sample."""
    if len(x) < 2 or x.shape[1] == 0:
        return None
    if len(x) > IMPORTANCE_ROWS:
        rows = np.random.default_rng(0).choice(len(x), IMPORTANCE_ROWS, replace=False)
        x, y = x.iloc[np.sort(rows)], y[np.sort(rows)]
    try:
        found = permutation_importance(model, x, y, n_repeats=3, random_state=0)
    except Exception:  # an estimator that cannot be scored this way: no plot
        return None
    order = np.argsort(found.importances_mean)[::-1][:MAX_IMPORTANCE_FEATURES]
    return {
        "features": [str(x.columns[i]) for i in order],
        "importance": [float(found.importances_mean[i]) for i in order],
        "std": [float(found.importances_std[i]) for i in order],
        "method": "permutation",
    }


def _text(values: np.ndarray) -> list[str | None]:
    out: list[str | None] = []
    for v in values.tolist():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            out.append(repr(v))
        else:
            out.append(str(v))
    return out


def score(
    model: Any,
    frame: pd.DataFrame,
    target: str,
    problem_type: ProblemType | str,
    criteria: Sequence[Mapping[str, Any]] = (),
    *,
    importance: bool = True,
) -> Scored:
    problem_type = ProblemType(problem_type)
    if problem_type not in (ProblemType.CLASSIFICATION, ProblemType.REGRESSION):
        raise EvaluationFailed(f"a {problem_type} model cannot be evaluated against a target")
    if target not in frame.columns:
        raise EvaluationFailed(f"the data has no target column {target!r}")
    known = frame[target].notna().to_numpy()
    positions = np.flatnonzero(known)
    data = frame.iloc[positions].reset_index(drop=True)
    if data.empty:
        raise EvaluationFailed("no row has a target value")
    x = data.drop(columns=[target])
    y = data[target].to_numpy()
    try:
        pred = np.asarray(model.predict(x))
    except Exception as exc:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:500]
        raise EvaluationFailed(f"the model could not predict on this data: {text}") from None
    proba: np.ndarray | None = None
    classes: list[Any] = []
    if problem_type == ProblemType.CLASSIFICATION:
        classes = list(getattr(model, "classes_", []))
        if hasattr(model, "predict_proba"):
            try:
                proba = np.asarray(model.predict_proba(x), dtype=float)
            except Exception:
                proba = None
        error = (pred != y).astype(float)
    else:
        try:
            y = y.astype(float)
            pred = pred.astype(float)
        except (TypeError, ValueError):
            raise EvaluationFailed("a regression target must be numeric") from None
        error = np.abs(pred - y)
    metrics, notes = _metrics(problem_type, y, pred, proba, classes)

    results: list[dict[str, Any]] = []
    rule_columns: list[np.ndarray] = []
    for criterion in criteria:
        name = criterion.get("name")
        base = {"criterion_id": str(criterion.get("id")), "name": name, "kind": criterion["kind"]}
        mask = _slice_mask(data, criterion.get("slice"))
        if criterion["kind"] == "metric_threshold":
            if isinstance(mask, str):
                results.append({**base, "passed": False, "value": None, "reason": mask})
                continue
            picked = mask.to_numpy()
            sub_proba = proba[picked] if proba is not None else None
            found, _ = _metrics(problem_type, y[picked], pred[picked], sub_proba, classes)
            value = found.get(criterion["metric"])
            if value is None:
                results.append(
                    {
                        **base,
                        "passed": False,
                        "value": None,
                        "reason": f"metric {criterion['metric']!r} is not available here",
                    }
                )
                continue
            passed = OPERATORS[criterion["operator"]](value, float(criterion["threshold"]))
            results.append(
                {**base, "passed": bool(passed), "value": value, "rows": int(picked.sum())}
            )
            continue
        rule = criterion["rule"]
        if rule == "absolute_error_le":
            ok = error <= float(criterion["tolerance"])
        elif rule == "predicted_equals_actual":
            ok = pred == y
        else:
            raise ValueError(f"unknown row rule {rule!r}")
        column = np.where(ok, True, False).astype(object)
        if isinstance(mask, str):
            column[:] = None
            results.append({**base, "passed": False, "failed_rows": 0, "reason": mask})
        else:
            column[~mask.to_numpy()] = None
            failed = int(((column == False) & mask.to_numpy()).sum())  # noqa: E712
            results.append(
                {**base, "passed": failed == 0, "failed_rows": failed, "rows": int(mask.sum())}
            )
        rule_columns.append(column)

    if rule_columns:
        matrix = np.column_stack(rule_columns)
        row_passed = ~(matrix == False).any(axis=1)  # noqa: E712
        per_row = [list(r) for r in matrix]
    else:
        row_passed = np.ones(len(y), dtype=bool)
        per_row = [[] for _ in range(len(y))]
    rows = pd.DataFrame(
        {
            "row_index": positions.astype(np.int64),
            "prediction": _text(pred),
            "actual": _text(y),
            "score": proba[:, 1] if proba is not None and proba.shape[1] == 2 else None,
            "error": error.astype(float),
            "criteria_passed": per_row,
            "passed": row_passed,
        }
    )
    plot = _plot_data(
        problem_type,
        y,
        pred,
        proba,
        classes,
        _importance(model, x, y) if importance else None,
    )
    return Scored(
        problem_type=problem_type,
        metrics=metrics,
        criteria_results=measure.json_safe(results),
        rows=rows,
        plot_data=plot,
        notes=notes,
    )


def load_frame(storage: Any, location: str) -> pd.DataFrame:
    """A dataset version's processed Parquet file (``dataset_versions.s3_path``)."""
    import io

    with storage.open_read(location) as stream:
        return pd.read_parquet(io.BytesIO(stream.read()))
