"""A job's computation in a child process the worker can end.

A scikit-learn fit cannot be interrupted from a thread, so a job's nodes run in a
child process of their own (:class:`NodeProcess`, one per job, started from a
``forkserver`` that has already imported scikit-learn and pandas: a child starts in
tens of milliseconds). The parent keeps everything that touches the database; the
child keeps every node's value in memory (frames, fitted pipelines), so nothing
large crosses between them but the result of a node: its JSON output and, for a
save node, the model's bytes. A dataset node's child reads the Parquet file from
storage itself; the parent only says which file (after checking the version).

While the child works the parent calls ``watch`` every ``poll_seconds`` (1 s): the
worker's check for a cancel (which renews the lease), its stop event and the job's
time limit. When ``watch`` names a reason, the child is ended (SIGTERM, then SIGKILL
after a grace period) and :class:`Interrupted` is raised with that reason. A child
that dies on its own (killed, crashed) is :class:`ChildDied`.

In the child:

- ``RLIMIT_AS``: its address space may grow by ``memory_limit_mb`` beyond what it
  holds once started (the libraries' own mappings, about 0.6 GB of address space
  with scikit-learn, pandas and pyarrow, are not the job's). An allocation past it
  raises ``MemoryError`` in the node, reported as ``memory limit of N MB exceeded``.
- Threads: ``threads`` for scikit-learn's ``n_jobs`` (estimators that take it) and,
  through threadpoolctl, for BLAS and OpenMP: a job uses the cores of its slot.
- It dies with the worker (``PR_SET_PDEATHSIG`` on Linux), and ignores SIGINT: a
  Ctrl-C in a terminal reaches the worker, which decides.
- It logs as the worker does (``database.logs``: JSON lines on the worker's standard
  output when that is not a terminal), with the worker's ``worker_id``, ``job_id``
  and ``job_kind`` (bound where :class:`NodeProcess` starts it, inside the job's
  logging scope), ``child="node"``, and ``node_id`` on the lines of a node: one
  line when it starts, one per node (its status and seconds), and every Python
  warning the libraries raise (scikit-learn's ``ConvergenceWarning``...).
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from database import logs
from pipeline.storage import Storage

log = logging.getLogger(__name__)

#: Modules the forkserver imports once, so that a child starts without importing them.
PRELOAD = ["workers.runner", "pipeline.execute", "pyarrow.parquet", "flaml"]
#: Seconds a child has to exit after SIGTERM before it is killed.
TERMINATE_GRACE_SECONDS = 2.0
#: Seconds an interrupted node's messages already in the pipe are still handled.
DRAIN_SECONDS = 0.5


def _context() -> Any:
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


_CONTEXT = _context()


_warm = False


def _noop() -> None:
    pass


def warm_up() -> None:
    """Start the forkserver and wait for its imports (a worker at start-up), so that the
    first job does not wait for them."""
    global _warm
    if _warm or _CONTEXT.get_start_method() != "forkserver":
        return
    _CONTEXT.set_forkserver_preload(PRELOAD)
    process = _CONTEXT.Process(target=_noop, name="automl-warm-up", daemon=True)
    process.start()  # forks once the server has imported PRELOAD
    process.join()
    _warm = True


class Interrupted(Exception):
    """The parent ended the child: ``reason`` is what ``watch`` returned."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ChildDied(Exception):
    """The child ended without answering (killed from outside, or crashed)."""


@dataclass(frozen=True)
class DatasetSource:
    """What a dataset node's child reads: the version's Parquet file and its meaning."""

    location: str
    target_column: str | None
    problem_type: str | None
    name: str
    version_number: int
    #: The dataset's ignored columns, frozen in the snapshot (older snapshots: none).
    ignored_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Note:
    """A step of the node in progress, sent by the child before its :class:`Reply`."""

    fraction: float
    message: str | None


@dataclass(frozen=True)
class Trial:
    """A finished trial of an automl node's search (plain values, see
    ``pipeline.automl._trial_record``), sent by the child as it happens."""

    record: dict[str, Any]


@dataclass(frozen=True)
class Interim:
    """What save node ``node_id`` would save of an automl search's best trial so far
    (``trial``), sent by the child while the search runs: the parent keeps the
    newest, and saves it if the search is cancelled before it ends."""

    node_id: str
    trial: int
    reply: Reply


@dataclass(frozen=True)
class Reply:
    """A node's result, as the child sends it."""

    #: "ok", "failed" (the node's own failure, for the user) or "memory".
    status: str
    output: dict[str, Any] | None = None
    artifact: bytes | None = None
    model: Any = None  # pipeline.execute.ModelRecord
    error: str | None = None
    trace: str | None = None


def current_address_space() -> int | None:
    """This process's address space in bytes (Linux), or None where unknown."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _limit_memory(memory_limit_mb: int | None) -> None:
    if not memory_limit_mb:
        return
    import resource

    base = current_address_space() or 0
    soft = base + memory_limit_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _child(
    conn: Connection,
    definition: dict[str, Any],
    storage: Storage,
    threads: int,
    memory_limit_mb: int | None,
    log_settings: dict[str, Any] | None = None,
) -> None:
    """The child's loop: one node per message, until the parent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if log_settings:
        logs.setup_child(log_settings, child="node")
    log.info(
        "node process %d started (%d thread(s), memory limit %s)",
        os.getpid(),
        threads,
        f"{memory_limit_mb} MB" if memory_limit_mb else "none",
    )
    import pandas as pd
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    from pipeline.definition import WorkflowDefinition, WorkflowNode
    from pipeline.execute import LoadedDataset, NodeFailed, execute_node

    limits = threadpool_limits(limits=threads)  # BLAS and OpenMP: the slot's cores
    parsed = WorkflowDefinition.model_validate(definition)
    values: dict[str, Any] = {}
    _limit_memory(memory_limit_mb)

    while True:
        try:
            node_id, source = conn.recv()
        except EOFError:
            break
        reply: Reply

        def load(node: WorkflowNode, source: DatasetSource | None = source) -> LoadedDataset:
            if source is None:
                raise NodeFailed(f"node {node.id!r}: the run recorded no dataset version to read")
            try:
                with storage.open_read(source.location) as stream:
                    frame = pd.read_parquet(io.BytesIO(stream.read()))
            except FileNotFoundError:
                raise NodeFailed(
                    f"node {node.id!r}: the Parquet file of dataset version"
                    f" {source.version_number} is missing from storage"
                ) from None
            return LoadedDataset(
                frame=frame,
                target_column=source.target_column,
                problem_type=source.problem_type,
                name=source.name,
                ignored_columns=source.ignored_columns,
            )

        started = time.monotonic()
        with logs.scope(node_id=node_id):
            try:
                upstream = {u: values[u] for u in parsed.inputs(node_id) if u in values}
                outcome = execute_node(
                    parsed,
                    node_id,
                    upstream,
                    load,
                    progress=_notes(conn),
                    n_jobs=threads,
                    on_trial=_trials(conn),
                    on_interim=_interims(conn),
                )
            except Exception as exc:  # a MemoryError too: the memory limit, or the node's own
                reply = _failure(exc, memory_limit_mb)
            else:
                values[node_id] = outcome.value
                reply = Reply(
                    "ok", output=outcome.output, artifact=outcome.artifact, model=outcome.model
                )
            seconds = round(time.monotonic() - started, 3)
            if reply.status == "ok":
                log.info("node %s done in %.2f s", node_id, seconds)
            else:  # the message only: the trace is the job's (job_logs)
                log.warning("node %s %s in %.2f s: %s", node_id, reply.status, seconds, reply.error)
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(Reply("memory", error=f"memory limit of {memory_limit_mb} MB exceeded"))
        except (BrokenPipeError, EOFError):
            break
    limits.restore_original_limits()


def _notes(conn: Connection) -> Callable[[float, str | None], None]:
    """The pipeline's progress callback in the child: each step goes to the parent."""

    def send(fraction: float, message: str | None = None) -> None:
        # The parent gone or ending us: the node's result no longer matters.
        with contextlib.suppress(BrokenPipeError, EOFError):
            conn.send(Note(fraction, message))

    return send


def _trials(conn: Connection) -> Callable[[dict[str, Any]], None]:
    """An automl node's trial callback in the child: each trial goes to the parent."""

    def send(record: dict[str, Any]) -> None:
        with contextlib.suppress(BrokenPipeError, EOFError):
            conn.send(Trial(record))

    return send


def _interims(conn: Connection) -> Callable[[str, int, Any], None]:
    """An automl node's best-so-far callback in the child: what each save node it
    feeds would save goes to the parent (:class:`Interim`)."""

    def send(node_id: str, trial: int, outcome: Any) -> None:
        reply = Reply("ok", output=outcome.output, artifact=outcome.artifact, model=outcome.model)
        with contextlib.suppress(BrokenPipeError, EOFError):
            conn.send(Interim(node_id, trial, reply))

    return send


def _failure(exc: BaseException, memory_limit_mb: int | None) -> Reply:
    """A node's failure, for the user: a MemoryError anywhere in the exception's chain
    (a library may wrap it) is the memory limit; otherwise the node's own message."""
    from pipeline.execute import NodeFailed

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MemoryError):
            return Reply("memory", error=f"memory limit of {memory_limit_mb} MB exceeded")
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, NodeFailed):
        return Reply("failed", error=str(exc))
    # scikit-learn's own refusals mostly: say what it said
    return Reply("failed", error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())


class NodeProcess:
    """One job's child process: :meth:`run` one node at a time, then :meth:`close`."""

    def __init__(
        self,
        definition: dict[str, Any],
        storage: Storage,
        *,
        threads: int = 1,
        memory_limit_mb: int | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self.definition = definition
        self.storage = storage
        self.threads = max(1, threads)
        self.memory_limit_mb = memory_limit_mb
        self.poll_seconds = poll_seconds
        self._conn: Connection | None = None
        self.process: BaseProcess | None = None

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def _start(self) -> Connection:
        if self._conn is not None:
            return self._conn
        warm_up()
        parent, child = _CONTEXT.Pipe()
        # Called in the job's thread, inside its logging scope: the child's lines
        # carry the worker's and the job's ids.
        log_settings = logs.child_settings()
        process = _CONTEXT.Process(
            target=_child,
            args=(
                child,
                self.definition,
                self.storage,
                self.threads,
                self.memory_limit_mb,
                log_settings,
            ),
            name="automl-node",
            daemon=True,
        )
        process.start()
        child.close()
        self._conn, self.process = parent, process
        return parent

    def run(
        self,
        node_id: str,
        source: DatasetSource | None,
        watch: Callable[[], str | None],
        progress: Callable[[float, str | None], object] | None = None,
        trials: Callable[[dict[str, Any]], object] | None = None,
        interim: Callable[[Interim], object] | None = None,
    ) -> Reply:
        """Run node ``node_id`` in the child; while it runs, ``watch()`` every
        ``poll_seconds``: a reason it returns ends the child (:class:`Interrupted`),
        as does an exception it raises (re-raised). The child's steps (:class:`Note`)
        go to ``progress`` as they come, an automl node's trials (:class:`Trial`) to
        ``trials`` and its best-so-far models (:class:`Interim`) to ``interim``; the
        messages already in the pipe when ``watch`` names a reason are handled first
        (at most :data:`DRAIN_SECONDS`), so a cancel keeps what the child had sent."""
        conn = self._start()

        def handle(message: Any) -> Reply | None:
            if isinstance(message, Trial):
                if trials is not None:
                    trials(message.record)
            elif isinstance(message, Interim):
                if interim is not None:
                    interim(message)
            elif isinstance(message, Note):
                if progress is not None:
                    progress(message.fraction, message.message)
            else:
                return message
            return None

        try:
            conn.send((node_id, source))
            next_watch = time.monotonic() + self.poll_seconds
            while True:
                if conn.poll(max(0.0, next_watch - time.monotonic())):
                    found = handle(conn.recv())
                    if found is not None:
                        reply = found
                        break
                    if time.monotonic() < next_watch:
                        continue
                assert self.process is not None
                if not self.process.is_alive() and not conn.poll(0):
                    raise ChildDied(self._death())
                reason = watch()
                if reason is not None:
                    drain_until = time.monotonic() + DRAIN_SECONDS
                    while time.monotonic() < drain_until and conn.poll(0):
                        if handle(conn.recv()) is not None:
                            break  # the node ended just now: it is interrupted all the same
                    raise Interrupted(reason)
                next_watch = time.monotonic() + self.poll_seconds
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.terminate()
            raise ChildDied(self._death()) from None
        except BaseException:
            self.terminate()
            raise
        assert isinstance(reply, Reply)
        return reply

    def _death(self) -> str:
        assert self.process is not None
        self.process.join(TERMINATE_GRACE_SECONDS)
        code = self.process.exitcode
        if code is not None and code < 0:
            what = f"was killed by signal {signal.Signals(-code).name}"
        else:
            what = f"exited with code {code}"
        if self.memory_limit_mb:
            what += f" (its memory limit is {self.memory_limit_mb} MB)"
        return f"the node's process {what}"

    def terminate(self) -> None:
        """End the child: SIGTERM, then SIGKILL if it has not exited after the grace."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        process = self.process
        if process is None:
            return
        if process.is_alive():
            process.terminate()
            process.join(TERMINATE_GRACE_SECONDS)
            if process.is_alive():
                process.kill()
        process.join()

    def close(self) -> None:
        """Let the child finish (it exits when the pipe closes); end it if it lingers."""
        process = self.process
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if process is None:
            return
        process.join(TERMINATE_GRACE_SECONDS)
        if process.is_alive():
            self.terminate()
        self.process = None
