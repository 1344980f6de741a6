"""Experiments, evaluations, tutorials, the audit trail, administration, health."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Generator
from datetime import datetime
from typing import Any

from automl import models as m
from automl._core import ServerEvent
from automl.errors import WaitTimeout
from automl.resources._base import (
    Call,
    Destination,
    Id,
    M,
    Resource,
    body,
    flow,
    ident,
    op,
    paged,
)
from automl.resources._base import page_of as _page
from automl.resources._base import path as _path
from automl.resources._base import returns as _r
from automl.resources.data import Jobs
from automl.resources.registry import _plot_call, _plot_name


class Experiments(Resource[M]):
    """Experiments: runs of workflows compared on a metric."""

    @op
    def create(
        self,
        name: str,
        *,
        description: str | None = None,
        problem_type: str | None = None,
        dataset_id: Id | None = None,
        primary_metric: str | None = None,
    ) -> Call[m.ExperimentOut]:
        """``POST /v1/experiments``."""
        return Call(
            "POST",
            "/v1/experiments",
            json=body(
                name=name,
                description=description,
                problem_type=problem_type,
                dataset_id=None if dataset_id is None else ident(dataset_id),
                primary_metric=primary_metric,
            ),
            parse=_r(m.ExperimentOut),
        )

    @paged
    def list(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.ExperimentOut]]:
        """``GET /v1/experiments``."""
        return Call(
            "GET",
            "/v1/experiments",
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.ExperimentOut),
        )

    @op
    def get(self, experiment_id: Id) -> Call[m.ExperimentDetail]:
        """``GET /v1/experiments/{experiment_id}``: with its runs and their comparison."""
        return Call(
            "GET", _path("/v1/experiments/{e}", e=experiment_id), parse=_r(m.ExperimentDetail)
        )

    @op
    def add_run(
        self,
        experiment_id: Id,
        *,
        model_id: Id | None = None,
        job_id: Id | None = None,
        name: str | None = None,
        notes: str | None = None,
    ) -> Call[m.ExperimentRunOut]:
        """``POST /v1/experiments/{experiment_id}/runs``: a model or a job as a run."""
        return Call(
            "POST",
            _path("/v1/experiments/{e}/runs", e=experiment_id),
            json=body(
                model_id=None if model_id is None else ident(model_id),
                job_id=None if job_id is None else ident(job_id),
                name=name,
                notes=notes,
            ),
            parse=_r(m.ExperimentRunOut),
        )


class EvaluationCriteria(Resource[M]):
    """Reusable pass/fail criteria of evaluations."""

    @op
    def create(
        self,
        name: str,
        kind: str,
        *,
        metric: str | None = None,
        operator: str | None = None,
        threshold: float | None = None,
        rule: str | None = None,
        tolerance: float | None = None,
        slice: dict[str, Any] | None = None,
    ) -> Call[m.CriterionOut]:
        """``POST /v1/evaluation-criteria``."""
        return Call(
            "POST",
            "/v1/evaluation-criteria",
            json=body(
                name=name,
                kind=kind,
                metric=metric,
                operator=operator,
                threshold=threshold,
                rule=rule,
                tolerance=tolerance,
                slice=slice,
            ),
            parse=_r(m.CriterionOut),
        )

    @paged
    def list(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.CriterionOut]]:
        """``GET /v1/evaluation-criteria``."""
        return Call(
            "GET",
            "/v1/evaluation-criteria",
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.CriterionOut),
        )


class Evaluations(Resource[M]):
    """Evaluations of a model version on a dataset version (a job)."""

    @op
    def create(
        self,
        model_version_id: Id,
        dataset_version_id: Id,
        *,
        criteria_ids: builtins.list[Id] | None = None,
    ) -> Call[m.EvaluationOut]:
        """``POST /v1/evaluations``: queued (``evaluation.wait()``)."""
        return Call(
            "POST",
            "/v1/evaluations",
            json=body(
                model_version_id=ident(model_version_id),
                dataset_version_id=ident(dataset_version_id),
                criteria_ids=None if criteria_ids is None else [ident(c) for c in criteria_ids],
            ),
            parse=_r(m.EvaluationOut),
        )

    @op
    def get(self, evaluation_id: Id) -> Call[m.EvaluationOut]:
        """``GET /v1/evaluations/{evaluation_id}``."""
        return Call("GET", _path("/v1/evaluations/{e}", e=evaluation_id), parse=_r(m.EvaluationOut))

    @paged
    def rows(
        self,
        evaluation_id: Id,
        *,
        passed: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Call[m.Page[m.RowOut]]:
        """``GET /v1/evaluations/{evaluation_id}/rows`` (``passed=False``: failing rows)."""
        return Call(
            "GET",
            _path("/v1/evaluations/{e}/rows", e=evaluation_id),
            params={"passed": passed, "limit": limit, "cursor": cursor},
            parse=_page(m.RowOut),
        )

    @op
    def plot(
        self, evaluation_id: Id, plot: str, *, format: str | None = "png", path: Destination = None
    ) -> Call[Any]:
        """``GET /v1/evaluations/{id}/plots/{plot}.{format}``: png/svg bytes (or to
        ``path``), or json data."""
        url = _path("/v1/evaluations/{e}/plots/{p}", e=evaluation_id, p=_plot_name(plot, format))
        return _plot_call(url, format, path)

    @flow
    def wait(
        self,
        evaluation_id: Id,
        *,
        timeout: float | None = None,
        on_event: Callable[[ServerEvent], None] | None = None,
    ) -> Generator[Call[Any], Any, m.EvaluationOut]:
        """Wait for the evaluation's job to end; the evaluation with its results."""
        started = time.monotonic()
        evaluation: m.EvaluationOut = yield Evaluations.get.fn(self, evaluation_id)
        yield Jobs.events.fn(self, evaluation.job_id, on_event=on_event, timeout=timeout)
        evaluation = yield Evaluations.get.fn(self, evaluation_id)
        if str(evaluation.status) not in {"completed", "failed", "cancelled"}:
            waited = time.monotonic() - started
            raise WaitTimeout(
                f"evaluation {evaluation.id} still {evaluation.status} after {waited:.1f} s",
                evaluation,
            )
        return evaluation


class Tutorials(Resource[M]):
    @paged
    def list(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.TutorialOut]]:
        """``GET /v1/tutorials``: with the caller's progress."""
        return Call(
            "GET",
            "/v1/tutorials",
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.TutorialOut),
        )

    @op
    def set_progress(
        self,
        tutorial_id: Id,
        current_step: int,
        *,
        completed_steps: builtins.list[int] | None = None,
        is_completed: bool | None = None,
    ) -> Call[m.ProgressOut]:
        """``PUT /v1/tutorials/{tutorial_id}/progress``."""
        return Call(
            "PUT",
            _path("/v1/tutorials/{t}/progress", t=tutorial_id),
            json=body(
                current_step=current_step,
                completed_steps=completed_steps,
                is_completed=is_completed,
            ),
            parse=_r(m.ProgressOut),
        )


class AuditEvents(Resource[M]):
    """The caller's audit trail."""

    @paged
    def list(
        self,
        *,
        action: str | None = None,
        from_: datetime | None = None,
        to: datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Call[m.Page[m.AuditEventOut]]:
        """``GET /v1/audit-events`` (``action``: ``api_key.created`` or a prefix ending in
        a dot, ``api_key.``)."""
        return Call(
            "GET",
            "/v1/audit-events",
            params={"action": action, "from": from_, "to": to, "limit": limit, "cursor": cursor},
            parse=_page(m.AuditEventOut),
        )


class Admin(Resource[M]):
    """What an administrator does (403 ``admin_required`` for anyone else)."""

    @paged
    def users(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.AdminUserOut]]:
        """``GET /v1/admin/users``."""
        return Call(
            "GET",
            "/v1/admin/users",
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.AdminUserOut),
        )

    @op
    def get_user(self, user_id: Id) -> Call[m.AdminUserOut]:
        """``GET /v1/admin/users/{user_id}``."""
        return Call("GET", _path("/v1/admin/users/{u}", u=user_id), parse=_r(m.AdminUserOut))

    @op
    def update_user(
        self,
        user_id: Id,
        *,
        tier: str | None = None,
        role: str | None = None,
        is_active: bool | None = None,
        can_upload: bool | None = None,
        can_train: bool | None = None,
        can_deploy: bool | None = None,
        can_download: bool | None = None,
        can_buy: bool | None = None,
    ) -> Call[m.AdminUserOut]:
        """``PATCH /v1/admin/users/{user_id}``: tier, role, active, privileges."""
        return Call(
            "PATCH",
            _path("/v1/admin/users/{u}", u=user_id),
            json=body(
                tier=tier,
                role=role,
                is_active=is_active,
                can_upload=can_upload,
                can_train=can_train,
                can_deploy=can_deploy,
                can_download=can_download,
                can_buy=can_buy,
            ),
            parse=_r(m.AdminUserOut),
        )

    @op
    def adjust_credits(
        self, user_id: Id, amount: int, reason: str, idempotency_key: str
    ) -> Call[m.CreditAdjustmentOut]:
        """``POST /v1/admin/users/{user_id}/credit-adjustments``."""
        return Call(
            "POST",
            _path("/v1/admin/users/{u}/credit-adjustments", u=user_id),
            json=body(amount=amount, reason=reason, idempotency_key=idempotency_key),
            parse=_r(m.CreditAdjustmentOut),
        )

    @paged
    def audit_events(
        self,
        *,
        action: str | None = None,
        from_: datetime | None = None,
        to: datetime | None = None,
        actor_user_id: Id | None = None,
        entity_id: Id | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Call[m.Page[m.AuditEventOut]]:
        """``GET /v1/admin/audit-events``: everyone's audit trail."""
        return Call(
            "GET",
            "/v1/admin/audit-events",
            params={
                "action": action,
                "from": from_,
                "to": to,
                "actor_user_id": None if actor_user_id is None else ident(actor_user_id),
                "entity_id": None if entity_id is None else ident(entity_id),
                "limit": limit,
                "cursor": cursor,
            },
            parse=_page(m.AuditEventOut),
        )

    @paged
    def reconciliation_runs(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.ReconciliationRunOut]]:
        """``GET /v1/admin/reconciliation-runs``: the billing reconciliation's history."""
        return Call(
            "GET",
            "/v1/admin/reconciliation-runs",
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.ReconciliationRunOut),
        )


class Health(Resource[M]):
    @op
    def live(self) -> Call[m.HealthOut]:
        """``GET /healthz``: the process answers."""
        return Call("GET", "/healthz", parse=_r(m.HealthOut))

    @op
    def ready(self) -> Call[m.ReadyOut]:
        """``GET /readyz``: the database is reachable and at head, workers are alive
        (503 otherwise: raised as :class:`automl.errors.ServerError`)."""
        return Call("GET", "/readyz", parse=_r(m.ReadyOut))
