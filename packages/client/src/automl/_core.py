"""One description of each operation, run by a sync or an async runner.

A resource method (``automl.resources``) is written once and returns a :class:`Call`:
the request (method, path, query, body, upload, download) and how to read its
answer. The descriptors :func:`op`, :func:`paged` and :func:`flow` turn that method
into what the caller gets: on a :class:`automl.Client` the method sends the call and
returns the answer; on an :class:`automl.AsyncClient` it returns an awaitable (or an
async iterator, for a paged list). A :func:`flow` is a generator of calls (sans-I/O),
for operations of several requests (``jobs.wait``: the event stream, then the job).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
)
from pathlib import Path
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    ClassVar,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    TypeVar,
    overload,
)
from urllib.parse import quote
from uuid import UUID

from pydantic import TypeAdapter

from automl._model import Model, Page

if TYPE_CHECKING:
    from typing import Self

P = ParamSpec("P")
T = TypeVar("T")
M = TypeVar("M", "SyncMode", "AsyncMode")

#: A progress callback: (bytes done, bytes in all or None when unknown).
Progress = Callable[[int, "int | None"], None]
#: What an upload reads: a path, bytes, or a binary file object.
FileSource = str | os.PathLike[str] | bytes | IO[bytes]
#: Where a download goes: a path (a file, or a folder to put the server's file name in),
#: a binary file object, or None to get the bytes.
Destination = str | os.PathLike[str] | IO[bytes] | None


class SyncMode:
    """Marks the resources of :class:`automl.Client`."""


class AsyncMode:
    """Marks the resources of :class:`automl.AsyncClient`."""


@dataclasses.dataclass
class Upload:
    """A multipart/form-data body: text fields and one file, streamed with progress."""

    fields: dict[str, str]
    file_field: str
    source: FileSource
    filename: str | None = None
    content_type: str = "application/octet-stream"
    progress: Progress | None = None


@dataclasses.dataclass
class Stream:
    """An SSE stream read until ``until(event)`` is true or ``timeout`` seconds pass."""

    until: Callable[[ServerEvent], bool]
    timeout: float | None = None
    on_event: Callable[[ServerEvent], None] | None = None


@dataclasses.dataclass
class ServerEvent:
    """One Server-Sent Event: ``event`` (its type), ``data`` (text), ``id``."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        import json

        return json.loads(self.data) if self.data else None


@dataclasses.dataclass
class Call(Generic[T]):
    """One request and how to read its answer.

    ``expect``: ``json`` (``parse`` the decoded body), ``none`` (no body), ``bytes``
    (the body; or written to ``dest`` and its path returned), ``text``, ``events``
    (read ``stream``; returns the event that stopped it, or None on timeout), ``sleep``
    (no request: pause ``timeout`` seconds, for a flow that polls)."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] | None = None
    upload: Upload | None = None
    expect: Literal["json", "none", "bytes", "text", "events", "sleep"] = "json"
    parse: Callable[[Any], T] | None = None
    dest: Destination = None
    progress: Progress | None = None
    stream: Stream | None = None
    timeout: float | None = None

    def query(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for k, v in (self.params or {}).items():
            values = v if isinstance(v, (list, tuple)) else [v]
            for item in values:
                if item is None:
                    continue
                if isinstance(item, bool):
                    out.append((k, "true" if item else "false"))
                elif hasattr(item, "isoformat"):
                    out.append((k, item.isoformat()))
                else:
                    out.append((k, str(item.value if hasattr(item, "value") else item)))
        return out


def sleep(seconds: float) -> Call[None]:
    """A pause inside a :func:`flow` (no request is sent)."""
    return Call("SLEEP", "", expect="sleep", timeout=seconds)


def path(template: str, **values: Any) -> str:
    """``template`` with its ``{name}`` parts filled in, each escaped as one segment."""
    return template.format(**{k: quote(str(_id(v)), safe="") for k, v in values.items()})


def _id(value: Any) -> Any:
    """An id from a string, a UUID or a model that has an ``id``."""
    if isinstance(value, Model):
        return value.id  # type: ignore[attr-defined]
    return value


def ident(value: Any) -> str:
    """An id for a body or a query: a string, a UUID or a model with an ``id``."""
    return str(_id(value))


def body(**values: Any) -> dict[str, Any]:
    """A JSON body of the values that are not None (the API's defaults apply to the rest)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if v is None:
            continue
        out[k] = _jsonable(v)
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, Model):
        return v.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if isinstance(v, UUID):
        return str(v)
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


_adapters: dict[Any, TypeAdapter[Any]] = {}


def parse_as(tp: type[T] | Any) -> Callable[[Any], T]:
    """A parser of decoded JSON into ``tp`` (a model, ``list[Model]``, ``Page[Model]``)."""

    def run(data: Any) -> T:
        if isinstance(tp, type) and issubclass(tp, Model):
            return tp.model_validate(data)  # type: ignore[return-value]
        adapter = _adapters.get(tp)
        if adapter is None:
            adapter = _adapters[tp] = TypeAdapter(tp)
        return adapter.validate_python(data)

    return run


def bind(result: Any, client: Any) -> Any:
    """Let the models of ``result`` (nested ones too: ``run.job``) call back through
    ``client`` (``job.wait()``...)."""
    if isinstance(result, Model):
        result._client = client
        for name in type(result).model_fields:
            bind(getattr(result, name, None), client)
    elif isinstance(result, list):
        for item in result:
            bind(item, client)
    return result


# --- the runners' interface -------------------------------------------------------------------
class Runner:
    """Sends calls (sync: :class:`automl._sync.SyncRunner`; async: ``AsyncRunner``)."""

    client: Any  # the Client or AsyncClient the results are bound to

    def run(self, call: Call[Any]) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def run_flow(self, flow: Generator[Call[Any], Any, Any]) -> Any:  # pragma: no cover
        raise NotImplementedError

    def pager(self, make: Callable[[str | None], Call[Any]]) -> Any:  # pragma: no cover
        raise NotImplementedError


class Resource(Generic[M]):
    """A group of operations (``client.datasets``...), bound to one runner."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


# --- the descriptors ----------------------------------------------------------------------
class _Endpoint(Generic[P, T]):
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__wrapped__ = fn

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _bound(self, obj: Resource[Any]) -> Callable[..., Any]:  # pragma: no cover
        raise NotImplementedError

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        bound = self._bound(obj)
        bound.__doc__ = self.fn.__doc__
        bound.__name__ = self.fn.__name__
        bound.__qualname__ = f"{type(obj).__name__}.{self.fn.__name__}"
        bound.__wrapped__ = self.fn  # type: ignore[attr-defined]
        return bound


class _Sent(_Endpoint[P, T]):
    """What :class:`Endpoint` and :class:`Flow` share: ``fn``'s result is handed to
    the runner's method named :attr:`_send`; ``T`` on a Client, ``Awaitable[T]`` on an
    AsyncClient."""

    #: The runner's method that sends what ``fn`` returns.
    _send: ClassVar[str]

    if TYPE_CHECKING:

        @overload
        def __get__(self, obj: None, owner: type | None = None) -> Self: ...
        @overload
        def __get__(self, obj: Resource[SyncMode], owner: type | None = None) -> Callable[P, T]: ...
        @overload
        def __get__(
            self, obj: Resource[AsyncMode], owner: type | None = None
        ) -> Callable[P, Awaitable[T]]: ...
        def __get__(self, obj: Any, owner: type | None = None) -> Any: ...

    def _bound(self, obj: Resource[Any]) -> Callable[..., Any]:
        fn, runner, send = self.fn, obj._runner, self._send

        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(runner, send)(fn(obj, *args, **kwargs))

        return call


class Endpoint(_Sent[P, T]):
    """One request: ``T`` on a Client, ``Awaitable[T]`` on an AsyncClient."""

    _send = "run"


class Flow(_Sent[P, T]):
    """Several requests (a generator of calls): like :class:`Endpoint` to its caller."""

    _send = "run_flow"


class Paged(_Endpoint[P, T]):
    """A keyset-paginated list: a :class:`SyncPager` / :class:`AsyncPager` of its items."""

    if TYPE_CHECKING:

        @overload
        def __get__(self, obj: None, owner: type | None = None) -> Self: ...
        @overload
        def __get__(
            self, obj: Resource[SyncMode], owner: type | None = None
        ) -> Callable[P, SyncPager[T]]: ...
        @overload
        def __get__(
            self, obj: Resource[AsyncMode], owner: type | None = None
        ) -> Callable[P, AsyncPager[T]]: ...
        def __get__(self, obj: Any, owner: type | None = None) -> Any: ...

    def _bound(self, obj: Resource[Any]) -> Callable[..., Any]:
        fn, runner = self.fn, obj._runner

        def call(*args: Any, **kwargs: Any) -> Any:
            first = kwargs.pop("cursor", None)

            def make(cursor: str | None) -> Call[Any]:
                return fn(obj, *args, cursor=cursor if cursor is not None else first, **kwargs)

            return runner.pager(make)

        return call


def op(fn: Callable[Concatenate[Any, P], Call[T]]) -> Endpoint[P, T]:
    """A resource method that makes one :class:`Call`."""
    return Endpoint(fn)


def flow(fn: Callable[Concatenate[Any, P], Generator[Call[Any], Any, T]]) -> Flow[P, T]:
    """A resource method that yields calls and returns a value (sans-I/O)."""
    return Flow(fn)


def paged(fn: Callable[Concatenate[Any, P], Call[Page[T]]]) -> Paged[P, T]:
    """A resource method making the call of one page (it takes ``cursor``)."""
    return Paged(fn)


# --- pagers -----------------------------------------------------------------------------------
class SyncPager(Generic[T]):
    """Every item of a list, page after page (following ``next_cursor``) as you iterate.

    ``pages()`` iterates the pages; ``page()`` is the first page alone; ``all()``
    (``list(pager)``) fetches every page."""

    def __init__(self, fetch: Callable[[str | None], Page[T]]) -> None:
        self._fetch = fetch

    def pages(self) -> Iterator[Page[T]]:
        cursor: str | None = None
        while True:
            page = self._fetch(cursor)
            yield page
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    def page(self, cursor: str | None = None) -> Page[T]:
        return self._fetch(cursor)

    def __iter__(self) -> Iterator[T]:
        for page in self.pages():
            yield from page.items

    def all(self) -> list[T]:
        return list(self)

    def first(self) -> T | None:
        return next(iter(self), None)


class AsyncPager(Generic[T]):
    """The async twin of :class:`SyncPager`: ``async for item in pager``."""

    def __init__(self, fetch: Callable[[str | None], Awaitable[Page[T]]]) -> None:
        self._fetch = fetch

    async def pages(self) -> AsyncIterator[Page[T]]:
        cursor: str | None = None
        while True:
            page = await self._fetch(cursor)
            yield page
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    async def page(self, cursor: str | None = None) -> Page[T]:
        return await self._fetch(cursor)

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.items:
                yield item

    async def all(self) -> list[T]:
        return [item async for item in self]

    async def first(self) -> T | None:
        async for item in self:
            return item
        return None


# --- helpers shared by the runners ----------------------------------------------------------
def download_target(dest: Destination, response_headers: Mapping[str, str]) -> Path | None:
    """The file a download writes (a folder gets the server's file name), or None."""
    if dest is None or hasattr(dest, "write"):
        return None
    target = Path(os.fspath(dest))
    if target.is_dir():
        name = filename_from(response_headers.get("content-disposition", "")) or "download"
        target = target / name
    return target


def filename_from(disposition: str) -> str | None:
    import email.message

    if not disposition:
        return None
    msg = email.message.Message()
    msg["content-disposition"] = disposition
    name = msg.get_filename()
    return os.path.basename(name) if name else None


def total_of(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    return int(value) if value and value.isdigit() else None
