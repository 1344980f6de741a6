"""Workflow execution: a claimed job's snapshot, node by node, recorded as it goes.

Nodes run in the definition's topological order, each recorded in ``job_nodes``
(running, then success with its output or failed with its error); a node whose
input failed or was skipped is skipped. Between two nodes the worker renews its
lease and looks for a cancel request; a stopping worker gives the job back to
the queue there. The save node's artifact goes to storage and its ``Model`` row
is written with the node's success, in one transaction. At the end the job is
completed with a summary in ``results``, or failed (or cancelled) and refunded
once, through the ledger. Every change of state goes through :mod:`database.jobs`.
"""

from __future__ import annotations

import io
import logging
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pydantic import ValidationError
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from database import jobs
from database.joblog import ProgressReporter
from database.jobs import Claim
from database.limits import Limits
from database.models import JobStatus, NodeStatus, NodeType
from pipeline.definition import WorkflowDefinition, WorkflowNode
from pipeline.execute import LoadedDataset, NodeFailed, NodeOutcome, execute_node
from pipeline.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class _Run:
    claim: Claim
    snapshot: dict[str, Any]
    definition: WorkflowDefinition
    status: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    first_error: str | None = None
    first_trace: str | None = None
    #: The tiers' limits: a saved model must fit in its owner's storage quota.
    tier_limits: Limits = field(default_factory=Limits)


def _snapshot(engine: Engine, claim: Claim) -> dict[str, Any] | None:
    with engine.connect() as conn:
        data = conn.execute(
            text(
                "SELECT s.snapshot_data FROM jobs AS j JOIN workflow_snapshots AS s"
                " ON s.id = j.workflow_snapshot_id AND s.user_id = j.user_id WHERE j.id = :id"
            ),
            {"id": claim.id},
        ).scalar_one_or_none()
    return data


class _Loader:
    """Loads a dataset node's version (frozen in the snapshot) from its Parquet file."""

    def __init__(self, engine: Engine, storage: Storage, run: _Run) -> None:
        self.engine, self.storage, self.run = engine, storage, run

    def __call__(self, node: WorkflowNode) -> LoadedDataset:
        frozen = (self.run.snapshot.get("dataset_versions") or {}).get(node.id) or {}
        version_id = frozen.get("version_id")
        if not version_id:
            raise NodeFailed(f"node {node.id!r}: the run recorded no dataset version to read")
        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT v.s3_path, v.status::text AS status, v.version_number, d.name"
                    " FROM dataset_versions AS v JOIN datasets AS d ON d.id = v.dataset_id"
                    " WHERE v.id = :v AND v.user_id = :u"
                ),
                {"v": uuid.UUID(str(version_id)), "u": self.run.claim.user_id},
            ).one_or_none()
        if row is None:
            raise NodeFailed(f"node {node.id!r}: dataset version {version_id} no longer exists")
        if row.status != "completed" or not row.s3_path:
            raise NodeFailed(
                f"node {node.id!r}: dataset version {row.version_number} is not ingested"
                f" (status {row.status})"
            )
        try:
            with self.storage.open_read(row.s3_path) as source:
                frame = pd.read_parquet(io.BytesIO(source.read()))
        except FileNotFoundError:
            raise NodeFailed(
                f"node {node.id!r}: the Parquet file of dataset version {row.version_number}"
                " is missing from storage"
            ) from None
        return LoadedDataset(
            frame=frame,
            target_column=frozen.get("target_column"),
            problem_type=frozen.get("problem_type"),
            name=row.name,
        )


def run_job(
    engine: Engine,
    storage: Storage,
    claim: Claim,
    *,
    lease_seconds: float,
    stop: threading.Event | None = None,
    tier_limits: Limits | None = None,
) -> str:
    """Run the claimed job to its end; returns its final status, or ``released``
    when the worker stopped and gave it back. Raises :class:`database.jobs.LeaseLost`.
    ``tier_limits``: the tiers' limits whose storage quota a saved model must fit in
    (default: the defaults; the worker passes its ``TIER_LIMITS``)."""
    snapshot = _snapshot(engine, claim)
    if snapshot is None:
        return "gone"
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
        tier_limits=tier_limits or Limits(),
    )
    loader = _Loader(engine, storage, run)
    nodes = {n.id: n for n in definition.nodes}
    order = definition.order()
    for node_id in order:
        if stop is not None and stop.is_set():
            with Session(engine) as session:
                dropped = jobs.release(session, claim)
            for location in dropped:
                storage.delete(location)
            log.info("job %s released: the worker is stopping", claim.id)
            return "released"
        upstream = definition.inputs(node_id)
        broken = [u for u in upstream if run.status.get(u) != "success"]
        with engine.begin() as conn:
            cancelled = jobs.check_job(conn, claim, lease_seconds)
            if not cancelled and broken:
                reason = (
                    f"skipped: input node {broken[0]!r} {run.status.get(broken[0], 'did not run')}"
                )
                jobs.record_node(conn, claim, node_id, NodeStatus.SKIPPED, error=reason)
                run.status[node_id] = "skipped"
                continue
            if not cancelled:
                jobs.record_node(conn, claim, node_id, NodeStatus.RUNNING)
        if cancelled:
            return _cancel(engine, claim, run, order, lease_seconds)
        _run_node(engine, storage, run, loader, nodes[node_id], upstream, lease_seconds)
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


def _run_node(
    engine: Engine,
    storage: Storage,
    run: _Run,
    loader: _Loader,
    node: WorkflowNode,
    upstream: list[str],
    lease_seconds: float,
) -> None:
    claim = run.claim
    trace: str | None = None
    try:
        outcome: NodeOutcome = execute_node(
            run.definition,
            node.id,
            {u: run.values[u] for u in upstream},
            loader,
            # The node's steps as log lines, its progress at most once a second.
            progress=ProgressReporter(engine, claim.id, worker=claim.worker).callback(node.id),
        )
    except NodeFailed as exc:
        error = str(exc)
    except Exception as exc:  # scikit-learn's own refusals mostly: say what it said
        if jobs.is_transient(exc):
            raise  # an outage, not the node's fault: workers.kinds retries the job later
        log.warning("job %s node %s failed", claim.id, node.id, exc_info=True)
        error = f"{type(exc).__name__}: {exc}"
        trace = traceback.format_exc()
    else:
        run.values[node.id] = outcome.value
        try:
            _succeed(engine, storage, run, node, outcome, lease_seconds)
            return
        except jobs.OverQuota as exc:  # the model does not fit: the node fails
            error = str(exc)
    run.status[node.id] = "failed"
    if run.first_error is None:
        run.first_error = f"node {node.id!r} failed: {error}"
        run.first_trace = trace
    with engine.begin() as conn:
        jobs.check_job(conn, claim, lease_seconds)
        jobs.record_node(conn, claim, node.id, NodeStatus.FAILED, error=error)


def _succeed(
    engine: Engine,
    storage: Storage,
    run: _Run,
    node: WorkflowNode,
    outcome: NodeOutcome,
    lease_seconds: float,
) -> None:
    claim = run.claim
    output = dict(outcome.output)
    if node.type == NodeType.MODEL and "metrics" in output:
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
            )
    except BaseException:
        storage.delete(location)
        raise
    run.models.append(str(model_id))
    run.status[node.id] = "success"


def _results(run: _Run) -> dict[str, Any]:
    return {"nodes": dict(run.status), "metrics": run.metrics, "models": run.models}


def _finish(
    engine: Engine,
    claim: Claim,
    status: JobStatus,
    *,
    error: str | None = None,
    results: dict[str, Any] | None = None,
    trace: str | None = None,
) -> None:
    with Session(engine) as session:
        refunded = jobs.finish_job(
            session,
            claim,
            status,
            results=results,
            error=error,
            traceback=trace,
        )
    log.info("job %s %s%s", claim.id, status, f", {refunded} credits refunded" if refunded else "")


def _cancel(engine: Engine, claim: Claim, run: _Run, order: list[str], lease_seconds: float) -> str:
    with engine.begin() as conn:
        jobs.check_job(conn, claim, lease_seconds)
        for node_id in order:
            if node_id not in run.status:
                jobs.record_node(
                    conn, claim, node_id, NodeStatus.SKIPPED, error="skipped: the job was cancelled"
                )
                run.status[node_id] = "skipped"
    _finish(
        engine, claim, JobStatus.CANCELLED, error="cancelled by its owner", results=_results(run)
    )
    return "cancelled"
