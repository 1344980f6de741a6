"""The size limit of every request body, enforced before anything parses it.

A pure ASGI middleware, outside the routes: a body whose ``Content-Length`` is
over the limit is refused with 413 at once, without reading a byte of it and
without running the route; a body without one (chunked) is counted as it
streams in, and refused the moment it passes the limit, without reading the
rest. The answer is the API's error shape (``api.errors``).

Three limits: ``MAX_JSON_BYTES`` (default 1 MiB) for every body; for the routes
that take a multipart upload, ``MAX_UPLOAD_BYTES`` plus room for the multipart
framing (``api.uploads``, which then applies the tier's storage left as well); for
the predict routes (``openapi_extra`` ``x-body-limit: predict``), ``MAX_PREDICT_BYTES``.

FastAPI's own ``max_body_size`` is not used: it lets a route that does not read
its body run to the end before answering 413 (a DELETE with a huge declared body
deletes, then answers 413), and its 413 is plain text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fastapi.routing import iter_route_contexts
from starlette.datastructures import Headers
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, response
from api.uploads import FRAMING_BYTES, too_large


@dataclass(frozen=True)
class UploadRoute:
    """A route whose body is a multipart upload, and may be as large as an upload."""

    path: re.Pattern[str]
    methods: frozenset[str]


def upload_routes(routes: Sequence[BaseRoute]) -> list[UploadRoute]:
    """The routes that document a ``multipart/form-data`` body (``uploads.multipart_body``)."""
    found = []
    for route in iter_route_contexts(routes):
        extra = getattr(route, "openapi_extra", None) or {}
        content = (extra.get("requestBody") or {}).get("content") or {}
        if "multipart/form-data" in content:
            found.append(UploadRoute(route.path_regex, frozenset(route.methods or ())))
    return found


def predict_routes(routes: Sequence[BaseRoute]) -> list[UploadRoute]:
    """The routes marked ``openapi_extra={"x-body-limit": "predict"}`` (a prediction's
    body: JSON, CSV or Parquet, bounded by ``MAX_PREDICT_BYTES``)."""
    found = []
    for route in iter_route_contexts(routes):
        extra = getattr(route, "openapi_extra", None) or {}
        if extra.get("x-body-limit") == "predict":
            found.append(UploadRoute(route.path_regex, frozenset(route.methods or ())))
    return found


def body_too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"the request body is larger than the {limit} bytes allowed",
        {"limit_bytes": limit},
    )


class _TooLarge(Exception):
    """Raised into the app by ``receive`` once the body has passed the limit."""


class BodyLimit:
    """Refuse a request body over its limit with 413 (see the module's doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_json_bytes: int,
        max_upload_bytes: int,
        uploads: Iterable[UploadRoute] = (),
        max_predict_bytes: int | None = None,
        predicts: Iterable[UploadRoute] = (),
    ) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_upload_bytes = max_upload_bytes
        self.uploads = list(uploads)
        self.max_predict_bytes = max_predict_bytes or max_json_bytes
        self.predicts = list(predicts)

    def _limit(self, scope: Scope) -> tuple[int, ApiError]:
        method, path = scope["method"], scope["path"]
        for route in self.uploads:
            if method in route.methods and route.path.match(path):
                return self.max_upload_bytes + FRAMING_BYTES, too_large(self.max_upload_bytes)
        for route in self.predicts:
            if method in route.methods and route.path.match(path):
                return self.max_predict_bytes, body_too_large(self.max_predict_bytes)
        return self.max_json_bytes, body_too_large(self.max_json_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, refusal = self._limit(scope)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await response(refusal)(scope, receive, send)
            return

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # whatever the app answers to a body cut short, the answer is 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            # _TooLarge itself, or what the app made of it (FastAPI turns an error
            # while reading the body into a 400; a streaming route lets it escape).
            if not exceeded or started:
                raise
        if exceeded and not started:
            await response(refusal)(scope, receive, send)
