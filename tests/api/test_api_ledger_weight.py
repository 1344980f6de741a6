"""GET /v1/credits/transactions describes the entries that store no description
(issue 16, c16d00000001): a purchase (from its package) and a usage charge (from its
``usage_charges`` row)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from database import credits

from api_helpers import Account, give_credits, scalar

pytestmark = pytest.mark.usefixtures("seeded")

START = dt.datetime(2026, 12, 7, 10, tzinfo=dt.UTC)
END = dt.datetime(2026, 12, 7, 11, tzinfo=dt.UTC)
DEPLOYMENT = uuid.UUID("00000000-0000-4000-8000-00000000d001")


def test_transactions_describe_purchases_and_usage_charges(
    client: TestClient, account: Account, engine: Engine
) -> None:
    give_credits(engine, account.user_id, 10)
    package = scalar(engine, "SELECT id FROM credit_packages WHERE name = 'Starter'")
    with Session(engine) as s:
        credits.purchase(s, account.user_id, package, "pi_weight_api")
    entry = uuid.uuid4()
    with engine.begin() as conn:  # as database.metering writes a usage charge
        conn.execute(
            text(
                "INSERT INTO credit_transactions (id, user_id, type, amount)"
                " VALUES (:id, :u, 'consumption', -3)"
            ),
            {"id": entry, "u": account.user_id},
        )
        conn.execute(
            text(
                "INSERT INTO usage_charges (user_id, deployment_id, sku, period_start,"
                " period_end, quantity, amount_micro, credits, ledger_entry_id)"
                " VALUES (:u, :d, 'predicted_rows', :s, :e, 3000, 3000000, 3, :id)"
            ),
            {"u": account.user_id, "d": DEPLOYMENT, "s": START, "e": END, "id": entry},
        )
    r = client.get("/v1/credits/transactions", headers=account.headers)
    assert r.status_code == 200
    items = r.json()["items"]
    assert [(t["type"], t["description"]) for t in items[:2]] == [
        (
            "consumption",
            f"3000 predicted_rows of deployment {DEPLOYMENT},"
            f" {START.isoformat()} to {END.isoformat()}",
        ),
        ("purchase", "purchase of Starter"),
    ]
    assert items[2]["description"]  # the adjustment keeps its own
