"""Credits, packages, purchases, Stripe checkout and its webhook, invoices, statements,
the price book and billing alerts, through ``automl.Client`` against the real API."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine

import automl
from api.settings import ApiSettings

from api_helpers import fake_stripe_server, make_app, rows, stripe_headers
from client_helpers import new_user
from factories import make_credit_package

STRIPE_KEY = "sk_test_client_0123456789"
URLS = {"success_url": "https://app.example.com/ok", "cancel_url": "https://app.example.com/no"}


@pytest.fixture
def stripe_http(engine: Engine, api_settings: ApiSettings) -> Iterator[tuple[TestClient, Any]]:
    with fake_stripe_server() as (base, server):
        settings = api_settings.model_copy(
            update={"stripe_api_key": SecretStr(STRIPE_KEY), "stripe_api_base": base}
        )
        with TestClient(make_app(engine, settings)) as http:
            yield http, server


def test_packages_purchase_balance_transactions_statement(
    client: automl.Client, engine: Engine
) -> None:
    package = make_credit_package(lambda s, **p: rows(engine, s, **p), credits=40)
    packages = client.credits.packages()
    assert package in [p.id for p in packages]
    bought = client.credits.purchase(package, idempotency_key="buy-1")
    again = client.credits.purchase(package, idempotency_key="buy-1")
    assert bought.balance == again.balance == 40  # credited once
    assert client.credits.balance().balance == 40
    client.credits.purchase(package)
    entries = client.credits.transactions(limit=1).all()  # two pages of one
    assert [e.amount for e in entries] == [40, 40]
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    statement = client.credits.statement(month)
    assert statement.purchases == 80 and statement.closing_balance == 80
    csv = client.credits.statement_csv(month)
    assert csv.splitlines()[0] and "," in csv
    with pytest.raises(automl.ValidationError):
        client.credits.statement("2026-13")
    book = client.price_book.get()
    assert book.items


def test_checkout_webhook_invoice(stripe_http: tuple[TestClient, Any], engine: Engine) -> None:
    http, server = stripe_http
    client = new_user(http)
    package = make_credit_package(lambda s, **p: rows(engine, s, **p), credits=500)
    out = client.credits.checkout(package, **URLS, idempotency_key="k1")
    assert out.url.startswith("https://checkout.stripe.com/")
    session = dict(server.sessions[out.id])
    session.update(payment_status="paid", status="complete", payment_intent="pi_c", invoice="in_c")
    event = {
        "id": "evt_client_1",
        "object": "event",
        "type": "checkout.session.completed",
        "livemode": False,
        "created": int(time.time()),
        "data": {"object": session},
    }
    payload = json.dumps(event).encode()
    signature = stripe_headers(payload)["Stripe-Signature"]
    anon = automl.Client(http_client=http)
    assert anon.webhooks.stripe(payload, signature).status == "processed"
    assert anon.webhooks.stripe(payload, signature).status == "duplicate"
    with pytest.raises(automl.ApiError) as bad:
        anon.webhooks.stripe(payload, "t=1,v1=00")
    assert 400 <= bad.value.status < 500
    assert client.credits.balance().balance == 500
    [invoice] = client.invoices.list().all()
    assert invoice.stripe_id == "in_c" and invoice.credit_transaction_id is not None


def test_billing_alerts(client: automl.Client, other: automl.Client) -> None:
    created = client.billing_alerts.create("balance_below", 100, "https://hooks.example.com/a")
    assert created.secret.startswith("whsec_")
    assert [a.id for a in client.billing_alerts.list()] == [created.id]
    assert other.billing_alerts.list().all() == []
    assert client.billing_alerts.deliveries(created.id).all() == []
    with pytest.raises(automl.NotFound):
        other.billing_alerts.deliveries(created.id).all()
    with pytest.raises(automl.ValidationError) as bad:
        client.billing_alerts.create("balance_below", -1, "https://hooks.example.com/a")
    assert bad.value.code == "validation_error"
    client.billing_alerts.delete(created)
    with pytest.raises(automl.NotFound):
        client.billing_alerts.delete(created)
