"""The API tells when no worker is alive: ``/readyz`` (``workers``, ``warnings``) and the
``waiting_for`` of queued jobs and pending uploads."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from database import worker_registry

from api_helpers import Account, give_credits, make_dataset, rows, runnable_workflow


def beat(engine: Engine, name: str = "w1") -> None:
    with engine.begin() as conn:
        worker_registry.beat(conn, name=name, hostname="host", pid=4321, slots=2, lease_seconds=30)


def test_readyz_counts_live_workers_and_warns_when_there_is_none(
    client: TestClient, engine: Engine
) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready" and body["workers"] == 0
    assert body["warnings"] and "no worker alive" in body["warnings"][0]

    beat(engine, "w1")
    beat(engine, "w2")
    body = client.get("/readyz").json()
    assert (body["workers"], body["warnings"]) == (2, [])

    # One stopped cleanly, one silent for longer than two of its leases.
    with engine.begin() as conn:
        worker_registry.stopped(conn, "w1")
    rows(engine, "UPDATE workers SET last_seen_at = now() - interval '61 s' WHERE name = 'w2'")
    body = client.get("/readyz").json()
    assert client.get("/readyz").status_code == 200
    assert body["workers"] == 0 and body["warnings"]


def test_readyz_behind_head_does_not_count_workers(client: TestClient, engine: Engine) -> None:
    rows(engine, "UPDATE alembic_version SET version_num = 'e899cb3ffb86'")
    behind = client.get("/readyz")
    assert behind.status_code == 503
    assert behind.json()["workers"] is None


def test_a_queued_job_says_it_waits_for_a_worker_while_none_is_alive(
    client: TestClient, account: Account, engine: Engine
) -> None:
    workflow = runnable_workflow(client, account, engine)
    give_credits(engine, account.user_id, 100)
    r = client.post(f"/v1/workflows/{workflow['id']}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    job = r.json()["job"]
    assert (job["status"], job["waiting_for"]) == ("queued", "worker")
    detail = client.get(f"/v1/jobs/{job['id']}", headers=account.headers).json()
    assert detail["waiting_for"] == "worker"
    listed = client.get("/v1/jobs", headers=account.headers).json()["items"]
    assert [j["waiting_for"] for j in listed] == ["worker"]

    beat(engine)
    detail = client.get(f"/v1/jobs/{job['id']}", headers=account.headers).json()
    assert detail["status"] == "queued" and detail["waiting_for"] is None

    # Not queued any more: nothing to wait for, worker or not.
    rows(engine, "DELETE FROM workers")
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=account.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["job"]["waiting_for"] is None


def test_a_pending_upload_says_it_waits_for_a_worker_while_none_is_alive(
    client: TestClient, account: Account, engine: Engine
) -> None:
    uploaded = make_dataset(client, account)
    assert uploaded["version"]["status"] == "pending"
    assert uploaded["version"]["waiting_for"] == "worker"
    dataset_id = uploaded["dataset"]["id"]
    detail = client.get(f"/v1/datasets/{dataset_id}", headers=account.headers).json()
    assert [v["waiting_for"] for v in detail["versions"]] == ["worker"]
    beat(engine)
    detail = client.get(f"/v1/datasets/{dataset_id}", headers=account.headers).json()
    assert [v["waiting_for"] for v in detail["versions"]] == [None]
