"""Serving: our predict against MLflow's scoring server and a bare endpoint; batch
prediction against ``model.predict`` in one process.

    python -m bench.serving             full run; writes the "Serving" section of
                                        docs/performance.md
    python -m bench.serving --quick     short; bench/results/ only
    python -m bench.serving --seconds 8 --reps 2 --doc -
                                        the integrator's run: both online points,
                                        batch, and metering on / off at 1 and 4
                                        clients (bench/metering.py), no report
    python -m bench.serving --sides ours,ours-off --no-metering --seconds 3 --reps 4
                                        metering on / off over HTTP only (issue 14)

**Online.** One model (the platform's pipeline: imputation, scaling, one-hot, a
random forest of 50 trees, fitted on 20,000 rows of 4 columns), one record per request,
1 and 8 concurrent clients (asyncio + httpx in this process), each side for
``--seconds``, the sides alternating, repeated ``--reps`` times; each side is one
uvicorn process:

- **ours**: ``automl-serve`` (``api.serving.app``): the API key checked and the
  deployment read with the request's admission (quotas, the credit hold) in one
  statement per request, model from the cache, the signature check, the request
  logged and metered through the buffered request log (written in batches), the
  answer with probabilities; the bench user has credits and pays for every row;
- **ours, metering off** (``ours-off``): the same ``automl-serve``, settings and pool,
  started by ``bench/serve_unmetered.py``, which replaces the ``Predictor`` in that
  process only: the deployment read with ``deployments.resolve`` (no admission, no
  quota, no credit lease or hold) and no request record (no ``RequestLog``), on a
  deployment of its own of the same version; checked to answer what ours answers (5
  rows) and to write no ``inference_requests`` row. ours / ours-off is issue 14's
  metering on / off over HTTP (goal >= 0.9);
- **mlflow**: ``mlflow models serve --env-manager local`` of the same fitted
  pipeline saved with ``mlflow.sklearn.save_model``, in a virtualenv of its own
  (``.data/bench-mlflow``: mlflow pins pyarrow below ours, so it is kept out of the
  workspace's lock), body ``{"dataframe_records": [...]}``;
- **bare**: a starlette app that parses the JSON, builds the frame and calls
  ``model.predict`` (no auth, no checks, no probabilities).

Throughput is requests per second; p99 the 99th percentile latency. Goals: ours
>= 1.0x MLflow with p99 no worse; >= 0.7x bare; >= 0.9x ours-off (issue 14).

**Batch.** A dataset version of ``--batch-rows`` (1,000,000) rows as Parquet: the
``batch_prediction`` job kind's handler (claimed and dispatched as the worker does:
read in chunks, score, write Parquet to storage) against ``pd.read_parquet`` +
``model.predict`` in one process. Goal >= 0.8x.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "performance.md"
TITLE = "## Serving"
MLFLOW_VENV = REPO / ".data" / "bench-mlflow"
MLFLOW_VERSION = "3.17.2"
#: The online sides, all by default (``--sides`` picks some for a quick run).
SIDES = ("ours", "ours-off", "mlflow", "bare")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_ticks() -> dict[int, tuple[int, int]]:
    """Every process's parent and CPU time so far (user + system, clock ticks)."""
    out: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


def tree_cpu_seconds(pid: int | None) -> float:
    """CPU seconds used so far by ``pid`` and its live descendants (Linux /proc; 0
    elsewhere or for None): a figure of the work a side does per request that the
    machine's other load does not change much, unlike its requests per second."""
    if pid is None or not os.path.isdir("/proc"):
        return 0.0
    table = _cpu_ticks()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += table.get(current, (0, 0))[1]
        todo.extend(children.get(current, []))
    return total / os.sysconf("SC_CLK_TCK")


def _postmaster_pid(db: Any) -> int | None:
    """The embedded PostgreSQL's postmaster (its backends are its children)."""
    folder = getattr(db, "_tmpdir", None)
    if not getattr(db, "embedded", False) or not folder:
        return None
    for found in Path(folder).rglob("postmaster.pid"):
        try:
            return int(found.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
    return None


def _wait_http(url: str, seconds: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {seconds} s")


def mlflow_python(log: Callable[[str], None]) -> Path:
    """The python of the benchmark's MLflow virtualenv, made (with uv) if missing:
    mlflow and the workspace's scikit-learn, numpy and pandas versions."""
    python = MLFLOW_VENV / "bin" / "python"
    if python.exists():
        return python
    import numpy
    import pandas
    import sklearn

    log(f"making {MLFLOW_VENV} (mlflow {MLFLOW_VERSION})")
    subprocess.run(
        ["uv", "venv", "--quiet", "--python", sys.executable, str(MLFLOW_VENV)], check=True
    )
    subprocess.run(
        [
            "uv",
            "pip",
            "install",
            "--quiet",
            f"mlflow=={MLFLOW_VERSION}",
            f"scikit-learn=={sklearn.__version__}",
            f"numpy=={numpy.__version__}",
            f"pandas=={pandas.__version__}",
        ],
        check=True,
        env={**os.environ, "VIRTUAL_ENV": str(MLFLOW_VENV)},
    )
    return python


BARE_APP = """
import io, json, sys
import joblib, pandas as pd
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from starlette.concurrency import run_in_threadpool

model = joblib.load(sys.argv[1])

def score(body):
    frame = pd.DataFrame(json.loads(body)["records"])
    return json.dumps({"predictions": model.predict(frame).tolist()}).encode()

async def predict(request):
    return Response(await run_in_threadpool(score, await request.body()),
                    media_type="application/json")

async def ping(request):
    return Response(b"ok")

app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/ping", ping)])
"""


async def _load(
    url: str, body: bytes, headers: dict[str, str], clients: int, seconds: float
) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await http.post(url, content=body, headers=headers)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": p99 * 1000,
        "requests": len(latencies),
        "errors": errors,
    }


def run(
    *,
    seconds: float,
    reps: int,
    clients: tuple[int, ...],
    batch_rows: int,
    trees: int = 50,
    sides: tuple[str, ...] = SIDES,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    import joblib
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from api.deps import new_api_key
    from api.policy import batch_quote
    from bench.server import BenchDatabase
    from database import credits, deployments, jobs, registry
    from database.models import UserTier
    from database.session import make_engine
    from database.storage import LocalStorage
    from pipeline.definition import PreprocessConfig
    from pipeline.execute import build_transformer, serialize
    from workers.kinds import Context, dispatch

    numeric = ["a", "b", "c"]
    rng = np.random.default_rng(0)

    def frame(rows: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "a": rng.normal(0, 1, rows),
                "b": rng.normal(5, 2, rows),
                "c": rng.normal(-1, 3, rows),
                "colour": rng.choice(["red", "green", "blue"], rows),
            }
        )

    train = frame(20_000)
    y = np.where(train["a"] + 0.3 * train["b"] > 1.5, "yes", "no")
    model = Pipeline(
        [
            ("preprocess", build_transformer(PreprocessConfig(), numeric, ["colour"])),
            ("model", RandomForestClassifier(n_estimators=trees, random_state=0)),
        ]
    ).fit(train, y)
    model[-1].set_params(n_jobs=None)
    record = frame(1).to_dict(orient="records")

    work = Path(tempfile.mkdtemp(prefix="automl-bench-serving-"))
    db = BenchDatabase()
    processes: list[subprocess.Popen[bytes]] = []
    pids: dict[str, int] = {}
    results: dict[str, Any] = {
        "sides": list(sides),
        "trees": trees,
        "clients": list(clients),
        "seconds": seconds,
        "reps": reps,
    }
    try:
        storage = LocalStorage(work / "storage")
        engine = make_engine(db.url)
        data = serialize(model)
        artifact = work / "model.joblib"
        artifact.write_bytes(data)
        key, prefix, digest = new_api_key()
        with Session(engine) as session:
            user = session.execute(
                text("INSERT INTO users (email) VALUES ('bench@example.com') RETURNING id")
            ).scalar_one()
            session.execute(
                text(
                    "INSERT INTO api_keys (user_id, name, prefix, key_hash, scopes)"
                    " VALUES (:u, 'bench', :p, :h, ARRAY['read', 'write'])"
                ),
                {"u": user, "p": prefix, "h": digest},
            )
            model_id = uuid.uuid4()
            location = storage.write_bytes(f"models/{user}/{model_id}.joblib", data)
            session.execute(
                text(
                    "INSERT INTO models (id, user_id, name, algorithm, problem_type, s3_path,"
                    " size_bytes) VALUES (:m, :u, 'bench', 'random_forest', 'classification',"
                    " :s, :b)"
                ),
                {"m": model_id, "u": user, "s": location, "b": len(data)},
            )
            rm = registry.create_registered_model(session, user, "bench")
            signature = {
                "inputs": [{"name": c, "type": "double"} for c in numeric]
                + [{"name": "colour", "type": "string"}]
            }
            version = registry.register_version(session, rm.id, model_id, signature=signature)
            deployment = deployments.create(session, user, "bench", model_version_id=version.id)
            session.commit()
            deployment_id = deployment.id
            # The metering-off side's own deployment of the same version: its requests
            # are told from ours' in inference_requests (it must write none).
            off_deployment_id = deployments.create(
                session, user, "bench-off", model_version_id=version.id
            ).id
            session.commit()
            credits.adjust(session, user, 1_000_000, "bench credits", "bench")
            session.commit()

        env = {
            **os.environ,
            "DATABASE_URL": db.url.render_as_string(hide_password=False),
            "STORAGE_URL": str(work / "storage"),
            "HOST": "127.0.0.1",
        }
        ours_port, off_port, mlflow_port, bare_port = _port(), _port(), _port(), _port()

        def start(name: str, process: subprocess.Popen[bytes]) -> None:
            processes.append(process)
            pids[name] = process.pid

        # ours and ours-off: the same settings, environment and pool; ours-off is
        # bench/serve_unmetered.py (automl-serve with the metering left out, in that
        # process only).
        for name, module, port in (
            ("ours", "api.serving.app", ours_port),
            ("ours-off", "bench.serve_unmetered", off_port),
        ):
            if name not in sides:
                continue
            start(
                name,
                subprocess.Popen(
                    [sys.executable, "-m", module],
                    # A serving process's recommended pool setting (docs/serving.md): no
                    # pre-ping round trip for a connection back in the pool within 5 s.
                    env={
                        **env,
                        "SERVE_PORT": str(port),
                        "DB_POOL_PRE_PING_IDLE_S": os.environ.get("DB_POOL_PRE_PING_IDLE_S", "5"),
                    },
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                ),
            )
        (work / "bare.py").write_text(BARE_APP)
        if "bare" in sides:
            start(
                "bare",
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "import sys, uvicorn; sys.argv = ['bare', sys.argv[1]];"
                        f" sys.path.insert(0, {str(work)!r}); import bare;"
                        f" uvicorn.run(bare.app, host='127.0.0.1', port={bare_port},"
                        " log_level='warning', access_log=False)",
                        str(artifact),
                    ],
                    env=env,
                ),
            )
        if "mlflow" in sides:
            python = mlflow_python(log)
            mlflow_dir = work / "mlflow-model"
            subprocess.run(
                [
                    str(python),
                    "-c",
                    "import sys, joblib, mlflow.sklearn;"
                    " mlflow.sklearn.save_model(joblib.load(sys.argv[1]), sys.argv[2],"
                    " serialization_format='cloudpickle')",
                    str(artifact),
                    str(mlflow_dir),
                ],
                check=True,
                capture_output=True,
            )
            start(
                "mlflow",
                subprocess.Popen(
                    [
                        str(python.parent / "mlflow"),
                        "models",
                        "serve",
                        "-m",
                        str(mlflow_dir),
                        "-p",
                        str(mlflow_port),
                        "-h",
                        "127.0.0.1",
                        "--env-manager",
                        "local",
                        "-w",
                        "1",
                    ],
                    env={
                        **os.environ,
                        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                        "MLFLOW_TRACKING_URI": f"file://{work / 'mlruns'}",
                    },
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
            )
        import httpx

        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        plain = {"Content-Type": "application/json"}
        records = json.dumps({"records": record}).encode()
        endpoints = {
            "ours": (
                f"http://127.0.0.1:{ours_port}/v1/deployments/{deployment_id}/predict",
                records,
                auth,
                f"http://127.0.0.1:{ours_port}/healthz",
            ),
            "ours-off": (
                f"http://127.0.0.1:{off_port}/v1/deployments/{off_deployment_id}/predict",
                records,
                auth,
                f"http://127.0.0.1:{off_port}/healthz",
            ),
            "mlflow": (
                f"http://127.0.0.1:{mlflow_port}/invocations",
                json.dumps({"dataframe_records": record}).encode(),
                plain,
                f"http://127.0.0.1:{mlflow_port}/ping",
            ),
            "bare": (
                f"http://127.0.0.1:{bare_port}/predict",
                records,
                plain,
                f"http://127.0.0.1:{bare_port}/ping",
            ),
        }
        targets = {s: endpoints[s][:3] for s in endpoints if s in sides}
        for name in targets:  # mlflow's imports alone take 30 s and more on a loaded machine
            _wait_http(endpoints[name][3], seconds=600.0 if name == "mlflow" else 120.0)
        for name, (url, body, headers) in targets.items():  # warm up, and check the answers
            r = httpx.post(url, content=body, headers=headers, timeout=30)
            assert r.status_code == 200, (name, r.text)
            asyncio.run(_load(url, body, headers, 1, min(1.0, seconds)))
        if "ours" in targets and "ours-off" in targets:
            # Metering off answers what ours answers (the same model, predictions and
            # probabilities), row for row.
            rows_body = json.dumps({"records": frame(5).to_dict(orient="records")}).encode()
            answers = [
                httpx.post(targets[s][0], content=rows_body, headers=auth, timeout=30)
                for s in ("ours", "ours-off")
            ]
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
            on, off = (a.json() for a in answers)
            assert len(on["predictions"]) == 5, on
            assert on == off, (on, off)
        pg_pid = _postmaster_pid(db)
        online: dict[str, Any] = {}
        order = list(targets)
        for n in clients:
            runs: dict[str, list[dict[str, float]]] = {s: [] for s in targets}
            for rep in range(reps):
                turn = rep % len(order)
                for name in order[turn:] + order[:turn]:
                    url, body, headers = targets[name]
                    cpu0, pg0 = tree_cpu_seconds(pids[name]), tree_cpu_seconds(pg_pid)
                    got = asyncio.run(_load(url, body, headers, n, seconds))
                    done = max(1, got["requests"])
                    got["cpu_ms"] = 1000 * (tree_cpu_seconds(pids[name]) - cpu0) / done
                    got["pg_cpu_ms"] = 1000 * (tree_cpu_seconds(pg_pid) - pg0) / done
                    runs[name].append(got)
                    log(
                        f"  {n} clients {name}: {got['rps']:.0f} req/s, p50"
                        f" {got['p50_ms']:.1f} ms, CPU {got['cpu_ms']:.2f} ms/request"
                        f" (+ PostgreSQL {got['pg_cpu_ms']:.2f})"
                    )
            point: dict[str, Any] = {}
            for name, side_runs in runs.items():
                point[name] = {
                    "rps": statistics.median(g["rps"] for g in side_runs),
                    "p99_ms": statistics.median(g["p99_ms"] for g in side_runs),
                    "p50_ms": statistics.median(g["p50_ms"] for g in side_runs),
                    "errors": sum(g["errors"] for g in side_runs),
                    "cpu_ms": statistics.median(g["cpu_ms"] for g in side_runs),
                    "pg_cpu_ms": statistics.median(g["pg_cpu_ms"] for g in side_runs),
                }
            if "ours" in point:
                for other, ratio in (
                    ("mlflow", "vs_mlflow"),
                    ("bare", "vs_bare"),
                    ("ours-off", "metering_on_off"),
                ):
                    if other in point:
                        point[ratio] = point["ours"]["rps"] / point[other]["rps"]
            online[str(n)] = point
        results["online"] = online
        for p in processes:
            p.terminate()
        for p in processes:
            p.wait(30)
        processes.clear()
        # automl-serve's graceful shutdown wrote its buffered request log: every
        # request answered is logged, and its usage agrees with the meters.
        from database import metering

        with engine.connect() as conn:
            results["logged_requests"] = conn.execute(
                text("SELECT count(*) FROM inference_requests WHERE deployment_id = :d"),
                {"d": deployment_id},
            ).scalar_one()
            results["usage_problems"] = [p for _, p in metering.verify_usage(conn, [user])]
            # Metering off wrote no request record (its requests were answered above).
            results["off_logged_requests"] = conn.execute(
                text("SELECT count(*) FROM inference_requests WHERE deployment_id = :d"),
                {"d": off_deployment_id},
            ).scalar_one()
        assert results["off_logged_requests"] == 0, results["off_logged_requests"]

        # --- batch ---------------------------------------------------------------------
        log(f"batch: {batch_rows} rows")
        table = frame(batch_rows)
        buffer = io.BytesIO()
        table.to_parquet(buffer)
        del table
        with Session(engine) as session:
            dataset = session.execute(
                text("INSERT INTO datasets (user_id, name) VALUES (:u, 'b') RETURNING id"),
                {"u": user},
            ).scalar_one()
            source = storage.write_bytes(f"datasets/{user}/b.parquet", buffer.getvalue())
            dv = session.execute(
                text(
                    "INSERT INTO dataset_versions (dataset_id, user_id, s3_path, row_count,"
                    " status) VALUES (:d, :u, :s, :n, 'completed') RETURNING id"
                ),
                {"d": dataset, "u": user, "s": source, "n": batch_rows},
            ).scalar_one()
            session.commit()
        job_side: list[float] = []
        bare_side: list[float] = []
        for rep in range(reps):

            def bare() -> None:
                t0 = time.perf_counter()
                frame_in = pd.read_parquet(source)
                joblib.load(artifact).predict(frame_in)
                bare_side.append(time.perf_counter() - t0)

            def job() -> None:
                with Session(engine) as session:
                    deployments.enqueue_batch(
                        session,
                        user,
                        deployment_id,
                        dv,
                        quote=lambda rows: batch_quote(session, UserTier.FREE, rows),
                    )
                    session.commit()
                claim = jobs.claim(engine, "job", "bench", 600)
                assert claim is not None
                context = Context(
                    engine=engine,
                    storage=storage,
                    lease_seconds=600,
                    max_attempts=1,
                    stop=threading.Event(),
                )
                t0 = time.perf_counter()
                outcome = dispatch(context, claim)
                job_side.append(time.perf_counter() - t0)
                assert outcome == "completed", outcome

            for side in (bare, job) if rep % 2 == 0 else (job, bare):
                side()
            log(f"  batch rep {rep}: job {job_side[-1]:.1f} s, predict {bare_side[-1]:.1f} s")
        results["batch"] = {
            "rows": batch_rows,
            "job_s": statistics.median(job_side),
            "predict_s": statistics.median(bare_side),
            "job_rows_per_s": batch_rows / statistics.median(job_side),
            "predict_rows_per_s": batch_rows / statistics.median(bare_side),
            "ratio": statistics.median(bare_side) / statistics.median(job_side),
        }
        engine.dispose()
    finally:
        for p in processes:
            p.kill()
        db.close()
        shutil.rmtree(work, ignore_errors=True)
    results["finished_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["cpus"] = os.cpu_count()
    results["load"] = os.getloadavg()
    return results


def _metering_table(results: dict[str, Any]) -> list[str]:
    """Ours against ours-off (issue 14, over HTTP), when both ran."""
    points = [(n, p) for n, p in results["online"].items() if "metering_on_off" in p]
    if not points:
        return []
    out = [
        "",
        "Metering on / off over HTTP (issue 14): ours against **ours-off**, the same"
        " `automl-serve` with no admission (`deployments.resolve`), no quota, no credit"
        " lease or hold and no request record (bench/serve_unmetered.py, bench only).",
        "",
        "| clients | ours req/s | ours-off req/s | on / off (>= 0.9) |"
        " p99 ours / off (ms) | CPU ms per request, ours / off (+ PostgreSQL) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, p in points:
        on, off = p["ours"], p["ours-off"]
        out.append(
            f"| {n} | {on['rps']:.0f} | {off['rps']:.0f} | {p['metering_on_off']:.2f} |"
            f" {on['p99_ms']:.1f} / {off['p99_ms']:.1f} |"
            f" {on.get('cpu_ms', 0):.2f} (+ {on.get('pg_cpu_ms', 0):.2f}) /"
            f" {off.get('cpu_ms', 0):.2f} (+ {off.get('pg_cpu_ms', 0):.2f}) |"
        )
    return out


def section(results: dict[str, Any], conditions: str) -> str:
    out = [TITLE, "", conditions, ""]
    if not all(s in results.get("sides", SIDES) for s in SIDES):
        # A run of some sides only (--sides): each side's own figures.
        out.append("| clients | side | req/s | p50 (ms) | p99 (ms) | CPU ms per request |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        for n, p in results["online"].items():
            for name in SIDES:
                if name in p:
                    g = p[name]
                    out.append(
                        f"| {n} | {name} | {g['rps']:.0f} | {g['p50_ms']:.1f} |"
                        f" {g['p99_ms']:.1f} | {g['cpu_ms']:.2f} (+ {g['pg_cpu_ms']:.2f}) |"
                    )
        out += _metering_table(results)
        out += ["", READING, ""]
        return "\n".join(out)
    out.append(
        "| clients | ours req/s | MLflow req/s | bare req/s | ours / MLflow (>= 1.0) |"
        " ours / bare (>= 0.7) | p99 ours / MLflow / bare (ms) |"
        " CPU ms per request, ours (+ PostgreSQL) / MLflow / bare |"
    )
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, p in results["online"].items():
        out.append(
            f"| {n} | {p['ours']['rps']:.0f} | {p['mlflow']['rps']:.0f} | {p['bare']['rps']:.0f}"
            f" | {p['vs_mlflow']:.2f} | {p['vs_bare']:.2f} | {p['ours']['p99_ms']:.1f} /"
            f" {p['mlflow']['p99_ms']:.1f} / {p['bare']['p99_ms']:.1f} |"
            f" {p['ours'].get('cpu_ms', 0):.2f} (+ {p['ours'].get('pg_cpu_ms', 0):.2f}) /"
            f" {p['mlflow'].get('cpu_ms', 0):.2f} / {p['bare'].get('cpu_ms', 0):.2f} |"
        )
    out += _metering_table(results)
    b = results["batch"]
    out += [
        "",
        f"Batch of {b['rows']:,} rows: the job {b['job_s']:.1f} s"
        f" ({b['job_rows_per_s']:,.0f} rows/s),"
        f" `read_parquet` + `model.predict` in one process {b['predict_s']:.1f} s"
        f" ({b['predict_rows_per_s']:,.0f} rows/s): ratio {b['ratio']:.2f} (goal >= 0.8).",
        "",
        READING,
        "",
    ]
    return "\n".join(out)


READING = """\
What the sides do per request: **ours** (`automl-serve`) authenticates the API key (the
API's own `get_principal`, on a pooled connection in autocommit), reads the deployment and
admits the request in one statement (`deployments.admit_serving`: the alias, the key's
quotas, the credit hold), checks the record against the signature, runs the pipeline,
answers predictions *and* probabilities, and adds the request to the buffered request log
(written in batches off the request path); **ours-off** does the same but for the
admission (the deployment read by `deployments.resolve`) and the request log (none);
**MLflow** and **bare** only parse and predict. All of them run the model in a worker
thread, one uvicorn process each. The reading of a run (what was met, what was missed
and why) is written by hand below the table.
"""


def write_section(doc: Path, text_: str) -> None:
    current = doc.read_text() if doc.exists() else ""
    if TITLE in current:
        start = current.index(TITLE)
        # The section's lead and tables are replaced; its ### subsections (the
        # hand-written runs and readings) are kept.
        ends = [
            i for i in (current.find(m, start + len(TITLE)) for m in ("\n### ", "\n## ")) if i != -1
        ]
        end = min(ends) if ends else -1
        current = current[:start] + text_ + (current[end + 1 :] if end != -1 else "")
    else:
        current = current.rstrip() + "\n\n" + text_
    doc.write_text(current)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.serving", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--batch-rows", type=int, default=None)
    p.add_argument("--doc", default=None, help="report path ('-' for none)")
    p.add_argument(
        "--no-metering",
        action="store_true",
        help="skip metering on / off (bench/metering.py at 1 and 4 clients)",
    )
    p.add_argument(
        "--sides",
        default=",".join(SIDES),
        help=f"online sides, comma-separated (default all: {','.join(SIDES)}); e.g."
        " 'ours,ours-off' for a quick metering on / off run without MLflow",
    )
    a = p.parse_args(argv)
    sides = tuple(s.strip() for s in a.sides.split(",") if s.strip())
    unknown = sorted(set(sides) - set(SIDES))
    if unknown or not sides:
        p.error(f"--sides: unknown {unknown}; choose from {', '.join(SIDES)}")
    seconds = a.seconds or (3.0 if a.quick else 10.0)
    reps = a.reps or (1 if a.quick else 3)
    rows = a.batch_rows or (100_000 if a.quick else 1_000_000)
    results = run(seconds=seconds, reps=reps, clients=(1, 8), batch_rows=rows, sides=sides)
    if not a.no_metering:
        results["metering"] = run_metering(seconds=min(seconds, 4.0), reps=max(reps, 2))
    print(json.dumps(results, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"serving-{stamp}{'-quick' if a.quick else ''}.json").write_text(
        json.dumps(results, indent=2)
    )
    doc = None if a.doc == "-" else Path(a.doc) if a.doc else (None if a.quick else DOC)
    if doc is not None:
        write_section(doc, section(results, conditions(results)))
        if "metering" in results:
            from bench import metering as metering_bench

            m = results["metering"]
            metering_bench._write(
                doc, metering_bench.render_section(m, m["machine"], "Run by bench.serving.")
            )
    return 0


def run_metering(*, seconds: float, reps: int) -> dict[str, Any]:
    """The issue's metering on / off (bench/metering.py) at 1 and 4 clients, on a
    database of its own: serving's benchmark reports both goals in one run."""
    from bench import metering as metering_bench
    from bench.server import BenchDatabase, machine_description

    machine = machine_description()
    db = BenchDatabase()
    try:
        data = metering_bench.run(
            db.url,
            seconds=seconds,
            reps=reps,
            clients=(1, 4),
            log=print,
            pg_pid=_postmaster_pid(db),
        )
    finally:
        db.close()
    data["machine"] = machine
    return data


def conditions(results: dict[str, Any]) -> str:
    return (
        f"Run {results['finished_at']}, {results['cpus']} cores shared with other work (load"
        f" average at the end {results['load'][0]:.1f}), {results['seconds']:.0f} s per side"
        f" and point, {results['reps']} repetitions (medians), the sides alternating; the"
        f" load generator on the same machine (asyncio + httpx); {results['trees']} trees."
    )


if __name__ == "__main__":
    raise SystemExit(main())
