"""database.lifecycle: soft delete, restore, purge and tombstones; `automl-db purge`."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from database import cli, credits, errors, lifecycle
from database import session as db_session
from database.config import get_settings
from database.lifecycle import LocalFileRemover, purge
from database.verify import verify

from factories import (
    make_credit_package,
    make_dataset,
    make_experiment,
    make_experiment_run,
    make_ingestion_job,
    make_job,
    make_job_node,
    make_model,
    make_profile,
    make_progress,
    make_snapshot,
    make_tutorial,
    make_user,
    make_version,
    make_workflow,
    scalar,
)

NOW = dt.datetime.now(dt.UTC)
LONG_AGO = NOW - dt.timedelta(days=31)


def count(sql: Any, table: str, user_id: uuid.UUID) -> int:
    return scalar(sql, f"SELECT count(*) FROM {table} WHERE user_id = :u", u=user_id)


def user_row(sql: Any, user_id: uuid.UUID) -> Any:
    return sql("SELECT * FROM users WHERE id = :u", u=user_id)[0]._mapping


def stored(root: Path, name: str) -> str:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"data")
    return name


def rich_user(sql: Any, session: Any, root: Path, **cols: Any) -> dict[str, Any]:
    """A user with one of everything purge touches; the ids, and the files."""
    user_id = make_user(
        sql,
        full_name="Ada Lovelace",
        oauth_provider="github",
        oauth_id=uuid.uuid4().hex,
        email_verified=True,
        **cols,
    )
    package_id = make_credit_package(sql, credits=100)
    credits.purchase(session, user_id, package_id, f"pi_{user_id}")
    workflow = make_workflow(sql, user_id)
    billed_snapshot = make_snapshot(sql, user_id, workflow)
    billed_job = make_job(sql, user_id, billed_snapshot, credit_cost=30)
    credits.charge_job(session, billed_job)
    make_job_node(sql, billed_job, user_id)
    free_snapshot = make_snapshot(sql, user_id, workflow)
    free_job = make_job(sql, user_id, free_snapshot, credit_cost=0)
    make_job_node(sql, free_job, user_id)
    dataset = make_dataset(sql, user_id)
    version = make_version(
        sql, dataset, original=100, parquet=20, s3_path=stored(root, f"{user_id}/v1.parquet")
    )
    make_version(sql, dataset, original=5, s3_path="s3://bucket/elsewhere.parquet")
    sql("UPDATE datasets SET current_version_id = :v WHERE id = :d", v=version, d=dataset)
    make_profile(sql, version)
    make_ingestion_job(sql, version, source_path=stored(root, f"{user_id}/upload.csv"))
    model = make_model(sql, user_id, billed_job, s3_path=stored(root, f"{user_id}/model.pkl"))
    experiment = make_experiment(sql, user_id, dataset_id=dataset)
    make_experiment_run(sql, experiment, user_id, job_id=free_job, model_id=model)
    make_progress(sql, user_id, make_tutorial(sql))
    if scalar(sql, "SELECT to_regclass('public.api_keys') IS NOT NULL"):
        sql(
            "INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES (:u, 'k', 'aml_x', :h)",
            u=user_id,
            h=uuid.uuid4().hex * 2,
        )
    return {
        "user": user_id,
        "billed_job": billed_job,
        "billed_snapshot": billed_snapshot,
        "free_job": free_job,
        "files": [
            root / f"{user_id}/v1.parquet",
            root / f"{user_id}/upload.csv",
            root / f"{user_id}/model.pkl",
        ],
    }


# --- soft delete and restore -----------------------------------------------------------
def test_soft_delete_and_restore_bring_everything_back(sql, session, engine, tmp_path):
    r = rich_user(sql, session, tmp_path)
    user_id = r["user"]
    before = dict(user_row(sql, user_id))
    user = lifecycle.soft_delete_user(session, user_id)
    assert user.is_deleted and user.deleted_at is not None
    first_deleted_at = user.deleted_at
    assert lifecycle.soft_delete_user(session, user_id).deleted_at == first_deleted_at
    with pytest.raises(errors.UserDeleted):
        credits.purchase(session, user_id, make_credit_package(sql), "pi_after_delete")

    restored = lifecycle.restore_user(session, user_id)
    assert not restored.is_deleted and restored.deleted_at is None
    after = dict(user_row(sql, user_id))
    for column in (
        "email",
        "full_name",
        "oauth_id",
        "credit_balance",
        "dataset_count",
        "workflow_count",
        "model_count",
        "storage_used_bytes",
    ):
        assert after[column] == before[column], column
    assert lifecycle.restore_user(session, user_id).is_deleted is False  # idempotent
    assert verify(engine).ok


def test_restore_refusals(sql, session):
    user_id = make_user(sql)
    lifecycle.soft_delete_user(session, user_id, at=LONG_AGO)
    with pytest.raises(errors.RestoreWindowExpired):
        lifecycle.restore_user(session, user_id)
    with pytest.raises(errors.UserNotFound):
        lifecycle.restore_user(session, uuid.uuid4())
    with pytest.raises(errors.UserNotFound):
        lifecycle.soft_delete_user(session, uuid.uuid4())
    # In the caller's transaction, a refusal leaves it usable.
    with session.begin():
        with pytest.raises(errors.RestoreWindowExpired):
            lifecycle.restore_user(session, user_id)
        session.execute(text("SELECT 1"))


def test_workflow_soft_delete_and_restore(sql, session):
    user_id = make_user(sql)
    workflow = make_workflow(sql, user_id)
    assert lifecycle.soft_delete_workflow(session, workflow).is_deleted
    assert scalar(sql, "SELECT workflow_count FROM users WHERE id = :u", u=user_id) == 0
    assert not lifecycle.restore_workflow(session, workflow).is_deleted
    assert scalar(sql, "SELECT workflow_count FROM users WHERE id = :u", u=user_id) == 1
    with pytest.raises(errors.ReferenceViolation):
        lifecycle.restore_workflow(session, uuid.uuid4())


# --- purge ---------------------------------------------------------------------------------
def test_purge_removes_the_data_and_leaves_a_tombstone(sql, session, engine, tmp_path):
    r = rich_user(sql, session, tmp_path)
    user_id = r["user"]
    keep = rich_user(sql, session, tmp_path)  # active: untouched
    recent = rich_user(sql, session, tmp_path)  # deleted 10 days ago: still restorable
    lifecycle.soft_delete_user(session, user_id, at=LONG_AGO)
    lifecycle.soft_delete_user(session, recent["user"], at=NOW - dt.timedelta(days=10))
    ledger_before = sql("SELECT * FROM credit_transactions ORDER BY id")

    report = purge(engine, remove_file=LocalFileRemover(tmp_path))

    assert report.users_purged == 1 and report.users_skipped == 0
    if scalar(sql, "SELECT to_regclass('public.api_keys') IS NOT NULL"):
        assert report.rows.pop("api_keys") == 1
    assert {table: n for table, n in report.rows.items() if n} == {
        "experiment_runs": 1,
        "experiments": 1,
        "models": 1,
        "user_tutorial_progress": 1,
        "ingestion_jobs": 1,
        "dataset_profiles": 1,
        "dataset_versions": 2,
        "datasets": 1,
        "job_nodes": 1,
        "jobs": 1,
        "workflow_snapshots": 1,
        "workflows": 1,
    }
    assert (report.files_removed, report.files_skipped) == (3, 1)  # s3:// is not ours
    assert "users purged (now tombstones): 1" in report.render()

    tomb = user_row(sql, user_id)
    assert tomb["email"] is None and tomb["full_name"] is None
    assert tomb["oauth_provider"] is None and tomb["oauth_id"] is None
    assert tomb["purged_at"] is not None and tomb["is_deleted"]
    assert (
        tomb["dataset_count"],
        tomb["workflow_count"],
        tomb["model_count"],
        tomb["storage_used_bytes"],
        tomb["credit_balance"],
    ) == (0, 0, 0, 0, 70)
    for table in (
        "datasets",
        "dataset_versions",
        "models",
        "experiments",
        "workflows",
        "user_tutorial_progress",
        "ingestion_jobs",
        "experiment_runs",
    ):
        assert count(sql, table, user_id) == 0, table
    # The billed job stays, with its nodes and snapshot (now without its workflow).
    assert sql("SELECT id FROM jobs WHERE user_id = :u", u=user_id)[0][0] == r["billed_job"]
    assert count(sql, "job_nodes", user_id) == 1
    snap = sql("SELECT id, workflow_id FROM workflow_snapshots WHERE user_id = :u", u=user_id)
    assert [tuple(s) for s in snap] == [(r["billed_snapshot"], None)]
    assert sql("SELECT * FROM credit_transactions ORDER BY id") == ledger_before
    assert not any(f.exists() for f in r["files"])
    assert all(f.exists() for f in keep["files"] + recent["files"])
    for other in (keep["user"], recent["user"]):
        assert count(sql, "datasets", other) == 1 and count(sql, "jobs", other) == 2
    assert verify(engine).ok

    with pytest.raises(errors.UserPurged):
        lifecycle.restore_user(session, user_id)
    with pytest.raises(errors.UserDeleted):
        credits.purchase(session, user_id, make_credit_package(sql), "pi_tomb")
    # Adjustments still reach the tombstone's balance; the history adds up.
    credits.adjust(session, user_id, -70, "close account", "admin")
    assert verify(engine).ok
    # Nothing left to do: a second run removes nothing.
    again = purge(engine, remove_file=LocalFileRemover(tmp_path))
    assert not any(again.rows.values()) and again.users_purged == 0


def test_purge_in_small_batches_can_be_interrupted_and_rerun(sql, session, engine, tmp_path):
    users = [rich_user(sql, session, tmp_path)["user"] for _ in range(3)]
    for user_id in users:
        lifecycle.soft_delete_user(session, user_id, at=LONG_AGO)
    remover = LocalFileRemover(tmp_path)

    first = purge(engine, batch_size=3, max_batches=2, remove_file=remover)
    assert first.batches == 2 and sum(first.rows.values()) == 6 and first.users_purged == 0

    # A remover failing mid-batch (the process killed, storage down) rolls the
    # batch back: its rows stay for the next run.
    def failing(location: str) -> bool:
        raise KeyboardInterrupt

    rows_before = scalar(sql, "SELECT count(*) FROM dataset_versions")
    with pytest.raises(KeyboardInterrupt):
        purge(engine, batch_size=50, remove_file=failing)
    assert scalar(sql, "SELECT count(*) FROM dataset_versions") == rows_before

    sizes: list[int] = []
    rest = purge(
        engine,
        batch_size=3,
        remove_file=remover,
        progress=lambda rep: sizes.append(sum(rep.rows.values())),
    )
    assert rest.users_purged == 3
    total = first.rows + rest.rows
    assert total["datasets"] == 3 and total["dataset_versions"] == 6 and total["jobs"] == 3
    # Each batch deleted at most batch_size rows.
    assert all(b - a <= 3 for a, b in zip([0, *sizes], sizes, strict=False))
    assert len(sizes) == rest.batches > 5
    assert scalar(sql, "SELECT count(*) FROM users WHERE purged_at IS NOT NULL") == 3
    assert not list(tmp_path.rglob("*.*"))
    assert verify(engine).ok


def test_purge_skips_rows_others_hold_and_never_waits(sql, session, engine, tmp_path):
    busy = rich_user(sql, session, tmp_path)["user"]
    idle = rich_user(sql, session, tmp_path)["user"]
    for user_id in (busy, idle):
        lifecycle.soft_delete_user(session, user_id, at=LONG_AGO)
    with engine.connect() as holder:
        holder.begin()
        holder.execute(text("SELECT 1 FROM datasets WHERE user_id = :u FOR UPDATE"), {"u": busy})
        report = purge(engine, lock_timeout_ms=100, remove_file=LocalFileRemover(tmp_path))
        assert report.users_purged == 1 and report.users_skipped == 1
        assert "users skipped" in report.render()
        holder.rollback()
    assert user_row(sql, busy)["purged_at"] is None
    assert purge(engine, remove_file=LocalFileRemover(tmp_path)).users_purged == 1
    assert verify(engine).ok


def test_purge_never_waits_longer_than_the_lock_timeout(sql, session, engine, tmp_path):
    # Deleting a version clears its dataset's current_version_id: with the dataset
    # row held, that would wait. The batch gives up after the lock timeout, goes
    # on one user at a time, and leaves only the user whose row is held.
    held = rich_user(sql, session, tmp_path)
    others = [rich_user(sql, session, tmp_path) for _ in range(2)]
    for r in [held, *others]:
        lifecycle.soft_delete_user(session, r["user"], at=LONG_AGO)
    with engine.connect() as holder:
        holder.begin()
        holder.execute(
            text("SELECT 1 FROM datasets WHERE user_id = :u FOR NO KEY UPDATE"),
            {"u": held["user"]},
        )
        report = purge(engine, lock_timeout_ms=100, remove_file=LocalFileRemover(tmp_path))
        holder.rollback()
    assert (report.users_purged, report.users_skipped) == (2, 1)
    assert user_row(sql, held["user"])["purged_at"] is None
    assert count(sql, "dataset_versions", held["user"]) == 2  # its batch rolled back
    assert all(f.exists() for f in held["files"])
    assert purge(engine, remove_file=LocalFileRemover(tmp_path)).users_purged == 1
    assert verify(engine).ok


def test_concurrent_purges_share_the_work(sql, session, engine, tmp_path):
    users = [rich_user(sql, session, tmp_path)["user"] for _ in range(4)]
    for user_id in users:
        lifecycle.soft_delete_user(session, user_id, at=LONG_AGO)
    barrier = threading.Barrier(3)
    reports: list[Any] = []

    def run() -> None:
        barrier.wait()
        try:
            reports.append(purge(engine, batch_size=4, remove_file=LocalFileRemover(tmp_path)))
        except Exception as exc:
            reports.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(isinstance(r, lifecycle.PurgeReport) for r in reports), reports
    leftover = purge(engine, remove_file=LocalFileRemover(tmp_path))
    purged = sum(r.users_purged for r in reports) + leftover.users_purged
    assert purged == 4
    assert sum(r.rows["datasets"] for r in reports) + leftover.rows["datasets"] == 4
    assert verify(engine).ok


def test_old_soft_deleted_workflows_are_purged(sql, session, engine):
    user_id = make_user(sql)
    old = make_workflow(sql, user_id, deleted=True, deleted_at=LONG_AGO)
    fresh = make_workflow(sql, user_id, deleted=True)
    live = make_workflow(sql, user_id)
    snapshot = make_snapshot(sql, user_id, old)
    job = make_job(sql, user_id, snapshot)
    report = purge(engine, remove_file=lambda _: False)
    assert report.workflows_purged == 1 and report.rows["workflows"] == 1
    remaining = {r[0] for r in sql("SELECT id FROM workflows WHERE user_id = :u", u=user_id)}
    assert remaining == {fresh, live}
    assert sql("SELECT workflow_id FROM workflow_snapshots WHERE id = :s", s=snapshot)[0][0] is None
    assert scalar(sql, "SELECT count(*) FROM jobs WHERE id = :j", j=job) == 1
    assert scalar(sql, "SELECT workflow_count FROM users WHERE id = :u", u=user_id) == 1
    assert verify(engine).ok


def test_dry_run_removes_nothing(sql, session, engine, tmp_path):
    r = rich_user(sql, session, tmp_path)
    lifecycle.soft_delete_user(session, r["user"], at=LONG_AGO)
    make_workflow(sql, make_user(sql), deleted=True, deleted_at=LONG_AGO)
    report = purge(engine, dry_run=True)
    assert report.users_purged == 1 and report.workflows_purged == 1
    assert report.rows["dataset_versions"] == 2 and report.rows["jobs"] == 1
    assert report.rows["workflows"] == 2
    assert "would remove" in report.render()
    assert user_row(sql, r["user"])["purged_at"] is None
    assert all(f.exists() for f in r["files"])
    # Never a window shorter than the restore window.
    with pytest.raises(ValueError, match="at least 30"):
        purge(engine, older_than_days=29)
    with pytest.raises(ValueError):
        purge(engine, batch_size=0)


def test_tombstone_rules_hold_for_raw_sql(sql):
    user_id = make_user(sql)
    with pytest.raises(errors.InvalidValue):
        sql("UPDATE users SET email = NULL WHERE id = :u", u=user_id)
    with pytest.raises(errors.InvalidValue):
        sql("UPDATE users SET purged_at = now() WHERE id = :u", u=user_id)
    sql(
        "UPDATE users SET is_deleted = true, deleted_at = now(), purged_at = now(), email = NULL"
        " WHERE id = :u",
        u=user_id,
    )
    with pytest.raises(errors.InvalidValue):  # a purged user stays deleted
        sql("UPDATE users SET is_deleted = false, deleted_at = NULL WHERE id = :u", u=user_id)


def test_local_file_remover(tmp_path):
    root = tmp_path / "data"
    (root / "d").mkdir(parents=True)
    (root / "d" / "part-0.parquet").write_bytes(b"x")
    (root / "a.csv").write_bytes(b"x")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"x")
    remove = LocalFileRemover(root)
    assert remove("a.csv") is True and not (root / "a.csv").exists()
    assert remove("a.csv") is False  # missing: nothing to do
    assert remove(f"file://{root / 'd'}") is True and not (root / "d").exists()
    assert remove(str(outside)) is False and outside.exists()
    assert remove("../outside.txt") is False and outside.exists()
    assert remove("s3://bucket/key") is False
    assert remove(str(root)) is False and root.exists()


@pytest.fixture
def cli_db(db_url, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    monkeypatch.setenv("AUTOML_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    db_session.reset()


def test_cli_purge(sql, session, cli_db, capsys):
    r = rich_user(sql, session, cli_db)
    lifecycle.soft_delete_user(session, r["user"], at=LONG_AGO)
    assert cli.main(["purge", "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out
    assert cli.main(["purge", "--older-than-days", "5"]) == 2
    assert "at least 30" in capsys.readouterr().err
    assert cli.main(["purge", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "dataset_versions: 2" in out and "users purged (now tombstones): 1" in out
    assert "files removed: 3" in out
    assert not any(f.exists() for f in r["files"])


def test_every_table_with_user_data_is_purged_or_deliberately_kept(engine):
    # A table a later migration adds with a user_id must join purge (or KEPT_TABLES).
    with engine.connect() as conn:
        covered = {step.table for step in lifecycle.purge_tables(conn)}
        owned = set(
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_attribute AS a JOIN pg_class AS c"
                    " ON c.oid = a.attrelid WHERE c.relnamespace = 'public'::regnamespace"
                    " AND c.relkind IN ('r', 'p') AND a.attname = 'user_id'"
                    " AND NOT a.attisdropped AND NOT c.relispartition"
                    " UNION SELECT conrelid::regclass::text FROM pg_constraint"
                    " WHERE contype = 'f' AND confrelid = 'public.users'::regclass"
                    " AND conparentid = 0"  # a partition's is its table's
                )
            ).scalars()
        )
    assert owned - lifecycle.KEPT_TABLES <= covered
    assert "dataset_profiles" in covered


def test_purge_removes_objects_of_a_remote_storage(sql, session, cli_db, monkeypatch, capsys):
    """STORAGE_URL names an fsspec storage (memory:// here, s3:// in production): purge,
    the worker's and `automl-db purge`, removes the objects through the same storage
    the API and the workers write with, not a local remover that skips them."""
    from database.storage import default_storage

    monkeypatch.setenv("STORAGE_URL", f"memory://purge-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    storage = default_storage()
    user_id = make_user(sql)
    dataset = make_dataset(sql, user_id)
    parquet = storage.write_bytes(f"datasets/{user_id}/v1.parquet", b"PAR1")
    upload = storage.write_bytes(f"uploads/{user_id}/v1.csv", b"a,b\n1,2\n")
    version = make_version(sql, dataset, original=8, parquet=4, s3_path=parquet)
    make_ingestion_job(sql, version, source_path=upload)
    model = storage.write_bytes(f"models/{user_id}/m.joblib", b"model")
    make_model(sql, user_id, s3_path=model)
    other = storage.write_bytes("models/someone-else/m.joblib", b"kept")
    assert parquet.startswith("memory://") and all(
        storage.exists(x) for x in (parquet, upload, model)
    )
    lifecycle.soft_delete_user(session, user_id, at=LONG_AGO)

    assert cli.main(["purge"]) == 0
    assert "files removed: 3" in capsys.readouterr().out
    assert not any(storage.exists(x) for x in (parquet, upload, model))
    assert storage.exists(other)
