"""Issue 14, metering: the request log, usage, aggregate charges, 402, key quotas.

Every rule is tried through raw SQL as the owner, through the ORM, and as the apps'
role where privileges matter; the concurrent ones with threads on two engines (two
pools: what two API processes are to the database).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, delete, select, text, update
from sqlalchemy.orm import Session

from database import credits, errors, metering
from database.models import (
    InferenceRequest,
    InferenceStatus,
    UsageCharge,
    UsageEvent,
)
from database.verify import verify

from factories import make_job, make_user, scalar

UTC = dt.UTC


@pytest.fixture(autouse=True)
def _prices(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Metered use is priced by the price book (migration c16a00000001's first book:
    # 1 credit per 1,000 predicted or batch rows).
    yield


@pytest.fixture
def second_engine(db_url: Any) -> Iterator[Engine]:
    """Another pool on the same database: a second API process, as far as it can tell."""
    eng = errors.install(create_engine(db_url, pool_size=10, max_overflow=20))
    yield eng
    eng.dispose()


def fund(engine: Engine, user_id: uuid.UUID, amount: int) -> None:
    with Session(engine) as s:
        credits.adjust(s, user_id, amount, "test credits", "tests")


def balance(sql: Any, user_id: uuid.UUID) -> int:
    return int(scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user_id))


def admit(bind: Engine, user_id: uuid.UUID, rows: int, **kw: Any) -> None:
    kw.setdefault("api_key_id", None)
    kw.setdefault("deployment_id", DEPLOYMENT)
    with Session(bind) as s:
        metering.admit(s, user_id=user_id, rows=rows, **kw)


def record(bind: Engine, user_id: uuid.UUID, rows: int, **kw: Any) -> None:
    kw.setdefault("api_key_id", None)
    kw.setdefault("deployment_id", DEPLOYMENT)
    kw.setdefault("model_version_id", uuid.uuid4())
    kw.setdefault("latency_ms", 3)
    kw.setdefault("status", InferenceStatus.OK)
    kw.setdefault("error_class", None)
    kw.setdefault("request_id", uuid.uuid4().hex)
    metering.record_request(bind, user_id=user_id, rows=rows, **kw)


def serve(bind: Engine, user_id: uuid.UUID, rows: int, **kw: Any) -> None:
    """What the predict route does: admit, (the model), record."""
    request_id = uuid.uuid4().hex
    admit(bind, user_id, rows, request_id=request_id, **kw)
    record(bind, user_id, rows, request_id=request_id, **kw)


def now_plus(seconds: float = 1) -> dt.datetime:
    return dt.datetime.now(UTC) + dt.timedelta(seconds=seconds)


DEPLOYMENT = uuid.UUID("00000000-0000-4000-8000-00000000d001")
OTHER_DEPLOYMENT = uuid.UUID("00000000-0000-4000-8000-00000000d002")


def usage_ok(engine: Engine) -> None:
    report = verify(engine)
    assert report.ok, report.render()


def log_row(sql: Any, user_id: uuid.UUID, at: str | None = None) -> None:
    cols = "user_id, deployment_id, rows, latency_ms, status"
    vals = ":u, :d, 1, 1, 'ok'"
    if at is not None:
        cols += ", created_at"
        vals += ", CAST(:at AS timestamptz)"
    sql(f"INSERT INTO inference_requests ({cols}) VALUES ({vals})", u=user_id, d=DEPLOYMENT, at=at)


# =====================================================================================
# append-only, for every client
# =====================================================================================
def test_the_request_log_is_append_only_for_the_owner(sql, engine):
    user = make_user(sql)
    record(engine, user, 5)
    partition = scalar(sql, "SELECT tableoid::regclass::text FROM inference_requests")
    assert partition.startswith("inference_requests_p")
    for statement in (
        "UPDATE inference_requests SET rows = 0",
        "DELETE FROM inference_requests",
        "TRUNCATE inference_requests",
        f"UPDATE {partition} SET rows = 0",
        f"DELETE FROM {partition}",
        f"TRUNCATE {partition}",
    ):
        with pytest.raises(errors.InferenceRequestsAppendOnly):
            sql(statement)
    with Session(engine) as s:
        row = s.scalars(select(InferenceRequest)).one()
        row.rows = 7
        with pytest.raises(errors.InferenceRequestsAppendOnly):
            s.commit()
        s.rollback()
        s.delete(s.scalars(select(InferenceRequest)).one())
        with pytest.raises(errors.InferenceRequestsAppendOnly):
            s.commit()
        s.rollback()
        with pytest.raises(errors.InferenceRequestsAppendOnly):
            s.execute(delete(InferenceRequest))
    assert scalar(sql, "SELECT rows FROM inference_requests") == 5


def test_usage_is_append_only_for_the_owner(sql, engine):
    user = make_user(sql)
    fund(engine, user, 10)
    serve(engine, user, 2500)
    metering.charge_usage(engine, through=now_plus())
    for table in ("usage_events", "usage_charges"):
        for statement in (
            f"UPDATE {table} SET quantity = 1",
            f"DELETE FROM {table}",
            f"TRUNCATE {table}",
        ):
            with pytest.raises(errors.UsageAppendOnly):
                sql(statement)
    with Session(engine) as s:
        with pytest.raises(errors.UsageAppendOnly):
            s.execute(update(UsageEvent).values(quantity=1))
        s.rollback()
        with pytest.raises(errors.UsageAppendOnly):
            s.execute(update(UsageCharge).values(credits=0))
        s.rollback()
        s.delete(s.scalars(select(UsageCharge)).one())
        with pytest.raises(errors.UsageAppendOnly):
            s.commit()
    usage_ok(engine)


def test_the_apps_role_may_only_read_and_append(sql, engine, app_engine):
    user = make_user(sql)
    fund(engine, user, 10)
    serve(app_engine, user, 1000)  # the whole path works as the apps' role
    metering.charge_usage(app_engine, through=now_plus())
    partition = scalar(sql, "SELECT tableoid::regclass::text FROM inference_requests")
    for statement in (
        "UPDATE inference_requests SET rows = 0",
        "DELETE FROM inference_requests",
        "TRUNCATE inference_requests",
        f"SELECT * FROM {partition}",
        f"DELETE FROM {partition}",
        f"DROP TABLE {partition}",
        "UPDATE usage_events SET quantity = 1",
        "DELETE FROM usage_charges",
        "TRUNCATE usage_events",
        "ALTER TABLE usage_events DISABLE TRIGGER usage_events_no_update_delete",
    ):
        with pytest.raises(errors.PermissionDenied), app_engine.begin() as conn:
            conn.execute(text(statement))
    sql("SELECT public.inference_requests_partition_for('2020-01-01 00:00+00')")
    with pytest.raises(errors.PermissionDenied):  # retention is the owner's (DDL)
        metering.drop_partitions_before(app_engine, dt.date(2020, 2, 1))
    assert scalar(sql, "SELECT count(*) FROM inference_requests") == 1
    assert scalar(sql, "SELECT count(*) FROM usage_charges") == 1
    assert balance(sql, user) == 9


# =====================================================================================
# partitions
# =====================================================================================
def test_partitions_are_made_ahead_and_on_demand(sql, engine, app_engine):
    now = dt.datetime.now(UTC)
    months = [
        (now.year + (now.month - 1 + i) // 12, (now.month - 1 + i) % 12 + 1) for i in range(5)
    ]
    names = [f"inference_requests_p{y:04d}{m:02d}" for y, m in months]
    have = {name for name, _, _ in metering.partitions(engine)}
    assert set(names[:3]) <= have  # the migration made this month and the next two
    made = metering.ensure_partitions(app_engine, months_ahead=4)  # the worker's call
    assert made == names[3:]
    assert metering.ensure_partitions(app_engine, months_ahead=4) == []
    with pytest.raises(errors.InvalidValue):
        metering.ensure_partitions(engine, months_ahead=-1)

    # A row whose month has no partition makes it: no request is lost.
    user = make_user(sql)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {names[0]}"))
    record(app_engine, user, 3)
    assert scalar(sql, "SELECT tableoid::regclass::text FROM inference_requests") == names[0]
    # ... with its TRUNCATE guard.
    with pytest.raises(errors.InferenceRequestsAppendOnly):
        sql(f"TRUNCATE {names[0]}")


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati", "America/St_Johns"])
def test_months_are_utc_at_the_calendar_edges(sql, engine, zone):
    user = make_user(sql)
    edges = {
        "2030-12-31 23:59:59.999+00": "inference_requests_p203012",
        "2031-01-01 00:00:00+00": "inference_requests_p203101",
        "2032-02-29 12:00:00+00": "inference_requests_p203202",
        "2032-02-29 23:59:59.999999+00": "inference_requests_p203202",
        "2032-03-01 00:00:00+00": "inference_requests_p203203",
    }
    with engine.begin() as conn:
        conn.execute(text(f"SET LOCAL TIME ZONE '{zone}'"))
        for at in edges:
            conn.execute(
                text("SELECT public.inference_requests_partition_for(CAST(:at AS timestamptz))"),
                {"at": at},
            )
    for at, partition in edges.items():
        log_row(sql, user, at)
        got = scalar(
            sql,
            "SELECT tableoid::regclass::text FROM inference_requests"
            " WHERE created_at = CAST(:at AS timestamptz)",
            at=at,
        )
        assert got == partition, at
    bounds = {n: (a, b) for n, a, b in metering.partitions(engine)}
    assert bounds["inference_requests_p203202"] == (
        dt.datetime(2032, 2, 1, tzinfo=UTC),
        dt.datetime(2032, 3, 1, tzinfo=UTC),
    )


def test_retention_drops_whole_months_and_delete_stays_refused(sql, engine):
    user = make_user(sql)
    for at in ("2020-01-15 00:00+00", "2020-02-29 23:59:59+00", "2020-03-01 00:00+00"):
        sql("SELECT public.inference_requests_partition_for(CAST(:at AS timestamptz))", at=at)
        log_row(sql, user, at)
    record(engine, user, 1)  # this month's
    assert metering.drop_partitions_before(engine, dt.date(2020, 3, 1), dry_run=True) == [
        "inference_requests_p202001",
        "inference_requests_p202002",
    ]
    assert scalar(sql, "SELECT count(*) FROM inference_requests") == 4  # dry run
    # A bound inside March keeps March.
    dropped = metering.drop_partitions_before(engine, dt.datetime(2020, 3, 20, tzinfo=UTC))
    assert dropped == ["inference_requests_p202001", "inference_requests_p202002"]
    assert scalar(sql, "SELECT count(*) FROM inference_requests") == 2
    # Never the current month, whatever the date.
    metering.drop_partitions_before(engine, dt.date(9999, 1, 1))
    assert scalar(sql, "SELECT count(*) FROM inference_requests") == 1
    with pytest.raises(errors.InferenceRequestsAppendOnly):
        sql("DELETE FROM inference_requests")


# =====================================================================================
# admission: 402
# =====================================================================================
def test_a_user_who_cannot_pay_gets_payment_required(sql, engine):
    user = make_user(sql)
    with pytest.raises(errors.PaymentRequired) as refused:
        admit(engine, user, 1)
    assert refused.value.needed_micro == 1000 and refused.value.available_micro == 0
    fund(engine, user, 2)  # 2,000 rows
    serve(engine, user, 1500)
    with pytest.raises(errors.PaymentRequired):
        admit(engine, user, 501)  # 1,500 are owed, not yet charged
    serve(engine, user, 500)
    assert scalar(sql, "SELECT count(*) FROM usage_holds") == 0
    metering.charge_usage(engine, through=now_plus())
    assert balance(sql, user) == 0
    with pytest.raises(errors.PaymentRequired):
        admit(engine, user, 1)
    admit(engine, user, 0)  # nothing to pay
    with pytest.raises(errors.InvalidValue):
        admit(engine, user, -1)
    with pytest.raises(errors.MeteredUserNotFound):
        admit(engine, uuid.uuid4(), 1)
    usage_ok(engine)


def test_the_hold_is_priced_by_the_users_book(sql, engine, app_engine):
    """Admission holds what the rows will cost: the price of the book in force for
    the user's tier (billing_usage_price_micro), not the first book's estimate."""
    from database import billing

    free, pro = make_user(sql), make_user(sql, tier="pro")
    with Session(engine) as s:
        billing.set_prices(s, tier="free", prices={"predicted_rows": 3})
        billing.set_prices(s, tier="pro", prices={"predicted_rows": 5})
        s.commit()
    fund(engine, free, 3)  # 1,000 rows at 3 credits per 1,000
    fund(engine, pro, 10)
    admit(engine, free, 1000, request_id="f1")
    assert scalar(sql, "SELECT amount_micro FROM usage_holds WHERE user_id = :u", u=free) == (
        3_000_000
    )
    with pytest.raises(errors.PaymentRequired) as refused:
        admit(engine, free, 1)  # 3,000 micro-credits, none left (the first book: 1,000)
    assert refused.value.needed_micro == 3000 and refused.value.available_micro == 0
    # The same function through raw SQL as the apps' role: no amount -> the book's.
    with app_engine.begin() as conn:
        hold = conn.execute(
            text("SELECT public.usage_hold(:u, NULL, NULL, 7, NULL, 'p1', 600)"), {"u": pro}
        ).scalar_one()
    assert scalar(sql, "SELECT amount_micro FROM usage_holds WHERE id = :h", h=hold) == 35_000
    # An explicit amount is held as given; rows of no cost hold nothing.
    with app_engine.begin() as conn:
        given = conn.execute(
            text("SELECT public.usage_hold(:u, NULL, NULL, 7, 123, 'p2', 600)"), {"u": pro}
        ).scalar_one()
        nothing = conn.execute(
            text("SELECT public.usage_hold(:u, NULL, NULL, 0, NULL, 'p3', 600)"), {"u": pro}
        ).scalar_one()
    assert scalar(sql, "SELECT amount_micro FROM usage_holds WHERE id = :h", h=given) == 123
    assert nothing is None
    with pytest.raises(errors.MeteredUserNotFound):
        admit(engine, uuid.uuid4(), 1)
    # What it recorded is charged at that price, and usage still equals the ledger.
    record(engine, free, 1000, request_id="f1")
    assert scalar(sql, "SELECT count(*) FROM usage_holds WHERE user_id = :u", u=free) == 0
    metering.charge_usage(engine, through=now_plus())
    assert balance(sql, free) == 0
    usage_ok(engine)


def _leased_request(bind: Engine, leases: metering.CreditLeases, user: uuid.UUID) -> bool:
    """One 1-row request admitted from ``leases`` (a serving process's) and recorded
    at once; False when refused (402)."""
    with bind.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        try:
            leased = leases.take(conn, user, 1)
        except errors.PaymentRequired:
            return False
    rid = uuid.uuid4().hex
    record(bind, user, 1, request_id=rid, hold_id=leased.hold_id, leased_micro=leased.amount_micro)
    return True


def held(sql: Any, user: uuid.UUID) -> int:
    return int(
        scalar(
            sql, "SELECT coalesce(sum(amount_micro), 0) FROM usage_holds WHERE user_id = :u", u=user
        )
    )


def test_a_credit_lease_admits_locally_and_settles_exactly(sql, engine, app_engine):
    """A serving process's lease: one statement per block, as the apps' role; each
    record takes its part off the lease's hold; the unused part comes back at close."""
    user = make_user(sql)
    fund(engine, user, 10)
    leases = metering.CreditLeases(block_micro=100_000)  # 100 one-row requests
    for _ in range(150):
        assert _leased_request(app_engine, leases, user)
    assert leases.taken == 2
    # The first lease used up and recorded (nothing held), the second half used.
    assert held(sql, user) == 50_000 == leases.left(user)
    assert leases.close(app_engine) == 1
    assert held(sql, user) == 0
    assert scalar(sql, "SELECT count(*) FROM usage_holds WHERE user_id = :u", u=user) <= 1
    assert scalar(sql, "SELECT pending_micro FROM usage_meters WHERE user_id = :u", u=user) == (
        150_000
    )
    metering.sweep(engine)
    usage_ok(engine)
    # A user with no credits is refused by the lease's statement (before any model).
    broke = make_user(sql)
    with (
        app_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        pytest.raises(errors.PaymentRequired),
    ):
        leases.take(conn, broke, 1)
    assert held(sql, broke) == 0


def test_a_lease_shrinks_near_the_limit_and_gives_its_rest_back(sql, engine):
    user = make_user(sql)
    fund(engine, user, 1)  # 1,000 rows
    # Leases that expire at once: every take is a statement.
    leases = metering.CreditLeases(block_micro=10_000_000, seconds=0.0)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        first = leases.take(conn, user, 1)
        assert held(sql, user) == 250_000  # a quarter of what is available, not the block
        assert first.amount_micro == 1000
        # The next take gives the expired lease's unused part back in its statement.
        leases.take(conn, user, 1)
    # 1,000 of the first still held (its request is not recorded), and the new lease.
    assert held(sql, user) == 1000 + (1_000_000 - 1000) // 4
    # An expired lease is given back without a next request (the log's thread does it).
    assert leases.return_expired(engine) == 1
    assert held(sql, user) == 2000  # the two requests, not yet recorded
    assert leases.return_expired(engine) == 0


def test_credit_leases_in_two_processes_spend_the_balance_exactly(sql, engine, second_engine):
    """Two serving processes, each with its own leases, admitting one-row requests
    of one user until both are refused: exactly the balance is admitted, never more,
    and usage equals the ledger after the charge."""
    user = make_user(sql)
    fund(engine, user, 1)  # 1,000 rows at the first book's price
    admitted = [0, 0]

    def process(i: int, bind: Engine) -> None:
        leases = metering.CreditLeases(block_micro=50_000)
        refused = 0
        while refused < 3:
            if _leased_request(bind, leases, user):
                admitted[i] += 1
                refused = 0
            else:
                refused += 1
        leases.close(bind)

    threads = [
        threading.Thread(target=process, args=(i, e)) for i, e in enumerate([engine, second_engine])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 1000, admitted
    assert held(sql, user) == 0
    metering.charge_usage(engine, through=now_plus())
    assert balance(sql, user) == 0
    usage_ok(engine)


def test_a_failed_request_releases_its_hold_and_costs_nothing(sql, engine):
    user = make_user(sql)
    fund(engine, user, 1)
    admit(engine, user, 1000, request_id="r1")
    with pytest.raises(errors.PaymentRequired):
        admit(engine, user, 1)  # held
    # Recorded with other rows (the input failed to parse: 0 rows), by its request id.
    record(engine, user, 0, request_id="r1", status="client_error", error_class="ValueError")
    admit(engine, user, 1000, request_id="r2")
    record(engine, user, 1000, request_id="r2", status="server_error", error_class="OSError")
    admit(engine, user, 1000, request_id="r3")
    assert scalar(sql, "SELECT count(*) FROM usage_events") == 0
    statuses = sql("SELECT status::text FROM inference_requests ORDER BY created_at")
    assert [s[0] for s in statuses] == ["client_error", "server_error"]


def test_concurrent_admissions_in_two_processes_never_overspend(sql, engine, second_engine):
    user = make_user(sql)
    fund(engine, user, 10)  # 10,000 rows
    admitted: list[int] = []
    barrier = threading.Barrier(8)

    def client(i: int) -> None:
        eng = engine if i % 2 else second_engine
        barrier.wait()
        for _ in range(4):
            try:
                serve(eng, user, 1000)
                admitted.append(1)
            except errors.PaymentRequired:
                pass

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    assert len(admitted) == 10
    metering.charge_usage(engine, through=now_plus())
    assert balance(sql, user) == 0
    usage_ok(engine)


# =====================================================================================
# aggregation
# =====================================================================================
def test_usage_is_charged_in_aggregate_with_whole_credits_and_a_carry(sql, engine):
    user = make_user(sql)
    fund(engine, user, 100)
    for _ in range(3):
        serve(engine, user, 500, deployment_id=DEPLOYMENT)
    serve(engine, user, 700, deployment_id=OTHER_DEPLOYMENT)
    report = metering.charge_usage(engine, through=now_plus())
    # 1,500 rows -> 1 credit, carry 0.5; 700 more -> 1.2 -> 1 credit, carry 0.2.
    assert (report.charges, report.credits) == (2, 2)
    entries = sql(
        "SELECT amount FROM credit_transactions WHERE type = 'consumption' ORDER BY created_at"
    )
    assert [e.amount for e in entries] == [-1, -1]  # one per deployment, not per request
    assert scalar(sql, "SELECT pending_micro FROM usage_meters WHERE user_id = :u", u=user) == (
        200_000
    )
    serve(engine, user, 800, deployment_id=DEPLOYMENT)  # 0.2 + 0.8 = 1 credit
    assert metering.charge_usage(engine, through=now_plus()).credits == 1
    assert balance(sql, user) == 97
    assert scalar(sql, "SELECT pending_micro FROM usage_meters WHERE user_id = :u", u=user) == 0
    # Batch rows, recorded apart (a job's key), at their own price (the book's
    # batch_rows: 1 credit per 1,000 rows).
    assert metering.record_usage(
        engine, user_id=user, sku="batch_rows", quantity=4000, idempotency_key="job:1"
    )
    assert not metering.record_usage(
        engine, user_id=user, sku="batch_rows", quantity=4000, idempotency_key="job:1"
    )
    assert metering.charge_usage(engine, through=now_plus()).credits == 4
    assert balance(sql, user) == 93
    usage_ok(engine)


def test_the_worker_charges_closed_hours_only(sql, engine):
    user = make_user(sql)
    fund(engine, user, 10)
    serve(engine, user, 3000)
    report = metering.charge_usage(engine)  # the hour is still open
    assert report.charges == 0 and balance(sql, user) == 10
    # An hour later (the meter and the event moved back, as the owner: time travel).
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE usage_events DISABLE TRIGGER usage_events_no_update_delete"))
        conn.execute(text("UPDATE usage_events SET created_at = created_at - interval '1 hour'"))
        conn.execute(text("ALTER TABLE usage_events ENABLE TRIGGER usage_events_no_update_delete"))
        conn.execute(
            text("UPDATE usage_meters SET charged_through = charged_through - interval '1 hour'")
        )
    report = metering.maintenance(engine)
    assert report.charges.credits == 3 and balance(sql, user) == 7
    usage_ok(engine)


def test_aggregation_is_idempotent_under_retries_and_concurrency(sql, engine, second_engine):
    user = make_user(sql)
    fund(engine, user, 50)
    for i in range(20):
        serve(engine, user, 1000, deployment_id=DEPLOYMENT if i % 2 else OTHER_DEPLOYMENT)
    through = now_plus()
    barrier = threading.Barrier(6)

    def run(i: int) -> int:
        barrier.wait()
        return metering.charge_usage(engine if i % 2 else second_engine, through=through).credits

    with ThreadPoolExecutor(6) as pool:
        charged = list(pool.map(run, range(6)))
    assert sorted(charged) == [0, 0, 0, 0, 0, 20]
    assert metering.charge_usage(engine, through=through).credits == 0  # a retry
    assert balance(sql, user) == 30
    assert (
        scalar(
            sql,
            "SELECT count(*) FROM credit_transactions WHERE job_id IS NULL"
            " AND type = 'consumption'",
        )
        == 2
    )
    # The ledger entries carry neither key nor description (c16d00000001): both are
    # the usage charges' (the key unique there), the description derived for display.
    assert sql(
        "SELECT count(*) FROM credit_transactions WHERE job_id IS NULL"
        " AND type = 'consumption' AND (idempotency_key IS NOT NULL OR description IS NOT NULL)"
    ) == [(0,)]
    # A ledger charge of usage without its usage charge is refused at commit, whoever
    # writes it, and a second usage charge with a charge's key by its unique index.
    with pytest.raises(errors.UsageChargeUnaccounted):
        sql(
            "INSERT INTO credit_transactions (user_id, type, amount)"
            " VALUES (:u, 'consumption', -1)",
            u=user,
        )
    # No key is written since c16d00000001: (user, period start, deployment, sku) is
    # unique instead, a NULL deployment one value.
    assert sql("SELECT count(*) FROM usage_charges WHERE idempotency_key IS NOT NULL") == [(0,)]
    # A second charge of a period is refused, a NULL deployment being one value.
    with pytest.raises(errors.AlreadyExists):
        sql(
            "INSERT INTO usage_charges (user_id, deployment_id, sku, period_start,"
            " period_end, quantity, amount_micro, credits)"
            " SELECT user_id, deployment_id, sku, period_start,"
            " period_end + interval '1 second', 1, 0, 0"
            " FROM usage_charges WHERE user_id = :u LIMIT 1",
            u=user,
        )
    with pytest.raises(errors.AlreadyExists):
        sql(
            "INSERT INTO usage_charges (user_id, deployment_id, sku, period_start,"
            " period_end, quantity, amount_micro, credits)"
            " VALUES (:u, NULL, 'predicted_rows', '2026-01-01', '2026-01-02', 1, 0, 0),"
            " (:u, NULL, 'predicted_rows', '2026-01-01', '2026-01-03', 1, 0, 0)",
            u=user,
        )
    usage_ok(engine)


def test_usage_a_user_can_no_longer_pay_is_left_uncharged(sql, engine):
    user = make_user(sql)
    fund(engine, user, 5)
    serve(engine, user, 5000)
    job = make_job(sql, user, credit_cost=3)
    with Session(engine) as s:
        credits.charge_job(s, job)  # the credits went elsewhere meanwhile
    report = metering.charge_usage(engine, through=now_plus())
    assert user in report.unpaid and report.credits == 0
    assert balance(sql, user) == 2
    with pytest.raises(errors.PaymentRequired):
        admit(engine, user, 1)
    fund(engine, user, 10)
    assert metering.charge_usage(engine, through=now_plus()).credits == 5
    assert balance(sql, user) == 7
    usage_ok(engine)


def test_a_consumption_names_a_job_or_is_a_usage_charges(sql, engine):
    """Since c16d00000001 a charge of usage carries no key in the ledger: a jobless
    consumption is accounted for by its usage_charges row at commit (ML094,
    tests/test_ledger_weight.py), and a job's charge never carries a key."""
    user = make_user(sql)
    fund(engine, user, 5)
    job = make_job(sql, user_id=user)
    with pytest.raises(errors.UsageChargeUnaccounted):
        sql(
            "INSERT INTO credit_transactions (user_id, type, amount)"
            " VALUES (:u, 'consumption', -1)",
            u=user,
        )
    with pytest.raises(errors.InvalidValue):
        sql(
            "INSERT INTO credit_transactions (user_id, type, amount, job_id, idempotency_key)"
            " VALUES (:u, 'consumption', -1, :j, 'usage:x')",
            u=user,
            j=job,
        )
    with engine.begin() as conn:  # the declarative check too, with the trigger off
        conn.execute(
            text("ALTER TABLE credit_transactions DISABLE TRIGGER credit_tx_before_insert")
        )
        with pytest.raises(errors.InvalidValue):
            conn.execute(
                text(
                    "INSERT INTO credit_transactions"
                    " (user_id, type, amount, balance_after, job_id, idempotency_key)"
                    " VALUES (:u, 'consumption', -1, 0, :j, 'usage:x')"
                ),
                {"u": user, "j": job},
            )


# =====================================================================================
# recording
# =====================================================================================
def test_recording_a_request_twice_logs_and_bills_it_once(sql, engine):
    user = make_user(sql)
    fund(engine, user, 5)
    admit(engine, user, 100, request_id="same")
    record(engine, user, 100, request_id="same")
    record(engine, user, 100, request_id="same")
    assert scalar(sql, "SELECT count(*) FROM inference_requests") == 1
    assert scalar(sql, "SELECT count(*) FROM usage_events") == 1
    assert scalar(sql, "SELECT pending_micro FROM usage_meters") == 100_000


def test_an_insert_of_usage_on_conflict_do_nothing_moves_no_meter(sql, engine):
    user = make_user(sql)
    record(engine, user, 10, request_id="x")
    with pytest.raises(errors.UsageAlreadyRecorded):
        sql(
            "INSERT INTO usage_events (user_id, sku, quantity, unit_price_micro, idempotency_key)"
            " VALUES (:u, 'predicted_rows', 5, 1000, 'request:x:predicted_rows')"
            " ON CONFLICT DO NOTHING",
            u=user,
        )
    assert scalar(sql, "SELECT pending_micro FROM usage_meters") == 10_000


def test_record_refuses_bad_values(sql, engine):
    user = make_user(sql)
    for kw in ({"rows": -1}, {"status": "great"}, {"deployment_id": "nope"}):
        with pytest.raises((errors.InvalidValue, ValueError)):
            record(engine, user, **({"rows": 1} | kw))
    record(
        engine, user, 0, status="client_error", error_class="x" * 5000, request_id="\u00e9" * 300
    )
    assert scalar(sql, "SELECT char_length(error_class) FROM inference_requests") == 200


# =====================================================================================
# quotas, across two processes
# =====================================================================================
def _key(sql: Any, user: uuid.UUID, **cols: Any) -> uuid.UUID:
    sets = ", ".join(f"{k} = :{k}" for k in cols)
    key = scalar(
        sql,
        "INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES"
        " (:u, 'k', 'aml_x', md5(random()::text) || md5(random()::text)) RETURNING id",
        u=user,
    )
    sql(f"UPDATE api_keys SET {sets} WHERE id = :id", id=key, **cols)
    return key


def _race(engines: list[Engine], n: int, attempt: Callable[[Engine], None]) -> list[Any]:
    barrier = threading.Barrier(n)
    outcomes: list[Any] = []

    def client(i: int) -> None:
        barrier.wait()
        try:
            attempt(engines[i % len(engines)])
            outcomes.append("ok")
        except errors.QuotaExceeded as exc:
            outcomes.append(exc)

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(client, range(n)))
    return outcomes


def test_a_rate_limit_holds_exactly_across_two_processes(sql, engine, second_engine):
    user = make_user(sql)
    fund(engine, user, 100)
    key = _key(sql, user, rate_limit_per_minute=5)
    outcomes = _race([engine, second_engine], 12, lambda e: admit(e, user, 1, api_key_id=key))
    refused = [o for o in outcomes if o != "ok"]
    if len(outcomes) - len(refused) != 5:
        # The minute turned during the race: two windows, each of at most 5.
        assert len(outcomes) - len(refused) <= 10
        assert scalar(sql, "SELECT max(used) FROM api_key_usage_windows") == 5
    assert all(1 <= r.retry_after <= 60 and r.quota == "rate_limit_per_minute" for r in refused)


def test_a_monthly_row_quota_holds_exactly_and_refusals_count_nothing(sql, engine, second_engine):
    user = make_user(sql)
    fund(engine, user, 100)
    key = _key(sql, user, monthly_row_quota=1000)
    outcomes = _race([engine, second_engine], 8, lambda e: admit(e, user, 300, api_key_id=key))
    assert outcomes.count("ok") == 3
    refused = [o for o in outcomes if o != "ok"]
    assert all(r.quota == "monthly_row_quota" and r.retry_after >= 1 for r in refused)
    assert scalar(sql, "SELECT used FROM api_key_usage_windows WHERE period = 'month'") == 900
    admit(engine, user, 100, api_key_id=key)  # exactly up to the quota
    with pytest.raises(errors.QuotaExceeded):
        admit(engine, user, 1, api_key_id=key)
    # A 402 counts nothing against the key.
    poor = make_user(sql)
    poor_key = _key(sql, poor, monthly_row_quota=10, rate_limit_per_minute=1)
    with pytest.raises(errors.PaymentRequired):
        admit(engine, poor, 5, api_key_id=poor_key)
    assert (
        scalar(sql, "SELECT count(*) FROM api_key_usage_windows WHERE api_key_id = :k", k=poor_key)
        == 0
    )


def test_quota_columns_are_checked(sql):
    user = make_user(sql)
    for cols in ({"rate_limit_per_minute": 0}, {"monthly_row_quota": -1}):
        with pytest.raises(errors.InvalidValue):
            _key(sql, user, **cols)


# =====================================================================================
# verify: usage == ledger
# =====================================================================================
def _flow(sql: Any, engine: Engine) -> uuid.UUID:
    user = make_user(sql)
    fund(engine, user, 20)
    serve(engine, user, 2500)
    serve(engine, user, 1500, deployment_id=OTHER_DEPLOYMENT)
    metering.charge_usage(engine, through=now_plus())
    usage_ok(engine)
    return user


def test_verify_reports_a_ledger_charge_no_usage_accounts_for(sql, engine):
    user = _flow(sql, engine)
    # The database refuses one at commit since c16d00000001 (ML094); one written past
    # the triggers (a superuser's replica role) is still reported.
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text(
                "INSERT INTO credit_transactions (user_id, type, amount, balance_after)"
                " VALUES (:u, 'consumption', -2, 0)"
            ),
            {"u": user},
        )
    report = verify(engine)
    assert not report.ok and any("no usage charge accounts for" in p for _, p in report.usage)


def test_verify_reports_usage_charged_twice(sql, engine):
    user = _flow(sql, engine)
    sql(
        "INSERT INTO usage_charges (user_id, deployment_id, sku, period_start, period_end,"
        " quantity, amount_micro, credits)"
        " SELECT user_id, deployment_id, sku, period_start + interval '1 microsecond',"
        " period_end, quantity, 0, 0"
        " FROM usage_charges WHERE user_id = :u LIMIT 1",
        u=user,
    )
    problems = [p for _, p in verify(engine).usage]
    assert any("charged twice" in p for p in problems)
    assert any("covers" in p for p in problems)


def test_verify_reports_a_meter_and_events_that_disagree(sql, engine):
    user = _flow(sql, engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE usage_events DISABLE TRIGGER usage_events_before_insert"))
        conn.execute(
            text(
                "INSERT INTO usage_events (user_id, sku, quantity, unit_price_micro,"
                " idempotency_key, created_at) VALUES (:u, 'predicted_rows', 10, 1000, 'raw',"
                " now() - interval '1 day')"
            ),
            {"u": user},
        )
        conn.execute(text("ALTER TABLE usage_events ENABLE TRIGGER usage_events_before_insert"))
    problems = [p for _, p in verify(engine).usage]
    assert any("usage meter" in p for p in problems)
    assert any("never charged" in p for p in problems)
    assert verify(engine, user_ids=[make_user(sql)]).usage == []


def test_verify_reports_a_charge_whose_ledger_entry_is_missing(sql, engine):
    user = _flow(sql, engine)
    sql(
        "INSERT INTO usage_charges (user_id, deployment_id, sku, period_start, period_end,"
        " quantity, amount_micro, credits, ledger_entry_id, idempotency_key)"
        " VALUES (:u, NULL, 'batch_rows', now() + interval '1 day', now() + interval '2 days',"
        " 1, 0, 3, gen_random_uuid(), 'dangling')",
        u=user,
    )
    problems = [p for _, p in verify(engine).usage]
    assert any("does not exist" in p for p in problems)


def test_the_retention_command(sql, engine, db_url, monkeypatch, capsys):
    from database import cli

    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    cli.get_settings.cache_clear()
    try:
        user = make_user(sql)
        sql("SELECT public.inference_requests_partition_for('2021-06-10 00:00+00')")
        log_row(sql, user, "2021-06-10 00:00+00")
        assert cli.main(["inference-retention", "--before", "2021-07-01", "--dry-run"]) == 0
        assert "would drop 1 partition(s) of inference_requests: inference_requests_p202106" in (
            capsys.readouterr().out
        )
        assert scalar(sql, "SELECT count(*) FROM inference_requests") == 1
        assert cli.main(["inference-retention", "--before", "2021-07-01"]) == 0
        assert scalar(sql, "SELECT count(*) FROM inference_requests") == 0
        with pytest.raises(SystemExit):
            cli.main(["inference-retention", "--before", "July"])
        fund(engine, user, 3)
        serve(engine, user, 2000)
        assert cli.main(["charge-usage", "--now"]) == 0
        assert "2 credits" in capsys.readouterr().out
        assert balance(sql, user) == 1
    finally:
        cli.get_settings.cache_clear()


def test_record_and_admit_join_a_callers_open_transaction(sql, engine):
    user = make_user(sql)
    fund(engine, user, 1)
    name = scalar(sql, "SELECT tableoid::regclass::text FROM inference_requests LIMIT 1")
    assert name is None
    current = metering.partitions(engine)[0][0]
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {current}"))
    with Session(engine) as s:
        s.execute(text("SELECT 1"))  # the caller's transaction is open
        metering.admit(s, user_id=user, api_key_id=None, deployment_id=DEPLOYMENT, rows=10)
        # The month's partition is missing: made inside the caller's transaction.
        metering.record_request(
            s,
            user_id=user,
            api_key_id=None,
            deployment_id=DEPLOYMENT,
            model_version_id=None,
            rows=10,
            latency_ms=1.5,
            status="ok",
            error_class=None,
            request_id="in-tx",
        )
        # (Not read from another connection here: making the partition locked the
        # table until this transaction ends.)
        s.commit()
    assert scalar(sql, "SELECT count(*) FROM inference_requests") == 1
    assert scalar(sql, "SELECT count(*) FROM usage_holds") == 0
    assert scalar(sql, "SELECT pending_micro FROM usage_meters") == 10_000


def test_an_expired_hold_counts_for_nothing(sql, engine):
    user = make_user(sql)
    fund(engine, user, 1)
    sql(
        "INSERT INTO usage_holds (user_id, rows, amount_micro, expires_at)"
        " VALUES (:u, 1000, 1000000, now() - interval '1 second')",
        u=user,
    )
    admit(engine, user, 1000)  # the dead process's hold no longer counts
    with pytest.raises(errors.PaymentRequired):
        admit(engine, user, 1)
    assert metering.sweep(engine)[0] == 1


# =====================================================================================
# the request log in batches (RequestLog, record_requests)
# =====================================================================================
def _records(user_id: uuid.UUID, holds: list[uuid.UUID | None], rows: int = 10) -> list[Any]:
    return [
        metering.RequestRecord.make(
            user_id=user_id,
            api_key_id=None,
            deployment_id=DEPLOYMENT,
            model_version_id=None,
            rows=rows,
            latency_ms=2,
            status=InferenceStatus.OK,
            error_class=None,
            request_id=uuid.uuid4().hex,
            hold_id=hold,
        )
        for hold in holds
    ]


def test_a_batch_of_requests_is_one_statement_as_the_apps_role(sql, engine, app_engine):
    users = [make_user(sql), make_user(sql)]
    log = metering.RequestLog(app_engine, interval_s=3600)
    for user in users:
        fund(engine, user, 5)
        holds = []
        for _ in range(5):
            with Session(app_engine) as s:
                holds.append(
                    metering.admit(
                        s, user_id=user, api_key_id=None, deployment_id=DEPLOYMENT, rows=10
                    )
                )
        assert all(h is not None for h in holds)
        for r in _records(user, holds):
            log.add(r)
    refused = _records(users[0], [None])[0]
    log.add(
        metering.RequestRecord.make(
            **{
                **{k: getattr(refused, k) for k in ("user_id", "api_key_id", "deployment_id")},
                "model_version_id": None,
                "rows": 0,
                "latency_ms": 1,
                "status": InferenceStatus.REFUSED,
                "error_class": "payment_required",
                "request_id": None,
            }
        )
    )
    statements: list[str] = []
    listener = lambda *a: statements.append(a[2])  # noqa: E731
    from sqlalchemy import event

    event.listen(app_engine, "before_cursor_execute", listener)
    try:
        assert log.flush() == 11
    finally:
        event.remove(app_engine, "before_cursor_execute", listener)
    log.close()
    assert len(statements) == 1
    assert scalar(sql, "SELECT count(*) FROM inference_requests") == 11
    assert scalar(sql, "SELECT count(*) FROM usage_holds") == 0
    assert scalar(sql, "SELECT sum(quantity) FROM usage_events") == 100
    assert scalar(sql, "SELECT sum(pending_micro) FROM usage_meters") == 100_000
    usage_ok(engine)


def test_a_batch_written_twice_logs_and_bills_each_request_once(sql, engine):
    user = make_user(sql)
    batch = _records(user, [None, None, None])
    assert metering.record_requests(engine, batch) == 3
    # The commit's answer was lost and the batch is written again: nothing new.
    assert metering.record_requests(engine, batch + batch[:1]) == 0
    assert scalar(sql, "SELECT count(*) FROM inference_requests") == 3
    assert scalar(sql, "SELECT count(*) FROM usage_events") == 3
    assert scalar(sql, "SELECT pending_micro FROM usage_meters") == 30_000
    usage_ok(engine)


def test_a_record_refused_for_its_values_is_dropped_alone(sql, engine):
    user = make_user(sql)
    good = _records(user, [None, None])
    ghost = _records(uuid.uuid4(), [None])  # no such user: its usage is refused
    log = metering.RequestLog(engine, interval_s=3600)
    for r in [good[0], *ghost, good[1]]:
        log.add(r)
    log.flush()
    log.close()
    assert log.dropped == 1 and len(log) == 0
    assert scalar(sql, "SELECT count(*) FROM inference_requests") == 2
    assert scalar(sql, "SELECT sum(quantity) FROM usage_events") == 20


def test_two_processes_logs_of_the_same_users_at_once(sql, engine, second_engine):
    """Two serving processes flushing batches of the same users concurrently: no
    deadlock (meters are locked in user order), every request logged and billed once."""
    users = [make_user(sql) for _ in range(4)]
    logs = [metering.RequestLog(e, interval_s=3600, batch_rows=25) for e in (engine, second_engine)]
    for i in range(200):
        logs[i % 2].add(_records(users[(i * 7) % 4], [None], rows=1)[0])
    barrier = threading.Barrier(2)

    def write(log: metering.RequestLog) -> int:
        barrier.wait()
        return log.flush()

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, logs))
    for log in logs:
        log.close()
    # (their threads took part of the work: batch_rows were waiting)
    assert [log.written for log in logs] == [100, 100] and [len(log) for log in logs] == [0, 0]
    assert scalar(sql, "SELECT count(*) FROM inference_requests") == 200
    assert scalar(sql, "SELECT sum(quantity) FROM usage_events") == 200
    usage_ok(engine)


# --- a batch's usage, one event per (user, deployment, key, sku) ----------------------
def _failed_error(record: metering.RequestRecord) -> metering.RequestRecord:
    return metering.RequestRecord.make(
        user_id=record.user_id,
        api_key_id=None,
        deployment_id=record.deployment_id,
        model_version_id=None,
        rows=0,
        latency_ms=1,
        status=InferenceStatus.CLIENT_ERROR,
        error_class="invalid_input",
        request_id=None,
    )


def test_a_batch_records_one_usage_event_per_user_deployment_key_and_sku(sql, engine, app_engine):
    users = [make_user(sql), make_user(sql)]
    log = metering.RequestLog(app_engine, interval_s=3600)
    records = _records(users[0], [None] * 4, rows=3) + _records(users[1], [None] * 2, rows=5)
    for r in [*records, _failed_error(records[0])]:
        log.add(r)
    assert log.flush() == 7
    log.close()
    assert scalar(sql, "SELECT count(*) FROM inference_requests") == 7
    events = sql("SELECT user_id, quantity, idempotency_key FROM usage_events ORDER BY quantity")
    assert sorted((e.user_id, e.quantity) for e in events) == sorted(
        [(users[0], 12), (users[1], 10)]
    )
    assert all(e.idempotency_key.startswith("batch:") for e in events)
    assert scalar(sql, "SELECT sum(pending_micro) FROM usage_meters") == 22_000
    usage_ok(engine)


def test_a_batch_written_again_under_its_id_is_skipped_whole(sql, engine):
    user = make_user(sql)
    batch = _records(user, [None, None, None])
    batch.append(_failed_error(batch[0]))
    batch_id = uuid.uuid4()
    assert metering.record_requests(engine, batch, batch_id=batch_id) == 4
    # The commit's answer was lost: the same batch again, then one by one.
    assert metering.record_requests(engine, batch, batch_id=batch_id) == 0
    for r in batch[:3]:
        assert metering.record_requests(engine, [r], batch_id=batch_id, aggregate=False) == 0
    assert scalar(sql, "SELECT count(*) FROM inference_requests") == 4
    assert scalar(sql, "SELECT count(*) FROM usage_events") == 1
    assert scalar(sql, "SELECT pending_micro FROM usage_meters") == 30_000
    # Written alone first (a one-by-one retry), then as the batch again: still once.
    other = _records(user, [None, None])
    other_id = uuid.uuid4()
    assert metering.record_requests(engine, other[:1], batch_id=other_id, aggregate=False) == 1
    assert metering.record_requests(engine, other, batch_id=other_id) == 1
    assert metering.record_requests(engine, other, batch_id=other_id) == 0
    assert scalar(sql, "SELECT sum(quantity) FROM usage_events") == 50
    usage_ok(engine)


class _LoseAnswers:
    """Make the request log's statements on ``engine`` fail as scripted: ``lost``
    commits whose answer never comes (an OperationalError after the statement ran,
    in autocommit: committed), then ``refused`` batches refused before running."""

    def __init__(self, engine: Engine, lost: int, refused: int) -> None:
        from sqlalchemy import event
        from sqlalchemy import exc as sa_exc

        self.lost, self.refused = lost, refused

        def before(conn, cursor, statement, params, context, many):  # noqa: ANN001, ANN202
            batch = "inference_requests" in statement and params.get("aggregate")
            if batch and self.refused and not self.lost:
                self.refused -= 1
                raise errors.InvalidValue("refused, for the test")

        def after(conn, cursor, statement, params, context, many):  # noqa: ANN001, ANN202
            if "inference_requests" in statement and self.lost:
                self.lost -= 1
                raise sa_exc.OperationalError(statement, params, Exception("answer lost"))

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)


@pytest.mark.parametrize("refused", [0, 1], ids=["retried as the batch", "retried one by one"])
def test_a_batch_whose_commit_answer_was_lost_is_billed_once(sql, db_url, engine, refused):
    """The RequestLog keeps a batch's id with its records across retries: written
    again whole (the same id, skipped), or, when that is refused, one by one (each
    record skipped because its batch's usage is recorded): billed once either way."""
    own = errors.install(create_engine(db_url, pool_size=2))
    try:
        user = make_user(sql)
        log = metering.RequestLog(own, interval_s=3600)
        for r in _records(user, [None] * 5, rows=2):
            log.add(r)
        _LoseAnswers(own, lost=1, refused=refused)
        with pytest.raises(Exception, match="answer lost"):
            log.flush()
        assert len(log) == 5  # kept, with their batch's id
        log.flush()
        log.close()
        assert log.dropped == 0 and len(log) == 0
        assert scalar(sql, "SELECT count(*) FROM inference_requests") == 5
        assert scalar(sql, "SELECT sum(quantity) FROM usage_events") == 10
        assert scalar(sql, "SELECT count(*) FROM usage_events") == 1
        usage_ok(engine)
    finally:
        own.dispose()
