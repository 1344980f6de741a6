"""Metering: the inference request log, usage, its aggregate charges, key quotas.

The one place these rules live (with ``sql/triggers/metering.sql``); the predict
route, the batch job kind, the worker's maintenance and the usage routes call:

    admit(session, *, user_id, api_key_id, deployment_id, rows)          before the model runs
    record_request(session_or_engine, *, user_id, ..., request_id)      after, success or not
    record_requests(bind, [RequestRecord, ...])                         many, one statement
    RequestLog(engine).add(RequestRecord.make(...))                     buffered, written in batches
    record_usage(session_or_engine, *, user_id, sku, quantity, key)     any other billable use
    charge_usage(engine_or_session, *, user_id=None, through=None)       the aggregation
    ensure_partitions(engine, months_ahead=2) / drop_partitions_before(engine, date)
    maintenance(engine)                                                  what the worker runs

**Money.** Prices are credits per 1,000 units, from the price book in force for
the user's tier (:func:`prices`; the database prices each usage event as it is
recorded, ``usage_events_apply_price`` in sql/triggers/billing.sql). Costs are
counted in micro-credits (10**-6 credit) so no fraction is
lost: a usage event records its unit price in micro-credits; a charge takes whole
credits from the ledger and carries the remainder (less than one credit) to the
user's next charge, so the credits a user was charged are always exactly
``floor(cost of the usage charged / 10**6)``.

**Admission (402).** A request is admitted when the user's balance covers, in
micro-credits, what they owe and the ledger does not show yet
(``usage_meters.pending_micro``: uncharged usage plus the carried remainder), what
is held for requests in flight (``usage_holds``), and this request's rows. Admission
locks the user's row (the ledger's lock), then counts and holds in a new statement,
so two admissions of one user, in any number of processes, are counted one after
the other: together they never admit more than the balance pays for. The hold is
released by :func:`record_request`; a hold whose process died expires after
``HOLD_SECONDS`` and is swept by :func:`maintenance`. **Call admit in its own
transaction** (a session with no transaction open, which it commits), never inside
one that stays open while the model runs: the user's row stays locked until then.

**Aggregation.** :func:`charge_usage` charges, per user, the usage dated in
``[charged_through, cutoff)``: one ledger consumption per (deployment, sku) and
period, with the idempotency key ``usage:<user>:<deployment>:<sku>:<from>:<to>``,
never one per request. The worker charges closed hours (``cutoff`` = the current
hour's start), so a deployment used all day gets one entry per hour; on demand,
``through=`` any instant up to now. It holds the user's meter lock, the lock every
usage event takes as it is dated: so every event dated before the cutoff is
committed and seen, and none can arrive late. A retry after a crash, or a
concurrent run, finds the meter moved and charges nothing twice. A user who cannot
pay (a job took the credits since) is left uncharged, and reported; admission
refuses them meanwhile.

**Quotas (429).** A key's ``rate_limit_per_minute`` and ``monthly_row_quota`` are
counted in ``api_key_usage_windows`` with one ``INSERT ... ON CONFLICT DO UPDATE
... WHERE used + n <= limit RETURNING``: the row lock orders concurrent admissions
of one key in every process, so the limit holds exactly. Refused requests count
nothing (admission is all or nothing).

**The request log** (``inference_requests``) is append-only and partitioned by
month (UTC). Partitions are made ahead (:func:`ensure_partitions`, by the
migration and the worker) and **on demand**: a row whose month has no partition
makes it (``inference_requests_partition_for``, run as the owner) and is written
again, so no request is lost and there is no DEFAULT partition (one would have to
be emptied, by DELETE, before its month's partition could be made). Retention
drops whole months (:func:`drop_partitions_before`: DDL by the owner, not DELETE,
which stays refused).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import BigInteger, Connection, Engine, bindparam, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Session

from database import errors
from database._tx import atomic
from database.models import (
    CreditTransaction,
    InferenceStatus,
    TransactionType,
    UsageCharge,
    UsageSku,
    UserTier,
)

_log = logging.getLogger("database.metering")

#: The refusals of :func:`admit`, named here for its callers (the predict path).
PaymentRequired = errors.PaymentRequired
QuotaExceeded = errors.QuotaExceeded

__all__ = [
    "HOLD_SECONDS",
    "LEASE_BLOCK_MICRO",
    "LEASE_SECONDS",
    "ChargeReport",
    "CreditLeases",
    "Leased",
    "PaymentRequired",
    "QuotaExceeded",
    "Prices",
    "RequestLog",
    "RequestRecord",
    "admit",
    "charge_usage",
    "drop_partitions_before",
    "ensure_partitions",
    "maintenance",
    "prices",
    "record_request",
    "record_requests",
    "record_usage",
    "sweep",
    "unit_price_micro",
    "usage_summary",
]

MICRO = 1_000_000
#: How long an admitted request's hold counts against the balance without a record.
HOLD_SECONDS = 600
PARTITION_PREFIX = "inference_requests_p"
_PARTITION_NAME = re.compile(rf"^{PARTITION_PREFIX}(\d{{4}})(\d{{2}})$")


# --- prices ---------------------------------------------------------------------------
class Prices(BaseModel):
    """Credits per 1,000 units of each sku."""

    predicted_rows_per_1000: Decimal = Field(default=Decimal(1), ge=0)
    batch_rows_per_1000: Decimal = Field(default=Decimal(1), ge=0)


#: The first price book's metered prices (migration c16a00000001): what
#: :func:`unit_price_micro` estimates with when it is given no database to read.
FIRST_BOOK_PRICES = Prices()
#: Those prices per unit in micro-credits (what :func:`unit_price_micro` answers
#: without a database), read once: a request's record carries one.
_FIRST_BOOK_MICRO = {
    UsageSku.PREDICTED_ROWS: int(FIRST_BOOK_PRICES.predicted_rows_per_1000 * 1000),
    UsageSku.BATCH_ROWS: int(FIRST_BOOK_PRICES.batch_rows_per_1000 * 1000),
}


def prices(bind: Session | Engine | Connection, *, tier: UserTier | str | None = None) -> Prices:
    """THE prices of metered use: the items ``predicted_rows`` and ``batch_rows`` of
    the price book in force for ``tier`` (``database.billing.book_in_force``; credits
    per 1,000 rows). ``tier=None``: the highest price of each in any tier's book in
    force (an estimate that never undercounts). ``NoPriceBook`` without a book.

    The price a usage event is charged at is the database's: the book in force for
    the user's tier when it is recorded (``usage_events_apply_price``,
    sql/triggers/billing.sql), whatever the client sends."""
    from database import billing

    def read(conn: Session | Connection) -> Prices:
        tiers = [UserTier(tier)] if tier is not None else list(UserTier)
        books = []
        for t in tiers:
            try:
                books.append(billing.book_in_force(conn, t))
            except errors.NoPriceBook:
                if tier is not None:
                    raise
        if not books:
            raise errors.NoPriceBook("no price book is in force")
        return Prices(
            predicted_rows_per_1000=Decimal(
                max(b.price(billing.SKU_PREDICTED_ROWS).credits_per_unit for b in books)
            ),
            batch_rows_per_1000=Decimal(
                max(b.price(billing.SKU_BATCH_ROWS).credits_per_unit for b in books)
            ),
        )

    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return read(conn)
    return read(bind)


def unit_price_micro(
    sku: UsageSku | str,
    bind: Session | Engine | Connection | None = None,
    *,
    user_id: uuid.UUID | None = None,
) -> int:
    """Micro-credits one unit of ``sku`` costs now: for ``user_id`` exactly (the
    database's ``billing_usage_price_micro``, the price its usage is recorded at),
    else the highest of the books in force (:func:`prices`). Without ``bind``, the
    first book's price (:data:`FIRST_BOOK_PRICES`): an estimate. Neither the
    admission's hold (``usage_hold`` prices it from the user's book in the statement)
    nor the usage (priced by the database when recorded) uses it."""
    sku = UsageSku(sku)
    if bind is not None and user_id is not None:
        statement = text("SELECT public.billing_usage_price_micro(:u, :s)")
        params = {"u": _uuid(user_id, "user_id"), "s": sku.value}
        if isinstance(bind, Engine):
            with bind.connect() as conn:
                value = conn.execute(statement, params).scalar_one()
        else:
            value = bind.execute(statement, params).scalar_one()
        if value is None:
            raise errors.MeteredUserNotFound(f"user {user_id} does not exist")
        return int(value)
    if bind is None:
        return _FIRST_BOOK_MICRO[sku]
    p = prices(bind)
    per_1000 = {
        UsageSku.PREDICTED_ROWS: p.predicted_rows_per_1000,
        UsageSku.BATCH_ROWS: p.batch_rows_per_1000,
    }[sku]
    return int(per_1000 * 1000)


# --- sessions -------------------------------------------------------------------------
@contextmanager
def _session(bind: Session | Engine) -> Iterator[Session]:
    """One transaction on ``bind``: a new session committed on exit for an engine, or
    :func:`database._tx.atomic` on a caller's session."""
    if isinstance(bind, Engine):
        with Session(bind) as session, session.begin():
            yield session
    else:
        with atomic(bind):
            yield bind


def _one_statement(
    bind: Session | Engine | Connection, statement: Any, params: dict[str, Any]
) -> Any:
    """Run one statement as a transaction of its own: in autocommit, so the server
    gets no BEGIN and COMMIT round trips (a statement is atomic by itself). Inside
    a caller's open transaction it joins it instead (in a savepoint). A Connection
    is used as it is (the caller chose its mode). The first column of the first row
    (None without rows)."""
    if isinstance(bind, Connection):
        return bind.execute(statement, params).scalar()
    if isinstance(bind, Session) and bind.in_transaction():
        with atomic(bind):
            return bind.execute(statement, params).scalar()
    if isinstance(bind, Session):
        engine = bind.get_bind()
        if not isinstance(engine, Engine):  # a session bound to a connection: use it
            with atomic(bind):
                return bind.execute(statement, params).scalar()
    else:
        engine = bind
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        return conn.execute(statement, params).scalar()


def _uuid(value: Any, name: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise errors.InvalidValue(f"{name} is not a UUID: {value!r}") from None


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise errors.InvalidValue(f"{name} must be a whole number >= 0, not {value!r}")
    return value


# --- admission ------------------------------------------------------------------------
# One round trip: the rules are public.usage_hold's (sql/triggers/metering.sql).
_ADMIT = text(
    "SELECT public.usage_hold(:user, :key, :deployment, :rows, :amount, :request_id, :hold_seconds)"
).bindparams(bindparam("amount", type_=BigInteger))


def admit(
    session: Session | Engine | Connection,
    *,
    user_id: uuid.UUID,
    api_key_id: uuid.UUID | None,
    deployment_id: uuid.UUID | None,
    rows: int,
    request_id: str | None = None,
    sku: UsageSku = UsageSku.PREDICTED_ROWS,
) -> uuid.UUID | None:
    """Admit a request of ``rows`` rows before the model runs, or refuse it; the id
    of its hold (None when the rows cost nothing), for :class:`RequestRecord`.

    Raises :class:`errors.QuotaExceeded` (429; ``retry_after`` seconds, ``quota`` is
    ``rate_limit_per_minute`` or ``monthly_row_quota``) when the key's quota is
    spent, :class:`errors.PaymentRequired` (402) when the user cannot pay for the
    rows, :class:`errors.MeteredUserNotFound` for an unknown user. Nothing is
    counted or held on a refusal.
    ``request_id`` (optional) ties the hold to that request's
    :func:`record_request`. One statement, its own transaction (autocommit: one
    round trip), unless ``session`` has one open: then it joins it, and the user's
    row stays locked until that commits (see the module doc).
    """
    n = _count(rows, "rows")
    params = {
        "user": _uuid(user_id, "user_id"),
        "key": None if api_key_id is None else _uuid(api_key_id, "api_key_id"),
        "deployment": None if deployment_id is None else _uuid(deployment_id, "deployment_id"),
        "rows": n,
        # The hold is priced by the book in force for the user's tier, in the
        # statement (usage_hold with no amount); another sku's price is read first.
        "amount": None
        if UsageSku(sku) is UsageSku.PREDICTED_ROWS
        else n * unit_price_micro(sku, session, user_id=user_id),
        "request_id": (request_id or None) and str(request_id)[:200],
        "hold_seconds": HOLD_SECONDS,
    }
    found = _one_statement(session, _ADMIT, params)
    return None if found is None else _uuid(found, "hold")


# --- recording ------------------------------------------------------------------------
def _no_partition(exc: errors.DatabaseError) -> bool:
    return exc.sqlstate == "23514" and "no partition" in (exc.message or "")


@dataclass(frozen=True)
class RequestRecord:
    """One inference request as the log keeps it (never its payload)."""

    user_id: uuid.UUID
    api_key_id: uuid.UUID | None
    deployment_id: uuid.UUID
    model_version_id: uuid.UUID | None
    rows: int
    latency_ms: int
    status: InferenceStatus
    error_class: str | None
    request_id: str | None
    #: The admission's hold (``admit``'s answer); None: a hold like it is released
    #: (this request's id, or one of the same rows and deployment), if any.
    hold_id: uuid.UUID | None = None
    sku: UsageSku = UsageSku.PREDICTED_ROWS
    #: When the request was answered (the log's ``created_at``).
    at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    #: Micro-credits a unit costs, fixed when the request is made.
    price_micro: int = -1
    usage_key: str = ""
    #: Micro-credits this request took from its process's credit lease (``hold_id``
    #: is then the lease's hold, which its record reduces by this much rather than
    #: releasing it: :class:`CreditLeases`); 0: a hold of its own, or none.
    leased_micro: int = 0

    @classmethod
    def make(
        cls,
        *,
        user_id: uuid.UUID,
        api_key_id: uuid.UUID | None,
        deployment_id: uuid.UUID,
        model_version_id: uuid.UUID | None,
        rows: int,
        latency_ms: int | float,
        status: InferenceStatus | str,
        error_class: str | None,
        request_id: str | None,
        hold_id: uuid.UUID | None = None,
        sku: UsageSku = UsageSku.PREDICTED_ROWS,
        leased_micro: int = 0,
    ) -> RequestRecord:
        """A record, its values checked (``InvalidValue`` naming a bad one)."""
        rid = (request_id or None) and str(request_id)[:200]
        sku = UsageSku(sku)
        return cls(
            user_id=_uuid(user_id, "user_id"),
            api_key_id=None if api_key_id is None else _uuid(api_key_id, "api_key_id"),
            deployment_id=_uuid(deployment_id, "deployment_id"),
            model_version_id=None
            if model_version_id is None
            else _uuid(model_version_id, "model_version_id"),
            rows=_count(rows, "rows"),
            latency_ms=max(0, round(float(latency_ms))),
            status=InferenceStatus(status),
            error_class=(error_class or None) and str(error_class)[:200],
            request_id=rid,
            hold_id=None if hold_id is None else _uuid(hold_id, "hold_id"),
            sku=sku,
            # (an estimate: the database prices the usage as it records it)
            price_micro=_FIRST_BOOK_MICRO[sku],
            usage_key=f"request:{rid or uuid.uuid4()}:{sku.value}",
            leased_micro=_count(leased_micro, "leased_micro"),
        )

    @property
    def billable(self) -> bool:
        return self.status is InferenceStatus.OK and self.rows > 0


# The log rows, the holds released and the usage of many requests, one statement.
# A request whose usage key is recorded already (written alone before) is skipped
# whole; a batch (``:batch``) one of whose usage events is recorded already (its
# commit's answer was lost) is skipped whole; a request refused at admission held
# nothing. With ``:aggregate`` the usage is ONE event per (user, deployment, key,
# sku) of the batch, keyed by the batch (``batch:<batch>:<user>:<deployment>:<key>:
# <sku>``: each event's meter upsert, pricing and foreign key paid once per group,
# not per request); without it, one per request (its usage key). Usage is inserted
# in user order (the meters' locks, in one order).
_RECORD = text(
    """
    WITH input AS (
        SELECT CAST(r->>0 AS uuid) AS user_id, CAST(r->>1 AS uuid) AS api_key_id,
               CAST(r->>2 AS uuid) AS deployment_id, CAST(r->>3 AS uuid) AS model_version_id,
               CAST(r->>4 AS integer) AS rows, CAST(r->>5 AS integer) AS latency_ms,
               CAST(r->>6 AS inference_status) AS status, r->>7 AS error_class,
               r->>8 AS request_id, CAST(r->>9 AS uuid) AS hold_id,
               CAST(r->>10 AS usage_sku) AS sku, CAST(r->>11 AS bigint) AS price,
               r->>12 AS usage_key, CAST(r->>13 AS timestamptz) AS at,
               CAST(r->>14 AS boolean) AS billable, CAST(r->>15 AS bigint) AS leased, x.ord
          FROM jsonb_array_elements(CAST(:records AS jsonb)) WITH ORDINALITY AS x(r, ord)
    ), keyed AS (
        SELECT i.*, 'batch:' || CAST(:batch AS text) || ':' || i.user_id || ':'
                    || coalesce(CAST(i.deployment_id AS text), '-') || ':'
                    || coalesce(CAST(i.api_key_id AS text), '-') || ':' || i.sku AS group_key
          FROM input AS i
    ), done AS (
        SELECT EXISTS (SELECT 1 FROM public.usage_events AS e
                        WHERE e.idempotency_key IN (SELECT k.group_key FROM keyed AS k
                                                     WHERE k.billable)) AS batch_done
    ), fresh AS (
        SELECT k.* FROM keyed AS k, done
         WHERE NOT done.batch_done
           AND NOT (k.billable AND EXISTS (SELECT 1 FROM public.usage_events AS e
                                            WHERE e.idempotency_key = k.usage_key))
    ), logged AS (
        INSERT INTO public.inference_requests (user_id, deployment_id, model_version_id,
            api_key_id, rows, latency_ms, status, error_class, request_id, created_at)
        SELECT user_id, deployment_id, model_version_id, api_key_id, rows, latency_ms, status,
               error_class, request_id, at
          FROM fresh ORDER BY ord
        RETURNING 1
    ), released AS (
        DELETE FROM public.usage_holds
         WHERE id IN (SELECT hold_id FROM input WHERE hold_id IS NOT NULL AND leased = 0)
        RETURNING 1
    ), lease_used AS (
        UPDATE public.usage_holds AS h
           SET amount_micro = greatest(h.amount_micro - u.micro, 0)
          FROM (SELECT hold_id, sum(leased) AS micro FROM fresh
                 WHERE hold_id IS NOT NULL AND leased > 0 GROUP BY hold_id) AS u
         WHERE h.id = u.hold_id
        RETURNING 1
    ), guessed AS (
        DELETE FROM public.usage_holds
         WHERE id IN (
            SELECT g.id FROM input AS i CROSS JOIN LATERAL (
                SELECT h.id FROM public.usage_holds AS h
                 WHERE h.user_id = i.user_id
                   AND (h.request_id = i.request_id
                        OR (h.rows = i.rows
                            AND h.deployment_id IS NOT DISTINCT FROM i.deployment_id))
                 ORDER BY (h.request_id IS NOT DISTINCT FROM i.request_id) DESC, h.expires_at
                 LIMIT 1 FOR UPDATE SKIP LOCKED) AS g
             WHERE i.hold_id IS NULL AND i.status <> 'refused' AND i.leased = 0
               AND (i.rows > 0 OR i.request_id IS NOT NULL))
        RETURNING 1
    ), used AS (
        INSERT INTO public.usage_events (user_id, deployment_id, api_key_id, sku, quantity,
            unit_price_micro, idempotency_key)
        SELECT user_id, deployment_id, api_key_id, sku, sum(rows), min(price),
               CASE WHEN CAST(:aggregate AS boolean) THEN group_key ELSE usage_key END
          FROM fresh WHERE billable
         GROUP BY user_id, deployment_id, api_key_id, sku, 7
         ORDER BY user_id, min(ord)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM logged), set_config('synchronous_commit', 'off', true)
    """
)


def _id(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def _record_params(records: list[RequestRecord]) -> dict[str, Any]:
    """The records as ONE JSON array of arrays (the statement's ``:records``, read by
    ``jsonb_array_elements``): one parameter, dumped by ``json`` in C, rather than 16
    arrays whose elements the driver adapts one by one (issue 14: the request log's
    thread took the GIL from the requests for that)."""
    return {
        "records": json.dumps(
            [
                [
                    str(r.user_id),
                    _id(r.api_key_id),
                    str(r.deployment_id),
                    _id(r.model_version_id),
                    r.rows,
                    r.latency_ms,
                    r.status.value,
                    r.error_class,
                    r.request_id,
                    _id(r.hold_id),
                    r.sku.value,
                    r.price_micro,
                    r.usage_key,
                    r.at.isoformat(),
                    r.billable,
                    r.leased_micro,
                ]
                for r in records
            ],
            separators=(",", ":"),
        )
    }


def record_requests(
    bind: Session | Engine | Connection,
    records: list[RequestRecord],
    *,
    batch_id: uuid.UUID | None = None,
    aggregate: bool = True,
) -> int:
    """Log these requests, release their admissions' holds (a request admitted from a
    credit lease takes its part off the lease's hold instead) and record the usage of
    the successful ones (charged later, in aggregate): ONE statement, its own
    transaction (autocommit, unless the session has one open), committed without
    waiting for the WAL flush (a crash of the server may lose the last few hundred
    milliseconds of them, never make them inconsistent; the ledger's charges stay
    synchronous). A request whose usage was recorded already (its usage key) is
    skipped whole, so a batch written twice logs and bills each request once; two
    records of one usage key in the list keep the first. The month's partition is
    made if it is missing. The number of requests logged.

    ``batch_id`` (:class:`RequestLog`'s, kept with its records across retries): the
    usage is recorded as ONE usage event per (user, deployment, API key, sku) of the
    batch, its idempotency key the batch's (``batch:<batch_id>:<user>:<deployment>:
    <key>:<sku>``), and the batch is skipped whole when one of its events is
    recorded already (its commit's answer was lost, it is written again). With
    ``aggregate`` False (the log's one-by-one retry of a refused batch) each request
    gets its own event as without ``batch_id``, and a request whose batch's event is
    recorded already is skipped: a batch is billed once whichever way it is written
    again."""
    seen: set[str] = set()
    unique = []
    for r in records:
        if r.billable:
            if r.usage_key in seen:
                continue
            seen.add(r.usage_key)
        unique.append(r)
    if not unique:
        return 0
    params = _record_params(unique)
    params["batch"] = None if batch_id is None else str(batch_id)
    params["aggregate"] = batch_id is not None and aggregate
    try:
        return int(_one_statement(bind, _RECORD, params) or 0)
    except errors.InvalidValue as exc:
        if not _no_partition(exc):
            raise
    make = text("SELECT public.inference_requests_partition_for(:at)")
    for at in sorted({min(r.at for r in unique), max(r.at for r in unique)}):
        _one_statement(bind, make, {"at": at})
    return int(_one_statement(bind, _RECORD, params) or 0)


def record_request(
    session_or_engine: Session | Engine,
    *,
    user_id: uuid.UUID,
    api_key_id: uuid.UUID | None,
    deployment_id: uuid.UUID,
    model_version_id: uuid.UUID | None,
    rows: int,
    latency_ms: int | float,
    status: InferenceStatus | str,
    error_class: str | None,
    request_id: str | None,
    sku: UsageSku = UsageSku.PREDICTED_ROWS,
    hold_id: uuid.UUID | None = None,
    leased_micro: int = 0,
) -> None:
    """Log one inference request (success or failure), release its admission's hold
    and, when it succeeded with rows, record their usage, now: :func:`record_requests`
    of one. The serving processes buffer theirs instead (:class:`RequestLog`).
    Recording the same ``request_id`` twice logs and bills it once."""
    record_requests(
        session_or_engine,
        [
            RequestRecord.make(
                user_id=user_id,
                api_key_id=api_key_id,
                deployment_id=deployment_id,
                model_version_id=model_version_id,
                rows=rows,
                latency_ms=latency_ms,
                status=status,
                error_class=error_class,
                request_id=request_id,
                hold_id=hold_id,
                sku=sku,
                leased_micro=leased_micro,
            )
        ],
    )


def _transient(exc: BaseException) -> bool:
    """A failure of the database's availability (retry later), not of the rows."""
    return (
        isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError)
        or bool(getattr(exc, "retryable", False))
        or isinstance(exc, errors.StatementTimeout)
    )


class RequestLog:
    """The request log of a serving process, off the request path: records are
    buffered in memory and written by a background thread, many per statement
    (:func:`record_requests`), every ``interval_s`` or as soon as ``batch_rows`` are
    waiting. :meth:`close` (a graceful shutdown) writes what is left.

    **The loss window.** What is buffered is lost if the process is killed
    (SIGKILL, a crash, the machine): at most ``interval_s`` of requests in normal
    running (plus what waits while the database is unreachable). Those requests
    were answered but are not logged nor billed; their holds stay and expire after
    ``HOLD_SECONDS``, so the user could not spend the money meanwhile. Nothing is
    ever billed twice: a batch's usage (one event per user, deployment, key and sku)
    is keyed by the batch's id, which stays with its records until they are known
    written (:func:`record_requests`).

    **The database away.** A write that fails for the database's availability
    (connection refused or lost, a timeout) keeps its records, in order, and is
    tried again with a growing pause (up to ``retry_max_s``). A write refused for
    its rows (never expected) is retried one record at a time, and only a record
    refused alone is dropped, logged. At most ``max_rows`` wait; beyond, the
    oldest are dropped (counted in ``dropped``, logged): a bound on memory while
    the database is away (predictions cannot be admitted meanwhile, so few come).
    """

    def __init__(
        self,
        bind: Engine,
        *,
        interval_s: float = 0.15,
        batch_rows: int = 500,
        max_rows: int = 100_000,
        retry_max_s: float = 5.0,
        after_write: Callable[[], Any] | None = None,
    ) -> None:
        self.bind = bind
        #: Run by the thread after each round of writes (the credit leases' expiry).
        self.after_write = after_write
        self.interval_s = interval_s
        self.batch_rows = batch_rows
        self.max_rows = max_rows
        self.retry_max_s = retry_max_s
        self.dropped = 0
        self.written = 0
        self.failures = 0
        #: (the batch the record was last tried in, None before; the record), oldest first.
        self._rows: deque[tuple[uuid.UUID | None, RequestRecord]] = deque()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._rows)

    def add(self, record: RequestRecord) -> None:
        """Buffer one record (never blocks on the database)."""
        with self._cond:
            if len(self._rows) >= self.max_rows:
                self._rows.popleft()
                self.dropped += 1
                _log.error(
                    "request log buffer full (%d): the oldest record was dropped", self.max_rows
                )
            self._rows.append((None, record))
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
                self._thread.start()
            if len(self._rows) >= self.batch_rows:
                self._cond.notify()

    def _next_batch(self) -> tuple[uuid.UUID, list[RequestRecord]]:
        """The oldest records: a batch tried before and kept (its records, with its
        id, so a retry is recognised), else up to ``batch_rows`` new ones, a new id."""
        with self._cond:
            if not self._rows:
                return uuid.uuid4(), []
            kept = self._rows[0][0]
            batch_id = kept if kept is not None else uuid.uuid4()
            batch: list[RequestRecord] = []
            while self._rows and len(batch) < self.batch_rows and self._rows[0][0] == kept:
                batch.append(self._rows.popleft()[1])
            return batch_id, batch

    def _keep(self, batch_id: uuid.UUID, records: list[RequestRecord]) -> None:
        """Put records not known written back at the front, with their batch's id."""
        with self._cond:
            self._rows.extendleft((batch_id, r) for r in reversed(records))

    def _write_some(self) -> int:
        """Write up to ``batch_rows`` of the oldest records; on failure they stay.
        The usage of a batch is one event per (user, deployment, key, sku), keyed by
        the batch's id: a batch whose commit's answer was lost is written again under
        the same id, and bills nothing twice (:func:`record_requests`)."""
        with self._write_lock:
            batch_id, batch = self._next_batch()
            if not batch:
                return 0
            try:
                record_requests(self.bind, batch, batch_id=batch_id)
            except Exception as exc:
                if _transient(exc):
                    self._keep(batch_id, batch)
                    raise
                batch = self._one_by_one(batch_id, batch)
            self.written += len(batch)
            return len(batch)

    def _one_by_one(self, batch_id: uuid.UUID, batch: list[RequestRecord]) -> list[RequestRecord]:
        written = []
        for i, record in enumerate(batch):
            try:
                # Its own usage event, unless its batch's is recorded (then skipped).
                record_requests(self.bind, [record], batch_id=batch_id, aggregate=False)
            except Exception as exc:
                if _transient(exc):
                    self._keep(batch_id, batch[i:])
                    raise
                self.dropped += 1
                _log.error("a request log record was refused and dropped: %r", exc)
                continue
            written.append(record)
        return written

    def flush(self) -> int:
        """Write everything buffered now, in the caller's thread (the database's
        errors raised, the records kept). The number written."""
        total = 0
        while True:
            n = self._write_some()
            if n == 0:
                return total
            total += n

    def _run(self) -> None:
        pause = self.interval_s
        while True:
            with self._cond:
                if not self._closed and len(self._rows) < self.batch_rows:
                    self._cond.wait(pause)
                if self._closed:
                    return
            try:
                self.flush()
                if self.after_write is not None:
                    self.after_write()
                pause = self.interval_s
            except Exception as exc:
                self.failures += 1
                if pause == self.interval_s:
                    _log.warning("request log not written (kept, retried): %r", exc)
                pause = min(self.retry_max_s, pause * 2)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and write what is buffered, retrying for ``timeout_s`` if
        the database is away; what is still unwritten then is logged as lost."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        deadline = time.monotonic() + timeout_s
        pause = self.interval_s
        while True:
            try:
                self.flush()
                return
            except Exception as exc:
                if time.monotonic() + pause > deadline:
                    _log.error(
                        "request log: %d records not written at shutdown (lost): %r",
                        len(self),
                        exc,
                    )
                    return
                time.sleep(pause)
                pause = min(self.retry_max_s, pause * 2)


# --- credit leases ----------------------------------------------------------------------
#: The block of credit a serving process leases for a user at a time (micro-credits:
#: 1 credit, 1,000 one-row predictions in the first book), shrinking near the limit.
LEASE_BLOCK_MICRO = 1_000_000
#: How long a process admits from one lease before it gives the rest back.
LEASE_SECONDS = 30.0

_LEASE = text(
    "SELECT hold_id, amount_micro, price_micro FROM public.usage_lease(:user, :rows, :block,"
    " :retire, :retire_micro, :hold_seconds)"
).bindparams(
    bindparam("retire", type_=UUID(as_uuid=True)),
    bindparam("retire_micro", type_=BigInteger),
)
# Unused parts of leases given back: a hold left with nothing is deleted.
_RETURN_LEASES = text(
    "WITH r AS (SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:micro AS bigint[]))"
    " AS r(id, micro)), gone AS (DELETE FROM public.usage_holds AS h USING r"
    " WHERE h.id = r.id AND h.amount_micro <= r.micro RETURNING h.id)"
    " UPDATE public.usage_holds AS h SET amount_micro = h.amount_micro - r.micro"
    " FROM r WHERE h.id = r.id AND h.amount_micro > r.micro"
)


@dataclass
class _Lease:
    hold_id: uuid.UUID | None
    price_micro: int
    left_micro: int
    expires: float


@dataclass(frozen=True)
class Leased:
    """A request admitted from a lease: the hold it is counted in, and how much."""

    hold_id: uuid.UUID | None
    amount_micro: int


class CreditLeases:
    """The credit holds of one serving process, taken in bulk: admission without a
    round trip on the hot path (docs/serving.md, "Credit leases").

    For each user the process holds one lease: a hold of up to
    :data:`LEASE_BLOCK_MICRO` (``public.usage_lease``: priced by the user's book;
    ``PaymentRequired`` when the balance does not cover the request itself, so a user
    with no credits is refused before the model runs). :meth:`take` admits a
    request from it in memory until it is used up or :data:`LEASE_SECONDS` old; then
    the next request's statement gives back the unused part and takes a new lease.
    Each request's record (:class:`RequestLog`) reduces the lease's hold by what it
    took, so a hold always covers exactly the requests admitted and not yet recorded
    plus what is left to admit: the user's balance is never overspent, in any number
    of processes. Near the limit the lease shrinks (a quarter of what is available,
    down to the request's own cost), so other processes find the rest; a process may
    still refuse while another holds an unused lease of the user, for at most
    :data:`LEASE_SECONDS`. :meth:`close` gives every unused part back (a graceful
    shutdown); after a crash the holds expire (``HOLD_SECONDS``) as a request's do.

    The key's quotas are not leased: they are counted per request, in the statement
    that reads the deployment, so they hold exactly across processes.
    """

    def __init__(
        self,
        *,
        block_micro: int = LEASE_BLOCK_MICRO,
        seconds: float = LEASE_SECONDS,
        hold_seconds: int = HOLD_SECONDS,
    ) -> None:
        self.block_micro = block_micro
        self.seconds = seconds
        self.hold_seconds = hold_seconds
        self.taken = 0  # leases taken (statements), for tests and the benchmark
        self._leases: dict[uuid.UUID, _Lease] = {}
        self._lock = threading.Lock()
        self._user_locks: dict[uuid.UUID, threading.Lock] = {}

    def _local(self, user_id: uuid.UUID, rows: int) -> Leased | None:
        lease = self._leases.get(user_id)
        if lease is None or lease.expires <= time.monotonic():
            return None
        return self._consume(lease, rows)

    @staticmethod
    def _consume(lease: _Lease, rows: int) -> Leased | None:
        amount = rows * lease.price_micro
        if amount > lease.left_micro:
            return None
        lease.left_micro -= amount
        return Leased(lease.hold_id if amount > 0 else None, amount)

    def take(self, bind: Connection | Session, user_id: uuid.UUID, rows: int) -> Leased:
        """Admit ``rows`` of ``user_id`` from the process's lease, taking a new one
        (one statement on ``bind``, in autocommit) when it is used up or expired."""
        n = _count(rows, "rows")
        with self._lock:
            found = self._local(user_id, n)
            if found is not None:
                return found
            user_lock = self._user_locks.setdefault(user_id, threading.Lock())
        with user_lock:  # one renewal per user at a time; the others use its lease
            with self._lock:
                found = self._local(user_id, n)
                if found is not None:
                    return found
                old = self._leases.pop(user_id, None)
            retire = old.hold_id if old is not None and old.left_micro > 0 else None
            try:
                row = bind.execute(
                    _LEASE,
                    {
                        "user": user_id,
                        "rows": n,
                        "block": max(self.block_micro, 0),
                        "retire": retire,
                        "retire_micro": old.left_micro if old is not None and retire else 0,
                        "hold_seconds": self.hold_seconds,
                    },
                ).one()
            except BaseException:
                if old is not None:
                    with self._lock:  # nothing was given back: it stays usable
                        self._leases.setdefault(user_id, old)
                raise
            self.taken += 1
            hold_id, amount, price = row
            lease = _Lease(hold_id, int(price), int(amount or 0), time.monotonic() + self.seconds)
            with self._lock:
                if not price:  # free: nothing held, and nothing kept (a price may come)
                    lease.left_micro, lease.expires = 0, 0.0
                self._leases[user_id] = lease
                found = self._consume(lease, n)
            assert found is not None  # the statement held at least this request's cost
            return found

    def give_back(self, bind: Connection | Session, user_id: uuid.UUID, leased: Leased) -> None:
        """A request admitted from the lease that will not run after all (its
        deployment was not served as guessed, a quota refused it): its part may be
        admitted again, or, when the lease was renewed meanwhile, its hold is reduced
        now (one statement on ``bind``)."""
        if leased.amount_micro <= 0 or leased.hold_id is None:
            return
        with self._lock:
            lease = self._leases.get(user_id)
            if lease is not None and lease.hold_id == leased.hold_id:
                lease.left_micro += leased.amount_micro
                return
        bind.execute(_RETURN_LEASES, {"ids": [leased.hold_id], "micro": [leased.amount_micro]})

    def left(self, user_id: uuid.UUID) -> int:
        """Micro-credits the process may still admit for ``user_id`` without a statement."""
        with self._lock:
            lease = self._leases.get(user_id)
            return 0 if lease is None else lease.left_micro

    def return_expired(self, bind: Engine) -> int:
        """Give back the unused part of every lease past :data:`LEASE_SECONDS` (one
        statement; none when there is nothing to give): a user who stopped sending
        requests does not keep credit held by this process. Run by the request log's
        thread after its writes (:class:`RequestLog`'s ``after_write``)."""
        now = time.monotonic()
        with self._lock:
            expired = [u for u, lease in self._leases.items() if lease.expires <= now]
            parts = {}
            for user in expired:
                lease = self._leases.pop(user)
                if lease.hold_id is not None and lease.left_micro > 0:
                    parts[lease.hold_id] = lease.left_micro
        if not parts:
            return 0
        with bind.connect() as conn:
            conn.execute(_RETURN_LEASES, {"ids": list(parts), "micro": list(parts.values())})
            conn.commit()
        return len(parts)

    def close(self, bind: Engine) -> int:
        """Give every lease's unused part back (a graceful shutdown, or a test that
        wants the holds settled; write the request log first): one statement. The
        number of leases given back; the next :meth:`take` takes a new one."""
        with self._lock:
            parts = {
                lease.hold_id: lease.left_micro
                for lease in self._leases.values()
                if lease.hold_id is not None and lease.left_micro > 0
            }
            self._leases.clear()
        if not parts:
            return 0
        with bind.connect() as conn:
            conn.execute(_RETURN_LEASES, {"ids": list(parts), "micro": list(parts.values())})
            conn.commit()
        return len(parts)


def record_usage(
    session_or_engine: Session | Engine,
    *,
    user_id: uuid.UUID,
    sku: UsageSku | str,
    quantity: int,
    idempotency_key: str,
    deployment_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
) -> bool:
    """Record ``quantity`` units of ``sku`` (e.g. a batch job's rows, keyed by the
    job) at today's price; False when ``idempotency_key`` was recorded already.
    Charged later, in aggregate, like predictions."""
    n = _count(quantity, "quantity")
    if n == 0:
        return False
    key = str(idempotency_key or "").strip()
    if not key or len(key) > 200:
        raise errors.InvalidValue("idempotency_key must have 1 to 200 characters")
    try:
        with _session(session_or_engine) as s:
            s.execute(
                text(
                    "INSERT INTO public.usage_events (user_id, deployment_id, api_key_id, sku,"
                    " quantity, unit_price_micro, idempotency_key) VALUES (:user, :deployment,"
                    " :key, CAST(:sku AS usage_sku), :n, :price, :ikey)"
                ),
                {
                    "user": _uuid(user_id, "user_id"),
                    "deployment": deployment_id,
                    "key": api_key_id,
                    "sku": UsageSku(sku).value,
                    "n": n,
                    "price": unit_price_micro(sku),
                    "ikey": key,
                },
            )
    except errors.UsageAlreadyRecorded:
        return False
    return True


# --- aggregation ----------------------------------------------------------------------
@dataclass
class ChargeReport:
    users: int = 0
    charges: int = 0
    credits: int = 0
    #: Users whose usage could not be paid (left uncharged): id -> the message.
    unpaid: dict[uuid.UUID, str] = field(default_factory=dict)

    def render(self) -> str:
        line = f"{self.charges} usage charges, {self.credits} credits, {self.users} users"
        if self.unpaid:
            line += f"; {len(self.unpaid)} users could not pay (left uncharged)"
        return line


def charge_key(
    user_id: uuid.UUID,
    deployment_id: uuid.UUID | None,
    sku: str,
    start: dt.datetime,
    end: dt.datetime,
) -> str:
    """The idempotency key of one (deployment, sku, period)'s charge."""
    return (
        f"usage:{user_id}:{deployment_id or '-'}:{sku}:"
        f"{start.astimezone(dt.UTC).isoformat()}:{end.astimezone(dt.UTC).isoformat()}"
    )


def _charge_user(
    s: Session, user_id: uuid.UUID, through: dt.datetime | None, report: ChargeReport
) -> None:
    meter = s.execute(
        text(
            "SELECT charged_through, pending_micro, clock_timestamp() AS now"
            " FROM public.usage_meters WHERE user_id = :u FOR UPDATE"
        ),
        {"u": user_id},
    ).one_or_none()
    if meter is None:
        return
    now: dt.datetime = meter.now
    closed = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    cutoff = min(through, now) if through is not None else closed
    start: dt.datetime = meter.charged_through
    if cutoff <= start:
        return
    groups = s.execute(
        text(
            "SELECT deployment_id, sku::text AS sku, sum(quantity)::bigint AS quantity,"
            " sum(quantity * unit_price_micro)::bigint AS amount"
            " FROM public.usage_events WHERE user_id = :u"
            " AND created_at >= :start AND created_at < :cutoff"
            " GROUP BY deployment_id, sku ORDER BY deployment_id NULLS FIRST, sku"
        ),
        {"u": user_id, "start": start, "cutoff": cutoff},
    ).all()
    later = int(
        s.execute(
            text(
                "SELECT coalesce(sum(quantity * unit_price_micro), 0)::bigint"
                " FROM public.usage_events WHERE user_id = :u AND created_at >= :cutoff"
            ),
            {"u": user_id, "cutoff": cutoff},
        ).scalar_one()
    )
    carry = int(meter.pending_micro) - later - sum(int(g.amount) for g in groups)
    if carry < 0 or carry >= MICRO:
        # The meter does not add up (automl-db verify says where): charge nothing.
        report.unpaid[user_id] = f"usage meter drift (carry {carry}): run automl-db verify"
        raise _Skip
    total = 0
    for g in groups:
        owed = carry + int(g.amount)
        credits, carry = divmod(owed, MICRO)
        entry_id = None
        if credits:
            # The entry carries neither a key nor a description (issue 16, the
            # ledger's weight): the usage charge below names the entry
            # (credit_tx_usage_accounted checks it at commit, ML094) and is unique
            # per user, period, deployment and sku; database.credits.describe
            # derives the description from it.
            entry = CreditTransaction(
                user_id=user_id, type=TransactionType.CONSUMPTION, amount=-credits
            )
            s.add(entry)
            s.flush()
            entry_id = entry.id
        s.add(
            UsageCharge(
                user_id=user_id,
                deployment_id=g.deployment_id,
                sku=UsageSku(g.sku),
                period_start=start,
                period_end=cutoff,
                quantity=int(g.quantity),
                amount_micro=int(g.amount),
                credits=credits,
                ledger_entry_id=entry_id,
                # No key (c16d00000001): the row's unique (user, start, deployment,
                # sku) is it (charge_key renders it).
            )
        )
        total += credits
        report.charges += 1
    s.flush()
    s.execute(
        text(
            "UPDATE public.usage_meters SET charged_through = :cutoff,"
            " pending_micro = pending_micro - :charged WHERE user_id = :u"
        ),
        {"u": user_id, "cutoff": cutoff, "charged": total * MICRO},
    )
    report.credits += total
    report.users += 1


class _Skip(Exception):
    pass


def charge_usage(
    bind: Engine | Session,
    *,
    user_id: uuid.UUID | None = None,
    through: dt.datetime | None = None,
) -> ChargeReport:
    """Charge uncharged usage through the ledger, one transaction per user.

    Without ``through``, the hours that have ended (what the worker runs); with it,
    everything dated before ``through`` (capped at now: on demand). A user whose
    balance cannot pay is rolled back and listed in ``unpaid``; the others are
    charged. Idempotent under retries and concurrent runs (module doc)."""
    report = ChargeReport()
    if through is not None and through.tzinfo is None:
        raise errors.InvalidValue("through must be timezone-aware")
    if user_id is not None:
        users = [_uuid(user_id, "user_id")]
    else:
        with _session(bind) as s:
            users = list(
                s.execute(
                    text(
                        "SELECT m.user_id FROM public.usage_meters AS m"
                        " WHERE m.charged_through < coalesce(:through, date_trunc('hour', now()))"
                        " AND EXISTS (SELECT 1 FROM public.usage_events AS e"
                        "  WHERE e.user_id = m.user_id AND e.created_at >= m.charged_through"
                        "  AND e.created_at < coalesce(:through, date_trunc('hour', now())))"
                        " ORDER BY m.user_id"
                    ),
                    {"through": through},
                ).scalars()
            )
    for uid in users:
        try:
            with _session(bind) as s:
                _charge_user(s, uid, through, report)
        except _Skip:
            continue
        except errors.InsufficientCredits as exc:
            report.unpaid[uid] = str(exc)
    return report


# --- partitions -----------------------------------------------------------------------
def ensure_partitions(engine: Engine | Session, months_ahead: int = 2) -> list[str]:
    """Make this month's partition of ``inference_requests`` and the next
    ``months_ahead`` ones (UTC months) that are missing; the names made."""
    n = _count(months_ahead, "months_ahead")
    with _session(engine) as s:
        return list(
            s.execute(
                text("SELECT public.inference_requests_ensure_partitions(:n)"), {"n": n}
            ).scalars()
        )


def _month_start(year: int, month: int) -> dt.datetime:
    return dt.datetime(year, month, 1, tzinfo=dt.UTC)


def _next_month(start: dt.datetime) -> dt.datetime:
    return _month_start(start.year + start.month // 12, start.month % 12 + 1)


def partitions(engine: Engine | Session) -> list[tuple[str, dt.datetime, dt.datetime]]:
    """The partitions of ``inference_requests``: (name, from, to), oldest first."""
    with _session(engine) as s:
        names = s.execute(
            text(
                "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'public.inference_requests'::regclass ORDER BY 1"
            )
        ).scalars()
        out = []
        for name in names:
            m = _PARTITION_NAME.match(name)
            if m:
                start = _month_start(int(m.group(1)), int(m.group(2)))
                out.append((name, start, _next_month(start)))
        return out


def drop_partitions_before(
    engine: Engine | Session, before: dt.date | dt.datetime, *, dry_run: bool = False
) -> list[str]:
    """Drop the months of ``inference_requests`` that end on or before ``before``
    (a date is midnight UTC); never the current month. Owner only (DDL: the rows
    go with their partition; DELETE stays refused). The names dropped (or, with
    ``dry_run``, that would be)."""
    if isinstance(before, dt.datetime):
        if before.tzinfo is None:
            raise errors.InvalidValue("before must be timezone-aware")
        limit = before
    else:
        limit = dt.datetime(before.year, before.month, before.day, tzinfo=dt.UTC)
    now = dt.datetime.now(dt.UTC)
    current = _month_start(now.year, now.month)
    doomed = [name for name, _start, end in partitions(engine) if end <= limit and end <= current]
    if dry_run:
        return doomed
    for name in doomed:
        with _session(engine) as s:
            s.execute(text("SET LOCAL lock_timeout = '5s'"))
            s.execute(text(f'DROP TABLE IF EXISTS public."{name}"'))
    return doomed


# --- housekeeping ---------------------------------------------------------------------
def sweep(engine: Engine | Session) -> tuple[int, int]:
    """Remove expired holds and quota windows no limit looks at any more (minutes
    older than an hour, months before the previous one): (holds, windows)."""
    with _session(engine) as s:
        holds = s.execute(text("DELETE FROM public.usage_holds WHERE expires_at <= now()"))
        windows = s.execute(
            text(
                "DELETE FROM public.api_key_usage_windows WHERE"
                " (period = 'minute' AND window_start < now() - interval '1 hour') OR"
                " (period = 'month' AND window_start < now() - interval '62 days')"
            )
        )
        return int(getattr(holds, "rowcount", 0)), int(getattr(windows, "rowcount", 0))


@dataclass
class MaintenanceReport:
    partitions_made: list[str]
    charges: ChargeReport
    holds_swept: int
    windows_swept: int

    def render(self) -> str:
        made = ", ".join(self.partitions_made) or "none"
        return (
            f"partitions made: {made}; {self.charges.render()};"
            f" swept {self.holds_swept} holds, {self.windows_swept} quota windows"
        )


def maintenance(engine: Engine, months_ahead: int = 2) -> MaintenanceReport:
    """What the worker runs periodically: partitions ahead, the closed hours'
    charges, the sweep."""
    made = ensure_partitions(engine, months_ahead)
    charges = charge_usage(engine)
    holds, windows = sweep(engine)
    return MaintenanceReport(made, charges, holds, windows)


# --- reading --------------------------------------------------------------------------
GROUPS = {
    "day": "date_trunc('day', {t} AT TIME ZONE 'UTC')::date::text",
    "deployment": "coalesce({d}::text, '')",
    "sku": "{s}::text",
}


def usage_summary(
    session: Session,
    user_id: uuid.UUID,
    start: dt.datetime,
    end: dt.datetime,
    group_by: str,
) -> list[dict[str, Any]]:
    """What ``user_id`` used in ``[start, end)`` (quantity and its cost, by the usage
    events' dates) and was charged (credits of the charges whose period starts in
    it), grouped by ``day`` (UTC), ``deployment`` or ``sku``; each row has ``key``,
    ``sku``, ``quantity``, ``cost_micro``, ``charged_credits``."""
    if group_by not in GROUPS:
        raise errors.InvalidValue(f"group_by must be one of {', '.join(GROUPS)}")
    used_key = GROUPS[group_by].format(t="created_at", d="deployment_id", s="sku")
    charged_key = GROUPS[group_by].format(t="period_start", d="deployment_id", s="sku")
    rows = session.execute(
        text(
            f"""
            WITH used AS (
                SELECT {used_key} AS key, sku::text AS sku, sum(quantity)::bigint AS quantity,
                       sum(quantity * unit_price_micro)::bigint AS cost_micro
                  FROM public.usage_events
                 WHERE user_id = :u AND created_at >= :start AND created_at < :end
                 GROUP BY 1, 2
            ), charged AS (
                SELECT {charged_key} AS key, sku::text AS sku, sum(credits)::bigint AS credits
                  FROM public.usage_charges
                 WHERE user_id = :u AND period_start >= :start AND period_start < :end
                 GROUP BY 1, 2
            )
            SELECT coalesce(used.key, charged.key) AS key,
                   coalesce(used.sku, charged.sku) AS sku,
                   coalesce(used.quantity, 0) AS quantity,
                   coalesce(used.cost_micro, 0) AS cost_micro,
                   coalesce(charged.credits, 0) AS charged_credits
              FROM used FULL JOIN charged ON used.key = charged.key AND used.sku = charged.sku
             ORDER BY 1, 2
            """
        ),
        {"u": user_id, "start": start, "end": end},
    ).mappings()
    return [dict(r) for r in rows]


# --- verification (automl-db verify) --------------------------------------------------
_IDS_FILTER = "(CAST(:ids AS uuid[]) IS NULL OR {col} = ANY(CAST(:ids AS uuid[])))"

_VERIFY = [
    # A ledger charge of usage (a consumption naming no job) is one usage charge's.
    """
    SELECT t.user_id, format('ledger entry %s charged %s credits of usage that no usage charge'
                             ' accounts for', t.id, -t.amount) AS problem
      FROM public.credit_transactions AS t
      LEFT JOIN public.usage_charges AS c ON c.ledger_entry_id = t.id
     WHERE t.type = 'consumption' AND t.job_id IS NULL AND {ids_t}
       AND (c.id IS NULL OR c.credits <> -t.amount)
    """,
    # ... and a usage charge's ledger entry is there, the user's, for its credits.
    """
    SELECT c.user_id, format('usage charge %s names ledger entry %s, which %s', c.id,
                             c.ledger_entry_id,
                             CASE WHEN t.id IS NULL THEN 'does not exist'
                                  ELSE 'is not its charge' END) AS problem
      FROM public.usage_charges AS c
      LEFT JOIN public.credit_transactions AS t ON t.id = c.ledger_entry_id
     WHERE c.ledger_entry_id IS NOT NULL AND {ids_c}
       AND (t.id IS NULL OR t.user_id <> c.user_id OR t.type <> 'consumption'
            OR t.amount <> -c.credits OR t.idempotency_key <> c.idempotency_key)
    """,
    # Rounding: whole credits of the cost charged, the remainder carried.
    """
    SELECT c.user_id, format('usage charges sum to %s credits, their cost to %s micro-credits'
                             ' (floor: %s)', sum(c.credits), sum(c.amount_micro),
                             floor(sum(c.amount_micro) / 1000000)) AS problem
      FROM public.usage_charges AS c WHERE {ids_c}
     GROUP BY c.user_id
    HAVING sum(c.credits) <> floor(sum(c.amount_micro) / 1000000)
    """,
    # A charge covers exactly the usage events of its period.
    """
    SELECT c.user_id, format('usage charge %s covers %s units costing %s, but its period holds'
                             ' %s costing %s', c.id, c.quantity, c.amount_micro, ev.q, ev.a)
      FROM public.usage_charges AS c
      CROSS JOIN LATERAL (
            SELECT coalesce(sum(e.quantity), 0) AS q,
                   coalesce(sum(e.quantity * e.unit_price_micro), 0) AS a
              FROM public.usage_events AS e
             WHERE e.user_id = c.user_id AND e.sku = c.sku
               AND e.deployment_id IS NOT DISTINCT FROM c.deployment_id
               AND e.created_at >= c.period_start AND e.created_at < c.period_end) AS ev
     WHERE {ids_c} AND (ev.q <> c.quantity OR ev.a <> c.amount_micro)
    """,
    # No usage is charged twice: the periods of one deployment and sku never overlap.
    """
    SELECT a.user_id, format('usage charges %s and %s overlap: usage charged twice',
                             a.id, b.id) AS problem
      FROM public.usage_charges AS a
      JOIN public.usage_charges AS b
        ON b.user_id = a.user_id AND b.sku = a.sku AND a.id < b.id
       AND b.deployment_id IS NOT DISTINCT FROM a.deployment_id
       AND a.period_start < b.period_end AND b.period_start < a.period_end
     WHERE {ids_a}
    """,
    # Usage dated before the meter's mark is covered by a charge.
    """
    SELECT e.user_id, format('%s usage events before %s were never charged', count(*),
                             m.charged_through) AS problem
      FROM public.usage_events AS e
      JOIN public.usage_meters AS m ON m.user_id = e.user_id
     WHERE {ids_e} AND e.created_at < m.charged_through
       AND NOT EXISTS (SELECT 1 FROM public.usage_charges AS c
                        WHERE c.user_id = e.user_id AND c.sku = e.sku
                          AND c.deployment_id IS NOT DISTINCT FROM e.deployment_id
                          AND e.created_at >= c.period_start AND e.created_at < c.period_end)
     GROUP BY e.user_id, m.charged_through
    """,
    # The meter: what was used less what was charged.
    """
    SELECT u.user_id, format('usage meter holds %s micro-credits pending, usage less charges'
                             ' is %s', coalesce(m.pending_micro, 0), u.expected) AS problem
      FROM (SELECT x.user_id,
                   coalesce((SELECT sum(e.quantity * e.unit_price_micro)
                               FROM public.usage_events AS e WHERE e.user_id = x.user_id), 0)
                   - 1000000 * coalesce((SELECT sum(c.credits) FROM public.usage_charges AS c
                                          WHERE c.user_id = x.user_id), 0) AS expected
              FROM (SELECT user_id FROM public.usage_meters
                    UNION SELECT user_id FROM public.usage_events) AS x) AS u
      LEFT JOIN public.usage_meters AS m ON m.user_id = u.user_id
     WHERE {ids_u} AND coalesce(m.pending_micro, 0) <> u.expected
    """,
]


def verify_usage(conn: Any, user_ids: list[uuid.UUID] | None = None) -> list[tuple[uuid.UUID, str]]:
    """The metering invariants ``automl-db verify`` checks, per user: what the ledger
    charged for usage equals the usage charges' credits, whole credits of their cost;
    each charge covers exactly its period's usage; none overlaps another (no usage
    charged twice); no usage before a user's mark is left uncharged; the meter
    equals usage less charges. Reported, never repaired. ``conn`` is a Connection
    or Session (its transaction)."""
    found: list[tuple[uuid.UUID, str]] = []
    filters = {f"ids_{a}": _IDS_FILTER.format(col=f"{a}.user_id") for a in "tcaeu"}
    ids = bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))
    for statement in _VERIFY:
        rows = conn.execute(text(statement.format(**filters)).bindparams(ids), {"ids": user_ids})
        found.extend((r[0], r[1]) for r in rows)
    return found
