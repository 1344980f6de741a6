"""``/metrics`` in prometheus-client's multiprocess mode (docs/metrics.md): two real
API processes (uvicorn) share one ``PROMETHEUS_MULTIPROC_DIR``; one scrape of either
sums both processes' requests, keeps a killed process's counts, and counts in flight
only the requests of live processes (a process SIGKILLed while answering left its
in-flight count in its file: ``api.metrics.forget_dead_processes``)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import URL

from api_helpers import start_api_processes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ME = {"method": "GET", "route": "/v1/me", "status": "401"}


def scrape(port: int) -> Samples:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60)
    assert r.status_code == 200, r.text
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(s: Samples, name: str, **labels: str) -> float:
    return s.get((name, frozenset(labels.items())), 0.0)


def wait_until(condition: Callable[[], bool], what: str, procs: list[Any]) -> None:
    """A readiness poll (no timing assertion): ``condition`` true, or fail after 300 s
    (two API processes start at once on a loaded machine)."""
    deadline = time.monotonic() + 300
    while not condition():
        assert time.monotonic() < deadline, what
        assert all(p.poll() is None for p in procs if p is not None), "an API process exited"
        time.sleep(0.2)


@pytest.fixture
def two_apis(db_url: URL, tmp_path: Path) -> Iterator[tuple[list[int], list[Any], Path]]:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {
        **os.environ,
        "DATABASE_URL": db_url.render_as_string(hide_password=False),
        "AUTOML_DATA_DIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "LOG_LEVEL": "WARNING",
    }
    with start_api_processes(env) as (ports, procs):
        yield ports, procs, directory


def test_one_scrape_sums_both_processes_and_forgets_a_killed_ones_in_flight(
    two_apis: tuple[list[int], list[Any], Path],
) -> None:
    (a, b), procs, directory = two_apis
    for port, n in ((a, 3), (b, 5)):
        for _ in range(n):
            assert httpx.get(f"http://127.0.0.1:{port}/v1/me", timeout=60).status_code == 401

    # Either process's scrape sums both: 3 + 5 answers, their latencies too.
    for port in (a, b):
        both = scrape(port)
        assert value(both, "automl_http_requests_total", **ME) == 8, port
        assert value(both, "automl_http_request_duration_seconds_count", **ME) == 8, port
        # in flight: the scrape itself, answered by one process
        assert value(both, "automl_http_requests_in_flight") == 1
        assert value(both, "automl_queue_snapshot_ok") == 1  # the database's series too

    # A request that stays in flight in B: its body never comes.
    stuck = socket.create_connection(("127.0.0.1", b))
    try:
        stuck.sendall(
            b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        wait_until(
            lambda: value(scrape(a), "automl_http_requests_in_flight") == 2,
            "B's request never counted in flight",
            procs,
        )
        procs[1].send_signal(signal.SIGKILL)  # killed while answering
        procs[1].wait(30)
    finally:
        stuck.close()
    assert any(f"_{procs[1].pid}.db" in p.name for p in directory.iterdir())

    after = scrape(a)
    # B's answers are history: still summed. Its in-flight request died with it.
    assert value(after, "automl_http_requests_total", **ME) == 8
    assert value(after, "automl_http_requests_in_flight") == 1
    assert not any(
        p.name.startswith("gauge_live") and p.name.endswith(f"_{procs[1].pid}.db")
        for p in directory.iterdir()
    )
