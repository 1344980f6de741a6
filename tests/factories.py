"""Small helpers that create rows with raw SQL, for the rule tests.

Every function takes ``db``: either the ``sql`` fixture (a callable that runs one
statement in its own committed transaction) or a SQLAlchemy ``Connection`` (the
statement then joins that connection's transaction). Each ``make_*`` returns the
new row's id; columns not named get the table's defaults.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

OLD = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
"""An old timestamp, for rows whose updated_at must be seen to move."""

_seq = itertools.count(1)


def run(db: Any, statement: str, **params: Any) -> list[Any]:
    """Run one statement on ``db`` (the ``sql`` fixture or a Connection); the rows."""
    if isinstance(db, Connection):
        result = db.execute(text(statement), params)
        return list(result) if result.returns_rows else []
    return db(statement, **params)


def scalar(db: Any, statement: str, **params: Any) -> Any:
    rows = run(db, statement, **params)
    return rows[0][0] if rows else None


def insert(db: Any, table: str, **cols: Any) -> uuid.UUID:
    """INSERT one row into ``table`` with ``cols``; dicts and lists go in as jsonb."""
    names: list[str] = []
    values: list[str] = []
    params: dict[str, Any] = {}
    for i, (name, value) in enumerate(cols.items()):
        key = f"p{i}"
        names.append(name)
        if isinstance(value, dict | list):
            values.append(f"CAST(:{key} AS jsonb)")
            params[key] = json.dumps(value)
        else:
            values.append(f":{key}")
            params[key] = value
    if names:
        statement = (
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(values)}) RETURNING id"
        )
    else:
        statement = f"INSERT INTO {table} DEFAULT VALUES RETURNING id"
    return scalar(db, statement, **params)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_seq)}-{uuid.uuid4().hex[:8]}"


# --- rows ---------------------------------------------------------------------------
def make_user(db: Any, email: str | None = None, **cols: Any) -> uuid.UUID:
    if email is None:
        email = f"{unique('user')}@example.com"
    return insert(db, "users", email=email, **cols)


def make_dataset(db: Any, user_id: uuid.UUID, name: str | None = None, **cols: Any) -> uuid.UUID:
    return insert(db, "datasets", user_id=user_id, name=name or unique("dataset"), **cols)


def make_version(
    db: Any,
    dataset_id: uuid.UUID,
    user_id: uuid.UUID | None = None,
    *,
    original: int | None = None,
    parquet: int | None = None,
    **cols: Any,
) -> uuid.UUID:
    """A dataset version; ``user_id`` defaults to the dataset's owner."""
    if user_id is None:
        user_id = scalar(db, "SELECT user_id FROM datasets WHERE id = :id", id=dataset_id)
    return insert(
        db,
        "dataset_versions",
        dataset_id=dataset_id,
        user_id=user_id,
        original_size_bytes=original,
        parquet_size_bytes=parquet,
        **cols,
    )


def make_workflow(db: Any, user_id: uuid.UUID, *, deleted: bool = False, **cols: Any) -> uuid.UUID:
    if deleted:
        cols.setdefault("is_deleted", True)
        cols.setdefault("deleted_at", dt.datetime.now(dt.UTC))
    return insert(db, "workflows", user_id=user_id, name=cols.pop("name", unique("wf")), **cols)


def make_snapshot(
    db: Any,
    user_id: uuid.UUID,
    workflow_id: uuid.UUID | None = None,
    data: dict[str, Any] | None = None,
    **cols: Any,
) -> uuid.UUID:
    return insert(
        db,
        "workflow_snapshots",
        user_id=user_id,
        workflow_id=workflow_id,
        snapshot_data=data if data is not None else {"nodes": [], "edges": []},
        **cols,
    )


def make_job(
    db: Any, user_id: uuid.UUID, snapshot_id: uuid.UUID | None = None, **cols: Any
) -> uuid.UUID:
    """A job; without ``snapshot_id`` a fresh snapshot of the user's is made for it."""
    if snapshot_id is None:
        snapshot_id = make_snapshot(db, user_id)
    return insert(db, "jobs", user_id=user_id, workflow_snapshot_id=snapshot_id, **cols)


def make_job_node(
    db: Any, job_id: uuid.UUID, user_id: uuid.UUID, node_id: str | None = None, **cols: Any
) -> uuid.UUID:
    cols.setdefault("node_type", "model")
    return insert(
        db, "job_nodes", job_id=job_id, user_id=user_id, node_id=node_id or unique("n"), **cols
    )


def make_model(
    db: Any, user_id: uuid.UUID, job_id: uuid.UUID | None = None, **cols: Any
) -> uuid.UUID:
    cols.setdefault("name", unique("model"))
    cols.setdefault("algorithm", "random_forest")
    cols.setdefault("problem_type", "classification")
    return insert(db, "models", user_id=user_id, job_id=job_id, **cols)


def make_profile(db: Any, version_id: uuid.UUID, **cols: Any) -> uuid.UUID:
    cols.setdefault("row_count", 10)
    cols.setdefault("column_count", 3)
    return insert(db, "dataset_profiles", dataset_version_id=version_id, **cols)


def make_ingestion_job(
    db: Any, version_id: uuid.UUID, user_id: uuid.UUID | None = None, **cols: Any
) -> uuid.UUID:
    if user_id is None:
        user_id = scalar(db, "SELECT user_id FROM dataset_versions WHERE id = :id", id=version_id)
    return insert(db, "ingestion_jobs", dataset_version_id=version_id, user_id=user_id, **cols)


def make_credit_package(db: Any, **cols: Any) -> uuid.UUID:
    cols.setdefault("name", unique("pkg"))
    cols.setdefault("credits", 100)
    cols.setdefault("price_cents", 999)
    return insert(db, "credit_packages", **cols)


def make_experiment(db: Any, user_id: uuid.UUID, **cols: Any) -> uuid.UUID:
    cols.setdefault("name", unique("exp"))
    return insert(db, "experiments", user_id=user_id, **cols)


def make_experiment_run(
    db: Any, experiment_id: uuid.UUID, user_id: uuid.UUID, **cols: Any
) -> uuid.UUID:
    return insert(db, "experiment_runs", experiment_id=experiment_id, user_id=user_id, **cols)


def make_tutorial(db: Any, **cols: Any) -> uuid.UUID:
    cols.setdefault("slug", unique("tut"))
    cols.setdefault("title", "A tutorial")
    return insert(db, "tutorials", **cols)


def make_progress(db: Any, user_id: uuid.UUID, tutorial_id: uuid.UUID, **cols: Any) -> uuid.UUID:
    return insert(db, "user_tutorial_progress", user_id=user_id, tutorial_id=tutorial_id, **cols)


# --- reading back -------------------------------------------------------------------
DERIVED = ("credit_balance", "dataset_count", "workflow_count", "model_count", "storage_used_bytes")


def user_derived(db: Any, user_id: uuid.UUID) -> dict[str, int]:
    """The trigger-maintained columns of one user, as stored."""
    rows = run(db, f"SELECT {', '.join(DERIVED)} FROM users WHERE id = :id", id=user_id)
    assert rows, f"user {user_id} does not exist"
    return dict(zip(DERIVED, rows[0], strict=True))


def counts(db: Any, user_id: uuid.UUID) -> tuple[int, int, int]:
    """(dataset_count, workflow_count, model_count) of one user."""
    d = user_derived(db, user_id)
    return d["dataset_count"], d["workflow_count"], d["model_count"]


def storage(db: Any, user_id: uuid.UUID) -> int:
    return user_derived(db, user_id)["storage_used_bytes"]


def true_counts(db: Any, user_id: uuid.UUID) -> tuple[int, int, int]:
    """The counts recomputed from the tables themselves."""
    return tuple(
        run(
            db,
            """
            SELECT (SELECT count(*) FROM datasets WHERE user_id = :id),
                   (SELECT count(*) FROM workflows WHERE user_id = :id AND NOT is_deleted),
                   (SELECT count(*) FROM models WHERE user_id = :id)
            """,
            id=user_id,
        )[0]
    )


def true_storage(db: Any, user_id: uuid.UUID) -> int:
    return scalar(
        db,
        """
        SELECT coalesce(sum(coalesce(original_size_bytes, 0) + coalesce(parquet_size_bytes, 0)), 0)
          FROM dataset_versions WHERE user_id = :id
        """,
        id=user_id,
    )


def assert_consistent(db: Any, *user_ids: uuid.UUID) -> None:
    """Every stored counter and storage total equals the one recomputed from the tables."""
    for user_id in user_ids:
        assert counts(db, user_id) == true_counts(db, user_id), user_id
        assert storage(db, user_id) == true_storage(db, user_id), user_id
