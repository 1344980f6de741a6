"""GET /v1/model-versions/{id}/download: the round trip upload -> train (a save node
registering a version) -> version with lineage and signature -> download in each
format -> load -> predict as the platform does; who may download, every attempt
recorded, the count kept by the database.

A real worker (in-process) ingests and runs the workflow against the test's own
database and a storage folder shared with the API.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_iris
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from api.settings import ApiSettings
from database import registry
from database.models.enums import ModelPermission
from pipeline import formats
from pipeline.storage import Storage, make_storage
from workers.main import Worker
from workers.settings import WorkerSettings

from api_helpers import Account, give_credits, rows, scalar, signup, upload

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

AGENT = "formats-test/1.0"


def iris_frame() -> pd.DataFrame:
    frame = load_iris(as_frame=True).frame
    frame["species"] = frame.pop("target").map(dict(enumerate(load_iris().target_names)))
    frame["garden"] = np.where(frame.index % 3 == 0, "north", "south")
    frame.loc[::10, "garden"] = None
    frame.loc[::7, "sepal length (cm)"] = None
    return frame


@pytest.fixture
def storage(api_settings: ApiSettings) -> Storage:
    return make_storage(str(api_settings.storage_url))


def drain(engine: Engine, storage: Storage, api_settings: ApiSettings) -> Worker:
    settings = WorkerSettings(
        slots=1,
        lease_seconds=30,
        purge_hours=0,
        data_dir=api_settings.data_dir,
        storage_url=str(api_settings.storage_url),
    )
    worker = Worker(engine, storage, settings)
    worker.run(until_idle=True)
    return worker


def _definition(dataset_id: str, register: dict[str, Any] | None) -> dict[str, Any]:
    save: dict[str, Any] = {"name": "iris forest"}
    if register is not None:
        save["register"] = register
    return {
        "nodes": [
            {"id": "data", "type": "dataset", "config": {"dataset_id": dataset_id}},
            {"id": "prep", "type": "preprocess", "config": {"test_size": 0.3}},
            {
                "id": "train",
                "type": "model",
                "config": {"algorithm": "logistic_regression", "hyperparameters": {}},
            },
            {"id": "keep", "type": "save", "config": save},
        ],
        "edges": [
            {"source": "data", "target": "prep"},
            {"source": "prep", "target": "train"},
            {"source": "train", "target": "keep"},
        ],
    }


def train(
    client: TestClient,
    account: Account,
    engine: Engine,
    storage: Storage,
    api_settings: ApiSettings,
    register: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Upload iris, ingest it, run dataset -> preprocess -> model -> save; the job."""
    give_credits(engine, account.user_id, 200)
    r = upload(
        client,
        account,
        name="iris",
        content=iris_frame().to_csv(index=False).encode(),
        target_column="species",
        problem_type="classification",
    )
    assert r.status_code == 201, r.text
    dataset = r.json()
    drain(engine, storage, api_settings)
    r = client.post(
        "/v1/workflows",
        headers=account.headers,
        json={"name": "iris", "definition": _definition(dataset["dataset"]["id"], register)},
    )
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/workflows/{r.json()['id']}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    job_id = r.json()["job"]["id"]
    drain(engine, storage, api_settings)
    r = client.get(f"/v1/jobs/{job_id}", headers=account.headers)
    assert r.status_code == 200, r.text
    job = dict(r.json())
    job["dataset_version_id"] = dataset["version"]["id"]
    return job


def download(client: TestClient, account: Account | None, version_id: Any, fmt: str) -> Any:
    headers = {"User-Agent": AGENT, **(account.headers if account else {})}
    return client.get(
        f"/v1/model-versions/{version_id}/download", params={"format": fmt}, headers=headers
    )


def _features() -> pd.DataFrame:
    return iris_frame().drop(columns=["species"])


# --- the round trip ---------------------------------------------------------------------
def test_upload_train_register_download_load_predict(
    client: TestClient,
    account: Account,
    engine: Engine,
    storage: Storage,
    api_settings: ApiSettings,
    tmp_path: Path,
) -> None:
    job = train(
        client, account, engine, storage, api_settings, {"name": "iris", "alias": "champion"}
    )
    assert job["status"] == "completed", job
    keep = next(n for n in job["nodes"] if n["node_id"] == "keep")["output_data"]
    registered = keep["registered"]
    assert registered["name"] == "iris" and registered["version"] == 1
    assert registered["alias"] == "champion"
    version_id = uuid.UUID(registered["model_version_id"])

    # the version: its model, owner, alias, metrics, signature, example, environment
    (version,) = rows(
        engine,
        "SELECT v.*, r.name AS registered_name, r.user_id AS owner FROM model_versions AS v"
        " JOIN registered_models AS r ON r.id = v.registered_model_id WHERE v.id = :v",
        v=version_id,
    )
    assert version.owner == account.user_id and version.registered_name == "iris"
    assert str(version.model_id) == keep["model_id"]
    assert version.environment == registry.current_environment()
    features = list(_features().columns)
    assert [c["name"] for c in version.signature["inputs"]] == features
    types = {c["name"]: c["type"] for c in version.signature["inputs"]}
    assert types["garden"] == "string" and types["petal width (cm)"] == "double"
    assert len(version.input_example) == formats.INPUT_EXAMPLE_ROWS
    assert set(version.input_example[0]) == set(features)
    # one source of truth: the trained model's row holds the same
    model_row = rows(
        engine,
        "SELECT signature, input_example, environment FROM models WHERE id = :m",
        m=version.model_id,
    )[0]
    assert tuple(model_row) == (version.signature, version.input_example, version.environment)
    alias = scalar(
        engine,
        "SELECT model_version_id FROM model_aliases WHERE registered_model_id = :r"
        " AND alias = 'champion'",
        r=version.registered_model_id,
    )
    assert alias == version_id
    metric_names = {
        r.metric
        for r in rows(
            engine,
            "SELECT metric FROM model_version_metrics WHERE model_version_id = :v",
            v=version_id,
        )
    }
    assert "accuracy" in metric_names

    # lineage: the job, its workflow snapshot, the dataset version
    with Session(engine) as session:
        edges = registry.lineage(session, version_id, "up")
    parents = {(e.relation.value, e.parent_kind, str(e.parent_id)) for e in edges}
    snapshot = scalar(engine, "SELECT workflow_snapshot_id FROM jobs WHERE id = :j", j=job["id"])
    assert parents == {
        ("produced_by", "job", job["id"]),
        ("produced_by", "workflow_snapshot", str(snapshot)),
        ("trained_on", "dataset_version", job["dataset_version_id"]),
    }

    # the platform's own predictions: its loader, on the dataset's rows
    frame = _features()
    with Session(engine) as session:
        platform = formats.load_version(session, storage, version_id)
    expected = platform.predict(frame)
    artifact = scalar(engine, "SELECT s3_path FROM models WHERE id = :m", m=version.model_id)
    with storage.open_read(artifact) as f:
        saved = joblib.load(io.BytesIO(f.read()))
    assert saved.predict(frame).tolist() == expected.tolist()

    # each format downloaded, loaded and predicting the same
    suffixes = {"joblib": ".joblib", "skops": ".skops", "onnx": ".onnx", "mlflow": ".zip"}
    for count, (fmt, suffix) in enumerate(suffixes.items(), start=1):
        r = download(client, account, version_id, fmt)
        assert r.status_code == 200, r.text
        assert r.headers["content-disposition"].endswith(f'filename="iris-v1{suffix}"')
        expected_type = "application/zip" if fmt == "mlflow" else "application/octet-stream"
        assert r.headers["content-type"] == expected_type
        loaded = formats.load(r.content, fmt)
        assert list(loaded.predict(frame)) == expected.tolist(), fmt
        assert (
            scalar(engine, "SELECT download_count FROM model_versions WHERE id = :v", v=version_id)
            == count
        )

    # MLflow's own loader on the zip
    import mlflow.pyfunc

    r = download(client, account, version_id, "mlflow")
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        archive.extractall(tmp_path / "mlflow-model")
    model = mlflow.pyfunc.load_model(str(tmp_path / "mlflow-model"))
    assert list(model.predict(frame)) == expected.tolist()
    example = json.loads((tmp_path / "mlflow-model" / "input_example.json").read_text())
    assert example["columns"] == features

    # every download recorded: who, format, agent, granted
    recorded = rows(
        engine,
        "SELECT user_id, format::text, user_agent, granted FROM model_downloads"
        " WHERE model_version_id = :v ORDER BY created_at",
        v=version_id,
    )
    assert [r.format for r in recorded] == [*suffixes, "mlflow"]
    assert all(
        r.user_id == account.user_id and r.user_agent == AGENT and r.granted for r in recorded
    )
    # converted once, then served from the cache
    with Session(engine) as session:
        cached = formats.cache_key(formats.version_artifact(session, version_id), "onnx")
    assert storage.exists(storage.location(cached))


# --- who may download ---------------------------------------------------------------------
def _share(engine: Engine, version_id: uuid.UUID, grants: dict[uuid.UUID, ModelPermission]) -> None:
    with Session(engine) as session:
        registered_model_id = session.execute(
            text("SELECT registered_model_id FROM model_versions WHERE id = :v"), {"v": version_id}
        ).scalar_one()
        session.execute(
            text("UPDATE registered_models SET visibility = 'shared' WHERE id = :r"),
            {"r": registered_model_id},
        )
        for user_id, permission in grants.items():
            registry.grant_permission(session, registered_model_id, user_id, permission)
        session.commit()


def test_strangers_get_404_readers_403_and_every_attempt_is_recorded(
    client: TestClient,
    account: Account,
    engine: Engine,
    storage: Storage,
    api_settings: ApiSettings,
) -> None:
    job = train(client, account, engine, storage, api_settings, {"name": "shared-iris"})
    keep = next(n for n in job["nodes"] if n["node_id"] == "keep")["output_data"]
    version_id = uuid.UUID(keep["registered"]["model_version_id"])
    stranger, reader, downloader = signup(client), signup(client), signup(client)

    def count() -> int:
        return int(
            scalar(engine, "SELECT download_count FROM model_versions WHERE id = :v", v=version_id)
        )

    def attempts(user: Account) -> list[bool]:
        return [
            r.granted
            for r in rows(
                engine,
                "SELECT granted FROM model_downloads WHERE user_id = :u ORDER BY created_at",
                u=user.user_id,
            )
        ]

    # private: only the owner
    r = download(client, stranger, version_id, "joblib")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    _share(
        engine,
        version_id,
        {reader.user_id: ModelPermission.READ, downloader.user_id: ModelPermission.DOWNLOAD},
    )
    r = download(client, stranger, version_id, "skops")
    assert r.status_code == 404
    r = download(client, reader, version_id, "joblib")
    assert r.status_code == 403 and r.json()["error"]["code"] == "download_not_permitted"
    assert count() == 0
    r = download(client, downloader, version_id, "joblib")
    assert r.status_code == 200, r.text
    assert count() == 1
    r = download(client, downloader, version_id, "skops")
    assert r.status_code == 200, r.text
    assert count() == 2
    assert attempts(stranger) == [False, False]
    assert attempts(reader) == [False]
    assert attempts(downloader) == [True, True]
    refused = rows(
        engine,
        "SELECT reason, user_agent FROM model_downloads WHERE user_id = :u",
        u=reader.user_id,
    )[0]
    assert refused.reason == "no download permission" and refused.user_agent == AGENT
    # the owner's grant taken back: refused again
    with Session(engine) as session:
        registered_model_id = scalar(
            engine, "SELECT registered_model_id FROM model_versions WHERE id = :v", v=version_id
        )
        registry.revoke_permission(session, registered_model_id, downloader.user_id)
        session.commit()
    assert download(client, downloader, version_id, "joblib").status_code == 404
    assert count() == 2


def test_unknown_version_format_and_key(
    client: TestClient, account: Account, engine: Engine
) -> None:
    r = download(client, account, uuid.uuid4(), "joblib")
    assert r.status_code == 404
    assert scalar(engine, "SELECT count(*) FROM model_downloads") == 0
    r = download(client, account, uuid.uuid4(), "pickle")
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = download(client, account, "not-a-uuid", "joblib")
    assert r.status_code == 422
    # without a key: a missing version is a missing version (public ones need none)
    r = client.get(f"/v1/model-versions/{uuid.uuid4()}/download")
    assert r.status_code == 404


# --- what cannot be converted -----------------------------------------------------------
class Memorizer(ClassifierMixin, BaseEstimator):
    """An estimator skl2onnx has never heard of."""

    def fit(self, x: Any, y: Any) -> Memorizer:
        self.classes_ = np.unique(y)
        return self

    def predict(self, x: Any) -> Any:
        return np.repeat(self.classes_[0], len(x))


def _hand_made_version(
    engine: Engine, storage: Storage, user_id: uuid.UUID, environment: dict[str, str]
) -> uuid.UUID:
    frame = _features()[["petal width (cm)"]]
    pipeline = Pipeline([("scale", StandardScaler()), ("model", Memorizer())]).fit(
        frame, iris_frame()["species"]
    )
    data = formats.export(pipeline, "joblib")
    location = storage.write_bytes(f"models/{user_id}/hand/{uuid.uuid4()}.joblib", data)
    with Session(engine) as session:
        model_id = session.execute(
            text(
                "INSERT INTO models (user_id, name, algorithm, problem_type, s3_path, size_bytes,"
                " signature, environment) VALUES (:u, 'memo', 'memorizer', 'classification',"
                " :p, :n, CAST(:s AS jsonb), CAST(:e AS jsonb)) RETURNING id"
            ),
            {
                "u": user_id,
                "p": location,
                "n": len(data),
                "s": json.dumps(formats.signature_of(frame)),
                "e": json.dumps(environment),
            },
        ).scalar_one()
        version = registry.register_saved_model(session, user_id, model_id, "memo")
        session.commit()
        return version.id


def test_onnx_of_an_unsupported_estimator_is_422_naming_it(
    client: TestClient, account: Account, engine: Engine, storage: Storage
) -> None:
    version_id = _hand_made_version(
        engine, storage, account.user_id, registry.current_environment()
    )
    r = download(client, account, version_id, "onnx")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "format_unsupported"
    assert error["details"]["estimator"] == "Memorizer"
    assert "Memorizer" in error["message"]
    # nothing served, nothing counted; the other formats still work
    assert scalar(engine, "SELECT count(*) FROM model_downloads") == 0
    r = download(client, account, version_id, "skops")
    assert r.status_code == 200, r.text
    # a skops file with a type the platform does not trust is refused by its loader
    with pytest.raises(formats.UntrustedContent, match="Memorizer"):
        formats.load(r.content, "skops")


def test_an_incompatible_environment_is_409_naming_the_versions(
    client: TestClient, account: Account, engine: Engine, storage: Storage
) -> None:
    old = {**registry.current_environment(), "sklearn": "0.20.3"}
    version_id = _hand_made_version(engine, storage, account.user_id, old)
    r = download(client, account, version_id, "mlflow")
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "incompatible_environment"
    assert "sklearn 0.20.3 saved this model" in error["message"]
    # the saved file itself is still there to take elsewhere
    assert download(client, account, version_id, "joblib").status_code == 200
    with Session(engine) as session, pytest.raises(formats.IncompatibleEnvironment) as caught:
        formats.load_version(session, storage, version_id)
    assert "model version 1 of 'memo'" in str(caught.value)


def test_concurrent_first_downloads_both_get_the_file_and_both_count(
    client: TestClient, account: Account, engine: Engine, storage: Storage
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    version_id = _hand_made_version(
        engine, storage, account.user_id, registry.current_environment()
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda _: download(client, account, version_id, "skops"), range(2)))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    for answer in answers:
        assert answer.content[:2] == b"PK"  # a whole skops file (a zip) each time
        with pytest.raises(formats.UntrustedContent, match="Memorizer"):
            formats.load(answer.content, "skops")
    assert (
        scalar(engine, "SELECT download_count FROM model_versions WHERE id = :v", v=version_id) == 2
    )
    assert (
        scalar(
            engine,
            "SELECT count(*) FROM model_downloads WHERE model_version_id = :v AND granted",
            v=version_id,
        )
        == 2
    )


def test_the_callers_address_and_agent_are_recorded(
    app: Any, client: TestClient, account: Account, engine: Engine, storage: Storage
) -> None:
    version_id = _hand_made_version(
        engine, storage, account.user_id, registry.current_environment()
    )
    stranger = signup(client)
    for address in ("203.0.113.7", "2001:db8::5"):
        with TestClient(app, client=(address, 40000)) as remote:
            assert download(remote, account, version_id, "joblib").status_code == 200
            assert download(remote, stranger, version_id, "joblib").status_code == 404
    recorded = rows(
        engine,
        "SELECT host(ip) AS ip, user_agent, granted FROM model_downloads"
        " WHERE model_version_id = :v ORDER BY created_at",
        v=version_id,
    )
    assert [(r.ip, r.granted) for r in recorded] == [
        ("203.0.113.7", True),
        ("203.0.113.7", False),
        ("2001:db8::5", True),
        ("2001:db8::5", False),
    ]
    assert {r.user_agent for r in recorded} == {AGENT}
    # a very long agent is cut to the API's one bound (api.deps.user_agent: 500, within
    # what every table that keeps one accepts)
    r = client.get(
        f"/v1/model-versions/{version_id}/download",
        headers={**account.headers, "User-Agent": "a" * 5000},
    )
    assert r.status_code == 200
    assert (
        scalar(
            engine,
            "SELECT max(char_length(user_agent)) FROM model_downloads WHERE model_version_id = :v",
            v=version_id,
        )
        == 500
    )


def test_public_versions_download_without_a_key_and_permissions_still_hold(
    client: TestClient, account: Account, engine: Engine, storage: Storage
) -> None:
    version_id = _hand_made_version(
        engine, storage, account.user_id, registry.current_environment()
    )
    # private: an anonymous caller gets what a stranger gets, and it is recorded
    r = download(client, None, version_id, "joblib")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE registered_models SET visibility = 'public' WHERE id ="
                " (SELECT registered_model_id FROM model_versions WHERE id = :v)"
            ),
            {"v": version_id},
        )
    r = download(client, None, version_id, "joblib")
    assert r.status_code == 200, r.text
    assert formats.load(r.content, "joblib").predict(_features()[["petal width (cm)"]]).size
    anonymous = rows(
        engine,
        "SELECT granted FROM model_downloads WHERE model_version_id = :v AND user_id IS NULL"
        " ORDER BY created_at",
        v=version_id,
    )
    assert [a.granted for a in anonymous] == [False, True]
    # an account whose can_download an admin turned off: 403, even on a public model
    stranger = signup(client)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE users SET can_download = false WHERE id = :u"), {"u": stranger.user_id}
        )
    r = download(client, stranger, version_id, "joblib")
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    # a bad key is 401, never a silent downgrade to anonymous
    bad = client.get(
        f"/v1/model-versions/{version_id}/download", headers={"Authorization": "Bearer aml_nope"}
    )
    assert bad.status_code == 401


def test_downloads_are_in_the_audit_trail_with_their_outcome(
    client: TestClient, account: Account, engine: Engine, storage: Storage
) -> None:
    version_id = _hand_made_version(
        engine, storage, account.user_id, registry.current_environment()
    )
    stranger = signup(client)
    assert download(client, account, version_id, "joblib").status_code == 200
    assert download(client, stranger, version_id, "joblib").status_code == 404
    events = rows(
        engine,
        "SELECT actor_user_id, outcome::text AS outcome, detail->>'format' AS format"
        " FROM audit_events WHERE action = 'model_version.downloaded' AND entity_id = :v"
        " ORDER BY occurred_at",
        v=version_id,
    )
    assert [(e.actor_user_id, e.outcome, e.format) for e in events] == [
        (account.user_id, "success", "joblib"),
        (stranger.user_id, "denied", "joblib"),
    ]
