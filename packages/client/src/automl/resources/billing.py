"""Credits, packages, the price book, checkout, invoices, statements, billing alerts,
usage (tags ``credits``, ``billing``, ``usage``, ``webhooks``)."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from automl import models as m
from automl.resources._base import Call, Id, M, Resource, body, ident, op, paged, path
from automl.resources._base import page_of as _page
from automl.resources._base import returns as _r


def _idem(key: str | None) -> dict[str, str] | None:
    return {"Idempotency-Key": key} if key else None


class Credits(Resource[M]):
    """The caller's credits: balance, ledger, packages, purchases, statements."""

    @op
    def balance(self) -> Call[m.BalanceOut]:
        """``GET /v1/credits/balance``."""
        return Call("GET", "/v1/credits/balance", parse=_r(m.BalanceOut))

    @paged
    def transactions(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.TransactionOut]]:
        """``GET /v1/credits/transactions``: the ledger, newest first."""
        return Call(
            "GET",
            "/v1/credits/transactions",
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.TransactionOut),
        )

    @op
    def packages(self) -> Call[builtins.list[m.PackageOut]]:
        """``GET /v1/credit-packages``: what can be bought."""
        return Call("GET", "/v1/credit-packages", parse=_r(list[m.PackageOut]))

    @op
    def purchase(
        self, package_id: Id, *, idempotency_key: str | None = None
    ) -> Call[m.PurchaseOut]:
        """``POST /v1/credits/purchase`` (development purchases; a retry with the same
        ``idempotency_key`` credits once)."""
        return Call(
            "POST",
            "/v1/credits/purchase",
            json=body(package_id=ident(package_id)),
            headers=_idem(idempotency_key),
            parse=_r(m.PurchaseOut),
        )

    @op
    def checkout(
        self,
        package_id: Id,
        success_url: str,
        cancel_url: str,
        *,
        idempotency_key: str | None = None,
    ) -> Call[m.CheckoutOut]:
        """``POST /v1/credits/checkout``: a Stripe Checkout session to pay at ``url``."""
        return Call(
            "POST",
            "/v1/credits/checkout",
            json=body(package_id=ident(package_id), success_url=success_url, cancel_url=cancel_url),
            headers=_idem(idempotency_key),
            parse=_r(m.CheckoutOut),
        )

    @op
    def statement(self, month: str) -> Call[m.StatementOut]:
        """``GET /v1/credits/statement?month=YYYY-MM``."""
        return Call(
            "GET", "/v1/credits/statement", params={"month": month}, parse=_r(m.StatementOut)
        )

    @op
    def statement_csv(self, month: str) -> Call[str]:
        """``GET /v1/credits/statement?month=YYYY-MM&format=csv``: the CSV text."""
        return Call(
            "GET",
            "/v1/credits/statement",
            params={"month": month, "format": "csv"},
            headers={"Accept": "text/csv"},
            expect="text",
        )


class PriceBook(Resource[M]):
    @op
    def get(self) -> Call[m.PriceBookOut]:
        """``GET /v1/price-book``: the prices in force."""
        return Call("GET", "/v1/price-book", parse=_r(m.PriceBookOut))


class Invoices(Resource[M]):
    @paged
    def list(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.InvoiceOut]]:
        """``GET /v1/invoices``."""
        return Call(
            "GET",
            "/v1/invoices",
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.InvoiceOut),
        )


class BillingAlerts(Resource[M]):
    """Alerts on the balance or spending, delivered to a webhook (signed)."""

    @op
    def create(self, kind: str, threshold: int, webhook_url: str) -> Call[m.AlertCreatedOut]:
        """``POST /v1/billing-alerts`` (the signing ``secret`` is shown once)."""
        return Call(
            "POST",
            "/v1/billing-alerts",
            json=body(kind=kind, threshold=threshold, webhook_url=webhook_url),
            parse=_r(m.AlertCreatedOut),
        )

    @paged
    def list(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.AlertOut]]:
        """``GET /v1/billing-alerts``."""
        return Call(
            "GET",
            "/v1/billing-alerts",
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.AlertOut),
        )

    @op
    def delete(self, alert_id: Id) -> Call[None]:
        """``DELETE /v1/billing-alerts/{alert_id}``."""
        return Call("DELETE", path("/v1/billing-alerts/{a}", a=alert_id), expect="none")

    @paged
    def deliveries(
        self, alert_id: Id, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.DeliveryOut]]:
        """``GET /v1/billing-alerts/{alert_id}/deliveries``."""
        return Call(
            "GET",
            path("/v1/billing-alerts/{a}/deliveries", a=alert_id),
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.DeliveryOut),
        )


class Usage(Resource[M]):
    """Metered use: predictions by day, deployment or key; a deployment's request log."""

    @op
    def get(
        self,
        *,
        from_: datetime | None = None,
        to: datetime | None = None,
        group_by: str | None = None,
    ) -> Call[m.UsageOut]:
        """``GET /v1/usage`` (``from_`` inclusive, ``to`` exclusive; ``group_by`` day,
        deployment or sku)."""
        return Call(
            "GET",
            "/v1/usage",
            params={"from": from_, "to": to, "group_by": group_by},
            parse=_r(m.UsageOut),
        )

    @paged
    def requests(
        self,
        deployment_id: Id,
        *,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Call[m.Page[m.InferenceRequestOut]]:
        """``GET /v1/deployments/{deployment_id}/requests``: the request log."""
        return Call(
            "GET",
            path("/v1/deployments/{d}/requests", d=deployment_id),
            params={"status": status, "limit": limit, "cursor": cursor},
            parse=_page(m.InferenceRequestOut),
        )


class Webhooks(Resource[M]):
    """Incoming webhooks (Stripe's); a client rarely sends one but can, e.g. in tests."""

    @op
    def stripe(self, payload: bytes, signature: str) -> Call[m.WebhookOut]:
        """``POST /v1/webhooks/stripe``: a signed Stripe event (``payload`` as signed)."""
        return Call(
            "POST",
            "/v1/webhooks/stripe",
            content=payload,
            headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
            parse=_r(m.WebhookOut),
        )


__all__ = ["Credits", "PriceBook", "Invoices", "BillingAlerts", "Usage", "Webhooks", "Any"]
