"""The storage quota counts what a user really stores: the upload, the Parquet copy
the ingestion writes, and the saved models; under concurrency too.

The uploads go through the API (one TestClient per thread, all released at once),
the ingestions through the worker's own function (one thread per claim): every
writer of stored bytes checks the quota under the user's row lock.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api.settings import ApiSettings
from database import errors, locks
from database.config import DatabaseSettings
from database.limits import FreeLimits, Limits, storage_refusal
from database.verify import verify
from pipeline.ingest import read_table, write_parquet
from pipeline.storage import Storage
from workers import queue
from workers.ingestion import run_ingestion

from api_helpers import make_app, signup, upload

UPLOADS = 8
FITTING = 3  # Parquet copies the quota leaves room for


def _csv() -> bytes:
    frame = pd.DataFrame(
        {
            "x": [i * 0.5 for i in range(400)],
            "y": [i % 7 for i in range(400)],
            "label": ["a" if i % 3 else "b" for i in range(400)],
        }
    )
    return frame.to_csv(index=False).encode()


def _parquet_size(csv: bytes) -> int:
    return write_parquet(read_table(io.BytesIO(csv), "csv", "d.csv"), io.BytesIO())


def test_concurrent_uploads_and_ingestions_end_within_the_quota(
    engine: Engine,
    tmp_path: Path,
    storage_dir: Path,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The 8 uploads take the user's lock one after another: on a loaded machine the
    # last waits longer than the default 5-s lock_timeout (a 503 that is the machine's,
    # not the quota's). The quota is what is tested here.
    patient = DatabaseSettings(DB_LOCK_TIMEOUT_MS=120_000)
    monkeypatch.setattr(locks, "get_settings", lambda: patient)
    csv = _csv()
    parquet = _parquet_size(csv)
    # Every upload fits; the Parquet copies of only FITTING of them do.
    quota = UPLOADS * len(csv) + FITTING * parquet + parquet // 2
    limits = Limits(free=FreeLimits(storage_bytes=quota))
    settings = ApiSettings(
        data_dir=tmp_path,
        storage_url=str(storage_dir),
        max_upload_bytes=4 * 1024 * 1024,
        tier_limits=limits,
    )
    app = make_app(engine, settings)
    with TestClient(app) as client:
        account = signup(client)
    barrier = threading.Barrier(UPLOADS)

    def send(i: int) -> Any:
        with TestClient(app) as c:
            barrier.wait(timeout=60)
            return upload(c, account, name=f"d{i}", content=csv, filename="d.csv")

    with ThreadPoolExecutor(UPLOADS) as pool:
        responses = list(pool.map(send, range(UPLOADS)))
    assert [r.status_code for r in responses] == [201] * UPLOADS

    claims = [queue.claim(engine, "ingestion", f"w{i}", 30) for i in range(UPLOADS)]
    assert all(c is not None for c in claims)
    start = threading.Barrier(UPLOADS)

    def ingest(claim: Any) -> str:
        start.wait(timeout=60)
        # A user's lock not granted within DB_LOCK_TIMEOUT_MS (eight writers of one user
        # on a loaded machine) is transient: the worker's dispatcher tries again, as here.
        for _attempt in range(5):
            try:
                return run_ingestion(engine, storage, claim, tier_limits=limits)
            except errors.LockTimeout:
                continue
        return run_ingestion(engine, storage, claim, tier_limits=limits)

    with ThreadPoolExecutor(UPLOADS) as pool:
        outcomes = list(pool.map(ingest, claims))
    assert sorted(outcomes) == ["completed"] * FITTING + ["failed"] * (UPLOADS - FITTING)

    with engine.connect() as conn:
        used = conn.execute(
            text("SELECT storage_used_bytes FROM users WHERE id = :u"), {"u": account.user_id}
        ).scalar_one()
        failed = conn.execute(
            text(
                "SELECT error_message, parquet_size_bytes, s3_path FROM dataset_versions"
                " WHERE status = 'failed'"
            )
        ).all()
    assert used == UPLOADS * len(csv) + FITTING * parquet <= quota
    assert len(failed) == UPLOADS - FITTING
    for message, size, path in failed:
        assert "storage quota exceeded" in message and f"({parquet} bytes)" in message
        assert size is None and path is None
    # Only the kept Parquet copies are on disk.
    assert len(list(storage_dir.rglob("*.parquet"))) == FITTING
    assert verify(engine).ok
    # The quota, now full, refuses the next upload at the API.
    with TestClient(app) as c:
        r = upload(c, account, name="one more", content=csv, filename="d.csv")
    assert r.status_code == 413 and r.json()["error"]["code"] == "storage_quota_exceeded"


def test_storage_refusal_counts_models_and_parquet(engine: Engine) -> None:
    from sqlalchemy.orm import Session

    from factories import make_dataset, make_model, make_user, make_version

    with engine.begin() as conn:
        user_id = make_user(conn)
        make_version(conn, make_dataset(conn, user_id), original=600, parquet=300)
        make_model(conn, user_id, size_bytes=100)
    limits = Limits(free=FreeLimits(storage_bytes=1000))
    with Session(engine) as session:
        assert storage_refusal(session, user_id, 0, limits) is None
        assert storage_refusal(session, user_id, 1, limits) is not None
        message = storage_refusal(session, user_id, 5, limits)
        assert message is not None and "1000" in message and "free" in message
