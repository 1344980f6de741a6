"""Helpers of the client's tests (imported by name: tests/client is on sys.path)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

import automl


def new_user(http: TestClient) -> automl.Client:
    """A new account (``client.users.create``) and a client sending its API key."""
    signed = automl.Client(http_client=http).users.create(
        f"client-{uuid.uuid4().hex[:10]}@example.com", full_name="Client Test"
    )
    client = automl.Client(http_client=http, api_key=signed.api_key.key)
    client.signed_up = signed  # type: ignore[attr-defined]
    return client


def user_id(c: automl.Client) -> Any:
    return c.signed_up.user.id  # type: ignore[attr-defined]


@asynccontextmanager
async def async_client(app: FastAPI, api_key: str | None) -> AsyncIterator[automl.AsyncClient]:
    """An AsyncClient over ASGI (used inside ``anyio.run``, as the API tests do)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield automl.AsyncClient(http_client=http, api_key=api_key)
