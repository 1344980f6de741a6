"""job logs and node progress

Table ``job_logs`` (a job's log lines, keyed by ``(job_id, seq)``, at most 1000 per
job, removed with the job) with enum ``log_level``; ``job_nodes.progress`` (0..1) and
``progress_message``; the trigger functions of ``sql/triggers/job_logs.sql``:
``job_logs_number`` (numbering and the bound), ``job_logs_job_status`` (a line per
change of a job's status) and ``job_nodes_status_progress`` (progress follows a
node's status, and a line per change of it). Checks and trigger order written by
hand: the triggers come after the table they are on, and go before it.

Revision ID: c11c00000001
Revises: c11b00000001
Create Date: 2026-12-07 04:58:55.814911+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from database.migrations import create, drop, function, trigger

revision: str = "c11c00000001"
down_revision: str | Sequence[str] | None = "c11b00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


JOB_LOGS_NUMBER_FUNCTION = function(
    "job_logs_number()",
    "returns trigger\nLANGUAGE plpgsql\nSET enable_seqscan = off\nAS $$\nDECLARE\n    last_seq integer;\nBEGIN\n    PERFORM pg_advisory_xact_lock(7305040, hashtext(NEW.job_id::text));\n    SELECT l.seq INTO last_seq\n      FROM public.job_logs AS l\n     WHERE l.job_id = NEW.job_id\n     ORDER BY l.seq DESC\n     LIMIT 1;\n    NEW.seq := coalesce(last_seq, 0) + 1;\n    IF NEW.seq > 1000 THEN\n        RETURN NULL;\n    END IF;\n    IF NEW.seq = 1000 THEN\n        NEW.level := 'warning';\n        NEW.node_id := NULL;\n        NEW.message := 'the log of this job is full (1000 lines)\\: later lines are not kept';\n    END IF;\n    IF NEW.created_at IS NULL THEN\n        NEW.created_at := clock_timestamp();\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)
JOB_LOGS_JOB_STATUS_FUNCTION = function(
    "job_logs_job_status()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nDECLARE\n    line text;\n    lvl text := 'info';  -- a log_level label (the type is created with the table)\nBEGIN\n    CASE NEW.status\n        WHEN 'running' THEN\n            line := format('job claimed by a worker (attempt %s)', NEW.attempts);\n        WHEN 'queued' THEN\n            IF OLD.status = 'running' THEN\n                lvl := 'warning';\n                line := format(\n                    'attempt %s ended without finishing (its worker stopped or was lost)\\:'\n                    ' the job waits in the queue again', OLD.attempts);\n            ELSE\n                line := 'job queued';\n            END IF;\n        WHEN 'completed' THEN\n            line := 'job completed';\n        WHEN 'failed' THEN\n            lvl := 'error';\n            line := 'job failed\\: ' || coalesce(NEW.error_message, 'no reason given');\n        WHEN 'cancelled' THEN\n            lvl := 'warning';\n            line := 'job cancelled' || coalesce('\\: ' || NEW.error_message, '');\n        ELSE\n            line := 'job ' || NEW.status::text;\n    END CASE;\n    INSERT INTO public.job_logs (job_id, level, message) VALUES (NEW.id, CAST(lvl AS public.log_level), left(line, 2000));\n    RETURN NULL;\nEND;\n$$",
)
JOB_NODES_STATUS_PROGRESS_FUNCTION = function(
    "job_nodes_status_progress()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nDECLARE\n    line text;\n    lvl text := 'info';  -- a log_level label (the type is created with the table)\nBEGIN\n    NEW.progress_message := NULL;\n    CASE NEW.status\n        WHEN 'running' THEN\n            NEW.progress := 0;\n            line := format('node %s (%s) started', NEW.node_id, NEW.node_type);\n        WHEN 'success' THEN\n            NEW.progress := 1;\n            line := format('node %s succeeded', NEW.node_id);\n        WHEN 'failed' THEN\n            lvl := 'error';\n            line := format('node %s failed\\: %s', NEW.node_id,\n                           coalesce(NEW.error_message, 'no reason given'));\n        WHEN 'skipped' THEN\n            lvl := 'warning';\n            IF NEW.error_message LIKE 'skipped%' THEN\n                line := format('node %s %s', NEW.node_id, NEW.error_message);\n            ELSE\n                line := format('node %s skipped\\: %s', NEW.node_id,\n                               coalesce(NEW.error_message, 'no reason given'));\n            END IF;\n        ELSE\n            NEW.progress := 0;\n    END CASE;\n    IF line IS NOT NULL THEN\n        INSERT INTO public.job_logs (job_id, level, node_id, message)\n        VALUES (NEW.job_id, CAST(lvl AS public.log_level), NEW.node_id, left(line, 2000));\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)
JOB_LOGS_NUMBER_TRIGGER = trigger(
    "job_logs_number",
    "job_logs",
    "BEFORE INSERT ON public.job_logs FOR EACH ROW\nEXECUTE FUNCTION public.job_logs_number()",
)
JOBS_LOG_STATUS_TRIGGER = trigger(
    "jobs_log_status",
    "jobs",
    "AFTER UPDATE OF status ON public.jobs FOR EACH ROW\nWHEN (OLD.status IS DISTINCT FROM NEW.status)\nEXECUTE FUNCTION public.job_logs_job_status()",
)
JOB_NODES_STATUS_PROGRESS_TRIGGER = trigger(
    "job_nodes_status_progress",
    "job_nodes",
    "BEFORE UPDATE OF status ON public.job_nodes FOR EACH ROW\nWHEN (OLD.status IS DISTINCT FROM NEW.status)\nEXECUTE FUNCTION public.job_nodes_status_progress()",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "job_logs",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column(
            "seq",
            sa.Integer(),
            server_default=sa.FetchedValue(),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column(
            "level",
            sa.Enum("debug", "info", "warning", "error", name="log_level"),
            server_default="info",
            nullable=False,
        ),
        sa.Column("node_id", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "char_length(message) BETWEEN 1 AND 2000", name=op.f("ck_job_logs_message_length")
        ),
        sa.CheckConstraint(
            "node_id IS NULL OR char_length(node_id) BETWEEN 1 AND 200",
            name=op.f("ck_job_logs_node_id_length"),
        ),
        sa.CheckConstraint("seq BETWEEN 1 AND 1000", name=op.f("ck_job_logs_seq_range")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_logs_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "seq", name=op.f("pk_job_logs")),
    )
    op.add_column(
        "job_nodes", sa.Column("progress", sa.REAL(), server_default=sa.text("0"), nullable=False)
    )
    op.add_column("job_nodes", sa.Column("progress_message", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_job_nodes_progress_range"), "job_nodes", "progress >= 0 AND progress <= 1"
    )
    op.create_check_constraint(
        op.f("ck_job_nodes_progress_message_length"),
        "job_nodes",
        "progress_message IS NULL OR char_length(progress_message) BETWEEN 1 AND 500",
    )

    create(
        JOB_LOGS_NUMBER_FUNCTION,
        JOB_LOGS_JOB_STATUS_FUNCTION,
        JOB_NODES_STATUS_PROGRESS_FUNCTION,
        JOB_LOGS_NUMBER_TRIGGER,
        JOBS_LOG_STATUS_TRIGGER,
        JOB_NODES_STATUS_PROGRESS_TRIGGER,
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    drop(
        JOBS_LOG_STATUS_TRIGGER,
        JOB_NODES_STATUS_PROGRESS_TRIGGER,
        JOB_LOGS_NUMBER_TRIGGER,
    )

    op.drop_constraint(op.f("ck_job_nodes_progress_message_length"), "job_nodes", type_="check")
    op.drop_constraint(op.f("ck_job_nodes_progress_range"), "job_nodes", type_="check")
    op.drop_column("job_nodes", "progress_message")
    op.drop_column("job_nodes", "progress")
    op.drop_table("job_logs")
    sa.Enum(name="log_level").drop(op.get_bind())

    drop(
        JOB_NODES_STATUS_PROGRESS_FUNCTION,
        JOB_LOGS_JOB_STATUS_FUNCTION,
        JOB_LOGS_NUMBER_FUNCTION,
    )
