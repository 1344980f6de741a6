"""The serving benchmark's "ours, metering off" side (issue 14, over HTTP): ``automl-serve``
with no metering, for bench/serving.py only.

    python -m bench.serve_unmetered      # as ``automl-serve``: same settings, env, pool

It runs the serving app exactly as ``python -m api.serving.app`` does (``api.cli.serve``:
the same settings from the environment, one uvicorn process, the same pool and
threads), with :class:`api.serving.service.Predictor` replaced IN THIS PROCESS ONLY by
:class:`UnmeteredPredictor`: the API key checked as ever, the deployment read with
:func:`database.deployments.resolve` (one statement, as the route would with nothing
to admit) instead of :func:`database.deployments.admit_serving`: no quota, no credit
lease nor hold, and no request record (no ``RequestLog``: nothing is written to
``inference_requests``). It is no switch of the product: nothing a user or an operator
can set turns it on; it lives under bench/ and patches the class at start-up.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, Engine

from api.serving import service
from database import deployments
from database.models import DeploymentStatus


class UnmeteredPredictor(service.Predictor):
    """:class:`api.serving.service.Predictor` without the request's metering."""

    def __init__(self, storage: Any, cache_bytes: int, **kwargs: Any) -> None:
        kwargs["credit_lease"] = False  # no lease: no credit is taken at all
        super().__init__(storage, cache_bytes, **kwargs)

    def _request_log(self, bind: Engine) -> None:
        """No RequestLog (nor its writer thread)."""
        return None

    def _quick(
        self,
        conn: Connection,
        principal: Any,
        deployment_id: uuid.UUID,
        body: bytes,
        content_type: str | None,
        rid: str,
        state: Any,
    ) -> Any:
        """The quick way with :func:`deployments.resolve` for ``admit_serving``: the
        version remembered is served only while the deployment, active, serves it."""
        hinted = self._hinted(principal, deployment_id, body, content_type)
        if hinted is None:
            return None
        version_id, model, frame, rows = hinted
        try:
            target = deployments.resolve(conn, principal.user_id, deployment_id)
        except deployments.DeploymentNotFound:
            self._hints.pop((principal.user_id, deployment_id), None)
            raise
        if target.status != DeploymentStatus.ACTIVE or target.model_version_id != version_id:
            return None
        state.deployment_id, state.version_id, state.rows = deployment_id, version_id, rows
        return service._Ready(target.config, model, frame, rows)

    def _admit(self, *args: Any, **kwargs: Any) -> None:
        """The long way without ``metering.admit``: nothing held."""
        return None

    def _record(self, *args: Any, **kwargs: Any) -> None:
        """No request record."""


def main() -> int:
    import api.serving.app
    from api.cli import serve

    # create_app() looks the class up in its module when it is called: this process only.
    api.serving.app.Predictor = UnmeteredPredictor  # type: ignore[misc]
    return serve([])


if __name__ == "__main__":
    raise SystemExit(main())
