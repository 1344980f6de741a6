"""triggers

Revision ID: dd52b6bdfc1e
Revises: 978101ddeebc
Create Date: 2026-11-25 14:10:59.094988+00:00
"""

from collections.abc import Sequence

from alembic import op
from database.migrations import create, drop, trigger

revision: str = "dd52b6bdfc1e"
down_revision: str | Sequence[str] | None = "978101ddeebc"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


USERS_INC_DATASET_COUNT_TRIGGER = trigger(
    "users_inc_dataset_count",
    "datasets",
    "AFTER INSERT ON public.datasets REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_count_datasets()",
)
USERS_DEC_DATASET_COUNT_TRIGGER = trigger(
    "users_dec_dataset_count",
    "datasets",
    "AFTER DELETE ON public.datasets REFERENCING OLD TABLE AS old_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_count_datasets()",
)
USERS_MOVE_DATASET_COUNT_TRIGGER = trigger(
    "users_move_dataset_count",
    "datasets",
    "AFTER UPDATE ON public.datasets REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_count_datasets()",
)
USERS_INC_WORKFLOW_COUNT_TRIGGER = trigger(
    "users_inc_workflow_count",
    "workflows",
    "AFTER INSERT ON public.workflows REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_count_workflows()",
)
USERS_DEC_WORKFLOW_COUNT_TRIGGER = trigger(
    "users_dec_workflow_count",
    "workflows",
    "AFTER DELETE ON public.workflows REFERENCING OLD TABLE AS old_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_count_workflows()",
)
USERS_MOVE_WORKFLOW_COUNT_TRIGGER = trigger(
    "users_move_workflow_count",
    "workflows",
    "AFTER UPDATE ON public.workflows REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_count_workflows()",
)
USERS_INC_MODEL_COUNT_TRIGGER = trigger(
    "users_inc_model_count",
    "models",
    "AFTER INSERT ON public.models REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_count_models()",
)
USERS_DEC_MODEL_COUNT_TRIGGER = trigger(
    "users_dec_model_count",
    "models",
    "AFTER DELETE ON public.models REFERENCING OLD TABLE AS old_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_count_models()",
)
USERS_MOVE_MODEL_COUNT_TRIGGER = trigger(
    "users_move_model_count",
    "models",
    "AFTER UPDATE ON public.models REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_count_models()",
)
CREDIT_TX_BEFORE_INSERT_TRIGGER = trigger(
    "credit_tx_before_insert",
    "credit_transactions",
    "BEFORE INSERT ON public.credit_transactions FOR EACH ROW EXECUTE FUNCTION public.credit_tx_before_insert()",
)
CREDIT_TX_NO_UPDATE_DELETE_TRIGGER = trigger(
    "credit_tx_no_update_delete",
    "credit_transactions",
    "BEFORE UPDATE OR DELETE ON public.credit_transactions FOR EACH ROW EXECUTE FUNCTION public.credit_tx_immutable()",
)
CREDIT_TX_NO_TRUNCATE_TRIGGER = trigger(
    "credit_tx_no_truncate",
    "credit_transactions",
    "BEFORE TRUNCATE ON public.credit_transactions FOR EACH STATEMENT EXECUTE FUNCTION public.credit_tx_immutable()",
)
DATASET_VERSIONS_NUMBER_TRIGGER = trigger(
    "dataset_versions_number",
    "dataset_versions",
    "BEFORE INSERT ON public.dataset_versions FOR EACH ROW\nWHEN (NEW.version_number IS NULL)\nEXECUTE FUNCTION public.dataset_versions_number()",
)
USERS_ADJUST_STORAGE_INSERT_TRIGGER = trigger(
    "users_adjust_storage_insert",
    "dataset_versions",
    "AFTER INSERT ON public.dataset_versions REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage()",
)
USERS_ADJUST_STORAGE_DELETE_TRIGGER = trigger(
    "users_adjust_storage_delete",
    "dataset_versions",
    "AFTER DELETE ON public.dataset_versions REFERENCING OLD TABLE AS old_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage()",
)
USERS_ADJUST_STORAGE_UPDATE_TRIGGER = trigger(
    "users_adjust_storage_update",
    "dataset_versions",
    "AFTER UPDATE ON public.dataset_versions REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage()",
)
SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "users",
    "BEFORE UPDATE ON public.users FOR EACH ROW\nWHEN (pg_trigger_depth() = 0 AND OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
DATASETS_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "datasets",
    "BEFORE UPDATE ON public.datasets FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
DATASET_VERSIONS_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "dataset_versions",
    "BEFORE UPDATE ON public.dataset_versions FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
DATASET_PROFILES_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "dataset_profiles",
    "BEFORE UPDATE ON public.dataset_profiles FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
INGESTION_JOBS_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "ingestion_jobs",
    "BEFORE UPDATE ON public.ingestion_jobs FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
WORKFLOWS_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "workflows",
    "BEFORE UPDATE ON public.workflows FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
JOBS_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "jobs",
    "BEFORE UPDATE ON public.jobs FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
JOB_NODES_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "job_nodes",
    "BEFORE UPDATE ON public.job_nodes FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
MODELS_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "models",
    "BEFORE UPDATE ON public.models FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
CREDIT_PACKAGES_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "credit_packages",
    "BEFORE UPDATE ON public.credit_packages FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
EXPERIMENTS_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "experiments",
    "BEFORE UPDATE ON public.experiments FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
TUTORIALS_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "tutorials",
    "BEFORE UPDATE ON public.tutorials FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
USER_TUTORIAL_PROGRESS_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "user_tutorial_progress",
    "BEFORE UPDATE ON public.user_tutorial_progress FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
USERS_GUARD_DERIVED_INSERT_TRIGGER = trigger(
    "users_guard_derived_insert",
    "users",
    "BEFORE INSERT ON public.users FOR EACH ROW\nWHEN (NEW.credit_balance <> 0 OR NEW.dataset_count <> 0 OR NEW.workflow_count <> 0\n      OR NEW.model_count <> 0 OR NEW.storage_used_bytes <> 0)\nEXECUTE FUNCTION public.users_guard_derived()",
)
USERS_GUARD_DERIVED_UPDATE_TRIGGER = trigger(
    "users_guard_derived_update",
    "users",
    "BEFORE UPDATE ON public.users FOR EACH ROW\nWHEN (pg_trigger_depth() = 0\n      AND (OLD.credit_balance, OLD.dataset_count, OLD.workflow_count, OLD.model_count,\n           OLD.storage_used_bytes)\n          IS DISTINCT FROM\n          (NEW.credit_balance, NEW.dataset_count, NEW.workflow_count, NEW.model_count,\n           NEW.storage_used_bytes))\nEXECUTE FUNCTION public.users_guard_derived()",
)
WORKFLOW_SNAPSHOTS_IMMUTABLE_TRIGGER = trigger(
    "workflow_snapshots_immutable",
    "workflow_snapshots",
    "BEFORE UPDATE ON public.workflow_snapshots FOR EACH ROW EXECUTE FUNCTION public.workflow_snapshots_immutable()",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    create(
        USERS_INC_DATASET_COUNT_TRIGGER,
        USERS_DEC_DATASET_COUNT_TRIGGER,
        USERS_MOVE_DATASET_COUNT_TRIGGER,
        USERS_INC_WORKFLOW_COUNT_TRIGGER,
        USERS_DEC_WORKFLOW_COUNT_TRIGGER,
        USERS_MOVE_WORKFLOW_COUNT_TRIGGER,
        USERS_INC_MODEL_COUNT_TRIGGER,
        USERS_DEC_MODEL_COUNT_TRIGGER,
        USERS_MOVE_MODEL_COUNT_TRIGGER,
        CREDIT_TX_BEFORE_INSERT_TRIGGER,
        CREDIT_TX_NO_UPDATE_DELETE_TRIGGER,
        CREDIT_TX_NO_TRUNCATE_TRIGGER,
        DATASET_VERSIONS_NUMBER_TRIGGER,
        USERS_ADJUST_STORAGE_INSERT_TRIGGER,
        USERS_ADJUST_STORAGE_DELETE_TRIGGER,
        USERS_ADJUST_STORAGE_UPDATE_TRIGGER,
        SET_UPDATED_AT_TRIGGER,
        DATASETS_SET_UPDATED_AT_TRIGGER,
        DATASET_VERSIONS_SET_UPDATED_AT_TRIGGER,
        DATASET_PROFILES_SET_UPDATED_AT_TRIGGER,
        INGESTION_JOBS_SET_UPDATED_AT_TRIGGER,
        WORKFLOWS_SET_UPDATED_AT_TRIGGER,
        JOBS_SET_UPDATED_AT_TRIGGER,
        JOB_NODES_SET_UPDATED_AT_TRIGGER,
        MODELS_SET_UPDATED_AT_TRIGGER,
        CREDIT_PACKAGES_SET_UPDATED_AT_TRIGGER,
        EXPERIMENTS_SET_UPDATED_AT_TRIGGER,
        TUTORIALS_SET_UPDATED_AT_TRIGGER,
        USER_TUTORIAL_PROGRESS_SET_UPDATED_AT_TRIGGER,
        USERS_GUARD_DERIVED_INSERT_TRIGGER,
        USERS_GUARD_DERIVED_UPDATE_TRIGGER,
        WORKFLOW_SNAPSHOTS_IMMUTABLE_TRIGGER,
    )

    # ### end Alembic commands ###


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    drop(
        WORKFLOW_SNAPSHOTS_IMMUTABLE_TRIGGER,
        USERS_GUARD_DERIVED_UPDATE_TRIGGER,
        USERS_GUARD_DERIVED_INSERT_TRIGGER,
        USER_TUTORIAL_PROGRESS_SET_UPDATED_AT_TRIGGER,
        TUTORIALS_SET_UPDATED_AT_TRIGGER,
        EXPERIMENTS_SET_UPDATED_AT_TRIGGER,
        CREDIT_PACKAGES_SET_UPDATED_AT_TRIGGER,
        MODELS_SET_UPDATED_AT_TRIGGER,
        JOB_NODES_SET_UPDATED_AT_TRIGGER,
        JOBS_SET_UPDATED_AT_TRIGGER,
        WORKFLOWS_SET_UPDATED_AT_TRIGGER,
        INGESTION_JOBS_SET_UPDATED_AT_TRIGGER,
        DATASET_PROFILES_SET_UPDATED_AT_TRIGGER,
        DATASET_VERSIONS_SET_UPDATED_AT_TRIGGER,
        DATASETS_SET_UPDATED_AT_TRIGGER,
        SET_UPDATED_AT_TRIGGER,
        USERS_ADJUST_STORAGE_UPDATE_TRIGGER,
        USERS_ADJUST_STORAGE_DELETE_TRIGGER,
        USERS_ADJUST_STORAGE_INSERT_TRIGGER,
        DATASET_VERSIONS_NUMBER_TRIGGER,
        CREDIT_TX_NO_TRUNCATE_TRIGGER,
        CREDIT_TX_NO_UPDATE_DELETE_TRIGGER,
        CREDIT_TX_BEFORE_INSERT_TRIGGER,
        USERS_MOVE_MODEL_COUNT_TRIGGER,
        USERS_DEC_MODEL_COUNT_TRIGGER,
        USERS_INC_MODEL_COUNT_TRIGGER,
        USERS_MOVE_WORKFLOW_COUNT_TRIGGER,
        USERS_DEC_WORKFLOW_COUNT_TRIGGER,
        USERS_INC_WORKFLOW_COUNT_TRIGGER,
        USERS_MOVE_DATASET_COUNT_TRIGGER,
        USERS_DEC_DATASET_COUNT_TRIGGER,
        USERS_INC_DATASET_COUNT_TRIGGER,
    )

    # ### end Alembic commands ###
