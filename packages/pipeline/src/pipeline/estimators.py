"""The algorithm vocabulary of model nodes, and the scikit-learn estimators behind it.

One table, :data:`ALGORITHMS`, maps each algorithm to its estimator class per
problem type. Hyperparameters are checked by scikit-learn itself: the estimator is
built with them and its own parameter validation runs (``_validate_params``, which
reads the class's ``_parameter_constraints``), so the rules are always the ones of
the installed scikit-learn, never a hand-written copy.

Parameters the platform controls are refused whatever their value:

- ``n_jobs``: the workers share their cores; each fit runs on one (the estimator's
  default), so one job cannot starve the others. Refusing is clearer than silently
  capping a value the user asked for.
- ``verbose``: it prints to the worker's output, never to the user.

``random_state`` is allowed; when it is not given, it is fixed (0) so that a run
is repeatable.
"""

from __future__ import annotations

from collections.abc import Mapping
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

#: Hyperparameters the platform sets, refused in a node's config (see the module's doc).
PLATFORM_PARAMETERS: dict[str, str] = {
    "n_jobs": "the platform runs each fit on one core",
    "verbose": "the worker's output is not shown to users",
}

#: The seed every estimator and split gets when the user gives none.
DEFAULT_RANDOM_STATE = 0


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
    try:
        estimator = cls(**params)
        validate = getattr(estimator, "_validate_params", None)
        if validate is not None:
            validate()
    except Exception as exc:  # scikit-learn's InvalidParameterError, or anything odd
        return str(exc) or type(exc).__name__
    return None


def build_estimator(
    algorithm: str, problem_type: ProblemType, params: Mapping[str, Any]
) -> BaseEstimator:
    """The estimator, with ``params`` and a fixed ``random_state`` when it takes one.

    ``params`` must have passed :func:`parameter_problem` for the same class.
    """
    cls = estimator_class(algorithm, problem_type)
    settings = dict(params)
    if "random_state" in cls().get_params(deep=False) and "random_state" not in settings:
        settings["random_state"] = DEFAULT_RANDOM_STATE
    return cls(**settings)
