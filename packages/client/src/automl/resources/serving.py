"""Deployments: online predictions and batch scoring (tag ``deployments``)."""

from __future__ import annotations

import builtins
import json
from typing import Any

from automl import models as m
from automl._model import Model
from automl.resources._base import (
    Call,
    Destination,
    Id,
    M,
    Progress,
    Resource,
    body,
    ident,
    op,
    paged,
    path,
)
from automl.resources._base import page_of as _page
from automl.resources._base import path as _path
from automl.resources._base import returns as _r


class Prediction(Model):
    """What ``deployments.predict`` answers: one prediction a row, the classes'
    probabilities per row for a classifier, and the model version that answered."""

    predictions: builtins.list[Any]
    probabilities: builtins.list[dict[str, float]] | None = None
    model_version_id: str | None = None

    def to_pandas(self) -> Any:
        """A DataFrame: ``prediction`` and one ``probability_<class>`` column a class
        (needs the ``pandas`` extra)."""
        import pandas as pd

        frame = pd.DataFrame({"prediction": self.predictions})
        if self.probabilities:
            probs = pd.DataFrame(self.probabilities).add_prefix("probability_")
            frame = pd.concat([frame, probs], axis=1)
        return frame


def predict_body(data: Any) -> tuple[bytes | None, Any, dict[str, str] | None]:
    """(content, json, headers) for ``data``: a pandas DataFrame (sent as
    ``dataframe_split``, NaN as null), a list of records (dicts), one record (a dict
    of scalars), a dict already in one of the API's shapes (``records``,
    ``dataframe_records``, ``dataframe_split``, ``instances``, ``inputs``), or CSV
    text / Parquet bytes."""
    if hasattr(data, "to_json") and hasattr(data, "columns"):  # a pandas DataFrame
        split = json.loads(data.to_json(orient="split", index=False, date_format="iso"))
        return None, {"dataframe_split": {"columns": split["columns"], "data": split["data"]}}, None
    if isinstance(data, str):
        return data.encode(), None, {"Content-Type": "text/csv"}
    if isinstance(data, (bytes, bytearray)):
        if bytes(data[:4]) == b"PAR1":
            return bytes(data), None, {"Content-Type": "application/vnd.apache.parquet"}
        return bytes(data), None, {"Content-Type": "text/csv"}
    if isinstance(data, dict):
        shapes = {"records", "dataframe_records", "dataframe_split", "instances", "inputs"}
        if len(data) == 1 and next(iter(data)) in shapes:
            return None, data, None
        return None, {"records": [data]}, None
    if isinstance(data, (list, tuple)):
        return None, {"records": list(data)}, None
    raise TypeError(
        f"cannot predict on a {type(data).__name__}: give a DataFrame, records, CSV or Parquet"
    )


class Deployments(Resource[M]):
    """Deployed model versions: online predictions, batch scoring, the request log."""

    @op
    def create(
        self,
        name: str,
        *,
        model_version_id: Id | None = None,
        registered_model_id: Id | None = None,
        alias: str | None = None,
        max_batch_rows: int | None = None,
        timeout_ms: int | None = None,
        config: dict[str, Any] | None = None,
    ) -> Call[m.DeploymentOut]:
        """``POST /v1/deployments``: a model version, or a registered model's alias
        (which the deployment follows)."""
        cfg = dict(config or {})
        if max_batch_rows is not None:
            cfg["max_batch_rows"] = max_batch_rows
        if timeout_ms is not None:
            cfg["timeout_ms"] = timeout_ms
        return Call(
            "POST",
            "/v1/deployments",
            json=body(
                name=name,
                model_version_id=None if model_version_id is None else ident(model_version_id),
                registered_model_id=None
                if registered_model_id is None
                else ident(registered_model_id),
                alias=alias,
                config=cfg or None,
            ),
            parse=_r(m.DeploymentOut),
        )

    @paged
    def list(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.DeploymentOut]]:
        """``GET /v1/deployments``."""
        return Call(
            "GET",
            "/v1/deployments",
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.DeploymentOut),
        )

    @op
    def get(self, deployment_id: Id) -> Call[m.DeploymentOut]:
        """``GET /v1/deployments/{deployment_id}``."""
        return Call("GET", path("/v1/deployments/{d}", d=deployment_id), parse=_r(m.DeploymentOut))

    @op
    def stop(self, deployment_id: Id) -> Call[m.DeploymentOut]:
        """``POST /v1/deployments/{deployment_id}/stop``."""
        return Call(
            "POST", path("/v1/deployments/{d}/stop", d=deployment_id), parse=_r(m.DeploymentOut)
        )

    @op
    def predict(self, deployment_id: Id, data: Any) -> Call[Prediction]:
        """``POST /v1/deployments/{deployment_id}/predict``: predictions (and a
        classifier's probabilities) for a DataFrame, records, one record, or CSV/Parquet
        (see :func:`predict_body`)."""
        content, payload, headers = predict_body(data)
        return Call(
            "POST",
            path("/v1/deployments/{d}/predict", d=deployment_id),
            content=content,
            json=payload,
            headers=headers,
            parse=_r(Prediction),
        )

    @op
    def batch(self, deployment_id: Id, dataset_version_id: Id) -> Call[m.BatchOut]:
        """``POST /v1/deployments/{deployment_id}/batch``: score a dataset version (a
        job: ``batch.wait()``, then ``batch_output``)."""
        return Call(
            "POST",
            path("/v1/deployments/{d}/batch", d=deployment_id),
            json=body(dataset_version_id=ident(dataset_version_id)),
            parse=_r(m.BatchOut),
        )

    @op
    def get_batch(self, deployment_id: Id, job_id: Id) -> Call[m.BatchOut]:
        """``GET /v1/deployments/{deployment_id}/batch/{job_id}``."""
        return Call(
            "GET",
            path("/v1/deployments/{d}/batch/{j}", d=deployment_id, j=_batch_job(job_id)),
            parse=_r(m.BatchOut),
        )

    @op
    def batch_output(
        self,
        deployment_id: Id,
        job_id: Id,
        path: Destination = None,
        *,
        progress: Progress | None = None,
    ) -> Call[Any]:
        """``GET /v1/deployments/{deployment_id}/batch/{job_id}/output``: the Parquet
        file, streamed to ``path`` (returned) or as bytes."""
        return Call(
            "GET",
            _path("/v1/deployments/{d}/batch/{j}/output", d=deployment_id, j=_batch_job(job_id)),
            expect="bytes",
            dest=path,
            progress=progress,
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
        """``GET /v1/deployments/{deployment_id}/requests`` (also ``usage.requests``)."""
        return Call(
            "GET",
            _path("/v1/deployments/{d}/requests", d=deployment_id),
            params={"status": status, "limit": limit, "cursor": cursor},
            parse=_page(m.InferenceRequestOut),
        )


def _batch_job(value: Any) -> str:
    return ident(value.job_id) if isinstance(value, m.BatchOut) else ident(value)
