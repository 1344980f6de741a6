"""The request id: ``X-Request-ID`` as the client sent it (1-200 characters of
``[A-Za-z0-9._:/+=-]``), or a new one; echoed on the response and recorded with
every audit event of the request (``database.audit.set_actor``).

A pure ASGI middleware (no ``BaseHTTPMiddleware``: it would cost every request a
task and a copy of the body): the id is put in the request's state and added to
the response's headers.

It also opens the request's logging scope (``database.logs.scope``): every line
logged while the request runs carries ``request_id``, and ``user_id`` once the
caller is known (``api.deps.name_actor`` binds it); and it logs one line per
request (``request``: method, path, status, duration_ms) on the ``api.access``
logger at INFO (skipped at no cost when that level is off).
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from database import logs
from database.audit import new_request_id, valid_request_id

HEADER = "x-request-id"
access = logging.getLogger("api.access")


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = given if given is not None and valid_request_id(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        raw = request_id.encode("latin-1")
        status = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", raw))
                message["headers"] = headers
            await send(message)

        started = time.perf_counter()
        with logs.scope(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if access.isEnabledFor(logging.INFO):
                    access.info(
                        "request",
                        extra={
                            "method": scope.get("method"),
                            "path": scope.get("path"),
                            "status": status[0],
                            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                        },
                    )
