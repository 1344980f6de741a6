"""A worker outlives a lost database: it waits with backoff, then goes on.

Against a server of the test's own (``restartable_pg``), stopped with
``pg_ctl stop -m fast`` and started again on the same socket. A real worker
process rides out the outage, gives back the job it had in hand and runs it
after the server returns; in-process, work in hand whose lease was taken over
during the outage stops without writing.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_iris
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from api.settings import ApiSettings
from database.session import make_engine
from pipeline.storage import make_storage
from workers import main as worker_main
from workers import queue
from workers.main import Worker
from workers.settings import WorkerSettings

from api_helpers import Account, give_credits, make_app, signup, upload
from pgtest import RestartableServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def iris_csv() -> bytes:
    frame = load_iris(as_frame=True).frame
    frame["species"] = frame.pop("target").map(dict(enumerate(load_iris().target_names)))
    buffer = io.StringIO()
    pd.DataFrame(frame).to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def wait_for(condition: Callable[[], object], what: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def value(engine: Engine, statement: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(statement), params).scalar()


@pytest.fixture
def own_url(restartable_pg: RestartableServer) -> URL:
    return restartable_pg.url("automl")


@pytest.fixture
def own_engine(own_url: URL) -> Iterator[Engine]:
    # The package's engine (pre-ping, the database's errors), as the apps run it.
    engine = make_engine(own_url)
    yield engine
    engine.dispose()


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def own_client(own_engine: Engine, tmp_path: Path, storage_dir: Path) -> Iterator[TestClient]:
    settings = ApiSettings(data_dir=tmp_path, storage_url=str(storage_dir))
    with TestClient(make_app(own_engine, settings)) as client:
        yield client


@pytest.fixture
def own_account(own_client: TestClient, own_engine: Engine) -> Account:
    account = signup(own_client)
    give_credits(own_engine, account.user_id, 500)
    return account


def _upload(client: TestClient, account: Account) -> dict[str, Any]:
    r = upload(
        client,
        account,
        name="iris",
        content=iris_csv(),
        target_column="species",
        problem_type="classification",
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _run(client: TestClient, account: Account, dataset_id: str) -> str:
    definition = {
        "nodes": [
            {"id": "data", "type": "dataset", "config": {"dataset_id": dataset_id}},
            {"id": "prep", "type": "preprocess", "config": {"impute": "mean"}},
            {
                "id": "train",
                "type": "model",
                "config": {"algorithm": "random_forest", "hyperparameters": {"n_estimators": 10}},
            },
        ],
        "edges": [{"source": "data", "target": "prep"}, {"source": "prep", "target": "train"}],
    }
    r = client.post(
        "/v1/workflows", headers=account.headers, json={"name": "iris", "definition": definition}
    )
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/workflows/{r.json()['id']}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["job"]["id"])


# --- a worker process across a restart of PostgreSQL --------------------------------------------
def test_a_worker_process_outlives_a_database_restart(
    restartable_pg: RestartableServer,
    own_url: URL,
    own_engine: Engine,
    own_client: TestClient,
    own_account: Account,
    tmp_path: Path,
    storage_dir: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "DB_"))}
    env.update(
        DATABASE_URL=own_url.render_as_string(hide_password=False),
        STORAGE_URL=str(storage_dir),
        AUTOML_DATA_DIR=str(tmp_path),
        WORKER_PURGE_HOURS="0",
        WORKER_POLL_SECONDS="1",
        WORKER_LEASE_SECONDS="60",
        LOG_LEVEL="INFO",
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )

    def log() -> str:
        return log_path.read_text(errors="replace")

    holder = None
    try:
        uploaded = _upload(own_client, own_account)
        wait_for(
            lambda: (
                value(
                    own_engine,
                    "SELECT status::text FROM dataset_versions WHERE id = :id",
                    id=uploaded["version"]["id"],
                )
                == "completed"
            ),
            "the worker to ingest the upload",
        )
        assert value(own_engine, "SELECT count(*) FROM workers WHERE stopped_at IS NULL") == 1

        # A run whose model node the test holds locked: the worker waits there, with
        # the job in hand, when the server goes away.
        holder = own_engine.connect()
        holder.begin()
        job_id = _run(own_client, own_account, uploaded["dataset"]["id"])
        holder.execute(
            text("SELECT 1 FROM job_nodes WHERE job_id = :j AND node_id = 'train' FOR UPDATE"),
            {"j": job_id},
        )
        wait_for(
            lambda: value(
                own_engine,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE 'UPDATE job_nodes%'",
            ),
            "the worker to wait at the model node",
        )

        restartable_pg.stop()
        wait_for(
            lambda: "database lost" in log() or process.poll() is not None,
            "the worker to notice the outage",
        )
        # Long enough for several rounds of its loop, heartbeat and give-back to fail.
        time.sleep(3)
        assert process.poll() is None, log()
        restartable_pg.start()

        wait_for(
            lambda: (
                value(own_engine, "SELECT status::text FROM jobs WHERE id = :id", id=job_id)
                == "completed"
            ),
            "the job to complete after the server returned",
        )
        assert process.poll() is None, log()
        # Given back (the attempt the outage broke is not counted), then run again.
        assert value(own_engine, "SELECT attempts FROM jobs WHERE id = :id", id=job_id) == 1
        text_log = log()
        assert f"{job_id} given back to the queue" in text_log, text_log
        assert text_log.count("database lost") == 1, text_log
        assert text_log.count("database back after") == 1, text_log
        assert "Traceback" not in text_log, text_log
    finally:
        if holder is not None:
            holder.invalidate()
            holder.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, log()
    # A clean exit is recorded: no live worker remains.
    assert value(own_engine, "SELECT count(*) FROM workers WHERE stopped_at IS NULL") == 0


# --- work in hand when the database comes back ------------------------------------------------
class GatedBackoff:
    """The give-back's wait, held until the test opens the gate (instead of a sleep
    whose length would decide what the test sees)."""

    gate = threading.Event()
    waiting = threading.Event()

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def next(self) -> float:
        GatedBackoff.waiting.set()
        assert GatedBackoff.gate.wait(60), "the test never opened the gate"
        return 0.0

    def reset(self) -> None:
        pass


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> type[GatedBackoff]:
    GatedBackoff.gate = threading.Event()
    GatedBackoff.waiting = threading.Event()
    monkeypatch.setattr(worker_main, "Backoff", GatedBackoff)
    return GatedBackoff


def _worker(engine: Engine, tmp_path: Path, storage_dir: Path) -> Worker:
    settings = WorkerSettings(
        slots=1, lease_seconds=60, purge_hours=0, data_dir=tmp_path, storage_url=str(storage_dir)
    )
    return Worker(
        engine, make_storage(str(storage_dir)), settings, name=f"w-{uuid.uuid4().hex[:6]}"
    )


def _in_hand_during_outage(
    restartable_pg: RestartableServer, worker: Worker, engine: Engine
) -> tuple[queue.Claim, threading.Thread, list[str]]:
    """The worker claims the upload; the server stops; the work runs into the outage
    and waits at the gate to give the work back."""
    claim = queue.claim(engine, "ingestion", worker.name, 60)
    assert claim is not None
    restartable_pg.stop()
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(worker._work(claim)))
    thread.start()
    return claim, thread, outcome


def test_work_in_hand_whose_lease_was_taken_over_stops_without_writing(
    restartable_pg: RestartableServer,
    own_engine: Engine,
    own_client: TestClient,
    own_account: Account,
    gated: type[GatedBackoff],
    tmp_path: Path,
    storage_dir: Path,
) -> None:
    uploaded = _upload(own_client, own_account)
    worker = _worker(own_engine, tmp_path, storage_dir)
    claim, thread, outcome = _in_hand_during_outage(restartable_pg, worker, own_engine)
    try:
        wait_for(gated.waiting.is_set, "the work to wait to give itself back")
        assert worker.db.down
        restartable_pg.start()
        # Meanwhile its lease expired and another worker recovered and took the work.
        with own_engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE ingestion_jobs SET lease_expires_at = now() - interval '1 s'"
                    " WHERE id = :id"
                ),
                {"id": claim.id},
            )
        assert queue.recover_expired(own_engine, 3).requeued == 1
        other = queue.claim(own_engine, "ingestion", "the-other-worker", 60)
        assert other is not None and other.id == claim.id
    finally:
        gated.gate.set()
        thread.join(60)
    assert outcome == ["lease_lost"]
    with own_engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT i.status::text, i.leased_by, i.attempts, v.status::text AS version"
                " FROM ingestion_jobs i JOIN dataset_versions v ON v.id = i.dataset_version_id"
                " WHERE i.id = :id"
            ),
            {"id": claim.id},
        ).one()
    # Untouched by the first worker: still the other's, as it claimed it.
    assert (row.status, row.leased_by, row.attempts, row.version) == (
        "processing",
        "the-other-worker",
        2,
        "processing",
    )
    assert uploaded["version"]["id"]


def test_work_in_hand_still_held_is_given_back_when_the_database_returns(
    restartable_pg: RestartableServer,
    own_engine: Engine,
    own_client: TestClient,
    own_account: Account,
    gated: type[GatedBackoff],
    tmp_path: Path,
    storage_dir: Path,
) -> None:
    uploaded = _upload(own_client, own_account)
    worker = _worker(own_engine, tmp_path, storage_dir)
    claim, thread, outcome = _in_hand_during_outage(restartable_pg, worker, own_engine)
    try:
        wait_for(gated.waiting.is_set, "the work to wait to give itself back")
        assert worker.db.down
        restartable_pg.start()
    finally:
        gated.gate.set()
        thread.join(60)
    assert outcome == ["released"]
    assert not worker.db.down
    with own_engine.connect() as conn:
        row = conn.execute(
            text("SELECT status::text, leased_by, attempts FROM ingestion_jobs WHERE id = :id"),
            {"id": claim.id},
        ).one()
    assert (row.status, row.leased_by, row.attempts) == ("pending", None, 0)
    # Waiting again: the next look at the queue takes and finishes it.
    worker.run(until_idle=True)
    assert (
        value(
            own_engine,
            "SELECT status::text FROM dataset_versions WHERE id = :id",
            id=uploaded["version"]["id"],
        )
        == "completed"
    )
