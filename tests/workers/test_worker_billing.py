"""Issue 16: the worker delivers the billing alerts' outbox and runs the daily
verify, recorded as a reconciliation run."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from database import billing, credits
from workers.main import Worker

from factories import make_user


def _rows(engine: Engine, statement: str) -> list[tuple[object, ...]]:
    with engine.begin() as conn:
        return [tuple(r) for r in conn.execute(text(statement))]


def test_the_worker_delivers_alerts_and_records_its_daily_verify(
    make_worker: Callable[..., Worker], sql: object, engine: Engine
) -> None:
    user = make_user(sql)
    with Session(engine) as s:
        credits.adjust(s, user, 100, "test", "tests")
        billing.create_alert(
            s,
            user_id=user,
            kind="balance_below",
            threshold=50,
            webhook_url="http://127.0.0.1:9/nobody-listens",
            allow_http=True,
        )
        s.commit()
        credits.adjust(s, user, -60, "test", "tests")
    worker = make_worker(reconcile_hours=1e-9, alert_delivery_seconds=1)
    worker.run(until_idle=True)
    [(source, ok)] = _rows(engine, "SELECT source, ok FROM reconciliation_runs")
    assert source == f"worker:{worker.name}" and ok is True
    [(attempt, succeeded)] = _rows(
        engine, "SELECT attempt, succeeded FROM billing_alert_deliveries"
    )
    assert (attempt, succeeded) == (1, False)
    assert _rows(engine, "SELECT status::text FROM billing_alert_events") == [("pending",)]


def test_nothing_runs_when_disabled(make_worker: Callable[..., Worker], engine: Engine) -> None:
    make_worker(reconcile_hours=0, alert_delivery_seconds=0).run(until_idle=True)
    assert _rows(engine, "SELECT count(*) FROM reconciliation_runs") == [(0,)]
