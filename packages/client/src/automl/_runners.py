"""The two runners: httpx.Client (sync) and httpx.AsyncClient (async).

Each turns a :class:`automl._core.Call` into a request and its answer into the
call's result; errors become :mod:`automl.errors` exceptions. The only code written
twice is here, where I/O differs: sending, streaming a download, reading events.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import IO, Any

import httpx

from automl import errors
from automl._core import (
    AsyncPager,
    Call,
    Runner,
    ServerEvent,
    SyncPager,
    bind,
    download_target,
    total_of,
)
from automl._version import __version__
from automl._wire import Multipart, SSEParser
from automl.config import Config

USER_AGENT = f"automl-client/{__version__}"
#: The event after which a job's stream closes for good (api/routers/events.py).
END = "end"
#: Pause before reconnecting an event stream that closed before its end.
RECONNECT_SECONDS = 0.5


#: Statuses a read is retried on (with the answer's Retry-After, when it has one).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: A Retry-After longer than this is not waited for: the error is raised.
MAX_RETRY_AFTER = 30.0


def retry_delay(call: Call[Any], exc: Exception, attempt: int, max_retries: int) -> float | None:
    """Seconds to wait before sending ``call`` again, or None to raise ``exc``.

    Only reads (GET) are retried, as nothing is changed twice by sending one again: on
    429/502/503/504 after the answer's ``Retry-After`` (1 s, 2 s... without one), and
    when the API could not be reached."""
    if attempt >= max_retries or call.method != "GET":
        return None
    backoff = min(0.5 * 2**attempt, 8.0)
    if isinstance(exc, errors.TransportError):
        return backoff
    if isinstance(exc, errors.ApiError) and exc.status in RETRY_STATUSES:
        after = (
            exc.retry_after if isinstance(exc, (errors.RateLimited, errors.ServerError)) else None
        )
        if after is None:
            return backoff
        return after if after <= MAX_RETRY_AFTER else None
    return None


class _Base(Runner):
    def __init__(
        self,
        config: Config,
        client: Any,
        headers: dict[str, str] | None,
        max_retries: int = 2,
    ) -> None:
        self.config = config
        self.client = client
        self.extra_headers = dict(headers or {})
        self.max_retries = max_retries

    def url(self, call: Call[Any]) -> str:
        return self.config.base_url + call.path

    def headers(self, call: Call[Any]) -> dict[str, str]:
        out = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        out.update(self.config.auth_headers())
        out.update(self.extra_headers)
        out.update(call.headers or {})
        return out

    def request_kwargs(self, call: Call[Any]) -> tuple[dict[str, Any], Multipart | None]:
        kw: dict[str, Any] = {"params": call.query() or None, "headers": self.headers(call)}
        multipart = None
        if call.upload is not None:
            multipart = Multipart(call.upload)
            kw["headers"].update(multipart.headers)
        elif call.content is not None:
            kw["content"] = call.content
        elif call.json is not None:
            kw["json"] = call.json
        if call.timeout is not None:
            kw["timeout"] = call.timeout
        return kw, multipart

    def result(self, call: Call[Any], response: httpx.Response) -> Any:
        if call.expect == "none":
            return None
        if call.expect == "text":
            return response.text
        if call.expect == "bytes":
            return response.content
        data = response.json() if response.content else None
        out = call.parse(data) if call.parse is not None else data
        return bind(out, self.client)


def _check(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise errors.from_response(response)


def _transport_error(exc: httpx.TransportError, url: str) -> errors.TransportError:
    kind = type(exc).__name__
    return errors.TransportError(f"cannot reach {url}: {kind}: {exc}" if str(exc) else kind)


def _open_target(call: Call[Any], headers: httpx.Headers) -> tuple[IO[bytes] | None, Path | None]:
    target = download_target(call.dest, headers)
    if target is not None:
        return open(target, "wb"), target  # noqa: SIM115 - closed by the caller
    if call.dest is not None and hasattr(call.dest, "write"):
        return call.dest, None  # type: ignore[return-value]
    return None, None


class SyncRunner(_Base):
    def __init__(
        self,
        config: Config,
        client: Any,
        http: httpx.Client,
        headers: dict[str, str] | None = None,
        max_retries: int = 2,
    ) -> None:
        super().__init__(config, client, headers, max_retries)
        self.http = http

    def run(self, call: Call[Any]) -> Any:
        if call.expect == "events":
            return self._events(call)
        if call.expect == "sleep":
            time.sleep(call.timeout or 0)
            return None
        attempt = 0
        while True:
            try:
                return self._send(call)
            except errors.AutomlError as exc:
                delay = retry_delay(call, exc, attempt, self.max_retries)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def _send(self, call: Call[Any]) -> Any:
        kw, multipart = self.request_kwargs(call)
        if multipart is not None:
            kw["content"] = iter(multipart)
        url = self.url(call)
        try:
            if call.expect == "bytes" and call.dest is not None:
                with self.http.stream(call.method, url, **kw) as response:
                    if response.status_code >= 400:
                        response.read()
                        _check(response)
                    return self._save(call, response)
            response = self.http.request(call.method, url, **kw)
        except httpx.TransportError as exc:
            raise _transport_error(exc, url) from None
        _check(response)
        return self.result(call, response)

    def _save(self, call: Call[Any], response: httpx.Response) -> Any:
        fh, target = _open_target(call, response.headers)
        assert fh is not None
        total, done = total_of(response.headers), 0
        try:
            for chunk in response.iter_bytes():
                fh.write(chunk)
                done += len(chunk)
                if call.progress:
                    call.progress(done, total)
        except BaseException:
            if target is not None:
                fh.close()
                target.unlink(missing_ok=True)
            raise
        if target is not None:
            fh.close()
            return target
        return None

    def _events(self, call: Call[Any]) -> ServerEvent | None:
        assert call.stream is not None
        stream = call.stream
        deadline = None if stream.timeout is None else time.monotonic() + stream.timeout
        parser = SSEParser()
        url = self.url(call)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            kw, _ = self.request_kwargs(call)
            kw["headers"]["Accept"] = "text/event-stream"
            if parser.last_id is not None:
                kw["headers"]["Last-Event-ID"] = parser.last_id
            read = 60.0 if remaining is None else max(0.05, min(remaining, 60.0))
            kw["timeout"] = httpx.Timeout(30.0, read=read)
            try:
                with self.http.stream(call.method, url, **kw) as response:
                    if response.status_code >= 400:
                        response.read()
                        _check(response)
                    last: ServerEvent | None = None
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            last = event
                            if stream.on_event:
                                stream.on_event(event)
                            if stream.until(event):
                                return event
                        if deadline is not None and time.monotonic() >= deadline:
                            return None
                    if last is not None and last.event == END:
                        return last  # the job has ended: nothing more will come
            except httpx.ReadTimeout:
                continue
            except httpx.TransportError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                if isinstance(exc, httpx.ConnectError) and parser.last_id is None:
                    raise _transport_error(exc, url) from None
            time.sleep(RECONNECT_SECONDS)

    def run_flow(self, flow: Generator[Call[Any], Any, Any]) -> Any:
        try:
            call = next(flow)
            while True:
                try:
                    result = self.run(call)
                except errors.AutomlError as exc:
                    call = flow.throw(exc)
                else:
                    call = flow.send(result)
        except StopIteration as stop:
            return stop.value

    def pager(self, make: Callable[[str | None], Call[Any]]) -> SyncPager[Any]:
        return SyncPager(lambda cursor: self.run(make(cursor)))

    def close(self) -> None:
        self.http.close()


class AsyncRunner(_Base):
    def __init__(
        self,
        config: Config,
        client: Any,
        http: httpx.AsyncClient,
        headers: dict[str, str] | None = None,
        max_retries: int = 2,
    ) -> None:
        super().__init__(config, client, headers, max_retries)
        self.http = http

    async def run(self, call: Call[Any]) -> Any:
        import anyio

        if call.expect == "events":
            return await self._events(call)
        if call.expect == "sleep":
            await anyio.sleep(call.timeout or 0)
            return None
        attempt = 0
        while True:
            try:
                return await self._send(call)
            except errors.AutomlError as exc:
                delay = retry_delay(call, exc, attempt, self.max_retries)
                if delay is None:
                    raise
            await anyio.sleep(delay)
            attempt += 1

    async def _send(self, call: Call[Any]) -> Any:
        kw, multipart = self.request_kwargs(call)
        if multipart is not None:
            kw["content"] = multipart.aiter()
        url = self.url(call)
        try:
            if call.expect == "bytes" and call.dest is not None:
                async with self.http.stream(call.method, url, **kw) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        _check(response)
                    return await self._save(call, response)
            response = await self.http.request(call.method, url, **kw)
        except httpx.TransportError as exc:
            raise _transport_error(exc, url) from None
        _check(response)
        return self.result(call, response)

    async def _save(self, call: Call[Any], response: httpx.Response) -> Any:
        fh, target = _open_target(call, response.headers)
        assert fh is not None
        total, done = total_of(response.headers), 0
        try:
            async for chunk in response.aiter_bytes():
                fh.write(chunk)
                done += len(chunk)
                if call.progress:
                    call.progress(done, total)
        except BaseException:
            if target is not None:
                fh.close()
                target.unlink(missing_ok=True)
            raise
        if target is not None:
            fh.close()
            return target
        return None

    async def _events(self, call: Call[Any]) -> ServerEvent | None:
        import anyio

        assert call.stream is not None
        found: list[ServerEvent] = []
        with anyio.move_on_after(call.stream.timeout):
            found.append(await self._read_events(call))
        return found[0] if found else None

    async def _read_events(self, call: Call[Any]) -> ServerEvent:
        import anyio

        assert call.stream is not None
        stream = call.stream
        parser = SSEParser()
        url = self.url(call)
        while True:
            kw, _ = self.request_kwargs(call)
            kw["headers"]["Accept"] = "text/event-stream"
            if parser.last_id is not None:
                kw["headers"]["Last-Event-ID"] = parser.last_id
            kw["timeout"] = httpx.Timeout(30.0, read=60.0)
            try:
                async with self.http.stream(call.method, url, **kw) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        _check(response)
                    last: ServerEvent | None = None
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            last = event
                            if stream.on_event:
                                stream.on_event(event)
                            if stream.until(event):
                                return event
                    if last is not None and last.event == END:
                        return last  # the job has ended: nothing more will come
            except httpx.ReadTimeout:
                continue
            except httpx.TransportError as exc:
                if isinstance(exc, httpx.ConnectError) and parser.last_id is None:
                    raise _transport_error(exc, url) from None
            await anyio.sleep(RECONNECT_SECONDS)

    async def run_flow(self, flow: Generator[Call[Any], Any, Any]) -> Any:
        try:
            call = next(flow)
            while True:
                try:
                    result = await self.run(call)
                except errors.AutomlError as exc:
                    call = flow.throw(exc)
                else:
                    call = flow.send(result)
        except StopIteration as stop:
            return stop.value

    def pager(self, make: Callable[[str | None], Call[Any]]) -> AsyncPager[Any]:
        return AsyncPager(lambda cursor: self.run(make(cursor)))

    async def aclose(self) -> None:
        await self.http.aclose()


def env_timeout() -> float:
    value = os.environ.get("AUTOML_TIMEOUT")
    try:
        return float(value) if value else 30.0
    except ValueError:
        return 30.0
