"""``/healthz`` (the process answers) and ``/readyz`` (the database is there, at head).

``/readyz`` is about the API's own readiness: a load balancer should send it
traffic whenever the database is reachable and at the code's head. It also
counts the live workers (``workers``); with none, it stays 200 but says so in
``warnings``: the API serves, and uploads and runs wait (their ``waiting_for``
says ``"worker"``) until a worker starts.
"""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import SessionDep
from api.schemas import HealthOut, ReadyOut
from database import migrations, worker_registry

router = APIRouter(tags=["health"])

NO_WORKER = "no worker alive: uploads and runs wait until one starts (automl-worker)"


@lru_cache(maxsize=1)
def _head() -> list[str]:
    """The code's migration head(s): fixed for the life of the process."""
    return sorted(migrations.heads())


@router.get("/healthz", response_model=HealthOut, summary="The process is up")
def live() -> HealthOut:
    """200 whenever the process answers; no database access. For liveness probes; use `/readyz` for
    readiness."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "Not ready: the reason is given"}},
    summary="The database is reachable and migrated to head; how many workers are alive",
)
def ready(session: SessionDep) -> JSONResponse:
    """503 with the reason when the database cannot be reached or its schema is not
    the code's (behind, or ahead of, head): the service must not take traffic then.
    200 otherwise, with the number of live workers; none is a warning, not a 503."""
    head = _head()
    try:
        current = sorted(migrations.current(session.connection()))
        workers = worker_registry.alive_count(session.connection()) if current == head else None
    except Exception as exc:  # unreachable, refused, timed out: not ready, whatever it is
        out = ReadyOut(
            status="not_ready",
            database=False,
            revision=[],
            head=head,
            reason=f"database unreachable: {type(exc).__name__}",
        )
        return JSONResponse(out.model_dump(), status_code=503)
    finally:
        session.rollback()
    if current != head:
        out = ReadyOut(
            status="not_ready",
            database=True,
            revision=current,
            head=head,
            reason="the database is not at the code's migration head",
        )
        return JSONResponse(out.model_dump(), status_code=503)
    warnings = [] if workers else [NO_WORKER]
    out = ReadyOut(
        status="ready",
        database=True,
        revision=current,
        head=head,
        workers=workers,
        warnings=warnings,
    )
    return JSONResponse(out.model_dump())
