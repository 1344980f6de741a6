"""The worker loop's own duties: waking on notifications, periodic purge, settings."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine, text

from workers.main import Worker
from workers.settings import WorkerSettings

from api_helpers import Account, upload
from factories import make_user, make_workflow


def _value(engine: Engine, statement: str, **params: object) -> object:
    with engine.connect() as conn:
        return conn.execute(text(statement), params).scalar()


def _wait_for(condition: Callable[[], object], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_a_listening_worker_wakes_on_new_work(
    client: TestClient, account: Account, make_worker: Callable[..., Worker], engine: Engine
) -> None:
    """With polling every 10 minutes, only the notification can bring the upload in
    within the minute this test waits."""
    worker = make_worker(poll_seconds=600, recovery_seconds=600)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        _wait_for(
            lambda: _value(
                engine,
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN automl_queue'",
            ),
            "the worker to listen",
        )
        time.sleep(0.2)  # let its first look at the (empty) queue pass
        r = upload(client, account, name="woken")
        assert r.status_code == 201, r.text
        _wait_for(
            lambda: _value(
                engine,
                "SELECT status = 'completed' FROM dataset_versions WHERE id = :id",
                id=r.json()["version"]["id"],
            ),
            "the upload to be ingested",
        )
    finally:
        worker.stop()
        thread.join(60)
    assert not thread.is_alive()
    assert [outcome for _, outcome in worker.outcomes] == ["completed"]


def test_the_periodic_purge_runs_from_the_worker(
    make_worker: Callable[..., Worker], sql: object, engine: Engine
) -> None:
    user = make_user(sql)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    gone = make_workflow(sql, user, deleted=True, deleted_at=old)
    kept = make_workflow(sql, user, deleted=True)  # deleted today: restorable still
    make_worker(purge_hours=1e-9).run(until_idle=True)
    remaining = _value(engine, "SELECT array_agg(id) FROM workflows")
    assert remaining == [kept] and gone not in remaining  # type: ignore[operator]


def test_no_purge_when_disabled(
    make_worker: Callable[..., Worker], sql: object, engine: Engine
) -> None:
    user = make_user(sql)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    make_workflow(sql, user, deleted=True, deleted_at=old)
    make_worker(purge_hours=0).run(until_idle=True)
    assert _value(engine, "SELECT count(*) FROM workflows") == 1


def test_settings_refuse_a_heartbeat_as_long_as_the_lease() -> None:
    with pytest.raises(ValidationError, match="shorter than WORKER_LEASE_SECONDS"):
        WorkerSettings(lease_seconds=10, heartbeat_seconds=10)
    assert WorkerSettings(lease_seconds=30).heartbeat == pytest.approx(10)
    with pytest.raises(ValidationError):
        WorkerSettings(slots=0)


def test_the_worker_runs_metering_maintenance(
    make_worker: Callable[..., Worker], sql: object, engine: Engine
) -> None:
    # A missing month ahead is made; a dead process's expired hold is swept.
    user = make_user(sql)
    with engine.begin() as conn:
        ahead = (
            conn.execute(text("SELECT public.inference_requests_ensure_partitions(3)"))
            .scalars()
            .all()
        )
        for name in ahead:
            conn.execute(text(f"DROP TABLE {name}"))
        conn.execute(
            text(
                "INSERT INTO usage_holds (user_id, rows, amount_micro, expires_at)"
                " VALUES (:u, 1, 1000, now() - interval '1 second')"
            ),
            {"u": user},
        )
    make_worker(metering_seconds=0).run(until_idle=True)
    assert _value(engine, "SELECT count(*) FROM usage_holds") == 1  # disabled: nothing ran
    make_worker(metering_seconds=60, inference_months_ahead=3).run(until_idle=True)
    assert _value(engine, "SELECT count(*) FROM usage_holds") == 0
    names = _value(
        engine,
        "SELECT array_agg(c.relname::text) FROM pg_inherits AS i"
        " JOIN pg_class AS c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'public.inference_requests'::regclass",
    )
    assert set(ahead) <= set(names)  # type: ignore[arg-type]
