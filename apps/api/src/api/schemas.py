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


class Input(BaseModel):
    """Base of every request body: unknown fields refused, no surprising coercion.

    Not ``strict=True`` for the whole model: FastAPI validates the parsed JSON in
    Python mode, where strict would refuse a UUID, an enum or a datetime given as
    text. Booleans and numbers must be strict types (``StrictBool``, ``StrictInt``);
    a subclass with a field that would coerce (``is_completed: 0`` read as false)
    fails at import.
    """

    model_config = ConfigDict(extra="forbid")

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


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- users and keys --------------------------------------------------------------------------
Scope = Literal["read", "write", "billing", "keys"]


class SignUpIn(Input):
    email: Email
    full_name: Name | None = None


class UserOut(Output):
    id: uuid.UUID
    email: str | None
    full_name: str | None
    tier: UserTier
    email_verified: bool
    credit_balance: int
    created_at: dt.datetime


class Usage(BaseModel):
    datasets: int
    workflows: int
    models: int
    storage_bytes: int
    running_jobs: int


class LimitsOut(BaseModel):
    storage_bytes: int
    max_datasets: int
    max_workflows: int
    max_running_jobs: int


class MeOut(UserOut):
    usage: Usage
    limits: LimitsOut


class ApiKeyIn(Input):
    name: Name = "API key"
    #: Default: the scopes of the key making the request. Never more than those,
    #: and at least one.
    scopes: list[Scope] | None = Field(default=None, min_length=1, max_length=4)
    expires_at: UtcDatetime | None = None
    #: Quotas (none by default): requests per minute, predicted rows per calendar
    #: month (UTC). Beyond them the predict route answers 429 with Retry-After.
    rate_limit_per_minute: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    monthly_row_quota: StrictInt | None = Field(default=None, ge=1, le=10**15)


class ApiKeyQuotasIn(Input):
    """New quotas of a key: a field given replaces the quota (null removes it); a
    field left out keeps it."""

    rate_limit_per_minute: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    monthly_row_quota: StrictInt | None = Field(default=None, ge=1, le=10**15)


class ApiKeyOut(Output):
    id: uuid.UUID
    name: str
    #: The key's first characters, to tell keys apart.
    prefix: str
    scopes: list[str]
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None
    rate_limit_per_minute: int | None = None
    monthly_row_quota: int | None = None
    created_at: dt.datetime


class ApiKeyCreated(ApiKeyOut):
    #: The key itself: shown this once, never again.
    key: str


class SignUpOut(BaseModel):
    user: UserOut
    api_key: ApiKeyCreated


# --- datasets ----------------------------------------------------------------------------------
class DatasetForm(Input):
    """The text fields of the dataset upload (multipart/form-data)."""

    name: Name
    description: LongText | None = None
    problem_type: ProblemType | None = None
    target_column: ShortText | None = None


class VersionForm(Input):
    version_label: ShortText | None = None


class VersionOut(Output):
    id: uuid.UUID
    version_number: int
    version_label: str | None
    original_filename: str | None
    original_format: FileFormat
    original_size_bytes: int | None
    status: IngestionStatus
    row_count: int | None
    column_count: int | None
    error_message: str | None
    processed_at: dt.datetime | None
    created_at: dt.datetime
    #: ``"worker"`` when the version waits for ingestion and no worker is alive to
    #: take it: it waits until one starts. None otherwise.
    waiting_for: Literal["worker"] | None = None


class DatasetPatch(Input):
    """``PATCH /v1/datasets/{id}``: only the fields sent change."""

    name: Name | None = None
    target_column: ShortText | None = None
    problem_type: ProblemType | None = None
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


class DatasetOut(Output):
    id: uuid.UUID
    name: str
    description: str | None
    problem_type: ProblemType | None
    target_column: str | None
    ignored_columns: list[str] = []
    current_version_id: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime


class DatasetDetail(DatasetOut):
    versions: list[VersionOut]


class IngestionJobOut(Output):
    id: uuid.UUID
    status: IngestionStatus
    created_at: dt.datetime


class UploadOut(BaseModel):
    dataset: DatasetOut
    version: VersionOut
    ingestion_job: IngestionJobOut


class ProfileOut(Output):
    dataset_version_id: uuid.UUID
    row_count: int
    column_count: int
    missing_cells: int
    duplicate_rows: int
    memory_bytes: int | None
    column_stats: dict[str, Any]
    correlations: dict[str, Any] | None
    warnings: list[Any]
    created_at: dt.datetime


# --- workflows -------------------------------------------------------------------------------
class WorkflowIn(Input):
    name: Name
    description: LongText | None = None
    definition: WorkflowDefinition = Field(default_factory=WorkflowDefinition)


class WorkflowPatch(Input):
    name: Name | None = None
    description: LongText | None = None
    definition: WorkflowDefinition | None = None


class WorkflowOut(Output):
    id: uuid.UUID
    name: str
    description: str | None
    definition: dict[str, Any]
    is_deleted: bool
    deleted_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    #: What a run of the current definition costs, in credits.
    estimated_credits: int


class RunIn(Input):
    #: Queue priority: higher runs first.
    priority: StrictInt = Field(default=0, ge=0, le=100)


# --- jobs --------------------------------------------------------------------------------------
class JobNodeOut(Output):
    node_id: str
    node_type: NodeType
    status: NodeStatus
    output_data: dict[str, Any] | None
    error_message: str | None
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    #: How far the node is, 0..1 (0 until it runs, 1 once it succeeded).
    progress: float = 0.0
    #: What a running node is doing now (null otherwise).
    progress_message: str | None = None


class JobOut(Output):
    id: uuid.UUID
    status: JobStatus
    credit_cost: int
    priority: int
    workflow_snapshot_id: uuid.UUID
    workflow_id: uuid.UUID | None = None
    error_message: str | None
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    cancel_requested_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    #: ``"worker"`` when the job is queued and no worker is alive to take it: it
    #: waits until one starts. None otherwise.
    waiting_for: Literal["worker"] | None = None


class JobDetail(JobOut):
    results: dict[str, Any] | None
    nodes: list[JobNodeOut]


class LogLineOut(Output):
    """One line of a job's log."""

    #: The line's number within its job: 1, 2, 3...
    seq: int
    created_at: dt.datetime
    level: LogLevel
    #: The workflow node the line is about, if any.
    node_id: str | None
    message: str


class RunOut(BaseModel):
    job: JobOut
    #: The caller's balance after the charge.
    balance: int


class CancelOut(BaseModel):
    job: JobOut
    #: Credits given back now (a queued job); 0 for a running one, which the worker
    #: stops and settles.
    refunded_credits: int


# --- models ------------------------------------------------------------------------------------
class ModelOut(Output):
    id: uuid.UUID
    name: str
    algorithm: str
    problem_type: ProblemType
    job_id: uuid.UUID | None
    is_deployed: bool
    has_artifact: bool = False
    created_at: dt.datetime
    updated_at: dt.datetime


class ModelDetail(ModelOut):
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]


# --- credits -----------------------------------------------------------------------------------
class BalanceOut(BaseModel):
    balance: int


class TransactionOut(Output):
    id: uuid.UUID
    type: TransactionType
    amount: int
    balance_after: int
    description: str | None
    job_id: uuid.UUID | None
    package_id: uuid.UUID | None
    created_at: dt.datetime


class PackageOut(Output):
    id: uuid.UUID
    name: str
    credits: int
    price_cents: int
    tier_restriction: CreditTierRestriction


class PurchaseIn(Input):
    package_id: uuid.UUID


class PurchaseOut(BaseModel):
    transaction: TransactionOut
    balance: int


class WebhookOut(BaseModel):
    event_id: str
    #: processed (credits moved), duplicate (this event was seen before),
    #: duplicate_payment (another event already credited its payment: nothing
    #: credited), ignored (not handled), or failed (recorded; Stripe need not retry)
    status: Literal["processed", "duplicate", "duplicate_payment", "ignored", "failed"]


# --- experiments -------------------------------------------------------------------------------
class ExperimentIn(Input):
    name: Name
    description: LongText | None = None
    problem_type: ProblemType | None = None
    dataset_id: uuid.UUID | None = None
    #: The metric runs are ranked by, e.g. "accuracy" or "rmse".
    primary_metric: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None

    @model_validator(mode="after")
    def _metric_text(self) -> ExperimentIn:
        if self.primary_metric is not None:
            no_nul(self.primary_metric)
        return self


class ExperimentOut(Output):
    id: uuid.UUID
    name: str
    description: str | None
    problem_type: ProblemType | None
    dataset_id: uuid.UUID | None
    primary_metric: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class ExperimentRunIn(Input):
    model_id: uuid.UUID | None = None
    job_id: uuid.UUID | None = None
    name: ShortText | None = None
    notes: LongText | None = None

    @model_validator(mode="after")
    def _something(self) -> ExperimentRunIn:
        if self.model_id is None and self.job_id is None:
            raise ValueError("give model_id, job_id or both")
        return self


class ExperimentRunOut(Output):
    id: uuid.UUID
    job_id: uuid.UUID | None
    model_id: uuid.UUID | None
    name: str | None
    notes: str | None
    metrics: dict[str, Any] | None
    created_at: dt.datetime
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


class Comparison(BaseModel):
    #: The metric ranked by (the experiment's primary metric, if set).
    metric: str | None
    #: "max" when higher is better, "min" for losses and errors.
    direction: Literal["max", "min"] | None
    #: Run ids, best first; runs without the metric are left out.
    ranking: list[uuid.UUID]
    best_run_id: uuid.UUID | None
    #: Every numeric metric any run has.
    metrics: list[str]


class ExperimentDetail(ExperimentOut):
    runs: list[ExperimentRunOut]
    comparison: Comparison


# --- tutorials ---------------------------------------------------------------------------------
class ProgressIn(Input):
    current_step: StrictInt = Field(ge=0, le=10_000)
    completed_steps: list[Annotated[StrictInt, Field(ge=0, le=10_000)]] = Field(
        default_factory=list, max_length=1000
    )
    is_completed: StrictBool = False


class ProgressOut(Output):
    tutorial_id: uuid.UUID
    current_step: int
    completed_steps: list[int]
    is_completed: bool
    started_at: dt.datetime
    completed_at: dt.datetime | None
    updated_at: dt.datetime


class TutorialOut(Output):
    id: uuid.UUID
    slug: str
    title: str
    description: str | None
    difficulty: TutorialDifficulty
    steps: list[Any]
    estimated_minutes: int | None
    sort_order: int
    progress: ProgressOut | None = None


# --- health ------------------------------------------------------------------------------------
class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready", "not_ready"]
    database: bool
    revision: list[str]
    head: list[str]
    reason: str | None = None
    #: Workers alive now (heartbeat within two of their leases); None when the
    #: database could not be asked. 0 does not make the API unready: it serves, and
    #: queued work waits until a worker starts (see ``warnings``).
    workers: int | None = None
    #: What an operator should know that does not stop the API from serving.
    warnings: list[str] = Field(default_factory=list)


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
    name: Name
    description: Description | None = None
    model_card: ModelCard | None = None
    license: License | None = None
    tags: Tags = Field(default_factory=dict)
    visibility: ModelVisibility = ModelVisibility.PRIVATE


class RegisteredModelPatch(Input):
    """Only the fields given change; ``null`` clears description, model_card or license."""

    name: Name | None = None
    description: Description | None = None
    model_card: ModelCard | None = None
    license: License | None = None
    #: Replaces every tag.
    tags: Tags | None = None
    visibility: ModelVisibility | None = None

    @model_validator(mode="after")
    def _not_null(self) -> RegisteredModelPatch:
        for name in ("name", "tags", "visibility"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class RegisteredModelOut(Output):
    id: uuid.UUID
    #: The owner.
    user_id: uuid.UUID
    name: str
    description: str | None
    license: str | None
    tags: dict[str, str]
    visibility: ModelVisibility
    #: The highest version number given (0: none yet).
    last_version_number: int
    created_at: dt.datetime
    updated_at: dt.datetime


class RegisteredModelDetail(RegisteredModelOut):
    model_card: str | None
    #: Alias -> version number.
    aliases: dict[str, int]
    #: What the caller may do: "owner" (everything), or the highest of deploy, download, read.
    access: Literal["owner", "deploy", "download", "read"]


class RegisterVersionIn(Input):
    #: A trained model of the caller's (GET /v1/models).
    model_id: uuid.UUID
    description: Description | None = None
    primary_metric: MetricName | None = None
    #: Aliases to point at the new version (moved from another version if set).
    aliases: list[AliasName] = Field(default_factory=list, max_length=10)


class MetricOut(Output):
    metric: str
    split: str
    value: float


class ModelVersionOut(Output):
    id: uuid.UUID
    registered_model_id: uuid.UUID
    registered_model_name: str
    version: int
    model_id: uuid.UUID
    status: ModelVersionStatus
    description: str | None
    primary_metric: str | None
    download_count: int
    metrics: list[MetricOut]
    aliases: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime


class LineageEdgeOut(BaseModel):
    #: 1 for the edges of the version asked about, 2 for theirs...
    depth: int
    child_version_id: uuid.UUID
    relation: LineageRelation
    parent_kind: Literal["model_version", "dataset_version", "workflow_snapshot", "job"]
    parent_id: uuid.UUID


class LineageSummary(BaseModel):
    #: What made this version (one step up).
    parents: list[LineageEdgeOut]
    #: How many versions the caller may read were retrained or tuned from this one.
    derived_versions: int


class ModelVersionDetail(ModelVersionOut):
    signature: dict[str, Any]
    input_example: list[Any] | None
    environment: dict[str, Any]
    lineage: LineageSummary


class ModelVersionPatch(Input):
    description: Description | None = None
    primary_metric: MetricName | None = None
    #: ready, or archived (kept for the record); either way back.
    status: ModelVersionStatus | None = None

    @model_validator(mode="after")
    def _not_null(self) -> ModelVersionPatch:
        if "status" in self.model_fields_set and self.status is None:
            raise ValueError("status cannot be null")
        return self


class LineageOut(BaseModel):
    version_id: uuid.UUID
    direction: Literal["up", "down"]
    depth: int
    edges: list[LineageEdgeOut]


class AliasIn(Input):
    version: StrictInt = Field(ge=1, le=INT32_MAX)


class AliasOut(BaseModel):
    alias: str
    version: int
    model_version_id: uuid.UUID
    updated_at: dt.datetime


class PermissionIn(Input):
    """The user by ``user_id`` or by ``email`` (exactly one)."""

    user_id: uuid.UUID | None = None
    email: Email | None = None
    permission: ModelPermission

    @model_validator(mode="after")
    def _one_user(self) -> PermissionIn:
        if (self.user_id is None) == (self.email is None):
            raise ValueError("give user_id or email (exactly one)")
        return self


class PermissionOut(Output):
    #: The grantee (ids only: the list does not disclose email addresses).
    user_id: uuid.UUID
    permission: ModelPermission
    granted_by: uuid.UUID | None


# --- identity: login, sessions, passwords, admin ---------------------------------------------
#: A password as sent: bounded here; its rules (length, no NUL) are
#: database.identity.check_password_rules' (422 ``invalid_password``).
PasswordText = Annotated[str, StringConstraints(max_length=1024)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(no_nul)]


class LoginIn(Input):
    email: Email
    password: PasswordText


class LoginOut(BaseModel):
    #: The session token (``ams_...``): send it as ``Authorization: Bearer``. Shown once.
    token: str
    expires_at: dt.datetime
    session_id: uuid.UUID


class PasswordIn(Input):
    new_password: PasswordText
    #: Required once the account has a password.
    current_password: PasswordText | None = None


class PasswordChanged(BaseModel):
    #: The caller's other sessions, revoked by the change.
    sessions_revoked: int


class VerifyEmailIn(Input):
    token: Token


class VerifiedOut(BaseModel):
    user_id: uuid.UUID
    email_verified: bool


class RestoreIn(Input):
    email: Email
    password: PasswordText


class SessionOut(Output):
    id: uuid.UUID
    user_agent: str | None
    ip: str | None
    created_at: dt.datetime
    last_seen_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    #: The session making this request.
    current: bool = False


class AdminUserOut(UserOut):
    role: UserRole
    is_active: bool
    is_deleted: bool
    deleted_at: dt.datetime | None
    can_upload: bool
    can_train: bool
    can_deploy: bool
    can_download: bool
    can_buy: bool


class AdminUserPatch(Input):
    tier: UserTier | None = None
    role: UserRole | None = None
    is_active: StrictBool | None = None
    can_upload: StrictBool | None = None
    can_train: StrictBool | None = None
    can_deploy: StrictBool | None = None
    can_download: StrictBool | None = None
    can_buy: StrictBool | None = None


class CreditAdjustmentIn(Input):
    #: Credits to add (negative: to remove); never zero.
    amount: Annotated[StrictInt, Field(ge=-INT32_MAX, le=INT32_MAX)]
    reason: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
        AfterValidator(no_nul),
    ]
    #: The same key again returns the first adjustment (409 if it differs).
    idempotency_key: Name


class CreditAdjustmentOut(Output):
    id: uuid.UUID
    user_id: uuid.UUID
    amount: int
    balance_after: int
    description: str | None
    actor: str | None
    created_at: dt.datetime
