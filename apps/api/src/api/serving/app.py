"""``automl-serve``: the serving process, apart from the API (docs/serving.md).

    uv run automl-serve          # on HOST:SERVE_PORT (default 127.0.0.1:8001)

It answers ``POST /v1/deployments/{id}/predict`` exactly as the API does in process
(:class:`api.serving.service.Predictor`: the same authentication, checks, metering
and error shapes) and ``GET /healthz``. The API forwards predictions to it when
``SERVING_URL`` is set, so clients keep the API's one base URL; it can also be
reached directly. Several may run behind a load balancer: each keeps its own model
cache (``SERVE_CACHE_BYTES``); the deployments and aliases are read per request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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

    routes = [
        Route(PREDICT_PATH, predict, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
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
    return app


def run() -> None:
    """``automl-serve``: the serving process on ``HOST``:``SERVE_PORT``."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    app = create_app(settings)
    print(f"AutoML serving on http://{settings.host}:{settings.serve_port}", flush=True)
    uvicorn.run(
        app, host=settings.host, port=settings.serve_port, log_level="warning", access_log=False
    )


if __name__ == "__main__":  # pragma: no cover
    run()
