"""A registered model version's file, in the format asked for (issue 13).

``GET /v1/model-versions/{id}/download?format=joblib|skops|onnx|mlflow``. The other
routes under ``/model-versions`` and ``/registered-models`` are the registry's own
router; this one serves files. Access is :func:`database.registry.can`'s:

- anyone, with or without a key, may download a public model's versions (an account
  whose ``can_download`` is off gets 403 ``permission_denied``);
- a caller who may not read the registered model gets 404 (as for a missing one);
- one who may read it but not download it gets 403 ``download_not_permitted``;
- both refusals are recorded (``model_downloads``, ``granted`` false, with the IP
  and user agent), as is every granted download, after its file is ready: a
  conversion that fails (422 ``format_unsupported``, 409
  ``incompatible_environment``, 404 ``artifact_not_found``) serves nothing and
  records nothing.

joblib is the saved artifact itself. The other formats are converted on the first
request and kept in storage by version and format (``pipeline.formats.cache_key``):
a version's model never changes, so the file is made once. Converting at save time
would cost every saved model three more files and their conversion time, for the
few that are downloaded in another format.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from api.deps import MaybeReader, SessionDep, StorageDep, client_ip, ensure_permission, user_agent
from api.errors import ApiError, error_responses, not_found
from database import audit, registry
from database.models import ModelVersion
from database.models.enums import AuditOutcome, ModelFormat, ModelPermission
from pipeline import formats

router = APIRouter(prefix="/model-versions", tags=["registry"])


def _audit(
    session: SessionDep, version_id: uuid.UUID, format: ModelFormat, outcome: AuditOutcome
) -> None:
    """A read that matters, in the audit trail with the request's actor (beside the
    registry's own ``model_downloads``, which the version's counter is kept from)."""
    audit.record(
        session,
        "model_version.downloaded",
        "model_version",
        version_id,
        outcome,
        {"format": str(format)},
    )


@router.get(
    "/{version_id}/download",
    response_class=Response,
    responses={
        200: {
            "description": "The model file (joblib, skops, onnx; mlflow: a zip)",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        307: {"description": "Redirect to a short-lived download URL (S3 storage)"},
        **error_responses(401, 403, 404, 409, 422),
    },
    summary="Download a model version in a format",
)
def download_version(
    request: Request,
    principal: MaybeReader,
    session: SessionDep,
    storage: StorageDep,
    version_id: uuid.UUID,
    format: Annotated[ModelFormat, Query(description="joblib, skops, onnx or mlflow")] = (
        ModelFormat.JOBLIB
    ),
) -> Response:
    """The version's model file in the `format` asked for (joblib, skops, onnx or mlflow), converted
    on first request. Public models need no key. 404 when the caller may not read the model, 403
    `download_not_permitted` when they may read but not download it; every download and refusal is
    recorded."""
    registered_model_id = session.scalar(
        select(ModelVersion.registered_model_id).where(ModelVersion.id == version_id)
    )
    if registered_model_id is None:
        raise not_found("model version")
    # A public model's versions may be downloaded without a key; a caller with a key
    # needs the account's can_download (api.deps, the one place permissions are kept).
    user_id = None
    if principal is not None:
        user_id = ensure_permission(principal, "can_download").user_id
    ip, agent = client_ip(request), user_agent(request)
    if not registry.can(session, user_id, registered_model_id, ModelPermission.DOWNLOAD):
        registry.record_download(
            session, version_id, user_id=user_id, format=format, ip=ip, user_agent=agent
        )
        _audit(session, version_id, format, AuditOutcome.DENIED)
        session.commit()
        if not registry.can(session, user_id, registered_model_id, ModelPermission.READ):
            raise not_found("model version")
        raise ApiError(
            403,
            "download_not_permitted",
            "you may read this model but not download it (ask its owner for download)",
        )
    artifact = formats.version_artifact(session, version_id)
    try:
        location = formats.converted_location(storage.backend, artifact, format)
    except formats.FormatUnsupported as exc:
        raise ApiError(
            422,
            "format_unsupported",
            str(exc),
            {"format": str(format), "estimator": exc.estimator, "reason": exc.reason},
        ) from None
    except formats.IncompatibleEnvironment as exc:
        raise ApiError(
            409, "incompatible_environment", str(exc), {"problems": exc.problems}
        ) from None
    except FileNotFoundError:
        raise ApiError(
            404, "artifact_not_found", "the model's artifact is not in storage"
        ) from None
    download = registry.record_download(
        session, version_id, user_id=user_id, format=format, ip=ip, user_agent=agent
    )
    _audit(
        session,
        version_id,
        format,
        AuditOutcome.SUCCESS if download.granted else AuditOutcome.DENIED,
    )
    session.commit()
    if not download.granted:  # access taken away meanwhile
        raise not_found("model version")
    answer = storage.download(
        location, formats.download_filename(artifact, format), formats.MEDIA_TYPES[format]
    )
    if answer is None:
        raise ApiError(404, "artifact_not_found", "the model's file is not in storage")
    return answer
