"""OpenTelemetry tracing, on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; off by default (docs/metrics.md).

Off, nothing of OpenTelemetry is imported: :func:`configure` returns None after
reading two environment variables, :func:`instrument_engine` and :func:`span`
cost a global's test. On, spans go to the OTLP endpoint over HTTP/protobuf
(``opentelemetry-exporter-otlp-proto-http``: it reads the standard ``OTEL_*``
variables itself, headers and timeouts included), batched; the service is named by
``OTEL_SERVICE_NAME`` or the caller (``automl-api``, ``automl-serve``,
``automl-worker``). Each SQL statement of an instrumented engine is a span
(``opentelemetry-instrumentation-sqlalchemy``, statement text without parameters);
the API adds its requests and its outgoing httpx calls (``api.tracing``), the
worker a span for each piece of work (``workers.main``).

The packages come with the ``tracing`` extra of ``automl-database`` (the apps
depend on it).
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

#: The process's TracerProvider once tracing is configured; None: off.
_provider: Any = None
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def enabled_by_environment() -> bool:
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def provider() -> Any:
    """The TracerProvider, or None when tracing is off."""
    return _provider


def configure(service: str, engine: Engine | None = None, *, exporter: Any = None) -> Any:
    """Turn tracing on for this process when the endpoint is configured (or an
    ``exporter`` is given: the tests' in-memory one, exported span by span); returns
    the TracerProvider, or None when off. Idempotent: a second call only adds the
    ``engine``."""
    global _provider
    if _provider is None:
        if exporter is None and not enabled_by_environment():
            return None
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        name = os.environ.get("OTEL_SERVICE_NAME") or service
        tracer_provider = TracerProvider(resource=Resource.create({"service.name": name}))
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        if exporter is None:
            # The process's global provider: libraries that trace by themselves use it.
            # A given exporter (the tests') stays local: the instrumentations get the
            # provider explicitly, and nothing else in the process starts tracing.
            trace.set_tracer_provider(tracer_provider)
        _provider = tracer_provider
    if engine is not None:
        instrument_engine(engine)
    return _provider


def instrument_engine(engine: Engine) -> None:
    """A span for each statement of ``engine`` (once per engine); nothing when off.
    ``database.session.make_engine`` calls it for every engine it makes."""
    if _provider is None or engine in _engines:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter
    from opentelemetry.trace import get_tracer

    scope = SQLAlchemyInstrumentor.__module__
    tracer = get_tracer(scope, tracer_provider=_provider)
    usage = get_meter(scope).create_up_down_counter(
        name="db.client.connections.usage", unit="connections"
    )
    EngineTracer(tracer, engine, usage)
    _engines.add(engine)


@contextlib.contextmanager
def span(name: str, **attributes: str | int | float | bool) -> Iterator[Any]:
    """A span around a block when tracing is on; otherwise nothing at all."""
    if _provider is None:
        yield None
        return
    tracer = _provider.get_tracer("automl")
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def shutdown() -> None:
    """Flush the spans still batched (at a clean exit)."""
    if _provider is not None:
        _provider.shutdown()


def reset() -> None:
    """Tracing off again (the tests: one turns it on with an in-memory exporter)."""
    global _provider
    shutdown()
    _provider = None
