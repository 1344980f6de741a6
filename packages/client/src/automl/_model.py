"""The base of every model the client returns."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, PrivateAttr

T = TypeVar("T")


class Model(BaseModel):
    """A response of the API. Fields the server adds after this client was built are
    kept (``extra="allow"``), so an older client keeps working against a newer API."""

    model_config = ConfigDict(
        extra="allow", populate_by_name=True, protected_namespaces=(), use_enum_values=False
    )

    #: The resource group that fetched this object (its methods call back through it).
    _client: Any = PrivateAttr(default=None)


class Page(Model, Generic[T]):
    """One page of a list: its items and the cursor of the next page (None on the last)."""

    items: list[T]
    next_cursor: str | None = None
