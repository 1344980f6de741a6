"""``automl.AsyncClient`` over ASGI (``httpx.ASGITransport``) against the real API: the
same resource groups as the sync client, awaited, their lists iterated with
``async for``; uploads streamed; errors raised the same way. And the unit parts of the
client that need no server: configuration, errors, SSE parsing."""

from __future__ import annotations

import http.server
import os
import stat
import threading
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI

import automl
from automl._wire import SSEParser
from automl.errors import from_response

from client_helpers import async_client


def test_async_client_against_the_api(app: FastAPI, client: automl.Client) -> None:
    async def main() -> None:
        async with async_client(app, client.config.api_key) as aclient:
            me = await aclient.me.get()
            assert me.id == client.me.get().id
            sent: list[int] = []
            upload = await aclient.datasets.upload(
                b"a,b\n1,2\n3,4\n",
                "tiny",
                filename="tiny.csv",
                progress=lambda d, t: sent.append(d),
            )
            assert sent[-1] == 12 and upload.dataset.name == "tiny"
            for i in range(3):
                await aclient.workflows.create(f"w{i}", {"nodes": [], "edges": []})
            names = [w.name async for w in aclient.workflows.list(limit=2)]  # two pages
            assert sorted(names) == ["w0", "w1", "w2"]
            page = await aclient.workflows.list(limit=2).page()
            assert len(page.items) == 2 and page.next_cursor
            assert len(await aclient.workflows.list().all()) == 3
            first = await aclient.workflows.list().first()
            assert first is not None
            with pytest.raises(automl.NotFound) as missing:
                await aclient.jobs.get("00000000-0000-4000-8000-000000000001")
            assert missing.value.code == "not_found"
            balance = await aclient.credits.balance()
            assert balance.balance == 0

    anyio.run(main)


def test_config_from_arguments_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "automl" / "config.toml"
    monkeypatch.setenv("AUTOML_CONFIG", str(path))
    assert automl.load_config().base_url == "http://127.0.0.1:8000"
    assert automl.load_config().credential is None
    written = automl.save_config(base_url="https://a.example.com/", api_key='aml_"quoted"\n')
    assert written == path and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    automl.save_config(profile="staging", base_url="https://s.example.com", token="ams_t")
    loaded = automl.load_config()
    assert loaded.base_url == "https://a.example.com" and loaded.api_key == 'aml_"quoted"\n'
    assert automl.load_config(profile="staging").token == "ams_t"
    monkeypatch.setenv("AUTOML_PROFILE", "staging")
    assert automl.Client().base_url == "https://s.example.com"
    monkeypatch.setenv("AUTOML_API_KEY", "aml_env")
    monkeypatch.setenv("AUTOML_BASE_URL", "https://env.example.com")
    env = automl.load_config()
    assert (env.base_url, env.api_key, env.token) == ("https://env.example.com", "aml_env", None)
    given = automl.load_config(base_url="https://arg.example.com", token="ams_arg")
    assert (given.base_url, given.token, given.api_key) == (
        "https://arg.example.com",
        "ams_arg",
        None,
    )
    assert "aml_env" not in repr(env) and "ams_arg" not in repr(given)
    assert given.auth_headers() == {"Authorization": "Bearer ams_arg"}
    automl.save_config(profile="staging", clear=True)
    monkeypatch.delenv("AUTOML_API_KEY")
    assert automl.load_config().token is None
    path.write_text("[default\nbroken")
    with pytest.raises(automl.ConfigError):
        automl.load_config()


def test_error_classes_by_status() -> None:
    def error(status: int, body: bytes, **headers: str) -> automl.ApiError:
        return from_response(httpx.Response(status, content=body, headers=headers))

    body = (
        b'{"error": {"code": "quota_exceeded", "message": "slow down",'
        b' "details": {"retry_after": 7}}}'
    )
    limited = error(429, body, **{"Retry-After": "7"})
    assert isinstance(limited, automl.RateLimited) and limited.retry_after == 7.0
    assert (limited.code, limited.message, limited.details["retry_after"]) == (
        "quota_exceeded",
        "slow down",
        7,
    )
    for status, cls in [
        (400, automl.BadRequest),
        (401, automl.Unauthorized),
        (402, automl.PaymentRequired),
        (403, automl.Forbidden),
        (404, automl.NotFound),
        (409, automl.Conflict),
        (413, automl.PayloadTooLarge),
        (415, automl.UnsupportedMediaType),
        (422, automl.ValidationError),
        (500, automl.ServerError),
        (503, automl.ServerError),
    ]:
        assert type(error(status, b"{}")) is cls
    busy = error(503, b'{"error": {"code": "busy", "message": "retry"}}', **{"Retry-After": "1"})
    assert isinstance(busy, automl.ServerError) and busy.retry_after == 1.0
    not_ready = error(503, b'{"status": "not ready", "database": false}')
    assert not_ready.message == "not ready" and not_ready.details["body"]["database"] is False
    plain = error(502, b"<html>bad gateway</html>")
    assert plain.status == 502 and "bad gateway" in plain.message and plain.code == "error"


def test_sse_parser() -> None:
    parser = SSEParser()
    lines = [": ping", "event: status", "id: 3", 'data: {"a":', "data: 1}", "", "data: x", ""]
    events = list(parser.parse(lines))
    assert [(e.event, e.data, e.id) for e in events] == [
        ("status", '{"a":\n1}', "3"),
        ("message", "x", "3"),  # the last event id persists (WHATWG)
    ]
    assert parser.last_id == "3"


def test_the_client_needs_none_of_the_servers_packages() -> None:
    """``import automl`` loads no server dependency, and the package declares none."""
    import subprocess
    import sys
    import tomllib

    code = (
        "import sys, automl; c = automl.Client('http://127.0.0.1:9');"
        " heavy = [m for m in ('sqlalchemy', 'fastapi', 'sklearn', 'pandas', 'database', 'api',"
        " 'pipeline', 'workers', 'starlette') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    root = Path(__file__).resolve().parents[2] / "packages" / "client" / "pyproject.toml"
    project = tomllib.loads(root.read_text())["project"]
    names = {d.split(">")[0].split("[")[0].strip() for d in project["dependencies"]}
    assert names == {"httpx", "pydantic"}
    assert set(project["optional-dependencies"]) >= {"cli", "pandas"}


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 (Retry-After: 0) to its first ``failures`` requests, then 200."""

    failures = 2
    seen: list[str]

    def _answer(self) -> None:
        type(self).seen.append(self.command)
        if len(type(self).seen) <= type(self).failures:
            status, body, headers = 503, b'{"error": {"code": "busy", "message": "retry"}}', 0
        else:
            status, body, headers = 200, b'{"status": "ok"}', None
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if headers is not None:
            self.send_header("Retry-After", str(headers))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


def test_reads_are_retried_after_retry_after_writes_are_not() -> None:
    handler = type("Handler", (_Flaky,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with automl.Client(url, api_key="aml_x") as client:
            assert client.health.live().status == "ok"
            assert handler.seen == ["GET", "GET", "GET"]
            handler.seen.clear()
            with pytest.raises(automl.ServerError) as busy:
                client.auth.logout()  # a POST is sent once
            assert busy.value.code == "busy" and busy.value.retry_after == 0
            assert handler.seen == ["POST"]
        handler.seen.clear()
        with automl.Client(url, api_key="aml_x", max_retries=0) as once:
            with pytest.raises(automl.ServerError):
                once.health.live()
            assert handler.seen == ["GET"]
    finally:
        server.shutdown()
        server.server_close()
