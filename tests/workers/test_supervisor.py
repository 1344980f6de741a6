"""``automl-run``: children restarted with backoff, a child that keeps failing stops
everything with one clear line, signals reach every child and are waited for.

The children are small Python scripts that record their runs and their SIGTERM in
files, so the tests wait for events, never for a length of time.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from workers.supervisor import Child, Supervisor

CHILD = """
import pathlib, signal, sys, time
folder, name, mode = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
runs = folder / f"{name}.runs"
n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))

def terminated(*_):
    (folder / f"{name}.terminated").write_text(str(n))
    sys.exit(0)

signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else terminated)
if mode == "fail":  # once the other child is up, so that it sees the SIGTERM
    while not (folder / "api.up").exists():
        time.sleep(0.05)
    sys.exit(3)
if mode.startswith("fail-first-") and n <= int(mode.rsplit("-", 1)[1]):
    sys.exit(4)
(folder / f"{name}.up").write_text(str(n))
while True:
    time.sleep(0.05)
"""


def wait_for(condition: Callable[[], object], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def child(tmp_path: Path) -> Callable[[str, str], list[str]]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)

    def command(name: str, mode: str) -> list[str]:
        return [sys.executable, str(script), str(tmp_path), name, mode]

    return command


def read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def test_a_child_that_keeps_failing_stops_everything(
    child: Callable[[str, str], list[str]], tmp_path: Path
) -> None:
    out = io.StringIO()
    supervisor = Supervisor(
        {"api": child("api", "run"), "worker": child("worker", "fail")},
        max_fast_failures=3,
        backoff_initial=0.01,
        fast_seconds=60,
        out=out,
    )
    assert supervisor.run() == 1
    lines = out.getvalue().splitlines()
    assert lines[-1] == (
        "automl-run: worker exited 3 times in a row within 60 s of starting"
        " (last: exited with code 3): giving up, stopping everything"
    )
    assert read(tmp_path / "worker.runs") == "3"
    # The API did not stay up alone: it was told to stop, and it did.
    assert read(tmp_path / "api.terminated") == "1"
    assert all(c.process is None or c.process.poll() is not None for c in supervisor.children)


def test_a_command_that_cannot_start_is_a_failure_too(tmp_path: Path) -> None:
    out = io.StringIO()
    missing = str(tmp_path / "no-such-program")
    supervisor = Supervisor({"worker": [missing]}, max_fast_failures=1, out=out)
    assert supervisor.run() == 1
    assert "worker could not start" in out.getvalue()
    assert "giving up" in out.getvalue().splitlines()[-1]


def test_backoff_doubles_to_its_cap_and_a_long_run_starts_a_new_count() -> None:
    now = [0.0]
    supervisor = Supervisor(
        {"worker": ["true"]},
        fast_seconds=10,
        max_fast_failures=100,
        backoff_initial=0.5,
        backoff_cap=4,
        out=io.StringIO(),
        clock=lambda: now[0],
    )
    worker = Child("worker", ["true"])
    delays = []
    for _ in range(6):
        worker.started_at = now[0]
        now[0] += 1  # a quick exit
        assert supervisor._exited(worker, 1)
        assert worker.restart_at is not None
        delays.append(worker.restart_at - now[0])
    assert delays == [0.5, 1, 2, 4, 4, 4]
    worker.started_at = now[0]
    now[0] += 60  # ran a minute before it exited: not a quick failure
    assert supervisor._exited(worker, 1)
    assert worker.fast_failures == 1 and worker.restart_at == now[0] + 0.5


def supervise(*children: str, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "workers.supervisor", "--fast-seconds", "60"]
    for spec in children:
        args += ["--child", spec]
    return subprocess.Popen(
        [*args, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def spec(name: str, command: list[str]) -> str:
    return f"{name}={subprocess.list2cmdline(command)}"


def test_a_child_that_exits_is_restarted_and_sigterm_stops_both(
    child: Callable[[str, str], list[str]], tmp_path: Path
) -> None:
    process = supervise(
        spec("api", child("api", "run")), spec("worker", child("worker", "fail-first-2"))
    )
    try:
        wait_for(lambda: (tmp_path / "worker.up").exists(), "the worker's third start")
        wait_for(lambda: (tmp_path / "api.up").exists(), "the API to start")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert read(tmp_path / "worker.runs") == "3" and read(tmp_path / "api.runs") == "1"
    assert output.count("worker exited with code 4") == 2, output
    assert "restarting it in 0.5 s" in output and "restarting it in 1.0 s" in output, output
    assert "SIGTERM: stopping api, worker" in output, output
    assert read(tmp_path / "api.terminated") == "1"
    assert read(tmp_path / "worker.terminated") == "3"


def test_sigint_stops_the_children_and_kills_one_that_will_not_stop(
    child: Callable[[str, str], list[str]], tmp_path: Path
) -> None:
    process = supervise(
        spec("api", child("api", "run")),
        spec("worker", child("worker", "stubborn")),
        extra=("--stop-timeout", "1"),
    )
    try:
        wait_for(lambda: (tmp_path / "worker.up").exists(), "the worker to start")
        wait_for(lambda: (tmp_path / "api.up").exists(), "the API to start")
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "SIGINT: stopping api, worker" in output
    assert "worker did not stop within 1 s: killing it" in output
    assert read(tmp_path / "api.terminated") == "1"
    assert read(tmp_path / "worker.terminated") is None
