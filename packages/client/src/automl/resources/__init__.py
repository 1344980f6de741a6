"""The resource groups of the API, each written once for both clients."""

from automl.resources.billing import BillingAlerts, Credits, Invoices, PriceBook, Usage, Webhooks
from automl.resources.data import Datasets, Jobs, Workflows
from automl.resources.identity import ApiKeys, Auth, Me, Sessions, Users
from automl.resources.misc import (
    Admin,
    AuditEvents,
    EvaluationCriteria,
    Evaluations,
    Experiments,
    Health,
    Tutorials,
)
from automl.resources.registry import Models, ModelVersions, RegisteredModels
from automl.resources.serving import Deployments, Prediction

__all__ = [
    "Admin",
    "ApiKeys",
    "AuditEvents",
    "Auth",
    "BillingAlerts",
    "Credits",
    "Datasets",
    "Deployments",
    "EvaluationCriteria",
    "Evaluations",
    "Experiments",
    "Health",
    "Invoices",
    "Jobs",
    "Me",
    "ModelVersions",
    "Models",
    "Prediction",
    "PriceBook",
    "RegisteredModels",
    "Sessions",
    "Tutorials",
    "Usage",
    "Users",
    "Webhooks",
    "Workflows",
]
