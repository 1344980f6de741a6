"""The immutable credit ledger. Its rules live in sql/triggers/credit_ledger.sql."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    DDL,
    CheckConstraint,
    FetchedValue,
    ForeignKey,
    Index,
    event,
    inspect,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from database.base import Base, CreatedAtMixin, IDMixin
from database.models.enums import TransactionType, transaction_type

if TYPE_CHECKING:
    from database.models.credit_package import CreditPackage
    from database.models.job import Job
    from database.models.user import User


class CreditTransaction(IDMixin, CreatedAtMixin, Base):
    __tablename__ = "credit_transactions"

    # Time-ordered ids (PostgreSQL 18's uuidv7()), unlike the other tables: entries
    # are appended in time order, so the primary key's b-tree is filled at its right
    # edge (about 90% full) instead of at random places (about 65%): 12 bytes less
    # per entry (issue 16, the ledger's weight; docs/billing.md). A client may still
    # give its own id (any uuid).
    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("uuidv7()"), sort_order=-100
    )

    # RESTRICT: the ledger outlives everything it names (a purged user stays as a tombstone).
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    type: Mapped[TransactionType] = mapped_column(transaction_type)
    amount: Mapped[int]
    # Set by the credit_tx_before_insert trigger; any value given is replaced.
    balance_after: Mapped[int] = mapped_column(server_default=FetchedValue())
    # What the entry was for; NULL where credits.describe derives it: a purchase (its
    # package), a usage charge (its usage_charges row) and, since c16e00000001, a
    # refund of its job's end (the job's error, else "job <status>").
    description: Mapped[str | None]
    # RESTRICT: a job that was charged or refunded is never deleted. The job is the
    # entry's user's own: credit_tx_before_insert tests it (ML095) and a job's owner
    # never changes (jobs_user_id_immutable, ML096), c16e00000001. It was a composite
    # key (job_id, user_id) -> jobs (id, user_id), whose index had to hold user_id.
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="RESTRICT"))
    package_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("credit_packages.id", ondelete="RESTRICT")
    )
    stripe_payment_id: Mapped[str | None]
    # Who made an adjustment (an admin's id or name); NULL for the other types.
    actor: Mapped[str | None]
    # The caller's key that makes a retried adjustment return the first entry
    # (database.credits.adjust); unique when given.
    idempotency_key: Mapped[str | None]

    user: Mapped[User] = relationship(
        back_populates="credit_transactions", lazy="raise_on_sql", viewonly=True
    )
    job: Mapped[Job | None] = relationship(
        lazy="raise_on_sql", foreign_keys="CreditTransaction.job_id", viewonly=True
    )
    package: Mapped[CreditPackage | None] = relationship(lazy="raise_on_sql", viewonly=True)

    __table_args__ = (
        CheckConstraint(
            "(type = 'purchase' AND amount > 0) OR (type = 'consumption' AND amount < 0)"
            " OR (type = 'refund' AND amount > 0) OR (type = 'adjustment' AND amount <> 0)",
            name="amount_sign",
        ),
        # A consumption charges a job, or usage (database.metering): then it names
        # no job, and its usage_charges row (same transaction, checked at commit by
        # credit_tx_usage_accounted, ML094) holds the key and what was used. Entries
        # of usage before c16d00000001 carry the key too; a job's charge never does.
        CheckConstraint(
            "CASE type WHEN 'consumption'"
            " THEN job_id IS NULL OR idempotency_key IS NULL"
            " WHEN 'refund' THEN job_id IS NOT NULL ELSE job_id IS NULL END",
            name="job_only_for_charges",
        ),
        CheckConstraint(
            "type = 'purchase' OR (package_id IS NULL AND stripe_payment_id IS NULL)",
            name="payment_only_for_purchases",
        ),
        CheckConstraint(
            "type <> 'adjustment' OR (actor IS NOT NULL AND description IS NOT NULL)",
            name="adjustment_has_actor_and_reason",
        ),
        CheckConstraint("type = 'adjustment' OR actor IS NULL", name="actor_only_for_adjustments"),
        CheckConstraint("balance_after >= 0", name="balance_after_nonnegative"),
        # A payment credits the ledger once: unique on the payment id's 64-bit key
        # (c16f00000001, issue 16, the ledger's weight: 16-byte index tuples where
        # the text's took 40). PostgreSQL enforces it at every isolation level; two
        # distinct ids of one key (about n^2 / 2^65 for n payments) are refused like
        # a duplicate (docs/billing.md). Lookups by payment id name the key to use
        # it (credits.payment_is). Partial: only purchases carry a payment id. A
        # client retrying a payment with ON CONFLICT names the expression and the
        # predicate: ON CONFLICT ((hashtextextended(stripe_payment_id, 0)))
        # WHERE stripe_payment_id IS NOT NULL.
        Index(
            "uq_credit_transactions_stripe_payment_id",
            text("hashtextextended(stripe_payment_id, 0)"),
            unique=True,
            postgresql_where=text("stripe_payment_id IS NOT NULL"),
        ),
        # Partial: charges and purchases (no key) add nothing to this index.
        Index(
            "uq_credit_transactions_idempotency_key",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # One index for a job's entries (issue 16): a job is charged at most once and
        # refunded at most once, and it serves the job_id foreign key and the
        # triggers' lookups. Partial: only charges and refunds of jobs name one.
        # (job_id, type): 32-byte tuples, 48 with user_id (c16b-c16d's
        # (job_id, user_id, type), for the composite foreign key): c16e00000001.
        Index(
            "uq_credit_transactions_job_id_type",
            "job_id",
            "type",
            unique=True,
            postgresql_where=text("job_id IS NOT NULL"),
        ),
        # A user's ledger by calendar month (UTC), c16g00000001 (issue 16, the ledger's
        # weight): the key is (user, month), so a user's entries of one month share one
        # key and PostgreSQL's b-tree deduplication stores them as a posting list, about
        # 6 bytes an entry. (user_id, created_at) gave every entry a 36-byte tuple, and
        # its pages split in halves where a user's entries go on (between users), so a
        # user with many entries left half-empty pages behind: 49 bytes an entry in the
        # bench, 68 for users of a thousand entries. It serves the foreign key (user_id
        # leads), a month's statement and spend (one key), and the newest-first pages
        # (ordered by month first, then each month's entries sorted: a page reads the
        # user's entries of the months it spans). Queries name the month with
        # database.credits.ledger_month, the index's expression.
        Index(
            "ix_credit_transactions_user_id_month",
            "user_id",
            # As PostgreSQL prints it back (alembic's comparison keeps the parentheses).
            text("date_trunc('month', (created_at AT TIME ZONE 'UTC'))"),
        ),
        # Partial (issue 16): only purchases name a package. The foreign key's check
        # (package_id = value) implies the predicate and uses it.
        Index(
            "ix_credit_transactions_package_id",
            "package_id",
            postgresql_where=text("package_id IS NOT NULL"),
        ),
    )


# The primary key's b-tree is filled to 100% where it grows (c16d00000001, issue 16):
# entry ids are time-ordered (uuidv7()) and the ledger is append-only, so pages split
# only at the right edge and are never written again; the default 90 left a tenth of
# every page empty for inserts that never come (3 bytes an entry). Only the primary
# key: the job and user indexes take late entries in the middle, where full pages
# split in halves (measured: both grow at 100). The migration sets it; this keeps a
# create_all() database alike (autogenerate compares no storage parameters).
event.listen(
    CreditTransaction.__table__,
    "after_create",
    DDL("ALTER INDEX pk_credit_transactions SET (fillfactor = 100)"),
)


@event.listens_for(CreditTransaction, "before_insert")
def _balance_after_is_the_databases(
    mapper: Any, connection: Any, target: CreditTransaction
) -> None:
    # The trigger replaces any client value; dropping it here makes the object
    # read the real one back (RETURNING) instead of keeping the client's number.
    state = inspect(target)
    if "balance_after" in state.dict:
        del state.dict["balance_after"]
