"""One prediction, from the raw request to the answer: the code both the API (in
process, when ``SERVING_URL`` is unset) and ``automl-serve`` run (docs/serving.md).

:meth:`Predictor.handle` is synchronous and runs in a worker thread (never on the
event loop): authentication (the API key, as every route), the deployment and what
it serves now (:func:`database.deployments.serving`, one statement, the alias
resolved in it), the model from the memory-bounded cache (loaded once per version),
the body parsed and checked against the version's signature, ``metering.admit``
before the model runs, the model, ``metering.record_request`` after. The database
session is closed before the model runs, so a slow model holds no connection.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.deps import READ, get_principal, request_id
from api.errors import ApiError, from_database
from api.metrics import record_prediction
from database import deployments, metering
from database import errors as db
from database.models import InferenceStatus
from database.storage import Storage
from pipeline.serving import (
    DEFAULT_MAX_ROWS,
    InputError,
    LoadedModel,
    ModelCache,
    ModelUnavailable,
    check_columns,
    load_model,
    parse_body,
    predict,
)

log = logging.getLogger("api.serving")


@dataclass
class Answer:
    """What the HTTP layer sends: status, JSON body, headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":"), allow_nan=False).encode()


def _error(err: ApiError) -> Answer:
    return Answer(
        err.status,
        {"error": {"code": err.code, "message": err.message, "details": err.details}},
        dict(err.headers),
    )


def _token(authorization: str | None) -> HTTPAuthorizationCredentials | None:
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return HTTPAuthorizationCredentials(scheme="Bearer", credentials=credentials.strip())


def _outcome(status: int) -> InferenceStatus:
    """The request log's word for an answer's HTTP status."""
    if status < 400:
        return InferenceStatus.OK
    if status in (402, 429):
        return InferenceStatus.REFUSED
    if status in (408, 504):
        return InferenceStatus.TIMEOUT
    return InferenceStatus.CLIENT_ERROR if status < 500 else InferenceStatus.SERVER_ERROR


class Predictor:
    """The models of one process and the way to answer with them."""

    def __init__(self, storage: Storage, cache_bytes: int) -> None:
        self.storage = storage
        self.cache = ModelCache(cache_bytes)

    def model(self, session: Session, target: deployments.Target) -> LoadedModel:
        assert target.model_version_id is not None
        version_id = target.model_version_id

        def load() -> LoadedModel:
            signature, environment = deployments.version_details(session, version_id)
            return load_model(
                self.storage,
                key=str(version_id),
                location=target.location,
                signature=signature,
                environment=environment,
                size_bytes=target.size_bytes,
            )

        return self.cache.get(str(version_id), load)

    def handle(
        self,
        factory: Callable[[], Session],
        *,
        authorization: str | None,
        deployment_id: uuid.UUID,
        body: bytes,
        content_type: str | None,
        request: Request,
    ) -> Answer:
        started = time.perf_counter()
        rid = request_id(request)
        principal = target = None
        rows = 0
        try:
            with factory() as session:
                principal = get_principal(request, session, _token(authorization))
                if READ not in principal.scopes:
                    raise ApiError(
                        403,
                        "insufficient_scope",
                        f"this API key lacks the '{READ}' scope",
                        {"required_scope": READ, "key_scopes": sorted(principal.scopes)},
                    )
                target = deployments.serving(session, principal.user_id, deployment_id)
                model = self.model(session, target)
                table = parse_body(body, content_type, model.columns)
                rows = table.rows
                max_rows = int(target.config.get("max_batch_rows") or DEFAULT_MAX_ROWS)
                frame = check_columns(model, table, max_rows=max_rows)
                metering.admit(
                    session,
                    user_id=principal.user_id,
                    api_key_id=principal.key.id if principal.key is not None else None,
                    deployment_id=target.deployment_id,
                    rows=rows,
                    request_id=rid,
                )
                session.commit()
            try:
                result = predict(model, frame)
            except MemoryError:
                raise
            except Exception as exc:  # scikit-learn's refusal of a value, in its words
                raise InputError(
                    422,
                    "prediction_failed",
                    f"the model could not score the input: {str(exc).splitlines()[0][:300]}",
                ) from None
            result["model_version_id"] = str(target.model_version_id)
            answer = Answer(200, result)
        except ApiError as exc:
            answer = _error(exc)
        except InputError as exc:
            answer = _error(ApiError(exc.status, exc.code, exc.message, exc.details))
        except ModelUnavailable as exc:
            answer = _error(ApiError(409, "model_unavailable", str(exc)))
        except metering.QuotaExceeded as exc:
            retry = str(getattr(exc, "retry_after", 1))
            answer = _error(
                ApiError(429, "quota_exceeded", str(exc), headers={"Retry-After": retry})
            )
        except metering.PaymentRequired as exc:
            answer = _error(ApiError(402, "payment_required", str(exc)))
        except db.DatabaseError as exc:
            err = from_database(exc)
            if err.status >= 500:
                log.error("database error on predict: %r", exc)
            answer = _error(err)
        except Exception:
            log.exception("unhandled error on predict of deployment %s", deployment_id)
            answer = _error(ApiError(500, "internal_error", "internal error"))
        if principal is not None and target is not None:
            self._record(factory, principal, target, rows, started, answer, rid)
        return answer

    def _record(
        self,
        factory: Callable[[], Session],
        principal: Any,
        target: deployments.Target,
        rows: int,
        started: float,
        answer: Answer,
        request_id: str | None,
    ) -> None:
        error = answer.body.get("error") if answer.status >= 400 else None
        try:
            with factory() as session:
                metering.record_request(
                    session,
                    user_id=principal.user_id,
                    api_key_id=principal.key.id if principal.key is not None else None,
                    deployment_id=target.deployment_id,
                    model_version_id=target.model_version_id,
                    rows=rows if answer.status == 200 else 0,
                    latency_ms=(time.perf_counter() - started) * 1000.0,
                    status=_outcome(answer.status),
                    error_class=error.get("code") if isinstance(error, Mapping) else None,
                    request_id=request_id,
                )
                session.commit()
        except Exception:  # the answer stands; the log says what was not recorded
            log.exception("the request to deployment %s was not recorded", target.deployment_id)


async def respond(
    predictor: Predictor,
    factory: Callable[[], Session],
    request: Request,
    deployment_id: uuid.UUID,
) -> Response:
    """Read the body, answer it in a worker thread: the predict route of the API (in
    process) and of ``automl-serve`` alike."""
    body = await request.body()
    answer = await run_in_threadpool(
        predictor.handle,
        factory,
        authorization=request.headers.get("authorization"),
        deployment_id=deployment_id,
        body=body,
        content_type=request.headers.get("content-type"),
        request=request,
    )
    record_prediction(answer.status, answer.body)
    return Response(
        answer.content(),
        status_code=answer.status,
        headers=answer.headers or None,
        media_type="application/json",
    )


__all__ = ["Answer", "Predictor", "respond"]
