"""The predict path's speed work and its edges (issue 14's gaps; docs/serving.md):
one statement for the deployment and the admission, the request log written in
batches off the request path, ``timeout_ms``, quotas across two API processes, the
database going away under serving.

Real models, real storage, the real database (as test_api_deployments.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import serving_helpers
from fastapi.testclient import TestClient
from serving_helpers import fit, fit_slow, frame, register
from sqlalchemy import Engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from api.settings import ApiSettings
from database import errors, metering, registry
from database.models import InferenceStatus
from database.session import make_engine
from database.storage import LocalStorage
from database.verify import verify

from api_helpers import Account, give_credits, make_app, scalar, signup, start_api_processes
from pgtest import RestartableServer

# Prices: the first price book (migration c16a00000001), 1 credit per 1,000 predicted rows.


@pytest.fixture
def storage(api_settings: ApiSettings) -> LocalStorage:
    return LocalStorage(api_settings.storage_location())


def deploy(client: TestClient, account: Account, **body: Any) -> dict[str, Any]:
    body.setdefault("name", f"d-{uuid.uuid4().hex[:8]}")
    r = client.post("/v1/deployments", headers=account.headers, json=body)
    assert r.status_code == 201, r.text
    return r.json()


def url(deployment: dict[str, Any]) -> str:
    return f"/v1/deployments/{deployment['id']}/predict"


def records(rows: int = 2, seed: int = 3) -> list[dict[str, Any]]:
    x, _ = frame(rows, seed)
    return x.to_dict(orient="records")


def flush(client: TestClient) -> None:
    """Write the predictor's buffered request log now (it is written every ~150 ms)."""
    client.app.state.predictor.flush()  # type: ignore[attr-defined]


def logged(engine: Engine, deployment_id: str) -> list[str]:
    with engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT status::text FROM inference_requests WHERE deployment_id = :d"
                    " ORDER BY created_at"
                ),
                {"d": deployment_id},
            )
        ]


# --- one statement ---------------------------------------------------------------------------
@contextlib.contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    """The statements the request sends on ``engine`` while inside (the request log's
    thread writes on the same engine, whenever it wakes: its statements left out)."""
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "inference_requests" not in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)


def test_a_deployment_served_before_costs_the_key_and_one_statement(
    client: TestClient, account: Account, engine: Engine, storage: LocalStorage
) -> None:
    """Once this process served the deployment, a prediction sends two statements: the
    key's lookup and the deployment read with its admission (the key's quotas; the
    credit comes from the process's lease, taken by one statement once per block; no
    BEGIN, no COMMIT in autocommit; the log written later, in a batch)."""
    give_credits(engine, account.user_id, 10)
    model = register(engine, storage, account.user_id)
    d = deploy(client, account, model_version_id=str(model.version_id))
    body = {"records": records(2)}
    for _ in range(2):  # the long way, then the quick way taking the credit lease
        assert client.post(url(d), headers=account.headers, json=body).status_code == 200
    predictor = client.app.state.predictor  # type: ignore[attr-defined]
    assert predictor.leases.taken == 1
    predictor.log.flush()  # (not the leases: the next request uses the one taken)
    with _statements(engine) as statements:
        r = client.post(url(d), headers=account.headers, json=body)
    assert r.status_code == 200, r.text
    assert len(statements) == 2, statements
    # The key has no quota and the credit is leased: nothing for usage_hold to count,
    # so the statement leaves it out (issue 14).
    assert "deployments" in statements[1] and "usage_hold" not in statements[1]
    assert predictor.leases.taken == 1
    # A key with a quota: its quota is counted in the same statement, from the next
    # request on (the key's lookup reads it).
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE api_keys SET rate_limit_per_minute = 1000 WHERE id = :k"),
            {"k": account.key_id},
        )
    with _statements(engine) as statements:
        r = client.post(url(d), headers=account.headers, json=body)
    assert r.status_code == 200, r.text
    assert len(statements) == 2, statements
    assert "usage_hold" in statements[1] and "deployments" in statements[1]
    assert (
        scalar(
            engine,
            "SELECT sum(used) FROM api_key_usage_windows WHERE api_key_id = :k",
            k=account.key_id,
        )
        == 1
    )
    flush(client)
    assert logged(engine, d["id"]) == ["ok", "ok", "ok", "ok"]
    assert (
        scalar(engine, "SELECT count(*) FROM usage_holds WHERE user_id = :u", u=account.user_id)
        == 0
    )


def test_the_remembered_version_is_only_a_guess_an_alias_move_is_served_next(
    client: TestClient, account: Account, engine: Engine, storage: LocalStorage
) -> None:
    give_credits(engine, account.user_id, 10)
    v1 = register(engine, storage, account.user_id, fit(seed=1))
    v2 = register(
        engine, storage, account.user_id, fit(seed=2), registered_model_id=v1.registered_model_id
    )
    with Session(engine) as session:
        registry.set_alias(session, v1.registered_model_id, "champion", v1.version)
        session.commit()
    d = deploy(client, account, registered_model_id=str(v1.registered_model_id), alias="champion")
    body = {"records": records(1)}
    for _ in range(2):
        r = client.post(url(d), headers=account.headers, json=body)
        assert r.json()["model_version_id"] == str(v1.version_id)
    with Session(engine) as session:
        registry.set_alias(session, v1.registered_model_id, "champion", v2.version)
        session.commit()
    r = client.post(url(d), headers=account.headers, json=body)
    assert r.status_code == 200 and r.json()["model_version_id"] == str(v2.version_id)
    flush(client)
    # Each request admitted once: 3 rows used, no hold left behind.
    used = scalar(
        engine, "SELECT sum(quantity) FROM usage_events WHERE deployment_id = :d", d=d["id"]
    )
    assert used == 3
    assert (
        scalar(engine, "SELECT count(*) FROM usage_holds WHERE user_id = :u", u=account.user_id)
        == 0
    )


def test_a_stopped_deployment_and_a_bad_body_still_answer_in_order(
    client: TestClient, account: Account, engine: Engine, storage: LocalStorage
) -> None:
    """The guess never changes which error wins: 409 for a stopped deployment even
    with a good body, 422 for a bad body of an active one, 404 for another user's."""
    give_credits(engine, account.user_id, 10)
    model = register(engine, storage, account.user_id)
    d = deploy(client, account, model_version_id=str(model.version_id))
    assert (
        client.post(url(d), headers=account.headers, json={"records": records(1)}).status_code
        == 200
    )
    bad = client.post(url(d), headers=account.headers, json={"records": [{"colour": "red"}]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "missing_columns", bad.text
    other = signup(client)
    r = client.post(url(d), headers=other.headers, json={"records": records(1)})
    assert r.status_code == 404, r.text
    assert (
        client.post(f"/v1/deployments/{d['id']}/stop", headers=account.headers).status_code == 200
    )
    r = client.post(url(d), headers=account.headers, json={"records": records(1)})
    assert r.status_code == 409, r.text


def test_a_user_who_cannot_pay_is_refused_on_the_quick_way_too(
    client: TestClient, account: Account, engine: Engine, storage: LocalStorage
) -> None:
    give_credits(engine, account.user_id, 1)
    model = register(engine, storage, account.user_id)
    d = deploy(client, account, model_version_id=str(model.version_id))
    ok = client.post(url(d), headers=account.headers, json={"records": records(600)})
    assert ok.status_code == 200, ok.text
    # 600 rows used (0.6 credit) of 1: 500 more are refused before the model runs.
    r = client.post(url(d), headers=account.headers, json={"records": records(500)})
    assert r.status_code == 402 and r.json()["error"]["code"] == "payment_required", r.text
    flush(client)
    assert logged(engine, d["id"]) == ["ok", "refused"]


# --- usage equals the ledger's charges -------------------------------------------------------
def test_usage_through_the_buffer_equals_what_the_ledger_charged(
    client: TestClient, account: Account, engine: Engine, storage: LocalStorage
) -> None:
    give_credits(engine, account.user_id, 100)
    model = register(engine, storage, account.user_id)
    d = deploy(client, account, model_version_id=str(model.version_id))
    answers: list[int] = []

    def hammer(n: int) -> None:
        for i in range(6):
            r = client.post(
                url(d), headers=account.headers, json={"records": records(250, n * 10 + i)}
            )
            answers.append(r.status_code)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers == [200] * 18
    flush(client)
    report = metering.charge_usage(engine, user_id=account.user_id, through=dt.datetime.now(dt.UTC))
    assert not report.unpaid
    with engine.connect() as conn:
        assert metering.verify_usage(conn, [account.user_id]) == []
        used = conn.execute(
            text("SELECT sum(quantity * unit_price_micro) FROM usage_events WHERE user_id = :u"),
            {"u": account.user_id},
        ).scalar_one()
        charged = conn.execute(
            text(
                "SELECT -sum(amount) FROM credit_transactions WHERE user_id = :u"
                " AND type = 'consumption' AND job_id IS NULL"
            ),
            {"u": account.user_id},
        ).scalar_one()
    assert used == 18 * 250 * 1000  # micro-credits: 4.5 credits
    assert charged == used // 1_000_000 == 4
    assert logged(engine, d["id"]) == ["ok"] * 18


# --- timeout_ms ------------------------------------------------------------------------------
def test_a_prediction_past_timeout_ms_is_a_504_logged_as_timed_out(
    client: TestClient, account: Account, engine: Engine, storage: LocalStorage
) -> None:
    give_credits(engine, account.user_id, 10)
    slow = register(engine, storage, account.user_id, fit_slow())
    quick = register(engine, storage, account.user_id)
    d = deploy(client, account, model_version_id=str(slow.version_id), config={"timeout_ms": 300})
    fast = deploy(
        client, account, model_version_id=str(quick.version_id), config={"timeout_ms": 60_000}
    )
    serving_helpers.SLOW_SECONDS = 3.0
    try:
        r = client.post(url(d), headers=account.headers, json={"records": records(2)})
    finally:
        serving_helpers.SLOW_SECONDS = 0.0
    assert r.status_code == 504, r.text
    error = r.json()["error"]
    assert error["code"] == "prediction_timeout" and "timeout_ms (300 ms)" in error["message"]
    ok = client.post(url(fast), headers=account.headers, json={"records": records(2)})
    assert ok.status_code == 200, ok.text
    flush(client)
    assert logged(engine, d["id"]) == ["timeout"]
    assert logged(engine, fast["id"]) == ["ok"]
    # Not billed, and its hold released.
    assert (
        scalar(engine, "SELECT count(*) FROM usage_events WHERE deployment_id = :d", d=d["id"]) == 0
    )
    assert (
        scalar(engine, "SELECT count(*) FROM usage_holds WHERE user_id = :u", u=account.user_id)
        == 0
    )
    error_class = scalar(
        engine, "SELECT error_class FROM inference_requests WHERE deployment_id = :d", d=d["id"]
    )
    assert error_class == "prediction_timeout"


# --- the database going away -----------------------------------------------------------------
def test_predict_answers_503_while_the_database_is_down_and_the_log_survives_it(
    restartable_pg: RestartableServer, tmp_path: Path
) -> None:
    engine = make_engine(restartable_pg.url("automl"))
    settings = ApiSettings(data_dir=tmp_path, storage_url=str(tmp_path / "storage"))
    storage = LocalStorage(settings.storage_location())
    try:
        with TestClient(make_app(engine, settings)) as client:
            account = signup(client)
            give_credits(engine, account.user_id, 10)
            model = register(engine, storage, account.user_id)
            d = deploy(client, account, model_version_id=str(model.version_id))
            body = {"records": records(2)}
            assert client.post(url(d), headers=account.headers, json=body).status_code == 200
            flush(client)
            log = client.app.state.predictor.log  # type: ignore[attr-defined]
            restartable_pg.stop()
            down = client.post(url(d), headers=account.headers, json=body)
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] in {"database_unavailable", "busy"}
            assert "Retry-After" in down.headers
            # A request answered just before the outage, still in the buffer.
            log.add(
                metering.RequestRecord.make(
                    user_id=account.user_id,
                    api_key_id=account.key_id,
                    deployment_id=uuid.UUID(d["id"]),
                    model_version_id=model.version_id,
                    rows=2,
                    latency_ms=3,
                    status=InferenceStatus.OK,
                    error_class=None,
                    request_id=f"outage-{uuid.uuid4().hex}",
                )
            )
            with pytest.raises((sa_exc.OperationalError, errors.RetryableError)):
                log.flush()
            assert len(log) == 1  # kept for the next try
            restartable_pg.start()
            deadline = time.monotonic() + 60
            while True:  # the pool notices the restart on a request or two
                again = client.post(url(d), headers=account.headers, json=body)
                if again.status_code == 200:
                    break
                assert again.status_code == 503, again.text
                assert time.monotonic() < deadline, "predict did not recover"
                time.sleep(0.2)
            flush(client)
            assert len(log) == 0
            assert logged(engine, d["id"]) == ["ok", "ok", "ok"]
            used = scalar(
                engine, "SELECT sum(quantity) FROM usage_events WHERE deployment_id = :d", d=d["id"]
            )
            assert used == 6
    finally:
        engine.dispose()


# --- quotas across two API processes ---------------------------------------------------------
def test_a_keys_rate_limit_holds_across_two_uvicorn_processes(
    db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    """Two real API processes on one database, 24 predictions of one key with a limit of
    7 a minute, sent concurrently to both: exactly 7 are answered, 17 refused (429)."""
    limit, sent = 7, 24
    env = {
        **os.environ,
        "DATABASE_URL": db_url.render_as_string(hide_password=False),
        "AUTOML_DATA_DIR": str(tmp_path),
        "STORAGE_URL": str(tmp_path / "storage"),
        "IDENTITY__SIGNUP_PER_IP": "1000",
    }
    with start_api_processes(env) as (ports, _):
        base = f"http://127.0.0.1:{ports[0]}"
        # 60-s timeouts: a loaded machine answers slower than httpx's default 5 s.
        r = httpx.post(
            f"{base}/v1/users",
            json={"email": "quota@example.com", "full_name": "Q"},
            timeout=60,
        )
        assert r.status_code == 201, r.text
        key, user_id = r.json()["api_key"]["key"], uuid.UUID(r.json()["user"]["id"])
        headers = {"Authorization": f"Bearer {key}"}
        give_credits(engine, user_id, 100)
        model = register(engine, LocalStorage(str(tmp_path / "storage")), user_id)
        r = httpx.post(
            f"{base}/v1/deployments",
            headers=headers,
            json={"name": "q", "model_version_id": str(model.version_id)},
            timeout=60,
        )
        assert r.status_code == 201, r.text
        deployment_id = r.json()["id"]
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE api_keys SET rate_limit_per_minute = :n WHERE user_id = :u"),
                {"n": limit, "u": user_id},
            )
        # All in one minute's window: start at the beginning of a minute if close to its end.
        if dt.datetime.now(dt.UTC).second > 40:
            time.sleep(61 - dt.datetime.now(dt.UTC).second)
        body = {"records": records(1)}
        statuses: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(6)

        def hammer(port: int) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                barrier.wait()
                for _ in range(sent // 6):
                    got = http.post(
                        f"/v1/deployments/{deployment_id}/predict", headers=headers, json=body
                    )
                    assert got.status_code in (200, 429), got.text
                    if got.status_code == 429:
                        assert int(got.headers["Retry-After"]) >= 1
                    with lock:
                        statuses.append(got.status_code)

        threads = [threading.Thread(target=hammer, args=(ports[n % 2],)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert len(statuses) == sent
        with engine.connect() as conn:
            windows = (
                conn.execute(
                    text(
                        "SELECT w.used FROM api_key_usage_windows AS w JOIN api_keys AS k"
                        " ON k.id = w.api_key_id WHERE k.user_id = :u AND w.period = 'minute'"
                    ),
                    {"u": user_id},
                )
                .scalars()
                .all()
            )
        # Every minute's window holds at most the limit, and counts exactly the requests
        # answered; in one window (the usual case) that is the limit itself.
        assert all(used <= limit for used in windows), windows
        assert statuses.count(200) == sum(windows)
        if len(windows) == 1:
            assert statuses.count(200) == limit and statuses.count(429) == sent - limit
    # A graceful shutdown wrote both processes' buffered logs: every request is there.
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                text(
                    "SELECT status::text, count(*) FROM inference_requests"
                    " WHERE deployment_id = :d GROUP BY 1"
                ),
                {"d": deployment_id},
            ).all()
        )
    assert counts == {"ok": statuses.count(200), "refused": statuses.count(429)}


# --- batch outputs in the storage quota ------------------------------------------------------
def test_a_batch_output_counts_in_storage_and_the_purge_removes_it(
    client: TestClient, account: Account, engine: Engine, storage: LocalStorage
) -> None:
    import io

    from database import jobs, lifecycle
    from workers.kinds import Context, dispatch

    from factories import make_dataset, make_version

    model = register(engine, storage, account.user_id)
    d = deploy(client, account, model_version_id=str(model.version_id))
    x, _ = frame(300, seed=4)
    buffer = io.BytesIO()
    x.to_parquet(buffer)
    with engine.begin() as conn:
        dataset = make_dataset(conn, account.user_id)
        location = storage.write_bytes(f"datasets/{account.user_id}/b.parquet", buffer.getvalue())
        version = make_version(
            conn,
            dataset,
            s3_path=location,
            row_count=len(x),
            status="completed",
            parquet=len(buffer.getvalue()),
        )
    give_credits(engine, account.user_id, 100)
    before = scalar(engine, "SELECT storage_used_bytes FROM users WHERE id = :u", u=account.user_id)
    r = client.post(
        f"/v1/deployments/{d['id']}/batch",
        headers=account.headers,
        json={"dataset_version_id": str(version)},
    )
    assert r.status_code == 202, r.text
    claim = jobs.claim(engine, "job", "test-worker", 60)
    assert claim is not None
    context = Context(
        engine=engine, storage=storage, lease_seconds=60, max_attempts=3, stop=threading.Event()
    )
    assert dispatch(context, claim) == "completed"
    done = client.get(f"/v1/deployments/{d['id']}/batch/{claim.id}", headers=account.headers)
    size = done.json()["output_bytes"]
    assert size > 0
    after = scalar(engine, "SELECT storage_used_bytes FROM users WHERE id = :u", u=account.user_id)
    assert after == before + size
    output = scalar(engine, "SELECT location FROM batch_outputs WHERE job_id = :j", j=claim.id)
    assert storage.exists(output)

    # Its size is the database's to keep: written once, through the ORM or raw SQL.
    from database.models import BatchOutput

    with pytest.raises(errors.SizeReadOnly), Session(engine) as session:
        row = session.query(BatchOutput).filter_by(job_id=claim.id).one()
        row.size_bytes = 1
        session.commit()
    with pytest.raises(errors.SizeReadOnly), engine.begin() as conn:
        conn.execute(
            text("UPDATE batch_outputs SET size_bytes = 0 WHERE job_id = :j"), {"j": claim.id}
        )
    report = verify(engine)
    assert report.ok, report.render()

    # The purge of the (long deleted) user removes the file and its bytes.
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    with Session(engine) as session:
        lifecycle.soft_delete_user(session, account.user_id, at=long_ago)
        session.commit()
    removed: list[str] = []

    def remove(path: str) -> bool:
        removed.append(path)
        return storage.delete(path)

    result = lifecycle.purge(engine, remove_file=remove)
    assert result.users_purged == 1
    assert output in removed and not storage.exists(output)
    assert (
        scalar(engine, "SELECT count(*) FROM batch_outputs WHERE user_id = :u", u=account.user_id)
        == 0
    )
    assert (
        scalar(engine, "SELECT storage_used_bytes FROM users WHERE id = :u", u=account.user_id) == 0
    )
