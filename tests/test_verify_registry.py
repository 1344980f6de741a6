"""`automl-db verify [--repair]` on the registry's derived columns.

``model_versions.download_count`` must equal the version's granted downloads and
``registered_models.last_version_number`` must be at least its highest version.
Neither can drift through the triggers, so the tests break them as the schema's
owner could: with the triggers off (``session_replication_role = replica``) or one
trigger disabled. Verify must report the drift under the row's owner, repair must
fix it through the logged path (``registry_repair_derived``, ``derived_repairs``),
and only the schema owner may run that path. Also here, as the same migration
(c13d00000001) changed it: the lineage cycle check on a bulk load.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from database import cli, errors, registry
from database import session as db_session
from database.config import get_settings
from database.grants import grant
from database.models import ModelFormat, ModelPermission
from database.verify import verify

from factories import make_model, make_user, scalar

GRANTED = (
    "INSERT INTO model_downloads (model_version_id, format, granted) VALUES (:v, 'joblib', true)"
)


def untriggered(engine: Engine, *statements: str, **params: Any) -> None:
    """Run statements with every trigger off, as only a superuser can."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            conn.execute(text(statement), params)


def registered(sql: Any, owner: uuid.UUID, versions: int = 2) -> tuple[uuid.UUID, list[uuid.UUID]]:
    [rm] = sql(
        "INSERT INTO registered_models (user_id, name, visibility)"
        " VALUES (:u, :n, 'public') RETURNING id",
        u=owner,
        n=f"rm-{uuid.uuid4().hex[:8]}",
    )
    ids = []
    for _ in range(versions):
        [v] = sql(
            "INSERT INTO model_versions (registered_model_id, model_id) VALUES (:r, :m)"
            " RETURNING id",
            r=rm.id,
            m=make_model(sql, owner),
        )
        ids.append(v.id)
    return rm.id, ids


def download(sql: Any, version_id: uuid.UUID, n: int = 1, *, granted: bool = True) -> None:
    sql(
        "INSERT INTO model_downloads (model_version_id, format, granted, reason)"
        " SELECT :v, 'joblib', :g, CASE WHEN :g THEN NULL ELSE 'no download permission' END"
        " FROM generate_series(1, :n)",
        v=version_id,
        g=granted,
        n=n,
    )


def count(sql: Any, version_id: uuid.UUID) -> int:
    return int(scalar(sql, "SELECT download_count FROM model_versions WHERE id = :v", v=version_id))


@pytest.fixture
def owner(sql: Any) -> uuid.UUID:
    return make_user(sql)


def test_a_consistent_registry_has_no_drift(sql, session, engine, owner):
    other = make_user(sql)
    rm, (v1, v2) = registered(sql, owner)
    download(sql, v1, 3)
    download(sql, v2, 2, granted=False)  # refusals are not counted
    # Through the module too, as the API records them.
    registry.record_download(session, v1, user_id=other, format=ModelFormat.JOBLIB)
    session.commit()
    # A counter above the highest version is right: numbers are never given again.
    sql("DELETE FROM model_versions WHERE id = :v", v=v2)
    report = verify(engine)
    assert report.ok, report.render()
    assert count(sql, v1) == 4


def test_missing_downloads_count_is_reported_and_repaired(sql, engine, owner):
    rm, (v1, v2) = registered(sql, owner)
    download(sql, v1, 2)
    # Downloads written with the triggers off: the count missed them.
    untriggered(
        engine,
        "INSERT INTO model_downloads (model_version_id, format, granted)"
        " SELECT :v, 'onnx', true FROM generate_series(1, 3)",
        v=v1,
    )
    assert count(sql, v1) == 2

    report = verify(engine)
    assert not report.ok
    [drift] = report.drift
    assert (drift.user_id, drift.check, drift.stored, drift.expected, drift.row_id) == (
        owner,
        "download_count",
        2,
        5,
        v1,
    )
    assert drift.repairable
    rendered = report.render()
    assert f"user {owner}" in rendered and f"model version {v1}" in rendered
    assert "download_count 2 != 5 granted downloads" in rendered and "--repair" in rendered

    repaired = verify(engine, repair=True)
    assert repaired.ok, repaired.render()
    assert repaired.repaired == [(owner, f"download_count of model version {v1}", 2, 5)]
    assert count(sql, v1) == 5 and count(sql, v2) == 0
    [log] = sql(
        "SELECT user_id, table_name, row_id, column_name, old_value, new_value, repaired_by"
        " FROM derived_repairs"
    )
    assert tuple(log)[:6] == (owner, "model_versions", v1, "download_count", 2, 5)
    assert log.repaired_by  # the session's role
    # The trigger counts on from the repaired value.
    download(sql, v1)
    assert count(sql, v1) == 6 and verify(engine).ok


def test_a_count_written_past_its_guard_is_repaired_down(sql, engine, owner):
    rm, (v1, _) = registered(sql, owner)
    download(sql, v1)
    with engine.begin() as conn:
        conn.execute(
            text("ALTER TABLE model_versions DISABLE TRIGGER model_versions_download_count_guard")
        )
        conn.execute(text("UPDATE model_versions SET download_count = 40 WHERE id = :v"), {"v": v1})
        conn.execute(
            text("ALTER TABLE model_versions ENABLE TRIGGER model_versions_download_count_guard")
        )
    [drift] = verify(engine).drift
    assert (drift.check, drift.stored, drift.expected) == ("download_count", 40, 1)
    repaired = verify(engine, repair=True)
    assert repaired.ok and count(sql, v1) == 1
    assert "download_count of model version" in repaired.render() and "40 -> 1" in repaired.render()


def test_a_lowered_version_counter_is_reported_and_raised(sql, engine, owner):
    rm, versions = registered(sql, owner, versions=3)
    untriggered(engine, "UPDATE registered_models SET last_version_number = 1 WHERE id = :r", r=rm)
    # What the drift would do: the next version would take number 2 again.
    report = verify(engine)
    [drift] = report.drift
    assert (drift.user_id, drift.check, drift.stored, drift.expected, drift.row_id) == (
        owner,
        "last_version_number",
        1,
        3,
        rm,
    )
    assert f"registered model {rm}: last_version_number 1 < its highest version 3" in (
        report.render()
    )

    repaired = verify(engine, repair=True)
    assert repaired.ok, repaired.render()
    assert repaired.repaired == [(owner, f"last_version_number of registered model {rm}", 1, 3)]
    [log] = sql("SELECT table_name, row_id, column_name, old_value, new_value FROM derived_repairs")
    assert tuple(log) == ("registered_models", rm, "last_version_number", 1, 3)
    # Numbering goes on from the repaired counter.
    [v] = sql(
        "INSERT INTO model_versions (registered_model_id, model_id) VALUES (:r, :m)"
        " RETURNING version",
        r=rm,
        m=make_model(sql, owner),
    )
    assert v.version == 4


def test_repair_touches_only_the_drifting_rows_and_users(sql, engine, owner):
    other = make_user(sql)
    _, (mine, _) = registered(sql, owner)
    _, (theirs, _) = registered(sql, other)
    download(sql, theirs, 2)
    untriggered(
        engine,
        "INSERT INTO model_downloads (model_version_id, format, granted)"
        " VALUES (:v, 'joblib', true)",
        v=mine,
    )
    report = verify(engine, user_ids=[other])
    assert report.ok  # only the other user's rows were checked
    repaired = verify(engine, repair=True)
    assert [r[0] for r in repaired.repaired] == [owner]
    assert scalar(sql, "SELECT count(*) FROM derived_repairs") == 1
    # A consistent user's repair changes and logs nothing.
    assert sql("SELECT * FROM registry_repair_derived(:u)", u=other) == []
    assert scalar(sql, "SELECT count(*) FROM derived_repairs") == 1


def test_the_repair_flag_alone_writes_and_logs(sql, engine, owner):
    """The guard lets a write through only under automl.repair = 'on', and logs it;
    without the flag the owner's raw SQL is refused (ML063)."""
    _, (v1, _) = registered(sql, owner)
    with pytest.raises(errors.DownloadCountReadOnly):
        sql("UPDATE model_versions SET download_count = 3 WHERE id = :v", v=v1)
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('automl.repair', 'on', true)"))
        conn.execute(text("UPDATE model_versions SET download_count = 3 WHERE id = :v"), {"v": v1})
    assert count(sql, v1) == 3
    assert scalar(sql, "SELECT count(*) FROM derived_repairs WHERE row_id = :v", v=v1) == 1


@pytest.fixture
def app_sql(db_url: Any, engine: Engine) -> Iterator[Any]:
    """Raw SQL as a role granted the applications' privileges."""
    role = f"app_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        grant(conn, role)
    eng = errors.install(create_engine(db_url.set(username=role), pool_size=2))

    def run(*statements: str, **params: Any) -> list[Any]:
        """The statements in one transaction; the last one's rows."""
        with eng.begin() as conn:
            for statement in statements:
                result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    yield run
    eng.dispose()
    with engine.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{role}"'))
        conn.execute(text(f'DROP ROLE "{role}"'))


def test_the_apps_role_cannot_repair(sql, owner, app_sql):
    _, (v1, _) = registered(sql, owner)
    with pytest.raises(errors.PermissionDenied) as refused:
        app_sql("SELECT * FROM registry_repair_derived(:u)", u=owner)
    assert "permission denied" in str(refused.value)
    # Nor can the flag give it what its privileges do not.
    with pytest.raises(errors.DatabaseError) as refused:
        app_sql(
            "SELECT set_config('automl.repair', 'on', true)",
            "UPDATE model_versions SET download_count = 9 WHERE id = :v",
            v=v1,
        )
    assert "permission denied" in str(refused.value)
    with pytest.raises(errors.DatabaseError):
        app_sql(
            "INSERT INTO derived_repairs (user_id, table_name, row_id, column_name,"
            " old_value, new_value) VALUES (:u, 'model_versions', :v, 'download_count', 0, 1)",
            u=owner,
            v=v1,
        )
    assert count(sql, v1) == 0


def test_derived_repairs_rows_name_their_table_and_row(sql, owner):
    with pytest.raises(errors.DatabaseError):  # a registry row without its id
        sql(
            "INSERT INTO derived_repairs (user_id, table_name, column_name, old_value, new_value)"
            " VALUES (:u, 'model_versions', 'download_count', 0, 1)",
            u=owner,
        )
    with pytest.raises(errors.DatabaseError):  # a table the repair does not know
        sql(
            "INSERT INTO derived_repairs (user_id, table_name, row_id, column_name, old_value,"
            " new_value) VALUES (:u, 'jobs', :r, 'x', 0, 1)",
            u=owner,
            r=uuid.uuid4(),
        )


def test_repair_waits_for_a_download_in_flight(sql, engine, owner):
    """A download whose transaction is open when the repair starts: the repair waits
    for its row lock, then counts it; the download's own count is not lost."""
    _, (v1, _) = registered(sql, owner)
    untriggered(
        engine,
        GRANTED,
        v=v1,
    )  # drift: 0 counted, 1 granted
    in_flight = engine.connect()
    tx = in_flight.begin()
    in_flight.execute(
        text(GRANTED),
        {"v": v1},
    )  # holds the version's row lock (the count trigger updated it)
    result: dict[str, Any] = {}

    def repair() -> None:
        with engine.begin() as conn:
            result["rows"] = list(
                conn.execute(text("SELECT * FROM registry_repair_derived(:u)"), {"u": owner})
            )

    worker = threading.Thread(target=repair)
    worker.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        waiting = scalar(
            sql,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%registry_repair_derived%'",
        )
        if waiting:
            break
        time.sleep(0.05)
    assert waiting, "the repair did not wait for the download's lock"
    tx.commit()
    in_flight.close()
    worker.join(10)
    assert not worker.is_alive()
    # 2 granted downloads: the repair saw the committed one and set 2; nothing added after.
    assert [tuple(r)[2:] for r in result["rows"]] == [("download_count", 1, 2)]
    assert count(sql, v1) == 2 and verify(engine).ok


@pytest.fixture
def cli_db(db_url: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    db_session.reset()


def test_cli_verify_reports_and_repairs_the_registry(sql, engine, owner, cli_db, capsys):
    _, (v1, _) = registered(sql, owner)
    untriggered(
        engine,
        GRANTED,
        v=v1,
    )
    assert cli.main(["verify"]) == 1
    out = capsys.readouterr().out
    assert f"model version {v1}" in out and "download_count 0 != 1" in out
    assert cli.main(["verify", "--repair"]) == 0
    out = capsys.readouterr().out
    assert f"download_count of model version {v1} 0 -> 1" in out and "no drift" in out


def test_shared_models_are_checked_like_any_other(sql, session, engine, owner):
    """Drift is reported under the owner, whoever downloaded."""
    reader = make_user(sql)
    rm, (v1, _) = registered(sql, owner)
    session.execute(
        text("UPDATE registered_models SET visibility = 'shared' WHERE id = :r"), {"r": rm}
    )
    registry.grant_permission(session, rm, reader, ModelPermission.DOWNLOAD)
    registry.record_download(session, v1, user_id=reader, format=ModelFormat.JOBLIB)
    session.commit()
    assert verify(engine).ok
    untriggered(
        engine,
        "INSERT INTO model_downloads (model_version_id, user_id, format, granted)"
        " VALUES (:v, :u, 'joblib', true)",
        v=v1,
        u=reader,
    )
    [drift] = verify(engine).drift
    assert (drift.user_id, drift.stored, drift.expected) == (owner, 1, 2)


def test_a_bulk_load_of_lineage_is_checked_for_cycles_edge_by_edge(sql, owner):
    """The cycle check (one index lookup per step of the walk up, c13d00000001) sees
    the edges inserted earlier in the same statement: a chain loaded in one statement
    passes, and an edge closing a cycle is refused whether it comes in a later
    statement or in the same one."""
    _, chain = registered(sql, owner, versions=25)
    sql(
        "INSERT INTO model_lineage (child_version_id, relation, parent_version_id)"
        " SELECT c.v, 'retrained_from', c.p FROM unnest(CAST(:children AS uuid[]),"
        " CAST(:parents AS uuid[])) AS c(v, p)",
        children=chain[1:],
        parents=chain[:-1],
    )
    with pytest.raises(errors.LineageCycle):
        sql(
            "INSERT INTO model_lineage (child_version_id, relation, parent_version_id)"
            " VALUES (:first, 'tuned_from', :last)",
            first=chain[0],
            last=chain[-1],
        )
    _, (a, b, c) = registered(sql, owner, versions=3)
    with pytest.raises(errors.LineageCycle):
        sql(
            "INSERT INTO model_lineage (child_version_id, relation, parent_version_id)"
            " VALUES (:b, 'retrained_from', :a), (:c, 'retrained_from', :b),"
            " (:a, 'retrained_from', :c)",
            a=a,
            b=b,
            c=c,
        )
    assert scalar(sql, "SELECT count(*) FROM model_lineage") == len(chain) - 1


def test_every_repair_of_a_recorded_run_is_an_adjustment_naming_its_row(sql, engine, owner):
    """derived_repairs folded into reconciliation runs (issue 16): a repair of a
    registry row is an adjustment of the run with the table, the row's id, the
    column, the old and new value and why; the database's own log agrees."""
    import datetime as dt

    from database import billing

    rm, (v1, v2) = registered(sql, owner)
    untriggered(
        engine,
        "INSERT INTO model_downloads (model_version_id, format, granted)"
        " SELECT :v, 'onnx', true FROM generate_series(1, 3)",
        v=v1,
    )
    untriggered(engine, "UPDATE users SET model_count = 9 WHERE id = :u", u=owner)
    report = verify(engine, repair=True)
    run = billing.record_reconciliation(
        engine, report, source="test", started_at=dt.datetime.now(dt.UTC), repair=True
    )
    adjustments = {
        (r.table_name, r.row_id, r.column_name): (r.old_value, r.new_value, r.reason)
        for r in sql(
            "SELECT table_name, row_id, column_name, old_value, new_value, reason"
            " FROM reconciliation_adjustments WHERE run_id = :r",
            r=run,
        )
    }
    assert set(adjustments) == {
        ("model_versions", v1, "download_count"),
        ("users", None, "model_count"),
    }
    old, new, why = adjustments[("model_versions", v1, "download_count")]
    assert (old, new) == (0, 3) and "model_versions.download_count drifted" in why
    assert adjustments[("users", None, "model_count")][0] == 9
    logged = {
        (r.table_name, r.row_id, r.column_name)
        for r in sql("SELECT table_name, row_id, column_name FROM derived_repairs")
    }
    assert logged == set(adjustments)
