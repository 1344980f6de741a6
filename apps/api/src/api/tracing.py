"""Tracing of the API (``database.tracing``: on when ``OTEL_EXPORTER_OTLP_ENDPOINT``
is set, off and not imported otherwise): a span for each request (FastAPI's
instrumentation; ``/metrics``, ``/healthz`` and ``/readyz`` excluded), each SQL
statement and each outgoing httpx call (the forwarding to ``automl-serve``, Stripe),
with the W3C ``traceparent`` carried to the services called."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from database import tracing

#: Not traced: scraped and probed every few seconds.
EXCLUDED_URLS = "/metrics,/healthz,/readyz"


def install(app: FastAPI, service: str = "automl-api", *, exporter: Any = None) -> bool:
    """Instrument ``app`` when tracing is on; whether it is."""
    provider = tracing.configure(service, exporter=exporter)
    if provider is None:
        return False
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS)
    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
    return True
