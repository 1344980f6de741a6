"""The credit ledger (sql/triggers/credit_ledger.sql, users_derived.sql): every rule,
attacked through raw SQL and through the ORM.

Each refusal must raise its named ``database.errors`` exception (exactly that class)
and leave the database as it was: ``refused()`` compares users, the whole ledger,
jobs and packages before and after. Every accepted entry is checked against the
invariant credit_balance = sum(amount) = the end of the balance_after chain.

A refused statement changes nothing, so one test tries many attacks on one database
(as ``subtests``): a fresh database per test is the expensive part.
Concurrency lives in test_credit_ledger_concurrency.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from database import errors
from database.models import CreditTransaction, TransactionType, User

from ledger_helpers import ADMIN, Ledger, assert_consistent, db_state, refused

VIAS = ("sql", "orm")


@pytest.fixture
def db(sql: Any) -> Ledger:
    return Ledger(sql)


def orm_commit(session: Session) -> None:
    try:
        session.commit()
    except BaseException:
        session.rollback()
        raise


def orm_add(session: Session, **values: Any) -> CreditTransaction:
    """Add one entry through the ORM and commit (rolling the session back on refusal)."""
    tx = CreditTransaction(**values)
    session.add(tx)
    orm_commit(session)
    return tx


def entry(
    via: str,
    db: Ledger,
    session: Session,
    user: uuid.UUID | None,
    type: str,
    amount: int | None,
    **cols: Any,
) -> int:
    """One ledger entry through raw SQL or the ORM; returns its stored balance_after."""
    if via == "sql":
        return db.insert(user, type, amount, **cols).balance_after
    cols = db.paid(type, amount, cols)
    tx = orm_add(session, user_id=user, type=TransactionType(type), amount=amount, **cols)
    return db.sql("SELECT balance_after FROM credit_transactions WHERE id = :i", i=tx.id)[0][0]


# =====================================================================================
# balance_after and users.credit_balance
# =====================================================================================
def test_balance_after_is_computed_by_the_database(
    db: Ledger, session: Session, subtests: Any
) -> None:
    u = db.user()
    assert db.balance(u) == 0
    assert db.purchase(u, 40).balance_after == 40
    assert db.purchase(u, 2).balance_after == 42
    assert (db.balance(u), db.count(u)) == (42, 2)
    expected = 42
    for via in VIAS:
        # -5 would even break ck_balance_after_nonnegative if it were kept.
        for bogus in (999, 0, -5):
            with subtests.test(via=via, client_value=bogus):
                expected += 7
                assert entry(via, db, session, u, "purchase", 7, balance_after=bogus) == expected
                assert db.balance(u) == expected
    assert assert_consistent(db.sql, u) == 42 + 6 * 7


def test_every_type_moves_the_balance_along_one_chain(db: Ledger) -> None:
    u = db.user()
    j1, j2 = db.jobs(u, 2)
    assert db.purchase(u, 100).balance_after == 100
    assert db.charge(u, j1, 30).balance_after == 70
    assert db.refund(u, j1, 10).balance_after == 80
    assert db.adjust(u, -5).balance_after == 75
    assert db.adjust(u, 7).balance_after == 82
    assert db.charge(u, j2, 82).balance_after == 0  # the whole balance may be spent
    assert db.balance(u) == 0
    entries = db.entries(u)
    assert [e.amount for e in entries] == [100, -30, 10, -5, 7, -82]
    assert [e.balance_after for e in entries] == [100, 70, 80, 75, 82, 0]
    assert assert_consistent(db.sql, u) == 0


def test_entries_of_one_transaction_and_one_statement_chain(engine: Any, db: Ledger) -> None:
    u = db.user(credits=5)
    j1, j2, j3 = db.jobs(u, 3)
    ins = text(
        "INSERT INTO credit_transactions(user_id, type, amount, job_id, actor, description)"
        " VALUES (:u, :t, :a, :j, :actor, :d) RETURNING balance_after, created_at"
    )
    steps = [
        ("adjustment", 20, None, ADMIN, "opening"),
        ("consumption", -12, j1, None, None),
        ("refund", 12, j1, None, None),
        ("adjustment", -13, None, ADMIN, "goodwill reversal"),
        ("consumption", -12, j2, None, None),
    ]
    with engine.begin() as conn:
        rows = [
            conn.execute(ins, {"u": u, "t": t, "a": a, "j": j, "actor": ac, "d": d}).one()
            for t, a, j, ac, d in steps
        ]
        # Inside the transaction users.credit_balance already follows the ledger.
        inside = conn.execute(text("SELECT credit_balance FROM users WHERE id = :u"), {"u": u})
        assert inside.scalar_one() == 0
    assert [r.balance_after for r in rows] == [25, 13, 25, 12, 0]
    assert assert_consistent(db.sql, u) == 0

    # One statement, several rows: each row's trigger sees the rows before it.
    rows = db.sql(
        "INSERT INTO credit_transactions(user_id, type, amount, job_id, actor, description)"
        " VALUES (:u, 'adjustment', 10, NULL, 'a', 'b'), (:u, 'adjustment', 20, NULL, 'a', 'b'),"
        "        (:u, 'consumption', -25, :j, NULL, NULL), (:u, 'refund', 25, :j, NULL, NULL)"
        " RETURNING balance_after",
        u=u,
        j=j3,
    )
    assert sorted(r.balance_after for r in rows) == [5, 10, 30, 30]
    assert assert_consistent(db.sql, u) == 30


def test_orm_flush_of_many_entries_returns_each_balance_after(db: Ledger, session: Session) -> None:
    u = db.user()
    j = db.job(u)
    txs = [
        CreditTransaction(
            user_id=u,
            type=TransactionType.PURCHASE,
            amount=10,
            package_id=db.package_for(10),
            stripe_payment_id="pi_flush",
        ),
        CreditTransaction(user_id=u, type=TransactionType.CONSUMPTION, amount=-3, job_id=j),
        CreditTransaction(
            user_id=u,
            type=TransactionType.ADJUSTMENT,
            amount=-4,
            actor=ADMIN,
            description="typo in a manual grant",
        ),
    ]
    session.add_all(txs)
    session.commit()
    assert [t.balance_after for t in txs] == [10, 7, 3]
    stored = dict(db.sql("SELECT id, balance_after FROM credit_transactions"))
    assert [stored[t.id] for t in txs] == [10, 7, 3]
    assert assert_consistent(db.sql, u) == 3


def test_orm_object_shows_the_stored_balance_after(db: Ledger, session: Session) -> None:
    u = db.user(credits=50)
    tx = orm_add(
        session,
        user_id=u,
        type=TransactionType.PURCHASE,
        amount=7,
        balance_after=1,
        **db.paid("purchase", 7, {}),
    )
    stored = db.sql("SELECT balance_after FROM credit_transactions WHERE id = :i", i=tx.id)
    assert stored[0][0] == 57
    assert tx.balance_after == 57


# =====================================================================================
# amount signs, and which columns each type may carry
# =====================================================================================
SIGN_CASES = [
    ("purchase", 0),
    ("purchase", -5),
    ("consumption", 0),
    ("consumption", 5),
    ("refund", 0),
    ("refund", -5),
    ("adjustment", 0),
]


def test_amount_sign_per_type(db: Ledger, session: Session, subtests: Any) -> None:
    u = db.user(credits=100)
    charged, fresh = db.jobs(u, 2)
    db.charge(u, charged, 20)  # so a refund passes the trigger and meets the check
    for via in VIAS:
        for type, amount in SIGN_CASES:
            with subtests.test(via=via, type=type, amount=amount):
                cols: dict[str, Any] = {}
                if type == "consumption":
                    cols["job_id"] = fresh
                elif type == "refund":
                    cols["job_id"] = charged
                elif type == "adjustment":
                    cols.update(actor=ADMIN, description="zero-credit adjustment")
                with refused(db.sql, errors.InvalidCreditAmount) as info:
                    entry(via, db, session, u, type, amount, **cols)
                assert info.value.constraint == "ck_credit_transactions_amount_sign"
    assert assert_consistent(db.sql, u) == 80


# (type, amount, columns from a context of ids, the check constraint that refuses it);
# the user has plenty of credits, so only the check can refuse.
SHAPE_CASES: dict[str, tuple[str, int, Any, str]] = {
    # A jobless consumption is a usage charge (c16d00000001: its usage_charges row is
    # checked at commit, tests/test_ledger_weight.py); a job's charge carries no key.
    "consumption_with_job_and_key": (
        "consumption",
        -5,
        lambda c: {"job_id": c["fresh"], "idempotency_key": "usage:x"},
        "job_only_for_charges",
    ),
    "purchase_with_job": ("purchase", 5, lambda c: {"job_id": c["fresh"]}, "job_only_for_charges"),
    "adjustment_with_job": (
        "adjustment",
        5,
        lambda c: {"job_id": c["fresh"], "actor": ADMIN, "description": "x"},
        "job_only_for_charges",
    ),
    "consumption_with_package": (
        "consumption",
        -5,
        lambda c: {"job_id": c["fresh"], "package_id": c["package"]},
        "payment_only_for_purchases",
    ),
    "refund_with_package": (
        "refund",
        5,
        lambda c: {"job_id": c["charged"], "package_id": c["package"]},
        "payment_only_for_purchases",
    ),
    "adjustment_with_package": (
        "adjustment",
        5,
        lambda c: {"package_id": c["package"], "actor": ADMIN, "description": "x"},
        "payment_only_for_purchases",
    ),
    "consumption_with_stripe_id": (
        "consumption",
        -5,
        lambda c: {"job_id": c["fresh"], "stripe_payment_id": "pi_c"},
        "payment_only_for_purchases",
    ),
    "refund_with_stripe_id": (
        "refund",
        5,
        lambda c: {"job_id": c["charged"], "stripe_payment_id": "pi_r"},
        "payment_only_for_purchases",
    ),
    "adjustment_with_stripe_id": (
        "adjustment",
        5,
        lambda c: {"stripe_payment_id": "pi_a", "actor": ADMIN, "description": "x"},
        "payment_only_for_purchases",
    ),
    "adjustment_without_actor": (
        "adjustment",
        5,
        lambda c: {"description": "x"},
        "adjustment_has_actor_and_reason",
    ),
    "adjustment_without_description": (
        "adjustment",
        -5,
        lambda c: {"actor": ADMIN},
        "adjustment_has_actor_and_reason",
    ),
    "adjustment_without_actor_or_description": (
        "adjustment",
        5,
        lambda c: {},
        "adjustment_has_actor_and_reason",
    ),
}


def test_columns_allowed_per_type(db: Ledger, session: Session, subtests: Any) -> None:
    u = db.user(credits=100)
    charged, fresh = db.jobs(u, 2)
    db.charge(u, charged, 20)
    ctx = {"charged": charged, "fresh": fresh, "package": db.package()}
    for via in VIAS:
        for case, (type, amount, build, constraint) in SHAPE_CASES.items():
            with subtests.test(via=via, case=case):
                with refused(db.sql, errors.InvalidValue) as info:
                    entry(via, db, session, u, type, amount, **build(ctx))
                assert info.value.constraint == f"ck_credit_transactions_{constraint}"
    assert assert_consistent(db.sql, u) == 80


def test_well_formed_entries_of_each_type_are_accepted(
    db: Ledger, session: Session, subtests: Any
) -> None:
    for via in VIAS:
        with subtests.test(via=via):
            u = db.user()
            j = db.job(u)
            pkg = db.package(credits=50)
            payment = f"pi_ok_{via}"
            assert (
                entry(
                    via, db, session, u, "purchase", 50, package_id=pkg, stripe_payment_id=payment
                )
                == 50
            )
            assert entry(via, db, session, u, "purchase", 1) == 51  # NULL ids never collide
            assert entry(via, db, session, u, "purchase", 1) == 52
            assert entry(via, db, session, u, "consumption", -12, job_id=j) == 40
            assert entry(via, db, session, u, "refund", 12, job_id=j) == 52
            assert (
                entry(via, db, session, u, "adjustment", -2, actor=ADMIN, description="fix") == 50
            )
            assert db.count(u) == 6
            assert assert_consistent(db.sql, u) == 50


def test_actor_only_on_adjustments(db: Ledger) -> None:
    u = db.user()
    with refused(db.sql, errors.InvalidValue):
        db.purchase(u, 5, actor=ADMIN)


# A row that breaks a declarative rule should be refused by that rule, whatever the
# balance; the BEFORE INSERT trigger runs first and may report something else.
PRECEDENCE_CASES: dict[str, tuple[Any, type[errors.DatabaseError]]] = {
    "negative_purchase_at_zero_balance": (
        lambda db, u: db.purchase(u, -5),
        errors.InvalidCreditAmount,
    ),
    # A usage charge (no job) the balance cannot pay: the balance rule, before commit.
    "usage_charge_at_zero_balance": (
        lambda db, u: db.charge(u, None, 5),
        errors.InsufficientCredits,
    ),
    "refund_without_job": (lambda db, u: db.refund(u, None, 5), errors.InvalidValue),
    "null_amount": (lambda db, u: db.insert(u, "purchase", None), errors.MissingValue),
    "null_user": (lambda db, u: db.insert(None, "purchase", 5), errors.MissingValue),
}


def test_malformed_rows_are_refused_and_change_nothing(db: Ledger, subtests: Any) -> None:
    u = db.user()
    for case, (attempt, _) in PRECEDENCE_CASES.items():
        with subtests.test(case=case):
            before = db_state(db.sql)
            with pytest.raises(errors.RuleViolation):
                attempt(db, u)
            assert db_state(db.sql) == before
    # An amount that overflows the balance is refused too (no named exception for it).
    rich = db.user(credits=5)
    before = db_state(db.sql)
    with pytest.raises(DBAPIError, match="out of range"):
        db.purchase(rich, 2**31 - 1)
    assert db_state(db.sql) == before


def test_malformed_rows_report_the_rule_they_break(db: Ledger) -> None:
    u = db.user()
    wrong = {}
    for case, (attempt, expected) in PRECEDENCE_CASES.items():
        before = db_state(db.sql)
        try:
            attempt(db, u)
            wrong[case] = "accepted"
        except errors.DatabaseError as exc:
            if type(exc) is not expected:
                wrong[case] = f"{type(exc).__name__}, expected {expected.__name__}"
        assert db_state(db.sql) == before
    assert not wrong, wrong


# =====================================================================================
# the balance never goes below zero
# =====================================================================================
def test_charges_never_overdraw(db: Ledger, session: Session, subtests: Any) -> None:
    for via in VIAS:
        with subtests.test(via=via):
            u = db.user(credits=10)
            j, j2 = db.jobs(u, 2)
            with refused(db.sql, errors.InsufficientCredits) as info:
                entry(via, db, session, u, "consumption", -11, job_id=j)
            assert (info.value.balance, info.value.amount) == (10, -11)
            assert info.value.sqlstate == "ML001"
            with refused(db.sql, errors.InsufficientCredits) as info:
                entry(via, db, session, u, "adjustment", -11, actor=ADMIN, description="claw")
            assert (info.value.balance, info.value.amount) == (10, -11)
            # The exact balance is fine, and then nothing more.
            assert entry(via, db, session, u, "consumption", -10, job_id=j) == 0
            with refused(db.sql, errors.InsufficientCredits) as info:
                entry(via, db, session, u, "consumption", -1, job_id=j2)
            assert (info.value.balance, info.value.amount) == (0, -1)
            with refused(db.sql, errors.InsufficientCredits) as info:
                entry(via, db, session, u, "adjustment", -1, actor=ADMIN, description="claw")
            assert (info.value.balance, info.value.amount) == (0, -1)
            assert assert_consistent(db.sql, u) == 0
    # Another user's credits are no help.
    rich, poor = db.user(credits=1000), db.user()
    poor_job = db.job(poor)
    with refused(db.sql, errors.InsufficientCredits):
        db.charge(poor, poor_job, 1)
    assert (db.balance(rich), db.balance(poor)) == (1000, 0)


def test_overdraw_refuses_the_whole_statement_and_transaction(engine: Any, db: Ledger) -> None:
    u = db.user(credits=10)
    jobs = db.jobs(u, 5)
    with refused(db.sql, errors.InsufficientCredits) as info:
        db.sql(
            "INSERT INTO credit_transactions(user_id, type, amount, job_id)"
            " SELECT user_id, 'consumption', -3, id FROM jobs WHERE user_id = :u",
            u=u,
        )
    assert (info.value.balance, info.value.amount) == (1, -3)  # after three charges

    with refused(db.sql, errors.InsufficientCredits) as info, engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO credit_transactions(user_id, type, amount, package_id,"
                " stripe_payment_id) VALUES (:u, 'purchase', 50, :p, 'pi_overdraw')"
            ),
            {"u": u, "p": db.package_for(50)},
        )
        conn.execute(
            text(
                "INSERT INTO credit_transactions(user_id, type, amount, job_id)"
                " VALUES (:u, 'consumption', -61, :j)"
            ),
            {"u": u, "j": jobs[0]},
        )
    assert (info.value.balance, info.value.amount) == (60, -61)
    assert assert_consistent(db.sql, u) == 10


# =====================================================================================
# soft-deleted users
# =====================================================================================
def test_deleted_user_cannot_purchase(db: Ledger, session: Session, subtests: Any) -> None:
    u = db.user(credits=5)
    pkg = db.package()
    db.soft_delete(u)
    for via in VIAS:
        with subtests.test(via=via):
            with refused(db.sql, errors.UserDeleted) as info:
                entry(via, db, session, u, "purchase", 100)
            assert info.value.sqlstate == "ML005"
            with refused(db.sql, errors.UserDeleted):
                entry(
                    via,
                    db,
                    session,
                    u,
                    "purchase",
                    100,
                    package_id=pkg,
                    stripe_payment_id=f"pi_{via}",
                )
    db.restore(u)
    assert db.purchase(u, 10).balance_after == 15
    # Soft-deleted through the ORM this time.
    user = session.get(User, u)
    assert user is not None
    user.is_deleted = True
    user.deleted_at = dt.datetime.now(dt.UTC)
    session.commit()
    paid = db.paid("purchase", 1, {})
    with refused(db.sql, errors.UserDeleted):
        orm_add(session, user_id=u, type=TransactionType.PURCHASE, amount=1, **paid)
    assert assert_consistent(db.sql, u) == 15


def test_deleted_user_keeps_every_other_kind_of_entry(db: Ledger, session: Session) -> None:
    u = db.user(credits=50)
    j1, j2, j3 = db.jobs(u, 3)
    db.charge(u, j1, 10)
    db.soft_delete(u)
    assert db.charge(u, j2, 5).balance_after == 35
    assert db.refund(u, j1, 10).balance_after == 45
    assert db.adjust(u, 3).balance_after == 48
    assert entry("orm", db, session, u, "consumption", -8, job_id=j3) == 40
    assert db.adjust(u, -40).balance_after == 0
    assert db.count(u) == 7
    assert assert_consistent(db.sql, u) == 0


# =====================================================================================
# jobs: one charge, one refund, never more than the charge, the user's own job
# =====================================================================================
def test_job_is_charged_once(engine: Any, db: Ledger, session: Session, subtests: Any) -> None:
    u = db.user(credits=100)
    j = db.job(u)
    db.charge(u, j, 10)
    for via in VIAS:
        for credits in (10, 1):
            with subtests.test(via=via, credits=credits):
                with refused(db.sql, errors.JobAlreadyCharged) as info:
                    entry(via, db, session, u, "consumption", -credits, job_id=j)
                assert info.value.constraint == "uq_credit_transactions_job_id_type"
    # Twice in one transaction, and twice in one statement.
    j2 = db.job(u)
    ins = text(
        "INSERT INTO credit_transactions(user_id, type, amount, job_id)"
        " VALUES (:u, 'consumption', -5, :j)"
    )
    with refused(db.sql, errors.JobAlreadyCharged), engine.begin() as conn:
        conn.execute(ins, {"u": u, "j": j2})
        conn.execute(ins, {"u": u, "j": j2})
    with refused(db.sql, errors.JobAlreadyCharged):
        db.sql(
            "INSERT INTO credit_transactions(user_id, type, amount, job_id)"
            " VALUES (:u, 'consumption', -5, :j), (:u, 'consumption', -6, :j)",
            u=u,
            j=j2,
        )
    # A refunded job is not a fresh one.
    db.refund(u, j, 10)
    with refused(db.sql, errors.JobAlreadyCharged):
        db.charge(u, j, 10)
    assert db.count(u) == 3
    assert assert_consistent(db.sql, u) == 100


def test_job_is_refunded_once_and_never_beyond_its_charge(
    db: Ledger, session: Session, subtests: Any
) -> None:
    for via in VIAS:
        with subtests.test(via=via):
            u = db.user(credits=100)
            j, uncharged = db.jobs(u, 2)
            db.charge(u, j, 10)
            for amount in (11, 10_000):
                with refused(db.sql, errors.RefundExceedsCharge) as info:
                    entry(via, db, session, u, "refund", amount, job_id=j)
                assert info.value.sqlstate == "ML004"
            for job in (uncharged, uuid.uuid4()):  # never charged; no such job at all
                with refused(db.sql, errors.RefundExceedsCharge):
                    entry(via, db, session, u, "refund", 1, job_id=job)
            assert entry(via, db, session, u, "refund", 4, job_id=j) == 94
            # A second refund, even one that would still fit under the charge.
            for amount in (4, 1):
                with refused(db.sql, errors.JobAlreadyRefunded) as info:
                    entry(via, db, session, u, "refund", amount, job_id=j)
                assert info.value.constraint == "uq_credit_transactions_job_id_type"
            assert assert_consistent(db.sql, u) == 94
    # The full charge may come back; a refund in the statement that charges is bounded too.
    u = db.user(credits=20)
    j1, j2 = db.jobs(u, 2)
    db.charge(u, j1, 20)
    assert db.refund(u, j1, 20).balance_after == 20
    with refused(db.sql, errors.RefundExceedsCharge):
        db.sql(
            "INSERT INTO credit_transactions(user_id, type, amount, job_id)"
            " VALUES (:u, 'consumption', -5, :j), (:u, 'refund', 6, :j)",
            u=u,
            j=j2,
        )
    assert assert_consistent(db.sql, u) == 20


def test_references_exist_and_jobs_are_the_users_own(
    db: Ledger, session: Session, subtests: Any
) -> None:
    owner, thief = db.user(credits=100), db.user(credits=100)
    j, charged = db.jobs(owner, 2)
    db.charge(owner, charged, 30)
    for via in VIAS:
        for type, amount, job in (("consumption", -5, j), ("refund", 30, charged)):
            with subtests.test(via=via, type=type):
                # The ledger trigger's test since c16e00000001 (the composite foreign
                # key's before): ML095, JobNotOwned.
                with refused(db.sql, errors.JobNotOwned) as info:
                    entry(via, db, session, thief, type, amount, job_id=job)
                assert info.value.sqlstate == "ML095"
                assert f"job {job} is another user's" in str(info.value)
    assert (db.balance(owner), db.balance(thief)) == (70, 100)

    # Nor can a charged job be handed to somebody else afterwards.
    snap = db.sql(
        "INSERT INTO workflow_snapshots(user_id, snapshot_data) VALUES (:u, '{}') RETURNING id",
        u=thief,
    )[0][0]
    # Nor any job (ML096, jobs_user_id_immutable), charged or not.
    for job in (charged, j):
        with refused(db.sql, errors.JobOwnerImmutable) as info:
            db.sql(
                "UPDATE jobs SET user_id = :t, workflow_snapshot_id = :s WHERE id = :j",
                t=thief,
                s=snap,
                j=job,
            )
        assert info.value.sqlstate == "ML096"

    # Nor may an entry name a user, job or package that does not exist.
    with refused(db.sql, errors.ReferenceViolation) as info:
        db.purchase(uuid.uuid4(), 10)
    assert info.value.constraint == "fk_credit_transactions_user_id_users"
    with refused(db.sql, errors.ReferenceViolation) as info:
        db.charge(owner, uuid.uuid4(), 10)
    assert info.value.constraint == "fk_credit_transactions_job_id_jobs"
    with refused(db.sql, errors.ReferenceViolation) as info:
        db.purchase(owner, 10, package_id=uuid.uuid4())
    assert info.value.constraint == "fk_credit_transactions_package_id_credit_packages"


# =====================================================================================
# Stripe payments credit the ledger once
# =====================================================================================
def test_stripe_payment_credits_once(db: Ledger, session: Session, subtests: Any) -> None:
    u, other = db.user(), db.user()
    db.purchase(u, 100, stripe_payment_id="pi_123")
    for via in VIAS:
        for user in (u, other):  # neither again, nor for somebody else
            with subtests.test(via=via, same_user=user == u):
                with refused(db.sql, errors.DuplicatePayment) as info:
                    entry(via, db, session, user, "purchase", 100, stripe_payment_id="pi_123")
                assert info.value.constraint == "uq_credit_transactions_stripe_payment_id"
    assert (db.balance(u), db.balance(other)) == (100, 0)


ON_CONFLICT_CASES = {
    "stripe_webhook_retry": (
        "INSERT INTO credit_transactions(user_id, type, amount, stripe_payment_id)"
        " VALUES (:u, 'purchase', 100, 'pi_hook')"
        " ON CONFLICT ((hashtextextended(stripe_payment_id, 0)))"
        " WHERE stripe_payment_id IS NOT NULL DO NOTHING"
    ),
    "stripe_webhook_retry_any_conflict": (
        "INSERT INTO credit_transactions(user_id, type, amount, stripe_payment_id)"
        " VALUES (:u, 'purchase', 100, 'pi_hook') ON CONFLICT DO NOTHING"
    ),
    "charge_retry": (
        "INSERT INTO credit_transactions(user_id, type, amount, job_id)"
        " VALUES (:u, 'consumption', -10, :j)"
        " ON CONFLICT (job_id, type) WHERE job_id IS NOT NULL DO NOTHING"
    ),
    "refund_retry": (
        "INSERT INTO credit_transactions(user_id, type, amount, job_id)"
        " VALUES (:u, 'refund', 10, :j)"
        " ON CONFLICT (job_id, type) WHERE job_id IS NOT NULL DO NOTHING"
    ),
    "same_id": (
        "INSERT INTO credit_transactions(id, user_id, type, amount)"
        " VALUES (:first, :u, 'purchase', 1000) ON CONFLICT (id) DO NOTHING"
    ),
}


def test_idempotent_retry_with_on_conflict_moves_no_credits(db: Ledger) -> None:
    moved = {}
    for case, statement in ON_CONFLICT_CASES.items():
        u = db.user()
        j = db.job(u)
        first = db.purchase(u, 100, stripe_payment_id=f"pi_{case}").id
        db.charge(u, j, 10)
        db.refund(u, j, 10)
        before = db_state(db.sql)
        # Skipping the duplicate or refusing it are both fine; moving credits is not.
        with contextlib.suppress(errors.RuleViolation):
            db.sql(statement.replace("'pi_hook'", f"'pi_{case}'"), u=u, j=j, first=first)
        if db_state(db.sql) != before:
            moved[case] = f"balance {db.balance(u)}, ledger sum 100"
    assert not moved, moved


# =====================================================================================
# the ledger is append-only
# =====================================================================================
IMMUTABLE_STATEMENTS = [
    "UPDATE credit_transactions SET amount = 1000",
    "UPDATE credit_transactions SET balance_after = 0 WHERE user_id = :u",
    "UPDATE credit_transactions SET description = 'edited' WHERE id = :t",
    "UPDATE credit_transactions SET type = 'adjustment', actor = 'x', description = 'y'",
    "UPDATE credit_transactions SET user_id = :other WHERE id = :t",
    "UPDATE credit_transactions SET created_at = created_at - interval '1 day'",
    "DELETE FROM credit_transactions",
    "DELETE FROM credit_transactions WHERE id = :t",
    "DELETE FROM credit_transactions WHERE type = 'consumption'",
    "WITH gone AS (DELETE FROM credit_transactions RETURNING amount) SELECT sum(amount) FROM gone",
    "INSERT INTO credit_transactions(id, user_id, type, amount)"
    " VALUES (:t, :u, 'adjustment', 5) ON CONFLICT (id) DO UPDATE SET amount = 5000",
    "TRUNCATE credit_transactions",
    "TRUNCATE credit_transactions RESTART IDENTITY CASCADE",
    "TRUNCATE jobs CASCADE",
]


def test_ledger_rows_cannot_change_or_disappear(db: Ledger, subtests: Any) -> None:
    u, other = db.user(credits=100), db.user()
    t = db.charge(u, db.job(u), 10).id
    for statement in IMMUTABLE_STATEMENTS:
        with subtests.test(statement=statement):
            params = {
                k: v for k, v in {"u": u, "t": t, "other": other}.items() if f":{k}" in statement
            }
            with refused(db.sql, errors.LedgerImmutable) as info:
                db.sql(statement, **params)
            assert info.value.sqlstate == "ML002"
    assert db.count() == 2
    assert assert_consistent(db.sql, u) == 90


def test_truncating_users_cascade_leaves_the_ledger(db: Ledger) -> None:
    # Several tables refuse TRUNCATE (the ledger, and the tables counters follow);
    # whichever refuses first, the ledger and the balance stay as they were.
    u = db.user(credits=100)
    db.charge(u, db.job(u), 10)
    with pytest.raises((errors.LedgerImmutable, errors.DerivedColumnReadOnly)):
        db.sql("TRUNCATE users CASCADE")
    assert db.count() == 2
    assert assert_consistent(db.sql, u) == 90


def test_orm_cannot_modify_or_delete_an_entry(db: Ledger, session: Session, subtests: Any) -> None:
    u = db.user()
    t = db.purchase(u, 100).id
    for attr, value in (
        ("amount", -1),
        ("balance_after", 1000),
        ("description", "edited"),
        ("actor", "me"),
        ("created_at", dt.datetime(2000, 1, 1, tzinfo=dt.UTC)),
    ):
        with subtests.test(attr=attr):
            tx = session.get(CreditTransaction, t)
            assert tx is not None
            setattr(tx, attr, value)
            with refused(db.sql, errors.LedgerImmutable):
                orm_commit(session)
    with subtests.test("delete"):
        session.delete(session.get(CreditTransaction, t))
        with refused(db.sql, errors.LedgerImmutable):
            orm_commit(session)
    for name, stmt in (
        ("bulk_update", update(CreditTransaction).values(amount=CreditTransaction.amount * 10)),
        ("bulk_delete", delete(CreditTransaction)),
    ):
        with subtests.test(name), refused(db.sql, errors.LedgerImmutable):
            try:
                session.execute(stmt)
                session.commit()
            except BaseException:
                session.rollback()
                raise
    assert assert_consistent(db.sql, u) == 100


# =====================================================================================
# users.credit_balance is written by the ledger only
# =====================================================================================
DERIVED_STATEMENTS = [
    "UPDATE users SET credit_balance = 1000 WHERE id = :u",
    "UPDATE users SET credit_balance = credit_balance + 1 WHERE id = :u",
    "UPDATE users SET credit_balance = 0 WHERE id = :u",
    "UPDATE users SET credit_balance = 1000",
    "UPDATE users SET credit_balance = 1000, full_name = 'x' WHERE id = :u",
    "INSERT INTO users(email) SELECT email FROM users WHERE id = :u"
    " ON CONFLICT (email) DO UPDATE SET credit_balance = 1000",
    "INSERT INTO users(email, credit_balance) VALUES ('rich@example.com', 5)",
    "INSERT INTO users(email, credit_balance) VALUES ('rich@example.com', -5)",
]


def test_credit_balance_cannot_be_written(
    engine: Any, db: Ledger, session: Session, subtests: Any
) -> None:
    u = db.user(credits=10)
    for statement in DERIVED_STATEMENTS:
        with subtests.test(statement=statement):
            with refused(db.sql, errors.DerivedColumnReadOnly) as info:
                db.sql(statement, **({"u": u} if ":u" in statement else {}))
            assert info.value.sqlstate == "ML003"
    with (
        subtests.test("in a transaction that also buys"),
        refused(db.sql, errors.DerivedColumnReadOnly),
        engine.begin() as conn,
    ):
        conn.execute(
            text(
                "INSERT INTO credit_transactions(user_id, type, amount, actor, description)"
                " VALUES (:u, 'adjustment', 5, 'a', 'b')"
            ),
            {"u": u},
        )
        conn.execute(text("UPDATE users SET credit_balance = 500 WHERE id = :u"), {"u": u})
    for statement in (
        "UPDATE users SET credit_balance = 1000 WHERE id = :u",
        "UPDATE users SET credit_balance = 1000, dataset_count = 0 WHERE id = :u",
    ):
        # The repair flag lets counters be corrected, never the balance.
        with (
            subtests.test("under automl.repair", statement=statement),
            refused(db.sql, errors.DerivedColumnReadOnly),
            engine.begin() as conn,
        ):
            conn.execute(text("SET LOCAL automl.repair = 'on'"))
            conn.execute(text(statement), {"u": u})
    with subtests.test("orm update"):
        user = session.get(User, u)
        assert user is not None
        user.credit_balance = 1_000_000
        with refused(db.sql, errors.DerivedColumnReadOnly):
            orm_commit(session)
    with subtests.test("orm insert"):
        session.add(User(email="orm-rich@example.com", credit_balance=50))
        with refused(db.sql, errors.DerivedColumnReadOnly):
            orm_commit(session)
    # Every other column of the user stays writable.
    db.sql("UPDATE users SET full_name = 'Ada', tier = 'pro' WHERE id = :u", u=u)
    user = session.get(User, u)
    assert user is not None
    user.full_name = "Ada L."
    session.commit()
    assert db.sql("SELECT full_name, tier::text FROM users WHERE id = :u", u=u)[0] == (
        "Ada L.",
        "pro",
    )
    assert assert_consistent(db.sql, u) == 10


# =====================================================================================
# the ledger outlives users, jobs and packages (FK RESTRICT)
# =====================================================================================
def _attempt_delete(case: str, db: Ledger, session: Session, refs: dict[str, Any]) -> None:
    if case == "user_sql":
        db.sql("DELETE FROM users WHERE id = :u", u=refs["user"])
    elif case == "user_orm":
        session.delete(session.get(User, refs["user"]))
        orm_commit(session)
    elif case == "charged_job":
        db.sql("DELETE FROM jobs WHERE id = :j", j=refs["job"])
    elif case == "purchased_package":
        db.sql("DELETE FROM credit_packages WHERE id = :p", p=refs["package"])
    else:
        raise AssertionError(case)


DELETE_CASES = ("user_sql", "user_orm", "charged_job", "purchased_package")


def _ledger_refs(db: Ledger) -> dict[str, Any]:
    u = db.user()
    pkg = db.package()
    db.purchase(u, 100, package_id=pkg, stripe_payment_id="pi_pkg")
    j = db.job(u)
    db.charge(u, j, 10)
    return {"user": u, "job": j, "package": pkg}


def test_referenced_rows_cannot_be_deleted(db: Ledger, session: Session, subtests: Any) -> None:
    refs = _ledger_refs(db)
    for case in DELETE_CASES:
        with subtests.test(case=case):
            before = db_state(db.sql)
            with pytest.raises((errors.ReferenceViolation, IntegrityError)):
                _attempt_delete(case, db, session, refs)
            assert db_state(db.sql) == before
    # What the ledger does not name may go: an idle job, a user without entries.
    idle = db.job(refs["user"])
    db.sql("DELETE FROM jobs WHERE id = :j", j=idle)
    bystander = db.user()
    db.job(bystander)
    db.sql("DELETE FROM users WHERE id = :u", u=bystander)  # cascades to its jobs
    assert db.sql("SELECT count(*) FROM jobs")[0][0] == 1
    assert assert_consistent(db.sql, refs["user"]) == 90


def test_deleting_referenced_rows_raises_reference_violation(db: Ledger, session: Session) -> None:
    refs = _ledger_refs(db)
    wrong = {}
    for case in DELETE_CASES:
        before = db_state(db.sql)
        try:
            _attempt_delete(case, db, session, refs)
            wrong[case] = "deleted"
        except Exception as exc:
            if type(exc) is not errors.ReferenceViolation:
                wrong[case] = type(exc).__name__
        assert db_state(db.sql) == before
    assert not wrong, wrong


# =====================================================================================
# order: the latest entry by created_at carries the balance
# =====================================================================================
def test_entries_cannot_be_dated_by_the_client(db: Ledger) -> None:
    past, future = db.user(credits=10), db.user(credits=10)
    db.purchase(past, 5, created_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    db.purchase(future, 5, created_at=dt.datetime(2999, 1, 1, tzinfo=dt.UTC))
    for u in (past, future):
        db.purchase(u, 1)
    bad = []
    for u in (past, future):
        try:
            assert_consistent(db.sql, u)
        except AssertionError as exc:
            bad.append(str(exc))
    assert not bad, bad


def test_on_conflict_with_a_used_idempotency_key_moves_no_credits(db: Ledger) -> None:
    u = db.user(credits=100)
    insert = (
        "INSERT INTO credit_transactions (user_id, type, amount, description, actor,"
        " idempotency_key) VALUES (:u, 'adjustment', 1, 'bonus', 'admin', 'k-1')"
    )
    db.sql(insert, u=u)
    with pytest.raises(errors.DuplicateAdjustment):
        db.sql(insert + " ON CONFLICT DO NOTHING", u=u)
    assert db.count() == 2
    assert assert_consistent(db.sql, u) == 101
