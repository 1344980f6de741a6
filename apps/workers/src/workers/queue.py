"""The queue's operations, as the worker loop calls them: thin names over
:mod:`database.jobs`, which owns every change of state of queued work.

Kept for the callers that import them from here (``Claim``, ``LeaseLost``,
``CHANNEL``, ``claim``, ``renew_all``, ``check_job``, ``finish_job``, ``release``,
``recover_expired``, ``Recovered``).
"""

from __future__ import annotations

import uuid

from sqlalchemy import Engine

from database.jobs import (
    CHANNEL,
    Claim,
    LeaseLost,
    Queue,
    Recovered,
    check_job,
    claim,
    finish_job,
    recover_expired,
    release,
    renew,
)

#: The older name of :data:`database.jobs.Queue` ("job" or "ingestion").
Kind = Queue


def renew_all(engine: Engine, claims: list[Claim], lease_seconds: float) -> set[uuid.UUID]:
    """The heartbeat (:func:`database.jobs.renew`)."""
    return renew(engine, claims, lease_seconds)


__all__ = [
    "CHANNEL",
    "Claim",
    "Kind",
    "LeaseLost",
    "Recovered",
    "check_job",
    "claim",
    "finish_job",
    "recover_expired",
    "release",
    "renew_all",
]
