"""The model registry's rules (sql/triggers/registry.sql, database/registry.py).

Every rule is tried through raw SQL as well as the ORM, and, where privileges
matter, as the applications' least-privilege role (``automl-db grant``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from database import errors, registry
from database.grants import grant
from database.models import (
    LineageRelation,
    ModelAlias,
    ModelFormat,
    ModelPermission,
    ModelVersion,
    ModelVisibility,
    RegisteredModel,
)

from factories import insert, make_dataset, make_job, make_model, make_user, make_version, scalar


def make_registered(db: Any, user_id: uuid.UUID, **cols: Any) -> uuid.UUID:
    cols.setdefault("name", f"rm-{uuid.uuid4().hex[:8]}")
    return insert(db, "registered_models", user_id=user_id, **cols)


def add_version(db: Any, registered_id: uuid.UUID, user_id: uuid.UUID) -> tuple[uuid.UUID, int]:
    """A new trained model of ``user_id`` registered as the next version (raw SQL)."""
    model = make_model(db, user_id)
    [row] = db(
        "INSERT INTO model_versions (registered_model_id, model_id) VALUES (:r, :m)"
        " RETURNING id, version",
        r=registered_id,
        m=model,
    )
    return row.id, row.version


@pytest.fixture
def owner(sql: Any) -> uuid.UUID:
    return make_user(sql)


@pytest.fixture
def role(engine: Engine) -> Iterator[str]:
    name = f"app_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
    yield name
    with engine.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{name}"'))
        conn.execute(text(f'DROP ROLE "{name}"'))


@pytest.fixture
def app_sql(db_url: Any, engine: Engine, role: str) -> Iterator[Any]:
    """Like ``sql``, connected as a role granted the applications' privileges."""
    with engine.begin() as conn:
        grant(conn, role)
    eng = errors.install(create_engine(db_url.set(username=role), pool_size=2))

    def run(statement: str, **params: Any) -> list[Any]:
        with eng.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    yield run
    eng.dispose()


# --- numbering ----------------------------------------------------------------------


def test_versions_are_numbered_1_2_3_whatever_the_client_sends(sql, owner):
    rm = make_registered(sql, owner)
    numbers = [add_version(sql, rm, owner)[1] for _ in range(3)]
    assert numbers == [1, 2, 3]
    # A number (or owner, or count) sent by the client is replaced.
    model = make_model(sql, owner)
    [row] = sql(
        "INSERT INTO model_versions (registered_model_id, model_id, version, download_count)"
        " VALUES (:r, :m, 1, 50) RETURNING version, user_id, download_count",
        r=rm,
        m=model,
    )
    assert (row.version, row.user_id, row.download_count) == (4, owner, 0)
    assert scalar(sql, "SELECT last_version_number FROM registered_models WHERE id = :r", r=rm) == 4


def test_a_number_is_never_reused_after_a_delete(sql, owner):
    rm = make_registered(sql, owner)
    for _ in range(3):
        add_version(sql, rm, owner)
    sql("DELETE FROM model_versions WHERE registered_model_id = :r AND version = 3", r=rm)
    assert add_version(sql, rm, owner)[1] == 4
    sql("DELETE FROM model_versions WHERE registered_model_id = :r", r=rm)
    assert add_version(sql, rm, owner)[1] == 5


def test_the_counter_only_goes_up(sql, owner, app_sql):
    rm = make_registered(sql, owner)
    add_version(sql, rm, owner)
    add_version(sql, rm, owner)
    for run in (sql, app_sql):
        with pytest.raises(errors.RegistryCounterDecrease):
            run("UPDATE registered_models SET last_version_number = 1 WHERE id = :r", r=rm)
    assert add_version(sql, rm, owner)[1] == 3


def test_a_registered_model_keeps_its_owner(sql, owner, app_sql):
    rm = make_registered(sql, owner)
    add_version(sql, rm, owner)
    other = make_user(sql)
    for run in (sql, app_sql):
        with pytest.raises(errors.RegisteredModelOwnerImmutable):
            run("UPDATE registered_models SET user_id = :u WHERE id = :r", u=other, r=rm)
    app_sql("UPDATE registered_models SET name = 'renamed' WHERE id = :r", r=rm)


def test_the_apps_role_holds_exactly_the_registry_privileges(sql, role, app_sql):
    def table(privilege: str, name: str) -> bool:
        return scalar(sql, "SELECT has_table_privilege(:r, :t, :p)", r=role, t=name, p=privilege)

    def column(privilege: str, name: str, col: str) -> bool:
        return scalar(
            sql,
            "SELECT has_column_privilege(:r, :t, :c, :p)",
            r=role,
            t=name,
            c=col,
            p=privilege,
        )

    privileges = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
    assert [table(p, "model_downloads") for p in privileges] == [True, True, False, False, False]
    for name in ("registered_models", "model_aliases", "model_lineage", "model_version_metrics"):
        assert [table(p, name) for p in privileges] == [True, True, True, True, False], name
    assert table("SELECT", "model_versions") and table("DELETE", "model_versions")
    assert not column("UPDATE", "model_versions", "download_count")
    assert not column("INSERT", "model_versions", "download_count")
    assert column("UPDATE", "model_versions", "status")
    assert column("INSERT", "model_versions", "model_id")
    assert not column("UPDATE", "model_versions", "id")


def test_a_version_keeps_its_number_model_and_owner(sql, owner, app_sql):
    rm = make_registered(sql, owner)
    other_rm = make_registered(sql, owner)
    v, _ = add_version(sql, rm, owner)
    for assignment, params in (
        ("version = 7", {}),
        ("registered_model_id = :x", {"x": other_rm}),
        ("model_id = :x", {"x": make_model(sql, owner)}),
    ):
        for run in (sql, app_sql):
            with pytest.raises(errors.ModelVersionImmutable):
                run(f"UPDATE model_versions SET {assignment} WHERE id = :v", v=v, **params)
    # Other columns change, and stamp updated_at.
    sql("UPDATE model_versions SET status = 'archived', primary_metric = 'f1' WHERE id = :v", v=v)
    app_sql("UPDATE model_versions SET description = 'ok' WHERE id = :v", v=v)


def test_one_version_per_trained_model_of_the_owner(sql, session, owner):
    rm = make_registered(sql, owner)
    model = make_model(sql, owner)
    sql("INSERT INTO model_versions (registered_model_id, model_id) VALUES (:r, :m)", r=rm, m=model)
    with pytest.raises(errors.ModelAlreadyRegistered):
        sql(
            "INSERT INTO model_versions (registered_model_id, model_id) VALUES (:r, :m)",
            r=make_registered(sql, owner),
            m=model,
        )
    # Another user's trained model cannot be registered (the composite key to models).
    stranger_model = make_model(sql, make_user(sql))
    with pytest.raises(errors.ReferenceViolation):
        sql(
            "INSERT INTO model_versions (registered_model_id, model_id) VALUES (:r, :m)",
            r=rm,
            m=stranger_model,
        )
    # The ORM path says the same before writing.
    with pytest.raises(registry.TrainedModelNotFound):
        registry.register_version(session, rm, stranger_model)
    session.rollback()
    with pytest.raises(errors.ModelAlreadyRegistered):
        registry.register_version(session, rm, model)
    session.rollback()
    with pytest.raises(registry.RegisteredModelNotFound):
        registry.register_version(session, uuid.uuid4(), model)


def test_register_version_through_the_orm(sql, session, owner):
    job = make_job(sql, owner)
    model = make_model(sql, owner, job_id=job)
    dataset_version = make_version(sql, make_dataset(sql, owner))
    rm = registry.create_registered_model(
        session, owner, "churn", tags={"team": "growth"}, visibility=ModelVisibility.SHARED
    )
    version = registry.register_version(
        session,
        rm.id,
        model,
        signature={"inputs": [{"name": "age", "type": "double"}]},
        input_example=[{"age": 41.0}],
        environment={"python": "3.12.1", "sklearn": "1.5.2"},
        metrics={"accuracy": 0.91, "f1": 0.88},
        primary_metric="accuracy",
        dataset_version_ids=[dataset_version],
    )
    session.commit()
    assert (version.version, version.user_id, version.download_count) == (1, owner, 0)
    assert version.status == "ready"
    metrics = sql(
        "SELECT metric, split, value FROM model_version_metrics WHERE model_version_id = :v"
        " ORDER BY metric",
        v=version.id,
    )
    assert [tuple(r) for r in metrics] == [("accuracy", "test", 0.91), ("f1", "test", 0.88)]
    edges = registry.lineage(session, version.id, "up", depth=1)
    assert {(e.relation, e.parent_kind) for e in edges} == {
        (LineageRelation.PRODUCED_BY, "job"),
        (LineageRelation.PRODUCED_BY, "workflow_snapshot"),
        (LineageRelation.TRAINED_ON, "dataset_version"),
    }
    with pytest.raises(errors.RegisteredModelNameTaken):
        registry.create_registered_model(session, owner, "churn")


def test_concurrent_registrations_get_consecutive_numbers(sql, session_factory, owner):
    rm = make_registered(sql, owner)
    workers = 8
    models = [make_model(sql, owner) for _ in range(workers)]
    barrier = threading.Barrier(workers)
    numbers: list[int] = []
    failures: list[BaseException] = []

    def register(model_id: uuid.UUID) -> None:
        try:
            with session_factory() as s:
                barrier.wait(timeout=30)
                version = registry.register_version(s, rm, model_id)
                s.commit()
                numbers.append(version.version)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=register, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert sorted(numbers) == list(range(1, workers + 1))
    assert scalar(sql, "SELECT last_version_number FROM registered_models WHERE id = :r", r=rm) == 8


# --- registered models --------------------------------------------------------------


def test_names_tags_and_card_are_checked(sql, owner):
    make_registered(sql, owner, name="iris")
    with pytest.raises(errors.RegisteredModelNameTaken):
        make_registered(sql, owner, name="iris")
    make_registered(sql, make_user(sql), name="iris")  # unique per owner only
    with pytest.raises(errors.InvalidValue):
        make_registered(sql, owner, name="")
    with pytest.raises(errors.InvalidValue):
        make_registered(sql, owner, tags={"team": 3})
    with pytest.raises(errors.InvalidValue):
        make_registered(sql, owner, tags=["team"])
    with pytest.raises(errors.InvalidValue):
        make_registered(sql, owner, model_card="x" * 100_001)
    rm = make_registered(sql, owner, tags={"team": "x", "stage": "beta"})
    found = sql(
        "SELECT id FROM registered_models WHERE tags @> CAST(:t AS jsonb)", t='{"team": "x"}'
    )
    assert [r.id for r in found] == [rm]
    assert scalar(sql, "SELECT visibility FROM registered_models WHERE id = :r", r=rm) == "private"


def test_metrics_are_finite_and_searchable(sql, owner):
    rm = make_registered(sql, owner)
    versions = [add_version(sql, rm, owner)[0] for _ in range(3)]
    for v, value in zip(versions, (0.7, 0.95, 0.9), strict=True):
        sql(
            "INSERT INTO model_version_metrics (model_version_id, metric, split, value)"
            " VALUES (:v, 'accuracy', 'test', :x)",
            v=v,
            x=value,
        )
    for bad in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(errors.InvalidMetric):
            sql(
                "INSERT INTO model_version_metrics (model_version_id, metric, split, value)"
                " VALUES (:v, 'loss', 'test', CAST(:x AS float8))",
                v=versions[0],
                x=bad,
            )
    with pytest.raises(errors.InvalidMetric):
        sql(
            "INSERT INTO model_version_metrics (model_version_id, metric, split, value)"
            " VALUES (:v, 'drop table', 'test', 1)",
            v=versions[0],
        )
    with pytest.raises(errors.AlreadyExists):
        sql(
            "INSERT INTO model_version_metrics (model_version_id, metric, split, value)"
            " VALUES (:v, 'accuracy', 'test', 0.1)",
            v=versions[0],
        )
    best = sql(
        "SELECT v.version FROM model_version_metrics AS m"
        " JOIN model_versions AS v ON v.id = m.model_version_id"
        " WHERE m.metric = 'accuracy' AND m.split = 'test' AND m.value > 0.8"
        " ORDER BY m.value DESC"
    )
    assert [r.version for r in best] == [2, 3]


# --- aliases ------------------------------------------------------------------------


def test_alias_is_one_version_per_model_and_moves_atomically(sql, session, owner):
    rm = make_registered(sql, owner)
    v1, _ = add_version(sql, rm, owner)
    v2, _ = add_version(sql, rm, owner)
    alias = registry.set_alias(session, rm, "champion", 1)
    session.commit()
    assert alias.model_version_id == v1
    moved = registry.set_alias(session, rm, "champion", 2)
    session.commit()
    assert moved.model_version_id == v2
    assert (
        scalar(sql, "SELECT count(*) FROM model_aliases WHERE registered_model_id = :r", r=rm) == 1
    )
    with pytest.raises(registry.ModelVersionNotFound):
        registry.set_alias(session, rm, "champion", 9)
    session.rollback()
    # Raw SQL: a second row for the same (model, alias) is refused; a move is an UPDATE.
    with pytest.raises(errors.AlreadyExists):
        sql(
            "INSERT INTO model_aliases (registered_model_id, alias, model_version_id)"
            " VALUES (:r, 'champion', :v)",
            r=rm,
            v=v1,
        )
    sql("UPDATE model_aliases SET model_version_id = :v WHERE registered_model_id = :r", r=rm, v=v1)
    # Another model may use the same alias.
    other = make_registered(sql, owner)
    add_version(sql, other, owner)
    registry.set_alias(session, other, "champion", 1)
    session.commit()
    assert registry.delete_alias(session, other, "champion")
    assert not registry.delete_alias(session, other, "champion")
    session.commit()


def test_an_alias_cannot_point_at_another_models_version(sql, session, owner):
    rm = make_registered(sql, owner)
    add_version(sql, rm, owner)
    other = make_registered(sql, owner)
    foreign, _ = add_version(sql, other, owner)
    with pytest.raises(errors.AliasVersionMismatch):
        sql(
            "INSERT INTO model_aliases (registered_model_id, alias, model_version_id)"
            " VALUES (:r, 'champion', :v)",
            r=rm,
            v=foreign,
        )
    registry.set_alias(session, rm, "champion", 1)
    session.commit()
    with pytest.raises(errors.AliasVersionMismatch):
        sql(
            "UPDATE model_aliases SET model_version_id = :v WHERE registered_model_id = :r",
            r=rm,
            v=foreign,
        )
    session.add(ModelAlias(registered_model_id=rm, alias="challenger", model_version_id=foreign))
    with pytest.raises(errors.AliasVersionMismatch):
        session.flush()
    session.rollback()


def test_alias_names(sql, session, owner):
    rm = make_registered(sql, owner)
    v, _ = add_version(sql, rm, owner)
    for bad in ("3", "v 1", "Champion", "", "-x", "x" * 64):
        with pytest.raises(errors.InvalidAlias):
            sql(
                "INSERT INTO model_aliases (registered_model_id, alias, model_version_id)"
                " VALUES (:r, :a, :v)",
                r=rm,
                a=bad,
                v=v,
            )
    with pytest.raises(errors.InvalidAlias):
        registry.set_alias(session, rm, "42", 1)
    session.rollback()
    for good in ("champion", "challenger-2", "prod_eu", "v1"):
        registry.set_alias(session, rm, good, 1)
    session.commit()


def test_deleting_a_version_removes_its_aliases(sql, owner):
    rm = make_registered(sql, owner)
    v, _ = add_version(sql, rm, owner)
    sql(
        "INSERT INTO model_aliases (registered_model_id, alias, model_version_id)"
        " VALUES (:r, 'champion', :v)",
        r=rm,
        v=v,
    )
    sql("DELETE FROM model_versions WHERE id = :v", v=v)
    assert (
        scalar(sql, "SELECT count(*) FROM model_aliases WHERE registered_model_id = :r", r=rm) == 0
    )


# --- downloads ----------------------------------------------------------------------


def _download(db: Any, version: uuid.UUID, granted: bool = True, **cols: Any) -> uuid.UUID:
    return insert(
        db, "model_downloads", model_version_id=version, format="joblib", granted=granted, **cols
    )


def test_downloads_are_append_only(sql, owner, app_sql):
    rm = make_registered(sql, owner)
    v, _ = add_version(sql, rm, owner)
    d = _download(sql, v, user_id=owner, ip="10.0.0.1", user_agent="curl/8")
    for statement in (
        "UPDATE model_downloads SET granted = false WHERE id = :d",
        "DELETE FROM model_downloads WHERE id = :d",
    ):
        with pytest.raises(errors.DownloadsAppendOnly):
            sql(statement, d=d)
        with pytest.raises((errors.PermissionDenied, errors.DownloadsAppendOnly)):
            app_sql(statement, d=d)
    with pytest.raises(errors.DownloadsAppendOnly):
        sql("TRUNCATE model_downloads")
    with pytest.raises((errors.PermissionDenied, errors.DownloadsAppendOnly)):
        app_sql("TRUNCATE model_downloads")
    assert scalar(sql, "SELECT count(*) FROM model_downloads") == 1
    # The apps' role records downloads, and the counter follows.
    app_sql(
        "INSERT INTO model_downloads (model_version_id, format, granted, ip)"
        " VALUES (:v, 'onnx', true, '2001:db8::1')",
        v=v,
    )
    assert scalar(sql, "SELECT download_count FROM model_versions WHERE id = :v", v=v) == 2
    # A deleted user's downloads stay, anonymous; a deleted version takes its own along.
    stranger = make_user(sql)
    _download(sql, v, user_id=stranger)
    sql("DELETE FROM users WHERE id = :u", u=stranger)
    assert scalar(sql, "SELECT count(*) FROM model_downloads WHERE user_id IS NULL") == 2
    sql("DELETE FROM model_versions WHERE id = :v", v=v)
    assert scalar(sql, "SELECT count(*) FROM model_downloads") == 0


def test_download_count_counts_granted_rows_in_bulk(sql, owner):
    rm = make_registered(sql, owner)
    v1, _ = add_version(sql, rm, owner)
    v2, _ = add_version(sql, rm, owner)
    sql(
        "INSERT INTO model_downloads (model_version_id, format, granted)"
        " SELECT CASE WHEN i % 2 = 0 THEN CAST(:a AS uuid) ELSE CAST(:b AS uuid) END,"
        "        'joblib', i % 3 <> 0"
        "   FROM generate_series(1, 30) AS i",
        a=v1,
        b=v2,
    )
    expected = {
        v: sum(1 for i in range(1, 31) if (i % 2 == 0) == (v == v1) and i % 3 != 0)
        for v in (v1, v2)
    }
    counts = {
        r.id: r.download_count
        for r in sql(
            "SELECT id, download_count FROM model_versions WHERE registered_model_id = :r", r=rm
        )
    }
    assert counts == expected == {v1: 10, v2: 10}
    _download(sql, v1, granted=False)
    assert scalar(sql, "SELECT download_count FROM model_versions WHERE id = :v", v=v1) == 10


def test_download_count_cannot_be_written(sql, session, owner, app_sql):
    rm = make_registered(sql, owner)
    v, _ = add_version(sql, rm, owner)
    _download(sql, v)
    with pytest.raises(errors.DownloadCountReadOnly):
        sql("UPDATE model_versions SET download_count = 100 WHERE id = :v", v=v)
    with pytest.raises(errors.PermissionDenied):
        app_sql("UPDATE model_versions SET download_count = 100 WHERE id = :v", v=v)
    version = session.get(ModelVersion, v)
    assert version is not None
    version.download_count = 0
    with pytest.raises(errors.DownloadCountReadOnly):
        session.flush()
    session.rollback()
    assert scalar(sql, "SELECT download_count FROM model_versions WHERE id = :v", v=v) == 1


# --- lineage ------------------------------------------------------------------------


def test_lineage_both_ways_with_a_depth_limit(sql, session, owner):
    rm = make_registered(sql, owner)
    v1, _ = add_version(sql, rm, owner)
    v2, _ = add_version(sql, rm, owner)
    v3, _ = add_version(sql, rm, owner)
    dv = make_version(sql, make_dataset(sql, owner))
    job = make_job(sql, owner)
    assert registry.record_lineage(session, v1, LineageRelation.TRAINED_ON, dataset_version_id=dv)
    assert registry.record_lineage(session, v1, LineageRelation.PRODUCED_BY, job_id=job)
    assert registry.record_lineage(
        session, v2, LineageRelation.RETRAINED_FROM, parent_version_id=v1
    )
    assert registry.record_lineage(session, v3, LineageRelation.TUNED_FROM, parent_version_id=v2)
    # Recorded once.
    assert not registry.record_lineage(
        session, v3, LineageRelation.TUNED_FROM, parent_version_id=v2
    )
    session.commit()

    up1 = registry.lineage(session, v3, "up", depth=1)
    assert [(e.depth, e.child_version_id, e.parent_id) for e in up1] == [(1, v3, v2)]
    up3 = registry.lineage(session, v3, "up", depth=3)
    assert {(e.depth, e.parent_kind, e.parent_id) for e in up3} == {
        (1, "model_version", v2),
        (2, "model_version", v1),
        (3, "dataset_version", dv),
        (3, "job", job),
    }
    down1 = registry.lineage(session, v1, "down", depth=1)
    assert [(e.child_version_id, e.relation) for e in down1] == [
        (v2, LineageRelation.RETRAINED_FROM)
    ]
    down2 = registry.lineage(session, v1, "down", depth=2)
    assert [e.child_version_id for e in down2] == [v2, v3]
    from_data = registry.made_from_dataset_version(session, dv, depth=5)
    assert [(e.depth, e.child_version_id) for e in from_data] == [(1, v1), (2, v2), (3, v3)]
    for bad in (0, registry.MAX_LINEAGE_DEPTH + 1):
        with pytest.raises(errors.InvalidValue):
            registry.lineage(session, v3, "up", depth=bad)
    with pytest.raises(errors.InvalidValue):
        registry.lineage(session, v3, "sideways", depth=1)  # type: ignore[arg-type]


def test_lineage_edges_have_one_fitting_parent_and_no_cycle(sql, session, owner):
    rm = make_registered(sql, owner)
    v1, _ = add_version(sql, rm, owner)
    v2, _ = add_version(sql, rm, owner)
    v3, _ = add_version(sql, rm, owner)
    dv = make_version(sql, make_dataset(sql, owner))
    edge = (
        "INSERT INTO model_lineage (child_version_id, relation, {cols}) VALUES (:c, :rel, {vals})"
    )
    with pytest.raises(errors.InvalidLineage):  # two parents
        sql(
            edge.format(cols="parent_version_id, dataset_version_id", vals=":p, :d"),
            c=v2,
            rel="trained_on",
            p=v1,
            d=dv,
        )
    with pytest.raises(errors.InvalidLineage):  # none
        sql(
            "INSERT INTO model_lineage (child_version_id, relation) VALUES (:c, 'trained_on')", c=v2
        )
    with pytest.raises(errors.InvalidLineage):  # trained_on a model version
        sql(edge.format(cols="parent_version_id", vals=":p"), c=v2, rel="trained_on", p=v1)
    with pytest.raises(errors.InvalidLineage):  # retrained_from a dataset version
        sql(edge.format(cols="dataset_version_id", vals=":p"), c=v2, rel="retrained_from", p=dv)
    with pytest.raises(errors.LineageCycle):  # its own parent (ck_..._not_own_parent behind)
        sql(edge.format(cols="parent_version_id", vals=":p"), c=v2, rel="tuned_from", p=v2)
    sql(edge.format(cols="parent_version_id", vals=":p"), c=v2, rel="retrained_from", p=v1)
    sql(edge.format(cols="parent_version_id", vals=":p"), c=v3, rel="tuned_from", p=v2)
    with pytest.raises(errors.LineageCycle):
        sql(edge.format(cols="parent_version_id", vals=":p"), c=v1, rel="tuned_from", p=v3)
    with pytest.raises(errors.LineageCycle):
        registry.record_lineage(session, v1, LineageRelation.RETRAINED_FROM, parent_version_id=v2)
    session.rollback()


# --- sharing ------------------------------------------------------------------------


def test_can_across_three_users(sql, session, owner):
    grantee = make_user(sql)
    stranger = make_user(sql)
    rm = registry.create_registered_model(session, owner, "shared-model")
    session.commit()
    v, _ = add_version(sql, rm.id, owner)
    registry.grant_permission(session, rm.id, grantee, ModelPermission.DOWNLOAD, granted_by=owner)
    session.commit()

    def table() -> dict[str, list[bool]]:
        return {
            name: [registry.can(session, who, rm.id, p) for p in ModelPermission]
            for name, who in (
                ("owner", owner),
                ("grantee", grantee),
                ("stranger", stranger),
                ("anonymous", None),
            )
        }

    # Private: the owner alone (the grant is kept, suspended).
    assert table() == {
        "owner": [True, True, True],
        "grantee": [False, False, False],
        "stranger": [False, False, False],
        "anonymous": [False, False, False],
    }
    sql("UPDATE registered_models SET visibility = 'shared' WHERE id = :r", r=rm.id)
    assert table() == {
        "owner": [True, True, True],
        "grantee": [True, True, False],
        "stranger": [False, False, False],
        "anonymous": [False, False, False],
    }
    sql("UPDATE registered_models SET visibility = 'public' WHERE id = :r", r=rm.id)
    assert table() == {
        "owner": [True, True, True],
        "grantee": [True, True, False],
        "stranger": [True, True, False],
        "anonymous": [True, True, False],
    }
    registry.grant_permission(session, rm.id, grantee, ModelPermission.DEPLOY)
    session.commit()
    assert table()["grantee"] == [True, True, True]
    assert registry.revoke_permission(session, rm.id, grantee)
    session.commit()
    assert table()["grantee"] == [True, True, False]  # public still
    assert not registry.can(session, owner, uuid.uuid4(), ModelPermission.READ)
    # A soft-deleted owner's models are hidden from everyone until restored.
    sql("UPDATE users SET is_deleted = true, deleted_at = now() WHERE id = :u", u=owner)
    assert not any(registry.can(session, stranger, rm.id, p) for p in ModelPermission)
    sql("UPDATE users SET is_deleted = false, deleted_at = NULL WHERE id = :u", u=owner)
    assert registry.can(session, stranger, rm.id, ModelPermission.READ)

    # Downloads recorded, granted or refused.
    sql("UPDATE registered_models SET visibility = 'shared' WHERE id = :r", r=rm.id)
    refused = registry.record_download(
        session, v, user_id=stranger, format=ModelFormat.SKOPS, ip="192.0.2.7", user_agent="x" * 900
    )
    allowed = registry.record_download(session, v, user_id=owner, format=ModelFormat.JOBLIB)
    session.commit()
    assert (refused.granted, refused.reason) == (False, "no download permission")
    assert len(refused.user_agent or "") == 512
    assert (allowed.granted, allowed.reason) == (True, None)
    assert scalar(sql, "SELECT download_count FROM model_versions WHERE id = :v", v=v) == 1
    with pytest.raises(registry.ModelVersionNotFound):
        registry.record_download(session, uuid.uuid4(), user_id=owner, format=ModelFormat.ONNX)


def test_the_owner_cannot_be_granted(sql, session, owner, app_sql):
    rm = make_registered(sql, owner)
    for run in (sql, app_sql):
        with pytest.raises(errors.OwnerPermission):
            run(
                "INSERT INTO registered_model_permissions"
                " (registered_model_id, user_id, permission) VALUES (:r, :u, 'read')",
                r=rm,
                u=owner,
            )
    with pytest.raises(errors.OwnerPermission):
        registry.grant_permission(session, rm, owner, ModelPermission.DEPLOY)
    session.rollback()
    other = make_user(sql)
    sql(
        "INSERT INTO registered_model_permissions (registered_model_id, user_id, permission)"
        " VALUES (:r, :u, 'read')",
        r=rm,
        u=other,
    )
    with pytest.raises(errors.OwnerPermission):
        sql(
            "UPDATE registered_model_permissions SET user_id = :o WHERE user_id = :u",
            o=owner,
            u=other,
        )


# --- the ORM ------------------------------------------------------------------------


def test_orm_reads_a_registered_model_with_its_versions(sql, session_factory, owner):
    rm = make_registered(sql, owner)
    add_version(sql, rm, owner)
    add_version(sql, rm, owner)
    with session_factory() as s:
        from sqlalchemy import select
        from sqlalchemy.orm import selectinload

        found = s.scalars(
            select(RegisteredModel)
            .where(RegisteredModel.id == rm)
            .options(selectinload(RegisteredModel.versions))
        ).one()
        assert [v.version for v in found.versions] == [1, 2]
        assert found.last_version_number == 2
        assert isinstance(s, Session)


def test_updated_at_is_not_moved_by_the_counters(sql, owner):
    rm = make_registered(sql, owner, updated_at="2000-01-01T00:00:00+00:00")
    v, _ = add_version(sql, rm, owner)
    assert (
        str(scalar(sql, "SELECT updated_at FROM registered_models WHERE id = :r", r=rm))[:4]
        == "2000"
    )
    before = scalar(sql, "SELECT updated_at FROM model_versions WHERE id = :v", v=v)
    _download(sql, v)
    assert scalar(sql, "SELECT updated_at FROM model_versions WHERE id = :v", v=v) == before
    sql("UPDATE registered_models SET description = 'x' WHERE id = :r", r=rm)
    assert (
        str(scalar(sql, "SELECT updated_at FROM registered_models WHERE id = :r", r=rm))[:4]
        != "2000"
    )


# --- environment --------------------------------------------------------------------


def test_environment_compatibility():
    here = registry.current_environment()
    assert set(here) >= {"python", "sklearn", "numpy", "pandas"}
    assert registry.environment_problems(here, here) == []
    saved = {"python": "3.11.7", "sklearn": "1.5.2", "numpy": "1.26.4", "pandas": "2.2.1"}
    same = {"python": "3.11.1", "sklearn": "1.5.0", "numpy": "1.24.0", "pandas": "2.0.3"}
    assert registry.environment_problems(saved, same) == []
    other = {"python": "3.12.1", "sklearn": "1.6.0", "numpy": "2.0.0"}
    assert registry.environment_problems(saved, other) == [
        "python 3.11.7 saved this model, 3.12.1 is installed (needs 3.11.x)",
        "sklearn 1.5.2 saved this model, 1.6.0 is installed (needs 1.5.x)",
        "numpy 1.26.4 saved this model, 2.0.0 is installed (needs 1.x)",
        "pandas 2.2.1 is needed, and it is not installed",
    ]
    # What the version did not record is not checked.
    assert registry.environment_problems({"sklearn": "1.5.2"}, {"sklearn": "1.5.1"}) == []


# --- purge --------------------------------------------------------------------------


def test_purge_removes_a_users_registry_and_keeps_others_downloads(sql, engine, session, owner):
    import datetime as dt

    from database import lifecycle

    other = make_user(sql)
    # The purged user's own registry, downloaded by someone else.
    rm = make_registered(sql, owner)
    v, _ = add_version(sql, rm, owner)
    sql(
        "INSERT INTO model_version_metrics (model_version_id, metric, split, value)"
        " VALUES (:v, 'accuracy', 'test', 0.9)",
        v=v,
    )
    sql(
        "INSERT INTO model_aliases (registered_model_id, alias, model_version_id)"
        " VALUES (:r, 'champion', :v)",
        r=rm,
        v=v,
    )
    registry.grant_permission(session, rm, other, ModelPermission.READ)
    # Another user's model, shared with and downloaded by the purged user.
    others_rm = make_registered(sql, other)
    others_v, _ = add_version(sql, others_rm, other)
    registry.grant_permission(session, others_rm, owner, ModelPermission.DOWNLOAD, granted_by=other)
    session.commit()
    _download(sql, v, user_id=other)
    _download(sql, others_v, user_id=owner)

    lifecycle.soft_delete_user(session, owner, at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    session.commit()
    report = lifecycle.purge(engine)
    assert report.users_purged == 1
    assert (report.rows["registered_models"], report.rows["model_versions"]) == (1, 1)
    assert report.rows["registered_model_permissions"] == 2
    for table in ("registered_models", "model_versions", "registered_model_permissions"):
        assert scalar(sql, f"SELECT count(*) FROM {table} WHERE user_id = :u", u=owner) == 0
    # Their downloads of the other model stay (append-only), counted.
    assert scalar(sql, "SELECT count(*) FROM model_downloads WHERE user_id = :u", u=owner) == 1
    assert scalar(sql, "SELECT download_count FROM model_versions WHERE id = :v", v=others_v) == 1
    assert scalar(sql, "SELECT count(*) FROM model_downloads WHERE model_version_id = :v", v=v) == 0


# --- concurrency --------------------------------------------------------------------


def test_concurrent_alias_moves_leave_one_row(sql, session_factory, owner):
    rm = make_registered(sql, owner)
    versions = [add_version(sql, rm, owner)[0] for _ in range(6)]
    barrier = threading.Barrier(len(versions))
    failures: list[BaseException] = []

    def move(number: int) -> None:
        try:
            with session_factory() as s:
                barrier.wait(timeout=30)
                registry.set_alias(s, rm, "champion", number)
                s.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=move, args=(n,)) for n in range(1, len(versions) + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    [row] = sql("SELECT model_version_id FROM model_aliases WHERE registered_model_id = :r", r=rm)
    assert row.model_version_id in versions


def test_two_edges_closing_a_cycle_together_are_refused(sql, engine, owner):
    rm = make_registered(sql, owner)
    v1, _ = add_version(sql, rm, owner)
    v2, _ = add_version(sql, rm, owner)
    edge = (
        "INSERT INTO model_lineage (child_version_id, relation, parent_version_id)"
        " VALUES (:c, 'retrained_from', :p)"
    )
    outcome: list[BaseException | None] = []
    with engine.connect() as first:
        first.execute(text(edge), {"c": v2, "p": v1})  # holds the lineage lock

        def second() -> None:
            try:
                with engine.begin() as conn:
                    conn.execute(text(edge), {"c": v1, "p": v2})
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        # Wait until the second insert waits for the lock (no timing assumption: poll).
        for _ in range(600):
            waiting = scalar(
                sql,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND objid = 7305065 AND database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())",
            )
            if waiting:
                break
            thread.join(timeout=0.05)
        assert waiting == 1
        first.commit()
    thread.join()
    assert len(outcome) == 1 and isinstance(outcome[0], errors.LineageCycle)
    assert scalar(sql, "SELECT count(*) FROM model_lineage") == 1
