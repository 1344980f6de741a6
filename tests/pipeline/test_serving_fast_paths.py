"""pipeline.serving's fast paths give exactly the model's own answers.

``predict_arrays`` computes a classifier's probabilities once and, for the
estimators whose ``predict`` is ``classes_[argmax(predict_proba)]`` in scikit-learn's
own code, takes the predictions from them; for scikit-learn's random forests and
extra trees run in one thread, ``forest_proba`` sums the trees' fractions without
joblib. Each is checked here against ``model.predict`` / ``model.predict_proba`` on
real data (scikit-learn's bundled wine and breast cancer sets, with a text column and
missing values through the platform's own preprocessing), bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

from pipeline.definition import PreprocessConfig
from pipeline.execute import build_transformer
from pipeline.serving import describe_model, forest_proba, predict, predict_arrays

WHITELISTED = [
    lambda: RandomForestClassifier(n_estimators=25, random_state=0),
    lambda: ExtraTreesClassifier(n_estimators=25, random_state=0),
    lambda: DecisionTreeClassifier(random_state=0),
    lambda: ExtraTreeClassifier(random_state=0),
]


def _data(name: str) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    loaded = (load_wine if name == "wine" else load_breast_cancer)(as_frame=True)
    frame = loaded.data.iloc[:, :6].copy()
    numeric = [str(c) for c in frame.columns]
    frame.columns = numeric
    # A text column and missing values, which the platform's preprocessing fills.
    frame["band"] = pd.cut(frame[numeric[0]], 3, labels=["low", "mid", "high"]).astype(object)
    rng = np.random.default_rng(1)
    holes = rng.random(frame.shape) < 0.05
    frame = frame.mask(pd.DataFrame(holes, columns=frame.columns, index=frame.index))
    labels = np.asarray(loaded.target_names)[loaded.target.to_numpy()]
    return frame, labels, numeric


def _fitted(name: str, make: Any) -> tuple[Pipeline, pd.DataFrame]:
    frame, labels, numeric = _data(name)
    model = Pipeline(
        [
            ("preprocess", build_transformer(PreprocessConfig(), numeric, ["band"])),
            ("model", make()),
        ]
    ).fit(frame, labels)
    return model, frame


@pytest.mark.parametrize("dataset", ["wine", "breast_cancer"])
@pytest.mark.parametrize("make", WHITELISTED, ids=lambda m: type(m()).__name__)
def test_fast_paths_equal_the_models_own_answers(dataset: str, make: Any) -> None:
    model, frame = _fitted(dataset, make)
    loaded = describe_model("k", model, None, 1)
    assert loaded.argmax_predicts
    for rows in (frame.iloc[:1], frame.iloc[7:8], frame.iloc[:50], frame):
        predictions, proba = predict_arrays(loaded, rows)
        assert np.array_equal(predictions, model.predict(rows))
        assert proba is not None
        assert np.array_equal(proba, model.predict_proba(rows))  # bit for bit
    answer = predict(loaded, frame.iloc[:3])
    assert answer["predictions"] == model.predict(frame.iloc[:3]).tolist()


@pytest.mark.parametrize("make", WHITELISTED[:2], ids=lambda m: type(m()).__name__)
def test_forest_proba_is_the_forests_own(make: Any) -> None:
    model, frame = _fitted("wine", make)
    features = model[:-1].transform(frame)
    got = forest_proba(model[-1], features)
    assert got is not None and got.dtype == np.float64
    assert np.array_equal(got, model[-1].predict_proba(features))


def test_forest_proba_declines_what_it_cannot_reproduce_exactly() -> None:
    model, frame = _fitted("wine", lambda: RandomForestClassifier(n_estimators=5, n_jobs=2))
    features = model[:-1].transform(frame)
    # Threads add the trees in any order: not taken (the estimator answers).
    assert forest_proba(model[-1], features) is None

    class Custom(RandomForestClassifier):  # a subclass may override predict_proba
        pass

    custom, _ = _fitted("wine", lambda: Custom(n_estimators=5))
    assert forest_proba(custom[-1], features) is None
    unfitted = RandomForestClassifier()
    assert forest_proba(unfitted, features) is None


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_svc_is_not_taken_as_argmax_of_its_probabilities() -> None:
    # SVC(probability=True): predict_proba comes from Platt scaling, predict from the
    # decision function; they can disagree, so both are asked.
    model, frame = _fitted("breast_cancer", lambda: SVC(probability=True, random_state=0))
    loaded = describe_model("k", model, None, 1)
    assert not loaded.argmax_predicts
    predictions, proba = predict_arrays(loaded, frame)
    assert np.array_equal(predictions, model.predict(frame))
    assert proba is not None and np.array_equal(proba, model.predict_proba(frame))
