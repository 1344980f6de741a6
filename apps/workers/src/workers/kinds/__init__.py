"""Kinds of work: one module per :class:`database.models.JobKind`, registered here.

The worker loop claims work (:func:`database.jobs.claim`) and hands it to
:func:`dispatch`, which runs the handler registered for the claim's kind and
classes what it raises:

- :class:`database.jobs.LeaseLost`: another worker took the work over; nothing
  more is written;
- a transient error (:func:`database.jobs.is_transient`: a lost connection, a lock
  or serialization conflict): the work waits again, for a backoff that grows with
  its attempts (``run_after``), and fails with the error once its attempts are
  used up (:func:`database.jobs.retry_later`);
- anything else is permanent: the work fails at once with its cause
  (:func:`database.jobs.fail`), a job is refunded.

Adding a kind: a value of ``JobKind`` (a migration: ``ALTER TYPE job_kind ADD
VALUE``), a module here that calls :func:`register` with a handler, and its name in
:data:`MODULES`. The handler gets the :class:`Context` and the claim, runs the work
through :mod:`database.jobs` and returns its final status.
"""

from __future__ import annotations

import importlib
import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from database import jobs
from database.jobs import Claim, LeaseLost
from database.limits import Limits
from database.models import JobKind
from pipeline.storage import Storage
from workers.outage import describe, is_outage

if TYPE_CHECKING:
    from workers.execution import RunLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """What a handler works with."""

    engine: Engine
    storage: Storage
    lease_seconds: float
    max_attempts: int
    #: Set when the worker stops: a long handler gives its work back (``jobs.release``).
    stop: threading.Event
    #: Called on a connection error (``workers.outage.is_outage``): when the database
    #: went away it waits for it and gives the work back, this attempt not counted, and
    #: returns the outcome; None (or no hook) classes the error as transient like the
    #: others (``jobs.retry_later``).
    on_outage: Callable[[Claim, BaseException], str | None] | None = None
    #: The tiers' limits (``TIER_LIMITS``): what is stored must fit in the quota.
    tier_limits: Limits = field(default_factory=Limits)
    #: A job's time, memory and thread limits (:class:`workers.execution.RunLimits`);
    #: None: the defaults.
    run_limits: RunLimits | None = None


Handler = Callable[[Context, Claim], str]

#: The handler of each kind.
HANDLERS: dict[JobKind, Handler] = {}

#: The modules that register the kinds (imported by :func:`load`).
MODULES = (
    "workers.kinds.ingestion",
    "workers.kinds.workflow_run",
    "workers.kinds.batch_prediction",
    "workers.kinds.evaluation",
)


def register(kind: JobKind) -> Callable[[Handler], Handler]:
    def decorate(handler: Handler) -> Handler:
        if kind in HANDLERS and HANDLERS[kind] is not handler:
            raise ValueError(f"kind {kind} already has a handler")
        HANDLERS[kind] = handler
        return handler

    return decorate


def load() -> dict[JobKind, Handler]:
    for module in MODULES:
        importlib.import_module(module)
    return HANDLERS


def dispatch(context: Context, claim: Claim) -> str:
    """Run the claim with its kind's handler; returns the outcome (the handler's
    final status, or ``lease_lost``, ``retry``, ``failed``, ``error``)."""
    handler = load().get(claim.kind)
    try:
        if handler is None:
            raise LookupError(f"no handler for work of kind {claim.kind!r}")
        return handler(context, claim)
    except LeaseLost as exc:
        log.warning("%s", exc)
        return "lease_lost"
    except Exception as exc:
        if context.on_outage is not None and is_outage(exc):
            given_back = context.on_outage(claim, exc)
            if given_back is not None:
                return given_back
        cause = describe(exc)
        trace = traceback.format_exc()
        transient = jobs.is_transient(exc)
        log.warning(
            "%s %s (attempt %d) failed, %s: %s",
            claim.kind,
            claim.id,
            claim.attempts,
            "transient" if transient else "permanent",
            cause,
            exc_info=not transient,
        )
        try:
            with Session(context.engine) as session:
                if transient:
                    outcome, files = jobs.retry_later(
                        session, claim, cause, max_attempts=context.max_attempts, traceback=trace
                    )
                else:
                    files = jobs.fail(session, claim, cause, traceback=trace)
                    outcome = "failed"
        except LeaseLost as lost:
            log.warning("%s", lost)
            return "lease_lost"
        except Exception:
            # Not even that could be written (the database is away): the lease is
            # left to expire and recovery takes the work back.
            log.exception("%s %s: its failure could not be recorded", claim.kind, claim.id)
            return "error"
        for location in files:
            context.storage.delete(location)
        return outcome
