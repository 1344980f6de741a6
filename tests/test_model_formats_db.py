"""What a saved model records for later use (models.signature, input_example,
environment: migration c13c00000001), how a registered version takes it, and the
save node's registration in the transaction that records the model
(database.jobs.record_model -> database.registry.register_saved_model): through the
ORM, raw SQL, the apps' least-privilege role, and two registrations at once."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from database import credits, errors, jobs, registry
from database.models import Model, NodeStatus, NodeType

from factories import make_dataset, make_model, make_user, make_version, scalar

SIGNATURE = {
    "inputs": [
        {"name": "age", "type": "double", "required": False},
        {"name": "city", "type": "string", "required": True},
    ],
    "outputs": [{"type": "string", "required": True}],
}
EXAMPLE = [{"age": 31.0, "city": "Nice"}, {"age": None, "city": "Lyon"}]
ENVIRONMENT = {"python": "3.11.7", "sklearn": "1.9.1", "numpy": "2.4.6", "pandas": "3.1.1"}


# --- the columns' rules -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("signature", "[]"),
        ("signature", '"inputs"'),
        ("input_example", "{}"),
        ("input_example", "3"),
        ("environment", "[]"),
        ("environment", json.dumps({"x": "y" * 10_001})),
        ("signature", json.dumps({"inputs": ["c" * 100_001]})),
    ],
)
def test_raw_sql_cannot_store_a_bad_shape(sql: Any, column: str, value: str) -> None:
    user = make_user(sql)
    model = make_model(sql, user)
    with pytest.raises(errors.ConstraintViolation, match=f"ck_models_{column}_shape"):
        sql(f"UPDATE models SET {column} = CAST(:v AS jsonb) WHERE id = :id", v=value, id=model)


def test_the_columns_default_to_empty(sql: Any) -> None:
    model = make_model(sql, make_user(sql))
    row = sql("SELECT signature, input_example, environment FROM models WHERE id = :m", m=model)
    assert tuple(row[0]) == ({}, None, {})
    with pytest.raises(errors.ConstraintViolation):
        sql("UPDATE models SET signature = NULL WHERE id = :m", m=model)


def test_the_orm_refuses_a_bad_shape_too(session: Session, sql: Any) -> None:
    user = make_user(sql)
    session.add(
        Model(
            user_id=user,
            name="m",
            algorithm="ridge",
            problem_type="regression",
            input_example={"not": "a list"},  # type: ignore[arg-type]
        )
    )
    with pytest.raises(errors.ConstraintViolation, match="ck_models_input_example_shape"):
        session.flush()


# --- a version takes what the trained model recorded ---------------------------------------
def test_register_version_copies_the_trained_models_record(session: Session, sql: Any) -> None:
    user = make_user(sql)
    model = make_model(
        sql,
        user,
        signature=json.dumps(SIGNATURE),
        input_example=json.dumps(EXAMPLE),
        environment=json.dumps(ENVIRONMENT),
    )
    registered = registry.create_registered_model(session, user, "churn")
    version = registry.register_version(session, registered.id, model)
    session.commit()
    assert (version.signature, version.input_example, version.environment) == (
        SIGNATURE,
        EXAMPLE,
        ENVIRONMENT,
    )
    # the caller's own values win
    other = make_model(sql, user, signature=json.dumps(SIGNATURE))
    version = registry.register_version(
        session, registered.id, other, signature={"inputs": []}, environment={"python": "3.12.0"}
    )
    session.commit()
    assert version.signature == {"inputs": []} and version.environment == {"python": "3.12.0"}
    assert version.input_example is None


# --- the save node's registration ---------------------------------------------------------
def _claimed_job(engine: Engine, user: uuid.UUID) -> jobs.Claim:
    with Session(engine) as session:
        credits.adjust(session, user, 100, "test credits", "tests")
    with Session(engine) as session:
        jobs.enqueue_run(
            session,
            user_id=user,
            workflow_id=None,
            snapshot_data={"definition": {"nodes": []}},
            nodes=[("data", NodeType.DATASET), ("keep", NodeType.SAVE), ("keep2", NodeType.SAVE)],
            credit_cost=5,
            description="a test run",
        )
    claim = jobs.claim(engine, "job", "w1", 30)
    assert claim is not None and claim.user_id == user
    return claim


def _record(
    engine: Engine, claim: jobs.Claim, register: jobs.Registration | None, node: str = "keep"
) -> tuple[uuid.UUID, dict[str, Any] | None]:
    model_id = uuid.uuid4()
    with engine.begin() as conn:
        status = conn.execute(
            text("SELECT status::text FROM job_nodes WHERE job_id = :j AND node_id = :n"),
            {"j": claim.id, "n": node},
        ).scalar_one()
        if status == "pending":
            jobs.record_node(conn, claim, node, NodeStatus.RUNNING)
    with Session(engine) as session:
        registered = jobs.record_model(
            session,
            claim,
            node,
            lease_seconds=30,
            model_id=model_id,
            name="saved",
            algorithm="random_forest",
            problem_type="classification",
            metrics={"accuracy": 0.9, "f1": 0.75},
            hyperparameters={},
            location=f"/nowhere/{model_id}.joblib",
            output={"name": "saved"},
            size_bytes=10,
            signature=SIGNATURE,
            input_example=EXAMPLE,
            environment=ENVIRONMENT,
            register=register,
        )
    return model_id, registered


def test_record_model_registers_the_version_with_its_lineage_and_alias(
    engine: Engine, sql: Any
) -> None:
    user = make_user(sql)
    dataset_version = make_version(sql, make_dataset(sql, user))
    claim = _claimed_job(engine, user)
    model_id, registered = _record(
        engine,
        claim,
        jobs.Registration("churn", "champion", dataset_version_ids=(dataset_version,)),
    )
    assert registered is not None
    assert (registered["name"], registered["version"], registered["alias"]) == (
        "churn",
        1,
        "champion",
    )
    version_id = uuid.UUID(registered["model_version_id"])
    row = sql(
        "SELECT v.model_id, v.signature, v.input_example, v.environment, r.user_id, r.visibility"
        " FROM model_versions AS v JOIN registered_models AS r ON r.id = v.registered_model_id"
        " WHERE v.id = :v",
        v=version_id,
    )[0]
    assert tuple(row) == (model_id, SIGNATURE, EXAMPLE, ENVIRONMENT, user, "private")
    # the metrics, as rows
    metrics = sql(
        "SELECT metric, split, value FROM model_version_metrics WHERE model_version_id = :v",
        v=version_id,
    )
    assert sorted(tuple(m) for m in metrics) == [("accuracy", "test", 0.9), ("f1", "test", 0.75)]
    with Session(engine) as session:
        edges = registry.lineage(session, version_id, "up")
    kinds = sorted((e.relation.value, e.parent_kind) for e in edges)
    assert kinds == [
        ("produced_by", "job"),
        ("produced_by", "workflow_snapshot"),
        ("trained_on", "dataset_version"),
    ]
    node = sql(
        "SELECT status::text, output_data FROM job_nodes WHERE job_id = :j AND node_id = 'keep'",
        j=claim.id,
    )[0]
    assert node.status == "success" and node.output_data["registered"] == registered
    # the next save moves the alias and numbers the next version
    _, again = _record(engine, claim, jobs.Registration("churn", "champion"), "keep2")
    assert again is not None and again["version"] == 2
    assert (
        scalar(
            sql,
            "SELECT v.version FROM model_aliases AS a JOIN model_versions AS v"
            " ON v.id = a.model_version_id WHERE a.alias = 'champion'",
        )
        == 2
    )
    assert scalar(sql, "SELECT count(*) FROM registered_models WHERE user_id = :u", u=user) == 1


def test_a_refused_registration_saves_nothing(engine: Engine, sql: Any) -> None:
    user = make_user(sql)
    claim = _claimed_job(engine, user)
    with pytest.raises(jobs.RegistrationRefused, match="not registered as 'churn'"):
        _record(engine, claim, jobs.Registration("churn", "Not An Alias"))
    with pytest.raises(jobs.RegistrationRefused):
        _record(engine, claim, jobs.Registration(""))
    assert scalar(sql, "SELECT count(*) FROM models WHERE user_id = :u", u=user) == 0
    assert scalar(sql, "SELECT count(*) FROM registered_models WHERE user_id = :u", u=user) == 0
    assert (
        scalar(
            sql,
            "SELECT status::text FROM job_nodes WHERE job_id = :j AND node_id = 'keep'",
            j=claim.id,
        )
        != "success"
    )
    assert scalar(sql, "SELECT model_count FROM users WHERE id = :u", u=user) == 0


def test_two_saves_registering_a_new_name_at_once_share_one_model(engine: Engine, sql: Any) -> None:
    user = make_user(sql)
    models = [make_model(sql, user) for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def register(model_id: uuid.UUID) -> None:
        with Session(engine) as session:
            barrier.wait()
            try:
                version = registry.register_saved_model(
                    session, user, model_id, "together", alias="latest"
                )
                session.commit()
                results.append(version.version)
            except Exception as exc:  # pragma: no cover - reported below
                results.append(exc)

    threads = [threading.Thread(target=register, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [1, 2]
    assert scalar(sql, "SELECT count(*) FROM registered_models WHERE user_id = :u", u=user) == 1
    assert (
        scalar(sql, "SELECT last_version_number FROM registered_models WHERE user_id = :u", u=user)
        == 2
    )


# --- as the apps' role --------------------------------------------------------------------


def test_the_worker_role_records_and_registers(
    app_engine: Engine, engine: Engine, sql: Any
) -> None:
    user = make_user(sql)
    claim = _claimed_job(engine, user)
    _, registered = _record(app_engine, claim, jobs.Registration("by-role", "champion"))
    assert registered is not None and registered["version"] == 1
    # written once, for the apps' role too
    with app_engine.begin() as conn, pytest.raises(errors.ModelRecordImmutable):
        conn.execute(
            text('UPDATE models SET environment = \'{"python": "2.7"}\' WHERE user_id = :u'),
            {"u": user},
        )


# --- written once (ML070) -------------------------------------------------------------
@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("signature", json.dumps({"inputs": []})),
        ("signature", "'{}'"),
        ("input_example", "[]"),
        ("input_example", None),
        ("environment", json.dumps({"python": "2.7.18"})),
    ],
)
def test_raw_sql_cannot_change_what_a_model_recorded(sql: Any, column: str, value: Any) -> None:
    user = make_user(sql)
    model = make_model(
        sql,
        user,
        signature=json.dumps(SIGNATURE),
        input_example=json.dumps(EXAMPLE),
        environment=json.dumps(ENVIRONMENT),
    )
    value = value.strip("'") if isinstance(value, str) else value
    with pytest.raises(errors.ModelRecordImmutable, match="written once") as caught:
        sql(f"UPDATE models SET {column} = CAST(:v AS jsonb) WHERE id = :id", v=value, id=model)
    assert caught.value.sqlstate == "ML070"
    # the same value again is no change; other columns and a DELETE are free
    sql(f"UPDATE models SET {column} = {column}, name = 'renamed' WHERE id = :id", id=model)
    sql("DELETE FROM models WHERE id = :id", id=model)


def test_a_model_saved_before_the_columns_may_fill_them_once(session: Session, sql: Any) -> None:
    model_id = make_model(sql, make_user(sql))
    model = session.get(Model, model_id)
    assert model is not None
    model.signature = SIGNATURE
    model.input_example = EXAMPLE
    model.environment = ENVIRONMENT
    session.commit()
    model.environment = {**ENVIRONMENT, "sklearn": "0.20.0"}
    with pytest.raises(errors.ModelRecordImmutable):
        session.flush()
