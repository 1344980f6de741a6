"""Errors in one shape, the exception mapping, health and readiness, OpenAPI, storage."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fastapi import FastAPI, Response
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from api.deps import get_session
from api.errors import DATABASE_ERRORS, from_database
from api.settings import ApiSettings
from api.storage import LocalStorage, make_storage, safe_filename
from database import errors as db
from database import migrations

from api_helpers import Account, make_app, rows

CONTRACT = {
    "/v1/users": {"post"},
    "/v1/me": {"get", "delete"},
    "/v1/me/export": {"get"},
    "/v1/me/password": {"put"},
    "/v1/me/verification-email": {"post"},
    "/v1/auth/login": {"post"},
    "/v1/auth/logout": {"post"},
    "/v1/auth/verify-email": {"post"},
    "/v1/auth/restore": {"post"},
    "/v1/sessions": {"get"},
    "/v1/sessions/{session_id}": {"delete"},
    "/v1/admin/users": {"get"},
    "/v1/admin/users/{user_id}": {"get", "patch"},
    "/v1/admin/users/{user_id}/credit-adjustments": {"post"},
    "/v1/api-keys": {"get", "post"},
    "/v1/api-keys/{key_id}": {"delete", "patch"},
    "/v1/usage": {"get"},
    "/v1/deployments/{deployment_id}/requests": {"get"},
    "/v1/audit-events": {"get"},
    "/v1/admin/audit-events": {"get"},
    "/v1/datasets": {"get", "post"},
    "/v1/datasets/{dataset_id}": {"get", "delete", "patch"},
    "/v1/evaluation-criteria": {"get", "post"},
    "/v1/evaluations": {"post"},
    "/v1/evaluations/{evaluation_id}": {"get"},
    "/v1/evaluations/{evaluation_id}/rows": {"get"},
    "/v1/evaluations/{evaluation_id}/plots/{plot}": {"get"},
    "/v1/model-versions/{model_version_id}/plots/{plot}": {"get"},
    "/v1/datasets/{dataset_id}/versions": {"post"},
    "/v1/datasets/{dataset_id}/versions/{version_number}/profile": {"get"},
    "/v1/workflows": {"get", "post"},
    "/v1/workflows/{workflow_id}": {"get", "patch", "delete"},
    "/v1/workflows/{workflow_id}/restore": {"post"},
    "/v1/workflows/{workflow_id}/run": {"post"},
    "/v1/jobs": {"get"},
    "/v1/jobs/{job_id}": {"get"},
    "/v1/jobs/{job_id}/cancel": {"post"},
    "/v1/jobs/{job_id}/events": {"get"},
    "/v1/jobs/{job_id}/logs": {"get"},
    "/v1/models": {"get"},
    "/v1/models/{model_id}": {"get"},
    "/v1/models/{model_id}/artifact": {"get"},
    "/v1/registered-models": {"get", "post"},
    "/v1/registered-models/{registered_model_id}": {"get", "patch", "delete"},
    "/v1/registered-models/{registered_model_id}/versions": {"get", "post"},
    "/v1/registered-models/{registered_model_id}/aliases/{alias}": {"put", "delete"},
    "/v1/registered-models/{registered_model_id}/permissions": {"get", "post", "delete"},
    "/v1/model-versions": {"get"},
    "/v1/model-versions/{version_id}": {"get", "patch"},
    "/v1/model-versions/{version_id}/lineage": {"get"},
    "/v1/model-versions/{version_id}/download": {"get"},
    "/v1/deployments": {"get", "post"},
    "/v1/deployments/{deployment_id}": {"get"},
    "/v1/deployments/{deployment_id}/stop": {"post"},
    "/v1/deployments/{deployment_id}/predict": {"post"},
    "/v1/deployments/{deployment_id}/batch": {"post"},
    "/v1/deployments/{deployment_id}/batch/{job_id}": {"get"},
    "/v1/deployments/{deployment_id}/batch/{job_id}/output": {"get"},
    "/v1/credits/balance": {"get"},
    "/v1/credits/transactions": {"get"},
    "/v1/credit-packages": {"get"},
    "/v1/credits/purchase": {"post"},
    # Billing (issue 16).
    "/v1/price-book": {"get"},
    "/v1/credits/checkout": {"post"},
    "/v1/credits/statement": {"get"},
    "/v1/invoices": {"get"},
    "/v1/billing-alerts": {"get", "post"},
    "/v1/billing-alerts/{alert_id}": {"delete"},
    "/v1/billing-alerts/{alert_id}/deliveries": {"get"},
    "/v1/admin/reconciliation-runs": {"get"},
    "/v1/webhooks/stripe": {"post"},
    "/v1/experiments": {"get", "post"},
    "/v1/experiments/{experiment_id}": {"get"},
    "/v1/experiments/{experiment_id}/runs": {"post"},
    "/v1/tutorials": {"get"},
    "/v1/tutorials/{tutorial_id}/progress": {"put"},
    "/healthz": {"get"},
    "/readyz": {"get"},
}


def test_openapi_documents_the_contract(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {p: set(ops) for p, ops in spec["paths"].items()} == CONTRACT
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, status)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_errors_have_one_shape(client: TestClient, account: Account) -> None:
    unknown = client.get("/v1/nothing-here", headers=account.headers)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    wrong_method = client.put("/v1/me", headers=account.headers)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "DELETE, GET"
    bad_id = client.get("/v1/datasets/not-a-uuid", headers=account.headers)
    assert bad_id.status_code == 422
    err = bad_id.json()["error"]
    assert err["code"] == "validation_error"
    assert err["details"]["errors"][0]["loc"] == ["path", "dataset_id"]
    for params in ({"limit": 0}, {"limit": 10**30}, {"cursor": "x" * 500}):
        r = client.get("/v1/jobs", headers=account.headers, params=params)
        assert r.status_code == 422, params
    broken_json = client.post(
        "/v1/workflows",
        headers={**account.headers, "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert broken_json.status_code == 422
    nul = client.post("/v1/workflows", headers=account.headers, json={"name": "a\x00"})
    assert nul.status_code == 422


def test_every_database_exception_has_a_status() -> None:
    expected = {
        db.InsufficientCredits: (402, "insufficient_credits"),
        db.UserDeleted: (403, "user_deleted"),
        db.PackageTierRestricted: (403, "package_tier_restricted"),
        db.PackageUnavailable: (409, "package_unavailable"),
        db.JobAlreadyCharged: (409, "job_already_charged"),
        db.JobNotOwned: (404, "not_found"),
        db.UserNotFound: (404, "not_found"),
        db.AlreadyExists: (409, "already_exists"),
        db.ReferenceViolation: (409, "reference_violation"),
        db.InvalidCreditAmount: (422, "invalid_credit_amount"),
        db.InvalidValue: (422, "invalid_value"),
        db.LockTimeout: (503, "busy"),
        db.SerializationConflict: (503, "busy"),
        db.StatementTimeout: (503, "timeout"),
        db.PermissionDenied: (500, "internal_error"),
        db.RegisteredModelNotFound: (404, "not_found"),
        db.ModelVersionNotFound: (404, "not_found"),
        db.RegisteredModelNameTaken: (409, "name_taken"),
        db.InvalidAlias: (422, "invalid_alias"),
        db.LineageCycle: (409, "lineage_cycle"),
        db.OwnerPermission: (409, "owner_permission"),
        db.RegistryForbidden: (403, "forbidden"),
        db.GranteeNotFound: (404, "user_not_found"),
        db.InvalidFilter: (422, "invalid_filter"),
    }
    for cls, (status, code) in expected.items():
        err = from_database(cls("refused"))
        assert (err.status, err.code) == (status, code), cls
    # Every exception the package defines maps somewhere, and nothing maps to 500
    # except the ones that are the server's fault.
    classes = {
        obj
        for obj in vars(db).values()
        if isinstance(obj, type) and issubclass(obj, db.DatabaseError)
    }
    for cls in classes:
        err = from_database(cls("x"))
        assert err.status in {401, 402, 403, 404, 409, 422, 429, 500, 503}
        if err.status == 500:
            assert cls in {db.DatabaseError, db.PermissionDenied, db.RoleNotFound, db.UnsafeRole}
    assert set(DATABASE_ERRORS) <= classes
    short = from_database(db.InsufficientCredits("x", detail="balance=3 amount=-13"))
    assert short.details == {"balance": 3, "price": 13}
    busy = from_database(db.LockTimeout("x"))
    assert busy.headers == {"Retry-After": "1"}


def test_exceptions_raised_in_routes_are_mapped(engine: Engine, api_settings: ApiSettings) -> None:
    app = make_app(engine, api_settings)

    @app.get("/boom/{kind}")
    def boom(kind: str) -> None:
        if kind == "lock":
            raise db.LockTimeout("lock not granted", sqlstate="55P03")
        if kind == "credits":
            raise db.InsufficientCredits("no", detail="balance=1 amount=-5")
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        lock = client.get("/boom/lock")
        assert lock.status_code == 503 and lock.headers["retry-after"] == "1"
        assert lock.json()["error"]["code"] == "busy"
        credits = client.get("/boom/credits")
        assert credits.status_code == 402
        assert credits.json()["error"]["details"] == {"balance": 1, "price": 5}
        bug = client.get("/boom/bug")
        assert bug.status_code == 500
        assert bug.json() == {
            "error": {"code": "internal_error", "message": "internal error", "details": {}}
        }


def test_health_and_readiness(client: TestClient, engine: Engine) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert ready.json()["revision"] == sorted(migrations.heads())
    rows(engine, "UPDATE alembic_version SET version_num = 'dd52b6bdfc1e'")
    behind = client.get("/readyz")
    assert behind.status_code == 503
    assert behind.json()["database"] is True and behind.json()["revision"] == ["dd52b6bdfc1e"]
    assert "head" in behind.json()["reason"]


def test_readiness_without_a_database(app: FastAPI, db_url: Any) -> None:
    nowhere = create_engine(db_url.set(database=f"missing_{uuid.uuid4().hex[:8]}"))
    factory = sessionmaker(bind=nowhere)

    def unreachable() -> Any:
        with factory() as session:
            yield session

    app.dependency_overrides[get_session] = unreachable
    try:
        with TestClient(app) as client:
            r = client.get("/readyz")
            assert r.status_code == 503
            assert r.json()["database"] is False and r.json()["status"] == "not_ready"
            assert client.get("/healthz").status_code == 200
    finally:
        nowhere.dispose()


def test_local_storage_stays_in_its_folder(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    location = storage.location("a/b/file.csv")
    assert storage.save("a/b/file.csv", io.BytesIO(b"x" * 3_000_000)) == 3_000_000
    assert Path(location).stat().st_size == 3_000_000
    with pytest.raises(ValueError):
        storage.location("../escape.csv")
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    assert storage.download(str(outside), "s.txt") is None
    assert storage.delete(str(outside)) is False and outside.exists()
    assert storage.delete(location) is True
    assert not (tmp_path / "store" / "a").exists()  # emptied folders go too
    assert storage.delete(location) is False
    assert safe_filename("../../etc/pass wd;.csv") == "pass_wd_.csv"
    assert safe_filename("") == "upload"


@pytest.fixture
def memory_url() -> Iterator[str]:
    prefix = f"api-test-{uuid.uuid4().hex}"
    yield f"memory://{prefix}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{prefix}"):
        fs.rm(f"/{prefix}", recursive=True)


def test_fsspec_storage_streams_downloads(memory_url: str, tmp_path: Path) -> None:
    # memory:// stands for s3:// (same code path, through fsspec); it cannot sign, so
    # the API streams the file instead of redirecting.
    storage = make_storage(f"{memory_url}/prefix/", data_dir=tmp_path)
    location = storage.location("uploads/u/d.csv")
    assert location == f"{memory_url}/prefix/uploads/u/d.csv"
    data = b"a,b\n" + b"1,2\n" * 400_000  # more than one chunk
    assert storage.save("uploads/u/d.csv", io.BytesIO(data)) == len(data)
    app = FastAPI()

    @app.get("/file")
    def file(where: str) -> Response:
        answer = storage.download(where, "d.csv")
        return answer if answer is not None else Response(status_code=404)

    with TestClient(app) as client:
        r = client.get("/file", params={"where": location})
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-disposition"] == 'attachment; filename="d.csv"'
        assert r.headers["content-length"] == str(len(data))
        for elsewhere in (
            f"{memory_url}/other/uploads/u/d.csv",
            f"{memory_url}/prefix/../x",
            str(tmp_path / "x"),  # the data folder is not readable from a remote storage
            "s3://bucket/prefix/uploads/u/d.csv",
        ):
            assert client.get("/file", params={"where": elsewhere}).status_code == 404
    assert storage.delete("s3://other-bucket/x") is False
    assert storage.delete(f"{memory_url}/other/x") is False
    assert storage.delete(location) is True
    assert storage.download(location, "d.csv") is None
    assert storage.delete(location) is False
    with pytest.raises(ValueError):
        storage.location("../x")


def test_a_storage_that_signs_redirects(memory_url: str) -> None:
    storage = make_storage(f"{memory_url}/prefix")
    location = storage.location("models/m.joblib")
    storage.save("models/m.joblib", io.BytesIO(b"model"))
    fs = storage.backend.fs  # type: ignore[attr-defined]
    signed: dict[str, object] = {}

    def sign(path: str, expiration: int = 100, **kwargs: object) -> str:
        signed.update(path=path, expiration=expiration)
        return f"https://signed.example{path}?sig=1"

    fs.sign = sign  # an instance attribute: this filesystem object only
    try:
        answer = storage.download(location, "m.joblib")
    finally:
        del fs.sign
    assert answer is not None and answer.status_code == 307
    assert answer.headers["location"] == f"https://signed.example{signed['path']}?sig=1"
    assert signed["expiration"] == 300


def test_s3_needs_the_s3_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: object, **kwargs: object) -> None:
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)
    with pytest.raises(RuntimeError, match=r"s3 extra"):
        make_storage("s3://bucket/prefix")


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIER_LIMITS__FREE__MAX_DATASETS", "3")
    monkeypatch.setenv("IDENTITY__LOGIN_PER_IP", "25")
    monkeypatch.setenv("ENABLE_DEV_PURCHASES", "true")
    monkeypatch.setenv("PORT", "9001")
    settings = ApiSettings()
    assert settings.tier_limits.free.max_datasets == 3
    assert settings.tier_limits.free.max_workflows == 20  # the rest keep their defaults
    assert settings.identity.login_per_ip == 25 and settings.identity.signup_per_ip == 20
    assert settings.dev_purchases is True and settings.port == 9001
    monkeypatch.delenv("ENABLE_DEV_PURCHASES")
    assert ApiSettings().dev_purchases is False


def test_session_is_rolled_back_after_a_refusal(
    client: TestClient, account: Account, engine: Engine
) -> None:
    """A refused request leaves nothing behind, not even a half-open transaction."""
    client.post("/v1/workflows", headers=account.headers, json={"name": "x", "definition": 5})
    with Session(engine) as session:
        assert session.scalar(text("SELECT count(*) FROM workflows")) == 0
    idle = rows(
        engine,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state = 'idle in transaction'",
    )
    assert idle[0][0] == 0
