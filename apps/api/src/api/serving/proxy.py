"""The API forwarding predictions to ``automl-serve`` (``SERVING_URL``).

The request goes on as it came (method, path, query, body streamed, headers but the
hop-by-hop ones), the ``Authorization`` header included: the serving process checks
the key itself, with the same code as the API (:mod:`api.serving.service`), so the
API does no database work for a forwarded prediction and the rules live in one
place. The answer streams back as it comes. The API's body limit
(``MAX_PREDICT_BYTES``) applies before anything is forwarded. A serving process
that cannot be reached is 503 ``serving_unavailable`` (with ``Retry-After``).
"""

from __future__ import annotations

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.errors import ApiError, response

#: Headers that belong to one connection, not to the request (RFC 9110, 7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def client(request: Request) -> httpx.AsyncClient:
    """The app's one client (its connection pool), made on first use."""
    found: httpx.AsyncClient | None = getattr(request.app.state, "serving_client", None)
    if found is None:
        found = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=5.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        request.app.state.serving_client = found
    return found


async def forward(request: Request, base_url: str) -> Response:
    url = base_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
    http = client(request)
    outgoing = http.build_request(request.method, url, headers=headers, content=request.stream())
    try:
        upstream = await http.send(outgoing, stream=True)
    except httpx.TransportError:
        return response(
            ApiError(
                503,
                "serving_unavailable",
                "the serving process cannot be reached; retry",
                headers={"Retry-After": "1"},
            )
        )
    back = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
    return StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        headers=back,
        background=BackgroundTask(upstream.aclose),
    )
