"""Trained models for the serving tests: a real scikit-learn pipeline built the way the
worker's save node builds it (``pipeline.execute``), stored where the worker stores
it, registered as a version (``database.registry``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from database import registry
from database.storage import Storage
from pipeline.definition import PreprocessConfig
from pipeline.execute import build_transformer, serialize

NUMERIC = ["sepal_length", "sepal_width", "petal_length"]
CATEGORICAL = ["colour"]
SIGNATURE = {
    "inputs": [{"name": c, "type": "double"} for c in NUMERIC]
    + [{"name": "colour", "type": "string"}]
}


def frame(rows: int = 120, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(
        {
            "sepal_length": rng.normal(5.8, 0.8, rows),
            "sepal_width": rng.normal(3.0, 0.4, rows),
            "petal_length": rng.normal(3.7, 1.7, rows),
            "colour": rng.choice(["red", "blue", "green"], rows),
        }
    )
    y = np.where(
        x["petal_length"] < 2.5,
        "setosa",
        np.where(x["petal_length"] < 4.8, "versicolor", "virginica"),
    )
    return x, y


def fit(kind: str = "forest", seed: int = 0, rows: int = 120) -> Pipeline:
    x, y = frame(rows, seed)
    transformer = build_transformer(PreprocessConfig(), NUMERIC, CATEGORICAL)
    if kind == "forest":
        estimator: Any = RandomForestClassifier(n_estimators=10, random_state=seed)
    elif kind == "logistic":
        estimator = LogisticRegression(max_iter=500)
    else:
        estimator = RandomForestRegressor(n_estimators=10, random_state=seed)
        y = x["sepal_length"].to_numpy() * 2
    model = Pipeline([("preprocess", transformer), ("model", estimator)])
    model.fit(x, y)
    return model


@dataclass
class Registered:
    registered_model_id: uuid.UUID
    version_id: uuid.UUID
    version: int
    model_id: uuid.UUID
    pipeline: Pipeline


def store_model(
    engine: Engine,
    storage: Storage,
    user_id: uuid.UUID,
    pipeline: Pipeline,
    *,
    problem_type: str = "classification",
) -> tuple[uuid.UUID, str]:
    """The artifact in storage and its ``models`` row, as the worker writes them."""
    model_id = uuid.uuid4()
    data = serialize(pipeline)
    location = storage.write_bytes(f"models/{user_id}/{model_id}.joblib", data)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO models (id, user_id, name, algorithm, problem_type, s3_path,"
                " size_bytes) VALUES (:id, :u, :n, 'random_forest',"
                " CAST(:p AS problem_type), :s, :b)"
            ),
            {
                "id": model_id,
                "u": user_id,
                "n": f"m-{model_id.hex[:6]}",
                "p": problem_type,
                "s": location,
                "b": len(data),
            },
        )
    return model_id, location


def register(
    engine: Engine,
    storage: Storage,
    user_id: uuid.UUID,
    pipeline: Pipeline | None = None,
    *,
    registered_model_id: uuid.UUID | None = None,
    signature: dict[str, Any] | None = SIGNATURE,
    problem_type: str = "classification",
    environment: dict[str, Any] | None = None,
) -> Registered:
    pipeline = pipeline if pipeline is not None else fit()
    model_id, _ = store_model(engine, storage, user_id, pipeline, problem_type=problem_type)
    with Session(engine) as session:
        if registered_model_id is None:
            registered_model_id = registry.create_registered_model(
                session, user_id, f"rm-{uuid.uuid4().hex[:8]}"
            ).id
        version = registry.register_version(
            session,
            registered_model_id,
            model_id,
            signature=signature,
            environment=environment,
        )
        session.commit()
        return Registered(registered_model_id, version.id, version.version, model_id, pipeline)


#: Seconds :func:`slow_identity` sleeps (0 while a slow model is fitted).
SLOW_SECONDS = 0.0


def slow_identity(x: Any) -> Any:
    """A step of a slow model (``timeout_ms`` tests): waits, then passes ``x`` on."""
    import time

    time.sleep(SLOW_SECONDS)
    return x


def fit_slow(seed: int = 0) -> Pipeline:
    """A pipeline whose prediction takes ``SLOW_SECONDS`` (set it after fitting)."""
    from sklearn.preprocessing import FunctionTransformer

    x, y = frame(120, seed)
    model = Pipeline(
        [("slow", FunctionTransformer(slow_identity, validate=False)), ("inner", fit(seed=seed))]
    )
    model.fit(x, y)
    return model
