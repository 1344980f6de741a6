"""The client over a real socket: the API served by uvicorn in a thread, the sync and
the async client on ``http://127.0.0.1:<port>``. Here the job's event stream is read
as it comes, so ``jobs.wait`` follows a job while a worker runs it, and its timeout
holds on a job that does not end."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from fastapi import FastAPI
from test_client_ml import definition, iris

import automl

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture
def base_url(app: FastAPI) -> Iterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_upload_wait_follow_download_over_a_socket(
    base_url: str,
    credits: Callable[[automl.Client, int], None],
    drain: Callable[[], Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signed = automl.Client(base_url).users.create("socket@example.com")
    monkeypatch.setenv("AUTOML_BASE_URL", base_url)
    monkeypatch.setenv("AUTOML_API_KEY", signed.api_key.key)
    with automl.Client() as client:  # from the environment
        assert client.base_url == base_url
        client.signed_up = signed  # type: ignore[attr-defined]
        credits(client, 500)
        csv = tmp_path / "iris.csv"
        csv.write_bytes(iris().to_csv(index=False).encode())
        seen: list[tuple[int, int | None]] = []
        upload = client.datasets.upload(
            csv, "iris", target_column="species", progress=lambda d, t: seen.append((d, t))
        )
        assert seen[-1] == (csv.stat().st_size, csv.stat().st_size)
        drain()
        client.datasets.wait_ready(upload, timeout=30)
        workflow = client.workflows.create("iris", definition(upload.dataset.id))

        # A queued job with no worker: the wait's timeout holds, with the job's state.
        run = client.workflows.run(workflow)
        with pytest.raises(automl.WaitTimeout) as waited:
            client.jobs.wait(run, timeout=0.5)
        assert waited.value.job.status == "queued"

        # The worker starts once the stream has said "queued": the wait follows the run.
        events: list[automl.ServerEvent] = []
        started = threading.Event()

        def on_event(event: automl.ServerEvent) -> None:
            events.append(event)
            started.set()

        def work() -> None:
            started.wait(30)
            drain()

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            job = run.job.wait(timeout=120, on_event=on_event)
        finally:
            started.set()
            worker.join()
        assert job.status == "completed"
        assert events[0].event == "status" and events[0].json()["status"] == "queued"
        assert events[-1].event == "end"
        assert "running" in [e.json()["status"] for e in events if e.event == "status"]

        [model] = client.models.list().all()
        target = client.models.download_artifact(model, tmp_path / "model.joblib")
        assert target.stat().st_size > 0

    async def main() -> None:
        async with automl.AsyncClient(base_url, api_key=signed.api_key.key) as aclient:
            names = [d.name async for d in aclient.datasets.list()]
            assert names == ["iris"]
            final = await aclient.jobs.wait(job.id, timeout=30)
            assert final.status == "completed"
            with pytest.raises(automl.WaitTimeout):
                queued = await aclient.workflows.run(workflow)
                await aclient.jobs.wait(queued.job, timeout=0.5)

    anyio.run(main)


def test_an_unreachable_api_is_a_transport_error() -> None:
    with automl.Client("http://127.0.0.1:9", api_key="aml_x") as client:
        with pytest.raises(automl.TransportError) as failed:
            client.health.live()
        assert "127.0.0.1:9" in str(failed.value) and "aml_x" not in str(failed.value)
