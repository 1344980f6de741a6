"""Errors are classed: a permanent one fails the work at once with its cause, a
transient one is retried after a backoff that grows with the attempts (``run_after``).

The story that started it: a CSV whose header holds a NUL byte was read, and its
column names then refused by PostgreSQL (jsonb cannot hold ``\\u0000``) when the
version was recorded. That error escaped the ingestion, the lease expired, recovery
took the work back, three times, and the user read minutes later "its worker
stopped responding". Now the reader refuses the file in one line, and an error it
does not foresee fails the work at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc

from database import errors, jobs
from workers import execution, ingestion
from workers.main import Worker

from api_helpers import Account, definition, upload

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CSV = b"a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n"


def row(engine: Engine, statement: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(statement), params).one()


def lost_connection() -> sa_exc.OperationalError:
    return sa_exc.OperationalError(
        "SELECT 1", {}, psycopg.OperationalError("server closed the connection unexpectedly")
    )


def _ingestion(engine: Engine, body: dict[str, Any]) -> Any:
    return row(
        engine,
        "SELECT i.status::text AS status, i.attempts, i.error_message, i.run_after,"
        " i.run_after > now() AS waits, v.status::text AS version_status,"
        " v.error_message AS version_error"
        " FROM ingestion_jobs AS i JOIN dataset_versions AS v ON v.id = i.dataset_version_id"
        " WHERE i.id = :id",
        id=body["ingestion_job"]["id"],
    )


def test_a_nul_byte_in_a_csv_header_fails_at_once_in_one_clear_line(
    client: TestClient, account: Account, drain: Callable[..., Worker], engine: Engine
) -> None:
    r = upload(client, account, name="nul", content=b"a\x00b,c\n1,2\n3,4\n", filename="nul.csv")
    assert r.status_code == 201, r.text
    worker = drain()
    found = _ingestion(engine, r.json())
    assert (found.status, found.attempts, found.version_status) == ("failed", 1, "failed")
    assert found.version_error == (
        "the csv file's header holds a NUL byte (column 1, 'ab'): a column name cannot hold one"
    )
    assert "\n" not in found.version_error and "stopped responding" not in found.version_error
    assert [outcome for _, outcome in worker.outcomes] == ["failed"]


def test_an_unforeseen_permanent_error_fails_at_once_with_its_cause(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(frame: Any) -> Any:
        raise ValueError("the profile cannot handle this column\nsecond line")

    monkeypatch.setattr(ingestion, "profile", broken)
    r = upload(client, account, name="perm", content=CSV, filename="perm.csv")
    drain(max_attempts=3)
    found = _ingestion(engine, r.json())
    assert (found.status, found.attempts) == ("failed", 1)  # not retried
    assert found.error_message == "ValueError: the profile cannot handle this column"


def test_a_transient_error_is_retried_after_a_backoff(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = ingestion.profile
    calls: list[int] = []

    def flaky(frame: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise lost_connection()
        return real(frame)

    monkeypatch.setattr(ingestion, "profile", flaky)
    r = upload(client, account, name="flaky", content=CSV, filename="flaky.csv")
    drain(max_attempts=3)  # claims it, fails transiently; the retry is not due yet
    found = _ingestion(engine, r.json())
    assert (found.status, found.attempts, found.waits) == ("pending", 1, True)
    assert found.version_status == "pending"
    assert found.error_message.startswith("attempt 1 failed, retried in 5s: OperationalError")
    assert len(calls) == 1
    # Its time comes: the next claim takes it and it completes.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE ingestion_jobs SET run_after = now() - interval '1 second' WHERE id = :i"),
            {"i": r.json()["ingestion_job"]["id"]},
        )
    drain(max_attempts=3)
    found = _ingestion(engine, r.json())
    assert (found.status, found.attempts, found.version_status) == ("completed", 2, "completed")
    assert found.error_message is None and found.run_after is None


def test_a_job_retried_transiently_then_given_up_is_refunded(
    client: TestClient,
    account: Account,
    drain: Callable[..., Worker],
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r = upload(
        client,
        account,
        name="t",
        content=CSV,
        filename="t.csv",
        target_column="label",
        problem_type="classification",
    )
    drain()
    wf = client.post(
        "/v1/workflows",
        headers=account.headers,
        json={"name": "t", "definition": definition(r.json()["dataset"]["id"])},
    )
    assert wf.status_code == 201, wf.text
    before = client.get("/v1/credits/balance", headers=account.headers).json()["balance"]
    run = client.post(f"/v1/workflows/{wf.json()['id']}/run", headers=account.headers)
    assert run.status_code == 201, run.text
    job_id = run.json()["job"]["id"]

    def outage(*args: Any, **kwargs: Any) -> Any:
        raise lost_connection()

    monkeypatch.setattr(execution, "_compute", outage)  # in the worker, not the child
    drain(max_attempts=2)
    job = row(
        engine,
        "SELECT status::text, attempts, run_after > now() AS waits, error_message"
        " FROM jobs WHERE id = :id",
        id=job_id,
    )
    assert (job.status, job.attempts, job.waits) == ("queued", 1, True)
    nodes = row(
        engine,
        "SELECT array_agg(DISTINCT status::text) AS s FROM job_nodes WHERE job_id = :id",
        id=job_id,
    )
    assert nodes.s == ["pending"]  # reset for the next attempt
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET run_after = NULL WHERE id = :id"), {"id": job_id})
    drain(max_attempts=2)
    job = row(
        engine, "SELECT status::text, attempts, error_message FROM jobs WHERE id = :id", id=job_id
    )
    assert (job.status, job.attempts) == ("failed", 2)
    assert job.error_message.startswith("gave up after 2 attempts: OperationalError")
    after = client.get("/v1/credits/balance", headers=account.headers).json()["balance"]
    assert after == before  # refunded


# --- the classes and the backoff -------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (lost_connection(), True),
        (errors.LockTimeout("lock"), True),
        (errors.SerializationConflict("deadlock"), True),
        (errors.ConnectionLost("terminated"), True),
        (ConnectionResetError("peer"), True),
        (sa_exc.DataError("SELECT", {}, Exception("unsupported Unicode escape")), False),
        (errors.InvalidStatusTransition("no"), False),
        (errors.StatementTimeout("slow"), False),
        (ValueError("bad file"), False),
        (KeyError("x"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert jobs.is_transient(exc) is transient


def test_backoff_grows_with_the_attempts_up_to_a_cap() -> None:
    waits = [jobs.backoff_seconds(n) for n in range(1, 10)]
    assert waits[:4] == [5.0, 10.0, 20.0, 40.0]
    assert waits == sorted(waits) and max(waits) == jobs.BACKOFF_MAX_SECONDS


def test_claim_respects_run_after(engine: Engine, client: TestClient, account: Account) -> None:
    r = upload(client, account, name="later", content=CSV, filename="later.csv")
    ingestion_id = r.json()["ingestion_job"]["id"]
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE ingestion_jobs SET run_after = now() + interval '1 hour' WHERE id = :i"),
            {"i": ingestion_id},
        )
    assert jobs.claim(engine, "ingestion", "w", 30) is None
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE ingestion_jobs SET run_after = now() - interval '1 second' WHERE id = :i"),
            {"i": ingestion_id},
        )
    taken = jobs.claim(engine, "ingestion", "w", 30)
    assert taken is not None and taken.id == uuid.UUID(ingestion_id)
