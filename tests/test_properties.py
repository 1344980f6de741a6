"""Property-based: random sequences of everything that moves credits, counters and
storage, and of the data lifecycle; after every step `verify` finds no drift and
every balance is the one a plain Python model of the rules predicts.

A hypothesis RuleBasedStateMachine on one test database: each example starts new
users (the rows of earlier examples stay, and must stay consistent too).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from database import credits, errors, lifecycle
from database.verify import verify

LONG_AGO = dt.datetime.now(dt.UTC) - dt.timedelta(days=45)
TIERS = ("free", "pro", "enterprise")
RESTRICTIONS = ("none", "pro_only", "enterprise_only")
SIZES = st.none() | st.integers(0, 10**9)
ALLOWED = {
    "none": set(TIERS),
    "pro_only": {"pro", "enterprise"},
    "enterprise_only": {"enterprise"},
}


@dataclass
class UserModel:
    tier: str
    balance: int = 0
    #: active, deleted (restorable), old (deleted past the window), purged
    state: str = "active"


@dataclass
class JobModel:
    user: uuid.UUID
    cost: int
    charged: int | None = None
    refund_id: uuid.UUID | None = None
    charge_id: uuid.UUID | None = None


@dataclass
class DatasetModel:
    user: uuid.UUID
    versions: dict[uuid.UUID, int] = field(default_factory=dict)


class LedgerMachine(RuleBasedStateMachine):
    engine: Engine
    factory: sessionmaker[Session]

    def __init__(self) -> None:
        super().__init__()
        self.users: dict[uuid.UUID, UserModel] = {}
        self.packages: dict[uuid.UUID, tuple[int, bool, str]] = {}
        self.payments: dict[str, tuple[uuid.UUID, uuid.UUID, uuid.UUID]] = {}
        self.jobs: dict[uuid.UUID, JobModel] = {}
        self.datasets: dict[uuid.UUID, DatasetModel] = {}
        #: workflow -> (user, None | "recent" | "old")
        self.workflows: dict[uuid.UUID, tuple[uuid.UUID, str | None]] = {}
        self.models: dict[uuid.UUID, uuid.UUID] = {}

    # --- helpers ---------------------------------------------------------------------
    def sql(self, statement: str, **params: Any) -> Any:
        with self.engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return result.scalar() if result.returns_rows else None

    def pick(self, data: st.DataObject, pool: Any) -> Any:
        # In creation order (dicts keep it), never sorted by id: ids are random, so a
        # sorted pool would map the same draw to a different row on a replay, and
        # hypothesis would see its data generation change (FlakyStrategyDefinition).
        return data.draw(st.sampled_from(list(pool)))

    def living(self) -> list[uuid.UUID]:
        return [u for u, m in self.users.items() if m.state != "purged"]

    # --- users and packages ----------------------------------------------------------
    @initialize(
        tiers=st.lists(st.sampled_from(TIERS), min_size=2, max_size=2),
        funds=st.lists(st.integers(0, 300), min_size=2, max_size=2),
    )
    def start(self, tiers: list[str], funds: list[int]) -> None:
        # Two users with credits, one package on sale: the steps have something to do.
        for tier, amount in zip(tiers, funds, strict=True):
            self.create_user(tier, amount)
        self.create_package(100, True, "none")

    @rule(tier=st.sampled_from(TIERS), funds=st.sampled_from([0, 50, 200]))
    def create_user(self, tier: str, funds: int) -> None:
        user_id = self.sql(
            "INSERT INTO users (email, tier) VALUES (:e, :t) RETURNING id",
            e=f"{uuid.uuid4().hex}@example.com",
            t=tier,
        )
        self.users[user_id] = UserModel(tier)
        if funds:
            with self.factory() as s:
                credits.adjust(s, user_id, funds, "opening balance", "hypothesis")
            self.users[user_id].balance = funds

    @rule(
        amount=st.integers(1, 200),
        active=st.sampled_from([True, True, False]),
        restriction=st.sampled_from(RESTRICTIONS),
    )
    def create_package(self, amount: int, active: bool, restriction: str) -> None:
        package_id = self.sql(
            "INSERT INTO credit_packages (name, credits, price_cents, is_active, tier_restriction)"
            " VALUES (:n, :c, 100, :a, :r) RETURNING id",
            n=uuid.uuid4().hex,
            c=amount,
            a=active,
            r=restriction,
        )
        self.packages[package_id] = (amount, active, restriction)

    # --- credits ---------------------------------------------------------------------
    @precondition(lambda self: self.users and self.packages)
    @rule(data=st.data(), reuse=st.booleans())
    def purchase(self, data: st.DataObject, reuse: bool) -> None:
        user_id = self.pick(data, self.users)
        package_id = self.pick(data, self.packages)
        user = self.users[user_id]
        amount, active, restriction = self.packages[package_id]
        ref = self.pick(data, self.payments) if reuse and self.payments else uuid.uuid4().hex
        with self.factory() as s:
            if ref in self.payments:
                first = self.payments[ref]
                if first[:2] == (user_id, package_id):
                    assert credits.purchase(s, user_id, package_id, ref).id == first[2]
                    return
            # Every refusal that applies is a right answer: the rules have no precedence.
            expected: tuple[type[Exception], ...] = tuple(
                error
                for error, applies in (
                    (errors.PaymentReferenceConflict, ref in self.payments),
                    (errors.UserDeleted, user.state != "active"),
                    (errors.PackageUnavailable, not active),
                    (errors.PackageTierRestricted, user.tier not in ALLOWED[restriction]),
                )
                if applies
            )
            if errors.PaymentReferenceConflict in expected:
                expected = (errors.PaymentReferenceConflict,)  # looked up before anything
            try:
                tx = credits.purchase(s, user_id, package_id, ref)
            except errors.DatabaseError as exc:
                assert expected and isinstance(exc, expected), exc
                return
            assert not expected, f"expected one of {expected}"
            user.balance += amount
            assert tx.balance_after == user.balance
            self.payments[ref] = (user_id, package_id, tx.id)

    @precondition(lambda self: any(m.state != "purged" for m in self.users.values()))
    @rule(
        data=st.data(),
        cost=st.sampled_from([0, 1, 10, 35, 120]),
        then=st.sampled_from(["nothing", "charge", "charge", "charge and refund"]),
    )
    def run_job(self, data: st.DataObject, cost: int, then: str) -> None:
        user_id = self.pick(data, self.living())
        snapshot = self.sql(
            "INSERT INTO workflow_snapshots (user_id, snapshot_data)"
            " VALUES (:u, '{}') RETURNING id",
            u=user_id,
        )
        job_id = self.sql(
            "INSERT INTO jobs (user_id, workflow_snapshot_id, credit_cost) VALUES (:u, :s, :c)"
            " RETURNING id",
            u=user_id,
            s=snapshot,
            c=cost,
        )
        self.jobs[job_id] = JobModel(user_id, cost)
        if then != "nothing":
            self._charge(job_id)
        if then == "charge and refund":
            self._refund(job_id, data.draw(st.none() | st.integers(1, cost + 1)))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def charge(self, data: st.DataObject) -> None:
        self._charge(self.pick(data, self.jobs))

    def _charge(self, job_id: uuid.UUID) -> None:
        job = self.jobs[job_id]
        user = self.users[job.user]
        with self.factory() as s:
            try:
                tx = credits.charge_job(s, job_id)
            except errors.InsufficientCredits:
                assert job.charged is None and user.balance < job.cost
                return
        if job.charged is not None:
            assert tx is not None and tx.id == job.charge_id
        elif job.cost == 0:
            assert tx is None
        else:
            assert tx is not None and user.balance >= job.cost
            user.balance -= job.cost
            job.charged, job.charge_id = job.cost, tx.id
            assert tx.balance_after == user.balance

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), partial=st.booleans())
    def refund(self, data: st.DataObject, partial: bool) -> None:
        job_id = self.pick(data, self.jobs)
        charged = self.jobs[job_id].charged or 1
        self._refund(job_id, data.draw(st.integers(1, charged + 1)) if partial else None)

    def _refund(self, job_id: uuid.UUID, amount: int | None) -> None:
        job = self.jobs[job_id]
        user = self.users[job.user]
        with self.factory() as s:
            try:
                tx = credits.refund_job(s, job_id, "property test", amount=amount)
            except errors.JobNotCharged:
                assert job.charged is None
                return
            except errors.RefundExceedsCharge:
                assert job.refund_id is None and job.charged is not None
                assert amount is not None and amount > job.charged
                return
        if job.refund_id is not None:
            assert tx.id == job.refund_id
            return
        assert job.charged is not None
        user.balance += job.charged if amount is None else amount
        job.refund_id = tx.id
        assert tx.balance_after == user.balance

    @precondition(lambda self: self.users)
    @rule(data=st.data(), amount=st.integers(-150, 150).filter(bool))
    def adjust(self, data: st.DataObject, amount: int) -> None:
        user_id = self.pick(data, self.users)
        user = self.users[user_id]
        with self.factory() as s:
            try:
                tx = credits.adjust(s, user_id, amount, "property test", "hypothesis")
            except errors.InsufficientCredits:
                assert user.balance + amount < 0
                return
        user.balance += amount
        assert tx.balance_after == user.balance >= 0

    # --- datasets, workflows, models ---------------------------------------------------
    @precondition(lambda self: any(m.state != "purged" for m in self.users.values()))
    @rule(data=st.data(), versions=st.lists(st.tuples(SIZES, SIZES), max_size=3))
    def create_dataset(self, data: st.DataObject, versions: list[tuple[Any, Any]]) -> None:
        user_id = self.pick(data, self.living())
        dataset_id = self.sql(
            "INSERT INTO datasets (user_id, name) VALUES (:u, 'd') RETURNING id", u=user_id
        )
        self.datasets[dataset_id] = DatasetModel(user_id)
        for original, parquet in versions:
            self._add_version(dataset_id, original, parquet)

    @precondition(lambda self: self.datasets)
    @rule(data=st.data(), original=SIZES, parquet=SIZES)
    def create_version(self, data: st.DataObject, original: int | None, parquet: int | None):
        self._add_version(self.pick(data, self.datasets), original, parquet)

    def _add_version(self, dataset_id: uuid.UUID, original: int | None, parquet: int | None):
        dataset = self.datasets[dataset_id]
        version_id = self.sql(
            "INSERT INTO dataset_versions (dataset_id, user_id, original_size_bytes,"
            " parquet_size_bytes) VALUES (:d, :u, :o, :p) RETURNING id",
            d=dataset_id,
            u=dataset.user,
            o=original,
            p=parquet,
        )
        dataset.versions[version_id] = (original or 0) + (parquet or 0)

    @precondition(lambda self: any(d.versions for d in self.datasets.values()))
    @rule(data=st.data())
    def delete_version(self, data: st.DataObject) -> None:
        dataset_id = self.pick(data, [d for d, m in self.datasets.items() if m.versions])
        version_id = self.pick(data, self.datasets[dataset_id].versions)
        self.sql("DELETE FROM dataset_versions WHERE id = :v", v=version_id)
        del self.datasets[dataset_id].versions[version_id]

    @precondition(lambda self: self.datasets)
    @rule(data=st.data())
    def delete_dataset(self, data: st.DataObject) -> None:
        dataset_id = self.pick(data, self.datasets)
        self.sql("DELETE FROM datasets WHERE id = :d", d=dataset_id)
        del self.datasets[dataset_id]

    @precondition(lambda self: any(m.state != "purged" for m in self.users.values()))
    @rule(data=st.data())
    def create_workflow(self, data: st.DataObject) -> None:
        user_id = self.pick(data, self.living())
        workflow_id = self.sql(
            "INSERT INTO workflows (user_id, name) VALUES (:u, 'w') RETURNING id", u=user_id
        )
        self.workflows[workflow_id] = (user_id, None)

    @precondition(lambda self: self.workflows)
    @rule(data=st.data(), old=st.booleans())
    def soft_delete_workflow(self, data: st.DataObject, old: bool) -> None:
        workflow_id = self.pick(data, self.workflows)
        user_id, deleted = self.workflows[workflow_id]
        with self.factory() as s:
            lifecycle.soft_delete_workflow(s, workflow_id, at=LONG_AGO if old else None)
        if deleted is None:
            self.workflows[workflow_id] = (user_id, "old" if old else "recent")

    @precondition(lambda self: self.workflows)
    @rule(data=st.data())
    def restore_workflow(self, data: st.DataObject) -> None:
        workflow_id = self.pick(data, self.workflows)
        with self.factory() as s:
            assert not lifecycle.restore_workflow(s, workflow_id).is_deleted
        self.workflows[workflow_id] = (self.workflows[workflow_id][0], None)

    @precondition(lambda self: any(m.state != "purged" for m in self.users.values()))
    @rule(data=st.data(), with_job=st.booleans())
    def create_model(self, data: st.DataObject, with_job: bool) -> None:
        user_id = self.pick(data, self.living())
        own_jobs = [j for j, m in self.jobs.items() if m.user == user_id]
        job_id = self.pick(data, own_jobs) if with_job and own_jobs else None
        model_id = self.sql(
            "INSERT INTO models (user_id, job_id, name, algorithm, problem_type)"
            " VALUES (:u, :j, 'm', 'rf', 'regression') RETURNING id",
            u=user_id,
            j=job_id,
        )
        self.models[model_id] = user_id

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def delete_model(self, data: st.DataObject) -> None:
        model_id = self.pick(data, self.models)
        self.sql("DELETE FROM models WHERE id = :m", m=model_id)
        del self.models[model_id]

    # --- users' lifecycle ------------------------------------------------------------------
    @precondition(lambda self: self.users)
    @rule(data=st.data(), old=st.booleans())
    def delete_user(self, data: st.DataObject, old: bool) -> None:
        user_id = self.pick(data, self.users)
        with self.factory() as s:
            lifecycle.soft_delete_user(s, user_id, at=LONG_AGO if old else None)
        user = self.users[user_id]
        if user.state == "active":
            user.state = "old" if old else "deleted"

    @precondition(lambda self: self.users)
    @rule(data=st.data())
    def restore_user(self, data: st.DataObject) -> None:
        user_id = self.pick(data, self.users)
        user = self.users[user_id]
        expected = {"purged": errors.UserPurged, "old": errors.RestoreWindowExpired}
        with self.factory() as s:
            try:
                lifecycle.restore_user(s, user_id)
            except errors.DatabaseError as exc:
                assert isinstance(exc, expected[user.state]), exc
                return
        assert user.state in ("active", "deleted")
        user.state = "active"

    @rule(batch_size=st.sampled_from([1, 3, 500]))
    def purge(self, batch_size: int) -> None:
        report = lifecycle.purge(self.engine, batch_size=batch_size, remove_file=lambda _: False)
        purged = {u for u, m in self.users.items() if m.state == "old"}
        assert report.users_skipped == 0
        assert report.users_purged >= len(purged)  # earlier examples' users count too
        for user_id in purged:
            self.users[user_id].state = "purged"
        self.datasets = {d: m for d, m in self.datasets.items() if m.user not in purged}
        self.models = {m: u for m, u in self.models.items() if u not in purged}
        self.workflows = {
            w: (u, deleted)
            for w, (u, deleted) in self.workflows.items()
            if u not in purged and deleted != "old"
        }
        self.jobs = {
            j: m for j, m in self.jobs.items() if m.user not in purged or m.charged is not None
        }
        if self.jobs:  # every job the model keeps is still there
            kept = self.sql("SELECT count(*) FROM jobs WHERE id = ANY(:j)", j=list(self.jobs))
            assert kept == len(self.jobs)

    # --- after every step ----------------------------------------------------------------
    @invariant()
    def no_drift(self) -> None:
        report = verify(self.engine)
        assert report.ok, report.render()

    @invariant()
    def balances_follow_the_model(self) -> None:
        if not self.users:
            return
        with self.engine.connect() as conn:
            stored = dict(
                conn.execute(
                    text("SELECT id, credit_balance FROM users WHERE id = ANY(:ids)"),
                    {"ids": list(self.users)},
                ).all()
            )
        assert stored == {u: m.balance for u, m in self.users.items()}


def test_random_operations_never_drift(engine: Engine, session_factory: sessionmaker[Session]):
    machine = type("Machine", (LedgerMachine,), {"engine": engine, "factory": session_factory})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=12,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
