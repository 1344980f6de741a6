"""pipeline.storage: a local folder and an fsspec filesystem (memory://), same rules."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from pipeline.storage import FsspecStorage, LocalStorage, Storage, make_storage


class Broken(io.RawIOBase):
    """A source that gives some bytes, then fails: a client gone mid-upload."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise OSError("connection reset")
        n = min(self.left, 1024 * 1024 if size < 0 else size)
        self.left -= n
        return b"x" * n


@pytest.fixture
def memory_url() -> Iterator[str]:
    prefix = f"test-{uuid.uuid4().hex}"
    yield f"memory://{prefix}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{prefix}"):
        fs.rm(f"/{prefix}", recursive=True)


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, memory_url: str) -> Storage:
    if request.param == "local":
        return make_storage(tmp_path / "store")
    return make_storage(memory_url)


def _files(storage: Storage) -> list[str]:
    """Every file under the storage's root, temporary ones included."""
    if isinstance(storage, LocalStorage):
        return sorted(
            str(p.relative_to(storage.root)) for p in storage.root.rglob("*") if p.is_file()
        )
    assert isinstance(storage, FsspecStorage)
    found = storage.fs.find(storage.root) if storage.fs.exists(storage.root) else []
    return sorted(p[len(storage.root) + 1 :] for p in found)


def test_make_storage_chooses_by_url(tmp_path: Path, memory_url: str) -> None:
    assert isinstance(make_storage(tmp_path), LocalStorage)
    assert isinstance(make_storage(f"file://{tmp_path}"), LocalStorage)
    assert isinstance(make_storage(memory_url), FsspecStorage)
    with pytest.raises(ValueError):
        make_storage("memory://")  # no prefix: the whole filesystem


def test_s3_without_s3fs_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: object, **kwargs: object) -> None:
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)
    with pytest.raises(RuntimeError, match=r"automl-pipeline\[s3\]"):
        make_storage("s3://bucket/prefix")


def test_save_open_delete_round_trip(storage: Storage) -> None:
    data = b"a,b\n" + b"1,2\n" * 500_000  # a few chunks
    location = storage.location("uploads/u/d/v/data.csv")
    assert storage.save("uploads/u/d/v/data.csv", io.BytesIO(data)) == len(data)
    assert storage.exists(location) and storage.size(location) == len(data)
    with storage.open_read(location) as f:
        assert f.read() == data
    assert storage.write_bytes("models/m.joblib", b"model") == storage.location("models/m.joblib")
    assert _files(storage) == ["models/m.joblib", "uploads/u/d/v/data.csv"]
    assert storage.signed_url(location) is None  # neither a folder nor memory can sign
    assert storage.delete(location) is True
    assert storage.delete(location) is False
    assert not storage.exists(location)
    with pytest.raises(FileNotFoundError):
        storage.open_read(location).__enter__()
    with pytest.raises(FileNotFoundError):
        storage.size(location)


def test_locations_are_what_the_database_records(tmp_path: Path, memory_url: str) -> None:
    local = make_storage(tmp_path / "store")
    assert local.location("a/b.csv") == str((tmp_path / "store" / "a" / "b.csv").resolve())
    assert local.location("a//./b.csv") == local.location("a/b.csv")
    remote = make_storage(memory_url + "/")
    assert remote.location("a/b.csv") == f"{memory_url}/a/b.csv"


def test_a_failed_save_leaves_nothing(storage: Storage) -> None:
    with pytest.raises(OSError, match="connection reset"):
        storage.save("uploads/big.csv", Broken(3 * 1024 * 1024))
    assert _files(storage) == []
    assert not storage.exists(storage.location("uploads/big.csv"))


def test_a_failed_save_keeps_the_previous_file(tmp_path: Path) -> None:
    storage = make_storage(tmp_path / "store")
    storage.write_bytes("a.csv", b"old")
    with pytest.raises(OSError):
        storage.save("a.csv", Broken(10))
    with storage.open_read(storage.location("a.csv")) as f:
        assert f.read() == b"old"
    assert _files(storage) == ["a.csv"]


@pytest.mark.parametrize(
    "key", ["../escape.csv", "a/../../escape.csv", "/etc/passwd", "..", "", "a\\..\\b"]
)
def test_keys_never_escape_the_root(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        storage.location(key)
    with pytest.raises(ValueError):
        storage.save(key, io.BytesIO(b"x"))


def test_local_locations_outside_the_root_are_refused(tmp_path: Path) -> None:
    storage = make_storage(tmp_path / "store")
    storage.write_bytes("inside.txt", b"in")
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    link = storage.root / "link.txt"
    link.symlink_to(outside)
    for location in (
        str(outside),
        f"file://{outside}",
        str(storage.root / ".." / "secret.txt"),
        "../secret.txt",
        str(link),  # a symlink pointing out
        str(storage.root),
        "s3://bucket/inside.txt",
    ):
        assert not storage.exists(location), location
        with pytest.raises(FileNotFoundError):
            storage.open_read(location).__enter__()
        assert storage.delete(location) is False, location
    assert outside.read_text() == "no"
    # Relative locations are relative to the root.
    assert storage.exists("inside.txt") and storage.exists(f"file://{storage.root}/inside.txt")


def test_local_extra_roots_are_readable_not_deletable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    artifact = data / "models" / "rf.joblib"
    artifact.write_bytes(b"model")
    storage = make_storage(tmp_path / "store", extra_readable_roots=[data])
    assert storage.exists(str(artifact)) and storage.local_path(str(artifact)) == artifact
    with storage.open_read(str(artifact)) as f:
        assert f.read() == b"model"
    assert storage.delete(str(artifact)) is False and artifact.exists()


def test_local_delete_removes_emptied_folders(tmp_path: Path) -> None:
    storage = make_storage(tmp_path / "store")
    keep = storage.write_bytes("uploads/u/keep.csv", b"k")
    gone = storage.write_bytes("uploads/u/d/v/gone.csv", b"g")
    assert storage.delete(gone) is True
    assert not (tmp_path / "store" / "uploads" / "u" / "d").exists()
    assert storage.exists(keep) and storage.root.is_dir()


def test_memory_locations_outside_the_prefix_are_refused(memory_url: str) -> None:
    storage = make_storage(memory_url)
    neighbour = make_storage(memory_url + "-neighbour")
    theirs = neighbour.write_bytes("x.csv", b"theirs")
    storage.write_bytes("x.csv", b"ours")
    try:
        for location in (
            theirs,  # a prefix that merely starts like ours
            f"{memory_url}/../x.csv",
            f"{memory_url}",
            "/x.csv",
            str(Path("/tmp") / "x.csv"),
            "s3://bucket/x.csv",
        ):
            assert not storage.exists(location), location
            with pytest.raises(FileNotFoundError):
                storage.open_read(location).__enter__()
            assert storage.delete(location) is False, location
        assert neighbour.exists(theirs)
    finally:
        neighbour.delete(theirs)


def test_memory_extra_roots_are_readable_not_deletable(memory_url: str) -> None:
    shared = make_storage(memory_url + "/shared")
    location = shared.write_bytes("m.joblib", b"model")
    storage = make_storage(memory_url + "/own", extra_readable_roots=[memory_url + "/shared"])
    with storage.open_read(location) as f:
        assert f.read() == b"model"
    assert storage.delete(location) is False and shared.exists(location)
    with pytest.raises(ValueError):
        FsspecStorage(memory_url, extra_readable_roots=["s3://bucket/x"])
    # The workers pass the data folder whatever the storage: a remote one leaves it out.
    remote = make_storage(memory_url, extra_readable_roots=[Path("/tmp")])
    assert isinstance(remote, FsspecStorage) and remote.readable_roots == [remote.root]
