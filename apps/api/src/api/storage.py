"""Where uploaded files and model artifacts live, as the API sees them.

The storage itself is ``pipeline.storage``, shared with the workers: ``STORAGE_URL``
is a local folder (default ``<data folder>/storage``) or an fsspec URL
(``s3://bucket/prefix`` with s3fs, the ``s3`` extra: ``automl-api[s3]``). Locations
are what the database records (``ingestion_jobs.source_path``, ``models.s3_path``):
an absolute path, or the full URL. Files are copied in chunks, never read whole into
memory.

What the API adds is the download: a local file is served as it is (``FileResponse``),
a filesystem that can sign (S3) answers with a 307 redirect to a 5-minute URL, and any
other (``memory://``) streams the file through the API.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from pipeline import storage as backends

CHUNK = backends.CHUNK
#: How long a signed download URL stays valid.
DOWNLOAD_URL_SECONDS = 300
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None, default: str = "upload") -> str:
    """A file name safe to put in a path or key: no folders, no odd characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE.sub("_", base).strip("._")[:120]
    return cleaned or default


def _content_disposition(filename: str) -> str:
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


class Storage:
    """A ``pipeline.storage.Storage`` (``backend``), and downloads as HTTP responses."""

    def __init__(self, backend: backends.Storage) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r})"

    def location(self, key: str) -> str:
        """Where ``key`` is (or will be) stored: what the database records."""
        return self.backend.location(key)

    def save(self, key: str, source: BinaryIO) -> int:
        """Copy ``source`` (from its current position) to ``key``; the bytes written."""
        return self.backend.save(key, source)

    def delete(self, location: str) -> bool:
        """Remove a stored file; False when it was not there or is not this storage's."""
        return self.backend.delete(location)

    def chunks(self, location: str) -> Iterator[bytes]:
        """The stored file's bytes, chunk by chunk (raises when it is not there)."""
        return self._chunks(location)

    def _chunks(self, location: str) -> Iterator[bytes]:
        with self.backend.open_read(location) as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def download(
        self, location: str, filename: str, media_type: str = "application/octet-stream"
    ) -> Response | None:
        """A response serving the file, or None when it is not there (or not ours)."""
        path = self.backend.local_path(location)
        if path is not None:
            return FileResponse(path, filename=filename, media_type=media_type)
        if not self.backend.exists(location):
            return None
        url = self.backend.signed_url(location, DOWNLOAD_URL_SECONDS, filename=filename)
        if url is not None:
            return RedirectResponse(url, status_code=307)
        return StreamingResponse(
            self._chunks(location),
            media_type=media_type,
            headers={
                "Content-Disposition": _content_disposition(filename),
                "Content-Length": str(self.backend.size(location)),
            },
        )


class LocalStorage(Storage):
    """Files under ``root``; every location must resolve inside it (or ``extra_roots``,
    which are readable only)."""

    def __init__(self, root: Path | str, *, extra_roots: Sequence[Path | str] = ()) -> None:
        super().__init__(backends.LocalStorage(root, extra_readable_roots=extra_roots))


def make_storage(url: str, data_dir: Path | None = None) -> Storage:
    """The storage ``STORAGE_URL`` names. A local storage may also serve files from the
    data folder (artifacts a worker wrote there); a remote one serves only its own."""
    if backends.is_local(url):
        return LocalStorage(url, extra_roots=(data_dir,) if data_dir is not None else ())
    return Storage(backends.make_storage(url))
