"""Deployments' database rules (sql/triggers/deployments.sql, database/deployments.py):
``models.is_deployed`` derived from active deployments and the aliases they follow,
refused to clients (ML080) through raw SQL, the ORM and the apps' role; the status
life (ML081); the fixed target (ML082); one target; the config's bounds."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from database import deployments, errors
from database.grants import grant
from database.models import DeploymentStatus, Model

from factories import insert, make_model, make_user, scalar


def registered(db: Any, user_id: uuid.UUID) -> uuid.UUID:
    return insert(db, "registered_models", user_id=user_id, name=f"rm-{uuid.uuid4().hex[:8]}")


def version(db: Any, rm: uuid.UUID, user_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID, int]:
    """A new trained model registered as the next version: (version id, model id, number)."""
    model = make_model(db, user_id, s3_path="/nowhere/model.joblib")
    [row] = db(
        "INSERT INTO model_versions (registered_model_id, model_id) VALUES (:r, :m)"
        " RETURNING id, version",
        r=rm,
        m=model,
    )
    return row.id, model, row.version


def champion(db: Any, rm: uuid.UUID, version_id: uuid.UUID) -> None:
    """Point the registered model's ``champion`` alias at ``version_id`` (a new alias)."""
    db(
        "INSERT INTO model_aliases (registered_model_id, alias, model_version_id)"
        " VALUES (:r, 'champion', :v)",
        r=rm,
        v=version_id,
    )


def deployed(db: Any, model_id: uuid.UUID) -> bool:
    return bool(scalar(db, "SELECT is_deployed FROM models WHERE id = :m", m=model_id))


def deployment(db: Any, user_id: uuid.UUID, status: str = "active", **target: Any) -> uuid.UUID:
    return insert(
        db,
        "deployments",
        user_id=user_id,
        name=f"d-{uuid.uuid4().hex[:8]}",
        status=status,
        **target,
    )


@pytest.fixture
def owner(sql: Any) -> uuid.UUID:
    return make_user(sql)


@pytest.fixture
def app_sql(db_url: Any, engine: Engine) -> Iterator[Any]:
    """Like ``sql``, as a role granted the applications' privileges."""
    role = f"app_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        grant(conn, role)
    eng = errors.install(create_engine(db_url.set(username=role), pool_size=2))

    def run(statement: str, **params: Any) -> list[Any]:
        with eng.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    yield run
    eng.dispose()
    with engine.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{role}"'))
        conn.execute(text(f'DROP ROLE "{role}"'))


# --- is_deployed --------------------------------------------------------------------------------
@pytest.mark.parametrize("as_app", [False, True])
def test_is_deployed_follows_activate_stop_and_delete(
    sql: Any, app_sql: Any, owner: uuid.UUID, as_app: bool
) -> None:
    db = app_sql if as_app else sql
    rm = registered(sql, owner)
    v, m, _ = version(sql, rm, owner)
    d = deployment(db, owner, status="pending", model_version_id=v)
    assert not deployed(sql, m)
    db("UPDATE deployments SET status = 'active' WHERE id = :d", d=d)
    assert deployed(sql, m)
    d2 = deployment(db, owner, model_version_id=v)
    db("UPDATE deployments SET status = 'stopped' WHERE id = :d", d=d)
    assert deployed(sql, m)  # d2 still serves it
    db("DELETE FROM deployments WHERE id = :d", d=d2)
    assert not deployed(sql, m)


@pytest.mark.parametrize("as_app", [False, True])
def test_is_deployed_follows_the_alias(
    sql: Any, app_sql: Any, owner: uuid.UUID, as_app: bool
) -> None:
    db = app_sql if as_app else sql
    rm = registered(sql, owner)
    v1, m1, _ = version(sql, rm, owner)
    v2, m2, _ = version(sql, rm, owner)
    champion(db, rm, v1)
    d = deployment(db, owner, registered_model_id=rm, alias="champion")
    assert deployed(sql, m1) and not deployed(sql, m2)
    db(
        "UPDATE model_aliases SET model_version_id = :v WHERE registered_model_id = :r",
        v=v2,
        r=rm,
    )
    assert not deployed(sql, m1) and deployed(sql, m2)
    db("DELETE FROM model_aliases WHERE registered_model_id = :r", r=rm)
    assert not deployed(sql, m1) and not deployed(sql, m2)
    champion(db, rm, v1)
    assert deployed(sql, m1)
    # A fixed-version deployment of m1 keeps it deployed when the alias moves away.
    deployment(db, owner, model_version_id=v1)
    db(
        "UPDATE model_aliases SET model_version_id = :v WHERE registered_model_id = :r",
        v=v2,
        r=rm,
    )
    assert deployed(sql, m1) and deployed(sql, m2)
    db("UPDATE deployments SET status = 'stopped' WHERE id = :d", d=d)
    assert deployed(sql, m1) and not deployed(sql, m2)


def test_deleting_a_version_or_the_user_takes_the_deployments_along(
    sql: Any, owner: uuid.UUID
) -> None:
    rm = registered(sql, owner)
    v1, m1, _ = version(sql, rm, owner)
    v2, m2, _ = version(sql, rm, owner)
    d1 = deployment(sql, owner, model_version_id=v1)
    deployment(sql, owner, model_version_id=v2)
    sql("DELETE FROM model_versions WHERE id = :v", v=v1)
    assert scalar(sql, "SELECT count(*) FROM deployments WHERE id = :d", d=d1) == 0
    assert not deployed(sql, m1) and deployed(sql, m2)
    sql("DELETE FROM users WHERE id = :u", u=owner)
    assert scalar(sql, "SELECT count(*) FROM deployments") == 0


@pytest.mark.parametrize("as_app", [False, True])
def test_clients_cannot_write_is_deployed(
    sql: Any, app_sql: Any, owner: uuid.UUID, as_app: bool
) -> None:
    db = app_sql if as_app else sql
    m = make_model(sql, owner)
    # The owner's role is refused by the trigger (ML080); the apps' role has no
    # privilege on the column at all.
    refusal = errors.PermissionDenied if as_app else errors.DeployedFlagReadOnly
    with pytest.raises(refusal):
        db("UPDATE models SET is_deployed = true WHERE id = :m", m=m)
    with pytest.raises(refusal):
        db(
            "INSERT INTO models (user_id, name, algorithm, problem_type, is_deployed)"
            " VALUES (:u, 'x', 'a', 'classification', true)",
            u=owner,
        )
    assert not deployed(sql, m)
    # Other columns stay writable by the apps.
    db("UPDATE models SET name = 'renamed' WHERE id = :m", m=m)


def test_orm_write_of_is_deployed_is_refused(session: Session, sql: Any, owner: uuid.UUID) -> None:
    m = make_model(sql, owner)
    model = session.get(Model, m)
    assert model is not None
    model.is_deployed = True
    with pytest.raises(errors.DeployedFlagReadOnly):
        session.commit()


# --- the deployment's own rules -----------------------------------------------------------------
def test_status_life(sql: Any, owner: uuid.UUID) -> None:
    rm = registered(sql, owner)
    v, _, _ = version(sql, rm, owner)
    d = deployment(sql, owner, status="pending", model_version_id=v)
    sql("UPDATE deployments SET status = 'active' WHERE id = :d", d=d)
    with pytest.raises(errors.DeploymentStatusTransition) as caught:
        sql("UPDATE deployments SET status = 'pending' WHERE id = :d", d=d)
    assert (caught.value.from_status, caught.value.to_status) == ("active", "pending")
    sql("UPDATE deployments SET status = 'stopped' WHERE id = :d", d=d)
    for status in ("active", "pending", "failed"):
        with pytest.raises(errors.DeploymentStatusTransition):
            sql(
                "UPDATE deployments SET status = CAST(:s AS deployment_status) WHERE id = :d",
                s=status,
                d=d,
            )


def test_target_is_fixed_and_one(sql: Any, owner: uuid.UUID) -> None:
    rm = registered(sql, owner)
    v1, _, _ = version(sql, rm, owner)
    v2, _, _ = version(sql, rm, owner)
    d = deployment(sql, owner, model_version_id=v1)
    with pytest.raises(errors.DeploymentTargetImmutable):
        sql("UPDATE deployments SET model_version_id = :v WHERE id = :d", v=v2, d=d)
    with pytest.raises(errors.DeploymentTargetImmutable):
        sql("UPDATE deployments SET user_id = :u WHERE id = :d", u=make_user(sql), d=d)
    with pytest.raises(errors.DeploymentTargetInvalid):
        deployment(sql, owner, model_version_id=v1, registered_model_id=rm, alias="x")
    with pytest.raises(errors.DeploymentTargetInvalid):
        deployment(sql, owner)
    with pytest.raises(errors.DeploymentTargetInvalid):
        deployment(sql, owner, registered_model_id=rm)
    with pytest.raises(errors.InvalidValue):
        deployment(sql, owner, registered_model_id=rm, alias="Not An Alias")
    name = scalar(sql, "SELECT name FROM deployments WHERE id = :d", d=d)
    with pytest.raises(errors.DeploymentNameTaken):
        insert(sql, "deployments", user_id=owner, name=name, model_version_id=v2)
    # Another user may use the name.
    insert(sql, "deployments", user_id=make_user(sql), name=name, model_version_id=v2)


@pytest.mark.parametrize(
    "config",
    [
        [],
        {"max_batch_rows": 0},
        {"max_batch_rows": 100_001},
        {"max_batch_rows": 1.5},
        {"max_batch_rows": "10"},
        {"timeout_ms": -1},
        {"timeout_ms": 600_001},
        {"other": 1},
    ],
)
def test_config_bounds(sql: Any, owner: uuid.UUID, config: Any) -> None:
    rm = registered(sql, owner)
    v, _, _ = version(sql, rm, owner)
    with pytest.raises(errors.InvalidDeploymentConfig):
        deployment(sql, owner, model_version_id=v, config=config)


def test_config_within_bounds(sql: Any, owner: uuid.UUID) -> None:
    rm = registered(sql, owner)
    v, _, _ = version(sql, rm, owner)
    d = deployment(
        sql, owner, model_version_id=v, config={"max_batch_rows": 100_000, "timeout_ms": 1}
    )
    assert d is not None


# --- the module -------------------------------------------------------------------------------
def test_module_create_resolve_stop(session: Session, sql: Any, owner: uuid.UUID) -> None:
    rm = registered(sql, owner)
    v, m, _ = version(sql, rm, owner)
    made = deployments.create(session, owner, "live", model_version_id=v)
    session.commit()
    assert made.status == DeploymentStatus.ACTIVE
    target = deployments.serving(session, owner, made.id)
    assert (target.model_version_id, target.model_id) == (v, m)
    with pytest.raises(errors.DeploymentNotFound):
        deployments.resolve(session, make_user(sql), made.id)
    stopped = deployments.stop(session, owner, made.id)
    session.commit()
    assert stopped.status == DeploymentStatus.STOPPED
    with pytest.raises(errors.DeploymentNotServing):
        deployments.serving(session, owner, made.id)
    with pytest.raises(errors.DeploymentTargetInvalid):
        deployments.create(session, owner, "bad", registered_model_id=rm)


def test_concurrent_alias_moves_and_stops_keep_is_deployed_right(
    engine: Engine, sql: Any, owner: uuid.UUID
) -> None:
    """Moves of an alias and starts/stops of the deployments following it, at once
    from several threads: at the end is_deployed matches the active deployments."""
    rm = registered(sql, owner)
    versions = [version(sql, rm, owner) for _ in range(3)]
    champion(sql, rm, versions[0][0])
    follow = [
        deployment(sql, owner, status="pending", registered_model_id=rm, alias="champion")
        for _ in range(4)
    ]
    errors_seen: list[BaseException] = []

    def mover(seed: int) -> None:
        try:
            for i in range(15):
                v = versions[(seed + i) % 3][0]
                with engine.begin() as conn:
                    conn.execute(
                        text(
                            "UPDATE model_aliases SET model_version_id = :v"
                            " WHERE registered_model_id = :r"
                        ),
                        {"v": v, "r": rm},
                    )
        except errors.SerializationConflict:
            pass
        except BaseException as exc:
            errors_seen.append(exc)

    def starter(d: uuid.UUID) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE deployments SET status = 'active' WHERE id = :d"), {"d": d}
                )
        except BaseException as exc:
            errors_seen.append(exc)

    threads = [threading.Thread(target=mover, args=(s,)) for s in range(2)]
    threads += [threading.Thread(target=starter, args=(d,)) for d in follow]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors_seen
    pointed = scalar(
        sql, "SELECT model_version_id FROM model_aliases WHERE registered_model_id = :r", r=rm
    )
    for v, m, _ in versions:
        assert deployed(sql, m) == (v == pointed), (v, pointed)


def test_concurrent_stops_of_one_models_deployments(
    engine: Engine, sql: Any, owner: uuid.UUID
) -> None:
    """Two transactions each stopping one of a model's two deployments: while the
    first is open, the second cannot see its stop; the model must still end
    undeployed (the refresh locks the model's row, then reads what committed)."""
    rm = registered(sql, owner)
    v, m, _ = version(sql, rm, owner)
    first, second = (deployment(sql, owner, model_version_id=v) for _ in range(2))
    failures: list[BaseException] = []
    done = threading.Event()

    def stop_second() -> None:
        try:
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE deployments SET status = 'stopped' WHERE id = :d"), {"d": second}
                )
        except BaseException as exc:
            failures.append(exc)
        finally:
            done.set()

    with engine.begin() as conn:
        conn.execute(text("UPDATE deployments SET status = 'stopped' WHERE id = :d"), {"d": first})
        thread = threading.Thread(target=stop_second)
        thread.start()
        # Until the second waits for a lock (or, were the rule broken, has finished).
        for _ in range(400):
            waiting = scalar(
                sql,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()",
            )
            if waiting or done.is_set():
                break
            done.wait(0.025)
    thread.join(30)
    assert not failures
    assert not deployed(sql, m)


# --- the predict path's admission (admit_serving) -------------------------------------------
def _admitted(
    session: Session, user: uuid.UUID, deployment_id: uuid.UUID, v: uuid.UUID, rows: int = 1
) -> bool:
    found = deployments.admit_serving(
        session,
        user,
        deployment_id,
        model_version_id=v,
        rows=rows,
        amount_micro=0,
        api_key_id=None,
        request_id=None,
        hold_seconds=600,
        default_max_rows=10,
        key_has_quota=False,
    )
    return found.admitted


def _serves(session: Session, user: uuid.UUID, deployment_id: uuid.UUID, v: uuid.UUID) -> bool:
    try:
        return deployments.serving(session, user, deployment_id).model_version_id == v
    except errors.DeploymentNotServing:
        return False


@pytest.mark.parametrize(
    "change",
    [
        "none",
        "stopped",
        "alias moved",
        "grant taken back",
        "grant lowered to download",
        "model made private",
        "model owner deleted",
        "too many rows",
    ],
)
def test_admit_serving_admits_exactly_what_serving_serves(
    session: Session, sql: Any, owner: uuid.UUID, change: str
) -> None:
    """The compiled admission statement (its owner's short cut, the grant checked only
    for another user's model) admits a request exactly when ``serving`` would serve
    the version it was checked against: the owner's own model, and a grantee's."""
    from database import registry
    from database.models import ModelPermission

    grantee = make_user(sql)
    rm = registered(sql, owner)
    v1, _, _ = version(sql, rm, owner)
    v2, _, _ = version(sql, rm, owner)
    champion(sql, rm, v1)
    sql("UPDATE registered_models SET visibility = 'shared' WHERE id = :r", r=rm)
    registry.grant_permission(session, rm, grantee, ModelPermission.DEPLOY)
    session.commit()
    mine = deployments.create(session, owner, "mine", registered_model_id=rm, alias="champion")
    theirs = deployments.create(
        session, grantee, "theirs", registered_model_id=rm, alias="champion"
    )
    session.commit()
    for user, d in ((owner, mine.id), (grantee, theirs.id)):
        assert _admitted(session, user, d, v1) and _serves(session, user, d, v1)
    rows = 1
    if change == "stopped":
        deployments.stop(session, owner, mine.id)
        deployments.stop(session, grantee, theirs.id)
    elif change == "alias moved":
        sql(
            "UPDATE model_aliases SET model_version_id = :v WHERE registered_model_id = :r",
            r=rm,
            v=v2,
        )
    elif change == "grant taken back":
        registry.revoke_permission(session, rm, grantee)
    elif change == "grant lowered to download":
        registry.grant_permission(session, rm, grantee, ModelPermission.DOWNLOAD)
    elif change == "model made private":
        sql("UPDATE registered_models SET visibility = 'private' WHERE id = :r", r=rm)
    elif change == "model owner deleted":
        sql("UPDATE users SET is_deleted = true, deleted_at = now() WHERE id = :u", u=owner)
    elif change == "too many rows":
        rows = 11
    session.commit()
    for user, d in ((owner, mine.id), (grantee, theirs.id)):
        serves = _serves(session, user, d, v1) and rows <= 10
        assert _admitted(session, user, d, v1, rows) is serves, (change, user == owner)
    expected_grantee = change in ("none",)
    assert _admitted(session, grantee, theirs.id, v1, rows) is expected_grantee
    expected_owner = change in (
        "none",
        "grant taken back",
        "grant lowered to download",
        "model made private",
        "model owner deleted",
    )
    assert _admitted(session, owner, mine.id, v1, rows) is expected_owner
