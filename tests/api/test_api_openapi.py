"""The API documents itself: /openapi.json describes every operation, schema, property
and tag, with readable operation ids, examples of request bodies, its errors, and the
workflow nodes as a discriminated union (docs/api.md, "How the API documents itself").

A route or field added without its description fails here, naming it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI

from api.main import create_app
from api.schemas import Input
from api.settings import ApiSettings
from database.models import NodeType
from pipeline.definition import WorkflowDefinition
from pipeline.estimators import ALGORITHM_NAMES, RANGES

OPERATION_ID = re.compile(r"^[a-z]+(_[a-z]+)*$")
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # No database is needed to build the document.
    data = tmp_path_factory.mktemp("openapi")
    app: FastAPI = create_app(ApiSettings(data_dir=data, storage_url=str(data / "storage")))
    return app.openapi()


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "anyOf" in schema:  # an optional body: the model or null
        schema = next((s for s in schema["anyOf"] if "$ref" in s), schema)
    ref = schema.get("$ref")
    if ref:
        return spec["components"]["schemas"][ref.rsplit("/", 1)[1]]  # type: ignore[no-any-return]
    return schema


def test_operation_ids_are_readable_and_unique(spec: dict[str, Any]) -> None:
    ids = [op.get("operationId", "") for _, _, op in _operations(spec)]
    bad = [i for i in ids if not OPERATION_ID.match(i)]
    assert not bad, f"operationIds not matching {OPERATION_ID.pattern}: {bad}"
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    # Spot checks: tag + what the endpoint does.
    for expected in (
        "datasets_create",
        "datasets_list",
        "datasets_get",
        "datasets_get_profile",
        "workflows_run",
        "jobs_list_logs",
        "deployments_predict",
        "registry_set_alias",
        "health_ready",
    ):
        assert expected in ids


def test_every_operation_has_a_summary_and_a_description(spec: dict[str, Any]) -> None:
    missing = [
        f"{method.upper()} {path}"
        for method, path, op in _operations(spec)
        if not op.get("summary") or not (op.get("description") or "").strip()
    ]
    assert not missing, f"operations without a summary or description: {missing}"


def test_every_json_body_has_an_example(spec: dict[str, Any]) -> None:
    missing = []
    for method, path, op in _operations(spec):
        content = op.get("requestBody", {}).get("content", {})
        body = content.get("application/json")
        if body is None:
            continue
        schema = _resolve(spec, body.get("schema", {}))
        if not (body.get("example") or body.get("examples") or schema.get("examples")):
            missing.append(f"{method.upper()} {path}")
    assert not missing, f"JSON request bodies without an example: {missing}"


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def test_every_example_validates_against_its_model(spec: dict[str, Any]) -> None:
    """Every request body's example is one the API accepts (as far as its model says),
    the workflow example's definition included."""
    checked = 0
    for model in _subclasses(Input):
        extra = model.model_config.get("json_schema_extra")
        if isinstance(extra, dict) and "examples" in extra:
            for example in extra["examples"]:  # type: ignore[union-attr]
                model.model_validate(example)
                checked += 1
    assert checked >= 25
    body = spec["components"]["schemas"]["WorkflowIn"]
    for example in body["examples"]:
        WorkflowDefinition.model_validate(example["definition"])


def test_every_schema_and_property_is_described(spec: dict[str, Any]) -> None:
    schemas: dict[str, Any] = spec["components"]["schemas"]
    no_description = sorted(n for n, s in schemas.items() if not s.get("description"))
    assert not no_description, f"schemas without a description: {no_description}"
    properties = sorted(
        f"{name}.{prop}"
        for name, schema in schemas.items()
        for prop, value in schema.get("properties", {}).items()
        if not (value.get("description") or "").strip()
    )
    assert not properties, f"properties without a description: {properties}"
    # Parameters too (query, path, header).
    parameters = sorted(
        f"{method.upper()} {path} {p['name']}"
        for method, path, op in _operations(spec)
        for p in op.get("parameters", [])
        if not (p.get("description") or "").strip()
    )
    assert not parameters, f"parameters without a description: {parameters}"


def test_descriptions_say_more_than_the_name(spec: dict[str, Any]) -> None:
    """A description that only repeats its property's name ("Id", "created at") is not one."""
    schemas: dict[str, Any] = spec["components"]["schemas"]
    echoes = sorted(
        f"{name}.{prop}"
        for name, schema in schemas.items()
        for prop, value in schema.get("properties", {}).items()
        if re.sub(r"[^a-z]", "", (value.get("description") or "").lower())
        == re.sub(r"[^a-z]", "", prop.lower())
    )
    assert not echoes, echoes


def test_every_tag_is_described(spec: dict[str, Any]) -> None:
    described = {t["name"]: t.get("description") for t in spec.get("tags", [])}
    used = {tag for _, _, op in _operations(spec) for tag in op.get("tags", [])}
    assert all(op.get("tags") for _, _, op in _operations(spec))
    assert used <= set(described), sorted(used - set(described))
    assert all(described[t] for t in used)


def test_errors_are_documented(spec: dict[str, Any]) -> None:
    """Every error answer is the ErrorBody; an operation with a path parameter documents
    404, one that needs a key 401, one with a body or parameters 422."""
    error = spec["components"]["schemas"]["ErrorBody"]
    assert error["description"] and error["properties"]["error"]["description"]
    problems = []
    for method, path, op in _operations(spec):
        responses = op["responses"]
        for status, response in responses.items():
            if status.startswith("4"):
                ref = response["content"]["application/json"]["schema"]["$ref"]
                if not ref.endswith("/ErrorBody"):
                    problems.append(f"{method.upper()} {path} {status}")
        wanted = set()
        if any(p["in"] == "path" for p in op.get("parameters", [])):
            wanted.add("404")
        if op.get("security"):
            wanted.add("401")
        if op.get("parameters") or op.get("requestBody"):
            wanted.add("422")
        problems.extend(f"{method.upper()} {path} lacks {s}" for s in wanted - set(responses))
    assert not problems, problems


def test_workflow_nodes_are_a_discriminated_union(spec: dict[str, Any]) -> None:
    schemas: dict[str, Any] = spec["components"]["schemas"]
    node = schemas["WorkflowNode"]
    assert node["discriminator"]["propertyName"] == "type"
    mapping = node["discriminator"]["mapping"]
    assert set(mapping) == {t.value for t in NodeType}
    assert sorted(r["$ref"] for r in node["oneOf"]) == sorted(mapping.values())
    for node_type, ref in mapping.items():
        variant = _resolve(spec, {"$ref": ref})
        assert variant["properties"]["type"]["const"] == node_type
        assert "config" in variant["properties"]
        assert variant["additionalProperties"] is False
    # A model node's config: discriminated by the algorithm, each with its hyperparameters.
    model = schemas["ModelConfig"]
    assert model["discriminator"]["propertyName"] == "algorithm"
    assert set(model["discriminator"]["mapping"]) == set(ALGORITHM_NAMES)
    forest = schemas["RandomForestConfig"]["properties"]["hyperparameters"]
    assert forest["additionalProperties"] is False
    n_estimators = forest["properties"]["n_estimators"]
    assert n_estimators["type"] == "integer"
    assert (n_estimators["minimum"], n_estimators["maximum"]) == (1, RANGES["n_estimators"].high)
    assert n_estimators["default"] == 100 and n_estimators["description"]
    assert "n_jobs" not in forest["properties"]  # set by the platform
    criterion = str(forest["properties"]["criterion"])
    assert "gini" in criterion and "squared_error" in criterion
    solver = schemas["LogisticRegressionConfig"]["properties"]["hyperparameters"]["properties"]
    assert "lbfgs" in solver["solver"]["enum"]
    assert solver["C"]["exclusiveMinimum"] == 0
    automl = schemas["AutoMLConfig"]["properties"]["time_budget_s"]
    assert (automl["minimum"], automl["maximum"]) == (1, 3600)


def test_hyperparameter_schemas_agree_with_validation() -> None:
    """What the schema allows at its bounds, the API accepts; just past them, refuses."""
    from pipeline.definition import MODEL_CONFIG_VARIANTS

    def definition(algorithm: str, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "nodes": [
                {"id": "d", "type": "dataset", "config": {}},
                {
                    "id": "m",
                    "type": "model",
                    "config": {"algorithm": algorithm, "hyperparameters": params},
                },
            ],
            "edges": [{"source": "d", "target": "m"}],
        }

    for algorithm, variant in MODEL_CONFIG_VARIANTS.items():
        props = variant.model_json_schema()["properties"]["hyperparameters"]["properties"]
        for name, prop in props.items():
            options = prop.get("anyOf", [prop])
            for option in options:
                if option.get("type") != "integer" or "maximum" not in option:
                    continue
                WorkflowDefinition.model_validate(definition(algorithm, {name: option["maximum"]}))
                with pytest.raises(ValueError, match=name):
                    WorkflowDefinition.model_validate(
                        definition(algorithm, {name: option["maximum"] + 1})
                    )
