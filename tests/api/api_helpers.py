"""Helpers of the API tests (imported by name: tests/api is on sys.path)."""

from __future__ import annotations

import http.server
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, SecretStr
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import State

from api.deps import get_session, get_session_factory
from api.mail import ConsoleMailer
from api.main import create_app
from api.settings import ApiSettings
from api.storage import make_storage
from database import credits, telemetry

WEBHOOK_SECRET = "whsec_test_0123456789abcdef"
_seq = itertools.count(1)


def make_app(engine: Engine, settings: ApiSettings) -> FastAPI:
    """The app of ``settings``, its sessions on ``engine`` (the test's own database).

    Building the app (``create_app``: about 200 routes) costs a large part of a
    second, and about 1,000 tests want one: each test process builds an app once
    per build-time settings (all but the per-test paths, :data:`PER_TEST`) and lends
    it to one test at a time. A lent app is as ``create_app`` leaves it: a new
    ``app.state`` (these settings, their storage, a new mailer and ledger totals),
    only this test's dependency overrides, no cached OpenAPI document, its
    middleware rebuilt on the first request. ``release_apps`` (called by
    tests/conftest.py after each test) takes the apps back; one whose routes,
    middleware, exception handlers or events the test changed is thrown away, not
    lent again. Two apps wanted at once (two engines) are two apps. ``TEST_APP_POOL=0``
    builds a new app every time (to compare, or to rule the lending out)."""
    key = _build_key(settings)
    free = _free.setdefault(key, [])
    if free and os.environ.get("TEST_APP_POOL") != "0":
        built = free.pop()
        _reset(built.app, settings)
    else:
        app = create_app(settings)
        built = _Built(app, key, _shape(app), _state_kinds(app))
    app = built.app
    factory = sessionmaker(bind=engine, expire_on_commit=False)

    def session_override() -> Iterator[Session]:
        with factory() as session:
            yield session

    app.dependency_overrides[get_session] = session_override
    app.dependency_overrides[get_session_factory] = lambda: factory
    _lent.append(built)
    return app


#: The settings read when a request comes (``app.state``), not when the app is built.
PER_TEST = frozenset({"data_dir", "storage_url"})


@dataclass
class _Built:
    app: FastAPI
    key: str
    shape: tuple[Any, ...]
    state: dict[str, type]


_free: dict[str, list[_Built]] = {}
_lent: list[_Built] = []


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return ("secret", value.get_secret_value())
    if isinstance(value, BaseModel):
        return tuple((name, _plain(getattr(value, name))) for name in type(value).model_fields)
    return repr(value)


def _build_key(settings: ApiSettings) -> str:
    """What ``create_app`` may build in: every setting but the paths, and the
    tracing environment (``api.tracing.install``)."""
    fields = [
        (name, _plain(getattr(settings, name)))
        for name in type(settings).model_fields
        if name not in PER_TEST
    ]
    tracing = sorted((k, v) for k, v in os.environ.items() if k.startswith("OTEL_"))
    return repr((fields, tracing))


def _shape(app: FastAPI) -> tuple[Any, ...]:
    """What a test could add to an app (a route, a middleware, a handler, an event)."""
    return (
        tuple(app.router.routes),
        tuple(app.user_middleware),
        tuple(app.exception_handlers.items()),
        tuple(app.router.on_startup),
        tuple(app.router.on_shutdown),
        app.router.lifespan_context,
        app.openapi,
    )


def _state_kinds(app: FastAPI) -> dict[str, type]:
    return {name: type(value) for name, value in app.state._state.items()}


def _reset(app: FastAPI, settings: ApiSettings) -> None:
    """``app`` as ``create_app(settings)`` leaves it (tests/api/test_api_app_pool.py
    checks the state against a new app's)."""
    app.state = State()
    app.state.settings = settings
    app.state.storage = make_storage(settings.storage_location(), settings.data_dir)
    app.state.mailer = ConsoleMailer()
    app.state.ledger_totals = telemetry.LedgerTotals()
    app.dependency_overrides.clear()
    app.openapi_schema = None
    app.middleware_stack = None  # built again, with new instances, on the first request


#: The names ``_reset`` sets in ``app.state``.
RESET_STATE = frozenset({"settings", "storage", "mailer", "ledger_totals"})


def release_apps() -> None:
    """Take back the apps lent to the test that ended (tests/conftest.py calls this
    after each test): an app the test left as built is lent again; one it changed,
    or whose ``create_app`` set state that ``_reset`` does not, is dropped."""
    while _lent:
        built = _lent.pop()
        app = built.app
        app.dependency_overrides.clear()
        app.state = State()
        app.middleware_stack = None
        if _shape(app) == built.shape and set(built.state) == RESET_STATE:
            _free[built.key].append(built)


@dataclass
class Account:
    user_id: uuid.UUID
    email: str
    key: str
    key_id: uuid.UUID

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def signup(client: TestClient, email: str | None = None) -> Account:
    email = email or f"user{next(_seq)}-{uuid.uuid4().hex[:6]}@example.com"
    r = client.post("/v1/users", json={"email": email, "full_name": "Test User"})
    assert r.status_code == 201, r.text
    body = r.json()
    return Account(
        user_id=uuid.UUID(body["user"]["id"]),
        email=email,
        key=body["api_key"]["key"],
        key_id=uuid.UUID(body["api_key"]["id"]),
    )


def give_credits(engine: Engine, user_id: uuid.UUID, amount: int) -> None:
    """Through the package's operation, as an administrator would."""
    with Session(engine) as session:
        credits.adjust(session, user_id, amount, "test credits", "tests")


def rows(engine: Engine, statement: str, **params: Any) -> list[Any]:
    with engine.begin() as conn:
        result = conn.execute(text(statement), params)
        return list(result) if result.returns_rows else []


def scalar(engine: Engine, statement: str, **params: Any) -> Any:
    found = rows(engine, statement, **params)
    return found[0][0] if found else None


CSV = b"sepal_length,sepal_width,species\n5.1,3.5,setosa\n4.9,3.0,setosa\n6.2,2.9,virginica\n"


def upload(
    client: TestClient,
    account: Account,
    *,
    name: str = "iris",
    content: bytes = CSV,
    filename: str = "iris.csv",
    **fields: str,
) -> Any:
    return client.post(
        "/v1/datasets",
        headers=account.headers,
        data={"name": name, **fields},
        files={"file": (filename, content, "text/csv")},
    )


def make_dataset(client: TestClient, account: Account, **kw: Any) -> dict[str, Any]:
    r = upload(client, account, **kw)
    assert r.status_code == 201, r.text
    return r.json()


def definition(dataset_id: uuid.UUID | str | None) -> dict[str, Any]:
    """A valid workflow: dataset -> preprocess -> model -> save."""
    config = {"dataset_id": str(dataset_id)} if dataset_id else {}
    return {
        "nodes": [
            {"id": "data", "type": "dataset", "config": config},
            {"id": "clean", "type": "preprocess", "config": {"impute": "mean"}},
            {
                "id": "train",
                "type": "model",
                "config": {"algorithm": "random_forest", "hyperparameters": {"n_estimators": 10}},
            },
            {"id": "keep", "type": "save", "config": {"name": "iris forest"}},
        ],
        "edges": [
            {"source": "data", "target": "clean"},
            {"source": "clean", "target": "train"},
            {"source": "train", "target": "keep"},
        ],
    }


#: The default price of ``definition``: base 1 + preprocess 1 + model 10 + save 1.
DEFINITION_PRICE = 13


def make_workflow(
    client: TestClient, account: Account, dataset_id: Any = None, name: str = "pipeline"
) -> dict[str, Any]:
    r = client.post(
        "/v1/workflows",
        headers=account.headers,
        json={"name": name, "definition": definition(dataset_id)},
    )
    assert r.status_code == 201, r.text
    return r.json()


#: ``columns_metadata`` of an ingested ``CSV``, as the ingestion worker writes it.
CSV_COLUMNS = {
    "columns": [
        {"name": "sepal_length", "dtype": "float64", "kind": "numeric"},
        {"name": "sepal_width", "dtype": "float64", "kind": "numeric"},
        {"name": "species", "dtype": "str", "kind": "categorical"},
    ]
}


def ingested(
    engine: Engine,
    version_id: uuid.UUID | str,
    *,
    status: str = "completed",
    columns: dict[str, Any] | None = CSV_COLUMNS,
) -> None:
    """Mark a version as the ingestion worker leaves it (``status``, ``columns_metadata``)."""
    rows(
        engine,
        "UPDATE dataset_versions SET status = CAST(:s AS ingestion_status),"
        " columns_metadata = CAST(:c AS jsonb), processed_at = now() WHERE id = :id",
        s=status,
        c=None if columns is None else json.dumps(columns),
        id=str(version_id),
    )


def ready_dataset(client: TestClient, account: Account, engine: Engine, **kw: Any) -> Any:
    """An uploaded iris dataset (classification of ``species``) whose version 1 is ingested."""
    fields = {"target_column": "species", "problem_type": "classification", **kw}
    dataset = make_dataset(client, account, **fields)
    ingested(engine, dataset["version"]["id"])
    return dataset


def runnable_workflow(client: TestClient, account: Account, engine: Engine) -> dict[str, Any]:
    """``definition`` on a :func:`ready_dataset`: a run of it is accepted."""
    dataset = ready_dataset(client, account, engine)
    return make_workflow(client, account, dataset["dataset"]["id"])


def stripe_headers(
    payload: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None
) -> dict[str, str]:
    import stripe

    header = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), secret, timestamp=at or int(time.time())
    )
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


def checkout_event(
    user_id: uuid.UUID | str,
    package_id: uuid.UUID | str,
    payment_intent: str,
    *,
    event_id: str | None = None,
    event_type: str = "checkout.session.completed",
    payment_status: str = "paid",
    livemode: Any = False,
) -> bytes:
    event = {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "livemode": livemode,
        "created": int(time.time()),
        "data": {
            "object": {
                "id": f"cs_test_{uuid.uuid4().hex}",
                "object": "checkout.session",
                "client_reference_id": str(user_id),
                "metadata": {"package_id": str(package_id)},
                "payment_intent": payment_intent,
                "payment_status": payment_status,
            }
        },
    }
    return json.dumps(event).encode()


# --- a local server that answers like Stripe's API ---------------------------------------
class FakeStripe(http.server.BaseHTTPRequestHandler):
    sessions: dict[str, dict[str, Any]]
    requests: list[dict[str, Any]]
    fail_with: int | None

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        form = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
        cls = type(self)
        cls.requests.append(
            {
                "path": self.path,
                "auth": self.headers.get("Authorization"),
                "form": form,
                "idempotency_key": self.headers.get("Idempotency-Key"),
            }
        )
        if self.path != "/v1/checkout/sessions":
            return self._answer(
                404,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": f"Unrecognized request URL {self.path}",
                    }
                },
            )
        if cls.fail_with is not None:
            return self._answer(
                cls.fail_with,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "parameter_invalid",
                        "message": "Invalid URL",
                    }
                },
            )
        sid = f"cs_test_{uuid.uuid4().hex}"
        amount = int(form.get("line_items[0][price_data][unit_amount]") or 0)
        session = {
            "id": sid,
            "object": "checkout.session",
            "mode": form.get("mode"),
            "status": "open",
            "payment_status": "unpaid",
            "client_reference_id": form.get("client_reference_id"),
            "metadata": {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")},
            "amount_total": amount,
            "currency": form.get("line_items[0][price_data][currency]", "usd"),
            "success_url": form.get("success_url"),
            "cancel_url": form.get("cancel_url"),
            "url": f"https://checkout.stripe.com/c/pay/{sid}",
            "payment_intent": None,
            "invoice": None,
            "livemode": False,
            "created": int(time.time()),
        }
        cls.sessions[sid] = session
        self._answer(200, session)

    def _answer(self, code: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Request-Id", f"req_{uuid.uuid4().hex[:12]}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def fake_stripe_server() -> Iterator[tuple[str, type[FakeStripe]]]:
    """A local server answering like Stripe's API (``POST /v1/checkout/sessions``): its
    base URL (``STRIPE_API_BASE``) and the handler class, which records the requests
    (``requests``), the sessions made (``sessions``), and fails with ``fail_with``."""
    handler = type("Handler", (FakeStripe,), {"sessions": {}, "requests": [], "fail_with": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


# --- real API processes --------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def start_api_processes(
    env: dict[str, str], n: int = 2
) -> Iterator[tuple[list[int], list[subprocess.Popen[bytes]]]]:
    """``n`` real API processes (``uvicorn api.main:create_app --factory``) started at once
    with the environment ``env``, each on a free port: their ports and processes, once each
    answers ``GET /healthz``. A readiness poll, no timing assertion: it fails only after
    600 s (a loaded machine starts them slowly) or when a process exits. Afterwards the
    processes still running are stopped (SIGTERM: a graceful shutdown) and waited for."""
    import httpx

    ports = [free_port() for _ in range(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
            + ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        deadline = time.monotonic() + 600
        for port in ports:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the API processes did not start"
                assert all(p.poll() is None for p in procs), "an API process exited"
                time.sleep(0.1)
        yield ports, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(30)
