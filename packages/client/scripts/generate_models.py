"""Write ``src/automl/models.py`` from the API's OpenAPI document.

    uv run python packages/client/scripts/generate_models.py            # from api.main
    uv run python packages/client/scripts/generate_models.py spec.json  # from a file

Every schema of ``components.schemas`` becomes a pydantic model (``extra="allow"``, so
a field the server adds later does not break an older client) or a ``StrEnum``;
``Page_X_`` schemas become the generic ``Page[X]``. Run it after changing the API's
schemas; tests/client/test_client_coverage.py checks that the models still cover
every schema the API answers with.
"""

from __future__ import annotations

import json
import keyword
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "src" / "automl" / "models.py"

#: Models that get methods bound to the client that fetched them (automl._mixins).
MIXINS = {
    "JobOut": "JobMixin",
    "JobDetail": "JobMixin",
    "DeploymentOut": "DeploymentMixin",
    "ModelVersionOut": "ModelVersionMixin",
    "ModelVersionDetail": "ModelVersionMixin",
    "DatasetOut": "DatasetMixin",
    "DatasetDetail": "DatasetMixin",
    "WorkflowOut": "WorkflowMixin",
    "BatchOut": "BatchMixin",
    "EvaluationOut": "EvaluationMixin",
}
#: Attribute names a field may not take on a pydantic model.
RESERVED = {"model_config", "model_fields", "schema", "json", "dict", "copy", "validate"}
TQ, SQ = '"' * 3, "'" * 3
SYMBOLS = {">=": "GE", "<=": "LE", ">": "GT", "<": "LT", "==": "EQ", "!=": "NE", "=": "EQ"}
PAGE = re.compile(r"^Page_(\w+?)_$")


def load_spec(argv: list[str]) -> dict[str, Any]:
    if argv:
        return json.loads(Path(argv[0]).read_text())
    from api.main import create_app

    return create_app().openapi()


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def class_name(name: str) -> str:
    m = PAGE.match(name)
    if m:
        return f"Page[{class_name(m.group(1))}]"
    return re.sub(r"\W", "_", name)


def py_type(s: dict[str, Any], enums: set[str]) -> str:
    if "$ref" in s:
        name = ref_name(s["$ref"])
        cls = class_name(name)
        return f"{cls} | str" if name in enums else cls
    for key in ("anyOf", "oneOf"):
        if key in s:
            parts: list[str] = []
            for sub in s[key]:
                t = py_type(sub, enums)
                for p in t.split(" | "):
                    if p not in parts:
                        parts.append(p)
            if "None" in parts:  # None last
                parts = [p for p in parts if p != "None"] + ["None"]
            return " | ".join(parts)
    if "allOf" in s and len(s["allOf"]) == 1:
        return py_type(s["allOf"][0], enums)
    if "const" in s or "enum" in s:
        # Inline choices stay open (str): a value the server adds later still parses.
        return {"integer": "int", "number": "float", "boolean": "bool"}.get(s.get("type"), "str")
    t = s.get("type")
    if isinstance(t, list):
        return " | ".join(py_type({**s, "type": x}, enums) for x in t)
    fmt = s.get("format")
    if t == "string":
        return {"uuid": "UUID", "date-time": "datetime", "date": "date", "binary": "bytes"}.get(
            fmt or "", "str"
        )
    if t == "integer":
        return "int"
    if t == "number":
        return "float"
    if t == "boolean":
        return "bool"
    if t == "null":
        return "None"
    if t == "array":
        return f"list[{py_type(s.get('items', {}), enums)}]"
    if t == "object" or "additionalProperties" in s:
        extra = s.get("additionalProperties")
        value = py_type(extra, enums) if isinstance(extra, dict) and extra else "Any"
        return f"dict[str, {value}]"
    return "Any"


def default_repr(s: dict[str, Any]) -> str:
    if "default" not in s:
        return "None"
    d = s["default"]
    if isinstance(d, (list, dict)):
        return f"Field(default_factory=lambda: {d!r})"
    return repr(d)


def docstring(text: str, indent: str = "    ") -> list[str]:
    text = text.strip().replace("\\", "\\\\").replace(TQ, SQ)
    if not text:
        return []
    wrapped: list[str] = []
    for para in text.split("\n"):
        wrapped += textwrap.wrap(para, 88 - len(indent)) or [""]
    if len(wrapped) == 1:
        return [f"{indent}{TQ}{wrapped[0]}{TQ}", ""]
    rest = [f"{indent}{w}" if w else "" for w in wrapped[1:]]
    return [f"{indent}{TQ}{wrapped[0]}", *rest, f"{indent}{TQ}", ""]


def field_name(name: str) -> tuple[str, str | None]:
    py = re.sub(r"\W", "_", name)
    from pydantic import BaseModel

    if keyword.iskeyword(py) or py in RESERVED or hasattr(BaseModel, py):
        py += "_"
    if py[0].isdigit():
        py = "f_" + py
    return py, (name if py != name else None)


def order(schemas: dict[str, Any]) -> list[str]:
    """Schemas in dependency order (a model before the models using it)."""
    done: list[str] = []
    seen: set[str] = set()

    def deps(x: Any) -> set[str]:
        out: set[str] = set()
        if isinstance(x, dict):
            if "$ref" in x:
                out.add(ref_name(x["$ref"]))
            for v in x.values():
                out |= deps(v)
        elif isinstance(x, list):
            for v in x:
                out |= deps(v)
        return out

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for d in sorted(deps(schemas[name])):
            if d in schemas and d != name:
                visit(d)
        done.append(name)

    for name in sorted(schemas):
        visit(name)
    return done


def generate(spec: dict[str, Any]) -> str:
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})
    enums = {n for n, s in schemas.items() if "enum" in s and s.get("type", "string") == "string"}
    lines = [
        '"""The API\'s schemas as pydantic models: GENERATED by',
        "packages/client/scripts/generate_models.py from the API's OpenAPI document; do not",
        'edit by hand (run the script)."""',
        "",
        "from __future__ import annotations",
        "",
        "from datetime import date, datetime  # noqa: F401",
        "from enum import StrEnum",
        "from typing import Any, Literal  # noqa: F401",
        "from uuid import UUID  # noqa: F401",
        "",
        "from pydantic import Field  # noqa: F401",
        "",
        "from automl._mixins import (  # noqa: F401",
        *[f"    {m}," for m in sorted(set(MIXINS.values()))],
        ")",
        "from automl._model import Model, Page",
        "",
        "__all__ = [",
        '    "Model",',
        '    "Page",',
    ]
    names = [n for n in order(schemas) if not PAGE.match(n)]
    lines += [f'    "{class_name(n)}",' for n in names]
    lines += ["]", ""]
    for name in names:
        s = schemas[name]
        cls = class_name(name)
        doc = docstring(s.get("description") or "")
        lines.append("")
        if name in enums:
            lines.append(f"class {cls}(StrEnum):")
            lines += doc
            for v in s["enum"]:
                member = SYMBOLS.get(str(v)) or re.sub(r"\W", "_", str(v)).upper().strip("_")
                if not member or member[0].isdigit() or keyword.iskeyword(member):
                    member = "V_" + member
                lines.append(f"    {member} = {v!r}")
            lines.append("")
            continue
        if s.get("type", "object") != "object" or "properties" not in s:
            alias = py_type(s, enums)
            lines.append(f"{cls} = {alias if alias != 'Any' else 'dict[str, Any]'}")
            lines.append("")
            continue
        bases = f"{MIXINS[name]}, Model" if name in MIXINS else "Model"
        lines.append(f"class {cls}({bases}):")
        lines += doc
        required = set(s.get("required", []))
        props: dict[str, Any] = s.get("properties", {})
        if not props:
            lines.append("    pass")
        for pname, ps in props.items():
            py, alias = field_name(pname)
            t = py_type(ps, enums)
            if pname in required:
                value = f" = Field(alias={alias!r})" if alias else ""
            else:
                if "None" not in t.split(" | ") and "default" not in ps:
                    t += " | None"
                d = default_repr(ps)
                if alias:
                    if d.startswith("Field("):
                        d = d[:-1] + f", alias={alias!r})"
                    else:
                        d = f"Field(default={d}, alias={alias!r})"
                value = f" = {d}"
            lines.append(f"    {py}: {t}{value}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> None:
    OUT.write_text(generate(load_spec(argv)))
    subprocess.run(["ruff", "format", "--quiet", str(OUT)], check=False)
    subprocess.run(["ruff", "check", "--fix", "--quiet", str(OUT)], check=False)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1:])
