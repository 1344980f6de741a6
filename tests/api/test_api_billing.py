"""Issue 16 through the API: the price book, Stripe Checkout (against a local
Stripe-like server: the official ``stripe`` library with another API base),
checkout -> signed webhook -> credited balance -> invoice, the statement, billing
alerts and the operators' reconciliation runs."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine

from api.settings import ApiSettings

from api_helpers import (
    Account,
    FakeStripe,
    fake_stripe_server,
    give_credits,
    make_app,
    rows,
    runnable_workflow,
    scalar,
    signup,
    stripe_headers,
)
from factories import make_credit_package

STRIPE_KEY = "sk_test_billing_0123456789"


@pytest.fixture
def fake_stripe() -> Iterator[tuple[str, type[FakeStripe]]]:
    with fake_stripe_server() as server:
        yield server


@pytest.fixture
def stripe_client(
    engine: Engine, api_settings: ApiSettings, fake_stripe: tuple[str, Any]
) -> Iterator[TestClient]:
    settings = api_settings.model_copy(
        update={"stripe_api_key": SecretStr(STRIPE_KEY), "stripe_api_base": fake_stripe[0]}
    )
    with TestClient(make_app(engine, settings)) as c:
        yield c


URLS = {"success_url": "https://app.example.com/ok", "cancel_url": "https://app.example.com/no"}


def _webhook(client: TestClient, event: dict[str, Any]) -> Any:
    payload = json.dumps(event).encode()
    return client.post("/v1/webhooks/stripe", content=payload, headers=stripe_headers(payload))


# --- price book --------------------------------------------------------------------------
def test_price_book_route(client: TestClient, account: Account) -> None:
    r = client.get("/v1/price-book", headers=account.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tier"] == "free" and body["currency"] == "usd"
    items = {i["sku"]: (i["unit"], i["credits_per_unit"]) for i in body["items"]}
    assert items["model"] == ("node", 10) and items["predicted_rows"] == ("thousand_rows", 1)
    assert client.get("/v1/price-book").status_code == 401


def test_a_run_is_priced_from_the_book_and_keeps_its_items(
    client: TestClient, account: Account, engine: Engine
) -> None:
    wf = runnable_workflow(client, account, engine)
    give_credits(engine, account.user_id, 100)
    r = client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers)
    assert r.status_code == 201, r.text
    job = r.json()["job"]
    lines = rows(
        engine,
        "SELECT i.sku, j.quantity, j.credits FROM job_price_items j"
        " JOIN price_items i ON i.id = j.price_item_id WHERE j.job_id = :j ORDER BY i.sku",
        j=job["id"],
    )
    assert sum(c for _, _, c in lines) == job["credit_cost"]
    assert {s for s, _, _ in lines} >= {"job", "model"}
    got = client.get(f"/v1/workflows/{wf['id']}", headers=account.headers).json()
    assert got["estimated_credits"] == job["credit_cost"]


# --- checkout, end to end ----------------------------------------------------------------
def test_checkout_to_webhook_to_balance_to_invoice(
    stripe_client: TestClient, engine: Engine, fake_stripe: tuple[str, Any]
) -> None:
    client, (_, stripe_server) = stripe_client, fake_stripe
    account = signup(client)
    package = make_credit_package(
        lambda s, **p: rows(engine, s, **p), credits=500, price_cents=1999
    )
    r = client.post(
        "/v1/credits/checkout",
        headers={**account.headers, "Idempotency-Key": "k1"},
        json={"package_id": str(package), **URLS},
    )
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["url"].startswith("https://checkout.stripe.com/") and out["id"].startswith("cs_")
    [request] = stripe_server.requests
    assert request["auth"] == f"Bearer {STRIPE_KEY}"
    assert request["idempotency_key"] == f"checkout:{account.user_id}:k1"
    form = request["form"]
    assert form["mode"] == "payment" and form["client_reference_id"] == str(account.user_id)
    assert form["metadata[package_id]"] == str(package)
    assert form["line_items[0][price_data][unit_amount]"] == "1999"
    assert form["invoice_creation[enabled]"] == "true"
    assert form["success_url"] == URLS["success_url"]

    # Stripe completes the session and sends the signed event (the test plays Stripe).
    session = dict(stripe_server.sessions[out["id"]])
    session.update(
        payment_status="paid",
        status="complete",
        payment_intent="pi_test_e2e",
        invoice="in_test_e2e",
    )
    event = {
        "id": "evt_e2e_1",
        "object": "event",
        "type": "checkout.session.completed",
        "livemode": False,
        "created": int(time.time()),
        "data": {"object": session},
    }
    r = _webhook(client, event)
    assert r.status_code == 200 and r.json()["status"] == "processed", r.text
    assert client.get("/v1/credits/balance", headers=account.headers).json()["balance"] == 500
    assert _webhook(client, event).json()["status"] == "duplicate"

    invoices = client.get("/v1/invoices", headers=account.headers).json()["items"]
    assert len(invoices) == 1
    inv = invoices[0]
    assert (inv["stripe_id"], inv["amount_cents"], inv["currency"], inv["status"]) == (
        "in_test_e2e",
        1999,
        "usd",
        "paid",
    )
    entry = scalar(
        engine, "SELECT id FROM credit_transactions WHERE stripe_payment_id = 'pi_test_e2e'"
    )
    assert inv["credit_transaction_id"] == str(entry)

    # Stripe's invoice events fill in the number and hosted page, and never move it back.
    invoice = {
        "id": "in_test_e2e",
        "object": "invoice",
        "number": "ABC-0001",
        "status": "paid",
        "amount_due": 1999,
        "amount_paid": 1999,
        "currency": "usd",
        "period_start": 1764547200,
        "period_end": 1764547200,
        "hosted_invoice_url": "https://invoice.stripe.com/i/abc",
        "metadata": {"user_id": str(account.user_id), "package_id": str(package)},
    }
    for n, status in enumerate(("paid", "open")):  # a late invoice.finalized comes second
        ev = {
            "id": f"evt_inv_{n}",
            "object": "event",
            "type": f"invoice.{status}",
            "livemode": False,
            "created": int(time.time()),
            "data": {"object": {**invoice, "status": status}},
        }
        assert _webhook(client, ev).json()["status"] == "processed"
    [inv] = client.get("/v1/invoices", headers=account.headers).json()["items"]
    assert inv["number"] == "ABC-0001" and inv["status"] == "paid"
    assert inv["hosted_url"] == "https://invoice.stripe.com/i/abc"
    assert inv["period_start"].startswith("2025-12-01")
    other = signup(client)
    assert client.get("/v1/invoices", headers=other.headers).json()["items"] == []


def test_an_invoice_event_for_nobody_is_recorded_as_failed(
    client: TestClient, engine: Engine
) -> None:
    ev = {
        "id": "evt_inv_x",
        "object": "event",
        "type": "invoice.paid",
        "livemode": False,
        "data": {"object": {"id": "in_nobody", "status": "paid", "metadata": {}}},
    }
    assert _webhook(client, ev).json()["status"] == "failed"
    assert scalar(engine, "SELECT count(*) FROM billing_invoices") == 0
    assert "names no user" in scalar(
        engine, "SELECT error FROM stripe_webhook_events WHERE stripe_event_id = 'evt_inv_x'"
    )


def test_checkout_refusals(
    stripe_client: TestClient, engine: Engine, fake_stripe: tuple[str, Any]
) -> None:
    client, (_, server) = stripe_client, fake_stripe
    account = signup(client)
    sql = lambda s, **p: rows(engine, s, **p)  # noqa: E731
    inactive = make_credit_package(sql, is_active=False)
    pro = make_credit_package(sql, tier_restriction="pro_only")
    ok = make_credit_package(sql)
    cases = [
        ({"package_id": str(uuid.uuid4()), **URLS}, 404, "not_found"),
        ({"package_id": str(inactive), **URLS}, 409, "package_unavailable"),
        ({"package_id": str(pro), **URLS}, 403, "package_tier_restricted"),
        ({"package_id": str(ok), **URLS, "success_url": "ftp://x"}, 422, "invalid_url"),
        ({"package_id": str(ok), **URLS, "cancel_url": "https://x.com/\x00"}, 422, "invalid_url"),
        ({"package_id": str(ok), **URLS, "cancel_url": "https://x.com/" + "a" * 3000}, 422, None),
        ({"package_id": str(ok), **URLS, "extra": 1}, 422, None),
        ({"package_id": "nope", **URLS}, 422, None),
        ({}, 422, None),
    ]
    for body, code, error in cases:
        r = client.post("/v1/credits/checkout", headers=account.headers, json=body)
        assert r.status_code == code, (body, r.text)
        if error:
            assert r.json()["error"]["code"] == error
    assert server.requests == []
    server.fail_with = 400
    r = client.post(
        "/v1/credits/checkout", headers=account.headers, json={"package_id": str(ok), **URLS}
    )
    assert r.status_code == 502 and r.json()["error"]["code"] == "stripe_error"


def test_checkout_without_a_stripe_key_is_503(client: TestClient, account: Account, engine):
    package = make_credit_package(lambda s, **p: rows(engine, s, **p))
    r = client.post(
        "/v1/credits/checkout", headers=account.headers, json={"package_id": str(package), **URLS}
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "checkout_not_configured"


# --- statement ---------------------------------------------------------------------------
def test_statement_route_json_csv_and_bad_months(
    client: TestClient, account: Account, engine: Engine
) -> None:
    give_credits(engine, account.user_id, 100)
    wf = runnable_workflow(client, account, engine)
    job = client.post(f"/v1/workflows/{wf['id']}/run", headers=account.headers).json()["job"]
    month = time.strftime("%Y-%m", time.gmtime())
    r = client.get(f"/v1/credits/statement?month={month}", headers=account.headers)
    assert r.status_code == 200, r.text
    st = r.json()
    assert st["opening_balance"] == 0 and st["adjustments"] == 100
    assert st["charged"] == job["credit_cost"] == sum(c["credits"] for c in st["charges"])
    assert st["closing_balance"] == 100 - job["credit_cost"]
    moved = st["purchases"] - st["charged"] + st["refunds"] + st["adjustments"]
    assert st["opening_balance"] + moved == st["closing_balance"]
    assert (
        st["closing_balance"]
        == client.get("/v1/credits/balance", headers=account.headers).json()["balance"]
    )
    r = client.get(f"/v1/credits/statement?month={month}&format=csv", headers=account.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert f"statement-{month}.csv" in r.headers["content-disposition"]
    assert r.text.splitlines()[-1] == f"closing_balance,,{st['closing_balance']}"
    empty = client.get("/v1/credits/statement?month=2020-02", headers=account.headers).json()
    assert (empty["opening_balance"], empty["closing_balance"], empty["entries"]) == (0, 0, 0)
    for bad in ("2026-13", "2026-1", "abcd-ef", "", "2026-12%00", "x" * 40):
        r = client.get(f"/v1/credits/statement?month={bad}", headers=account.headers)
        assert r.status_code == 422, (bad, r.text)
    assert client.get("/v1/credits/statement", headers=account.headers).status_code == 422
    r = client.get(f"/v1/credits/statement?month={month}&format=pdf", headers=account.headers)
    assert r.status_code == 422


# --- alerts ------------------------------------------------------------------------------
def test_billing_alert_routes(client: TestClient, account: Account, other: Account, engine) -> None:
    body = {"kind": "balance_below", "threshold": 100, "webhook_url": "https://hooks.example.com/a"}
    r = client.post("/v1/billing-alerts", headers=account.headers, json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_") and created["active"] is True
    listed = client.get("/v1/billing-alerts", headers=account.headers).json()["items"]
    assert [a["id"] for a in listed] == [created["id"]] and "secret" not in listed[0]
    assert client.get("/v1/billing-alerts", headers=other.headers).json()["items"] == []
    for bad in (
        {**body, "webhook_url": "http://hooks.example.com/a"},
        {**body, "webhook_url": "https://"},
        {**body, "webhook_url": "https://x.com/\x00"},
        {**body, "threshold": -1},
        {**body, "threshold": "100"},
        {**body, "threshold": True},
        {**body, "kind": "balance_above"},
        {**body, "secret": "mine"},
    ):
        assert (
            client.post("/v1/billing-alerts", headers=account.headers, json=bad).status_code == 422
        )
    aid = created["id"]
    deliveries = client.get(f"/v1/billing-alerts/{aid}/deliveries", headers=account.headers)
    assert deliveries.status_code == 200 and deliveries.json()["items"] == []
    assert (
        client.get(f"/v1/billing-alerts/{aid}/deliveries", headers=other.headers).status_code == 404
    )
    assert client.delete(f"/v1/billing-alerts/{aid}", headers=other.headers).status_code == 404
    assert client.delete(f"/v1/billing-alerts/{aid}", headers=account.headers).status_code == 204
    assert client.delete(f"/v1/billing-alerts/{aid}", headers=account.headers).status_code == 404
    assert client.get("/v1/billing-alerts", headers=account.headers).json()["items"] == []
    assert (
        client.get(
            f"/v1/billing-alerts/{uuid.uuid4()}/deliveries", headers=account.headers
        ).status_code
        == 404
    )


def test_alert_deliveries_route_lists_attempts(
    client: TestClient, account: Account, engine: Engine
) -> None:
    from database import billing

    give_credits(engine, account.user_id, 200)
    r = client.post(
        "/v1/billing-alerts",
        headers=account.headers,
        json={"kind": "balance_below", "threshold": 150, "webhook_url": "https://127.0.0.1:9/none"},
    )
    aid = r.json()["id"]
    give_credits(engine, account.user_id, -100)
    seen: list[tuple[str, bytes, dict[str, str]]] = []

    def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        seen.append((url, body, headers))
        return (500, "HTTP 500") if len(seen) == 1 else (204, None)

    billing.deliver_alerts(engine, post=post, base_delay_s=0)
    billing.deliver_alerts(engine, post=post, base_delay_s=0)
    items = client.get(f"/v1/billing-alerts/{aid}/deliveries", headers=account.headers).json()[
        "items"
    ]
    assert [(d["attempt"], d["status_code"], d["succeeded"]) for d in items] == [
        (2, 204, True),
        (1, 500, False),
    ]
    assert json.loads(seen[0][1])["balance"] == 100


# --- operators ---------------------------------------------------------------------------
def test_reconciliation_runs_are_for_operators(client: TestClient, account: Account) -> None:
    r = client.get("/v1/admin/reconciliation-runs", headers=account.headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"
    assert client.get("/v1/admin/reconciliation-runs").status_code == 401


def test_reconciliation_runs_show_what_each_repair_changed(
    client: TestClient, engine: Engine
) -> None:
    import datetime as dt

    from sqlalchemy import text

    from database import billing
    from database.verify import verify

    admin = signup(client)
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET role = 'admin' WHERE id = :u"), {"u": admin.user_id})
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text("UPDATE users SET workflow_count = 4 WHERE id = :u"), {"u": admin.user_id}
        )
    run = billing.record_reconciliation(
        engine,
        verify(engine, repair=True),
        source="test",
        started_at=dt.datetime.now(dt.UTC),
        repair=True,
    )
    r = client.get("/v1/admin/reconciliation-runs", headers=admin.headers)
    assert r.status_code == 200, r.text
    [item] = [i for i in r.json()["items"] if i["id"] == str(run)]
    assert item["kind"] == "repair" and item["repaired_count"] == 1
    [adj] = item["adjustments"]
    assert (adj["table_name"], adj["row_id"], adj["column_name"]) == (
        "users",
        None,
        "workflow_count",
    )
    assert (adj["old_value"], adj["new_value"], adj["user_id"]) == (4, 0, str(admin.user_id))
    assert "workflow_count drifted" in adj["reason"]
