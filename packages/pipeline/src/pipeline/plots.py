"""Plots of an evaluation as PNG, SVG or JSON (matplotlib, headless; docs/evaluation.md).

The JSON is the data (:func:`pipeline.evaluate.score`'s ``plot_data[kind]``, or
:func:`trials_data` for a search's trials); :func:`render` draws it. matplotlib's
object API with the Agg canvas only (no ``pyplot``: no global figure state, no
display, safe in the API's threads).

Kinds and the problem types they mean something for (:data:`KIND_PROBLEM_TYPES`):
``roc``, ``pr``, ``confusion_matrix``, ``calibration`` (classification),
``residuals`` (regression), ``feature_importance`` and ``trials`` (both).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from database.models.enums import ProblemType

PlotKind = Literal[
    "roc", "pr", "confusion_matrix", "calibration", "residuals", "feature_importance", "trials"
]
PlotFormat = Literal["png", "svg", "json"]
KINDS: tuple[str, ...] = (
    "roc",
    "pr",
    "confusion_matrix",
    "calibration",
    "residuals",
    "feature_importance",
    "trials",
)
FORMATS = ("png", "svg", "json")
MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml", "json": "application/json"}

_BOTH = (ProblemType.CLASSIFICATION, ProblemType.REGRESSION)
KIND_PROBLEM_TYPES: dict[str, tuple[ProblemType, ...]] = {
    "roc": (ProblemType.CLASSIFICATION,),
    "pr": (ProblemType.CLASSIFICATION,),
    "confusion_matrix": (ProblemType.CLASSIFICATION,),
    "calibration": (ProblemType.CLASSIFICATION,),
    "residuals": (ProblemType.REGRESSION,),
    "feature_importance": _BOTH,
    "trials": _BOTH,
}
#: Cells of a confusion matrix beyond which the numbers are not written in.
MAX_ANNOTATED_CELLS = 400


def kind_problem(kind: str, problem_type: ProblemType | str | None) -> str | None:
    """Why ``kind`` means nothing for ``problem_type``, or None."""
    if kind not in KIND_PROBLEM_TYPES:
        return f"unknown plot kind {kind!r}; one of {', '.join(KINDS)}"
    allowed = KIND_PROBLEM_TYPES[kind]
    if problem_type is None or ProblemType(problem_type) not in allowed:
        return f"a {kind} plot is for {' or '.join(allowed)} models, not {problem_type}"
    return None


def trials_data(runs: Sequence[Mapping[str, Any]], metric: str | None = None) -> dict[str, Any]:
    """The trial history of a search from its experiment runs (oldest first), each a
    mapping with ``metrics`` (the score under ``metric``, else the first metric)."""
    scores: list[float | None] = []
    for run in runs:
        found = run.get("metrics") or {}
        name = metric if metric in found else next(iter(found), None)
        value = found.get(name) if name else None
        scores.append(float(value) if isinstance(value, int | float) else None)
    best: list[float | None] = []
    current: float | None = None
    for s in scores:
        if s is not None and (current is None or s > current):
            current = s
        best.append(current)
    return {
        "metric": metric,
        "trial": list(range(1, len(scores) + 1)),
        "score": scores,
        "best_so_far": best,
    }


def _draw(fig: Figure, kind: str, data: Mapping[str, Any]) -> None:
    ax = fig.add_subplot()
    if kind in ("roc", "pr"):
        for curve in data["curves"]:
            ax.plot(curve["x"], curve["y"], label=str(curve["label"])[:40])
        if kind == "roc":
            ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
            ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
        else:
            ax.set(xlabel="Recall", ylabel="Precision", title="Precision-recall curve")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="best", fontsize="small")
    elif kind == "confusion_matrix":
        labels = [str(v)[:20] for v in data["labels"]]
        matrix = data["matrix"]
        image = ax.imshow(matrix, cmap="Blues")
        fig.colorbar(image, ax=ax)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        if len(labels) ** 2 <= MAX_ANNOTATED_CELLS:
            top = max((max(r) for r in matrix), default=0)
            for i, row in enumerate(matrix):
                for j, value in enumerate(row):
                    color = "white" if top and value > top / 2 else "black"
                    ax.text(j, i, str(value), ha="center", va="center", color=color)
        ax.set(xlabel="Predicted", ylabel="Actual", title="Confusion matrix")
    elif kind == "calibration":
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        ax.plot(data["mean_predicted"], data["fraction_positive"], marker="o")
        ax.set(
            xlabel="Mean predicted probability",
            ylabel="Fraction of positives",
            title="Calibration",
            xlim=(0, 1),
            ylim=(0, 1),
        )
    elif kind == "residuals":
        ax.scatter(data["predicted"], data["residual"], s=8, alpha=0.6)
        ax.axhline(0, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel="Predicted", ylabel="Actual - predicted", title="Residuals")
    elif kind == "feature_importance":
        features = [str(f)[:40] for f in data["features"]][::-1]
        ax.barh(
            features, list(data["importance"])[::-1], xerr=list(data.get("std") or [])[::-1] or None
        )
        ax.set(xlabel="Importance (score drop when shuffled)", title="Feature importance")
    elif kind == "trials":
        ax.scatter(
            data["trial"],
            [s if s is not None else float("nan") for s in data["score"]],
            s=12,
            label="trial",
        )
        best = [b if b is not None else float("nan") for b in data["best_so_far"]]
        ax.step(data["trial"], best, where="post", color="C1", label="best so far")
        ax.set(xlabel="Trial", ylabel=data.get("metric") or "score", title="Search trials")
        ax.legend(loc="best", fontsize="small")
    else:
        raise ValueError(f"unknown plot kind {kind!r}")


def render(kind: str, data: Mapping[str, Any], fmt: str) -> bytes:
    """``data`` as ``fmt``: ``json`` (the data itself), ``png`` or ``svg``."""
    if fmt == "json":
        return json.dumps({"kind": kind, "data": data}, allow_nan=False).encode()
    if fmt not in ("png", "svg"):
        raise ValueError(f"unknown format {fmt!r}")
    fig = Figure(figsize=(6.4, 4.8), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    _draw(fig, kind, data)
    out = io.BytesIO()
    fig.savefig(out, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    return out.getvalue()
