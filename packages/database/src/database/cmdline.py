"""What the services' command lines share (``automl-api``, ``automl-serve``,
``automl-worker``, ``automl-run``): ``--version``, and settings refused in one line.

They parse their arguments before importing anything heavy or touching the
database, so ``--help`` and ``--version`` print and exit 0 with no side effect.
A setting the environment or an option gets wrong (``PORT=abc``) is one line on
standard error naming it, and exit code 2 (usage), never a pydantic traceback.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

#: A usage error or a setting refused.
USAGE = 2


def version_line(prog: str, distribution: str) -> str:
    """``automl-api 0.1.0``: the program and its distribution's version."""
    try:
        found = version(distribution)
    except PackageNotFoundError:  # pragma: no cover - a bare checkout
        found = "unknown"
    return f"{prog} {found}"


def settings_error(exc: Exception) -> str:
    """A pydantic ValidationError (or another error) as one line: the setting's name,
    what is wrong, and the value given unless it may be a secret."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    parts = []
    for error in errors():
        name = ".".join(str(p) for p in error.get("loc", ())) or "settings"
        message = str(error.get("msg", "invalid"))
        given = error.get("input")
        secret = any(w in name.upper() for w in ("URL", "KEY", "SECRET", "TOKEN", "PASSWORD"))
        shown = f" (got {given!r})" if isinstance(given, str | int) and not secret else ""
        parts.append(f"{name}: {message}{shown}")
    return "; ".join(parts)


def refuse(prog: str, message: str, code: int = USAGE) -> int:
    """Print ``prog: message`` on standard error; return ``code``."""
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    return code
