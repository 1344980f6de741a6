"""Scoring with a saved model: load it once, check an input against what it expects,
predict. Shared by the API's predict route, the serving process (``automl-serve``) and
the batch-prediction job kind (docs/serving.md).

- :func:`load_model` is the ONE place an artifact becomes a model (today the joblib
  file at ``models.s3_path``, read through :mod:`database.storage`; the registry's
  formats module, ``pipeline.formats.load_version``, replaces its body at merge);
- :class:`ModelCache`: models kept in memory, least recently used first out, bounded
  by bytes (``SERVE_CACHE_BYTES``); one load per version however many requests ask
  for it at once;
- :func:`parse_body`: the input shapes (``records``, MLflow's ``dataframe_records``,
  ``dataframe_split``, ``instances``/``inputs``, CSV and Parquet bodies) as columns;
- :func:`check_columns`: the columns against the version's signature (or, without
  one, the model's training columns): missing ones and wrong types are an
  :class:`InputError` naming them; unknown columns are dropped, as MLflow does;
  JSON ``null`` is a missing value (NaN), which the pipeline's imputer fills;
- :func:`predict`: predictions, and for a classifier the probabilities by class;
- :class:`FastPreprocess` (:func:`compile_preprocess`, once per loaded model): the
  platform's preprocessing computed from :func:`check_arrays`' columns with plain
  numpy, bit for bit what scikit-learn's ``ColumnTransformer`` gives, for small
  inputs (scikit-learn's own machinery dominates a one-row request); and
  :func:`forest_proba`, a forest's probabilities without joblib.
"""

from __future__ import annotations

import io
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from database.storage import Storage

#: Rows one request may carry unless the deployment's config says otherwise.
DEFAULT_MAX_ROWS = 10_000
#: Default memory the model cache may hold (``SERVE_CACHE_BYTES``).
DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024

JSON_TYPES = ("application/json", "text/json")
CSV_TYPES = ("text/csv", "application/csv")
PARQUET_TYPES = ("application/vnd.apache.parquet", "application/x-parquet", "application/parquet")

#: Signature type names (MLflow's and pandas') by the kind of value they hold.
_NUMBER = frozenset(
    {"double", "float", "long", "integer", "int", "number", "numeric"}
    | {"float16", "float32", "float64", "int8", "int16", "int32", "int64"}
    | {"uint8", "uint16", "uint32", "uint64"}
)
_STRING = frozenset({"string", "str", "object", "category", "categorical", "text"})
_BOOLEAN = frozenset({"boolean", "bool"})
_DATETIME = frozenset({"datetime", "datetime64", "datetime64[ns]", "timestamp", "date"})


class InputError(Exception):
    """An input the model cannot score: ``status`` (400, 413, 415, 422), a stable
    ``code``, a message naming the problem and details (the columns)."""

    def __init__(
        self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})


class ModelUnavailable(Exception):
    """The version cannot be loaded here (no artifact, missing file, environment)."""


@dataclass(frozen=True)
class Column:
    name: str
    #: ``number``, ``string``, ``boolean``, ``datetime`` or None (not checked).
    kind: str | None


@dataclass
class LoadedModel:
    """A model in memory, with what its inputs must be."""

    key: str
    model: Any
    columns: list[Column]
    #: The classes of a classifier (None otherwise).
    classes: list[Any] | None
    #: Bytes it is counted for in the cache.
    size_bytes: int
    #: Preprocessing and estimator, when the model is a scikit-learn Pipeline.
    head: Any = None
    estimator: Any = None
    #: predict is argmax of predict_proba (trees, forests): one pass gives both.
    argmax_predicts: bool = False
    #: The preprocessing without scikit-learn's machinery (None: not on the whitelist).
    fast: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _kind(type_name: Any) -> str | None:
    name = str(type_name or "").strip().lower()
    if name in _NUMBER:
        return "number"
    if name in _STRING:
        return "string"
    if name in _BOOLEAN:
        return "boolean"
    if name in _DATETIME or name.startswith("datetime64"):
        return "datetime"
    return None


def signature_columns(signature: Mapping[str, Any] | None) -> list[Column]:
    """The columns of a version's signature ``{"inputs": [{"name", "type"}]}``."""
    inputs = (signature or {}).get("inputs") or []
    out = []
    for item in inputs:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            out.append(Column(item["name"], _kind(item.get("type"))))
    return out


def training_columns(model: Any) -> list[Column]:
    """The columns a fitted pipeline was trained on, with the kinds its column
    transformer gave them (numeric: number; categorical: not checked)."""
    head = model[0] if hasattr(model, "steps") and len(model.steps) > 1 else None
    kinds: dict[str, str | None] = {}
    for name, _, columns in getattr(head, "transformers_", None) or []:
        if isinstance(columns, str):
            columns = [columns]
        if not isinstance(columns, Sequence | np.ndarray) or name == "remainder":
            continue
        for column in columns:
            if isinstance(column, str):
                kinds[column] = "number" if name == "numeric" else None
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        names = getattr(head, "feature_names_in_", None)
    if names is None:
        return [Column(c, k) for c, k in kinds.items()]
    return [Column(str(c), kinds.get(str(c))) for c in names]


def _argmax_predicts(estimator: Any) -> bool:
    """Estimators whose ``predict`` is ``classes_[argmax(predict_proba)]`` in
    scikit-learn's own code: one pass gives both answers."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    return isinstance(
        estimator,
        RandomForestClassifier
        | ExtraTreesClassifier
        | DecisionTreeClassifier
        | ExtraTreeClassifier,
    )


def _sequential_forest(estimator: Any) -> bool:
    """A forest of classification trees whose ``predict_proba`` :func:`forest_proba`
    gives exactly (the same sums in the same order): scikit-learn's own
    RandomForestClassifier and ExtraTreesClassifier (not a subclass, which may
    override it), one output, run in one thread (``n_jobs`` None or 1: the platform
    saves its models so)."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    return (
        type(estimator) in (RandomForestClassifier, ExtraTreesClassifier)
        and getattr(estimator, "n_outputs_", None) == 1
        and estimator.n_jobs in (None, 1)
        and bool(getattr(estimator, "estimators_", None))
    )


def _plain_float32(estimator: Any, features: Any) -> np.ndarray | None:
    """``features`` as the forest's ``_validate_X_predict`` would give them, when that
    is only the cast: a dense 2-D float array of the estimator's width (it was fitted
    on an array, so it checks no names), every value finite as float32 (so neither
    its missing-value mode nor its refusal of infinity matters). ``np.asarray(X,
    dtype=np.float32)`` is the cast ``check_array`` makes. None: validate in full."""
    if (
        type(features) is not np.ndarray
        or features.ndim != 2
        or features.dtype not in (np.float64, np.float32)
        or features.shape[1] != getattr(estimator, "n_features_in_", -1)
        or hasattr(estimator, "feature_names_in_")
        or features.shape[0] == 0
    ):
        return None
    X = np.asarray(features, dtype=np.float32)
    return X if bool(np.isfinite(X).all()) else None


def forest_proba(estimator: Any, features: Any) -> np.ndarray | None:
    """``estimator.predict_proba(features)`` for a forest of :func:`_sequential_forest`,
    without joblib: the trees' class fractions summed one tree after the other into a
    float64 array, then divided by the number of trees -- exactly what scikit-learn's
    ``ForestClassifier.predict_proba`` computes with ``n_jobs`` None (its
    ``_accumulate_prediction`` adds each tree's ``tree_.predict(X)[:, :n_classes_]``,
    in the order of ``estimators_``), bit for bit (tested on real data). Its
    ``Parallel`` call, the per-tree configuration and warning-filter context and the
    per-tree fitted checks cost ~20x the trees' own work on a one-row request.
    None: not such a forest (the caller asks the estimator)."""
    if not _sequential_forest(estimator):
        return None
    X = _plain_float32(estimator, features)
    if X is None:
        X = estimator._validate_X_predict(features)
    trees = estimator.estimators_
    out = np.zeros((X.shape[0], int(estimator.n_classes_)), dtype=np.float64)
    for tree in trees:
        out += tree.tree_.predict(X)[:, : tree.n_classes_]
    out /= len(trees)
    return out


# --- the preprocessing, exactly, without scikit-learn's machinery ----------------------------
#: Rows up to which :func:`predict_arrays` tries :class:`FastPreprocess` (a request's few rows;
#: larger inputs, the batch job's chunks, go through scikit-learn, whose per-call overhead
#: no longer matters there).
FAST_MAX_ROWS = 1_000

#: A step of :class:`FastPreprocess`: the array in, the array out, or None (a case the step
#: does not take: the whole input goes through scikit-learn instead).
_Step = Callable[[np.ndarray], "np.ndarray | None"]


def _default_output(step: Any) -> bool:
    """No ``set_output(transform="pandas"/"polars")`` on ``step``."""
    config = getattr(step, "_sklearn_output_config", None) or {}
    return config.get("transform", "default") == "default"


def _no_inf(X: np.ndarray) -> bool:
    return not bool(np.isinf(X).any())


def _imputer_step(imputer: Any) -> _Step | None:
    """``SimpleImputer.transform`` (scikit-learn 1.9: ``impute/_base.py``): the fitted
    statistics cast to the fit's dtype, put where the input holds NaN. Not taken:
    another ``missing_values``, ``add_indicator``, a feature without statistics (the
    imputer drops it, with a warning), an input of another kind than the fit's."""
    statistics = getattr(imputer, "statistics_", None)
    fit_dtype = getattr(imputer, "_fit_dtype", None)
    fill_dtype = getattr(imputer, "_fill_dtype", None)
    if (
        statistics is None
        or fit_dtype is None
        or fill_dtype is None
        or imputer.add_indicator
        or not (isinstance(imputer.missing_values, float) and math.isnan(imputer.missing_values))
    ):
        return None
    if not imputer.keep_empty_features:
        from sklearn.impute._base import _get_mask

        if _get_mask(statistics, np.nan).any():
            return None
    fill = np.asarray(statistics).astype(fill_dtype, copy=False)
    as_objects = fit_dtype.kind == "O"
    width = len(fill)

    def impute(X: np.ndarray) -> np.ndarray | None:
        if X.shape[1] != width:
            return None
        if as_objects:
            if X.dtype != object:
                return None
            mask = X != X  # sklearn's _object_dtype_isnan
        else:
            if X.dtype != np.float64 or not _no_inf(X):
                return None
            mask = np.isnan(X)
        X = X.copy()
        if mask.any():
            X[mask] = np.broadcast_to(fill, X.shape)[mask]
        return X

    return impute


def _standard_step(scaler: Any) -> _Step | None:
    """``StandardScaler.transform`` on a dense float64 array: ``X -= mean_``, then
    ``X /= scale_``, as scikit-learn does them."""
    mean = scaler.mean_ if scaler.with_mean else None
    scale = scaler.scale_ if scaler.with_std else None
    for values in (mean, scale):
        if values is not None and np.asarray(values).dtype != np.float64:
            return None

    def standard(X: np.ndarray) -> np.ndarray | None:
        if X.dtype != np.float64 or not _no_inf(X):
            return None
        X = X.copy()
        if mean is not None:
            X -= mean
        if scale is not None:
            X /= scale
        return X

    return standard


def _minmax_step(scaler: Any) -> _Step | None:
    """``MinMaxScaler.transform``: ``X *= scale_``, ``X += min_``, then the clip."""
    scale, low = scaler.scale_, scaler.min_
    if np.asarray(scale).dtype != np.float64 or np.asarray(low).dtype != np.float64:
        return None
    clip = bool(scaler.clip)
    bounds = (
        np.asarray(scaler.feature_range[0], dtype=np.float64),
        np.asarray(scaler.feature_range[1], dtype=np.float64),
    )

    def minmax(X: np.ndarray) -> np.ndarray | None:
        if X.dtype != np.float64 or not _no_inf(X):
            return None
        X = X.copy()
        X *= scale
        X += low
        if clip:
            np.clip(X, bounds[0], bounds[1], out=X)
        return X

    return minmax


class _Categories:
    """One feature's categories as ``_BaseEncoder._transform`` matches them for an
    object array (``sklearn.utils._encode._check_unknown`` and ``_map_to_integer``):
    a set of the known values without the missing ones, whether None and NaN are
    categories, and the value -> position table (its NaN entry apart)."""

    def __init__(self, categories: np.ndarray) -> None:
        from sklearn.utils._missing import is_scalar_nan

        self.is_nan = is_scalar_nan
        known = set(categories)
        missing = {v for v in known if v is None or is_scalar_nan(v)}
        self.none = None in missing
        self.nan = any(v is not None for v in missing)
        self.known = known - missing
        self.table: dict[Any, int] = {}
        self.nan_index: int | None = None
        for i, value in enumerate(categories):
            self.table[value] = i
            if self.nan_index is None and is_scalar_nan(value):
                self.nan_index = i

    def codes(self, column: np.ndarray) -> tuple[list[int], list[bool]]:
        """Each value's position (0 for an unknown one, as scikit-learn puts the first
        category there) and whether it is known."""
        codes: list[int] = []
        valid: list[bool] = []
        table, known, is_nan = self.table, self.known, self.is_nan
        for value in column.tolist():
            if value in known:
                found = table.get(value)
                if found is None and is_nan(value):
                    found = self.nan_index
                codes.append(0 if found is None else found)
                valid.append(True)
            elif self.none and value is None:
                codes.append(table[None])
                valid.append(True)
            elif self.nan and is_nan(value):
                codes.append(int(self.nan_index or 0))
                valid.append(True)
            else:
                codes.append(0)
                valid.append(False)
        return codes, valid


def _encoded(categories: list[_Categories], X: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``_BaseEncoder._transform``'s ``X_int`` and ``X_mask`` for an object array."""
    if X.dtype != object or X.shape[1] != len(categories):
        return None
    X_int = np.zeros(X.shape, dtype=int)
    X_mask = np.ones(X.shape, dtype=bool)
    for i, cats in enumerate(categories):
        codes, valid = cats.codes(X[:, i])
        X_int[:, i] = codes
        X_mask[:, i] = valid
    return X_int, X_mask


def _infrequent(encoder: Any) -> bool:
    return bool(getattr(encoder, "_infrequent_enabled", True))


def _onehot_step(encoder: Any) -> _Step | None:
    """``OneHotEncoder.transform`` then ``toarray()`` (what the column transformer does
    with a sparse part when its own output is dense): a 1 at each known value's
    column, an unknown value's row all zeros (``handle_unknown="ignore"``). Not taken:
    ``drop``, infrequent categories, ``handle_unknown="warn"``; with ``"error"``, an
    input holding an unknown value (scikit-learn raises)."""
    if (
        encoder.handle_unknown not in ("ignore", "error", "infrequent_if_exist")
        or _infrequent(encoder)
        or getattr(encoder, "_drop_idx_after_grouping", 0) is not None
        or encoder.drop is not None
    ):
        return None
    categories = [_Categories(c) for c in encoder.categories_]
    offsets = np.cumsum([0, *encoder._n_features_outs])
    width = int(offsets[-1])
    dtype = encoder.dtype
    strict = encoder.handle_unknown == "error"

    def onehot(X: np.ndarray) -> np.ndarray | None:
        found = _encoded(categories, X)
        if found is None:
            return None
        X_int, X_mask = found
        if strict and not X_mask.all():
            return None
        out = np.zeros((X.shape[0], width), dtype=dtype)
        rows, cols = np.nonzero(X_mask)
        out[rows, X_int[rows, cols] + offsets[cols]] = 1
        return out

    return onehot


def _ordinal_step(encoder: Any) -> _Step | None:
    """``OrdinalEncoder.transform``: the codes as the encoder's dtype, a missing value's
    ``encoded_missing_value``, an unknown one's ``unknown_value``. Not taken:
    infrequent categories; with ``handle_unknown="error"``, an unknown value."""
    if encoder.handle_unknown not in ("use_encoded_value", "error") or _infrequent(encoder):
        return None
    categories = [_Categories(c) for c in encoder.categories_]
    missing = dict(getattr(encoder, "_missing_indices", {}) or {})
    dtype = encoder.dtype
    use_encoded = encoder.handle_unknown == "use_encoded_value"

    def ordinal(X: np.ndarray) -> np.ndarray | None:
        found = _encoded(categories, X)
        if found is None:
            return None
        X_int, X_mask = found
        if not use_encoded and not X_mask.all():
            return None
        X_trans = X_int.astype(dtype, copy=False)
        for cat_idx, missing_idx in missing.items():
            X_trans[X_int[:, cat_idx] == missing_idx, cat_idx] = encoder.encoded_missing_value
        if use_encoded:
            X_trans[~X_mask] = encoder.unknown_value
        return X_trans

    return ordinal


def _objects_first(step: Any) -> bool:
    """The platform's text columns' first step: ``FunctionTransformer(
    DataFrame.to_numpy, kw_args={"dtype": object, "na_value": np.nan})``."""
    from sklearn.preprocessing import FunctionTransformer

    if type(step) is not FunctionTransformer or step.func is not pd.DataFrame.to_numpy:
        return False
    kw = step.kw_args or {}
    na = kw.get("na_value")
    return (
        set(kw) == {"dtype", "na_value"}
        and kw["dtype"] is object
        and isinstance(na, float)
        and math.isnan(na)
        and not step.validate
    )


def _identity(step: Any) -> bool:
    """``FunctionTransformer()`` with no function (a fitted "passthrough"): the columns
    as they are (numbers only here: stacked as float64, as ``np.hstack`` makes them)."""
    from sklearn.preprocessing import FunctionTransformer

    return (
        type(step) is FunctionTransformer
        and step.func is None
        and not step.validate
        and not step.kw_args
    )


def _dates_first(step: Any) -> bool:
    """The platform's date columns' first step: ``FunctionTransformer(date_parts)``."""
    from sklearn.preprocessing import FunctionTransformer

    func = getattr(step, "func", None)
    return (
        type(step) is FunctionTransformer
        and getattr(func, "__module__", None) == "pipeline.execute"
        and getattr(func, "__name__", None) == "date_parts"
        and not step.kw_args
        and not step.validate
    )


def _later_step(step: Any) -> _Step | None:
    """A step after the first, by its exact class (a subclass may change anything)."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

    if step is None or step == "passthrough":
        return lambda X: X
    if not _default_output(step):
        return None
    kind = type(step)
    if kind is SimpleImputer:
        return _imputer_step(step)
    if kind is StandardScaler:
        return _standard_step(step)
    if kind is MinMaxScaler:
        return _minmax_step(step)
    if kind is OneHotEncoder:
        return _onehot_step(step)
    if kind is OrdinalEncoder:
        return _ordinal_step(step)
    return None


@dataclass
class _Part:
    columns: list[str]
    #: "numbers" (float64 columns stacked), "objects" (the to_numpy step), "dates".
    source: str
    first: Any
    steps: list[_Step]


class FastPreprocess:
    """The platform's preprocessing (``pipeline.execute.build_transformer``'s
    ``ColumnTransformer``: imputers, scalers, one-hot and ordinal encoders, the text
    columns' object step, the date parts, passthrough and drop) computed from the
    checked columns directly, with the same floating-point operations in the same
    order as scikit-learn's ``transform``, so the same bits
    (``tests/pipeline/test_serving_preprocess.py``), without a DataFrame, scikit-learn's
    validation, its configuration contexts and its per-transformer dispatch, which
    dominate a one-row request. Built once per loaded model (:func:`compile_preprocess`);
    ``__call__`` answers None for an input it does not take (then scikit-learn
    transforms it, and says what it says)."""

    def __init__(self, parts: list[_Part]) -> None:
        self.parts = parts

    def __call__(self, data: Mapping[str, np.ndarray], rows: int) -> np.ndarray | None:
        pieces: list[np.ndarray] = []
        for part in self.parts:
            arrays = [data.get(c) for c in part.columns]
            if any(a is None or a.ndim != 1 or len(a) != rows for a in arrays):
                return None
            X: np.ndarray | None
            if part.source == "numbers":
                if any(a.dtype != np.float64 for a in arrays):  # type: ignore[union-attr]
                    return None
                X = np.empty((rows, len(arrays)), dtype=np.float64)
                for j, a in enumerate(arrays):
                    X[:, j] = a
                if not _no_inf(X):
                    return None  # scikit-learn refuses infinity: let it say so
            elif part.source == "objects":
                if any(a.dtype != object for a in arrays):  # type: ignore[union-attr]
                    return None
                X = np.empty((rows, len(arrays)), dtype=object)
                for j, a in enumerate(arrays):
                    X[:, j] = a
                    X[pd.isna(a), j] = np.nan  # DataFrame.to_numpy(na_value=np.nan)
            else:
                frame = pd.DataFrame(dict(zip(part.columns, arrays, strict=True)), copy=False)
                X = np.asarray(part.first.func(frame))
            for step in part.steps:
                X = step(X)
                if X is None:
                    return None
            if X.ndim != 2 or X.shape[0] != rows:
                return None
            pieces.append(X)
        if not pieces:
            return np.zeros((rows, 0))
        return np.hstack(pieces)


def compile_preprocess(head: Any) -> FastPreprocess | None:
    """A :class:`FastPreprocess` for ``head`` (a fitted ``ColumnTransformer``, alone or
    as a one-step ``Pipeline``), or None when any of it is not on the whitelist: another
    class or a subclass, a sparse output, weights, a pandas output, a transformer's
    option not handled (see each step)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if type(head) is Pipeline:
        if len(head.steps) != 1:
            return None
        head = head.steps[0][1]
    if (
        type(head) is not ColumnTransformer
        or getattr(head, "sparse_output_", True)
        or head.transformer_weights
        or not _default_output(head)
        or getattr(head, "feature_names_in_", None) is None
    ):
        return None
    parts: list[_Part] = []
    for _name, transformer, columns in head.transformers_:
        if isinstance(transformer, str) and transformer == "drop":
            continue
        if isinstance(columns, str):
            return None
        columns = list(columns)
        if not columns:
            continue
        if not all(isinstance(c, str) for c in columns):
            return None
        if isinstance(transformer, str):
            if transformer != "passthrough":
                return None
            parts.append(_Part(columns, "numbers", None, []))
            continue
        if not _default_output(transformer):
            return None
        if _identity(transformer):  # "passthrough", as the fitted transformer holds it
            parts.append(_Part(columns, "numbers", None, []))
            continue
        steps = (
            [s for _, s in transformer.steps] if type(transformer) is Pipeline else [transformer]
        )
        source, first = "numbers", None
        if steps and not _default_output(steps[0]):
            return None
        if steps and _objects_first(steps[0]):
            source, first, steps = "objects", steps[0], steps[1:]
        elif steps and _dates_first(steps[0]):
            source, first, steps = "dates", steps[0], steps[1:]
        compiled: list[_Step] = []
        for step in steps:
            made = _later_step(step)
            if made is None:
                return None
            compiled.append(made)
        parts.append(_Part(columns, source, first, compiled))
    return FastPreprocess(parts)


def describe_model(
    key: str, model: Any, signature: Mapping[str, Any] | None, size_bytes: int
) -> LoadedModel:
    """What :func:`check_columns` and :func:`predict` need to know of ``model``."""
    columns = signature_columns(signature) or training_columns(model)
    head = estimator = None
    if hasattr(model, "steps") and len(model.steps) > 1:
        head, estimator = model[:-1], model[-1]
    final = estimator if estimator is not None else model
    classes = getattr(final, "classes_", None)
    return LoadedModel(
        key=key,
        model=model,
        columns=columns,
        classes=None if classes is None else list(classes),
        size_bytes=max(1, int(size_bytes)),
        head=head,
        estimator=estimator,
        argmax_predicts=classes is not None and _argmax_predicts(final),
        fast=_compiled(head),
    )


def _compiled(head: Any) -> FastPreprocess | None:
    if head is None:
        return None
    try:
        return compile_preprocess(head)
    except Exception:  # an attribute of another scikit-learn version: no fast path
        return None


def load_model(
    storage: Storage,
    *,
    key: str,
    location: str | None,
    signature: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    size_bytes: int | None = None,
) -> LoadedModel:
    """THE loader of a served model: the artifact at ``location`` (the joblib file the
    worker's save node writes, ``models.s3_path``), read and loaded by
    :mod:`pipeline.formats` (its environment check and its loader, the same as
    ``formats.load_version``'s; the deployment's query already gave the location,
    signature and environment, so no second query).

    ``ModelUnavailable`` when there is no artifact, the file is gone, or the version's
    ``environment`` cannot be loaded here (``formats.IncompatibleEnvironment``).
    """
    from pipeline import formats

    if not location:
        raise ModelUnavailable("the model has no artifact")
    try:
        formats.check_environment(f"model {key}", environment or {})
    except formats.IncompatibleEnvironment as exc:
        raise ModelUnavailable(str(exc)) from None
    try:
        with storage.open_read(location) as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ModelUnavailable("the model's artifact is not in storage") from None
    model = formats.load(data, "joblib")
    return describe_model(key, model, signature, size_bytes or len(data))


class ModelCache:
    """Loaded models by key, least recently used evicted first once their bytes pass
    ``max_bytes`` (the one in use is kept even if it alone is larger). Thread-safe;
    concurrent misses of one key wait for a single load."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, LoadedModel] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.loads = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, key: str) -> LoadedModel | None:
        """The model of ``key`` if it is loaded (marked as used), else None."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def get(self, key: str, load: Callable[[], LoadedModel]) -> LoadedModel:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                found = self._items.get(key)
                if found is not None:
                    self._items.move_to_end(key)
                    return found
            try:
                loaded = load()
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                self._loading.pop(key, None)
                self.loads += 1
                self._items[key] = loaded
                self._bytes += loaded.size_bytes
                while self._bytes > self.max_bytes and len(self._items) > 1:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.size_bytes
            return loaded

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


# --- the input ------------------------------------------------------------------------------
#: The body as columns: name -> values (None: missing), and whether it came typed (JSON)
#: or as a table (CSV, Parquet: values are converted to a string column's text).
@dataclass
class Table:
    columns: dict[str, list[Any]]
    rows: int
    typed: bool


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _from_records(records: Any, where: str) -> Table:
    if not isinstance(records, list):
        raise InputError(422, "invalid_input", f"{where} must be a list of records")
    if not records:
        raise InputError(422, "empty_input", f"{where} holds no records")
    names: dict[str, None] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(
                422, "invalid_input", f"{where}[{i}] is not an object of column: value"
            )
        for name in record:
            names.setdefault(name, None)
    columns = {name: [r.get(name) for r in records] for name in names}
    return Table(columns, len(records), True)


def _from_split(split: Any) -> Table:
    if not isinstance(split, dict):
        raise InputError(422, "invalid_input", "dataframe_split must be an object")
    cols, data = split.get("columns"), split.get("data")
    if not isinstance(data, list):
        raise InputError(422, "invalid_input", "dataframe_split.data must be a list of rows")
    if not data:
        raise InputError(422, "empty_input", "dataframe_split.data holds no rows")
    if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
        raise InputError(
            422, "invalid_input", "dataframe_split.columns must be a list of column names"
        )
    if len(set(cols)) != len(cols):
        raise InputError(422, "invalid_input", "dataframe_split.columns names a column twice")
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(cols):
            raise InputError(
                422,
                "invalid_input",
                f"dataframe_split.data[{i}] must be a list of {len(cols)} values",
            )
    return Table({c: [row[j] for row in data] for j, c in enumerate(cols)}, len(data), True)


def _from_instances(instances: Any, expected: Sequence[Column], where: str) -> Table:
    if isinstance(instances, list) and instances and isinstance(instances[0], list):
        names = [c.name for c in expected]
        if not names:
            raise InputError(
                422, "invalid_input", f"{where} as lists needs a model with known columns"
            )
        return _from_split({"columns": names, "data": instances})
    if isinstance(instances, dict):  # column: values (TF serving's columnar form)
        lengths = {len(v) if isinstance(v, list) else -1 for v in instances.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise InputError(422, "invalid_input", f"{where} columns must be lists of one length")
        rows = lengths.pop()
        if rows == 0:
            raise InputError(422, "empty_input", f"{where} holds no rows")
        return Table({k: list(v) for k, v in instances.items()}, rows, True)
    return _from_records(instances, where)


def _from_frame(frame: pd.DataFrame) -> Table:
    if len(frame) == 0:
        raise InputError(422, "empty_input", "the table holds no rows")
    columns = {}
    for name in frame.columns:
        values = frame[name].astype(object).tolist()
        columns[str(name)] = [None if _is_missing(v) else v for v in values]
    return Table(columns, len(frame), False)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def parse_body(body: bytes, content_type: str | None, expected: Sequence[Column] = ()) -> Table:
    """The body as a :class:`Table`. JSON (``application/json``, also when no type is
    given): ``{"records": [...]}``, ``{"dataframe_records": [...]}``,
    ``{"dataframe_split": {"columns", "data"}}``, ``{"instances": ...}`` or
    ``{"inputs": ...}``; CSV (``text/csv``) with a header row; Parquet."""
    if not body or not body.strip():
        raise InputError(422, "empty_body", "the request body is empty")
    media = _media_type(content_type)
    if media in CSV_TYPES:
        try:
            frame = pd.read_csv(io.BytesIO(body))
        except Exception as exc:  # pandas' parser errors are many
            raise InputError(
                422, "invalid_csv", f"the CSV body could not be read: {_first_line(exc)}"
            ) from None
        return _from_frame(frame)
    if media in PARQUET_TYPES:
        try:
            frame = pd.read_parquet(io.BytesIO(body))
        except Exception as exc:
            raise InputError(
                422, "invalid_parquet", f"the Parquet body could not be read: {_first_line(exc)}"
            ) from None
        return _from_frame(frame)
    if media and media not in JSON_TYPES and not media.endswith("+json"):
        raise InputError(
            415,
            "unsupported_media_type",
            f"a body of type {media!r} is not accepted: send application/json, text/csv"
            " or application/vnd.apache.parquet",
        )
    try:
        payload = json.loads(body)
    except UnicodeDecodeError as exc:
        raise InputError(
            422, "invalid_json", f"the body is not valid UTF-8 (byte {exc.start})"
        ) from None
    except RecursionError:
        raise InputError(422, "invalid_json", "the body nests too deeply") from None
    except ValueError as exc:
        raise InputError(422, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InputError(
            422,
            "invalid_input",
            'the body must be an object: {"records": [...]}, {"dataframe_records": [...]},'
            ' {"dataframe_split": {...}} or {"instances": [...]}',
        )
    keys = [k for k in ("records", "dataframe_records", "dataframe_split", "instances", "inputs")]
    given = [k for k in keys if k in payload]
    if len(given) != 1 or len(payload) != 1:
        raise InputError(
            422,
            "invalid_input",
            "the body must hold exactly one of: " + ", ".join(keys),
            {"keys": sorted(str(k) for k in payload)[:20]},
        )
    key = given[0]
    if key == "dataframe_split":
        return _from_split(payload[key])
    if key in ("instances", "inputs"):
        return _from_instances(payload[key], expected, key)
    return _from_records(payload[key], key)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_column(column: Column, values: list[Any], typed: bool) -> tuple[Any, str | None]:
    """The column as an array the model takes, or the reason it is the wrong type."""
    kind = column.kind
    if kind == "number":
        for i, v in enumerate(values):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                return None, f"expected a number, row {i} holds {_show(v)}"
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64), None
    if kind == "boolean":
        for i, v in enumerate(values):
            if v is not None and not isinstance(v, bool | np.bool_):
                return None, f"expected true or false, row {i} holds {_show(v)}"
    elif kind == "string":
        if typed:
            for i, v in enumerate(values):
                if v is not None and not isinstance(v, str):
                    return None, f"expected a string, row {i} holds {_show(v)}"
        else:
            values = [None if v is None else str(v) for v in values]
    elif kind == "datetime":
        for i, v in enumerate(values):
            if v is not None and not isinstance(v, str | pd.Timestamp):
                return None, f"expected a date and time, row {i} holds {_show(v)}"
    elif typed:
        for i, v in enumerate(values):
            if isinstance(v, dict | list):
                return None, f"expected a single value, row {i} holds {_show(v)}"
    out = np.empty(len(values), dtype=object)
    out[:] = [np.nan if v is None else v for v in values]
    return out, None


def check_columns(model: LoadedModel, table: Table, *, max_rows: int) -> pd.DataFrame:
    """The frame the model takes: its columns in order, typed; unknown columns dropped.
    ``InputError`` (422) naming the missing columns and the columns of a wrong type,
    (413) for more rows than ``max_rows``."""
    return pd.DataFrame(check_arrays(model, table, max_rows=max_rows), copy=False)


def check_arrays(model: LoadedModel, table: Table, *, max_rows: int) -> dict[str, np.ndarray]:
    """:func:`check_columns`' columns as arrays by name (numbers float64, the others
    object arrays with NaN for a missing value), in the model's order: what
    :func:`predict_arrays` takes without building a DataFrame. The same checks and
    errors."""
    if table.rows > max_rows:
        raise InputError(
            413,
            "too_many_rows",
            f"{table.rows} rows sent, this deployment takes at most {max_rows} per request",
            {"rows": table.rows, "max_rows": max_rows},
        )
    expected = model.columns or [Column(name, None) for name in table.columns]
    missing = [c.name for c in expected if c.name not in table.columns]
    if missing:
        raise InputError(
            422,
            "missing_columns",
            f"missing column{'s' if len(missing) > 1 else ''}: {', '.join(missing)}",
            {"missing": missing, "expected": [c.name for c in expected]},
        )
    data: dict[str, Any] = {}
    wrong: dict[str, str] = {}
    for column in expected:
        array, problem = _check_column(column, table.columns[column.name], table.typed)
        if problem is not None:
            wrong[column.name] = problem
        else:
            data[column.name] = array
    if wrong:
        raise InputError(
            422,
            "wrong_types",
            "wrong type in column"
            + ("s " if len(wrong) > 1 else " ")
            + "; ".join(f"{k}: {v}" for k, v in wrong.items()),
            {"columns": wrong},
        )
    return data


def _plain(values: Iterable[Any]) -> list[Any]:
    out = []
    for v in values:
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out.append(v)
    return out


def predict_arrays(
    model: LoadedModel, frame: pd.DataFrame | Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's own predictions, and a classifier's probabilities (columns in the
    order of ``model.classes``; None otherwise), as arrays: the preprocessing runs
    once, then the estimator's ``predict`` (and ``predict_proba``; for trees and
    forests, whose ``predict`` is the argmax of ``predict_proba`` in scikit-learn's own
    code, one pass gives both). ``frame`` may be :func:`check_arrays`' columns: up to
    :data:`FAST_MAX_ROWS` rows, the model's :class:`FastPreprocess` transforms them
    (the same bits); otherwise, or for an input it does not take, they become a
    DataFrame for scikit-learn."""
    features = None
    if not isinstance(frame, pd.DataFrame):
        rows = len(next(iter(frame.values()))) if frame else 0
        if model.fast is not None and 0 < rows <= FAST_MAX_ROWS:
            features = model.fast(frame, rows)
        if features is None:
            frame = pd.DataFrame(frame, copy=False)
    if features is not None:
        final = model.estimator
    elif model.head is not None:
        features = model.head.transform(frame)
        final = model.estimator
    else:
        features, final = frame, model.model
    if model.classes is not None and hasattr(final, "predict_proba"):
        proba = forest_proba(final, features)
        if proba is None:
            proba = np.asarray(final.predict_proba(features))
        if model.argmax_predicts:
            predictions = np.asarray(final.classes_).take(np.argmax(proba, axis=1), axis=0)
        else:
            predictions = np.asarray(final.predict(features))
        return predictions, proba
    return np.asarray(final.predict(features)), None


def class_labels(model: LoadedModel) -> list[str]:
    """The classes as the answer names them (text)."""
    return [str(c) for c in _plain(model.classes or [])]


def predict(model: LoadedModel, frame: pd.DataFrame | Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``{"predictions": [...]}``, plus ``"probabilities"`` (one object of class:
    probability per row) for a classifier: :func:`predict_arrays` as JSON values."""
    predictions, proba = predict_arrays(model, frame)
    out: dict[str, Any] = {"predictions": _plain(predictions.tolist())}
    if proba is not None:
        labels = class_labels(model)
        out["probabilities"] = [dict(zip(labels, row, strict=True)) for row in proba.tolist()]
    return out


__all__ = [
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_MAX_ROWS",
    "Column",
    "InputError",
    "LoadedModel",
    "ModelCache",
    "ModelUnavailable",
    "Table",
    "check_arrays",
    "check_columns",
    "compile_preprocess",
    "FastPreprocess",
    "FAST_MAX_ROWS",
    "describe_model",
    "frame_for_model",
    "load_model",
    "parse_body",
    "class_labels",
    "predict",
    "predict_arrays",
    "forest_proba",
    "signature_columns",
    "training_columns",
]


def frame_for_model(model: LoadedModel, frame: pd.DataFrame) -> pd.DataFrame:
    """A table's frame (a dataset version's Parquet rows) as the model takes it,
    column by column at once (the batch path: no per-cell Python): the expected
    columns in order, numbers as float64; ``InputError`` naming missing columns and
    columns that are not numbers where numbers are expected."""
    expected = model.columns or [Column(str(c), None) for c in frame.columns]
    missing = [c.name for c in expected if c.name not in frame.columns]
    if missing:
        raise InputError(
            422,
            "missing_columns",
            f"missing column{'s' if len(missing) > 1 else ''}: {', '.join(missing)}",
            {"missing": missing},
        )
    out: dict[str, Any] = {}
    wrong: dict[str, str] = {}
    for column in expected:
        values = frame[column.name]
        if column.kind == "number" and not (
            pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        ):
            try:
                values = pd.to_numeric(values, errors="raise")
            except (TypeError, ValueError) as exc:
                wrong[column.name] = f"expected numbers: {_first_line(exc)}"
                continue
        if column.kind == "number":
            values = values.astype(np.float64)
        out[column.name] = values
    if wrong:
        raise InputError(
            422,
            "wrong_types",
            "wrong type in " + "; ".join(f"{k}: {v}" for k, v in wrong.items()),
            {"columns": wrong},
        )
    return pd.DataFrame(out, copy=False)
