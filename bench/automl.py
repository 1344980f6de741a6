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

from bench import sections

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


def _definition(
    budget: int, seed: int, max_trials: int | None = None, learners: tuple[str, ...] | None = None
) -> dict[str, Any]:
    search: dict[str, Any] = {"time_budget_s": budget, "folds": FOLDS, "seed": seed}
    if learners:
        search["estimators"] = list(learners)
    if max_trials is not None:
        search["max_trials"] = max_trials
    return {
        "nodes": [
            {"id": "data", "type": "dataset", "config": {}},
            {"id": "prep", "type": "preprocess", "config": {}},
            {
                "id": "search",
                "type": "automl",
                "config": search,
            },
        ],
        "edges": [{"source": "data", "target": "prep"}, {"source": "prep", "target": "search"}],
    }


def _platform(
    runner: Any, body: dict[str, Any], storage: Any, source: Any, cores: int
) -> dict[str, Any]:
    """One search through the worker's child process: its best CV score and trials."""
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
    assert reply.output is not None
    return {
        "score": float(reply.output["search"]["best_cv_score"]),
        "trials": len(trials),
        "seconds": time.perf_counter() - t0,
        "learner": reply.output["search"]["learner"],
    }


def _direct(
    data: Any,
    problem: str,
    metric: str,
    learners: tuple[str, ...],
    budget: int,
    seed: int,
    cores: int,
    max_trials: int | None = None,
) -> dict[str, Any]:
    """FLAML run directly on the same training rows, budget, metric, folds, learners."""
    extra = {} if max_trials is None else {"max_iter": max_trials}
    from flaml import AutoML

    from pipeline import automl

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
            **extra,
        )
    return {
        "score": automl.score_of(metric, float(direct.best_loss)),
        "trials": sum(getattr(direct, "_iter_per_learner", {}).values()),
        "seconds": time.perf_counter() - t0,
        "learner": direct.best_estimator,
    }


def _warm_up_direct(cores: int) -> None:
    """One tiny FLAML search in this process, so the direct side's first point does not
    pay the learners' imports (the platform's forkserver has them loaded already)."""
    from sklearn.datasets import load_iris

    from pipeline import automl
    from pipeline.definition import PreprocessConfig
    from pipeline.execute import LoadedDataset, prepare

    frame = load_iris(as_frame=True).frame.rename(columns={"target": "label"})
    data = prepare(LoadedDataset(frame, "label", "classification", "iris"), PreprocessConfig())
    learners = automl.DEFAULT_LEARNERS[automl.ProblemType.CLASSIFICATION]
    _direct(data, "classification", "accuracy", learners, 2, 0, cores)


def summarize(name: str, rows: int, problem: str, metric: str, points: list[dict[str, Any]]):
    """A data set's medians over its seeds and whether the goal is met."""
    platform_median = statistics.median(p["platform"] for p in points)
    flaml_median = statistics.median(p["flaml"] for p in points)
    return {
        "rows": rows,
        "problem_type": problem,
        "metric": metric,
        "points": points,
        "platform_median": platform_median,
        "flaml_median": flaml_median,
        "difference": platform_median - flaml_median,
        "met": platform_median >= flaml_median - TOLERANCE,
    }


def run(
    *,
    budget: int,
    seeds: tuple[int, ...],
    synthetic_rows: int,
    sets: tuple[str, ...] | None = None,
    journal: Path | None = None,
    max_trials: int | None = None,
    only_learners: tuple[str, ...] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every (data set, seed): the platform and FLAML directly, one after the other, the
    order alternating with the seed (platform first on even seeds, FLAML first on odd
    ones) so a load change on the machine hits both alike. Each point is appended to
    ``journal`` (JSON lines) as soon as it is measured."""
    from bench.server import load_average
    from database.models.enums import ProblemType
    from pipeline import automl
    from pipeline.definition import PreprocessConfig
    from pipeline.execute import LoadedDataset, prepare
    from pipeline.storage import make_storage
    from workers import runner
    from workers.settings import cpu_count

    cores = cpu_count()
    runner.warm_up()
    _warm_up_direct(cores)
    out: dict[str, Any] = {"budget_s": budget, "seeds": list(seeds), "cores": cores, "sets": {}}
    with tempfile.TemporaryDirectory(prefix="bench-automl-") as folder:
        storage = make_storage(folder)
        for name, (frame, problem) in datasets(synthetic_rows).items():
            if sets and not any(name.startswith(wanted) for wanted in sets):
                continue
            problem_type = ProblemType(problem)
            metric = automl.default_metric(problem_type)
            learners = only_learners or automl.DEFAULT_LEARNERS[problem_type]
            location = storage.location(f"{name}.parquet")
            frame.to_parquet(location)
            source = runner.DatasetSource(location, "label", problem, name, 1)
            data = prepare(LoadedDataset(frame, "label", problem, name), PreprocessConfig())
            points = []
            for seed in seeds:
                body = _definition(budget, seed, max_trials, only_learners)
                sides: dict[str, dict[str, Any]] = {}
                order = ("platform", "flaml") if seed % 2 == 0 else ("flaml", "platform")
                for side in order:
                    if side == "platform":
                        sides[side] = _platform(runner, body, storage, source, cores)
                    else:
                        sides[side] = _direct(
                            data, problem, metric, learners, budget, seed, cores, max_trials
                        )
                p, f = sides["platform"], sides["flaml"]
                point = {
                    "set": name,
                    "rows": len(frame),
                    "training_rows": len(data.y_train),
                    "problem_type": problem,
                    "metric": metric,
                    "budget_s": budget,
                    "max_trials": max_trials,
                    "learners": list(learners),
                    "seed": seed,
                    "order": list(order),
                    "platform": p["score"],
                    "flaml": f["score"],
                    "platform_trials": p["trials"],
                    "flaml_trials": f["trials"],
                    "platform_seconds": p["seconds"],
                    "flaml_seconds": f["seconds"],
                    "platform_learner": p["learner"],
                    "flaml_learner": f["learner"],
                    "load_average": load_average(),
                    "at": time.strftime("%H:%M:%S"),
                }
                if journal is not None:
                    with journal.open("a") as sink:
                        sink.write(json.dumps(point, default=str) + "\n")
                log(
                    f"automl {name} seed {seed} ({order[0]} first): platform"
                    f" {p['score']:.4f} ({p['trials']} trials, {p['seconds']:.1f}s), flaml"
                    f" {f['score']:.4f} ({f['trials']} trials, {f['seconds']:.1f}s)"
                )
                points.append(point)
            out["sets"][name] = summarize(name, len(frame), problem, metric, points)
    out["met"] = all(s["met"] for s in out["sets"].values())
    return out


def from_journal(path: Path) -> dict[str, Any]:
    """The result of a run from its journal (JSON lines), finished or not: the sets
    with every seed measured, in the order they ran."""
    points: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            point = json.loads(line)
            points.setdefault(point["set"], []).append(point)
    first = next(iter(points.values()))[0]
    seeds = sorted({p["seed"] for ps in points.values() for p in ps})
    out: dict[str, Any] = {"budget_s": first["budget_s"], "seeds": seeds, "sets": {}}
    for name, ps in points.items():
        out["sets"][name] = summarize(
            name, ps[0]["rows"], ps[0]["problem_type"], ps[0]["metric"], ps
        )
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
            f" (1/5/15 min) {machine.get('load_average_at_start', '?')} at the start"
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
    out.append("")
    out.append(
        "Every point (the order of the two sides alternates with the seed; trials: how many"
        " configurations each side evaluated in the budget; seconds: wall clock of the whole"
        " run, the platform's child process, preprocessing and FLAML's final refit included;"
        " load: the machine's 1/5/15-minute load average after the point):"
    )
    out.append("")
    out.append(
        "| data set | seed | first | platform | trials | s | learner | FLAML | trials | s"
        " | learner | load |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, s in result["sets"].items():
        for q in s["points"]:
            out.append(
                f"| {name} | {q['seed']} | {q.get('order', ['?'])[0]} | {q['platform']:.4f} |"
                f" {q['platform_trials']} | {q['platform_seconds']:.0f} | {q['platform_learner']} |"
                f" {q['flaml']:.4f} | {q.get('flaml_trials', '?')} | {q['flaml_seconds']:.0f} |"
                f" {q['flaml_learner']} | {q.get('load_average', '?')} |"
            )
    return "\n".join(out)


def write_section(doc: Path, section: str) -> None:
    """Replace (or add at the end) the section in ``doc``."""
    sections.write_section(doc, section, TITLE, before=())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.automl", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--budget", type=int, default=None, help="seconds per search")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    p.add_argument(
        "--sets",
        default=None,
        help="comma-separated data sets (prefixes: breast_cancer,wine,digits,diabetes,synthetic)",
    )
    p.add_argument("--rows", type=int, default=None, help="rows of the synthetic set")
    p.add_argument("--learners", default=None, help="comma-separated learners (both sides)")
    p.add_argument(
        "--max-trials",
        type=int,
        default=None,
        help="both sides stop after this many trials (FLAML's max_iter): the same trials"
        " whatever the machine's load, for a like-for-like check of the scores",
    )
    p.add_argument("--journal", default=None, help="JSON lines file, one line per point, appended")
    p.add_argument(
        "--from-journal", default=None, help="only render the report from a journal (no run)"
    )
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
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if a.from_journal:
        result = from_journal(Path(a.from_journal))
        result["cores"] = machine.get("cores", "?")
        points = [q for ps in result["sets"].values() for q in ps["points"]]
        machine["load_average_at_start"] = points[0].get("load_average", "?")
        result["finished_at"] = f"{points[-1].get('at', '?')} UTC"
    else:
        journal = (
            Path(a.journal)
            if a.journal
            else RESULTS / f"automl-{stamp}{'-quick' if a.quick else ''}.jsonl"
        )
        log(f"journal: {journal}")
        seeds = (
            tuple(int(x) for x in a.seeds.split(","))
            if a.seeds
            else ((0,) if a.quick else (0, 1, 2))
        )
        result = run(
            budget=a.budget or (3 if a.quick else 60),
            seeds=seeds,
            synthetic_rows=a.rows or (5_000 if a.quick else 100_000),
            sets=tuple(a.sets.split(",")) if a.sets else None,
            journal=journal,
            log=log,
            max_trials=a.max_trials,
            only_learners=tuple(a.learners.split(",")) if a.learners else None,
        )
        result["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        result["machine"] = machine
        raw = RESULTS / f"automl-{stamp}{'-quick' if a.quick else ''}.json"
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
