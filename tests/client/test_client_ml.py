"""Datasets, workflows, jobs, models, experiments, the registry, deployments,
evaluations and usage, through ``automl.Client`` against the real API, with a real
worker (in this process) running the uploads, the training and the batch jobs."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
from sklearn.datasets import load_iris

import automl
from automl import models as m

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def iris() -> pd.DataFrame:
    data = load_iris(as_frame=True)
    frame = data.frame
    frame["species"] = frame.pop("target").map(dict(enumerate(data.target_names)))
    return frame


def definition(dataset_id: Any) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "data", "type": "dataset", "config": {"dataset_id": str(dataset_id)}},
            {"id": "prep", "type": "preprocess", "config": {"test_size": 0.3}},
            {
                "id": "train",
                "type": "model",
                "config": {"algorithm": "logistic_regression", "hyperparameters": {}},
            },
            {"id": "keep", "type": "save", "config": {"name": "iris model"}},
        ],
        "edges": [
            {"source": "data", "target": "prep"},
            {"source": "prep", "target": "train"},
            {"source": "train", "target": "keep"},
        ],
    }


def train(
    client: automl.Client,
    credits: Callable[[automl.Client, int], None],
    drain: Callable[[], Any],
    progress: list[tuple[int, int | None]] | None = None,
) -> tuple[m.UploadOut, m.WorkflowOut, m.JobDetail]:
    """Upload iris, ingest it, run dataset -> preprocess -> model -> save; the job."""
    credits(client, 500)
    upload = client.datasets.upload(
        iris().to_csv(index=False).encode(),
        "iris",
        filename="iris.csv",
        target_column="species",
        problem_type="classification",
        progress=(lambda done, total: progress.append((done, total)))
        if progress is not None
        else None,
    )
    drain()
    ready = client.datasets.wait_ready(upload, timeout=30)
    assert ready.versions[0].status == "completed"
    workflow = client.workflows.create("iris", definition(upload.dataset.id))
    run = client.workflows.run(workflow)
    drain()
    job = client.jobs.wait(run, timeout=60, raise_on_failure=True)
    return upload, workflow, job


def test_datasets_workflows_jobs_models_experiments(
    client: automl.Client,
    other: automl.Client,
    credits: Callable[[automl.Client, int], None],
    drain: Callable[[], Any],
    tmp_path: Path,
) -> None:
    progress: list[tuple[int, int | None]] = []
    upload, workflow, job = train(client, credits, drain, progress)
    # the upload's progress: from 0 to every byte of the file
    size = len(iris().to_csv(index=False).encode())
    assert progress[0] == (0, size) and progress[-1] == (size, size)
    assert job.status == "completed" and {n.status for n in job.nodes} == {"success"}

    # datasets
    dataset = client.datasets.get(upload.dataset)
    assert dataset.target_column == "species" and dataset.versions[0].row_count == 150
    assert [d.id for d in client.datasets.list()] == [dataset.id]
    assert other.datasets.list().all() == []
    profile = client.datasets.profile(dataset, 1)
    assert profile is not None
    csv = tmp_path / "more.csv"
    csv.write_bytes(iris().head(30).to_csv(index=False).encode())
    second = client.datasets.upload_version(dataset, csv, version_label="v2")
    assert second.version.version_number == 2 and second.version.original_filename == "more.csv"
    drain()
    assert client.datasets.wait_ready(second, timeout=30).versions[0].row_count in (30, 150)
    renamed = client.datasets.update(dataset, name="iris flowers")
    assert renamed.name == "iris flowers"

    # workflows
    assert client.workflows.get(workflow).name == "iris"
    assert [w.id for w in client.workflows.list()] == [workflow.id]
    changed = client.workflows.update(workflow, description="the iris pipeline")
    assert changed.description == "the iris pipeline"

    # jobs: the list, the job, its log, its events
    assert job.id in [j.id for j in client.jobs.list()]
    assert [j.id for j in client.jobs.list(status="completed")] == [job.id]
    assert client.jobs.get(job).id == job.id
    lines = client.jobs.logs(job, limit=2).all()  # several pages of 2
    assert len(lines) > 2 and [x.seq for x in lines] == sorted(x.seq for x in lines)
    events: list[automl.ServerEvent] = []
    end = client.jobs.events(job, on_event=events.append, timeout=30)
    assert end is not None and end.event == "end" and end.json()["status"] == "completed"
    assert events[0].event == "status" and {"node", "log"} <= {e.event for e in events}
    # an ended job's stream closes after "end": reading it for something else stops there
    assert client.jobs.events(job, until=lambda e: False).event == "end"
    # a second run, cancelled while queued (a wait's timeout: test_client_socket.py, where
    # the stream is read as it comes; TestClient answers once the stream has ended)
    run = workflow.run()
    cancelled = client.jobs.cancel(run.job)
    assert cancelled is not None
    assert client.jobs.get(run.job).status == "cancelled"
    with pytest.raises(automl.JobFailed):
        client.jobs.wait(run.job, timeout=10, raise_on_failure=True)

    # models
    [model] = client.models.list().all()
    detail = client.models.get(model)
    assert detail.algorithm == "logistic_regression" and detail.metrics
    path = client.models.download_artifact(model, tmp_path)
    assert isinstance(path, Path) and path.parent == tmp_path and path.stat().st_size > 0
    assert client.models.download_artifact(model) == path.read_bytes()

    # experiments
    experiment = client.experiments.create("iris", primary_metric="accuracy", dataset_id=dataset)
    run_out = client.experiments.add_run(experiment, model_id=model, name="lr")
    assert run_out.model_id == model.id
    assert [e.id for e in client.experiments.list()] == [experiment.id]
    assert len(client.experiments.get(experiment).runs) == 1

    # deleting and restoring
    client.workflows.delete(workflow)
    assert [w.id for w in client.workflows.list(deleted=True)] == [workflow.id]
    assert client.workflows.restore(workflow).id == workflow.id
    client.datasets.delete(dataset)
    with pytest.raises(automl.NotFound):
        client.datasets.get(dataset)


def test_registry_deployments_evaluations_usage(
    client: automl.Client,
    other: automl.Client,
    credits: Callable[[automl.Client, int], None],
    drain: Callable[[], Any],
    tmp_path: Path,
) -> None:
    upload, _, job = train(client, credits, drain)
    [model] = client.models.list().all()

    # the registry
    registered = client.registered_models.create(
        "iris", description="flowers", tags={"team": "a"}, visibility="shared"
    )
    version = client.registered_models.register_version(
        registered, model, primary_metric="accuracy", aliases=["champion"]
    )
    assert version.version == 1 and version.aliases == ["champion"]
    assert [r.id for r in client.registered_models.list(name="iris", owner="me")] == [registered.id]
    assert client.registered_models.get(registered).aliases == {"champion": 1}
    updated = client.registered_models.update(registered, description="iris flowers")
    assert updated.description == "iris flowers"
    assert [v.id for v in client.registered_models.versions(registered)] == [version.id]
    assert client.registered_models.set_alias(registered, "prod", 1).version == 1
    client.registered_models.delete_alias(registered, "prod")
    assert client.registered_models.get(registered).aliases == {"champion": 1}
    assert client.registered_models.permissions(registered) == []
    other_email = other.me.get().email
    granted = client.registered_models.grant(registered, "download", email=other_email)
    assert granted.permission == "download"
    assert len(client.registered_models.permissions(registered)) == 1
    assert other.model_versions.get(version).id == version.id
    client.registered_models.revoke(registered, email=other_email)
    with pytest.raises(automl.NotFound):
        other.model_versions.get(version)

    # model versions
    found = client.model_versions.search("name = 'iris'", order_by="version DESC").all()
    assert [v.id for v in found] == [version.id]
    with pytest.raises(automl.ValidationError) as bad_filter:
        client.model_versions.search("metrics.accuracy >>> 1").all()
    assert bad_filter.value.code == "invalid_filter"
    assert client.model_versions.get(version).registered_model_name == "iris"
    assert client.model_versions.update(version, description="v1").description == "v1"
    lineage = client.model_versions.lineage(version, direction="up", depth=3)
    assert lineage is not None
    target = version.download(format="joblib", path=tmp_path / "model.joblib")
    assert target == tmp_path / "model.joblib"
    loaded = joblib.load(target)
    assert hasattr(loaded, "predict")
    missing = tmp_path / "missing.joblib"
    with pytest.raises(automl.NotFound):
        client.model_versions.download("00000000-0000-4000-8000-000000000001", path=missing)
    assert not missing.exists()
    data = client.model_versions.download(version, format="joblib")
    assert data == target.read_bytes()
    assert client.model_versions.get(version).download_count == 2

    # deployments: online predictions of a DataFrame, records, one record
    deployment = client.deployments.create("iris-live", model_version_id=version)
    assert client.deployments.get(deployment).status == "active"
    assert [d.id for d in client.deployments.list()] == [deployment.id]
    features = iris().drop(columns=["species"]).head(5)
    features.iloc[0, 0] = float("nan")  # a missing value is sent as null
    predicted = client.deployments.predict(deployment, features)
    assert len(predicted.predictions) == 5 and len(predicted.probabilities or []) == 5
    assert set(predicted.predictions) <= {"setosa", "versicolor", "virginica"}
    frame = predicted.to_pandas()
    assert list(frame.columns)[0] == "prediction" and len(frame) == 5
    records = features.iloc[1:].to_dict(orient="records")
    assert len(deployment.predict(records).predictions) == 4
    assert len(client.deployments.predict(deployment, records[0]).predictions) == 1
    csv = features.iloc[1:].to_csv(index=False)
    assert len(client.deployments.predict(deployment, csv).predictions) == 4
    with pytest.raises(automl.ValidationError) as wrong:
        client.deployments.predict(deployment, [{"nothing": 1}])
    assert "sepal" in wrong.value.message or wrong.value.details

    # batch scoring into Parquet
    batch = client.deployments.batch(deployment, upload.version.id)
    drain()
    finished = batch.wait(timeout=30)
    assert finished.status == "completed"
    assert client.deployments.get_batch(deployment, batch).status == "completed"
    out = client.deployments.batch_output(deployment, batch, tmp_path / "scored.parquet")
    scored = pd.read_parquet(out)
    assert len(scored) == 150 and "prediction" in scored.columns
    raw = client.deployments.batch_output(deployment, batch)
    assert len(pd.read_parquet(io.BytesIO(raw))) == 150

    # usage and the request log (written in the background by the API: both answer)
    assert client.usage.get(group_by="deployment") is not None
    assert isinstance(client.usage.requests(deployment).all(), list)
    assert isinstance(client.deployments.requests(deployment, status="ok").all(), list)
    stopped = deployment.stop()
    assert stopped.status == "stopped"
    assert client.deployments.stop(deployment).status == "stopped"

    # evaluations: a criterion, a run, its rows and plots
    criterion = client.evaluation_criteria.create(
        "accurate", "metric_threshold", metric="accuracy", operator=">=", threshold=0.5
    )
    assert [c.id for c in client.evaluation_criteria.list()] == [criterion.id]
    evaluation = client.evaluations.create(version, upload.version.id, criteria_ids=[criterion])
    drain()
    done = client.evaluations.wait(evaluation, timeout=30)
    assert done.status == "completed" and done.passed is True
    assert client.evaluations.get(evaluation).row_count == 150
    assert len(client.evaluations.rows(evaluation, limit=100).all()) == 150
    assert client.evaluations.rows(evaluation, passed=False).all() == []
    png = client.evaluations.plot(evaluation, "confusion_matrix")
    assert png.startswith(b"\x89PNG")
    saved = client.model_versions.plot(version, "confusion_matrix", path=tmp_path / "cm.png")
    assert saved.read_bytes().startswith(b"\x89PNG")
    data_plot = client.model_versions.plot(version, "confusion_matrix", format="json")
    assert data_plot["kind"] == "confusion_matrix"

    # an empty registered model can be deleted
    spare = client.registered_models.create("spare")
    client.registered_models.delete(spare)
    with pytest.raises(automl.NotFound):
        client.registered_models.get(spare)
