"""Issue 15, data the way users bring it: identifier and constant columns left out,
dates as features, junk in a numeric column, include / exclude lists."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from pipeline.definition import PreprocessConfig
from pipeline.execute import LoadedDataset, NodeFailed, prepare
from pipeline.ingest import read_table
from pipeline.profile import profile


def _frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in range(n)],
            "row_number": np.arange(1, n + 1),
            "source": ["web"] * n,
            "signed_up": pd.date_range("2024-01-01", periods=n, freq="37h"),
            "amount": rng.normal(size=n),
            "plan": np.where(np.arange(n) % 3 == 0, "pro", "free"),
            "churned": np.where(np.arange(n) % 2 == 0, "yes", "no"),
        }
    )


def _prepare(frame: pd.DataFrame, config: PreprocessConfig, **kw) -> dict:
    data = LoadedDataset(
        frame=frame, target_column="churned", problem_type="classification", name="d", **kw
    )
    return prepare(data, config).output


def test_identifier_and_constant_columns_are_left_out_by_default():
    out = _prepare(_frame(), PreprocessConfig())
    assert out["ignored_columns"]["customer_id"].startswith("an identifier")
    assert out["ignored_columns"]["row_number"].startswith("an identifier")
    assert out["ignored_columns"]["source"].startswith("constant")
    assert set(out["features"]) == {"signed_up", "amount", "plan"}


def test_dates_become_features_and_the_pipeline_fits_and_predicts():
    frame = _frame()
    data = LoadedDataset(
        frame=frame, target_column="churned", problem_type="classification", name="d"
    )
    prepared = prepare(data, PreprocessConfig())
    assert prepared.output["date_features"] == ["signed_up"]
    transformer = prepared.transformer.fit(prepared.x_train)
    names = list(transformer.get_feature_names_out())
    for part in ("year", "month", "day", "day_of_week"):
        assert any(n.endswith(f"signed_up_{part}") for n in names), names
    matrix = transformer.transform(frame[prepared.features])
    column = [i for i, n in enumerate(names) if n.endswith("signed_up_month")][0]
    assert list(np.asarray(matrix)[:3, column]) == [1.0, 1.0, 1.0]


def test_include_and_exclude_lists():
    out = _prepare(_frame(), PreprocessConfig(include=("customer_id", "amount")))
    assert out["features"] == ["customer_id", "amount"]  # named: kept, identifier or not
    assert out["ignored_columns"]["plan"] == "not included"
    out = _prepare(_frame(), PreprocessConfig(exclude=("plan",)))
    assert "plan" not in out["features"] and out["ignored_columns"]["plan"] == "excluded"
    out = _prepare(_frame(), PreprocessConfig(), ignored_columns=("amount",))
    assert out["ignored_columns"]["amount"] == "ignored by the dataset"
    with pytest.raises(NodeFailed, match="'ghost'"):
        _prepare(_frame(), PreprocessConfig(exclude=("ghost",)))


def test_the_lists_are_strict():
    with pytest.raises(ValidationError):
        PreprocessConfig.model_validate({"include": ["a"], "exclude": ["a"]})
    with pytest.raises(ValidationError):
        PreprocessConfig.model_validate({"include": "a"})
    with pytest.raises(ValidationError):
        PreprocessConfig.model_validate({"exclude": [""]})
    with pytest.raises(ValidationError):
        PreprocessConfig.model_validate({"exclude": ["a\x00"]})
    with pytest.raises(ValidationError):
        PreprocessConfig.model_validate({"drop": ["a"]})


def test_a_numeric_column_with_a_few_junk_values():
    lines = [f"{i},{i * 1.5}" for i in range(40)] + ["?,1", "-,2", "n/a,3"]
    csv = ("count,price\n" + "\n".join(lines) + "\n").encode()
    frame = read_table(io.BytesIO(csv), "csv", "data.csv")
    assert pd.api.types.is_numeric_dtype(frame["count"])
    assert frame["count"].isna().sum() == 3
    stats = profile(frame)
    assert stats.column_stats["count"]["coerced_values"] == 2  # "n/a" is missing anyway
    assert "coerced_values" not in stats.column_stats["price"]
    assert any(w["kind"] == "coerced" and w["column"] == "count" for w in stats.warnings)


def test_a_text_column_is_not_coerced():
    lines = [f"{i},{'x' if i % 2 else i}" for i in range(40)]
    frame = read_table(io.BytesIO(("a,b\n" + "\n".join(lines)).encode()), "csv", "data.csv")
    assert not pd.api.types.is_numeric_dtype(frame["b"])
    assert "coerced_values" not in profile(frame).column_stats["b"]
