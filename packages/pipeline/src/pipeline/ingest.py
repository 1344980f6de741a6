"""Turning an uploaded file into a table: read it, check it, write it as Parquet.

``read_table`` reads the formats the API accepts (the database's ``file_format``
labels): ``csv`` (``.tsv`` files are tab-separated; otherwise the delimiter is sniffed
among ``, ; tab |`` on the first 64 KiB, comma when in doubt, and a semicolon file
whose numbers mostly read ``1,5`` takes the comma as decimal mark; UTF-8 with or
without a BOM, else latin-1), ``json`` (an array of records, JSON lines, or an object
of columns; UTF-8), ``parquet`` and ``excel`` (the first sheet; xlsx through openpyxl,
xls through xlrd, told apart by their first bytes, not the name).

A file that cannot become a table raises ``IngestionError``, whose message is meant
for the user (the format and what is wrong, no traceback): an unsupported format, an
empty file, no columns, duplicate column names (compared as text, and in the file's
own header, since pandas would otherwise rename ``a, a`` to ``a, a.1`` silently), or
content the parser refuses. A file with a header and no rows is a table of 0 rows and
is accepted; a table needs at least one column.

The table that comes out has text column names and a fresh 0..n-1 index; object
columns are made Parquet-writable: all-text columns become pandas strings, all-bool
ones ``boolean``, all-number ones numbers, and anything mixed (``1`` next to ``"a"``;
nested JSON) becomes text (JSON for lists and dicts).

Limits: the whole table is held in memory (pandas); a file larger than memory is out
of scope.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import csv
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.api import types as ptypes

from pipeline.profile import Profile, column_kind, profile
from pipeline.storage import Storage

FORMATS = ("csv", "json", "parquet", "excel")
SAMPLE_BYTES = 64 * 1024
#: How far to look for the end of a csv header line.
MAX_HEADER_BYTES = 16 * 1024 * 1024
#: Parquet is built in memory up to this size, then in a temporary file.
SPOOL_BYTES = 64 * 1024 * 1024
PARQUET_COMPRESSION = "zstd"
#: A text column whose values are numbers but for at most this share of junk values
#: is read as numbers, the junk as missing (and the profile says how many).
MAX_JUNK_FRACTION = 0.1
#: ... when it holds at least this many numbers.
MIN_NUMBERS = 10
MAX_MESSAGE_CHARS = 500

_XLSX_MAGIC = b"PK\x03\x04"
_XLS_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # an OLE2 compound document


class IngestionError(Exception):
    """A file that cannot become a table; ``str(error)`` is the message for the user."""


def _reason(exc: BaseException) -> str:
    """An exception's message, on one line and not too long."""
    # A KeyError's str() is its repr: quoted.
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    return text[:MAX_MESSAGE_CHARS]


def _unreadable(label: str, exc: BaseException) -> IngestionError:
    return IngestionError(f"the {label} file could not be read: {_reason(exc)}")


def _check_names(names: list[Any], label: str) -> None:
    counts = collections.Counter(names)
    duplicates = [str(n) for n, c in counts.items() if c > 1]
    if duplicates:
        shown = ", ".join(repr(n) for n in duplicates[:10])
        raise IngestionError(f"the {label} file has duplicate column names: {shown}")


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


# --- csv ------------------------------------------------------------------------


def _utf8(sample: bytes) -> bool:
    """Whether ``sample`` is UTF-8, allowing a character cut at its end."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _sniff_delimiter(text: str, truncated: bool) -> str:
    lines = text.splitlines()
    if truncated and len(lines) > 1:
        lines = lines[:-1]  # the last line was cut by the sample
    sample = "\n".join(line for line in lines[:100] if line.strip())
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:  # one column, or nothing consistent: the usual comma
        return ","


def _sniff_decimal(text: str, sep: str) -> str:
    """``,`` for a semicolon file whose numbers mostly use a decimal comma (1,5)."""
    if sep != ";":
        return "."
    commas = len(re.findall(r"\d,\d", text))
    return "," if commas > len(re.findall(r"\d\.\d", text)) else "."


def _read_csv(stream: BinaryIO, filename: str | None, label: str) -> pd.DataFrame:
    start = stream.tell()
    sample = stream.read(SAMPLE_BYTES)
    truncated = len(sample) == SAMPLE_BYTES
    while truncated and b"\n" not in sample and len(sample) < MAX_HEADER_BYTES:
        more = stream.read(SAMPLE_BYTES)
        sample += more
        truncated = len(more) == SAMPLE_BYTES
    stream.seek(start)
    if not truncated and not sample.strip():
        raise IngestionError(f"the {label} file is empty")
    encoding = "utf-8-sig" if _utf8(sample) else "latin-1"
    text = sample.decode(encoding, errors="replace")
    if (filename or "").lower().endswith((".tsv", ".tab")):
        sep = "\t"
    else:
        sep = _sniff_delimiter(text, truncated)
    decimal = _sniff_decimal(text, sep)
    encodings = [encoding] if encoding == "latin-1" else [encoding, "latin-1"]
    for attempt, enc in enumerate(encodings, 1):
        try:
            with warnings.catch_warnings():
                # Columns typed differently from one chunk to the next come out mixed
                # (and are made text below); pandas' warning about it is noise here.
                warnings.simplefilter("ignore", pd.errors.DtypeWarning)
                header = pd.read_csv(
                    stream,
                    sep=sep,
                    header=None,
                    nrows=1,
                    dtype=str,
                    keep_default_na=False,
                    encoding=enc,
                )
                stream.seek(start)
                frame = pd.read_csv(stream, sep=sep, decimal=decimal, encoding=enc)
        except UnicodeDecodeError as exc:
            # UTF-8 at the start, not further on: read it all again as latin-1.
            if attempt == len(encodings):  # pragma: no cover - latin-1 decodes anything
                raise _unreadable(label, exc) from exc
            stream.seek(start)
            continue
        except pd.errors.EmptyDataError as exc:
            raise IngestionError(f"the {label} file has no columns") from exc
        except (ValueError, csv.Error, OverflowError) as exc:  # ParserError is a ValueError
            raise _unreadable(label, exc) from exc
        break
    # pandas renames a repeated header (a, a -> a, a.1): compare the file's own header.
    _check_names([n for n in header.iloc[0].tolist() if n != ""], label)
    return frame


# --- json -----------------------------------------------------------------------

_JSON_SHAPES = "an array of objects (records), JSON lines, or an object of columns"


def _json_lines(text: str, label: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IngestionError(
                f"the {label} file could not be read: line {number}: {exc.msg} (column {exc.colno})"
            ) from exc
        if not isinstance(record, dict):
            raise IngestionError(
                f"the {label} file could not be read: line {number} is not an object;"
                f" expected {_JSON_SHAPES}"
            )
        records.append(record)
    return records


def _read_json(stream: BinaryIO, filename: str | None, label: str) -> pd.DataFrame:
    raw = stream.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestionError(f"the {label} file is not UTF-8 text: {_reason(exc)}") from exc
    text = text.strip()
    if not text:
        raise IngestionError(f"the {label} file is empty")
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data" or not text.startswith("{"):
            raise _unreadable(label, exc) from exc
        data = _json_lines(text, label)
    try:
        if isinstance(data, list):
            if not all(isinstance(item, dict) for item in data):
                raise IngestionError(f"the {label} file could not be read: expected {_JSON_SHAPES}")
            return pd.DataFrame(data)
        if isinstance(data, dict):
            values = list(data.values())
            if values and all(isinstance(v, list) for v in values):
                return pd.DataFrame(data)  # {"column": [values...]}
            if values and all(isinstance(v, dict) for v in values):
                return pd.DataFrame(data).reset_index(drop=True)  # {"column": {row: value}}
            return pd.DataFrame([data])  # one record (a JSON lines file of one line)
    except (ValueError, TypeError) as exc:  # e.g. columns of different lengths
        raise _unreadable(label, exc) from exc
    raise IngestionError(f"the {label} file could not be read: expected {_JSON_SHAPES}")


# --- parquet, excel ---------------------------------------------------------------


def _read_parquet(stream: BinaryIO, filename: str | None, label: str) -> pd.DataFrame:
    try:
        # ParquetFile rather than read_table: the dataset reader refuses repeated
        # column names with an obscure message; here they reach the check below.
        return pq.ParquetFile(stream).read().to_pandas()
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise _unreadable(label, exc) from exc


def _read_excel(stream: BinaryIO, filename: str | None, label: str) -> pd.DataFrame:
    start = stream.tell()
    magic = stream.read(len(_XLS_MAGIC))
    stream.seek(start)
    if magic.startswith(_XLSX_MAGIC):
        engine = "openpyxl"
    elif magic.startswith(_XLS_MAGIC):
        engine = "xlrd"
    else:
        raise IngestionError(f"the {label} file could not be read: not an xlsx or xls workbook")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # openpyxl: styles, extensions
            # pandas 3 deprecates its xlrd engine (for calamine, not a dependency here).
            warnings.simplefilter("ignore", DeprecationWarning)
            header = pd.read_excel(stream, sheet_name=0, header=None, nrows=1, engine=engine)
            stream.seek(start)
            frame = pd.read_excel(stream, sheet_name=0, engine=engine)
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # zipfile, xml, openpyxl and xlrd errors of every kind
        raise _unreadable(label, exc) from exc
    if len(header):
        raw = [str(v) for v in header.iloc[0].tolist() if not _is_missing(v) and v != ""]
        _check_names(raw, label)
    return frame


_READERS: dict[str, Callable[[BinaryIO, str | None, str], pd.DataFrame]] = {
    "csv": _read_csv,
    "json": _read_json,
    "parquet": _read_parquet,
    "excel": _read_excel,
}


# --- the table ------------------------------------------------------------------


def _as_text(value: Any) -> str | None:
    if _is_missing(value):
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _text_column(series: pd.Series) -> pd.Series:
    return pd.Series([_as_text(v) for v in series], index=series.index, dtype="str")


def _mostly_numbers(series: pd.Series) -> tuple[pd.Series, int] | None:
    """A text column of numbers with a few junk values (``"n/a"``, ``"?"``, ``"-"``) as
    numbers with the junk missing, and how many values were junk; None when the
    column is not mostly numbers (:data:`MAX_JUNK_FRACTION`, at least
    :data:`MIN_NUMBERS` numbers)."""
    present = int(series.notna().sum())
    if present < MIN_NUMBERS:
        return None
    stripped = series.map(lambda v: v.strip() if isinstance(v, str) else v)
    numbers = pd.to_numeric(stripped.replace("", np.nan), errors="coerce")
    if numbers.dtype == object:
        return None
    junk = present - int(numbers.notna().sum())
    if junk == 0 or junk > MAX_JUNK_FRACTION * present or present - junk < MIN_NUMBERS:
        return None
    return numbers, junk


def _plain_object_column(series: pd.Series) -> pd.Series:
    """An object column as one Parquet-writable type."""
    inferred = ptypes.infer_dtype(series, skipna=True)
    if inferred == "empty":  # nothing but missing values
        return series.astype("float64")
    if inferred == "string":
        return series.astype("str")
    if inferred == "boolean":
        return series.astype("boolean")
    if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
        numbers = pd.to_numeric(series, errors="coerce")
        if numbers.dtype != object and numbers.isna().sum() == series.isna().sum():
            return numbers
    if inferred in ("datetime", "datetime64"):
        with contextlib.suppress(ValueError, TypeError):
            return pd.to_datetime(series)
    # Mixed values, nested JSON, dates, bytes...: text, so that Parquet takes them.
    return _text_column(series)


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Text column names, a fresh index, Parquet-writable object columns; a column of
    numbers with a few junk values becomes numbers, the count of junk values in
    ``frame.attrs["coerced_values"]`` (the profile reports it)."""
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    coerced: dict[str, int] = {}
    for position in range(frame.shape[1]):
        series = frame.iloc[:, position]
        if ptypes.is_object_dtype(series.dtype) or ptypes.is_string_dtype(series.dtype):
            found = _mostly_numbers(series)
            if found is not None:
                frame.isetitem(position, found[0])
                coerced[str(frame.columns[position])] = found[1]
            elif ptypes.is_object_dtype(series.dtype):
                frame.isetitem(position, _plain_object_column(series))
    frame.attrs["coerced_values"] = coerced
    return frame


def _finish(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    if frame.shape[1] == 0:
        raise IngestionError(f"the {label} file has no columns")
    names = [str(c) for c in frame.columns]
    for position, name in enumerate(names, 1):
        if "\x00" in name:
            # PostgreSQL text and jsonb cannot hold a NUL: say so here, once, rather
            # than fail later on writing the columns' metadata.
            raise IngestionError(
                f"the {label} file's header holds a NUL byte (column {position},"
                f" {name.replace(chr(0), '').strip()[:60]!r}): a column name cannot hold one"
            )
    _check_names(names, label)
    return _plain(frame)


@contextlib.contextmanager
def _seekable(source: IO[bytes]) -> Iterator[BinaryIO]:
    """``source`` itself when it can seek (readers look twice), else a spooled copy."""
    seekable = getattr(source, "seekable", None)
    if callable(seekable) and seekable():
        yield source  # type: ignore[misc]
        return
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        while chunk := source.read(1024 * 1024):
            spool.write(chunk)
        spool.seek(0)
        yield spool  # type: ignore[misc]


def read_table(
    source: BinaryIO | str | os.PathLike[str], fmt: str, filename: str | None = None
) -> pd.DataFrame:
    """Read an uploaded file as a table; IngestionError when it cannot be one.

    ``fmt`` is the version's ``file_format`` (``csv``, ``json``, ``parquet``,
    ``excel``; ``unknown`` or anything else is refused); ``filename`` (the original
    name) tells a ``.tsv`` from a ``.csv``. ``source`` is read from its current position.
    """
    fmt = str(fmt).lower()
    reader = _READERS.get(fmt)
    if reader is None:
        raise IngestionError(
            f"unsupported format {fmt!r}: upload a csv, json, parquet or excel file"
        )
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            return read_table(f, fmt, filename or os.fspath(source))
    label = "tsv" if fmt == "csv" and (filename or "").lower().endswith(".tsv") else fmt
    with _seekable(source) as stream:
        start = stream.tell()
        if not stream.read(1):
            raise IngestionError(f"the {label} file is empty")
        stream.seek(start)
        frame = reader(stream, filename, label)
    return _finish(frame, label)


def write_parquet(frame: pd.DataFrame, destination: BinaryIO) -> int:
    """Write ``frame`` (without its index) as Parquet (zstd); the bytes written."""
    table = pa.Table.from_pandas(_plain(frame), preserve_index=False)
    start = destination.tell()
    pq.write_table(table, destination, compression=PARQUET_COMPRESSION)
    return destination.tell() - start


def columns_metadata(frame: pd.DataFrame) -> dict[str, Any]:
    """``{"columns": [{"name", "dtype", "kind", "nullable", "position"}]}``.

    What ``dataset_versions.columns_metadata`` holds; the API checks a workflow's
    target column against these names. ``nullable``: the column has missing values.
    """
    return {
        "columns": [
            {
                "name": str(name),
                "dtype": str(series.dtype),
                "kind": column_kind(series),
                "nullable": bool(series.isna().any()),
                "position": position,
            }
            for position, (name, series) in enumerate(frame.items())
        ]
    }


@dataclass
class Ingested:
    """What ingestion fills in on the version (and its profile)."""

    location: str  # of the Parquet file: dataset_versions.s3_path
    parquet_size_bytes: int
    row_count: int
    column_count: int
    columns_metadata: dict[str, Any]
    profile: Profile


def ingest(
    storage: Storage,
    source_location: str,
    fmt: str,
    parquet_key: str,
    *,
    filename: str | None = None,
) -> Ingested:
    """Read the upload at ``source_location``, store it as Parquet at ``parquet_key``.

    Everything that can fail on the file's content fails before anything is written,
    and the Parquet file is stored all at once (``Storage.save``), so an
    ``IngestionError`` leaves nothing behind. If recording the result in the database
    then fails, the caller deletes ``location``.
    """
    try:
        with storage.open_read(source_location) as source:
            frame = read_table(source, fmt, filename)
    except FileNotFoundError as exc:
        raise IngestionError("the uploaded file is no longer in storage") from exc
    stats = profile(frame)
    metadata = columns_metadata(frame)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        size = write_parquet(frame, spool)  # type: ignore[arg-type]
        spool.seek(0)
        storage.save(parquet_key, spool)  # type: ignore[arg-type]
    return Ingested(
        location=storage.location(parquet_key),
        parquet_size_bytes=size,
        row_count=int(frame.shape[0]),
        column_count=int(frame.shape[1]),
        columns_metadata=metadata,
        profile=stats,
    )
