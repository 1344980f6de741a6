"""Datasets: upload (a dataset, its version 1 and an ingestion job), versions, profiles."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api.deps import Reader, SessionDep, SettingsDep, StorageDep, Uploader, Writer
from api.errors import ApiError, error_responses, not_found
from api.liveness import WorkerCheck
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.policy import check_datasets, check_storage, lock_user, storage_left
from api.schemas import (
    DatasetDetail,
    DatasetForm,
    DatasetOut,
    DatasetPatch,
    IngestionJobOut,
    ProfileOut,
    UploadOut,
    VersionForm,
    VersionOut,
)
from api.settings import ApiSettings
from api.storage import Storage, safe_filename
from api.uploads import Upload, file_format, multipart_body, parse_fields, read_upload
from database import evaluation, jobs
from database.models import (
    Dataset,
    DatasetProfile,
    DatasetVersion,
    IngestionJob,
    IngestionStatus,
    ProblemType,
    User,
)

log = logging.getLogger("api.datasets")
router = APIRouter(prefix="/datasets", tags=["datasets"])

_FILE = {"type": "string", "format": "binary", "description": "csv, json, parquet or excel"}
_DATASET_FORM = multipart_body(
    {
        "file": _FILE,
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "description": {"type": "string", "maxLength": 10000},
        "problem_type": {"type": "string", "enum": [p.value for p in ProblemType]},
        "target_column": {"type": "string", "maxLength": 200},
    },
    ["file", "name"],
)
_VERSION_FORM = multipart_body(
    {"file": _FILE, "version_label": {"type": "string", "maxLength": 200}}, ["file"]
)


def _owned(
    session: Session, user_id: uuid.UUID, dataset_id: uuid.UUID, *, lock: bool = False
) -> Dataset:
    stmt = select(Dataset).where(Dataset.id == dataset_id, Dataset.user_id == user_id)
    if lock:
        stmt = stmt.with_for_update()
    dataset = session.scalars(stmt).one_or_none()
    if dataset is None:
        raise not_found("dataset")
    return dataset


def _store_version(
    session: Session,
    storage: Storage,
    settings: ApiSettings,
    user_id: uuid.UUID,
    upload: Upload,
    *,
    form: DatasetForm | None = None,
    dataset_id: uuid.UUID | None = None,
    version_label: str | None = None,
) -> UploadOut:
    """One transaction: limits, rows, then the file; the commit last.

    The file is copied to storage only after every check passed and the rows
    exist, and removed again if the commit fails.
    """
    fmt = file_format(upload.file.filename)
    user = lock_user(session, user_id)  # serializes this user's uploads: quotas hold
    if dataset_id is None:
        assert form is not None
        check_datasets(settings, user)
        check_storage(settings, user, upload.size)
        dataset = Dataset(
            user_id=user_id,
            name=form.name,
            description=form.description,
            problem_type=form.problem_type,
            target_column=form.target_column,
        )
        session.add(dataset)
        session.flush()
    else:
        dataset = _owned(session, user_id, dataset_id, lock=True)
        check_storage(settings, user, upload.size)
    filename = safe_filename(upload.file.filename)
    version_id = uuid.uuid4()
    upload_id = uuid.uuid4()
    key = f"uploads/{user_id}/{dataset.id}/{version_id}/{filename}"
    location = storage.location(key)
    version = DatasetVersion(
        id=version_id,
        dataset_id=dataset.id,
        user_id=user_id,
        upload_id=upload_id,
        version_label=version_label,
        original_filename=filename,
        original_format=fmt,
        original_size_bytes=upload.size,
        status=IngestionStatus.PENDING,
    )
    session.add(version)
    session.flush()  # numbered by the database; storage_used_bytes moves
    ingestion = jobs.enqueue_ingestion(
        session, user_id=user_id, dataset_version_id=version.id, source_path=location
    )
    dataset.current_version_id = version.id
    session.flush()
    upload.file.file.seek(0)
    written = storage.save(key, upload.file.file)
    if written != upload.size:  # pragma: no cover - the spool changed under us
        storage.delete(location)
        raise ApiError(409, "upload_changed", "the upload changed while it was stored")
    try:
        session.commit()
    except BaseException:
        storage.delete(location)
        raise
    return UploadOut(
        dataset=DatasetOut.model_validate(dataset),
        version=_version_out(version, WorkerCheck(session)),
        ingestion_job=IngestionJobOut.model_validate(ingestion),
    )


def _upload_limit(settings: ApiSettings, session: Session, user_id: uuid.UUID) -> tuple[int, bool]:
    """The most one upload may carry now: the smaller of the file limit and the quota left.

    Read without a lock, and the transaction ended before the body streams in (no
    lock or snapshot is held while a client uploads); the real check is made again
    under the user's lock once the file is in.
    """
    user = session.get(User, user_id, populate_existing=True)
    if user is None:  # pragma: no cover - the caller's key names an existing user
        raise not_found("user")
    left = storage_left(settings, user)
    session.commit()
    return (left, True) if left < settings.max_upload_bytes else (settings.max_upload_bytes, False)


async def _read(
    request: Request, settings: ApiSettings, session: Session, user_id: uuid.UUID
) -> Upload:
    limit, by_quota = await run_in_threadpool(_upload_limit, settings, session, user_id)
    try:
        return await read_upload(request, limit)
    except ApiError as err:
        if err.status == 413 and by_quota:
            raise ApiError(
                413,
                "storage_quota_exceeded",
                "the upload does not fit in the storage left on this tier",
                {"storage_left_bytes": limit},
            ) from None
        raise


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadOut,
    responses=error_responses(401, 403, 413, 415, 422),
    openapi_extra=_DATASET_FORM,
    summary="Upload a file: creates the dataset, its version 1 and an ingestion job",
)
async def create_dataset(
    request: Request,
    principal: Uploader,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> UploadOut:
    """multipart/form-data with ``file`` (csv, json, parquet, excel), ``name`` and
    optionally ``description``, ``problem_type``, ``target_column``. Over the upload
    size limit or the tier's storage quota: 413; over the tier's dataset count: 403."""
    upload = await _read(request, settings, session, principal.user_id)
    try:
        form = parse_fields(DatasetForm, upload.fields)
        file_format(upload.file.filename)
        return await run_in_threadpool(
            _store_version, session, storage, settings, principal.user_id, upload, form=form
        )
    finally:
        await upload.close()


@router.post(
    "/{dataset_id}/versions",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadOut,
    responses=error_responses(401, 403, 404, 413, 415, 422),
    openapi_extra=_VERSION_FORM,
    summary="Upload a new version of a dataset",
)
async def create_version(
    dataset_id: uuid.UUID,
    request: Request,
    principal: Uploader,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> UploadOut:
    """multipart/form-data with ``file`` and optionally ``version_label``. The new
    version becomes the dataset's current one and gets its own ingestion job."""
    await run_in_threadpool(_owned, session, principal.user_id, dataset_id)
    upload = await _read(request, settings, session, principal.user_id)
    try:
        form = parse_fields(VersionForm, upload.fields)
        file_format(upload.file.filename)
        return await run_in_threadpool(
            _store_version,
            session,
            storage,
            settings,
            principal.user_id,
            upload,
            dataset_id=dataset_id,
            version_label=form.version_label,
        )
    finally:
        await upload.close()


@router.get(
    "",
    response_model=Page[DatasetOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's datasets, newest first",
)
def list_datasets(
    principal: Reader,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[DatasetOut]:
    """The caller's datasets, newest first (keyset pagination: `limit`, `cursor`). Each has its
    current version's id; `GET /v1/datasets/{id}` lists the versions."""
    rows, next_cursor = paginate(
        session,
        select(Dataset).where(Dataset.user_id == principal.user_id),
        Dataset.created_at,
        Dataset.id,
        limit=limit,
        cursor=cursor,
    )
    return Page[DatasetOut](
        items=[DatasetOut.model_validate(d) for d in rows], next_cursor=next_cursor
    )


def _versions(session: Session, dataset: Dataset) -> list[DatasetVersion]:
    return list(
        session.scalars(
            select(DatasetVersion)
            .where(
                DatasetVersion.dataset_id == dataset.id,
                DatasetVersion.user_id == dataset.user_id,
            )
            .order_by(DatasetVersion.version_number)
        )
    )


@router.get(
    "/{dataset_id}",
    response_model=DatasetDetail,
    responses=error_responses(401, 403, 404, 422),
    summary="A dataset and its versions",
)
def get_dataset(principal: Reader, session: SessionDep, dataset_id: uuid.UUID) -> DatasetDetail:
    """A dataset of the caller's with every version and its ingestion status. Another user's dataset
    is 404, like a missing one."""
    dataset = _owned(session, principal.user_id, dataset_id)
    workers = WorkerCheck(session)
    return DatasetDetail(
        **DatasetOut.model_validate(dataset).model_dump(),
        versions=[_version_out(v, workers) for v in _versions(session, dataset)],
    )


@router.patch(
    "/{dataset_id}",
    response_model=DatasetOut,
    responses=error_responses(401, 403, 404, 409, 422),
    summary="Change a dataset's name, target column, problem type or ignored columns",
)
def patch_dataset(
    principal: Writer, session: SessionDep, dataset_id: uuid.UUID, body: DatasetPatch
) -> DatasetOut:
    """Only the fields sent change (null clears ``target_column`` / ``problem_type``).
    The target and ignored columns are checked against the current version's columns:
    422 ``target_not_a_column`` / ``ignored_columns_invalid`` naming the column, 422
    ``problem_type_mismatch`` for regression on a non-numeric target, 409
    ``columns_unknown`` while the current version is not ingested."""
    dataset = _owned(session, principal.user_id, dataset_id, lock=True)
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    if changes.get("name", "") is None:
        raise ApiError(422, "validation_error", "name cannot be null")
    try:
        evaluation.update_dataset(session, dataset, changes)
    except evaluation.EvaluationProblem as exc:
        raise ApiError(exc.status, exc.code, exc.message, exc.details) from None
    session.commit()
    return DatasetOut.model_validate(dataset)


def _version_out(version: DatasetVersion, workers: WorkerCheck) -> VersionOut:
    return VersionOut.model_validate(version).model_copy(
        update={"waiting_for": workers.waiting_for(version.status == IngestionStatus.PENDING)}
    )


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
    summary="Delete a dataset, its versions and their files",
)
def delete_dataset(
    principal: Writer, session: SessionDep, storage: StorageDep, dataset_id: uuid.UUID
) -> Response:
    """The rows go in one transaction (counters and storage follow); the stored
    files are removed before it commits, so none is left that no row names."""
    lock_user(session, principal.user_id)  # the order uploads lock in: user, then dataset
    dataset = _owned(session, principal.user_id, dataset_id, lock=True)
    locations: list[str] = []
    for version in _versions(session, dataset):
        locations.extend(p for p in (version.s3_path,) if p)
    locations.extend(
        p
        for p in session.scalars(
            select(IngestionJob.source_path).where(
                IngestionJob.user_id == principal.user_id,
                IngestionJob.dataset_version_id.in_(
                    select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset.id)
                ),
            )
        )
        if p
    )
    session.execute(
        delete(Dataset).where(Dataset.id == dataset.id, Dataset.user_id == principal.user_id)
    )
    for location in locations:
        try:
            storage.delete(location)
        except Exception:  # a file we cannot remove must not keep the rows
            log.exception("could not remove %s", location)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{dataset_id}/versions/{version_number}/profile",
    response_model=ProfileOut,
    responses=error_responses(401, 403, 404, 409, 422),
    summary="The statistical profile of a dataset version, once ingested",
)
def get_profile(
    principal: Reader, session: SessionDep, dataset_id: uuid.UUID, version_number: int
) -> Any:
    """404 for an unknown dataset or version; 409 ``profile_not_ready`` while the
    version is still being ingested (``details.status`` says where it is)."""
    dataset = _owned(session, principal.user_id, dataset_id)
    if not 0 < version_number <= 2**31 - 1:
        raise not_found("dataset version")
    version = session.scalars(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset.id,
            DatasetVersion.version_number == version_number,
        )
    ).one_or_none()
    if version is None:
        raise not_found("dataset version")
    profile = session.scalars(
        select(DatasetProfile).where(DatasetProfile.dataset_version_id == version.id)
    ).one_or_none()
    if profile is None:
        raise ApiError(
            409,
            "profile_not_ready",
            "this version has no profile yet",
            {"status": version.status.value, "error_message": version.error_message},
        )
    return ProfileOut.model_validate(profile)
