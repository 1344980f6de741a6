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
from alembic_utils.pg_function import PGFunction
from alembic_utils.pg_trigger import PGTrigger
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "c11a00000001"
down_revision: str | Sequence[str] | None = "c12a00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_KIND = postgresql.ENUM("workflow_run", "ingestion", name="job_kind", create_type=False)


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
    public_dataset_versions_number = PGFunction(
        schema="public",
        signature="dataset_versions_number()",
        definition="returns trigger\nLANGUAGE plpgsql\nSET enable_seqscan = off\nAS $$\nBEGIN\n    UPDATE public.datasets AS d\n       SET last_version_number = d.last_version_number + 1\n     WHERE d.id = NEW.dataset_id\n    RETURNING d.last_version_number INTO NEW.version_number;\n    IF NOT FOUND THEN\n        NEW.version_number := 1;  -- no such dataset: its foreign key refuses the row\n    END IF;\n    RETURN NEW;\nEND;\n$$",
    )
    op.replace_entity(public_dataset_versions_number)

    public_dataset_versions_lift_counter = PGFunction(
        schema="public",
        signature="dataset_versions_lift_counter()",
        definition="returns trigger\nLANGUAGE plpgsql\nSET enable_seqscan = off\nAS $$\nBEGIN\n    UPDATE public.datasets AS d\n       SET last_version_number = m.top\n      FROM (SELECT n.dataset_id, max(n.version_number) AS top\n              FROM new_rows AS n GROUP BY n.dataset_id) AS m\n     WHERE d.id = m.dataset_id AND d.last_version_number < m.top;\n    RETURN NULL;\nEND;\n$$",
    )
    op.create_entity(public_dataset_versions_lift_counter)

    public_dataset_versions_lift_counter_row = PGFunction(
        schema="public",
        signature="dataset_versions_lift_counter_row()",
        definition="returns trigger\nLANGUAGE plpgsql\nSET enable_seqscan = off\nAS $$\nBEGIN\n    UPDATE public.datasets AS d\n       SET last_version_number = NEW.version_number\n     WHERE d.id = NEW.dataset_id AND d.last_version_number < NEW.version_number;\n    RETURN NULL;\nEND;\n$$",
    )
    op.create_entity(public_dataset_versions_lift_counter_row)

    public_jobs_status_transition = PGFunction(
        schema="public",
        signature="jobs_status_transition()",
        definition="returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF (OLD.status, NEW.status) IN (\n        ('pending', 'queued'), ('pending', 'cancelled'),\n        ('queued', 'running'), ('queued', 'cancelled'),\n        ('running', 'completed'), ('running', 'failed'), ('running', 'cancelled'),\n        ('running', 'queued')\n    ) THEN\n        RETURN NEW;\n    END IF;\n    RAISE EXCEPTION 'job % may not go from % to %', OLD.id, OLD.status, NEW.status\n        USING ERRCODE = 'ML010',\n              DETAIL = format('table=jobs from=%s to=%s', OLD.status, NEW.status);\nEND;\n$$",
    )
    op.create_entity(public_jobs_status_transition)

    public_job_nodes_status_transition = PGFunction(
        schema="public",
        signature="job_nodes_status_transition()",
        definition="returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF (OLD.status, NEW.status) IN (\n        ('pending', 'running'), ('pending', 'skipped'),\n        ('running', 'success'), ('running', 'failed')\n    ) THEN\n        RETURN NEW;\n    END IF;\n    IF NEW.status = 'pending'\n       AND EXISTS (SELECT 1 FROM public.jobs AS j WHERE j.id = NEW.job_id AND j.status = 'queued')\n    THEN\n        RETURN NEW;\n    END IF;\n    RAISE EXCEPTION 'node % of job % may not go from % to %',\n            OLD.node_id, OLD.job_id, OLD.status, NEW.status\n        USING ERRCODE = 'ML010',\n              DETAIL = format('table=job_nodes from=%s to=%s', OLD.status, NEW.status);\nEND;\n$$",
    )
    op.create_entity(public_job_nodes_status_transition)

    public_ingestion_jobs_status_transition = PGFunction(
        schema="public",
        signature="ingestion_jobs_status_transition()",
        definition="returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF (OLD.status, NEW.status) IN (\n        ('pending', 'processing'),\n        ('processing', 'completed'), ('processing', 'failed'), ('processing', 'pending')\n    ) THEN\n        RETURN NEW;\n    END IF;\n    RAISE EXCEPTION 'ingestion job % may not go from % to %', OLD.id, OLD.status, NEW.status\n        USING ERRCODE = 'ML010',\n              DETAIL = format('table=ingestion_jobs from=%s to=%s', OLD.status, NEW.status);\nEND;\n$$",
    )
    op.create_entity(public_ingestion_jobs_status_transition)

    public_dataset_versions_dataset_versions_lift_counter = PGTrigger(
        schema="public",
        signature="dataset_versions_lift_counter",
        on_entity="public.dataset_versions",
        is_constraint=False,
        definition="AFTER INSERT ON public.dataset_versions REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT\nEXECUTE FUNCTION public.dataset_versions_lift_counter()",
    )
    op.create_entity(public_dataset_versions_dataset_versions_lift_counter)

    public_dataset_versions_dataset_versions_lift_counter_on_update = PGTrigger(
        schema="public",
        signature="dataset_versions_lift_counter_on_update",
        on_entity="public.dataset_versions",
        is_constraint=False,
        definition="AFTER UPDATE OF version_number, dataset_id ON public.dataset_versions FOR EACH ROW\nWHEN (NEW.version_number IS DISTINCT FROM OLD.version_number\n      OR NEW.dataset_id IS DISTINCT FROM OLD.dataset_id)\nEXECUTE FUNCTION public.dataset_versions_lift_counter_row()",
    )
    op.create_entity(public_dataset_versions_dataset_versions_lift_counter_on_update)

    public_jobs_jobs_status_transition = PGTrigger(
        schema="public",
        signature="jobs_status_transition",
        on_entity="public.jobs",
        is_constraint=False,
        definition="BEFORE UPDATE OF status ON public.jobs FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)\nEXECUTE FUNCTION public.jobs_status_transition()",
    )
    op.create_entity(public_jobs_jobs_status_transition)

    public_job_nodes_job_nodes_status_transition = PGTrigger(
        schema="public",
        signature="job_nodes_status_transition",
        on_entity="public.job_nodes",
        is_constraint=False,
        definition="BEFORE UPDATE OF status ON public.job_nodes FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)\nEXECUTE FUNCTION public.job_nodes_status_transition()",
    )
    op.create_entity(public_job_nodes_job_nodes_status_transition)

    public_ingestion_jobs_ingestion_jobs_status_transition = PGTrigger(
        schema="public",
        signature="ingestion_jobs_status_transition",
        on_entity="public.ingestion_jobs",
        is_constraint=False,
        definition="BEFORE UPDATE OF status ON public.ingestion_jobs FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)\nEXECUTE FUNCTION public.ingestion_jobs_status_transition()",
    )
    op.create_entity(public_ingestion_jobs_ingestion_jobs_status_transition)

    public_datasets_version_counter_guard = PGFunction(
        schema="public",
        signature="datasets_version_counter_guard()",
        definition="returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'the version counter of dataset % may not go down (% to %)',\n            OLD.id, OLD.last_version_number, NEW.last_version_number\n        USING ERRCODE = 'ML011';\nEND;\n$$",
    )
    op.create_entity(public_datasets_version_counter_guard)

    public_datasets_datasets_version_counter_guard = PGTrigger(
        schema="public",
        signature="datasets_version_counter_guard",
        on_entity="public.datasets",
        is_constraint=False,
        definition="BEFORE UPDATE OF last_version_number ON public.datasets FOR EACH ROW WHEN (NEW.last_version_number < OLD.last_version_number)\nEXECUTE FUNCTION public.datasets_version_counter_guard()",
    )
    op.create_entity(public_datasets_datasets_version_counter_guard)

    public_datasets_set_updated_at = PGTrigger(
        schema="public",
        signature="set_updated_at",
        on_entity="public.datasets",
        is_constraint=False,
        definition="BEFORE UPDATE ON public.datasets FOR EACH ROW WHEN (OLD.last_version_number IS NOT DISTINCT FROM NEW.last_version_number\n      AND OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
    )
    op.replace_entity(public_datasets_set_updated_at)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    public_datasets_set_updated_at = PGTrigger(
        schema="public",
        signature="set_updated_at",
        on_entity="public.datasets",
        is_constraint=False,
        definition="BEFORE UPDATE ON public.datasets FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
    )
    op.replace_entity(public_datasets_set_updated_at)

    public_datasets_datasets_version_counter_guard = PGTrigger(
        schema="public",
        signature="datasets_version_counter_guard",
        on_entity="public.datasets",
        is_constraint=False,
        definition="BEFORE UPDATE OF last_version_number ON public.datasets FOR EACH ROW WHEN (NEW.last_version_number < OLD.last_version_number)\nEXECUTE FUNCTION public.datasets_version_counter_guard()",
    )
    op.drop_entity(public_datasets_datasets_version_counter_guard)

    public_datasets_version_counter_guard = PGFunction(
        schema="public",
        signature="datasets_version_counter_guard()",
        definition="returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'the version counter of dataset % may not go down (% to %)',\n            OLD.id, OLD.last_version_number, NEW.last_version_number\n        USING ERRCODE = 'ML011';\nEND;\n$$",
    )
    op.drop_entity(public_datasets_version_counter_guard)

    public_ingestion_jobs_ingestion_jobs_status_transition = PGTrigger(
        schema="public",
        signature="ingestion_jobs_status_transition",
        on_entity="public.ingestion_jobs",
        is_constraint=False,
        definition="BEFORE UPDATE OF status ON public.ingestion_jobs FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)\nEXECUTE FUNCTION public.ingestion_jobs_status_transition()",
    )
    op.drop_entity(public_ingestion_jobs_ingestion_jobs_status_transition)

    public_job_nodes_job_nodes_status_transition = PGTrigger(
        schema="public",
        signature="job_nodes_status_transition",
        on_entity="public.job_nodes",
        is_constraint=False,
        definition="BEFORE UPDATE OF status ON public.job_nodes FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)\nEXECUTE FUNCTION public.job_nodes_status_transition()",
    )
    op.drop_entity(public_job_nodes_job_nodes_status_transition)

    public_jobs_jobs_status_transition = PGTrigger(
        schema="public",
        signature="jobs_status_transition",
        on_entity="public.jobs",
        is_constraint=False,
        definition="BEFORE UPDATE OF status ON public.jobs FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)\nEXECUTE FUNCTION public.jobs_status_transition()",
    )
    op.drop_entity(public_jobs_jobs_status_transition)

    public_dataset_versions_dataset_versions_lift_counter_on_update = PGTrigger(
        schema="public",
        signature="dataset_versions_lift_counter_on_update",
        on_entity="public.dataset_versions",
        is_constraint=False,
        definition="AFTER UPDATE OF version_number, dataset_id ON public.dataset_versions FOR EACH ROW\nWHEN (NEW.version_number IS DISTINCT FROM OLD.version_number\n      OR NEW.dataset_id IS DISTINCT FROM OLD.dataset_id)\nEXECUTE FUNCTION public.dataset_versions_lift_counter_row()",
    )
    op.drop_entity(public_dataset_versions_dataset_versions_lift_counter_on_update)

    public_dataset_versions_dataset_versions_lift_counter = PGTrigger(
        schema="public",
        signature="dataset_versions_lift_counter",
        on_entity="public.dataset_versions",
        is_constraint=False,
        definition="AFTER INSERT ON public.dataset_versions REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT\nEXECUTE FUNCTION public.dataset_versions_lift_counter()",
    )
    op.drop_entity(public_dataset_versions_dataset_versions_lift_counter)

    public_ingestion_jobs_status_transition = PGFunction(
        schema="public",
        signature="ingestion_jobs_status_transition()",
        definition="returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF (OLD.status, NEW.status) IN (\n        ('pending', 'processing'),\n        ('processing', 'completed'), ('processing', 'failed'), ('processing', 'pending')\n    ) THEN\n        RETURN NEW;\n    END IF;\n    RAISE EXCEPTION 'ingestion job % may not go from % to %', OLD.id, OLD.status, NEW.status\n        USING ERRCODE = 'ML010',\n              DETAIL = format('table=ingestion_jobs from=%s to=%s', OLD.status, NEW.status);\nEND;\n$$",
    )
    op.drop_entity(public_ingestion_jobs_status_transition)

    public_job_nodes_status_transition = PGFunction(
        schema="public",
        signature="job_nodes_status_transition()",
        definition="returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF (OLD.status, NEW.status) IN (\n        ('pending', 'running'), ('pending', 'skipped'),\n        ('running', 'success'), ('running', 'failed')\n    ) THEN\n        RETURN NEW;\n    END IF;\n    IF NEW.status = 'pending'\n       AND EXISTS (SELECT 1 FROM public.jobs AS j WHERE j.id = NEW.job_id AND j.status = 'queued')\n    THEN\n        RETURN NEW;\n    END IF;\n    RAISE EXCEPTION 'node % of job % may not go from % to %',\n            OLD.node_id, OLD.job_id, OLD.status, NEW.status\n        USING ERRCODE = 'ML010',\n              DETAIL = format('table=job_nodes from=%s to=%s', OLD.status, NEW.status);\nEND;\n$$",
    )
    op.drop_entity(public_job_nodes_status_transition)

    public_jobs_status_transition = PGFunction(
        schema="public",
        signature="jobs_status_transition()",
        definition="returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF (OLD.status, NEW.status) IN (\n        ('pending', 'queued'), ('pending', 'cancelled'),\n        ('queued', 'running'), ('queued', 'cancelled'),\n        ('running', 'completed'), ('running', 'failed'), ('running', 'cancelled'),\n        ('running', 'queued')\n    ) THEN\n        RETURN NEW;\n    END IF;\n    RAISE EXCEPTION 'job % may not go from % to %', OLD.id, OLD.status, NEW.status\n        USING ERRCODE = 'ML010',\n              DETAIL = format('table=jobs from=%s to=%s', OLD.status, NEW.status);\nEND;\n$$",
    )
    op.drop_entity(public_jobs_status_transition)

    public_dataset_versions_lift_counter_row = PGFunction(
        schema="public",
        signature="dataset_versions_lift_counter_row()",
        definition="returns trigger\nLANGUAGE plpgsql\nSET enable_seqscan = off\nAS $$\nBEGIN\n    UPDATE public.datasets AS d\n       SET last_version_number = NEW.version_number\n     WHERE d.id = NEW.dataset_id AND d.last_version_number < NEW.version_number;\n    RETURN NULL;\nEND;\n$$",
    )
    op.drop_entity(public_dataset_versions_lift_counter_row)

    public_dataset_versions_lift_counter = PGFunction(
        schema="public",
        signature="dataset_versions_lift_counter()",
        definition="returns trigger\nLANGUAGE plpgsql\nSET enable_seqscan = off\nAS $$\nBEGIN\n    UPDATE public.datasets AS d\n       SET last_version_number = m.top\n      FROM (SELECT n.dataset_id, max(n.version_number) AS top\n              FROM new_rows AS n GROUP BY n.dataset_id) AS m\n     WHERE d.id = m.dataset_id AND d.last_version_number < m.top;\n    RETURN NULL;\nEND;\n$$",
    )
    op.drop_entity(public_dataset_versions_lift_counter)

    public_dataset_versions_number = PGFunction(
        schema="public",
        signature="dataset_versions_number()",
        definition="returns trigger\n LANGUAGE plpgsql\n SET enable_seqscan TO 'off'\nAS $function$\nBEGIN\n    PERFORM 1 FROM public.datasets AS d WHERE d.id = NEW.dataset_id FOR NO KEY UPDATE;\n    SELECT coalesce(max(v.version_number), 0) + 1 INTO NEW.version_number\n      FROM public.dataset_versions AS v\n     WHERE v.dataset_id = NEW.dataset_id;\n    RETURN NEW;\nEND;\n$function$",
    )
    op.replace_entity(public_dataset_versions_number)

    op.drop_column("jobs", "run_after")
    op.drop_constraint("kind_not_ingestion", "jobs", type_="check")
    op.drop_column("jobs", "kind")
    JOB_KIND.drop(op.get_bind(), checkfirst=False)
    op.drop_column("ingestion_jobs", "run_after")
    op.drop_index("ix_datasets_current_version_id_id", table_name="datasets")
    op.drop_constraint("last_version_number_nonnegative", "datasets", type_="check")
    op.drop_column("datasets", "last_version_number")
