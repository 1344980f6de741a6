"""``GET /metrics``: the API's Prometheus metrics (docs/metrics.md).

Two kinds of series:

- **Of this process**, counted as things happen: requests by route template (never
  the raw path, so ids do not multiply the series), method and status, their
  latency and the requests in flight (:class:`RequestMetrics`, a pure ASGI
  middleware); predictions by outcome and the rows they scored
  (:func:`record_prediction`, called by ``api.serving.service.respond``, so
  ``automl-serve`` counts its own).
- **Of the platform**, read from the database when scraped, in one statement
  (``database.telemetry.queue_snapshot``): the work waiting and running by queue,
  kind and status, the age of the oldest waiting piece, the live workers and their
  slots, and the credits and entries of every committed ledger entry by type
  (whoever wrote it: an operator's ``credit_adjust()`` too), read incrementally
  (``database.telemetry.LedgerTotals``, kept in the app's state). Like a queue
  exporter, they are the database's truth whichever process is scraped, and no
  worker has to be reachable for them; each API process answers them alike, so
  scrape one target for them (or ``max`` over targets).

Several uvicorn processes (``--workers N``): set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty folder shared by them before they start (prometheus-client's multiprocess
mode); each scrape then sums the processes' files, and the in-flight gauge counts
the live processes only (:func:`forget_dead_processes`). Without it, each process
counts alone.

``METRICS_TOKEN`` set: ``/metrics`` wants ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import SessionFactoryDep
from api.errors import ApiError
from database import telemetry

log = logging.getLogger("api.metrics")

#: Seconds; from a cache hit to a large upload.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The route label of a request no route matched (a 404 of an unknown path).
UNMATCHED = "<unmatched>"


REQUESTS = Counter(
    "automl_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "automl_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer (a stream's whole length),"
    " by method, route template and status code.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "automl_http_requests_in_flight",
    "HTTP requests being answered now.",
    multiprocess_mode="livesum",
)
PREDICTIONS = Counter(
    "automl_predictions_total",
    "Predict requests answered, by outcome (ok, refused, timeout, client_error, server_error).",
    ["status"],
)
PREDICTION_ROWS = Counter(
    "automl_prediction_rows_total",
    "Rows scored by successful predict requests.",
)


# --- requests -------------------------------------------------------------------------------
class RouteTemplates:
    """The template of the route that answered a request (``/v1/jobs/{job_id}``,
    prefixes included). FastAPI keeps an included router's routes with their own
    paths (``/jobs/{job_id}``): the full ones come from its route contexts, mapped
    once. A request answered before routing (a 413 of ``api.limits``) is matched
    here; one no route matches is :data:`UNMATCHED`."""

    def __init__(self, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self.routes = routes
        self._full: dict[int, str] | None = None
        self._patterns: list[tuple[re.Pattern[str], frozenset[str], str]] = []

    def _paths(self) -> dict[int, str]:
        if self._full is None:
            full: dict[int, str] = {}
            patterns: list[tuple[re.Pattern[str], frozenset[str], str]] = []
            for route, path, methods in self._contexts():
                full.setdefault(id(route), path)
                patterns.append((compile_path(path)[0], methods, path))
            self._full, self._patterns = full, patterns
        return self._full

    def _contexts(self) -> Iterator[tuple[Any, str, frozenset[str]]]:
        """(route, full path, methods) of every route."""
        try:
            from fastapi.routing import iter_route_contexts
        except ImportError:  # an older FastAPI: routes keep their full paths
            for route in self.routes():
                path = getattr(route, "path", None)
                if isinstance(path, str):
                    yield route, path, frozenset(getattr(route, "methods", None) or ())
            return
        for context in iter_route_contexts(self.routes()):
            if context.path is not None:
                yield context.original_route, context.path, frozenset(context.methods or ())

    def _of(self, route: Any) -> str | None:
        path = self._paths().get(id(route))
        if path is None:
            path = getattr(route, "path", None)
        return path if isinstance(path, str) else None

    def __call__(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return self._of(route) or UNMATCHED
        self._paths()
        method, path = scope.get("method"), scope.get("path", "")
        for regex, methods, template in self._patterns:
            if regex.match(path) and (not methods or method in methods):
                return template
        return UNMATCHED


class RequestMetrics:
    """Counts, times and gauges every HTTP request (pure ASGI: no copy of the body)."""

    def __init__(self, app: ASGIApp, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self.app = app
        self.template = RouteTemplates(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes is answered 500 outside

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            IN_FLIGHT.dec()
            labels = (scope["method"], self.template(scope), str(status))
            REQUESTS.labels(*labels).inc()
            LATENCY.labels(*labels).observe(time.perf_counter() - started)


# --- predictions -------------------------------------------------------------------------
def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (402, 429):
        return "refused"
    if status in (408, 504):
        return "timeout"
    return "client_error" if status < 500 else "server_error"


def record_prediction(status: int, body: Any) -> None:
    """A predict request answered ``status`` with ``body`` (rows counted on success)."""
    PREDICTIONS.labels(_outcome(status)).inc()
    if status == 200 and isinstance(body, dict):
        rows = body.get("predictions")
        if isinstance(rows, list):
            PREDICTION_ROWS.inc(len(rows))


# --- the database's series, at scrape time ------------------------------------------------
class QueueCollector(Collector):
    """The queues, the workers and the ledger's totals as
    :func:`database.telemetry.queue_snapshot` reads them, once per scrape;
    ``automl_queue_snapshot_ok`` 0 when the database did not answer (the process's
    own series are served anyway). ``ledger`` keeps what earlier scrapes settled."""

    def __init__(
        self, factory: Callable[[], Session], ledger: telemetry.LedgerTotals | None = None
    ) -> None:
        self.factory = factory
        self.ledger = ledger

    def collect(self) -> Iterable[Metric]:
        ok = GaugeMetricFamily(
            "automl_queue_snapshot_ok",
            "1 when this scrape read the queues from the database, 0 when it could not.",
        )
        try:
            with self.factory() as session:
                snapshot = telemetry.queue_snapshot(session, self.ledger)
        except Exception as exc:
            log.warning("metrics: the queue snapshot failed: %s", type(exc).__name__)
            ok.add_metric([], 0)
            yield ok
            return
        ok.add_metric([], 1)
        yield ok
        depth = GaugeMetricFamily(
            "automl_queue_jobs",
            "Work waiting (queued, pending) or in progress (running, processing) now,"
            " by queue (job, ingestion), kind and status.",
            labels=["queue", "kind", "status"],
        )
        oldest = GaugeMetricFamily(
            "automl_queue_oldest_wait_seconds",
            "Age of the oldest waiting work since it became due, by queue and kind.",
            labels=["queue", "kind"],
        )
        for row in snapshot.rows:
            depth.add_metric([row.queue, row.kind, row.status], row.count)
            if row.oldest_wait_seconds is not None:
                oldest.add_metric([row.queue, row.kind], row.oldest_wait_seconds)
        yield depth
        yield oldest
        workers = GaugeMetricFamily(
            "automl_workers_alive", "Workers alive now (the workers table: beating, not stopped)."
        )
        workers.add_metric([], snapshot.workers_alive)
        yield workers
        slots = GaugeMetricFamily(
            "automl_worker_slots_alive", "Slots of the live workers: work that may run at once."
        )
        slots.add_metric([], snapshot.worker_slots)
        yield slots
        credits = CounterMetricFamily(
            "automl_credits",
            "Credits moved by the ledger's committed entries, by entry type (consumption:"
            " charges; purchase, refund, adjustment), as positive numbers: every entry"
            " whoever wrote it (the apps, an operator's credit_adjust(), raw SQL), read"
            " from the database.",
            labels=["type"],
        )
        entries = CounterMetricFamily(
            "automl_ledger_entries",
            "The ledger's committed entries, by entry type, read from the database.",
            labels=["type"],
        )
        for kind, total in snapshot.ledger.items():
            credits.add_metric([kind], total.credits)
            entries.add_metric([kind], total.entries)
        yield credits
        yield entries


def process_registry() -> CollectorRegistry:
    """This process's series, or all processes' in multiprocess mode."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        forget_dead_processes(directory)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return registry
    return REGISTRY


_LIVE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def forget_dead_processes(directory: str) -> list[int]:
    """Multiprocess mode: the ``livesum``/``livemax`` gauges (requests in flight) of
    processes that are gone, removed. prometheus-client sums every file it finds;
    a process killed while answering (SIGKILL, a crash, a uvicorn worker restarted)
    left its in-flight count behind, and gunicorn's ``child_exit`` hook, where its
    docs call ``mark_process_dead``, does not exist under ``uvicorn --workers``.
    Counters and histograms of dead processes are kept (they are history). Returns
    the pids forgotten."""
    from prometheus_client import multiprocess

    try:
        names = os.listdir(directory)
    except OSError:
        return []
    dead = sorted(
        {
            int(m.group(1))
            for m in map(_LIVE_FILE.match, names)
            if m is not None and not _alive(int(m.group(1)))
        }
    )
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)
    return dead


def exposition(
    factory: Callable[[], Session] | None, ledger: telemetry.LedgerTotals | None = None
) -> bytes:
    """The text of one scrape: the process's series, then the database's."""
    text = generate_latest(process_registry())
    if factory is not None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(QueueCollector(factory, ledger))
        text += generate_latest(registry)
    return text


def authorized(header: str | None, token: str | None) -> bool:
    """No token configured: open. Else ``Bearer <token>``, compared in constant time."""
    if not token:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


router = APIRouter(tags=["health"])


# An operators' endpoint for Prometheus, not a user API: not in /openapi.json (nor in
# the client, which covers every documented operation).
@router.get(
    "/metrics",
    include_in_schema=False,
    response_class=Response,
    summary="Prometheus metrics of this process and of the queues",
    responses={
        200: {
            "description": "The Prometheus text format (docs/metrics.md lists the series)",
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
        }
    },
)
def metrics(request: Request, factory: SessionFactoryDep) -> Response:
    """The Prometheus text format: this process's requests and predictions, then the
    queues, workers and ledger totals read from the database at this scrape (one query).
    With ``METRICS_TOKEN`` set, it wants ``Authorization: Bearer <token>`` (401)."""
    token = request.app.state.settings.metrics_token
    if not authorized(
        request.headers.get("authorization"), token.get_secret_value() if token else None
    ):
        raise ApiError(401, "unauthorized", "/metrics wants the METRICS_TOKEN as a bearer token")
    ledger = getattr(request.app.state, "ledger_totals", None)
    return Response(exposition(factory, ledger), media_type=CONTENT_TYPE_LATEST)


def install(app: Any) -> None:
    """``/metrics``, the request middleware (add it last: outermost) and the ledger's
    totals kept between scrapes, on ``app``."""
    app.include_router(router)
    app.state.ledger_totals = telemetry.LedgerTotals()
    app.add_middleware(RequestMetrics, routes=lambda: app.routes)


__all__ = [
    "CONTENT_TYPE_LATEST",
    "QueueCollector",
    "RequestMetrics",
    "authorized",
    "forget_dead_processes",
    "exposition",
    "install",
    "record_prediction",
    "RouteTemplates",
]
