"""``/metrics`` of the API and of the worker (docs/metrics.md), and tracing.

A real run goes through the API and an in-process worker (as the other API tests
run jobs): the queue's series (read from the database when scraped) show it
waiting, then gone; the request series count the run's request under its route
template; the credits counter (read from the ledger) the charge; the worker's own endpoint (its
``WORKER_METRICS_PORT`` server) its claim, queue wait, duration and outcome.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from test_api_job_events import iris_csv

from api import metrics
from api import tracing as api_tracing
from api.settings import ApiSettings
from database import credits, errors, telemetry, tracing, worker_registry
from pipeline.storage import make_storage
from workers import metrics as worker_metrics
from workers.main import Worker
from workers.settings import WorkerSettings

from api_helpers import (
    Account,
    fake_stripe_server,
    give_credits,
    make_app,
    scalar,
    signup,
    upload,
)
from factories import make_credit_package, make_user

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(s: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when absent (a series not yet seen, a queue emptied)."""
    return s.get((name, frozenset(labels.items())), 0.0)


def scrape(client: TestClient, **headers: str) -> Samples:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


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


@pytest.fixture
def worker_endpoint() -> Iterator[str]:
    """The worker's /metrics server (``WORKER_METRICS_PORT``), on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert worker_metrics.serve(port, "127.0.0.1")
    yield f"http://127.0.0.1:{port}/metrics"


def test_the_queue_and_request_series_move_when_a_job_runs(
    client: TestClient,
    account: Account,
    engine: Engine,
    drain: Callable[[], Worker],
    worker_endpoint: str,
) -> None:
    give_credits(engine, account.user_id, 100)
    r = upload(
        client, account, content=iris_csv(), target_column="species", problem_type="classification"
    )
    assert r.status_code == 201, r.text
    pending = scrape(client)
    assert value(pending, "automl_queue_snapshot_ok") == 1
    assert (
        value(pending, "automl_queue_jobs", queue="ingestion", kind="ingestion", status="pending")
        == 1
    )
    assert (
        value(pending, "automl_queue_oldest_wait_seconds", queue="ingestion", kind="ingestion") >= 0
    )
    drain()
    definition = {
        "nodes": [
            {"id": "data", "type": "dataset", "config": {"dataset_id": r.json()["dataset"]["id"]}},
            {
                "id": "train",
                "type": "model",
                "config": {"algorithm": "random_forest", "hyperparameters": {"n_estimators": 3}},
            },
        ],
        "edges": [{"source": "data", "target": "train"}],
    }
    r = client.post(
        "/v1/workflows", headers=account.headers, json={"name": "w", "definition": definition}
    )
    assert r.status_code == 201, r.text
    workflow_id = r.json()["id"]
    route = "/v1/workflows/{workflow_id}/run"
    worker_before = samples(httpx.get(worker_endpoint, timeout=60).text)
    before = scrape(client)

    r = client.post(f"/v1/workflows/{workflow_id}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    job_id = r.json()["job"]["id"]
    cost = scalar(engine, "SELECT credit_cost FROM jobs WHERE id = :id", id=job_id)
    assert cost > 0
    queued = scrape(client)
    assert (
        value(queued, "automl_queue_jobs", queue="job", kind="workflow_run", status="queued") == 1
    )
    assert value(queued, "automl_queue_oldest_wait_seconds", queue="job", kind="workflow_run") >= 0
    # The request under its route template, never the raw path.
    key = {"method": "POST", "route": route, "status": "201"}
    assert (
        value(queued, "automl_http_requests_total", **key)
        == value(before, "automl_http_requests_total", **key) + 1
    )
    assert (
        value(queued, "automl_http_request_duration_seconds_count", **key)
        == value(before, "automl_http_request_duration_seconds_count", **key) + 1
    )
    assert not any(workflow_id in dict(labels).get("route", "") for _, labels in queued)
    # The run's charge, as committed.
    assert (
        value(queued, "automl_credits_total", type="consumption")
        == value(before, "automl_credits_total", type="consumption") + cost
    )
    # No worker alive yet; one beating is counted.
    assert value(queued, "automl_workers_alive") == 0
    with engine.begin() as conn:
        worker_registry.beat(conn, name="w-metrics", hostname="h", pid=1, slots=3, lease_seconds=30)
    alive = scrape(client)
    assert value(alive, "automl_workers_alive") == 1
    assert value(alive, "automl_worker_slots_alive") == 3

    drain()
    assert scalar(engine, "SELECT status::text FROM jobs WHERE id = :id", id=job_id) == "completed"
    done = scrape(client)
    assert value(done, "automl_queue_jobs", queue="job", kind="workflow_run", status="queued") == 0
    assert value(done, "automl_queue_jobs", queue="job", kind="workflow_run", status="running") == 0
    assert (
        "automl_queue_oldest_wait_seconds",
        frozenset({("queue", "job"), ("kind", "workflow_run")}),
    ) not in done

    # The worker's own series, from its endpoint.
    worker_after = samples(httpx.get(worker_endpoint, timeout=60).text)
    job = {"queue": "job", "kind": "workflow_run"}
    finished = {**job, "outcome": "completed"}
    for name, labels in (
        ("automl_worker_claims_total", job),
        ("automl_worker_queue_wait_seconds_count", job),
        ("automl_worker_jobs_total", finished),
        ("automl_worker_job_duration_seconds_count", finished),
    ):
        assert value(worker_after, name, **labels) == value(worker_before, name, **labels) + 1, name
    assert value(worker_after, "automl_worker_queue_wait_seconds_sum", **job) > value(
        worker_before, "automl_worker_queue_wait_seconds_sum", **job
    )
    assert value(worker_after, "automl_worker_jobs_in_flight", **job) == 0
    assert value(worker_after, "automl_worker_slots") == 1


def test_routes_are_labelled_by_template_whatever_the_answer(
    client: TestClient, account: Account
) -> None:
    before = scrape(client)
    missing = uuid.uuid4()
    assert client.get(f"/v1/jobs/{missing}", headers=account.headers).status_code == 404
    assert client.get(f"/no/such/{missing}").status_code == 404
    # Refused by api.limits before any route runs: still its route's template.
    big = client.post(
        "/v1/users",
        content=b"{" + b" " * (2 * 1024 * 1024),
        headers={"content-type": "application/json"},
    )
    assert big.status_code == 413
    after = scrape(client)
    for labels in (
        {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "404"},
        {"method": "GET", "route": metrics.UNMATCHED, "status": "404"},
        {"method": "POST", "route": "/v1/users", "status": "413"},
    ):
        assert (
            value(after, "automl_http_requests_total", **labels)
            == value(before, "automl_http_requests_total", **labels) + 1
        ), labels
    assert not any(str(missing) in str(labels) for _, labels in after)


def test_a_rolled_back_ledger_entry_is_not_counted(
    engine: Engine, client: TestClient, account: Account, sql: Any
) -> None:
    """Purchases through database.credits, in a caller's transaction (a savepoint
    each): only what the outermost commit wrote is counted."""
    small = make_credit_package(sql, credits=5)
    large = make_credit_package(sql, credits=11)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    before = value(scrape(client), "automl_credits_total", type="purchase")
    with factory() as session:
        session.begin()
        credits.purchase(session, account.user_id, large, "pi_rolled_back")
        session.rollback()
    assert value(scrape(client), "automl_credits_total", type="purchase") == before
    with factory() as session:
        session.begin()
        credits.purchase(session, account.user_id, small, "pi_kept")
        savepoint = session.begin_nested()
        credits.purchase(session, account.user_id, large, "pi_undone")
        savepoint.rollback()
        session.commit()
    assert value(scrape(client), "automl_credits_total", type="purchase") == before + 5


def test_an_operators_adjustment_through_sql_is_counted(
    engine: Engine, client: TestClient, account: Account, sql: Any
) -> None:
    """Adjustments through the SQL function (an operator in psql) and a raw INSERT
    by the ledger's owner: no ORM session of this process wrote them, and both are
    in the credits and entries series at the next scrape, a refused one not."""
    before = scrape(client)
    sql(
        "SELECT * FROM public.credit_adjust(:u, 7, 'goodwill', 'ops:ada', NULL)",
        u=account.user_id,
    )
    sql(
        "INSERT INTO credit_transactions (user_id, type, amount, description, actor)"
        " VALUES (:u, 'adjustment', -3, 'correction', 'ops:ada')",
        u=account.user_id,
    )
    with pytest.raises(errors.InsufficientCredits):  # would go below zero: not written
        sql(
            "SELECT * FROM public.credit_adjust(:u, -1000000, 'too much', 'ops:ada', NULL)",
            u=account.user_id,
        )
    after = scrape(client)
    assert (
        value(after, "automl_credits_total", type="adjustment")
        == value(before, "automl_credits_total", type="adjustment") + 10
    )
    assert (
        value(after, "automl_ledger_entries_total", type="adjustment")
        == value(before, "automl_ledger_entries_total", type="adjustment") + 2
    )


def _ledger_total(engine: Engine, ledger: telemetry.LedgerTotals) -> dict[str, Any]:
    with Session(engine) as session:
        return telemetry.queue_snapshot(session, ledger).ledger


def test_the_ledger_read_incrementally_equals_a_full_count(
    engine: Engine, account: Account, sql: Any
) -> None:
    """``LedgerTotals`` keeps the settled part between scrapes and reads only what is
    past it: after entries of every kind, its totals equal a fresh full count, with
    no horizon (everything settled at once) and with one. An entry whose transaction
    took its id before a later entry was read, and committed after, is counted once
    it commits (within the horizon)."""
    package = make_credit_package(sql, credits=4)
    eager = telemetry.LedgerTotals(horizon_seconds=0)
    patient = telemetry.LedgerTotals(horizon_seconds=3600)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    for n in range(3):
        with factory.begin() as session:
            credits.purchase(session, account.user_id, package, f"pi_incr_{n}")
        sql("SELECT * FROM public.credit_adjust(:u, 2, 'g', 'ops', NULL)", u=account.user_id)
        first_eager, first_patient = _ledger_total(engine, eager), _ledger_total(engine, patient)
        full = _ledger_total(engine, telemetry.LedgerTotals())
        assert first_eager == first_patient == full
        assert full["purchase"].entries >= n + 1
    assert eager.settled_ms > 0 and eager.settled  # the boundary moved; totals kept
    late = engine.connect()
    try:
        late.begin()
        late.execute(  # takes its id (uuidv7: now) and does not commit yet
            text("SELECT * FROM public.credit_adjust(:u, 5, 'late', 'ops', NULL)"),
            {"u": account.user_id},
        )
        other = make_user(sql)  # another user: the late entry holds this one's row
        sql("SELECT * FROM public.credit_adjust(:u, 1, 'later', 'ops', NULL)", u=other)
        seen = _ledger_total(engine, patient)
        late.commit()
    finally:
        late.close()
    now = _ledger_total(engine, patient)
    assert now["adjustment"].credits == seen["adjustment"].credits + 5
    assert now == _ledger_total(engine, telemetry.LedgerTotals())


def test_metrics_token(engine: Engine, api_settings: ApiSettings) -> None:
    settings = api_settings.model_copy(update={"metrics_token": SecretStr("s3cret-token")})
    with TestClient(make_app(engine, settings)) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert (
            c.get("/metrics", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        )


def test_a_database_that_does_not_answer_leaves_the_process_series(client: TestClient) -> None:
    def broken() -> Session:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    text = metrics.exposition(broken).decode()
    s = samples(text)
    assert value(s, "automl_queue_snapshot_ok") == 0
    assert any(name == "automl_http_requests_total" for name, _ in s)
    assert "automl_queue_jobs" not in text


@pytest.fixture
def traced_app(engine: Engine, api_settings: ApiSettings) -> Iterator[tuple[FastAPI, object]]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    app = make_app(engine, api_settings)
    assert api_tracing.install(app, exporter=exporter)
    tracing.instrument_engine(engine)
    try:
        yield app, exporter
    finally:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        FastAPIInstrumentor.uninstrument_app(app)
        HTTPXClientInstrumentor().uninstrument()
        tracing.reset()


def test_tracing_is_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure("automl-api") is None
    with tracing.span("nothing") as current:
        assert current is None


def test_a_request_makes_spans_with_an_exporter(traced_app: tuple[FastAPI, object]) -> None:
    app, exporter = traced_app
    with TestClient(app) as c:
        account = signup(c)
        exporter.clear()  # type: ignore[attr-defined]
        assert c.get("/v1/me", headers=account.headers).status_code == 200
        with fake_stripe_server() as (url, _), tracing.span("outgoing") as parent:
            # An outgoing httpx call (Stripe, automl-serve): a client span in the trace.
            httpx.post(f"{url}/v1/nothing", timeout=5)
    spans = exporter.get_finished_spans()  # type: ignore[attr-defined]
    server = [s for s in spans if s.attributes.get("http.route") == "/v1/me"]
    assert server, [s.name for s in spans]
    trace_id = server[0].context.trace_id
    sql = [s for s in spans if s.parent is not None and s.parent.trace_id == trace_id]
    statements = [s for s in sql if any(k.startswith("db.") for k in s.attributes)]
    assert statements, [(s.name, dict(s.attributes)) for s in spans]
    outgoing = [
        s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    assert [
        s.attributes.get("http.request.method", s.attributes.get("http.method")) for s in outgoing
    ] == ["POST"]
