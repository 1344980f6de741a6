"""The app factory and the ``automl-api`` command.

    uv run automl-api            # serves on HOST:PORT (default 127.0.0.1:8000)

The database is ``DATABASE_URL``, or the embedded PostgreSQL of ``automl-db up``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from api import docs, errors, metrics, tracing
from api.limits import BodyLimit, predict_routes, upload_routes
from api.mail import ConsoleMailer
from api.request_id import RequestId
from api.routers import (
    admin,
    audit,
    auth,
    billing,
    credits,
    datasets,
    deployments,
    evaluations,
    events,
    experiments,
    health,
    jobs,
    model_downloads,
    models,
    registry,
    tutorials,
    usage,
    users,
    webhooks,
    workflows,
)
from api.settings import ApiSettings, get_settings
from api.storage import make_storage

API_PREFIX = "/v1"

DESCRIPTION = """\
The AutoML platform's API. Authenticate with an API key, `Authorization: Bearer aml_...`;
`POST /v1/users` signs up and returns the first key.

Errors are JSON `{"error": {"code", "message", "details"}}` with a stable `code`.
Lists are paginated with `limit` and `cursor` (pass the previous page's `next_cursor`).
"""


#: Verbs spelled differently in operation ids than in function names.
_VERBS = {"patch": "update"}


def operation_id(route: APIRoute) -> str:
    """Every operation's ``operationId``, the one place they are made: the route's
    tag, then its endpoint function's name without the words that repeat the tag
    (``datasets`` + ``create_dataset`` -> ``datasets_create``; ``jobs`` +
    ``list_job_logs`` -> ``jobs_list_logs``). Name an endpoint function for what it
    does (``get_balance``, not ``balance``): its name is the rest of the id.
    ``tests/api/test_api_openapi.py`` checks they are unique and read
    ``^[a-z]+(_[a-z]+)*$``."""
    tag = str(route.tags[0]) if route.tags else "api"
    repeats = {tag, tag.removesuffix("s")}
    words = [_VERBS.get(w, w) for w in route.name.split("_") if w and w not in repeats]
    return "_".join([tag, *words])


def _error_ref() -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


def _document_errors(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """OpenAPI as the app answers: every error is an ErrorBody.

    FastAPI documents its own 422 shape (HTTPValidationError); this API answers
    422 with the same ErrorBody as every other error, so the schema says so. Every
    operation with parameters or a body documents 422, every operation with a body
    413 (``api.limits``), and every operation that needs a key 401 and 403.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        docs.describe_path_parameters(spec)
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        reasons = {
            401: "Missing or invalid API key",
            403: "Forbidden",
            413: "The body is too large",
            422: "Invalid input",
        }
        for path_item in spec.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                needed = set()
                if operation.get("parameters") or operation.get("requestBody"):
                    needed.add(422)
                if operation.get("requestBody"):
                    needed.add(413)
                if operation.get("security"):
                    needed |= {401, 403}
                for status in needed:
                    responses.setdefault(
                        str(status), {"description": reasons[status], **_error_ref()}
                    )
                for status, response in responses.items():
                    schema = response.get("content", {}).get("application/json", {}).get("schema")
                    if schema and schema.get("$ref", "").endswith("/HTTPValidationError"):
                        responses[status] = {"description": response["description"], **_error_ref()}
        app.openapi_schema = spec
        return spec

    return openapi


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """A new application. The database session comes from ``api.deps.get_session``
    (override it to use another engine, as the tests do)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="AutoML Platform API",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        openapi_tags=docs.TAGS,
        generate_unique_id_function=operation_id,
        # Served by api.docs from the app's own assets (FastAPI's load from a CDN).
        docs_url=None,
        redoc_url=None,
    )
    docs.install(app)
    app.state.settings = settings
    app.state.storage = make_storage(settings.storage_location(), settings.data_dir)
    app.state.mailer = ConsoleMailer()
    errors.install(app)

    v1 = APIRouter(prefix=API_PREFIX)
    for module in (
        users,
        auth,
        admin,
        datasets,
        workflows,
        jobs,
        events,
        models,
        registry,
        model_downloads,
        credits,
        billing,
        webhooks,
        experiments,
        tutorials,
        usage,
        deployments,
        audit,
        evaluations,
    ):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)
    # Outside every route: a body is bounded before anything reads or parses it.
    app.add_middleware(
        BodyLimit,
        max_json_bytes=settings.max_json_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        uploads=upload_routes(app.routes),
        max_predict_bytes=settings.max_predict_bytes,
        predicts=predict_routes(app.routes),
    )
    # Outermost: every answer, a 413 included, carries the request id.
    app.add_middleware(RequestId)
    metrics.install(app)  # /metrics; the request metrics outside everything
    tracing.install(app)  # only when OTEL_EXPORTER_OTLP_ENDPOINT is set
    app.openapi = _document_errors(app)  # type: ignore[method-assign]
    return app


def serve(settings: ApiSettings) -> None:
    """Serve the API with uvicorn on ``settings``' host and port, its logs and
    uvicorn's through ``database.logs`` (one format; a line per request from
    ``api.request_id``)."""
    import uvicorn

    from database import logs

    logs.setup("api")
    app = create_app(settings)
    url = f"http://{settings.host}:{settings.port}"
    logs.get_logger("api").info(f"AutoML API on {url}  (docs: /docs)", url=url)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


def run() -> None:
    """``automl-api`` (``python -m api.main``): see :mod:`api.cli`."""
    from api.cli import run_api

    run_api()


if __name__ == "__main__":  # pragma: no cover
    run()
