"""A dataset version's statistical profile, ready for ``dataset_profiles``.

``profile(frame)`` computes everything on the whole frame (a file larger than memory
is out of scope, as for ingestion) and returns plain JSON: no NaN or infinity (None
instead: PostgreSQL's jsonb refuses NaN), no numpy scalars, timestamps as ISO
strings, so ``json.dumps(..., allow_nan=False)`` works on every field.

Per column (``column_stats[name]``): ``dtype`` (pandas' name), ``kind`` (see
``column_kind``), ``nulls``, ``null_fraction``, ``distinct`` (missing values not
counted), then by kind:

- numeric: ``min``, ``max``, ``mean``, ``std`` (sample, ddof=1; None below two
  values) and ``histogram`` ``{"edges", "counts"}`` (10 equal bins; one bin
  ``[v, v]`` for a constant column; None without values). Infinities are left out of
  these, as missing values are.
- categorical, text, boolean: ``top_values``, the 10 most frequent ``{"value",
  "count"}`` (values longer than 200 characters are cut).
- datetime: ``min`` and ``max``.

``correlations`` (Pearson, pairwise-complete, None where undefined, e.g. a constant
column) is computed only between 2 and 50 numeric columns, else None. ``warnings``
lists ``{"column", "kind", "message"}``: ``empty`` (every value missing), ``missing``
(more than half missing), ``constant`` (a single distinct value), ``high_cardinality``
(a categorical column whose every row differs: an identifier?),
``coerced`` (a column of numbers whose few junk values were read as missing, at
ingestion: ``column_stats[name]["coerced_values"]`` says how many) and
``duplicate_rows`` (``column`` None).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

HISTOGRAM_BINS = 10
TOP_VALUES = 10
MAX_VALUE_CHARS = 200
MAX_CORRELATED_COLUMNS = 50
MISSING_WARNING_FRACTION = 0.5
#: Strings whose median length is above this are free text, not categories.
TEXT_MEDIAN_LENGTH = 50
#: Rows looked at to tell text from categories (the median of a sample is enough).
KIND_SAMPLE_ROWS = 10_000


@dataclass
class Profile:
    """One ``dataset_profiles`` row, less its ids: every field is JSON-safe."""

    row_count: int
    column_count: int
    missing_cells: int
    duplicate_rows: int
    memory_bytes: int
    column_stats: dict[str, dict[str, Any]]
    correlations: dict[str, dict[str, float | None]] | None
    warnings: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def column_kind(series: pd.Series) -> str:
    """``numeric``, ``categorical``, ``boolean``, ``datetime`` or ``text``.

    Strings are ``categorical`` unless their median length is over 50 characters
    (free text). Timedeltas, bytes and other odd values are ``text``.
    """
    dtype = series.dtype
    if ptypes.is_bool_dtype(dtype):
        return "boolean"
    if isinstance(dtype, pd.CategoricalDtype):
        return "categorical"
    if ptypes.is_datetime64_any_dtype(dtype):
        return "datetime"
    if ptypes.is_timedelta64_dtype(dtype) or ptypes.is_complex_dtype(dtype):
        return "text"
    if ptypes.is_numeric_dtype(dtype):
        return "numeric"
    values = series.dropna().head(KIND_SAMPLE_ROWS)
    if ptypes.is_object_dtype(dtype):
        inferred = ptypes.infer_dtype(values, skipna=True)
        if inferred == "boolean":
            return "boolean"
        if inferred not in ("string", "empty"):
            return "text"
    if len(values) and values.astype(str).str.len().median() > TEXT_MEDIAN_LENGTH:
        return "text"
    return "categorical"


def _number(value: Any) -> float | None:
    """A finite Python float, or None."""
    if value is None or value is pd.NA:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def json_value(value: Any) -> Any:
    """A value as JSON can hold it: Python scalars, ISO timestamps, None for NaN/inf."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.datetime64 | np.timedelta64):
        value = pd.Timestamp(value) if isinstance(value, np.datetime64) else pd.Timedelta(value)
        if value is pd.NaT:
            return None
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | str):
        return value[:MAX_VALUE_CHARS] if isinstance(value, str) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime | dt.date | dt.time | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")[:MAX_VALUE_CHARS]
    return str(value)[:MAX_VALUE_CHARS]


def _hashable(series: pd.Series) -> pd.Series:
    """The series, or its text when it holds unhashable values (lists, dicts)."""
    if ptypes.is_object_dtype(series.dtype):
        try:
            series.nunique()
        except TypeError:
            return series.map(lambda v: v if v is None else str(v))
    return series


def _numeric_stats(series: pd.Series) -> dict[str, Any]:
    values = series.to_numpy(dtype="float64", na_value=np.nan)
    finite = values[np.isfinite(values)]
    stats: dict[str, Any] = {"min": None, "max": None, "mean": None, "std": None}
    stats["histogram"] = None
    if finite.size == 0:
        return stats
    if ptypes.is_integer_dtype(series.dtype):
        # Exact, even past 2**53, where a float would round.
        stats["min"], stats["max"] = int(series.min()), int(series.max())
    else:
        stats["min"], stats["max"] = _number(finite.min()), _number(finite.max())
    stats["mean"] = _number(finite.mean())
    stats["std"] = _number(finite.std(ddof=1)) if finite.size > 1 else None
    low, high = float(finite.min()), float(finite.max())
    if low == high:
        stats["histogram"] = {"edges": [low, high], "counts": [int(finite.size)]}
    else:
        counts, edges = np.histogram(finite, bins=HISTOGRAM_BINS)
        stats["histogram"] = {
            "edges": [float(e) for e in edges],
            "counts": [int(c) for c in counts],
        }
    return stats


def _top_values(series: pd.Series) -> list[dict[str, Any]]:
    counts = series.value_counts(dropna=True)
    counts = counts[counts > 0]  # a categorical lists its unused categories too
    return [
        {"value": json_value(value), "count": int(count)}
        for value, count in counts.head(TOP_VALUES).items()
    ]


def _column_stats(series: pd.Series, kind: str, rows: int) -> dict[str, Any]:
    series = _hashable(series)
    nulls = int(series.isna().sum())
    stats: dict[str, Any] = {
        "dtype": str(series.dtype),
        "kind": kind,
        "nulls": nulls,
        "null_fraction": nulls / rows if rows else 0.0,
        "distinct": int(series.nunique(dropna=True)),
    }
    if kind == "numeric":
        stats.update(_numeric_stats(series))
    elif kind == "datetime":
        stats["min"] = json_value(series.min()) if nulls < rows else None
        stats["max"] = json_value(series.max()) if nulls < rows else None
    else:
        stats["top_values"] = _top_values(series)
    return stats


def _correlations(frame: pd.DataFrame, numeric: list[str]) -> dict[str, dict[str, float | None]]:
    values = frame[numeric].astype("float64").replace([np.inf, -np.inf], np.nan)
    matrix = values.corr(method="pearson")
    return {
        str(a): {str(b): _number(matrix.iloc[i, j]) for j, b in enumerate(numeric)}
        for i, a in enumerate(numeric)
    }


def _column_warnings(name: str, stats: dict[str, Any], rows: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def warn(kind: str, message: str) -> None:
        found.append({"column": name, "kind": kind, "message": message})

    if rows and stats["nulls"] == rows:
        warn("empty", "every value is missing")
        return found
    if stats["null_fraction"] > MISSING_WARNING_FRACTION:
        warn("missing", f"{stats['null_fraction']:.0%} of the values are missing")
    if rows > 1 and stats["distinct"] == 1:
        warn("constant", "the column holds a single value")
    if rows > 1 and stats["kind"] == "categorical" and stats["distinct"] == rows:
        warn("high_cardinality", "every row has a different value (an identifier?)")
    return found


def _duplicate_rows(frame: pd.DataFrame) -> int:
    if frame.shape[1] == 0 or frame.shape[0] < 2:
        return 0
    try:
        return int(frame.duplicated().sum())
    except TypeError:  # unhashable values (lists, dicts): compare their text
        return int(frame.astype(str).duplicated().sum())


def profile(frame: pd.DataFrame) -> Profile:
    """The profile of ``frame``; column names are expected unique (ingestion checks)."""
    rows, columns = frame.shape
    column_stats: dict[str, dict[str, Any]] = {}
    warnings: list[dict[str, Any]] = []
    numeric: list[str] = []
    coerced: dict[str, int] = frame.attrs.get("coerced_values") or {}
    for name, series in frame.items():
        kind = column_kind(series)
        stats = _column_stats(series, kind, rows)
        if coerced.get(str(name)):
            stats["coerced_values"] = int(coerced[str(name)])
            warnings.append(
                {
                    "column": str(name),
                    "kind": "coerced",
                    "message": f"{stats['coerced_values']} values that are not numbers were"
                    " read as missing",
                }
            )
        column_stats[str(name)] = stats
        warnings.extend(_column_warnings(str(name), stats, rows))
        if kind == "numeric":
            numeric.append(name)
    duplicates = _duplicate_rows(frame)
    if duplicates:
        warnings.append(
            {
                "column": None,
                "kind": "duplicate_rows",
                "message": f"{duplicates} rows repeat an earlier row",
            }
        )
    correlations = None
    if 2 <= len(numeric) <= MAX_CORRELATED_COLUMNS:
        correlations = _correlations(frame, numeric)
    return Profile(
        row_count=int(rows),
        column_count=int(columns),
        missing_cells=int(frame.isna().sum().sum()),
        duplicate_rows=duplicates,
        memory_bytes=int(frame.memory_usage(deep=True).sum()),
        column_stats=column_stats,
        correlations=correlations,
        warnings=warnings,
    )
