"""A job's log lines and its nodes' progress: the few functions that write them.

What the database writes by itself (``sql/triggers/job_logs.sql``): a line for every
change of a job's status (claimed with its attempt, back in the queue, completed,
failed with the error, cancelled) and of a node's status (started, succeeded,
failed with the error, skipped), in the transaction of the change; a node's
progress follows its status (running 0, success 1, reset to pending 0). So the
writers here add only what the work itself says:

- :func:`log_line` appends one line (numbered by the database; dropped once the job
  holds :data:`~database.models.job_log.MAX_LOG_LINES`);
- :func:`set_progress` sets a running node's fraction and message;
- :class:`ProgressReporter` is the worker's callback for the pipeline
  (``pipeline.execute.execute_node(..., progress=...)``): each message becomes a log
  line, and a node's progress is written at most once per ``interval`` seconds.

Write a line in its own short transaction, or after the locks the transaction
takes on the user and the job: numbering a line takes a per-job advisory lock,
held to the end of the transaction.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from database.errors import DatabaseError
from database.models.enums import LogLevel
from database.models.job_log import MAX_LOG_MESSAGE

log = logging.getLogger(__name__)

#: Characters of a node's progress message at most (``ck_job_nodes_progress_message_length``).
MAX_PROGRESS_MESSAGE = 500

#: What the pipeline calls: ``progress(fraction, message)`` with plain values (a float
#: in 0..1 and a short text or None), so a child process can send them through a queue.
ProgressCallback = Callable[[float, str | None], None]

_INSERT = text(
    "INSERT INTO job_logs (job_id, level, node_id, message)"
    " VALUES (:job, CAST(:level AS log_level), :node, :message) RETURNING seq"
)


def _cut(message: str, limit: int) -> str:
    message = message.replace("\x00", "").strip()
    return message if len(message) <= limit else message[: limit - 1] + "…"


def log_line(
    conn: Connection | Session,
    job_id: uuid.UUID,
    level: LogLevel | str,
    message: str,
    node_id: str | None = None,
) -> int | None:
    """Append a line to the job's log in ``conn``'s transaction; its number, or None
    when the log is full (the line is dropped) or the message is empty. A message
    longer than the column allows is cut."""
    message = _cut(message, MAX_LOG_MESSAGE)
    if not message:
        return None
    result = conn.execute(
        _INSERT,
        {"job": job_id, "level": LogLevel(level).value, "node": node_id, "message": message},
    )
    seq: int | None = result.scalar_one_or_none()
    return seq


def set_progress(
    conn: Connection | Session,
    job_id: uuid.UUID,
    node_id: str,
    fraction: float,
    message: str | None = None,
    *,
    worker: str | None = None,
) -> bool:
    """Set a running node's progress (0..1) and message; False when the node is not
    running (or, with ``worker``, the job's lease is no longer that worker's).

    A fraction outside 0..1 (NaN included) is refused by the database
    (``ck_job_nodes_progress_range``: :class:`database.errors.InvalidValue`).
    """
    cut = _cut(message, MAX_PROGRESS_MESSAGE) if message else None
    lease = (
        " AND EXISTS (SELECT 1 FROM jobs WHERE id = :job AND leased_by = :worker)"
        if worker is not None
        else ""
    )
    result = conn.execute(
        text(
            "UPDATE job_nodes SET progress = :fraction, progress_message = :message"
            " WHERE job_id = :job AND node_id = :node AND status = 'running'" + lease
        ),
        {
            "fraction": fraction,
            "message": cut or None,
            "job": job_id,
            "node": node_id,
            "worker": worker,
        },
    )
    return bool(getattr(result, "rowcount", 0))


class ProgressReporter:
    """The worker's progress callback for one job: ``reporter.callback(node_id)``.

    Every message is a log line of the node (info). The node's ``progress`` and
    ``progress_message`` are written at most once per ``interval`` seconds per node
    (a call in between only keeps the line); the node's end sets 1 by itself. A
    fraction outside 0..1 is clamped, NaN ignored. A failed write is logged and
    swallowed: reporting never fails the node.
    """

    def __init__(
        self,
        engine: Engine,
        job_id: uuid.UUID,
        *,
        worker: str | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.job_id = job_id
        self.worker = worker
        self.interval = interval
        self.clock = clock
        self._written: dict[str, float] = {}
        self._lock = threading.Lock()

    def callback(self, node_id: str) -> ProgressCallback:
        return functools.partial(self.report, node_id)

    def _due(self, node_id: str) -> bool:
        now = self.clock()
        with self._lock:
            last = self._written.get(node_id)
            if last is not None and now - last < self.interval:
                return False
            self._written[node_id] = now
            return True

    def report(self, node_id: str, fraction: float, message: str | None = None) -> None:
        value = None if math.isnan(fraction) else min(1.0, max(0.0, float(fraction)))
        write_progress = value is not None and self._due(node_id)
        if not message and not write_progress:
            return
        try:
            with self.engine.begin() as conn:
                if write_progress and value is not None:
                    set_progress(conn, self.job_id, node_id, value, message, worker=self.worker)
                if message:
                    log_line(conn, self.job_id, LogLevel.INFO, message, node_id)
        except (DatabaseError, SQLAlchemyError):
            log.warning(
                "job %s node %s: progress not recorded", self.job_id, node_id, exc_info=True
            )
