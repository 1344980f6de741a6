"""The command line of ``automl-worker``.

The arguments are parsed before the worker (the queue, the pipeline, scikit-learn)
is imported, so ``--help`` and ``--version`` print and exit 0 without touching the
database; a refused setting (``WORKER_SLOTS=abc``, a bad ``DATABASE_URL``) is one
line and exit 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from database.cmdline import refuse, settings_error, version_line

DESCRIPTION = (
    "Run ingestion and training jobs from the database queue (docs/workers.md). The"
    " database is DATABASE_URL, or the embedded PostgreSQL of `automl-db up`. Logs: JSON"
    " lines on standard output when it is not a terminal (LOG_FORMAT=json|console,"
    " LOG_LEVEL)."
)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automl-worker", description=DESCRIPTION)
    parser.add_argument(
        "--version", action="version", version=version_line("automl-worker", "automl-workers")
    )
    parser.add_argument("--slots", type=int, help="jobs at once (default WORKER_SLOTS, 2)")
    parser.add_argument(
        "--until-idle",
        action="store_true",
        help="exit once nothing waits or runs (scripts and tests)",
    )
    parser.add_argument("--name", help="this worker's name in leases (default host:pid:random)")
    return parser


def settings() -> Any:
    """The worker's settings (and the database's), or exit 2 with one line."""
    from pydantic import ValidationError

    from database.config import get_settings as database_settings
    from workers.settings import WorkerSettings

    try:
        database_settings()
        return WorkerSettings()
    except ValidationError as exc:
        raise SystemExit(
            refuse("automl-worker", f"invalid setting: {settings_error(exc)}")
        ) from None


def worker(argv: Sequence[str] | None = None) -> int:
    """``automl-worker``."""
    args = parser().parse_args(argv)
    loaded = settings()
    from workers.main import start

    return start(args, loaded)


def run_worker() -> None:
    """The ``automl-worker`` console script (and ``python -m workers``)."""
    raise SystemExit(worker())
