"""job kinds, status transitions, backoff, version counter

jobs.kind (native enum job_kind) and ck_jobs_kind_not_ingestion; jobs.run_after and
ingestion_jobs.run_after (backoff of transient failures); the status-transition
triggers of sql/triggers/jobs.sql (ML010); datasets.last_version_number (backfilled
from the versions) and the counter-based numbering of dataset_versions.sql;
ix_datasets_current_version_id.

Revision ID: c11a00000001
Revises: c12a00000001
Create Date: 2026-12-07 04:55:03.113456+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from database.migrations import create, drop, function, trigger

revision: str = "c11a00000001"
down_revision: str | Sequence[str] | None = "c12a00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_KIND = postgresql.ENUM("workflow_run", "ingestion", name="job_kind", create_type=False)


DATASET_VERSIONS_LIFT_COUNTER_FUNCTION = function(
    "dataset_versions_lift_counter()",
    "returns trigger\nLANGUAGE plpgsql\nSET enable_seqscan = off\nAS $$\nBEGIN\n    UPDATE public.datasets AS d\n       SET last_version_number = m.top\n      FROM (SELECT n.dataset_id, max(n.version_number) AS top\n              FROM new_rows AS n GROUP BY n.dataset_id) AS m\n     WHERE d.id = m.dataset_id AND d.last_version_number < m.top;\n    RETURN NULL;\nEND;\n$$",
)
DATASET_VERSIONS_LIFT_COUNTER_ROW_FUNCTION = function(
    "dataset_versions_lift_counter_row()",
    "returns trigger\nLANGUAGE plpgsql\nSET enable_seqscan = off\nAS $$\nBEGIN\n    UPDATE public.datasets AS d\n       SET last_version_number = NEW.version_number\n     WHERE d.id = NEW.dataset_id AND d.last_version_number < NEW.version_number;\n    RETURN NULL;\nEND;\n$$",
)
JOBS_STATUS_TRANSITION_FUNCTION = function(
    "jobs_status_transition()",
    "returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF (OLD.status, NEW.status) IN (\n        ('pending', 'queued'), ('pending', 'cancelled'),\n        ('queued', 'running'), ('queued', 'cancelled'),\n        ('running', 'completed'), ('running', 'failed'), ('running', 'cancelled'),\n        ('running', 'queued')\n    ) THEN\n        RETURN NEW;\n    END IF;\n    RAISE EXCEPTION 'job % may not go from % to %', OLD.id, OLD.status, NEW.status\n        USING ERRCODE = 'ML010',\n              DETAIL = format('table=jobs from=%s to=%s', OLD.status, NEW.status);\nEND;\n$$",
)
JOB_NODES_STATUS_TRANSITION_FUNCTION = function(
    "job_nodes_status_transition()",
    "returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF (OLD.status, NEW.status) IN (\n        ('pending', 'running'), ('pending', 'skipped'),\n        ('running', 'success'), ('running', 'failed')\n    ) THEN\n        RETURN NEW;\n    END IF;\n    IF NEW.status = 'pending'\n       AND EXISTS (SELECT 1 FROM public.jobs AS j WHERE j.id = NEW.job_id AND j.status = 'queued')\n    THEN\n        RETURN NEW;\n    END IF;\n    RAISE EXCEPTION 'node % of job % may not go from % to %',\n            OLD.node_id, OLD.job_id, OLD.status, NEW.status\n        USING ERRCODE = 'ML010',\n              DETAIL = format('table=job_nodes from=%s to=%s', OLD.status, NEW.status);\nEND;\n$$",
)
INGESTION_JOBS_STATUS_TRANSITION_FUNCTION = function(
    "ingestion_jobs_status_transition()",
    "returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF (OLD.status, NEW.status) IN (\n        ('pending', 'processing'),\n        ('processing', 'completed'), ('processing', 'failed'), ('processing', 'pending')\n    ) THEN\n        RETURN NEW;\n    END IF;\n    RAISE EXCEPTION 'ingestion job % may not go from % to %', OLD.id, OLD.status, NEW.status\n        USING ERRCODE = 'ML010',\n              DETAIL = format('table=ingestion_jobs from=%s to=%s', OLD.status, NEW.status);\nEND;\n$$",
)
DATASET_VERSIONS_LIFT_COUNTER_TRIGGER = trigger(
    "dataset_versions_lift_counter",
    "dataset_versions",
    "AFTER INSERT ON public.dataset_versions REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT\nEXECUTE FUNCTION public.dataset_versions_lift_counter()",
)
DATASET_VERSIONS_LIFT_COUNTER_ON_UPDATE_TRIGGER = trigger(
    "dataset_versions_lift_counter_on_update",
    "dataset_versions",
    "AFTER UPDATE OF version_number, dataset_id ON public.dataset_versions FOR EACH ROW\nWHEN (NEW.version_number IS DISTINCT FROM OLD.version_number\n      OR NEW.dataset_id IS DISTINCT FROM OLD.dataset_id)\nEXECUTE FUNCTION public.dataset_versions_lift_counter_row()",
)
JOBS_STATUS_TRANSITION_TRIGGER = trigger(
    "jobs_status_transition",
    "jobs",
    "BEFORE UPDATE OF status ON public.jobs FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)\nEXECUTE FUNCTION public.jobs_status_transition()",
)
JOB_NODES_STATUS_TRANSITION_TRIGGER = trigger(
    "job_nodes_status_transition",
    "job_nodes",
    "BEFORE UPDATE OF status ON public.job_nodes FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)\nEXECUTE FUNCTION public.job_nodes_status_transition()",
)
INGESTION_JOBS_STATUS_TRANSITION_TRIGGER = trigger(
    "ingestion_jobs_status_transition",
    "ingestion_jobs",
    "BEFORE UPDATE OF status ON public.ingestion_jobs FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)\nEXECUTE FUNCTION public.ingestion_jobs_status_transition()",
)
DATASETS_VERSION_COUNTER_GUARD_FUNCTION = function(
    "datasets_version_counter_guard()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'the version counter of dataset % may not go down (% to %)',\n            OLD.id, OLD.last_version_number, NEW.last_version_number\n        USING ERRCODE = 'ML011';\nEND;\n$$",
)
DATASETS_VERSION_COUNTER_GUARD_TRIGGER = trigger(
    "datasets_version_counter_guard",
    "datasets",
    "BEFORE UPDATE OF last_version_number ON public.datasets FOR EACH ROW WHEN (NEW.last_version_number < OLD.last_version_number)\nEXECUTE FUNCTION public.datasets_version_counter_guard()",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    JOB_KIND.create(op.get_bind(), checkfirst=False)
    op.add_column(
        "datasets",
        sa.Column("last_version_number", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.create_index(
        "ix_datasets_current_version_id_id", "datasets", ["current_version_id", "id"], unique=False
    )
    op.add_column(
        "ingestion_jobs", sa.Column("run_after", sa.TIMESTAMP(timezone=True), nullable=True)
    )
    op.add_column(
        "jobs",
        sa.Column(
            "kind",
            JOB_KIND,
            server_default="workflow_run",
            nullable=False,
        ),
    )
    op.add_column("jobs", sa.Column("run_after", sa.TIMESTAMP(timezone=True), nullable=True))
    op.create_check_constraint("kind_not_ingestion", "jobs", "kind <> 'ingestion'")
    op.create_check_constraint(
        "last_version_number_nonnegative", "datasets", "last_version_number >= 0"
    )
    # The counter starts at the highest number each dataset has now: numbers deleted
    # before this migration may still be given again, none deleted after it.
    op.execute(
        "UPDATE datasets AS d SET last_version_number = m.top"
        " FROM (SELECT dataset_id, max(version_number) AS top FROM dataset_versions"
        " GROUP BY dataset_id) AS m WHERE d.id = m.dataset_id"
    )
    # Functions, then the triggers on the tables above.
    op.replace_entity(
        function(
            "dataset_versions_number()",
            "returns trigger\nLANGUAGE plpgsql\nSET enable_seqscan = off\nAS $$\nBEGIN\n    UPDATE public.datasets AS d\n       SET last_version_number = d.last_version_number + 1\n     WHERE d.id = NEW.dataset_id\n    RETURNING d.last_version_number INTO NEW.version_number;\n    IF NOT FOUND THEN\n        NEW.version_number := 1;  -- no such dataset: its foreign key refuses the row\n    END IF;\n    RETURN NEW;\nEND;\n$$",
        )
    )

    create(
        DATASET_VERSIONS_LIFT_COUNTER_FUNCTION,
        DATASET_VERSIONS_LIFT_COUNTER_ROW_FUNCTION,
        JOBS_STATUS_TRANSITION_FUNCTION,
        JOB_NODES_STATUS_TRANSITION_FUNCTION,
        INGESTION_JOBS_STATUS_TRANSITION_FUNCTION,
        DATASET_VERSIONS_LIFT_COUNTER_TRIGGER,
        DATASET_VERSIONS_LIFT_COUNTER_ON_UPDATE_TRIGGER,
        JOBS_STATUS_TRANSITION_TRIGGER,
        JOB_NODES_STATUS_TRANSITION_TRIGGER,
        INGESTION_JOBS_STATUS_TRANSITION_TRIGGER,
        DATASETS_VERSION_COUNTER_GUARD_FUNCTION,
        DATASETS_VERSION_COUNTER_GUARD_TRIGGER,
    )

    op.replace_entity(
        trigger(
            "set_updated_at",
            "datasets",
            "BEFORE UPDATE ON public.datasets FOR EACH ROW WHEN (OLD.last_version_number IS NOT DISTINCT FROM NEW.last_version_number\n      AND OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
        )
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.replace_entity(
        trigger(
            "set_updated_at",
            "datasets",
            "BEFORE UPDATE ON public.datasets FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
        )
    )

    drop(
        DATASETS_VERSION_COUNTER_GUARD_TRIGGER,
        DATASETS_VERSION_COUNTER_GUARD_FUNCTION,
        INGESTION_JOBS_STATUS_TRANSITION_TRIGGER,
        JOB_NODES_STATUS_TRANSITION_TRIGGER,
        JOBS_STATUS_TRANSITION_TRIGGER,
        DATASET_VERSIONS_LIFT_COUNTER_ON_UPDATE_TRIGGER,
        DATASET_VERSIONS_LIFT_COUNTER_TRIGGER,
        INGESTION_JOBS_STATUS_TRANSITION_FUNCTION,
        JOB_NODES_STATUS_TRANSITION_FUNCTION,
        JOBS_STATUS_TRANSITION_FUNCTION,
        DATASET_VERSIONS_LIFT_COUNTER_ROW_FUNCTION,
        DATASET_VERSIONS_LIFT_COUNTER_FUNCTION,
    )

    op.replace_entity(
        function(
            "dataset_versions_number()",
            "returns trigger\n LANGUAGE plpgsql\n SET enable_seqscan TO 'off'\nAS $function$\nBEGIN\n    PERFORM 1 FROM public.datasets AS d WHERE d.id = NEW.dataset_id FOR NO KEY UPDATE;\n    SELECT coalesce(max(v.version_number), 0) + 1 INTO NEW.version_number\n      FROM public.dataset_versions AS v\n     WHERE v.dataset_id = NEW.dataset_id;\n    RETURN NEW;\nEND;\n$function$",
        )
    )

    op.drop_column("jobs", "run_after")
    op.drop_constraint("kind_not_ingestion", "jobs", type_="check")
    op.drop_column("jobs", "kind")
    JOB_KIND.drop(op.get_bind(), checkfirst=False)
    op.drop_column("ingestion_jobs", "run_after")
    op.drop_index("ix_datasets_current_version_id_id", table_name="datasets")
    op.drop_constraint("last_version_number_nonnegative", "datasets", type_="check")
    op.drop_column("datasets", "last_version_number")
