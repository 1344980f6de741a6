"""The storage, as the pipeline knows it: :mod:`database.storage` (moved there so the
API, the workers and ``automl-db purge`` share one module; names kept here)."""

from database.storage import (
    CHUNK,
    FsspecStorage,
    LocalStorage,
    Storage,
    default_storage,
    is_local,
    make_storage,
)

__all__ = [
    "CHUNK",
    "FsspecStorage",
    "LocalStorage",
    "Storage",
    "default_storage",
    "is_local",
    "make_storage",
]
