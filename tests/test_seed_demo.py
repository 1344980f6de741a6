"""`automl-db seed --demo` (workers/demo.py): a registry a newcomer can explore.

One run trains the demo's models for real (a few seconds of scikit-learn), so the
first test checks everything about it: what it made, that it satisfies the
registry's rules (verify finds no drift, numbering, lineage, aliases, access), that
the saved files load and predict, that the demo owner's key works, and that a
second run changes nothing.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest

from database import cli, registry
from database import session as db_session
from database.config import get_settings
from database.models import LineageRelation, ModelPermission
from database.storage import make_storage
from database.verify import verify
from workers import demo

from factories import scalar


@pytest.fixture
def cli_env(db_url: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``automl-db`` pointed at this test's database and a storage folder of its own."""
    storage = tmp_path / "storage"
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    monkeypatch.setenv("STORAGE_URL", str(storage))
    monkeypatch.setenv("AUTOML_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield storage
    get_settings.cache_clear()
    db_session.reset()


def _users(sql: Any) -> dict[str, uuid.UUID]:
    return {
        r.email: r.id
        for r in sql("SELECT id, email FROM users WHERE email LIKE '%@demo.test' ORDER BY email")
    }


def _registered(sql: Any, name: str) -> Any:
    [row] = sql("SELECT * FROM registered_models WHERE name = :n", n=name)
    return row


def _table_counts(sql: Any) -> dict[str, int]:
    tables = (
        "users",
        "api_keys",
        "datasets",
        "dataset_versions",
        "dataset_profiles",
        "models",
        "registered_models",
        "model_versions",
        "model_version_metrics",
        "model_aliases",
        "model_lineage",
        "model_downloads",
        "registered_model_permissions",
    )
    return {t: scalar(sql, f"SELECT count(*) FROM {t}") for t in tables}


def test_seed_demo_fills_a_consistent_registry_once(sql, engine, session, cli_env, capsys):
    assert cli.main(["seed", "--demo"]) == 0
    out = capsys.readouterr().out
    assert "seed --demo: created 3 users, 3 datasets, 4 dataset versions," in out
    assert "3 registered models, 8 versions" in out

    # The owner's API key is printed once, and it is the key the API would accept.
    [line] = [x for x in out.splitlines() if x.startswith("API key of ada@demo.test")]
    key = line.rsplit(" ", 1)[1]
    assert key.startswith("aml_")
    digest = hashlib.sha256(key.encode()).hexdigest()
    users = _users(sql)
    assert set(users) == {demo.OWNER, demo.SHARED_WITH, demo.OUTSIDER}
    assert (
        scalar(sql, "SELECT user_id FROM api_keys WHERE key_hash = :h", h=digest)
        == users[demo.OWNER]
    )
    assert scalar(sql, "SELECT count(*) FROM api_keys WHERE key_hash = :h", h=key) == 0

    # Every rule of the registry holds: verify (counts, counters, ledger) finds nothing.
    report = verify(engine)
    assert report.ok, report.render()

    # Versions numbered 1..n, each with metrics as rows and its environment.
    iris = _registered(sql, "iris-species")
    assert (iris.user_id, iris.visibility, iris.last_version_number) == (
        users[demo.OWNER],
        "shared",
        4,
    )
    versions = sql(
        "SELECT id, version, primary_metric, environment, signature, input_example"
        " FROM model_versions WHERE registered_model_id = :r ORDER BY version",
        r=iris.id,
    )
    assert [v.version for v in versions] == [1, 2, 3, 4]
    assert all(v.primary_metric == "accuracy" and v.environment.get("sklearn") for v in versions)
    assert [c["name"] for c in versions[0].signature["inputs"]] == [
        "sepal length (cm)",
        "sepal width (cm)",
        "petal length (cm)",
        "petal width (cm)",
    ]
    metrics = sql(
        "SELECT m.metric FROM model_version_metrics AS m WHERE m.model_version_id = :v"
        " AND m.split = 'test' ORDER BY 1",
        v=versions[0].id,
    )
    assert "accuracy" in [m.metric for m in metrics]

    # Lineage: v3 tuned from v2, v4 retrained from v3 on the iris set's version 2.
    up = registry.lineage(session, versions[3].id, "up", depth=5)
    parents = {(e.depth, e.relation, e.parent_kind) for e in up}
    assert (1, LineageRelation.RETRAINED_FROM, "model_version") in parents
    assert (2, LineageRelation.TUNED_FROM, "model_version") in parents
    assert (1, LineageRelation.TRAINED_ON, "dataset_version") in parents
    iris_v2 = scalar(
        sql,
        "SELECT v.id FROM dataset_versions AS v JOIN datasets AS d ON d.id = v.dataset_id"
        " WHERE d.name = 'iris' AND v.version_number = 2",
    )
    [trained_on] = [e for e in up if e.depth == 1 and e.parent_kind == "dataset_version"]
    assert trained_on.parent_id == iris_v2
    down = registry.lineage(session, versions[1].id, "down", depth=5)
    assert {e.child_version_id for e in down} == {versions[2].id, versions[3].id}

    # Aliases: the champion has the best accuracy, the challenger the next.
    aliases = {
        r.alias: r.version
        for r in sql(
            "SELECT a.alias, v.version FROM model_aliases AS a"
            " JOIN model_versions AS v ON v.id = a.model_version_id"
            " WHERE a.registered_model_id = :r",
            r=iris.id,
        )
    }
    assert set(aliases) == {"champion", "challenger"}
    accuracy = dict(
        sql(
            "SELECT v.version, m.value FROM model_versions AS v JOIN model_version_metrics AS m"
            " ON m.model_version_id = v.id AND m.metric = 'accuracy'"
            " WHERE v.registered_model_id = :r",
            r=iris.id,
        )
    )
    assert accuracy[aliases["champion"]] == max(accuracy.values())

    # Sharing across three users: grace may download the shared model, linus may not;
    # everyone may read the public one; grace's private model is hers alone.
    diabetes = _registered(sql, "diabetes-progression")
    cancer = _registered(sql, "breast-cancer-screening")
    can = registry.can
    download = ModelPermission.DOWNLOAD
    assert can(session, users[demo.SHARED_WITH], iris.id, download)
    assert not can(session, users[demo.SHARED_WITH], iris.id, ModelPermission.DEPLOY)
    assert not can(session, users[demo.OUTSIDER], iris.id, ModelPermission.READ)
    assert can(session, None, diabetes.id, download)
    assert can(session, users[demo.OUTSIDER], diabetes.id, download)
    assert not can(session, users[demo.OWNER], cancer.id, ModelPermission.READ)
    assert can(session, users[demo.SHARED_WITH], cancer.id, ModelPermission.DEPLOY)

    # Download history: granted and refused attempts; counts follow the granted ones.
    refused = sql("SELECT user_id, reason FROM model_downloads WHERE NOT granted")
    assert [(r.user_id, r.reason) for r in refused] == [
        (users[demo.OUTSIDER], "no download permission")
    ]
    assert scalar(sql, "SELECT sum(download_count) FROM model_versions") == scalar(
        sql, "SELECT count(*) FROM model_downloads WHERE granted"
    )
    assert scalar(sql, "SELECT count(*) FROM model_downloads WHERE user_id IS NULL") >= 1

    # The saved models are real: they load from storage and predict the dataset's rows.
    storage = make_storage(cli_env)
    [champion] = sql(
        "SELECT m.s3_path, m.size_bytes FROM models AS m"
        " JOIN model_versions AS v ON v.model_id = m.id"
        " JOIN model_aliases AS a ON a.model_version_id = v.id"
        " WHERE a.registered_model_id = :r AND a.alias = 'champion'",
        r=iris.id,
    )
    with storage.open_read(champion.s3_path) as f:
        data = f.read()
    assert len(data) == champion.size_bytes
    model = joblib.load(io.BytesIO(data))
    parquet = scalar(
        sql,
        "SELECT v.s3_path FROM dataset_versions AS v JOIN datasets AS d ON d.id = v.dataset_id"
        " WHERE d.name = 'iris' AND v.version_number = 1",
    )
    with storage.open_read(parquet) as f:
        frame = pd.read_parquet(f)
    predicted = model.predict(frame.drop(columns="species"))
    assert (predicted == frame["species"]).mean() > 0.9

    # A second run changes nothing and says so; no key is shown again.
    before = _table_counts(sql)
    files = sorted(p for p in cli_env.rglob("*") if p.is_file())
    assert cli.main(["seed", "--demo"]) == 0
    out = capsys.readouterr().out
    assert "the demo registry is there already; nothing changed" in out
    assert "aml_" not in out and "--new-key" in out
    assert _table_counts(sql) == before
    assert sorted(p for p in cli_env.rglob("*") if p.is_file()) == files
    assert verify(engine).ok

    # --new-key: one more key, printed once; nothing else moves.
    assert cli.main(["seed", "--demo", "--new-key"]) == 0
    out = capsys.readouterr().out
    assert out.count("aml_") == 1
    after = _table_counts(sql)
    assert after.pop("api_keys") == before.pop("api_keys") + 1
    assert after == before


def test_a_failed_demo_seed_leaves_nothing(sql, engine, tmp_path, monkeypatch):
    """One transaction: a failure rolls back every row and removes the files written."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the fit broke")

    monkeypatch.setattr(demo._Run, "train", broken)
    storage = make_storage(tmp_path / "storage")
    with pytest.raises(RuntimeError, match="the fit broke"):
        demo.seed_demo(engine, storage)
    assert _users(sql) == {}
    assert scalar(sql, "SELECT count(*) FROM datasets") == 0
    assert [p for p in (tmp_path / "storage").rglob("*") if p.is_file()] == []


def test_new_key_needs_demo(cli_env, capsys):
    assert cli.main(["seed", "--new-key"]) == 2
    assert "--new-key goes with --demo" in capsys.readouterr().err


def test_the_demo_report_keeps_its_key_out_of_its_repr():
    report = demo.DemoReport(api_key="aml_secret", api_key_owner=demo.OWNER)
    assert "aml_secret" not in repr(report)
    assert "aml_secret" in report.render()  # shown once, deliberately, by the CLI
