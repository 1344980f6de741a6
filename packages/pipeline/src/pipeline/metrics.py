"""Holdout metrics of a fitted model, and JSON-safe values for ``job_nodes.output_data``.

Each function returns ``(metrics, notes)``: ``metrics`` holds only finite floats
(what experiments rank runs by), and ``notes`` says in words why a metric is missing
(e.g. ROC AUC with a single class among the test rows).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
    silhouette_score,
)

#: silhouette is quadratic in the number of rows: computed on a fixed sample beyond this.
SILHOUETTE_SAMPLE = 2000

Metrics = dict[str, float]


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON: numpy scalars and arrays unwrapped, NaN and infinities as
    None, dates as ISO text, keys as text; anything else as its text."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset | np.ndarray):
        return [json_safe(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _finite(metrics: dict[str, Any], notes: list[str]) -> Metrics:
    out: Metrics = {}
    for name, number in metrics.items():
        number = float(number)
        if math.isfinite(number):
            out[name] = number
        else:
            notes.append(f"{name} omitted: not a finite number on the test rows")
    return out


def classification(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, classes: Sequence[Any]
) -> tuple[Metrics, list[str]]:
    """Accuracy, F1 (binary: of the positive class, ``classes[1]``; else weighted) and
    ROC AUC (binary from the positive class's probability; else one-vs-rest, weighted)."""
    notes: list[str] = []
    found: dict[str, Any] = {"accuracy": accuracy_score(y_true, y_pred)}
    labels = set(np.unique(np.concatenate([np.asarray(y_true), np.asarray(y_pred)])).tolist())
    binary = len(classes) == 2 and labels <= set(np.asarray(classes).tolist())
    if binary:
        found["f1"] = f1_score(y_true, y_pred, pos_label=classes[1], zero_division=0)
        notes.append(f"binary metrics: positive class {json_safe(classes[1])!r}")
    else:
        found["f1"] = f1_score(y_true, y_pred, average="weighted", zero_division=0)
    if proba is None:
        notes.append("roc_auc omitted: the estimator gives no probabilities")
    elif len(np.unique(y_true)) < 2:
        notes.append("roc_auc omitted: the test rows hold a single class")
    else:
        try:
            if binary:
                found["roc_auc"] = roc_auc_score(np.asarray(y_true) == classes[1], proba[:, 1])
            else:
                found["roc_auc"] = roc_auc_score(
                    y_true, proba, multi_class="ovr", average="weighted", labels=list(classes)
                )
        except ValueError as exc:
            notes.append(f"roc_auc omitted: {exc}")
    return _finite(found, notes), notes


def regression(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[Metrics, list[str]]:
    """R², RMSE and MAE (R² needs two test rows)."""
    notes: list[str] = []
    found: dict[str, Any] = {
        "rmse": math.sqrt(mean_squared_error(y_true, y_pred)),
        "mae": mean_absolute_error(y_true, y_pred),
    }
    if len(y_true) >= 2:
        found["r2"] = r2_score(y_true, y_pred)
    else:
        notes.append("r2 omitted: it needs at least two test rows")
    return _finite(found, notes), notes


def clustering(
    features: Any, labels: np.ndarray, inertia: float, n_clusters: int
) -> tuple[Metrics, list[str]]:
    """Silhouette on the test rows (needs 2 <= clusters found < rows), inertia, n_clusters."""
    notes: list[str] = []
    found: dict[str, Any] = {"inertia": inertia, "n_clusters": n_clusters}
    rows = len(labels)
    distinct = len(np.unique(labels))
    if 2 <= distinct <= rows - 1:
        found["silhouette"] = silhouette_score(
            features,
            labels,
            sample_size=SILHOUETTE_SAMPLE if rows > SILHOUETTE_SAMPLE else None,
            random_state=0,
        )
    else:
        notes.append(
            f"silhouette omitted: the test rows fall in {distinct} cluster(s) out of {rows} rows"
        )
    return _finite(found, notes), notes
