"""One prediction, from the raw request to the answer: the code both the API (in
process, when ``SERVING_URL`` is unset) and ``automl-serve`` run (docs/serving.md).

:meth:`Predictor.handle` is synchronous and runs in a worker thread (never on the
event loop), on one pooled connection in autocommit: authentication (the API key,
as every route: ``api.deps.get_principal``), then, usually, ONE statement that
reads the deployment, resolves its alias and admits the request
(:func:`database.deployments.admit_serving`; see :class:`Predictor` for when it
takes the long way), the model from the memory-bounded cache (loaded once per
version) within the deployment's ``timeout_ms``, and the request logged through a
buffer written in batches off the request path (``metering.RequestLog``). The
connection is back in the pool before the model runs, so a slow model holds none.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
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
    check_arrays,
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


def _has_quota(key: Any) -> bool:
    """Whether an API key (its row, as the key's lookup loaded it) carries a quota."""
    return key is not None and (
        key.rate_limit_per_minute is not None or key.monthly_row_quota is not None
    )


#: Deployments remembered per process (user, deployment) -> (version, max rows): a guess.
MAX_HINTS = 10_000


@dataclass
class _State:
    """What one request found so far (what its log row says)."""

    deployment_id: uuid.UUID | None = None
    version_id: uuid.UUID | None = None
    hold_id: uuid.UUID | None = None
    rows: int = 0
    #: Taken from the process's credit lease (``hold_id`` is then the lease's hold).
    leased_micro: int = 0


@dataclass
class _Ready:
    target_config: dict[str, Any]
    model: LoadedModel
    frame: Any
    rows: int


def database_unavailable() -> ApiError:
    """The answer while the database cannot be reached (as the API's own handler)."""
    return ApiError(
        503,
        "database_unavailable",
        "the database is unavailable; retry",
        headers={"Retry-After": "5"},
    )


class Predictor:
    """The models of one process, the way to answer with them, and its request log.

    Per process it keeps what cannot change: a version's loaded model (by version
    id), and, per (user, deployment), the version it served last, only as a guess:
    the request is checked against that version's signature, then ONE statement
    (:func:`database.deployments.admit_serving`) reads the deployment, resolves its
    alias and admits the request only if the deployment serves that version now.
    When it does not (an alias moved, the deployment stopped), the long way
    (:func:`database.deployments.serving`, the model of the version found,
    :func:`database.metering.admit`) answers, and the guess is updated. The request
    is then logged through :class:`database.metering.RequestLog` (buffered, written
    in batches by a thread, off the request path)."""

    def __init__(
        self,
        storage: Storage,
        cache_bytes: int,
        *,
        model_threads: int = 32,
        credit_lease: bool = True,
    ) -> None:
        self.storage = storage
        self.cache = ModelCache(cache_bytes)
        self.log: metering.RequestLog | None = None
        #: The process's credit leases (the quick way's admission without a round
        #: trip for the credit; None: a hold per request, in the statement).
        self.leases = metering.CreditLeases() if credit_lease else None
        self._hints: dict[tuple[uuid.UUID, uuid.UUID], tuple[uuid.UUID, int]] = {}
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._model_threads = model_threads
        self._executor: ThreadPoolExecutor | None = None

    # --- process state ------------------------------------------------------------------
    def engine(self, factory: sessionmaker[Session]) -> Engine:
        if self._engine is None:
            with factory() as session:
                bind = session.get_bind()
            assert isinstance(bind, Engine)
            with self._lock:
                if self._engine is None:
                    self._engine = bind
                    self.log = self._request_log(bind)
        return self._engine

    def _request_log(self, bind: Engine) -> metering.RequestLog | None:
        """The process's buffered request log on ``bind`` (made once, with the pool)."""
        leases = self.leases
        return metering.RequestLog(
            bind,
            # Expired leases' unused parts given back off the request path.
            after_write=None if leases is None else lambda: leases.return_expired(bind),
        )

    def executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._model_threads, thread_name_prefix="predict"
                )
            return self._executor

    def flush(self) -> int:
        """Write the buffered request log now and give the credit leases' unused parts
        back (tests; a shutdown calls :meth:`close`)."""
        written = self.log.flush() if self.log is not None else 0
        if self.leases is not None and self._engine is not None:
            self.leases.close(self._engine)
        return written

    def close(self) -> None:
        """A graceful shutdown: the request log written, the credit leases' unused
        parts given back, the model threads let go."""
        if self.log is not None:
            self.log.close()
        if self.leases is not None and self._engine is not None:
            try:
                self.leases.close(self._engine)
            except Exception:  # their holds expire (HOLD_SECONDS) as a crash's would
                log.exception("the credit leases were not given back")
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

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

    def _remember(self, user_id: uuid.UUID, target: deployments.Target) -> None:
        if len(self._hints) >= MAX_HINTS:
            self._hints.clear()
        assert target.model_version_id is not None
        max_rows = int(target.config.get("max_batch_rows") or DEFAULT_MAX_ROWS)
        self._hints[(user_id, target.deployment_id)] = (target.model_version_id, max_rows)

    # --- one request ----------------------------------------------------------------------
    def _quick(
        self,
        conn: Connection,
        principal: Any,
        deployment_id: uuid.UUID,
        body: bytes,
        content_type: str | None,
        rid: str,
        state: _State,
    ) -> _Ready | None:
        """The one-round-trip way, when this process served the deployment before and
        the body fits that version; None: take the long way (nothing was counted)."""
        hinted = self._hinted(principal, deployment_id, body, content_type)
        if hinted is None:
            return None
        version_id, model, frame, rows = hinted
        leased: metering.Leased | None = None
        try:
            if self.leases is not None:
                # The credit, from the process's lease: no statement, except when
                # it is used up or expired (402 here for a user who cannot pay).
                leased = self.leases.take(conn, principal.user_id, rows)
            found = deployments.admit_serving(
                conn,
                principal.user_id,
                deployment_id,
                model_version_id=version_id,
                rows=rows,
                # Leased: only the key's quotas are counted here. Else the hold, at
                # the book's price for the user's tier (None), in the statement.
                amount_micro=0 if leased is not None else None,
                api_key_id=principal.key.id if principal.key is not None else None,
                request_id=rid,
                hold_seconds=metering.HOLD_SECONDS,
                default_max_rows=DEFAULT_MAX_ROWS,
                # The key's quotas are counted in the statement only when it has any.
                key_has_quota=_has_quota(principal.key),
            )
        except (metering.QuotaExceeded, metering.PaymentRequired):
            self._give_back(conn, principal.user_id, leased)
            state.deployment_id, state.version_id = deployment_id, version_id
            raise
        except deployments.DeploymentNotFound:
            self._give_back(conn, principal.user_id, leased)
            self._hints.pop((principal.user_id, deployment_id), None)
            raise
        if not found.admitted:
            self._give_back(conn, principal.user_id, leased)
            return None
        state.deployment_id, state.version_id = deployment_id, version_id
        state.rows = rows
        if leased is not None:
            state.hold_id, state.leased_micro = leased.hold_id, leased.amount_micro
        else:
            state.hold_id = found.hold_id
        return _Ready(found.target.config, model, frame, rows)

    def _hinted(
        self,
        principal: Any,
        deployment_id: uuid.UUID,
        body: bytes,
        content_type: str | None,
    ) -> tuple[uuid.UUID, LoadedModel, Any, int] | None:
        """The version this process served the deployment last (a guess), its loaded
        model, the body read against its signature and the body's rows; None when
        there is no guess, the model is not loaded, or the body does not fit (the
        long way says why, after the deployment's own errors). No statement."""
        hint = self._hints.get((principal.user_id, deployment_id))
        if hint is None:
            return None
        version_id, max_rows = hint
        model = self.cache.peek(str(version_id))
        if model is None:
            return None
        try:
            table = parse_body(body, content_type, model.columns)
            frame = check_arrays(model, table, max_rows=max_rows)
        except InputError:
            return None
        return version_id, model, frame, table.rows

    def _give_back(
        self, conn: Connection, user_id: uuid.UUID, leased: metering.Leased | None
    ) -> None:
        if leased is not None and self.leases is not None:
            self.leases.give_back(conn, user_id, leased)

    def _long(
        self,
        conn: Connection,
        session: Session,
        principal: Any,
        deployment_id: uuid.UUID,
        body: bytes,
        content_type: str | None,
        rid: str,
        state: _State,
    ) -> _Ready:
        try:
            target = deployments.serving(session, principal.user_id, deployment_id)
        except db.DatabaseError:
            self._hints.pop((principal.user_id, deployment_id), None)
            raise
        state.deployment_id, state.version_id = target.deployment_id, target.model_version_id
        self._remember(principal.user_id, target)
        model = self.model(session, target)
        table = parse_body(body, content_type, model.columns)
        max_rows = int(target.config.get("max_batch_rows") or DEFAULT_MAX_ROWS)
        frame = check_arrays(model, table, max_rows=max_rows)
        state.hold_id = self._admit(conn, principal, target, table.rows, rid)
        state.rows = table.rows
        return _Ready(target.config, model, frame, table.rows)

    def _admit(
        self, conn: Connection, principal: Any, target: deployments.Target, rows: int, rid: str
    ) -> uuid.UUID | None:
        """The long way's admission (:func:`database.metering.admit`): the key's quotas
        and the credit hold of ``rows``; the hold's id."""
        return metering.admit(
            conn,
            user_id=principal.user_id,
            api_key_id=principal.key.id if principal.key is not None else None,
            deployment_id=target.deployment_id,
            rows=rows,
            request_id=rid,
        )

    def _predict(self, ready: _Ready, started: float) -> dict[str, Any]:
        """The model, within the deployment's ``timeout_ms`` (from the request's
        arrival): past it, 504 ``prediction_timeout`` (the model's thread finishes its
        work unobserved: Python cannot stop it)."""
        timeout_ms = ready.target_config.get("timeout_ms")
        try:
            if not timeout_ms:
                return predict(ready.model, ready.frame)
            left = float(timeout_ms) / 1000.0 - (time.perf_counter() - started)
            if left > 0:
                future = self.executor().submit(predict, ready.model, ready.frame)
                try:
                    return future.result(timeout=left)
                except FutureTimeout:
                    future.cancel()
            raise ApiError(
                504,
                "prediction_timeout",
                f"the prediction took longer than the deployment's timeout_ms ({timeout_ms} ms)",
                {"timeout_ms": timeout_ms},
            )
        except (ApiError, MemoryError):
            raise
        except Exception as exc:  # scikit-learn's refusal of a value, in its words
            raise InputError(
                422,
                "prediction_failed",
                f"the model could not score the input: {str(exc).splitlines()[0][:300]}",
            ) from None

    def handle(
        self,
        factory: sessionmaker[Session],
        *,
        authorization: str | None,
        deployment_id: uuid.UUID,
        body: bytes,
        content_type: str | None,
        request: Request,
    ) -> Answer:
        started = time.perf_counter()
        rid = request_id(request)
        principal = None
        state = _State()
        try:
            engine = self.engine(factory)
            # One connection, in autocommit: the key's lookup, then (usually) one
            # statement for the deployment and the admission; no BEGIN/COMMIT.
            with (
                engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
                factory(bind=conn) as session,
            ):
                principal = get_principal(request, session, _token(authorization))
                if READ not in principal.scopes:
                    raise ApiError(
                        403,
                        "insufficient_scope",
                        f"this API key lacks the '{READ}' scope",
                        {"required_scope": READ, "key_scopes": sorted(principal.scopes)},
                    )
                args = (principal, deployment_id, body, content_type, rid, state)
                ready = self._quick(conn, *args) or self._long(conn, session, *args)
            result = self._predict(ready, started)
            result["model_version_id"] = str(state.version_id)
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
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
            log.error("database unavailable on predict of deployment %s: %r", deployment_id, exc)
            answer = _error(database_unavailable())
        except Exception:
            log.exception("unhandled error on predict of deployment %s", deployment_id)
            answer = _error(ApiError(500, "internal_error", "internal error"))
        if principal is not None and state.deployment_id is not None:
            self._record(principal, state, started, answer, rid)
        return answer

    def _record(
        self, principal: Any, state: _State, started: float, answer: Answer, rid: str | None
    ) -> None:
        error = answer.body.get("error") if answer.status >= 400 else None
        assert state.deployment_id is not None
        try:
            record = metering.RequestRecord.make(
                user_id=principal.user_id,
                api_key_id=principal.key.id if principal.key is not None else None,
                deployment_id=state.deployment_id,
                model_version_id=state.version_id,
                rows=state.rows if answer.status == 200 else 0,
                latency_ms=(time.perf_counter() - started) * 1000.0,
                status=_outcome(answer.status),
                error_class=error.get("code") if isinstance(error, Mapping) else None,
                request_id=rid,
                hold_id=state.hold_id,
                leased_micro=state.leased_micro,
            )
            assert self.log is not None
            self.log.add(record)
        except Exception:  # the answer stands; the log says what was not recorded
            log.exception("the request to deployment %s was not recorded", state.deployment_id)


async def respond(
    predictor: Predictor,
    factory: sessionmaker[Session],
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


__all__ = ["Answer", "Predictor", "database_unavailable", "respond"]
