"""The migrated schema, read from the PostgreSQL catalog, and the ORM layer over it.

Tables and the seed's columns, native enums (and the Python enums that mirror
them), keys, timestamps, foreign-key indexes and delete actions, constraint and
index names, defaults of a row inserted with only its required fields, mapper
configuration, ``repr()`` and ``UtcDateTime``.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import Engine, create_engine, event, inspect, select, text
from sqlalchemy import Enum as SAEnum
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, configure_mappers

import database.models  # noqa: F401  (every table on Base.metadata)
from database.base import NAMING_CONVENTION, Base
from database.errors import InvalidValue
from database.models import enums
from database.models.user import User
from database.types import MAX_DATETIME, MIN_DATETIME, InvalidDatetime, UtcDateTime, check_datetime

from pgtest import make_test_url

# --- the seed (docs: /work/shared/seeds/002_*.txt) ----------------------------------------
# Every field of the seed's tables; the tables the seed only names get the columns
# their purpose needs.
SEED_COLUMNS: dict[str, set[str]] = {
    "users": {
        "id", "email", "full_name", "oauth_provider", "oauth_id", "tier", "credit_balance",
        "email_verified", "is_deleted", "dataset_count", "workflow_count", "model_count",
        "storage_used_bytes", "created_at", "updated_at",
    },
    "datasets": {
        "id", "user_id", "name", "description", "problem_type", "target_column",
        "current_version_id", "created_at", "updated_at",
    },
    "dataset_versions": {
        "id", "dataset_id", "upload_id", "version_number", "version_label", "original_filename",
        "original_format", "original_size_bytes", "s3_path", "parquet_size_bytes", "row_count",
        "column_count", "columns_metadata", "status", "created_at",
    },
    "workflows": {
        "id", "user_id", "name", "description", "definition", "is_deleted", "created_at",
        "updated_at",
    },
    "workflow_snapshots": {"id", "workflow_id", "user_id", "snapshot_data", "created_at"},
    "jobs": {
        "id", "user_id", "workflow_snapshot_id", "status", "credit_cost", "priority",
        "celery_task_id", "results", "error_message", "error_traceback", "created_at",
        "started_at", "completed_at",
    },
    "job_nodes": {
        "id", "job_id", "node_id", "node_type", "status", "output_data", "error_message",
        "started_at", "completed_at",
    },
    "models": {
        "id", "user_id", "job_id", "name", "algorithm", "problem_type", "metrics",
        "hyperparameters", "s3_path", "is_deployed", "created_at",
    },
    "credit_transactions": {
        "id", "user_id", "type", "amount", "balance_after", "description", "job_id",
        "package_id", "stripe_payment_id", "created_at",
    },
    "credit_packages": {
        "id", "name", "credits", "price_cents", "stripe_price_id", "is_active",
        "tier_restriction",
    },
    # Named in the seed's summary, without a field table.
    "dataset_profiles": {"id", "dataset_version_id", "created_at"},
    "ingestion_jobs": {"id", "dataset_version_id", "status", "error_message", "created_at"},
    "experiments": {"id", "user_id", "name", "created_at"},
    "experiment_runs": {"id", "experiment_id", "job_id", "model_id", "created_at"},
    "tutorials": {"id", "slug", "title", "created_at"},
    "user_tutorial_progress": {"id", "user_id", "tutorial_id", "completed_at", "created_at"},
}  # fmt: skip
TABLES = set(SEED_COLUMNS)

ENUM_LABELS: dict[str, list[str]] = {
    "user_tier": ["free", "pro", "enterprise"],
    "file_format": ["csv", "json", "parquet", "excel", "unknown"],
    "problem_type": ["classification", "regression", "clustering", "other"],
    "job_status": ["pending", "queued", "running", "completed", "failed", "cancelled"],
    "node_type": ["dataset", "preprocess", "model", "visualize", "save", "automl"],
    "node_status": ["pending", "running", "success", "failed", "skipped"],
    "transaction_type": ["purchase", "consumption", "refund", "adjustment"],
    "tutorial_difficulty": ["beginner", "intermediate", "advanced"],
    "credit_tier_restriction": ["none", "pro_only", "enterprise_only"],
    "oauth_provider": ["google", "github"],
    "model_visibility": ["private", "shared", "public"],
    "model_version_status": ["ready", "archived"],
    "lineage_relation": [
        "trained_on",
        "evaluated_on",
        "produced_by",
        "retrained_from",
        "tuned_from",
    ],
    "model_format": ["joblib", "skops", "onnx", "mlflow"],
    # Ordered: deploy includes download includes read (database.registry.can).
    "model_permission": ["read", "download", "deploy"],
    "inference_status": ["ok", "client_error", "refused", "server_error", "timeout"],
    "usage_sku": ["predicted_rows", "batch_rows"],
    "quota_window": ["minute", "month"],
    "deployment_status": ["pending", "active", "stopped", "failed"],
    # Billing (issue 16).
    "price_unit": ["job", "node", "thousand_rows", "gb_month", "minute"],
    "invoice_status": ["draft", "open", "paid", "void", "uncollectible"],
    "billing_alert_kind": ["balance_below", "spend_above"],
    "alert_event_status": ["pending", "delivered", "failed"],
    "reconciliation_kind": ["verify", "repair"],
    "audit_outcome": ["success", "denied", "failed"],
    "experiment_run_status": ["finished", "failed"],
    "criterion_kind": ["metric_threshold", "row_rule"],
    "criterion_operator": [">=", ">", "<=", "<"],
    "row_rule": ["absolute_error_le", "predicted_equals_actual"],
}

PYTHON_ENUMS: dict[str, type[enum.Enum]] = {
    "user_tier": enums.UserTier,
    "user_role": enums.UserRole,
    "file_format": enums.FileFormat,
    "problem_type": enums.ProblemType,
    "job_status": enums.JobStatus,
    "job_kind": enums.JobKind,
    "node_type": enums.NodeType,
    "node_status": enums.NodeStatus,
    "transaction_type": enums.TransactionType,
    "tutorial_difficulty": enums.TutorialDifficulty,
    "credit_tier_restriction": enums.CreditTierRestriction,
    "oauth_provider": enums.OAuthProvider,
    "ingestion_status": enums.IngestionStatus,
    "log_level": enums.LogLevel,
    "model_visibility": enums.ModelVisibility,
    "model_version_status": enums.ModelVersionStatus,
    "lineage_relation": enums.LineageRelation,
    "model_format": enums.ModelFormat,
    "model_permission": enums.ModelPermission,
    "inference_status": enums.InferenceStatus,
    "usage_sku": enums.UsageSku,
    "quota_window": enums.QuotaWindow,
    "deployment_status": enums.DeploymentStatus,
    "price_unit": enums.PriceUnit,
    "invoice_status": enums.InvoiceStatus,
    "billing_alert_kind": enums.BillingAlertKind,
    "alert_event_status": enums.AlertEventStatus,
    "reconciliation_kind": enums.ReconciliationKind,
    "audit_outcome": enums.AuditOutcome,
    "experiment_run_status": enums.ExperimentRunStatus,
    "criterion_kind": enums.CriterionKind,
    "criterion_operator": enums.CriterionOperator,
    "row_rule": enums.RowRule,
}

# Every foreign key's ON DELETE and ON UPDATE action, and for ON DELETE SET NULL (cols)
# the columns it clears. Written down so a change to any of them is a decision:
#   a = NO ACTION, r = RESTRICT, c = CASCADE, n = SET NULL, d = SET DEFAULT.
FK_ACTIONS: dict[str, tuple[str, str, tuple[str, ...] | None]] = {
    # The ledger outlives what it names: a user, job or package with entries stays.
    "fk_credit_transactions_user_id_users": ("r", "a", None),
    "fk_credit_transactions_job_id_jobs": ("r", "a", None),
    "fk_credit_transactions_package_id_credit_packages": ("r", "a", None),
    # A user's own things go with the user.
    "fk_datasets_user_id_users": ("c", "a", None),
    "fk_workflows_user_id_users": ("c", "a", None),
    "fk_workflow_snapshots_user_id_users": ("c", "a", None),
    "fk_jobs_user_id_users": ("c", "a", None),
    "fk_models_user_id_users": ("c", "a", None),
    "fk_experiments_user_id_users": ("c", "a", None),
    "fk_user_tutorial_progress_user_id_users": ("c", "a", None),
    "fk_user_tutorial_progress_tutorial_id_tutorials": ("c", "a", None),
    # A dataset's versions, their profiles and ingestion jobs go with it; the owner
    # column follows the parent's (ON UPDATE CASCADE).
    "fk_dataset_versions_dataset_id_user_id_datasets": ("c", "c", None),
    "fk_dataset_profiles_dataset_version_id_dataset_versions": ("c", "a", None),
    "fk_ingestion_jobs_dataset_version_id_user_id_dataset_versions": ("c", "c", None),
    # Deleting the current version clears only the pointer.
    "fk_datasets_current_version_id_dataset_versions": ("n", "a", ("current_version_id",)),
    # A job's nodes go with it; a job's snapshot is checked at the end of the
    # statement (NO ACTION), so deleting a user cascades to both.
    "fk_job_nodes_job_id_user_id_jobs": ("c", "a", None),
    "fk_jobs_workflow_snapshot_id_user_id_workflow_snapshots": ("a", "a", None),
    # Snapshots, models and runs survive what they came from.
    "fk_workflow_snapshots_workflow_id_workflows": ("n", "a", None),
    "fk_models_job_id_user_id_jobs": ("n", "a", ("job_id",)),
    "fk_experiments_dataset_id_datasets": ("n", "a", None),
    "fk_experiment_runs_experiment_id_user_id_experiments": ("c", "a", None),
    "fk_experiment_runs_job_id_user_id_jobs": ("n", "a", ("job_id",)),
    "fk_experiment_runs_model_id_user_id_models": ("n", "a", ("model_id",)),
    # The log of repairs of a user's derived columns goes with the user.
    "fk_derived_repairs_user_id_users": ("c", "a", None),
    # A user's API keys go with the user.
    "fk_api_keys_user_id_users": ("c", "a", None),
    "fk_user_sessions_user_id_users": ("c", "a", None),
    "fk_email_verifications_user_id_users": ("c", "a", None),
    # A job's log lines go with the job.
    "fk_job_logs_job_id_jobs": ("c", "a", None),
    # The registry: a registered model's versions, aliases and grants go with it; a
    # version goes with its trained model, and takes its metrics, aliases, lineage
    # edges and downloads along (model_downloads refuses only a client's own DELETE).
    "fk_registered_models_user_id_users": ("c", "a", None),
    "fk_model_versions_registered_model_id_registered_models": ("c", "a", None),
    "fk_model_versions_model_id_user_id_models": ("c", "a", None),
    "fk_model_version_metrics_model_version_id_model_versions": ("c", "a", None),
    "fk_model_aliases_registered_model_id_registered_models": ("c", "a", None),
    "fk_model_aliases_model_version_id_model_versions": ("c", "a", None),
    # A deployment goes with its owner, its version or its registered model (serving).
    "fk_deployments_user_id_users": ("c", "a", None),
    "fk_deployments_model_version_id_model_versions": ("c", "a", None),
    "fk_deployments_registered_model_id_registered_models": ("c", "a", None),
    # A lineage edge goes with either end (exactly one parent: no dangling edge).
    "fk_model_lineage_child_version_id_model_versions": ("c", "a", None),
    "fk_evaluation_criteria_user_id_users": ("c", "a", None),
    "fk_evaluation_runs_user_id_users": ("c", "a", None),
    "fk_evaluation_runs_job_id_user_id_jobs": ("c", "a", None),
    "fk_evaluation_runs_model_version_id_model_versions": ("c", "a", None),
    "fk_evaluation_runs_dataset_version_id_user_id_dataset_versions": ("c", "a", None),
    "fk_evaluation_row_results_evaluation_run_id_evaluation_runs": ("c", "a", None),
    "fk_model_lineage_parent_version_id_model_versions": ("c", "a", None),
    "fk_model_lineage_dataset_version_id_dataset_versions": ("c", "a", None),
    "fk_model_lineage_workflow_snapshot_id_workflow_snapshots": ("c", "a", None),
    "fk_model_lineage_job_id_jobs": ("c", "a", None),
    "fk_model_downloads_model_version_id_model_versions": ("c", "a", None),
    # A deleted user's downloads stay, anonymous.
    "fk_model_downloads_user_id_users": ("n", "a", None),
    "fk_registered_model_permissions_registered_models": ("c", "a", None),
    "fk_registered_model_permissions_user_id_users": ("c", "a", None),
    "fk_registered_model_permissions_granted_by_users": ("n", "a", None),
    # Metering: the request log and usage outlive nothing but stay with their
    # (tombstoned) user; a hold and a key's quota counters go with what they count.
    "fk_inference_requests_user_id_users": ("r", "a", None),
    "fk_usage_events_user_id_users": ("r", "a", None),
    "fk_usage_charges_user_id_users": ("r", "a", None),
    "fk_usage_meters_user_id_users": ("r", "a", None),
    "fk_usage_holds_user_id_users": ("c", "a", None),
    # A batch's output file goes with the purge's own step (its file removed), never
    # by a cascade that would leave the file behind.
    "fk_batch_outputs_user_id_users": ("r", "a", None),
    "fk_batch_outputs_job_id_jobs": ("r", "a", None),
    "fk_api_key_usage_windows_api_key_id_api_keys": ("c", "a", None),
    # Billing (issue 16): a book's items stay while a job names them; a job's price
    # lines go with the job; invoices outlive the account like the ledger; a user's
    # alerts (their events and deliveries) go with the user; a run's adjustments
    # with the run.
    "fk_price_items_price_book_id_price_books": ("r", "a", None),
    "fk_job_price_items_job_id_jobs": ("c", "a", None),
    "fk_job_price_items_price_item_id_price_items": ("r", "a", None),
    "fk_billing_invoices_user_id_users": ("r", "a", None),
    "fk_billing_alerts_user_id_users": ("c", "a", None),
    "fk_billing_alert_events_alert_id_billing_alerts": ("c", "a", None),
    "fk_billing_alert_deliveries_event_id_billing_alert_events": ("c", "a", None),
    "fk_billing_alert_deliveries_alert_id_billing_alerts": ("c", "a", None),
    "fk_reconciliation_adjustments_run_id_reconciliation_runs": ("c", "a", None),
    "fk_reconciliation_adjustments_user_id_users": ("c", "a", None),
}

# Every foreign key needs an index whose leading columns are its own, no exception:
# datasets' (id, current_version_id) key has ix_datasets_current_version_id_id, so a
# deleted version finds the dataset pointing at it without a scan of datasets.

PREFIXES = {"p": "pk_", "f": "fk_", "u": "uq_", "c": "ck_", "x": "ex_"}


@pytest.fixture(scope="module")
def catalog(pg_server: Any, postgresql_template: Any) -> Iterator[Engine]:
    """One clone of the migrated template for the read-only catalog tests of this module."""
    dbname = f"automl_catalog_{uuid.uuid4().hex[:12]}"
    with DatabaseJanitor(
        user=pg_server.user,
        host=pg_server.host,
        port=pg_server.port,
        dbname=dbname,
        template_dbname=postgresql_template.template_dbname,
        maintenance_dbname=pg_server.maintenance_dbname,
        password=pg_server.password,
    ):
        eng = create_engine(
            make_test_url(
                pg_server.host, pg_server.port, pg_server.user, dbname, pg_server.password
            )
        )
        yield eng
        eng.dispose()


def _rows(engine: Engine, statement: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(statement), params))


# --- tables, columns, enums ------------------------------------------------------------


def test_tables_exist(catalog: Engine) -> None:
    tables = {
        r.relname
        for r in _rows(
            catalog,
            "SELECT relname FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')",
        )
    }
    assert tables >= TABLES


@pytest.mark.parametrize("table", sorted(SEED_COLUMNS))
def test_seed_columns_exist(catalog: Engine, table: str) -> None:
    columns = {
        r.attname
        for r in _rows(
            catalog,
            "SELECT a.attname FROM pg_attribute AS a"
            " WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped",
            t=f"public.{table}",
        )
    }
    assert SEED_COLUMNS[table] <= columns, SEED_COLUMNS[table] - columns


def _db_enums(engine: Engine) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in _rows(
        engine,
        "SELECT t.typname, e.enumlabel FROM pg_type AS t JOIN pg_enum AS e"
        " ON e.enumtypid = t.oid WHERE t.typnamespace = 'public'::regnamespace"
        " ORDER BY t.typname, e.enumsortorder",
    ):
        out.setdefault(r.typname, []).append(r.enumlabel)
    return out


def test_enum_types_have_exactly_these_labels(catalog: Engine) -> None:
    db = _db_enums(catalog)
    for name, labels in ENUM_LABELS.items():
        assert db.get(name) == labels, name


def test_python_enums_agree_with_the_database(catalog: Engine) -> None:
    db = _db_enums(catalog)
    # Every native enum of the database has its Python enum, label for label.
    assert set(db) == set(PYTHON_ENUMS)
    for name, cls in PYTHON_ENUMS.items():
        assert [m.value for m in cls] == db[name], name
    # The SQLAlchemy types the models use carry the same names and labels.
    sa_types = {obj.name: obj for obj in vars(enums).values() if isinstance(obj, SAEnum)}
    assert set(sa_types) == set(db)
    for name, sa_type in sa_types.items():
        assert list(sa_type.enums) == db[name], name
        assert sa_type.enum_class is PYTHON_ENUMS[name]
        assert sa_type.native_enum


# --- keys and timestamps ------------------------------------------------------------


def test_primary_keys_are_uuid_with_gen_random_uuid(catalog: Engine) -> None:
    rows = _rows(
        catalog,
        "SELECT c.conrelid::regclass::text AS tbl, a.attname, format_type(a.atttypid, a.atttypmod)"
        " AS type, pg_get_expr(d.adbin, d.adrelid) AS dflt, cardinality(c.conkey) AS n"
        " FROM pg_constraint AS c"
        " JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
        " LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
        " WHERE c.contype = 'p' AND c.connamespace = 'public'::regnamespace"
        " AND c.conrelid::regclass::text <> 'alembic_version'"
        # Partitions carry their parent's key (evaluation_row_results_p*, ...).
        " AND NOT (SELECT r.relispartition FROM pg_class AS r WHERE r.oid = c.conrelid)",
    )
    by_table = {r.tbl: r for r in rows}
    assert set(by_table) >= TABLES
    for table, r in by_table.items():
        if table in COMPOSITE_KEYS:
            assert (r.n, r.attname) == (len(COMPOSITE_KEYS[table]), COMPOSITE_KEYS[table][0])
            continue
        default = TIME_ORDERED_KEYS.get(table, "gen_random_uuid()")
        assert (r.n, r.attname, r.type, r.dflt) == (1, "id", "uuid", default), table


# Keys given in time order (uuidv7): the ledger's entries are appended in time order,
# so its primary key's b-tree fills at the right edge (issue 16, the ledger's weight);
# a job is charged as it is enqueued, so with time-ordered job ids the ledger's job
# index fills at its right edge too (c16c00000001); a usage charge is written beside
# its ledger entry, in time order (c16d00000001).
TIME_ORDERED_KEYS = {
    "credit_transactions": "uuidv7()",
    "jobs": "uuidv7()",
    "usage_charges": "uuidv7()",
}


# The exception, by design: a job's log lines are keyed (job_id, seq). That one index
# serves the foreign key, the order of the lines and the stream's "seq > n" reads; a
# uuid id would be a second index to write on every line (docs/schema.md).
# The registry's rows keyed by what they are (MLflow's shape): a metric by (version,
# metric, split), an alias by (model, alias), a grant by (model, user); the key is the
# rule (one alias per model, one grant per user) and the index of the first column's key.
COMPOSITE_KEYS = {
    # The audit trail: time first, so appends land at the index's right end and the key
    # serves the admin's list in time order (c17c00000001, docs/audit.md).
    "audit_events": ("occurred_at", "id"),
    "job_logs": ("job_id", "seq"),
    # A run's rows by row index: the key is the keyset of its pages (issue 15).
    "evaluation_row_results": ("evaluation_run_id", "row_index"),
    "model_version_metrics": ("model_version_id", "metric", "split"),
    "model_aliases": ("registered_model_id", "alias"),
    "registered_model_permissions": ("registered_model_id", "user_id"),
    # An abuse counter is named by its key ("login-ip:<ip>"): the upsert's conflict target.
    "rate_limits": ("key",),
    # Metering: a partitioned table's key must hold its partition key; a key's quota
    # counter is the (key, window) it counts; a meter is its user's.
    "inference_requests": ("id", "created_at"),
    "api_key_usage_windows": ("api_key_id", "period", "window_start"),
    "usage_meters": ("user_id",),
    # A job's price lines keyed by (job, price item): one line per item (issue 16).
    "job_price_items": ("job_id", "price_item_id"),
}


def test_every_timestamp_is_timestamptz(catalog: Engine) -> None:
    rows = _rows(
        catalog,
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public'"
        " AND (data_type LIKE 'timestamp%' OR data_type IN ('date', 'time without time zone',"
        " 'time with time zone') OR column_name LIKE '%\\_at')",
    )
    assert len(rows) > 30
    wrong = [
        (r.table_name, r.column_name, r.data_type)
        for r in rows
        if r.data_type != "timestamp with time zone"
    ]
    assert not wrong
    # And the models map each to UtcDateTime.
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if column.name.endswith("_at"):
                assert isinstance(column.type, UtcDateTime), f"{table.name}.{column.name}"


def _foreign_keys(engine: Engine) -> list[Any]:
    return _rows(
        engine,
        "SELECT c.conname, c.conrelid, c.conrelid::regclass::text AS tbl, c.conkey,"
        " c.confdeltype::text AS on_delete, c.confupdtype::text AS on_update,"
        " (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute AS a"
        "   WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.confdelsetcols)) AS setcols"
        " FROM pg_constraint AS c"
        " WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace"
        " AND NOT (SELECT k.relispartition FROM pg_class AS k WHERE k.oid = c.conrelid)"
        " ORDER BY c.conname",
    )


def test_every_foreign_key_has_an_index(catalog: Engine) -> None:
    indexes: dict[int, list[tuple[list[int], bool]]] = {}
    for r in _rows(
        catalog,
        "SELECT i.indrelid, i.indkey::int2[] AS keys, i.indnkeyatts, i.indisunique,"
        " pg_get_expr(i.indpred, i.indrelid) AS pred, a.attname AS first"
        " FROM pg_index AS i JOIN pg_class AS t ON t.oid = i.indrelid"
        " JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE t.relnamespace = 'public'::regnamespace AND i.indisvalid",
    ):
        # A partial index serves only its rows: it counts when its predicate is "the
        # first key column IS NOT NULL" (the ledger's sparse columns, issue 16), which
        # every foreign key lookup (col = value) implies.
        if r.pred is not None and r.pred != f"({r.first} IS NOT NULL)":
            continue
        keys = list(r.keys)[: r.indnkeyatts]
        indexes.setdefault(r.indrelid, []).append((keys, r.indisunique))

    fks = _foreign_keys(catalog)
    assert fks
    unindexed = []
    for fk in fks:
        cols = set(fk.conkey)
        candidates = indexes.get(fk.conrelid, [])
        if any(set(keys[: len(cols)]) == cols for keys, _ in candidates):
            continue
        unindexed.append(fk.conname)
    assert not unindexed
    assert "fk_datasets_current_version_id_dataset_versions" in {fk.conname for fk in fks}


def test_every_foreign_key_has_its_deliberate_delete_action(catalog: Engine) -> None:
    actual = {
        fk.conname: (fk.on_delete, fk.on_update, tuple(fk.setcols) if fk.setcols else None)
        for fk in _foreign_keys(catalog)
    }
    assert actual == FK_ACTIONS


# --- names ------------------------------------------------------------------------------


def test_constraint_and_index_names_follow_the_convention(catalog: Engine) -> None:
    constraints = _rows(
        catalog,
        "SELECT c.conname, c.contype::text AS contype, c.conrelid::regclass::text AS tbl"
        " FROM pg_constraint AS c"
        " WHERE c.connamespace = 'public'::regnamespace AND c.contype IN ('p', 'f', 'u', 'c', 'x')"
        " AND c.conrelid::regclass::text <> 'alembic_version'"
        # A partition's constraints are its parent's (inference_requests_p202612,
        # audit_events_pYYYYMM...).
        " AND NOT (SELECT r.relispartition FROM pg_class AS r WHERE r.oid = c.conrelid)",
    )
    indexes = _rows(
        catalog,
        "SELECT ic.relname AS name, t.relname AS tbl, i.indisunique, i.indisprimary,"
        " con.conname IS NOT NULL AS is_constraint, con.contype::text AS contype"
        " FROM pg_index AS i JOIN pg_class AS ic ON ic.oid = i.indexrelid"
        " JOIN pg_class AS t ON t.oid = i.indrelid"
        " LEFT JOIN pg_constraint AS con"
        " ON con.conindid = i.indexrelid AND con.contype IN ('p', 'u', 'x')"
        " WHERE t.relnamespace = 'public'::regnamespace AND t.relname <> 'alembic_version'"
        " AND NOT t.relispartition",
    )
    assert len(constraints) > 50 and len(indexes) > 40
    bad = []
    for c in constraints:
        # pk_/fk_/uq_/ck_ names also carry their table's name (the convention's %(table_name)s).
        carries_table = c.conname[3:].startswith(c.tbl + "_") or c.conname == f"pk_{c.tbl}"
        prefixed = c.conname.startswith(PREFIXES[c.contype])
        if not prefixed or not carries_table or len(c.conname) > 63:
            bad.append((c.tbl, c.conname))
    for i in indexes:
        allowed = (
            ("pk_",)
            if i.indisprimary
            else ("ex_",)
            if i.contype == "x"
            else ("uq_",)
            if i.is_constraint
            else ("ix_", "uq_")
        )
        if (
            not i.name.startswith(allowed)
            or (i.name.startswith("uq_") and not i.indisunique)
            or not i.name[3:].startswith(i.tbl)
            or len(i.name) > 63
        ):
            bad.append((i.tbl, i.name))
    assert not bad


def test_model_names_fit_without_truncation() -> None:
    """PostgreSQL truncates names to 63 bytes silently: check the names the models ask for."""
    assert set(NAMING_CONVENTION) == {"ix", "uq", "ck", "fk", "pk"}
    # A dialect that never truncates renders the names in full.
    dialect = postgresql.dialect()
    dialect.max_identifier_length = 10_000
    preparer = dialect.identifier_preparer
    names = []
    for table in Base.metadata.sorted_tables:
        for constraint in table.constraints:
            names.append(preparer.format_constraint(constraint))
        for index in table.indexes:
            names.append(preparer.format_index(index))
    assert len(names) > 90
    too_long = [n for n in names if len(n.strip('"')) > 63]
    assert not too_long
    assert all(n.strip('"')[:3] in ("pk_", "fk_", "uq_", "ck_", "ix_") for n in names), names


# --- defaults: a row from its required fields only ----------------------------------


def _insert(sql: Any, table: str, **values: Any) -> dict[str, Any]:
    columns = ", ".join(values)
    params = ", ".join(f":{k}" for k in values)
    [row] = sql(f"INSERT INTO {table} ({columns}) VALUES ({params}) RETURNING *", **values)
    row = row._asdict()
    assert isinstance(row["id"], uuid.UUID), table
    for name in ("created_at", "updated_at"):
        if name in row:
            assert isinstance(row[name], dt.datetime), (table, name)
            assert row[name].tzinfo is not None, (table, name)
    return row


def test_insert_with_required_fields_only(sql: Any) -> None:
    user = _insert(sql, "users", email="ada@example.com")
    assert user["tier"] == "free"
    assert (
        user["credit_balance"],
        user["dataset_count"],
        user["workflow_count"],
        user["model_count"],
        user["storage_used_bytes"],
    ) == (0, 0, 0, 0, 0)
    assert (user["email_verified"], user["is_deleted"]) == (False, False)
    assert user["oauth_provider"] is None and user["deleted_at"] is None
    uid = user["id"]

    dataset = _insert(sql, "datasets", user_id=uid, name="iris")
    assert dataset["current_version_id"] is None and dataset["problem_type"] is None

    version = _insert(sql, "dataset_versions", dataset_id=dataset["id"], user_id=uid)
    assert version["version_number"] == 1
    assert version["original_format"] == "unknown"
    assert version["status"] == "pending"

    profile = _insert(
        sql, "dataset_profiles", dataset_version_id=version["id"], row_count=10, column_count=2
    )
    assert (profile["missing_cells"], profile["duplicate_rows"]) == (0, 0)
    assert (profile["column_stats"], profile["warnings"]) == ({}, [])

    ingestion = _insert(sql, "ingestion_jobs", user_id=uid, dataset_version_id=version["id"])
    assert (ingestion["status"], ingestion["attempts"]) == ("pending", 0)

    workflow = _insert(sql, "workflows", user_id=uid, name="pipeline")
    assert workflow["definition"] == {"nodes": [], "edges": []}
    assert workflow["is_deleted"] is False

    snapshot = _insert(sql, "workflow_snapshots", user_id=uid, snapshot_data="{}")
    assert snapshot["workflow_id"] is None

    job = _insert(sql, "jobs", user_id=uid, workflow_snapshot_id=snapshot["id"])
    assert (job["status"], job["credit_cost"], job["priority"]) == ("pending", 0, 0)
    assert job["started_at"] is None and job["completed_at"] is None

    node = _insert(
        sql, "job_nodes", job_id=job["id"], user_id=uid, node_id="n1", node_type="dataset"
    )
    assert node["status"] == "pending"

    model = _insert(
        sql,
        "models",
        user_id=uid,
        name="rf",
        algorithm="random_forest",
        problem_type="classification",
    )
    assert (model["metrics"], model["hyperparameters"], model["is_deployed"]) == ({}, {}, False)
    assert model["job_id"] is None

    experiment = _insert(sql, "experiments", user_id=uid, name="compare")
    run = _insert(sql, "experiment_runs", experiment_id=experiment["id"], user_id=uid)
    assert run["job_id"] is None and run["model_id"] is None

    package = _insert(sql, "credit_packages", name="starter", credits=100, price_cents=999)
    assert (package["is_active"], package["tier_restriction"]) == (True, "none")

    # A purchase names its package and its payment (ML020): the least a client can send.
    tx = _insert(
        sql,
        "credit_transactions",
        user_id=uid,
        type="purchase",
        amount=100,
        package_id=package["id"],
        stripe_payment_id="pi_required_fields",
    )
    assert tx["balance_after"] == 100

    tutorial = _insert(sql, "tutorials", slug="intro", title="Intro")
    assert tutorial["difficulty"] == "beginner"
    assert (tutorial["steps"], tutorial["sort_order"], tutorial["is_published"]) == ([], 0, True)

    progress = _insert(sql, "user_tutorial_progress", user_id=uid, tutorial_id=tutorial["id"])
    assert (progress["current_step"], progress["completed_steps"]) == (0, [])
    assert progress["is_completed"] is False and progress["completed_at"] is None
    assert isinstance(progress["started_at"], dt.datetime)

    # The user's derived columns moved with what was inserted.
    [after] = sql(
        "SELECT credit_balance, dataset_count, workflow_count, model_count FROM users"
        " WHERE id = :id",
        id=uid,
    )
    assert tuple(after) == (100, 1, 1, 1)


# --- the ORM ------------------------------------------------------------------------------


def test_relationships_configure_both_ways() -> None:
    configure_mappers()
    pairs = 0
    for mapper in Base.registry.mappers:
        for rel in mapper.relationships:
            if rel.back_populates:
                other = rel.mapper.relationships[rel.back_populates]
                assert other.back_populates == rel.key, f"{mapper.class_.__name__}.{rel.key}"
                assert other.mapper is mapper or mapper.isa(other.mapper)
                pairs += 1
            # No relationship loads lazily behind the caller's back.
            assert rel.lazy in ("raise_on_sql", "raise", "noload", "selectin", "joined"), (
                f"{mapper.class_.__name__}.{rel.key}: lazy={rel.lazy}"
            )
    assert pairs >= 20


def test_repr_shows_no_column_values() -> None:
    user = User(email="secret.person@example.com", full_name="Secret Person")
    shown = repr(user)
    assert shown.startswith("<User")
    assert "secret" not in shown.lower() and "example.com" not in shown


def test_repr_does_not_load_an_expired_instance(session: Session, engine: Engine) -> None:
    user = User(email="expired@example.com")
    session.add(user)
    session.commit()
    session.expire(user)
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    try:
        shown = repr(user)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert statements == []
    assert "expired@" not in shown
    assert str(inspect(user).identity[0]) in shown
    assert inspect(user).expired_attributes >= {"email"}

    # Detached and expired: still no load (which would raise DetachedInstanceError).
    session.expunge(user)
    assert "expired@" not in repr(user)


# --- UtcDateTime ------------------------------------------------------------------------


def test_utc_datetime_refuses_naive_and_returns_utc() -> None:
    t = UtcDateTime()
    dialect = postgresql.dialect()
    with pytest.raises(ValueError, match="naive"):
        t.process_bind_param(dt.datetime(2026, 1, 1, 12, 0), dialect)
    with pytest.raises(TypeError):
        t.process_bind_param(dt.date(2026, 1, 1), dialect)
    plus2 = dt.timezone(dt.timedelta(hours=2))
    bound = t.process_bind_param(dt.datetime(2026, 1, 1, 12, 0, tzinfo=plus2), dialect)
    assert bound == dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.UTC)
    assert bound.utcoffset() == dt.timedelta(0)
    assert t.process_bind_param(None, dialect) is None
    back = t.process_result_value(dt.datetime(2026, 1, 1, 12, 0, tzinfo=plus2), dialect)
    assert back == bound and back.tzinfo == dt.UTC


def test_utc_datetime_through_the_database(session: Session, engine: Engine) -> None:
    naive = User(
        email="naive@example.com", is_deleted=True, deleted_at=dt.datetime(2026, 1, 1, 12, 0)
    )
    session.add(naive)
    with pytest.raises(InvalidValue) as raised:
        session.flush()
    assert isinstance(raised.value.orig, InvalidDatetime) and "naive" in raised.value.message
    session.rollback()

    plus5 = dt.timezone(dt.timedelta(hours=5, minutes=30))
    aware = dt.datetime(2026, 1, 1, 12, 0, tzinfo=plus5)
    user = User(email="aware@example.com", is_deleted=True, deleted_at=aware)
    session.add(user)
    session.commit()

    # Whatever the session's time zone, values come back in UTC.
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TIME ZONE 'America/New_York'")
        deleted_at, created_at = conn.execute(
            select(User.deleted_at, User.created_at).where(User.id == user.id)
        ).one()
    assert deleted_at == aware
    assert deleted_at.tzinfo == dt.UTC and created_at.tzinfo == dt.UTC


#: Datetimes Python holds but not in UTC, or too close to its limits to be read back
#: in every time zone.
EDGE_DATETIMES = [
    dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=14))),  # year 0 in UTC
    dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone(dt.timedelta(hours=-14))),
    dt.datetime(1, 1, 1, tzinfo=dt.UTC),
    dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    MIN_DATETIME - dt.timedelta(microseconds=1),
    MAX_DATETIME + dt.timedelta(microseconds=1),
]


@pytest.mark.parametrize("value", EDGE_DATETIMES, ids=str)
def test_check_datetime_refuses_the_edges_of_the_calendar(value: dt.datetime) -> None:
    with pytest.raises(InvalidDatetime, match="out of range"):
        check_datetime(value)
    with pytest.raises(InvalidDatetime):
        UtcDateTime().process_bind_param(value, postgresql.dialect())


def test_check_datetime_keeps_the_range_it_documents() -> None:
    plus14 = dt.timezone(dt.timedelta(hours=14))
    assert check_datetime(MIN_DATETIME) == MIN_DATETIME
    assert check_datetime(MAX_DATETIME) == MAX_DATETIME
    assert check_datetime(MIN_DATETIME.astimezone(plus14)) == MIN_DATETIME
    with pytest.raises(InvalidDatetime, match="naive"):
        check_datetime(dt.datetime(2026, 1, 1))


def test_edge_datetimes_through_the_database(session: Session, engine: Engine) -> None:
    """Bound through the ORM, an edge datetime is InvalidValue before any SQL is sent,
    in a WHERE as in an INSERT, and the session stays usable after the rollback."""
    edge = EDGE_DATETIMES[0]
    with pytest.raises(InvalidValue, match="out of range"):
        session.execute(select(User.id).where(User.created_at <= edge))
    session.rollback()
    session.add(User(email="edge@example.com", is_deleted=True, deleted_at=EDGE_DATETIMES[1]))
    with pytest.raises(InvalidValue, match="out of range"):
        session.flush()
    session.rollback()
    assert session.scalar(select(text("1"))) == 1
    # The range's own ends are stored and read back, in any session time zone.
    for i, value in enumerate((MIN_DATETIME, MAX_DATETIME)):
        session.add(User(email=f"end{i}@example.com", is_deleted=True, deleted_at=value))
    session.commit()
    for zone in ("Pacific/Kiritimati", "Etc/GMT+12"):
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SET TIME ZONE '{zone}'")
            got = conn.execute(
                select(User.deleted_at).where(User.email.like("end%")).order_by(User.email)
            ).scalars()
            assert list(got) == [MIN_DATETIME, MAX_DATETIME], zone
