"""The request id: ``X-Request-ID`` as the client sent it (1-200 characters of
``[A-Za-z0-9._:/+=-]``), or a new one; echoed on the response and recorded with
every audit event of the request (``database.audit.set_actor``).

A pure ASGI middleware (no ``BaseHTTPMiddleware``: it would cost every request a
task and a copy of the body): the id is put in the request's state and added to
the response's headers.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from database.audit import new_request_id, valid_request_id

HEADER = "x-request-id"


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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", raw))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)
