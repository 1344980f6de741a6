"""What the database keeps of an automl search: trials as experiment runs.

The checks on ``experiment_runs`` (migration c15a00000001) tried through raw SQL, as
the apps' role, and through the ORM and ``database.automl``; the named exceptions of
``database.errors`` for each.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session
from test_privileges import run_as

from database import automl, errors
from database.models import ExperimentRun, ExperimentRunStatus

from factories import make_experiment, make_experiment_run, make_job, make_user


def trial(number: int, score: float | None, **changes: Any) -> dict[str, Any]:
    record = {
        "number": number,
        "learner": "rf",
        "config": {"n_estimators": 4},
        "metric": "accuracy",
        "loss": None if score is None else 1 - score,
        "score": score,
        "seconds": 0.5,
        "fold_scores": None if score is None else [score - 0.05, score + 0.05],
        "sample_size": 100,
        "logged": {"pred_time": 0.001},
        "status": "failed" if score is None else "finished",
    }
    record.update(changes)
    return record


def test_trials_are_recorded_and_the_best_is_found(engine: Engine, sql: Any) -> None:
    user_id = make_user(sql)
    job_id = make_job(sql, user_id)
    with Session(engine) as session:
        experiment_id = automl.start_search(
            session, user_id=user_id, job_id=job_id, node_id="search", metric="accuracy"
        )
        ids = [
            automl.record_trial(
                session, experiment_id=experiment_id, user_id=user_id, job_id=job_id, record=r
            )
            for r in (trial(1, 0.8), trial(2, None), trial(3, 0.9), trial(4, 0.9))
        ]
        best = automl.best_trial(session, experiment_id)
        assert best is not None and best.id == ids[2]  # ties go to the earliest
        failed = session.get(ExperimentRun, ids[1])
        assert failed is not None and failed.status == ExperimentRunStatus.FAILED
        assert failed.metrics == {"pred_time": 0.001}
    row = sql("SELECT * FROM experiment_runs WHERE id = :id", id=ids[0])[0]
    assert row.parameters == {
        "learner": "rf",
        "hyperparameters": {"n_estimators": 4},
        "sample_size": 100,
    }
    assert row.metrics["accuracy"] == pytest.approx(0.8)
    assert (row.trial_number, row.duration_seconds, row.job_id) == (1, 0.5, job_id)
    assert row.fold_scores == pytest.approx([0.75, 0.85])


def test_fold_scores_keep_their_order_and_an_unscored_fold(engine: Engine, sql: Any) -> None:
    user_id = make_user(sql)
    job_id = make_job(sql, user_id)
    with Session(engine) as session:
        experiment_id = automl.start_search(
            session, user_id=user_id, job_id=job_id, node_id="s", metric="accuracy"
        )
        run_id = automl.record_trial(
            session,
            experiment_id=experiment_id,
            user_id=user_id,
            job_id=job_id,
            # an infinite loss is a fold FLAML could not score: kept as NULL, in its place
            record=trial(1, 0.6, fold_scores=[0.9, None, float("-inf"), 0.3]),
        )
        hand_made = make_experiment_run(sql, experiment_id, user_id)
        assert session.get(ExperimentRun, run_id).fold_scores == [0.9, None, None, 0.3]  # type: ignore[union-attr]
    assert sql("SELECT fold_scores FROM experiment_runs WHERE id = :id", id=hand_made)[0][0] is None


def test_the_orm_refuses_an_infinite_fold_score(engine: Engine, sql: Any) -> None:
    user_id = make_user(sql)
    experiment_id = make_experiment(sql, user_id)
    with Session(engine) as session, pytest.raises(errors.InvalidTrial):
        session.add(
            ExperimentRun(
                experiment_id=experiment_id,
                user_id=user_id,
                trial_number=1,
                fold_scores=[0.5, float("inf")],
            )
        )
        session.commit()


def test_the_best_of_a_loss_is_the_lowest(engine: Engine, sql: Any) -> None:
    user_id = make_user(sql)
    job_id = make_job(sql, user_id)
    with Session(engine) as session:
        experiment_id = automl.start_search(
            session, user_id=user_id, job_id=job_id, node_id="s", metric="rmse"
        )
        for number, value in ((1, 30.0), (2, 20.0), (3, 25.0)):
            automl.record_trial(
                session,
                experiment_id=experiment_id,
                user_id=user_id,
                job_id=job_id,
                record=trial(number, value, metric="rmse"),
            )
        best = automl.best_trial(session, experiment_id)
        assert best is not None and best.trial_number == 2


def test_a_hand_made_run_reads_as_before(sql: Any) -> None:
    user_id = make_user(sql)
    run_id = make_experiment_run(sql, make_experiment(sql, user_id), user_id)
    row = sql(
        "SELECT status::text AS s, trial_number, parameters FROM experiment_runs WHERE id = :id",
        id=run_id,
    )[0]
    assert (row.s, row.trial_number, row.parameters) == ("finished", None, None)


@pytest.mark.parametrize(
    ("cols", "error"),
    [
        ({"trial_number": 0}, errors.InvalidTrial),
        ({"trial_number": -5}, errors.InvalidTrial),
        ({"duration_seconds": -0.1}, errors.InvalidTrial),
        # fold scores as PostgreSQL array literals: none, 21, NaN, infinities, 2-D
        ({"fold_scores": "{}"}, errors.InvalidTrial),
        ({"fold_scores": "{" + ",".join(["0.5"] * 21) + "}"}, errors.InvalidTrial),
        ({"fold_scores": "{0.5,NaN}"}, errors.InvalidTrial),
        ({"fold_scores": "{Infinity,0.5}"}, errors.InvalidTrial),
        ({"fold_scores": "{-Infinity}"}, errors.InvalidTrial),
        ({"fold_scores": "{{0.5,0.6},{0.7,0.8}}"}, errors.InvalidTrial),
    ],
)
def test_the_checks_hold_in_raw_sql_and_as_the_apps_role(
    sql: Any,
    app_engine: Engine,
    cols: dict[str, Any],
    error: type[Exception],
) -> None:
    user_id = make_user(sql)
    experiment_id = make_experiment(sql, user_id)
    with pytest.raises(error):
        make_experiment_run(sql, experiment_id, user_id, **cols)
    names = ", ".join(cols)
    values = ", ".join(f":{k}" for k in cols)
    with pytest.raises(error):
        run_as(
            app_engine,
            f"INSERT INTO experiment_runs (experiment_id, user_id, {names})"
            f" VALUES (:e, :u, {values})",
            e=experiment_id,
            u=user_id,
            **cols,
        )
    assert sql("SELECT count(*) FROM experiment_runs")[0][0] == 0


def test_a_trial_number_is_used_once_per_experiment(engine: Engine, sql: Any) -> None:
    user_id = make_user(sql)
    job_id = make_job(sql, user_id)
    experiment_id = make_experiment(sql, user_id)
    make_experiment_run(sql, experiment_id, user_id, trial_number=1)
    with pytest.raises(errors.TrialNumberTaken):
        make_experiment_run(sql, experiment_id, user_id, trial_number=1)
    with Session(engine) as session, pytest.raises(errors.TrialNumberTaken):
        automl.record_trial(
            session,
            experiment_id=experiment_id,
            user_id=user_id,
            job_id=job_id,
            record=trial(1, 0.5),
        )
    # Another experiment (a search started again) numbers from 1 too.
    make_experiment_run(sql, make_experiment(sql, user_id), user_id, trial_number=1)


def test_the_status_is_an_enum(sql: Any) -> None:
    user_id = make_user(sql)
    with pytest.raises(DataError, match="invalid input value for enum experiment_run_status"):
        make_experiment_run(sql, make_experiment(sql, user_id), user_id, status="running")


def test_the_orm_refuses_a_negative_duration(engine: Engine, sql: Any) -> None:
    user_id = make_user(sql)
    experiment_id = make_experiment(sql, user_id)
    with Session(engine) as session, pytest.raises(errors.InvalidTrial):
        session.add(
            ExperimentRun(
                id=uuid.uuid4(),
                experiment_id=experiment_id,
                user_id=user_id,
                trial_number=1,
                duration_seconds=-1.0,
            )
        )
        session.commit()
