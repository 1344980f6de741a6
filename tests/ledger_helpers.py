"""Helpers shared by test_credit_ledger.py and test_credit_ledger_concurrency.py.

Everything goes through the ``sql`` fixture (one committed transaction per call)
unless a test opens its own connection.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

ADMIN = "admin@example.com"
#: Name prefix of the packages ``Ledger.paid`` makes: not part of ``db_state``.
AUTO_PACKAGE = "auto-package-"


class Ledger:
    """Small factory and query helpers around the ``sql`` fixture."""

    def __init__(self, sql: Any) -> None:
        self.sql = sql
        self._n = 0
        self._packages: dict[int, uuid.UUID] = {}

    # --- rows ----------------------------------------------------------------------
    def user(self, credits: int = 0) -> uuid.UUID:
        self._n += 1
        uid = self.sql(
            "INSERT INTO users(email) VALUES (:e) RETURNING id", e=f"user{self._n}@example.com"
        )[0][0]
        if credits:
            self.purchase(uid, credits)
        return uid

    def jobs(self, user: uuid.UUID, n: int, cost: int = 0) -> list[uuid.UUID]:
        snap = self.sql(
            "INSERT INTO workflow_snapshots(user_id, snapshot_data) VALUES (:u, '{}') RETURNING id",
            u=user,
        )[0][0]
        rows = self.sql(
            "INSERT INTO jobs(user_id, workflow_snapshot_id, credit_cost)"
            " SELECT :u, :s, :c FROM generate_series(1, :n) RETURNING id",
            u=user,
            s=snap,
            c=cost,
            n=n,
        )
        return [r[0] for r in rows]

    def job(self, user: uuid.UUID, cost: int = 0) -> uuid.UUID:
        return self.jobs(user, 1, cost)[0]

    def package(self, credits: int = 100) -> uuid.UUID:
        self._n += 1
        return self.sql(
            "INSERT INTO credit_packages(name, credits, price_cents) VALUES (:n, :c, 999)"
            " RETURNING id",
            n=f"pack{self._n}",
            c=credits,
        )[0][0]

    def soft_delete(self, user: uuid.UUID) -> None:
        self.sql("UPDATE users SET is_deleted = true, deleted_at = now() WHERE id = :u", u=user)

    def restore(self, user: uuid.UUID) -> None:
        self.sql("UPDATE users SET is_deleted = false, deleted_at = NULL WHERE id = :u", u=user)

    # --- ledger entries -------------------------------------------------------------
    def insert(self, user: uuid.UUID | None, type: str, amount: int | None, **cols: Any) -> Any:
        """One ledger entry; returns (id, balance_after, created_at). A purchase gets
        a package and a payment reference (``paid``) unless the columns are given."""
        cols = self.paid(type, amount, cols)
        names = ["user_id", "type", "amount", *cols]
        params = {"user_id": user, "type": type, "amount": amount, **cols}
        return self.sql(
            f"INSERT INTO credit_transactions({', '.join(names)})"
            f" VALUES ({', '.join(':' + n for n in names)})"
            " RETURNING id, balance_after, created_at",
            **params,
        )[0]

    def paid(self, type: str, amount: Any, cols: dict[str, Any]) -> dict[str, Any]:
        """``cols`` of a purchase as the rules want it (ML020): a package of ``amount``
        credits (one per amount, made on first use) and a payment reference of its
        own, unless ``package_id`` / ``stripe_payment_id`` are given (None: NULL).
        Other types are returned as they are."""
        if type != "purchase":
            return cols
        cols = dict(cols)
        if "package_id" not in cols and isinstance(amount, int) and amount > 0:
            cols["package_id"] = self.package_for(amount)
        if "stripe_payment_id" not in cols:
            self._n += 1
            cols["stripe_payment_id"] = f"pi_test_{self._n}_{uuid.uuid4().hex[:8]}"
        return cols

    def purchase(self, user: uuid.UUID, amount: int, **cols: Any) -> Any:
        return self.insert(user, "purchase", amount, **cols)

    def package_for(self, credits: int) -> uuid.UUID:
        """The package of ``credits`` credits (made once per Ledger)."""
        if credits not in self._packages:
            self._packages[credits] = self.sql(
                "INSERT INTO credit_packages(name, credits, price_cents) VALUES (:n, :c, 999)"
                " RETURNING id",
                n=f"{AUTO_PACKAGE}{credits}-{uuid.uuid4().hex[:8]}",
                c=credits,
            )[0][0]
        return self._packages[credits]

    def charge(self, user: uuid.UUID, job: uuid.UUID | None, credits: int, **cols: Any) -> Any:
        """A consumption of ``credits`` (given positive, stored negative)."""
        return self.insert(user, "consumption", -credits, job_id=job, **cols)

    def refund(self, user: uuid.UUID, job: uuid.UUID | None, amount: int, **cols: Any) -> Any:
        return self.insert(user, "refund", amount, job_id=job, **cols)

    def adjust(
        self,
        user: uuid.UUID,
        amount: int,
        actor: str | None = ADMIN,
        description: str | None = "support correction",
        **cols: Any,
    ) -> Any:
        return self.insert(user, "adjustment", amount, actor=actor, description=description, **cols)

    # --- reads -----------------------------------------------------------------------
    def balance(self, user: uuid.UUID) -> int:
        return self.sql("SELECT credit_balance FROM users WHERE id = :u", u=user)[0][0]

    def count(self, user: uuid.UUID | None = None) -> int:
        if user is None:
            return self.sql("SELECT count(*) FROM credit_transactions")[0][0]
        return self.sql("SELECT count(*) FROM credit_transactions WHERE user_id = :u", u=user)[0][0]

    def entries(self, user: uuid.UUID) -> list[Any]:
        return self.sql(
            "SELECT id, type::text, amount, balance_after, created_at, job_id"
            " FROM credit_transactions WHERE user_id = :u ORDER BY created_at",
            u=user,
        )


# --- "nothing changed" ---------------------------------------------------------------
def db_state(sql: Any) -> tuple[Any, ...]:
    """Everything a refused ledger statement could have touched."""
    return (
        sql("SELECT id, credit_balance, is_deleted, updated_at FROM users ORDER BY id"),
        sql(
            "SELECT id, user_id, type::text, amount, balance_after, job_id, package_id,"
            " stripe_payment_id, description, actor, created_at"
            " FROM credit_transactions ORDER BY id"
        ),
        sql("SELECT id, user_id FROM jobs ORDER BY id"),
        sql(f"SELECT id FROM credit_packages WHERE name NOT LIKE '{AUTO_PACKAGE}%' ORDER BY id"),
    )


@contextmanager
def refused(sql: Any, exc_type: type[BaseException]) -> Iterator[pytest.ExceptionInfo[Any]]:
    """The body must raise exactly ``exc_type`` (not a subclass) and change nothing."""
    before = db_state(sql)
    with pytest.raises(exc_type) as info:
        yield info
    assert type(info.value) is exc_type, f"expected {exc_type.__name__}, got {info.value!r}"
    assert db_state(sql) == before, "a refused statement changed the database"


# --- the ledger invariant --------------------------------------------------------------
def trail_end(start: int, entries: list[tuple[int, int]]) -> int:
    """The end of a chain using every entry once, starting at balance ``start``.

    Each (amount, balance_after) entry is an edge from balance_after - amount to
    balance_after; the entries form a valid chain only if they make one Euler trail
    from ``start`` (whatever order they were applied in). Fails if they do not.
    """
    if not entries:
        return start
    degree: Counter[int] = Counter()
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for amount, after in entries:
        before = after - amount
        degree[before] += 1
        degree[after] -= 1
        parent[find(before)] = find(after)
    assert start in parent, f"no entry continues from balance {start}: {entries}"
    roots = {find(x) for x in parent}
    assert len(roots) == 1, f"entries do not form one chain: {entries}"
    surplus = {x: d for x, d in degree.items() if d}
    if not surplus:
        return start  # a closed chain ends where it started
    ends = [x for x, d in surplus.items() if d == -1]
    assert surplus.get(start) == 1 and len(surplus) == 2 and len(ends) == 1, (
        f"entries are not one chain from {start}: {entries}"
    )
    return ends[0]


def assert_consistent(sql: Any, user: uuid.UUID, *, by_created_at: bool = True) -> int:
    """credit_balance = sum(amount) = the end of the balance_after chain.

    With ``by_created_at``, the chain is also followed in created_at order (entries
    of one transaction share a created_at and are chained among themselves), so the
    latest entry's balance_after is the balance. Returns the balance.
    """
    balance, total, negative = sql(
        "SELECT u.credit_balance,"
        "       (SELECT coalesce(sum(t.amount), 0) FROM credit_transactions t"
        "         WHERE t.user_id = u.id),"
        "       (SELECT count(*) FROM credit_transactions t"
        "         WHERE t.user_id = u.id AND t.balance_after < 0)"
        "  FROM users u WHERE u.id = :u",
        u=user,
    )[0]
    assert balance >= 0
    assert negative == 0
    assert balance == total, f"credit_balance {balance} != sum(amount) {total}"
    rows = sql(
        "SELECT amount, balance_after, created_at FROM credit_transactions"
        " WHERE user_id = :u ORDER BY created_at",
        u=user,
    )
    assert trail_end(0, [(a, b) for a, b, _ in rows]) == balance
    if by_created_at:
        groups: dict[Any, list[tuple[int, int]]] = defaultdict(list)
        for amount, after, created_at in rows:
            groups[created_at].append((amount, after))
        current = 0
        for created_at in sorted(groups):
            current = trail_end(current, groups[created_at])
        assert current == balance, (
            f"the latest entry by created_at ends at {current}, the balance is {balance}"
        )
    return balance
