"""Metering on / off: what the admission and the request log add to the predict route.

    uv run python -m bench.metering [--seconds 3] [--reps 3] [--clients 1,4] [--doc -]

One request is the predict route's database and model work, without HTTP, as
``automl-serve`` does it on a pooled connection in autocommit:

- *route off*: the deployment read (``deployments.resolve``, one statement) and the
  model (a one-row DataFrame and a LogisticRegression's ``predict`` on 8 features):
  what the route would do with no metering at all;
- *route on*: as ``automl-serve``'s quick way: the credit taken from the process's
  lease (``metering.CreditLeases``: one statement per block of credit, the user's
  lock and hold then), the deployment read with the admission in the same statement
  (``deployments.admit_serving``: the key's quotas), the model, and the request's
  record added to a ``metering.RequestLog`` (written by its thread in batches during
  the run: the log row, the lease's hold reduced, the usage event and its meter);
- *model only*: the model alone (the worst case: no database at all);
- *metering only*: route on without a model (the absolute cost per request).

Clients are threads, for ``--seconds`` per run; the variants are interleaved and
their order alternates from one repetition to the next; the median of the reps is
reported. ``distinct``: every client is a user of its own; ``hot``: all clients
are one user (admissions serialize on the user's row lock). The issue's goal, the
request log and metering on / off >= 0.9, is ``route on / route off``. After the
run, ``verify_usage`` must find nothing (usage equals the meters and charges).

Serving's benchmark can call :func:`metered` around its own request function.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from database import metering

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "performance.md"
TITLE = "## Metering on / off (issue 14)"


def metered(
    engine: Engine,
    user_id: uuid.UUID,
    deployment_id: uuid.UUID,
    work: Callable[[], int],
    api_key_id: uuid.UUID | None = None,
) -> None:
    """One request through metering: admit 1 row, ``work()`` (returns the rows
    predicted), record it."""
    from database import metering
    from database.models import InferenceStatus

    request_id = uuid.uuid4().hex
    with Session(engine) as s:
        metering.admit(
            s,
            user_id=user_id,
            api_key_id=api_key_id,
            deployment_id=deployment_id,
            rows=1,
            request_id=request_id,
        )
    started = time.perf_counter()
    rows = work()
    metering.record_request(
        engine,
        user_id=user_id,
        api_key_id=api_key_id,
        deployment_id=deployment_id,
        model_version_id=None,
        rows=rows,
        latency_ms=(time.perf_counter() - started) * 1000,
        status=InferenceStatus.OK,
        error_class=None,
        request_id=request_id,
    )


def _model() -> Callable[[], int]:
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    columns = [f"f{i}" for i in range(8)]
    x = pd.DataFrame(rng.normal(size=(500, 8)), columns=columns)
    y = (x["f0"] + x["f1"] > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    record = {c: float(v) for c, v in zip(columns, rng.normal(size=8), strict=True)}

    def predict() -> int:
        frame = pd.DataFrame([record], columns=columns)
        return len(model.predict(frame))

    return predict


def _run(
    clients: int, seconds: float, one: Callable[[int], None], pg_pid: int | None = None
) -> tuple[float, float, float]:
    """Requests per second, and CPU milliseconds per request of this process (all its
    threads: the clients and the request log's) and of PostgreSQL (``pg_pid``'s tree)."""
    from bench.serving import tree_cpu_seconds

    stop = threading.Event()
    counts = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        barrier.wait()
        while not stop.is_set():
            one(i)
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0, cpu0, pg0 = time.perf_counter(), time.process_time(), tree_cpu_seconds(pg_pid)
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    done = max(1, sum(counts))
    return (
        sum(counts) / (time.perf_counter() - t0),
        1000 * (time.process_time() - cpu0) / done,
        1000 * (tree_cpu_seconds(pg_pid) - pg0) / done,
    )


def _deployment(session: Session, user_id: uuid.UUID) -> uuid.UUID:
    """A deployment of ``user_id`` serving a model version (a file never read here)."""
    from sqlalchemy import text

    from database import deployments, registry

    model_id = session.execute(
        text(
            "INSERT INTO models (user_id, name, algorithm, problem_type, s3_path, size_bytes)"
            " VALUES (:u, 'bench', 'logistic_regression', 'classification', 'bench://m', 1)"
            " RETURNING id"
        ),
        {"u": user_id},
    ).scalar_one()
    rm = registry.create_registered_model(session, user_id, f"bench-{uuid.uuid4().hex[:6]}")
    version = registry.register_version(session, rm.id, model_id)
    found = deployments.create(session, user_id, "bench", model_version_id=version.id)
    session.flush()
    return found.id


def run(
    url: Any,
    *,
    seconds: float,
    reps: int,
    clients: tuple[int, ...],
    log: Any,
    pg_pid: int | None = None,
) -> dict[str, Any]:
    from database import credits, deployments, errors
    from database.models import User
    from pipeline.serving import DEFAULT_MAX_ROWS

    engine = errors.install(create_engine(url, pool_size=max(clients) + 2, max_overflow=4))
    predict = _model()
    users: list[uuid.UUID] = []
    targets: list[tuple[uuid.UUID, uuid.UUID]] = []  # (deployment, version)
    with Session(engine) as s:
        for i in range(max(clients)):
            user = User(email=f"bench-metering-{uuid.uuid4().hex[:8]}-{i}@example.com")
            s.add(user)
            s.flush()
            users.append(user.id)
            d = _deployment(s, user.id)
            targets.append((d, deployments.resolve(s, user.id, d).model_version_id))  # type: ignore[arg-type]
        s.commit()
        for uid in users:
            credits.adjust(s, uid, 1_000_000_000, "bench", "bench")
    request_log = metering.RequestLog(engine)
    # The serving process's credit leases (its quick way): the credit admitted
    # locally, the statement counts the key's quotas only.
    leases = metering.CreditLeases()

    def read_only(i: int) -> None:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            deployments.resolve(conn, users[i], targets[i][0])

    def admitted(
        user: uuid.UUID, target: tuple[uuid.UUID, uuid.UUID], work: Callable[[], int]
    ) -> None:
        started = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            leased = leases.take(conn, user, 1)
            found = deployments.admit_serving(
                conn,
                user,
                target[0],
                model_version_id=target[1],
                rows=1,
                amount_micro=0,
                api_key_id=None,
                request_id=None,
                hold_seconds=metering.HOLD_SECONDS,
                default_max_rows=DEFAULT_MAX_ROWS,
            )
        assert found.admitted
        rows = work()
        request_log.add(
            metering.RequestRecord.make(
                user_id=user,
                api_key_id=None,
                deployment_id=target[0],
                model_version_id=target[1],
                rows=rows,
                latency_ms=(time.perf_counter() - started) * 1000,
                status=metering.InferenceStatus.OK,
                error_class=None,
                request_id=uuid.uuid4().hex,
                hold_id=leased.hold_id,
                leased_micro=leased.amount_micro,
            )
        )

    variants: dict[str, Callable[[int], None]] = {
        "model only": lambda i: (predict(), None)[1],
        "route off": lambda i: (read_only(i), predict(), None)[2],
        "route on (distinct users)": lambda i: admitted(users[i], targets[i], predict),
        "route on (one hot user)": lambda i: admitted(users[0], targets[0], predict),
        "metering only": lambda i: admitted(users[i], targets[i], lambda: 1),
    }
    results: list[dict[str, Any]] = []
    for n in clients:
        tps: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        pg: dict[str, list[float]] = {k: [] for k in variants}
        for rep in range(reps):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for name in order:
                rate, own, db_ms = _run(n, seconds, variants[name], pg_pid)
                tps[name].append(rate)
                cpu[name].append(own)
                pg[name].append(db_ms)
                log(
                    f"clients {n} rep {rep + 1} {name}: {rate:.0f}/s, CPU {own:.2f} ms"
                    f" + PostgreSQL {db_ms:.2f} ms per request"
                )
        med = {k: statistics.median(v) for k, v in tps.items()}
        results.append(
            {
                "clients": n,
                "tps": med,
                "ratio_distinct": med["route on (distinct users)"] / med["route off"],
                "ratio_hot": med["route on (one hot user)"] / med["route off"],
                "ratio_model": med["route on (distinct users)"] / med["model only"],
                "metering_us": 1e6 * n / med["metering only"],
                "cpu_ms": {k: statistics.median(v) for k, v in cpu.items()},
                "pg_cpu_ms": {k: statistics.median(v) for k, v in pg.items()},
                "all": tps,
            }
        )
    request_log.close()
    leases.close(engine)
    with engine.connect() as conn:
        problems = metering.verify_usage(conn, users)
    assert not problems, problems
    engine.dispose()
    return {"seconds": seconds, "reps": reps, "results": results}


def render_section(data: dict[str, Any], machine: dict[str, str], note: str) -> str:
    lines = [
        TITLE,
        "",
        "`uv run python -m bench.metering` (bench/metering.py): the predict route's database"
        " and model work without HTTP, threads as clients, each on a pooled connection in"
        " autocommit as `automl-serve`, one-row requests. *route off*: the deployment read"
        " (`deployments.resolve`, one statement) and the model (a one-row DataFrame and a"
        " LogisticRegression's `predict`); *route on*: the credit taken from the process's"
        " lease (`metering.CreditLeases`: a statement once per block), the same read with the"
        " admission in it (`deployments.admit_serving`, one statement: the deployment, the"
        " key's quotas), the model, and the request's record added to the buffered"
        " `metering.RequestLog` (written in batches by its thread, in the run);"
        " *model only*: the model alone; *metering only*: route on without a model."
        f" {data['seconds']} s per run, median of {data['reps']} interleaved repetitions."
        " Requests per second:",
        "",
        "| clients | model only | route off | route on, distinct users | route on, one hot user |"
        " metering only | on/off (distinct) | on/off (hot) | on / model only |"
        " metering per request |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data["results"]:
        t = r["tps"]
        lines.append(
            f"| {r['clients']} | {t['model only']:.0f} | {t['route off']:.0f}"
            f" | {t['route on (distinct users)']:.0f} | {t['route on (one hot user)']:.0f}"
            f" | {t['metering only']:.0f} | {r['ratio_distinct']:.2f} | {r['ratio_hot']:.2f}"
            f" | {r['ratio_model']:.2f} | {r['metering_us']:.0f} µs |"
        )
    lines += [
        "",
        "CPU milliseconds per request (this process's threads + PostgreSQL's backends;"
        " less moved by the machine's other load than requests per second):",
        "",
        "| clients | model only | route off | route on, distinct users |"
        " route on, one hot user | metering only |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data["results"]:
        c, g = r.get("cpu_ms"), r.get("pg_cpu_ms")
        if not c or not g:
            continue
        cells = [
            f"{c[k]:.2f} + {g[k]:.2f}"
            for k in (
                "model only",
                "route off",
                "route on (distinct users)",
                "route on (one hot user)",
                "metering only",
            )
        ]
        lines.append(f"| {r['clients']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Machine: {machine.get('cpu', '?')},"
        f" load at start {machine.get('load_average_at_start', '?')}."
        f" {note}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.metering", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--clients", default="1,4")
    p.add_argument("--doc", default=None, help="report path ('-' for none)")
    p.add_argument("--note", default="", help="a word on the machine's conditions")
    a = p.parse_args(argv)
    from bench.server import BenchDatabase, machine_description

    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    machine = machine_description()
    db = BenchDatabase()
    try:
        from bench.serving import _postmaster_pid

        data = run(
            db.url,
            seconds=a.seconds,
            reps=a.reps,
            clients=tuple(int(c) for c in a.clients.split(",")),
            log=log,
            pg_pid=_postmaster_pid(db),
        )
    finally:
        db.close()
    data["machine"] = machine
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"metering-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps(data, indent=2, default=str)
    )
    section = render_section(data, machine, a.note)
    print()
    print(section)
    if a.doc != "-":
        doc = Path(a.doc) if a.doc else DOC
        _write(doc, section)
        log(f"report: {doc}")
    return 0


def _write(doc: Path, section: str) -> None:
    text = doc.read_text() if doc.exists() else ""
    if TITLE in text:
        start = text.index(TITLE)
        # The section's lead and tables are replaced; its ### subsections (the
        # hand-written runs and readings) are kept.
        ends = [
            i for i in (text.find(m, start + len(TITLE)) for m in ("\n### ", "\n## ")) if i != -1
        ]
        end = min(ends) if ends else -1
        text = text[:start] + section + ("\n" + text[end:] if end != -1 else "\n")
    elif "\n## What was changed for this" in text:
        at = text.index("\n## What was changed for this") + 1
        text = text[:at] + section + "\n\n" + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
