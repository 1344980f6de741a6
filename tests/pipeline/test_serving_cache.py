"""pipeline.serving's model cache: bounded by bytes, least recently used out first,
one load per key however many threads miss it at once."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.serving import LoadedModel, ModelCache


def _model(key: str, size: int) -> LoadedModel:
    return LoadedModel(key=key, model=object(), columns=[], classes=None, size_bytes=size)


def test_bounded_by_bytes_lru_first() -> None:
    cache = ModelCache(max_bytes=100)
    cache.get("a", lambda: _model("a", 40))
    cache.get("b", lambda: _model("b", 40))
    cache.get("a", lambda: _model("a", 40))  # a is now the most recent
    cache.get("c", lambda: _model("c", 40))  # 120 > 100: b goes
    assert "a" in cache and "c" in cache and "b" not in cache
    assert cache.size_bytes == 80
    cache.get("huge", lambda: _model("huge", 500))  # alone over the bound: kept alone
    assert len(cache) == 1 and "huge" in cache


def test_one_load_per_key_under_concurrency() -> None:
    cache = ModelCache(max_bytes=10**6)
    calls = []

    def load() -> LoadedModel:
        calls.append(1)
        time.sleep(0.05)
        return _model("k", 10)

    got: list[LoadedModel] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("k", load))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(m) for m in got}) == 1


def test_a_failed_load_is_tried_again() -> None:
    cache = ModelCache(max_bytes=100)

    def fail() -> LoadedModel:
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        cache.get("k", fail)
    assert cache.get("k", lambda: _model("k", 1)).key == "k"
