"""Enumerations, each stored as a native PostgreSQL enum type.

The Python member values are the database labels. Adding a label is
``ALTER TYPE ... ADD VALUE`` in a migration; removing one needs a new type and
a column rewrite: docs/enums.md says how.
"""

from __future__ import annotations

import enum

from sqlalchemy import Enum as SAEnum


class UserTier(enum.StrEnum):
    """An account's tier: its limits (datasets, workflows, running jobs, storage) and its price
    book."""

    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


class UserRole(enum.StrEnum):
    """What an account may do besides its own work: ``admin`` manages other users
    (database.identity; sql/triggers/identity.sql)."""

    USER = "user"
    ADMIN = "admin"


class OAuthProvider(enum.StrEnum):
    """An identity provider an account may sign in with."""

    GOOGLE = "google"
    GITHUB = "github"


class FileFormat(enum.StrEnum):
    """The format of an uploaded file."""

    CSV = "csv"
    JSON = "json"
    PARQUET = "parquet"
    EXCEL = "excel"
    UNKNOWN = "unknown"


class ProblemType(enum.StrEnum):
    """What a model learns: classes (classification), a number (regression) or groups without a
    target (clustering)."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    CLUSTERING = "clustering"
    OTHER = "other"


class IngestionStatus(enum.StrEnum):
    """Status of a dataset version and of the ingestion job that fills it."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class JobStatus(enum.StrEnum):
    """A job's life: pending -> queued -> running -> completed, failed or cancelled (the database
    refuses other moves)."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobKind(enum.StrEnum):
    """What a piece of queued work is: the worker dispatches on it (``workers.kinds``).

    ``jobs`` holds every kind but ``ingestion``, which keeps its own table
    (``ingestion_jobs``, one per dataset version) and the same claim path.
    Adding a kind: a value here (``ALTER TYPE job_kind ADD VALUE``) and one module
    in ``workers/kinds``.
    """

    WORKFLOW_RUN = "workflow_run"
    INGESTION = "ingestion"
    #: A deployment's model scores a dataset version into a Parquet file (issue 14).
    BATCH_PREDICTION = "batch_prediction"
    #: A model version scored on a dataset version against criteria (issue 15).
    EVALUATION = "evaluation"


class NodeType(enum.StrEnum):
    """The kind of a workflow node; it selects the schema of the node's config."""

    DATASET = "dataset"
    PREPROCESS = "preprocess"
    MODEL = "model"
    VISUALIZE = "visualize"
    SAVE = "save"
    #: A search over learners and hyperparameters (``pipeline.automl``).
    AUTOML = "automl"


class ExperimentRunStatus(enum.StrEnum):
    """How a run ended: an automl trial that FLAML scored, or one that failed."""

    FINISHED = "finished"
    FAILED = "failed"


class NodeStatus(enum.StrEnum):
    """A job node's state: success once its output exists; skipped when an input failed."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"


class LogLevel(enum.StrEnum):
    """Level of a job's log line; the type's order is the severity (debug < error)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class TransactionType(enum.StrEnum):
    """What moved credits: a purchase, a consumption (a charge), a refund or an administrator's
    adjustment."""

    PURCHASE = "purchase"
    CONSUMPTION = "consumption"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class TutorialDifficulty(enum.StrEnum):
    """How much a tutorial assumes the reader knows."""

    BEGINNER = "beginner"
    INTERMEDIATE = "intermediate"
    ADVANCED = "advanced"


class CreditTierRestriction(enum.StrEnum):
    """Which tiers may buy a credit package."""

    NONE = "none"
    PRO_ONLY = "pro_only"
    ENTERPRISE_ONLY = "enterprise_only"


class ModelVisibility(enum.StrEnum):
    """Who sees a registered model besides its owner: nobody (``private``), the users
    granted a permission (``shared``), everyone (``public``: read for all)."""

    PRIVATE = "private"
    SHARED = "shared"
    PUBLIC = "public"


class ModelVersionStatus(enum.StrEnum):
    """A registered version is usable (``ready``) or kept for the record (``archived``)."""

    READY = "ready"
    ARCHIVED = "archived"


class LineageRelation(enum.StrEnum):
    """What a lineage edge says of its child version (``model_lineage``)."""

    TRAINED_ON = "trained_on"  # a dataset version
    EVALUATED_ON = "evaluated_on"  # a dataset version
    PRODUCED_BY = "produced_by"  # a job or a workflow snapshot
    RETRAINED_FROM = "retrained_from"  # another model version
    TUNED_FROM = "tuned_from"  # another model version


class ModelFormat(enum.StrEnum):
    """A format a model version is downloaded in."""

    JOBLIB = "joblib"
    SKOPS = "skops"
    ONNX = "onnx"
    MLFLOW = "mlflow"


class ModelPermission(enum.StrEnum):
    """A permission on a registered model; the type's order is inclusion
    (``read`` < ``download`` < ``deploy``: deploy grants download, download grants read)."""

    READ = "read"
    DOWNLOAD = "download"
    DEPLOY = "deploy"


class InferenceStatus(enum.StrEnum):
    """How an inference request ended (``inference_requests.status``)."""

    OK = "ok"
    #: Bad input: a 4xx that names the problem (the model did not run, or refused it).
    CLIENT_ERROR = "client_error"
    #: Refused before the model ran: 402 (no credits) or 429 (a key's quota).
    REFUSED = "refused"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"


class UsageSku(enum.StrEnum):
    """A billable unit (``usage_events.sku``); priced per 1,000 (database.metering)."""

    PREDICTED_ROWS = "predicted_rows"
    BATCH_ROWS = "batch_rows"


class QuotaWindow(enum.StrEnum):
    """The window an API key's quota counts in (``api_key_usage_windows``)."""

    #: Requests per minute (``api_keys.rate_limit_per_minute``).
    MINUTE = "minute"
    #: Predicted rows per calendar month, UTC (``api_keys.monthly_row_quota``).
    MONTH = "month"


class DeploymentStatus(enum.StrEnum):
    """A deployment's life (sql/triggers/deployments.sql, ML081): ``pending`` ->
    ``active`` | ``failed`` | ``stopped``; ``active`` -> ``stopped`` | ``failed``.
    Only an ``active`` deployment answers predictions and counts in ``models.is_deployed``."""

    PENDING = "pending"
    ACTIVE = "active"
    STOPPED = "stopped"
    FAILED = "failed"


class PriceUnit(enum.StrEnum):
    """What one unit of a price item is (billing, issue 16)."""

    JOB = "job"
    NODE = "node"
    THOUSAND_ROWS = "thousand_rows"
    GB_MONTH = "gb_month"
    #: A started minute (of an automl node's time budget).
    MINUTE = "minute"


class InvoiceStatus(enum.StrEnum):
    """A Stripe invoice's status (and ``paid`` for a paid checkout without one)."""

    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class BillingAlertKind(enum.StrEnum):
    """When a billing alert fires: the balance falls below its threshold, or the month's spend
    rises above it."""

    BALANCE_BELOW = "balance_below"
    SPEND_ABOVE = "spend_above"


class AlertEventStatus(enum.StrEnum):
    """An outbox row's delivery state."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class ReconciliationKind(enum.StrEnum):
    """A reconciliation run that only reports (verify) or also fixes what it finds (repair)."""

    VERIFY = "verify"
    REPAIR = "repair"


class AuditOutcome(enum.StrEnum):
    """What became of the action an audit event records."""

    SUCCESS = "success"
    DENIED = "denied"
    FAILED = "failed"


def pg_enum(enum_cls: type[enum.Enum], name: str) -> SAEnum:
    """The native PostgreSQL type for ``enum_cls``, labelled by member values."""
    return SAEnum(
        enum_cls,
        name=name,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class CriterionKind(enum.StrEnum):
    """What an evaluation criterion tests: a metric of the whole set, or every row."""

    METRIC_THRESHOLD = "metric_threshold"
    ROW_RULE = "row_rule"


class CriterionOperator(enum.StrEnum):
    """How a metric is compared with a criterion's threshold."""

    GE = ">="
    GT = ">"
    LE = "<="
    LT = "<"


class RowRule(enum.StrEnum):
    """A per-row rule: |prediction - actual| <= tolerance, or prediction == actual."""

    ABSOLUTE_ERROR_LE = "absolute_error_le"
    PREDICTED_EQUALS_ACTUAL = "predicted_equals_actual"


user_tier = pg_enum(UserTier, "user_tier")
user_role = pg_enum(UserRole, "user_role")
oauth_provider = pg_enum(OAuthProvider, "oauth_provider")
file_format = pg_enum(FileFormat, "file_format")
problem_type = pg_enum(ProblemType, "problem_type")
ingestion_status = pg_enum(IngestionStatus, "ingestion_status")
job_status = pg_enum(JobStatus, "job_status")
job_kind = pg_enum(JobKind, "job_kind")
node_type = pg_enum(NodeType, "node_type")
experiment_run_status = pg_enum(ExperimentRunStatus, "experiment_run_status")
node_status = pg_enum(NodeStatus, "node_status")
transaction_type = pg_enum(TransactionType, "transaction_type")
log_level = pg_enum(LogLevel, "log_level")
tutorial_difficulty = pg_enum(TutorialDifficulty, "tutorial_difficulty")
credit_tier_restriction = pg_enum(CreditTierRestriction, "credit_tier_restriction")
model_visibility = pg_enum(ModelVisibility, "model_visibility")
model_version_status = pg_enum(ModelVersionStatus, "model_version_status")
lineage_relation = pg_enum(LineageRelation, "lineage_relation")
model_format = pg_enum(ModelFormat, "model_format")
model_permission = pg_enum(ModelPermission, "model_permission")
inference_status = pg_enum(InferenceStatus, "inference_status")
usage_sku = pg_enum(UsageSku, "usage_sku")
quota_window = pg_enum(QuotaWindow, "quota_window")
deployment_status = pg_enum(DeploymentStatus, "deployment_status")
price_unit = pg_enum(PriceUnit, "price_unit")
invoice_status = pg_enum(InvoiceStatus, "invoice_status")
billing_alert_kind = pg_enum(BillingAlertKind, "billing_alert_kind")
alert_event_status = pg_enum(AlertEventStatus, "alert_event_status")
reconciliation_kind = pg_enum(ReconciliationKind, "reconciliation_kind")
audit_outcome = pg_enum(AuditOutcome, "audit_outcome")
criterion_kind = pg_enum(CriterionKind, "criterion_kind")
criterion_operator = pg_enum(CriterionOperator, "criterion_operator")
row_rule = pg_enum(RowRule, "row_rule")

__all__ = [
    "AlertEventStatus",
    "AuditOutcome",
    "BillingAlertKind",
    "ExperimentRunStatus",
    "CreditTierRestriction",
    "DeploymentStatus",
    "InvoiceStatus",
    "PriceUnit",
    "ReconciliationKind",
    "CriterionKind",
    "CriterionOperator",
    "FileFormat",
    "InferenceStatus",
    "IngestionStatus",
    "JobKind",
    "JobStatus",
    "LineageRelation",
    "LogLevel",
    "ModelFormat",
    "ModelPermission",
    "ModelVersionStatus",
    "ModelVisibility",
    "UsageSku",
    "NodeStatus",
    "NodeType",
    "OAuthProvider",
    "ProblemType",
    "QuotaWindow",
    "RowRule",
    "TransactionType",
    "TutorialDifficulty",
    "UserRole",
    "UserTier",
]
