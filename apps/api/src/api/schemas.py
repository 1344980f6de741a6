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
    FileFormat,
    IngestionStatus,
    JobStatus,
    LogLevel,
    NodeStatus,
    NodeType,
    ProblemType,
    TransactionType,
    TutorialDifficulty,
    UserTier,
)
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


class ApiKeyOut(Output):
    id: uuid.UUID
    name: str
    #: The key's first characters, to tell keys apart.
    prefix: str
    scopes: list[str]
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None
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
