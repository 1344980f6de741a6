"""Where uploads, Parquet tables and model artifacts live: one storage for the API, the
workers and ``automl-db purge`` (``pipeline.storage`` re-exports it).

A storage is made from a URL (``STORAGE_URL``):

- a local folder (a path, or ``file://``), the default: files are written under a
  temporary name next to their place and renamed (``os.replace``), so no reader ever
  sees half a file;
- any other fsspec URL: ``s3://bucket/prefix`` (s3fs, the ``s3`` extra of this package:
  ``automl-pipeline[s3]``; credentials and endpoint from the usual AWS environment, or
  fsspec's ``FSSPEC_S3_<OPTION>`` variables), or ``memory://prefix`` for tests. An S3
  object appears only once its (multipart) upload completes; a failed upload is
  aborted and nothing is left behind.

Keys are relative, ``/``-separated names (``uploads/<user>/<dataset>/<version>/<file>``);
a key that is absolute or climbs out with ``..`` is a ``ValueError``. A *location* is
what the database records (``ingestion_jobs.source_path``, ``dataset_versions.s3_path``,
``models.s3_path``): an absolute path for a local folder, else the full URL. Locations
are checked again when read or deleted: one outside this storage's root (or, for
reading only, its extra readable roots) is treated as not there, so a path written
into the database by hand never opens ``/etc/passwd``. Files are copied in chunks,
never read whole into memory.

The local folder is handled with ``pathlib``/``os`` rather than fsspec's
``LocalFileSystem``: the checks are about resolved paths (symlinks, ``..``), and the
atomic rename is a local-file idea anyway.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlparse

import fsspec
from fsspec.spec import AbstractBufferedFile

if TYPE_CHECKING:
    from database.config import DatabaseSettings

CHUNK = 1024 * 1024


def _copy(source: BinaryIO, out: Any) -> int:
    written = 0
    while chunk := source.read(CHUNK):
        out.write(chunk)
        written += len(chunk)
    return written


def _key_parts(key: str) -> list[str]:
    """The segments of a relative key; ValueError for one that could escape."""
    if not key or key.startswith(("/", "\\")) or "\\" in key or "\x00" in key:
        raise ValueError(f"storage key must be a relative, /-separated name: {key!r}")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"storage key escapes the storage root: {key!r}")
    return parts


def _scheme(url: str) -> str:
    """The URL's scheme; '' for a plain path (a one-letter scheme is a Windows drive)."""
    scheme = urlparse(url).scheme
    return scheme.lower() if len(scheme) > 1 else ""


class Storage(ABC):
    """The operations the API and the workers need; see the module docstring."""

    #: What this storage was made from (a folder or a URL).
    url: str

    @abstractmethod
    def location(self, key: str) -> str:
        """Where ``key`` is (or will be) stored: what the database records."""

    @abstractmethod
    def save(self, key: str, source: BinaryIO) -> int:
        """Copy ``source`` (from its current position) to ``key``; the bytes written.

        All or nothing: if reading ``source`` or writing fails, the error propagates
        and no partial or temporary file is left; a local folder or S3 keeps a file
        that was already at ``key`` (``memory://`` does not).
        """

    def write_bytes(self, key: str, data: bytes) -> str:
        """Store ``data`` at ``key``; its location."""
        self.save(key, io.BytesIO(data))
        return self.location(key)

    @abstractmethod
    def open_read(self, location: str) -> AbstractContextManager[BinaryIO]:
        """A context manager giving a binary file to read; FileNotFoundError when the
        file is not there or the location is not this storage's."""

    @abstractmethod
    def exists(self, location: str) -> bool:
        """Whether a readable file is at ``location`` (False outside this storage)."""

    @abstractmethod
    def size(self, location: str) -> int:
        """The file's size in bytes; FileNotFoundError as ``open_read``."""

    @abstractmethod
    def delete(self, location: str) -> bool:
        """Remove a stored file; False when it was not there or is not this storage's.

        Only files under the storage's own root are removed, never under the extra
        readable roots.
        """

    def signed_url(
        self, location: str, expires: int = 300, *, filename: str | None = None
    ) -> str | None:
        """A short-lived URL to download the file from, or None when the filesystem
        cannot sign (a local folder, ``memory://``) or the location is not ours."""
        return None

    def local_path(self, location: str) -> Path | None:
        """The local file behind ``location`` when there is one (a local storage), else None."""
        return None


class LocalStorage(Storage):
    """Files under ``root``; every location must resolve inside it."""

    def __init__(self, root: Path | str, *, extra_readable_roots: Sequence[Path | str] = ()):
        root = str(root)
        if _scheme(root) == "file":
            root = unquote(urlparse(root).path)
        self.root = Path(root).resolve()
        self.url = str(self.root)
        # Other folders files may be read from (e.g. the data folder, for artifacts
        # a worker wrote there), but never deleted from.
        self.readable_roots = (self.root, *(Path(r).resolve() for r in extra_readable_roots))

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*_key_parts(key)).resolve()
        # resolve() follows symlinks: a link inside the root pointing out is refused too.
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
        try:
            with os.fdopen(fd, "wb") as out:
                written = _copy(source, out)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return written

    def _resolve(self, location: str) -> Path | None:
        """The file a location names, when it lies under a readable root."""
        scheme = _scheme(location)
        if scheme == "file":
            path = Path(unquote(urlparse(location).path))
        elif scheme:  # s3://, https://: not ours
            return None
        else:
            path = Path(location)
        if not path.is_absolute():
            path = self.root / path
        path = path.resolve()
        if not any(path.is_relative_to(r) and path != r for r in self.readable_roots):
            return None
        return path

    def local_path(self, location: str) -> Path | None:
        path = self._resolve(location)
        return path if path is not None and path.is_file() else None

    @contextmanager
    def open_read(self, location: str) -> Iterator[BinaryIO]:
        path = self.local_path(location)
        if path is None:
            raise FileNotFoundError(f"not in storage: {location}")
        with path.open("rb") as f:
            yield f

    def exists(self, location: str) -> bool:
        return self.local_path(location) is not None

    def size(self, location: str) -> int:
        path = self.local_path(location)
        if path is None:
            raise FileNotFoundError(f"not in storage: {location}")
        return path.stat().st_size

    def delete(self, location: str) -> bool:
        path = self._resolve(location)
        if path is None or not path.is_relative_to(self.root):
            return False
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, PermissionError):
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


def _missing_driver(scheme: str, exc: ImportError) -> RuntimeError:
    if scheme in ("s3", "s3a"):
        return RuntimeError(
            f"STORAGE_URL is {scheme}://... but s3fs is not installed: install the s3 extra"
            " (automl-pipeline[s3], or automl-api[s3] for the API)"
        )
    return RuntimeError(f"STORAGE_URL is {scheme}://... but its fsspec driver is missing: {exc}")


class FsspecStorage(Storage):
    """Objects under an fsspec URL's prefix (``s3://bucket/prefix``, ``memory://prefix``)."""

    def __init__(
        self,
        url: str,
        *,
        extra_readable_roots: Sequence[str] = (),
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        scheme = _scheme(url)
        if not scheme:
            raise ValueError(f"not an fsspec URL: {url!r}")
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        except ImportError as exc:
            raise _missing_driver(scheme, exc) from exc
        protocols = self.fs.protocol
        self.protocols = {protocols} if isinstance(protocols, str) else set(protocols)
        self.protocols.add(scheme)
        self.root = root.rstrip("/")
        if not self.root.strip("/"):
            raise ValueError(f"the storage URL needs a bucket or folder: {url!r}")
        # Locations are written as the URL was given (s3://bucket/prefix/key), and
        # parsed back with the filesystem's own rules.
        self.url = url.rstrip("/")
        self.readable_roots = [self.root]
        for extra in extra_readable_roots:
            if _scheme(str(extra)) not in self.protocols:
                raise ValueError(f"a readable root must be on the same filesystem: {extra!r}")
            self.readable_roots.append(self.fs._strip_protocol(str(extra)).rstrip("/"))

    def __repr__(self) -> str:
        return f"FsspecStorage({self.url!r})"

    def location(self, key: str) -> str:
        return f"{self.url}/{'/'.join(_key_parts(key))}"

    def _path(self, key: str) -> str:
        return f"{self.root}/{'/'.join(_key_parts(key))}"

    def _resolve(self, location: str, roots: Sequence[str] | None = None) -> str | None:
        """The filesystem path a location names, when it lies under one of ``roots``."""
        if _scheme(location) not in self.protocols:
            return None
        path = self.fs._strip_protocol(location)
        if ".." in path.split("/"):
            return None
        for root in roots if roots is not None else self.readable_roots:
            if path.startswith(root + "/") and path[len(root) + 1 :].strip("/"):
                return path
        return None

    def save(self, key: str, source: BinaryIO) -> int:
        path = self._path(key)
        # Not `with fs.open(...)`: leaving the block closes the file, and closing an
        # S3 file completes its upload, even on an exception. On failure the upload is
        # discarded instead (s3fs aborts the multipart upload) and whatever a
        # filesystem may already show at the path (memory:// does) is removed.
        handle = self.fs.open(path, "wb")
        try:
            written = _copy(source, handle)
        except BaseException:
            self._abandon(handle, path)
            raise
        try:
            handle.close()
        except BaseException:
            self._abandon(handle, path)
            raise
        return written

    def _abandon(self, handle: Any, path: str) -> None:
        """Best effort: a cleanup error must not hide the error that caused it."""
        discard = getattr(handle, "discard", None)
        if callable(discard):
            with contextlib.suppress(Exception):
                discard()
        if isinstance(handle, AbstractBufferedFile):
            # An upload (S3 and the like): discarded, nothing was published, and an
            # object already at the key is untouched. Marked closed, so that its
            # __del__ does not close (and so complete) it later.
            handle.closed = True
            return
        # Other filesystems (memory://) show the file as soon as it is opened.
        with contextlib.suppress(Exception):
            if self.fs.exists(path):
                self.fs.rm_file(path)

    @contextmanager
    def open_read(self, location: str) -> Iterator[BinaryIO]:
        path = self._resolve(location)
        if path is None or not self.fs.isfile(path):
            raise FileNotFoundError(f"not in storage: {location}")
        with self.fs.open(path, "rb") as f:
            yield f

    def exists(self, location: str) -> bool:
        path = self._resolve(location)
        return path is not None and bool(self.fs.isfile(path))

    def size(self, location: str) -> int:
        path = self._resolve(location)
        if path is None or not self.fs.isfile(path):
            raise FileNotFoundError(f"not in storage: {location}")
        return int(self.fs.size(path))

    def delete(self, location: str) -> bool:
        path = self._resolve(location, roots=[self.root])
        # S3 deletes a missing key without complaint: ask first, to answer truthfully.
        if path is None or not self.fs.isfile(path):
            return False
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            return False
        return True

    def signed_url(
        self, location: str, expires: int = 300, *, filename: str | None = None
    ) -> str | None:
        path = self._resolve(location)
        if path is None:
            return None
        extra: dict[str, Any] = {}
        if filename and self.protocols & {"s3", "s3a"}:
            # s3fs passes these to generate_presigned_url's Params.
            extra["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        try:
            return str(self.fs.sign(path, expiration=expires, **extra))
        except NotImplementedError:
            return None


def is_local(url: str | Path) -> bool:
    """Whether ``url`` names a local folder (a path or ``file://``), not an fsspec URL."""
    return _scheme(str(url)) in ("", "file")


def make_storage(
    url: str | Path,
    extra_readable_roots: Sequence[Path | str] = (),
    *,
    storage_options: dict[str, Any] | None = None,
) -> Storage:
    """A local folder for a path or ``file://`` URL, else an fsspec storage.

    ``extra_readable_roots``: other folders (or, for an fsspec storage, prefixes on the
    same filesystem) files may be read from but never deleted from. Local folders
    given with a remote storage (the data folder, when ``STORAGE_URL`` is ``s3://``)
    are left out: a remote storage reads only from its own filesystem.
    """
    text = str(url)
    if is_local(text):
        return LocalStorage(text, extra_readable_roots=extra_readable_roots)
    return FsspecStorage(
        text,
        extra_readable_roots=[str(r) for r in extra_readable_roots if not is_local(r)],
        storage_options=storage_options,
    )


def default_storage(settings: DatabaseSettings | None = None) -> Storage:
    """The storage ``STORAGE_URL`` names (default: ``<data folder>/storage``), the data
    folder readable too: what the API and the workers use, for whoever has no storage
    of its own at hand (``automl-db purge``)."""
    from database.config import get_settings

    settings = settings or get_settings()
    return make_storage(settings.storage_location(), extra_readable_roots=(settings.data_dir,))
