"""Reading a multipart upload with a size limit, as it streams in.

The body is fed chunk by chunk to python-multipart (Starlette's parser); once it
has carried more than the limit, the request is refused with 413 at once, without
reading the rest. The file part is spooled (in memory up to 1 MiB, then a
temporary file); the route then checks the quota and copies it to storage.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from api.errors import ApiError, validation_error
from database.models import FileFormat

#: Room for the multipart framing and the text fields, on top of the file itself.
FRAMING_BYTES = 64 * 1024

FORMATS: dict[str, FileFormat] = {
    "csv": FileFormat.CSV,
    "tsv": FileFormat.CSV,
    "json": FileFormat.JSON,
    "jsonl": FileFormat.JSON,
    "ndjson": FileFormat.JSON,
    "parquet": FileFormat.PARQUET,
    "pq": FileFormat.PARQUET,
    "xlsx": FileFormat.EXCEL,
    "xls": FileFormat.EXCEL,
}


def file_format(filename: str | None) -> FileFormat:
    ext = (filename or "").rsplit(".", 1)[-1].lower() if "." in (filename or "") else ""
    fmt = FORMATS.get(ext)
    if fmt is None:
        raise ApiError(
            422,
            "unsupported_format",
            "upload a csv, json, parquet or excel file (by its extension)",
            {"supported": sorted(FORMATS)},
        )
    return fmt


def too_large(limit: int, code: str = "upload_too_large") -> ApiError:
    return ApiError(
        413,
        code,
        f"the upload is larger than the {limit} bytes allowed",
        {"limit_bytes": limit},
    )


@dataclass
class Upload:
    file: UploadFile
    fields: dict[str, str]

    @property
    def size(self) -> int:
        return self.file.size or 0

    async def close(self) -> None:
        await self.file.close()


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise too_large(limit - FRAMING_BYTES)
        yield chunk


async def read_upload(request: Request, max_file_bytes: int, *, file_field: str = "file") -> Upload:
    """The upload's file and text fields; 413 past ``max_file_bytes``, 415/422 if malformed."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_file_bytes + FRAMING_BYTES:
        raise too_large(max_file_bytes)
    parser = MultiPartParser(
        request.headers,
        _limited(request, max_file_bytes + FRAMING_BYTES),
        max_files=1,
        max_fields=20,
        max_part_size=16 * 1024,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(422, "invalid_multipart", str(exc)) from None
    file: UploadFile | None = None
    fields: dict[str, str] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name == file_field:
                file = value
            else:
                await value.close()
        else:
            fields[name] = value
    if file is None:
        raise validation_error(
            [{"loc": ("body", file_field), "msg": "Field required", "type": "missing"}],
            "a file is required",
        )
    if (file.size or 0) > max_file_bytes:
        await file.close()
        raise too_large(max_file_bytes)
    if not file.size:
        await file.close()
        raise ApiError(422, "empty_file", "the file is empty")
    await file.seek(0)
    return Upload(file=file, fields=fields)


def parse_fields(model: type[BaseModel], fields: dict[str, Any]) -> Any:
    """Validate the text fields with ``model``; 422 like any other body."""
    cleaned = {k: (v if v != "" else None) for k, v in fields.items()}
    try:
        return model.model_validate(cleaned)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]
        raise validation_error(errors) from None


def multipart_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """``openapi_extra`` documenting a multipart body (the route reads it itself)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": required, "properties": properties}
                }
            },
        }
    }
