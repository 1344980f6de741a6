"""The table of live workers (``database.worker_registry``): heartbeats, clean exits,
what counts as alive, pruning; its rules through raw SQL, the ORM and the apps' role."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from database import errors, worker_registry
from database.models import Worker


def _beat(engine: Engine, name: str, *, lease: float = 30.0, slots: int = 2) -> None:
    with engine.begin() as conn:
        worker_registry.beat(
            conn, name=name, hostname="host", pid=1234, slots=slots, lease_seconds=lease
        )


def _alive(engine: Engine) -> int:
    with engine.connect() as conn:
        return worker_registry.alive_count(conn)


def _row(sql: Any, name: str) -> Any:
    return sql("SELECT * FROM workers WHERE name = :n", n=name)[0]


def test_a_beat_registers_then_refreshes_one_row(engine: Engine, sql: Any) -> None:
    assert _alive(engine) == 0
    _beat(engine, "w1")
    first = _row(sql, "w1")
    assert first.stopped_at is None and first.started_at == first.last_seen_at
    _beat(engine, "w1", slots=4)
    again = _row(sql, "w1")
    assert again.id == first.id and again.started_at == first.started_at
    assert again.last_seen_at > first.last_seen_at and again.slots == 4
    assert sql("SELECT count(*) FROM workers")[0][0] == 1
    assert _alive(engine) == 1


def test_a_clean_exit_is_not_alive_and_a_new_beat_revives(engine: Engine, sql: Any) -> None:
    _beat(engine, "w1")
    _beat(engine, "w2")
    with engine.begin() as conn:
        worker_registry.stopped(conn, "w1")
    assert _row(sql, "w1").stopped_at is not None
    assert _alive(engine) == 1
    _beat(engine, "w1")
    assert _row(sql, "w1").stopped_at is None and _alive(engine) == 2


def test_a_silent_worker_is_not_alive_after_two_of_its_leases(engine: Engine, sql: Any) -> None:
    _beat(engine, "quick", lease=10)
    _beat(engine, "slow", lease=600)
    # Both last seen 30 s ago: more than two leases of "quick", less than one of "slow".
    sql("UPDATE workers SET last_seen_at = now() - interval '30 s'")
    assert _alive(engine) == 1
    with engine.connect() as conn:
        names = conn.scalars(text("SELECT name FROM workers WHERE name = 'slow'")).all()
    assert names == ["slow"]
    sql("UPDATE workers SET last_seen_at = now() - interval '19 s' WHERE name = 'quick'")
    assert _alive(engine) == 2


def test_prune_deletes_only_long_gone_workers(engine: Engine, sql: Any) -> None:
    for name in ("live", "stopped-long-ago", "silent-long-ago", "stopped-today"):
        _beat(engine, name)
    sql(
        "UPDATE workers SET started_at = now() - interval '30 days',"
        " last_seen_at = now() - interval '20 days' WHERE name LIKE '%long-ago'"
    )
    sql(
        "UPDATE workers SET stopped_at = now() - interval '10 days' WHERE name = 'stopped-long-ago'"
    )
    sql("UPDATE workers SET stopped_at = now() WHERE name = 'stopped-today'")
    with engine.begin() as conn:
        assert worker_registry.prune(conn) == 2
    left = {r.name for r in sql("SELECT name FROM workers")}
    assert left == {"live", "stopped-today"}


def test_concurrent_first_beats_of_one_name_make_one_row(engine: Engine, sql: Any) -> None:
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def beat() -> None:
        try:
            barrier.wait()
            _beat(engine, "same")
        except BaseException as exc:  # pragma: no cover - the failure is the finding
            failures.append(exc)

    threads = [threading.Thread(target=beat) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    assert sql("SELECT count(*) FROM workers WHERE name = 'same'")[0][0] == 1


@pytest.mark.parametrize(
    ("column", "bad", "constraint"),
    [
        ("slots", 0, "ck_workers_slots_positive"),
        ("pid", 0, "ck_workers_pid_positive"),
        ("lease_seconds", 0, "ck_workers_lease_seconds_positive"),
    ],
)
def test_the_rows_rules_hold_for_raw_sql_and_the_orm(
    engine: Engine, sql: Any, column: str, bad: Any, constraint: str
) -> None:
    values = {"name": f"w-{uuid.uuid4().hex[:6]}", "hostname": "h", "pid": 1, "slots": 1}
    values |= {"lease_seconds": 30.0, column: bad}
    with pytest.raises(errors.InvalidValue) as raw:
        sql(
            "INSERT INTO workers (name, hostname, pid, slots, lease_seconds)"
            " VALUES (:name, :hostname, :pid, :slots, :lease_seconds)",
            **values,
        )
    assert raw.value.constraint == constraint
    with Session(engine) as session, pytest.raises(errors.InvalidValue) as orm:
        session.add(Worker(**values))
        session.commit()
    assert orm.value.constraint == constraint


def test_a_name_is_one_row(engine: Engine, sql: Any) -> None:
    _beat(engine, "taken")
    with pytest.raises(errors.AlreadyExists) as raw:
        sql(
            "INSERT INTO workers (name, hostname, pid, slots, lease_seconds)"
            " VALUES ('taken', 'h', 1, 1, 30)"
        )
    assert raw.value.constraint == "uq_workers_name"
    with Session(engine) as session, pytest.raises(errors.AlreadyExists):
        session.add(Worker(name="taken", hostname="h", pid=1, slots=1, lease_seconds=30.0))
        session.commit()


def test_the_apps_role_beats_stops_counts_and_prunes(app_engine: Engine, sql: Any) -> None:
    _beat(app_engine, "as-app")
    assert _alive(app_engine) == 1
    with app_engine.begin() as conn:
        worker_registry.stopped(conn, "as-app")
    assert _alive(app_engine) == 0
    with app_engine.begin() as conn:
        assert worker_registry.prune(conn, older_than=dt.timedelta(0)) == 1
    assert sql("SELECT count(*) FROM workers")[0][0] == 0
