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


def test_a_slow_alert_receiver_never_holds_up_the_job_loop(
    make_worker: Callable[..., Worker], sql: object, engine: Engine
) -> None:
    import http.server
    import threading

    release, arrived = threading.Event(), threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arrived.set()
            release.wait(60)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        user = make_user(sql)
        with Session(engine) as s:
            credits.adjust(s, user, 100, "test", "tests")
            billing.create_alert(
                s,
                user_id=user,
                kind="balance_below",
                threshold=50,
                webhook_url=f"http://127.0.0.1:{server.server_address[1]}/slow",
                allow_http=True,
            )
            s.commit()
            credits.adjust(s, user, -60, "test", "tests")
        worker = make_worker(reconcile_hours=0, alert_delivery_seconds=1)
        worker._billing(0.0)  # the loop's periodic step: starts the round and returns
        assert arrived.wait(30)  # the receiver has the request...
        assert not release.is_set()  # ...and has not answered: the loop is not waiting
        # A second due round while the first is in flight starts no other one.
        first = worker._alerts_thread
        worker._billing(10.0)
        assert worker._alerts_thread is first
        release.set()
        assert first is not None
        first.join(30)
        assert not first.is_alive()
        # The round recorded its one attempt (answered, or past its 10 s timeout).
        assert _rows(engine, "SELECT attempt FROM billing_alert_deliveries") == [(1,)]
    finally:
        release.set()
        server.shutdown()
        server.server_close()
