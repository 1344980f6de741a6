"""What every resource module imports."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from automl._core import (
    AsyncMode,
    Call,
    Destination,
    FileSource,
    M,
    Progress,
    Resource,
    SyncMode,
    body,
    flow,
    ident,
    op,
    paged,
    parse_as,
    path,
)
from automl._model import Model, Page

#: An id: a string, a UUID, or a model that has an ``id`` (``client.jobs.get(job)``).
Id = str | UUID | Model

__all__ = [
    "Any",
    "AsyncMode",
    "Call",
    "Destination",
    "FileSource",
    "Id",
    "M",
    "Model",
    "Page",
    "Progress",
    "Resource",
    "SyncMode",
    "body",
    "flow",
    "ident",
    "op",
    "paged",
    "parse_as",
    "path",
    "returns",
    "page_of",
]


def returns(tp: Any) -> Any:
    """The parser of an answer of type ``tp``."""
    return parse_as(tp)


def page_of(tp: Any) -> Any:
    return parse_as(Page[tp])
