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
    "uq_credit_transactions_job_id_consumption": JobAlreadyCharged,
    "uq_credit_transactions_job_id_refund": JobAlreadyRefunded,
    "uq_credit_transactions_stripe_payment_id": DuplicatePayment,
    "uq_credit_transactions_idempotency_key": DuplicateAdjustment,
    "ck_credit_transactions_amount_sign": InvalidCreditAmount,
    "uq_registered_models_user_id_name": RegisteredModelNameTaken,
    "uq_model_versions_model_id_user_id": ModelAlreadyRegistered,
    "fk_model_aliases_model_version_id_model_versions": AliasVersionMismatch,
    "ck_model_aliases_alias_name": InvalidAlias,
    "ck_model_version_metrics_value_finite": InvalidMetric,
    "ck_model_version_metrics_metric_name": InvalidMetric,
    "ck_model_version_metrics_split_name": InvalidMetric,
    "ck_model_lineage_one_parent": InvalidLineage,
    "ck_model_lineage_relation_parent": InvalidLineage,
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
