"""Every command line's ``--help`` and ``--version`` print and exit 0 with no side
effect; a refused setting is one line; ``automl-db`` documents every command and
option and says in one line when the database cannot be reached.

Run as the installed console scripts (subprocesses), each with a data folder of
its own and no DATABASE_URL: had anything touched the database, the embedded
server would have been created there (``<data>/pg``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from database import cli

BIN = Path(sys.executable).parent
SCRIPTS = {
    "automl-db": "automl-database",
    "automl-api": "automl-api",
    "automl-serve": "automl-api",
    "automl-worker": "automl-workers",
    "automl-run": "automl-workers",
}


def run(script: str, *args: str, data: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "PORT", "SERVE_PORT", "HOST") and not k.startswith("WORKER_")
    }
    environ.update(AUTOML_DATA_DIR=str(data), **env)
    return subprocess.run(
        [str(BIN / script), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_and_version_exit_0_without_side_effects(script: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    helped = run(script, "--help", data=data)
    assert helped.returncode == 0, helped.stderr
    assert "usage" in helped.stdout.lower() and script in helped.stdout
    assert "--version" in helped.stdout
    versioned = run(script, "--version", data=data)
    assert versioned.returncode == 0, versioned.stderr
    from importlib.metadata import version

    assert versioned.stdout.startswith(f"{script} {version(SCRIPTS[script])}")
    # Nothing started: no embedded server (nor any data folder) was created, and
    # nothing was logged.
    assert not data.exists()
    assert helped.stderr == versioned.stderr == ""


@pytest.mark.parametrize(
    ("script", "args", "env", "named"),
    [
        ("automl-api", (), {"PORT": "abc"}, "PORT"),
        ("automl-api", ("--port", "70000"), {}, "PORT"),
        ("automl-api", (), {"PORT": "-1"}, "PORT"),
        ("automl-serve", (), {"SERVE_PORT": "eighty"}, "SERVE_PORT"),
        ("automl-serve", ("--port", "1e3"), {}, "SERVE_PORT"),
        ("automl-worker", (), {"WORKER_SLOTS": "0"}, "WORKER_SLOTS"),
        ("automl-api", (), {"DATABASE_URL": "mysql://root:pw-secret@h/db"}, "DATABASE_URL"),
        ("automl-worker", (), {"DATABASE_URL": "mysql://root:pw-secret@h/db"}, "DATABASE_URL"),
    ],
)
def test_a_refused_setting_is_one_line_and_exit_2(
    script: str, args: tuple[str, ...], env: dict[str, str], named: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    result = run(script, *args, data=data, **env)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no traceback
    assert lines[0].startswith(f"{script}: invalid setting: {named}:"), lines[0]
    assert "pw-secret" not in result.stderr + result.stdout
    assert not data.exists() and result.stdout == ""


def test_automl_db_unreachable_is_one_line_and_exit_3(tmp_path: Path) -> None:
    result = run(
        "automl-db",
        "status",
        data=tmp_path / "data",
        DATABASE_URL="postgresql://ops:pw-secret@127.0.0.1:1/automl",
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line, no traceback
    assert "cannot reach DATABASE_URL=postgresql://ops:***@127.0.0.1:1/automl" in result.stderr
    assert "pw-secret" not in result.stderr + result.stdout


def test_automl_db_bad_option_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run("automl-db", "purge", "--batch-size", "0", data=tmp_path / "data")
    assert result.returncode == 2
    assert result.stderr.startswith("automl-db purge: Invalid value for '--batch-size'")
    assert len(result.stderr.strip().splitlines()) == 1


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found.extend(_commands(sub, (*path, name)))
    return found


def test_every_automl_db_command_and_option_is_described(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import typer

    root = typer.main.get_command(cli.app)
    commands = _commands(root)
    names = {" ".join(path) for path, _ in commands}
    for expected in (
        "up",
        "status",
        "down",
        "seed",
        "verify",
        "purge",
        "clean",
        "grant",
        "users promote",
        "users demote",
        "inference-retention",
        "charge-usage",
        "prices show",
        "prices set",
    ):
        assert expected in names
    for path, command in commands:
        assert (command.help or "").strip(), f"automl-db {' '.join(path)} has no description"
        for param in command.params:
            if param.name == "help":
                continue
            assert (getattr(param, "help", None) or "").strip(), (
                f"automl-db {' '.join(path)}: {param.name} has no description"
            )
        assert cli.main([*path, "--help"]) == 0
        assert "Usage: automl-db" in capsys.readouterr().out


def test_automl_db_version_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("automl-db ")
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == cli.Exit.USAGE
    assert "Commands" in capsys.readouterr().err


def test_automl_db_embedded_server_that_cannot_start_is_one_line_and_exit_3(
    tmp_path: Path,
) -> None:
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file where the data folder should be")
    result = run("automl-db", "up", data=not_a_folder)
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("automl-db up: the embedded PostgreSQL (data folder ")
    assert "did not start" in line


def test_automl_db_a_refusal_of_the_database_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any named exception of database.errors a command does not handle itself."""
    from database import errors, metering
    from database.config import get_settings

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise errors.NoPriceBook("no price book in force for tier free", sqlstate="ML000")

    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw-secret@127.0.0.1:1/automl")
    monkeypatch.setattr(metering, "charge_usage", refuse)
    get_settings.cache_clear()
    try:
        assert cli.main(["charge-usage"]) == cli.Exit.FAILED == 1
    finally:
        get_settings.cache_clear()
    captured = capsys.readouterr()
    assert captured.err == (
        "automl-db charge-usage: no price book in force for tier free (NoPriceBook)\n"
    )
    assert captured.out == ""


def test_automl_db_main_leaves_the_callers_logging_as_it_was(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    assert cli.main(["--version"]) == 0
    assert (list(root.handlers), root.level) == (handlers, level)
    capsys.readouterr()
