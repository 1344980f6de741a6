"""database.credits: purchase, charge_job, refund_job, adjust, lock_users.

Each rule is tried through the Python API and, where the database enforces it,
through raw SQL too; every refusal must leave the balance and the ledger as they
were. Concurrency is tried with threads released together by a Barrier.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from database import credits, errors
from database.models import CreditTransaction, TransactionType, User

from factories import make_credit_package, make_job, make_user, scalar


# --- helpers -------------------------------------------------------------------------
def balance(sql: Any, user_id: uuid.UUID) -> int:
    return scalar(sql, "SELECT credit_balance FROM users WHERE id = :id", id=user_id)


def entries(sql: Any, user_id: uuid.UUID) -> int:
    return scalar(sql, "SELECT count(*) FROM credit_transactions WHERE user_id = :id", id=user_id)


def funded_user(sql: Any, session: Session, amount: int = 100, **cols: Any) -> uuid.UUID:
    user_id = make_user(sql, **cols)
    if amount:
        credits.adjust(session, user_id, amount, "opening balance", "tests")
    return user_id


class Unchanged:
    """Asserts a user's balance and number of ledger entries did not move."""

    def __init__(self, sql: Any, *user_ids: uuid.UUID) -> None:
        self.sql = sql
        self.user_ids = user_ids

    def __enter__(self) -> Unchanged:
        self.before = [(balance(self.sql, u), entries(self.sql, u)) for u in self.user_ids]
        return self

    def __exit__(self, *exc: object) -> None:
        after = [(balance(self.sql, u), entries(self.sql, u)) for u in self.user_ids]
        assert after == self.before


def run_together(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) in n threads released at once; results or exceptions, in order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # collected for the test to inspect
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results


# --- purchase --------------------------------------------------------------------------
def test_purchase_credits_the_package(sql, session):
    user_id = make_user(sql)
    package_id = make_credit_package(sql, credits=250, name="Starter")
    tx = credits.purchase(session, user_id, package_id, "pi_1")
    assert (tx.type, tx.amount, tx.balance_after) == (TransactionType.PURCHASE, 250, 250)
    assert tx.package_id == package_id and tx.stripe_payment_id == "pi_1"
    assert tx.description is None  # derived for display (c16d00000001: not stored)
    assert balance(sql, user_id) == 250
    assert not session.in_transaction()  # its own transaction, committed
    assert credits.describe(session, [tx]) == {tx.id: "purchase of Starter"}
    session.rollback()
    # A retry with the same payment reference returns the first entry.
    again = credits.purchase(session, user_id, package_id, "pi_1")
    assert again.id == tx.id and again.balance_after == 250
    assert balance(sql, user_id) == 250 and entries(sql, user_id) == 1


def test_purchase_reference_of_another_request_is_a_conflict(sql, session):
    alice, bob = make_user(sql), make_user(sql)
    p1, p2 = make_credit_package(sql), make_credit_package(sql)
    credits.purchase(session, alice, p1, "pi_x")
    with Unchanged(sql, alice, bob):
        with pytest.raises(errors.PaymentReferenceConflict):
            credits.purchase(session, bob, p1, "pi_x")
        with pytest.raises(errors.PaymentReferenceConflict):
            credits.purchase(session, alice, p2, "pi_x")


def test_purchase_concurrent_retries_credit_once(sql, session_factory):
    user_id = make_user(sql)
    package_id = make_credit_package(sql, credits=40)

    def buy(_: int) -> uuid.UUID:
        with session_factory() as s:
            return credits.purchase(s, user_id, package_id, "pi_race").id

    ids = run_together(8, buy)
    assert all(isinstance(i, uuid.UUID) for i in ids), ids
    assert len(set(ids)) == 1
    assert balance(sql, user_id) == 40 and entries(sql, user_id) == 1


def test_purchase_same_reference_for_two_users_at_once(sql, session_factory):
    # Different users take different locks: the unique index decides, and the loser
    # learns the reference belongs to another request.
    users = [make_user(sql) for _ in range(4)]
    package_id = make_credit_package(sql, credits=10)

    def buy(i: int) -> Any:
        with session_factory() as s:
            return credits.purchase(s, users[i], package_id, "pi_shared")

    results = run_together(4, buy)
    won = [r for r in results if isinstance(r, CreditTransaction)]
    lost = [r for r in results if isinstance(r, Exception)]
    assert len(won) == 1 and len(lost) == 3, results
    assert all(isinstance(e, errors.PaymentReferenceConflict) for e in lost), lost
    assert scalar(sql, "SELECT count(*) FROM credit_transactions") == 1
    assert sum(balance(sql, u) for u in users) == 10


def test_inactive_package_cannot_be_bought(sql, session):
    user_id = make_user(sql)
    package_id = make_credit_package(sql, is_active=False)
    with Unchanged(sql, user_id):
        with pytest.raises(errors.PackageUnavailable):
            credits.purchase(session, user_id, package_id, "pi_inactive")
        with pytest.raises(errors.PackageUnavailable):
            sql(
                "INSERT INTO credit_transactions (user_id, type, amount, package_id)"
                " VALUES (:u, 'purchase', 100, :p)",
                u=user_id,
                p=package_id,
            )


TIER_CASES = [
    ("pro_only", "free", False),
    ("pro_only", "pro", True),
    ("pro_only", "enterprise", True),
    ("enterprise_only", "free", False),
    ("enterprise_only", "pro", False),
    ("enterprise_only", "enterprise", True),
    ("none", "free", True),
]


def test_tier_restricted_packages(sql, session):
    # pro_only: pro and enterprise users; enterprise_only: enterprise users.
    for n, (restriction, tier, allowed) in enumerate(TIER_CASES):
        user_id = make_user(sql, tier=tier)
        package_id = make_credit_package(sql, credits=30, tier_restriction=restriction)
        if allowed:
            assert credits.purchase(session, user_id, package_id, f"pi_{n}").amount == 30
            continue
        with Unchanged(sql, user_id):
            with pytest.raises(errors.PackageTierRestricted):
                credits.purchase(session, user_id, package_id, f"pi_{n}")
            with pytest.raises(errors.PackageTierRestricted):
                sql(
                    "INSERT INTO credit_transactions (user_id, type, amount, package_id)"
                    " VALUES (:u, 'purchase', 30, :p)",
                    u=user_id,
                    p=package_id,
                )


def test_purchase_amounts_are_checked_by_the_database(sql, session):
    user_id = funded_user(sql, session, 50)  # a balance, so no insufficient-credits refusal
    package_id = make_credit_package(sql, credits=100)
    with Unchanged(sql, user_id):
        with pytest.raises(errors.PurchaseAmountMismatch):
            sql(
                "INSERT INTO credit_transactions (user_id, type, amount, package_id)"
                " VALUES (:u, 'purchase', 1000, :p)",
                u=user_id,
                p=package_id,
            )
        # Negative or zero: refused, with or without a package.
        for amount in (0, -5):
            for package in (package_id, None):
                with pytest.raises(errors.InvalidCreditAmount):
                    sql(
                        "INSERT INTO credit_transactions (user_id, type, amount, package_id)"
                        " VALUES (:u, 'purchase', :a, :p)",
                        u=user_id,
                        a=amount,
                        p=package,
                    )


def test_purchase_refusals(sql, session):
    user_id = make_user(sql)
    package_id = make_credit_package(sql)
    with Unchanged(sql, user_id):
        with pytest.raises(errors.PackageNotFound):
            credits.purchase(session, user_id, uuid.uuid4(), "pi_a")
        with pytest.raises(errors.UserNotFound):
            credits.purchase(session, uuid.uuid4(), package_id, "pi_b")
        with pytest.raises(errors.InvalidValue):
            credits.purchase(session, user_id, package_id, "  ")
    sql("UPDATE users SET is_deleted = true, deleted_at = now() WHERE id = :u", u=user_id)
    with Unchanged(sql, user_id), pytest.raises(errors.UserDeleted):
        credits.purchase(session, user_id, package_id, "pi_c")


# --- charges -----------------------------------------------------------------------------
def test_charge_debits_the_job_cost_once(sql, session):
    user_id = funded_user(sql, session, 100)
    job_id = make_job(sql, user_id, credit_cost=30)
    tx = credits.charge_job(session, job_id)
    assert tx is not None
    assert (tx.type, tx.amount, tx.job_id, tx.balance_after) == (
        TransactionType.CONSUMPTION,
        -30,
        job_id,
        70,
    )
    again = credits.charge_job(session, job_id)
    assert again is not None and again.id == tx.id
    assert balance(sql, user_id) == 70 and entries(sql, user_id) == 2
    # A User the session holds shows the balance the trigger moved.
    user = session.get(User, user_id)
    assert user is not None and user.credit_balance == 70
    credits.charge_job(session, make_job(sql, user_id, credit_cost=25), user=user)
    assert user.credit_balance == 45


def test_concurrent_charges_of_one_job_debit_once(sql, session, session_factory):
    user_id = funded_user(sql, session, 100)
    job_id = make_job(sql, user_id, credit_cost=30)

    def charge(_: int) -> uuid.UUID | None:
        with session_factory() as s:
            tx = credits.charge_job(s, job_id)
            return tx.id if tx else None

    ids = run_together(8, charge)
    assert all(isinstance(i, uuid.UUID) for i in ids), ids
    assert len(set(ids)) == 1
    assert balance(sql, user_id) == 70


def test_concurrent_charges_never_overdraw(sql, session, session_factory):
    user_id = funded_user(sql, session, 100)
    jobs = [make_job(sql, user_id, credit_cost=30) for _ in range(6)]

    def charge(i: int) -> Any:
        with session_factory() as s:
            return credits.charge_job(s, jobs[i])

    results = run_together(6, charge)
    charged = [r for r in results if isinstance(r, CreditTransaction)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(charged) == 3 and len(refused) == 3, results
    assert all(isinstance(e, errors.InsufficientCredits) for e in refused)
    assert sorted(t.balance_after for t in charged) == [10, 40, 70]
    assert balance(sql, user_id) == 10


def test_charge_refusals(sql, session):
    poor = funded_user(sql, session, 20)
    with Unchanged(sql, poor), pytest.raises(errors.InsufficientCredits) as info:
        credits.charge_job(session, make_job(sql, poor, credit_cost=30))
    assert (info.value.balance, info.value.amount) == (20, -30)
    assert not info.value.retryable
    alice = funded_user(sql, session, 100)
    bob = funded_user(sql, session, 100)
    bobs_job = make_job(sql, bob, credit_cost=10)
    with Unchanged(sql, alice, bob):
        with pytest.raises(errors.JobNotFound):
            credits.charge_job(session, uuid.uuid4())
        with pytest.raises(errors.JobNotOwned):
            credits.charge_job(session, bobs_job, user=alice)
        # Raw SQL: the ledger's (job_id, user_id) key refuses another user's job.
        with pytest.raises(errors.ReferenceViolation):
            sql(
                "INSERT INTO credit_transactions (user_id, type, amount, job_id)"
                " VALUES (:u, 'consumption', -10, :j)",
                u=alice,
                j=bobs_job,
            )
        with pytest.raises(errors.ReferenceViolation):
            sql(
                "INSERT INTO credit_transactions (user_id, type, amount, job_id)"
                " VALUES (:u, 'consumption', -10, :j)",
                u=alice,
                j=uuid.uuid4(),
            )


def test_free_job_writes_nothing(sql, session):
    user_id = funded_user(sql, session, 5)
    job_id = make_job(sql, user_id, credit_cost=0)
    with Unchanged(sql, user_id):
        assert credits.charge_job(session, job_id) is None
        with pytest.raises(errors.JobNotCharged):
            credits.refund_job(session, job_id, "failed")


def test_charge_inside_the_callers_transaction_is_a_savepoint(sql, session):
    user_id = funded_user(sql, session, 100)
    costly = make_job(sql, user_id, credit_cost=500)
    cheap = make_job(sql, user_id, credit_cost=10)
    with session.begin():
        session.execute(text("SELECT 1"))
        with pytest.raises(errors.InsufficientCredits):
            credits.charge_job(session, costly)
        # The caller's transaction survived the refusal and goes on.
        tx = credits.charge_job(session, cheap, lock_timeout_ms=1234)
        assert tx is not None and tx.balance_after == 90
        # lock_timeout is the caller's again once the operation is done.
        assert session.execute(text("SHOW lock_timeout")).scalar_one() != "1234ms"
        assert balance(sql, user_id) == 100  # not committed yet
    assert balance(sql, user_id) == 90
    # The caller's rollback undoes the operation.
    session.begin()
    credits.charge_job(session, make_job(sql, user_id, credit_cost=10))
    session.rollback()
    assert balance(sql, user_id) == 90 and entries(sql, user_id) == 2


# --- refunds -----------------------------------------------------------------------------
def test_refund_gives_the_charge_back_once(sql, session):
    user_id = funded_user(sql, session, 100)
    job_id = make_job(sql, user_id, credit_cost=30)
    credits.charge_job(session, job_id)
    tx = credits.refund_job(session, job_id, "worker crashed")
    assert (tx.type, tx.amount, tx.balance_after, tx.description) == (
        TransactionType.REFUND,
        30,
        100,
        "worker crashed",
    )
    again = credits.refund_job(session, job_id, "retry", amount=5)
    assert again.id == tx.id and again.amount == 30
    assert balance(sql, user_id) == 100 and entries(sql, user_id) == 3
    # A partial refund.
    half = make_job(sql, user_id, credit_cost=30)
    credits.charge_job(session, half)
    assert credits.refund_job(session, half, "half done", amount=12).balance_after == 82


def test_concurrent_refunds_of_one_job_refund_once(sql, session, session_factory):
    user_id = funded_user(sql, session, 100)
    job_id = make_job(sql, user_id, credit_cost=30)
    credits.charge_job(session, job_id)

    def refund(_: int) -> uuid.UUID:
        with session_factory() as s:
            return credits.refund_job(s, job_id, "failed").id

    ids = run_together(6, refund)
    assert all(isinstance(i, uuid.UUID) for i in ids), ids
    assert len(set(ids)) == 1
    assert balance(sql, user_id) == 100


def test_refund_refusals(sql, session):
    alice = funded_user(sql, session, 100)
    bob = funded_user(sql, session, 100)
    uncharged = make_job(sql, alice, credit_cost=10)
    charged = make_job(sql, alice, credit_cost=10)
    credits.charge_job(session, charged)
    with Unchanged(sql, alice, bob):
        with pytest.raises(errors.JobNotCharged):
            credits.refund_job(session, uncharged, "never ran")
        with pytest.raises(errors.RefundExceedsCharge):
            sql(
                "INSERT INTO credit_transactions (user_id, type, amount, job_id)"
                " VALUES (:u, 'refund', 10, :j)",
                u=alice,
                j=uncharged,
            )
        with pytest.raises(errors.RefundExceedsCharge):
            credits.refund_job(session, charged, "too much", amount=11)
        with pytest.raises(errors.RefundExceedsCharge):
            sql(
                "INSERT INTO credit_transactions (user_id, type, amount, job_id)"
                " VALUES (:u, 'refund', 11, :j)",
                u=alice,
                j=charged,
            )
        for bad in (0, -3):
            with pytest.raises(errors.InvalidCreditAmount):
                credits.refund_job(session, charged, "bad", amount=bad)
        with pytest.raises(errors.JobNotOwned):
            credits.refund_job(session, charged, "not yours", user=bob)
        with pytest.raises(errors.JobNotFound):
            credits.refund_job(session, uuid.uuid4(), "unknown")
        with pytest.raises(errors.InvalidValue):
            credits.refund_job(session, charged, "")


# --- adjustments -------------------------------------------------------------------------
def test_adjust_both_ways(sql, session):
    user_id = make_user(sql)
    up = credits.adjust(session, user_id, 50, "goodwill", "admin@example.com")
    down = credits.adjust(session, user_id, -20, "correction", uuid.UUID(int=7))
    assert (up.balance_after, down.balance_after) == (50, 30)
    assert down.actor == str(uuid.UUID(int=7)) and down.description == "correction"
    # Without an idempotency key, every call is a new adjustment.
    credits.adjust(session, user_id, 5, "a", "admin")
    credits.adjust(session, user_id, 5, "a", "admin")
    assert balance(sql, user_id) == 40


def test_adjust_refusals(sql, session):
    user_id = funded_user(sql, session, 10)
    with Unchanged(sql, user_id):
        with pytest.raises(errors.InvalidCreditAmount):
            credits.adjust(session, user_id, 0, "nothing", "admin")
        with pytest.raises(errors.InsufficientCredits):
            credits.adjust(session, user_id, -11, "too much", "admin")
        with pytest.raises(errors.InvalidValue):
            credits.adjust(session, user_id, 5, "", "admin")
        with pytest.raises(errors.InvalidValue):
            credits.adjust(session, user_id, 5, "why", " ")
        with pytest.raises(errors.UserNotFound):
            credits.adjust(session, uuid.uuid4(), 5, "why", "admin")
        with pytest.raises(errors.InvalidCreditAmount):
            sql(
                "INSERT INTO credit_transactions (user_id, type, amount, actor, description)"
                " VALUES (:u, 'adjustment', 0, 'a', 'b')",
                u=user_id,
            )


def test_adjust_with_an_idempotency_key(sql, session, session_factory):
    user_id = make_user(sql)
    first = credits.adjust(session, user_id, 25, "promo", "admin", idempotency_key="req-1")
    again = credits.adjust(session, user_id, 25, "promo", "admin", idempotency_key="req-1")
    assert again.id == first.id and balance(sql, user_id) == 25
    with Unchanged(sql, user_id), pytest.raises(errors.DuplicateAdjustment):
        credits.adjust(session, user_id, 30, "promo", "admin", idempotency_key="req-1")

    def retry(_: int) -> uuid.UUID:
        with session_factory() as s:
            return credits.adjust(s, user_id, 5, "race", "admin", idempotency_key="req-2").id

    ids = run_together(6, retry)
    assert all(isinstance(i, uuid.UUID) for i in ids) and len(set(ids)) == 1, ids
    assert balance(sql, user_id) == 30


# --- several users in one transaction ----------------------------------------------------


def test_transfers_in_opposite_orders_do_not_deadlock(sql, session, session_factory):
    users = [funded_user(sql, session, 1000) for _ in range(3)]
    pairs = [(users[i % 3], users[(i + 1) % 3]) for i in range(12)]
    pairs += [(b, a) for a, b in pairs]

    def transfer(i: int) -> None:
        source, target = pairs[i]
        # A wait long enough for a loaded machine: what this test looks for is a
        # deadlock, which PostgreSQL reports after deadlock_timeout (1 s) whatever
        # the lock timeout.
        wait = 120_000
        with session_factory() as s, s.begin():
            credits.lock_users(s, [source, target], lock_timeout_ms=wait)
            credits.adjust(s, source, -1, f"transfer {i}", "tests", lock_timeout_ms=wait)
            credits.adjust(s, target, +1, f"transfer {i}", "tests", lock_timeout_ms=wait)

    results = run_together(len(pairs), transfer)
    assert results == [None] * len(pairs)
    assert sorted(balance(sql, u) for u in users) == [1000, 1000, 1000]
    a, b = sorted(users[:2])
    with session.begin():
        assert credits.lock_users(session, [b, a, b]) == [a, b]
    with session.begin(), pytest.raises(errors.UserNotFound):
        credits.lock_users(session, [a, uuid.uuid4()])


def test_async_code_runs_the_operations_through_run_sync(sql, session, db_url):
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    user_id = funded_user(sql, session, 100)
    job_id = make_job(sql, user_id, credit_cost=30)

    async def main() -> tuple[int, type[Exception] | None]:
        engine = create_async_engine(db_url)
        errors.install(engine.sync_engine)
        try:
            async with AsyncSession(engine, expire_on_commit=False) as s:
                tx = await s.run_sync(lambda sync: credits.charge_job(sync, job_id))
                charged = tx.balance_after  # type: ignore[union-attr]
                # (A rollback expires what the session holds: read values before.)
                try:
                    await s.run_sync(
                        lambda sync: credits.adjust(sync, user_id, -1000, "too much", "tests")
                    )
                except errors.InsufficientCredits as exc:
                    return charged, type(exc)
                return charged, None
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == (70, errors.InsufficientCredits)
    assert balance(sql, user_id) == 70
