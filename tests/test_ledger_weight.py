"""The ledger's weight (issue 16, migration c16d00000001).

A charge of usage (a consumption naming no job) carries neither the idempotency key
nor the description in the ledger: its ``usage_charges`` row holds both (the key
unique there) and must name the entry, its user and its credits at commit
(``credit_tx_usage_accounted``, ML094, ``UsageChargeUnaccounted``), whoever writes it:
raw SQL, the ORM, the apps' role. A purchase stores no description unless its caller
gives one; ``credits.describe`` derives both for display. The primary key fills its
pages to 100%. A Stripe payment credits once through a unique index on the payment
id's 64-bit key (c16f00000001): tried through raw SQL, the ORM, the apps' role, ON
CONFLICT on the key, and two or eight connections at once under each isolation level.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from database import credits, errors, metering
from database.models import CreditTransaction, Job, TransactionType, UsageCharge, UsageSku

from factories import make_credit_package, make_job, make_user, scalar

UTC = dt.UTC
START = dt.datetime(2026, 12, 7, 10, tzinfo=UTC)
END = dt.datetime(2026, 12, 7, 11, tzinfo=UTC)
DEPLOYMENT = uuid.UUID("00000000-0000-4000-8000-00000000d001")


def _funded(sql: Any, engine: Engine, amount: int = 100) -> uuid.UUID:
    user = make_user(sql)
    with Session(engine) as s:
        credits.adjust(s, user, amount, "test credits", "tests")
    return user


def _balance(sql: Any, user: uuid.UUID) -> int:
    return int(scalar(sql, "SELECT credit_balance FROM users WHERE id = :u", u=user))


ENTRY = (
    "INSERT INTO credit_transactions (id, user_id, type, amount)"
    " VALUES (:id, :u, 'consumption', :amount)"
)
CHARGE = (
    "INSERT INTO usage_charges (user_id, deployment_id, sku, period_start, period_end,"
    " quantity, amount_micro, credits, ledger_entry_id)"
    " VALUES (:u, :d, 'predicted_rows', :start, :end, 1200, :micro, :credits, :id)"
)


def _charge_params(user: uuid.UUID, entry: uuid.UUID, credits_: int, hour: int) -> dict[str, Any]:
    """A usage charge of ``hour`` hours after START (one charge per user, period start,
    deployment and sku: usage_charges' unique key since c16d00000001)."""
    return {
        "u": user,
        "d": DEPLOYMENT,
        "start": START + dt.timedelta(hours=hour),
        "end": END + dt.timedelta(hours=hour),
        "micro": credits_ * 1_000_000,
        "credits": credits_,
        "id": entry,
    }


# --- the rule: a ledger charge of usage is a usage charge's ------------------------------
def test_raw_sql_usage_entry_without_its_usage_charge_is_refused_at_commit(sql, engine):
    user = _funded(sql, engine)
    with pytest.raises(errors.UsageChargeUnaccounted) as info:
        sql(ENTRY, id=uuid.uuid4(), u=user, amount=-3)
    assert info.value.sqlstate == "ML094"
    assert "no usage charge accounts for" in str(info.value)
    assert _balance(sql, user) == 100  # the whole transaction rolled back
    # Refused as soon as asked when the constraint is made immediate.
    with engine.connect() as conn, conn.begin():
        conn.execute(text("SET CONSTRAINTS credit_tx_usage_accounted IMMEDIATE"))
        with pytest.raises(errors.UsageChargeUnaccounted):
            conn.execute(text(ENTRY), {"id": uuid.uuid4(), "u": user, "amount": -3})


def test_raw_sql_usage_entry_with_its_usage_charge_either_order(sql, engine):
    user = _funded(sql, engine)
    first, second = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:  # the entry first (metering's order)
        conn.execute(text(ENTRY), {"id": first, "u": user, "amount": -3})
        conn.execute(text(CHARGE), _charge_params(user, first, 3, 0))
    with engine.begin() as conn:  # or the usage charge first: checked at commit
        conn.execute(text(CHARGE), _charge_params(user, second, 2, 1))
        conn.execute(text(ENTRY), {"id": second, "u": user, "amount": -2})
    assert _balance(sql, user) == 95
    assert sql(
        "SELECT idempotency_key, description FROM credit_transactions WHERE id = ANY(:ids)",
        ids=[first, second],
    ) == [(None, None), (None, None)]


@pytest.mark.parametrize("what", ["credits", "user", "entry"])
def test_a_usage_charge_that_does_not_match_its_entry_is_refused(sql, engine, what):
    user = _funded(sql, engine)
    other = make_user(sql)
    entry = uuid.uuid4()
    params = _charge_params(user, entry, 3, 0)
    if what == "credits":
        params.update(credits=2, micro=2_000_000)
    elif what == "user":
        params.update(u=other)
    else:
        params.update(id=uuid.uuid4())
    with pytest.raises(errors.UsageChargeUnaccounted), engine.begin() as conn:
        conn.execute(text(ENTRY), {"id": entry, "u": user, "amount": -3})
        conn.execute(text(CHARGE), params)
    assert _balance(sql, user) == 100
    assert scalar(sql, "SELECT count(*) FROM usage_charges WHERE user_id = :u", u=params["u"]) == 0


def test_a_repeated_usage_charge_rolls_the_ledger_entry_back(sql, engine):
    """What the key said, usage_charges' unique (user, period start, deployment, sku)
    says in the entry's transaction."""
    user = _funded(sql, engine)
    entry = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(text(ENTRY), {"id": entry, "u": user, "amount": -3})
        conn.execute(text(CHARGE), _charge_params(user, entry, 3, 0))
    again = uuid.uuid4()
    with pytest.raises(errors.AlreadyExists), engine.begin() as conn:
        conn.execute(text(ENTRY), {"id": again, "u": user, "amount": -3})
        conn.execute(text(CHARGE), _charge_params(user, again, 3, 0))
    assert _balance(sql, user) == 97
    assert scalar(sql, "SELECT count(*) FROM credit_transactions WHERE id = :id", id=again) == 0


def test_a_jobs_charge_never_carries_a_key(sql, engine):
    user = _funded(sql, engine)
    job = make_job(sql, user_id=user)
    with pytest.raises(errors.InvalidValue):
        sql(
            "INSERT INTO credit_transactions (user_id, type, amount, job_id, idempotency_key)"
            " VALUES (:u, 'consumption', -1, :j, 'usage:x')",
            u=user,
            j=job,
        )
    assert _balance(sql, user) == 100


def test_orm_usage_entry_needs_its_usage_charge(sql, engine):
    user = _funded(sql, engine)
    with Session(engine) as s:
        s.add(CreditTransaction(user_id=user, type=TransactionType.CONSUMPTION, amount=-4))
        with pytest.raises(errors.UsageChargeUnaccounted):
            s.commit()
    with Session(engine) as s:
        entry = CreditTransaction(user_id=user, type=TransactionType.CONSUMPTION, amount=-4)
        s.add(entry)
        s.flush()
        s.add(
            UsageCharge(
                user_id=user,
                deployment_id=DEPLOYMENT,
                sku=UsageSku.PREDICTED_ROWS,
                period_start=START,
                period_end=END,
                quantity=4000,
                amount_micro=4_000_000,
                credits=4,
                ledger_entry_id=entry.id,
            )
        )
        s.commit()
        assert entry.balance_after == 96
        assert credits.describe(s, [entry]) == {
            entry.id: f"4000 predicted_rows of deployment {DEPLOYMENT},"
            f" {START.isoformat()} to {END.isoformat()}"
        }


def test_apps_role_usage_entry_needs_its_usage_charge(sql, engine, app_engine):
    user = _funded(sql, engine)
    with pytest.raises(errors.UsageChargeUnaccounted), app_engine.begin() as conn:
        conn.execute(text(ENTRY), {"id": uuid.uuid4(), "u": user, "amount": -3})
    entry = uuid.uuid4()
    with app_engine.begin() as conn:
        conn.execute(text(ENTRY), {"id": entry, "u": user, "amount": -3})
        conn.execute(text(CHARGE), _charge_params(user, entry, 3, 0))
    assert _balance(sql, user) == 97
    # The apps' role cannot switch the rule off (a superuser's replica role).
    with pytest.raises(errors.PermissionDenied), app_engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))


# --- metering writes it so ----------------------------------------------------------------
def _use(engine: Engine, user: uuid.UUID, rows: int, deployment: uuid.UUID = DEPLOYMENT) -> None:
    request_id = uuid.uuid4().hex
    with Session(engine) as s:
        metering.admit(
            s, user_id=user, rows=rows, api_key_id=None, deployment_id=deployment,
            request_id=request_id,
        )  # fmt: skip
    metering.record_request(
        engine,
        user_id=user,
        rows=rows,
        api_key_id=None,
        deployment_id=deployment,
        model_version_id=uuid.uuid4(),
        latency_ms=3,
        status="ok",
        error_class=None,
        request_id=request_id,
    )


def test_charge_usage_writes_slim_entries_described_from_usage_charges(sql, engine):
    user = _funded(sql, engine)
    _use(engine, user, 2500)
    report = metering.charge_usage(engine, through=dt.datetime.now(UTC) + dt.timedelta(seconds=1))
    assert report.credits == 2
    with Session(engine) as s:
        (entry,) = (
            s.query(CreditTransaction)
            .filter_by(user_id=user, job_id=None)
            .filter(CreditTransaction.type == TransactionType.CONSUMPTION)
        )
        assert (entry.amount, entry.idempotency_key, entry.description) == (-2, None, None)
        charge = s.query(UsageCharge).filter_by(ledger_entry_id=entry.id).one()
        assert (charge.deployment_id, charge.idempotency_key) == (DEPLOYMENT, None)
        described = credits.describe(s, [entry])[entry.id]
        assert described is not None and described.startswith(
            f"2500 predicted_rows of deployment {DEPLOYMENT}, "
        )
    from database.verify import verify

    assert verify(engine).ok


def test_concurrent_usage_charges_charge_once(sql, engine):
    user = _funded(sql, engine)
    _use(engine, user, 3000)
    through = dt.datetime.now(UTC) + dt.timedelta(seconds=1)
    barrier = threading.Barrier(4)
    reports: list[metering.ChargeReport] = []

    def run() -> None:
        barrier.wait()
        reports.append(metering.charge_usage(engine, user_id=user, through=through))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.credits for r in reports) == 3
    assert _balance(sql, user) == 97
    assert scalar(sql, "SELECT count(*) FROM usage_charges WHERE user_id = :u", u=user) == 1


# --- purchases -----------------------------------------------------------------------------
def test_purchase_description_is_derived_unless_given(sql, session):
    user = make_user(sql)
    package = make_credit_package(sql, credits=50, name="Starter")
    plain = credits.purchase(session, user, package, "pi_weight_1")
    given = credits.purchase(session, user, package, "pi_weight_2", description="a gift")
    assert (plain.description, given.description) == (None, "a gift")
    assert credits.describe(session, [plain, given]) == {
        plain.id: "purchase of Starter",
        given.id: "a gift",
    }
    assert credits.describe(session, []) == {}


# --- the primary key's fill ----------------------------------------------------------------
def test_the_ledgers_primary_key_fills_its_pages(sql):
    assert sql(
        "SELECT reloptions FROM pg_class WHERE oid = 'pk_credit_transactions'::regclass"
    ) == [(["fillfactor=100"],)]


# --- a job's entries: keyed by (job_id, type), the owner tested by the trigger (c16e) ----
JOB_ENTRY = (
    "INSERT INTO credit_transactions (user_id, type, amount, job_id)"
    " VALUES (:u, CAST(:type AS transaction_type), :amount, :j)"
)
REASSIGN = "UPDATE jobs SET user_id = :t, workflow_snapshot_id = :s WHERE id = :j"


def _owner_thief_job(sql: Any, engine: Engine) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    owner, thief = _funded(sql, engine), _funded(sql, engine)
    return owner, thief, make_job(sql, user_id=owner, credit_cost=10)


def _snapshot(sql: Any, user: uuid.UUID) -> uuid.UUID:
    return scalar(
        sql,
        "INSERT INTO workflow_snapshots (user_id, snapshot_data) VALUES (:u, '{}') RETURNING id",
        u=user,
    )


def test_the_job_index_is_job_id_and_type_and_the_key_job_id_alone(sql):
    assert sql("SELECT pg_get_indexdef('uq_credit_transactions_job_id_type'::regclass)") == [
        (
            "CREATE UNIQUE INDEX uq_credit_transactions_job_id_type ON public.credit_transactions"
            " USING btree (job_id, type) WHERE (job_id IS NOT NULL)",
        )
    ]
    assert sql(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conname = 'fk_credit_transactions_job_id_jobs'"
    ) == [("FOREIGN KEY (job_id) REFERENCES jobs(id) ON DELETE RESTRICT",)]


@pytest.mark.parametrize("via", ["sql", "apps_role"])
def test_another_users_job_is_refused_raw_sql_and_apps_role(sql, engine, app_engine, via):
    owner, thief, job = _owner_thief_job(sql, engine)
    eng = engine if via == "sql" else app_engine
    with pytest.raises(errors.JobNotOwned) as info, eng.begin() as conn:
        conn.execute(text(JOB_ENTRY), {"u": thief, "type": "consumption", "amount": -5, "j": job})
    assert info.value.sqlstate == "ML095"
    assert f"job {job} is another user's" in str(info.value)
    with eng.begin() as conn:
        conn.execute(text(JOB_ENTRY), {"u": owner, "type": "consumption", "amount": -5, "j": job})
    # Its refund, once charged (an uncharged job's refund is ML004 first).
    with pytest.raises(errors.JobNotOwned) as info, eng.begin() as conn:
        conn.execute(text(JOB_ENTRY), {"u": thief, "type": "refund", "amount": 5, "j": job})
    assert info.value.sqlstate == "ML095"
    assert (_balance(sql, owner), _balance(sql, thief)) == (95, 100)
    # The owner's own refund goes through; nothing moved for the thief.
    with eng.begin() as conn:
        conn.execute(text(JOB_ENTRY), {"u": owner, "type": "refund", "amount": 5, "j": job})
    assert (_balance(sql, owner), _balance(sql, thief)) == (100, 100)
    # A job's owner never changes, charged or not, whoever asks (ML096).
    fresh = make_job(sql, user_id=owner)
    for j in (job, fresh):
        with pytest.raises(errors.JobOwnerImmutable) as info, eng.begin() as conn:
            conn.execute(text(REASSIGN), {"t": thief, "s": _snapshot(sql, thief), "j": j})
        assert info.value.sqlstate == "ML096"
    # Writing the same owner, or any other column, is not a change of owner.
    with eng.begin() as conn:
        conn.execute(text("UPDATE jobs SET user_id = user_id, credit_cost = 3 WHERE id = :j"),
                     {"j": fresh})  # fmt: skip
    assert scalar(sql, "SELECT user_id FROM jobs WHERE id = :j", j=job) == owner


def test_another_users_job_is_refused_through_the_orm(sql, engine):
    owner, thief, job = _owner_thief_job(sql, engine)
    with Session(engine) as s:
        s.add(CreditTransaction(user_id=thief, type=TransactionType.CONSUMPTION, amount=-5,
                                job_id=job))  # fmt: skip
        with pytest.raises(errors.JobNotOwned):
            s.flush()
    with Session(engine) as s:
        assert credits.charge_job(s, job) is not None  # its owner's
        with pytest.raises(errors.JobNotOwned):
            credits.refund_job(s, job, "not yours", user=thief)
        s.add(CreditTransaction(user_id=thief, type=TransactionType.REFUND, amount=5, job_id=job))
        with pytest.raises(errors.JobNotOwned):
            s.flush()
    with Session(engine) as s:
        db_job = s.get(Job, job)
        assert db_job is not None
        db_job.user_id = thief
        db_job.workflow_snapshot_id = _snapshot(sql, thief)
        with pytest.raises(errors.JobOwnerImmutable):
            s.flush()
    assert (_balance(sql, owner), _balance(sql, thief)) == (90, 100)


def test_a_job_charged_concurrently_by_its_owner_a_thief_and_a_reassignment(sql, engine):
    """Eight connections at once: four charge the job as its owner, three as another
    user, one moves the job to that user. One charge, the owner's; the thieves are
    refused (ML095, or the owner's charge first: JobAlreadyCharged), the move too."""
    owner, thief, job = _owner_thief_job(sql, engine)
    snap = _snapshot(sql, thief)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            with engine.begin() as conn:
                if i == 7:
                    conn.execute(text(REASSIGN), {"t": thief, "s": snap, "j": job})
                else:
                    user = owner if i < 4 else thief
                    conn.execute(
                        text(JOB_ENTRY), {"u": user, "type": "consumption", "amount": -10, "j": job}
                    )
            outcomes.append("owner" if i < 4 else "thief" if i < 7 else "moved")
        except errors.DatabaseError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("owner") == 1, outcomes
    assert "thief" not in outcomes and "moved" not in outcomes, outcomes
    assert outcomes.count("JobOwnerImmutable") == 1, outcomes
    assert set(outcomes) <= {"owner", "JobOwnerImmutable", "JobNotOwned", "JobAlreadyCharged"}
    assert (_balance(sql, owner), _balance(sql, thief)) == (90, 100)
    assert sql("SELECT user_id, amount FROM credit_transactions WHERE job_id = :j", j=job) == [
        (owner, -10)
    ]


# --- a refund of a job's end stores no reason: derived from the job (c16e) ---------------
def test_a_refund_of_a_jobs_end_stores_no_reason_and_is_described_from_the_job(sql, engine):
    user = _funded(sql, engine)
    failed = make_job(sql, user_id=user, credit_cost=4, status="failed", error_message="boom")
    bare = make_job(sql, user_id=user, credit_cost=3, status="failed")
    other = make_job(sql, user_id=user, credit_cost=2, status="cancelled")
    with Session(engine) as s:
        for job in (failed, bare, other):
            credits.charge_job(s, job)
        entries = [
            credits.refund_job(s, failed, "boom"),  # its error: not stored
            credits.refund_job(s, bare, "job failed"),  # no error: "job <status>"
            credits.refund_job(s, other, "cancelled before it started"),  # stored
        ]
        assert [e.description for e in entries] == [None, None, "cancelled before it started"]
        assert list(credits.describe(s, entries).values()) == [
            "boom",
            "job failed",
            "cancelled before it started",
        ]
        # A retry returns the first refund, whatever reason it gives.
        assert credits.refund_job(s, failed, "another reason").id == entries[0].id
    # Raw SQL may write a refund without a reason too; it is described the same way.
    raw = make_job(sql, user_id=user, credit_cost=1, status="failed", error_message="oom")
    sql(JOB_ENTRY, u=user, type="consumption", amount=-1, j=raw)
    sql(JOB_ENTRY, u=user, type="refund", amount=1, j=raw)
    with Session(engine) as s:
        (refund,) = s.query(CreditTransaction).filter_by(job_id=raw, type=TransactionType.REFUND)
        assert credits.describe(s, [refund]) == {refund.id: "oom"}
    assert _balance(sql, user) == 100


# --- a Stripe payment credits once: unique on the id's 64-bit key (c16f) ----------------
PURCHASE = (
    "INSERT INTO credit_transactions (user_id, type, amount, package_id, stripe_payment_id)"
    " VALUES (:u, 'purchase', 100, :p, :ref)"
)
PURCHASE_ON_CONFLICT = (
    PURCHASE + " ON CONFLICT ((hashtextextended(stripe_payment_id, 0)))"
    " WHERE stripe_payment_id IS NOT NULL DO NOTHING"
)


def _credited(sql: Any, ref: str) -> list[tuple[uuid.UUID, int]]:
    return sql(
        "SELECT user_id, amount FROM credit_transactions WHERE stripe_payment_id = :r", r=ref
    )


def test_the_payment_index_is_unique_on_the_ids_64_bit_key(sql):
    assert sql("SELECT pg_get_indexdef('uq_credit_transactions_stripe_payment_id'::regclass)") == [
        (
            "CREATE UNIQUE INDEX uq_credit_transactions_stripe_payment_id ON"
            " public.credit_transactions USING btree (hashtextextended(stripe_payment_id,"
            " (0)::bigint)) WHERE (stripe_payment_id IS NOT NULL)",
        )
    ]
    # No index of the text any more: every lookup by payment id names the key.
    assert not sql(
        "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = ANY (i.indkey) WHERE i.indrelid = 'credit_transactions'::regclass"
        " AND a.attname = 'stripe_payment_id'"
    )


@pytest.mark.parametrize("via", ["sql", "orm", "apps_role"])
def test_a_payment_credits_once_raw_sql_orm_and_apps_role(sql, engine, app_engine, via):
    """The same payment again, for its user or another, through each way in: refused
    (DuplicatePayment, by the trigger or the index), no credit moved; the same with
    the retry's ON CONFLICT on the key (it infers the index)."""
    first, other = make_user(sql), make_user(sql)
    package = make_credit_package(sql, credits=100)
    ref = f"pi_once_{via}"
    eng = app_engine if via == "apps_role" else engine
    with eng.begin() as conn:  # the retry's statement credits a new payment once
        conn.execute(text(PURCHASE_ON_CONFLICT), {"u": first, "p": package, "ref": ref})
    for user in (first, other):
        with pytest.raises(errors.DuplicatePayment) as info:
            if via == "orm":
                with Session(engine) as s:
                    s.add(
                        CreditTransaction(
                            user_id=user,
                            type=TransactionType.PURCHASE,
                            amount=100,
                            package_id=package,
                            stripe_payment_id=ref,
                        )
                    )
                    s.commit()
            else:
                with eng.begin() as conn:
                    conn.execute(text(PURCHASE), {"u": user, "p": package, "ref": ref})
        assert info.value.constraint == "uq_credit_transactions_stripe_payment_id"
        with contextlib.suppress(errors.DuplicatePayment), eng.begin() as conn:
            conn.execute(text(PURCHASE_ON_CONFLICT), {"u": user, "p": package, "ref": ref})
    assert _credited(sql, ref) == [(first, 100)]
    assert (_balance(sql, first), _balance(sql, other)) == (100, 0)


def test_a_payment_id_differing_only_in_case_or_space_is_another_payment(sql, engine):
    """The key is of the exact text (as the text's index was): no false duplicate."""
    user = make_user(sql)
    package = make_credit_package(sql, credits=100)
    refs = ["pi_Case", "pi_case", "pi_case ", "pi_cas\u00e9"]
    with engine.begin() as conn:
        for ref in refs:
            conn.execute(text(PURCHASE), {"u": user, "p": package, "ref": ref})
    assert _balance(sql, user) == 400


def test_lookups_by_payment_id_use_the_key_index(sql, engine):
    """credits.payment_is (the purchase's and the webhook's lookup) and the trigger's
    test find a payment through the index, not by reading the ledger."""
    stmt = select(CreditTransaction.id).where(credits.payment_is("pi_lookup"))
    compiled = stmt.compile(engine, compile_kwargs={"literal_binds": True})
    trigger_query = (
        "SELECT t.stripe_payment_id FROM credit_transactions AS t"
        " WHERE hashtextextended(t.stripe_payment_id, 0) = hashtextextended('pi_lookup', 0)"
    )
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        conn.execute(text("SET LOCAL enable_bitmapscan = off"))
        for query in (str(compiled), trigger_query):
            plan = "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + query)))
            assert "uq_credit_transactions_stripe_payment_id" in plan, plan


def test_purchase_is_idempotent_by_payment_and_refuses_another_users(sql, engine):
    user, other = make_user(sql), make_user(sql)
    package = make_credit_package(sql, credits=100)
    with Session(engine) as s:
        first = credits.purchase(s, user, package, "pi_idem").id
        s.commit()
    with Session(engine) as s:
        assert credits.purchase(s, user, package, "pi_idem").id == first
        with pytest.raises(errors.PaymentReferenceConflict):
            credits.purchase(s, other, package, "pi_idem")
    assert _credited(sql, "pi_idem") == [(user, 100)]


def _blocked(sql: Any, pid: int) -> bool:
    return bool(scalar(sql, "SELECT count(*) FROM pg_locks WHERE pid = :p AND NOT granted", p=pid))


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("on_conflict", [False, True], ids=["insert", "on_conflict"])
@pytest.mark.parametrize("same_user", [False, True], ids=["two_users", "one_user"])
def test_a_payment_credited_by_two_connections_at_once_credits_once(
    sql, engine, isolation, on_conflict, same_user
):
    """Two connections credit one payment: the second's statement starts (its snapshot
    taken) while the first's entry is uncommitted, waits, then the first commits.
    Under READ COMMITTED the trigger sees the entry (DuplicatePayment); under
    REPEATABLE READ and SERIALIZABLE it cannot, and PostgreSQL's unique index refuses
    it (DuplicatePayment), or the snapshot does (SerializationConflict): one credit,
    and the loser moved nothing, with ON CONFLICT DO NOTHING too."""
    first = make_user(sql)
    second = first if same_user else make_user(sql)
    package = make_credit_package(sql, credits=100)
    ref = f"pi_race_{uuid.uuid4().hex[:8]}"
    statement = text(PURCHASE_ON_CONFLICT if on_conflict else PURCHASE)
    outcome: list[str] = []
    a = engine.connect().execution_options(isolation_level=isolation)
    b = engine.connect().execution_options(isolation_level=isolation)
    try:
        pid = b.execute(text("SELECT pg_backend_pid()")).scalar_one()
        b.rollback()
        a.begin()
        a.execute(statement, {"u": first, "p": package, "ref": ref})

        def run() -> None:
            try:
                with b.begin():
                    done = b.execute(statement, {"u": second, "p": package, "ref": ref})
                    outcome.append("credited" if done.rowcount else "nothing")
            except errors.DatabaseError as exc:
                outcome.append(type(exc).__name__)

        thread = threading.Thread(target=run)
        thread.start()
        while thread.is_alive() and not _blocked(sql, pid):
            thread.join(0.01)
        a.commit()
        thread.join(60)
        assert not thread.is_alive()
    finally:
        a.close()
        b.close()
    assert len(outcome) == 1
    assert outcome[0] in {"DuplicatePayment", "SerializationConflict", "nothing"}, outcome
    if isolation == "READ COMMITTED" or not on_conflict:
        assert outcome[0] in {"DuplicatePayment", "SerializationConflict"}, outcome
    assert _credited(sql, ref) == [(first, 100)]
    assert _balance(sql, first) == 100
    assert _balance(sql, second) == (100 if same_user else 0)
    assert scalar(
        sql,
        "SELECT coalesce(sum(amount), 0) FROM credit_transactions WHERE user_id = :u",
        u=second,
    ) == _balance(sql, second)


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
def test_eight_connections_credit_one_payment_once(sql, engine, isolation):
    """Eight connections, eight users, one payment, released together: one credit."""
    users = [make_user(sql) for _ in range(8)]
    package = make_credit_package(sql, credits=100)
    ref = f"pi_eight_{uuid.uuid4().hex[:8]}"
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def run(user: uuid.UUID) -> None:
        with engine.connect().execution_options(isolation_level=isolation) as conn:
            conn.execute(text("SELECT 1"))
            conn.rollback()
            barrier.wait(60)
            try:
                with conn.begin():
                    conn.execute(text(PURCHASE), {"u": user, "p": package, "ref": ref})
                outcomes.append("credited")
            except errors.DatabaseError as exc:
                outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=run, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert outcomes.count("credited") == 1, outcomes
    assert set(outcomes) <= {"credited", "DuplicatePayment", "SerializationConflict"}, outcomes
    (winner,) = [u for u in users if _balance(sql, u)]
    assert _credited(sql, ref) == [(winner, 100)]
    assert sorted(_balance(sql, u) for u in users) == [0] * 7 + [100]


# --- a user's entries by calendar month (c16g00000001) ---------------------------------
USER_INDEX = "ix_credit_transactions_user_id_month"


def _dated_entries(engine: Engine, user: uuid.UUID, months: int, per_month: int) -> None:
    """``per_month`` adjustments in each of ``months`` months of 2026, dated by hand
    (the trigger dates entries itself): written as the owner with the user triggers off."""
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE credit_transactions DISABLE TRIGGER USER")
        conn.exec_driver_sql(
            "INSERT INTO credit_transactions (user_id, type, amount, balance_after,"
            " created_at, actor, description)"
            " SELECT %s, 'adjustment', 1, m * %s + i, make_timestamptz(2026, m, 1 + i %% 28,"
            " 12, 0, 0, 'UTC'), 'tests', 'dated'"
            " FROM generate_series(1, %s) AS m, generate_series(1, %s) AS i",
            (user, per_month, months, per_month),
        )
        conn.exec_driver_sql("ALTER TABLE credit_transactions ENABLE TRIGGER USER")
        conn.exec_driver_sql("ANALYZE credit_transactions")


def _plan(conn: Any, statement: Any, params: dict[str, Any] | None = None) -> str:
    """The plan of ``statement`` with sequential scans priced out (a small table would
    otherwise be read whole): one that cannot use the index still shows a Seq Scan."""
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    if isinstance(statement, str):
        rows = conn.execute(text("EXPLAIN " + statement), params or {}).all()
    else:  # as the API sends it: compiled for psycopg, its parameters bound
        compiled = statement.compile(dialect=conn.dialect)
        rows = conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params).all()
    return "\n".join(r[0] for r in rows)


def test_the_user_index_is_by_month_and_serves_the_foreign_key(engine):
    with engine.connect() as conn:
        definition = conn.execute(
            text("SELECT pg_get_indexdef(CAST(:i AS regclass))"), {"i": USER_INDEX}
        ).scalar_one()
        assert "(user_id, date_trunc('month'::text, (created_at AT TIME ZONE 'UTC'::text)))" in (
            definition
        )
        gone = conn.execute(
            text("SELECT to_regclass('ix_credit_transactions_user_id_created_at')")
        ).scalar()
        assert gone is None
        # The RESTRICT check of a user's delete finds the user's entries through it.
        plan = _plan(
            conn,
            "SELECT 1 FROM ONLY credit_transactions AS x WHERE x.user_id = :u FOR KEY SHARE OF x",
            {"u": uuid.uuid4()},
        )
        assert USER_INDEX in plan and "Seq Scan" not in plan, plan


def test_a_user_with_entries_cannot_be_deleted_through_the_month_index(sql, engine):
    """The foreign key still holds (RESTRICT), through raw SQL, with entries in several
    months."""
    user = make_user(sql)
    _dated_entries(engine, user, months=3, per_month=4)
    with pytest.raises(errors.DatabaseError) as info:
        sql("DELETE FROM users WHERE id = :u", u=user)
    assert "fk_credit_transactions_user_id_users" in str(info.value)


def test_ledger_queries_find_the_month_through_the_index(sql, engine):
    """The API's newest-first page (first and later pages, through
    ``credits.ledger_month``: literals, not bound parameters, or the index's expression
    would not match), the statement and the monthly spend all use the month's key."""
    from database import billing

    user = make_user(sql)
    _dated_entries(engine, user, months=6, per_month=20)
    first_page = (
        select(CreditTransaction)
        .where(CreditTransaction.user_id == user)
        .order_by(
            credits.ledger_month(CreditTransaction.created_at).desc(),
            CreditTransaction.created_at.desc(),
            CreditTransaction.id.desc(),
        )
        .limit(51)
    )
    cursor_at = dt.datetime(2026, 3, 10, 12, tzinfo=UTC)
    later_page = first_page.where(
        CreditTransaction.created_at <= cursor_at,
        credits.ledger_month(CreditTransaction.created_at) <= credits.ledger_month(cursor_at),
    )
    with engine.begin() as conn:
        for statement in (first_page, later_page):
            plan = _plan(conn, statement)
            assert USER_INDEX in plan and "Seq Scan" not in plan, plan
    with engine.begin() as conn:
        start, end = billing.month_span(dt.date(2026, 3, 1))
        params = {"u": user, "s": start, "e": end, "m": start.replace(tzinfo=None)}
        plan = _plan(conn, billing._STATEMENT.text, params)
        assert plan.count(USER_INDEX) >= 3 and "Seq Scan on credit_transactions" not in plan, plan
    # The month's spend, as billing_alerts_sync and billing_alerts_check count it (a
    # user's spend_above alert, its month counted again): the transaction's own scan
    # counts say which index it read, and that it read no table whole.
    sql(
        "INSERT INTO billing_alerts (user_id, kind, threshold, webhook_url, secret)"
        " VALUES (:u, 'spend_above', 1000, 'https://example.com/hook', repeat('s', 40))",
        u=user,
    )
    # The transaction's own counts: scans of the index, the entries they returned, and
    # sequential scans of the table.
    scans = text(
        "SELECT pg_stat_get_xact_numscans(CAST(:i AS regclass)),"
        " pg_stat_get_xact_tuples_returned(CAST(:i AS regclass)),"
        " pg_stat_get_xact_numscans('credit_transactions'::regclass)"
    )
    recounts = {
        # An alert changed: its trigger calls billing_alerts_sync.
        "billing_alerts_sync": "UPDATE billing_alerts SET threshold = threshold + 1"
        " WHERE user_id = :u",
        # A new month for the user: the next entry's trigger calls billing_alerts_check.
        "billing_alerts_check": "INSERT INTO credit_transactions (user_id, type, amount,"
        " description, actor) VALUES (:u, 'adjustment', 1, 'a new month', 'tests')",
    }
    for name, statement in recounts.items():
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            # The derived columns' guard is a trigger: off for this one write (owner).
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            conn.execute(
                text(
                    "UPDATE users SET alert_spend = NULL,"
                    " alert_spend_until = clock_timestamp() - interval '1 second' WHERE id = :u"
                ),
                {"u": user},
            )
            conn.exec_driver_sql("SET LOCAL session_replication_role = origin")
            before = conn.execute(scans, {"i": USER_INDEX}).one()
            conn.execute(text(statement), {"u": user})
            after = conn.execute(scans, {"i": USER_INDEX}).one()
            spend, this_month = conn.execute(
                text(
                    "SELECT u.alert_spend, (SELECT count(*) FROM credit_transactions AS t"
                    " WHERE t.user_id = u.id AND t.created_at >= date_trunc('month',"
                    " clock_timestamp(), 'UTC')) FROM users AS u WHERE u.id = :u"
                ),
                {"u": user},
            ).one()
        assert spend is not None, name  # counted again
        assert after[0] > before[0], name
        # The month's key alone: none of the 120 entries of January to June.
        assert after[1] - before[1] <= this_month < 120, (name, after[1] - before[1])
        assert after[2] == before[2], name


def test_a_statement_and_its_balances_across_months_with_the_month_index(sql, engine, session):
    """Opening and closing balances come from the latest month before (up to) the
    statement's, each month's entries sorted: equal to the ledger read by date."""
    from database import billing

    user = make_user(sql)
    _dated_entries(engine, user, months=5, per_month=7)
    for month in range(1, 7):
        st = billing.statement(session, user, dt.date(2026, month, 1))
        start, end = billing.month_span(dt.date(2026, month, 1))
        by_date = sql(
            "SELECT (SELECT balance_after FROM credit_transactions WHERE user_id = :u"
            " AND created_at < :s ORDER BY created_at DESC, id DESC LIMIT 1),"
            " (SELECT balance_after FROM credit_transactions WHERE user_id = :u"
            " AND created_at < :e ORDER BY created_at DESC, id DESC LIMIT 1),"
            " (SELECT count(*) FROM credit_transactions WHERE user_id = :u"
            " AND created_at >= :s AND created_at < :e)",
            u=user,
            s=start,
            e=end,
        )[0]
        opening = by_date[0] or 0
        assert (st.opening_balance, st.entries) == (opening, by_date[2]), month
        assert st.closing_balance == (by_date[1] if by_date[1] is not None else opening), month
