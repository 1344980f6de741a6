"""Reference data every installation needs: the credit packages and the tutorials.

``seed(connection)`` upserts them, keyed by package name and tutorial slug, so it
can run any number of times (``automl-db seed``; ``automl-db up`` runs it after
migrating). A row that already matches is not touched (its ``updated_at`` stays);
one that differs is brought back to these values. Rows not listed here are left
alone: packages and tutorials added by an operator survive a re-seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, literal_column, or_, select
from sqlalchemy.dialects.postgresql import insert

from database.models import CreditPackage, CreditTierRestriction, Tutorial, TutorialDifficulty
from database.progress import Progress

CREDIT_PACKAGES: list[dict[str, Any]] = [
    {
        "name": "Starter",
        "credits": 100,
        "price_cents": 1_000,
        "tier_restriction": CreditTierRestriction.NONE,
    },
    {
        "name": "Builder",
        "credits": 500,
        "price_cents": 4_500,
        "tier_restriction": CreditTierRestriction.NONE,
    },
    {
        "name": "Pro",
        "credits": 2_000,
        "price_cents": 15_000,
        "tier_restriction": CreditTierRestriction.PRO_ONLY,
    },
    {
        "name": "Enterprise",
        "credits": 20_000,
        "price_cents": 120_000,
        "tier_restriction": CreditTierRestriction.ENTERPRISE_ONLY,
    },
]

TUTORIALS: list[dict[str, Any]] = [
    {
        "slug": "first-model",
        "title": "Train your first model",
        "description": "Upload a CSV, build a workflow and train a classifier.",
        "difficulty": TutorialDifficulty.BEGINNER,
        "estimated_minutes": 10,
        "sort_order": 10,
        "steps": [
            {
                "title": "Upload a dataset",
                "body": "POST a CSV to /v1/datasets.",
                "action": "upload",
            },
            {
                "title": "Build a workflow",
                "body": "Join a dataset node to a model node.",
                "action": "create_workflow",
            },
            {"title": "Run it", "body": "POST /v1/workflows/{id}/run.", "action": "run"},
            {"title": "Read the metrics", "body": "GET /v1/models/{id}.", "action": "inspect"},
        ],
    },
    {
        "slug": "preprocessing",
        "title": "Clean data before training",
        "description": "Add preprocessing nodes: imputation, scaling, encoding.",
        "difficulty": TutorialDifficulty.INTERMEDIATE,
        "estimated_minutes": 15,
        "sort_order": 20,
        "steps": [
            {
                "title": "Profile the data",
                "body": "Read the version's profile.",
                "action": "profile",
            },
            {
                "title": "Add a preprocess node",
                "body": "Between the dataset and the model.",
                "action": "edit_workflow",
            },
            {"title": "Compare", "body": "Record both runs in an experiment.", "action": "compare"},
        ],
    },
    {
        "slug": "experiments",
        "title": "Compare models with experiments",
        "description": "Group runs and rank them by a metric.",
        "difficulty": TutorialDifficulty.ADVANCED,
        "estimated_minutes": 20,
        "sort_order": 30,
        "steps": [
            {"title": "Create an experiment", "body": "POST /v1/experiments.", "action": "create"},
            {"title": "Add runs", "body": "POST /v1/experiments/{id}/runs.", "action": "add_runs"},
            {"title": "Pick the best", "body": "Read the comparison.", "action": "compare"},
        ],
    },
]


@dataclass
class SeedReport:
    inserted: dict[str, int] = field(default_factory=lambda: {"packages": 0, "tutorials": 0})
    updated: dict[str, int] = field(default_factory=lambda: {"packages": 0, "tutorials": 0})

    def render(self) -> str:
        return (
            f"seed: credit packages {self.inserted['packages']} new,"
            f" {self.updated['packages']} updated; tutorials {self.inserted['tutorials']} new,"
            f" {self.updated['tutorials']} updated"
        )


def _upsert(
    conn: Connection,
    model: Any,
    key: str,
    rows: list[dict[str, Any]],
    step: Callable[[str], None] | None = None,
) -> tuple[int, int]:
    table = model.__table__
    inserted = updated = 0
    for row in rows:
        if step is not None:
            step(str(row[key]))
        values = insert(table).values(**row)
        columns = [c for c in row if c != key]
        differs = or_(*(table.c[c].is_distinct_from(values.excluded[c]) for c in columns))
        stmt = values.on_conflict_do_update(
            index_elements=[key],
            set_={c: values.excluded[c] for c in columns},
            where=differs,
        ).returning(table.c.id, literal_column("(xmax = 0)").label("inserted"))
        result = conn.execute(stmt).first()
        if result is None:
            continue  # already as listed
        if result.inserted:
            inserted += 1
        else:
            updated += 1
    return inserted, updated


def seed(bind: Connection | Engine, progress: Progress | None = None) -> SeedReport:
    """Upsert the credit packages and tutorials, in one transaction.
    ``progress(done, total, name)`` (``database.progress``) as each row is upserted."""
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            return seed(conn, progress)
    report = SeedReport()
    packages = [{**p, "is_active": True} for p in CREDIT_PACKAGES]
    tutorials = [{**t, "is_published": True} for t in TUTORIALS]
    total, done = len(packages) + len(tutorials), 0

    def step(name: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, name)

    report.inserted["packages"], report.updated["packages"] = _upsert(
        bind, CreditPackage, "name", packages, step
    )
    report.inserted["tutorials"], report.updated["tutorials"] = _upsert(
        bind, Tutorial, "slug", tutorials, step
    )
    return report


def seeded(bind: Connection) -> bool:
    """Whether every listed package and tutorial exists (whatever its values)."""
    names = [p["name"] for p in CREDIT_PACKAGES]
    slugs = [t["slug"] for t in TUTORIALS]
    n_packages = len(
        bind.execute(select(CreditPackage.id).where(CreditPackage.name.in_(names))).all()
    )
    n_tutorials = len(bind.execute(select(Tutorial.id).where(Tutorial.slug.in_(slugs))).all())
    return n_packages == len(names) and n_tutorials == len(slugs)


__all__ = ["CREDIT_PACKAGES", "TUTORIALS", "SeedReport", "seed", "seeded"]
