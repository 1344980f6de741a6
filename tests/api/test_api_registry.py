"""The registry's HTTP API (api.routers.registry over database.registry): registered
models, versions, aliases, sharing across three users, lineage, search with the
MLflow-style filter and keyset pages."""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, event, text

from api.settings import ApiSettings
from database import errors, registry
from database.grants import grant
from database.models import ModelPermission, ModelVisibility

from api_helpers import Account, make_app, rows, scalar, signup
from factories import insert, make_dataset, make_job, make_model, make_snapshot, make_version

_names = itertools.count(1)


def _sql(engine: Engine) -> Any:
    def run(statement: str, **params: Any) -> list[Any]:
        return rows(engine, statement, **params)

    return run


def trained(engine: Engine, user_id: uuid.UUID, **cols: Any) -> uuid.UUID:
    """A trained model of ``user_id`` (as the worker leaves it)."""
    return make_model(_sql(engine), user_id, **cols)


def create(client: TestClient, who: Account, **body: Any) -> dict[str, Any]:
    body.setdefault("name", f"model-{next(_names)}")
    r = client.post("/v1/registered-models", headers=who.headers, json=body)
    assert r.status_code == 201, r.text
    return r.json()


def register(
    client: TestClient, engine: Engine, who: Account, rm: dict[str, Any], **body: Any
) -> dict[str, Any]:
    metrics = body.pop("metrics", {"accuracy": 0.9})
    body.setdefault("model_id", str(trained(engine, who.user_id, metrics=metrics)))
    r = client.post(f"/v1/registered-models/{rm['id']}/versions", headers=who.headers, json=body)
    assert r.status_code == 201, r.text
    return r.json()


def error(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.fixture
def third(client: TestClient) -> Account:
    """A third user: the stranger."""
    return signup(client)


# --- registered models ------------------------------------------------------------------


def test_registered_model_crud(client, account, engine):
    rm = create(
        client,
        account,
        name="churn",
        description="who leaves",
        tags={"team": "growth"},
        visibility="shared",
        model_card="# Churn\nA forest.",
        license="MIT",
    )
    assert rm["name"] == "churn" and rm["user_id"] == str(account.user_id)
    assert (rm["visibility"], rm["tags"], rm["access"]) == ("shared", {"team": "growth"}, "owner")
    assert rm["last_version_number"] == 0 and rm["aliases"] == {}
    got = client.get(f"/v1/registered-models/{rm['id']}", headers=account.headers)
    assert got.status_code == 200 and got.json()["model_card"] == "# Churn\nA forest."

    # Same name again: 409; another name: fine.
    r = client.post("/v1/registered-models", headers=account.headers, json={"name": "churn"})
    error(r, 409, "name_taken")
    other = create(client, account, name="churn-2")

    r = client.patch(
        f"/v1/registered-models/{rm['id']}",
        headers=account.headers,
        json={"description": None, "tags": {"team": "core"}, "visibility": "public", "name": "x"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["description"], body["tags"], body["visibility"]) == (
        "x",
        None,
        {"team": "core"},
        "public",
    )
    assert body["model_card"] == "# Churn\nA forest."  # untouched
    # Renaming onto a name the owner uses: 409.
    r = client.patch(
        f"/v1/registered-models/{rm['id']}", headers=account.headers, json={"name": "churn-2"}
    )
    error(r, 409, "name_taken")

    # Delete: the versions go, the trained model stays.
    version = register(client, engine, account, rm)
    r = client.delete(f"/v1/registered-models/{rm['id']}", headers=account.headers)
    assert r.status_code == 204
    error(client.get(f"/v1/registered-models/{rm['id']}", headers=account.headers), 404)
    error(client.get(f"/v1/model-versions/{version['id']}", headers=account.headers), 404)
    assert scalar(engine, "SELECT count(*) FROM models WHERE id = :m", m=version["model_id"]) == 1
    error(client.delete(f"/v1/registered-models/{rm['id']}", headers=account.headers), 404)
    assert client.get(f"/v1/registered-models/{other['id']}", headers=account.headers).is_success


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 10_000},
        {"name": "a\x00b"},
        {"name": "ok", "visibility": "secret"},
        {"name": "ok", "visibility": None},
        {"name": "ok", "tags": {"team": 3}},
        {"name": "ok", "tags": ["team"]},
        {"name": "ok", "tags": {"": "x"}},
        {"name": "ok", "tags": {"k\x00": "x"}},
        {"name": "ok", "tags": {f"k{i}": "v" * 400 for i in range(30)}},
        {"name": "ok", "model_card": "a\x00"},
        {"name": "ok", "model_card": "x" * 100_001},
        {"name": "ok", "license": "x" * 101},
        {"name": "ok", "description": "x" * 5001},
        {"name": "ok", "owner": "me"},
        {},
    ],
)
def test_registered_model_bad_input(client, account, body):
    r = client.post("/v1/registered-models", headers=account.headers, json=body)
    assert r.status_code in (413, 422), r.text
    assert r.json()["error"]["code"] in ("validation_error", "too_large")


def test_patch_bad_input_and_unknown_ids(client, account):
    rm = create(client, account)
    url = f"/v1/registered-models/{rm['id']}"
    for body in ({"name": None}, {"visibility": None}, {"tags": None}, {"name": "\x00"}, {"x": 1}):
        error(client.patch(url, headers=account.headers, json=body), 422, "validation_error")
    error(client.get("/v1/registered-models/not-a-uuid", headers=account.headers), 422)
    missing = f"/v1/registered-models/{uuid.uuid4()}"
    error(client.get(missing, headers=account.headers), 404, "not_found")
    error(client.patch(missing, headers=account.headers, json={"name": "y"}), 404, "not_found")
    # A key must be valid even where anonymous reads are allowed.
    r = client.get(url, headers={"Authorization": "Bearer aml_nope"})
    error(r, 401, "invalid_api_key")
    error(client.post("/v1/registered-models", json={"name": "anon"}), 401)


# --- versions -----------------------------------------------------------------------------


def test_register_versions_with_metrics_and_lineage(client, account, other, engine):
    db = _sql(engine)
    dataset_version = make_version(db, make_dataset(db, account.user_id))
    snapshot = make_snapshot(
        db,
        account.user_id,
        data={"dataset_versions": {"data": {"version_id": str(dataset_version)}}},
    )
    job = make_job(db, account.user_id, snapshot)
    model = trained(
        engine,
        account.user_id,
        job_id=job,
        metrics={"accuracy": 0.93, "f1": 0.9, "bad name": 1.0, "note": "text", "flag": True},
    )
    rm = create(client, account)
    v1 = register(
        client,
        engine,
        account,
        rm,
        model_id=str(model),
        description="first",
        primary_metric="accuracy",
        aliases=["champion"],
    )
    assert (v1["version"], v1["status"], v1["primary_metric"]) == (1, "ready", "accuracy")
    assert v1["registered_model_name"] == rm["name"] and v1["aliases"] == ["champion"]
    assert [(m["metric"], m["split"], m["value"]) for m in v1["metrics"]] == [
        ("accuracy", "test", 0.93),
        ("f1", "test", 0.9),
    ]
    parents = {(e["relation"], e["parent_kind"], e["parent_id"]) for e in v1["lineage"]["parents"]}
    assert parents == {
        ("produced_by", "job", str(job)),
        ("produced_by", "workflow_snapshot", str(snapshot)),
        ("trained_on", "dataset_version", str(dataset_version)),
    }
    assert v1["signature"] == {} and v1["environment"] == {} and v1["input_example"] is None

    v2 = register(client, engine, account, rm, aliases=["champion"])
    assert v2["version"] == 2
    detail = client.get(f"/v1/registered-models/{rm['id']}", headers=account.headers).json()
    assert detail["aliases"] == {"champion": 2} and detail["last_version_number"] == 2

    url = f"/v1/registered-models/{rm['id']}/versions"
    # The same trained model again: 409; another user's, or none: 404.
    error(client.post(url, headers=account.headers, json={"model_id": str(model)}), 409)
    foreign = trained(engine, other.user_id)
    error(client.post(url, headers=account.headers, json={"model_id": str(foreign)}), 404)
    error(client.post(url, headers=account.headers, json={"model_id": str(uuid.uuid4())}), 404)
    for body in (
        {"model_id": "nope"},
        {},
        {"model_id": str(model), "aliases": ["Bad"]},
        {"model_id": str(model), "primary_metric": "drop table"},
        {"model_id": str(model), "description": "\x00"},
    ):
        error(client.post(url, headers=account.headers, json=body), 422)
    # The other user cannot register into it (404: a private model is not theirs to see).
    r = client.post(url, headers=other.headers, json={"model_id": str(foreign)})
    error(r, 404, "not_found")

    # The versions, newest first, in keyset pages.
    page1 = client.get(url, headers=account.headers, params={"limit": 1}).json()
    assert [v["version"] for v in page1["items"]] == [2]
    page2 = client.get(
        url, headers=account.headers, params={"limit": 1, "cursor": page1["next_cursor"]}
    ).json()
    assert [v["version"] for v in page2["items"]] == [1] and page2["next_cursor"] is None


def test_version_detail_and_patch(client, account, other, engine):
    rm = create(client, account, visibility="shared")
    v = register(client, engine, account, rm)
    url = f"/v1/model-versions/{v['id']}"
    r = client.patch(
        url,
        headers=account.headers,
        json={"status": "archived", "description": "old", "primary_metric": "f1"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["description"], r.json()["primary_metric"]) == (
        "archived",
        "old",
        "f1",
    )
    r = client.patch(url, headers=account.headers, json={"status": "ready"})
    assert r.json()["status"] == "ready"
    for body in ({"status": None}, {"status": "deleted"}, {"version": 3}, {"description": "\x00"}):
        error(client.patch(url, headers=account.headers, json=body), 422)
    # Another user: 404 without a grant, 403 with read.
    error(client.patch(url, headers=other.headers, json={"description": "x"}), 404)
    error(client.get(url, headers=other.headers), 404)
    client.post(
        f"/v1/registered-models/{rm['id']}/permissions",
        headers=account.headers,
        json={"user_id": str(other.user_id), "permission": "read"},
    )
    assert client.get(url, headers=other.headers).status_code == 200
    error(client.patch(url, headers=other.headers, json={"description": "x"}), 403, "forbidden")
    error(client.get(f"/v1/model-versions/{uuid.uuid4()}", headers=account.headers), 404)


# --- aliases ------------------------------------------------------------------------------


def test_aliases(client, account, engine):
    rm = create(client, account)
    v1 = register(client, engine, account, rm)
    v2 = register(client, engine, account, rm)
    base = f"/v1/registered-models/{rm['id']}/aliases"
    r = client.put(f"{base}/champion", headers=account.headers, json={"version": 1})
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["model_version_id"]) == (1, v1["id"])
    r = client.put(f"{base}/champion", headers=account.headers, json={"version": 2})
    assert r.json()["model_version_id"] == v2["id"]
    got = client.get(f"/v1/model-versions/{v2['id']}", headers=account.headers).json()
    assert got["aliases"] == ["champion"]
    count = "SELECT count(*) FROM model_aliases WHERE registered_model_id = :r"
    assert scalar(engine, count, r=rm["id"]) == 1

    for bad in ("Champion", "3", "a%20b", "x" * 64, "a%00b", "-x", "%C3%A9t%C3%A9"):
        r = client.put(f"{base}/{bad}", headers=account.headers, json={"version": 1})
        error(r, 422, "invalid_alias")
        error(client.delete(f"{base}/{bad}", headers=account.headers), 422, "invalid_alias")
    error(client.put(f"{base}/next", headers=account.headers, json={"version": 9}), 404)
    for body in ({"version": 0}, {"version": "1"}, {"version": 1.0}, {"version": 2**31}, {}):
        error(client.put(f"{base}/next", headers=account.headers, json=body), 422)
    r = client.delete(f"{base}/champion", headers=account.headers)
    assert r.status_code == 204
    error(client.delete(f"{base}/champion", headers=account.headers), 404, "alias_not_found")
    assert scalar(engine, count, r=rm["id"]) == 0


def test_an_alias_moved_concurrently_ends_on_exactly_one_version(app, account, engine):
    with TestClient(app) as seed_client:
        rm = create(seed_client, account)
        versions = [register(seed_client, engine, account, rm)["id"] for _ in range(2)]
    url = f"/v1/registered-models/{rm['id']}/aliases/champion"
    rounds = 15
    barrier = threading.Barrier(2)
    statuses: list[int] = []
    failures: list[BaseException] = []

    def mover(version: int) -> None:
        try:
            with TestClient(app) as c:
                for _ in range(rounds):
                    barrier.wait(timeout=30)
                    r = c.put(url, headers=account.headers, json={"version": version})
                    statuses.append(r.status_code)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=mover, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert statuses == [200] * (2 * rounds)
    found = rows(
        engine,
        "SELECT model_version_id FROM model_aliases WHERE registered_model_id = :r",
        r=rm["id"],
    )
    assert len(found) == 1 and str(found[0].model_version_id) in versions


# --- sharing ------------------------------------------------------------------------------


def test_sharing_across_three_users(client, account, other, third, engine, session):
    owner, grantee, stranger = account, other, third
    rm = create(client, owner, name="shared-model")
    v = register(client, engine, owner, rm)
    model_url = f"/v1/registered-models/{rm['id']}"
    version_url = f"/v1/model-versions/{v['id']}"
    perms = f"{model_url}/permissions"

    def sees(who: Account | None) -> bool:
        headers = who.headers if who else {}
        r = client.get(model_url, headers=headers)
        assert r.status_code in (200, 404), r.text
        v_r = client.get(version_url, headers=headers)
        assert v_r.status_code == r.status_code  # the version follows its model
        listed = client.get("/v1/registered-models", headers=headers).json()["items"]
        searched = client.get("/v1/model-versions", headers=headers).json()["items"]
        assert (rm["id"] in {m["id"] for m in listed}) == (r.status_code == 200)
        assert (v["id"] in {x["id"] for x in searched}) == (r.status_code == 200)
        return r.status_code == 200

    # Granted by email while private: kept, suspended.
    r = client.post(
        perms, headers=owner.headers, json={"email": grantee.email, "permission": "read"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["user_id"] == str(grantee.user_id)
    assert [sees(w) for w in (owner, grantee, stranger, None)] == [True, False, False, False]

    client.patch(model_url, headers=owner.headers, json={"visibility": "shared"})
    assert [sees(w) for w in (owner, grantee, stranger, None)] == [True, True, False, False]
    assert client.get(model_url, headers=grantee.headers).json()["access"] == "read"
    # Read is not download (can(), the rule the download route uses), nor manage.
    assert not registry.can(session, grantee.user_id, uuid.UUID(rm["id"]), ModelPermission.DOWNLOAD)
    for method, url, body in (
        ("PATCH", model_url, {"description": "mine"}),
        ("DELETE", model_url, None),
        ("PUT", f"{model_url}/aliases/champion", {"version": 1}),
        ("DELETE", f"{model_url}/aliases/champion", None),
        ("POST", perms, {"user_id": str(stranger.user_id), "permission": "read"}),
        ("GET", perms, None),
        ("DELETE", f"{perms}?user_id={grantee.user_id}", None),
        ("POST", f"{model_url}/versions", {"model_id": str(trained(engine, grantee.user_id))}),
        ("PATCH", version_url, {"status": "archived"}),
    ):
        r = client.request(method, url, headers=grantee.headers, json=body)
        error(r, 403, "forbidden")
        # The stranger cannot even see it: 404, as for a missing one.
        r = client.request(method, url, headers=stranger.headers, json=body)
        error(r, 404, "not_found")

    r = client.post(
        perms,
        headers=owner.headers,
        json={"user_id": str(grantee.user_id), "permission": "download"},
    )
    assert r.status_code == 200  # replaced
    assert registry.can(session, grantee.user_id, uuid.UUID(rm["id"]), ModelPermission.DOWNLOAD)
    assert not registry.can(session, grantee.user_id, uuid.UUID(rm["id"]), ModelPermission.DEPLOY)
    assert client.get(model_url, headers=grantee.headers).json()["access"] == "download"
    listed = client.get(perms, headers=owner.headers).json()
    assert [(p["user_id"], p["permission"]) for p in listed] == [(str(grantee.user_id), "download")]

    # Public: everyone reads, the anonymous caller too; writes still need the owner.
    client.patch(model_url, headers=owner.headers, json={"visibility": "public"})
    assert [sees(w) for w in (owner, grantee, stranger, None)] == [True, True, True, True]
    assert client.get(model_url).json()["access"] == "download"  # public: read and download
    error(client.patch(model_url, headers=stranger.headers, json={"name": "x"}), 403, "forbidden")
    error(client.patch(model_url, json={"name": "x"}), 401)
    error(client.get(perms), 403, "forbidden")

    # Private again: the owner alone.
    client.patch(model_url, headers=owner.headers, json={"visibility": "private"})
    assert [sees(w) for w in (owner, grantee, stranger, None)] == [True, False, False, False]
    # Shared, then revoked.
    client.patch(model_url, headers=owner.headers, json={"visibility": "shared"})
    assert sees(grantee)
    r = client.delete(perms, headers=owner.headers, params={"email": grantee.email.upper()})
    assert r.status_code == 204
    assert not sees(grantee)
    assert client.get(perms, headers=owner.headers).json() == []


def test_permission_inputs(client, account, other):
    rm = create(client, account)
    perms = f"/v1/registered-models/{rm['id']}/permissions"
    r = client.post(
        perms, headers=account.headers, json={"user_id": str(account.user_id), "permission": "read"}
    )
    error(r, 409, "owner_permission")
    r = client.post(
        perms, headers=account.headers, json={"email": account.email, "permission": "deploy"}
    )
    error(r, 409, "owner_permission")
    r = client.post(
        perms, headers=account.headers, json={"email": "nobody@example.com", "permission": "read"}
    )
    body = error(r, 404, "user_not_found")
    assert (
        body["details"]["user"] == "nobody@example.com" and "nobody@example.com" in body["message"]
    )
    missing = str(uuid.uuid4())
    r = client.post(perms, headers=account.headers, json={"user_id": missing, "permission": "read"})
    assert error(r, 404, "user_not_found")["details"]["user"] == missing
    for bad in (
        {"permission": "read"},
        {"user_id": str(other.user_id), "email": other.email, "permission": "read"},
        {"user_id": str(other.user_id), "permission": "admin"},
        {"user_id": str(other.user_id)},
        {"email": "a\x00@example.com", "permission": "read"},
        {"email": "not-an-email", "permission": "read"},
    ):
        error(client.post(perms, headers=account.headers, json=bad), 422)
    r = client.post(
        perms, headers=account.headers, json={"user_id": str(other.user_id), "permission": "deploy"}
    )
    assert r.status_code == 201
    r = client.delete(perms, headers=account.headers, params={"user_id": str(other.user_id)})
    assert r.status_code == 204
    r = client.delete(perms, headers=account.headers, params={"user_id": str(other.user_id)})
    error(r, 404, "permission_not_found")
    error(client.delete(perms, headers=account.headers), 422)
    error(client.delete(perms, headers=account.headers, params={"email": "x\x00@y.z"}), 422)


def test_a_deleted_grantee_is_unknown(client, account, other, engine):
    rm = create(client, account)
    rows(
        engine,
        "UPDATE users SET is_deleted = true, deleted_at = now() WHERE id = :u",
        u=other.user_id,
    )
    r = client.post(
        f"/v1/registered-models/{rm['id']}/permissions",
        headers=account.headers,
        json={"email": other.email, "permission": "read"},
    )
    error(r, 404, "user_not_found")


# --- lineage ------------------------------------------------------------------------------


def test_lineage_route_hides_what_the_caller_cannot_read(client, account, other, engine, session):
    public = create(client, account, visibility="public")
    base = register(client, engine, account, public)
    mine = register(client, engine, account, public)
    theirs_rm = create(client, other)  # private
    theirs = register(client, engine, other, theirs_rm)
    for child, parent in ((mine, base), (theirs, base)):
        registry.record_lineage(
            session,
            uuid.UUID(child["id"]),
            registry.LineageRelation.RETRAINED_FROM,
            parent_version_id=uuid.UUID(parent["id"]),
        )
    session.commit()
    url = f"/v1/model-versions/{base['id']}/lineage"
    down = client.get(url, headers=account.headers, params={"direction": "down", "depth": 2})
    assert down.status_code == 200, down.text
    assert [e["child_version_id"] for e in down.json()["edges"]] == [mine["id"]]
    down = client.get(url, headers=other.headers, params={"direction": "down"}).json()
    assert {e["child_version_id"] for e in down["edges"]} == {mine["id"], theirs["id"]}
    detail = client.get(f"/v1/model-versions/{base['id']}", headers=account.headers).json()
    assert detail["lineage"]["derived_versions"] == 1
    up = client.get(f"/v1/model-versions/{theirs['id']}/lineage", headers=other.headers).json()
    assert ("retrained_from", base["id"]) in {(e["relation"], e["parent_id"]) for e in up["edges"]}
    error(client.get(f"/v1/model-versions/{theirs['id']}/lineage", headers=account.headers), 404)
    for params in ({"depth": 0}, {"depth": 51}, {"direction": "sideways"}, {"depth": "x"}):
        error(client.get(url, headers=account.headers, params=params), 422)


# --- search -------------------------------------------------------------------------------


def _search(client: TestClient, who: Account | None, **params: Any) -> Any:
    return client.get("/v1/model-versions", headers=who.headers if who else {}, params=params)


def _ids(r: Any) -> list[str]:
    assert r.status_code == 200, r.text
    return [v["id"] for v in r.json()["items"]]


def test_search_filter(client, account, other, engine):
    churn = create(client, account, name="churn-predictor", tags={"team": "growth"})
    iris = create(client, account, name="iris", tags={"team": "science"})
    a = register(client, engine, account, churn, metrics={"accuracy": 0.95, "f1": 0.5})
    b = register(client, engine, account, churn, metrics={"accuracy": 0.85})
    c = register(
        client,
        engine,
        account,
        iris,
        metrics={"accuracy": 0.99},
        model_id=str(
            trained(engine, account.user_id, metrics={"accuracy": 0.99}, hyperparameters={"n": 10})
        ),
    )
    d = register(client, engine, account, iris, metrics={})
    theirs = register(client, engine, other, create(client, other), metrics={"accuracy": 1.0})
    client.put(
        f"/v1/registered-models/{iris['id']}/aliases/champion",
        headers=account.headers,
        json={"version": 2},
    )
    client.patch(
        f"/v1/model-versions/{b['id']}", headers=account.headers, json={"status": "archived"}
    )

    def found(f: str) -> set[str]:
        return set(_ids(_search(client, account, filter=f)))

    assert found("") == {a["id"], b["id"], c["id"], d["id"]}  # not the other user's
    assert found("metrics.accuracy > 0.9") == {a["id"], c["id"]}
    assert found("metrics.accuracy@test >= 0.85 AND metrics.accuracy < 0.99") == {a["id"], b["id"]}
    assert found("metrics.f1 != 0.4") == {a["id"]}
    assert found("metrics.accuracy@train > 0") == set()
    assert found("tags.team = 'growth'") == {a["id"], b["id"]}
    assert found("tags.team LIKE 'sci%' and version >= 2") == {d["id"]}
    assert found("tags.team != 'growth'") == {c["id"], d["id"]}
    assert found("name LIKE 'churn%'") == {a["id"], b["id"]}
    assert found("name ilike 'CHURN%' and metrics.accuracy > 0.9") == {a["id"]}
    assert found("name NOT LIKE 'churn%'") == {c["id"], d["id"]}
    assert found('name = "iris" and version = 1') == {c["id"]}
    assert found("status = 'archived'") == {b["id"]}
    assert found("alias = 'champion'") == {d["id"]}
    assert found("params.n = 10") == {c["id"]}
    assert found("params.n = '10' and tags.`team` = 'science'") == {c["id"]}
    assert found(f"registered_model_id = '{iris['id']}'") == {c["id"], d["id"]}
    assert found("created_at > '2000-01-01T00:00:00Z'") == {a["id"], b["id"], c["id"], d["id"]}
    assert found("metrics.accuracy > 0.9 and name = 'nothing'") == set()
    # A version whose model became readable shows up, with the same rule as can().
    assert theirs["id"] not in found("metrics.accuracy >= 1")


@pytest.mark.parametrize(
    ("bad", "token", "position"),
    [
        ("metrics.accuracy >", "", 18),
        ("metrics.accuracy > 'x'", "'x'", 19),
        ("accuracy > 0.9", "accuracy", 0),
        ("metrics.accuracy > 0.9 or version = 1", "or", 23),
        ("metrics.accuracy > 0.9 and", "", 26),
        ("metrics.accuracy >> 1", ">", 18),
        ("version = 1.5", "1.5", 10),
        ("version = 99999999999", "99999999999", 10),
        ("name = 'unterminated", "'unterminated", 7),
        ("name = 'a' ; DROP TABLE users", "; DROP TABLE users", 11),
        ("status = 'gone'", "'gone'", 9),
        ("created_at > 'yesterday'", "'yesterday'", 13),
        ("created_at > '2026-01-01'", "'2026-01-01'", 13),
        ("metrics.acc > 1e999", "1e999", 14),
        ("name = 'a\x00'", "'a", 7),
        ("version LIKE 'x'", "LIKE", 8),
        ("metrics.`bad name` > 1", "metrics.`bad name`", 0),
        ("metrics.acc@Bad > 1", "metrics.acc@Bad", 0),
        ("(version = 1)", "(version = 1)", 0),
        ("registered_model_id = 'x'", "'x'", 22),
        ("tags.team", "", 9),
    ],
)
def test_malformed_filters_name_the_token(client, account, bad, token, position):
    body = error(_search(client, account, filter=bad), 422, "invalid_filter")
    assert body["details"]["position"] == position, body
    assert body["details"]["token"].startswith(token), body
    assert f"position {position}" in body["message"]


def test_search_bad_order_cursor_and_huge_filter(client, account, engine):
    rm = create(client, account)
    for _ in range(3):
        register(client, engine, account, rm)
    for bad in ("accuracy", "metrics.accuracy sideways", "version desc desc", "name", "'x'"):
        error(_search(client, account, order_by=bad), 422, "invalid_filter")
    page = _search(client, account, order_by="version", limit=1).json()
    # A cursor of another order, or garbage, is refused.
    error(
        _search(client, account, order_by="created_at", cursor=page["next_cursor"]),
        422,
        "invalid_cursor",
    )
    for cursor in ("x", "", "bnVsbA", "W10"):
        r = _search(client, account, order_by="version", cursor=cursor)
        assert r.status_code in (200, 422), r.text
    error(_search(client, account, filter="version = 1 and " * 200), 422)
    error(_search(client, account, filter="x" * 10_001), 422)
    error(
        _search(client, account, filter=" and ".join(["version > 0"] * 21)), 422, "invalid_filter"
    )


@hypothesis.settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@hypothesis.given(
    st.one_of(
        st.text(max_size=80),
        st.lists(
            st.sampled_from(
                [
                    "metrics.accuracy",
                    "tags.team",
                    "params.n",
                    "name",
                    "version",
                    "status",
                    "created_at",
                    "alias",
                    "and",
                    "or",
                    "not",
                    "like",
                    "ILIKE",
                    "=",
                    "!=",
                    "<",
                    ">=",
                    "'x'",
                    '"y"',
                    "0.9",
                    "-1",
                    "1e5",
                    "'%'",
                    "`a`",
                    "@",
                    "(",
                    "'",
                    "\\",
                ]
            ),
            max_size=10,
        ).map(" ".join),
    ),
    st.sampled_from([None, "metrics.accuracy DESC", "version", "created_at ASC", "nonsense"]),
)
def test_any_filter_is_200_or_422(client, account, filter, order_by):
    r = _search(client, account, filter=filter, order_by=order_by)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        assert r.json()["error"]["code"] in ("invalid_filter", "validation_error")


def test_keyset_pages_over_ties_and_missing_values(client, account, engine):
    rm = create(client, account)
    values = [0.5, 0.9, None, 0.9, 0.5, None, 0.9, 0.7, None, 0.5]
    versions = [
        register(client, engine, account, rm, metrics={} if x is None else {"accuracy": x})
        for x in values
    ]
    by_id = {v["id"]: x for v, x in zip(versions, values, strict=True)}

    def walk(order_by: str, limit: int) -> list[str]:
        out: list[str] = []
        cursor = None
        for _ in range(50):
            params: dict[str, Any] = {"order_by": order_by, "limit": limit}
            if cursor:
                params["cursor"] = cursor
            r = _search(client, account, **params)
            out += _ids(r)
            cursor = r.json()["next_cursor"]
            if cursor is None:
                return out
        raise AssertionError("no last page")

    ids = list(by_id)
    by_version = {v["id"]: v["version"] for v in versions}
    for limit in (1, 2, 3, 4, 20):
        assert walk("metrics.accuracy DESC", limit) == _expected(by_id, descending=True)
        assert walk("metrics.accuracy", limit) == _expected(by_id, descending=False)
        assert [by_version[i] for i in walk("version DESC", limit)] == list(range(10, 0, -1))
        assert [by_version[i] for i in walk("version ASC", limit)] == list(range(1, 11))
        newest = walk("created_at DESC", limit)
        assert sorted(newest) == sorted(ids) and len(set(newest)) == 10
        assert walk("created_at ASC", limit) == newest[::-1]


def _expected(by_id: dict[str, float | None], *, descending: bool) -> list[str]:
    """The order the search promises: the value (down or up), missing values last,
    ties by id in the same direction."""
    present = [i for i, x in by_id.items() if x is not None]
    missing = [i for i, x in by_id.items() if x is None]
    present.sort(key=lambda i: (by_id[i], uuid.UUID(i)), reverse=descending)
    missing.sort(key=uuid.UUID, reverse=descending)
    return present + missing


# --- registered models search ----------------------------------------------------------------


def test_registered_model_search(client, account, other, engine):
    churn = create(client, account, name="churn-predictor v2", tags={"team": "growth", "x": "1"})
    create(client, account, name="iris", tags={"team": "science"})
    public = create(
        client, other, name="Churn baseline", visibility="public", tags={"team": "growth"}
    )
    create(client, other, name="churn private")

    def names(who: Account | None, **params: Any) -> set[str]:
        r = client.get("/v1/registered-models", headers=who.headers if who else {}, params=params)
        assert r.status_code == 200, r.text
        return {m["name"] for m in r.json()["items"]}

    assert names(account, name="churn") == {"churn-predictor v2", "Churn baseline"}
    assert names(account, name="pred") == {"churn-predictor v2"}
    assert names(account, name="CHURN pre") == {"churn-predictor v2"}
    assert names(account, name="churn base") == {"Churn baseline"}
    assert names(account, tag="team:growth") == {"churn-predictor v2", "Churn baseline"}
    assert names(account, tag=["team:growth", "x"]) == {"churn-predictor v2"}
    assert names(account, owner="me") == {"churn-predictor v2", "iris"}
    assert names(account, owner=other.email) == {"Churn baseline"}
    assert names(account, owner=str(other.user_id)) == {"Churn baseline"}
    assert names(account, owner="nobody@example.com") == set()
    assert names(account, visibility="public") == {"Churn baseline"}
    assert names(None) == {"Churn baseline"}
    error(client.get("/v1/registered-models", params={"owner": "me"}), 422)
    for params in (
        {"name": "%%%"},
        {"name": "a\x00"},
        {"name": ""},
        {"tag": ":x"},
        {"visibility": "x"},
    ):
        error(client.get("/v1/registered-models", headers=account.headers, params=params), 422)
    # Keyset pages.
    page = client.get("/v1/registered-models", headers=account.headers, params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    assert churn["id"] and public["id"]


# --- query plans ----------------------------------------------------------------------------


def _captured_plans(engine: Engine, run: Any, setting: str | None = None) -> list[str]:
    """Run ``run()`` and EXPLAIN every SELECT it sent, with the same parameters
    (after ``setting``, a SET statement, when given)."""
    sent: list[tuple[str, Any]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    plans = []
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if setting:
            cur.execute(setting)
        for statement, parameters in sent:
            cur.execute("EXPLAIN " + statement, parameters)
            plans.append("\n".join(r[0] for r in cur.fetchall()))
    finally:
        raw.close()
    return plans


def test_metric_search_uses_the_metric_index(engine, session):
    db = _sql(engine)
    owner = uuid.UUID(str(insert(db, "users", email="plan@example.com")))
    rm = insert(db, "registered_models", user_id=owner, name="big", visibility="public")
    db(
        "INSERT INTO models (user_id, name, algorithm, problem_type)"
        " SELECT :u, 'm' || i, 'rf', 'classification' FROM generate_series(1, 3000) AS i",
        u=owner,
    )
    db(
        "INSERT INTO model_versions (registered_model_id, model_id)"
        " SELECT :r, id FROM models WHERE user_id = :u",
        r=rm,
        u=owner,
    )
    db(
        "INSERT INTO model_version_metrics (model_version_id, metric, split, value)"
        " SELECT v.id, m, 'test', random() FROM model_versions AS v,"
        " unnest(ARRAY['accuracy', 'f1', 'auc', 'precision', 'recall']) AS m"
    )
    db("ANALYZE")

    def search() -> None:
        hits = registry.search_versions(session, None, filter="metrics.accuracy > 0.999", limit=20)
        assert all(h.version.registered_model_id == rm for h in hits)
        registry.search_versions(
            session,
            None,
            filter="metrics.accuracy > 0.5",
            order=registry.parse_order("metrics.accuracy DESC"),
            limit=20,
        )
        session.rollback()

    plans = _captured_plans(engine, search)
    assert len(plans) == 2, plans
    for plan in plans:
        assert "ix_model_version_metrics_metric_split_value" in plan, plan


def test_name_search_can_use_its_index(engine, session):
    db = _sql(engine)
    owner = insert(db, "users", email="names@example.com")
    db(
        "INSERT INTO registered_models (user_id, name)"
        " SELECT :u, 'model ' || i FROM generate_series(1, 500) AS i",
        u=owner,
    )
    db("ANALYZE")
    statement = registry.search_registered_models(None, name="model 42")

    def search() -> None:
        session.scalars(statement).all()
        session.rollback()

    # Few rows: a scan is cheaper; without it, the planner shows the index serves.
    [plan] = _captured_plans(engine, search, "SET enable_seqscan = off")
    assert "ix_registered_models_name_search" in plan, plan


# --- the rule in one place ---------------------------------------------------------------------


def test_readable_agrees_with_can(sql, session):
    from factories import make_user

    owner, grantee, stranger = (uuid.UUID(str(make_user(sql))) for _ in range(3))
    models = {}
    for visibility in ModelVisibility:
        for grant_ in (None, *ModelPermission):
            rm = registry.create_registered_model(
                session, owner, f"{visibility}-{grant_}", visibility=visibility
            )
            if grant_ is not None:
                registry.grant_permission(session, rm.id, grantee, grant_)
            models[rm.id] = (visibility, grant_)
    session.commit()
    from sqlalchemy import select

    from database.models import RegisteredModel

    for who in (owner, grantee, stranger, None):
        for permission in ModelPermission:
            listed = set(
                session.scalars(
                    select(RegisteredModel.id).where(
                        RegisteredModel.id.in_(models), registry.readable(who, permission)
                    )
                )
            )
            checked = {m for m in models if registry.can(session, who, m, permission)}
            assert listed == checked, (who, permission)
    # Spot checks of the rule itself.
    sample = next(m for m, (vis, g) in models.items() if vis == "private" and g == "deploy")
    assert not registry.can(session, grantee, sample, ModelPermission.READ)
    sample = next(m for m, (vis, g) in models.items() if vis == "public" and g is None)
    assert registry.can(session, None, sample, ModelPermission.DOWNLOAD)
    assert not registry.can(session, None, sample, ModelPermission.DEPLOY)


# --- as the apps' least-privilege role ----------------------------------------------------------


@pytest.fixture
def role_client(db_url: Any, engine: Engine, api_settings: ApiSettings) -> Iterator[TestClient]:
    name = f"app_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
        grant(conn, name)
    eng = errors.install(create_engine(db_url.set(username=name), pool_size=4))
    try:
        with TestClient(make_app(eng, api_settings)) as c:
            yield c
    finally:
        eng.dispose()
        with engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{name}"'))
            conn.execute(text(f'DROP ROLE "{name}"'))


def test_the_routes_work_as_the_apps_role(role_client, engine):
    client = role_client
    owner, grantee = signup(client), signup(client)
    rm = create(client, owner, visibility="shared", tags={"team": "x"})
    v = register(client, engine, owner, rm, aliases=["champion"])
    r = client.post(
        f"/v1/registered-models/{rm['id']}/permissions",
        headers=owner.headers,
        json={"email": grantee.email, "permission": "download"},
    )
    assert r.status_code == 201, r.text
    assert _ids(_search(client, grantee, filter="tags.team = 'x' and metrics.accuracy > 0.5")) == [
        v["id"]
    ]
    r = client.patch(
        f"/v1/model-versions/{v['id']}", headers=owner.headers, json={"status": "archived"}
    )
    assert r.status_code == 200, r.text
    lineage = client.get(f"/v1/model-versions/{v['id']}/lineage", headers=grantee.headers)
    assert lineage.status_code == 200, lineage.text
    assert (
        client.delete(f"/v1/registered-models/{rm['id']}", headers=owner.headers).status_code == 204
    )
    assert (
        json.loads(client.get("/v1/registered-models", headers=owner.headers).text)["items"] == []
    )
