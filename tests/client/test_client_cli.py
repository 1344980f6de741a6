"""The user CLI ``automl`` (automl.cli) against the real API: typer's CliRunner, the
commands' client pointed at the test app, a real worker running in the background.

A new user's session, as the README walks it: log in, upload (progress, then the
ingestion waited for), run a workflow from a JSON file (followed to its end), look at
the job, its logs and the models, predict with a deployment, download the model. And
the expected failures: one line on stderr, no traceback, the documented exit code.
"""

from __future__ import annotations

import json
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import joblib
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_iris
from sqlalchemy import Engine
from typer.testing import CliRunner, Result

import automl
from api.settings import ApiSettings
from automl.cli import app as cli_app
from automl.cli.commands import (
    EXIT_API,
    EXIT_AUTH,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
)
from automl.config import read_config_file
from pipeline.storage import make_storage
from workers.main import Worker
from workers.settings import WorkerSettings

from client_helpers import new_user

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

BASE = "http://testserver"


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config" / "automl.toml"
    monkeypatch.setenv("AUTOML_CONFIG", str(path))
    return path


@pytest.fixture
def cli(
    http: TestClient, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """``automl ARGS`` with its client sending through the test app."""
    import automl.cli.commands as module

    def make_client(config: automl.Config) -> automl.Client:
        return automl.Client(config=config, http_client=http)

    monkeypatch.setattr(module, "make_client", make_client)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        module.state.profile = module.state.base_url = module.state.api_key = None
        return runner.invoke(cli_app, list(args), input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def worker(engine: Engine, api_settings: ApiSettings) -> Iterator[Worker]:
    """A worker running in the background, as ``make run`` has one."""
    settings = WorkerSettings(
        slots=1,
        lease_seconds=30,
        purge_hours=0,
        poll_seconds=0.5,
        data_dir=api_settings.data_dir,
        storage_url=str(api_settings.storage_url),
    )
    w = Worker(engine, make_storage(str(api_settings.storage_url)), settings)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(60)


def one_line_error(result: Result, code: int, *needles: str) -> str:
    """An expected failure: the exit code, one ``error:`` line on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def iris_csv(path: Path) -> Path:
    data = load_iris(as_frame=True)
    frame = data.frame
    frame["species"] = frame.pop("target").map(dict(enumerate(data.target_names)))
    frame.to_csv(path, index=False)
    return path


def test_help_and_version_exit_0_without_side_effects(
    cli: Callable[..., Result], config_file: Path
) -> None:
    for args in (
        ["--help"],
        ["-h"],
        ["--version"],
        *[
            [c, "--help"]
            for c in (
                "login",
                "signup",
                "logout",
                "upload",
                "run",
                "status",
                "logs",
                "models",
                "predict",
                "download",
            )
        ],
    ):
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output)
    assert cli("--version").stdout.strip() == f"automl {automl.__version__}"
    assert "Exit codes" in cli("--help").stdout
    assert not config_file.exists()


def test_a_new_users_session(
    cli: Callable[..., Result],
    http: TestClient,
    credits: Callable[[automl.Client, int], None],
    worker: Worker,
    config_file: Path,
    tmp_path: Path,
) -> None:
    user = new_user(http)
    key = user.config.api_key
    assert key is not None

    # Not logged in: one line, exit 3.
    one_line_error(cli("models"), EXIT_AUTH, "not logged in", "automl login")
    # A wrong key is refused and nothing is saved.
    one_line_error(cli("--base-url", BASE, "login", input="aml_wrong\n"), EXIT_AUTH, "automl login")
    assert not config_file.exists()
    # The right key, asked for without echo; saved with the base URL, owner-only.
    logged = cli("--base-url", BASE, "login", input=f"{key}\n")
    assert logged.exit_code == 0, logged.output
    assert "Logged in" in logged.stdout and key not in logged.output
    assert read_config_file(config_file)["default"] == {"base_url": BASE, "api_key": key}
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600

    credits(user, 500)
    csv = iris_csv(tmp_path / "iris.csv")
    uploaded = cli("upload", str(csv), "--target", "species", "--problem-type", "classification")
    assert uploaded.exit_code == 0, uploaded.output
    assert "ingested, 150 rows x 5 columns" in uploaded.stdout
    dataset_id = uploaded.stdout.split()[1]
    uuid.UUID(dataset_id)

    workflow = {
        "name": "iris from the cli",
        "definition": {
            "nodes": [
                {"id": "data", "type": "dataset", "config": {"dataset_id": dataset_id}},
                {"id": "prep", "type": "preprocess", "config": {"test_size": 0.3}},
                {
                    "id": "train",
                    "type": "model",
                    "config": {"algorithm": "logistic_regression", "hyperparameters": {}},
                },
                {"id": "keep", "type": "save", "config": {"name": "iris cli model"}},
            ],
            "edges": [
                {"source": "data", "target": "prep"},
                {"source": "prep", "target": "train"},
                {"source": "train", "target": "keep"},
            ],
        },
    }
    (tmp_path / "workflow.json").write_text(json.dumps(workflow))
    ran = cli("run", "--file", str(tmp_path / "workflow.json"), "--timeout", "120")
    assert ran.exit_code == 0, ran.output
    job_line = next(line for line in ran.stdout.splitlines() if line.startswith("job "))
    job_id = job_line.split()[1].rstrip(":")
    assert "completed" in job_line
    assert "train" in ran.stdout and "success" in ran.stdout

    listed = cli("status")
    assert listed.exit_code == 0 and job_id in listed.stdout and "completed" in listed.stdout
    detail = cli("status", job_id, "--json")
    assert detail.exit_code == 0
    assert json.loads(detail.stdout)["status"] == "completed"

    logs = cli("logs", job_id)
    assert logs.exit_code == 0 and logs.stdout.strip(), logs.output
    followed = cli("logs", job_id, "--follow", "--timeout", "30")
    assert followed.exit_code == 0, followed.output
    assert followed.stdout == logs.stdout

    models = cli("models")
    assert models.exit_code == 0 and "iris cli model" in models.stdout
    [model] = user.models.list().all()
    shown = cli("models", str(model.id))
    assert shown.exit_code == 0 and "accuracy" in shown.stdout

    # A deployment (through the Python client), then predictions from the CLI.
    registered = user.registered_models.create("iris-cli")
    version = user.registered_models.register_version(registered, model)
    deployment = user.deployments.create("iris-cli-live", model_version_id=version)
    rows = pd.read_csv(csv).drop(columns=["species"]).head(4)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    predicted = cli("predict", str(deployment.id), str(tmp_path / "rows.csv"))
    assert predicted.exit_code == 0, predicted.output
    assert "setosa" in predicted.stdout and "probability" in predicted.stdout
    (tmp_path / "rows.json").write_text(rows.to_json(orient="records"))
    as_json = cli("predict", str(deployment.id), str(tmp_path / "rows.json"), "--json")
    assert as_json.exit_code == 0, as_json.output
    assert len(json.loads(as_json.stdout)["predictions"]) == 4

    target = tmp_path / "model.joblib"
    downloaded = cli("download", str(version.id), "--format", "joblib", "-o", str(target))
    assert downloaded.exit_code == 0, downloaded.output
    assert str(target) in downloaded.stdout
    assert hasattr(joblib.load(target), "predict")
    artifact = cli("download", str(model.id), "--model", "-o", str(tmp_path))
    assert artifact.exit_code == 0, artifact.output

    # Expected failures: one line each, the documented code.
    one_line_error(cli("status", str(uuid.uuid4())), EXIT_NOT_FOUND, "not_found")
    one_line_error(cli("status", "not-a-job"), EXIT_API)
    one_line_error(cli("predict", str(uuid.uuid4()), str(tmp_path / "rows.csv")), EXIT_NOT_FOUND)
    (tmp_path / "bad.json").write_text("{not json")
    one_line_error(cli("predict", str(deployment.id), str(tmp_path / "bad.json")), EXIT_USAGE)
    one_line_error(cli("run", "--file", str(tmp_path / "bad.json")), EXIT_USAGE, "not JSON")
    (tmp_path / "empty.csv").write_bytes(b"")
    one_line_error(cli("upload", str(tmp_path / "empty.csv"), "--no-wait"), EXIT_API)
    (tmp_path / "nul.csv").write_bytes(b"a,b\n1,\x00\n")
    nul = cli("upload", str(tmp_path / "nul.csv"), "--no-wait")
    assert nul.exit_code in (0, EXIT_API) and "Traceback" not in nul.output
    one_line_error(cli("--api-key", "aml_\x00bad", "models"), EXIT_AUTH)

    # Another user's workflow does not exist for them.
    poor = new_user(http)
    poor_key = poor.config.api_key
    assert poor_key is not None
    workflow_id = user.workflows.list().first().id  # type: ignore[union-attr]
    one_line_error(cli("--api-key", poor_key, "run", str(workflow_id)), EXIT_NOT_FOUND)


def test_usage_errors_exit_2(cli: Callable[..., Result], http: TestClient) -> None:
    user = new_user(http)
    assert user.config.api_key is not None
    result = cli("--api-key", user.config.api_key, "run")
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output
    result = cli("--api-key", user.config.api_key, "upload", "/no/such/file.csv")
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output
    result = cli("no-such-command")
    assert result.exit_code == EXIT_USAGE


def test_logout_forgets_the_key(
    cli: Callable[..., Result], http: TestClient, config_file: Path
) -> None:
    user = new_user(http)
    key = user.config.api_key
    assert key is not None
    assert cli("--base-url", BASE, "login", "--key", key).exit_code == 0
    assert cli("models").exit_code == 0
    assert cli("logout").exit_code == 0
    assert read_config_file(config_file)["default"] == {"base_url": BASE}
    one_line_error(cli("models"), EXIT_AUTH, "not logged in")


def test_signup_saves_the_key_and_sets_the_password(
    cli: Callable[..., Result], http: TestClient, config_file: Path
) -> None:
    """``automl signup``: the account made, its key saved (never printed) as ``login``
    saves one, the password asked for twice without echo and set, so that ``automl
    login --email`` works with it; a second sign-up of the email is one line, exit 1."""
    email = f"signup-{uuid.uuid4().hex[:8]}@example.com"
    password = "correct horse battery staple"
    result = cli("--base-url", BASE, "signup", email, "--name", "Ada", input=f"{password}\n" * 2)
    assert result.exit_code == 0, result.output
    assert f"Signed up to {BASE} as {email}" in result.stdout
    saved = read_config_file(config_file)["default"]
    assert saved["base_url"] == BASE and saved["api_key"].startswith("aml_")
    assert saved["api_key"] not in result.output and password not in result.output
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    me = cli("models")  # the saved key works
    assert me.exit_code == 0, me.output
    # The password was set: a login with it (a session) is accepted and saved.
    logged = cli("--base-url", BASE, "login", "--email", email, input=f"{password}\n")
    assert logged.exit_code == 0, logged.output
    assert "token" in read_config_file(config_file)["default"]

    again = cli("--base-url", BASE, "signup", email, "--no-password")
    one_line_error(again, EXIT_API)
    # a refused sign-up saves nothing: the session of the login above is kept
    assert "token" in read_config_file(config_file)["default"]


def test_signup_with_a_refused_password_keeps_the_key(
    cli: Callable[..., Result], http: TestClient, config_file: Path
) -> None:
    email = f"signup-{uuid.uuid4().hex[:8]}@example.com"
    result = cli("--base-url", BASE, "signup", email, input="x\nx\n")
    line = one_line_error(result, EXIT_API, "created and its key saved", "password was refused")
    assert "aml_" not in line
    assert read_config_file(config_file)["default"]["api_key"].startswith("aml_")
    # --no-password: the key alone
    other = f"signup-{uuid.uuid4().hex[:8]}@example.com"
    result = cli("--base-url", BASE, "signup", other, "--no-password")
    assert result.exit_code == 0 and "(no password set)" in result.stdout, result.output
