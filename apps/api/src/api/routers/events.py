"""A job's log (GET /v1/jobs/{id}/logs) and its live events (GET /v1/jobs/{id}/events).

The event stream is Server-Sent Events, fed by polling the database: every
``EVENTS_POLL_SECONDS`` (0.5 s) one statement reads the job's status, its nodes and
the log lines after the last one sent (all three from one snapshot, through the
indexes ``pk_jobs`` and ``pk_job_logs``), in a session opened for that statement
alone, so a stream holds no database connection between two polls. Events:

- ``status``: the job's status (sent first, then whenever it changes);
- ``node``: a node's status and progress (each node first, then on a change);
- ``log``: a log line (in ``seq`` order, none skipped);
- ``end``: the job has ended (its final status, error and results); the stream closes.

Every event's ``id`` is the ``seq`` of the last log line sent so far. A client
reconnecting with ``Last-Event-ID`` gets the job's status and every node's current
state again (they are states, not changes), then the lines after that ``seq``.
A job that has already ended gets its final state, its remaining lines and ``end``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query
from pydantic import BaseModel
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import Reader, SessionDep, SessionFactoryDep, SettingsDep
from api.errors import ApiError, error_responses, not_found
from api.pagination import (
    DEFAULT_LIMIT,
    CursorQuery,
    LimitQuery,
    Page,
    decode_seq_cursor,
    paginate_by_key,
)
from api.schemas import LogLineOut, Schema, ShortText
from database.models import Job, JobLog, JobStatus, LogLevel, NodeStatus, NodeType

router = APIRouter(prefix="/jobs", tags=["jobs"])

#: A job in one of these has ended: its stream sends ``end`` and closes.
FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
#: Log lines one poll reads at most (more are read at once by the next poll).
LINES_PER_POLL = 200


def _owned(session: Session, user_id: uuid.UUID, job_id: uuid.UUID) -> None:
    found = session.scalar(select(Job.id).where(Job.id == job_id, Job.user_id == user_id))
    if found is None:
        raise not_found("job")


# --- the log ----------------------------------------------------------------------------------
@router.get(
    "/{job_id}/logs",
    response_model=Page[LogLineOut],
    responses=error_responses(401, 403, 404, 422),
    summary="A job's log lines, oldest first",
)
def list_job_logs(
    principal: Reader,
    session: SessionDep,
    job_id: uuid.UUID,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    level: Annotated[
        list[LogLevel] | None,
        Query(description="Only lines of these levels (repeat the parameter for several)."),
    ] = None,
    node_id: Annotated[ShortText | None, Query(description="Only lines about this node.")] = None,
) -> Page[LogLineOut]:
    """Keyset pages in ``seq`` order (the ``next_cursor`` of a page gives the next). A
    job keeps at most 1,000 lines; they are removed with the job."""
    if cursor:
        decode_seq_cursor(cursor)  # a malformed cursor is a 422 whatever the job
    _owned(session, principal.user_id, job_id)
    stmt = select(JobLog).where(JobLog.job_id == job_id)  # pk_job_logs (job_id, seq)
    if level:
        stmt = stmt.where(JobLog.level.in_(level))
    if node_id is not None:
        stmt = stmt.where(JobLog.node_id == node_id)
    rows, next_cursor = paginate_by_key(session, stmt, JobLog.seq, limit=limit, cursor=cursor)
    return Page[LogLineOut](
        items=[LogLineOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )


# --- the event stream -------------------------------------------------------------------------
class StatusEvent(Schema):
    """``event: status``: the job's status."""

    job_id: uuid.UUID
    """The job."""
    status: JobStatus
    """Its status."""
    attempts: int
    """How many times a worker claimed it."""
    cancel_requested: bool
    """Whether a cancel was asked for."""
    error_message: str | None
    """Why it failed."""
    started_at: dt.datetime | None = None
    """When it started."""
    completed_at: dt.datetime | None = None
    """When it ended."""


class EndEvent(Schema):
    """``event: end``: the job has ended; the stream closes after it."""

    job_id: uuid.UUID
    """The job."""
    status: JobStatus
    """Its final status."""
    error_message: str | None
    """Why it failed."""
    results: dict[str, Any] | None
    """What the run produced, by node."""


class NodeEvent(Schema):
    """``event: node``: a node's status and progress."""

    node_id: str
    """The node's id."""
    node_type: NodeType
    """The node's type."""
    status: NodeStatus
    """Its status."""
    progress: float
    """How far it is, 0..1."""
    progress_message: str | None
    """What it is doing now."""
    error_message: str | None
    """Why it failed."""
    started_at: dt.datetime | None = None
    """When it started."""
    completed_at: dt.datetime | None = None
    """When it ended."""


# One statement, so one snapshot: a status that has ended comes with every line
# written before it (the status lines are written by the trigger of the change).
_POLL = text(
    """
    SELECT j.status::text AS status, j.attempts, j.error_message,
           j.cancel_requested_at IS NOT NULL AS cancel_requested,
           j.started_at, j.completed_at,
           CASE WHEN j.status IN ('completed', 'failed', 'cancelled') THEN j.results END
             AS results,
           (SELECT coalesce(json_agg(json_build_object(
                       'node_id', n.node_id, 'node_type', n.node_type,
                       'status', n.status, 'progress', n.progress,
                       'progress_message', n.progress_message,
                       'error_message', n.error_message,
                       'started_at', n.started_at, 'completed_at', n.completed_at)
                     ORDER BY n.created_at, n.node_id), '[]')
              FROM job_nodes AS n WHERE n.job_id = j.id AND n.user_id = j.user_id) AS nodes,
           (SELECT coalesce(json_agg(json_build_object(
                       'seq', l.seq, 'created_at', l.created_at, 'level', l.level,
                       'node_id', l.node_id, 'message', l.message) ORDER BY l.seq), '[]')
              FROM (SELECT * FROM job_logs AS g
                     WHERE g.job_id = j.id AND g.seq > :after
                     ORDER BY g.seq LIMIT :lines) AS l) AS logs
      FROM jobs AS j
     WHERE j.id = :job AND j.user_id = :user
    """
)


def poll_once(
    factory: sessionmaker[Session], job_id: uuid.UUID, user_id: uuid.UUID, after: int
) -> Any | None:
    """The job's state and its lines after ``after``, in a session of its own (closed
    before this returns); None when the job is gone."""
    with factory() as session:
        row = session.execute(
            _POLL, {"job": job_id, "user": user_id, "after": after, "lines": LINES_PER_POLL}
        ).one_or_none()
        session.rollback()
    return row


def _event(kind: str, data: BaseModel, cursor: int) -> ServerSentEvent:
    return ServerSentEvent(data.model_dump_json(), event=kind, id=str(cursor))


async def job_events(
    factory: sessionmaker[Session],
    job_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    after: int = 0,
    poll_seconds: float = 0.5,
) -> AsyncIterator[ServerSentEvent]:
    """The events of the job's stream (see the module doc), until it ends or is gone.

    Between two polls nothing is held: each poll is a session of its own, in a
    worker thread (the statement blocks). Closing the generator (the client went
    away) stops it at its next ``await``.
    """
    cursor = after
    sent_status: StatusEvent | None = None
    sent_nodes: dict[str, NodeEvent] = {}
    while True:
        row = await anyio.to_thread.run_sync(poll_once, factory, job_id, user_id, cursor)
        if row is None:  # deleted meanwhile: a reconnect gets 404
            return
        status = StatusEvent(
            job_id=job_id,
            status=JobStatus(row.status),
            attempts=row.attempts,
            cancel_requested=row.cancel_requested,
            error_message=row.error_message,
            started_at=row.started_at,
            completed_at=row.completed_at,
        )
        if status != sent_status:
            yield _event("status", status, cursor)
            sent_status = status
        for raw in row.nodes:
            node = NodeEvent.model_validate(raw)
            if sent_nodes.get(node.node_id) != node:
                yield _event("node", node, cursor)
                sent_nodes[node.node_id] = node
        lines = row.logs
        for raw in lines:
            line = LogLineOut.model_validate(raw)
            cursor = line.seq
            yield _event("log", line, cursor)
        if len(lines) >= LINES_PER_POLL:
            continue  # more lines wait: read them now
        if status.status in FINISHED:
            results = row.results
            if isinstance(results, str):  # pragma: no cover - jsonb arrives decoded
                results = json.loads(results)
            yield _event(
                "end",
                EndEvent(
                    job_id=job_id,
                    status=status.status,
                    error_message=row.error_message,
                    results=results,
                ),
                cursor,
            )
            return
        await anyio.sleep(poll_seconds)


def _last_event_id(value: str | None) -> int:
    if value is None or value.strip() == "":
        return 0
    raw = value.strip()
    if not re.fullmatch(r"[0-9]{1,10}", raw) or int(raw) >= 2**31:
        raise ApiError(
            422,
            "invalid_last_event_id",
            "Last-Event-ID must be the id of an event of this stream (a number)",
            {"last_event_id": value[:50]},
        )
    return int(raw)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "Server-Sent Events until the job ends: `status`, `node`, `log`,"
            " then `end` (docs/api.md).",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **error_responses(401, 403, 404, 422),
    },
    summary="The job's status, node progress and log lines, live, until it ends",
)
def stream_job_events(
    principal: Reader,
    session: SessionDep,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    job_id: uuid.UUID,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this event (browsers send it when they reconnect).",
        ),
    ] = None,
) -> EventSourceResponse:
    """Server-Sent Events (``text/event-stream``): ``status``, ``node``, ``log`` and a
    final ``end``, each with an ``id``; ``curl -N`` shows them as they come and returns
    when the job ends. Another user's job is 404."""
    after = _last_event_id(last_event_id)
    _owned(session, principal.user_id, job_id)
    # The request's session is done: the stream polls with sessions of its own and
    # holds no connection while it waits.
    session.close()
    return EventSourceResponse(
        job_events(
            factory,
            job_id,
            principal.user_id,
            after=after,
            poll_seconds=settings.events_poll_seconds,
        ),
    )
