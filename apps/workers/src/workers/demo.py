"""A model registry a newcomer can explore: ``automl-db seed --demo`` (issue 13).

Three demo users, their datasets (scikit-learn's bundled iris, diabetes and breast
cancer sets), real models trained in this process and a registry around them:

- **ada@demo.test** owns ``iris-species`` (shared; grace may download it) with four
  versions: logistic regression, a random forest, the forest ``tuned_from`` it, and
  the tuned forest ``retrained_from`` on the iris set's second version; aliases
  ``champion`` (the best accuracy) and ``challenger`` (the runner-up); and
  ``diabetes-progression`` (public: anyone may read and download it) with two
  versions, the second ``tuned_from`` the first;
- **grace@demo.test** owns ``breast-cancer-screening`` (private) with two versions;
- **linus@demo.test** owns nothing: public models are what he sees.

Some download history: grace downloads the iris champion, linus is refused it (the
refusal is recorded), an anonymous client downloads the public diabetes model, ada
her own versions. ``download_count`` follows from the table's trigger.

Everything goes through the code the platform runs: files are uploaded and ingested
with the worker's ingestion (``pipeline.ingest.ingest``: CSV upload -> Parquet,
shape, columns, profile) into :mod:`database.storage`; models are trained by the
worker's node code (``pipeline.execute.execute_node``: dataset, preprocess, model,
save, in this process rather than in a job's child) and their joblib bytes written
to storage as the worker writes them; versions, metrics, lineage, aliases, grants
and downloads go through :mod:`database.registry`. There are no jobs: the models'
``job_id`` is NULL (a job's lineage edge would name a job that never ran).

Idempotent: users are found by e-mail, datasets and registered models by their
owner and name; a registered model that has versions already is left alone, so a
second run changes nothing (and says so). The whole seed is one transaction: a
failure leaves nothing behind (the files written are removed).

The demo owner's API key is printed once, when ada is created (as sign-up shows a
key once); only its hash is stored. ``new_key=True`` issues another one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from database import registry
from database.models import (
    APIKey,
    Dataset,
    DatasetProfile,
    DatasetVersion,
    FileFormat,
    IngestionStatus,
    LineageRelation,
    Model,
    ModelFormat,
    ModelPermission,
    ModelVersion,
    ModelVisibility,
    ProblemType,
    RegisteredModel,
    User,
)
from database.progress import Progress
from database.storage import Storage
from pipeline.definition import WorkflowDefinition
from pipeline.execute import LoadedDataset, NodeOutcome, execute_node
from pipeline.ingest import ingest

OWNER = "ada@demo.test"
SHARED_WITH = "grace@demo.test"
OUTSIDER = "linus@demo.test"
USERS = {
    OWNER: "Ada (demo)",
    SHARED_WITH: "Grace (demo)",
    OUTSIDER: "Linus (demo)",
}
KEY_NAME = "demo"


# --- data -------------------------------------------------------------------------


def _iris(version: int) -> pd.DataFrame:
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = bunch.frame.copy()
    frame["species"] = frame.pop("target").map(dict(enumerate(bunch.target_names)))
    if version == 2:  # "new measurements": 30 rows jittered, fixed seed
        import numpy as np

        extra = frame.sample(30, random_state=2).copy()
        numeric = extra.columns.drop("species")
        jitter = np.random.default_rng(2).normal(0, 0.05, size=(30, len(numeric)))
        extra[numeric] = (extra[numeric] + jitter).round(2)
        frame = pd.concat([frame, extra], ignore_index=True)
    return frame


def _diabetes(version: int) -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame.copy()
    return frame.rename(columns={"target": "progression"})


def _breast_cancer(version: int) -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.copy()
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    frame["diagnosis"] = frame.pop("target").map(dict(enumerate(bunch.target_names)))
    return frame


@dataclass(frozen=True)
class DemoDataset:
    owner: str
    name: str
    description: str
    problem_type: ProblemType
    target: str
    load: Callable[[int], pd.DataFrame]
    versions: int = 1


DATASETS = [
    DemoDataset(
        OWNER,
        "iris",
        "Fisher's iris flowers (scikit-learn); version 2 adds 30 new measurements.",
        ProblemType.CLASSIFICATION,
        "species",
        _iris,
        versions=2,
    ),
    DemoDataset(
        OWNER,
        "diabetes",
        "Disease progression one year after baseline (scikit-learn).",
        ProblemType.REGRESSION,
        "progression",
        _diabetes,
    ),
    DemoDataset(
        SHARED_WITH,
        "breast-cancer",
        "Wisconsin diagnostic breast cancer (scikit-learn).",
        ProblemType.CLASSIFICATION,
        "diagnosis",
        _breast_cancer,
    ),
]


@dataclass(frozen=True)
class DemoVersion:
    algorithm: str
    hyperparameters: dict[str, Any]
    dataset_version: int = 1
    #: (relation, index of the parent among this model's versions)
    parent: tuple[LineageRelation, int] | None = None
    description: str = ""


@dataclass(frozen=True)
class DemoModel:
    owner: str
    name: str
    dataset: str
    visibility: ModelVisibility
    primary_metric: str
    description: str
    tags: dict[str, str]
    versions: list[DemoVersion]
    license: str = "CC-BY-4.0"


MODELS = [
    DemoModel(
        OWNER,
        "iris-species",
        "iris",
        ModelVisibility.SHARED,
        "accuracy",
        "Tells iris setosa, versicolor and virginica apart from four measurements.",
        {"team": "botany", "domain": "flowers"},
        [
            DemoVersion("logistic_regression", {"max_iter": 500}, description="a baseline"),
            DemoVersion("random_forest", {"n_estimators": 30}, description="a first forest"),
            DemoVersion(
                "random_forest",
                {"n_estimators": 100, "max_depth": 4},
                parent=(LineageRelation.TUNED_FROM, 1),
                description="the forest, tuned",
            ),
            DemoVersion(
                "random_forest",
                {"n_estimators": 100, "max_depth": 4},
                dataset_version=2,
                parent=(LineageRelation.RETRAINED_FROM, 2),
                description="the tuned forest retrained on the iris set's version 2",
            ),
        ],
    ),
    DemoModel(
        OWNER,
        "diabetes-progression",
        "diabetes",
        ModelVisibility.PUBLIC,
        "r2",
        "Predicts disease progression from ten baseline variables.",
        {"team": "clinic", "domain": "health"},
        [
            DemoVersion("ridge", {"alpha": 1.0}, description="a linear baseline"),
            DemoVersion(
                "gradient_boosting",
                {"n_estimators": 100, "max_depth": 2, "learning_rate": 0.05},
                parent=(LineageRelation.TUNED_FROM, 0),
                description="boosted trees, tuned from the baseline's setup",
            ),
        ],
    ),
    DemoModel(
        SHARED_WITH,
        "breast-cancer-screening",
        "breast-cancer",
        ModelVisibility.PRIVATE,
        "f1",
        "Malignant or benign, from a fine needle aspirate's 30 measurements.",
        {"team": "clinic", "domain": "health"},
        [
            DemoVersion("logistic_regression", {"max_iter": 2000}, description="a baseline"),
            DemoVersion(
                "gradient_boosting",
                {"n_estimators": 150},
                parent=(LineageRelation.RETRAINED_FROM, 0),
                description="boosted trees on the same data",
            ),
        ],
    ),
]

MODEL_CARD = """# {name}

{description}

- **Data**: the demo dataset `{dataset}` (scikit-learn's bundled copy).
- **Evaluation**: a held-out 20% split; the version's metrics are on that split.
- **Limits**: a demonstration model, trained in seconds; not for real decisions.
"""


# --- report -----------------------------------------------------------------------


@dataclass
class DemoReport:
    created: dict[str, int] = field(
        default_factory=lambda: {
            "users": 0,
            "datasets": 0,
            "dataset versions": 0,
            "registered models": 0,
            "versions": 0,
            "downloads": 0,
        }
    )
    #: The plain API key issued in this run (shown once by ``render``; never in a repr).
    api_key: str | None = field(default=None, repr=False)
    api_key_owner: str | None = None
    summary: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(self.created.values()) or self.api_key is not None

    def render(self) -> str:
        made = ", ".join(f"{n} {what}" for what, n in self.created.items() if n)
        lines = [
            f"seed --demo: created {made}"
            if made
            else "seed --demo: the demo registry is there already; nothing changed"
        ]
        lines.extend(f"  {line}" for line in self.summary)
        if self.api_key:
            lines.append(
                f"API key of {self.api_key_owner} (shown this once; only its hash is kept):"
                f" {self.api_key}"
            )
        elif self.created["users"] == 0:
            lines.append(
                f"API keys are shown only when created: `automl-db seed --demo --new-key`"
                f" issues another one for {OWNER}"
            )
        return "\n".join(lines)


# --- seeding ----------------------------------------------------------------------


class _Run:
    def __init__(self, session: Session, storage: Storage, report: DemoReport) -> None:
        self.session = session
        self.storage = storage
        self.report = report
        self.written: list[str] = []
        self.users: dict[str, uuid.UUID] = {}
        self.dataset_versions: dict[tuple[str, int], tuple[uuid.UUID, pd.DataFrame]] = {}

    def user(self, email: str) -> uuid.UUID:
        found = self.session.scalar(select(User.id).where(User.email == email))
        if found is not None:
            return found
        user = User(email=email, full_name=USERS[email], email_verified=True)
        self.session.add(user)
        self.session.flush()
        self.report.created["users"] += 1
        if email == OWNER:
            self.issue_key(user.id, email)
        return user.id

    def issue_key(self, user_id: uuid.UUID, email: str) -> None:
        # The API's key format and hash (the key a client sends as a Bearer token).
        from api.deps import ALL_SCOPES, new_api_key

        plain, prefix, digest = new_api_key()
        self.session.add(
            APIKey(
                user_id=user_id,
                name=KEY_NAME,
                prefix=prefix,
                key_hash=digest,
                scopes=list(ALL_SCOPES),
            )
        )
        self.session.flush()
        self.report.api_key, self.report.api_key_owner = plain, email

    def dataset(self, spec: DemoDataset) -> None:
        user_id = self.users[spec.owner]
        dataset = self.session.scalar(
            select(Dataset).where(Dataset.user_id == user_id, Dataset.name == spec.name)
        )
        if dataset is None:
            dataset = Dataset(
                user_id=user_id,
                name=spec.name,
                description=spec.description,
                problem_type=spec.problem_type,
                target_column=spec.target,
            )
            self.session.add(dataset)
            self.session.flush()
            self.report.created["datasets"] += 1
        for number in range(1, spec.versions + 1):
            version = self.session.scalar(
                select(DatasetVersion).where(
                    DatasetVersion.dataset_id == dataset.id,
                    DatasetVersion.version_number == number,
                )
            )
            frame = spec.load(number)
            if version is None:
                version = self._upload(dataset, spec, number, frame)
            self.dataset_versions[(spec.name, number)] = (version.id, frame)

    def _upload(
        self, dataset: Dataset, spec: DemoDataset, number: int, frame: pd.DataFrame
    ) -> DatasetVersion:
        """The upload and its ingestion, as the API and the ingestion worker do them."""
        version_id = uuid.uuid4()
        filename = f"{spec.name}-v{number}.csv"
        data = frame.to_csv(index=False).encode()
        upload = self.storage.write_bytes(
            f"uploads/{dataset.user_id}/{dataset.id}/{version_id}/{filename}", data
        )
        self.written.append(upload)
        key = f"datasets/{dataset.user_id}/{dataset.id}/{version_id}/{uuid.uuid4().hex}.parquet"
        done = ingest(self.storage, upload, "csv", key, filename=filename)
        self.written.append(done.location)
        version = DatasetVersion(
            id=version_id,
            dataset_id=dataset.id,
            user_id=dataset.user_id,
            version_label=f"demo v{number}",
            original_filename=filename,
            original_format=FileFormat.CSV,
            original_size_bytes=len(data),
            s3_path=done.location,
            parquet_size_bytes=done.parquet_size_bytes,
            row_count=done.row_count,
            column_count=done.column_count,
            columns_metadata=done.columns_metadata,
            status=IngestionStatus.COMPLETED,
        )
        self.session.add(version)
        self.session.flush()
        self.session.add(DatasetProfile(dataset_version_id=version_id, **done.profile.as_dict()))
        dataset.current_version_id = version_id
        self.session.flush()
        self.report.created["dataset versions"] += 1
        return version

    def train(self, spec: DemoModel, v: DemoVersion, target: str, ptype: ProblemType) -> Any:
        """The worker's nodes on the dataset version: dataset -> preprocess -> model ->
        save; the save node's outcome (joblib bytes and the model row's fields)."""
        _, frame = self.dataset_versions[(spec.dataset, v.dataset_version)]
        definition = WorkflowDefinition.model_validate(
            {
                "nodes": [
                    {"id": "data", "type": "dataset", "config": {}},
                    {"id": "prep", "type": "preprocess", "config": {}},
                    {
                        "id": "train",
                        "type": "model",
                        "config": {
                            "algorithm": v.algorithm,
                            "hyperparameters": v.hyperparameters,
                        },
                    },
                    {"id": "keep", "type": "save", "config": {"name": spec.name}},
                ],
                "edges": [
                    {"source": "data", "target": "prep"},
                    {"source": "prep", "target": "train"},
                    {"source": "train", "target": "keep"},
                ],
            }
        )
        loaded = LoadedDataset(frame, target, ptype, spec.dataset)
        values: dict[str, Any] = {}
        outcome: NodeOutcome | None = None
        for node_id in definition.order():
            outcome = execute_node(definition, node_id, values, lambda _node: loaded)
            values[node_id] = outcome.value
        assert outcome is not None and outcome.artifact is not None and outcome.model
        return outcome, values["train"]

    def registered_model(self, spec: DemoModel, dataset: DemoDataset) -> None:
        user_id = self.users[spec.owner]
        found = self.session.scalar(
            select(RegisteredModel).where(
                RegisteredModel.user_id == user_id, RegisteredModel.name == spec.name
            )
        )
        if found is None:
            found = registry.create_registered_model(
                self.session,
                user_id,
                spec.name,
                description=spec.description,
                model_card=MODEL_CARD.format(
                    name=spec.name, description=spec.description, dataset=spec.dataset
                ),
                license=spec.license,
                tags=spec.tags,
                visibility=spec.visibility,
            )
            self.report.created["registered models"] += 1
        has_versions = self.session.scalar(
            select(ModelVersion.id).where(ModelVersion.registered_model_id == found.id).limit(1)
        )
        if has_versions is not None:
            self.report.summary.append(self._describe(found.id, spec))
            return
        versions: list[ModelVersion] = []
        for v in spec.versions:
            outcome, trained = self.train(spec, v, dataset.target, dataset.problem_type)
            versions.append(
                self._save_and_register(spec, v, found.id, user_id, outcome, trained, versions)
            )
        self._aliases(spec, found.id, versions)
        self.report.summary.append(self._describe(found.id, spec))

    def _save_and_register(
        self,
        spec: DemoModel,
        v: DemoVersion,
        registered_model_id: uuid.UUID,
        user_id: uuid.UUID,
        outcome: NodeOutcome,
        trained: Any,
        earlier: list[ModelVersion],
    ) -> ModelVersion:
        assert outcome.artifact is not None and outcome.model is not None
        model_id = uuid.uuid4()
        # Where the worker puts a saved model (workers.execution), with "demo" for the job.
        location = self.storage.write_bytes(
            f"models/{user_id}/demo/keep-{model_id}.joblib", outcome.artifact
        )
        self.written.append(location)
        record = outcome.model
        self.session.add(
            Model(
                id=model_id,
                user_id=user_id,
                name=record.name,
                algorithm=record.algorithm,
                problem_type=ProblemType(record.problem_type),
                metrics=dict(outcome.output.get("metrics") or {}),
                hyperparameters=dict(outcome.output.get("hyperparameters") or {}),
                s3_path=location,
                size_bytes=len(outcome.artifact),
            )
        )
        self.session.flush()
        features = list(trained.data.features)
        frame = trained.data.x_test[features]
        parent = None
        relation = LineageRelation.RETRAINED_FROM
        if v.parent is not None:
            relation, index = v.parent
            parent = earlier[index].id
        dataset_version_id, _ = self.dataset_versions[(spec.dataset, v.dataset_version)]
        return registry.register_version(
            self.session,
            registered_model_id,
            model_id,
            signature={
                "inputs": [{"name": c, "type": str(frame[c].dtype)} for c in features],
            },
            input_example=_records(frame.head(3)),
            environment=registry.current_environment(),
            metrics=dict(outcome.output.get("metrics") or {}),
            primary_metric=spec.primary_metric,
            description=v.description or None,
            dataset_version_ids=[dataset_version_id],
            parent_version_id=parent,
            parent_relation=relation,
        )

    def _aliases(
        self, spec: DemoModel, registered_model_id: uuid.UUID, versions: list[ModelVersion]
    ) -> None:
        self.report.created["versions"] += len(versions)

        def score(version: ModelVersion) -> float:
            from database.models import ModelVersionMetric

            value = self.session.scalar(
                select(ModelVersionMetric.value).where(
                    ModelVersionMetric.model_version_id == version.id,
                    ModelVersionMetric.metric == spec.primary_metric,
                )
            )
            return float("-inf") if value is None else float(value)

        ranked = sorted(versions, key=lambda x: (score(x), x.version), reverse=True)
        registry.set_alias(self.session, registered_model_id, "champion", ranked[0].version)
        if len(ranked) > 1:
            registry.set_alias(self.session, registered_model_id, "challenger", ranked[1].version)

    def _describe(self, registered_model_id: uuid.UUID, spec: DemoModel) -> str:
        n = self.session.scalar(
            select(RegisteredModel.last_version_number).where(
                RegisteredModel.id == registered_model_id
            )
        )
        return (
            f"{spec.owner} / {spec.name} ({spec.visibility.value}): {n} versions,"
            f" id {registered_model_id}"
        )

    def share_and_download(self) -> None:
        """grace may download iris-species; the download history of the new versions."""
        iris = self._registered(OWNER, "iris-species")
        diabetes = self._registered(OWNER, "diabetes-progression")
        registry.grant_permission(
            self.session,
            iris.id,
            self.users[SHARED_WITH],
            ModelPermission.DOWNLOAD,
            granted_by=self.users[OWNER],
        )
        champion = self._alias_version(iris.id, "champion")
        downloads: list[tuple[uuid.UUID, str | None, ModelFormat, str, str]] = [
            (champion, SHARED_WITH, ModelFormat.JOBLIB, "203.0.113.7", "python-requests/2.32"),
            (champion, SHARED_WITH, ModelFormat.JOBLIB, "203.0.113.7", "python-requests/2.32"),
            (champion, OUTSIDER, ModelFormat.JOBLIB, "198.51.100.4", "curl/8.5"),  # refused
            (champion, OWNER, ModelFormat.JOBLIB, "192.0.2.10", "automl-demo"),
        ]
        for version in self._versions(diabetes.id):
            downloads.append((version, None, ModelFormat.JOBLIB, "198.51.100.23", "curl/8.5"))
        downloads.append(
            (
                self._alias_version(diabetes.id, "champion"),
                OUTSIDER,
                ModelFormat.JOBLIB,
                "198.51.100.4",
                "curl/8.5",
            )
        )
        for version_id, who, fmt, ip, agent in downloads:
            registry.record_download(
                self.session,
                version_id,
                user_id=self.users[who] if who else None,
                format=fmt,
                ip=ip,
                user_agent=agent,
            )
        self.report.created["downloads"] += len(downloads)

    def _registered(self, owner: str, name: str) -> RegisteredModel:
        found = self.session.scalar(
            select(RegisteredModel).where(
                RegisteredModel.user_id == self.users[owner], RegisteredModel.name == name
            )
        )
        assert found is not None
        return found

    def _alias_version(self, registered_model_id: uuid.UUID, alias: str) -> uuid.UUID:
        from database.models import ModelAlias

        found = self.session.scalar(
            select(ModelAlias.model_version_id).where(
                ModelAlias.registered_model_id == registered_model_id, ModelAlias.alias == alias
            )
        )
        assert found is not None
        return found

    def _versions(self, registered_model_id: uuid.UUID) -> list[uuid.UUID]:
        return list(
            self.session.scalars(
                select(ModelVersion.id)
                .where(ModelVersion.registered_model_id == registered_model_id)
                .order_by(ModelVersion.version)
            )
        )


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return list(json.loads(frame.to_json(orient="records")))


def seed_demo(
    engine: Engine, storage: Storage, *, new_key: bool = False, progress: Progress | None = None
) -> DemoReport:
    """Seed the demo registry (see the module doc) in one transaction; the report.
    ``progress(done, total, what)`` (``database.progress``) after each user, data
    set and registered model (its versions trained), and the sharing."""
    report = DemoReport()
    total, done = len(USERS) + len(DATASETS) + len(MODELS) + 1, 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    with Session(engine) as session:
        run = _Run(session, storage, report)
        try:
            with session.begin():
                for email in USERS:
                    run.users[email] = run.user(email)
                    step(f"user {email}")
                if new_key and report.api_key is None:
                    run.issue_key(run.users[OWNER], OWNER)
                for spec in DATASETS:
                    run.dataset(spec)
                    step(f"data set {spec.name}")
                datasets = {d.name: d for d in DATASETS}
                before = report.created["versions"]
                for model in MODELS:
                    run.registered_model(model, datasets[model.dataset])
                    step(f"model {model.name}")
                if report.created["versions"] > before:
                    run.share_and_download()
                step("shared and downloaded")
        except BaseException:
            for location in run.written:
                storage.delete(location)
            report.api_key = None
            raise
    return report


__all__ = ["DATASETS", "MODELS", "OUTSIDER", "OWNER", "SHARED_WITH", "DemoReport", "seed_demo"]
