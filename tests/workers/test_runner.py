"""workers.runner without the database: nodes in a child process, and how it is ended."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris

from pipeline.storage import Storage, make_storage
from workers.runner import ChildDied, DatasetSource, Interrupted, NodeProcess


def definition(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "data", "type": "dataset", "config": {}},
            {"id": "prep", "type": "preprocess", "config": {}},
            {
                "id": "train",
                "type": "model",
                "config": {"algorithm": "gradient_boosting", "hyperparameters": hyperparameters},
            },
            {"id": "keep", "type": "save", "config": {"name": "m"}},
        ],
        "edges": [
            {"source": "data", "target": "prep"},
            {"source": "prep", "target": "train"},
            {"source": "train", "target": "keep"},
        ],
    }


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return make_storage(str(tmp_path / "storage"))


@pytest.fixture
def source(storage: Storage) -> DatasetSource:
    frame = load_iris(as_frame=True).frame
    rng = np.random.default_rng(0)
    frame["target"] = rng.integers(0, 3, len(frame))  # noise: boosting never ends early
    location = storage.write_bytes("iris.parquet", frame.to_parquet())
    return DatasetSource(location, "target", "classification", "iris", 1)


def never() -> str | None:
    return None


def test_nodes_run_in_one_child_that_keeps_their_values(
    storage: Storage, source: DatasetSource
) -> None:
    with NodeProcess(definition({"n_estimators": 5}), storage, threads=1) as process:
        assert process.run("data", source, never).output["rows"] == 150  # type: ignore[index]
        pid = process.pid
        assert process.run("prep", None, never).status == "ok"
        trained = process.run("train", None, never)
        assert trained.status == "ok" and "accuracy" in trained.output["metrics"]  # type: ignore[index]
        saved = process.run("keep", None, never)
        assert process.pid == pid
    assert saved.artifact is not None and saved.model is not None
    model = joblib.load(io.BytesIO(saved.artifact))
    assert len(model.predict(load_iris(as_frame=True).frame.head(3))) == 3


def test_a_missing_file_is_the_nodes_failure(storage: Storage, source: DatasetSource) -> None:
    gone = DatasetSource(str(Path(source.location).with_name("nope.parquet")), None, None, "x", 4)
    with NodeProcess(definition({}), storage) as process:
        reply = process.run("data", gone, never)
    assert reply.status == "failed"
    assert (
        reply.error == "node 'data': the Parquet file of dataset version 4 is missing from storage"
    )


def slow_child(storage: Storage, source: DatasetSource) -> NodeProcess:
    process = NodeProcess(
        definition({"n_estimators": 5000, "max_depth": 8}), storage, poll_seconds=0.2
    )
    for node_id in ("data", "prep"):
        assert process.run(node_id, source if node_id == "data" else None, never).status == "ok"
    return process


def test_a_reason_from_watch_ends_the_child(storage: Storage, source: DatasetSource) -> None:
    process = slow_child(storage, source)
    calls: list[int] = []

    def watch() -> str | None:
        calls.append(1)
        return "cancelled" if len(calls) >= 2 else None

    child = process.process
    assert child is not None
    with process, pytest.raises(Interrupted) as caught:
        process.run("train", None, watch)
    assert caught.value.reason == "cancelled"
    assert not child.is_alive()
    assert child.exitcode is not None and child.exitcode < 0  # ended by a signal


def test_an_error_in_watch_ends_the_child_and_is_raised(
    storage: Storage, source: DatasetSource
) -> None:
    """The worker's lease lost, its database gone: the fit does not outlive the job."""
    process = slow_child(storage, source)

    def watch() -> str | None:
        raise RuntimeError("lease lost")

    child = process.process
    assert child is not None
    with process, pytest.raises(RuntimeError, match="lease lost"):
        process.run("train", None, watch)
    assert not child.is_alive()


def test_a_dead_child_is_reported(storage: Storage, source: DatasetSource) -> None:
    process = slow_child(storage, source)

    def kill() -> str | None:
        assert process.process is not None
        process.process.kill()
        return None

    with process, pytest.raises(ChildDied, match="killed by signal SIGKILL"):
        process.run("train", None, kill)


def test_the_frame_is_read_from_storage_not_sent(storage: Storage, source: DatasetSource) -> None:
    assert pd.read_parquet(source.location).shape == (150, 5)
