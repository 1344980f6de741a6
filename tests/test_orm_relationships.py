"""The relationships of the seed, both ways, loaded explicitly (never lazily)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session, selectinload

from database.models import (
    CreditPackage,
    CreditTransaction,
    Dataset,
    DatasetVersion,
    Job,
    JobNode,
    Model,
    NodeType,
    ProblemType,
    TransactionType,
    User,
    Workflow,
    WorkflowSnapshot,
)


def build_graph(session: Session) -> User:
    user = User(email="owner@example.com")
    session.add(user)
    session.flush()
    dataset = Dataset(user_id=user.id, name="iris")
    session.add(dataset)
    session.flush()
    version = DatasetVersion(dataset_id=dataset.id, user_id=user.id, original_size_bytes=10)
    session.add(version)
    session.flush()
    dataset.current_version_id = version.id
    workflow = Workflow(user_id=user.id, name="wf")
    session.add(workflow)
    session.flush()
    snapshot = WorkflowSnapshot(
        workflow_id=workflow.id, user_id=user.id, snapshot_data=workflow.definition
    )
    session.add(snapshot)
    session.flush()
    job = Job(user_id=user.id, workflow_snapshot_id=snapshot.id, credit_cost=5)
    session.add(job)
    session.flush()
    session.add(JobNode(job_id=job.id, user_id=user.id, node_id="n1", node_type=NodeType.DATASET))
    session.add(
        Model(
            user_id=user.id,
            job_id=job.id,
            name="m",
            algorithm="random_forest",
            problem_type=ProblemType.CLASSIFICATION,
        )
    )
    package = CreditPackage(name="starter", credits=50, price_cents=500)
    session.add(package)
    session.flush()
    session.add(
        CreditTransaction(
            user_id=user.id,
            type=TransactionType.PURCHASE,
            amount=50,
            package_id=package.id,
            stripe_payment_id="pi_1",
        )
    )
    session.commit()
    return user


def test_relationships_load_both_ways(session: Session) -> None:
    user_id = build_graph(session).id
    session.expunge_all()

    user = session.scalars(
        select(User)
        .where(User.id == user_id)
        .options(
            selectinload(User.datasets).selectinload(Dataset.versions),
            selectinload(User.datasets).selectinload(Dataset.current_version),
            selectinload(User.workflows).selectinload(Workflow.snapshots),
            selectinload(User.workflows).selectinload(Workflow.jobs),
            selectinload(User.jobs).selectinload(Job.nodes),
            selectinload(User.jobs).selectinload(Job.models),
            selectinload(User.models),
            selectinload(User.credit_transactions).selectinload(CreditTransaction.package),
        )
    ).one()

    assert [d.name for d in user.datasets] == ["iris"]
    dataset = user.datasets[0]
    assert [v.version_number for v in dataset.versions] == [1]
    assert dataset.current_version is not None
    assert dataset.current_version.id == dataset.versions[0].id
    workflow = user.workflows[0]
    assert len(workflow.snapshots) == 1
    assert [j.id for j in workflow.jobs] == [user.jobs[0].id]
    assert [n.node_id for n in user.jobs[0].nodes] == ["n1"]
    assert [m.name for m in user.jobs[0].models] == ["m"]
    assert user.models[0].job_id == user.jobs[0].id
    assert user.credit_transactions[0].package is not None
    assert user.credit_transactions[0].balance_after == 50
    # Database-maintained values came back without a lazy load.
    assert (user.credit_balance, user.dataset_count, user.workflow_count) == (50, 1, 1)
    assert user.model_count == 1
    assert user.storage_used_bytes == 10


def test_lazy_loads_raise_instead_of_querying(session: Session) -> None:
    user_id = build_graph(session).id
    session.expunge_all()
    user = session.get(User, user_id)
    assert user is not None
    with pytest.raises(InvalidRequestError, match="raise_on_sql"):
        _ = user.datasets
