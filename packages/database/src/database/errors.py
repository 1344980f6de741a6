"""The database's refusals as named Python exceptions.

Every rule the triggers enforce raises its own SQLSTATE (class ``ML``, listed in
``SQLSTATES``); declarative rules are told apart by constraint name. Engines made
by ``database.session`` translate them as they are raised, from a flush, a commit
or a raw ``execute``; ``translate()`` does the same for any DBAPI or SQLAlchemy
error (a plain psycopg connection included).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.exc import DBAPIError

from database.types import InvalidDatetime


class DatabaseError(Exception):
    """Base of every exception this package raises for a database refusal."""

    #: True when running the same transaction again may succeed.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        constraint: str | None = None,
        detail: str | None = None,
        orig: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.constraint = constraint
        self.detail = detail
        self.orig = orig


class RuleViolation(DatabaseError):
    """A rule of the schema refused the statement."""


# --- rules enforced by trigger functions (sql/triggers/*.sql) ------------------
class InsufficientCredits(RuleViolation):
    """A ledger entry would take a balance below zero (ML001)."""

    @property
    def balance(self) -> int | None:
        return _detail_int(self.detail, "balance")

    @property
    def amount(self) -> int | None:
        return _detail_int(self.detail, "amount")


class LedgerImmutable(RuleViolation):
    """UPDATE, DELETE or TRUNCATE of credit_transactions (ML002)."""


class DerivedColumnReadOnly(RuleViolation):
    """A direct write to a trigger-maintained users column (ML003)."""


class RefundExceedsCharge(RuleViolation):
    """A refund of an uncharged job, or of more than it was charged (ML004)."""


class UserDeleted(RuleViolation):
    """A soft-deleted user tried to buy credits (ML005)."""


class SnapshotImmutable(RuleViolation):
    """An UPDATE of a workflow snapshot (ML006)."""


class PackageUnavailable(RuleViolation):
    """A purchase of an inactive credit package (ML007)."""


class PackageTierRestricted(RuleViolation):
    """A purchase of a package the user's tier may not buy (ML008)."""


class PurchaseAmountMismatch(RuleViolation):
    """A purchase whose amount is not its package's credits (ML009)."""


class InvalidStatusTransition(RuleViolation):
    """A status change of a job, job node or ingestion job that its life does not
    allow (ML010; sql/triggers/jobs.sql), e.g. a finished job started again."""

    @property
    def table(self) -> str | None:
        return _detail_word(self.detail, "table")

    @property
    def from_status(self) -> str | None:
        return _detail_word(self.detail, "from")

    @property
    def to_status(self) -> str | None:
        return _detail_word(self.detail, "to")


class VersionCounterDecrease(RuleViolation):
    """A write that lowers ``datasets.last_version_number`` (ML011): a version number,
    once given, is never given again."""


class PurchaseUnpaid(RuleViolation):
    """A purchase that names no package or no payment reference (ML020)."""


class AdjustmentNotAllowed(RuleViolation):
    """An adjustment written by a role that is neither the owner nor an operator
    calling ``public.credit_adjust`` (ML021): the applications' role, for one."""


class SizeReadOnly(RuleViolation):
    """A stored size (a version's or a model's bytes) changed once set (ML022)."""


class RegistryCounterDecrease(RuleViolation):
    """A write that lowers ``registered_models.last_version_number`` (ML060): a model
    version's number, once given, is never given again."""


class ModelRecordImmutable(RuleViolation):
    """A change of a trained model's recorded signature, input example or
    environment (ML070): written once, with the model."""


class ModelVersionImmutable(RuleViolation):
    """An UPDATE of a model version's number, registered model, trained model or owner
    (ML061)."""


class DownloadsAppendOnly(RuleViolation):
    """UPDATE, DELETE or TRUNCATE of ``model_downloads`` (ML062)."""


class DownloadCountReadOnly(RuleViolation):
    """A direct write to ``model_versions.download_count`` (ML063)."""


class OwnerPermission(RuleViolation):
    """A permission granted to a registered model's own owner (ML064)."""


class LineageCycle(RuleViolation):
    """A lineage edge that would make a model version its own ancestor (ML065)."""


class RegisteredModelOwnerImmutable(RuleViolation):
    """An UPDATE of a registered model's owner (ML066)."""


# --- identity (sql/triggers/identity.sql, database/identity.py) --------------------------
class IdentityRuleViolation(RuleViolation):
    """A change of an account's privileges that its actor may not make."""


class OwnPrivileges(IdentityRuleViolation):
    """A user changing their own role, permissions, activity, tier or credits (ML100)."""


class AdminRequired(IdentityRuleViolation):
    """A change of another user's privileges by an actor who is not an active admin
    (ML101)."""


class ActorRequired(IdentityRuleViolation):
    """A change of privileges with no actor set (``automl.actor``'s user) by a role that
    is neither the schema's owner nor an operator: the apps' role (ML102)."""


class SessionImmutable(RuleViolation):
    """A session's owner, token or creation changed, a revocation undone or moved, or its
    life lengthened (ML103)."""


class AuthenticationFailed(DatabaseError):
    """Wrong email or password, or an unknown, used or expired token (the message does
    not say which)."""


class AccountDeleted(AuthenticationFailed):
    """The right password of a deleted account: restore it first."""


class AccountInactive(DatabaseError):
    """A deactivated account (``users.is_active`` false): an admin's decision."""


class SessionRefused(DatabaseError):
    """A session token that is unknown, revoked or expired (``code`` says which)."""

    def __init__(self, message: str, *, code: str = "invalid_session") -> None:
        super().__init__(message)
        self.code = code


class AccountLocked(DatabaseError):
    """Too many attempts: retry after ``retry_after`` seconds (an abuse limit)."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidPassword(DatabaseError):
    """A password the rules refuse (too short, too long, a NUL character)."""


class PasswordRequired(DatabaseError):
    """The current password is missing or wrong, or the account has none."""


class InferenceRequestsAppendOnly(RuleViolation):
    """UPDATE, DELETE or TRUNCATE of ``inference_requests`` or a partition (ML085)."""


class UsageAppendOnly(RuleViolation):
    """UPDATE, DELETE or TRUNCATE of ``usage_events`` or ``usage_charges`` (ML086)."""


class PaymentRequired(RuleViolation):
    """``metering.admit`` (``public.usage_admit``): the user's balance, less what they
    owe and what is held for requests in flight, cannot pay for the request's rows
    (ML087; HTTP 402). Amounts in micro-credits (10**-6 credit)."""

    @property
    def needed_micro(self) -> int:
        return _detail_int(self.detail, "needed") or 0

    @property
    def available_micro(self) -> int:
        return _detail_int(self.detail, "available") or 0


class QuotaExceeded(RuleViolation):
    """``metering.admit`` (``public.usage_admit``): an API key's rate limit or monthly
    row quota is spent (ML088; HTTP 429 with ``Retry-After: retry_after`` seconds).
    ``quota`` names it (``rate_limit_per_minute``, ``monthly_row_quota``)."""

    @property
    def retry_after(self) -> int:
        return max(1, _detail_int(self.detail, "retry_after") or 1)

    @property
    def quota(self) -> str | None:
        return _detail_word(self.detail, "quota")

    @property
    def limit(self) -> int | None:
        return _detail_int(self.detail, "limit")


class MeteredUserNotFound(RuleViolation):
    """``public.usage_admit`` for a user that does not exist (ML089)."""


class DeployedFlagReadOnly(RuleViolation):
    """A direct write to ``models.is_deployed`` (ML080): it follows the active
    deployments (sql/triggers/deployments.sql)."""


class DeploymentStatusTransition(InvalidStatusTransition):
    """A deployment status change its life does not allow (ML081), e.g. a stopped
    deployment made active again."""


class DeploymentTargetImmutable(RuleViolation):
    """An UPDATE of a deployment's owner, version, registered model or alias (ML082)."""


class AuditAppendOnly(RuleViolation):
    """UPDATE, DELETE or TRUNCATE of ``audit_events`` or one of its partitions (ML105):
    old months leave by dropping whole partitions (``automl-db clean --what audit``)."""


class InvalidAuditActor(RuleViolation):
    """A field of the ``automl.actor`` setting that is not a UUID (the client IP's: not
    an IP address): the audited statement is refused rather than audited wrongly
    (ML106). ``field`` names it (``actor_user_id``, ``client_ip``...)."""

    @property
    def setting(self) -> str | None:
        match = re.search(r"\bsetting=([\w.]+)", self.detail or "")
        return match.group(1) if match else None

    @property
    def field(self) -> str | None:
        match = re.search(r"\bfield=(\w+)", self.detail or "")
        return match.group(1) if match else None


class AuditRedactionRefused(RuleViolation):
    """``audit_redact_user`` of a user who is not purged (ML107)."""


class TargetNotAColumn(RuleViolation):
    """A dataset's target column that is not a column of its current version (ML115)."""


class IgnoredColumnsInvalid(RuleViolation):
    """A dataset's ignored columns that are not columns of its current version, or
    that include the target (ML116)."""


class RowResultsWriteOnce(RuleViolation):
    """An UPDATE of ``evaluation_row_results`` (ML117)."""


class EvaluationRunWriteOnce(RuleViolation):
    """An UPDATE of what an evaluation run evaluated, or of its results once written
    (ML118)."""


# --- declarative constraints -------------------------------------------------------
class ConstraintViolation(RuleViolation):
    """A constraint of the schema refused the row (SQLSTATE class 23)."""


class AlreadyExists(ConstraintViolation):
    """A unique constraint (23505)."""


class ReferenceViolation(ConstraintViolation):
    """A foreign key (23503): a missing parent, or a row still referenced."""


class InvalidValue(ConstraintViolation):
    """A check constraint (23514)."""


class InvalidAuditEvent(InvalidValue):
    """``audit_record`` (``database.audit.record``) given a malformed action or
    entity type, or a detail that is not a JSON object of at most 4 KiB (ML108): the
    rule ``audit_events``' checks enforced before c17e00000001. ``field`` names it."""

    @property
    def field(self) -> str | None:
        match = re.search(r"\bfield=(\w+)", self.detail or "")
        return match.group(1) if match else None


class MissingValue(ConstraintViolation):
    """A NOT NULL column left empty (23502)."""


class JobAlreadyCharged(AlreadyExists):
    """A job may be charged once."""


class JobAlreadyRefunded(AlreadyExists):
    """A job may be refunded once."""


class DuplicatePayment(AlreadyExists):
    """A Stripe payment may credit the ledger once."""


class DuplicateAdjustment(AlreadyExists):
    """An adjustment's idempotency key may be used once."""


class PaymentReferenceConflict(DuplicatePayment):
    """A payment reference already credited another user or package."""


class InvalidCreditAmount(InvalidValue):
    """Purchases and refunds are positive, charges negative, adjustments non-zero."""


class UsageAlreadyRecorded(AlreadyExists):
    """A usage event's idempotency key was recorded already."""


class RegisteredModelNameTaken(AlreadyExists):
    """The owner has a registered model of this name already."""


class ModelAlreadyRegistered(AlreadyExists):
    """The trained model is a version already (one version per trained model)."""


class AliasVersionMismatch(ReferenceViolation):
    """An alias pointing at a version of another registered model, or at none."""


class InvalidAlias(InvalidValue):
    """An alias that is not a lowercase word (``^[a-z][a-z0-9_-]{0,62}$``)."""


class InvalidMetric(InvalidValue):
    """A metric that is not finite, or a bad metric or split name."""


class InvalidLineage(InvalidValue):
    """A lineage edge whose relation does not fit its parent, or with no single parent."""


# --- refusals of database.credits and database.lifecycle, checked before any write ----
class TrialNumberTaken(AlreadyExists):
    """An automl search's experiment already has a run of this trial number."""


class InvalidTrial(InvalidValue):
    """A trial's number below 1, a negative duration, or fold scores that are not 1..20
    finite numbers in one dimension (``experiment_runs`` checks)."""


class UserNotFound(ReferenceViolation):
    """No user has this id."""


class PackageNotFound(ReferenceViolation):
    """No credit package has this id."""


class JobNotFound(ReferenceViolation):
    """No job has this id."""


class RegisteredModelNotFound(ReferenceViolation):
    """No registered model has this id (``database.registry``)."""


class ModelVersionNotFound(ReferenceViolation):
    """No version of this registered model has this number or id (``database.registry``)."""


class TrainedModelNotFound(ReferenceViolation):
    """The trained model does not exist or is not the registered model's owner's
    (``database.registry.register_version``)."""


class RegistryForbidden(RuleViolation):
    """The caller may read the registered model but not do this (change it, its
    versions, aliases or permissions: the owner's alone; ``database.registry.authorize``).
    Refused before any write."""


class GranteeNotFound(ReferenceViolation):
    """A permission names a user that does not exist, or a deleted one
    (``database.registry.find_grantee``)."""

    def __init__(self, message: str, *, who: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.who = who


class InvalidFilter(InvalidValue):
    """A search filter or order that does not parse (``database.registry.parse_filter``):
    ``token`` is the text refused, ``position`` its offset in the string (from 0)."""

    def __init__(self, message: str, *, token: str = "", position: int = 0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.token = token
        self.position = position


class DeploymentNotFound(ReferenceViolation):
    """No deployment of this id is the caller's (``database.deployments``)."""


class DeploymentNameTaken(AlreadyExists):
    """The user has a deployment of this name already."""


class InvalidDeploymentConfig(InvalidValue):
    """A deployment's config that is not ``{"max_batch_rows", "timeout_ms"}`` in range."""


class DeploymentTargetInvalid(ConstraintViolation):
    """A deployment that names both a version and an alias, or neither."""


class DeploymentNotServing(RuleViolation):
    """A prediction or batch asked of a deployment that is not active, or whose alias
    points at no version now (``database.deployments``)."""


class DatasetVersionNotReady(RuleViolation):
    """A batch prediction of a dataset version that is not the user's or not ingested."""


class JobNotOwned(JobNotFound):
    """The job belongs to another user than the one named."""


class JobNotCharged(RefundExceedsCharge):
    """A refund of a job that was never charged."""


class JobAlreadyFinished(RuleViolation):
    """A cancel of a job that has already ended (``database.jobs.cancel_job``)."""

    @property
    def status(self) -> str | None:
        return _detail_word(self.detail, "status")


class UserPurged(RuleViolation):
    """The user was purged: only the tombstone and its ledger remain."""


class RestoreWindowExpired(RuleViolation):
    """A restore after the retention window (the data may already be purged)."""


class PermissionDenied(DatabaseError):
    """The role lacks the privilege (42501): see ``automl-db grant``."""


class RoleNotFound(DatabaseError):
    """``automl-db grant`` names a role that does not exist (pass ``--create``)."""


class UnsafeRole(DatabaseError):
    """``automl-db grant`` refuses a superuser, the schema owner or a table owner."""


# --- transient conditions ------------------------------------------------------------
class RetryableError(DatabaseError):
    retryable = True


class LockTimeout(RetryableError):
    """A row lock was not granted within ``lock_timeout`` (55P03)."""


class SerializationConflict(RetryableError):
    """A serialization failure or a deadlock (40001, 40P01)."""


class ConnectionLost(RetryableError):
    """The server ended the session (57P01-57P03): the pool drops the connection."""


class StatementTimeout(DatabaseError):
    """A statement ran longer than ``statement_timeout`` (57014)."""


# --- billing (sql/triggers/billing.sql) ---------------------------------------------
class PriceItemImmutable(RuleViolation):
    """An UPDATE or DELETE of a price item whose book is in force or past (ML090):
    changing prices is a new price book."""


class PriceBookImmutable(RuleViolation):
    """A change to a price book in force or past other than closing it from now on,
    or its DELETE (ML091)."""


class JobPriceImmutable(RuleViolation):
    """An UPDATE of the price lines a job was priced with (ML092)."""


class NoPriceBook(RuleViolation):
    """No price book in force for the tier, or it has no item for an sku (ML093)."""


class UsageChargeUnaccounted(RuleViolation):
    """A charge of usage in the ledger (a consumption naming no job) that no
    ``usage_charges`` row accounts for at commit (ML094): usage is charged by
    ``database.metering.charge_usage``, which writes both."""


class JobOwnerImmutable(RuleViolation):
    """An UPDATE of a job's owner (``jobs.user_id``, ML096): the ledger's charges and
    refunds of a job are its owner's, for good (c16e00000001)."""


class PriceBookOverlap(ConstraintViolation):
    """Two price books of one tier whose spans overlap (23P01, the exclusion
    constraint of the tier)."""


SQLSTATES: dict[str, type[DatabaseError]] = {
    "ML001": InsufficientCredits,
    "ML002": LedgerImmutable,
    "ML003": DerivedColumnReadOnly,
    "ML004": RefundExceedsCharge,
    "ML005": UserDeleted,
    "ML006": SnapshotImmutable,
    "ML007": PackageUnavailable,
    "ML008": PackageTierRestricted,
    "ML009": PurchaseAmountMismatch,
    "ML010": InvalidStatusTransition,
    "ML011": VersionCounterDecrease,
    "ML020": PurchaseUnpaid,
    "ML021": AdjustmentNotAllowed,
    "ML022": SizeReadOnly,
    "ML060": RegistryCounterDecrease,
    "ML061": ModelVersionImmutable,
    "ML062": DownloadsAppendOnly,
    "ML063": DownloadCountReadOnly,
    "ML064": OwnerPermission,
    "ML065": LineageCycle,
    "ML066": RegisteredModelOwnerImmutable,
    "ML100": OwnPrivileges,
    "ML101": AdminRequired,
    "ML102": ActorRequired,
    "ML103": SessionImmutable,
    "ML070": ModelRecordImmutable,
    "ML085": InferenceRequestsAppendOnly,
    "ML086": UsageAppendOnly,
    "ML087": PaymentRequired,
    "ML088": QuotaExceeded,
    "ML089": MeteredUserNotFound,
    "ML080": DeployedFlagReadOnly,
    "ML081": DeploymentStatusTransition,
    "ML082": DeploymentTargetImmutable,
    "ML090": PriceItemImmutable,
    "ML091": PriceBookImmutable,
    "ML092": JobPriceImmutable,
    "ML093": NoPriceBook,
    "ML094": UsageChargeUnaccounted,
    # A ledger entry naming another user's job (c16e00000001; the composite foreign
    # key refused it before, 23503): like credits.charge_job(user=...) does.
    "ML095": JobNotOwned,
    "ML096": JobOwnerImmutable,
    "23P01": PriceBookOverlap,
    "ML105": AuditAppendOnly,
    "ML106": InvalidAuditActor,
    "ML107": AuditRedactionRefused,
    "ML108": InvalidAuditEvent,
    "ML115": TargetNotAColumn,
    "ML116": IgnoredColumnsInvalid,
    "ML117": RowResultsWriteOnce,
    "ML118": EvaluationRunWriteOnce,
    "23505": AlreadyExists,
    "23503": ReferenceViolation,
    "23001": ReferenceViolation,  # ON DELETE RESTRICT
    "23514": InvalidValue,
    "23502": MissingValue,
    "55P03": LockTimeout,
    "40001": SerializationConflict,
    "40P01": SerializationConflict,
    "57014": StatementTimeout,
    "57P01": ConnectionLost,
    "57P02": ConnectionLost,
    "57P03": ConnectionLost,
    "42501": PermissionDenied,
}

CONSTRAINTS: dict[str, type[DatabaseError]] = {
    # One index for a job's charge and refund (issue 16): which one is in the detail
    # (the ledger trigger's "type=refund", the index's "Key (...)=(..., refund)").
    "uq_credit_transactions_job_id_type": JobAlreadyCharged,
    "uq_credit_transactions_stripe_payment_id": DuplicatePayment,
    "uq_credit_transactions_idempotency_key": DuplicateAdjustment,
    "ck_credit_transactions_amount_sign": InvalidCreditAmount,
    "uq_usage_events_idempotency_key": UsageAlreadyRecorded,
    "uq_registered_models_user_id_name": RegisteredModelNameTaken,
    "uq_model_versions_model_id_user_id": ModelAlreadyRegistered,
    "fk_model_aliases_model_version_id_model_versions": AliasVersionMismatch,
    "ck_model_aliases_alias_name": InvalidAlias,
    "ck_model_version_metrics_value_finite": InvalidMetric,
    "ck_model_version_metrics_metric_name": InvalidMetric,
    "ck_model_version_metrics_split_name": InvalidMetric,
    "ck_model_lineage_one_parent": InvalidLineage,
    "ck_model_lineage_relation_parent": InvalidLineage,
    "uq_deployments_user_id_name": DeploymentNameTaken,
    "ck_deployments_config_shape": InvalidDeploymentConfig,
    "ck_deployments_one_target": DeploymentTargetInvalid,
    "uq_experiment_runs_experiment_id_trial_number": TrialNumberTaken,
    "ck_experiment_runs_trial_number_positive": InvalidTrial,
    "ck_experiment_runs_duration_not_negative": InvalidTrial,
    "ck_experiment_runs_fold_scores_finite": InvalidTrial,
}


def _detail_int(detail: str | None, key: str) -> int | None:
    match = re.search(rf"\b{key}=(-?\d+)", detail or "")
    return int(match.group(1)) if match else None


def _detail_word(detail: str | None, key: str) -> str | None:
    match = re.search(rf"\b{key}=(\w+)", detail or "")
    return match.group(1) if match else None


def translate(exc: BaseException) -> DatabaseError | None:
    """The named exception for a DBAPI or SQLAlchemy error, or None if it has none."""
    orig: Any = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, InvalidDatetime):
        # Refused by UtcDateTime before the statement was sent: a bad value, like 23514.
        return InvalidValue(str(orig), orig=orig)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None:
        return None
    diag = getattr(orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    detail = getattr(diag, "message_detail", None)
    message = getattr(diag, "message_primary", None) or str(orig).splitlines()[0]
    cls = CONSTRAINTS.get(constraint or "") or SQLSTATES.get(sqlstate)
    if constraint == "uq_credit_transactions_job_id_type" and "refund" in (detail or ""):
        cls = JobAlreadyRefunded
    if cls is None:
        return None
    return cls(message, sqlstate=sqlstate, constraint=constraint, detail=detail, orig=orig)


def _handle_error(context: ExceptionContext) -> None:
    if context.is_pre_ping:
        # The pool's ping of a connection taken from it. SQLAlchemy replaces a dead
        # connection there, silently, unless a handler raises: translating a
        # server's "terminating connection" (57P01, after a restart) into
        # ConnectionLost here would fail one request per pooled connection.
        return
    translated = translate(context.original_exception)
    if translated is not None:
        raise translated from context.sqlalchemy_exception


def install(engine: Engine) -> Engine:
    """Make ``engine`` raise this module's exceptions (idempotent)."""
    # A marker on the dialect (where handle_error listeners live), not
    # event.contains(): the event registry is keyed by id(), and a new dialect can
    # reuse a collected one's id, so contains() could answer yes for an engine
    # that has no listener.
    dialect = engine.dialect
    if not getattr(dialect, "_automl_errors_installed", False):
        event.listen(engine, "handle_error", _handle_error)
        dialect._automl_errors_installed = True  # type: ignore[attr-defined]
    return engine
