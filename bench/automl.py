"""The platform's AutoML search vs FLAML run directly: does the platform cost quality?

    python -m bench.automl              the full run: 60 s budgets, 3 seeds, five data sets
                                        (about 30 minutes on 2 cores); writes the "AutoML
                                        search vs FLAML" section of docs/performance.md
    python -m bench.automl --quick      3 s budgets, one seed, the synthetic set at 5,000
                                        rows (about a minute); bench/results/ only
    python -m bench --only automl [--quick]   the same, from the bench runner

Data sets: scikit-learn's breast cancer, wine, digits (classification, accuracy) and
diabetes (regression, r2), and a synthetic 100,000 x 20 classification set
(``make_classification``, seed 0). Each is split like the platform's default
preprocess node (80/20, stratified for classification, seed 0); both sides search the
same training rows with the same budget, metric, folds (5) and learners
(``pipeline.automl.DEFAULT_LEARNERS``), and the same seed:

- **platform**: the worker's path (``workers.runner.NodeProcess``): a child from the
  forkserver reads the Parquet file, runs the dataset, preprocess and ``automl`` nodes
  (the preprocess node's imputer and scaler, then FLAML, every trial sent to the
  parent as it finishes); its score is the node's ``best_cv_score``;
- **flaml**: ``flaml.AutoML().fit`` in this process on the raw training rows, with
  ``eval_method="cv"``; its score is ``1 - best_loss`` (``best_loss`` for a loss).

Both use every core (``n_jobs``/``threads`` = the cores). The score per data set is
the median over the seeds; goal: platform >= flaml - 0.005 on every set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "performance.md"
TITLE = "## AutoML search vs FLAML"
#: The platform may score this much below FLAML at most.
TOLERANCE = 0.005
FOLDS = 5


def datasets(synthetic_rows: int) -> dict[str, tuple[Any, str]]:
    """name -> (frame with a ``label`` column, problem type)."""
    import pandas as pd
    from sklearn import datasets as sk

    out: dict[str, tuple[Any, str]] = {}
    for name, loader, problem in (
        ("breast_cancer", sk.load_breast_cancer, "classification"),
        ("wine", sk.load_wine, "classification"),
        ("digits", sk.load_digits, "classification"),
        ("diabetes", sk.load_diabetes, "regression"),
    ):
        frame = loader(as_frame=True).frame.rename(columns={"target": "label"})
        frame.columns = [str(c) for c in frame.columns]
        out[name] = (frame, problem)
    x, y = sk.make_classification(
        n_samples=synthetic_rows, n_features=20, n_informative=10, random_state=0
    )
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(20)])
    frame["label"] = y
    out[f"synthetic_{synthetic_rows}"] = (frame, "classification")
    return out


def _definition(budget: int, seed: int) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "data", "type": "dataset", "config": {}},
            {"id": "prep", "type": "preprocess", "config": {}},
            {
                "id": "search",
                "type": "automl",
                "config": {"time_budget_s": budget, "folds": FOLDS, "seed": seed},
            },
        ],
        "edges": [{"source": "data", "target": "prep"}, {"source": "prep", "target": "search"}],
    }


def run(
    *,
    budget: int,
    seeds: tuple[int, ...],
    synthetic_rows: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    from flaml import AutoML

    from database.models.enums import ProblemType
    from pipeline import automl
    from pipeline.definition import PreprocessConfig
    from pipeline.execute import LoadedDataset, prepare
    from pipeline.storage import make_storage
    from workers import runner
    from workers.settings import cpu_count

    cores = cpu_count()
    runner.warm_up()
    out: dict[str, Any] = {"budget_s": budget, "seeds": list(seeds), "cores": cores, "sets": {}}
    with tempfile.TemporaryDirectory(prefix="bench-automl-") as folder:
        storage = make_storage(folder)
        for name, (frame, problem) in datasets(synthetic_rows).items():
            problem_type = ProblemType(problem)
            metric = automl.default_metric(problem_type)
            learners = automl.DEFAULT_LEARNERS[problem_type]
            location = storage.location(f"{name}.parquet")
            frame.to_parquet(location)
            source = runner.DatasetSource(location, "label", problem, name, 1)
            data = prepare(LoadedDataset(frame, "label", problem, name), PreprocessConfig())
            points = []
            for seed in seeds:
                body = _definition(budget, seed)
                trials: list[dict[str, Any]] = []
                t0 = time.perf_counter()
                with runner.NodeProcess(body, storage, threads=cores) as process:
                    for node_id in ("data", "prep", "search"):
                        reply = process.run(
                            node_id,
                            source if node_id == "data" else None,
                            lambda: None,
                            trials=trials.append,
                        )
                        assert reply.status == "ok", reply.error
                platform_seconds = time.perf_counter() - t0
                assert reply.output is not None
                platform = float(reply.output["search"]["best_cv_score"])
                t0 = time.perf_counter()
                direct = AutoML()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    direct.fit(
                        data.x_train,
                        data.y_train,
                        task=problem,
                        metric=metric,
                        time_budget=budget,
                        eval_method="cv",
                        n_splits=FOLDS,
                        estimator_list=list(learners),
                        n_jobs=cores,
                        seed=seed,
                        verbose=0,
                        mlflow_logging=False,
                    )
                flaml_seconds = time.perf_counter() - t0
                flaml_score = automl.score_of(metric, float(direct.best_loss))
                point = {
                    "seed": seed,
                    "platform": platform,
                    "flaml": flaml_score,
                    "platform_trials": len(trials),
                    "platform_seconds": platform_seconds,
                    "flaml_seconds": flaml_seconds,
                    "platform_learner": reply.output["search"]["learner"],
                    "flaml_learner": direct.best_estimator,
                }
                log(
                    f"automl {name} seed {seed}: platform {platform:.4f}"
                    f" ({len(trials)} trials, {platform_seconds:.1f}s), flaml"
                    f" {flaml_score:.4f} ({flaml_seconds:.1f}s)"
                )
                points.append(point)
            platform_median = statistics.median(p["platform"] for p in points)
            flaml_median = statistics.median(p["flaml"] for p in points)
            out["sets"][name] = {
                "rows": len(frame),
                "problem_type": problem,
                "metric": metric,
                "points": points,
                "platform_median": platform_median,
                "flaml_median": flaml_median,
                "difference": platform_median - flaml_median,
                "met": platform_median >= flaml_median - TOLERANCE,
            }
    out["met"] = all(s["met"] for s in out["sets"].values())
    return out


def render_section(result: dict[str, Any], machine: dict[str, str] | None = None) -> str:
    out = [TITLE, ""]
    out.append(
        f"`python -m bench.automl` (`bench/automl.py`): the platform's `automl` node through"
        f" the worker's child process vs `flaml.AutoML` run directly, same training rows,"
        f" budget {result['budget_s']} s, {FOLDS}-fold CV, same learners and seeds"
        f" ({', '.join(map(str, result['seeds']))}); median over the seeds. Goal: platform >="
        f" FLAML - {TOLERANCE} on every set."
    )
    out.append("")
    if machine:
        out.append(
            f"Machine: {machine.get('cpu', '?')}, {result['cores']} cores usable, load average"
            f" at the start {machine.get('load_average_at_start', '?')}"
            f"{' (' + machine['note'] + ')' if machine.get('note') else ''}."
            f" Finished {result.get('finished_at', '?')}."
        )
        out.append("")
    out.append("| data set | rows | metric | platform | FLAML | difference | goal |")
    out.append("|---|---|---|---|---|---|---|")
    for name, s in result["sets"].items():
        out.append(
            f"| {name} | {s['rows']:,} | {s['metric']} | {s['platform_median']:.4f} |"
            f" {s['flaml_median']:.4f} | {s['difference']:+.4f} |"
            f" {'met' if s['met'] else '**missed**'} |"
        )
    return "\n".join(out)


def write_section(doc: Path, section: str) -> None:
    """Replace (or add at the end) the section in ``doc``."""
    text = doc.read_text() if doc.exists() else ""
    if TITLE in text:
        start = text.index(TITLE)
        end = text.find("\n## ", start + len(TITLE))
        text = text[:start] + section + ("\n" + text[end:] if end != -1 else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.automl", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--budget", type=int, default=None, help="seconds per search")
    p.add_argument("--doc", default=None, help="report path ('-' for none)")
    p.add_argument("--note", default="", help="a word on the machine's conditions")
    a = p.parse_args(argv)
    from bench.server import machine_description

    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    machine = machine_description()
    if a.note:
        machine["note"] = a.note
    if a.quick:
        result = run(budget=a.budget or 3, seeds=(0,), synthetic_rows=5_000, log=log)
    else:
        result = run(budget=a.budget or 60, seeds=(0, 1, 2), synthetic_rows=100_000, log=log)
    result["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result["machine"] = machine
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / f"automl-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if a.quick else ''}.json"
    raw.write_text(json.dumps(result, indent=2, default=str))
    section = render_section(result, machine)
    print()
    print(section)
    doc = None if a.doc == "-" else Path(a.doc) if a.doc else (None if a.quick else DOC)
    if doc is not None:
        write_section(doc, section)
        log(f"report: {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
