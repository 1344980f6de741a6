"""The commands of ``automl`` (see :mod:`automl.cli`)."""

from __future__ import annotations

import functools
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import click
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

import automl
from automl import errors
from automl import models as m
from automl.config import Config, load_config, save_config

# --- exit codes (docs/cli.md) ----------------------------------------------------------------
EXIT_API = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_FAILED = 5
EXIT_TIMEOUT = 6
EXIT_UNREACHABLE = 7
EXIT_INTERRUPTED = 130

#: A job's node is done in one of these.
NODE_DONE = {"success", "skipped", "failed"}
JOB_FINISHED = {"completed", "failed", "cancelled"}

app = typer.Typer(
    name="automl",
    help=(
        "The AutoML platform from a terminal: log in, upload data, run workflows, follow"
        " jobs, list models, predict and download. Credentials: `automl login`, or"
        " AUTOML_API_KEY / AUTOML_BASE_URL. Exit codes: 0 done, 1 refused by the API,"
        " 2 bad usage, 3 not logged in or not allowed, 4 not found, 5 a job failed,"
        " 6 a wait timed out, 7 the API unreachable, 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class State:
    """The global options of this invocation."""

    profile: str | None = None
    base_url: str | None = None
    api_key: str | None = None


state = State()


def make_client(config: Config) -> automl.Client:
    """The client the commands use (the tests point it at their app)."""
    return automl.Client(config=config)


# --- output ---------------------------------------------------------------------------------
def _width(stream: Any) -> int | None:
    """A terminal's own width; a pipe gets wide lines (ids are never folded)."""
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return None
    return max(shutil.get_terminal_size((160, 24)).columns, 160)


def out() -> Console:
    return Console(file=sys.stdout, highlight=False, width=_width(sys.stdout))


def err() -> Console:
    return Console(file=sys.stderr, highlight=False, width=_width(sys.stderr))


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, and the exit code."""
    err().print(f"error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def _api_message(exc: errors.ApiError) -> str:
    text = f"{exc.message} ({exc.code})"
    details = exc.details if isinstance(exc.details, dict) else {}
    facts = [
        f"{k} {v}" for k, v in details.items() if isinstance(v, (int, float, str)) and k != "errors"
    ][:4]
    if facts:
        text += f": {', '.join(facts)}"
    problems = details.get("errors")
    if isinstance(problems, list) and problems and isinstance(problems[0], dict):
        first = problems[0]
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        if first.get("msg"):
            text += f": {where + ': ' if where else ''}{first['msg']}"
    return text


F = TypeVar("F", bound=Callable[..., Any])


def handled(fn: F) -> F:
    """Expected failures as one line and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except errors.ConfigError as exc:
            fail(str(exc), EXIT_AUTH)
        except (errors.Unauthorized, errors.Forbidden) as exc:
            hint = " (run `automl login`)" if exc.status == 401 else ""
            fail(_api_message(exc) + hint, EXIT_AUTH)
        except errors.NotFound as exc:
            fail(_api_message(exc), EXIT_NOT_FOUND)
        except errors.JobFailed as exc:
            fail(str(exc), EXIT_FAILED)
        except errors.WaitTimeout as exc:
            fail(str(exc), EXIT_TIMEOUT)
        except errors.TransportError as exc:
            fail(f"cannot reach the API: {exc}", EXIT_UNREACHABLE)
        except errors.ApiError as exc:
            fail(_api_message(exc), EXIT_API)
        except errors.AutomlError as exc:
            fail(str(exc), EXIT_API)
        except OSError as exc:
            name = f"{exc.filename}: " if exc.filename else ""
            fail(f"{name}{exc.strerror or exc}", EXIT_API)

    return wrapper  # type: ignore[return-value]


def client() -> automl.Client:
    """A client from the global options, the environment and the config file; one line
    and exit 3 when there is no credential."""
    config = load_config(base_url=state.base_url, api_key=state.api_key, profile=state.profile)
    if not config.credential:
        raise errors.ConfigError("not logged in: run `automl login` (or set AUTOML_API_KEY)")
    return make_client(config)


def dump(value: Any) -> None:
    """JSON on stdout (``--json``)."""

    def plain(v: Any) -> Any:
        if hasattr(v, "model_dump"):
            return v.model_dump(mode="json", by_alias=True)
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    sys.stdout.write(json.dumps(plain(value), indent=2, default=str) + "\n")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _s(value: Any) -> str:
    return "" if value is None else str(getattr(value, "value", value))


# --- global options -------------------------------------------------------------------------
def _version(value: bool) -> None:
    if value:
        typer.echo(f"automl {automl.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile", help="The config file's profile (default: AUTOML_PROFILE or default)."
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            help="The API's address (default: AUTOML_BASE_URL, the profile's, http://127.0.0.1:8000).",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="An API key for this command only (default: AUTOML_API_KEY, the profile's).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    state.profile, state.base_url, state.api_key = profile, base_url, api_key


# --- login ----------------------------------------------------------------------------------
@app.command()
@handled
def login(
    api_key: Annotated[
        str | None,
        typer.Option("--key", help="The API key (aml_...); asked for when not given."),
    ] = None,
    email: Annotated[
        str | None,
        typer.Option("--email", help="Log in with email and password instead (a session token)."),
    ] = None,
) -> None:
    """Check an API key (or email and password) against the API and save it, with the
    base URL, in the config file (~/.config/automl/config.toml, readable by you only)."""
    profile = state.profile or load_config(use_env=False, profile=state.profile).profile
    base = state.base_url or load_config(profile=profile).base_url
    if email is not None:
        password = typer.prompt("Password", hide_input=True)
        with make_client(Config(base_url=base, profile=profile)) as anonymous:
            session = anonymous.auth.login(email, password)
        checking = Config(base_url=base, token=session.token, profile=profile)
    else:
        key = api_key or state.api_key or typer.prompt("API key", hide_input=True)
        checking = Config(base_url=base, api_key=key.strip(), profile=profile)
    with make_client(checking) as c:
        me = c.me.get()
    path = save_config(
        base_url=base,
        api_key=checking.api_key,
        token=checking.token,
        profile=profile,
        clear=True,
    )
    out().print(
        f"Logged in to {base} as {me.email or me.id} ({_s(me.tier)}, {me.credit_balance}"
        f" credits); saved to {path}",
        markup=False,
    )


@app.command()
@handled
def signup(
    email: Annotated[str, typer.Argument(help="The new account's email.")],
    full_name: Annotated[
        str | None, typer.Option("--name", help="Your name, as the account shows it.")
    ] = None,
    no_password: Annotated[
        bool,
        typer.Option(
            "--no-password",
            help="Do not set a password (the API key alone; set one later with the API).",
        ),
    ] = False,
) -> None:
    """Create an account, save its first API key in the config file like `automl login`
    does (the key is shown by the API once: it is kept, never printed), and set the
    account's password (asked for, not echoed) for `automl login --email`."""
    profile = state.profile or load_config(use_env=False, profile=state.profile).profile
    base = state.base_url or load_config(profile=profile).base_url
    password = None
    if not no_password:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with make_client(Config(base_url=base, profile=profile)) as anonymous:
        created = anonymous.users.create(email, full_name=full_name)
    key = created.api_key.key
    # Saved before anything else can fail: the API shows this key only once.
    path = save_config(base_url=base, api_key=key, profile=profile, clear=True)
    user = created.user
    if password is not None:
        with make_client(Config(base_url=base, api_key=key, profile=profile)) as c:
            try:
                c.me.change_password(password)
            except errors.ApiError as exc:
                fail(
                    f"account {user.email or user.id} created and its key saved to {path},"
                    f" but the password was refused: {_api_message(exc)}",
                    EXIT_API,
                )
    out().print(
        f"Signed up to {base} as {user.email or user.id} ({_s(user.tier)},"
        f" {user.credit_balance} credits); API key saved to {path}"
        + ("" if password is not None else " (no password set)"),
        markup=False,
    )


@app.command()
@handled
def logout() -> None:
    """Forget the saved credentials of the profile (the base URL is kept)."""
    profile = state.profile or load_config(use_env=False).profile
    base = load_config(profile=profile, use_env=False).base_url
    path = save_config(base_url=base, profile=profile, clear=True)
    out().print(f"Logged out ({path})", markup=False)


# --- upload ---------------------------------------------------------------------------------
def _transfer(label: str) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err(),
        transient=True,
    )


@app.command()
@handled
def upload(
    file: Annotated[
        Path,
        typer.Argument(
            help="A CSV, JSON, Parquet or Excel file.", exists=True, dir_okay=False, readable=True
        ),
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="The dataset's name (default: the file's stem).")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="The column to predict.")] = None,
    problem_type: Annotated[
        str | None, typer.Option("--problem-type", help="classification or regression.")
    ] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the upload is ingested.")
    ] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait at most.")] = 600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Upload a file as a new dataset (progress bar), then wait for its ingestion."""
    c = client()
    size = file.stat().st_size
    with _transfer("upload") as bar:
        task = bar.add_task(f"uploading {file.name}", total=size or None)

        def progress(sent: int, total: int | None) -> None:
            bar.update(task, completed=sent, total=total or size or None)

        uploaded = c.datasets.upload(
            file,
            name or file.stem,
            description=description,
            problem_type=problem_type,
            target_column=target,
            filename=file.name,
            progress=progress,
        )
    result: Any = uploaded
    if wait:
        with err().status("ingesting…"):
            result = c.datasets.wait_ready(uploaded, timeout=timeout)
    if as_json:
        dump(result)
        return
    version = uploaded.version
    line = (
        f"dataset {uploaded.dataset.id} ({uploaded.dataset.name}), version {version.version_number}"
    )
    if wait:
        ready = max(result.versions, key=lambda v: v.version_number)
        line += f": ingested, {ready.row_count} rows x {ready.column_count} columns"
    else:
        line += f": {_s(version.status)}"
    out().print(line, markup=False)


# --- run, status, logs ----------------------------------------------------------------------
def _follow(c: automl.Client, job_id: str, timeout: float) -> m.JobDetail:
    """The job's progress (nodes done of all) over its event stream, until it ends."""
    detail = c.jobs.get(job_id)
    done = {n.node_id for n in detail.nodes if _s(n.status) in NODE_DONE}
    console = err()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(
            f"job {_s(detail.status)}", total=len(detail.nodes) or None, completed=len(done)
        )

        def on_event(event: automl.ServerEvent) -> None:
            data = event.json() or {}
            if event.event == "status":
                bar.update(task, description=f"job {data.get('status')}")
            elif event.event == "node":
                if data.get("status") in NODE_DONE:
                    done.add(str(data.get("node_id")))
                what = data.get("progress_message") or data.get("status")
                bar.update(task, completed=len(done), description=f"{data.get('node_id')}: {what}")
            elif event.event == "log" and data.get("level") in ("warning", "error"):
                bar.console.print(f"{data.get('level')}: {data.get('message')}", markup=False)

        return c.jobs.wait(job_id, timeout=timeout, on_event=on_event)


def _job_summary(job: m.JobDetail) -> None:
    console = out()
    console.print(
        f"job {job.id}: {_s(job.status)} ({job.credit_cost} credits)"
        + (f": {job.error_message}" if job.error_message else ""),
        markup=False,
    )
    table = Table("node", "type", "status", "progress", "message", box=None)
    for node in job.nodes:
        table.add_row(
            node.node_id,
            _s(node.node_type),
            _s(node.status),
            f"{node.progress:.0%}",
            node.error_message or node.progress_message or "",
        )
    if job.nodes:
        console.print(table)
    results = job.results or {}
    for model_id in results.get("models") or []:
        console.print(f"model {model_id}", markup=False)
    for node in job.nodes:
        registered = (node.output_data or {}).get("registered")
        if isinstance(registered, dict):
            alias = f", alias {registered['alias']}" if registered.get("alias") else ""
            console.print(
                f"registered {registered.get('name')} version {registered.get('version')}"
                f" ({registered.get('model_version_id')}){alias}",
                markup=False,
            )
    metrics = results.get("metrics")
    if isinstance(metrics, dict) and metrics:
        scores = Table("node", "metric", "value", box=None)
        for node_id, values in metrics.items():
            pairs = values.items() if isinstance(values, dict) else [("", values)]
            for key, value in pairs:
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                scores.add_row(str(node_id), str(key), shown)
        console.print(scores)


def _finished(job: m.JobDetail) -> None:
    if _s(job.status) != "completed":
        fail(
            f"job {job.id} {_s(job.status)}"
            + (f": {job.error_message}" if job.error_message else ""),
            EXIT_FAILED,
        )


@app.command()
@handled
def run(
    workflow: Annotated[
        str | None, typer.Argument(help="The workflow's id (or give --file).")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help='A workflow as JSON ({"name", "definition"} or the definition alone):'
            " created, then run.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The new workflow's name (with --file).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the job until it ends.")
    ] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait at most.")] = 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Run a workflow (charged from your credits) and follow its job (progress bar)."""
    if (workflow is None) == (file is None):
        fail("give a workflow id or --file, one of them", EXIT_USAGE)
    c = client()
    if file is not None:
        try:
            given = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            fail(f"{file}: not JSON: {exc}", EXIT_USAGE)
        if not isinstance(given, dict):
            fail(f"{file}: a JSON object is expected", EXIT_USAGE)
        definition = given.get("definition", given)
        created = c.workflows.create(name or given.get("name") or file.stem, definition)
        out().print(f"workflow {created.id} ({created.name})", markup=False)
        workflow = str(created.id)
    assert workflow is not None
    try:
        started = c.workflows.run(workflow)
    except errors.ApiError:
        if file is not None:  # created but not run: say how to run it, not create another
            err().print(f"the workflow is saved: `automl run {workflow}` runs it", markup=False)
        raise
    job_id = str(started.job.id)
    if not wait:
        if as_json:
            dump(started)
        else:
            out().print(
                f"job {job_id}: {_s(started.job.status)} ({started.job.credit_cost} credits;"
                f" balance {started.balance})",
                markup=False,
            )
        return
    job = _follow(c, job_id, timeout)
    if as_json:
        dump(job)
    else:
        _job_summary(job)
    _finished(job)


@app.command()
@handled
def status(
    job: Annotated[
        str | None, typer.Argument(help="A job's id (default: your latest jobs).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100, help="Jobs listed.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """A job and its nodes, or a table of your latest jobs."""
    c = client()
    if job is not None:
        detail = c.jobs.get(job)
        dump(detail) if as_json else _job_summary(detail)
        return
    jobs = c.jobs.list(limit=limit).page().items
    if as_json:
        dump(jobs)
        return
    table = Table("id", "status", "credits", "created", "finished", "waiting for", box=None)
    for item in jobs:
        table.add_row(
            str(item.id),
            _s(item.status),
            str(item.credit_cost),
            _when(item.created_at),
            _when(item.completed_at),
            item.waiting_for or "",
        )
    out().print(table) if jobs else out().print("no jobs yet")


@app.command()
@handled
def logs(
    job: Annotated[str, typer.Argument(help="The job's id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
    level: Annotated[
        list[str] | None, typer.Option("--level", help="Only these levels (repeat the option).")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="With --follow: seconds at most.")
    ] = 3600.0,
) -> None:
    """A job's log lines, oldest first (--follow: as they come, until it ends)."""
    c = client()
    console = out()

    def show(line: dict[str, Any]) -> None:
        if level and line.get("level") not in level:
            return
        node = f" [{line['node_id']}]" if line.get("node_id") else ""
        when = str(line.get("created_at", ""))[:19]
        console.print(
            f"{when} {line.get('level', '')}{node} {line.get('message', '')}",
            markup=False,
            soft_wrap=True,
        )

    if not follow:
        for item in c.jobs.logs(job, level=level or None):
            show(item.model_dump(mode="json"))
        return

    def on_event(event: automl.ServerEvent) -> None:
        if event.event == "log":
            show(event.json() or {})

    ended = c.jobs.events(job, on_event=on_event, timeout=timeout)
    if ended is None:
        fail(f"job {job} had not ended after {timeout:g} s", EXIT_TIMEOUT)
    final = (ended.json() or {}).get("status")
    if final != "completed":
        fail(f"job {job} {final}", EXIT_FAILED)


# --- models, predict, download --------------------------------------------------------------
@app.command()
@handled
def models(
    model: Annotated[str | None, typer.Argument(help="A model's id: its metrics.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Models listed at most.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Your trained models (a table), or one model with its metrics."""
    c = client()
    console = out()
    if model is not None:
        detail = c.models.get(model)
        if as_json:
            dump(detail)
            return
        console.print(
            f"model {detail.id}: {detail.name} ({detail.algorithm}, {_s(detail.problem_type)})"
            f"{', deployed' if detail.is_deployed else ''}",
            markup=False,
        )
        table = Table("metric", "value", box=None)
        for key, value in sorted(detail.metrics.items()):
            table.add_row(str(key), f"{value:.4g}" if isinstance(value, float) else str(value))
        console.print(table)
        return
    items = []
    for item in c.models.list():
        items.append(item)
        if len(items) >= limit:
            break
    if as_json:
        dump(items)
        return
    if not items:
        console.print("no models yet: `automl run` trains some")
        return
    table = Table("id", "name", "algorithm", "problem", "deployed", "created", box=None)
    for item in items:
        table.add_row(
            str(item.id),
            item.name,
            item.algorithm,
            _s(item.problem_type),
            "yes" if item.is_deployed else "",
            _when(item.created_at),
        )
    console.print(table)


def _read_rows(source: str) -> Any:
    """CSV text, Parquet bytes or JSON records from a file, or from stdin (``-``)."""
    if source == "-":
        text = sys.stdin.read()
        stripped = text.lstrip()
        return json.loads(text) if stripped[:1] in ("[", "{") else text
    path = Path(source)
    if not path.is_file():
        fail(f"{source}: no such file", EXIT_USAGE)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return path.read_bytes()
    if suffix == ".json":
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            fail(f"{source}: not JSON: {exc}", EXIT_USAGE)
    return path.read_text(encoding="utf-8")


@app.command()
@handled
def predict(
    deployment: Annotated[str, typer.Argument(help="The deployment's id.")],
    source: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="Rows: a CSV, JSON (records) or Parquet file; - reads CSV or JSON from stdin.",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Predictions of a deployed model for rows (a table: one line a row)."""
    c = client()
    rows = _read_rows(source)
    answer = c.deployments.predict(deployment, rows)
    if as_json:
        dump(answer)
        return
    headers = ["row", "prediction"]
    if answer.probabilities:
        headers.append("probability")
    table = Table(*headers, box=None)
    for i, value in enumerate(answer.predictions):
        cells = [str(i), str(value)]
        if answer.probabilities:
            cells.append(f"{max(answer.probabilities[i].values()):.3f}")
        table.add_row(*cells)
    out().print(table)


@app.command()
@handled
def download(
    version: Annotated[
        str, typer.Argument(help="A model version's id (or a model's, with --model).")
    ],
    format: Annotated[
        str | None, typer.Option("--format", help="joblib, skops, onnx or mlflow (a zip).")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="A file, or a folder for the server's file name.")
    ] = Path("."),
    model: Annotated[
        bool, typer.Option("--model", help="The id is a trained model's: its joblib artifact.")
    ] = False,
) -> None:
    """Download a model version in a format (or a model's artifact), with a progress bar."""
    c = client()
    with _transfer("download") as bar:
        task = bar.add_task("downloading", total=None)

        def progress(received: int, total: int | None) -> None:
            bar.update(task, completed=received, total=total)

        if model:
            if format not in (None, "joblib"):
                fail("--model downloads the joblib artifact: no --format", EXIT_USAGE)
            path = c.models.download_artifact(version, output, progress=progress)
        else:
            path = c.model_versions.download(version, format, output, progress=progress)
    size = Path(path).stat().st_size if Path(path).is_file() else None
    out().print(f"{path}" + (f" ({size} bytes)" if size is not None else ""), markup=False)


def main(argv: list[str] | None = None) -> None:
    """The ``automl`` command."""
    app(args=argv, prog_name="automl")


__all__ = ["app", "main", "make_client"]
