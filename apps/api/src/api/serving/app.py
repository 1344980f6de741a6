"""``automl-serve``: the serving process, apart from the API (docs/serving.md).

    uv run automl-serve          # on HOST:SERVE_PORT (default 127.0.0.1:8001)

It answers ``POST /v1/deployments/{id}/predict`` exactly as the API does in process
(:class:`api.serving.service.Predictor`: the same authentication, checks, metering
and error shapes), ``GET /healthz`` and ``GET /metrics`` (its own series:
predictions and requests, docs/metrics.md). The API forwards predictions to it when
``SERVING_URL`` is set, so clients keep the API's one base URL; it can also be
reached directly. Several may run behind a load balancer: each keeps its own model
cache (``SERVE_CACHE_BYTES``); the deployments and aliases are read per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import metrics
from api.limits import BodyLimit, UploadRoute
from api.serving.service import Predictor, respond
from api.settings import ApiSettings, get_settings
from api.storage import make_storage

PREDICT_PATH = "/v1/deployments/{deployment_id:uuid}/predict"


def set_threads(threads: int) -> None:
    """Predictions run in anyio's thread pool: ``threads`` of them at most (0: its
    default, 40)."""
    if threads > 0:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = threads


def create_app(
    settings: ApiSettings | None = None, factory: sessionmaker[Session] | None = None
) -> Starlette:
    """The serving app; its sessions from ``factory`` (default: the database package's)."""
    settings = settings or get_settings()
    predictor = Predictor(
        make_storage(settings.storage_location(), settings.data_dir).backend,
        settings.serve_cache_bytes,
    )

    def sessions() -> sessionmaker[Session]:
        if factory is not None:
            return factory
        from database.session import get_sessionmaker

        return get_sessionmaker()

    async def predict(request: Request) -> Response:
        return await respond(predictor, sessions(), request, request.path_params["deployment_id"])

    async def healthz(request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "models": len(predictor.cache), "bytes": predictor.cache.size_bytes}
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        set_threads(settings.serve_threads)
        try:
            yield
        finally:  # a graceful shutdown writes the buffered request log
            await run_in_threadpool(predictor.close)

    async def metrics_text(request: Request) -> Response:
        # This process's series (predictions, requests); the queues are the API's.
        token = settings.metrics_token
        if not metrics.authorized(
            request.headers.get("authorization"), token.get_secret_value() if token else None
        ):
            return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
        return Response(metrics.exposition(None), media_type=metrics.CONTENT_TYPE_LATEST)

    routes = [
        Route(PREDICT_PATH, predict, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.predictor = predictor
    app.add_middleware(
        BodyLimit,
        max_json_bytes=settings.max_json_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        max_predict_bytes=settings.max_predict_bytes,
        predicts=[UploadRoute(routes[0].path_regex, frozenset({"POST"}))],
    )
    app.add_middleware(metrics.RequestMetrics, routes=lambda: app.routes)
    return app


def serve(settings: ApiSettings) -> None:
    """The serving process on ``settings``' host and ``serve_port`` (no line per
    request: predictions are the hot path; warnings and errors are logged)."""
    import uvicorn

    from database import logs

    logs.setup("serve")
    app = create_app(settings)
    url = f"http://{settings.host}:{settings.serve_port}"
    logs.get_logger("api.serving").info(f"AutoML serving on {url}", url=url)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.serve_port,
        log_config=None,
        log_level="warning",
        access_log=False,
    )


def run() -> None:
    """``automl-serve`` (``python -m api.serving.app``): see :mod:`api.cli`."""
    from api.cli import run_serve

    run_serve()


if __name__ == "__main__":  # pragma: no cover
    run()
