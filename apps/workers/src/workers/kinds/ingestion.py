"""``ingestion``: an upload becomes a dataset version (:mod:`workers.ingestion`)."""

from __future__ import annotations

from database.jobs import Claim
from database.models import JobKind
from workers.ingestion import run_ingestion
from workers.kinds import Context, register


@register(JobKind.INGESTION)
def handle(context: Context, claim: Claim) -> str:
    return run_ingestion(context.engine, context.storage, claim, tier_limits=context.tier_limits)
