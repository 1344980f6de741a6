"""Schemathesis against the app's own OpenAPI, in-process (ASGI), on the test database.

Every operation gets generated requests, valid ones (positive) and invalid ones
(negative), sent with a real API key. Positive requests must get no 5xx, only
documented statuses and content types, and bodies that match the documented
schemas; negative ones must get no 5xx. The number of examples is bounded so the
whole sweep stays within a few seconds per operation.
"""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine

from api.settings import ApiSettings
from database.seed import seed

from api_helpers import give_credits, make_app, make_dataset, make_workflow, signup

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


def _has_inputs(operation: Any) -> bool:
    raw = operation.definition.raw
    return bool(raw.get("parameters") or raw.get("requestBody"))


def _sweep(schema: Any, headers: dict[str, str], mode: GenerationMode, examples: int) -> list[str]:
    failures: list[str] = []
    checks = STRICT if mode == GenerationMode.POSITIVE else [not_a_server_error]
    for result in schema.get_all_operations():
        operation = result.ok()

        @_settings(examples)
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=checks)

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            # No invalid request exists for an operation without parameters or body.
            assert mode == GenerationMode.NEGATIVE and not _has_inputs(operation), operation.label
        except Exception as exc:  # collect every operation's failure, then report all
            failures.append(f"{mode.value} {operation.label}: {type(exc).__name__}: {exc}"[:2000])
    return failures


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_no_schema_violations(
    engine: Engine, api_settings: ApiSettings, mode: GenerationMode
) -> None:
    seed(engine)
    app = make_app(engine, api_settings)
    with TestClient(app) as client:
        account = signup(client)
        give_credits(engine, account.user_id, 1_000)
        dataset = make_dataset(client, account)
        make_workflow(client, account, dataset["dataset"]["id"])
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    examples = POSITIVE_EXAMPLES if mode == GenerationMode.POSITIVE else NEGATIVE_EXAMPLES
    failures = _sweep(schema, account.headers, mode, examples)
    assert not failures, "\n\n".join(failures)
