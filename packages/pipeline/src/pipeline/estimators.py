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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral
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
from sklearn.utils._param_validation import Hidden, Interval, StrOptions

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


# --- the hyperparameters as JSON Schema (what /openapi.json shows of a model node) -----------
def _param_doc(cls: type[BaseEstimator], name: str) -> str | None:
    """The first paragraph of ``name``'s entry in ``cls``'s numpydoc Parameters section."""
    lines = (cls.__doc__ or "").splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^\s*{re.escape(name)}\s*:", line):
            indent = len(line) - len(line.lstrip())
            text: list[str] = []
            for follow in lines[i + 1 :]:
                if not follow.strip():
                    if text:
                        break
                    continue
                if len(follow) - len(follow.lstrip()) <= indent:
                    break
                text.append(follow.strip())
            return _plain(" ".join(text)) or None
    return None


def _plain(text: str) -> str:
    """scikit-learn's reStructuredText roles as plain text: ``:ref:`Pruning <x>``` ->
    ``Pruning``, a bare ``:ref:`` -> the user guide, ``:class:`~sklearn.X``` -> ``X``."""
    text = re.sub(r":\w+:`([^`<]+?)\s*<[^`>]+>`", r"\1", text)
    text = re.sub(r":ref:`[^`]+`", "scikit-learn's user guide", text)
    text = re.sub(r":\w+:`~(?:[\w.]+\.)?([^`]+)`", r"`\1`", text)
    text = re.sub(r":\w+:`([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _bounds(
    interval: Interval, platform: Range | None
) -> tuple[float | None, bool, float | None, bool]:
    """(low, low_open, high, high_open) of ``interval`` within the platform's range."""
    low, high = interval.left, interval.right
    low_open = interval.closed in ("right", "neither")
    high_open = interval.closed in ("left", "neither")
    if platform is not None:
        if low is None or platform.low > low or (platform.low == low and platform.low_open):
            low, low_open = platform.low, platform.low_open
        if high is None or platform.high < high:
            high, high_open = platform.high, False
    return low, low_open, high, high_open


def _constraint_schema(constraint: Any, platform: Range | None) -> dict[str, Any] | None:
    """One scikit-learn parameter constraint as JSON Schema (None: not expressible in
    JSON, such as a callable, an array or an estimator)."""
    if isinstance(constraint, Hidden):
        return None
    if isinstance(constraint, Interval):
        integer = constraint.type is Integral
        schema: dict[str, Any] = {"type": "integer" if integer else "number"}
        low, low_open, high, high_open = _bounds(constraint, platform)
        cast = int if integer else float
        if low is not None and math.isfinite(low):
            schema["exclusiveMinimum" if low_open else "minimum"] = cast(low)
        if high is not None and math.isfinite(high):
            schema["exclusiveMaximum" if high_open else "maximum"] = cast(high)
        return schema
    if isinstance(constraint, StrOptions):
        options = sorted(o for o in constraint.options if o not in constraint.deprecated)
        return {"type": "string", "enum": options} if options else None
    if constraint is None:
        return {"type": "null"}
    if constraint == "boolean":
        return {"type": "boolean"}
    if constraint == "random_state":
        return {"type": "integer", "minimum": 0, "maximum": int(RANGES["random_state"].high)}
    if constraint is Integral:
        return {"type": "integer"}
    if constraint is dict:
        return {"type": "object"}
    return None


def _json_default(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return _NO_DEFAULT


_NO_DEFAULT = object()


def hyperparameters_schema(algorithm: str) -> dict[str, Any]:
    """The hyperparameters ``algorithm`` takes, as a JSON Schema object: one property
    per parameter of its estimators (less :data:`PLATFORM_PARAMETERS`), typed from
    scikit-learn's own ``_parameter_constraints`` narrowed by :data:`RANGES`, with
    scikit-learn's default and the first paragraph of its documentation.

    For the schema only: a node's hyperparameters are validated by
    :func:`parameter_problem` (scikit-learn itself), which this mirrors.
    """
    classes = ALGORITHMS[algorithm]
    properties: dict[str, dict[str, Any]] = {}
    for problem_type, cls in classes.items():
        defaults = cls().get_params(deep=False)
        constraints: dict[str, list[Any]] = getattr(cls, "_parameter_constraints", {})
        for name in sorted(defaults):
            if name in PLATFORM_PARAMETERS:
                continue
            options = [
                s
                for c in constraints.get(name, [])
                if (s := _constraint_schema(c, RANGES.get(name))) is not None
            ]
            entry = properties.get(name)
            if entry is None:
                doc = _param_doc(cls, name) or f"{cls.__name__}'s {name!r} parameter."
                entry = properties[name] = {"description": doc, "anyOf": []}
                default = _json_default(defaults[name])
                if default is not _NO_DEFAULT and default != "deprecated":
                    entry["default"] = default
                if len(classes) > 1:
                    entry["x-problem-types"] = []
            if len(classes) > 1:
                entry["x-problem-types"].append(str(problem_type))
            for schema in options:
                if schema not in entry["anyOf"]:
                    entry["anyOf"].append(schema)
    for entry in properties.values():
        if not entry["anyOf"]:
            del entry["anyOf"]  # any JSON value scikit-learn accepts
        elif len(entry["anyOf"]) == 1:
            entry.update(entry.pop("anyOf")[0])
    names = " / ".join(cls.__name__ for cls in classes.values())
    return {
        "type": "object",
        "description": (
            f"Keyword arguments of scikit-learn's {names} (the defaults are scikit-learn's;"
            " random_state defaults to 0 here). Checked by scikit-learn when the workflow is"
            " saved. n_jobs and verbose are set by the platform."
        ),
        "properties": properties,
        "additionalProperties": False,
    }
