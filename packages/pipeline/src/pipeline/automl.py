"""The ``automl`` node: a search over learners and hyperparameters, with FLAML.

Pure like :mod:`pipeline.execute` (no database): the worker's child calls
:func:`search` from :func:`pipeline.execute.execute_node` and forwards each trial
(:func:`on_trial`, plain dicts) and the progress to the parent, which records the
trials as experiment runs (:mod:`database.automl`).

Why FLAML (not Optuna): FLAML searches the learner *and* its hyperparameters together
under one wall-clock budget, with a cost-frugal order (cheap learners and cheap
configurations first, expensive ones once they promise to pay), and it wraps the
scikit-learn-style estimators we already ship. Optuna is a general optimizer: the
choice of learners, the budget accounting, the cross-validation and the refit would
all be ours to write.

What the node does, on a preprocess node's split (or a dataset's default split):

1. the preprocess node's ``ColumnTransformer`` is fitted on the training rows and
   FLAML searches on the transformed matrix, with ``eval_method="cv"`` and
   ``n_splits=folds`` (stratified for classification): every trial's score is a
   cross-validated score on the training rows only;
2. each trial reaches :func:`on_trial` (learner, its hyperparameters, the CV score,
   seconds, status) as soon as FLAML has scored it: FLAML's ``_log_trial`` hook,
   called once per trial with ``log_type="all"`` (a private method: FLAML is pinned
   to a minor range, and ``tests/pipeline/test_automl.py`` fails if it stops being
   called);
3. FLAML refits the best configuration on all the training rows; the node's model is
   ``Pipeline([("preprocess", transformer), ("model", estimator)])`` like a model
   node's (a classifier wrapped in :class:`LabelDecoded`, since FLAML learns on
   encoded labels), scored on the held-out test rows.

Learners: the ones of FLAML that need nothing beyond scikit-learn, LightGBM and
XGBoost (:data:`LEARNERS`). Threads: ``n_jobs`` (the worker's slot). With
``DASK_SCHEDULER_ADDRESS`` set, the search runs inside ``joblib.parallel_backend("dask")``
with a ``distributed.Client`` on that scheduler: every joblib-parallel fit
(random forests, extra trees) runs on the cluster's workers.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder

from database.models.enums import ProblemType

#: FLAML's learners the platform offers (no extra install beyond ours).
Learner = Literal[
    "lgbm", "xgboost", "xgb_limitdepth", "rf", "extra_tree", "lrl1", "lrl2", "kneighbor"
]
LEARNERS: tuple[str, ...] = get_args(Learner)
#: Learners for classification only.
CLASSIFICATION_ONLY = frozenset({"lrl1", "lrl2"})
#: What a search tries when the node names no learners.
DEFAULT_LEARNERS: dict[ProblemType, tuple[str, ...]] = {
    ProblemType.CLASSIFICATION: ("lgbm", "rf", "xgboost", "extra_tree", "xgb_limitdepth", "lrl1"),
    ProblemType.REGRESSION: ("lgbm", "rf", "xgboost", "extra_tree", "xgb_limitdepth"),
}

Metric = Literal[
    "accuracy", "roc_auc", "log_loss", "f1", "macro_f1", "micro_f1", "r2", "rmse", "mae", "mse"
]
METRICS: tuple[str, ...] = get_args(Metric)
#: The problem type each metric measures.
METRIC_PROBLEM: dict[str, ProblemType] = {
    **{
        m: ProblemType.CLASSIFICATION
        for m in ("accuracy", "roc_auc", "log_loss", "f1", "macro_f1", "micro_f1")
    },
    **{m: ProblemType.REGRESSION for m in ("r2", "rmse", "mae", "mse")},
}
#: Metrics FLAML minimizes as ``1 - score`` (the others it minimizes as they are).
ONE_MINUS = frozenset({"accuracy", "roc_auc", "f1", "macro_f1", "micro_f1", "r2"})
#: Metrics that only exist for two classes.
BINARY_ONLY = frozenset({"roc_auc", "f1"})
DEFAULT_METRIC = {ProblemType.CLASSIFICATION: "accuracy", ProblemType.REGRESSION: "r2"}

#: ``on_trial(record)``: one finished trial, plain values only (see :func:`_trial_record`).
OnTrial = Callable[[dict[str, Any]], None]
#: ``progress(fraction, message)`` as in :mod:`pipeline.execute`.
Progress = Callable[[float, str | None], None]


@dataclass
class BestSoFar:
    """A trial that beat every earlier one, with the model it fitted (see
    :func:`search`'s ``on_best``): kept by a search that ends before FLAML's refit."""

    #: The trial's number (as in its :func:`_trial_record`).
    trial: int
    learner: str
    #: Its hyperparameters (FLAML's names).
    config: dict[str, Any]
    #: Its cross-validated score.
    score: float
    #: Preprocess + the trial's model as fitted on the training part of its last
    #: cross-validation fold ((folds - 1) / folds of the rows it was given): no refit.
    pipeline: Pipeline
    #: Rows the trial's folds came from (FLAML samples big data in its early trials).
    sample_size: int | None


#: ``on_best(found)``: told of each new best trial, in the search's process.
OnBest = Callable[[BestSoFar], None]


def _quiet(fraction: float, message: str | None = None) -> None:
    """The progress callback when none is given."""


def _ignore(record: dict[str, Any]) -> None:
    """The trial callback when none is given."""


class SearchFailed(Exception):
    """A search that found no model; the message is for the user."""


def default_metric(problem_type: ProblemType) -> str:
    return DEFAULT_METRIC[problem_type]


def greater_is_better(metric: str) -> bool:
    return metric in ONE_MINUS


def score_of(metric: str, loss: float) -> float:
    """The metric's value from FLAML's loss (``1 - score`` for a score to maximize)."""
    return 1.0 - loss if metric in ONE_MINUS else loss


def config_problems(
    problem_type: ProblemType | None,
    metric: str | None,
    learners: tuple[str, ...] | None,
    classes: int | None = None,
) -> list[str]:
    """Why a metric and learners do not suit ``problem_type`` (``classes``: how many
    classes the target has, when known)."""
    if problem_type is None:
        return []
    if problem_type not in DEFAULT_LEARNERS:
        return [f"automl searches classification or regression models, not {problem_type}"]
    problems = []
    if metric is not None and METRIC_PROBLEM[metric] != problem_type:
        problems.append(
            f"the metric {metric!r} measures {METRIC_PROBLEM[metric]}, and the dataset is a"
            f" {problem_type} problem"
        )
    if metric in BINARY_ONLY and classes is not None and classes != 2:
        problems.append(f"the metric {metric!r} needs two classes; the target has {classes}")
    if problem_type == ProblemType.REGRESSION and learners:
        wrong = [name for name in learners if name in CLASSIFICATION_ONLY]
        if wrong:
            problems.append(f"the learners {', '.join(wrong)} only classify")
    return problems


class LabelDecoded(ClassifierMixin, BaseEstimator):
    """A fitted classifier that learned on encoded labels (0..k-1), answering in the
    original ones (``classes_``). FLAML encodes labels itself; so does XGBoost need."""

    def __init__(self, estimator: Any = None, classes: Any = None) -> None:
        self.estimator = estimator
        self.classes = classes

    def __sklearn_is_fitted__(self) -> bool:
        return self.estimator is not None and self.classes is not None

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.classes)

    def fit(self, x: Any, y: Any) -> LabelDecoded:
        encoder = LabelEncoder()
        codes = encoder.fit_transform(y)
        self.estimator = clone(self.estimator).fit(x, codes)
        self.classes = encoder.classes_
        return self

    def predict(self, x: Any) -> np.ndarray:
        codes = np.asarray(self.estimator.predict(x)).astype(int)
        return self.classes_[codes]

    def predict_proba(self, x: Any) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(x))


@dataclass
class SearchResult:
    """What a search found."""

    #: The fitted pipeline (preprocess + best model), or None when no trial finished.
    pipeline: Pipeline
    learner: str
    #: The best configuration's hyperparameters (FLAML's names).
    config: dict[str, Any]
    #: The best cross-validated score (the metric's value, not FLAML's loss).
    best_score: float
    metric: str
    trials: int
    seconds: float


class _Pacer:
    """Calls ``on_best`` with the newest best trial, at most at a pace where its cost
    (serializing a model) stays within a tenth of the search's time: after a call that
    took ``t`` seconds, the next waits until ``10 t`` have passed; a best found in
    between waits for the next trial's end (or is superseded)."""

    def __init__(self, on_best: OnBest | None) -> None:
        self.on_best = on_best
        self.pending: BestSoFar | None = None
        self.ready_at = 0.0

    def offer(self, found: BestSoFar | None) -> None:
        if self.on_best is None:
            return
        if found is not None:
            self.pending = found
        if self.pending is None or time.monotonic() < self.ready_at:
            return
        found, self.pending = self.pending, None
        began = time.monotonic()
        self.on_best(found)
        spent = time.monotonic() - began
        self.ready_at = began + 10 * spent


def _best_so_far(
    number: int,
    record: dict[str, Any],
    state: Any,
    fitted: Any,
    classes: Any,
) -> BestSoFar | None:
    """The new best trial with its fitted model (FLAML keeps each learner's best
    trained estimator with ``model_history=True``), or None when it kept none."""
    trained = getattr(state, "trained_estimator", None)
    model = None if trained is None else getattr(trained, "estimator", None)
    if model is None or record.get("score") is None:
        return None
    if "n_jobs" in model.get_params(deep=False):
        model.set_params(n_jobs=None)  # the worker's threads are not the model's
    final: Any = model if classes is None else LabelDecoded(model, classes)
    return BestSoFar(
        trial=number,
        learner=str(record["learner"]),
        config=dict(record.get("config") or {}),
        score=float(record["score"]),
        pipeline=Pipeline([("preprocess", fitted), ("model", final)]),
        sample_size=record.get("sample_size"),
    )


def _flaml_automl(
    on_trial: OnTrial,
    metric: str,
    progress: Progress,
    budget: float,
    pacer: _Pacer | None = None,
    fitted: Any = None,
    classes: Any = None,
) -> Any:
    from flaml import AutoML

    class _Recording(AutoML):
        """FLAML's AutoML, telling ``on_trial`` of every trial."""

        trials_done = 0
        best: float | None = None

        def _log_trial(self, search_state: Any, estimator: str) -> None:
            super()._log_trial(search_state, estimator)
            type(self).trials_done += 1
            record = _trial_record(type(self).trials_done, search_state, estimator, metric)
            score = record.get("score")
            better = score is not None and (
                self.best is None
                or (score > self.best if greater_is_better(metric) else score < self.best)
            )
            if better:
                type(self).best = score
            on_trial(record)
            if pacer is not None:
                pacer.offer(
                    _best_so_far(record["number"], record, search_state, fitted, classes)
                    if better
                    else None
                )
            elapsed = float(self._state.time_from_start)
            shown = "none yet" if self.best is None else f"{self.best:.4g}"
            progress(
                min(0.95, elapsed / budget) if budget > 0 else 0.0,
                f"trial {record['number']}: {estimator} {metric}"
                f" {'failed' if score is None else f'{score:.4g}'}; best so far {shown}",
            )

    return _Recording()


#: The key of a trial's logged metrics that carries its folds' losses (see :func:`_folds`).
FOLD_LOSSES = "fold_losses"


def _folds(val_loss_folds: list[float], log_metrics_folds: list[Any]) -> tuple[float, Any]:
    """FLAML's ``cv_score_agg_func``: its own default aggregation (the mean of the
    folds' losses, the mean of the logged metrics), plus every fold's loss under
    :data:`FOLD_LOSSES`. FLAML hands the folds' losses to this function after the
    trial's cross-validation, so the fold scores cost no refit; the loss FLAML
    minimizes is unchanged."""
    from flaml.automl.ml import default_cv_score_agg_func

    loss, logged = default_cv_score_agg_func(val_loss_folds, log_metrics_folds)
    if isinstance(logged, Mapping):
        logged = dict(logged)
    elif logged is None:
        logged = {}
    else:
        logged = {"metric": logged}
    logged[FOLD_LOSSES] = [float(v) for v in val_loss_folds]
    return loss, logged


def _number(value: Any) -> Any:
    """A JSON-safe scalar (numpy scalars to Python; NaN and infinity to None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def _trial_record(number: int, state: Any, learner: str, metric: str) -> dict[str, Any]:
    """One trial as plain values: number, learner, hyperparameters, CV score and loss,
    seconds, rows sampled, status (``failed`` when FLAML scored it infinite)."""
    loss = _number(getattr(state, "val_loss", None))
    config = {str(k): _number(v) for k, v in dict(getattr(state, "config", {}) or {}).items()}
    config.pop("FLAML_sample_size", None)
    logged = getattr(state, "metric_for_logging", None)
    extra = {}
    folds: list[float | None] | None = None
    if isinstance(logged, Mapping):
        losses = logged.get(FOLD_LOSSES)
        if isinstance(losses, list | tuple):
            folds = [
                None if (v := _number(loss)) is None else score_of(metric, float(v))
                for loss in losses
            ]
        extra = {str(k): _number(v) for k, v in logged.items() if _number(v) is not None}
        extra = {k: v for k, v in extra.items() if isinstance(v, int | float)}
    return {
        "number": number,
        "learner": learner,
        "config": config,
        "metric": metric,
        "loss": loss,
        "score": None if loss is None else score_of(metric, float(loss)),
        "fold_scores": folds,
        "seconds": _number(getattr(state, "trial_time", None)),
        "sample_size": _number(getattr(state, "sample_size", None)),
        "logged": extra,
        "status": "failed" if loss is None else "finished",
    }


@contextlib.contextmanager
def _backend(address: str | None) -> Iterator[None]:
    """joblib's Dask backend on ``address``'s scheduler, or nothing (local)."""
    if not address:
        yield
        return
    import joblib
    from distributed import Client

    with (
        Client(address, set_as_default=False) as client,
        joblib.parallel_backend("dask", client=client),
    ):
        yield


def dask_address() -> str | None:
    """``DASK_SCHEDULER_ADDRESS``, when set (the search then runs on that cluster)."""
    return os.environ.get("DASK_SCHEDULER_ADDRESS") or None


def search(
    transformer: Any,
    x_train: Any,
    y_train: Any,
    problem_type: ProblemType,
    *,
    time_budget_s: float,
    metric: str | None = None,
    learners: tuple[str, ...] | None = None,
    folds: int = 5,
    max_trials: int | None = None,
    seed: int | None = None,
    n_jobs: int = 1,
    on_trial: OnTrial | None = None,
    progress: Progress | None = None,
    scheduler: str | None = None,
    on_best: OnBest | None = None,
) -> SearchResult:
    """Search learners and hyperparameters for ``x_train``/``y_train`` (raw rows; the
    unfitted ``transformer`` is fitted on them). Raises :class:`SearchFailed` when no
    trial finished in the budget.

    ``on_best``: told of each new best trial with the model it fitted on its last
    fold (:class:`BestSoFar`), paced (:class:`_Pacer`), so that a search that is ended
    early (a cancel) still has a model to keep; with it, FLAML keeps each learner's
    best trained estimator (``model_history``) instead of dropping it.

    ``n_jobs``: the threads of a trial's fits. With a Dask ``scheduler``, the
    learners get ``n_jobs=-1``: joblib's Dask backend then counts the cluster's cores
    (with the slot's count, it would cap the cluster at the slot's threads)."""
    metric = metric or default_metric(problem_type)
    learners = learners or DEFAULT_LEARNERS[problem_type]
    if problem_type == ProblemType.REGRESSION:
        learners = tuple(name for name in learners if name not in CLASSIFICATION_ONLY)
    report: Progress = progress or _quiet
    trials: OnTrial = on_trial or _ignore
    started = time.monotonic()
    fitted = clone(transformer)
    matrix = fitted.fit_transform(x_train)
    classes = None
    if problem_type == ProblemType.CLASSIFICATION:
        encoder = LabelEncoder()
        target = encoder.fit_transform(np.asarray(y_train))
        classes = encoder.classes_
        if len(classes) < 2:
            raise SearchFailed("the target has one class: there is nothing to learn")
    else:
        target = np.asarray(y_train, dtype=float)
    folds = max(2, min(folds, len(target)))
    if classes is not None:
        smallest = int(np.bincount(target).min())
        if smallest < folds:
            raise SearchFailed(
                f"{folds}-fold cross-validation needs {folds} rows of every class;"
                f" the smallest class has {smallest} training rows"
            )
    pacer = _Pacer(on_best) if on_best is not None else None
    automl = _flaml_automl(trials, metric, report, time_budget_s, pacer, fitted, classes)
    settings: dict[str, Any] = {
        "time_budget": time_budget_s,
        "metric": metric,
        "task": "classification" if classes is not None else "regression",
        "eval_method": "cv",
        "n_splits": folds,
        "estimator_list": list(learners),
        "n_jobs": -1 if scheduler else n_jobs,
        "log_type": "all",
        "cv_score_agg_func": _folds,
        "verbose": 0,
        "mlflow_logging": False,
        "seed": seed if seed is not None else 0,
    }
    if max_trials is not None:
        settings["max_iter"] = max_trials
    if on_best is not None:
        settings["model_history"] = True
    report(
        0.0,
        f"searching {', '.join(learners)} for {time_budget_s:g} s, {folds}-fold CV on"
        f" {len(target)} rows, {metric}",
    )
    with warnings.catch_warnings(), _backend(scheduler):
        warnings.simplefilter("ignore")
        automl.fit(matrix, target, **settings)
    if automl.model is None or automl.best_estimator is None:
        raise SearchFailed(f"no trial finished within the time budget of {time_budget_s:g} s")
    estimator = automl.model.estimator
    if "n_jobs" in estimator.get_params(deep=False):
        estimator.set_params(n_jobs=None)  # the worker's threads are not the model's
    final: Any = estimator if classes is None else LabelDecoded(estimator, classes)
    best = score_of(metric, float(automl.best_loss))
    report(0.97, f"best: {automl.best_estimator}, cross-validated {metric} {best:.4g}")
    return SearchResult(
        pipeline=Pipeline([("preprocess", fitted), ("model", final)]),
        learner=str(automl.best_estimator),
        config={str(k): _number(v) for k, v in dict(automl.best_config or {}).items()},
        best_score=best,
        metric=metric,
        trials=type(automl).trials_done,
        seconds=time.monotonic() - started,
    )
