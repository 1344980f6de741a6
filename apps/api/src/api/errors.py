"""Every error the API answers, in one shape and in one place.

A refusal is JSON ``{"error": {"code", "message", "details"}}`` with a stable
``code``. Routes raise :class:`ApiError`; the package's exceptions
(``database.errors``) are mapped to statuses here, by :data:`DATABASE_ERRORS`, and
nowhere else. Request validation is 422 ``validation_error``; an unknown route 404
``not_found``. Only a bug is a 500 (``internal_error``), and it tells nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, ConfigDict
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from database import errors as db

log = logging.getLogger("api")


class ApiError(Exception):
    """An answer other than success: status, stable code, message, details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})


def not_found(what: str) -> ApiError:
    """404: missing, or another user's (the two answer the same)."""
    return ApiError(404, "not_found", f"{what} not found")


# --- the response shape, for OpenAPI -------------------------------------------------------
class ErrorInfo(BaseModel):
    """What went wrong."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    code: str
    """A stable machine-readable code, e.g. not_found or insufficient_credits."""
    message: str
    """A sentence for people."""
    details: dict[str, Any] = {}
    """More about it (depends on the code), e.g. the validation errors or the limit reached."""


class ErrorBody(BaseModel):
    """Every error answer of the API."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    error: ErrorInfo
    """The error."""


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: these statuses answer an :class:`ErrorBody`."""
    described = {
        400: "Malformed request",
        401: "Missing, unknown, revoked or expired API key",
        402: "Not enough credits",
        403: "The key lacks the scope, or a tier limit is reached",
        404: "Not found (or not the caller's)",
        409: "Conflicts with the current state",
        413: "Too large, or over the storage quota",
        415: "Unsupported content type",
        422: "Invalid input",
        429: "Too many requests (an abuse limit or a quota of the API key); retry after"
        " Retry-After seconds",
        503: "Temporarily unavailable; retry",
        504: "Took longer than allowed (a deployment's timeout_ms)",
    }
    return {s: {"model": ErrorBody, "description": described.get(s, "Error")} for s in statuses}


# --- database exceptions -> HTTP ----------------------------------------------------------
#: (status, code) per exception class; the most specific class of the exception's
#: MRO that is listed wins.
DATABASE_ERRORS: dict[type[db.DatabaseError], tuple[int, str]] = {
    db.InsufficientCredits: (402, "insufficient_credits"),
    # Metering (database.metering.admit): before the model runs.
    db.PaymentRequired: (402, "payment_required"),
    db.QuotaExceeded: (429, "quota_exceeded"),
    db.MeteredUserNotFound: (404, "not_found"),
    db.InferenceRequestsAppendOnly: (409, "append_only"),
    db.UsageAppendOnly: (409, "append_only"),
    db.UserDeleted: (403, "user_deleted"),
    db.PackageTierRestricted: (403, "package_tier_restricted"),
    db.PackageUnavailable: (409, "package_unavailable"),
    db.PurchaseAmountMismatch: (409, "purchase_amount_mismatch"),
    db.PaymentReferenceConflict: (409, "payment_conflict"),
    db.DuplicatePayment: (409, "duplicate_payment"),
    db.DuplicateAdjustment: (409, "duplicate_adjustment"),
    db.JobAlreadyCharged: (409, "job_already_charged"),
    db.JobAlreadyRefunded: (409, "job_already_refunded"),
    db.JobNotCharged: (409, "job_not_charged"),
    db.RefundExceedsCharge: (409, "refund_exceeds_charge"),
    db.UserNotFound: (404, "not_found"),
    db.PackageNotFound: (404, "not_found"),
    db.JobNotFound: (404, "not_found"),  # JobNotOwned too: another's job is a missing one
    db.UserPurged: (404, "not_found"),
    # The registry (database.registry): a model the caller may not see is a missing one.
    db.RegisteredModelNotFound: (404, "not_found"),
    db.ModelVersionNotFound: (404, "not_found"),
    db.TrainedModelNotFound: (404, "not_found"),
    db.RegistryForbidden: (403, "forbidden"),  # the caller can read it: nothing leaks
    db.GranteeNotFound: (404, "user_not_found"),
    db.InvalidFilter: (422, "invalid_filter"),
    db.RegisteredModelNameTaken: (409, "name_taken"),
    db.ModelAlreadyRegistered: (409, "model_already_registered"),
    db.AliasVersionMismatch: (409, "alias_version_mismatch"),
    db.InvalidAlias: (422, "invalid_alias"),
    db.InvalidMetric: (422, "invalid_metric"),
    db.InvalidLineage: (422, "invalid_lineage"),
    db.LineageCycle: (409, "lineage_cycle"),
    db.OwnerPermission: (409, "owner_permission"),
    db.ModelVersionImmutable: (409, "model_version_immutable"),
    db.ModelRecordImmutable: (409, "model_record_immutable"),
    db.RegisteredModelOwnerImmutable: (409, "owner_immutable"),
    db.TargetNotAColumn: (422, "target_not_a_column"),
    db.IgnoredColumnsInvalid: (422, "ignored_columns_invalid"),
    db.RowResultsWriteOnce: (409, "row_results_write_once"),
    db.EvaluationRunWriteOnce: (409, "evaluation_run_write_once"),
    db.RegistryCounterDecrease: (409, "version_counter_decrease"),
    db.DownloadsAppendOnly: (409, "downloads_append_only"),
    db.DownloadCountReadOnly: (409, "derived_column_read_only"),
    # Deployments (database.deployments, issue 14).
    db.DeploymentNotFound: (404, "not_found"),
    db.DeploymentNameTaken: (409, "name_taken"),
    db.InvalidDeploymentConfig: (422, "invalid_config"),
    db.DeploymentTargetInvalid: (422, "invalid_target"),
    db.DeploymentNotServing: (409, "deployment_not_serving"),
    db.DatasetVersionNotReady: (409, "dataset_version_not_ready"),
    db.DeployedFlagReadOnly: (409, "derived_column_read_only"),
    db.DeploymentStatusTransition: (409, "invalid_status_transition"),
    db.DeploymentTargetImmutable: (409, "deployment_target_immutable"),
    db.RestoreWindowExpired: (409, "restore_window_expired"),
    # Identity (database.identity, sql/triggers/identity.sql).
    db.OwnPrivileges: (403, "own_privileges"),
    db.AdminRequired: (403, "admin_required"),
    db.ActorRequired: (403, "actor_required"),
    db.SessionImmutable: (409, "session_immutable"),
    db.AccountDeleted: (401, "account_deleted"),
    db.AuthenticationFailed: (401, "invalid_credentials"),
    db.AccountInactive: (403, "account_inactive"),
    db.AccountLocked: (429, "too_many_requests"),
    db.InvalidPassword: (422, "invalid_password"),
    db.PasswordRequired: (403, "password_required"),
    db.SnapshotImmutable: (409, "snapshot_immutable"),
    db.InvalidStatusTransition: (409, "invalid_status_transition"),
    db.VersionCounterDecrease: (409, "version_counter_decrease"),
    db.LedgerImmutable: (409, "ledger_immutable"),
    db.PriceItemImmutable: (409, "price_item_immutable"),
    db.PriceBookImmutable: (409, "price_book_immutable"),
    db.JobPriceImmutable: (409, "job_price_immutable"),
    db.NoPriceBook: (503, "no_price_book"),
    db.UsageChargeUnaccounted: (409, "usage_charge_unaccounted"),
    db.JobOwnerImmutable: (409, "job_owner_immutable"),
    db.PriceBookOverlap: (409, "price_book_overlap"),
    db.DerivedColumnReadOnly: (409, "derived_column_read_only"),
    db.AlreadyExists: (409, "already_exists"),
    db.ReferenceViolation: (409, "reference_violation"),
    db.InvalidCreditAmount: (422, "invalid_credit_amount"),
    db.InvalidValue: (422, "invalid_value"),
    db.MissingValue: (422, "missing_value"),
    db.ConstraintViolation: (409, "constraint_violation"),
    db.RuleViolation: (409, "rule_violation"),
    db.RetryableError: (503, "busy"),  # LockTimeout, SerializationConflict, ConnectionLost
    db.StatementTimeout: (503, "timeout"),
    db.SessionRefused: (401, "invalid_session"),
    db.PermissionDenied: (500, "internal_error"),
    db.DatabaseError: (500, "internal_error"),
}

_PUBLIC_MESSAGES = {
    "insufficient_credits": "not enough credits",
    "not_found": "not found",
    "busy": "the database is busy; retry",
    "timeout": "the request took too long; retry",
    "internal_error": "internal error",
}


def from_database(exc: db.DatabaseError) -> ApiError:
    status, code = next(DATABASE_ERRORS[cls] for cls in type(exc).__mro__ if cls in DATABASE_ERRORS)
    details: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(exc, db.InsufficientCredits):
        if exc.balance is not None:
            details["balance"] = exc.balance
        if exc.amount is not None:
            details["price"] = abs(exc.amount)
    if isinstance(exc, db.PaymentRequired):
        details.update(
            {
                "needed_credits": str(exc.needed_micro / 1_000_000),
                "available_credits": str(max(exc.available_micro, 0) / 1_000_000),
            }
        )
    if isinstance(exc, db.QuotaExceeded):
        details.update({"quota": exc.quota, "limit": exc.limit, "retry_after": exc.retry_after})
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, db.InvalidStatusTransition):
        details.update({"from": exc.from_status, "to": exc.to_status})
    if isinstance(exc, db.InvalidFilter):
        details.update({"token": exc.token, "position": exc.position})
    if isinstance(exc, db.GranteeNotFound):
        details["user"] = exc.who
    if exc.constraint and 400 <= status < 500:
        details["constraint"] = exc.constraint
    if exc.retryable or status == 503:
        headers["Retry-After"] = "1"
    if isinstance(exc, db.AccountLocked):
        headers["Retry-After"] = str(exc.retry_after)
        details["retry_after"] = exc.retry_after
    if isinstance(exc, db.SessionRefused):
        return ApiError(401, exc.code, exc.message, headers={"WWW-Authenticate": "Bearer"})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    # A 4xx repeats the database's message (it names the rule); a 5xx says nothing more.
    message = exc.message if 400 <= status < 500 else _PUBLIC_MESSAGES.get(code, code)
    if code == "insufficient_credits":
        message = _PUBLIC_MESSAGES[code]
    return ApiError(status, code, message, details, headers)


def _body(err: ApiError) -> dict[str, Any]:
    return {"error": {"code": err.code, "message": err.message, "details": err.details}}


def response(err: ApiError) -> JSONResponse:
    return JSONResponse(_body(err), status_code=err.status, headers=err.headers or None)


def validation_details(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors without their ``input``/``ctx`` (they may hold anything)."""
    out = []
    for e in errors:
        out.append(
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
        )
    return out


def validation_error(errors: list[Any], message: str = "invalid request") -> ApiError:
    return ApiError(422, "validation_error", message, {"errors": validation_details(errors)})


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
}


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on the request's path.

    Starlette's 405 names the methods of the first route that matched the path only,
    and each method of a path is its own route here (``GET`` and ``POST /v1/api-keys``).
    """
    path = request.scope["path"]
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(route.methods or ())
    return sorted(methods)


def _unparsable_body(exc: BaseException) -> ApiError:
    """FastAPI's 400 for a JSON body it could not even decode: a bad body, like the rest."""
    if isinstance(exc, UnicodeDecodeError):
        msg = f"the body is not valid UTF-8 (byte {exc.start})"
    elif isinstance(exc, RecursionError):
        msg = "the body nests too deeply"
    else:
        msg = "the body could not be parsed"
    return validation_error([{"loc": ("body",), "msg": msg, "type": "json_invalid"}], msg)


def install(app: FastAPI) -> None:
    """Register the handlers: every error leaves in the one shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return response(exc)

    @app.exception_handler(db.DatabaseError)
    async def _database_error(request: Request, exc: db.DatabaseError) -> JSONResponse:
        err = from_database(exc)
        if err.status >= 500:
            log.error("database error on %s %s: %r", request.method, request.url.path, exc)
        return response(err)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return response(validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            # "There was an error parsing the body": not UTF-8, too deep for json.
            return response(_unparsable_body(exc.__cause__))
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code
        return response(ApiError(exc.status_code, code, message, headers=headers))

    @app.exception_handler(sa_exc.DataError)
    async def _data_error(request: Request, exc: sa_exc.DataError) -> JSONResponse:
        # A value PostgreSQL cannot store (out of range, bad text): the input's fault.
        return response(ApiError(422, "invalid_value", "a value is out of range or malformed"))

    @app.exception_handler(sa_exc.IntegrityError)
    async def _integrity(request: Request, exc: sa_exc.IntegrityError) -> JSONResponse:
        # Not one of the named refusals (e.g. 23001, a RESTRICT key): a conflict.
        return response(ApiError(409, "conflict", "conflicts with other data"))

    @app.exception_handler(sa_exc.OperationalError)
    async def _operational(request: Request, exc: sa_exc.OperationalError) -> JSONResponse:
        log.error("database unavailable on %s %s: %r", request.method, request.url.path, exc)
        return response(
            ApiError(
                503,
                "database_unavailable",
                "the database is unavailable; retry",
                headers={"Retry-After": "5"},
            )
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return response(ApiError(500, "internal_error", "internal error"))
