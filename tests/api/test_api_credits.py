"""Credits: balance, ledger, packages per tier, development purchase, Stripe's webhook."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.settings import ApiSettings

from api_helpers import (
    Account,
    checkout_event,
    give_credits,
    make_app,
    rows,
    scalar,
    signup,
    stripe_headers,
)

pytestmark = pytest.mark.usefixtures("seeded")


def _package(engine: Engine, name: str) -> uuid.UUID:
    found: uuid.UUID = scalar(engine, "SELECT id FROM credit_packages WHERE name = :n", n=name)
    return found


def _set_tier(engine: Engine, user_id: uuid.UUID, tier: str) -> None:
    rows(engine, "UPDATE users SET tier = CAST(:t AS user_tier) WHERE id = :id", t=tier, id=user_id)


def test_balance_and_ledger_newest_first(
    client: TestClient, account: Account, engine: Engine
) -> None:
    assert client.get("/v1/credits/balance", headers=account.headers).json() == {"balance": 0}
    for amount in (10, 20, 30):
        give_credits(engine, account.user_id, amount)
    assert client.get("/v1/credits/balance", headers=account.headers).json() == {"balance": 60}
    page = client.get("/v1/credits/transactions", headers=account.headers, params={"limit": 2})
    first = page.json()
    assert [t["amount"] for t in first["items"]] == [30, 20]
    assert [t["balance_after"] for t in first["items"]] == [60, 30]
    rest = client.get(
        "/v1/credits/transactions",
        headers=account.headers,
        params={"limit": 2, "cursor": first["next_cursor"]},
    ).json()
    assert [t["amount"] for t in rest["items"]] == [10] and rest["next_cursor"] is None


def test_packages_follow_the_tier(client: TestClient, account: Account, engine: Engine) -> None:
    def names() -> list[str]:
        r = client.get("/v1/credit-packages", headers=account.headers)
        assert r.status_code == 200
        return [p["name"] for p in r.json()]

    assert names() == ["Starter", "Builder"]
    _set_tier(engine, account.user_id, "pro")
    assert names() == ["Starter", "Builder", "Pro"]
    _set_tier(engine, account.user_id, "enterprise")
    assert names() == ["Starter", "Builder", "Pro", "Enterprise"]
    rows(engine, "UPDATE credit_packages SET is_active = false WHERE name = 'Builder'")
    assert "Builder" not in names()


def test_development_purchase(client: TestClient, account: Account, engine: Engine) -> None:
    starter = _package(engine, "Starter")
    headers = {**account.headers, "Idempotency-Key": "order-1"}
    r = client.post("/v1/credits/purchase", headers=headers, json={"package_id": str(starter)})
    assert r.status_code == 201, r.text
    assert r.json()["balance"] == 100
    assert r.json()["transaction"]["type"] == "purchase"
    retry = client.post("/v1/credits/purchase", headers=headers, json={"package_id": str(starter)})
    assert retry.status_code == 201 and retry.json()["balance"] == 100
    assert retry.json()["transaction"]["id"] == r.json()["transaction"]["id"]
    # Without a key, each call is a purchase.
    plain = client.post(
        "/v1/credits/purchase", headers=account.headers, json={"package_id": str(starter)}
    )
    assert plain.json()["balance"] == 200

    pro = _package(engine, "Pro")
    denied = client.post(
        "/v1/credits/purchase", headers=account.headers, json={"package_id": str(pro)}
    )
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "package_tier_restricted"
    unknown = client.post(
        "/v1/credits/purchase", headers=account.headers, json={"package_id": str(uuid.uuid4())}
    )
    assert unknown.status_code == 404
    rows(engine, "UPDATE credit_packages SET is_active = false WHERE id = :id", id=starter)
    off = client.post(
        "/v1/credits/purchase", headers=account.headers, json={"package_id": str(starter)}
    )
    assert off.status_code == 409 and off.json()["error"]["code"] == "package_unavailable"
    assert client.get("/v1/credits/balance", headers=account.headers).json()["balance"] == 200


def test_development_purchase_is_off_by_default(engine: Engine, api_settings: ApiSettings) -> None:
    settings = api_settings.model_copy(update={"dev_purchases": False})
    with TestClient(make_app(engine, settings)) as client:
        account = signup(client)
        r = client.post(
            "/v1/credits/purchase",
            headers=account.headers,
            json={"package_id": str(_package(engine, "Starter"))},
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "dev_purchases_disabled"
        assert scalar(engine, "SELECT count(*) FROM credit_transactions") == 0


def test_purchase_needs_the_billing_scope(client: TestClient, account: Account) -> None:
    reader = client.post("/v1/api-keys", headers=account.headers, json={"scopes": ["read"]})
    headers = {"Authorization": f"Bearer {reader.json()['key']}"}
    r = client.post("/v1/credits/purchase", headers=headers, json={"package_id": str(uuid.uuid4())})
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"


# --- Stripe ---------------------------------------------------------------------------------
def _deliver(client: TestClient, payload: bytes, **kw: Any) -> Any:
    return client.post(
        "/v1/webhooks/stripe", content=payload, headers=stripe_headers(payload, **kw)
    )


def test_checkout_is_credited_exactly_once(
    client: TestClient, account: Account, engine: Engine
) -> None:
    package = _package(engine, "Builder")
    event = checkout_event(account.user_id, package, "pi_123", event_id="evt_1")
    first = _deliver(client, event)
    assert first.status_code == 200, first.text
    assert first.json() == {"event_id": "evt_1", "status": "processed"}
    for _ in range(2):  # Stripe redelivers
        again = _deliver(client, event)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
    # Another event for the same payment credits nothing more, and says so.
    other_event = checkout_event(
        account.user_id,
        package,
        "pi_123",
        event_id="evt_2",
        event_type="checkout.session.async_payment_succeeded",
    )
    assert _deliver(client, other_event).json() == {
        "event_id": "evt_2",
        "status": "duplicate_payment",
    }
    assert client.get("/v1/credits/balance", headers=account.headers).json()["balance"] == 500
    [(kind, amount, ref)] = rows(
        engine,
        "SELECT type, amount, stripe_payment_id FROM credit_transactions WHERE user_id = :u",
        u=account.user_id,
    )
    assert (kind, amount, ref) == ("purchase", 500, "pi_123")
    stored = rows(engine, "SELECT stripe_event_id, status FROM stripe_webhook_events ORDER BY 1")
    assert [tuple(r) for r in stored] == [("evt_1", "processed"), ("evt_2", "ignored")]
    note = scalar(engine, "SELECT error FROM stripe_webhook_events WHERE stripe_event_id = 'evt_2'")
    assert "pi_123 was already credited" in note


def test_concurrent_events_for_one_payment_credit_it_once(
    app: Any, account: Account, engine: Engine
) -> None:
    """Two different events for one payment, delivered together while the user's row
    is locked elsewhere: both wait, then one is processed and the other answers
    duplicate_payment (not processed)."""
    from concurrent.futures import ThreadPoolExecutor

    package = _package(engine, "Builder")
    events = [
        checkout_event(account.user_id, package, "pi_race", event_id=f"evt_race{i}")
        for i in range(2)
    ]

    def deliver(event: bytes) -> str:
        with TestClient(app) as own:
            r = _deliver(own, event)
            assert r.status_code == 200, r.text
            status: str = r.json()["status"]
            return status

    with engine.connect() as blocker, ThreadPoolExecutor(max_workers=2) as pool:
        blocker.exec_driver_sql(
            "SELECT 1 FROM users WHERE id = %(u)s FOR UPDATE", {"u": account.user_id}
        )
        futures = [pool.submit(deliver, e) for e in events]
        deadline = time.monotonic() + 4  # within the sessions' 5 s lock_timeout
        while time.monotonic() < deadline:
            waiting = scalar(
                engine,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'",
            )
            if waiting == 2:
                break
            time.sleep(0.02)
        blocker.rollback()
        statuses = sorted(f.result() for f in futures)
    assert statuses == ["duplicate_payment", "processed"]
    assert client_balance(engine, account.user_id) == 500


def client_balance(engine: Engine, user_id: uuid.UUID) -> int:
    balance: int = scalar(engine, "SELECT credit_balance FROM users WHERE id = :u", u=user_id)
    return balance


def test_a_payment_credited_to_another_user_is_not_a_duplicate(
    client: TestClient, account: Account, other: Account, engine: Engine
) -> None:
    package = _package(engine, "Builder")
    assert (
        _deliver(client, checkout_event(account.user_id, package, "pi_x")).json()["status"]
        == "processed"
    )
    theirs = _deliver(client, checkout_event(other.user_id, package, "pi_x", event_id="evt_o"))
    assert theirs.json() == {"event_id": "evt_o", "status": "failed"}
    assert client.get("/v1/credits/balance", headers=other.headers).json()["balance"] == 0


def test_an_event_of_the_other_stripe_mode_is_refused(
    client: TestClient, account: Account, engine: Engine, api_settings: ApiSettings
) -> None:
    package = _package(engine, "Builder")
    # This server takes test-mode events (STRIPE_LIVEMODE unset): a live one is 400.
    for livemode in (True, None, "false", 0):
        event = checkout_event(account.user_id, package, "pi_live", livemode=livemode)
        r = _deliver(client, event)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "livemode_mismatch"
        assert error["details"]["expected_livemode"] is False
        assert error["details"]["livemode"] == (livemode if isinstance(livemode, bool) else None)
    assert scalar(engine, "SELECT count(*) FROM stripe_webhook_events") == 0
    assert client.get("/v1/credits/balance", headers=account.headers).json()["balance"] == 0
    # A live server takes live events only.
    live = api_settings.model_copy(update={"stripe_livemode": True})
    with TestClient(make_app(engine, live)) as live_client:
        test_event = checkout_event(account.user_id, package, "pi_t", livemode=False)
        refused = _deliver(live_client, test_event)
        assert refused.status_code == 400
        assert refused.json()["error"]["details"] == {
            "expected_livemode": True,
            "livemode": False,
        }
        live_event = checkout_event(account.user_id, package, "pi_live", livemode=True)
        assert _deliver(live_client, live_event).json()["status"] == "processed"
    assert rows(engine, "SELECT livemode FROM stripe_webhook_events") == [(True,)]
    assert client.get("/v1/credits/balance", headers=account.headers).json()["balance"] == 500


def test_signature_is_verified(client: TestClient, account: Account, engine: Engine) -> None:
    event = checkout_event(account.user_id, _package(engine, "Starter"), "pi_sig")
    forged = client.post(
        "/v1/webhooks/stripe",
        content=event,
        headers=stripe_headers(event, secret="whsec_someone_else"),
    )
    assert forged.status_code == 400 and forged.json()["error"]["code"] == "invalid_signature"
    unsigned = client.post("/v1/webhooks/stripe", content=event)
    assert unsigned.status_code == 400
    stale = _deliver(client, event, at=int(time.time()) - 3600)
    assert stale.status_code == 400
    tampered = event.replace(b"pi_sig", b"pi_sih")
    r = client.post("/v1/webhooks/stripe", content=tampered, headers=stripe_headers(event))
    assert r.status_code == 400
    assert scalar(engine, "SELECT count(*) FROM stripe_webhook_events") == 0
    assert scalar(engine, "SELECT count(*) FROM credit_transactions") == 0


def test_events_that_cannot_credit_are_recorded_not_retried(
    client: TestClient, account: Account, engine: Engine
) -> None:
    pro = _package(engine, "Pro")  # the user is on the free tier
    r = _deliver(client, checkout_event(account.user_id, pro, "pi_tier", event_id="evt_tier"))
    assert r.status_code == 200 and r.json()["status"] == "failed"
    r = _deliver(client, checkout_event(uuid.uuid4(), pro, "pi_nobody", event_id="evt_nobody"))
    assert r.json()["status"] == "failed"
    r = _deliver(client, checkout_event("not-a-user", pro, "pi_x", event_id="evt_garbage"))
    assert r.json()["status"] == "failed"
    unpaid = checkout_event(
        account.user_id, _package(engine, "Starter"), "pi_later", payment_status="unpaid"
    )
    assert _deliver(client, unpaid).json()["status"] == "ignored"
    other = json.dumps(
        {"id": "evt_other", "type": "customer.created", "livemode": False, "data": {"object": {}}}
    )
    assert _deliver(client, other.encode()).json()["status"] == "ignored"
    errors = dict(
        rows(
            engine,
            "SELECT stripe_event_id, error FROM stripe_webhook_events WHERE error IS NOT NULL",
        )
    )
    assert "PackageTierRestricted" in errors["evt_tier"]
    assert "UserNotFound" in errors["evt_nobody"]
    assert scalar(engine, "SELECT count(*) FROM credit_transactions") == 0


def test_webhook_without_a_secret_is_503(engine: Engine, api_settings: ApiSettings) -> None:
    settings = api_settings.model_copy(update={"stripe_webhook_secret": None})
    with TestClient(make_app(engine, settings)) as client:
        payload = b'{"id": "evt_x", "type": "x"}'
        r = client.post("/v1/webhooks/stripe", content=payload, headers=stripe_headers(payload))
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "webhooks_not_configured"


def test_malformed_signed_payloads_are_400(client: TestClient) -> None:
    for payload in (b"[1, 2]", b"not json", b'{"id": "evt_\\u0000"}'):
        r = _deliver(client, payload)
        assert r.status_code == 400, (payload, r.text)
        assert r.json()["error"]["code"] == "invalid_payload"
    no_id = _deliver(client, b'{"type": "checkout.session.completed"}')
    assert no_id.status_code == 422


def test_ledger_pages_cross_months_newest_first_each_entry_once(
    client: TestClient, account: Account, engine: Engine
) -> None:
    """The ledger's index is (user, calendar month) (c16g00000001): pages are ordered by
    the month, then each month's entries, and a cursor that lands inside a month, at its
    last entry or on a tie of dates, still gives every entry once, newest first. Dated
    by hand (the trigger dates entries itself): written as the owner with the user
    triggers off."""
    dates = [
        "2025-12-31T23:59:59.999999+00:00",
        "2026-01-01T00:00:00+00:00",
        "2026-01-15T10:00:00+00:00",
        "2026-01-15T10:00:00+00:00",  # a tie: the id breaks it
        "2026-01-31T23:59:59.999999+00:00",
        "2026-03-01T00:00:00+00:00",
        "2026-03-01T00:00:00.000001+00:00",
    ]
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE credit_transactions DISABLE TRIGGER USER")
        for i, at in enumerate(dates):
            conn.exec_driver_sql(
                "INSERT INTO credit_transactions (user_id, type, amount, balance_after,"
                " created_at, actor, description)"
                " VALUES (%s, 'adjustment', %s, %s, %s, 'tests', 'dated')",
                (account.user_id, i + 1, sum(range(1, i + 2)), at),
            )
        conn.exec_driver_sql("ALTER TABLE credit_transactions ENABLE TRIGGER USER")
    expected = [
        r[0]
        for r in rows(
            engine,
            "SELECT id FROM credit_transactions WHERE user_id = :u"
            " ORDER BY created_at DESC, id DESC",
            u=account.user_id,
        )
    ]
    assert len(expected) == len(dates)
    for limit in (1, 2, 3):
        seen: list[uuid.UUID] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/v1/credits/transactions", headers=account.headers, params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            seen += [uuid.UUID(t["id"]) for t in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == expected, limit
