"""End to end: upload through the API, ingestion, a workflow run, a trained model.

Against the real PostgreSQL, with real workers (in-process, and as separate
processes where one is killed or signalled). After each story the ledger and
the counters agree (``database.verify``).
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_iris
from sqlalchemy import Connection, Engine, text

from database import verify
from database.limits import FreeLimits, Limits
from pipeline.storage import Storage
from workers import execution, queue
from workers.ingestion import run_ingestion
from workers.main import Worker

from api_helpers import Account, upload

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def iris_csv() -> bytes:
    frame = load_iris(as_frame=True).frame
    frame["species"] = frame.pop("target").map(dict(enumerate(load_iris().target_names)))
    return frame.to_csv(index=False).encode()


def with_gaps(csv: bytes) -> bytes:
    """Iris with missing measurements: fitting without imputation fails."""
    frame = pd.read_csv(io.BytesIO(csv))
    frame.loc[::7, "sepal length (cm)"] = None
    return frame.to_csv(index=False).encode()


def one(engine: Engine, statement: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(statement), params).one()


def value(engine: Engine, statement: str, **params: Any) -> Any:
    return one(engine, statement, **params)[0]


def ingested_dataset(
    client: TestClient, account: Account, drain: Callable[..., Worker], content: bytes
) -> dict[str, Any]:
    r = upload(
        client,
        account,
        name="iris",
        content=content,
        filename="iris.csv",
        target_column="species",
        problem_type="classification",
    )
    assert r.status_code == 201, r.text
    drain()
    return dict(r.json())


def definition(
    dataset_id: str,
    *,
    impute: str = "mean",
    kind: str = "confusion_matrix",
    algorithm: str = "random_forest",
) -> dict[str, Any]:
    hyperparameters = {"n_estimators": 25} if algorithm == "random_forest" else {}
    return {
        "nodes": [
            {"id": "data", "type": "dataset", "config": {"dataset_id": dataset_id}},
            {"id": "prep", "type": "preprocess", "config": {"impute": impute, "test_size": 0.3}},
            {
                "id": "train",
                "type": "model",
                "config": {"algorithm": algorithm, "hyperparameters": hyperparameters},
            },
            {"id": "chart", "type": "visualize", "config": {"kind": kind}},
            {"id": "keep", "type": "save", "config": {"name": "iris forest"}},
        ],
        "edges": [
            {"source": "data", "target": "prep"},
            {"source": "prep", "target": "train"},
            {"source": "train", "target": "chart"},
            {"source": "train", "target": "keep"},
        ],
    }


def start_run(client: TestClient, account: Account, dataset_id: str, **kw: Any) -> dict[str, Any]:
    r = client.post(
        "/v1/workflows",
        headers=account.headers,
        json={"name": "iris", "definition": definition(dataset_id, **kw)},
    )
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/workflows/{r.json()['id']}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def balance(client: TestClient, account: Account) -> int:
    r = client.get("/v1/credits/balance", headers=account.headers)
    assert r.status_code == 200, r.text
    return int(r.json()["balance"])


def job_detail(client: TestClient, account: Account, job_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/jobs/{job_id}", headers=account.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def assert_books_balance(engine: Engine) -> None:
    report = verify.verify(engine)
    assert report.ok, report.render()


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 300) -> None:
    """A readiness poll, no timing assertion: a worker process started on a loaded
    machine (two test processes, their workers and servers on 2 cores) takes a minute
    to import and reach its first node."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


# --- the whole story -----------------------------------------------------------------------
def test_upload_to_trained_model(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    engine: Engine,
    storage: Storage,
) -> None:
    uploaded = ingested_dataset(client, account, drain, iris_csv())
    dataset_id = uploaded["dataset"]["id"]
    version = one(
        engine,
        "SELECT status::text, row_count, column_count, s3_path, parquet_size_bytes,"
        " columns_metadata, processed_at FROM dataset_versions WHERE id = :id",
        id=uploaded["version"]["id"],
    )
    assert (version.status, version.row_count, version.column_count) == ("completed", 150, 5)
    assert version.parquet_size_bytes == storage.size(version.s3_path) > 0
    assert [c["name"] for c in version.columns_metadata["columns"]][-1] == "species"
    assert pd.read_parquet(version.s3_path).shape == (150, 5)
    r = client.get(f"/v1/datasets/{dataset_id}/versions/1/profile", headers=account.headers)
    assert r.status_code == 200, r.text
    stats = r.json()["column_stats"]
    assert stats["species"]["distinct"] == 3
    assert stats["petal length (cm)"]["min"] == pytest.approx(1.0)
    assert sum(stats["sepal width (cm)"]["histogram"]["counts"]) == 150

    before = balance(client, account)
    run = start_run(client, account, dataset_id)
    price = before - balance(client, account)
    assert price > 0
    worker = drain()
    job = job_detail(client, account, run["job"]["id"])
    assert job["status"] == "completed", job
    assert {n["node_id"]: n["status"] for n in job["nodes"]} == dict.fromkeys(
        ["data", "prep", "train", "chart", "keep"], "success"
    )
    assert [outcome for _, outcome in worker.outcomes] == ["completed"]
    metrics = job["results"]["metrics"]["train"]
    assert metrics["accuracy"] > 0.85 and metrics["f1"] > 0.85
    chart = next(n for n in job["nodes"] if n["node_id"] == "chart")["output_data"]
    test_rows = next(n for n in job["nodes"] if n["node_id"] == "train")["output_data"]["test_rows"]
    assert sum(map(sum, chart["matrix"])) == test_rows
    assert sorted(chart["labels"]) == ["setosa", "versicolor", "virginica"]

    r = client.get("/v1/models", headers=account.headers)
    assert r.status_code == 200, r.text
    (listed,) = r.json()["items"]
    assert listed["has_artifact"] is True
    r = client.get(f"/v1/models/{listed['id']}", headers=account.headers)
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["name"] == "iris forest" and model["algorithm"] == "random_forest"
    assert model["problem_type"] == "classification"
    assert model["metrics"]["accuracy"] == metrics["accuracy"]
    assert model["hyperparameters"]["n_estimators"] == 25
    r = client.get(f"/v1/models/{listed['id']}/artifact", headers=account.headers)
    assert r.status_code == 200, r.text
    fitted = joblib.load(io.BytesIO(r.content))
    raw = pd.read_csv(io.BytesIO(iris_csv())).drop(columns=["species"]).head(5)
    assert set(fitted.predict(raw)) <= {"setosa", "versicolor", "virginica"}

    assert balance(client, account) == before - price  # kept: the job completed
    counts = one(
        engine,
        "SELECT model_count, dataset_count, storage_used_bytes FROM users WHERE id = :id",
        id=account.user_id,
    )
    assert counts.model_count == 1 and counts.dataset_count == 1
    # The model's artifact counts in storage too, with the bytes stored.
    model_size = value(engine, "SELECT size_bytes FROM models WHERE id = :id", id=listed["id"])
    assert model_size == len(r.content) > 0
    assert counts.storage_used_bytes == len(iris_csv()) + version.parquet_size_bytes + model_size
    assert_books_balance(engine)


def test_a_model_over_the_storage_quota_is_not_saved(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    engine: Engine,
    storage_dir: Path,
) -> None:
    uploaded = ingested_dataset(client, account, drain, iris_csv())
    used = value(engine, "SELECT storage_used_bytes FROM users WHERE id = :id", id=account.user_id)
    before = balance(client, account)
    run = start_run(client, account, uploaded["dataset"]["id"])
    # Room for a few bytes, not for the model: the save node fails, the job is refunded.
    drain(tier_limits=Limits(free=FreeLimits(storage_bytes=used + 10)))
    job = job_detail(client, account, run["job"]["id"])
    assert job["status"] == "failed", job
    nodes = {n["node_id"]: n for n in job["nodes"]}
    assert nodes["train"]["status"] == "success"
    assert nodes["keep"]["status"] == "failed"
    assert "storage quota exceeded" in nodes["keep"]["error_message"]
    assert balance(client, account) == before
    assert value(engine, "SELECT count(*) FROM models") == 0
    assert (
        value(engine, "SELECT storage_used_bytes FROM users WHERE id = :id", id=account.user_id)
        == used
    )
    assert not list((storage_dir / "models").rglob("*.joblib"))
    assert_books_balance(engine)


# --- ingestion failures --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("filename", "content", "says"),
    [
        ("broken.parquet", b"PAR1 this is not parquet at all", "parquet"),
        ("broken.xlsx", b"\x00\x01 not a spreadsheet", "excel"),
        ("broken.json", b'[{"a": 1}, {"a": ', "json"),
    ],
)
def test_corrupt_upload_fails_cleanly(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    engine: Engine,
    storage_dir: Path,
    filename: str,
    content: bytes,
    says: str,
) -> None:
    r = upload(client, account, name="bad", content=content, filename=filename)
    assert r.status_code == 201, r.text
    drain()
    version = one(
        engine,
        "SELECT status::text, error_message, s3_path, row_count, parquet_size_bytes,"
        " columns_metadata FROM dataset_versions WHERE id = :id",
        id=r.json()["version"]["id"],
    )
    assert version.status == "failed"
    assert says in version.error_message.lower()
    assert (version.s3_path, version.row_count, version.parquet_size_bytes) == (None, None, None)
    assert version.columns_metadata is None
    ingestion = one(
        engine,
        "SELECT status::text, error_message, leased_by FROM ingestion_jobs WHERE id = :id",
        id=r.json()["ingestion_job"]["id"],
    )
    assert (ingestion.status, ingestion.error_message, ingestion.leased_by) == (
        "failed",
        version.error_message,
        None,
    )
    assert not (storage_dir / "datasets").exists()  # no Parquet file left behind
    dataset_id = r.json()["dataset"]["id"]
    profile = client.get(f"/v1/datasets/{dataset_id}/versions/1/profile", headers=account.headers)
    assert profile.status_code == 409
    assert profile.json()["error"]["details"]["status"] == "failed"
    assert_books_balance(engine)


# --- a failing node ------------------------------------------------------------------------
def test_failing_node_skips_downstream_and_refunds(
    client: TestClient, account: Account, drain: Callable[..., Worker], engine: Engine
) -> None:
    uploaded = ingested_dataset(client, account, drain, with_gaps(iris_csv()))
    before = balance(client, account)
    # Logistic regression refuses missing values; without imputation it fails.
    run = start_run(
        client, account, uploaded["dataset"]["id"], impute="none", algorithm="logistic_regression"
    )
    assert balance(client, account) < before
    drain()
    job = job_detail(client, account, run["job"]["id"])
    assert job["status"] == "failed"
    nodes = {n["node_id"]: n for n in job["nodes"]}
    assert nodes["train"]["status"] == "failed"
    assert "nan" in nodes["train"]["error_message"].lower()
    assert nodes["data"]["status"] == nodes["prep"]["status"] == "success"
    assert nodes["chart"]["status"] == nodes["keep"]["status"] == "skipped"
    assert "train" in job["error_message"]
    assert balance(client, account) == before  # refunded, once
    refunds = value(
        engine,
        "SELECT count(*) FROM credit_transactions WHERE job_id = :id AND type = 'refund'",
        id=run["job"]["id"],
    )
    assert refunds == 1
    assert value(engine, "SELECT count(*) FROM models") == 0
    assert_books_balance(engine)


# --- cancel --------------------------------------------------------------------------------
def test_cancel_is_honoured_between_nodes(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    make_worker: Callable[..., Worker],
    engine: Engine,
) -> None:
    """The owner cancels while the worker is about to run the preprocess node: the
    model never trains. (A cancel inside a node: tests/workers/test_runner_e2e.py.)"""
    uploaded = ingested_dataset(client, account, drain, iris_csv())
    before = balance(client, account)
    run = start_run(client, account, uploaded["dataset"]["id"])
    job_id = run["job"]["id"]
    worker = make_worker()
    asked: list[int] = []
    with node_locked(engine, job_id, "prep"):
        thread = threading.Thread(target=worker.run, kwargs={"until_idle": True})
        thread.start()
        wait_for(lambda: waiting_on_lock(engine), "the worker to reach the preprocess node")

        def cancel() -> None:
            # A lock not granted within DB_LOCK_TIMEOUT_MS is the API's retryable 503
            # (busy): a loaded machine may release the node's lock later than
            # that, and a client asks again, as this one does.
            for _ in range(10):
                r = client.post(f"/v1/jobs/{job_id}/cancel", headers=account.headers)
                if r.status_code != 503 or r.json()["error"]["code"] != "busy":
                    break
            asked.append(r.status_code)

        canceller = threading.Thread(target=cancel)
        canceller.start()  # waits for the worker's hold on the job row
        wait_for(
            lambda: bool(
                value(
                    engine,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                )
                >= 2
            ),
            "the cancel to wait behind the worker",
        )
    canceller.join(60)
    thread.join(120)
    assert asked == [200]
    job = job_detail(client, account, job_id)
    assert job["status"] == "cancelled"
    statuses = {n["node_id"]: n["status"] for n in job["nodes"]}
    assert statuses["data"] == "success"
    # The cancel is seen once the preprocess node ends, or while it runs if it takes
    # longer than the worker's watch period (the node then fails, interrupted): either
    # way the model never trains.
    assert statuses["prep"] in ("success", "failed")
    assert [statuses[n] for n in ("train", "chart", "keep")] == ["skipped"] * 3
    assert balance(client, account) == before
    assert_books_balance(engine)


# --- workers racing ------------------------------------------------------------------------
def test_two_workers_share_the_queue_without_running_a_job_twice(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    make_worker: Callable[..., Worker],
    engine: Engine,
) -> None:
    uploaded = ingested_dataset(client, account, drain, iris_csv())
    with engine.begin() as conn:  # the free tier runs 2 jobs at once; pro, 10
        conn.execute(text("UPDATE users SET tier = 'pro' WHERE id = :id"), {"id": account.user_id})
    jobs = [start_run(client, account, uploaded["dataset"]["id"])["job"]["id"] for _ in range(4)]
    workers = [make_worker(slots=2), make_worker(slots=2)]
    threads = [threading.Thread(target=w.run, kwargs={"until_idle": True}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ran = sorted(str(c.id) for w in workers for c, _ in w.outcomes)
    assert ran == sorted(jobs)  # each job taken once, by one of them
    rows = [
        one(engine, "SELECT status::text, attempts FROM jobs WHERE id = :id", id=j) for j in jobs
    ]
    assert all(tuple(r) == ("completed", 1) for r in rows)
    assert value(engine, "SELECT count(*) FROM models") == 4
    assert_books_balance(engine)


# --- a worker process killed, or stopped ------------------------------------------------------
@contextmanager
def node_locked(engine: Engine, job_id: str, node_id: str) -> Iterator[Connection]:
    """Hold the row lock of one job node: a worker reaching it waits there."""
    with engine.connect() as conn:
        conn.execute(
            text("SELECT 1 FROM job_nodes WHERE job_id = :j AND node_id = :n FOR UPDATE"),
            {"j": job_id, "n": node_id},
        )
        yield conn
        conn.rollback()


def worker_process(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "workers", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def waiting_on_lock(engine: Engine) -> bool:
    return bool(
        value(
            engine,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'UPDATE job_nodes%'",
        )
    )


def test_killed_worker_is_recovered(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    engine: Engine,
    worker_env: dict[str, str],
) -> None:
    uploaded = ingested_dataset(client, account, drain, iris_csv())
    before = balance(client, account)
    job_id = start_run(client, account, uploaded["dataset"]["id"])["job"]["id"]
    env = {**worker_env, "WORKER_LEASE_SECONDS": "2", "WORKER_HEARTBEAT_SECONDS": "0.5"}
    with node_locked(engine, job_id, "train"):
        process = worker_process(env)
        try:
            wait_for(lambda: waiting_on_lock(engine), "the worker to reach the model node")
            first = one(engine, "SELECT leased_by, attempts FROM jobs WHERE id = :id", id=job_id)
            assert first.attempts == 1
            process.kill()  # SIGKILL: no goodbye, the lease is left to expire
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
    wait_for(
        lambda: value(
            engine,
            "SELECT lease_expires_at < now() AND NOT EXISTS (SELECT 1 FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock') FROM jobs WHERE id = :id",
            id=job_id,
        ),
        "the dead worker's lease to expire",
    )
    assert value(engine, "SELECT status::text FROM jobs WHERE id = :id", id=job_id) == "running"
    drain()  # recovery first, then the job again
    job = job_detail(client, account, job_id)
    assert job["status"] == "completed", job
    assert value(engine, "SELECT attempts FROM jobs WHERE id = :id", id=job_id) == 2
    assert value(engine, "SELECT count(*) FROM models WHERE job_id = :id", id=job_id) == 1
    assert balance(client, account) < before  # charged once, not refunded
    charges = value(
        engine, "SELECT count(*) FROM credit_transactions WHERE job_id = :id", id=job_id
    )
    assert charges == 1
    assert_books_balance(engine)


def test_sigterm_releases_the_job_before_its_next_node(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    engine: Engine,
    worker_env: dict[str, str],
) -> None:
    uploaded = ingested_dataset(client, account, drain, iris_csv())
    job_id = start_run(client, account, uploaded["dataset"]["id"])["job"]["id"]
    with node_locked(engine, job_id, "prep"):
        process = worker_process(worker_env)
        try:
            wait_for(lambda: waiting_on_lock(engine), "the worker to reach the preprocess node")
            process.send_signal(signal.SIGTERM)
        except BaseException:
            process.kill()
            raise
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode()
    assert b"released" in output
    row = one(
        engine, "SELECT status::text, attempts, leased_by FROM jobs WHERE id = :id", id=job_id
    )
    assert tuple(row) == ("queued", 0, None)  # back in the queue, this attempt not counted
    statuses = value(
        engine,
        "SELECT array_agg(DISTINCT status::text) FROM job_nodes WHERE job_id = :j",
        j=job_id,
    )
    assert statuses == ["pending"]
    drain()
    assert job_detail(client, account, job_id)["status"] == "completed"
    assert_books_balance(engine)


# --- a worker that lost its lease ----------------------------------------------------------
def take_over(engine: Engine, kind: str, row_id: str) -> queue.Claim:
    """Worker A's lease expires and is recovered; worker B claims the work."""
    table = "jobs" if kind == "job" else "ingestion_jobs"
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE {table} SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": row_id},
        )
    assert queue.recover_expired(engine, max_attempts=3).requeued == 1
    claim = queue.claim(engine, kind, "B", 30)  # type: ignore[arg-type]
    assert claim is not None and str(claim.id) == row_id
    return claim


def test_ingestion_by_a_worker_that_lost_its_lease_changes_nothing(
    client: TestClient, account: Account, engine: Engine, storage: Storage, storage_dir: Path
) -> None:
    r = upload(client, account, name="iris", content=iris_csv(), filename="iris.csv")
    assert r.status_code == 201, r.text
    first = queue.claim(engine, "ingestion", "A", 30)
    assert first is not None
    second = take_over(engine, "ingestion", r.json()["ingestion_job"]["id"])
    assert run_ingestion(engine, storage, second) == "completed"
    with pytest.raises(queue.LeaseLost):
        run_ingestion(engine, storage, first)  # A wakes up late: refused, its file removed
    location = value(
        engine, "SELECT s3_path FROM dataset_versions WHERE id = :id", id=r.json()["version"]["id"]
    )
    assert [str(p) for p in (storage_dir / "datasets").rglob("*.parquet")] == [location]
    assert pd.read_parquet(location).shape == (150, 5)
    assert_books_balance(engine)


def test_a_job_whose_lease_was_taken_over_stops_at_once(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    engine: Engine,
    storage: Storage,
) -> None:
    uploaded = ingested_dataset(client, account, drain, iris_csv())
    job_id = start_run(client, account, uploaded["dataset"]["id"])["job"]["id"]
    first = queue.claim(engine, "job", "A", 30)
    assert first is not None
    second = take_over(engine, "job", job_id)
    with pytest.raises(queue.LeaseLost):
        execution.run_job(engine, storage, first, lease_seconds=30)
    assert execution.run_job(engine, storage, second, lease_seconds=30) == "completed"
    assert value(engine, "SELECT count(*) FROM models WHERE job_id = :id", id=job_id) == 1
    assert_books_balance(engine)
