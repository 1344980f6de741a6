"""Issue 15, the database's rules for evaluation: tried through raw SQL, the ORM and
the apps' least-privilege role (sql/triggers/evaluation.sql, the CHECKs of
evaluation_criteria, the partitioned per-row results)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from database import errors, evaluation
from database.models import Dataset, EvaluationCriterion

from factories import insert, make_dataset, make_job, make_model, make_user, make_version, scalar

COLUMNS = {"columns": [{"name": "a", "kind": "numeric"}, {"name": "label", "kind": "categorical"}]}


def _ingested_dataset(sql: Any, user: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    dataset = make_dataset(sql, user)
    version = make_version(sql, dataset, user)
    sql(
        "UPDATE dataset_versions SET columns_metadata = CAST(:c AS jsonb), status = 'completed'"
        " WHERE id = :v",
        c=json.dumps(COLUMNS),
        v=version,
    )
    sql("UPDATE datasets SET current_version_id = :v WHERE id = :d", v=version, d=dataset)
    return dataset, version


def test_target_and_ignored_columns_are_columns(sql):
    user = make_user(sql)
    dataset, _ = _ingested_dataset(sql, user)
    sql(
        "UPDATE datasets SET target_column = 'label', ignored_columns = '{a}' WHERE id = :d",
        d=dataset,
    )
    with pytest.raises(errors.TargetNotAColumn, match="nope"):
        sql("UPDATE datasets SET target_column = 'nope' WHERE id = :d", d=dataset)
    with pytest.raises(errors.IgnoredColumnsInvalid, match="ghost"):
        sql("UPDATE datasets SET ignored_columns = '{a,ghost}' WHERE id = :d", d=dataset)
    with pytest.raises(errors.IgnoredColumnsInvalid, match="cannot be ignored"):
        sql("UPDATE datasets SET ignored_columns = '{label}' WHERE id = :d", d=dataset)
    assert scalar(sql, "SELECT target_column FROM datasets WHERE id = :d", d=dataset) == "label"


def test_target_column_through_the_orm(sql, session):
    user = make_user(sql)
    dataset_id, _ = _ingested_dataset(sql, user)
    dataset = session.get(Dataset, dataset_id)
    assert dataset is not None
    dataset.target_column = "missing"
    with pytest.raises(errors.TargetNotAColumn):
        session.flush()
    session.rollback()
    dataset = session.get(Dataset, dataset_id)
    with pytest.raises(evaluation.EvaluationProblem) as refused:
        evaluation.update_dataset(session, dataset, {"target_column": "missing"})
    assert refused.value.code == "target_not_a_column" and refused.value.status == 422


def test_before_ingestion_nothing_is_checked_by_the_trigger(sql):
    user = make_user(sql)
    dataset = make_dataset(sql, user)
    sql("UPDATE datasets SET target_column = 'anything' WHERE id = :d", d=dataset)


SQL_TYPES = {
    "kind": "criterion_kind",
    "rule": "row_rule",
    "operator": "criterion_operator",
    "name": "text",
    "metric": "text",
    "threshold": "float8",
    "tolerance": "float8",
}


@pytest.mark.parametrize(
    "cols",
    [
        {"kind": "metric_threshold", "metric": "accuracy", "operator": ">="},  # no threshold
        {
            "kind": "metric_threshold",
            "metric": "accuracy",
            "operator": ">=",
            "threshold": 1,
            "rule": "predicted_equals_actual",
        },
        {"kind": "row_rule", "rule": "absolute_error_le"},  # no tolerance
        {"kind": "row_rule", "rule": "predicted_equals_actual", "tolerance": 1},
        {"kind": "row_rule", "rule": "absolute_error_le", "tolerance": -1},
        {"kind": "metric_threshold", "metric": "Bad Name", "operator": ">=", "threshold": 1},
        {
            "kind": "metric_threshold",
            "metric": "accuracy",
            "operator": ">=",
            "threshold": float("nan"),
        },
        {
            "kind": "row_rule",
            "rule": "predicted_equals_actual",
            "slice": json.dumps({"column": "r", "equals": "x", "where": "1=1"}),
        },
        {
            "kind": "row_rule",
            "rule": "predicted_equals_actual",
            "slice": json.dumps({"column": "", "equals": "x"}),
        },
        {
            "kind": "row_rule",
            "rule": "predicted_equals_actual",
            "slice": json.dumps({"column": "r", "equals": {"nested": 1}}),
        },
        {"kind": "row_rule", "rule": "predicted_equals_actual", "name": ""},
    ],
)
def test_criteria_shapes_are_checked(sql, cols):
    user = make_user(sql)
    cols = {"name": "c", **cols}
    if "slice" in cols:
        names = ", ".join(k for k in cols if k != "slice")
        values = ", ".join(f"CAST(:{k} AS {SQL_TYPES[k]})" for k in cols if k != "slice")
        with pytest.raises(errors.InvalidValue):
            sql(
                f"INSERT INTO evaluation_criteria (user_id, slice, {names})"
                f" VALUES (:u, CAST(:slice AS jsonb), {values})",
                u=user,
                **cols,
            )
        return
    with pytest.raises(errors.InvalidValue):
        insert(sql, "evaluation_criteria", user_id=user, **cols)


def test_a_valid_criterion_through_the_orm(sql, session):
    user = make_user(sql)
    made = evaluation.create_criterion(
        session,
        user,
        name="close",
        kind="row_rule",
        rule="absolute_error_le",
        tolerance=0.5,
        slice={"column": "region", "equals": 3},
    )
    session.commit()
    assert session.get(EvaluationCriterion, made.id) is not None
    with pytest.raises(errors.InvalidValue):
        evaluation.create_criterion(session, user, name="bad", kind="row_rule")
    session.rollback()


def _run(sql: Any, user: uuid.UUID) -> uuid.UUID:
    _, data = _ingested_dataset(sql, user)
    model = make_model(sql, user)
    registered = insert(sql, "registered_models", user_id=user, name=f"rm-{uuid.uuid4().hex[:6]}")
    version = insert(sql, "model_versions", registered_model_id=registered, model_id=model)
    job = make_job(sql, user, kind="evaluation", status="queued")
    return insert(
        sql,
        "evaluation_runs",
        user_id=user,
        job_id=job,
        model_version_id=version,
        dataset_version_id=data,
    )


def test_row_results_are_written_once_and_leave_with_the_run(sql, session, app_engine):
    user = make_user(sql)
    run = _run(sql, user)
    written = evaluation.write_row_results(
        session, run, [(i, "a", "b", None, 1.0, [False, None], False) for i in range(50)]
    )
    session.commit()
    assert written == 50
    # Spread over the hash partitions like any run's; read back through the parent.
    assert (
        scalar(
            sql, "SELECT count(*) FROM evaluation_row_results WHERE evaluation_run_id = :r", r=run
        )
        == 50
    )
    with pytest.raises(errors.RowResultsWriteOnce):
        sql("UPDATE evaluation_row_results SET passed = true WHERE evaluation_run_id = :r", r=run)
    # The apps' role may read and write rows, never change or delete them directly,
    # nor go around the parent through a partition.
    with app_engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM evaluation_row_results")).scalar() == 50
        conn.execute(
            text(
                "INSERT INTO evaluation_row_results (evaluation_run_id, row_index, passed)"
                " VALUES (:r, 1000, true)"
            ),
            {"r": run},
        )
    for statement in (
        "DELETE FROM evaluation_row_results WHERE evaluation_run_id = :r",
        "UPDATE evaluation_row_results SET passed = true WHERE evaluation_run_id = :r",
        "DELETE FROM evaluation_row_results_p0 WHERE evaluation_run_id = :r",
        "TRUNCATE evaluation_row_results",
    ):
        with pytest.raises(errors.PermissionDenied), app_engine.begin() as conn:
            conn.execute(text(statement), {"r": run})
    # Deleting the run (as the apps) removes its rows.
    with app_engine.begin() as conn:
        conn.execute(text("DELETE FROM evaluation_runs WHERE id = :r"), {"r": run})
    assert (
        scalar(
            sql, "SELECT count(*) FROM evaluation_row_results WHERE evaluation_run_id = :r", r=run
        )
        == 0
    )


def test_run_results_are_written_once(sql, session):
    user = make_user(sql)
    run = _run(sql, user)
    assert evaluation.record_results(
        session,
        run,
        metrics={"accuracy": 1.0},
        criteria_results=[],
        plot_data={},
        passed=True,
        row_count=3,
        failed_row_count=0,
    )
    session.commit()
    assert not evaluation.record_results(
        session,
        run,
        metrics={"accuracy": 0.0},
        criteria_results=[],
        plot_data={},
        passed=False,
        row_count=3,
        failed_row_count=3,
    )
    session.rollback()
    with pytest.raises(errors.EvaluationRunWriteOnce):
        sql("UPDATE evaluation_runs SET metrics = '{}' WHERE id = :r", r=run)
    other_version = scalar(sql, "SELECT model_version_id FROM evaluation_runs WHERE id = :r", r=run)
    assert other_version is not None
    with pytest.raises(errors.InvalidValue):  # results only with completed_at
        insert(
            sql,
            "evaluation_runs",
            user_id=user,
            job_id=make_job(sql, user),
            model_version_id=other_version,
            dataset_version_id=scalar(
                sql, "SELECT dataset_version_id FROM evaluation_runs WHERE id = :r", r=run
            ),
            metrics=json.dumps({"a": 1}),
        )


def test_a_run_is_its_owners_data(sql):
    """The run's dataset version and job must be the run's user's (composite keys)."""
    owner = make_user(sql)
    stranger = make_user(sql)
    run = _run(sql, owner)
    data = scalar(sql, "SELECT dataset_version_id FROM evaluation_runs WHERE id = :r", r=run)
    version = scalar(sql, "SELECT model_version_id FROM evaluation_runs WHERE id = :r", r=run)
    with pytest.raises(errors.ReferenceViolation):
        insert(
            sql,
            "evaluation_runs",
            user_id=stranger,
            job_id=make_job(sql, stranger),
            model_version_id=version,
            dataset_version_id=data,
        )
