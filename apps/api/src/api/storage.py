"""Where uploaded files and model artifacts live: a local folder, or S3.

``STORAGE_URL`` chooses: ``s3://bucket/prefix`` stores in S3 (``boto3``, the ``s3``
extra of this package, with the usual AWS environment); anything else is a local
folder, by default ``<data folder>/storage``. Locations are what the database
records (``ingestion_jobs.source_path``, ``models.s3_path``): an absolute path, or
an ``s3://`` URI. Files are copied in chunks, never read whole into memory.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from fastapi.responses import FileResponse, RedirectResponse, Response

CHUNK = 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None, default: str = "upload") -> str:
    """A file name safe to put in a path or key: no folders, no odd characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE.sub("_", base).strip("._")[:120]
    return cleaned or default


class Storage(Protocol):
    def location(self, key: str) -> str:
        """Where ``key`` is (or will be) stored: what the database records."""
        ...

    def save(self, key: str, source: BinaryIO) -> int:
        """Copy ``source`` (from its current position) to ``key``; the bytes written."""
        ...

    def delete(self, location: str) -> bool:
        """Remove a stored file; False when it was not there or is not this storage's."""
        ...

    def download(self, location: str, filename: str) -> Response | None:
        """A response serving the file, or None when it is not there."""
        ...


class LocalStorage:
    """Files under ``root``; every location must resolve inside it."""

    def __init__(self, root: Path | str, *, extra_roots: tuple[Path, ...] = ()) -> None:
        self.root = Path(root).resolve()
        # Other folders files may be served from (e.g. the data folder, for artifacts
        # the workers wrote there).
        self.readable_roots = (self.root, *(Path(r).resolve() for r in extra_roots))

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"storage key escapes the storage folder: {key!r}")
        return path

    def location(self, key: str) -> str:
        return str(self._path(key))

    def save(self, key: str, source: BinaryIO) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written under a temporary name and renamed: a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
                    written += len(chunk)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return written

    def _resolve(self, location: str) -> Path | None:
        parsed = urlparse(location)
        if parsed.scheme == "file":
            path = Path(unquote(parsed.path))
        elif parsed.scheme and len(parsed.scheme) > 1:  # s3://, https://: not ours
            return None
        else:
            path = Path(location)
        if not path.is_absolute():
            path = self.root / path
        path = path.resolve()
        if not any(path.is_relative_to(r) and path != r for r in self.readable_roots):
            return None
        return path

    def delete(self, location: str) -> bool:
        path = self._resolve(location)
        if path is None or not path.is_relative_to(self.root):
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # Remove the folders the upload made, up to the root, while they are empty.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return True

    def download(self, location: str, filename: str) -> Response | None:
        path = self._resolve(location)
        if path is None or not path.is_file():
            return None
        return FileResponse(path, filename=filename, media_type="application/octet-stream")


class S3Storage:
    """Objects under ``s3://bucket/prefix``; downloads are presigned redirects."""

    def __init__(self, url: str, client: Any = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3:// URL: {url!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3  # type: ignore[import-not-found, unused-ignore]
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise RuntimeError(
                    "STORAGE_URL is s3://... but boto3 is not installed:"
                    " install the API with its s3 extra (automl-api[s3])"
                ) from exc
            self._client = boto3.client("s3")
        return self._client

    def _key(self, key: str) -> str:
        key = key.lstrip("/")
        if ".." in key.split("/"):
            raise ValueError(f"storage key escapes the prefix: {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _split(self, location: str) -> tuple[str, str] | None:
        parsed = urlparse(location)
        if parsed.scheme != "s3" or not parsed.netloc:
            return None
        return parsed.netloc, parsed.path.lstrip("/")

    def save(self, key: str, source: BinaryIO) -> int:
        start = source.tell()
        source.seek(0, os.SEEK_END)
        size = source.tell() - start
        source.seek(start)
        # upload_fileobj streams in parts (multipart upload above its threshold).
        self.client.upload_fileobj(source, self.bucket, self._key(key))
        return size

    def delete(self, location: str) -> bool:
        where = self._split(location)
        if where is None or where[0] != self.bucket:
            return False
        self.client.delete_object(Bucket=where[0], Key=where[1])
        return True

    def download(self, location: str, filename: str) -> Response | None:
        where = self._split(location)
        if where is None:
            return None
        url = self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": where[0],
                "Key": where[1],
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
            },
            ExpiresIn=300,
        )
        return RedirectResponse(url, status_code=307)


def make_storage(url: str, data_dir: Path | None = None) -> Storage:
    if url.startswith("s3://"):
        return S3Storage(url)
    extra = (data_dir,) if data_dir is not None else ()
    return LocalStorage(url, extra_roots=extra)
