"""Enumerations, each stored as a native PostgreSQL enum type.

The Python member values are the database labels. Adding a label is
``ALTER TYPE ... ADD VALUE`` in a migration; removing one needs a new type and
a column rewrite: docs/enums.md says how.
"""

from __future__ import annotations

import enum

from sqlalchemy import Enum as SAEnum


class UserTier(enum.StrEnum):
    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


class OAuthProvider(enum.StrEnum):
    GOOGLE = "google"
    GITHUB = "github"


class FileFormat(enum.StrEnum):
    CSV = "csv"
    JSON = "json"
    PARQUET = "parquet"
    EXCEL = "excel"
    UNKNOWN = "unknown"


class ProblemType(enum.StrEnum):
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
    #: A model version scored on a dataset version against criteria (issue 15).
    EVALUATION = "evaluation"


class NodeType(enum.StrEnum):
    DATASET = "dataset"
    PREPROCESS = "preprocess"
    MODEL = "model"
    VISUALIZE = "visualize"
    SAVE = "save"


class NodeStatus(enum.StrEnum):
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
    PURCHASE = "purchase"
    CONSUMPTION = "consumption"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class TutorialDifficulty(enum.StrEnum):
    BEGINNER = "beginner"
    INTERMEDIATE = "intermediate"
    ADVANCED = "advanced"


class CreditTierRestriction(enum.StrEnum):
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
oauth_provider = pg_enum(OAuthProvider, "oauth_provider")
file_format = pg_enum(FileFormat, "file_format")
problem_type = pg_enum(ProblemType, "problem_type")
ingestion_status = pg_enum(IngestionStatus, "ingestion_status")
job_status = pg_enum(JobStatus, "job_status")
job_kind = pg_enum(JobKind, "job_kind")
node_type = pg_enum(NodeType, "node_type")
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
criterion_kind = pg_enum(CriterionKind, "criterion_kind")
criterion_operator = pg_enum(CriterionOperator, "criterion_operator")
row_rule = pg_enum(RowRule, "row_rule")

__all__ = [
    "CreditTierRestriction",
    "CriterionKind",
    "CriterionOperator",
    "FileFormat",
    "IngestionStatus",
    "JobKind",
    "JobStatus",
    "LineageRelation",
    "LogLevel",
    "ModelFormat",
    "ModelPermission",
    "ModelVersionStatus",
    "ModelVisibility",
    "NodeStatus",
    "NodeType",
    "OAuthProvider",
    "ProblemType",
    "RowRule",
    "TransactionType",
    "TutorialDifficulty",
    "UserTier",
]
