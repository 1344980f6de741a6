"""Every model and enum of the platform's schema."""

from database.models.api_key import APIKey
from database.models.credit_package import CreditPackage
from database.models.credit_transaction import CreditTransaction
from database.models.dataset import Dataset
from database.models.dataset_profile import DatasetProfile
from database.models.dataset_version import DatasetVersion
from database.models.derived_repair import DerivedRepair
from database.models.enums import (
    CreditTierRestriction,
    CriterionKind,
    CriterionOperator,
    FileFormat,
    IngestionStatus,
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
    ProblemType,
    RowRule,
    TransactionType,
    TutorialDifficulty,
    UserTier,
)
from database.models.evaluation_criterion import EvaluationCriterion
from database.models.evaluation_row_result import EvaluationRowResult
from database.models.evaluation_run import EvaluationRun
from database.models.experiment import Experiment
from database.models.experiment_run import ExperimentRun
from database.models.ingestion_job import IngestionJob
from database.models.job import Job
from database.models.job_log import JobLog
from database.models.job_node import JobNode
from database.models.model import Model
from database.models.model_alias import ModelAlias
from database.models.model_download import ModelDownload
from database.models.model_lineage import ModelLineage
from database.models.model_version import ModelVersion
from database.models.model_version_metric import ModelVersionMetric
from database.models.registered_model import RegisteredModel
from database.models.registered_model_permission import RegisteredModelPermission
from database.models.stripe_webhook_event import StripeWebhookEvent
from database.models.tutorial import Tutorial
from database.models.user import User
from database.models.user_tutorial_progress import UserTutorialProgress
from database.models.worker import Worker
from database.models.workflow import Workflow
from database.models.workflow_snapshot import WorkflowSnapshot

__all__ = [
    "APIKey",
    "CreditPackage",
    "CreditTierRestriction",
    "CreditTransaction",
    "CriterionKind",
    "CriterionOperator",
    "Dataset",
    "DatasetProfile",
    "DatasetVersion",
    "DerivedRepair",
    "EvaluationCriterion",
    "EvaluationRowResult",
    "EvaluationRun",
    "Experiment",
    "ExperimentRun",
    "FileFormat",
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
    "NodeStatus",
    "NodeType",
    "OAuthProvider",
    "ProblemType",
    "RowRule",
    "RegisteredModel",
    "RegisteredModelPermission",
    "StripeWebhookEvent",
    "TransactionType",
    "Tutorial",
    "TutorialDifficulty",
    "User",
    "UserTier",
    "UserTutorialProgress",
    "Worker",
    "Workflow",
    "WorkflowSnapshot",
]
