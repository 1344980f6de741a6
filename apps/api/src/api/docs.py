"""How the API documents itself: its tags, and ``/docs`` and ``/redoc`` served offline.

The OpenAPI document (``/openapi.json``) is built by ``api.main`` from the routes and
their pydantic models; this module adds what FastAPI cannot infer: a description of
every tag (:data:`TAGS`), and the two documentation pages with their JavaScript and
CSS served by the app itself, from the ``fastapi-offline`` wheel (a PyPI dependency
of this package; it bundles Swagger UI, Apache-2.0, and ReDoc, MIT; the wheel is MIT),
so they render without reaching a CDN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

#: Where the assets are mounted.
ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"

#: Every tag an operation may carry, with its description, in the order the pages show
#: them. A route with a tag missing here fails ``tests/api/test_api_openapi.py``.
TAGS: list[dict[str, str]] = [
    {
        "name": "identity",
        "description": "Sign up, the caller's account, API keys (scopes, expiry, quotas), "
        "password login and sessions, email verification, account deletion, restore and "
        "export. Authenticate every other call with `Authorization: Bearer <key or token>`.",
    },
    {
        "name": "admin",
        "description": "Administrators only (403 `admin_required` for anyone else): users, "
        "their tier, role and permissions, and credit adjustments.",
    },
    {
        "name": "datasets",
        "description": "Upload tabular files (CSV, TSV, JSON, Excel, Parquet) as datasets and "
        "new versions; each upload is ingested by a worker, then profiled.",
    },
    {
        "name": "workflows",
        "description": "Workflow definitions: a DAG of dataset, preprocess, model, automl, "
        "visualize and save nodes (each node's `config` is described by the schema of its "
        "`type`, see `WorkflowNode`). Running a workflow charges its credits and queues a job.",
    },
    {
        "name": "jobs",
        "description": "Runs of workflows: status, per-node progress, cancel, the log, and a "
        "live Server-Sent Events stream.",
    },
    {
        "name": "models",
        "description": "Trained models (what a workflow's model or automl node produced): "
        "metrics, hyperparameters and the artifact.",
    },
    {
        "name": "registry",
        "description": "The model registry: registered models and their numbered versions, "
        "aliases, sharing with other users, lineage, search and downloads in several formats.",
    },
    {
        "name": "deployments",
        "description": "Deploy a registered model version and get predictions from it, online "
        "(`predict`) or in batches over an uploaded file.",
    },
    {
        "name": "evaluation",
        "description": "Evaluation criteria and evaluation runs of a model version on a dataset "
        "version: metrics, the failing rows and plots.",
    },
    {
        "name": "experiments",
        "description": "Experiments group runs (a job, the model it made) and rank them by a "
        "metric.",
    },
    {
        "name": "credits",
        "description": "The credit balance, the ledger of every credit movement, and the credit "
        "packages on sale.",
    },
    {
        "name": "billing",
        "description": "The price book, Stripe Checkout for credit packages, invoices, the monthly "
        "statement, billing alerts and (operators) reconciliation runs.",
    },
    {
        "name": "usage",
        "description": "What the caller used and was charged (predictions, storage, compute), "
        "and a deployment's request log.",
    },
    {
        "name": "audit",
        "description": "The audit trail: the events the caller made or that concern what is "
        "theirs, and every event for an administrator.",
    },
    {
        "name": "tutorials",
        "description": "Guided tutorials and the caller's progress in them.",
    },
    {
        "name": "webhooks",
        "description": "Incoming webhooks: Stripe's payment events (signed; not for clients).",
    },
    {
        "name": "health",
        "description": "Liveness and readiness probes for load balancers and operators "
        "(no authentication).",
    },
]


#: Path parameters that recur across routes, described once: a route whose path
#: parameter has no ``description`` of its own gets this one (``api.main``'s OpenAPI).
PATH_PARAMETERS: dict[str, str] = {
    "user_id": "The user's id.",
    "key_id": "The API key's id (`GET /v1/api-keys`).",
    "session_id": "The session's id (`GET /v1/sessions`).",
    "dataset_id": "The dataset's id (`GET /v1/datasets`).",
    "version_number": "The dataset version's number: 1 for the first upload, then 2, 3...",
    "workflow_id": "The workflow's id (`GET /v1/workflows`).",
    "job_id": "The job's id (`GET /v1/jobs`; a batch prediction's job for the batch routes).",
    "model_id": "The trained model's id (`GET /v1/models`).",
    "registered_model_id": "The registered model's id (`GET /v1/registered-models`).",
    "version_id": "The model version's id (`GET /v1/registered-models/{id}/versions`).",
    "model_version_id": "The model version's id (`GET /v1/registered-models/{id}/versions`).",
    "alias": "The alias: a lowercase word such as `production` (never a number).",
    "alert_id": "The billing alert's id (`GET /v1/billing-alerts`).",
    "experiment_id": "The experiment's id (`GET /v1/experiments`).",
    "tutorial_id": "The tutorial's id (`GET /v1/tutorials`).",
    "deployment_id": "The deployment's id (`GET /v1/deployments`).",
    "evaluation_id": "The evaluation's id (`POST /v1/evaluations` returned it).",
    "plot": "The plot and its format: `roc.png`, `confusion_matrix.svg`, `residuals.json`...",
}


def describe_path_parameters(spec: dict[str, Any]) -> None:
    """Give every path parameter without a description its :data:`PATH_PARAMETERS` one."""
    for path_item in spec.get("paths", {}).values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and not parameter.get("description"):
                    text = PATH_PARAMETERS.get(parameter["name"])
                    if text:
                        parameter["description"] = text


#: The one outside address in ReDoc's bundle: the "API docs by Redocly" logo.
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


def _redoc_js() -> bytes:
    """ReDoc's bundle with its logo taken from the app (the page fetches nothing else)."""
    bundle = (ASSETS_DIR / "redoc.standalone.js").read_bytes()
    return bundle.replace(_REDOC_LOGO, f"{ASSETS_URL}/favicon.png".encode())


def install(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve Swagger UI at ``docs_url`` and ReDoc at ``redoc_url``, assets included.

    The app must be created with ``docs_url=None, redoc_url=None`` (FastAPI's own
    pages load their assets from a CDN)."""
    redoc_js = _redoc_js()

    # Before the mount, so this path is answered here.
    @app.get(f"{ASSETS_URL}/redoc.standalone.js", include_in_schema=False)
    async def redoc_standalone() -> Response:
        return Response(
            redoc_js,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    title = app.title

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            # No validator badge: it would call an outside service.
            swagger_ui_parameters={"validatorUrl": None, "displayOperationId": True},
        )

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
