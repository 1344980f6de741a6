"""Metering on / off: what ``admit`` + ``record_request`` add to one online request.

    uv run python -m bench.metering [--seconds 3] [--reps 3] [--clients 1,4] [--doc -]

One request is what the predict path does besides HTTP: build a one-row DataFrame
from a record and call a loaded scikit-learn model's ``predict`` (a
LogisticRegression on 8 features). *off* runs just that; *on* wraps it in
``metering.admit`` (one call to ``public.usage_admit``: quotas, the user's lock, the
hold) and ``metering.record_request`` (one statement: the request log row, the hold
released, the usage event and its meter). Clients are threads, each with its own
pooled connection, for ``--seconds`` per run; the variants are interleaved and
their order alternates from one repetition to the next; the median of the reps is
reported. ``distinct``: every client is a user of its own; ``hot``: all clients
are one user (admissions serialize on the user's row lock, records on the meter's).

``ratio`` is on / off throughput; the issue's goal is >= 0.9 for the whole predict
route, of which this is the metering part: serving's benchmark (HTTP, parsing,
the model) adds the same fixed cost to both sides, so the ratio of the route is
higher than the one here. ``metering only`` is admit + record with no model at all:
the absolute cost per request.

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


def _run(clients: int, seconds: float, one: Callable[[int], None]) -> float:
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
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def run(
    url: Any, *, seconds: float, reps: int, clients: tuple[int, ...], log: Any
) -> dict[str, Any]:
    from database import credits, errors
    from database.models import User

    engine = errors.install(create_engine(url, pool_size=max(clients) + 2, max_overflow=4))
    predict = _model()
    users = []
    with Session(engine) as s:
        for i in range(max(clients)):
            user = User(email=f"bench-metering-{uuid.uuid4().hex[:8]}-{i}@example.com")
            s.add(user)
            s.flush()
            users.append(user.id)
        s.commit()
        for uid in users:
            credits.adjust(s, uid, 1_000_000_000, "bench", "bench")
    deployment = uuid.uuid4()

    def off(i: int) -> None:
        predict()

    def on(user_of: Callable[[int], uuid.UUID]) -> Callable[[int], None]:
        return lambda i: metered(engine, user_of(i), deployment, predict)

    def meter_only(i: int) -> None:
        metered(engine, users[i], deployment, lambda: 1)

    variants: dict[str, Callable[[int], None]] = {
        "off": off,
        "on (distinct users)": on(lambda i: users[i]),
        "on (one hot user)": on(lambda i: users[0]),
        "metering only": meter_only,
    }
    results: list[dict[str, Any]] = []
    for n in clients:
        tps: dict[str, list[float]] = {k: [] for k in variants}
        for rep in range(reps):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for name in order:
                tps[name].append(_run(n, seconds, variants[name]))
                log(f"clients {n} rep {rep + 1} {name}: {tps[name][-1]:.0f}/s")
        med = {k: statistics.median(v) for k, v in tps.items()}
        results.append(
            {
                "clients": n,
                "tps": med,
                "ratio_distinct": med["on (distinct users)"] / med["off"],
                "ratio_hot": med["on (one hot user)"] / med["off"],
                "metering_us": 1e6 * n / med["metering only"],
                "all": tps,
            }
        )
    engine.dispose()
    return {"seconds": seconds, "reps": reps, "results": results}


def render_section(data: dict[str, Any], machine: dict[str, str], note: str) -> str:
    lines = [
        TITLE,
        "",
        "`uv run python -m bench.metering` (bench/metering.py): one online request's work"
        " besides HTTP (a one-row DataFrame and a LogisticRegression's `predict`) without"
        " metering (*off*) and wrapped in `metering.admit` + `metering.record_request` (*on*),"
        f" threads as clients, {data['seconds']} s per run, median of {data['reps']}"
        " interleaved repetitions. Requests per second:",
        "",
        "| clients | off | on, distinct users | on, one hot user | metering only |"
        " ratio on/off (distinct) | ratio on/off (hot) | metering per request |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data["results"]:
        t = r["tps"]
        lines.append(
            f"| {r['clients']} | {t['off']:.0f} | {t['on (distinct users)']:.0f}"
            f" | {t['on (one hot user)']:.0f} | {t['metering only']:.0f}"
            f" | {r['ratio_distinct']:.2f} | {r['ratio_hot']:.2f}"
            f" | {r['metering_us']:.0f} µs |"
        )
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
        data = run(
            db.url,
            seconds=a.seconds,
            reps=a.reps,
            clients=tuple(int(c) for c in a.clients.split(",")),
            log=log,
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
        end = text.find("\n## ", start + len(TITLE))
        text = text[:start] + section + ("\n" + text[end:] if end != -1 else "\n")
    elif "\n## What was changed for this" in text:
        at = text.index("\n## What was changed for this") + 1
        text = text[:at] + section + "\n\n" + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
