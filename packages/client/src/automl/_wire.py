"""What the runners share on the wire: a streamed multipart body and an SSE parser."""

from __future__ import annotations

import io
import mimetypes
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import IO

from automl._core import ServerEvent, Upload

CHUNK = 64 * 1024


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class Multipart:
    """A multipart/form-data body of text fields and one file, read in chunks so a big
    file is never held in memory, with its exact length (``Content-Length``) known up
    front and ``upload.progress(sent, total)`` called as it goes."""

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        self.boundary = uuid.uuid4().hex
        source = upload.source
        self._close = False
        self._file: IO[bytes]
        if isinstance(source, bytes):
            self._file = io.BytesIO(source)
            size: int | None = len(source)
            name = upload.filename or "upload"
        elif isinstance(source, (str, os.PathLike)):
            p = Path(source)
            self._file = open(p, "rb")  # noqa: SIM115 - closed when the body is sent
            self._close = True
            size = p.stat().st_size
            name = upload.filename or p.name
        else:
            self._file = source
            size = _remaining(source)
            name = upload.filename or os.path.basename(getattr(source, "name", "") or "upload")
        content_type = upload.content_type
        if content_type == "application/octet-stream":
            content_type = mimetypes.guess_type(name)[0] or content_type
        head = b"".join(
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{_quote(k)}"\r\n\r\n'.encode()
            + v.encode()
            + b"\r\n"
            for k, v in upload.fields.items()
        )
        head += (
            f"--{self.boundary}\r\nContent-Disposition: form-data;"
            f' name="{_quote(upload.file_field)}"; filename="{_quote(name)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        self.head = head
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.file_size = size
        self.length = None if size is None else len(head) + size + len(self.tail)

    @property
    def headers(self) -> dict[str, str]:
        out = {"Content-Type": f"multipart/form-data; boundary={self.boundary}"}
        if self.length is not None:
            out["Content-Length"] = str(self.length)
        return out

    def _chunks(self) -> Iterator[bytes]:
        progress = self.upload.progress
        sent = 0
        try:
            yield self.head
            if progress:
                progress(0, self.file_size)
            while True:
                chunk = self._file.read(CHUNK)
                if not chunk:
                    break
                sent += len(chunk)
                yield chunk
                if progress:
                    progress(sent, self.file_size)
            yield self.tail
        finally:
            if self._close:
                self._file.close()

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks()

    async def aiter(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks():
            yield chunk


def _remaining(fh: IO[bytes]) -> int | None:
    try:
        here = fh.tell()
        end = fh.seek(0, os.SEEK_END)
        fh.seek(here)
        return end - here
    except (OSError, ValueError, AttributeError):
        return None


class SSEParser:
    """Server-Sent Events from lines (the WHATWG rules: ``event``, ``data`` (joined by
    newlines), ``id``, comments and ``retry`` ignored, an empty line ends an event)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_id: str | None = None

    def feed(self, line: str) -> ServerEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data and not self._event:
                return None
            event = ServerEvent(self._event or "message", "\n".join(self._data), self._id)
            if self._id is not None:
                self.last_id = self._id
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def parse(self, lines: Iterable[str]) -> Iterator[ServerEvent]:
        for line in lines:
            event = self.feed(line)
            if event is not None:
                yield event
