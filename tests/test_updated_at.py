"""set_updated_at (sql/triggers/updated_at.sql).

Every table with an updated_at column has it set to now() by any UPDATE that
changes the row, whoever issues it and whatever value the client gives; a no-op
UPDATE leaves it alone. now() is the transaction's start, so rows are inserted
with an old updated_at ('2000-01-01') in one transaction and updated in another.

users is the documented exception: changes the triggers make (balance, counters,
storage) do not count as an edit of the account; a profile edit does.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from database.models import (
    CreditPackage,
    Dataset,
    DatasetProfile,
    DatasetVersion,
    Experiment,
    IngestionJob,
    Job,
    JobNode,
    JobStatus,
    Model,
    Tutorial,
    User,
    UserTutorialProgress,
    Workflow,
)

from factories import (
    OLD,
    make_credit_package,
    make_dataset,
    make_experiment,
    make_ingestion_job,
    make_job,
    make_job_node,
    make_model,
    make_profile,
    make_progress,
    make_tutorial,
    make_user,
    make_version,
    make_workflow,
    run,
    scalar,
    user_derived,
)

STAMPS = {"created_at": OLD, "updated_at": OLD}
OLDER = dt.datetime(1999, 1, 1, tzinfo=dt.UTC)

# table -> (an assignment that always changes the row, a no-op assignment)
CHANGES: dict[str, tuple[str, str]] = {
    "users": ("full_name = coalesce(full_name, '') || 'x'", "full_name = full_name"),
    "datasets": ("name = name || 'x'", "name = name"),
    "dataset_versions": (
        "version_label = coalesce(version_label, '') || 'x'",
        "version_label = version_label",
    ),
    "dataset_profiles": ("missing_cells = missing_cells + 1", "missing_cells = missing_cells"),
    "ingestion_jobs": ("attempts = attempts + 1", "attempts = attempts"),
    "workflows": ("name = name || 'x'", "name = name"),
    "jobs": ("priority = priority + 1", "priority = priority"),
    "job_nodes": ("error_message = coalesce(error_message, '') || 'x'", "node_id = node_id"),
    "models": ("name = name || 'x'", "name = name"),
    "credit_packages": ("price_cents = price_cents + 1", "price_cents = price_cents"),
    "experiments": ("name = name || 'x'", "name = name"),
    "tutorials": ("title = title || 'x'", "title = title"),
    "user_tutorial_progress": ("current_step = current_step + 1", "current_step = current_step"),
}


def _rows(sql) -> dict[str, uuid.UUID]:
    """One row of every table with updated_at, each stamped 2000-01-01."""
    u = make_user(sql, **STAMPS)
    d = make_dataset(sql, u, **STAMPS)
    v = make_version(sql, d, original=10, **STAMPS)
    w = make_workflow(sql, u, **STAMPS)
    j = make_job(sql, u, **STAMPS)
    t = make_tutorial(sql, **STAMPS)
    return {
        "users": u,
        "datasets": d,
        "dataset_versions": v,
        "dataset_profiles": make_profile(sql, v, **STAMPS),
        "ingestion_jobs": make_ingestion_job(sql, v, **STAMPS),
        "workflows": w,
        "jobs": j,
        "job_nodes": make_job_node(sql, j, u, **STAMPS),
        "models": make_model(sql, u, job_id=j, **STAMPS),
        "credit_packages": make_credit_package(sql, **STAMPS),
        "experiments": make_experiment(sql, u, dataset_id=d, **STAMPS),
        "tutorials": t,
        "user_tutorial_progress": make_progress(sql, u, t, **STAMPS),
    }


def _updated_at(sql, table: str, row_id: uuid.UUID) -> dt.datetime:
    return scalar(sql, f"SELECT updated_at FROM {table} WHERE id = :id", id=row_id)


def _update(sql, table: str, row_id: uuid.UUID, assignments: str) -> tuple[dt.datetime, Any]:
    """Run one UPDATE in its own transaction; (updated_at as stored, that transaction's now())."""
    rows = run(
        sql,
        f"UPDATE {table} SET {assignments} WHERE id = :id RETURNING updated_at, now()",
        id=row_id,
    )
    assert len(rows) == 1, (table, assignments)
    return rows[0][0], rows[0][1]


def test_every_table_with_updated_at_has_the_trigger(sql):
    with_column = {
        r[0]
        for r in sql(
            "SELECT table_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND column_name = 'updated_at'"
        )
    }
    with_trigger = {
        r[0]
        for r in sql(
            "SELECT c.relname FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid"
            " JOIN pg_proc AS p ON p.oid = t.tgfoid"
            " WHERE NOT t.tgisinternal AND p.proname = 'set_updated_at'"
            " AND t.tgtype & 2 = 2"  # BEFORE
            " AND t.tgtype & 16 = 16"  # UPDATE
            " AND t.tgtype & 1 = 1"  # FOR EACH ROW
        )
    }
    assert set(CHANGES) <= with_column
    assert with_column == with_trigger


def test_rows_start_with_the_stamps_given(sql):
    rows = _rows(sql)
    for table, row_id in rows.items():
        assert _updated_at(sql, table, row_id) == OLD, table


def test_update_bumps_updated_at(sql):
    rows = _rows(sql)
    for table, row_id in rows.items():
        change, _ = CHANGES[table]
        stamped, now = _update(sql, table, row_id, change)
        assert stamped == now, table
        assert stamped > OLD, table
        assert _updated_at(sql, table, row_id) == stamped, table


def test_client_cannot_choose_updated_at(sql):
    """An explicit old value, with or without another change, is replaced by now()."""
    rows = _rows(sql)
    for table, row_id in rows.items():
        change, _ = CHANGES[table]
        stamped, now = _update(sql, table, row_id, f"{change}, updated_at = '1999-01-01'")
        assert stamped == now, table
        stamped, now = _update(sql, table, row_id, "updated_at = '1999-01-01'")
        assert stamped == now, table
        # nor a future one
        stamped, now = _update(sql, table, row_id, f"{change}, updated_at = '2999-01-01'")
        assert stamped == now, table
        assert _updated_at(sql, table, row_id) > OLD, table


def test_noop_update_keeps_updated_at(sql):
    rows = _rows(sql)
    for table, row_id in rows.items():
        _, noop = CHANGES[table]
        stamped, _ = _update(sql, table, row_id, noop)
        assert stamped == OLD, table
        stamped, _ = _update(sql, table, row_id, "updated_at = updated_at")
        assert stamped == OLD, table
        assert _updated_at(sql, table, row_id) == OLD, table


def test_bulk_update_bumps_only_changed_rows(sql):
    u = make_user(sql)
    ids = [make_dataset(sql, u, name=f"d{i}", **STAMPS) for i in range(4)]
    # rows d0, d1 change; d2, d3 are assigned their own values
    sql(
        "UPDATE datasets SET name = CASE WHEN name IN ('d0', 'd1') THEN name || 'x' ELSE name END"
        " WHERE user_id = :u",
        u=u,
    )
    stamps = [_updated_at(sql, "datasets", i) for i in ids]
    assert stamps[0] > OLD and stamps[1] > OLD
    assert stamps[2] == OLD and stamps[3] == OLD


# --- users: trigger-made changes are not edits ---------------------------------------------
def test_users_trigger_changes_do_not_bump(sql):
    u = make_user(sql, **STAMPS)
    d = make_dataset(sql, u)
    v = make_version(sql, d, original=100)
    sql("UPDATE dataset_versions SET parquet_size_bytes = 5 WHERE id = :v", v=v)
    w = make_workflow(sql, u)
    sql("UPDATE workflows SET is_deleted = true, deleted_at = now() WHERE id = :w", w=w)
    make_workflow(sql, u)
    make_model(sql, u)
    sql(
        "INSERT INTO credit_transactions (user_id, type, amount, description, actor)"
        " VALUES (:u, 'adjustment', 25, 'bonus', 'tests')",
        u=u,
    )
    other = make_user(sql)
    sql("UPDATE datasets SET user_id = :o WHERE id = :d", o=other, d=d)
    make_dataset(sql, u)
    derived = user_derived(sql, u)
    assert derived == {
        "credit_balance": 25,
        "dataset_count": 1,
        "workflow_count": 1,
        "model_count": 1,
        "storage_used_bytes": 0,
    }
    assert _updated_at(sql, "users", u) == OLD
    # a profile edit is an edit
    stamped, now = _update(sql, "users", u, "full_name = 'Edited'")
    assert stamped == now > OLD
    assert user_derived(sql, u) == derived


# --- the ORM -------------------------------------------------------------------------------
ORM_EDITS: list[tuple[type, str, Callable[[Any], None]]] = [
    (User, "users", lambda o: setattr(o, "full_name", "Edited")),
    (Dataset, "datasets", lambda o: setattr(o, "description", "edited")),
    (DatasetVersion, "dataset_versions", lambda o: setattr(o, "row_count", 42)),
    (DatasetProfile, "dataset_profiles", lambda o: setattr(o, "duplicate_rows", 3)),
    (IngestionJob, "ingestion_jobs", lambda o: setattr(o, "attempts", 2)),
    (Workflow, "workflows", lambda o: setattr(o, "definition", {"nodes": [1], "edges": []})),
    (Job, "jobs", lambda o: setattr(o, "status", JobStatus.QUEUED)),
    (JobNode, "job_nodes", lambda o: setattr(o, "error_message", "boom")),
    (Model, "models", lambda o: setattr(o, "name", "renamed")),
    (CreditPackage, "credit_packages", lambda o: setattr(o, "is_active", False)),
    (Experiment, "experiments", lambda o: setattr(o, "primary_metric", "rmse")),
    (Tutorial, "tutorials", lambda o: setattr(o, "sort_order", 9)),
    (UserTutorialProgress, "user_tutorial_progress", lambda o: setattr(o, "current_step", 1)),
]


def test_orm_commit_refreshes_updated_at(session: Session, sql):
    rows = _rows(sql)
    assert {table for _, table, _ in ORM_EDITS} == set(CHANGES)
    for model, table, edit in ORM_EDITS:
        obj = session.get(model, rows[table])
        assert obj.updated_at == OLD, table
        edit(obj)
        session.commit()
        # no refresh, no expiry (expire_on_commit=False): the value came back
        # with the UPDATE itself
        assert obj.updated_at > OLD, table
        assert obj.updated_at == _updated_at(sql, table, rows[table]), table


def test_orm_attribute_set_to_same_value_is_no_update(session: Session, sql):
    rows = _rows(sql)
    ds = session.get(Dataset, rows["datasets"])
    ds.name = ds.name
    session.commit()
    assert _updated_at(sql, "datasets", rows["datasets"]) == OLD


def test_orm_explicit_updated_at_is_overridden(session: Session, sql):
    """The database stamps now() even when the ORM sends an updated_at of its own."""
    rows = _rows(sql)
    ds = session.get(Dataset, rows["datasets"])
    ds.description = "edited"
    ds.updated_at = OLDER
    session.commit()
    stored = _updated_at(sql, "datasets", rows["datasets"])
    assert stored > OLD
    assert session.scalar(select(Dataset.updated_at).where(Dataset.id == ds.id)) == stored


def test_orm_object_matches_db_after_explicit_updated_at(session: Session, sql):
    rows = _rows(sql)
    ds = session.get(Dataset, rows["datasets"])
    ds.description = "edited"
    ds.updated_at = OLDER
    session.commit()
    assert ds.updated_at == _updated_at(sql, "datasets", rows["datasets"])
