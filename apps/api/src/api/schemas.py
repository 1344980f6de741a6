"""Request and response bodies (pydantic), shared by the routers and OpenAPI.

Inputs are bounded so that nothing a client sends can reach PostgreSQL as a value
it refuses with an error of its own: text has no NUL characters and a maximum
length, integers fit their columns, JSON holds only finite numbers and has a
bounded depth, datetimes are aware and inside the range every layer holds
(``database.types.check_datetime``). A refused input is a 422, never a 500.

Request bodies derive from :class:`Input`: unknown fields are refused, and booleans
and integers are strict (``0`` is not ``false``, ``"5"`` and ``5.0`` are not ``5``);
a new field that would coerce is refused when its model is defined.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)

from database.models import (
    CreditTierRestriction,
    ExperimentRunStatus,
    FileFormat,
    IngestionStatus,
    JobStatus,
    LineageRelation,
    LogLevel,
    ModelPermission,
    ModelVersionStatus,
    ModelVisibility,
    NodeStatus,
    NodeType,
    ProblemType,
    TransactionType,
    TutorialDifficulty,
    UserRole,
    UserTier,
)
from database.models.model_alias import ALIAS_PATTERN
from database.models.registered_model import MAX_MODEL_CARD, MAX_TAGS_TEXT
from database.types import check_datetime

# The workflow definition model is pipeline.definition's, re-exported: the worker runs
# what the API accepted, checked by the same code. So are the guards of what PostgreSQL's
# jsonb accepts (no NUL, finite numbers, bounded depth): one copy.
from pipeline.definition import WorkflowDefinition as WorkflowDefinition
from pipeline.definition import WorkflowEdge as WorkflowEdge
from pipeline.definition import WorkflowNode as WorkflowNode
from pipeline.definition import check_json as check_json
from pipeline.definition import definition_problems as definition_problems
from pipeline.definition import no_nul as no_nul

INT32_MAX = 2**31 - 1


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(no_nul),
]
ShortText = Annotated[str, StringConstraints(max_length=200), AfterValidator(no_nul)]
LongText = Annotated[str, StringConstraints(max_length=10_000), AfterValidator(no_nul)]
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json)]

_EMAIL = re.compile(r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$")


def normalise_email(value: str) -> str:
    email = value.strip().lower()
    if not _EMAIL.match(email):
        raise ValueError("not an email address")
    return email


Email = Annotated[
    str, StringConstraints(min_length=3, max_length=320), AfterValidator(normalise_email)
]

#: An aware datetime that every layer can hold (PostgreSQL, Python, any time zone):
#: in UTC after validation; a naive or out-of-range one is 422.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(check_datetime)]


def _coercible(annotation: Any, metadata: tuple[Any, ...] = ()) -> bool:
    """Whether a field's type holds a bool, int or float pydantic would coerce into."""
    if get_origin(annotation) is Annotated:
        base, *meta = get_args(annotation)
        return _coercible(base, (*metadata, *meta))
    if annotation in (bool, int, float):
        return not any(isinstance(m, Strict) and m.strict for m in metadata)
    return any(_coercible(arg) for arg in get_args(annotation))


class Schema(BaseModel):
    """Base of every body: a field's docstring is its description in /openapi.json."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class Input(Schema):
    """Base of every request body: unknown fields refused, no surprising coercion.

    Not ``strict=True`` for the whole model: FastAPI validates the parsed JSON in
    Python mode, where strict would refuse a UUID, an enum or a datetime given as
    text. Booleans and numbers must be strict types (``StrictBool``, ``StrictInt``);
    a subclass with a field that would coerce (``is_completed: 0`` read as false)
    fails at import.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        loose = [
            name
            for name, field in cls.model_fields.items()
            if _coercible(field.annotation, tuple(field.metadata))
        ]
        if loose:
            raise TypeError(f"{cls.__name__}: use StrictBool/StrictInt for {', '.join(loose)}")


class Output(Schema):
    model_config = ConfigDict(from_attributes=True, use_attribute_docstrings=True)


# --- users and keys --------------------------------------------------------------------------
Scope = Literal["read", "write", "billing", "keys"]


class SignUpIn(Input):
    """A new account: its email and, optionally, the user's name."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"email": "ada@example.com", "full_name": "Ada Lovelace"}]}
    )

    email: Email
    """The account's email address (stored lower-cased and trimmed; unique)."""
    full_name: Name | None = None
    """The user's name, 1 to 200 characters."""


class UserOut(Output):
    """A user account as its owner sees it."""

    id: uuid.UUID
    """The user's id (UUID)."""
    email: str | None
    """The account's email address, lower-cased (null once the account is deleted)."""
    full_name: str | None
    """The name the user gave, if any."""
    tier: UserTier
    """The account's tier: sets its limits and prices."""
    email_verified: bool
    """Whether the email address was confirmed (POST /v1/auth/verify-email)."""
    credit_balance: int
    """Credits left to spend on runs, predictions and storage."""
    created_at: dt.datetime
    """When the user was created (UTC)."""


class Usage(Schema):
    """What the account holds and runs now (the counts its limits apply to)."""

    datasets: int
    """Datasets the account owns."""
    workflows: int
    """Workflows not deleted."""
    models: int
    """Trained models the account owns."""
    storage_bytes: int
    """Bytes of stored files (uploads, models, outputs)."""
    running_jobs: int
    """Jobs queued or running."""


class LimitsOut(Schema):
    """The limits of the account's tier."""

    storage_bytes: int
    """Bytes the account may store."""
    max_datasets: int
    """Datasets the account may own."""
    max_workflows: int
    """Workflows the account may keep."""
    max_running_jobs: int
    """Jobs that may be queued or running at once."""


class MeOut(UserOut):
    """The caller's account with what it uses and its tier's limits."""

    usage: Usage
    """What the account holds and runs now."""
    limits: LimitsOut
    """The tier's limits on it."""


class ApiKeyIn(Input):
    """A new API key: a name, its scopes, an optional expiry and quotas."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "CI",
                    "scopes": ["read", "write"],
                    "expires_at": "2027-06-30T00:00:00Z",
                    "rate_limit_per_minute": 600,
                }
            ]
        }
    )

    name: Name = "API key"
    """A name to tell the key apart in lists."""
    scopes: list[Scope] | None = Field(default=None, min_length=1, max_length=4)
    """Default: the scopes of the key making the request. Never more than those, and at
    least one."""
    expires_at: UtcDatetime | None = None
    """When the key stops working (aware datetime); null: never."""
    rate_limit_per_minute: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    """Quotas (none by default): requests per minute, predicted rows per calendar month (UTC).
    Beyond them the predict route answers 429 with Retry-After."""
    monthly_row_quota: StrictInt | None = Field(default=None, ge=1, le=10**15)
    """Predicted rows allowed per calendar month (UTC); null: no quota."""


class ApiKeyQuotasIn(Input):
    """New quotas of a key: a field given replaces the quota (null removes it); a
    field left out keeps it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"rate_limit_per_minute": 120, "monthly_row_quota": 1000000}]
        }
    )

    rate_limit_per_minute: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    """Requests per minute the predict route accepts with the key; null removes the quota."""
    monthly_row_quota: StrictInt | None = Field(default=None, ge=1, le=10**15)
    """Predicted rows per calendar month (UTC); null removes the quota."""


class ApiKeyOut(Output):
    """An API key, without its secret."""

    id: uuid.UUID
    """The key's id (UUID)."""
    name: str
    """The key's name."""
    prefix: str
    """The key's first characters, to tell keys apart."""
    scopes: list[str]
    """What the key may do: read, write, billing, keys."""
    expires_at: dt.datetime | None
    """When the key stops working; null: never."""
    last_used_at: dt.datetime | None
    """When the key last authenticated a request (to the minute); null: never."""
    revoked_at: dt.datetime | None
    """When the key was revoked; null: it is not."""
    rate_limit_per_minute: int | None = None
    """Requests per minute the predict route accepts with the key; null: no quota."""
    monthly_row_quota: int | None = None
    """Predicted rows per calendar month (UTC); null: no quota."""
    created_at: dt.datetime
    """When the key was created (UTC)."""


class ApiKeyCreated(ApiKeyOut):
    """A key just created, with its secret (shown once)."""

    key: str
    """The key itself: shown this once, never again."""


class SignUpOut(Schema):
    """The new account and its first API key (every scope)."""

    user: UserOut
    """The account."""
    api_key: ApiKeyCreated
    """Its first key, with the secret: store it now."""


# --- datasets ----------------------------------------------------------------------------------
class DatasetForm(Input):
    """The text fields of the dataset upload (multipart/form-data)."""

    name: Name
    """The dataset's name."""
    description: LongText | None = None
    """What the data is (free text)."""
    problem_type: ProblemType | None = None
    """The problem its target poses; null: inferred from the target's values."""
    target_column: ShortText | None = None
    """The column models learn to predict."""


class VersionForm(Input):
    """The text fields of a new version's upload (multipart/form-data)."""

    version_label: ShortText | None = None
    """A label for the version, e.g. 'March export'."""


class VersionOut(Output):
    """A version of a dataset: one uploaded file and what ingestion found in it."""

    id: uuid.UUID
    """The version's id (UUID)."""
    version_number: int
    """1 for the first upload, then 2, 3... per dataset."""
    version_label: str | None
    """The label given at upload."""
    original_filename: str | None
    """The uploaded file's name."""
    original_format: FileFormat
    """The uploaded file's format."""
    original_size_bytes: int | None
    """The uploaded file's size."""
    status: IngestionStatus
    """Where ingestion is: pending, processing, completed or failed."""
    row_count: int | None
    """Rows found by ingestion (null until it completes)."""
    column_count: int | None
    """Columns found by ingestion (null until it completes)."""
    error_message: str | None
    """Why ingestion failed (null otherwise)."""
    processed_at: dt.datetime | None
    """When ingestion finished."""
    created_at: dt.datetime
    """When the version was created (UTC)."""
    waiting_for: Literal["worker"] | None = None
    """``"worker"`` when the version waits for ingestion and no worker is alive to take it: it waits
    until one starts. None otherwise."""


class DatasetPatch(Input):
    """``PATCH /v1/datasets/{id}``: only the fields sent change."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "target_column": "churned",
                    "problem_type": "classification",
                    "ignored_columns": ["customer_id"],
                }
            ]
        }
    )

    name: Name | None = None
    """A new name."""
    target_column: ShortText | None = None
    """The column models learn to predict; must be a column of the current version."""
    problem_type: ProblemType | None = None
    """The problem its target poses."""
    ignored_columns: (
        Annotated[
            list[
                Annotated[
                    str, StringConstraints(min_length=1, max_length=200), AfterValidator(no_nul)
                ]
            ],
            Field(max_length=1000),
        ]
        | None
    ) = None
    """Columns never used as features (replaces the list)."""


class DatasetOut(Output):
    """A dataset: named tabular data with numbered versions."""

    id: uuid.UUID
    """The dataset's id (UUID)."""
    name: str
    """The dataset's name."""
    description: str | None
    """What the data is."""
    problem_type: ProblemType | None
    """The problem its target poses (classification, regression, clustering); null: inferred."""
    target_column: str | None
    """The column models learn to predict."""
    ignored_columns: list[str] = []
    """Columns never used as features."""
    current_version_id: uuid.UUID | None
    """The version runs read by default (the latest upload)."""
    created_at: dt.datetime
    """When the dataset was created (UTC)."""
    updated_at: dt.datetime
    """When the dataset last changed (UTC)."""


class DatasetDetail(DatasetOut):
    """A dataset with its versions."""

    versions: list[VersionOut]
    """Every version, newest first."""


class IngestionJobOut(Output):
    """The job that ingests an upload."""

    id: uuid.UUID
    """The job's id (UUID)."""
    status: IngestionStatus
    """Where ingestion is: pending, processing, completed or failed."""
    created_at: dt.datetime
    """When the job was created (UTC)."""


class UploadOut(Schema):
    """What an upload created: the dataset, its new version and the ingestion job."""

    dataset: DatasetOut
    """The dataset."""
    version: VersionOut
    """The version the file became."""
    ingestion_job: IngestionJobOut
    """The job reading it (poll the version's status)."""


class ProfileOut(Output):
    """A dataset version's profile: counts, per-column statistics and correlations."""

    dataset_version_id: uuid.UUID
    """The version profiled."""
    row_count: int
    """Rows in the version."""
    column_count: int
    """Columns in the version."""
    missing_cells: int
    """Cells with no value."""
    duplicate_rows: int
    """Rows that repeat an earlier row exactly."""
    memory_bytes: int | None
    """Memory the data took when loaded."""
    column_stats: dict[str, Any]
    """Column name -> its statistics (type, missing, distinct, min/max/mean or top values)."""
    correlations: dict[str, Any] | None
    """Pearson correlations between numeric columns (column -> column -> r)."""
    warnings: list[Any]
    """What may hurt a model: constant columns, identifiers, many missing values..."""
    created_at: dt.datetime
    """When the profile was computed (UTC)."""


# --- workflows -------------------------------------------------------------------------------
class WorkflowIn(Input):
    """A new workflow: a name and a definition (empty: a draft)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Churn model",
                    "description": "Random forest on the customer table",
                    "definition": {
                        "nodes": [
                            {
                                "id": "data",
                                "type": "dataset",
                                "config": {"dataset_id": "3f2b8c1e-5a4d-4c2e-9b7a-1d2e3f4a5b6c"},
                            },
                            {
                                "id": "prep",
                                "type": "preprocess",
                                "config": {
                                    "impute": "median",
                                    "scale": "standard",
                                    "test_size": 0.2,
                                },
                            },
                            {
                                "id": "forest",
                                "type": "model",
                                "config": {
                                    "algorithm": "random_forest",
                                    "hyperparameters": {"n_estimators": 200, "max_depth": 8},
                                },
                            },
                            {
                                "id": "save",
                                "type": "save",
                                "config": {
                                    "name": "churn-forest",
                                    "register": {"name": "churn", "alias": "staging"},
                                },
                            },
                        ],
                        "edges": [
                            {"source": "data", "target": "prep"},
                            {"source": "prep", "target": "forest"},
                            {"source": "forest", "target": "save"},
                        ],
                    },
                }
            ]
        }
    )

    name: Name
    """The workflow's name."""
    description: LongText | None = None
    """What the workflow does (free text)."""
    definition: WorkflowDefinition = Field(default_factory=WorkflowDefinition)
    """The nodes and edges; validated on save (422 naming every problem)."""


class WorkflowPatch(Input):
    """Changes to a workflow: only the fields sent change."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "Churn model v2"}]})

    name: Name | None = None
    """A new name."""
    description: LongText | None = None
    """A new description."""
    definition: WorkflowDefinition | None = None
    """A new definition (replaces the old one)."""


class WorkflowOut(Output):
    """A workflow: its definition and what a run of it costs."""

    id: uuid.UUID
    """The workflow's id (UUID)."""
    name: str
    """The workflow's name."""
    description: str | None
    """What the workflow does."""
    definition: dict[str, Any]
    """The nodes and edges, as saved (see WorkflowDefinition)."""
    is_deleted: bool
    """Soft-deleted: hidden from lists, restorable."""
    deleted_at: dt.datetime | None
    """When it was deleted; null: it is not."""
    created_at: dt.datetime
    """When the workflow was created (UTC)."""
    updated_at: dt.datetime
    """When the workflow last changed (UTC)."""
    estimated_credits: int
    """What a run of the current definition costs, in credits."""


class RunIn(Input):
    """Options of a run."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"priority": 10}]})

    priority: StrictInt = Field(default=0, ge=0, le=100)
    """Queue priority: higher runs first."""


# --- jobs --------------------------------------------------------------------------------------
class JobNodeOut(Output):
    """One node of a job: its status, output and timing."""

    node_id: str
    """The node's id in the workflow definition."""
    node_type: NodeType
    """The node's type."""
    status: NodeStatus
    """pending, running, success, failed or skipped (after a failed input)."""
    output_data: dict[str, Any] | None
    """What the node produced (metrics, the model's id, a plot's path...)."""
    error_message: str | None
    """Why the node failed."""
    started_at: dt.datetime | None
    """When the node started."""
    completed_at: dt.datetime | None
    """When the node ended."""
    progress: float = 0.0
    """How far the node is, 0..1 (0 until it runs, 1 once it succeeded)."""
    progress_message: str | None = None
    """What a running node is doing now (null otherwise)."""


class JobOut(Output):
    """A job: one run of a workflow (or a batch prediction, an evaluation)."""

    id: uuid.UUID
    """The job's id (UUID)."""
    status: JobStatus
    """pending, queued, running, completed, failed or cancelled."""
    credit_cost: int
    """Credits charged when it was queued."""
    priority: int
    """Queue priority: higher runs first."""
    workflow_snapshot_id: uuid.UUID
    """The frozen copy of the definition the job runs."""
    workflow_id: uuid.UUID | None = None
    """The workflow it ran (null for other kinds of job, or once the workflow is purged)."""
    error_message: str | None
    """Why the job failed."""
    started_at: dt.datetime | None
    """When a worker started it."""
    completed_at: dt.datetime | None
    """When it ended."""
    cancel_requested_at: dt.datetime | None
    """When a cancel was asked for (a running job stops at its next node)."""
    created_at: dt.datetime
    """When the job was created (UTC)."""
    updated_at: dt.datetime
    """When the job last changed (UTC)."""
    waiting_for: Literal["worker"] | None = None
    """``"worker"`` when the job is queued and no worker is alive to take it: it waits until one
    starts. None otherwise."""


class JobDetail(JobOut):
    """A job with its results and its nodes."""

    results: dict[str, Any] | None
    """What the run produced, by node id (when it ended)."""
    nodes: list[JobNodeOut]
    """Every node of the definition, in run order."""


class LogLineOut(Output):
    """One line of a job's log."""

    seq: int
    """The line's number within its job: 1, 2, 3..."""
    created_at: dt.datetime
    """When the line was written (UTC)."""
    level: LogLevel
    """debug, info, warning or error."""
    node_id: str | None
    """The workflow node the line is about, if any."""
    message: str
    """The line's text."""


class RunOut(Schema):
    """A queued run and the caller's balance after its charge."""

    job: JobOut
    """The job queued."""
    balance: int
    """The caller's balance after the charge."""


class CancelOut(Schema):
    """A job after a cancel request."""

    job: JobOut
    """The job, with cancel_requested_at set."""
    refunded_credits: int
    """Credits given back now (a queued job); 0 for a running one, which the worker stops and
    settles."""


# --- models ------------------------------------------------------------------------------------
class ModelOut(Output):
    """A trained model (what a workflow's model or automl node saved)."""

    id: uuid.UUID
    """The model's id (UUID)."""
    name: str
    """The model's name (the save node's)."""
    algorithm: str
    """The algorithm trained, e.g. random_forest."""
    problem_type: ProblemType
    """classification, regression or clustering."""
    job_id: uuid.UUID | None
    """The job that trained it."""
    is_deployed: bool
    """Whether an active deployment serves it."""
    has_artifact: bool = False
    """Whether its file is stored (downloadable)."""
    created_at: dt.datetime
    """When the model was created (UTC)."""
    updated_at: dt.datetime
    """When the model last changed (UTC)."""


class ModelDetail(ModelOut):
    """A trained model with its metrics and hyperparameters."""

    metrics: dict[str, Any]
    """Scores on the held-out rows (accuracy, f1, r2, rmse...)."""
    hyperparameters: dict[str, Any]
    """The estimator's parameters as trained."""


# --- credits -----------------------------------------------------------------------------------
class BalanceOut(Schema):
    """The caller's credit balance."""

    balance: int
    """Credits available now."""


class TransactionOut(Output):
    """One entry of the credit ledger."""

    id: uuid.UUID
    """The entry's id (UUID)."""
    type: TransactionType
    """purchase, consumption (a charge), refund or adjustment."""
    amount: int
    """Credits added (positive) or taken (negative)."""
    balance_after: int
    """The balance right after this entry."""
    description: str | None
    """What the entry was for."""
    job_id: uuid.UUID | None
    """The job charged or refunded, if any."""
    package_id: uuid.UUID | None
    """The credit package bought, if any."""
    created_at: dt.datetime
    """When the entry was created (UTC)."""


class PackageOut(Output):
    """A credit package on sale."""

    id: uuid.UUID
    """The package's id (UUID)."""
    name: str
    """The package's name."""
    credits: int
    """Credits it adds."""
    price_cents: int
    """Its price, in cents of the currency."""
    tier_restriction: CreditTierRestriction
    """The tiers that may buy it."""


class PurchaseIn(Input):
    """A purchase of a credit package (development only: real payments go through checkout)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"package_id": "3f2b8c1e-5a4d-4c2e-9b7a-1d2e3f4a5b6c"}]}
    )

    package_id: uuid.UUID
    """The package to buy (GET /v1/credit-packages)."""


class PurchaseOut(Schema):
    """The ledger entry of a purchase and the new balance."""

    transaction: TransactionOut
    """The purchase's ledger entry."""
    balance: int
    """The balance after it."""


class WebhookOut(Schema):
    """What became of a webhook event."""

    event_id: str
    """Stripe's event id."""
    status: Literal["processed", "duplicate", "duplicate_payment", "ignored", "failed"]
    """processed (credits moved), duplicate (this event was seen before), duplicate_payment (another
    event already credited its payment: nothing credited), ignored (not handled), or failed
    (recorded; Stripe need not retry)"""


# --- experiments -------------------------------------------------------------------------------
class ExperimentIn(Input):
    """A new experiment: a group of runs compared by a metric."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Churn: trees vs linear",
                    "problem_type": "classification",
                    "dataset_id": "3f2b8c1e-5a4d-4c2e-9b7a-1d2e3f4a5b6c",
                    "primary_metric": "f1",
                }
            ]
        }
    )

    name: Name
    """The experiment's name."""
    description: LongText | None = None
    """What it compares (free text)."""
    problem_type: ProblemType | None = None
    """The problem its runs solve."""
    dataset_id: uuid.UUID | None = None
    """The dataset its runs train on, if one."""
    primary_metric: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    """The metric runs are ranked by, e.g. "accuracy" or "rmse"."""

    @model_validator(mode="after")
    def _metric_text(self) -> ExperimentIn:
        if self.primary_metric is not None:
            no_nul(self.primary_metric)
        return self


class ExperimentOut(Output):
    """An experiment."""

    id: uuid.UUID
    """The experiment's id (UUID)."""
    name: str
    """The experiment's name."""
    description: str | None
    """What it compares."""
    problem_type: ProblemType | None
    """The problem its runs solve."""
    dataset_id: uuid.UUID | None
    """The dataset its runs train on."""
    primary_metric: str | None
    """The metric runs are ranked by."""
    created_at: dt.datetime
    """When the experiment was created (UTC)."""
    updated_at: dt.datetime
    """When the experiment last changed (UTC)."""


class ExperimentRunIn(Input):
    """A run to add to an experiment: a model, a job, or both."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "3f2b8c1e-5a4d-4c2e-9b7a-1d2e3f4a5b6c",
                    "name": "forest, depth 8",
                    "notes": "200 trees",
                }
            ]
        }
    )

    model_id: uuid.UUID | None = None
    """A trained model of the caller's."""
    job_id: uuid.UUID | None = None
    """A job of the caller's (its model and metrics are used)."""
    name: ShortText | None = None
    """A name for the run."""
    notes: LongText | None = None
    """Notes on the run (free text)."""

    @model_validator(mode="after")
    def _something(self) -> ExperimentRunIn:
        if self.model_id is None and self.job_id is None:
            raise ValueError("give model_id, job_id or both")
        return self


class ExperimentRunOut(Output):
    """A run of an experiment."""

    id: uuid.UUID
    """The run's id (UUID)."""
    job_id: uuid.UUID | None
    """The job of the run."""
    model_id: uuid.UUID | None
    """The model of the run."""
    name: str | None
    """The run's name."""
    notes: str | None
    """Notes on the run."""
    metrics: dict[str, Any] | None
    """The model's metrics."""
    created_at: dt.datetime
    """When the run was created (UTC)."""
    trial_number: int | None = Field(
        default=None,
        description="An AutoML trial's number in its search (1, 2, ...); null for a run"
        " recorded by hand.",
    )
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="An AutoML trial's learner, hyperparameters and rows sampled"
        " (`learner`, `hyperparameters`, `sample_size`).",
    )
    fold_scores: list[float | None] | None = Field(
        default=None,
        description="An AutoML trial's score of the searched metric on each"
        " cross-validation fold, in fold order (the run's score is their mean); null for"
        " a run recorded by hand.",
    )
    duration_seconds: float | None = Field(
        default=None, description="An AutoML trial's seconds (its folds' fits and scoring)."
    )
    status: ExperimentRunStatus = Field(
        default=ExperimentRunStatus.FINISHED,
        description="How the trial ended: `failed` when it could not be scored.",
    )


class Comparison(Schema):
    """An experiment's runs ranked by its metric."""

    metric: str | None
    """The metric ranked by (the experiment's primary metric, if set)."""
    direction: Literal["max", "min"] | None
    """"max" when higher is better, "min" for losses and errors."""
    ranking: list[uuid.UUID]
    """Run ids, best first; runs without the metric are left out."""
    best_run_id: uuid.UUID | None
    """The best run (first of ranking)."""
    metrics: list[str]
    """Every numeric metric any run has."""


class ExperimentDetail(ExperimentOut):
    """An experiment with its runs and their comparison."""

    runs: list[ExperimentRunOut]
    """Every run, oldest first."""
    comparison: Comparison
    """The runs ranked by the metric."""


# --- tutorials ---------------------------------------------------------------------------------
class ProgressIn(Input):
    """The caller's progress in a tutorial (replaces the previous)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"current_step": 2, "completed_steps": [0, 1], "is_completed": False}]
        }
    )

    current_step: StrictInt = Field(ge=0, le=10_000)
    """The step the user is on (0-based)."""
    completed_steps: list[Annotated[StrictInt, Field(ge=0, le=10_000)]] = Field(
        default_factory=list, max_length=1000
    )
    """The steps done (0-based)."""
    is_completed: StrictBool = False
    """Whether the tutorial is finished."""


class ProgressOut(Output):
    """The caller's progress in a tutorial."""

    tutorial_id: uuid.UUID
    """The tutorial."""
    current_step: int
    """The step the user is on (0-based)."""
    completed_steps: list[int]
    """The steps done."""
    is_completed: bool
    """Whether the tutorial is finished."""
    started_at: dt.datetime
    """When the user started it."""
    completed_at: dt.datetime | None
    """When it was finished."""
    updated_at: dt.datetime
    """When the progress last changed."""


class TutorialOut(Output):
    """A tutorial, with the caller's progress in it."""

    id: uuid.UUID
    """The tutorial's id (UUID)."""
    slug: str
    """A stable short name, e.g. 'first-model'."""
    title: str
    """The tutorial's title."""
    description: str | None
    """What it teaches."""
    difficulty: TutorialDifficulty
    """beginner, intermediate or advanced."""
    steps: list[Any]
    """The tutorial's steps, in order."""
    estimated_minutes: int | None
    """About how long it takes."""
    sort_order: int
    """Its place in the list."""
    progress: ProgressOut | None = None
    """The caller's progress; null: not started."""


# --- health ------------------------------------------------------------------------------------
class HealthOut(Schema):
    """The process answers."""

    status: Literal["ok"]
    """Always ok."""


class ReadyOut(Schema):
    """Whether the API can serve: the database reachable and at the code's migration head."""

    status: Literal["ready", "not_ready"]
    """ready, or not_ready (then 503)."""
    database: bool
    """Whether the database answered."""
    revision: list[str]
    """The database's migration revision(s)."""
    head: list[str]
    """The code's migration head(s)."""
    reason: str | None = None
    """Why it is not ready."""
    workers: int | None = None
    """Workers alive now (heartbeat within two of their leases); None when the database could not be
    asked. 0 does not make the API unready: it serves, and queued work waits until a worker
    starts (see ``warnings``)."""
    warnings: list[str] = Field(default_factory=list)
    """What an operator should know that does not stop the API from serving."""


# --- model registry (api.routers.registry) ------------------------------------------------------
TagKey = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(no_nul),
]
TagValue = Annotated[str, StringConstraints(max_length=500), AfterValidator(no_nul)]
ModelCard = Annotated[str, StringConstraints(max_length=MAX_MODEL_CARD), AfterValidator(no_nul)]
License = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(no_nul),
]
Description = Annotated[str, StringConstraints(max_length=5000), AfterValidator(no_nul)]
MetricName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$", max_length=100)
]
AliasName = Annotated[str, StringConstraints(pattern=ALIAS_PATTERN, max_length=63)]


def _tags_fit(tags: dict[str, str] | None) -> dict[str, str] | None:
    import json

    if tags is not None and len(json.dumps(tags, ensure_ascii=False)) > MAX_TAGS_TEXT - 100:
        raise ValueError(f"the tags take more than {MAX_TAGS_TEXT - 100} characters of JSON")
    return tags


Tags = Annotated[dict[TagKey, TagValue], Field(max_length=50), AfterValidator(_tags_fit)]


class RegisteredModelIn(Input):
    """A new registered model: a named home for model versions."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "churn",
                    "description": "Predicts which customers leave next month",
                    "license": "Apache-2.0",
                    "tags": {"team": "growth"},
                    "visibility": "private",
                }
            ]
        }
    )

    name: Name
    """The name, unique among the owner's registered models."""
    description: Description | None = None
    """What the model does (free text)."""
    model_card: ModelCard | None = None
    """Documentation of the model (Markdown)."""
    license: License | None = None
    """The license its versions are shared under."""
    tags: Tags = Field(default_factory=dict)
    """Key -> value labels (at most 50)."""
    visibility: ModelVisibility = ModelVisibility.PRIVATE
    """private, shared (with granted users) or public."""


class RegisteredModelPatch(Input):
    """Only the fields given change; ``null`` clears description, model_card or license."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"visibility": "shared", "tags": {"team": "growth", "stage": "beta"}}]
        }
    )

    name: Name | None = None
    """A new name."""
    description: Description | None = None
    """A new description; null clears it."""
    model_card: ModelCard | None = None
    """A new model card; null clears it."""
    license: License | None = None
    """A new license; null clears it."""
    tags: Tags | None = None
    """Replaces every tag."""
    visibility: ModelVisibility | None = None
    """private, shared or public."""

    @model_validator(mode="after")
    def _not_null(self) -> RegisteredModelPatch:
        for name in ("name", "tags", "visibility"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class RegisteredModelOut(Output):
    """A registered model."""

    id: uuid.UUID
    """The registered model's id (UUID)."""
    user_id: uuid.UUID
    """The owner."""
    name: str
    """Its name."""
    description: str | None
    """What the model does."""
    license: str | None
    """The license its versions are shared under."""
    tags: dict[str, str]
    """Key -> value labels."""
    visibility: ModelVisibility
    """private, shared or public."""
    last_version_number: int
    """The highest version number given (0: none yet)."""
    created_at: dt.datetime
    """When the registered model was created (UTC)."""
    updated_at: dt.datetime
    """When the registered model last changed (UTC)."""


class RegisteredModelDetail(RegisteredModelOut):
    """A registered model with its card, aliases and the caller's access."""

    model_card: str | None
    """Documentation of the model (Markdown)."""
    aliases: dict[str, int]
    """Alias -> version number."""
    access: Literal["owner", "deploy", "download", "read"]
    """What the caller may do: "owner" (everything), or the highest of deploy, download, read."""


class RegisterVersionIn(Input):
    """A trained model registered as the next version."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_id": "3f2b8c1e-5a4d-4c2e-9b7a-1d2e3f4a5b6c",
                    "description": "Trained on the March export",
                    "primary_metric": "f1",
                    "aliases": ["staging"],
                }
            ]
        }
    )

    model_id: uuid.UUID
    """A trained model of the caller's (GET /v1/models)."""
    description: Description | None = None
    """What changed in this version."""
    primary_metric: MetricName | None = None
    """The metric that matters for this model, e.g. accuracy."""
    aliases: list[AliasName] = Field(default_factory=list, max_length=10)
    """Aliases to point at the new version (moved from another version if set)."""


class MetricOut(Output):
    """One metric of a model version."""

    metric: str
    """The metric's name, e.g. accuracy."""
    split: str
    """The rows it was measured on, e.g. test."""
    value: float
    """Its value."""


class ModelVersionOut(Output):
    """A version of a registered model."""

    id: uuid.UUID
    """The version's id (UUID)."""
    registered_model_id: uuid.UUID
    """The registered model."""
    registered_model_name: str
    """Its name."""
    version: int
    """The version number: 1, 2, 3... per registered model, never reused."""
    model_id: uuid.UUID
    """The trained model registered."""
    status: ModelVersionStatus
    """ready or archived."""
    description: str | None
    """What changed in this version."""
    primary_metric: str | None
    """The metric that matters for this version."""
    download_count: int
    """Granted downloads so far."""
    metrics: list[MetricOut]
    """The trained model's metrics."""
    aliases: list[str]
    """The aliases pointing at this version."""
    created_at: dt.datetime
    """When the version was created (UTC)."""
    updated_at: dt.datetime
    """When the version last changed (UTC)."""


class LineageEdgeOut(Schema):
    """One edge of a model version's lineage."""

    depth: int
    """1 for the edges of the version asked about, 2 for theirs..."""
    child_version_id: uuid.UUID
    """The version the edge leads to."""
    relation: LineageRelation
    """What the parent was to the child: trained_on, evaluated_on, produced_by,
    retrained_from or tuned_from."""
    parent_kind: Literal["model_version", "dataset_version", "workflow_snapshot", "job"]
    """What the parent is."""
    parent_id: uuid.UUID
    """The parent's id."""


class LineageSummary(Schema):
    """A version's lineage in short."""

    parents: list[LineageEdgeOut]
    """What made this version (one step up)."""
    derived_versions: int
    """How many versions the caller may read were retrained or tuned from this one."""


class ModelVersionDetail(ModelVersionOut):
    """A model version with its signature, example, environment and lineage."""

    signature: dict[str, Any]
    """The inputs the model takes (column names and types) and what it outputs."""
    input_example: list[Any] | None
    """A few input rows, as records."""
    environment: dict[str, Any]
    """The library versions it was trained with."""
    lineage: LineageSummary
    """What made it, and how many versions derive from it."""


class ModelVersionPatch(Input):
    """Changes to a model version: only the fields sent change."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "archived"}]})

    description: Description | None = None
    """A new description."""
    primary_metric: MetricName | None = None
    """A new primary metric."""
    status: ModelVersionStatus | None = None
    """ready, or archived (kept for the record); either way back."""

    @model_validator(mode="after")
    def _not_null(self) -> ModelVersionPatch:
        if "status" in self.model_fields_set and self.status is None:
            raise ValueError("status cannot be null")
        return self


class LineageOut(Schema):
    """A version's lineage, up (what made it) or down (what it made)."""

    version_id: uuid.UUID
    """The version asked about."""
    direction: Literal["up", "down"]
    """up: its ancestors; down: its descendants."""
    depth: int
    """How many steps were followed."""
    edges: list[LineageEdgeOut]
    """The edges found, nearest first."""


class AliasIn(Input):
    """The version an alias points at."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"version": 3}]})

    version: StrictInt = Field(ge=1, le=INT32_MAX)
    """The version number."""


class AliasOut(Schema):
    """An alias of a registered model."""

    alias: str
    """The alias, e.g. production."""
    version: int
    """The version number it points at."""
    model_version_id: uuid.UUID
    """That version's id."""
    updated_at: dt.datetime
    """When it last moved."""


class PermissionIn(Input):
    """The user by ``user_id`` or by ``email`` (exactly one)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"email": "grace@example.com", "permission": "download"}]}
    )

    user_id: uuid.UUID | None = None
    """The grantee's id."""
    email: Email | None = None
    """The grantee's email address."""
    permission: ModelPermission
    """read, download or deploy (each includes the ones before it)."""

    @model_validator(mode="after")
    def _one_user(self) -> PermissionIn:
        if (self.user_id is None) == (self.email is None):
            raise ValueError("give user_id or email (exactly one)")
        return self


class PermissionOut(Output):
    """A permission on a registered model."""

    user_id: uuid.UUID
    """The grantee (ids only: the list does not disclose email addresses)."""
    permission: ModelPermission
    """read, download or deploy."""
    granted_by: uuid.UUID | None
    """The user who granted it."""


# --- identity: login, sessions, passwords, admin ---------------------------------------------
#: A password as sent: bounded here; its rules (length, no NUL) are
#: database.identity.check_password_rules' (422 ``invalid_password``).
PasswordText = Annotated[str, StringConstraints(max_length=1024)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(no_nul)]


class LoginIn(Input):
    """Password login."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"email": "ada@example.com", "password": "correct horse battery staple"}]
        }
    )

    email: Email
    """The account's email address."""
    password: PasswordText
    """The account's password."""


class LoginOut(Schema):
    """A new session."""

    token: str
    """The session token (``ams_...``): send it as ``Authorization: Bearer``. Shown once."""
    expires_at: dt.datetime
    """When the session token stops working."""
    session_id: uuid.UUID
    """The session's id (GET /v1/sessions)."""


class PasswordIn(Input):
    """A password change (or the first password of an account created with a key)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "current_password": "correct horse battery staple",
                    "new_password": "a longer and newer passphrase",
                }
            ]
        }
    )

    new_password: PasswordText
    """The new password (the rules are checked by the server: 422 ``invalid_password``)."""
    current_password: PasswordText | None = None
    """Required once the account has a password."""


class PasswordChanged(Schema):
    """What a password change did."""

    sessions_revoked: int
    """The caller's other sessions, revoked by the change."""


class VerifyEmailIn(Input):
    """An email verification."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"token": "amv_Zx3kP0q9w8e7r6t5y4u3i2o1"}]}
    )

    token: Token
    """The token from the verification email."""


class VerifiedOut(Schema):
    """The account's email verification state."""

    user_id: uuid.UUID
    """The account."""
    email_verified: bool
    """Whether the address is confirmed."""


class RestoreIn(Input):
    """Restore a deleted account, before its data is purged."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"email": "ada@example.com", "password": "correct horse battery staple"}]
        }
    )

    email: Email
    """The account's email address."""
    password: PasswordText
    """The account's password."""


class SessionOut(Output):
    """A login session."""

    id: uuid.UUID
    """The session's id (UUID)."""
    user_agent: str | None
    """The browser or client that logged in."""
    ip: str | None
    """The address it logged in from."""
    created_at: dt.datetime
    """When the session was created (UTC)."""
    last_seen_at: dt.datetime
    """When it last made a request."""
    expires_at: dt.datetime
    """When it stops working."""
    revoked_at: dt.datetime | None
    """When it was ended (logout or revoke); null: it is not."""
    current: bool = False
    """The session making this request."""


class AdminUserOut(UserOut):
    """A user as an administrator sees it."""

    role: UserRole
    """user or admin."""
    is_active: bool
    """Whether the account may sign in."""
    is_deleted: bool
    """Soft-deleted (restorable until purged)."""
    deleted_at: dt.datetime | None
    """When it was deleted."""
    can_upload: bool
    """Whether it may upload datasets."""
    can_train: bool
    """Whether it may run workflows."""
    can_deploy: bool
    """Whether it may deploy models."""
    can_download: bool
    """Whether it may download models."""
    can_buy: bool
    """Whether it may buy credits."""


class AdminUserPatch(Input):
    """Changes to a user by an administrator: only the fields sent change."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"tier": "pro", "can_deploy": True}]})

    tier: UserTier | None = None
    """A new tier."""
    role: UserRole | None = None
    """user or admin."""
    is_active: StrictBool | None = None
    """false: the user can no longer sign in."""
    can_upload: StrictBool | None = None
    """May upload datasets."""
    can_train: StrictBool | None = None
    """May run workflows."""
    can_deploy: StrictBool | None = None
    """May deploy models."""
    can_download: StrictBool | None = None
    """May download models."""
    can_buy: StrictBool | None = None
    """May buy credits."""


class CreditAdjustmentIn(Input):
    """A credit adjustment by an administrator (recorded in the ledger and the audit trail)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "amount": 500,
                    "reason": "Goodwill credit for the outage of 3 December",
                    "idempotency_key": "ticket-4821",
                }
            ]
        }
    )

    amount: Annotated[StrictInt, Field(ge=-INT32_MAX, le=INT32_MAX)]
    """Credits to add (negative: to remove); never zero."""
    reason: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
        AfterValidator(no_nul),
    ]
    """Why (shown in the ledger)."""
    idempotency_key: Name
    """The same key again returns the first adjustment (409 if it differs)."""


class CreditAdjustmentOut(Output):
    """A credit adjustment's ledger entry."""

    id: uuid.UUID
    """The entry's id (UUID)."""
    user_id: uuid.UUID
    """The user adjusted."""
    amount: int
    """Credits added (negative: removed)."""
    balance_after: int
    """The balance after it."""
    description: str | None
    """The reason given."""
    actor: str | None
    """The administrator who made it."""
    created_at: dt.datetime
    """When the entry was created (UTC)."""
