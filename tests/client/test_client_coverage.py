"""The client covers the API: every operation of /openapi.json has a client method,
every client method calls an operation that exists, every method is exercised by a
test of tests/client, and every schema the API answers with has a model.

No database: the calls are built (a method returns a description of its request),
not sent. After a new route, these fail until the client and its tests follow."""

from __future__ import annotations

import inspect
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import automl
from api.main import create_app
from api.settings import ApiSettings
from automl import models
from automl._client import _Api
from automl._core import Call, Endpoint, Flow, Paged, _Endpoint

HERE = Path(__file__).parent
UUID = "00000000-0000-4000-8000-000000000001"


@cache
def spec() -> dict[str, Any]:
    return create_app(ApiSettings()).openapi()


#: Paths that are the platform's plumbing, not operations a user's client calls
#: (Prometheus' scrape, the documentation's pages and assets), should they be listed.
NOT_FOR_CLIENTS = ("/metrics", "/docs", "/redoc", "/openapi.json", "/static/")


def operations() -> dict[tuple[str, str], str]:
    """(METHOD, path template) -> operationId, for every operation of the API."""
    out = {}
    for template, ops in spec()["paths"].items():
        if template.startswith(NOT_FOR_CLIENTS):
            continue
        for method, op in ops.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                out[(method.upper(), template)] = op.get("operationId", "")
    return out


def endpoints() -> list[tuple[str, str, _Endpoint[Any, Any]]]:
    """(group, method name, descriptor) of every client method (aliases once)."""
    out = []
    for group, cls in _Api.GROUPS.items():
        seen: set[int] = set()
        for name, value in vars(cls).items():
            if isinstance(value, _Endpoint) and id(value) not in seen:
                seen.add(id(value))
                out.append((group, name, value))
    return out


#: A value for each required parameter of a method, by name (a string otherwise).
SAMPLES: dict[str, Any] = {
    "version_number": 1,
    "current_step": 1,
    "threshold": 1,
    "amount": 1,
    "version": 1,
    "file": b"a,b\n1,2\n",
    "data": [{"a": 1}],
    "definition": {"nodes": [], "edges": []},
    "payload": b"{}",
    "plot": "roc",
    "month": "2026-01",
    "alias": "prod",
}


def sample_call(ep: _Endpoint[Any, Any]) -> Call[Any]:
    params = list(inspect.signature(ep.fn).parameters.values())[1:]
    args = []
    for p in params:
        if p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) or p.default is not p.empty:
            continue
        args.append(SAMPLES.get(p.name, UUID if p.name.endswith("_id") else "x"))
    call = ep.fn(object(), *args)
    assert isinstance(call, Call)
    return call


def match(call: Call[Any]) -> tuple[str, str] | None:
    for method, template in operations():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if method == call.method and re.match(pattern, call.path):
            return method, template
    return None


def client_routes() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for group, name, ep in endpoints():
        if isinstance(ep, Flow):
            continue
        route = match(sample_call(ep))
        assert route is not None, f"client.{group}.{name} calls no route of the API"
        found.setdefault(route, []).append(f"{group}.{name}")
    return found


def test_every_operation_of_the_api_has_a_client_method() -> None:
    covered = client_routes()
    missing = [
        f"{method} {template} ({op_id})"
        for (method, template), op_id in sorted(operations().items())
        if (method, template) not in covered
    ]
    assert not missing, "operations without a client method:\n" + "\n".join(missing)
    assert len(operations()) >= 100


def test_every_client_method_calls_an_operation_that_exists() -> None:
    for group, name, ep in endpoints():
        if isinstance(ep, (Endpoint, Paged)):
            call = sample_call(ep)
            assert match(call), f"client.{group}.{name}: {call.method} {call.path}"


def test_paged_methods_are_the_lists_with_a_cursor() -> None:
    """A method is paged exactly when its operation takes ``cursor`` (keyset pagination)."""
    by_route = {}
    for template, ops in spec()["paths"].items():
        if template.startswith(NOT_FOR_CLIENTS):
            continue
        for method, op in ops.items():
            names = {p["name"] for p in op.get("parameters", [])}
            by_route[(method.upper(), template)] = "cursor" in names
    for group, name, ep in endpoints():
        if isinstance(ep, Flow):
            continue
        route = match(sample_call(ep))
        assert route is not None
        assert by_route[route] == isinstance(ep, Paged), f"client.{group}.{name}"


def test_every_client_method_is_exercised_by_a_test() -> None:
    """Each method appears as ``.<group>.<method>(`` in a test of tests/client, which
    runs it against the real API (this file only builds the calls)."""
    text = "\n".join(p.read_text() for p in HERE.glob("test_*.py") if p.name != Path(__file__).name)
    missing = [
        f"client.{group}.{name}"
        for group, name, _ in endpoints()
        if not re.search(rf"\.{group}\.{name}\(", text)
    ]
    assert not missing, "client methods no test calls:\n" + "\n".join(missing)


def test_the_models_cover_every_schema_the_api_answers_with() -> None:
    schemas = spec()["components"]["schemas"]
    needed = set()
    for ops in spec()["paths"].values():
        for op in ops.values():
            for status, response in op.get("responses", {}).items():
                if not status.startswith("2"):
                    continue
                for media in response.get("content", {}).values():
                    needed |= set(re.findall(r"#/components/schemas/(\w+)", str(media)))
    names = set(dir(models))
    missing = []
    for name in sorted(needed):
        page = re.match(r"^Page_(\w+?)_$", name)
        target = page.group(1) if page else name
        if target not in names:
            missing.append(name)
            continue
        props = set(schemas[name].get("properties", {}))
        fields = {f.alias or n for n, f in getattr(models, target).model_fields.items()}
        if not page and props - fields:
            missing.append(f"{name}: {sorted(props - fields)}")
    assert not missing, "run packages/client/scripts/generate_models.py; missing: " + ", ".join(
        missing
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_both_clients_have_every_group_and_method(mode: str) -> None:
    cls = automl.Client if mode == "sync" else automl.AsyncClient
    c = cls("http://127.0.0.1:9", api_key="aml_x")
    for group, name, _ in endpoints():
        assert callable(getattr(getattr(c, group), name)), f"{group}.{name}"
