"""Datasets: uploads, versions, storage, quotas, profiles, deletion."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.settings import ApiSettings

from api_helpers import CSV, Account, make_app, make_dataset, rows, scalar, signup, upload


def test_upload_creates_dataset_version_and_ingestion_job(
    client: TestClient, account: Account, engine: Engine, api_settings: ApiSettings
) -> None:
    r = upload(client, account, name="iris", problem_type="classification", target_column="species")
    assert r.status_code == 201, r.text
    body = r.json()
    dataset, version, job = body["dataset"], body["version"], body["ingestion_job"]
    assert dataset["name"] == "iris" and dataset["problem_type"] == "classification"
    assert dataset["target_column"] == "species"
    assert dataset["current_version_id"] == version["id"]
    assert version["version_number"] == 1 and version["status"] == "pending"
    assert version["original_format"] == "csv"
    assert version["original_size_bytes"] == len(CSV)
    assert job["status"] == "pending"

    [(source, job_user)] = rows(
        engine, "SELECT source_path, user_id FROM ingestion_jobs WHERE id = :id", id=job["id"]
    )
    assert job_user == account.user_id
    stored = Path(source)
    assert stored.read_bytes() == CSV
    assert stored.is_relative_to(Path(api_settings.storage_location()))
    # The triggers counted it.
    counters = rows(
        engine,
        "SELECT dataset_count, storage_used_bytes FROM users WHERE id = :id",
        id=account.user_id,
    )
    assert tuple(counters[0]) == (1, len(CSV))
    me = client.get("/v1/me", headers=account.headers).json()
    assert me["usage"]["datasets"] == 1 and me["usage"]["storage_bytes"] == len(CSV)


def test_formats_by_extension(client: TestClient, account: Account) -> None:
    for filename, fmt in [("d.json", "json"), ("d.parquet", "parquet"), ("d.xlsx", "excel")]:
        r = upload(client, account, filename=filename, content=b"PAR1 or whatever")
        assert r.status_code == 201, r.text
        assert r.json()["version"]["original_format"] == fmt
    bad = upload(client, account, filename="notes.txt")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unsupported_format"


def test_upload_refusals_store_nothing(
    client: TestClient, account: Account, engine: Engine, api_settings: ApiSettings
) -> None:
    no_name = client.post(
        "/v1/datasets", headers=account.headers, files={"file": ("a.csv", CSV, "text/csv")}
    )
    assert no_name.status_code == 422
    no_file = client.post("/v1/datasets", headers=account.headers, files={"name": (None, "x")})
    assert no_file.status_code == 422
    form = client.post("/v1/datasets", headers=account.headers, data={"name": "x"})
    assert form.status_code == 415  # urlencoded: no file can be in it
    empty = upload(client, account, content=b"")
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "empty_file"
    bad_type = upload(client, account, problem_type="astrology")
    assert bad_type.status_code == 422
    as_json = client.post("/v1/datasets", headers=account.headers, json={"name": "x"})
    assert as_json.status_code == 415
    too_big = upload(client, account, content=b"x" * (api_settings.max_upload_bytes + 1))
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "upload_too_large"
    assert scalar(engine, "SELECT count(*) FROM datasets") == 0
    assert scalar(engine, "SELECT count(*) FROM dataset_versions") == 0
    storage = Path(api_settings.storage_location())
    assert not storage.exists() or not any(p.is_file() for p in storage.rglob("*"))


def test_storage_quota_is_413_before_anything_is_stored(
    engine: Engine, api_settings: ApiSettings
) -> None:
    settings = api_settings.model_copy(deep=True)
    settings.tier_limits.free.storage_bytes = len(CSV) * 2 + 10
    with TestClient(make_app(engine, settings)) as client:
        account = signup(client)
        make_dataset(client, account)
        make_dataset(client, account)
        r = upload(client, account)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "storage_quota_exceeded"
        assert scalar(engine, "SELECT count(*) FROM dataset_versions") == 2
        used = scalar(
            engine, "SELECT storage_used_bytes FROM users WHERE id = :id", id=account.user_id
        )
        assert used == len(CSV) * 2
        files = [p for p in Path(settings.storage_location()).rglob("*") if p.is_file()]
        assert len(files) == 2


def test_dataset_count_limit_is_403(engine: Engine, api_settings: ApiSettings) -> None:
    from api_helpers import signup

    settings = api_settings.model_copy(deep=True)
    settings.tier_limits.free.max_datasets = 1
    with TestClient(make_app(engine, settings)) as client:
        account = signup(client)
        make_dataset(client, account)
        r = upload(client, account)
        assert r.status_code == 403
        err = r.json()["error"]
        assert err["code"] == "dataset_limit_reached"
        assert err["details"] == {"limit": 1, "current": 1, "tier": "free"}
        assert scalar(engine, "SELECT count(*) FROM datasets") == 1
        # A new version of an existing dataset is not a new dataset.
        dataset_id = client.get("/v1/datasets", headers=account.headers).json()["items"][0]["id"]
        v2 = client.post(
            f"/v1/datasets/{dataset_id}/versions",
            headers=account.headers,
            files={"file": ("v2.csv", CSV, "text/csv")},
        )
        assert v2.status_code == 201, v2.text


def test_new_versions_list_and_detail(client: TestClient, account: Account) -> None:
    first = make_dataset(client, account, name="sales")
    dataset_id = first["dataset"]["id"]
    r = client.post(
        f"/v1/datasets/{dataset_id}/versions",
        headers=account.headers,
        data={"version_label": "cleaned"},
        files={"file": ("sales.json", b'[{"a": 1}]', "application/json")},
    )
    assert r.status_code == 201, r.text
    v2 = r.json()["version"]
    assert v2["version_number"] == 2 and v2["version_label"] == "cleaned"
    assert r.json()["dataset"]["current_version_id"] == v2["id"]

    detail = client.get(f"/v1/datasets/{dataset_id}", headers=account.headers)
    assert detail.status_code == 200
    assert [v["version_number"] for v in detail.json()["versions"]] == [1, 2]
    assert detail.json()["current_version_id"] == v2["id"]

    make_dataset(client, account, name="later")
    listed = client.get("/v1/datasets", headers=account.headers).json()
    assert [d["name"] for d in listed["items"]] == ["later", "sales"]
    assert listed["next_cursor"] is None


def test_profile_once_ingested(client: TestClient, account: Account, engine: Engine) -> None:
    body = make_dataset(client, account)
    dataset_id, version_id = body["dataset"]["id"], body["version"]["id"]
    url = f"/v1/datasets/{dataset_id}/versions/1/profile"
    pending = client.get(url, headers=account.headers)
    assert pending.status_code == 409
    assert pending.json()["error"]["code"] == "profile_not_ready"
    assert pending.json()["error"]["details"]["status"] == "pending"
    # What a worker writes when ingestion finishes.
    rows(
        engine,
        "INSERT INTO dataset_profiles (dataset_version_id, row_count, column_count,"
        " missing_cells, column_stats) VALUES (:v, 3, 3, 0,"
        ' \'{"species": {"dtype": "object", "distinct": 2}}\')',
        v=version_id,
    )
    rows(engine, "UPDATE dataset_versions SET status = 'completed' WHERE id = :v", v=version_id)
    done = client.get(url, headers=account.headers)
    assert done.status_code == 200, done.text
    assert done.json()["row_count"] == 3
    assert done.json()["column_stats"]["species"]["distinct"] == 2
    for n in (2, 0, -1):
        missing = client.get(
            f"/v1/datasets/{dataset_id}/versions/{n}/profile", headers=account.headers
        )
        assert missing.status_code == 404, n


def test_delete_removes_rows_files_and_usage(
    client: TestClient, account: Account, engine: Engine
) -> None:
    body = make_dataset(client, account)
    dataset_id = body["dataset"]["id"]
    source = Path(
        scalar(
            engine,
            "SELECT source_path FROM ingestion_jobs WHERE id = :id",
            id=body["ingestion_job"]["id"],
        )
    )
    assert source.exists()
    r = client.delete(f"/v1/datasets/{dataset_id}", headers=account.headers)
    assert r.status_code == 204
    assert not source.exists()
    assert scalar(engine, "SELECT count(*) FROM dataset_versions") == 0
    me = client.get("/v1/me", headers=account.headers).json()
    assert me["usage"]["datasets"] == 0 and me["usage"]["storage_bytes"] == 0
    again = client.delete(f"/v1/datasets/{dataset_id}", headers=account.headers)
    assert again.status_code == 404


def test_another_users_dataset_is_not_found(
    client: TestClient, account: Account, other: Account, engine: Engine
) -> None:
    theirs = make_dataset(client, other)["dataset"]["id"]
    missing = str(uuid.uuid4())
    answers = []
    for dataset_id in (theirs, missing):
        answers.append(
            [
                client.get(f"/v1/datasets/{dataset_id}", headers=account.headers),
                client.delete(f"/v1/datasets/{dataset_id}", headers=account.headers),
                client.get(
                    f"/v1/datasets/{dataset_id}/versions/1/profile", headers=account.headers
                ),
                client.post(
                    f"/v1/datasets/{dataset_id}/versions",
                    headers=account.headers,
                    files={"file": ("x.csv", CSV, "text/csv")},
                ),
            ]
        )
    for theirs_answer, missing_answer in zip(*answers, strict=True):
        assert theirs_answer.status_code == missing_answer.status_code == 404
        assert theirs_answer.json() == missing_answer.json()
    assert client.get("/v1/datasets", headers=account.headers).json()["items"] == []
    # Nothing of theirs changed.
    assert (
        scalar(engine, "SELECT count(*) FROM dataset_versions WHERE dataset_id = :d", d=theirs) == 1
    )
    assert client.get(f"/v1/datasets/{theirs}", headers=other.headers).status_code == 200
