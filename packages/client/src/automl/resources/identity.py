"""Accounts, API keys, sessions, the caller's own data (tag ``identity``)."""

from __future__ import annotations

import builtins
from datetime import datetime

from automl import models as m
from automl.resources._base import Call, Destination, Id, M, Resource, body, op, paged, path
from automl.resources._base import page_of as _page
from automl.resources._base import returns as _r


class Users(Resource[M]):
    """Sign-up (no credentials needed)."""

    @op
    def create(self, email: str, *, full_name: str | None = None) -> Call[m.SignUpOut]:
        """``POST /v1/users``: a new account and its first API key (shown once)."""
        return Call(
            "POST", "/v1/users", json=body(email=email, full_name=full_name), parse=_r(m.SignUpOut)
        )

    signup = create


class Me(Resource[M]):
    """The caller's own account."""

    @op
    def get(self) -> Call[m.MeOut]:
        """``GET /v1/me``: the account, its usage and its tier's limits."""
        return Call("GET", "/v1/me", parse=_r(m.MeOut))

    @op
    def delete(self) -> Call[None]:
        """``DELETE /v1/me``: delete the account (restorable for 30 days: ``auth.restore``)."""
        return Call("DELETE", "/v1/me", expect="none")

    @op
    def export(self, path: Destination = None) -> Call[bytes]:
        """``GET /v1/me/export``: everything the account holds, as a zip (to ``path``
        when given: then the file's path is returned)."""
        return Call("GET", "/v1/me/export", expect="bytes", dest=path)

    @op
    def change_password(
        self, new_password: str, *, current_password: str | None = None
    ) -> Call[m.PasswordChanged]:
        """``PUT /v1/me/password``."""
        return Call(
            "PUT",
            "/v1/me/password",
            json=body(new_password=new_password, current_password=current_password),
            parse=_r(m.PasswordChanged),
        )

    @op
    def resend_verification(self) -> Call[None]:
        """``POST /v1/me/verification-email``: send the verification email again."""
        return Call("POST", "/v1/me/verification-email", expect="none")


class ApiKeys(Resource[M]):
    """The caller's API keys."""

    @paged
    def list(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.ApiKeyOut]]:
        """``GET /v1/api-keys``."""
        return Call(
            "GET",
            "/v1/api-keys",
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.ApiKeyOut),
        )

    @op
    def create(
        self,
        name: str | None = None,
        *,
        scopes: builtins.list[str] | None = None,
        expires_at: datetime | None = None,
        rate_limit_per_minute: int | None = None,
        monthly_row_quota: int | None = None,
    ) -> Call[m.ApiKeyCreated]:
        """``POST /v1/api-keys``: a new key (its secret ``key`` is shown once)."""
        return Call(
            "POST",
            "/v1/api-keys",
            json=body(
                name=name,
                scopes=scopes,
                expires_at=expires_at,
                rate_limit_per_minute=rate_limit_per_minute,
                monthly_row_quota=monthly_row_quota,
            ),
            parse=_r(m.ApiKeyCreated),
        )

    @op
    def revoke(self, key_id: Id) -> Call[None]:
        """``DELETE /v1/api-keys/{key_id}``."""
        return Call("DELETE", path("/v1/api-keys/{k}", k=key_id), expect="none")

    @op
    def update_quotas(
        self,
        key_id: Id,
        *,
        rate_limit_per_minute: int | None = None,
        monthly_row_quota: int | None = None,
    ) -> Call[m.ApiKeyOut]:
        """``PATCH /v1/api-keys/{key_id}``: the key's rate limit and monthly row quota
        (None leaves one unlimited)."""
        return Call(
            "PATCH",
            path("/v1/api-keys/{k}", k=key_id),
            json={
                "rate_limit_per_minute": rate_limit_per_minute,
                "monthly_row_quota": monthly_row_quota,
            },
            parse=_r(m.ApiKeyOut),
        )


class Auth(Resource[M]):
    """Passwords, sessions, email verification, restoring a deleted account."""

    @op
    def login(self, email: str, password: str) -> Call[m.LoginOut]:
        """``POST /v1/auth/login``: a session token (``Client.login`` also uses it)."""
        return Call(
            "POST",
            "/v1/auth/login",
            json=body(email=email, password=password),
            parse=_r(m.LoginOut),
        )

    @op
    def logout(self) -> Call[None]:
        """``POST /v1/auth/logout``: end the session whose token this client sends."""
        return Call("POST", "/v1/auth/logout", expect="none")

    @op
    def verify_email(self, token: str) -> Call[m.VerifiedOut]:
        """``POST /v1/auth/verify-email``."""
        return Call(
            "POST", "/v1/auth/verify-email", json=body(token=token), parse=_r(m.VerifiedOut)
        )

    @op
    def restore(self, email: str, password: str) -> Call[m.UserOut]:
        """``POST /v1/auth/restore``: undo a deletion within 30 days."""
        return Call(
            "POST",
            "/v1/auth/restore",
            json=body(email=email, password=password),
            parse=_r(m.UserOut),
        )


class Sessions(Resource[M]):
    """The caller's login sessions."""

    @paged
    def list(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.SessionOut]]:
        """``GET /v1/sessions``."""
        return Call(
            "GET",
            "/v1/sessions",
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.SessionOut),
        )

    @op
    def revoke(self, session_id: Id) -> Call[None]:
        """``DELETE /v1/sessions/{session_id}``."""
        return Call("DELETE", path("/v1/sessions/{s}", s=session_id), expect="none")
