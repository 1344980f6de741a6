"""The worker's Prometheus metrics (docs/metrics.md), served on
``WORKER_METRICS_PORT`` when it is set (0, the default: not served).

What only the worker sees, counted as it happens: the work it claimed and how
long it had waited in the queue (the database's clock, at the claim:
``database.jobs.Claim.waited_seconds``), the work in its slots now, each piece's
final outcome and duration. What the database knows (queue depth, the oldest wait,
the live workers, the credits of every ledger entry, the worker's refunds and
usage charges among them) is served by the API's ``/metrics``, read at scrape
time: it is the same whichever worker is asked, and must be there when no worker is.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from database.jobs import Claim

log = logging.getLogger("workers.metrics")

#: Seconds: from an ingestion taken at once to a job that waited an hour.
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: Seconds: from a small ingestion to a four-hour training.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)


CLAIMED = Counter(
    "automl_worker_claims_total",
    "Work this worker claimed from the queue, by queue (job, ingestion) and kind.",
    ["queue", "kind"],
)
QUEUE_WAIT = Histogram(
    "automl_worker_queue_wait_seconds",
    "Time work waited in the queue: from when it became due (run_after, else created)"
    " to its claim, by queue and kind.",
    ["queue", "kind"],
    buckets=WAIT_BUCKETS,
)
IN_FLIGHT = Gauge(
    "automl_worker_jobs_in_flight",
    "Work in this worker's slots now, by queue and kind.",
    ["queue", "kind"],
    multiprocess_mode="livesum",
)
SLOTS = Gauge(
    "automl_worker_slots",
    "Slots of this worker (WORKER_SLOTS): work it may run at once.",
    multiprocess_mode="livesum",
)
FINISHED = Counter(
    "automl_worker_jobs_total",
    "Work this worker finished handling, by queue, kind and outcome (completed, failed,"
    " cancelled, retry: waits again, released: given back, lease_lost, error).",
    ["queue", "kind", "outcome"],
)
DURATION = Histogram(
    "automl_worker_job_duration_seconds",
    "Time a claim was in this worker's hands, from the claim to its outcome,"
    " by queue, kind and outcome.",
    ["queue", "kind", "outcome"],
    buckets=DURATION_BUCKETS,
)


def _kind(claim: Claim) -> tuple[str, str]:
    return str(claim.queue), str(getattr(claim.kind, "value", claim.kind))


def claimed(claim: Claim) -> None:
    """A claim taken: counted, its wait observed, one more in flight."""
    labels = _kind(claim)
    CLAIMED.labels(*labels).inc()
    if claim.waited_seconds is not None:
        QUEUE_WAIT.labels(*labels).observe(claim.waited_seconds)
    IN_FLIGHT.labels(*labels).inc()


def finished(claim: Claim, outcome: str, seconds: float) -> None:
    """A claim's handling ended with ``outcome`` after ``seconds``."""
    labels = _kind(claim)
    IN_FLIGHT.labels(*labels).dec()
    FINISHED.labels(*labels, outcome).inc()
    DURATION.labels(*labels, outcome).observe(seconds)


def setup(slots: int) -> None:
    """This worker's constant series (idempotent)."""
    SLOTS.set(slots)


def serve(port: int, host: str = "0.0.0.0") -> bool:
    """Serve ``/metrics`` on ``host:port`` in a daemon thread; False (and one log
    line) when the port cannot be had: the worker works on without it."""
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics not served on %s:%d: %s", host, port, exc.strerror or exc)
        return False
    log.info("metrics on http://%s:%d/metrics", host, port)
    return True
