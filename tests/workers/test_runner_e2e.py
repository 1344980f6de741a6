"""A job's nodes in a child process: cancel, time and memory limits reach a running fit.

Real PostgreSQL and a real worker (in-process, in a thread, so that its child
processes are this process's multiprocessing children). A slow fit is a gradient
boosting of thousands of stages: it would run for minutes, so the cancel or the
limit always finds it running; the tests wait for states, never for time.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from test_worker_e2e import assert_books_balance, balance, job_detail, one, value, wait_for

from workers.main import Worker

from api_helpers import Account, upload

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def noisy_csv(rows: int, classes: int, features: int = 8) -> bytes:
    """Random features and labels: trees grow to one leaf per row, boosting never ends early."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        rng.normal(size=(rows, features)), columns=[f"f{i}" for i in range(features)]
    )
    frame["label"] = [f"c{i}" for i in rng.integers(0, classes, rows)]
    return frame.to_csv(index=False).encode()


def run_model(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    content: bytes,
    algorithm: str,
    hyperparameters: dict[str, Any],
) -> str:
    r = upload(
        client,
        account,
        name="noise",
        content=content,
        filename="noise.csv",
        target_column="label",
        problem_type="classification",
    )
    assert r.status_code == 201, r.text
    drain()
    dataset_id = r.json()["dataset"]["id"]
    body = {
        "nodes": [
            {"id": "data", "type": "dataset", "config": {"dataset_id": dataset_id}},
            {"id": "prep", "type": "preprocess", "config": {}},
            {
                "id": "train",
                "type": "model",
                "config": {"algorithm": algorithm, "hyperparameters": hyperparameters},
            },
            {"id": "keep", "type": "save", "config": {"name": "slow"}},
        ],
        "edges": [
            {"source": "data", "target": "prep"},
            {"source": "prep", "target": "train"},
            {"source": "train", "target": "keep"},
        ],
    }
    r = client.post(
        "/v1/workflows", headers=account.headers, json={"name": "slow", "definition": body}
    )
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/workflows/{r.json()['id']}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["job"]["id"])


SLOW = {"n_estimators": 5000, "max_depth": 6}


@contextmanager
def running(worker: Worker) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=worker.run, kwargs={"until_idle": True})
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        thread.join(120)
    assert not thread.is_alive()


def node_status(engine: Engine, job_id: str, node_id: str) -> str:
    return str(
        value(
            engine,
            "SELECT status::text FROM job_nodes WHERE job_id = :j AND node_id = :n",
            j=job_id,
            n=node_id,
        )
    )


def job_status(engine: Engine, job_id: str) -> str:
    return str(value(engine, "SELECT status::text FROM jobs WHERE id = :id", id=job_id))


def refunds(engine: Engine, job_id: str) -> int:
    return int(
        value(
            engine,
            "SELECT count(*) FROM credit_transactions WHERE job_id = :id AND type = 'refund'",
            id=job_id,
        )
    )


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers: look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_cancel_reaches_a_running_fit(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    make_worker: Callable[..., Worker],
    engine: Engine,
) -> None:
    before = balance(client, account)
    job_id = run_model(client, account, drain, noisy_csv(3000, 3), "gradient_boosting", SLOW)
    worker = make_worker(slots=1)
    with running(worker):
        wait_for(lambda: node_status(engine, job_id, "train") == "running", "the fit to start")
        children = multiprocessing.active_children()
        assert children, "the fit runs in a child process"
        pids = [c.pid for c in children if c.pid is not None]
        r = client.post(f"/v1/jobs/{job_id}/cancel", headers=account.headers)
        assert r.status_code == 200, r.text
        wait_for(lambda: job_status(engine, job_id) == "cancelled", "the cancel", seconds=30)
    assert all(gone(pid) for pid in pids)  # the fit's process was ended
    assert [outcome for _, outcome in worker.outcomes] == ["cancelled"]
    job = job_detail(client, account, job_id)
    statuses = {n["node_id"]: n["status"] for n in job["nodes"]}
    # The interrupted node failed (a started node is never skipped), the rest skipped.
    assert statuses == {"data": "success", "prep": "success", "train": "failed", "keep": "skipped"}
    assert refunds(engine, job_id) == 1
    assert balance(client, account) == before
    assert value(engine, "SELECT count(*) FROM models") == 0
    assert_books_balance(engine)


def test_a_job_over_its_time_limit_fails_and_is_refunded(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    make_worker: Callable[..., Worker],
    engine: Engine,
) -> None:
    before = balance(client, account)
    job_id = run_model(client, account, drain, noisy_csv(3000, 3), "gradient_boosting", SLOW)
    # The free tier's limit, made short; the fit would take minutes.
    worker = make_worker(slots=1, time_limit_free_seconds=3)
    with running(worker):
        wait_for(lambda: job_status(engine, job_id) == "failed", "the time limit", seconds=60)
    job = job_detail(client, account, job_id)
    assert job["error_message"] == "time limit of 3 s exceeded (the free tier's limit)"
    nodes = {n["node_id"]: n for n in job["nodes"]}
    assert nodes["train"]["status"] == "failed"
    assert nodes["train"]["error_message"].startswith("time limit of 3 s exceeded")
    assert nodes["keep"]["status"] == "skipped"
    assert refunds(engine, job_id) == 1
    assert balance(client, account) == before
    assert_books_balance(engine)


def test_a_job_over_its_memory_limit_fails_with_the_reason(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    make_worker: Callable[..., Worker],
    engine: Engine,
) -> None:
    before = balance(client, account)
    # Unpruned trees on random labels of 20 classes: about 1 MB per tree, 3 GB in all.
    job_id = run_model(
        client,
        account,
        drain,
        noisy_csv(3000, 20),
        "random_forest",
        {"n_estimators": 3000, "max_features": 1},
    )
    # One thread: an allocation refused in a helper thread of a parallel fit can kill
    # that pool's machinery and surface as another error (docs/workers.md).
    worker = make_worker(slots=1, memory_limit_mb=200, threads_per_slot=1)
    with running(worker):
        wait_for(lambda: job_status(engine, job_id) == "failed", "the memory limit", seconds=120)
    job = job_detail(client, account, job_id)
    assert job["error_message"] == "node 'train' failed: memory limit of 200 MB exceeded"
    nodes = {n["node_id"]: n for n in job["nodes"]}
    assert nodes["data"]["status"] == nodes["prep"]["status"] == "success"
    assert nodes["train"]["status"] == "failed"
    assert nodes["keep"]["status"] == "skipped"
    assert refunds(engine, job_id) == 1
    assert balance(client, account) == before
    assert_books_balance(engine)


def test_a_stopping_worker_ends_the_fit_and_gives_the_job_back(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    make_worker: Callable[..., Worker],
    engine: Engine,
) -> None:
    before = balance(client, account)
    job_id = run_model(client, account, drain, noisy_csv(3000, 3), "gradient_boosting", SLOW)
    worker = make_worker(slots=1)
    with running(worker):
        wait_for(lambda: node_status(engine, job_id, "train") == "running", "the fit to start")
        pids = [c.pid for c in multiprocessing.active_children() if c.pid is not None]
        assert pids
        worker.stop()  # what SIGTERM does
    assert all(gone(pid) for pid in pids)
    assert [outcome for _, outcome in worker.outcomes] == ["released"]
    row = one(
        engine, "SELECT status::text, attempts, leased_by FROM jobs WHERE id = :id", id=job_id
    )
    assert tuple(row) == ("queued", 0, None)
    statuses = value(
        engine, "SELECT array_agg(DISTINCT status::text) FROM job_nodes WHERE job_id = :j", j=job_id
    )
    assert statuses == ["pending"]
    assert refunds(engine, job_id) == 0
    assert balance(client, account) < before  # still charged: the job will run again
    assert_books_balance(engine)


def test_a_child_killed_from_outside_fails_the_job_with_how_it_ended(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    make_worker: Callable[..., Worker],
    engine: Engine,
) -> None:
    before = balance(client, account)
    job_id = run_model(client, account, drain, noisy_csv(3000, 3), "gradient_boosting", SLOW)
    worker = make_worker(slots=1, memory_limit_mb=0)
    with running(worker):
        wait_for(lambda: node_status(engine, job_id, "train") == "running", "the fit to start")
        (child,) = multiprocessing.active_children()
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)  # the kernel's OOM killer, say
        wait_for(lambda: job_status(engine, job_id) == "failed", "the worker to notice")
    job = job_detail(client, account, job_id)
    assert job["error_message"] == "the node's process was killed by signal SIGKILL"
    nodes = {n["node_id"]: n for n in job["nodes"]}
    assert nodes["train"]["status"] == "failed"
    assert nodes["keep"]["status"] == "skipped"
    assert refunds(engine, job_id) == 1
    assert balance(client, account) == before
    assert_books_balance(engine)
