"""``/docs`` and ``/redoc`` render offline, in a real headless browser.

The app is served by uvicorn on a free local port and Chromium (the system's package:
``apt-get install chromium``) is driven by playwright. Every request to another host
is refused and counted, so a page that needed a CDN fails here. Skipped when Chromium
is absent, except in CI (``CI=true``), where ``.ci/run`` installs it and the test must
run.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from api.main import create_app
from api.settings import ApiSettings

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

if not Path(CHROMIUM).exists() and not IN_CI:
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium; CI installs it)",
        allow_module_level=True,
    )

sync_api = pytest.importorskip("playwright.sync_api")

METHODS = {"get", "post", "put", "patch", "delete"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FastAPI]]:
    """The app on a real socket (the pages need no database: /openapi.json is built
    from the routes)."""
    data = tmp_path_factory.mktemp("docs-browser")
    app = create_app(ApiSettings(data_dir=data, storage_url=str(data / "storage")))
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser: object, base: str) -> tuple[object, list[str]]:
    """A page that may reach ``base`` only; what it tried elsewhere is listed."""
    outside: list[str] = []
    page = browser.new_page()  # type: ignore[attr-defined]

    def route(r: object) -> None:
        url = r.request.url  # type: ignore[attr-defined]
        if url.startswith(base) or url.startswith(("data:", "blob:")):
            r.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(url)
            r.abort()  # type: ignore[attr-defined]

    page.route("**/*", route)
    return page, outside


def test_swagger_ui_lists_every_operation_offline(
    served: tuple[str, FastAPI], browser: object
) -> None:
    base, app = served
    operations = sum(
        1 for item in app.openapi()["paths"].values() for method in item if method in METHODS
    )
    page, outside = _page(browser, base)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))  # type: ignore[attr-defined]
    page.goto(f"{base}/docs")  # type: ignore[attr-defined]
    page.wait_for_selector(".opblock", timeout=60_000)  # type: ignore[attr-defined]
    blocks = page.locator(".opblock")  # type: ignore[attr-defined]
    assert blocks.count() == operations
    # The operation ids are shown (displayOperationId) and read as they should.
    ids = page.locator(".opblock-summary-operation-id").all_inner_texts()  # type: ignore[attr-defined]
    assert "datasets_create" in ids and len(ids) == operations
    assert page.locator(".info .title").inner_text().startswith("AutoML Platform API")  # type: ignore[attr-defined]
    assert not errors, errors
    assert not outside, f"the page reached outside the app: {outside}"
    page.close()  # type: ignore[attr-defined]


def test_redoc_renders_offline(served: tuple[str, FastAPI], browser: object) -> None:
    base, app = served
    spec = app.openapi()
    page, outside = _page(browser, base)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))  # type: ignore[attr-defined]
    page.goto(f"{base}/redoc")  # type: ignore[attr-defined]
    page.wait_for_selector("h1", timeout=60_000)  # type: ignore[attr-defined]
    assert page.locator("h1").first.inner_text().startswith("AutoML Platform API")  # type: ignore[attr-defined]
    # ReDoc gives every operation a section with its operationId.
    page.wait_for_selector('[data-section-id^="operation/"]', timeout=60_000)  # type: ignore[attr-defined]
    sections = page.locator('[data-section-id^="operation/"]')  # type: ignore[attr-defined]
    operations = sum(1 for item in spec["paths"].values() for method in item if method in METHODS)
    assert sections.count() == operations
    predict = page.locator('[data-section-id="operation/deployments_predict"]')  # type: ignore[attr-defined]
    assert predict.count() == 1
    assert not errors, errors
    assert not outside, f"the page reached outside the app: {outside}"
    page.close()  # type: ignore[attr-defined]
