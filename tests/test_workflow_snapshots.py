"""Workflow snapshots are immutable (sql/triggers/workflow_snapshots.sql).

Any UPDATE fails with ML006 (SnapshotImmutable); the one change allowed is the
foreign key's own ON DELETE SET NULL, which clears workflow_id when the source
workflow is deleted; the snapshot and the jobs run from it remain.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, selectinload

from database import errors
from database.models import Job, User, Workflow, WorkflowSnapshot

from factories import (
    make_job,
    make_job_node,
    make_snapshot,
    make_user,
    make_workflow,
    run,
    scalar,
)

DATA = {"nodes": [{"id": "n1", "type": "dataset", "config": {"k": 1}}], "edges": []}


def _snapshot_row(sql, snapshot_id):
    rows = run(
        sql,
        "SELECT id, workflow_id, user_id, snapshot_data, created_at"
        " FROM workflow_snapshots WHERE id = :s",
        s=snapshot_id,
    )
    return tuple(rows[0]) if rows else None


def test_raw_updates_refused(sql):
    u, other = make_user(sql), make_user(sql)
    w, w2 = make_workflow(sql, u), make_workflow(sql, u)
    s = make_snapshot(sql, u, w, DATA)
    before = _snapshot_row(sql, s)
    attempts = {
        "snapshot_data": (
            "snapshot_data = CAST(:v AS jsonb)",
            json.dumps({"nodes": [], "edges": []}),
        ),
        "snapshot_data in place": (
            "snapshot_data = snapshot_data || CAST(:v AS jsonb)",
            '{"x": 1}',
        ),
        "user_id": ("user_id = :v", other),
        "created_at": ("created_at = :v", dt.datetime(2001, 1, 1, tzinfo=dt.UTC)),
        "id": ("id = :v", "00000000-0000-0000-0000-000000000001"),
        "workflow_id to another workflow": ("workflow_id = :v", w2),
        "no-op": ("snapshot_data = snapshot_data", None),
    }
    for name, (assignment, value) in attempts.items():
        params = {"s": s} if value is None else {"s": s, "v": value}
        with pytest.raises(errors.SnapshotImmutable) as info:
            sql(f"UPDATE workflow_snapshots SET {assignment} WHERE id = :s", **params)
        assert info.value.sqlstate == "ML006", name
    assert _snapshot_row(sql, s) == before


def test_bulk_update_refused_whole(sql):
    u = make_user(sql)
    snaps = [make_snapshot(sql, u, None, {"n": i}) for i in range(3)]
    with pytest.raises(errors.SnapshotImmutable):
        sql("UPDATE workflow_snapshots SET snapshot_data = '{}'::jsonb WHERE user_id = :u", u=u)
    assert [
        scalar(sql, "SELECT snapshot_data FROM workflow_snapshots WHERE id = :s", s=s)
        for s in snaps
    ] == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
    ]


def test_detached_snapshot_stays_frozen(sql):
    """Once workflow_id is NULL, the other columns are still frozen."""
    u = make_user(sql)
    w = make_workflow(sql, u)
    s = make_snapshot(sql, u, w, DATA)
    sql("DELETE FROM workflows WHERE id = :w", w=w)
    before = _snapshot_row(sql, s)
    with pytest.raises(errors.SnapshotImmutable):
        sql("UPDATE workflow_snapshots SET snapshot_data = '{}'::jsonb WHERE id = :s", s=s)
    with pytest.raises(errors.SnapshotImmutable):
        sql(
            "UPDATE workflow_snapshots SET workflow_id = :w WHERE id = :s",
            w=make_workflow(sql, u),
            s=s,
        )
    assert _snapshot_row(sql, s) == before


def test_deleting_workflow_keeps_snapshots_and_jobs(sql):
    u = make_user(sql)
    w = make_workflow(sql, u)
    keep = make_workflow(sql, u)
    snaps = [make_snapshot(sql, u, w, {"v": i}) for i in range(3)]
    other = make_snapshot(sql, u, keep, DATA)
    jobs = [make_job(sql, u, s) for s in snaps]
    nodes = [make_job_node(sql, j, u) for j in jobs]
    before = {s: _snapshot_row(sql, s) for s in snaps}

    sql("DELETE FROM workflows WHERE id = :w", w=w)

    for s in snaps:
        row = _snapshot_row(sql, s)
        assert row is not None
        assert row[1] is None  # workflow_id cleared
        assert row[0] == before[s][0] and row[2:] == before[s][2:]  # nothing else changed
    assert scalar(sql, "SELECT workflow_id FROM workflow_snapshots WHERE id = :s", s=other) == keep
    assert scalar(sql, "SELECT count(*) FROM jobs WHERE id = ANY(CAST(:j AS uuid[]))", j=jobs) == 3
    assert (
        scalar(sql, "SELECT count(*) FROM job_nodes WHERE id = ANY(CAST(:n AS uuid[]))", n=nodes)
        == 3
    )
    assert {
        r[0] for r in sql("SELECT workflow_snapshot_id FROM jobs WHERE user_id = :u", u=u)
    } == set(snaps)


def test_soft_deleting_workflow_leaves_snapshots(sql):
    u = make_user(sql)
    w = make_workflow(sql, u)
    s = make_snapshot(sql, u, w, DATA)
    sql("UPDATE workflows SET is_deleted = true, deleted_at = now() WHERE id = :w", w=w)
    assert scalar(sql, "SELECT workflow_id FROM workflow_snapshots WHERE id = :s", s=s) == w


def test_bulk_delete_of_workflows_of_several_users(sql):
    users = [make_user(sql) for _ in range(3)]
    snaps = []
    for u in users:
        for _ in range(2):
            w = make_workflow(sql, u)
            s = make_snapshot(sql, u, w, DATA)
            make_job(sql, u, s)
            snaps.append(s)
    sql("DELETE FROM workflows WHERE user_id = ANY(CAST(:ids AS uuid[]))", ids=users)
    rows = sql(
        "SELECT workflow_id FROM workflow_snapshots WHERE id = ANY(CAST(:s AS uuid[]))", s=snaps
    )
    assert len(rows) == 6
    assert all(r[0] is None for r in rows)
    assert scalar(sql, "SELECT count(*) FROM jobs") == 6


def test_snapshot_references(sql):
    """A job runs its owner's own snapshot; a snapshot with jobs cannot be deleted."""
    a, b = make_user(sql), make_user(sql)
    s = make_snapshot(sql, a, None, DATA)
    with pytest.raises(errors.ReferenceViolation):
        make_job(sql, b, s)
    make_job(sql, a, s)
    with pytest.raises(errors.ReferenceViolation):
        sql("DELETE FROM workflow_snapshots WHERE id = :s", s=s)
    # a snapshot's workflow must exist
    with pytest.raises(errors.ReferenceViolation):
        make_snapshot(sql, a, "00000000-0000-0000-0000-000000000001", DATA)
    assert _snapshot_row(sql, s) is not None


def test_client_cannot_detach_snapshot(sql):
    u = make_user(sql)
    w = make_workflow(sql, u)
    s = make_snapshot(sql, u, w, DATA)
    with pytest.raises(errors.SnapshotImmutable):
        sql("UPDATE workflow_snapshots SET workflow_id = NULL WHERE id = :s", s=s)
    assert scalar(sql, "SELECT workflow_id FROM workflow_snapshots WHERE id = :s", s=s) == w


# --- the ORM -------------------------------------------------------------------------------
def test_orm_updates_refused(session: Session, sql):
    u, other = make_user(sql), make_user(sql)
    w = make_workflow(sql, u)
    s = make_snapshot(sql, u, w, DATA)
    before = _snapshot_row(sql, s)
    edits = [
        ("snapshot_data", {"nodes": [], "edges": [], "tampered": True}),
        ("user_id", other),
        ("created_at", dt.datetime(2001, 1, 1, tzinfo=dt.UTC)),
        ("workflow_id", make_workflow(sql, u)),
    ]
    for attribute, value in edits:
        snap = session.get(WorkflowSnapshot, s)
        setattr(snap, attribute, value)
        with pytest.raises(errors.SnapshotImmutable):
            session.commit()
        session.rollback()
        assert _snapshot_row(sql, s) == before, attribute
    with pytest.raises(errors.SnapshotImmutable):
        session.execute(
            update(WorkflowSnapshot).where(WorkflowSnapshot.id == s).values(snapshot_data={})
        )
    session.rollback()
    assert _snapshot_row(sql, s) == before


def test_orm_delete_workflow_keeps_snapshot_and_jobs(session: Session):
    user = User(email="snap@example.com")
    session.add(user)
    session.flush()
    wf = Workflow(user_id=user.id, name="w", definition=DATA)
    session.add(wf)
    session.flush()
    snap = WorkflowSnapshot(workflow_id=wf.id, user_id=user.id, snapshot_data=wf.definition)
    session.add(snap)
    session.flush()
    job = Job(user_id=user.id, workflow_snapshot_id=snap.id)
    session.add(job)
    session.commit()

    session.delete(wf)
    session.commit()

    stored = session.execute(
        select(WorkflowSnapshot.workflow_id, WorkflowSnapshot.snapshot_data).where(
            WorkflowSnapshot.id == snap.id
        )
    ).one()
    assert stored.workflow_id is None
    assert stored.snapshot_data == DATA
    assert session.scalar(select(Job.workflow_snapshot_id).where(Job.id == job.id)) == snap.id
    # and via a bulk delete
    wf2 = Workflow(user_id=user.id, name="w2")
    session.add(wf2)
    session.flush()
    snap2 = WorkflowSnapshot(workflow_id=wf2.id, user_id=user.id, snapshot_data={"a": 1})
    session.add(snap2)
    session.commit()
    session.execute(delete(Workflow).where(Workflow.id == wf2.id))
    session.commit()
    assert (
        session.scalar(select(WorkflowSnapshot.workflow_id).where(WorkflowSnapshot.id == snap2.id))
        is None
    )


def test_orm_delete_workflow_with_snapshots_loaded(session: Session, sql):
    """Deleting a workflow whose snapshots are loaded in the session still works."""
    u = make_user(sql)
    w = make_workflow(sql, u)
    snaps = [make_snapshot(sql, u, w, {"v": i}) for i in range(2)]
    make_job(sql, u, snaps[0])
    wf = session.scalars(
        select(Workflow).where(Workflow.id == w).options(selectinload(Workflow.snapshots))
    ).one()
    assert {s.id for s in wf.snapshots} == set(snaps)
    session.delete(wf)
    session.commit()
    rows = sql(
        "SELECT workflow_id, snapshot_data FROM workflow_snapshots"
        " WHERE id = ANY(CAST(:s AS uuid[])) ORDER BY snapshot_data->>'v'",
        s=snaps,
    )
    assert [tuple(r) for r in rows] == [(None, {"v": 0}), (None, {"v": 1})]
