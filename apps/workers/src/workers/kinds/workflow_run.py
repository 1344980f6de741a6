"""``workflow_run``: a workflow snapshot, node by node (:mod:`workers.execution`)."""

from __future__ import annotations

from database.jobs import Claim
from database.models import JobKind
from workers.execution import run_job
from workers.kinds import Context, register


@register(JobKind.WORKFLOW_RUN)
def handle(context: Context, claim: Claim) -> str:
    return run_job(
        context.engine,
        context.storage,
        claim,
        lease_seconds=context.lease_seconds,
        stop=context.stop,
        tier_limits=context.tier_limits,
        limits=context.run_limits,
    )
