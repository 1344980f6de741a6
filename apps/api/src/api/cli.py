"""The command lines of ``automl-api`` and ``automl-serve``.

The arguments are parsed before the app (FastAPI, the routers, the models) is
imported, so ``--help`` and ``--version`` print and exit 0 without starting a
server or touching the database. The settings are checked next: a bad ``PORT``
(``--port`` or the environment) or ``DATABASE_URL`` is one line and exit 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from database.cmdline import refuse, settings_error, version_line

API_DESCRIPTION = (
    "Serve the AutoML platform's HTTP API (FastAPI on uvicorn) on HOST:PORT. The database"
    " is DATABASE_URL, or the embedded PostgreSQL of `automl-db up`. Logs: JSON lines on"
    " standard output when it is not a terminal (LOG_FORMAT=json|console, LOG_LEVEL)."
)
SERVE_DESCRIPTION = (
    "Serve online predictions of deployed models (POST /v1/deployments/{id}/predict)"
    " on HOST:SERVE_PORT, apart from the API, which forwards them here when SERVING_URL"
    " is set (docs/serving.md)."
)


def _parser(
    prog: str, description: str, port_env: str, default_port: int
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=version_line(prog, "automl-api"))
    parser.add_argument(
        "--host", metavar="ADDRESS", help="the address to listen on (default HOST, 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        metavar="N",
        help=f"the port to listen on, 0-65535 (default {port_env}, {default_port})",
    )
    return parser


def _settings(prog: str, args: argparse.Namespace, port_env: str) -> Any:
    """The API's settings with the options over the environment, and the database's
    checked too; a refused one is one line (the caller exits 2)."""
    from pydantic import ValidationError

    from api.settings import ApiSettings
    from database.config import get_settings as database_settings

    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["HOST"] = args.host
    if args.port is not None:
        overrides[port_env] = args.port
    try:
        settings = ApiSettings(**overrides)
        database_settings()
    except ValidationError as exc:
        raise SystemExit(refuse(prog, f"invalid setting: {settings_error(exc)}")) from None
    return settings


def api(argv: Sequence[str] | None = None) -> int:
    """``automl-api``."""
    parser = _parser("automl-api", API_DESCRIPTION, "PORT", 8000)
    args = parser.parse_args(argv)
    settings = _settings("automl-api", args, "PORT")
    from api.main import serve

    serve(settings)
    return 0


def serve(argv: Sequence[str] | None = None) -> int:
    """``automl-serve``."""
    parser = _parser("automl-serve", SERVE_DESCRIPTION, "SERVE_PORT", 8001)
    args = parser.parse_args(argv)
    settings = _settings("automl-serve", args, "SERVE_PORT")
    from api.serving.app import serve as serve_predictions

    serve_predictions(settings)
    return 0


def run_api() -> None:
    """The ``automl-api`` console script."""
    raise SystemExit(api())


def run_serve() -> None:
    """The ``automl-serve`` console script."""
    raise SystemExit(serve())
