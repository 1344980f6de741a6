"""``automl.Client`` and ``automl.AsyncClient``: the same resource groups over a sync or
an async runner."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Generic

import httpx

from automl import resources as r
from automl._core import AsyncMode, M, Runner, SyncMode
from automl._runners import AsyncRunner, SyncRunner, env_timeout
from automl.config import Config, load_config, with_overrides


class _Api(Generic[M]):
    """The resource groups (one attribute each), typed by the client's mode."""

    datasets: r.Datasets[M]
    workflows: r.Workflows[M]
    jobs: r.Jobs[M]
    models: r.Models[M]
    registered_models: r.RegisteredModels[M]
    model_versions: r.ModelVersions[M]
    deployments: r.Deployments[M]
    experiments: r.Experiments[M]
    evaluations: r.Evaluations[M]
    evaluation_criteria: r.EvaluationCriteria[M]
    usage: r.Usage[M]
    credits: r.Credits[M]
    price_book: r.PriceBook[M]
    invoices: r.Invoices[M]
    billing_alerts: r.BillingAlerts[M]
    webhooks: r.Webhooks[M]
    users: r.Users[M]
    me: r.Me[M]
    api_keys: r.ApiKeys[M]
    auth: r.Auth[M]
    sessions: r.Sessions[M]
    admin: r.Admin[M]
    audit_events: r.AuditEvents[M]
    tutorials: r.Tutorials[M]
    health: r.Health[M]

    #: attribute -> resource class; both clients build every group from it.
    GROUPS: dict[str, type[Any]] = {
        "datasets": r.Datasets,
        "workflows": r.Workflows,
        "jobs": r.Jobs,
        "models": r.Models,
        "registered_models": r.RegisteredModels,
        "model_versions": r.ModelVersions,
        "deployments": r.Deployments,
        "experiments": r.Experiments,
        "evaluations": r.Evaluations,
        "evaluation_criteria": r.EvaluationCriteria,
        "usage": r.Usage,
        "credits": r.Credits,
        "price_book": r.PriceBook,
        "invoices": r.Invoices,
        "billing_alerts": r.BillingAlerts,
        "webhooks": r.Webhooks,
        "users": r.Users,
        "me": r.Me,
        "api_keys": r.ApiKeys,
        "auth": r.Auth,
        "sessions": r.Sessions,
        "admin": r.Admin,
        "audit_events": r.AuditEvents,
        "tutorials": r.Tutorials,
        "health": r.Health,
    }

    _runner: Runner
    config: Config

    def _attach(self, runner: Runner) -> None:
        self._runner = runner
        for name, cls in self.GROUPS.items():
            setattr(self, name, cls(runner))

    def _use(self, **changes: Any) -> None:
        self.config = with_overrides(self.config, **changes)
        self._runner.config = self.config  # type: ignore[attr-defined]

    def use_api_key(self, api_key: str | None) -> None:
        """Send this API key from now on (None: none)."""
        self._use(api_key=api_key)

    def use_token(self, token: str | None) -> None:
        """Send this session token from now on (an API key, if set, is dropped)."""
        self.config = with_overrides(self.config, token=token)
        from dataclasses import replace

        self.config = replace(self.config, api_key=None)
        self._runner.config = self.config  # type: ignore[attr-defined]

    @property
    def base_url(self) -> str:
        return self.config.base_url

    def __repr__(self) -> str:
        kind = (
            "api key" if self.config.api_key else "session token" if self.config.token else "none"
        )
        return f"{type(self).__name__}(base_url={self.config.base_url!r}, credentials={kind})"


def _config(
    base_url: str | None,
    api_key: str | None,
    token: str | None,
    profile: str | None,
    config: Config | None,
    http_base: str | None,
) -> Config:
    if config is not None:
        return config
    return load_config(
        base_url=base_url or http_base, api_key=api_key, token=token, profile=profile
    )


class Client(_Api[SyncMode]):
    """The API, synchronously.

    ``Client()`` reads ``AUTOML_BASE_URL`` and ``AUTOML_API_KEY``/``AUTOML_TOKEN``, then
    the config file (:mod:`automl.config`); arguments win. ``http_client`` is an
    ``httpx.Client`` to send with (a ``fastapi.testclient.TestClient`` in tests; its
    ``base_url`` is used unless one is given). Reads (GET) are sent again up to
    ``max_retries`` times on 429/502/503/504 (after ``Retry-After``) and when the API
    cannot be reached; nothing else is. Use it as a context manager, or ``close()`` it."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        token: str | None = None,
        profile: str | None = None,
        config: Config | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        http_client: httpx.Client | None = None,
        max_retries: int = 2,
    ) -> None:
        http_base = str(http_client.base_url).rstrip("/") if http_client is not None else None
        self.config = _config(base_url, api_key, token, profile, config, http_base or None)
        self._owns_http = http_client is None
        http = http_client or httpx.Client(
            timeout=timeout if timeout is not None else env_timeout(), follow_redirects=True
        )
        self._attach(SyncRunner(self.config, self, http, headers, max_retries))

    def login(self, email: str, password: str) -> Any:
        """Log in with a password and send the session token from now on; the login."""
        out = self.auth.login(email, password)
        self.use_token(out.token)
        return out

    def close(self) -> None:
        if self._owns_http:
            self._runner.close()  # type: ignore[attr-defined]

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_Api[AsyncMode]):
    """The API, asynchronously (``await client.datasets.get(...)``, ``async for`` over
    lists). Same arguments as :class:`Client`; ``http_client`` is an
    ``httpx.AsyncClient`` (``transport=httpx.ASGITransport(app)`` in tests)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        token: str | None = None,
        profile: str | None = None,
        config: Config | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        max_retries: int = 2,
    ) -> None:
        http_base = str(http_client.base_url).rstrip("/") if http_client is not None else None
        self.config = _config(base_url, api_key, token, profile, config, http_base or None)
        self._owns_http = http_client is None
        http = http_client or httpx.AsyncClient(
            timeout=timeout if timeout is not None else env_timeout(), follow_redirects=True
        )
        self._attach(AsyncRunner(self.config, self, http, headers, max_retries))

    async def login(self, email: str, password: str) -> Any:
        """Log in with a password and send the session token from now on; the login."""
        out = await self.auth.login(email, password)
        self.use_token(out.token)
        return out

    async def aclose(self) -> None:
        if self._owns_http:
            await self._runner.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
