"""pipeline.ingest: every format in, Parquet out; bad files refused with a clear message."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import openpyxl
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.ingest import (
    IngestionError,
    columns_metadata,
    ingest,
    read_table,
    write_parquet,
)
from pipeline.storage import make_storage


def read(data: bytes, fmt: str, filename: str | None = None) -> pd.DataFrame:
    return read_table(io.BytesIO(data), fmt, filename)


def refused(data: bytes, fmt: str, filename: str | None = None) -> str:
    with pytest.raises(IngestionError) as caught:
        read(data, fmt, filename)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def xlsx_bytes(rows: list[list[Any]], *, extra_sheet: bool = False) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    for row in rows:
        ws.append(row)
    if extra_sheet:
        wb.create_sheet("second").append(["not", "read"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts, missing values as None: easy to compare."""
    return [
        {k: (None if not isinstance(v, list | dict) and pd.isna(v) else v) for k, v in r.items()}
        for r in frame.astype(object).to_dict("records")
    ]


def round_trip(frame: pd.DataFrame) -> pd.DataFrame:
    buf = io.BytesIO()
    size = write_parquet(frame, buf)
    assert size == len(buf.getvalue()) > 0
    buf.seek(0)
    return pq.read_table(buf).to_pandas()


# --- csv -------------------------------------------------------------------------


def test_csv_types_and_missing_values() -> None:
    frame = read(b"id,name,score,joined\n1,ann,2.5,2024-01-02\n2,bob,,\n3,,1\n", "csv")
    assert list(frame.columns) == ["id", "name", "score", "joined"]
    assert [str(t) for t in frame.dtypes] == ["int64", "str", "float64", "str"]
    assert records(frame) == [
        {"id": 1, "name": "ann", "score": 2.5, "joined": "2024-01-02"},
        {"id": 2, "name": "bob", "score": None, "joined": None},
        {"id": 3, "name": None, "score": 1.0, "joined": None},
    ]
    assert records(round_trip(frame)) == records(frame)


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"a\tb\n1\tx y\n2\tz\n", "data.tsv"),
        (b"a;b\n1;x y\n2;z\n", "data.csv"),
        (b"a|b\n1|x y\n2|z\n", "data.csv"),
        (b'"a","b"\r\n1,"x y"\r\n2,"z"\r\n', "data.csv"),
        (b"\xef\xbb\xbfa,b\n1,x y\n2,z\n", "data.csv"),  # UTF-8 with a BOM
        (b"a,b\n1,x y\n2,z", None),  # no final newline, no name
    ],
)
def test_csv_dialects(data: bytes, filename: str | None) -> None:
    frame = read(data, "csv", filename)
    assert records(frame) == [{"a": 1, "b": "x y"}, {"a": 2, "b": "z"}]


def test_semicolon_csv_with_decimal_commas() -> None:
    frame = read(b"city;price\nParis;1,5\nLyon;2,25\n", "csv", "prices.csv")
    assert frame["price"].tolist() == [1.5, 2.25]


def test_latin1_csv() -> None:
    data = "name,city\nJosé,Zürich\nRenée,Köln\n".encode("latin-1")
    frame = read(data, "csv", "people.csv")
    assert frame["name"].tolist() == ["José", "Renée"]
    assert frame["city"].tolist() == ["Zürich", "Köln"]


def test_latin1_after_a_long_ascii_start() -> None:
    # The sample is plain ASCII; the first non-UTF-8 byte comes much later.
    data = b"id,word\n" + b"".join(b"%d,plain\n" % i for i in range(20_000)) + b"9,caf\xe9\n"
    frame = read(data, "csv")
    assert frame.shape == (20_001, 2) and frame["word"].iloc[-1] == "café"


def test_single_column_csv() -> None:
    assert read(b"only\n1\n2\n", "csv")["only"].tolist() == [1, 2]


def test_header_only_csv_is_zero_rows() -> None:
    frame = read(b"a,b,c\n", "csv")
    assert frame.shape == (0, 3) and list(frame.columns) == ["a", "b", "c"]
    round_trip(frame)


def test_ragged_csv_names_the_line() -> None:
    message = refused(b"a,b,c\n1,2,3\n4,5,6\n7,8,9\n1,2,3,4\n", "csv")
    assert message.startswith("the csv file could not be read: Error tokenizing data.")
    assert "Expected 3 fields in line 5, saw 4" in message


def test_csv_with_a_repeated_header_is_refused() -> None:
    assert "duplicate column names: 'a'" in refused(b"a,b,a\n1,2,3\n", "csv")


def test_csv_path_and_unseekable_sources(tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    path.write_bytes(b"a\tb\n1\t2\n")
    assert records(read_table(path, "csv")) == [{"a": 1, "b": 2}]  # .tsv from the path

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, b: Any) -> int:
            chunk = self.inner.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    frame = read_table(Pipe(b"x;y\n1;2\n"), "csv")  # type: ignore[arg-type]
    assert records(frame) == [{"x": 1, "y": 2}]


# --- json ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'[{"a": 1, "b": "x"}, {"a": 2, "b": null}]',
        b'{"a": 1, "b": "x"}\n\n{"a": 2, "b": null}\n',  # JSON lines
        b'{"a": [1, 2], "b": ["x", null]}',  # columns
        b'{"a": {"0": 1, "1": 2}, "b": {"0": "x", "1": null}}',  # pandas' orient=columns
        b'\xef\xbb\xbf[{"a": 1, "b": "x"}, {"a": 2}]',  # a BOM, a key left out
    ],
)
def test_json_shapes(data: bytes) -> None:
    frame = read(data, "json")
    assert records(frame) == [{"a": 1, "b": "x"}, {"a": 2, "b": None}]
    assert str(frame["a"].dtype) == "int64"


def test_one_json_record_is_one_row() -> None:
    assert records(read(b'{"a": 1, "b": "x"}', "json")) == [{"a": 1, "b": "x"}]


def test_nested_and_mixed_json_become_text() -> None:
    data = [
        {"id": 1, "tags": ["a", "b"], "meta": {"k": 1}, "mixed": 1},
        {"id": 2, "tags": [], "meta": None, "mixed": "two"},
        {"id": 3, "tags": None, "meta": {"k": [1, 2]}, "mixed": 3.5},
    ]
    frame = read(json.dumps(data).encode(), "json")
    assert records(frame) == [
        {"id": 1, "tags": '["a", "b"]', "meta": '{"k": 1}', "mixed": "1"},
        {"id": 2, "tags": "[]", "meta": None, "mixed": "two"},
        {"id": 3, "tags": None, "meta": '{"k": [1, 2]}', "mixed": "3.5"},
    ]
    assert records(round_trip(frame)) == records(frame)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'[{"a": 1}, {"a": 2}', "the json file could not be read: Expecting ',' delimiter"),
        (b'{"a": 1}\n{"a": }\n', "the json file could not be read: line 2: Expecting value"),
        (b'{"a": 1}\n[1, 2]\n', "line 2 is not an object"),
        (b"[1, 2, 3]", "expected an array of objects"),
        (b'"just a string"', "expected an array of objects"),
        (b'{"a": [1, 2], "b": [3]}', "the json file could not be read: All arrays must be"),
        (b"[]", "the json file has no columns"),
        (b"{}", "the json file has no columns"),
        (b"  \n ", "the json file is empty"),
        (b'[{"a": "\xff"}]', "the json file is not UTF-8 text"),
    ],
)
def test_broken_json(data: bytes, expected: str) -> None:
    assert expected in refused(data, "json")


# --- parquet -----------------------------------------------------------------------


def test_parquet_round_trip() -> None:
    table = pa.table(
        {
            "n": pa.array([1, None, 3], pa.int64()),
            "x": [0.5, 1.5, None],
            "s": ["a", None, "c"],
            "flag": [True, False, None],
            "when": pa.array([dt.datetime(2024, 1, 1), None, dt.datetime(2024, 3, 1)]),
            "cat": pa.array(["u", "v", "u"]).dictionary_encode(),
        }
    )
    frame = read(parquet_bytes(table), "parquet", "data.parquet")
    assert list(frame.columns) == ["n", "x", "s", "flag", "when", "cat"]
    assert frame["n"].tolist()[0] == 1 and pd.isna(frame["n"].tolist()[1])
    assert frame["when"].iloc[2] == pd.Timestamp("2024-03-01")
    assert isinstance(frame["cat"].dtype, pd.CategoricalDtype)
    back = round_trip(frame)
    assert records(back) == records(frame)


def test_truncated_parquet() -> None:
    data = parquet_bytes(pa.table({"a": list(range(100))}))
    message = refused(data[: len(data) // 2], "parquet")
    assert message.startswith("the parquet file could not be read: ")
    assert "magic bytes" in message or "footer" in message


def test_parquet_with_repeated_names() -> None:
    table = pa.table([pa.array([1]), pa.array([2])], names=["a", "a"])
    assert "duplicate column names: 'a'" in refused(parquet_bytes(table), "parquet")


def test_csv_named_parquet() -> None:
    assert refused(b"a,b\n1,2\n", "parquet").startswith("the parquet file could not be read")


# --- excel -------------------------------------------------------------------------


def test_xlsx_first_sheet() -> None:
    data = xlsx_bytes(
        [
            ["id", "name", "score", "when"],
            [1, "ann", 2.5, dt.datetime(2024, 1, 2)],
            [2, None, None, dt.datetime(2024, 1, 3)],
            [3, "cy", 4, None],
        ],
        extra_sheet=True,
    )
    frame = read(data, "excel", "book.xlsx")
    assert list(frame.columns) == ["id", "name", "score", "when"]
    assert [str(t) for t in frame.dtypes][:3] == ["int64", "str", "float64"]
    assert frame["when"].iloc[1] == pd.Timestamp("2024-01-03")
    assert records(frame)[1] == {
        "id": 2,
        "name": None,
        "score": None,
        "when": pd.Timestamp("2024-01-03"),
    }
    assert records(round_trip(frame)) == records(frame)


def test_xlsx_mixed_column_and_numeric_headers() -> None:
    data = xlsx_bytes([["code", 2024], [1, 10], ["A7", 20], [None, 30]])
    frame = read(data, "excel", "book.xlsx")
    assert list(frame.columns) == ["code", "2024"]
    assert frame["code"].tolist()[:2] == ["1", "A7"] and pd.isna(frame["code"].iloc[2])
    round_trip(frame)


def test_xlsx_duplicate_headers() -> None:
    assert "duplicate column names: 'x'" in refused(xlsx_bytes([["x", "x"], [1, 2]]), "excel")
    # 1 and "1" are the same name once they are text.
    assert "duplicate column names: '1'" in refused(xlsx_bytes([[1, "1"], [1, 2]]), "excel")


def test_empty_xlsx_has_no_columns() -> None:
    assert refused(xlsx_bytes([]), "excel") == "the excel file has no columns"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (os.urandom(2000), "not an xlsx or xls workbook"),
        (b"PK\x03\x04" + os.urandom(2000), "File is not a zip file"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + os.urandom(2000), "the excel file could not"),
        (b"a,b\n1,2\n", "not an xlsx or xls workbook"),
    ],
    ids=["random", "broken-zip", "broken-ole", "csv"],
)
def test_corrupt_excel(data: bytes, expected: str) -> None:
    message = refused(data, "excel", "book.xlsx")
    assert message.startswith("the excel file could not be read: ") and expected in message


def test_a_zip_that_is_not_a_workbook() -> None:
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("hello.txt", "hi")
    message = refused(buf.getvalue(), "excel", "book.xlsx")
    assert message.startswith("the excel file could not be read: ")


def test_truncated_xlsx() -> None:
    data = xlsx_bytes([["a"], [1]])
    assert "the excel file could not be read" in refused(data[: len(data) // 2], "excel")


def test_xls() -> None:
    xlwt = pytest.importorskip(
        "xlwt", reason="writing an .xls needs xlwt, which is not a dependency (xlrd only reads)"
    )
    book = xlwt.Workbook()
    sheet = book.add_sheet("s")
    for r, row in enumerate([["a", "b"], [1, "x"], [2, "y"]]):
        for c, value in enumerate(row):
            sheet.write(r, c, value)
    buf = io.BytesIO()
    book.save(buf)
    assert records(read(buf.getvalue(), "excel", "old.xls")) == [
        {"a": 1, "b": "x"},
        {"a": 2, "b": "y"},
    ]


# --- any format ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet", "excel"])
def test_empty_file(fmt: str) -> None:
    assert refused(b"", fmt) == f"the {fmt} file is empty"


def test_empty_csv_lines() -> None:
    assert refused(b"\n\n  \n", "csv") == "the csv file is empty"


@pytest.mark.parametrize("fmt", ["unknown", "xml", ""])
def test_unsupported_format(fmt: str) -> None:
    assert refused(b"a,b\n1,2\n", fmt).startswith(f"unsupported format {fmt!r}")


def test_write_parquet_takes_any_frame() -> None:
    frame = pd.DataFrame(
        {
            0: [1, "a", 2.5, None],  # a number as name, mixed values
            "nested": [{"a": 1}, [1, 2], None, "t"],
            "flags": [True, None, False, True],
            "nothing": [None, None, None, None],
        },
        index=[10, 11, 12, 13],
    )
    back = round_trip(frame)
    assert list(back.columns) == ["0", "nested", "flags", "nothing"]
    assert back["0"].tolist()[:3] == ["1", "a", "2.5"]
    assert back["nested"].tolist()[:2] == ['{"a": 1}', "[1, 2]"]
    assert back["flags"].tolist()[0] is True
    assert list(frame.columns)[0] == 0  # the caller's frame is left alone


def test_columns_metadata() -> None:
    frame = pd.DataFrame(
        {
            "age": [30, 40, None],
            "city": ["Paris", "Lyon", "Paris"],
            "ok": [True, False, True],
            "when": pd.to_datetime(["2024-01-01", "2024-01-02", None]),
            "note": ["x" * 80, "y" * 90, "z" * 70],
        }
    ).astype({"city": "str", "note": "str"})
    meta = columns_metadata(frame)
    assert meta == {
        "columns": [
            {"name": "age", "dtype": "float64", "kind": "numeric", "nullable": True, "position": 0},
            {
                "name": "city",
                "dtype": "str",
                "kind": "categorical",
                "nullable": False,
                "position": 1,
            },
            {"name": "ok", "dtype": "bool", "kind": "boolean", "nullable": False, "position": 2},
            {
                "name": "when",
                "dtype": str(frame["when"].dtype),
                "kind": "datetime",
                "nullable": True,
                "position": 3,
            },
            {"name": "note", "dtype": "str", "kind": "text", "nullable": False, "position": 4},
        ]
    }
    json.dumps(meta, allow_nan=False)


# --- ingest: storage in, storage out ---------------------------------------------------


@pytest.fixture
def memory_url() -> Iterator[str]:
    prefix = f"test-{uuid.uuid4().hex}"
    yield f"memory://{prefix}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{prefix}"):
        fs.rm(f"/{prefix}", recursive=True)


def test_ingest_writes_parquet_and_reports(memory_url: str) -> None:
    storage = make_storage(memory_url)
    source = storage.write_bytes("uploads/d.csv", b"a,b\n1,x\n2,y\n2,y\n")
    result = ingest(storage, source, "csv", "tables/d.parquet", filename="d.csv")
    assert result.location == f"{memory_url}/tables/d.parquet"
    assert result.parquet_size_bytes == storage.size(result.location)
    assert (result.row_count, result.column_count) == (3, 2)
    assert [c["name"] for c in result.columns_metadata["columns"]] == ["a", "b"]
    assert result.profile.duplicate_rows == 1
    with storage.open_read(result.location) as f:
        assert pq.read_table(f).to_pandas()["a"].tolist() == [1, 2, 2]


def test_ingest_of_a_bad_file_writes_nothing(memory_url: str) -> None:
    storage = make_storage(memory_url)
    source = storage.write_bytes("uploads/d.json", b'[{"a": 1},')
    with pytest.raises(IngestionError, match="the json file could not be read"):
        ingest(storage, source, "json", "tables/d.parquet")
    assert not storage.exists(storage.location("tables/d.parquet"))
    with pytest.raises(IngestionError, match="no longer in storage"):
        ingest(storage, storage.location("uploads/gone.csv"), "csv", "tables/x.parquet")


def test_numbers_survive_exactly() -> None:
    big = 2**62 + 1
    frame = read(f"n,f\n{big},0.1\n1,1e308\n".encode(), "csv")
    back = round_trip(frame)
    assert back["n"].tolist() == [big, 1] and back["f"].tolist() == [0.1, 1e308]
    assert np.issubdtype(back["n"].dtype, np.integer)
