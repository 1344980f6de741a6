"""Schemathesis against the app's own OpenAPI, in-process (ASGI), on the test database.

Every operation gets generated requests, valid ones (positive) and invalid ones
(negative), sent with a real API key. Positive requests must get no 5xx, only
documented statuses and content types, and bodies that match the documented
schemas; negative ones must get no 5xx. The number of examples is bounded so the
whole sweep stays within a few seconds per operation.

Beyond what the schema alone suggests, the generation is steered to the inputs
that once gave 500s: datetimes at the edge of the calendar (every ``date-time``
value, and the ``cursor`` of every paginated list, which decodes to one), and
bodies over the size limit (every operation with a body). Those must get their
4xx (422, 413), and the sweep checks that each kind was sent.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.formats import rfc3339_values, unregister_string_format
from sqlalchemy import Engine

from api.settings import ApiSettings
from api.uploads import FRAMING_BYTES
from database.seed import seed

from api_helpers import (
    fake_stripe_server,
    give_credits,
    make_app,
    make_dataset,
    make_workflow,
    rows,
    signup,
)

POSITIVE_EXAMPLES = 8
NEGATIVE_EXAMPLES = 4
STRICT = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _settings(examples: int) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        print_blob=True,
    )


#: A small JSON limit, so an oversized body is cheap to generate (uploads keep theirs).
MAX_JSON_BYTES = 16 * 1024

#: Valid RFC 3339 text, which Python parses, but not a datetime every layer holds.
EDGE_DATETIMES = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
]


def _cursor(key: str) -> str:
    raw = json.dumps([key, "00000000-0000-0000-0000-000000000000"]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


EDGE_CURSORS = [_cursor(v) for v in EDGE_DATETIMES]


@pytest.fixture
def edge_datetimes() -> Iterator[None]:
    """Every generated ``date-time`` is, half of the time, one at the edge of the calendar."""
    schemathesis.openapi.format(
        "date-time", st.sampled_from(EDGE_DATETIMES) | rfc3339_values("date-time")
    )
    yield
    unregister_string_format("date-time")


def _has_inputs(operation: Any) -> bool:
    raw = operation.definition.raw
    return bool(raw.get("parameters") or raw.get("requestBody"))


def _has_cursor(operation: Any) -> bool:
    return any(p.get("name") == "cursor" for p in operation.definition.raw.get("parameters", []))


def _body_limit(operation: Any, settings: ApiSettings) -> int | None:
    """The size past which this operation's body is refused; None without a body."""
    content = operation.definition.raw.get("requestBody", {}).get("content")
    if not content:
        return None
    if "multipart/form-data" in content:
        return settings.max_upload_bytes + FRAMING_BYTES
    if operation.definition.raw.get("x-body-limit") == "predict":
        return settings.max_predict_bytes  # a prediction's own limit (api.limits)
    return settings.max_json_bytes


def _steer(schema: Any, settings: ApiSettings) -> None:
    """Hooks of this schema: edge-date cursors, oversized bodies."""

    @schema.hook
    def flatmap_query(context: Any, query: Any) -> Any:
        if not isinstance(query, dict) or not _has_cursor(context.operation):
            return st.just(query)
        return st.just(query) | st.sampled_from([{**query, "cursor": c} for c in EDGE_CURSORS])

    @schema.hook
    def flatmap_body(context: Any, body: Any) -> Any:
        limit = _body_limit(context.operation, settings)
        if not isinstance(body, dict) or limit is None:
            return st.just(body)
        # One in four bodies gets a field past the limit (a string one if there is);
        # where the body has datetimes, one in two gets an edge one.
        field = next((k for k, v in body.items() if isinstance(v, str)), "padding")
        bodies = [st.just({**body, field: "x" * (limit + 1)})]
        dates = _datetime_fields(context.operation)
        if dates:
            edges = st.sampled_from(EDGE_DATETIMES)
            bodies += 2 * [edges.map(lambda v: {**body, **dict.fromkeys(dates, v)})]
        bodies += (4 - len(bodies)) * [st.just(body)]
        return st.integers(0, 3).flatmap(lambda i: bodies[i])


def _datetime_fields(operation: Any) -> list[str]:
    """The ``date-time`` properties of the operation's JSON body."""
    content = operation.definition.raw.get("requestBody", {}).get("content", {})
    ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
    if not ref:
        return []
    model = operation.schema.raw_schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return [
        name
        for name, prop in model.get("properties", {}).items()
        if '"date-time"' in json.dumps(prop)
    ]


def _sent(case: Any, limit: int | None) -> str | None:
    """Which steered input this case carries, if any."""
    body = case.body
    if isinstance(body, dict):
        if limit is not None and any(isinstance(v, str) and len(v) > limit for v in body.values()):
            return "oversized_body"
        if any(body.get(k) in EDGE_DATETIMES for k in _datetime_fields(case.operation)):
            return "edge_datetime"
    if isinstance(case.query, dict) and case.query.get("cursor") in EDGE_CURSORS:
        return "edge_cursor"
    return None


def _sweep(
    schema: Any,
    headers: dict[str, str],
    mode: GenerationMode,
    examples: int,
    settings: ApiSettings,
    sent: Counter[str],
    undelete: Any = None,
) -> list[str]:
    failures: list[str] = []
    checks = STRICT if mode == GenerationMode.POSITIVE else [not_a_server_error]
    for result in schema.get_all_operations():
        operation = result.ok()

        @_settings(examples)
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            kind = _sent(case, _body_limit(case.operation, settings))
            response = case.call_and_validate(headers=headers, checks=checks)
            if undelete is not None and case.operation.label == "DELETE /v1/me":
                undelete()  # the account the sweep runs as is deleted: bring it back
            if response.status_code == 403 and '"admin_required"' in response.text:
                return  # an admin route: the account is no admin, refused before its input
            if kind is not None:
                sent[kind] += 1
                expected = 413 if kind == "oversized_body" else 422
                if mode == GenerationMode.POSITIVE:
                    assert response.status_code == expected, (kind, response.text[:300])
                else:  # other parts may be invalid too (a broken key is 401 first)
                    assert 400 <= response.status_code < 500, (kind, response.text[:300])

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            # No invalid request exists for an operation without parameters or body.
            assert mode == GenerationMode.NEGATIVE and not _has_inputs(operation), operation.label
        except Exception as exc:  # collect every operation's failure, then report all
            failures.append(f"{mode.value} {operation.label}: {type(exc).__name__}: {exc}"[:2000])
    return failures


@pytest.fixture
def stripe_base() -> Iterator[str]:
    """POST /v1/credits/checkout talks to a local Stripe-like server (api_helpers)."""
    with fake_stripe_server() as (base, _):
        yield base


@pytest.mark.usefixtures("edge_datetimes")
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_no_schema_violations(
    engine: Engine, api_settings: ApiSettings, mode: GenerationMode, stripe_base: str
) -> None:
    seed(engine)
    settings = api_settings.model_copy(
        update={
            "max_json_bytes": MAX_JSON_BYTES,
            "stripe_api_key": SecretStr("sk_test_schemathesis"),
            "stripe_api_base": stripe_base,
        }
    )
    app = make_app(engine, settings)
    with TestClient(app) as client:
        account = signup(client)
        give_credits(engine, account.user_id, 1_000)
        # An admin, so the admin routes are swept beyond their 403 (`automl-db users promote`).
        rows(engine, "UPDATE users SET role = 'admin' WHERE id = :u", u=account.user_id)
        dataset = make_dataset(client, account)
        make_workflow(client, account, dataset["dataset"]["id"])
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    examples = POSITIVE_EXAMPLES if mode == GenerationMode.POSITIVE else NEGATIVE_EXAMPLES
    _steer(schema, settings)
    sent: Counter[str] = Counter()
    failures = _sweep(
        schema,
        account.headers,
        mode,
        examples,
        settings,
        sent,
        undelete=lambda: rows(
            engine,
            "UPDATE users SET is_deleted = false, deleted_at = NULL WHERE id = :u",
            u=account.user_id,
        ),
    )
    assert not failures, "\n\n".join(failures)
    # The steering reached the API (the checks above saw their 4xx).
    assert sent["edge_cursor"] and sent["oversized_body"], sent
    if mode == GenerationMode.POSITIVE:
        assert sent["edge_datetime"], sent
