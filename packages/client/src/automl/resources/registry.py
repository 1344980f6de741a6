"""Trained models, the model registry and its files (tags ``models``, ``registry``)."""

from __future__ import annotations

import builtins
from typing import Any

from automl import models as m
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
)
from automl.resources._base import page_of as _page
from automl.resources._base import path as _path
from automl.resources._base import returns as _r


def _plot_name(plot: str, format: str | None) -> str:
    return plot if format is None or "." in plot else f"{plot}.{format}"


def _plot_call(url: str, format: str | None, dest: Destination) -> Call[Any]:
    if format == "json" or url.endswith(".json"):
        return Call("GET", url)
    return Call("GET", url, expect="bytes", dest=dest)


class Models(Resource[M]):
    """Models trained by workflow runs."""

    @paged
    def list(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.ModelOut]]:
        """``GET /v1/models``."""
        return Call(
            "GET", "/v1/models", params={"limit": limit, "cursor": cursor}, parse=_page(m.ModelOut)
        )

    @op
    def get(self, model_id: Id) -> Call[m.ModelDetail]:
        """``GET /v1/models/{model_id}``: with its metrics and hyperparameters."""
        return Call("GET", _path("/v1/models/{i}", i=model_id), parse=_r(m.ModelDetail))

    @op
    def download_artifact(
        self, model_id: Id, path: Destination = None, *, progress: Progress | None = None
    ) -> Call[Any]:
        """``GET /v1/models/{model_id}/artifact``: the joblib file, streamed to ``path``
        (a file or a folder; its path is returned) or returned as bytes."""
        return Call(
            "GET",
            _path("/v1/models/{i}/artifact", i=model_id),
            expect="bytes",
            dest=path,
            progress=progress,
        )


class RegisteredModels(Resource[M]):
    """Registered models: named, versioned, shared, aliased."""

    @op
    def create(
        self,
        name: str,
        *,
        description: str | None = None,
        model_card: str | None = None,
        license: str | None = None,
        tags: dict[str, str] | None = None,
        visibility: str | None = None,
    ) -> Call[m.RegisteredModelDetail]:
        """``POST /v1/registered-models``."""
        return Call(
            "POST",
            "/v1/registered-models",
            json=body(
                name=name,
                description=description,
                model_card=model_card,
                license=license,
                tags=tags,
                visibility=visibility,
            ),
            parse=_r(m.RegisteredModelDetail),
        )

    @paged
    def list(
        self,
        *,
        name: str | None = None,
        tag: builtins.list[str] | str | None = None,
        owner: str | None = None,
        visibility: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Call[m.Page[m.RegisteredModelOut]]:
        """``GET /v1/registered-models``: the caller's, shared with it and public ones."""
        return Call(
            "GET",
            "/v1/registered-models",
            params={
                "name": name,
                "tag": tag,
                "owner": owner,
                "visibility": visibility,
                "limit": limit,
                "cursor": cursor,
            },
            parse=_page(m.RegisteredModelOut),
        )

    @op
    def get(self, registered_model_id: Id) -> Call[m.RegisteredModelDetail]:
        """``GET /v1/registered-models/{id}``."""
        return Call(
            "GET",
            _path("/v1/registered-models/{i}", i=registered_model_id),
            parse=_r(m.RegisteredModelDetail),
        )

    @op
    def update(
        self,
        registered_model_id: Id,
        *,
        name: str | None = None,
        description: str | None = None,
        model_card: str | None = None,
        license: str | None = None,
        tags: dict[str, str] | None = None,
        visibility: str | None = None,
    ) -> Call[m.RegisteredModelDetail]:
        """``PATCH /v1/registered-models/{id}``."""
        return Call(
            "PATCH",
            _path("/v1/registered-models/{i}", i=registered_model_id),
            json=body(
                name=name,
                description=description,
                model_card=model_card,
                license=license,
                tags=tags,
                visibility=visibility,
            ),
            parse=_r(m.RegisteredModelDetail),
        )

    @op
    def delete(self, registered_model_id: Id) -> Call[None]:
        """``DELETE /v1/registered-models/{id}``."""
        return Call(
            "DELETE", _path("/v1/registered-models/{i}", i=registered_model_id), expect="none"
        )

    @op
    def register_version(
        self,
        registered_model_id: Id,
        model_id: Id,
        *,
        description: str | None = None,
        primary_metric: str | None = None,
        aliases: builtins.list[str] | None = None,
    ) -> Call[m.ModelVersionDetail]:
        """``POST /v1/registered-models/{id}/versions``: a trained model as the next version."""
        return Call(
            "POST",
            _path("/v1/registered-models/{i}/versions", i=registered_model_id),
            json=body(
                model_id=ident(model_id),
                description=description,
                primary_metric=primary_metric,
                aliases=aliases,
            ),
            parse=_r(m.ModelVersionDetail),
        )

    @paged
    def versions(
        self, registered_model_id: Id, *, limit: int | None = None, cursor: str | None = None
    ) -> Call[m.Page[m.ModelVersionOut]]:
        """``GET /v1/registered-models/{id}/versions``."""
        return Call(
            "GET",
            _path("/v1/registered-models/{i}/versions", i=registered_model_id),
            params={"limit": limit, "cursor": cursor},
            parse=_page(m.ModelVersionOut),
        )

    @op
    def set_alias(self, registered_model_id: Id, alias: str, version: int) -> Call[m.AliasOut]:
        """``PUT /v1/registered-models/{id}/aliases/{alias}``: point ``alias`` at ``version``."""
        return Call(
            "PUT",
            _path("/v1/registered-models/{i}/aliases/{a}", i=registered_model_id, a=alias),
            json=body(version=version),
            parse=_r(m.AliasOut),
        )

    @op
    def delete_alias(self, registered_model_id: Id, alias: str) -> Call[None]:
        """``DELETE /v1/registered-models/{id}/aliases/{alias}``."""
        return Call(
            "DELETE",
            _path("/v1/registered-models/{i}/aliases/{a}", i=registered_model_id, a=alias),
            expect="none",
        )

    @op
    def permissions(self, registered_model_id: Id) -> Call[builtins.list[m.PermissionOut]]:
        """``GET /v1/registered-models/{id}/permissions``."""
        return Call(
            "GET",
            _path("/v1/registered-models/{i}/permissions", i=registered_model_id),
            parse=_r(list[m.PermissionOut]),
        )

    @op
    def grant(
        self,
        registered_model_id: Id,
        permission: str,
        *,
        user_id: Id | None = None,
        email: str | None = None,
    ) -> Call[m.PermissionOut]:
        """``POST /v1/registered-models/{id}/permissions``: give a user (by id or email)
        ``read``, ``download`` or ``deploy``."""
        return Call(
            "POST",
            _path("/v1/registered-models/{i}/permissions", i=registered_model_id),
            json=body(
                user_id=None if user_id is None else ident(user_id),
                email=email,
                permission=permission,
            ),
            parse=_r(m.PermissionOut),
        )

    @op
    def revoke(
        self, registered_model_id: Id, *, user_id: Id | None = None, email: str | None = None
    ) -> Call[None]:
        """``DELETE /v1/registered-models/{id}/permissions?user_id=|email=``."""
        return Call(
            "DELETE",
            _path("/v1/registered-models/{i}/permissions", i=registered_model_id),
            params={"user_id": None if user_id is None else ident(user_id), "email": email},
            expect="none",
        )


class ModelVersions(Resource[M]):
    """Versions of registered models: search, lineage, files, plots."""

    @paged
    def search(
        self,
        filter: str | None = None,
        *,
        order_by: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Call[m.Page[m.ModelVersionOut]]:
        """``GET /v1/model-versions``: MLflow-style ``filter``
        (``metrics.accuracy > 0.9 and tags.team = 'x'``) and ``order_by``."""
        return Call(
            "GET",
            "/v1/model-versions",
            params={"filter": filter, "order_by": order_by, "limit": limit, "cursor": cursor},
            parse=_page(m.ModelVersionOut),
        )

    list = search

    @op
    def get(self, version_id: Id) -> Call[m.ModelVersionDetail]:
        """``GET /v1/model-versions/{version_id}``."""
        return Call(
            "GET", _path("/v1/model-versions/{i}", i=version_id), parse=_r(m.ModelVersionDetail)
        )

    @op
    def update(
        self,
        version_id: Id,
        *,
        description: str | None = None,
        primary_metric: str | None = None,
        status: str | None = None,
    ) -> Call[m.ModelVersionDetail]:
        """``PATCH /v1/model-versions/{version_id}``."""
        return Call(
            "PATCH",
            _path("/v1/model-versions/{i}", i=version_id),
            json=body(description=description, primary_metric=primary_metric, status=status),
            parse=_r(m.ModelVersionDetail),
        )

    @op
    def lineage(
        self, version_id: Id, *, direction: str | None = None, depth: int | None = None
    ) -> Call[m.LineageOut]:
        """``GET /v1/model-versions/{version_id}/lineage`` (``direction`` up or down)."""
        return Call(
            "GET",
            _path("/v1/model-versions/{i}/lineage", i=version_id),
            params={"direction": direction, "depth": depth},
            parse=_r(m.LineageOut),
        )

    @op
    def download(
        self,
        version_id: Id,
        format: str | None = None,
        path: Destination = None,
        *,
        progress: Progress | None = None,
    ) -> Call[Any]:
        """``GET /v1/model-versions/{version_id}/download?format=``: the version's file
        (joblib, skops, onnx or mlflow (a zip)), streamed to ``path`` (a file, or a folder
        where the server's file name is used; its path is returned) or returned as bytes."""
        return Call(
            "GET",
            _path("/v1/model-versions/{i}/download", i=version_id),
            params={"format": format},
            expect="bytes",
            dest=path,
            progress=progress,
        )

    @op
    def plot(
        self, version_id: Id, plot: str, *, format: str | None = "png", path: Destination = None
    ) -> Call[Any]:
        """``GET /v1/model-versions/{id}/plots/{plot}.{format}``: roc, pr,
        confusion_matrix, calibration, residuals, feature_importance, trials; png or svg
        bytes (or to ``path``), or json data."""
        url = _path("/v1/model-versions/{i}/plots/{p}", i=version_id, p=_plot_name(plot, format))
        return _plot_call(url, format, path)
