"""Workflow execution: a claimed job's snapshot, node by node, recorded as it goes.

Nodes run in the definition's topological order, each recorded in ``job_nodes``
(running, then success with its output or failed with its error); a node whose
input failed or was skipped is skipped. The computation runs in a child process of
the job's own (:mod:`workers.runner`); this module keeps the database side. While
a node runs, every ``WORKER_WATCH_SECONDS`` (1 s) the worker renews its lease and
looks for a cancel request, its stop signal and the job's time limit: a cancel ends
the child at once and the job is cancelled; a stopping worker ends it and gives the
job back to the queue; past the time limit (by the owner's tier) the job fails.
The save node's artifact goes to storage and its ``Model`` row is written with the
node's success, in one transaction. At the end the job is completed with a summary
in ``results``, or failed (or cancelled) and refunded once, through the ledger.
Every change of state goes through :mod:`database.jobs`; a saved model must fit in
its owner's storage quota (checked there, under the user's row lock). The child
reports the node's steps (progress, log lines) through the pipe; they are written
by :class:`database.joblog.ProgressReporter`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from database import automl as searches
from database import jobs
from database.joblog import ProgressReporter
from database.jobs import Claim
from database.limits import Limits
from database.models import JobStatus, NodeStatus, NodeType
from pipeline.automl import greater_is_better
from pipeline.definition import AutoMLConfig, WorkflowDefinition, WorkflowNode
from pipeline.storage import Storage
from workers.runner import ChildDied, DatasetSource, Interim, Interrupted, NodeProcess, Reply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLimits:
    """What one job may use: threads for its fits, memory and time."""

    #: Threads of a fit (n_jobs, BLAS, OpenMP).
    threads: int = 1
    #: How far the job's process may grow beyond its start-up size (MB); None: no limit.
    memory_limit_mb: int | None = None
    #: Seconds one attempt may run, by the owner's tier; a tier not listed: no limit.
    time_limits: Mapping[str, float] = field(default_factory=dict)
    #: How often a running node is watched (cancel, stop, time limit).
    watch_seconds: float = 1.0

    @classmethod
    def from_settings(cls, settings: Any) -> RunLimits:
        """From :class:`workers.settings.WorkerSettings`."""
        return cls(
            threads=settings.threads,
            memory_limit_mb=settings.memory_limit_mb or None,
            time_limits={str(k): v for k, v in settings.time_limits().items()},
            watch_seconds=settings.watch_seconds,
        )


@dataclass
class _Run:
    claim: Claim
    snapshot: dict[str, Any]
    definition: WorkflowDefinition
    tier: str
    status: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    first_error: str | None = None
    first_trace: str | None = None
    #: The tiers' limits: a saved model must fit in its owner's storage quota.
    tier_limits: Limits = field(default_factory=Limits)
    #: automl node id -> its search so far (experiment, trials, best trial): kept in
    #: the job's results whatever the job's end.
    searches: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: automl node id -> trial number -> its experiment run's id.
    trial_runs: dict[str, dict[int, uuid.UUID]] = field(default_factory=dict)
    #: automl node id -> save node id -> the newest best-so-far model the child sent
    #: (saved if the search is cancelled before it ends).
    interims: dict[str, dict[str, Interim]] = field(default_factory=dict)


def _snapshot(engine: Engine, claim: Claim) -> tuple[dict[str, Any], str] | None:
    """The job's snapshot and its owner's tier (which sets the job's time limit)."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT s.snapshot_data, u.tier::text AS tier FROM jobs AS j"
                " JOIN workflow_snapshots AS s ON s.id = j.workflow_snapshot_id"
                " AND s.user_id = j.user_id JOIN users AS u ON u.id = j.user_id WHERE j.id = :id"
            ),
            {"id": claim.id},
        ).one_or_none()
    return None if row is None else (row.snapshot_data, row.tier)


class _NodeFailed(Exception):
    """A node that cannot start (its dataset version is not readable)."""


def _dataset_source(engine: Engine, run: _Run, node: WorkflowNode) -> DatasetSource:
    """Which Parquet file a dataset node reads (the version frozen in the snapshot);
    the child reads it."""
    frozen = (run.snapshot.get("dataset_versions") or {}).get(node.id) or {}
    version_id = frozen.get("version_id")
    if not version_id:
        raise _NodeFailed(f"node {node.id!r}: the run recorded no dataset version to read")
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT v.s3_path, v.status::text AS status, v.version_number, d.name"
                " FROM dataset_versions AS v JOIN datasets AS d ON d.id = v.dataset_id"
                " WHERE v.id = :v AND v.user_id = :u"
            ),
            {"v": uuid.UUID(str(version_id)), "u": run.claim.user_id},
        ).one_or_none()
    if row is None:
        raise _NodeFailed(f"node {node.id!r}: dataset version {version_id} no longer exists")
    if row.status != "completed" or not row.s3_path:
        raise _NodeFailed(
            f"node {node.id!r}: dataset version {row.version_number} is not ingested"
            f" (status {row.status})"
        )
    return DatasetSource(
        location=row.s3_path,
        target_column=frozen.get("target_column"),
        problem_type=frozen.get("problem_type"),
        name=row.name,
        version_number=row.version_number,
        ignored_columns=tuple(frozen.get("ignored_columns") or ()),
    )


def run_job(
    engine: Engine,
    storage: Storage,
    claim: Claim,
    *,
    lease_seconds: float,
    stop: threading.Event | None = None,
    limits: RunLimits | None = None,
    tier_limits: Limits | None = None,
) -> str:
    """Run the claimed job to its end; returns its final status, or ``released``
    when the worker stopped and gave it back. Raises :class:`database.jobs.LeaseLost`.
    ``limits``: the job's threads, memory and time; ``tier_limits``: the tiers' limits
    whose storage quota a saved model must fit in (the worker passes ``TIER_LIMITS``)."""
    limits = limits or RunLimits()
    found = _snapshot(engine, claim)
    if found is None:
        return "gone"
    snapshot, tier = found
    try:
        definition = WorkflowDefinition.model_validate(snapshot.get("definition") or {})
    except ValidationError as exc:
        message = f"the workflow snapshot is not a valid definition: {exc.errors()[0]['msg']}"
        _finish(engine, claim, JobStatus.FAILED, error=message)
        return "failed"
    run = _Run(
        claim=claim,
        snapshot=snapshot,
        definition=definition,
        tier=tier,
        tier_limits=tier_limits or Limits(),
    )
    time_limit = limits.time_limits.get(tier)
    deadline = None if time_limit is None else time.monotonic() + time_limit
    nodes = {n.id: n for n in definition.nodes}
    order = definition.order()

    def watch() -> str | None:
        """While a node runs: why it must end now, or None."""
        if stop is not None and stop.is_set():
            return "stopping"
        if deadline is not None and time.monotonic() >= deadline:
            return "time"
        with engine.begin() as conn:
            if jobs.check_job(conn, claim, lease_seconds):
                return "cancelled"
        return None

    with NodeProcess(
        snapshot.get("definition") or {},
        storage,
        threads=limits.threads,
        memory_limit_mb=limits.memory_limit_mb,
        poll_seconds=limits.watch_seconds,
    ) as process:
        for node_id in order:
            if stop is not None and stop.is_set():
                return _release(engine, storage, claim)
            if deadline is not None and time.monotonic() >= deadline:
                return _time_out(engine, run, order, None, time_limit, lease_seconds)
            upstream = definition.inputs(node_id)
            broken = [u for u in upstream if run.status.get(u) != "success"]
            with engine.begin() as conn:
                cancelled = jobs.check_job(conn, claim, lease_seconds)
                if not cancelled and broken:
                    reason = (
                        f"skipped: input node {broken[0]!r}"
                        f" {run.status.get(broken[0], 'did not run')}"
                    )
                    jobs.record_node(conn, claim, node_id, NodeStatus.SKIPPED, error=reason)
                    run.status[node_id] = "skipped"
                    continue
                if not cancelled:
                    jobs.record_node(conn, claim, node_id, NodeStatus.RUNNING)
            if cancelled:
                return _cancel(engine, claim, run, order, lease_seconds)
            try:
                reply = _compute(engine, run, process, nodes[node_id], watch)
            except Interrupted as exc:
                if exc.reason == "stopping":
                    return _release(engine, storage, claim)
                if exc.reason == "cancelled":
                    log.info("job %s: cancelled while node %s ran", claim.id, node_id)
                    kept = _keep_best_so_far(engine, storage, run, node_id, lease_seconds)
                    return _cancel(
                        engine, claim, run, order, lease_seconds, running=node_id, kept=kept
                    )
                return _time_out(engine, run, order, node_id, time_limit, lease_seconds)
            except ChildDied as exc:
                log.warning("job %s node %s: %s", claim.id, node_id, exc)
                return _abort(engine, run, order, node_id, str(exc), lease_seconds)
            if reply.status == "ok":
                try:
                    _succeed(engine, storage, run, nodes[node_id], reply, lease_seconds)
                except (jobs.OverQuota, jobs.RegistrationRefused) as exc:
                    # the model does not fit, or the registry refused it: the node fails
                    refused = Reply("failed", error=str(exc))
                    _fail_node(engine, run, node_id, refused, lease_seconds)
            else:
                _fail_node(engine, run, node_id, reply, lease_seconds)
    if run.first_error is not None:
        _finish(
            engine,
            claim,
            JobStatus.FAILED,
            error=run.first_error,
            results=_results(run),
            trace=run.first_trace,
        )
        return "failed"
    _finish(engine, claim, JobStatus.COMPLETED, results=_results(run))
    return "completed"


def _compute(
    engine: Engine, run: _Run, process: NodeProcess, node: WorkflowNode, watch: Any
) -> Reply:
    """The node's computation, in the job's child process."""
    source = None
    if node.type == NodeType.DATASET:
        try:
            source = _dataset_source(engine, run, node)
        except _NodeFailed as exc:
            return Reply("failed", error=str(exc))
    # The node's steps as log lines, its progress at most once a second.
    reporter = ProgressReporter(engine, run.claim.id, worker=run.claim.worker)
    trials = interim = None
    if node.type == NodeType.AUTOML:
        trials = _search_recorder(engine, run, node)
        kept = run.interims.setdefault(node.id, {})

        def interim(message: Interim) -> None:
            kept[message.node_id] = message  # the newest is the best so far

    return process.run(
        node.id,
        source,
        watch,
        progress=reporter.callback(node.id),
        trials=trials,
        interim=interim,
    )


def _search_recorder(engine: Engine, run: _Run, node: WorkflowNode) -> Any:
    """An automl node's search: its experiment, and the callback that records each
    trial as a run of it as the child reports it (``database.automl``)."""
    config = node.config_as(AutoMLConfig)
    claim = run.claim
    dataset_node = run.definition.dataset_node(node.id)
    frozen = (run.snapshot.get("dataset_versions") or {}).get(dataset_node) or {}
    with Session(engine) as session:
        experiment_id = searches.start_search(
            session,
            user_id=claim.user_id,
            job_id=claim.id,
            node_id=node.id,
            metric=config.metric,
            dataset_id=run.definition.dataset_ids().get(dataset_node),
            problem_type=frozen.get("problem_type")
            if frozen.get("problem_type") in ("classification", "regression")
            else None,
        )
    found: dict[str, Any] = {"experiment_id": str(experiment_id), "trials": 0, "best": None}
    run.searches[node.id] = found
    run_ids = run.trial_runs.setdefault(node.id, {})

    def record(trial: dict[str, Any]) -> None:
        with Session(engine) as session:
            if config.metric is None and trial.get("metric"):
                # The default metric is known once the child knows the problem type.
                from database.models import Experiment

                experiment = session.get(Experiment, experiment_id)
                if experiment is not None and experiment.primary_metric is None:
                    experiment.primary_metric = str(trial["metric"])
                    session.commit()
            run_id = searches.record_trial(
                session,
                experiment_id=experiment_id,
                user_id=claim.user_id,
                job_id=claim.id,
                record=trial,
            )
        found["trials"] += 1
        run_ids[int(trial["number"])] = run_id
        score = trial.get("score")
        best = found["best"]
        if score is not None and (
            best is None
            or (
                score > best["score"]
                if greater_is_better(str(trial.get("metric")))
                else score < best["score"]
            )
        ):
            found["best"] = {
                "run_id": str(run_id),
                "trial": trial.get("number"),
                "learner": trial.get("learner"),
                "metric": trial.get("metric"),
                "score": score,
                "hyperparameters": trial.get("config"),
            }

    return record


def _fail_node(engine: Engine, run: _Run, node_id: str, reply: Reply, lease_seconds: float) -> None:
    claim = run.claim
    error = reply.error or "the node failed"
    if reply.trace:
        log.warning("job %s node %s failed: %s", claim.id, node_id, reply.trace)
    run.status[node_id] = "failed"
    if run.first_error is None:
        run.first_error = f"node {node_id!r} failed: {error}"
        run.first_trace = reply.trace
    with engine.begin() as conn:
        jobs.check_job(conn, claim, lease_seconds)
        jobs.record_node(conn, claim, node_id, NodeStatus.FAILED, error=error)


def _keep_best_so_far(
    engine: Engine, storage: Storage, run: _Run, node_id: str, lease_seconds: float
) -> int | None:
    """A search cancelled before it ended keeps its best trial so far: each save node
    it feeds saves the newest best-so-far model the child sent (the trial's fold
    model, see ``pipeline.automl.BestSoFar``), as it would have saved the final one
    (model row, registration, lineage to the job), linked to that trial's run. The
    bytes are already in this process: this costs one transaction per save node,
    within the cancel's bound. Returns the trial kept, or None (no trial finished, no
    save node, or the model did not fit: the trials alone are kept, as before)."""
    kept_trial = None
    for save_id, message in (run.interims.get(node_id) or {}).items():
        run_id = (run.trial_runs.get(node_id) or {}).get(message.trial)
        with engine.begin() as conn:
            jobs.check_job(conn, run.claim, lease_seconds)
            jobs.record_node(conn, run.claim, save_id, NodeStatus.RUNNING)
        try:
            _succeed(
                engine,
                storage,
                run,
                run.definition.node(save_id),
                message.reply,
                lease_seconds,
                trial_run_id=run_id,
            )
        except (jobs.OverQuota, jobs.RegistrationRefused) as exc:
            log.info("job %s: the best-so-far model of %s not kept: %s", run.claim.id, node_id, exc)
            _fail_node(engine, run, save_id, Reply("failed", error=str(exc)), lease_seconds)
            continue
        kept_trial = message.trial
        search = run.searches.get(node_id)
        if search is not None:
            search["kept"] = {"trial": message.trial, "save_node": save_id}
    return kept_trial


def _succeed(
    engine: Engine,
    storage: Storage,
    run: _Run,
    node: WorkflowNode,
    outcome: Reply,
    lease_seconds: float,
    *,
    trial_run_id: uuid.UUID | None = None,
) -> None:
    """A node's success (a save node's model written with it). ``trial_run_id``: the
    automl trial whose model this is (default: the search's best trial)."""
    claim = run.claim
    output = dict(outcome.output or {})
    if node.type in (NodeType.MODEL, NodeType.AUTOML) and "metrics" in output:
        run.metrics[node.id] = output["metrics"]
    if outcome.artifact is None or outcome.model is None:
        with engine.begin() as conn:
            jobs.check_job(conn, claim, lease_seconds)
            jobs.record_node(conn, claim, node.id, NodeStatus.SUCCESS, output=output)
        run.status[node.id] = "success"
        return
    model_id = uuid.uuid4()
    location = storage.write_bytes(
        f"models/{claim.user_id}/{claim.id}/{node.id}-{model_id}.joblib", outcome.artifact
    )
    record = outcome.model
    output["model_id"] = str(model_id)
    try:
        with Session(engine) as session:
            jobs.record_model(
                session,
                claim,
                node.id,
                lease_seconds=lease_seconds,
                model_id=model_id,
                name=record.name,
                algorithm=record.algorithm,
                problem_type=str(record.problem_type),
                metrics=record.metrics,
                hyperparameters=record.hyperparameters,
                location=location,
                output=output,
                size_bytes=len(outcome.artifact),
                limits=run.tier_limits,
                signature=record.signature,
                input_example=record.input_example,
                environment=record.environment,
                register=_registration(run, node, record),
            )
    except BaseException:
        storage.delete(location)
        raise
    run.models.append(str(model_id))
    run.status[node.id] = "success"
    search = run.searches.get(run.definition.inputs(node.id)[0])
    if search is not None and (trial_run_id is not None or search.get("best") is not None):
        # The saved model is the search's best trial's (refitted on all training rows),
        # or, for a cancelled search, the trial whose fold model was kept.
        with Session(engine) as session:
            searches.attach_model(
                session,
                uuid.UUID(search["experiment_id"]),
                trial_run_id or uuid.UUID(search["best"]["run_id"]),
                model_id,
            )


def _registration(run: _Run, node: WorkflowNode, record: Any) -> jobs.Registration | None:
    """The save node's ``register``, with the dataset version its chain read (frozen
    in the run's snapshot): the new version's lineage."""
    register = getattr(record, "register", None)
    if register is None:
        return None
    dataset_node = run.definition.dataset_node(node.id)
    frozen = (run.snapshot.get("dataset_versions") or {}).get(dataset_node) or {}
    version_id = frozen.get("version_id")
    return jobs.Registration(
        name=register.name,
        alias=register.alias,
        dataset_version_ids=(uuid.UUID(str(version_id)),) if version_id else (),
    )


def _results(run: _Run) -> dict[str, Any]:
    results = {"nodes": dict(run.status), "metrics": run.metrics, "models": run.models}
    if run.searches:
        # Kept however the job ends: a cancelled search's best trial so far is here.
        results["automl"] = run.searches
    return results


def _finish(
    engine: Engine,
    claim: Claim,
    status: JobStatus,
    *,
    error: str | None = None,
    results: dict[str, Any] | None = None,
    trace: str | None = None,
    refund: bool = True,
) -> None:
    with Session(engine) as session:
        refunded = jobs.finish_job(
            session,
            claim,
            status,
            results=results,
            error=error,
            traceback=trace,
            refund=refund,
        )
    log.info("job %s %s%s", claim.id, status, f", {refunded} credits refunded" if refunded else "")


def _cancel(
    engine: Engine,
    claim: Claim,
    run: _Run,
    order: list[str],
    lease_seconds: float,
    *,
    running: str | None = None,
    kept: int | None = None,
) -> str:
    """End the job cancelled: the node it interrupted (``running``) failed (a started
    node cannot be skipped), the nodes not run skipped. Refunded, unless a cancelled
    search kept its best model so far (``kept``: the trial): the job then delivered
    a model, and its charge stands."""
    with engine.begin() as conn:
        jobs.check_job(conn, claim, lease_seconds)
        if running is not None:
            jobs.record_node(
                conn, claim, running, NodeStatus.FAILED, error="cancelled by its owner while it ran"
            )
            run.status[running] = "cancelled"
        for node_id in order:
            if node_id not in run.status:
                jobs.record_node(
                    conn, claim, node_id, NodeStatus.SKIPPED, error="skipped: the job was cancelled"
                )
                run.status[node_id] = "skipped"
    error = "cancelled by its owner"
    if kept is not None:
        error += f"; the search's best model so far (trial {kept}) was kept"
    _finish(
        engine, claim, JobStatus.CANCELLED, error=error, results=_results(run), refund=kept is None
    )
    return "cancelled"


def _release(engine: Engine, storage: Storage, claim: Claim) -> str:
    """The worker is stopping: the job goes back to the queue."""
    with Session(engine) as session:
        dropped = jobs.release(session, claim)
    for location in dropped:
        storage.delete(location)
    log.info("job %s released: the worker is stopping", claim.id)
    return "released"


def _abort(
    engine: Engine,
    run: _Run,
    order: list[str],
    node_id: str | None,
    error: str,
    lease_seconds: float,
) -> str:
    """End the job failed with ``error`` (refunded): the running node (if any) failed,
    the nodes not run skipped."""
    claim = run.claim
    with engine.begin() as conn:
        jobs.check_job(conn, claim, lease_seconds)
        if node_id is not None:
            jobs.record_node(conn, claim, node_id, NodeStatus.FAILED, error=error)
            run.status[node_id] = "failed"
        for other in order:
            if other not in run.status:
                jobs.record_node(conn, claim, other, NodeStatus.SKIPPED, error=f"skipped: {error}")
                run.status[other] = "skipped"
    _finish(engine, claim, JobStatus.FAILED, error=error, results=_results(run))
    return "failed"


def _time_out(
    engine: Engine,
    run: _Run,
    order: list[str],
    node_id: str | None,
    time_limit: float | None,
    lease_seconds: float,
) -> str:
    limit = f"{time_limit:g}"
    message = f"time limit of {limit} s exceeded (the {run.tier} tier's limit)"
    log.info("job %s: %s", run.claim.id, message)
    return _abort(engine, run, order, node_id, message, lease_seconds)
