"""``evaluation``: a model version scored on a dataset version against criteria.

The run's row names what to score (:func:`database.evaluation.target_of`); the model
and the data come from storage, :func:`pipeline.evaluate.score` does the work, and
one transaction writes the per-row results (COPY) and the run's results, after
checking the lease (and a cancel). A retried attempt whose first one committed the
results only ends the job. What the model cannot score (a missing column, a
non-numeric regression target) fails the job with that message, refunded.

Runs in the worker's process, not in the sandboxed child of a workflow run: scoring
is one ``predict`` (no fit), bounded by the data's size (docs/evaluation.md).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from database import evaluation, jobs
from database.jobs import Claim
from database.models import JobKind, JobStatus
from pipeline import formats
from pipeline.evaluate import EvaluationFailed, load_frame, score
from workers.kinds import Context, register


@register(JobKind.EVALUATION)
def handle(context: Context, claim: Claim) -> str:
    with Session(context.engine) as session:
        run = evaluation.run_of_job(session, claim.id)
        if run is None:
            jobs.finish_job(session, claim, JobStatus.FAILED, error="the evaluation run is gone")
            return "failed"
        if run.completed_at is not None:  # a retry after the results were committed
            jobs.finish_job(session, claim, JobStatus.COMPLETED, results={"run_id": str(run.id)})
            return "completed"
        run_id, criteria, version_id = run.id, list(run.criteria), run.model_version_id
        try:
            target = evaluation.target_of(session, run)
        except evaluation.EvaluationProblem as exc:
            session.rollback()
            jobs.finish_job(session, claim, JobStatus.FAILED, error=exc.message)
            return "failed"
        session.rollback()
    try:  # the platform's one loader of a version (its environment checked)
        with Session(context.engine) as session:
            model = formats.load_version(session, context.storage, version_id)
    except (formats.FormatError, formats.IncompatibleEnvironment, FileNotFoundError) as exc:
        with Session(context.engine) as session:
            jobs.finish_job(session, claim, JobStatus.FAILED, error=str(exc) or "no model file")
        return "failed"
    frame = load_frame(context.storage, target.data_location)
    try:
        scored = score(model, frame, target.target_column, target.problem_type, criteria)
    except EvaluationFailed as exc:
        with Session(context.engine) as session:
            jobs.finish_job(session, claim, JobStatus.FAILED, error=str(exc))
        return "failed"
    with Session(context.engine) as session:
        with session.begin():
            if jobs.check_job(session, claim, context.lease_seconds):
                cancelled = True
            else:
                cancelled = False
                if evaluation.record_results(
                    session,
                    run_id,
                    metrics=scored.metrics,
                    criteria_results=scored.criteria_results,
                    plot_data=scored.plot_data,
                    passed=scored.passed,
                    row_count=len(scored.rows),
                    failed_row_count=scored.failed_rows,
                ):
                    evaluation.write_row_results(
                        session, run_id, scored.rows.drop(columns=[]).itertuples(index=False)
                    )
        status = JobStatus.CANCELLED if cancelled else JobStatus.COMPLETED
        jobs.finish_job(
            session,
            claim,
            status,
            results=None if cancelled else {"run_id": str(run_id), "passed": scored.passed},
            error="cancelled by its owner" if cancelled else None,
        )
    return status.value
