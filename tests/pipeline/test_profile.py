"""pipeline.profile: numbers checked by hand on small frames, always JSON-safe."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.profile import Profile, column_kind, profile


def plain_json(value: Any) -> None:
    """Only what JSON has: no numpy scalars, no NaN or infinity anywhere."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            plain_json(item)
    elif isinstance(value, list):
        for item in value:
            plain_json(item)
    else:
        assert value is None or type(value) in (str, int, float, bool), (value, type(value))
        if isinstance(value, float):
            assert math.isfinite(value)


def checked(frame: pd.DataFrame) -> Profile:
    result = profile(frame)
    data = result.as_dict()
    plain_json(data)
    json.dumps(data, allow_nan=False)
    return result


def kinds(result: Profile) -> set[tuple[str | None, str]]:
    return {(w["column"], w["kind"]) for w in result.warnings}


@pytest.fixture
def small() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": [1.0, 2.0, 3.0, 4.0, None],
            "y": [2, 4, 6, 8, 10],
            "c": pd.Series(["a", "b", "a", "a", None], dtype="str"),
            "k": [7, 7, 7, 7, 7],
            "m": [None, None, None, 1.0, None],
        }
    )


def test_table_counts(small: pd.DataFrame) -> None:
    result = checked(small)
    assert (result.row_count, result.column_count) == (5, 5)
    assert result.missing_cells == 1 + 1 + 4
    assert result.duplicate_rows == 0
    assert result.memory_bytes == int(small.memory_usage(deep=True).sum())


def test_numeric_stats_by_hand(small: pd.DataFrame) -> None:
    x = checked(small).column_stats["x"]
    assert x["dtype"] == "float64" and x["kind"] == "numeric"
    assert (x["nulls"], x["null_fraction"], x["distinct"]) == (1, 0.2, 4)
    assert (x["min"], x["max"], x["mean"]) == (1.0, 4.0, 2.5)
    # Sample standard deviation of 1, 2, 3, 4: sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3).
    assert x["std"] == pytest.approx(math.sqrt(5 / 3))
    assert x["histogram"]["counts"] == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert x["histogram"]["edges"] == pytest.approx([1 + 0.3 * i for i in range(11)])

    y = checked(small).column_stats["y"]
    assert (y["min"], y["max"], y["mean"]) == (2, 10, 6.0)
    assert type(y["min"]) is int
    assert y["std"] == pytest.approx(math.sqrt(40 / 4))
    assert sum(y["histogram"]["counts"]) == 5


def test_constant_column_has_one_bin(small: pd.DataFrame) -> None:
    k = checked(small).column_stats["k"]
    assert k["histogram"] == {"edges": [7.0, 7.0], "counts": [5]}
    assert (k["min"], k["max"], k["std"], k["distinct"]) == (7, 7, 0.0, 1)


def test_single_value_has_no_std(small: pd.DataFrame) -> None:
    m = checked(small).column_stats["m"]
    assert (m["nulls"], m["mean"], m["std"]) == (4, 1.0, None)


def test_categorical_top_values(small: pd.DataFrame) -> None:
    c = checked(small).column_stats["c"]
    assert c["kind"] == "categorical" and c["distinct"] == 2 and c["nulls"] == 1
    assert c["top_values"] == [{"value": "a", "count": 3}, {"value": "b", "count": 1}]
    assert "histogram" not in c and "mean" not in c


def test_correlations(small: pd.DataFrame) -> None:
    corr = checked(small).correlations
    assert corr is not None and set(corr) == {"x", "y", "k", "m"}
    assert corr["x"]["y"] == pytest.approx(1.0) and corr["y"]["x"] == pytest.approx(1.0)
    assert corr["x"]["x"] == pytest.approx(1.0)
    assert corr["x"]["k"] is None  # a constant column has no correlation
    assert corr["y"]["m"] is None  # one pair of values: undefined


def test_correlation_sign_by_hand() -> None:
    frame = pd.DataFrame({"a": [1, 2, 3], "b": [3, 1, 2]})
    # Pearson: cov = (-1*1 + 0*-1 + 1*0) / 2 = -0.5; both variances 1.
    assert checked(frame).correlations == {
        "a": {"a": 1.0, "b": pytest.approx(-0.5)},
        "b": {"a": pytest.approx(-0.5), "b": 1.0},
    }


def test_correlations_only_between_2_and_50_numeric_columns() -> None:
    assert checked(pd.DataFrame({"a": [1, 2], "s": ["x", "y"]})).correlations is None
    wide = pd.DataFrame({f"c{i}": [i, i + 1, i * 2] for i in range(51)})
    assert checked(wide).correlations is None
    assert checked(wide.iloc[:, :50]).correlations is not None


def test_warnings_fire(small: pd.DataFrame) -> None:
    # m: one value among missing ones is constant too.
    assert kinds(checked(small)) == {("k", "constant"), ("m", "missing"), ("m", "constant")}
    frame = pd.DataFrame(
        {
            "id": pd.Series(["u1", "u2", "u3", "u4"], dtype="str"),
            "empty": [None, None, None, None],
            "v": [1, 1, 2, 2],
        }
    )
    result = checked(pd.concat([frame, frame.iloc[[0]]], ignore_index=True))
    assert kinds(result) == {
        ("empty", "empty"),
        (None, "duplicate_rows"),
    }
    assert result.duplicate_rows == 1
    assert kinds(checked(frame)) == {("id", "high_cardinality"), ("empty", "empty")}
    missing = next(w for w in checked(small).warnings if w["kind"] == "missing")
    assert missing["message"] == "80% of the values are missing"


def test_infinities_and_nan_never_reach_json() -> None:
    frame = pd.DataFrame({"v": [1.0, np.inf, -np.inf, np.nan, 3.0], "w": [np.nan] * 5})
    result = checked(frame)
    v = result.column_stats["v"]
    assert (v["min"], v["max"], v["mean"]) == (1.0, 3.0, 2.0)
    assert sum(v["histogram"]["counts"]) == 2
    w = result.column_stats["w"]
    assert (w["min"], w["mean"], w["std"], w["histogram"]) == (None, None, None, None)
    assert result.correlations == {"v": {"v": 1.0, "w": None}, "w": {"v": None, "w": None}}


def test_booleans_datetimes_text() -> None:
    frame = pd.DataFrame(
        {
            "ok": [True, False, True, None],
            "when": pd.to_datetime(
                ["2024-01-02 03:04:05", None, "2023-12-31 00:00:00", "2024-06-01 00:00:00"]
            ),
            "note": ["word " * 30, "other " * 30, "word " * 30, "x" * 300],
        }
    ).astype({"ok": "boolean"})
    stats = checked(frame).column_stats
    assert stats["ok"]["kind"] == "boolean"
    assert stats["ok"]["top_values"] == [
        {"value": True, "count": 2},
        {"value": False, "count": 1},
    ]
    assert stats["when"]["kind"] == "datetime"
    assert stats["when"]["min"] == "2023-12-31T00:00:00"
    assert stats["when"]["max"] == "2024-06-01T00:00:00"
    assert stats["note"]["kind"] == "text"
    assert stats["note"]["top_values"][0] == {"value": ("word " * 30)[:200], "count": 2}
    assert all(len(t["value"]) <= 200 for t in stats["note"]["top_values"])


def test_top_values_are_capped() -> None:
    frame = pd.DataFrame({"c": [f"v{i % 25}" for i in range(100)] + ["v0"]})
    top = checked(frame).column_stats["c"]["top_values"]
    assert len(top) == 10 and top[0] == {"value": "v0", "count": 5}


def test_empty_table() -> None:
    result = checked(pd.DataFrame({"a": pd.Series([], dtype="float64"), "b": []}))
    assert (result.row_count, result.column_count, result.duplicate_rows) == (0, 2, 0)
    assert result.column_stats["a"]["null_fraction"] == 0.0
    assert result.column_stats["a"]["histogram"] is None
    assert result.warnings == []


def test_unhashable_values_are_counted_as_text() -> None:
    frame = pd.DataFrame({"j": [{"a": 1}, {"a": 1}, [1]]})
    result = checked(frame)
    assert result.column_stats["j"]["distinct"] == 2 and result.duplicate_rows == 1


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (pd.Series([1, 2]), "numeric"),
        (pd.Series([1.5, None]), "numeric"),
        (pd.Series([1, None], dtype="Int64"), "numeric"),
        (pd.Series([True, False]), "boolean"),
        (pd.Series([True, None], dtype=object), "boolean"),
        (pd.Series(["a", "b"], dtype="category"), "categorical"),
        (pd.Series(["a", "b"]), "categorical"),
        (pd.Series(["long text " * 10, None]), "text"),
        (pd.Series(pd.to_datetime(["2024-01-01"], utc=True)), "datetime"),
        (pd.Series([1, "a"], dtype=object), "text"),
        (pd.Series(pd.to_timedelta(["1D"])), "text"),
    ],
)
def test_column_kind(values: pd.Series, kind: str) -> None:
    assert column_kind(values) == kind
