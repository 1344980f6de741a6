"""The algorithm vocabulary of model nodes, and the scikit-learn estimators behind it.

One table, :data:`ALGORITHMS`, maps each algorithm to its estimator class per
problem type. Hyperparameters are checked by scikit-learn itself: the estimator is
built with them and its own parameter validation runs (``_validate_params``, which
reads the class's ``_parameter_constraints``), so the rules are always the ones of
the installed scikit-learn, never a hand-written copy.

Every numeric hyperparameter also has the platform's range (:data:`RANGES`),
checked before scikit-learn's own rules: scikit-learn accepts ``n_estimators`` of
2**70, which would run until the job's time limit. The ranges are wide enough for
any sensible fit; ``tests/pipeline`` checks that every parameter with a numeric
interval in scikit-learn's constraints has one.

Parameters the platform controls are refused whatever their value:

- ``n_jobs``: the worker gives each fit the cores of its slot
  (``WORKER_THREADS_PER_SLOT``), so one job cannot starve the others. Refusing is
  clearer than silently capping a value the user asked for.
- ``verbose``: it prints to the worker's output, never to the user.

``random_state`` is allowed; when it is not given, it is fixed (0) so that a run
is repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

from database.models.enums import ProblemType

Algorithm = Literal[
    "logistic_regression",
    "random_forest",
    "gradient_boosting",
    "linear_regression",
    "ridge",
    "kmeans",
]
ALGORITHM_NAMES: tuple[str, ...] = get_args(Algorithm)

#: algorithm -> problem type -> estimator class.
ALGORITHMS: dict[str, dict[ProblemType, type[BaseEstimator]]] = {
    "logistic_regression": {ProblemType.CLASSIFICATION: LogisticRegression},
    "random_forest": {
        ProblemType.CLASSIFICATION: RandomForestClassifier,
        ProblemType.REGRESSION: RandomForestRegressor,
    },
    "gradient_boosting": {
        ProblemType.CLASSIFICATION: GradientBoostingClassifier,
        ProblemType.REGRESSION: GradientBoostingRegressor,
    },
    "linear_regression": {ProblemType.REGRESSION: LinearRegression},
    "ridge": {ProblemType.REGRESSION: Ridge},
    "kmeans": {ProblemType.CLUSTERING: KMeans},
}

#: The estimators whose ``n_jobs`` makes a fit use more threads (others use OpenMP or
#: BLAS threads, which the worker sets with threadpoolctl; LogisticRegression's
#: ``n_jobs`` does nothing since scikit-learn 1.8 and warns).
USES_N_JOBS: frozenset[type[BaseEstimator]] = frozenset(
    {RandomForestClassifier, RandomForestRegressor}
)

#: Hyperparameters the platform sets, refused in a node's config (see the module's doc).
PLATFORM_PARAMETERS: dict[str, str] = {
    "n_jobs": "the worker gives each fit the cores of its slot",
    "verbose": "the worker's output is not shown to users",
}

#: The seed every estimator and split gets when the user gives none.
DEFAULT_RANDOM_STATE = 0


@dataclass(frozen=True)
class Range:
    """The numbers a hyperparameter may take: ``low`` to ``high``, both included unless
    ``low_open`` (then ``low`` itself is refused)."""

    low: float
    high: float
    low_open: bool = False

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return True  # not a number: scikit-learn's own rules decide
        number = float(value) if abs(value) < 1e300 else math.copysign(math.inf, value)
        above = number > self.low if self.low_open else number >= self.low
        return above and number <= self.high

    def describe(self) -> str:
        low = _number(self.low)
        start = f"greater than {low}" if self.low_open else f"at least {low}"
        return f"{start} and at most {_number(self.high)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


#: The platform's bounds of every numeric hyperparameter (a parameter of that name in
#: any of the estimators). Where scikit-learn allows a fraction as well as a count
#: (``max_features``, ``min_samples_leaf``), the range bounds the count and
#: scikit-learn still checks the fraction.
RANGES: dict[str, Range] = {
    "n_estimators": Range(1, 5000),
    "max_depth": Range(1, 1000),
    "min_samples_split": Range(0, 1_000_000, low_open=True),
    "min_samples_leaf": Range(0, 1_000_000, low_open=True),
    "max_leaf_nodes": Range(2, 1_000_000),
    "max_features": Range(0, 100_000, low_open=True),
    "max_samples": Range(0, 10_000_000, low_open=True),
    "min_weight_fraction_leaf": Range(0, 0.5),
    "min_impurity_decrease": Range(0, 1e6),
    "ccp_alpha": Range(0, 1e6),
    "C": Range(0, 1e6, low_open=True),
    "alpha": Range(0, 1e6),
    "intercept_scaling": Range(0, 1e6, low_open=True),
    "l1_ratio": Range(0, 1),
    "learning_rate": Range(0, 100),
    "subsample": Range(0, 1, low_open=True),
    "validation_fraction": Range(0, 1, low_open=True),
    "n_iter_no_change": Range(1, 10_000),
    "max_iter": Range(0, 1_000_000),
    "tol": Range(0, 1e6),
    "n_clusters": Range(1, 10_000),
    "n_init": Range(1, 1000),
    "random_state": Range(0, 2**32 - 1),
}


def range_problem(params: Mapping[str, Any]) -> str | None:
    """The first hyperparameter outside its :data:`RANGES` entry, in words, or None."""
    for name, value in params.items():
        bounds = RANGES.get(name)
        if bounds is not None and value not in bounds:
            shown = value if abs(value) < 1e15 else f"{float(value):.3g}"
            return f"parameter {name!r} must be {bounds.describe()}; got {shown}"
    return None


def problem_types(algorithm: str) -> tuple[ProblemType, ...]:
    """The problem types ``algorithm`` solves (classification before regression)."""
    return tuple(ALGORITHMS[algorithm])


def is_supervised(algorithm: str) -> bool:
    return ProblemType.CLUSTERING not in ALGORITHMS[algorithm]


def estimator_class(algorithm: str, problem_type: ProblemType) -> type[BaseEstimator]:
    """The class for ``algorithm`` on ``problem_type``; KeyError when it does not apply."""
    return ALGORITHMS[algorithm][problem_type]


def parameter_problem(cls: type[BaseEstimator], params: Mapping[str, Any]) -> str | None:
    """Why ``params`` are not valid for ``cls`` (scikit-learn's words), or None."""
    valid = sorted(cls().get_params(deep=False))
    for name in params:
        if name in PLATFORM_PARAMETERS:
            return f"parameter {name!r} is set by the platform ({PLATFORM_PARAMETERS[name]})"
    unknown = sorted(set(params) - set(valid))
    if unknown:
        allowed = [v for v in valid if v not in PLATFORM_PARAMETERS]
        return f"unknown parameter {unknown[0]!r} for {cls.__name__}; valid: {', '.join(allowed)}"
    outside = range_problem(params)
    if outside:
        return outside
    try:
        estimator = cls(**params)
        validate = getattr(estimator, "_validate_params", None)
        if validate is not None:
            validate()
    except Exception as exc:  # scikit-learn's InvalidParameterError, or anything odd
        return str(exc) or type(exc).__name__
    return None


def build_estimator(
    algorithm: str, problem_type: ProblemType, params: Mapping[str, Any], *, n_jobs: int = 1
) -> BaseEstimator:
    """The estimator, with ``params``, a fixed ``random_state`` when it takes one, and
    ``n_jobs`` (the worker's threads for this fit) for :data:`USES_N_JOBS`.

    ``params`` must have passed :func:`parameter_problem` for the same class.
    """
    cls = estimator_class(algorithm, problem_type)
    settings = dict(params)
    if "random_state" in cls().get_params(deep=False) and "random_state" not in settings:
        settings["random_state"] = DEFAULT_RANDOM_STATE
    if cls in USES_N_JOBS:
        settings["n_jobs"] = max(1, n_jobs)
    return cls(**settings)
