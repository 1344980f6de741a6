"""``automl-db``'s progress bars: drawn on standard error when it is a terminal (here a
console forced to be one), never when it is not; the work and the report the same."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console
from test_clean import cli_db, world  # noqa: F401  (the fixture)

from database import cli


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, force_interactive=True, width=100)
    monkeypatch.setattr(cli, "_console", lambda: console)
    return screen


def test_clean_verify_seed_purge_draw_a_bar_on_a_terminal(
    sql: Any,
    engine: Any,
    cli_db: Any,  # noqa: F811  (the fixture of test_clean)
    terminal: io.StringIO,
    capsys: Any,
) -> None:
    world(sql, engine)
    assert cli.main(["clean", "--before", "2026-06-01", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "jobs: 6 rows" in out  # the same report as off a terminal
    drawn = terminal.getvalue()
    assert "removing rows" in drawn
    assert "\x1b[" in drawn  # drawn with the terminal's control sequences, on its console
    assert "100%" in drawn  # counts, not only the time: done of total, and the percent

    for argv, label in (
        (["verify"], "checking"),
        (["seed"], "seeding credit packages"),
        (["purge", "--dry-run"], "counting users deleted"),
    ):
        terminal.seek(0)
        terminal.truncate()
        assert cli.main(argv) == 0
        assert label in terminal.getvalue(), argv
    assert "\x1b[" not in capsys.readouterr().out  # reports stay plain on standard output


def test_no_bar_off_a_terminal(
    sql: Any,
    engine: Any,
    cli_db: Any,  # noqa: F811  (the fixture of test_clean)
    capsys: Any,
) -> None:
    world(sql, engine)
    assert cli.main(["clean", "--before", "2026-06-01"]) == 0
    captured = capsys.readouterr()
    assert "removing rows" not in captured.err and "\x1b[" not in captured.err
