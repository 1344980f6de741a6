"""Every model and enum of the platform's schema."""

from database.models.api_key import APIKey
from database.models.api_key_usage_window import ApiKeyUsageWindow
from database.models.audit_event import AuditEvent
from database.models.batch_output import BatchOutput
from database.models.billing_alert import BillingAlert
from database.models.billing_alert_delivery import BillingAlertDelivery
from database.models.billing_alert_event import BillingAlertEvent
from database.models.billing_invoice import BillingInvoice
from database.models.credit_package import CreditPackage
from database.models.credit_transaction import CreditTransaction
from database.models.dataset import Dataset
from database.models.dataset_profile import DatasetProfile
from database.models.dataset_version import DatasetVersion
from database.models.deployment import Deployment
from database.models.derived_repair import DerivedRepair
from database.models.email_verification import EmailVerification
from database.models.enums import (
    AlertEventStatus,
    AuditOutcome,
    BillingAlertKind,
    CreditTierRestriction,
    CriterionKind,
    CriterionOperator,
    DeploymentStatus,
    ExperimentRunStatus,
    FileFormat,
    InferenceStatus,
    IngestionStatus,
    InvoiceStatus,
    JobKind,
    JobStatus,
    LineageRelation,
    LogLevel,
    ModelFormat,
    ModelPermission,
    ModelVersionStatus,
    ModelVisibility,
    NodeStatus,
    NodeType,
    OAuthProvider,
    PriceUnit,
    ProblemType,
    QuotaWindow,
    ReconciliationKind,
    RowRule,
    TransactionType,
    TutorialDifficulty,
    UsageSku,
    UserRole,
    UserTier,
)
from database.models.evaluation_criterion import EvaluationCriterion
from database.models.evaluation_row_result import EvaluationRowResult
from database.models.evaluation_run import EvaluationRun
from database.models.experiment import Experiment
from database.models.experiment_run import ExperimentRun
from database.models.inference_request import InferenceRequest
from database.models.ingestion_job import IngestionJob
from database.models.job import Job
from database.models.job_log import JobLog
from database.models.job_node import JobNode
from database.models.job_price_item import JobPriceItem
from database.models.model import Model
from database.models.model_alias import ModelAlias
from database.models.model_download import ModelDownload
from database.models.model_lineage import ModelLineage
from database.models.model_version import ModelVersion
from database.models.model_version_metric import ModelVersionMetric
from database.models.price_book import PriceBook
from database.models.price_item import PriceItem
from database.models.rate_limit import RateLimit
from database.models.reconciliation_adjustment import ReconciliationAdjustment
from database.models.reconciliation_run import ReconciliationRun
from database.models.registered_model import RegisteredModel
from database.models.registered_model_permission import RegisteredModelPermission
from database.models.stripe_webhook_event import StripeWebhookEvent
from database.models.tutorial import Tutorial
from database.models.usage_charge import UsageCharge
from database.models.usage_event import UsageEvent
from database.models.usage_hold import UsageHold
from database.models.usage_meter import UsageMeter
from database.models.user import User
from database.models.user_session import UserSession
from database.models.user_tutorial_progress import UserTutorialProgress
from database.models.worker import Worker
from database.models.workflow import Workflow
from database.models.workflow_snapshot import WorkflowSnapshot

__all__ = [
    "BillingAlert",
    "BillingAlertDelivery",
    "BillingAlertEvent",
    "BillingInvoice",
    "JobPriceItem",
    "PriceBook",
    "PriceItem",
    "ReconciliationAdjustment",
    "ReconciliationRun",
    "AlertEventStatus",
    "BillingAlertKind",
    "InvoiceStatus",
    "PriceUnit",
    "ReconciliationKind",
    "APIKey",
    "ApiKeyUsageWindow",
    "AuditEvent",
    "AuditOutcome",
    "CreditPackage",
    "CreditTierRestriction",
    "CreditTransaction",
    "CriterionKind",
    "CriterionOperator",
    "Dataset",
    "DatasetProfile",
    "DatasetVersion",
    "Deployment",
    "DeploymentStatus",
    "DerivedRepair",
    "EmailVerification",
    "EvaluationCriterion",
    "EvaluationRowResult",
    "EvaluationRun",
    "Experiment",
    "ExperimentRun",
    "FileFormat",
    "InferenceRequest",
    "InferenceStatus",
    "IngestionJob",
    "IngestionStatus",
    "Job",
    "JobLog",
    "JobNode",
    "JobKind",
    "JobStatus",
    "LineageRelation",
    "LogLevel",
    "Model",
    "ModelAlias",
    "ModelDownload",
    "ModelFormat",
    "ModelLineage",
    "ModelPermission",
    "ModelVersion",
    "ModelVersionMetric",
    "ModelVersionStatus",
    "ModelVisibility",
    "ExperimentRunStatus",
    "NodeStatus",
    "NodeType",
    "OAuthProvider",
    "ProblemType",
    "RateLimit",
    "QuotaWindow",
    "RowRule",
    "RegisteredModel",
    "RegisteredModelPermission",
    "StripeWebhookEvent",
    "TransactionType",
    "Tutorial",
    "UsageCharge",
    "UsageEvent",
    "UsageHold",
    "BatchOutput",
    "UsageMeter",
    "UsageSku",
    "TutorialDifficulty",
    "User",
    "UserRole",
    "UserSession",
    "UserTier",
    "UserTutorialProgress",
    "Worker",
    "Workflow",
    "WorkflowSnapshot",
]
