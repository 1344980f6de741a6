"""The API's refusals as exceptions.

Every error the API answers has one shape, ``{"error": {"code", "message",
"details"}}``; :func:`from_response` turns it into an :class:`ApiError` of the class
of its status, carrying the stable ``code``, the ``message``, the ``details`` and the
HTTP ``status`` (and the request id the API gave it, for a support ticket).
"""

from __future__ import annotations

import json
from typing import Any

import httpx


class AutomlError(Exception):
    """Anything this client raises on purpose."""


class ConfigError(AutomlError):
    """No credentials or base URL could be found, or the config file is malformed."""


class TransportError(AutomlError):
    """The API could not be reached (connection refused, DNS, TLS, a timeout)."""


class WaitTimeout(AutomlError, TimeoutError):
    """``jobs.wait`` gave up before the job ended; ``job`` is its last known state."""

    def __init__(self, message: str, job: Any = None) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(AutomlError):
    """``jobs.wait(..., raise_on_failure=True)``: the job ended failed or cancelled."""

    def __init__(self, message: str, job: Any) -> None:
        super().__init__(message)
        self.job = job


class ApiError(AutomlError):
    """An answer other than success.

    ``status`` (HTTP), ``code`` (stable, e.g. ``not_found``, ``insufficient_credits``),
    ``message``, ``details`` (a dict; ``errors`` for a validation error), and
    ``request_id`` (the ``X-Request-ID`` the API answered with, when it did)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.request_id = request_id
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(status={self.status}, code={self.code!r}, message={self.message!r})"


class BadRequest(ApiError):
    """400: the request could not be read."""


class Unauthorized(ApiError):
    """401: missing, unknown, revoked or expired credentials."""


class PaymentRequired(ApiError):
    """402: not enough credits (``details`` says the price and the balance)."""


class Forbidden(ApiError):
    """403: the key lacks the scope, the caller is not an admin, a tier limit."""


class NotFound(ApiError):
    """404: missing, or not the caller's (the API answers both the same)."""


class Conflict(ApiError):
    """409: conflicts with the current state (a name taken, a job already ended...)."""


class PayloadTooLarge(ApiError):
    """413: too large, or over the storage quota."""


class UnsupportedMediaType(ApiError):
    """415: a file format the API does not read."""


class ValidationError(ApiError):
    """422: invalid input; ``details["errors"]`` lists them when the request's shape was wrong."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        found = self.details.get("errors")
        return list(found) if isinstance(found, list) else []


class RateLimited(ApiError):
    """429: too many requests (an abuse limit or a quota); ``retry_after`` in seconds."""

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self)


class ServerError(ApiError):
    """5xx: the API failed, or is temporarily unavailable (503: ``retry_after``)."""

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self)


def _retry_after(err: ApiError) -> float | None:
    value = err.headers.get("retry-after")
    if value is None:
        value = err.details.get("retry_after")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    402: PaymentRequired,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationError,
    429: RateLimited,
}


def error_class(status: int) -> type[ApiError]:
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, ApiError)


def from_response(response: httpx.Response, body: bytes | None = None) -> ApiError:
    """The exception for an error response (its body read, or given as ``body``)."""
    raw = response.content if body is None else body
    code, message, details = "error", response.reason_phrase or "error", {}
    try:
        parsed = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        info = parsed["error"]
        code = str(info.get("code", code))
        message = str(info.get("message", message))
        found = info.get("details")
        details = found if isinstance(found, dict) else {}
    elif isinstance(parsed, dict):
        # Not the error shape (GET /readyz's 503 is its ReadyOut): kept whole in details.
        details = {"body": parsed}
        message = str(parsed.get("message") or parsed.get("status") or message)
    elif raw:
        message = raw[:500].decode("utf-8", "replace")
    headers = {k.lower(): v for k, v in response.headers.items()}
    cls = error_class(response.status_code)
    return cls(
        response.status_code,
        code,
        message,
        details,
        request_id=headers.get("x-request-id"),
        headers=headers,
    )
