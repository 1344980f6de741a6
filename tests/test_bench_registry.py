"""bench/registry.py runs, at a tiny size, on a database of its own on the test server.

No timing is asserted: the run must load consistent data (verify's registry check
finds nothing, with the triggers and without), walk the probes' lineage through
``database.registry.lineage`` and render its section.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from pgtest import ROOT, make_test_url

sys.path.insert(0, str(ROOT))

from bench import registry  # noqa: E402
from bench.ledger import create_users  # noqa: E402
from bench.server import BenchDatabase  # noqa: E402


def test_the_registry_bench_runs_at_a_tiny_size(pg_server: Any, monkeypatch: pytest.MonkeyPatch):
    url = make_test_url(
        pg_server.host, pg_server.port, pg_server.user, "postgres", pg_server.password
    )
    monkeypatch.setenv("BENCH_DATABASE_URL", url.render_as_string(hide_password=False))
    db = BenchDatabase()
    try:
        create_users(db, 20)
        out = registry.run(db, tiers=(200, 400), n_users=20, trigger_rows=100, log=lambda _: None)
    finally:
        db.close()
    assert out["drift"] == {200: 0, 400: 0}
    assert (out["triggers"]["on_drift"], out["triggers"]["off_drift"]) == (0, 0)
    points = {(p["tier"], p["query"]): p for p in out["points"]}
    assert set(points) == {(t, q) for t in (200, 400) for q in registry.TITLES}
    for tier in (200, 400):
        # A chain of 20: ten edges up from version 20, ten down from version 1.
        assert points[(tier, "lineage_up")]["rows"] == registry.DEPTH
        assert points[(tier, "lineage_down")]["rows"] == registry.DEPTH
        assert 0 < points[(tier, "metric_search")]["rows"] <= registry.PAGE
        assert all(points[(tier, q)]["buffers"] > 0 for q in registry.TITLES)
    section = registry.render_section(out, {"cpu": "test", "cores": "2"})
    assert section.startswith(registry.TITLE) and "| lineage up" in section
    assert len(registry.verdicts(out)) == len(registry.TITLES)

    # Wired into `python -m bench`: a section of its own, its rows among the goals.
    from bench import report
    from bench.__main__ import parse_args

    cfg = parse_args(["--quick", "--only", "registry"])
    assert cfg.sections == ("registry",)
    config = {k: (str(v) if k == "doc" else v) for k, v in cfg.__dict__.items()}
    results = {"config": config, "registry": out}
    document = report.render(results)
    assert registry.TITLE in document
    assert "registry, lineage up" in report.summary(results)
