"""STAND-IN, OWNED BY THE ``metering`` HELPER (issue 14): the integrator replaces this
whole file with metering's ``packages/database/src/database/metering.py``.

Only the two signatures the predict path calls (COMMON.md, "serving <-> metering"),
doing nothing, so the serving branch runs and is tested on its own.
"""

from __future__ import annotations

import uuid
from typing import Any

from database.errors import RuleViolation


class PaymentRequired(RuleViolation):
    """The user cannot pay for the rows asked (402). Never raised by this stand-in."""


class QuotaExceeded(RuleViolation):
    """An API key's rate or monthly quota is used up (429, ``Retry-After``). Never
    raised by this stand-in."""

    def __init__(self, message: str = "quota exceeded", *, retry_after: int = 1, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


def admit(
    session: Any,
    *,
    user_id: uuid.UUID,
    api_key_id: uuid.UUID | None,
    deployment_id: uuid.UUID,
    rows: int,
) -> None:
    """Stand-in: admits everything."""


def record_request(
    session_or_engine: Any,
    *,
    user_id: uuid.UUID,
    api_key_id: uuid.UUID | None,
    deployment_id: uuid.UUID,
    model_version_id: uuid.UUID | None,
    rows: int,
    latency_ms: float,
    status: int,
    error_class: str | None,
    request_id: str | None,
) -> None:
    """Stand-in: records nothing."""
