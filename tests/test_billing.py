"""Issue 16, the database layer: price books, job price lines, the statement,
billing alerts (fired by the ledger's statement trigger) and their delivery,
reconciliation runs. Rules are tried through raw SQL, the ORM and
``database.billing``, as the apps' and the operator's roles where privileges matter.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import stripe
from sqlalchemy import Engine, create_engine, select, text, update
from sqlalchemy.orm import Session

from database import billing, credits, errors
from database.grants import grant
from database.models import JobPriceItem, PriceItem, UserTier
from database.verify import verify

from factories import make_job, make_user, scalar

DEFAULTS = {
    "job": 1,
    "dataset": 0,
    "preprocess": 1,
    "model": 10,
    "visualize": 1,
    "save": 1,
    "automl": 10,
    "automl_minute": 10,
    "predicted_rows": 1,
    "batch_rows": 1,
    "storage_gb_month": 1,
    # c16b00000001: an evaluation run (PRICING__EVALUATION_CREDITS' default).
    "evaluation": 2,
}


def _role(engine: Engine, prefix: str, operator: bool = False) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
        grant(conn, name, operator=operator)
    return name


def _drop(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{name}"'))
        conn.execute(text(f'DROP ROLE "{name}"'))


@pytest.fixture
def operator_engine(db_url: Any, engine: Engine) -> Iterator[Engine]:
    name = _role(engine, "ops", operator=True)
    eng = errors.install(create_engine(db_url.set(username=name), pool_size=2))
    yield eng
    eng.dispose()
    _drop(engine, name)


def give(engine: Engine, user_id: uuid.UUID, amount: int) -> None:
    with Session(engine) as s:
        credits.adjust(s, user_id, amount, "test credits", "tests")


def priced_job(engine: Engine, sql: Any, user_id: uuid.UUID, nodes: list[str]) -> uuid.UUID:
    """A job priced with the tier's book in force and charged, as the API runs one."""
    with Session(engine) as s, s.begin():
        book = billing.book_in_force(s, UserTier.FREE)
        quote = billing.quote_job(book, nodes)
        job_id = make_job(s.connection(), user_id, credit_cost=quote.total)
        billing.record_job_prices(s, job_id, quote)
    with Session(engine) as s:
        credits.charge_job(s, job_id)
    return job_id


# =====================================================================================
# the price book
# =====================================================================================
def test_the_migration_moved_todays_defaults_into_each_tiers_first_book(session, sql):
    # The PRICING__... settings these came from are gone (c16b00000001): the book is
    # the one source of prices.
    from api.settings import ApiSettings

    assert "pricing" not in ApiSettings.model_fields
    for tier in UserTier:
        book = billing.book_in_force(session, tier)
        assert {s: p.credits_per_unit for s, p in book.items.items()} == DEFAULTS
        assert book.effective_to is None and book.currency == "usd"
    assert billing.unit_price(session, tier="pro", sku="predicted_rows") == 1
    assert billing.price_rows(session, tier="pro", rows=1001) == 2  # rounded up
    assert billing.price_rows(session, tier="pro", rows=0) == 0
    with pytest.raises(errors.NoPriceBook):
        billing.unit_price(session, tier="pro", sku="no_such_sku")
    with pytest.raises(errors.NoPriceBook):
        billing.book_in_force(session, "free", dt.datetime(2000, 1, 1, tzinfo=dt.UTC))


def test_overlapping_books_of_a_tier_are_refused_by_the_database(sql):
    insert = (
        "INSERT INTO price_books (tier, effective_from, effective_to)"
        " VALUES (CAST(:t AS user_tier), CAST(:f AS timestamptz), CAST(:e AS timestamptz))"
    )
    # The first books run from 2025-01-01 with no end: any later start overlaps.
    with pytest.raises(errors.PriceBookOverlap):
        sql(insert, t="free", f="2030-01-01", e=None)
    with pytest.raises(errors.PriceBookOverlap):
        sql(insert, t="pro", f="2024-06-01", e="2025-01-02")
    # Touching is not overlapping ([from, to)); another tier's span is its own.
    sql(insert, t="enterprise", f="2024-01-01", e="2025-01-01")
    with pytest.raises(errors.PriceBookOverlap):
        sql(insert, t="enterprise", f="2024-06-01", e="2024-07-01")
    with pytest.raises(errors.InvalidValue):  # ck_price_books_effective_span
        sql(insert, t="free", f="2020-01-01", e="2019-01-01")


def test_an_in_force_price_cannot_change_raw_sql_and_orm(sql, session):
    item = sql(
        "SELECT i.id FROM price_items i JOIN price_books b ON b.id = i.price_book_id"
        " WHERE b.tier = 'free' AND i.sku = 'model'"
    )[0][0]
    with pytest.raises(errors.PriceItemImmutable):
        sql("UPDATE price_items SET credits_per_unit = 99 WHERE id = :i", i=item)
    with pytest.raises(errors.PriceItemImmutable):
        sql("DELETE FROM price_items WHERE id = :i", i=item)
    obj = session.get(PriceItem, item)
    obj.credits_per_unit = 99
    with pytest.raises(errors.PriceItemImmutable):
        session.flush()
    session.rollback()
    book = scalar(sql, "SELECT price_book_id FROM price_items WHERE id = :i", i=item)
    with pytest.raises(errors.PriceBookImmutable):
        sql("UPDATE price_books SET effective_from = now() WHERE id = :b", b=book)
    with pytest.raises(errors.PriceBookImmutable):
        sql("DELETE FROM price_books WHERE id = :b", b=book)
    with pytest.raises(errors.PriceBookImmutable):  # its end cannot be put in the past
        sql("UPDATE price_books SET effective_to = '2025-06-01' WHERE id = :b", b=book)
    assert scalar(sql, "SELECT credits_per_unit FROM price_items WHERE id = :i", i=item) == 10


def test_a_future_book_may_still_change(sql, session):
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    book = billing.set_prices(session, tier="pro", prices={"model": 12}, effective_from=future)
    session.commit()
    sql(
        "UPDATE price_items SET credits_per_unit = 13 WHERE price_book_id = :b AND sku = 'model'",
        b=book.id,
    )
    assert billing.book_in_force(session, "pro", future).price("model").credits_per_unit == 13
    assert billing.book_in_force(session, "pro").price("model").credits_per_unit == 10
    sql("DELETE FROM price_items WHERE price_book_id = :b", b=book.id)
    sql("DELETE FROM price_books WHERE id = :b", b=book.id)


def test_a_price_change_leaves_old_jobs_and_their_refunds_untouched(engine, sql, session):
    user = make_user(sql)
    give(engine, user, 100)
    job = priced_job(engine, sql, user, ["dataset", "preprocess", "model", "save"])
    cost = 1 + 0 + 1 + 10 + 1
    assert scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user) == 100 - cost
    before = billing.job_prices(session, job)
    assert sum(line["credits"] for line in before) == cost
    old_book = billing.book_in_force(session, "free")

    new = billing.set_prices(session, tier="free", prices={"model": 50, "job": 5})
    session.commit()
    assert new.id != old_book.id
    assert billing.book_in_force(session, "free").price("model").credits_per_unit == 50
    closed = scalar(sql, "SELECT effective_to FROM price_books WHERE id = :b", b=old_book.id)
    assert closed == new.effective_from
    # The old job: same lines, same items (of the old book), same cost; refund all of it.
    assert billing.job_prices(session, job) == before
    assert {line["price_book_id"] for line in before} == {old_book.id}
    with Session(engine, expire_on_commit=False) as s:
        refund = credits.refund_job(s, job, "cancelled")
    assert refund.amount == cost
    assert scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user) == 100
    # A new job pays the new prices.
    job2 = priced_job(engine, sql, user, ["model"])
    assert sum(line["credits"] for line in billing.job_prices(session, job2)) == 55


def test_a_jobs_price_lines_are_computed_and_immutable(engine, sql, session):
    user = make_user(sql)
    give(engine, user, 100)
    job = priced_job(engine, sql, user, ["model", "model"])
    lines = {
        r.sku: (r.quantity, r.credits)
        for r in sql(
            "SELECT i.sku, j.quantity, j.credits FROM job_price_items j"
            " JOIN price_items i ON i.id = j.price_item_id WHERE j.job_id = :j",
            j=job,
        )
    }
    assert lines == {"job": (1, 1), "model": (2, 20)}
    with pytest.raises(errors.JobPriceImmutable):
        sql("UPDATE job_price_items SET quantity = 1 WHERE job_id = :j", j=job)
    with pytest.raises(errors.JobPriceImmutable):
        session.execute(update(JobPriceItem).where(JobPriceItem.job_id == job).values(quantity=1))
    session.rollback()
    # A client's credits are replaced by the database's.
    other = make_job(sql, user)
    item = scalar(sql, "SELECT price_item_id FROM job_price_items WHERE job_id = :j LIMIT 1", j=job)
    sql(
        "INSERT INTO job_price_items (job_id, price_item_id, quantity, credits)"
        " VALUES (:j, :i, 3, 999999)",
        j=other,
        i=item,
    )
    assert scalar(sql, "SELECT credits FROM job_price_items WHERE job_id = :j", j=other) in (3, 30)
    with pytest.raises(errors.InvalidValue):
        sql(
            "INSERT INTO job_price_items (job_id, price_item_id, quantity) VALUES (:j, :i, 0)",
            j=make_job(sql, user),
            i=item,
        )


def test_prices_are_an_operators_act(app_engine, operator_engine, session, sql):
    book = billing.book_in_force(session, "free")
    for statement in (
        "INSERT INTO price_books (tier, effective_from) VALUES ('free', '2090-01-01')",
        "UPDATE price_books SET description = 'x'",
        "INSERT INTO price_items (price_book_id, sku, unit, credits_per_unit)"
        f" VALUES ('{book.id}', 'new_sku', 'job', 1)",
    ):
        with pytest.raises(errors.PermissionDenied), app_engine.begin() as conn:
            conn.execute(text(statement))
    with Session(app_engine) as s, pytest.raises(errors.PermissionDenied):
        billing.set_prices(s, tier="free", prices={"model": 1})
    # The operator may, and the apps read the new book.
    with Session(operator_engine) as s:
        new = billing.set_prices(s, tier="free", prices={"model": 11})
        s.commit()
    with Session(app_engine) as s:
        assert billing.book_in_force(s, "free").id == new.id
        assert billing.unit_price(s, tier="free", sku="model") == 11
    # Even the operator cannot rewrite history.
    with pytest.raises(errors.PriceItemImmutable), operator_engine.begin() as conn:
        conn.execute(
            text("UPDATE price_items SET credits_per_unit = 0 WHERE price_book_id = :b"),
            {"b": new.id},
        )


def test_set_prices_refuses_bad_input(session):
    with pytest.raises(errors.InvalidValue):
        billing.set_prices(session, tier="free", prices={"model": -1})
    with pytest.raises(errors.InvalidValue):
        billing.set_prices(session, tier="free", prices={"brand_new": 3})  # no unit
    with pytest.raises(errors.InvalidValue):  # ck_price_items_sku_format
        billing.set_prices(
            session, tier="free", prices={"Bad SKU\x00": 3}, units={"Bad SKU\x00": "job"}
        )
    book = billing.set_prices(
        session, tier="free", prices={"gpu_minutes": 3}, units={"gpu_minutes": "job"}
    )
    assert book.price("gpu_minutes").credits_per_unit == 3 and "model" in book.items


def test_prices_cli_show_and_set(db_url, capsys, monkeypatch, session):
    from database import cli

    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    from database.config import get_settings

    get_settings.cache_clear()
    try:
        assert cli.main(["prices", "set", "--tier", "enterprise", "model=7"]) == 0
        assert cli.main(["prices", "show", "--tier", "enterprise"]) == 0
        out = capsys.readouterr().out
        assert "model" in out and "7 credits" in out
        assert cli.main(["prices", "set", "--tier", "enterprise", "model=x"]) == 2
    finally:
        get_settings.cache_clear()
    assert billing.unit_price(session, tier="enterprise", sku="model") == 7


# =====================================================================================
# the monthly statement
# =====================================================================================
def test_month_parsing_and_calendar_edges():
    assert billing.parse_month("2026-12") == dt.date(2026, 12, 1)
    for bad in (
        "2026-13",
        "2026-00",
        "26-12",
        "2026/12",
        "2026-1",
        "",
        "２０２６-12",
        "1999-12",
        "2026-12\x00",
        "9999-12",
    ):
        with pytest.raises(ValueError):
            billing.parse_month(bad)
    start, end = billing.month_span(dt.date(2026, 12, 1))
    assert (start.isoformat(), end.isoformat()) == (
        "2026-12-01T00:00:00+00:00",
        "2027-01-01T00:00:00+00:00",
    )
    assert billing.month_span(dt.date(2028, 2, 1))[1] == dt.datetime(2028, 3, 1, tzinfo=dt.UTC)


def _check(st: billing.Statement) -> None:
    moved = st.purchases - st.charged + st.refunds + st.adjustments
    assert st.opening_balance + moved == st.closing_balance


def test_a_statement_equals_the_ledger(engine, sql, session):
    user = make_user(sql)
    with Session(engine) as s:
        from factories import make_credit_package

        pkg = make_credit_package(sql, credits=40)
        credits.purchase(s, user, pkg, "pi_statement_1")
    give(engine, user, 30)
    j1 = priced_job(engine, sql, user, ["dataset", "model", "save"])  # 1+0+10+1 = 12
    priced_job(engine, sql, user, ["preprocess", "model"])  # 12
    with Session(engine) as s:
        credits.refund_job(s, j1, "failed", amount=5)
    month = dt.datetime.now(dt.UTC).date().replace(day=1)
    st = billing.statement(session, user, month)
    _check(st)
    assert st.opening_balance == 0 and st.purchases == 40 and st.adjustments == 30
    assert st.refunds == 5 and st.charged == 24
    assert st.charges == {"job": 2, "model": 20, "preprocess": 1, "save": 1}
    last = sql(
        "SELECT balance_after FROM credit_transactions WHERE user_id = :u"
        " ORDER BY created_at DESC, id DESC LIMIT 1",
        u=user,
    )[0][0]
    assert (
        st.closing_balance
        == last
        == scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user)
    )
    assert st.entries == 5
    # The month after: nothing moved, opening = closing = the balance.
    nxt = (month + dt.timedelta(days=32)).replace(day=1)
    after = billing.statement(session, user, nxt)
    assert (after.opening_balance, after.closing_balance, after.entries) == (last, last, 0)
    assert after.charges == {}
    # A month before any entry: all zero.
    empty = billing.statement(session, user, dt.date(2020, 1, 1))
    assert (empty.opening_balance, empty.closing_balance, empty.entries) == (0, 0, 0)
    csv_text = st.to_csv()
    assert csv_text.splitlines()[0] == "section,item,credits"
    assert f"closing_balance,,{last}" in csv_text and "charge,model,-20" in csv_text


def test_statement_month_boundaries_are_utc(engine, sql, session):
    """Entries dated at the last microsecond of January and the first of February
    (UTC) fall in their own months. Dated by hand: the ledger trigger dates entries
    itself, so they are written with the user triggers off, as the schema owner."""
    user = make_user(sql)
    rows = [
        ("2026-01-15T10:00:00+00:00", "adjustment", 100, 100),
        ("2026-01-31T23:59:59.999999+00:00", "adjustment", -30, 70),
        ("2026-02-01T00:00:00+00:00", "adjustment", 5, 75),
        # 2026-02-28 23:30 in New York is March 1st in UTC: March.
        ("2026-03-01T04:30:00+00:00", "adjustment", -10, 65),
    ]
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE credit_transactions DISABLE TRIGGER USER"))
        for at, kind, amount, after in rows:
            conn.execute(
                text(
                    "INSERT INTO credit_transactions (user_id, type, amount, balance_after,"
                    " created_at, actor, description) VALUES (:u, CAST(:k AS transaction_type),"
                    " :a, :b, CAST(:t AS timestamptz), 'tests', 'dated')"
                ),
                {"u": user, "k": kind, "a": amount, "b": after, "t": at},
            )
        conn.execute(text("ALTER TABLE credit_transactions ENABLE TRIGGER USER"))
    jan = billing.statement(session, user, dt.date(2026, 1, 1))
    feb = billing.statement(session, user, dt.date(2026, 2, 1))
    mar = billing.statement(session, user, dt.date(2026, 3, 1))
    for st in (jan, feb, mar):
        _check(st)
    assert (jan.opening_balance, jan.adjustments, jan.closing_balance, jan.entries) == (
        0,
        70,
        70,
        2,
    )
    assert (feb.opening_balance, feb.adjustments, feb.closing_balance, feb.entries) == (
        70,
        5,
        75,
        1,
    )
    assert (mar.opening_balance, mar.closing_balance) == (75, 65)
    dec = billing.statement(session, user, dt.date(2025, 12, 1))
    assert (dec.opening_balance, dec.closing_balance, dec.entries) == (0, 0, 0)


# =====================================================================================
# billing alerts: fired by the database, once per crossing
# =====================================================================================
def _events(sql: Any, alert: uuid.UUID) -> list[Any]:
    return sql(
        "SELECT kind::text, threshold, value FROM billing_alert_events"
        " WHERE alert_id = :a ORDER BY created_at",
        a=alert,
    )


def test_balance_below_fires_once_per_crossing_and_rearms(engine, sql, session):
    user = make_user(sql)
    give(engine, user, 100)
    alert, secret = billing.create_alert(
        session,
        user_id=user,
        kind="balance_below",
        threshold=50,
        webhook_url="https://example.com/hook",
    )
    session.commit()
    assert secret.startswith("whsec_") and len(secret) > 32
    assert secret not in repr(alert)
    give(engine, user, -30)  # 70: above
    assert _events(sql, alert.id) == []
    give(engine, user, -30)  # 40: crossed
    give(engine, user, -10)  # 30: still below, no new event
    assert _events(sql, alert.id) == [("balance_below", 50, 40)]
    give(engine, user, 100)  # 130: re-armed
    give(engine, user, -85)  # 45: crossed again
    assert [e[2] for e in _events(sql, alert.id)] == [40, 45]
    payload = sql(
        "SELECT payload FROM billing_alert_events WHERE alert_id = :a LIMIT 1", a=alert.id
    )[0][0]
    assert payload["type"] == "billing_alert.balance_below" and payload["threshold"] == 50
    # An inactive alert fires no more.
    assert billing.deactivate_alert(session, user, alert.id)
    session.commit()
    give(engine, user, 100)
    give(engine, user, -120)
    assert len(_events(sql, alert.id)) == 2
    assert not billing.deactivate_alert(session, make_user(sql), alert.id)


def test_an_alert_created_below_its_threshold_waits_for_the_next_crossing(engine, sql, session):
    user = make_user(sql)
    give(engine, user, 10)
    alert, _ = billing.create_alert(
        session,
        user_id=user,
        kind="balance_below",
        threshold=50,
        webhook_url="https://example.com/hook",
    )
    session.commit()
    give(engine, user, -5)
    assert _events(sql, alert.id) == []
    give(engine, user, 60)  # 65, armed
    give(engine, user, -20)  # 45
    assert [e[2] for e in _events(sql, alert.id)] == [45]


def test_spend_above_fires_once_a_month(engine, sql, session):
    user = make_user(sql)
    give(engine, user, 200)
    alert, _ = billing.create_alert(
        session,
        user_id=user,
        kind="spend_above",
        threshold=20,
        webhook_url="https://example.com/hook",
    )
    session.commit()
    priced_job(engine, sql, user, ["model"])  # 11
    assert _events(sql, alert.id) == []
    j = priced_job(engine, sql, user, ["model"])  # 22 > 20
    priced_job(engine, sql, user, ["model"])  # 33: same month, no new event
    assert _events(sql, alert.id) == [("spend_above", 20, 22)]
    with Session(engine) as s:
        credits.refund_job(s, j, "test")
    assert len(_events(sql, alert.id)) == 1


def test_alert_rules_hold_for_raw_sql(sql):
    user = make_user(sql)
    for bad in ("ftp://example.com/x", "https://", "not a url", "https://exa mple.com"):
        with pytest.raises(errors.InvalidValue):
            sql(
                "INSERT INTO billing_alerts (user_id, kind, threshold, webhook_url, secret)"
                " VALUES (:u, 'balance_below', 1, :w, repeat('s', 40))",
                u=user,
                w=bad,
            )
    with pytest.raises(errors.InvalidValue):
        sql(
            "INSERT INTO billing_alerts (user_id, kind, threshold, webhook_url, secret)"
            " VALUES (:u, 'balance_below', -1, 'https://e.com', repeat('s', 40))",
            u=user,
        )
    with pytest.raises(errors.InvalidValue):
        sql(
            "INSERT INTO billing_alerts (user_id, kind, threshold, webhook_url, secret)"
            " VALUES (:u, 'balance_below', 1, 'https://e.com', 'short')",
            u=user,
        )


def test_create_alert_refuses_bad_urls(session, sql):
    user = make_user(sql)
    for bad in (
        "http://example.com/hook",
        "https://user:pw@example.com/",
        "https://",
        "https://example.com/\x00",
        "https://example.com:99999/",
        "x" * 3000,
        "",
    ):
        with pytest.raises(billing.InvalidWebhookUrl):
            billing.create_alert(
                session, user_id=user, kind="balance_below", threshold=1, webhook_url=bad
            )
    with pytest.raises(errors.InvalidValue):
        billing.create_alert(
            session,
            user_id=user,
            kind="balance_below",
            threshold=-1,
            webhook_url="https://example.com/",
        )
    with pytest.raises(errors.UserNotFound):
        billing.create_alert(
            session,
            user_id=uuid.uuid4(),
            kind="balance_below",
            threshold=1,
            webhook_url="https://example.com/",
        )


def test_an_alert_fires_exactly_once_under_16_concurrent_charges(engine, sql, session):
    user = make_user(sql)
    give(engine, user, 16 * 11)
    alert, _ = billing.create_alert(
        session,
        user_id=user,
        kind="balance_below",
        threshold=100,
        webhook_url="https://example.com/hook",
    )
    session.commit()
    with Session(engine) as s, s.begin():
        book = billing.book_in_force(s, "free")
        quote = billing.quote_job(book, ["model"])
        jobs = [make_job(s.connection(), user, credit_cost=quote.total) for _ in range(16)]
    barrier = threading.Barrier(16)
    failures: list[BaseException] = []

    def charge(job_id: uuid.UUID) -> None:
        try:
            with Session(engine) as s:
                barrier.wait(timeout=30)
                credits.charge_job(s, job_id, lock_timeout_ms=30000)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=charge, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures
    assert scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user) == 0
    events = _events(sql, alert.id)
    assert len(events) == 1
    assert events[0][2] < 100 and events[0][2] >= 100 - 11


# =====================================================================================
# delivery: signed, retried with backoff, every attempt recorded
# =====================================================================================
class _Receiver(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append((dict(self.headers), body))
        code = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"answers": [], "received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()


def test_a_failed_delivery_is_retried_and_every_attempt_recorded(engine, sql, session, receiver):
    url, handler = receiver
    handler.answers = [500, 503]
    user = make_user(sql)
    give(engine, user, 100)
    alert, secret = billing.create_alert(
        session, user_id=user, kind="balance_below", threshold=50, webhook_url=url, allow_http=True
    )
    session.commit()
    give(engine, user, -60)
    first = billing.deliver_alerts(engine, base_delay_s=0)
    assert (first.delivered, first.retried) == (0, 1)
    # Not due yet with a real backoff: nothing is attempted.
    sql("UPDATE billing_alert_events SET next_attempt_at = now() + interval '1 hour'")
    assert billing.deliver_alerts(engine, base_delay_s=0).retried == 0
    sql("UPDATE billing_alert_events SET next_attempt_at = now()")
    assert billing.deliver_alerts(engine, base_delay_s=0).retried == 1
    assert billing.deliver_alerts(engine, base_delay_s=0).delivered == 1
    assert billing.deliver_alerts(engine, base_delay_s=0).delivered == 0  # done
    attempts = sql(
        "SELECT attempt, status_code, succeeded FROM billing_alert_deliveries"
        " WHERE alert_id = :a ORDER BY attempt",
        a=alert.id,
    )
    assert [tuple(r) for r in attempts] == [(1, 500, False), (2, 503, False), (3, 200, True)]
    assert sql("SELECT status::text, attempts FROM billing_alert_events")[0] == ("delivered", 3)
    headers, body = handler.received[-1]
    # Signed like Stripe's webhooks: the stripe library verifies it.
    stripe.WebhookSignature.verify_header(body, headers["Billing-Signature"], secret, 300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body, headers["Billing-Signature"], "whsec_x", 300)
    assert json.loads(body)["balance"] == 40


def test_an_unreachable_receiver_fails_after_max_attempts(engine, sql, session):
    user = make_user(sql)
    give(engine, user, 100)
    alert, _ = billing.create_alert(
        session,
        user_id=user,
        kind="balance_below",
        threshold=50,
        webhook_url="http://127.0.0.1:9/nothing",
        allow_http=True,
    )
    session.commit()
    give(engine, user, -60)
    for _ in range(3):
        billing.deliver_alerts(engine, base_delay_s=0, max_attempts=3)
    assert sql("SELECT status::text, attempts FROM billing_alert_events")[0] == ("failed", 3)
    errs = sql(
        "SELECT status_code, error FROM billing_alert_deliveries WHERE alert_id = :a", a=alert.id
    )
    assert len(errs) == 3 and all(r[0] is None and r[1] for r in errs)
    assert billing.backoff(1, 30) == 30 and billing.backoff(3, 30) == 120
    assert billing.backoff(30, 30) == 3600


# =====================================================================================
# reconciliation runs
# =====================================================================================
def test_verify_and_repair_are_recorded(engine, sql):
    user = make_user(sql)
    # Drift a counter (the guard lets the owner's flagged write through), then repair.
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE users DISABLE TRIGGER USER"))
        conn.execute(text("UPDATE users SET dataset_count = 7 WHERE id = :u"), {"u": user})
        conn.execute(text("ALTER TABLE users ENABLE TRIGGER USER"))
    started = dt.datetime.now(dt.UTC)
    report = verify(engine)
    run = billing.record_reconciliation(engine, report, source="test", started_at=started)
    repaired = verify(engine, repair=True)
    run2 = billing.record_reconciliation(
        engine, repaired, source="test", started_at=started, repair=True
    )
    r1 = sql(
        "SELECT kind::text, ok, drift_count, findings FROM reconciliation_runs WHERE id = :r", r=run
    )[0]
    assert r1[0] == "verify" and r1[1] is False and r1[2] == 1
    assert r1[3][0]["check"] == "dataset_count" and r1[3][0]["user_id"] == str(user)
    r2 = sql(
        "SELECT kind::text, ok, repaired_count FROM reconciliation_runs WHERE id = :r", r=run2
    )[0]
    assert tuple(r2) == ("repair", True, 1)
    adj = sql(
        "SELECT user_id, table_name, row_id, column_name, old_value, new_value, reason"
        " FROM reconciliation_adjustments WHERE run_id = :r",
        r=run2,
    )
    assert [tuple(a[:6]) for a in adj] == [(user, "users", None, "dataset_count", 7, 0)]
    assert "users.dataset_count drifted" in adj[0][6] and "counted again" in adj[0][6]


def test_the_apps_role_records_runs_but_never_rewrites_them(app_engine, sql):
    with Session(app_engine) as s, s.begin():
        run = billing.record_reconciliation(
            s, verify(s), source="worker", started_at=dt.datetime.now(dt.UTC)
        )
    with pytest.raises(errors.PermissionDenied), app_engine.begin() as conn:
        conn.execute(text("UPDATE reconciliation_runs SET ok = false WHERE id = :r"), {"r": run})
    with pytest.raises(errors.PermissionDenied), app_engine.begin() as conn:
        conn.execute(text("DELETE FROM reconciliation_runs"))
    assert scalar(sql, "SELECT count(*) FROM reconciliation_runs") == 1


def test_the_jobs_price_lines_are_read_through_select(session):
    assert session.scalars(select(JobPriceItem)).all() == []


# =====================================================================================
# the ledger's weight: partial indexes still serve every foreign key and rule
# =====================================================================================
@pytest.mark.parametrize(
    ("where", "index"),
    [
        ("package_id = :v", "ix_credit_transactions_package_id"),
        ("job_id = :v", "uq_credit_transactions_job_id_type"),
        ("job_id = :v AND type = 'consumption'", "uq_credit_transactions_job_id_type"),
        ("stripe_payment_id = CAST(:v AS text)", "uq_credit_transactions_stripe_payment_id"),
    ],
)
def test_the_sparse_columns_partial_indexes_serve_their_lookups(engine, where, index):
    """The lookups of the foreign keys' checks (a package or job deleted) and of the
    triggers (a payment id seen before) use the partial indexes: ``col = value``
    implies ``col IS NOT NULL``."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        conn.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        conn.execute(
            text(
                f"PREPARE q(uuid) AS SELECT 1 FROM credit_transactions WHERE "
                f"{where.replace(':v', '$1')}"
            )
        )
        plan = "\n".join(
            r[0]
            for r in conn.execute(text("EXPLAIN EXECUTE q('00000000-0000-0000-0000-000000000000')"))
        )
        conn.execute(text("DEALLOCATE q"))
    assert index in plan, plan


def test_a_duplicate_payment_is_still_refused(engine, sql):
    from factories import make_credit_package

    user = make_user(sql)
    pkg = make_credit_package(sql, credits=10)
    with Session(engine) as s:
        credits.purchase(s, user, pkg, "pi_dup")
    with pytest.raises(errors.DuplicatePayment):
        sql(
            "INSERT INTO credit_transactions (user_id, type, amount, package_id,"
            " stripe_payment_id) VALUES (:u, 'purchase', 10, :p, 'pi_dup')",
            u=user,
            p=pkg,
        )
    with pytest.raises(errors.ReferenceViolation):
        sql("DELETE FROM credit_packages WHERE id = :p", p=pkg)


def test_purge_removes_a_users_alerts_and_unbilled_price_lines_keeps_invoices(engine, sql, session):
    from database import lifecycle

    user = make_user(sql)
    give(engine, user, 100)
    alert, _ = billing.create_alert(
        session,
        user_id=user,
        kind="balance_below",
        threshold=50,
        webhook_url="https://example.com/h",
    )
    session.commit()
    give(engine, user, -60)
    billing.deliver_alerts(engine, post=lambda *a: (500, "HTTP 500"), base_delay_s=0)
    charged = priced_job(engine, sql, user, ["model"])
    with Session(engine) as s, s.begin():
        quote = billing.quote_job(billing.book_in_force(s, "free"), ["save"])
        unbilled = make_job(s.connection(), user, credit_cost=0)
        billing.record_job_prices(s, unbilled, quote)
    sql(
        "INSERT INTO billing_invoices (user_id, stripe_id, amount_cents, currency, status)"
        " VALUES (:u, 'in_purge', 100, 'usd', 'paid')",
        u=user,
    )
    sql(
        "UPDATE users SET is_deleted = true, deleted_at = now() - interval '40 days' WHERE id = :u",
        u=user,
    )
    lifecycle.purge(engine, batch_size=2)
    for table in ("billing_alerts", "billing_alert_events", "billing_alert_deliveries"):
        assert scalar(sql, f"SELECT count(*) FROM {table}") == 0, table
    left = {r[0] for r in sql("SELECT job_id FROM job_price_items")}
    assert left == {charged}  # the charged job keeps what it cost; the other is gone
    assert scalar(sql, "SELECT count(*) FROM billing_invoices") == 1
    assert scalar(sql, "SELECT purged_at IS NOT NULL FROM users WHERE id = :u", u=user)


def test_invoices_are_idempotent_and_never_change_owner(sql, session):
    a, b = make_user(sql), make_user(sql)
    obj = {"id": "cs_1", "invoice": "in_1", "amount_total": 500, "currency": "EUR"}
    first = billing.record_checkout(session, a, obj, None)
    assert billing.record_checkout(session, a, obj, None) == first
    assert billing.record_checkout(session, b, obj, None) is None
    session.commit()
    assert sql("SELECT user_id, currency, amount_cents FROM billing_invoices")[0] == (a, "eur", 500)
    with pytest.raises(billing.InvoiceOwnerUnknown):
        billing.record_invoice(session, {"id": "in_2", "metadata": {"user_id": "nope"}})
    with pytest.raises(billing.InvoiceOwnerUnknown):
        billing.record_invoice(session, {"id": "in_2", "metadata": {"user_id": str(uuid.uuid4())}})
    with pytest.raises(billing.InvoiceOwnerUnknown):
        billing.record_invoice(session, {"metadata": {"user_id": str(a)}})
    # Malformed fields are dropped, not stored: a negative amount, a bad period, a NUL-free check.
    new = billing.record_invoice(
        session,
        {
            "id": "in_3",
            "status": "weird",
            "amount_due": -5,
            "period_start": 10**20,
            "period_end": "x",
            "currency": 12,
            "metadata": {"user_id": str(b)},
        },
    )
    session.commit()
    row = sql(
        "SELECT status::text, amount_cents, period_start, currency FROM billing_invoices"
        " WHERE id = :i",
        i=new,
    )[0]
    assert tuple(row) == ("open", 0, None, "usd")


def test_the_apps_role_runs_the_whole_billing_path(app_engine, engine, sql):
    """Connected as the apps' role: price and record a run, charge it, fire and deliver
    an alert, cache an invoice, read a statement; and never write a job's lines twice."""
    user = make_user(sql)
    give(engine, user, 100)
    with Session(app_engine, expire_on_commit=False) as s:
        alert, _ = billing.create_alert(
            s, user_id=user, kind="balance_below", threshold=95, webhook_url="https://example.com/h"
        )
        s.commit()
    job = priced_job(app_engine, sql, user, ["model"])
    assert (
        scalar(sql, "SELECT count(*) FROM billing_alert_events WHERE alert_id = :a", a=alert.id)
        == 1
    )
    assert billing.deliver_alerts(app_engine, post=lambda *a: (200, None)).delivered == 1
    with Session(app_engine) as s:
        billing.record_checkout(s, user, {"id": "cs_app", "amount_total": 1}, None)
        s.commit()
        st = billing.statement(s, user, dt.datetime.now(dt.UTC).date().replace(day=1))
        assert st.closing_balance == 89 and st.charges == {"job": 1, "model": 10}
    with pytest.raises(errors.JobPriceImmutable), app_engine.begin() as conn:
        conn.execute(text("UPDATE job_price_items SET quantity = 9 WHERE job_id = :j"), {"j": job})


# =====================================================================================
# metered use is priced by the book in force for the user's tier (c16b00000001)
# =====================================================================================
def _usage(engine: Engine, user: uuid.UUID, sku: str, rows: int, key: str, price: int = 7) -> None:
    """A usage event as any client writes it, raw SQL, with a made-up unit price."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO usage_events (user_id, sku, quantity, unit_price_micro,"
                " idempotency_key) VALUES (:u, CAST(:s AS usage_sku), :q, :p, :k)"
            ),
            {"u": user, "s": sku, "q": rows, "p": price, "k": key},
        )


def test_usage_is_priced_by_the_book_in_force_for_the_users_tier(engine, sql, session):
    from database import metering

    free, pro = make_user(sql), make_user(sql, tier="pro")
    billing.set_prices(session, tier="pro", prices={"predicted_rows": 3, "batch_rows": 2})
    session.commit()
    _usage(engine, free, "predicted_rows", 1000, "u-free")
    _usage(engine, pro, "predicted_rows", 1000, "u-pro")
    _usage(engine, pro, "batch_rows", 1000, "u-pro-batch")
    prices = dict(
        sql(
            "SELECT idempotency_key, unit_price_micro FROM usage_events WHERE user_id IN (:a, :b)",
            a=free,
            b=pro,
        )
    )
    # The client's 7 is replaced: credits per 1,000 rows x 1,000 micro-credits per row.
    assert prices == {"u-free": 1000, "u-pro": 3000, "u-pro-batch": 2000}
    # The function metering's admission and summaries read gives the same prices.
    assert metering.prices(engine, tier="pro") == metering.Prices(
        predicted_rows_per_1000=3, batch_rows_per_1000=2
    )
    assert metering.prices(engine, tier="free").predicted_rows_per_1000 == 1
    assert metering.prices(engine).predicted_rows_per_1000 == 3  # the highest of the tiers
    assert metering.unit_price_micro("predicted_rows", engine, user_id=pro) == 3000
    assert metering.unit_price_micro("batch_rows", engine, user_id=free) == 1000


def test_a_price_change_applies_to_usage_recorded_after_it_never_before(engine, sql, session):
    from database import metering

    user = make_user(sql)
    give(engine, user, 100)
    _usage(engine, user, "predicted_rows", 2000, "before-1")
    metering.charge_usage(engine, user_id=user, through=dt.datetime.now(dt.UTC))
    _usage(engine, user, "predicted_rows", 3000, "before-2")  # recorded, not charged yet
    charged_before = sql(
        "SELECT id, amount, balance_after FROM credit_transactions"
        " WHERE user_id = :u AND type = 'consumption'",
        u=user,
    )
    assert [r.amount for r in charged_before] == [-2]
    billing.set_prices(session, tier="free", prices={"predicted_rows": 10})
    session.commit()
    _usage(engine, user, "predicted_rows", 1000, "after-1")
    metering.charge_usage(engine, user_id=user, through=dt.datetime.now(dt.UTC))
    by_key = dict(
        sql("SELECT idempotency_key, unit_price_micro FROM usage_events WHERE user_id = :u", u=user)
    )
    assert by_key == {"before-1": 1000, "before-2": 1000, "after-1": 10_000}
    # The charge before the change is untouched; the next one is 3 credits at the old
    # price plus 10 at the new.
    entries = sql(
        "SELECT id, amount FROM credit_transactions WHERE user_id = :u AND type = 'consumption'"
        " ORDER BY created_at",
        u=user,
    )
    assert entries[0].id == charged_before[0].id and entries[0].amount == -2
    assert sum(-e.amount for e in entries[1:]) == 3 + 10
    assert scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user) == 100 - 15


def test_usage_without_a_price_book_is_refused(engine, sql, session):
    user = make_user(sql, tier="enterprise")
    session.execute(
        text(
            "UPDATE price_books SET effective_to = now() WHERE tier = 'enterprise'"
            " AND effective_to IS NULL"
        )
    )
    session.commit()
    with pytest.raises(errors.NoPriceBook):
        _usage(engine, user, "predicted_rows", 10, "no-book")


# =====================================================================================
# a slow receiver: delivery is bounded and holds nothing in the database meanwhile
# =====================================================================================
class _SlowReceiver(http.server.BaseHTTPRequestHandler):
    release = threading.Event()
    arrived = threading.Event()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).arrived.set()
        type(self).release.wait(60)  # answers only when the test says so
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_receiver() -> Iterator[tuple[str, type[_SlowReceiver]]]:
    handler = type(
        "SlowReceiver",
        (_SlowReceiver,),
        {"release": threading.Event(), "arrived": threading.Event()},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow", handler
    handler.release.set()
    server.shutdown()
    server.server_close()


def _alert_fired(engine: Engine, sql: Any, session: Session, url: str) -> uuid.UUID:
    user = make_user(sql)
    give(engine, user, 100)
    alert, _ = billing.create_alert(
        session, user_id=user, kind="balance_below", threshold=50, webhook_url=url, allow_http=True
    )
    session.commit()
    give(engine, user, -60)
    return alert.id


def test_a_receiver_that_does_not_answer_is_a_failed_attempt_within_the_timeout(
    engine, sql, session, slow_receiver
):
    url, handler = slow_receiver
    alert = _alert_fired(engine, sql, session, url)
    report = billing.deliver_alerts(engine, timeout_s=0.5)
    # Returned while the receiver still holds the request: it was never answered.
    assert handler.arrived.is_set() and not handler.release.is_set()
    assert (report.delivered, report.retried) == (0, 1)
    [(status, error, ok)] = sql(
        "SELECT status_code, error, succeeded FROM billing_alert_deliveries WHERE alert_id = :a",
        a=alert,
    )
    assert (status, ok) == (None, False) and "no answer within 0.5 s" in error
    # No transaction or row lock was left open for the receiver: the event is
    # pending, and can be read and locked at once.
    assert (
        sql(
            "SELECT status::text FROM billing_alert_events WHERE alert_id = :a FOR UPDATE NOWAIT",
            a=alert,
        )[0][0]
        == "pending"
    )


def test_a_post_whose_socket_times_out_says_no_answer_like_the_deadline(slow_receiver):
    """The poster's own socket timeout and the batch's deadline are the same length:
    on a loaded machine either may fire first, and the attempt's error must read the
    same ("no answer within N s"), not a TimeoutError's text."""
    url, handler = slow_receiver
    status, error = billing._post(url, b"{}", {"Content-Type": "application/json"}, 0.3)
    assert handler.arrived.is_set()
    assert status is None and error == "no answer within 0.3 s"


def test_claimed_events_are_leased_so_two_deliveries_never_post_one_event_twice(
    engine, sql, session, receiver
):
    url, handler = receiver
    _alert_fired(engine, sql, session, url)
    posted: list[str] = []

    def post(u: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        posted.append(headers["Billing-Event-Id"])
        # A second delivery while this one is in flight finds nothing due.
        assert billing.deliver_alerts(engine, post=lambda *a: (200, None)).delivered == 0
        return 500, "HTTP 500"

    assert billing.deliver_alerts(engine, post=post, base_delay_s=0).retried == 1
    assert len(posted) == 1


def test_the_apps_role_reads_a_users_metered_price_and_cannot_forge_one(app_engine, sql):
    from database import metering

    user = make_user(sql, tier="pro")
    assert metering.unit_price_micro("predicted_rows", app_engine, user_id=user) == 1000
    _usage(app_engine, user, "predicted_rows", 10, "app-usage", price=0)
    assert (
        scalar(sql, "SELECT unit_price_micro FROM usage_events WHERE idempotency_key = 'app-usage'")
        == 1000
    )
