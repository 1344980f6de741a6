"""``automl-run``: the API, a worker and ``automl-serve``, supervised (``make run``).

- Both start at once. A child that exits while nothing asked it to is started
  again after a pause that doubles with each quick failure (0.5 s, 1 s, 2 s, ...,
  at most 30 s); one that had run for ``--fast-seconds`` (10) before it exited
  starts a new count.
- After ``--max-fast-failures`` (5) quick exits in a row of one child, it gives
  up: one line says which child and its last exit code, every child is stopped,
  and ``automl-run`` exits 1. Never an API running alone while uploads wait.
- SIGINT (Ctrl-C) or SIGTERM: each child gets SIGTERM (the worker finishes or
  gives back its work, uvicorn drains its requests), and ``automl-run`` waits for
  them; one still running after ``--stop-timeout`` (60 s) is killed (the worker's
  leases then expire and its work is recovered). It exits 0.

The children run in a process group of their own, so the terminal's Ctrl-C
reaches them only through the supervisor, once; on Linux a child also gets
SIGTERM if the supervisor itself dies.

    uv run automl-run                                  # the API and a worker
    uv run automl-run --child web='python -m http.server' --child worker='automl-worker'
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TextIO

from database.cmdline import version_line

#: What ``make run`` supervises: the API (uvicorn), one worker and the serving
#: process (``automl-serve``, predictions; the API forwards them there).
DEFAULT_CHILDREN: dict[str, list[str]] = {
    "api": [sys.executable, "-m", "api.main"],
    "worker": [sys.executable, "-m", "workers"],
    "serve": [sys.executable, "-m", "api.serving.app"],
}


def serving_environment(environ: dict[str, str]) -> None:
    """With the default children, the API forwards predictions to the supervised
    serving process: ``SERVING_URL`` from ``HOST`` and ``SERVE_PORT`` unless set."""
    if not environ.get("SERVING_URL"):
        host = environ.get("HOST") or "127.0.0.1"
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        environ["SERVING_URL"] = f"http://{host}:{environ.get('SERVE_PORT') or 8001}"


POLL_SECONDS = 0.1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """Linux: the child gets SIGTERM when the supervisor dies, even by kill -9."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    #: Quick exits in a row (each within ``fast_seconds`` of its start).
    fast_failures: int = 0
    #: When to start it again, after an exit.
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        children: dict[str, list[str]],
        *,
        fast_seconds: float = 10.0,
        max_fast_failures: int = 5,
        backoff_initial: float = 0.5,
        backoff_cap: float = 30.0,
        stop_timeout: float = 60.0,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not children:
            raise ValueError("nothing to supervise")
        if max_fast_failures < 1:
            raise ValueError("max_fast_failures must be at least 1")
        self.children = [Child(name, list(argv)) for name, argv in children.items()]
        self.fast_seconds = fast_seconds
        self.max_fast_failures = max_fast_failures
        self.backoff_initial = backoff_initial
        self.backoff_cap = backoff_cap
        self.stop_timeout = stop_timeout
        #: None: the lines are logged (database.logs, set up by ``main``).
        self.out = out
        self.clock = clock
        self.stop_signal: int | None = None

    def say(self, message: str) -> None:
        if self.out is None:
            from database import logs

            logs.get_logger("automl-run").info(message)
            return
        print(f"automl-run: {message}", file=self.out, flush=True)

    # --- signals ----------------------------------------------------------------------------
    def request_stop(self, signum: int, frame: FrameType | None = None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)

    # --- children ---------------------------------------------------------------------------
    def _start(self, child: Child) -> bool:
        """Start ``child``; False when it cannot start and the supervisor must give up."""
        child.restart_at = None
        try:
            child.process = subprocess.Popen(
                child.argv,
                process_group=0,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as exc:  # not found, not executable: an exit like any other
            self.say(f"{child.name} could not start: {exc}")
            child.process = None
            child.started_at = self.clock()
            return self._exited(child, 127)
        child.started_at = self.clock()
        return True

    def _delay(self, failures: int) -> float:
        return float(min(self.backoff_cap, self.backoff_initial * 2 ** max(0, failures - 1)))

    def _exited(self, child: Child, code: int) -> bool:
        """Record an unexpected exit; False when the supervisor must give up."""
        child.exits.append(code)
        ran = self.clock() - child.started_at
        child.fast_failures = child.fast_failures + 1 if ran < self.fast_seconds else 1
        if ran < self.fast_seconds and child.fast_failures >= self.max_fast_failures:
            self.say(
                f"{child.name} exited {child.fast_failures} times in a row within"
                f" {self.fast_seconds:g} s of starting (last: {_ended(code)}):"
                " giving up, stopping everything"
            )
            return False
        delay = self._delay(child.fast_failures)
        self.say(f"{child.name} {_ended(code)} after {ran:.1f} s; restarting it in {delay:.1f} s")
        child.restart_at = self.clock() + delay
        return True

    def _step(self) -> bool:
        """Look at every child once; False when the supervisor must give up."""
        now = self.clock()
        for child in self.children:
            if child.process is None:
                due = child.restart_at is not None and now >= child.restart_at
                if due and not self._start(child):
                    return False
                continue
            code = child.process.poll()
            if code is None:
                continue
            child.process = None
            if not self._exited(child, code):
                return False
        return True

    def stop_children(self) -> None:
        """SIGTERM to every running child, then wait; kill what outlives the timeout."""
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):  # it just ended
                child.process.send_signal(signal.SIGTERM)
        deadline = self.clock() + self.stop_timeout
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(max(0.0, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop within {self.stop_timeout:g} s: killing it")
                child.process.kill()
                child.process.wait()

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until a signal (0) or a child that keeps failing (1)."""
        code = 0
        try:
            for child in self.children:
                if not self._start(child):
                    return 1
            while self.stop_signal is None:
                if not self._step():
                    code = 1
                    break
                time.sleep(POLL_SECONDS)
            else:
                self.say(
                    f"{signal.Signals(self.stop_signal).name}: stopping"
                    f" {', '.join(c.name for c in self.children)}"
                )
        finally:
            self.stop_children()
        return code


def _ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _child(value: str) -> tuple[str, list[str]]:
    name, sep, command = value.partition("=")
    if not sep or not name or not command.strip():
        raise argparse.ArgumentTypeError("expected NAME=COMMAND")
    return name, shlex.split(command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="automl-run",
        description="Run the API, a worker and the serving process (automl-serve);"
        " restart one that exits (with backoff); stop them all on Ctrl-C. Exits 1 when a"
        " child keeps failing.",
    )
    parser.add_argument(
        "--version", action="version", version=version_line("automl-run", "automl-workers")
    )
    parser.add_argument(
        "--child",
        action="append",
        type=_child,
        metavar="NAME=COMMAND",
        help="a process to supervise (repeatable; default: the API and a worker)",
    )
    parser.add_argument(
        "--fast-seconds",
        type=float,
        default=10.0,
        help="an exit within this many seconds of starting is a quick failure (default 10)",
    )
    parser.add_argument(
        "--max-fast-failures",
        type=int,
        default=5,
        help="give up after this many quick failures in a row of one child (default 5)",
    )
    parser.add_argument(
        "--backoff-cap",
        type=float,
        default=30.0,
        help="the longest pause before a restart, in seconds (default 30)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=60.0,
        help="seconds a child has to stop before it is killed (default 60)",
    )
    args = parser.parse_args(argv)
    from database import logs

    logs.setup("run")
    children = dict(args.child) if args.child else DEFAULT_CHILDREN
    if not args.child:
        serving_environment(os.environ)  # type: ignore[arg-type]
    supervisor = Supervisor(
        children,
        fast_seconds=args.fast_seconds,
        max_fast_failures=args.max_fast_failures,
        backoff_cap=args.backoff_cap,
        stop_timeout=args.stop_timeout,
    )
    supervisor.install_signal_handlers()
    return supervisor.run()


def run() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    run()
