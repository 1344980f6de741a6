"""Datasets, workflows, jobs and their events (tags ``datasets``, ``workflows``, ``jobs``)."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Generator
from typing import Any

from automl import models as m
from automl._core import ServerEvent, Stream, Upload, sleep
from automl.errors import JobFailed, NotFound, WaitTimeout
from automl.resources._base import (
    Call,
    FileSource,
    Id,
    M,
    Progress,
    Resource,
    body,
    flow,
    ident,
    op,
    paged,
    path,
)
from automl.resources._base import page_of as _page
from automl.resources._base import returns as _r

#: A job in one of these has ended.
FINISHED = frozenset({"completed", "failed", "cancelled"})


class Datasets(Resource[M]):
    """Uploaded data: datasets and their versions."""

    @op
    def upload(
        self,
        file: FileSource,
        name: str,
        *,
        description: str | None = None,
        problem_type: str | None = None,
        target_column: str | None = None,
        filename: str | None = None,
        progress: Progress | None = None,
    ) -> Call[m.UploadOut]:
        """``POST /v1/datasets``: a new dataset from a file (a path, bytes or a binary
        file object; csv, json, parquet or excel, told by the file name), streamed with
        ``progress(sent, total)``. Ingestion runs in the background: its job is
        ``ingestion_job``."""
        fields = {
            k: v
            for k, v in {
                "name": name,
                "description": description,
                "problem_type": problem_type,
                "target_column": target_column,
            }.items()
            if v is not None
        }
        return Call(
            "POST",
            "/v1/datasets",
            upload=Upload(fields, "file", file, filename, progress=progress),
            parse=_r(m.UploadOut),
        )

    create = upload

    @op
    def upload_version(
        self,
        dataset_id: Id,
        file: FileSource,
        *,
        version_label: str | None = None,
        filename: str | None = None,
        progress: Progress | None = None,
    ) -> Call[m.UploadOut]:
        """``POST /v1/datasets/{dataset_id}/versions``: a new version of a dataset."""
        fields = {"version_label": version_label} if version_label is not None else {}
        return Call(
            "POST",
            path("/v1/datasets/{d}/versions", d=dataset_id),
            upload=Upload(fields, "file", file, filename, progress=progress),
            parse=_r(m.UploadOut),
        )

    @paged
    def list(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.DatasetOut]]:
        """``GET /v1/datasets``."""
        return Call(
            "GET",
            "/v1/datasets",
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.DatasetOut),
        )

    @op
    def get(self, dataset_id: Id) -> Call[m.DatasetDetail]:
        """``GET /v1/datasets/{dataset_id}``: the dataset and its versions."""
        return Call("GET", path("/v1/datasets/{d}", d=dataset_id), parse=_r(m.DatasetDetail))

    @op
    def update(
        self,
        dataset_id: Id,
        *,
        name: str | None = None,
        target_column: str | None = None,
        problem_type: str | None = None,
        ignored_columns: builtins.list[str] | None = None,
    ) -> Call[m.DatasetOut]:
        """``PATCH /v1/datasets/{dataset_id}``."""
        return Call(
            "PATCH",
            path("/v1/datasets/{d}", d=dataset_id),
            json=body(
                name=name,
                target_column=target_column,
                problem_type=problem_type,
                ignored_columns=ignored_columns,
            ),
            parse=_r(m.DatasetOut),
        )

    @op
    def delete(self, dataset_id: Id) -> Call[None]:
        """``DELETE /v1/datasets/{dataset_id}``."""
        return Call("DELETE", path("/v1/datasets/{d}", d=dataset_id), expect="none")

    @op
    def profile(self, dataset_id: Id, version_number: int) -> Call[m.ProfileOut]:
        """``GET /v1/datasets/{dataset_id}/versions/{version_number}/profile``."""
        return Call(
            "GET",
            path("/v1/datasets/{d}/versions/{n}/profile", d=dataset_id, n=version_number),
            parse=_r(m.ProfileOut),
        )

    @flow
    def wait_ready(
        self,
        dataset_id: Id,
        *,
        version_number: int | None = None,
        timeout: float | None = None,
        poll_seconds: float = 0.5,
    ) -> Generator[Call[Any], Any, m.DatasetDetail]:
        """Poll the dataset until its version (the latest unless ``version_number``) is
        ingested or failed; the dataset. ``timeout`` raises
        :class:`automl.errors.WaitTimeout`; a failed ingestion raises
        :class:`automl.errors.JobFailed`."""
        did = ident(dataset_id.dataset if isinstance(dataset_id, m.UploadOut) else dataset_id)
        if version_number is None and isinstance(dataset_id, m.UploadOut):
            version_number = dataset_id.version.version_number
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            found: m.DatasetDetail = yield Datasets.get.fn(self, did)
            versions = [
                v
                for v in found.versions
                if version_number is None or v.version_number == version_number
            ]
            if not versions:
                raise NotFound(404, "not_found", f"version {version_number} not found")
            version = max(versions, key=lambda v: v.version_number)
            if str(version.status) == "completed":
                return found
            if str(version.status) == "failed":
                raise JobFailed(
                    f"ingestion of version {version.version_number} failed:"
                    f" {version.error_message or ''}",
                    found,
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"version {version.version_number} still {version.status} after {timeout} s",
                    found,
                )
            yield sleep(poll_seconds)


class Workflows(Resource[M]):
    """Workflows (a graph of nodes) and their runs."""

    @op
    def create(
        self, name: str, definition: dict[str, Any] | m.Model, *, description: str | None = None
    ) -> Call[m.WorkflowOut]:
        """``POST /v1/workflows``."""
        return Call(
            "POST",
            "/v1/workflows",
            json=body(name=name, description=description, definition=definition),
            parse=_r(m.WorkflowOut),
        )

    @paged
    def list(
        self, *, deleted: bool | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.WorkflowOut]]:
        """``GET /v1/workflows`` (``deleted=True``: the trash)."""
        return Call(
            "GET",
            "/v1/workflows",
            params={"deleted": deleted, "limit": limit, "cursor": cursor},
            parse=_page(m.WorkflowOut),
        )

    @op
    def get(self, workflow_id: Id) -> Call[m.WorkflowOut]:
        """``GET /v1/workflows/{workflow_id}``."""
        return Call("GET", path("/v1/workflows/{w}", w=workflow_id), parse=_r(m.WorkflowOut))

    @op
    def update(
        self,
        workflow_id: Id,
        *,
        name: str | None = None,
        description: str | None = None,
        definition: dict[str, Any] | m.Model | None = None,
    ) -> Call[m.WorkflowOut]:
        """``PATCH /v1/workflows/{workflow_id}``."""
        return Call(
            "PATCH",
            path("/v1/workflows/{w}", w=workflow_id),
            json=body(name=name, description=description, definition=definition),
            parse=_r(m.WorkflowOut),
        )

    @op
    def delete(self, workflow_id: Id) -> Call[None]:
        """``DELETE /v1/workflows/{workflow_id}`` (to the trash: ``restore`` undoes it)."""
        return Call("DELETE", path("/v1/workflows/{w}", w=workflow_id), expect="none")

    @op
    def restore(self, workflow_id: Id) -> Call[m.WorkflowOut]:
        """``POST /v1/workflows/{workflow_id}/restore``."""
        return Call(
            "POST", path("/v1/workflows/{w}/restore", w=workflow_id), parse=_r(m.WorkflowOut)
        )

    @op
    def run(self, workflow_id: Id, *, priority: int | None = None) -> Call[m.RunOut]:
        """``POST /v1/workflows/{workflow_id}/run``: a job (``run.job``; ``run.job.wait()``)."""
        return Call(
            "POST",
            path("/v1/workflows/{w}/run", w=workflow_id),
            json=body(priority=priority),
            parse=_r(m.RunOut),
        )


def _until_end(event: ServerEvent) -> bool:
    return event.event == "end"


class Jobs(Resource[M]):
    """Jobs: runs of workflows, ingestions, batch predictions, evaluations."""

    @paged
    def list(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.JobOut]]:
        """``GET /v1/jobs``."""
        return Call(
            "GET",
            "/v1/jobs",
            params={"status": status, "limit": limit, "cursor": cursor},
            parse=_page(m.JobOut),
        )

    @op
    def get(self, job_id: Id) -> Call[m.JobDetail]:
        """``GET /v1/jobs/{job_id}``: the job and its nodes."""
        return Call("GET", path("/v1/jobs/{j}", j=_job_id(job_id)), parse=_r(m.JobDetail))

    @op
    def cancel(self, job_id: Id) -> Call[m.CancelOut]:
        """``POST /v1/jobs/{job_id}/cancel``."""
        return Call("POST", path("/v1/jobs/{j}/cancel", j=_job_id(job_id)), parse=_r(m.CancelOut))

    @paged
    def logs(
        self,
        job_id: Id,
        *,
        level: builtins.list[str] | str | None = None,
        node_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Call[m.Page[m.LogLineOut]]:
        """``GET /v1/jobs/{job_id}/logs``: log lines, oldest first."""
        return Call(
            "GET",
            path("/v1/jobs/{j}/logs", j=_job_id(job_id)),
            params={"level": level, "node_id": node_id, "limit": limit, "cursor": cursor},
            parse=_page(m.LogLineOut),
        )

    @op
    def events(
        self,
        job_id: Id,
        *,
        on_event: Callable[[ServerEvent], None] | None = None,
        until: Callable[[ServerEvent], bool] = _until_end,
        timeout: float | None = None,
        last_event_id: str | None = None,
    ) -> Call[ServerEvent | None]:
        """``GET /v1/jobs/{job_id}/events``: read the job's event stream (``status``,
        ``node``, ``log``, ``end``), calling ``on_event`` for each, until ``until(event)``
        (by default the ``end`` event) or ``timeout`` seconds; returns the event that
        stopped it (None on timeout). A dropped stream is reconnected with
        ``Last-Event-ID``."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else None
        return Call(
            "GET",
            path("/v1/jobs/{j}/events", j=_job_id(job_id)),
            headers=headers,
            expect="events",
            stream=Stream(until=until, timeout=timeout, on_event=on_event),
        )

    @flow
    def wait(
        self,
        job_id: Id,
        *,
        timeout: float | None = None,
        on_event: Callable[[ServerEvent], None] | None = None,
        raise_on_failure: bool = False,
    ) -> Generator[Call[Any], Any, m.JobDetail]:
        """Wait until the job ends (over its event stream), then the final job.

        ``timeout`` (seconds) raises :class:`automl.errors.WaitTimeout` (carrying the
        job's last state); ``raise_on_failure`` raises :class:`automl.errors.JobFailed`
        for a failed or cancelled job."""
        jid = _job_id(job_id)
        started = time.monotonic()
        ended = yield Jobs.events.fn(self, jid, on_event=on_event, timeout=timeout)
        job: m.JobDetail = yield Jobs.get.fn(self, jid)
        if ended is None and str(job.status) not in FINISHED:
            waited = time.monotonic() - started
            raise WaitTimeout(f"job {jid} still {job.status} after {waited:.1f} s", job)
        if raise_on_failure and str(job.status) != "completed":
            raise JobFailed(f"job {jid} {job.status}: {job.error_message or ''}".rstrip(": "), job)
        return job


def _job_id(value: Any) -> str:
    """A job's id from an id, a job, a run (``run.job``) or a batch (``job_id``)."""
    if isinstance(value, m.RunOut):
        return ident(value.job)
    if isinstance(value, (m.BatchOut, m.EvaluationOut)):
        return ident(value.job_id)
    return ident(value)


__all__ = ["Datasets", "Workflows", "Jobs", "NotFound", "FINISHED"]
