"""Retention: ``database.clean`` and ``automl-db clean``. A dry run changes nothing;
an interrupted run, re-run, loses nothing; the Parquet archive is readable and
complete; jobs the ledger or a model names are kept; audit months leave whole."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine

from database import audit, cli, credits, errors
from database import session as db_session
from database.clean import clean
from database.config import get_settings

from factories import insert, make_job, make_job_node, make_model, make_user, scalar

BEFORE = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
OLD = "2026-01-15 10:00:00+00"
NEW = "2026-11-15 10:00:00+00"


class Interrupted(Exception):
    pass


def finished_job(
    sql: Any, user_id: uuid.UUID, when: str, status: str = "completed", logs: int = 0
) -> uuid.UUID:
    job_id = make_job(sql, user_id, status=status)
    sql("UPDATE jobs SET completed_at = CAST(:w AS timestamptz) WHERE id = :j", w=when, j=job_id)
    for i in range(logs):
        sql("INSERT INTO job_logs (job_id, message) VALUES (:j, :m)", j=job_id, m=f"line {i}")
    return job_id


def webhook(sql: Any, when: str, status: str = "processed") -> uuid.UUID:
    return insert(
        sql,
        "stripe_webhook_events",
        stripe_event_id=f"evt_{uuid.uuid4().hex}",
        type="checkout.session.completed",
        payload=json.dumps({"id": "x", "nested": {"a": [1, 2]}}),
        status=status,
        created_at=dt.datetime.fromisoformat(when.replace(" ", "T").replace("+00", "+00:00")),
    )


def world(sql: Any, engine: Engine) -> dict[str, Any]:
    """Old and new jobs (some charged, one with a model), logs, nodes, webhooks."""
    user_id = make_user(sql)
    old_jobs = [finished_job(sql, user_id, OLD, logs=3) for _ in range(6)]
    for job_id in old_jobs[:2]:
        make_job_node(sql, job_id, user_id)
    charged = finished_job(sql, user_id, OLD, logs=2)
    with engine.begin() as conn:
        from sqlalchemy.orm import Session

        with Session(bind=conn) as s:
            credits.adjust(s, user_id, 100, "opening", "tests")
    sql(
        "INSERT INTO credit_transactions (user_id, type, amount, job_id)"
        " VALUES (:u, 'consumption', -5, :j)",
        u=user_id,
        j=charged,
    )
    with_model = finished_job(sql, user_id, OLD, status="failed", logs=1)
    make_model(sql, user_id, job_id=with_model)
    running = make_job(sql, user_id, status="running")
    recent = finished_job(sql, user_id, NEW, logs=2)
    hooks_old = [webhook(sql, OLD) for _ in range(5)] + [webhook(sql, OLD, "failed")]
    unhandled = webhook(sql, OLD, "received")
    hooks_new = webhook(sql, NEW)
    return {
        "user": user_id,
        "old_jobs": old_jobs,
        "charged": charged,
        "with_model": with_model,
        "running": running,
        "recent": recent,
        "hooks_old": hooks_old,
        "unhandled": unhandled,
        "hooks_new": hooks_new,
    }


def snapshot(sql: Any) -> dict[str, list[Any]]:
    return {
        "jobs": sql("SELECT id, status::text FROM jobs ORDER BY id"),
        "job_nodes": sql("SELECT id FROM job_nodes ORDER BY id"),
        "job_logs": sql("SELECT job_id, seq, message FROM job_logs ORDER BY job_id, seq"),
        "stripe_webhook_events": sql("SELECT id FROM stripe_webhook_events ORDER BY id"),
        "audit": sql("SELECT id FROM audit_events ORDER BY id"),
    }


def read_archive(root: Path, table: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((root / table).glob("*.parquet")):
        out.extend(pq.read_table(path).to_pylist())
    assert not list((root / table).glob(".*.tmp")), "a temporary file was left behind"
    assert not list((root / table).glob(".*.pending")), "a pending file was left behind"
    return out


def test_dry_run_changes_nothing(sql, engine, tmp_path):
    w = world(sql, engine)
    before = snapshot(sql)
    report = clean(engine, BEFORE, dry_run=True, archive=tmp_path / "a")
    assert snapshot(sql) == before
    assert not (tmp_path / "a").exists()
    assert report.rows["jobs"] == 6
    assert report.rows["job_logs"] == 6 * 3 + 2 + 1  # logs of every old finished job
    assert report.rows["job_nodes"] == 2
    assert report.rows["stripe_webhook_events"] == 6
    assert "would remove" in report.render()
    assert w["charged"]  # (used)


def test_clean_removes_the_old_keeps_what_is_referred_to_and_archives_it(sql, engine, tmp_path):
    w = world(sql, engine)
    logs_before = sql("SELECT job_id, seq, message FROM job_logs ORDER BY job_id, seq")
    report = clean(engine, BEFORE, what=["jobs", "webhooks"], archive=tmp_path, batch_size=4)
    jobs_left = {r[0] for r in sql("SELECT id FROM jobs")}
    # The charged job (the ledger names it) and the one with a model stay, without logs.
    assert jobs_left == {w["charged"], w["with_model"], w["running"], w["recent"]}
    assert (
        scalar(
            sql,
            "SELECT count(*) FROM job_logs WHERE job_id IN (:a, :b)",
            a=w["charged"],
            b=w["with_model"],
        )
        == 0
    )
    assert scalar(sql, "SELECT count(*) FROM job_logs WHERE job_id = :r", r=w["recent"]) == 2
    hooks_left = {r[0] for r in sql("SELECT id FROM stripe_webhook_events")}
    assert hooks_left == {w["unhandled"], w["hooks_new"]}
    assert report.rows == {"jobs": 6, "job_nodes": 2, "job_logs": 21, "stripe_webhook_events": 6}
    # The archive: every removed row once, every column, readable.
    archived_logs = read_archive(tmp_path, "job_logs")
    removed_logs = [r for r in logs_before if r[0] != w["recent"]]
    assert sorted(
        (uuid.UUID(a["job_id"]), a["seq"], a["message"]) for a in archived_logs
    ) == sorted(tuple(r) for r in removed_logs)
    jobs = read_archive(tmp_path, "jobs")
    assert sorted(uuid.UUID(j["id"]) for j in jobs) == sorted(w["old_jobs"])
    assert {j["status"] for j in jobs} == {"completed"}
    assert all(isinstance(j["completed_at"], dt.datetime) for j in jobs)
    hooks = read_archive(tmp_path, "stripe_webhook_events")
    assert sorted(uuid.UUID(h["id"]) for h in hooks) == sorted(w["hooks_old"])
    assert json.loads(hooks[0]["payload"]) == {"id": "x", "nested": {"a": [1, 2]}}
    assert len(read_archive(tmp_path, "job_nodes")) == 2
    # Nothing left to do: a second run removes nothing.
    again = clean(engine, BEFORE, what=["jobs", "webhooks"], archive=tmp_path)
    assert not again.rows


@pytest.mark.parametrize("stage", ["archived", "committed"])
def test_an_interrupted_run_rerun_loses_nothing(sql, engine, tmp_path, stage):
    w = world(sql, engine)
    removable = {
        "job_logs": {
            (r[0], r[1])
            for r in sql("SELECT job_id, seq FROM job_logs WHERE job_id <> :r", r=w["recent"])
        },
        "stripe_webhook_events": set(w["hooks_old"]),
        "jobs": set(w["old_jobs"]),
    }
    calls = {"n": 0}

    def interrupt(at: str, table: str, report: Any) -> None:
        if at == stage:
            calls["n"] += 1
            if calls["n"] == 3:  # the third batch: mid-way through the job logs
                raise Interrupted

    with pytest.raises(Interrupted):
        clean(
            engine,
            BEFORE,
            what=["jobs", "webhooks"],
            archive=tmp_path,
            batch_size=4,
            hook=interrupt,
        )
    partial = {r[0] for r in sql("SELECT id FROM jobs")}
    assert w["old_jobs"][0] in partial  # really interrupted
    clean(engine, BEFORE, what=["jobs", "webhooks"], archive=tmp_path, batch_size=4)
    logs = {(uuid.UUID(a["job_id"]), a["seq"]) for a in read_archive(tmp_path, "job_logs")}
    assert logs == removable["job_logs"]
    assert scalar(sql, "SELECT count(*) FROM job_logs WHERE job_id <> :r", r=w["recent"]) == 0
    hooks = {uuid.UUID(h["id"]) for h in read_archive(tmp_path, "stripe_webhook_events")}
    assert hooks == removable["stripe_webhook_events"]
    jobs = {uuid.UUID(j["id"]) for j in read_archive(tmp_path, "jobs")}
    assert jobs == removable["jobs"]
    # The batch the interruption rolled back left a pending file, which the re-run
    # removed before archiving the rows again: no row is archived twice.
    assert len(read_archive(tmp_path, "job_logs")) == len(removable["job_logs"])


def test_audit_months_leave_whole_and_are_archived(sql, engine, tmp_path):
    audit.ensure_partitions(engine, at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), months_ahead=0)
    user_id = make_user(sql)
    for at in ["2026-01-01 00:00:00+00", "2026-01-31 23:59:59.999999+00"]:
        sql(
            "INSERT INTO audit_events (action, entity_type, occurred_at, client_ip, detail)"
            " VALUES ('test.event', 'test', CAST(:at AS timestamptz), '10.1.2.3', '{\"k\": 1}')",
            at=at,
        )
    kept = scalar(sql, "SELECT count(*) FROM audit_events")
    dry = clean(engine, dt.datetime(2026, 2, 1, tzinfo=dt.UTC), what=["audit"], dry_run=True)
    assert dry.partitions == [("audit_events_p202601", 2)]
    report = clean(engine, dt.datetime(2026, 2, 1, tzinfo=dt.UTC), what=["audit"], archive=tmp_path)
    assert report.partitions == [("audit_events_p202601", 2)]
    assert scalar(sql, "SELECT count(*) FROM audit_events") == kept - 2
    rows = pq.read_table(tmp_path / "audit_events" / "audit_events_p202601.parquet").to_pylist()
    assert [r["client_ip"] for r in rows] == ["10.1.2.3", "10.1.2.3"]
    assert json.loads(rows[0]["detail"]) == {"k": 1}
    assert rows[1]["occurred_at"] == dt.datetime(2026, 1, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
    # The trail is still append-only after the drop.
    with pytest.raises(errors.AuditAppendOnly):
        sql("DELETE FROM audit_events WHERE subject_user_id = :u", u=user_id)


def test_bad_arguments_are_refused(sql, engine):
    with pytest.raises(ValueError, match="unknown"):
        clean(engine, BEFORE, what=["everything"])
    with pytest.raises(ValueError, match="naive"):
        clean(engine, dt.datetime(2026, 1, 1))


def test_ended_sessions_are_cleaned_and_live_ones_kept(sql, engine):
    user_id = make_user(sql)
    token = iter(f"{n:064x}" for n in range(1, 10))
    sql(
        "INSERT INTO user_sessions (user_id, token_hash, created_at, expires_at, revoked_at)"
        " VALUES (:u, :a, '2025-12-01Z', '2026-01-01Z', NULL),"
        " (:u, :b, '2025-12-01Z', '2027-01-01Z', '2026-02-01Z'),"
        " (:u, :c, '2025-12-01Z', '2099-01-01Z', NULL)",
        u=user_id,
        a=next(token),
        b=next(token),
        c=next(token),
    )
    dry = clean(engine, BEFORE, what=["sessions"], dry_run=True)
    assert dry.rows == {"user_sessions": 2}
    assert scalar(sql, "SELECT count(*) FROM user_sessions") == 3
    report = clean(engine, BEFORE, what=["sessions"])
    assert report.rows == {"user_sessions": 2}
    assert scalar(sql, "SELECT count(*) FROM user_sessions") == 1
    # The request log's months go whole, through metering (none is that old here).
    report = clean(engine, BEFORE, what=["inference"])
    assert not any("not here" in n for n in report.notes), report.notes


@pytest.fixture
def cli_db(db_url, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    monkeypatch.setenv("AUTOML_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    db_session.reset()


def test_cli_clean(sql, engine, cli_db, capsys):
    world(sql, engine)
    assert cli.main(["clean", "--before", "2026-06-01", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove" in out and "jobs: 6 rows" in out
    archive = cli_db / "archive"
    assert (
        cli.main(
            [
                "clean",
                "--before",
                "2026-06-01",
                "--what",
                "jobs,webhooks",
                "--archive",
                str(archive),
                "--batch-size",
                "5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "removed" in out and "stripe_webhook_events: 6 rows" in out
    assert len(read_archive(archive, "jobs")) == 6
    for bad in (
        ["--before", "yesterday"],
        ["--before", "2026-06-01T00:00:00"],
        ["--before", "2026-06-01", "--what", "logs"],
        ["--before", "2026-06-01", "--batch-size", "0"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["clean", *bad])
        assert exit_info.value.code == 2
    assert cli.main(["clean", "--before", "2999-01-01"]) == 2
    assert "future" in capsys.readouterr().err


def test_concurrent_runs_share_the_work_and_archive_each_row_once(sql, engine, tmp_path):
    import threading

    w = world(sql, engine)
    sql(
        "INSERT INTO stripe_webhook_events (stripe_event_id, type, payload, status, created_at)"
        " SELECT 'evt_bulk_' || i, 'x', '{}', 'processed', '2026-01-01Z'"
        " FROM generate_series(1, 200) AS i"
    )
    failures: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            clean(engine, BEFORE, what=["jobs", "webhooks"], archive=tmp_path, batch_size=7)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures
    hooks = [h["id"] for h in read_archive(tmp_path, "stripe_webhook_events")]
    assert len(hooks) == len(set(hooks)) == 206
    assert {r[0] for r in sql("SELECT id FROM stripe_webhook_events")} == {
        w["unhandled"],
        w["hooks_new"],
    }
    jobs = [j["id"] for j in read_archive(tmp_path, "jobs")]
    assert sorted(uuid.UUID(j) for j in jobs) == sorted(w["old_jobs"])


def test_a_sigkilled_clean_process_rerun_loses_nothing_and_archives_each_row_once(
    sql, engine, db_url, tmp_path
):
    """A real ``automl-db clean`` process, killed with SIGKILL after its first batch
    is observed (many rows, small batches: mid-work), then run again: every removable
    row is either still there or in the archive, exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sql(
        "INSERT INTO stripe_webhook_events (stripe_event_id, type, payload, status, created_at)"
        " SELECT 'evt_kill_' || i, 'x', jsonb_build_object('n', i), 'processed', '2026-01-01Z'"
        " FROM generate_series(1, 3000) AS i"
    )
    kept = webhook(sql, NEW)
    original = {r[0] for r in sql("SELECT id FROM stripe_webhook_events WHERE id <> :k", k=kept)}
    archive = tmp_path / "archive"
    env = {
        **os.environ,
        "DATABASE_URL": db_url.render_as_string(hide_password=False),
        "AUTOML_DATA_DIR": str(tmp_path / "data"),
    }
    command = [
        str(Path(sys.executable).with_name("automl-db")),
        "clean",
        "--before",
        "2026-06-01",
        "--what",
        "webhooks",
        "--archive",
        str(archive),
        "--batch-size",
        "3",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while scalar(sql, "SELECT count(*) FROM stripe_webhook_events") > len(original):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no batch committed in 120 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    left = {r[0] for r in sql("SELECT id FROM stripe_webhook_events WHERE id <> :k", k=kept)}
    assert left and left < original  # killed mid-work: some rows gone, some left
    archived = [uuid.UUID(r["id"]) for r in _archive_rows(archive)]
    assert set(archived) | left == original  # nothing lost at the kill
    # The killed run's backend is gone before the re-run (its open batch's rows are
    # otherwise still locked, and a run skips locked rows).
    deadline = time.monotonic() + 60
    while scalar(
        sql,
        "SELECT count(*) FROM pg_locks AS l WHERE l.pid <> pg_backend_pid()"
        " AND l.relation = 'public.stripe_webhook_events'::regclass",
    ):
        assert time.monotonic() < deadline, "the killed run's transaction is still open"
        time.sleep(0.05)
    # The re-run only has to finish what the killed run left: in a few batches of 500
    # (3 rows a batch, each an fsynced Parquet file, made it a thousand batches: most of
    # the test's time), still several, so it resumes batch by batch as the killed run did.
    rerun_command = [*command[:-1], "500"]
    rerun = subprocess.run(rerun_command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "removed" in rerun.stdout
    assert {r[0] for r in sql("SELECT id FROM stripe_webhook_events")} == {kept}
    archived = [uuid.UUID(r["id"]) for r in read_archive(archive, "stripe_webhook_events")]
    assert len(archived) == len(set(archived)), "a row was archived twice"
    assert set(archived) == original


def _archive_rows(root: Path) -> list[dict[str, Any]]:
    """The archive's rows as a killed run left them, its pending file's included (a kill
    between a batch's commit and its rename leaves the rows only there; its temporary
    file, if any, holds rows still in the table)."""
    out: list[dict[str, Any]] = []
    folder = root / "stripe_webhook_events"
    for path in sorted([*folder.glob("*.parquet"), *folder.glob(".*.pending")]):
        out.extend(pq.read_table(path).to_pylist())
    return out


# --- the two-phase archive file: a kill in either window, and rows locked -----------------
def _old_webhooks(sql: Any, n: int) -> set[uuid.UUID]:
    sql(
        "INSERT INTO stripe_webhook_events (stripe_event_id, type, payload, status, created_at)"
        " SELECT 'evt_two_phase_' || i, 'x', '{}', 'processed', '2026-01-01Z'"
        " FROM generate_series(1, :n) AS i",
        n=n,
    )
    return {r[0] for r in sql("SELECT id FROM stripe_webhook_events")}


def _pending(root: Path) -> list[Path]:
    return sorted((root / "stripe_webhook_events").glob(".*.pending"))


def _archived_once(sql: Any, root: Path, original: set[uuid.UUID]) -> None:
    """Every row gone from the table and in the archive exactly once."""
    archived = [uuid.UUID(h["id"]) for h in read_archive(root, "stripe_webhook_events")]
    assert len(archived) == len(set(archived)), "a row was archived twice"
    assert set(archived) == original
    assert scalar(sql, "SELECT count(*) FROM stripe_webhook_events") == 0


def _interrupt_at(stage: str, nth: int) -> Any:
    calls = {"n": 0}

    def hook(at: str, table: str, report: Any) -> None:
        if at == stage:
            calls["n"] += 1
            if calls["n"] == nth:
                raise Interrupted

    return hook


def _interrupted_after_a_file(
    sql: Any, engine: Any, tmp_path: Path, nth: int
) -> tuple[set[uuid.UUID], Path, set[uuid.UUID]]:
    """20 old webhooks; a run (batches of 3) interrupted after its ``nth`` batch's file
    was written, before that batch's delete: (the webhooks, the pending file, its ids)."""
    original = _old_webhooks(sql, 20)
    with pytest.raises(Interrupted):
        clean(
            engine,
            BEFORE,
            what=["webhooks"],
            archive=tmp_path,
            batch_size=3,
            hook=_interrupt_at("archived", nth),
        )
    [pending] = _pending(tmp_path)
    return original, pending, {uuid.UUID(r["id"]) for r in pq.read_table(pending).to_pylist()}


def test_a_batch_killed_before_its_delete_commits_is_archived_once_at_another_batch_size(
    sql, engine, tmp_path
):
    """Killed after its file is written, before the delete commits: the file stays pending
    (not archive), and the re-run, batching differently, removes it and archives its rows
    once."""
    original, pending, in_pending = _interrupted_after_a_file(sql, engine, tmp_path, 2)
    assert len(in_pending) == 3
    left = {r[0] for r in sql("SELECT id FROM stripe_webhook_events")}
    assert in_pending <= left and len(left) == 17  # the first batch went, the second did not
    clean(engine, BEFORE, what=["webhooks"], archive=tmp_path, batch_size=7)
    _archived_once(sql, tmp_path, original)


def test_a_batch_killed_between_its_commit_and_its_rename_is_promoted_by_the_next_run(
    sql, engine, tmp_path, monkeypatch
):
    """Killed after the delete commits, before the pending file is renamed: the rows are
    only in that file, and the next run (another batch size) promotes it."""
    import database.clean as clean_module

    original = _old_webhooks(sql, 20)
    promote = clean_module._promote
    calls = {"n": 0}

    def dies_at_the_second(pending: Path) -> Path:
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupted
        return promote(pending)

    monkeypatch.setattr(clean_module, "_promote", dies_at_the_second)
    with pytest.raises(Interrupted):
        clean(engine, BEFORE, what=["webhooks"], archive=tmp_path, batch_size=3)
    monkeypatch.setattr(clean_module, "_promote", promote)
    [pending] = _pending(tmp_path)
    in_pending = {uuid.UUID(r["id"]) for r in pq.read_table(pending).to_pylist()}
    left = {r[0] for r in sql("SELECT id FROM stripe_webhook_events")}
    assert len(in_pending) == 3 and not in_pending & left and len(left) == 14
    report = clean(engine, BEFORE, what=["webhooks"], archive=tmp_path, batch_size=7)
    assert report.rows == {"stripe_webhook_events": 14}
    assert (tmp_path / "stripe_webhook_events" / pending.name[1 : -len(".pending")]).exists()
    _archived_once(sql, tmp_path, original)


def _lock(engine: Engine, ids: set[uuid.UUID]) -> Any:
    """A second connection holding the rows' locks until its transaction ends."""
    from sqlalchemy import text

    conn = engine.connect()
    transaction = conn.begin()
    conn.execute(
        text("SELECT id FROM stripe_webhook_events WHERE id = ANY(:ids) FOR UPDATE"),
        {"ids": list(ids)},
    )
    return conn, transaction


def _pending_and_locked(
    sql: Any, engine: Any, tmp_path: Path
) -> tuple[set[uuid.UUID], Path, set[uuid.UUID], Any, Any]:
    """``_interrupted_after_a_file`` at the first batch; its rows locked by another open
    transaction."""
    original, pending, in_pending = _interrupted_after_a_file(sql, engine, tmp_path, 1)
    conn, transaction = _lock(engine, in_pending)
    return original, pending, in_pending, conn, transaction


def test_a_pending_file_whose_rows_are_locked_is_left_and_settled_by_a_later_run(
    sql, engine, tmp_path
):
    original, pending, in_pending, conn, transaction = _pending_and_locked(sql, engine, tmp_path)
    try:
        report = clean(
            engine, BEFORE, what=["webhooks"], archive=tmp_path, batch_size=5, lock_timeout_ms=200
        )
    finally:
        transaction.rollback()
        conn.close()
    assert report.rows == {"stripe_webhook_events": 17}  # the locked rows were skipped
    assert _pending(tmp_path) == [pending]
    assert any(pending.name in n and "locked" in n for n in report.notes), report.notes
    assert {r[0] for r in sql("SELECT id FROM stripe_webhook_events")} == in_pending
    report = clean(engine, BEFORE, what=["webhooks"], archive=tmp_path, batch_size=7)
    assert report.rows == {"stripe_webhook_events": 3}
    _archived_once(sql, tmp_path, original)


def test_a_pending_file_left_while_locked_is_removed_when_the_same_run_archives_its_rows(
    sql, engine, tmp_path
):
    """Its rows unlocked mid-run, the run that left the file archives them: the file must
    go then, or the next run, finding the rows gone, would promote it (twice archived)."""
    original, pending, in_pending, conn, transaction = _pending_and_locked(sql, engine, tmp_path)

    def release(at: str, table: str, report: Any) -> None:
        if at == "committed" and transaction.is_active:
            transaction.rollback()

    try:
        report = clean(
            engine,
            BEFORE,
            what=["webhooks"],
            archive=tmp_path,
            batch_size=5,
            lock_timeout_ms=200,
            hook=release,
        )
    finally:
        if transaction.is_active:
            transaction.rollback()
        conn.close()
    assert any(pending.name in n and "locked" in n for n in report.notes), report.notes
    assert report.rows == {"stripe_webhook_events": 20}  # the released rows too
    assert not _pending(tmp_path)
    again = clean(engine, BEFORE, what=["webhooks"], archive=tmp_path, batch_size=7)
    assert not again.rows
    _archived_once(sql, tmp_path, original)
