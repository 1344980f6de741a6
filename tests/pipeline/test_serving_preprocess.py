"""pipeline.serving.FastPreprocess gives exactly scikit-learn's preprocessing.

The platform's preprocess node (``pipeline.execute.build_transformer``) fitted on real
data (scikit-learn's wine set, with a text, a true/false and a date column, and missing
values), for every option it has (imputation mean / median / most frequent / none,
scaling standard / min-max / none, encoding one-hot / ordinal / none); then requests
as the API parses them (JSON records with nulls, NaN, unknown categories, numbers
in a text column) compared with ``ColumnTransformer.transform`` bit for bit, and the
whole model's ``predict`` / ``predict_proba``. Cases it does not reproduce are
refused (scikit-learn answers, and raises what it raises)."""

from __future__ import annotations

import itertools
import json
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from pipeline.definition import PreprocessConfig
from pipeline.execute import build_transformer
from pipeline.serving import (
    InputError,
    check_arrays,
    check_columns,
    compile_preprocess,
    describe_model,
    parse_body,
    predict,
    predict_arrays,
)

NUMERIC = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium"]
SIGNATURE = {
    "inputs": [{"name": n, "type": "double"} for n in NUMERIC]
    + [
        {"name": "band", "type": "string"},
        {"name": "flag", "type": "boolean"},
        {"name": "when", "type": "datetime"},
    ]
}


def _frame() -> tuple[pd.DataFrame, np.ndarray]:
    loaded = load_wine(as_frame=True)
    frame = loaded.data[NUMERIC].copy()
    rng = np.random.default_rng(3)
    n = len(frame)
    frame["band"] = pd.Series(rng.choice(["low", "mid", "high"], n), dtype=object)
    frame["flag"] = pd.Series(rng.random(n) < 0.4, dtype=object)
    days = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D")
    frame["when"] = pd.Series(days.strftime("%Y-%m-%dT%H:%M:%S"), dtype=object)
    holes = rng.random(frame.shape) < 0.06
    for j, name in enumerate(frame.columns):
        frame.loc[holes[:, j], name] = None if frame[name].dtype == object else np.nan
    labels = np.asarray(loaded.target_names)[loaded.target.to_numpy()]
    return frame, labels


FRAME, LABELS = _frame()


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in frame.to_dict(orient="records"):
        out.append(
            {k: (None if (isinstance(v, float) and np.isnan(v)) else v) for k, v in row.items()}
        )
    return out


def _requests() -> list[list[dict[str, Any]]]:
    """One-row and several-row requests: nulls, a JSON NaN, unknown categories, a
    number and a boolean in the text column, a text and a number in the true/false
    column (the signature refuses some: those are compared as errors)."""
    records = _records(FRAME.iloc[:40])
    odd = [
        {**records[0], "band": "purple"},
        {**records[1], "band": None, "flag": None, "when": None},
        {**records[2], "alcohol": float("nan")},
        {**records[3], "band": "low", "when": "not a date"},
        {**{k: None for k in records[4]}},
    ]
    return [[r] for r in records[:8]] + [records, odd, [odd[0]], [odd[4]]]


def _bits(a: Any) -> tuple[Any, ...]:
    a = np.asarray(a)
    return (a.dtype, a.shape, a.tobytes() if a.dtype != object else a.tolist())


CONFIGS = [
    PreprocessConfig(impute=i, scale=s, encode=e)
    for i, s, e in itertools.product(
        ["mean", "median", "most_frequent", "none"],
        ["standard", "minmax", "none"],
        ["onehot", "ordinal", "none"],
    )
]


def _fit(config: PreprocessConfig, estimator: Any) -> Pipeline:
    transformer = build_transformer(config, NUMERIC, ["band", "flag"], ["when"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # without imputation the estimator must take NaN: trees do
        return Pipeline([("preprocess", transformer), ("model", estimator)]).fit(FRAME, LABELS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.impute}-{c.scale}-{c.encode}")
def test_every_option_of_the_preprocess_node_is_exact(config: PreprocessConfig) -> None:
    model = _fit(config, RandomForestClassifier(n_estimators=10, random_state=0))
    for signature in (SIGNATURE, None):
        loaded = describe_model("k", model, signature, 1)
        assert loaded.fast is not None, "the platform's preprocessing is on the whitelist"
        for records in _requests():
            body = json.dumps({"records": records}).encode()
            table = parse_body(body, "application/json", loaded.columns)
            try:
                arrays = check_arrays(loaded, table, max_rows=100)
            except InputError as exc:
                with pytest.raises(InputError) as again:
                    check_columns(loaded, table, max_rows=100)
                assert (again.value.code, again.value.details) == (exc.code, exc.details)
                continue
            frame = pd.DataFrame(arrays, copy=False)
            expected = model[0].transform(frame)
            got = loaded.fast(arrays, table.rows)
            assert got is not None
            assert _bits(got) == _bits(expected)
            predictions, proba = predict_arrays(loaded, arrays)
            assert _bits(predictions) == _bits(model.predict(frame))
            assert _bits(proba) == _bits(model.predict_proba(frame))


@pytest.mark.parametrize("encode", ["onehot", "ordinal"])
@pytest.mark.parametrize("scale", ["standard", "minmax"])
def test_a_linear_model_gets_the_same_bits(encode: str, scale: str) -> None:
    config = PreprocessConfig(impute="median", scale=scale, encode=encode)  # type: ignore[arg-type]
    model = _fit(config, LogisticRegression(max_iter=2000))
    loaded = describe_model("k", model, SIGNATURE, 1)
    assert loaded.fast is not None
    for records in _requests():
        table = parse_body(json.dumps({"records": records}).encode(), None, loaded.columns)
        try:
            arrays = check_arrays(loaded, table, max_rows=100)
        except InputError:
            continue
        frame = pd.DataFrame(arrays, copy=False)
        answer = predict(loaded, arrays)
        assert answer == predict(loaded, frame)
        predictions, proba = predict_arrays(loaded, arrays)
        assert _bits(predictions) == _bits(model.predict(frame))
        assert _bits(proba) == _bits(model.predict_proba(frame))


def test_text_where_a_number_is_expected_is_the_same_422() -> None:
    model = _fit(PreprocessConfig(), RandomForestClassifier(n_estimators=5, random_state=0))
    loaded = describe_model("k", model, SIGNATURE, 1)
    record = {**_records(FRAME.iloc[:1])[0], "alcohol": "13.2", "band": 7}
    table = parse_body(json.dumps({"records": [record]}).encode(), None, loaded.columns)
    with pytest.raises(InputError) as fast:
        check_arrays(loaded, table, max_rows=10)
    with pytest.raises(InputError) as slow:
        check_columns(loaded, table, max_rows=10)
    assert fast.value.code == slow.value.code == "wrong_types"
    assert fast.value.details == slow.value.details
    assert set(fast.value.details["columns"]) == {"alcohol", "band"}


def test_infinity_is_left_to_scikit_learn_which_refuses_it() -> None:
    model = _fit(PreprocessConfig(), RandomForestClassifier(n_estimators=5, random_state=0))
    loaded = describe_model("k", model, SIGNATURE, 1)
    table = parse_body(
        b'{"records": [{"alcohol": Infinity, "malic_acid": 1, "ash": 2,'
        b' "alcalinity_of_ash": 3, "magnesium": 4, "band": "low", "flag": true,'
        b' "when": "2024-02-02"}]}',
        None,
        loaded.columns,
    )
    arrays = check_arrays(loaded, table, max_rows=10)
    assert loaded.fast is not None and loaded.fast(arrays, 1) is None
    with pytest.raises(ValueError, match="infinity"):
        predict(loaded, arrays)


def _ct(*parts: Any, **options: Any) -> ColumnTransformer:
    return ColumnTransformer(list(parts), remainder="drop", **options).fit(FRAME)


def test_what_is_not_on_the_whitelist_is_refused() -> None:
    objects = build_transformer(PreprocessConfig(), [], ["band"]).transformers[0][1].steps[0]
    numeric = ("n", Pipeline([("i", SimpleImputer()), ("s", StandardScaler())]), NUMERIC)
    assert compile_preprocess(_ct(numeric)) is not None

    class MyScaler(StandardScaler):
        pass

    refused = [
        # a subclass may change anything
        _ct(("n", Pipeline([("i", SimpleImputer()), ("s", MyScaler())]), NUMERIC)),
        # the imputer's missing-value indicator
        _ct(("n", SimpleImputer(add_indicator=True), NUMERIC)),
        # one-hot with drop, with infrequent categories, warning on unknowns
        _ct(("c", Pipeline([objects, ("e", OneHotEncoder(drop="first"))]), ["band"])),
        _ct(("c", Pipeline([objects, ("e", OneHotEncoder(min_frequency=5))]), ["band"])),
        _ct(("c", Pipeline([objects, ("e", OneHotEncoder(handle_unknown="warn"))]), ["band"])),
        _ct(("c", Pipeline([objects, ("e", OrdinalEncoder(max_categories=2))]), ["band"])),
        # a sparse output (one-hot of many columns, little else)
        _ct(("c", Pipeline([objects, ("e", OneHotEncoder())]), ["band", "when"])),
        # weights, a pandas output
        _ct(numeric, transformer_weights={"n": 2.0}),
        _ct(numeric).set_output(transform="pandas"),
    ]
    for transformer in refused:
        assert compile_preprocess(transformer) is None, transformer


def test_unknown_values_under_handle_unknown_error_go_to_scikit_learn() -> None:
    objects = build_transformer(PreprocessConfig(), [], ["band"]).transformers[0][1].steps[0]
    encoder = ("e", OneHotEncoder(handle_unknown="error", sparse_output=False))
    head = _ct(
        (
            "c",
            Pipeline([objects, ("i", SimpleImputer(strategy="most_frequent")), encoder]),
            ["band"],
        )
    )
    fast = compile_preprocess(head)
    assert fast is not None
    known = {"band": np.array(["low", np.nan], dtype=object)}
    assert _bits(fast(known, 2)) == _bits(head.transform(pd.DataFrame(known)))
    unknown = {"band": np.array(["purple"], dtype=object)}
    assert fast(unknown, 1) is None
    with pytest.raises(ValueError, match="unknown categories"):
        head.transform(pd.DataFrame(unknown))


def test_large_inputs_and_plain_frames_take_scikit_learns_path() -> None:
    model = _fit(PreprocessConfig(), RandomForestClassifier(n_estimators=5, random_state=0))
    loaded = describe_model("k", model, SIGNATURE, 1)
    calls = []
    real = loaded.fast
    loaded.fast = lambda data, rows: calls.append(rows) or real(data, rows)
    frame = FRAME.iloc[:3]
    predict_arrays(loaded, frame)
    assert calls == []
    table = parse_body(json.dumps({"records": _records(FRAME)}).encode(), None, loaded.columns)
    arrays = check_arrays(loaded, table, max_rows=10_000)
    big = {k: np.concatenate([v] * 6) for k, v in arrays.items()}  # > FAST_MAX_ROWS
    predictions, _ = predict_arrays(loaded, big)
    assert calls == []
    assert _bits(predictions) == _bits(model.predict(pd.DataFrame(big)))
