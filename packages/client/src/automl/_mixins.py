"""Methods of the returned models that call back through the client that fetched them.

``job.wait()``, ``deployment.predict(frame)``, ``version.download(format=..., path=...)``:
each delegates to the resource method of the same name (``client.jobs.wait(job)``...),
so on an :class:`automl.AsyncClient` it returns an awaitable. The resource methods are
the typed form; these are shortcuts.
"""

from __future__ import annotations

from typing import Any

from automl.errors import AutomlError


def _client(obj: Any) -> Any:
    client = getattr(obj, "_client", None)
    if client is None:
        raise AutomlError(
            f"this {type(obj).__name__} was not fetched by a client: call the client's method"
        )
    return client


class JobMixin:
    def wait(self, timeout: float | None = None, **kw: Any) -> Any:
        """Wait for the job to end over its event stream; the final job (``jobs.wait``)."""
        return _client(self).jobs.wait(self, timeout=timeout, **kw)

    def refresh(self) -> Any:
        return _client(self).jobs.get(self)

    def cancel(self) -> Any:
        return _client(self).jobs.cancel(self)

    def logs(self, **kw: Any) -> Any:
        return _client(self).jobs.logs(self, **kw)


class DeploymentMixin:
    def predict(self, data: Any, **kw: Any) -> Any:
        """Predictions for a DataFrame or records (``deployments.predict``)."""
        return _client(self).deployments.predict(self, data, **kw)

    def stop(self) -> Any:
        return _client(self).deployments.stop(self)

    def refresh(self) -> Any:
        return _client(self).deployments.get(self)


class ModelVersionMixin:
    def download(self, format: str | None = None, path: Any = None, **kw: Any) -> Any:
        """The version's file in ``format`` to ``path`` (``model_versions.download``)."""
        return _client(self).model_versions.download(self, format=format, path=path, **kw)

    def refresh(self) -> Any:
        return _client(self).model_versions.get(self)


class DatasetMixin:
    def refresh(self) -> Any:
        return _client(self).datasets.get(self)


class WorkflowMixin:
    def run(self, **kw: Any) -> Any:
        """Run the workflow (``workflows.run``): the run, whose ``job`` can be waited for."""
        return _client(self).workflows.run(self, **kw)


class BatchMixin:
    def wait(self, timeout: float | None = None, **kw: Any) -> Any:
        """Wait for the batch's job to end (``jobs.wait`` on ``job_id``)."""
        return _client(self).jobs.wait(self.job_id, timeout=timeout, **kw)  # type: ignore[attr-defined]


class EvaluationMixin:
    def wait(self, timeout: float | None = None, **kw: Any) -> Any:
        """Wait for the evaluation's job to end, then the evaluation again."""
        return _client(self).evaluations.wait(self, timeout=timeout, **kw)
