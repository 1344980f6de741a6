"""GET /v1/jobs/{id}/events (Server-Sent Events) and GET /v1/jobs/{id}/logs.

A real job runs through an in-process worker while the stream is read; the
stream's events arrive in order and end with the final status. Reconnecting with
Last-Event-ID resumes after that line. The generator behind the stream is also
driven step by step: it holds no connection between polls, follows changes as
they are committed, and stops when the client goes away.
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sklearn.datasets import load_iris
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from api.routers.events import job_events
from api.settings import ApiSettings
from pipeline.storage import make_storage
from workers.main import Worker
from workers.settings import WorkerSettings

from api_helpers import WEBHOOK_SECRET, Account, give_credits, rows, scalar, upload

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def api_settings(tmp_path: Path) -> ApiSettings:
    return ApiSettings(
        data_dir=tmp_path,
        storage_url=str(tmp_path / "storage"),
        stripe_webhook_secret=WEBHOOK_SECRET,
        max_upload_bytes=1024 * 1024,
        events_poll_seconds=0.05,
    )


@pytest.fixture
def drain(engine: Engine, tmp_path: Path) -> Callable[[], Worker]:
    def run() -> Worker:
        settings = WorkerSettings(
            slots=1,
            lease_seconds=30,
            purge_hours=0,
            data_dir=tmp_path,
            storage_url=str(tmp_path / "storage"),
        )
        worker = Worker(engine, make_storage(str(tmp_path / "storage")), settings)
        worker.run(until_idle=True)
        return worker

    return run


def iris_csv() -> bytes:
    frame = load_iris(as_frame=True).frame
    frame["species"] = frame.pop("target").map(dict(enumerate(load_iris().target_names)))
    return frame.to_csv(index=False).encode()


def queue_a_run(
    client: TestClient, account: Account, engine: Engine, drain: Callable[[], Worker]
) -> str:
    """An ingested iris dataset and a queued run of dataset -> prep -> train -> keep."""
    give_credits(engine, account.user_id, 100)
    r = upload(
        client,
        account,
        content=iris_csv(),
        target_column="species",
        problem_type="classification",
    )
    assert r.status_code == 201, r.text
    drain()
    definition = {
        "nodes": [
            {"id": "data", "type": "dataset", "config": {"dataset_id": r.json()["dataset"]["id"]}},
            {"id": "prep", "type": "preprocess", "config": {"impute": "mean"}},
            {
                "id": "train",
                "type": "model",
                "config": {"algorithm": "random_forest", "hyperparameters": {"n_estimators": 5}},
            },
            {"id": "keep", "type": "save", "config": {"name": "iris forest"}},
        ],
        "edges": [
            {"source": "data", "target": "prep"},
            {"source": "prep", "target": "train"},
            {"source": "train", "target": "keep"},
        ],
    }
    r = client.post(
        "/v1/workflows", headers=account.headers, json={"name": "w", "definition": definition}
    )
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/workflows/{r.json()['id']}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["job"]["id"])


def parse(body: str) -> list[dict[str, Any]]:
    """The events of an SSE body: id, event and the decoded data of each."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            events.append(
                {
                    "id": int(fields["id"]),
                    "event": fields["event"],
                    "data": json.loads(fields["data"]),
                }
            )
    return events


def read_stream(
    client: TestClient, account: Account, job_id: str, **headers: str
) -> list[dict[str, Any]]:
    r = client.get(f"/v1/jobs/{job_id}/events", headers={**account.headers, **headers})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return parse(r.text)


NODES = ["data", "prep", "train", "keep"]


def test_the_stream_follows_a_run_to_its_end(
    client: TestClient, account: Account, engine: Engine, drain: Callable[[], Worker]
) -> None:
    job_id = queue_a_run(client, account, engine, drain)
    got: list[list[dict[str, Any]]] = []
    reader = threading.Thread(target=lambda: got.append(read_stream(client, account, job_id)))
    reader.start()  # reads while the worker runs the job; ends when the job ends
    drain()
    reader.join(timeout=120)
    assert not reader.is_alive(), "the stream did not end with the job"
    (events,) = got

    assert events[0]["event"] == "status"
    assert events[-1]["event"] == "end"
    end = events[-1]["data"]
    assert end["status"] == "completed" and end["job_id"] == job_id
    assert end["results"]["metrics"]["train"]["accuracy"] > 0.8
    assert [e["event"] for e in events].count("end") == 1

    ids = [e["id"] for e in events]
    assert ids == sorted(ids)  # every id is the last line sent so far
    logs = [e["data"] for e in events if e["event"] == "log"]
    assert [line["seq"] for line in logs] == list(range(1, len(logs) + 1))  # none missed
    assert all(e["id"] == e["data"]["seq"] for e in events if e["event"] == "log")
    messages = [line["message"] for line in logs]
    assert messages[0] == "job claimed by a worker (attempt 1)"
    assert messages[-1] == "job completed"
    started = [m for m in messages if m.endswith("started")]
    assert started == [
        "node data (dataset) started",
        "node prep (preprocess) started",
        "node train (model) started",
        "node keep (save) started",
    ]
    assert "loaded 150 rows and 5 columns of 'iris'" in messages
    assert any(m.startswith("test metrics: accuracy") for m in messages)
    assert any(m.startswith("fitting RandomForestClassifier on") for m in messages)
    pipeline_lines = [line for line in logs if line["message"].startswith("fitting")]
    assert [line["node_id"] for line in pipeline_lines] == ["train"]
    # Each message comes after its node's start and before its success.
    for node in NODES:
        of_node = [m for m in messages if m.startswith(f"node {node} ")]
        assert of_node[0].endswith("started") and of_node[-1] == f"node {node} succeeded"

    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses[-1] == "completed"
    last_node: dict[str, Any] = {}
    for e in events:
        if e["event"] == "node":
            last_node[e["data"]["node_id"]] = e["data"]
    assert sorted(last_node) == sorted(NODES)
    assert all(n["status"] == "success" and n["progress"] == 1 for n in last_node.values())
    assert all(0 <= e["data"]["progress"] <= 1 for e in events if e["event"] == "node")

    # The job's detail shows the progress too.
    r = client.get(f"/v1/jobs/{job_id}", headers=account.headers)
    assert {n["node_id"]: n["progress"] for n in r.json()["nodes"]} == dict.fromkeys(NODES, 1.0)

    # An ended job: its final state, its lines, end; the same lines as before.
    again = read_stream(client, account, job_id)
    assert [e["data"] for e in again if e["event"] == "log"] == logs
    assert again[0]["data"]["status"] == "completed" and again[-1]["event"] == "end"

    # Resuming after line 3: the status and every node's state again, then lines 4...
    resumed = read_stream(client, account, job_id, **{"Last-Event-ID": "3"})
    kinds = [e["event"] for e in resumed]
    assert kinds[0] == "status" and kinds[1 : 1 + len(NODES)] == ["node"] * len(NODES)
    assert [e["data"]["seq"] for e in resumed if e["event"] == "log"] == list(
        range(4, len(logs) + 1)
    )
    assert kinds[-1] == "end"
    at_end = read_stream(client, account, job_id, **{"Last-Event-ID": str(len(logs))})
    assert [e["event"] for e in at_end] == ["status", *["node"] * len(NODES), "end"]
    assert at_end[-1]["id"] == len(logs)


def test_a_failed_run_ends_its_stream_with_the_error(
    client: TestClient, account: Account, engine: Engine, drain: Callable[[], Worker]
) -> None:
    job_id = queue_a_run(client, account, engine, drain)
    # The dataset's Parquet file is gone: the dataset node fails, the rest is skipped.
    for (path,) in rows(engine, "SELECT s3_path FROM dataset_versions"):
        Path(path).unlink()
    drain()
    events = read_stream(client, account, job_id)
    end = events[-1]
    assert end["event"] == "end" and end["data"]["status"] == "failed"
    assert "missing from storage" in end["data"]["error_message"]
    levels = {e["data"]["message"]: e["data"]["level"] for e in events if e["event"] == "log"}
    failed = [m for m in levels if m.startswith("node data failed:")]
    assert len(failed) == 1 and levels[failed[0]] == "error"
    assert levels["node keep skipped: input node 'train' skipped"] == "warning"
    assert levels[next(m for m in levels if m.startswith("job failed:"))] == "error"

    r = client.get(f"/v1/jobs/{job_id}/logs", headers=account.headers, params={"level": ["error"]})
    assert r.status_code == 200, r.text
    assert [line["level"] for line in r.json()["items"]] == ["error", "error"]


def test_another_users_job_is_not_found(
    client: TestClient, account: Account, other: Account, engine: Engine
) -> None:
    user_id = account.user_id
    snapshot = scalar(
        engine,
        "INSERT INTO workflow_snapshots (user_id, snapshot_data) VALUES (:u, '{}') RETURNING id",
        u=user_id,
    )
    job_id = scalar(
        engine,
        "INSERT INTO jobs (user_id, workflow_snapshot_id, status) VALUES (:u, :s, 'queued')"
        " RETURNING id",
        u=user_id,
        s=snapshot,
    )
    for path in (f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}/logs"):
        r = client.get(path, headers=other.headers)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
        assert (
            client.get(f"/v1/jobs/{uuid.uuid4()}/events", headers=account.headers).status_code
            == 404
        )
        assert client.get(path).status_code == 401
    r = client.get(f"/v1/jobs/{job_id}/events", headers={**account.headers, "Last-Event-ID": "abc"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_last_event_id"


def make_job_with_lines(engine: Engine, user_id: uuid.UUID, count: int) -> str:
    snapshot = scalar(
        engine,
        "INSERT INTO workflow_snapshots (user_id, snapshot_data) VALUES (:u, '{}') RETURNING id",
        u=user_id,
    )
    job_id = scalar(
        engine,
        "INSERT INTO jobs (user_id, workflow_snapshot_id, status) VALUES (:u, :s, 'queued')"
        " RETURNING id",
        u=user_id,
        s=snapshot,
    )
    rows(
        engine,
        "INSERT INTO job_logs (job_id, level, node_id, message)"
        " SELECT :j, CAST(CASE WHEN i % 3 = 0 THEN 'warning' ELSE 'info' END AS log_level),"
        " CASE WHEN i % 2 = 0 THEN 'train' END, 'line ' || i FROM generate_series(1, :n) AS i",
        j=job_id,
        n=count,
    )
    return str(job_id)


def test_logs_are_paged_in_order_and_filtered(
    client: TestClient, account: Account, engine: Engine
) -> None:
    job_id = make_job_with_lines(engine, account.user_id, 25)
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        r = client.get(f"/v1/jobs/{job_id}/logs", headers=account.headers, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [line["seq"] for line in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(range(1, 26))

    r = client.get(
        f"/v1/jobs/{job_id}/logs",
        headers=account.headers,
        params={"level": "warning", "node_id": "train"},
    )
    items = r.json()["items"]
    assert [line["message"] for line in items] == [f"line {i}" for i in (6, 12, 18, 24)]
    assert all(line["level"] == "warning" and line["node_id"] == "train" for line in items)
    r = client.get(
        f"/v1/jobs/{job_id}/logs",
        headers=account.headers,
        params={"level": ["warning", "info"], "limit": 200},
    )
    assert len(r.json()["items"]) == 25

    for params in (
        {"cursor": "not-a-cursor"},
        {"level": "loud"},
        {"limit": 0},
        {"node_id": "a\x00"},
    ):
        r = client.get(f"/v1/jobs/{job_id}/logs", headers=account.headers, params=params)
        assert r.status_code == 422, (params, r.text)


# --- the generator, step by step ---------------------------------------------------------------
def test_the_stream_follows_commits_and_holds_no_connection_between_polls(
    app: FastAPI, account: Account, engine: Engine
) -> None:
    job_id = uuid.UUID(make_job_with_lines(engine, account.user_id, 2))
    rows(
        engine,
        "INSERT INTO job_nodes (job_id, user_id, node_id, node_type)"
        " VALUES (:j, :u, 'fit', 'model')",
        j=job_id,
        u=account.user_id,
    )
    factory = sessionmaker(bind=engine, expire_on_commit=False)

    async def main() -> list[tuple[str, Any]]:
        seen: list[tuple[str, Any]] = []
        stream = job_events(factory, job_id, account.user_id, after=1, poll_seconds=0.01)

        async def sql(statement: str, **params: Any) -> None:
            await anyio.to_thread.run_sync(functools.partial(rows, engine, statement, **params))

        async def step() -> tuple[str, Any]:
            event = await stream.__anext__()
            # Suspended at its yield: the poll's session is closed.
            assert engine.pool.checkedout() == 0
            seen.append((str(event.event), json.loads(str(event.data))))
            return seen[-1]

        with anyio.fail_after(60):
            assert (await step())[1]["status"] == "queued"
            assert (await step())[1]["node_id"] == "fit"
            assert (await step())[1]["seq"] == 2  # after Last-Event-ID 1
            await sql("UPDATE jobs SET status = 'running', attempts = 1 WHERE id = :j", j=job_id)
            assert (await step())[1]["status"] == "running"
            assert (await step())[1]["message"] == "job claimed by a worker (attempt 1)"
            await sql("UPDATE job_nodes SET status = 'running' WHERE job_id = :j", j=job_id)
            node = (await step())[1]
            assert (node["status"], node["progress"]) == ("running", 0)
            assert (await step())[1]["message"] == "node fit (model) started"
            await sql(
                "UPDATE job_nodes SET progress = 0.4, progress_message = 'fitting'"
                " WHERE job_id = :j",
                j=job_id,
            )
            node = (await step())[1]
            assert (node["progress"], node["progress_message"]) == (pytest.approx(0.4), "fitting")
            await sql(
                "UPDATE jobs SET status = 'cancelled', error_message = 'cancelled by its owner'"
                " WHERE id = :j",
                j=job_id,
            )
            assert (await step())[1]["status"] == "cancelled"
            assert (await step())[1]["message"] == "job cancelled: cancelled by its owner"
            end = await step()
            assert end[0] == "end" and end[1]["status"] == "cancelled"
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()
        return seen

    seen = anyio.run(main)
    assert [kind for kind, _ in seen] == [
        "status",
        "node",
        "log",
        "status",
        "log",
        "node",
        "log",
        "node",
        "status",
        "log",
        "end",
    ]


def test_the_stream_stops_when_the_client_goes_away(
    app: FastAPI, account: Account, engine: Engine
) -> None:
    # A running job that nothing will end: only the client's leaving ends its stream.
    job_id = make_job_with_lines(engine, account.user_id, 1)
    rows(engine, "UPDATE jobs SET status = 'running' WHERE id = :j", j=job_id)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/v1/jobs/{job_id}/events",
        "raw_path": f"/v1/jobs/{job_id}/events".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {account.key}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def main() -> None:
        got_event = anyio.Event()
        asked = 0

        async def receive() -> dict[str, Any]:
            nonlocal asked
            asked += 1
            if asked == 1:
                return {"type": "http.request", "body": b"", "more_body": False}
            await got_event.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                got_event.set()

        with anyio.fail_after(60):
            await app(scope, receive, send)

    anyio.run(main)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert b"event: status" in b"".join(m.get("body", b"") for m in sent[1:])
    assert engine.pool.checkedout() == 0  # the request's session and the polls' are closed
