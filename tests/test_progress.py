"""The progress the long work of ``automl-db`` tells (``database.progress``): clean,
purge, verify and seed call ``progress(done, total, what)`` with counts of their own
unit that grow up to the total, the last call at ``done == total``; what they count
is what they did (the rows removed, the checks and users repaired, the rows seeded)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from test_clean import world
from test_lifecycle import LONG_AGO, rich_user
from test_verify import busy_user, untriggered

from database import lifecycle, seed
from database.clean import clean
from database.lifecycle import LocalFileRemover, purge
from database.verify import CHECKS, verify

Calls = list[tuple[int, int, str]]


def recorder() -> tuple[Calls, Any]:
    calls: Calls = []
    return calls, lambda done, total, what: calls.append((done, total, what))


def assert_grows_to_the_total(calls: Calls) -> int:
    """``done`` never goes back and never passes ``total``; the last call is at the
    total. Returns it."""
    assert calls
    done = [d for d, _, _ in calls]
    assert done == sorted(done), calls
    assert all(0 <= d <= t for d, t, _ in calls), calls
    last_done, last_total, _ = calls[-1]
    assert last_done == last_total, calls
    return last_total


BEFORE = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def test_clean_counts_the_rows_first_then_each_committed_batch(sql: Any, engine: Engine) -> None:
    world(sql, engine)
    calls, progress = recorder()
    report = clean(engine, BEFORE, what=["jobs", "webhooks"], batch_size=2, progress=progress)
    removed = sum(report.rows.values())
    assert removed > 6
    assert calls[0] == (0, removed, "counted")  # the count is what was then removed
    assert assert_grows_to_the_total(calls) == removed
    # one call per committed batch (a batch of at most 2 rows), then the end
    steps = [b - a for (a, _, _), (b, _, _) in zip(calls, calls[1:], strict=False)]
    assert all(0 <= s <= 2 for s in steps) and len(calls) >= removed // 2
    assert {what for _, _, what in calls[1:-1]} <= set(report.rows)

    dry_calls, dry = recorder()
    clean(engine, BEFORE, what=["jobs", "webhooks"], dry_run=True, progress=dry)
    assert [d for d, _, _ in dry_calls[:-1]] == list(range(1, len(dry_calls)))
    assert_grows_to_the_total(dry_calls)


def test_purge_counts_the_rows_first_then_each_batch(
    sql: Any, session: Any, engine: Engine, tmp_path: Path
) -> None:
    for _ in range(2):
        user_id = rich_user(sql, session, tmp_path)["user"]
        lifecycle.soft_delete_user(session, user_id, at=LONG_AGO)

    dry_calls, dry = recorder()
    counted = purge(engine, dry_run=True, counts=dry)
    assert_grows_to_the_total(dry_calls)
    to_remove = sum(counted.rows.values())

    calls, counts = recorder()
    report = purge(engine, batch_size=3, remove_file=LocalFileRemover(tmp_path), counts=counts)
    removed = sum(report.rows.values())
    assert removed == to_remove > 3
    assert calls[0] == (0, removed, "counted")
    assert assert_grows_to_the_total(calls) == removed
    assert len({d for d, _, _ in calls}) > 2  # batches of 3 rows: several steps


def test_verify_counts_its_checks_then_the_repairs(sql: Any, session: Any, engine: Engine) -> None:
    calls, progress = recorder()
    assert verify(engine, progress=progress).ok
    assert [(d, t) for d, t, _ in calls] == [(i, len(CHECKS)) for i in range(1, len(CHECKS) + 1)]
    assert [what for _, _, what in calls] == list(CHECKS)

    # Two users to repair: the total grows once, by the two users and the checks again.
    users = [busy_user(sql, session) for _ in range(2)]
    for user_id in users:
        untriggered(engine, "UPDATE users SET dataset_count = 9 WHERE id = :u", u=user_id)
    calls, progress = recorder()
    report = verify(engine, repair=True, progress=progress)
    assert report.ok and len(report.repaired) == 2
    total = assert_grows_to_the_total(calls)
    assert total == 2 * len(CHECKS) + 2
    assert sorted({t for _, t, _ in calls}) == [len(CHECKS), total]
    assert sum("repaired user" in what for _, _, what in calls) == 2


def test_seed_counts_each_row(engine: Engine) -> None:
    calls, progress = recorder()
    seed.seed(engine, progress)
    total = len(seed.CREDIT_PACKAGES) + len(seed.TUTORIALS)
    assert [(d, t) for d, t, _ in calls] == [(i, total) for i in range(1, total + 1)]
