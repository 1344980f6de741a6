"""Helpers the test modules share (a plain module: `conftest` names collide)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ServerInfo:
    host: str
    port: int
    user: str
    password: str | None
    options: str = ""
    maintenance_dbname: str = "postgres"
    template_dbname: str | None = None


def make_test_url(host: str, port: int | str, user: str, dbname: str, password: str | None) -> URL:
    query = {"host": host} if host.startswith("/") else {}
    return URL.create(
        "postgresql+psycopg",
        username=user,
        password=password or None,
        host=None if host.startswith("/") else host,
        port=None if host.startswith("/") else int(port),
        database=dbname,
        query=query,
    )
