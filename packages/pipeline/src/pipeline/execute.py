"""Running a workflow definition, one node at a time, with scikit-learn.

Pure: no database, no storage. The worker walks ``definition.order()``, calls
:func:`execute_node` for each node with the values of the nodes before it (in the
job's child process, :mod:`workers.runner`), records each :class:`NodeOutcome`
(``output`` goes to ``job_nodes.output_data``), checks for cancellation while it
runs, and skips everything downstream of a node that raised :class:`NodeFailed`
(``definition.downstream(node_id)``).

What each node type does:

- dataset: the version's frame, from the worker's ``load_dataset``; value
  :class:`LoadedDataset`.
- preprocess: target separated (rows without one dropped), train/test split
  (stratified for classification when every class has two rows), and an unfitted
  ``ColumnTransformer`` (numeric: imputation, scaling; categorical: imputation,
  one-hot or ordinal encoding); value :class:`PreparedData`. The transformer is
  fitted inside the model's ``Pipeline`` on the training rows only.
- model: ``Pipeline([("preprocess", transformer), ("model", estimator)])`` fitted on
  the training rows, holdout metrics on the test rows; value :class:`TrainedModel`.
  A model fed by a dataset node directly uses the default preprocessing.
- visualize: a confusion matrix, feature importances or residuals, in the output.
- save: the fitted pipeline, serialized with joblib (``NodeOutcome.artifact``), and
  the model row's fields (``NodeOutcome.model``). ``joblib.load(...).predict(frame)``
  takes the dataset's raw columns.

Progress: ``execute_node(..., progress=callback)`` calls ``callback(fraction, message)``
at the node's natural steps (data loaded, rows split, fit started, scoring, metrics,
model serialized), with a fraction in 0..1 of the node's work and a short sentence
for its log. Plain values only, so the callback may forward them from a child
process; the worker writes them (``database.joblog.ProgressReporter``).

Every random choice is seeded (``random_state=0`` unless the user gave one), so the
same definition on the same data gives the same metrics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)

from database.models.enums import ModelFormat, NodeType, ProblemType
from database.registry import current_environment
from pipeline import automl, formats
from pipeline import metrics as measure
from pipeline.definition import (
    AutoMLConfig,
    DatasetInfo,
    DefinitionError,
    ModelConfig,
    PreprocessConfig,
    RegisterConfig,
    SaveConfig,
    VisualizeConfig,
    WorkflowDefinition,
    WorkflowNode,
    automl_problems,
    infer_problem_type,
    model_problems,
    supervised_problem_type,
    visualize_problems,
)
from pipeline.estimators import DEFAULT_RANDOM_STATE, build_estimator, is_supervised

#: Points a residuals visualization holds at most (a fixed sample beyond).
MAX_RESIDUAL_POINTS = 1000
#: Features a feature-importance visualization lists at most (the most important).
MAX_IMPORTANCE_FEATURES = 100
#: Column names a dataset node's output lists at most.
MAX_LISTED_COLUMNS = 1000
#: Distinct warnings of a fit kept in the output.
MAX_WARNINGS = 5


class NodeFailed(Exception):
    """A node that cannot produce its output; the message is for the user (no traceback)."""


@dataclass
class LoadedDataset:
    """What the worker's ``load_dataset`` gives: the version's rows and how to read them."""

    frame: pd.DataFrame
    target_column: str | None
    #: The dataset's declared problem type, as frozen in the run's snapshot (its text
    #: value is accepted too).
    problem_type: ProblemType | str | None
    name: str
    #: The dataset's ignored columns (``datasets.ignored_columns``): never features.
    ignored_columns: tuple[str, ...] = ()


@dataclass
class PreparedData:
    """A preprocess node's value: the split rows and the unfitted column transformer."""

    dataset: LoadedDataset
    config: PreprocessConfig
    transformer: ColumnTransformer
    #: The raw columns the transformer reads (what a saved model's ``predict`` needs).
    features: list[str]
    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series | None
    y_test: pd.Series | None
    #: What the target's values say (None without a target).
    target_problem_type: ProblemType | None
    output: dict[str, Any]


@dataclass
class TrainedModel:
    """A model node's value: the fitted pipeline and what it scored on the test rows."""

    pipeline: Pipeline
    algorithm: str
    problem_type: ProblemType
    metrics: dict[str, float]
    #: The hyperparameters the node gave (not the estimator's defaults).
    hyperparameters: dict[str, Any]
    data: PreparedData
    #: The predictions on the test rows.
    predictions: np.ndarray
    #: Fit warnings and why a metric is missing, in words.
    notes: list[str] = field(default_factory=list)

    @property
    def estimator_name(self) -> str:
        return type(self.pipeline[-1]).__name__


@dataclass
class ModelRecord:
    """The fields of the ``models`` row a save node asks the worker to write."""

    name: str
    algorithm: str
    problem_type: ProblemType
    metrics: dict[str, float]
    hyperparameters: dict[str, Any]
    #: What a caller of ``predict`` sends: the feature columns and their types
    #: (:func:`pipeline.formats.signature_of`).
    signature: dict[str, Any] = field(default_factory=dict)
    #: A few training rows of those columns, JSON-safe.
    input_example: list[dict[str, Any]] | None = None
    #: The versions of Python, scikit-learn, numpy and pandas that fitted it.
    environment: dict[str, str] = field(default_factory=dict)
    #: The save node's registration: the registered model's name and alias.
    register: RegisterConfig | None = None


@dataclass
class NodeOutcome:
    #: JSON-safe (no NaN or infinity, no numpy types): ``job_nodes.output_data``.
    output: dict[str, Any]
    #: The in-memory result handed to downstream nodes.
    value: Any
    #: Save node: the serialized model (joblib).
    artifact: bytes | None = None
    #: Save node: the model row's fields.
    model: ModelRecord | None = None


LoadDataset = Callable[[WorkflowNode], LoadedDataset]
#: ``on_interim(save_node_id, trial, outcome)``: what a save node fed by an automl node
#: would save of the search's best trial so far (see :func:`_interim_saver`).
OnInterim = Callable[[str, int, "NodeOutcome"], None]
#: ``progress(fraction, message)``: how far the node is (0..1) and what it just did.
Progress = Callable[[float, str | None], None]


def _silent(fraction: float, message: str | None = None) -> None:
    """The progress callback when none is given."""


def execute_node(
    definition: WorkflowDefinition,
    node_id: str,
    upstream: Mapping[str, Any],
    load_dataset: LoadDataset,
    progress: Progress | None = None,
    *,
    n_jobs: int = 1,
    on_trial: automl.OnTrial | None = None,
    on_interim: OnInterim | None = None,
) -> NodeOutcome:
    """Run node ``node_id`` of ``definition``.

    ``upstream`` maps node ids to the ``value`` of the nodes already run (at least this
    node's inputs); ``load_dataset`` reads a dataset node's version; ``progress`` is
    told of the node's steps; ``n_jobs`` is how many threads a fit may use (given to
    estimators that take ``n_jobs``). Raises :class:`NodeFailed` with a message for the
    user when the node cannot run. An automl node tells ``on_trial`` of each trial of
    its search (:mod:`pipeline.automl`), as plain dicts, and ``on_interim`` of what
    each save node it feeds would save of the best trial so far (kept if the search is
    cancelled before it ends).
    """
    report = progress or _silent
    node = definition.node(node_id)
    try:
        config = node.typed_config()
    except DefinitionError as exc:
        raise NodeFailed(str(exc)) from None
    if node.type == NodeType.DATASET:
        return _dataset(node, load_dataset, report)
    [source] = definition.inputs(node_id)
    if source not in upstream:
        raise ValueError(f"node {node_id!r} runs before its input {source!r}")
    value = upstream[source]
    if isinstance(config, PreprocessConfig):
        prepared = prepare(_expect(value, LoadedDataset, node_id), config)
        report(1.0, _split_message(prepared))
        return NodeOutcome(output=measure.json_safe(prepared.output), value=prepared)
    if isinstance(config, ModelConfig):
        trained = _train(definition, node_id, config, value, report, n_jobs=n_jobs)
        return NodeOutcome(output=measure.json_safe(_model_output(trained)), value=trained)
    if isinstance(config, AutoMLConfig):
        trained, found = _search(
            definition,
            node_id,
            config,
            value,
            report,
            n_jobs=n_jobs,
            on_trial=on_trial,
            on_interim=on_interim,
        )
        output = {**_model_output(trained), "search": found}
        return NodeOutcome(output=measure.json_safe(output), value=trained)
    model = _expect(value, TrainedModel, node_id)
    if isinstance(config, VisualizeConfig):
        problems = visualize_problems(definition, node_id, model.problem_type)
        if problems:
            raise NodeFailed("; ".join(problems))
        output = measure.json_safe({"kind": config.kind, **_visualize(config.kind, model)})
        report(1.0, f"{config.kind.replace('_', ' ')} computed")
        return NodeOutcome(output=output, value=output)
    assert isinstance(config, SaveConfig)
    return _save(config, model, report)


def _expect(value: Any, kind: type, node_id: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"node {node_id!r} got a {type(value).__name__}, not a {kind.__name__}")
    return value


# --- dataset ----------------------------------------------------------------------------------
def _declared(dataset: LoadedDataset) -> ProblemType | None:
    """The dataset's declared problem type (the snapshot holds it as text; an unknown
    value counts as undeclared)."""
    value = dataset.problem_type
    if value is None or isinstance(value, ProblemType):
        return value
    return ProblemType(value) if value in {p.value for p in ProblemType} else None


def _dataset(node: WorkflowNode, load_dataset: LoadDataset, report: Progress) -> NodeOutcome:
    loaded = load_dataset(node)
    frame = loaded.frame
    if not all(isinstance(c, str) for c in frame.columns):
        frame = frame.rename(columns=str)
    if frame.columns.has_duplicates:
        duplicated = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise NodeFailed(f"the dataset has duplicate column names: {', '.join(duplicated[:5])}")
    if frame.empty:
        raise NodeFailed(f"the dataset {loaded.name!r} has no rows")
    target = loaded.target_column
    if target is not None and target not in frame.columns:
        raise NodeFailed(f"the target column {target!r} is not a column of {loaded.name!r}")
    declared = _declared(loaded)
    loaded = LoadedDataset(frame, target, declared, loaded.name)
    problem_type = declared
    if target is not None:
        problem_type = supervised_problem_type(problem_type, infer_problem_type(frame[target]))
    columns = [str(c) for c in frame.columns]
    output = {
        "name": loaded.name,
        "rows": len(frame),
        "columns": len(columns),
        "column_names": columns[:MAX_LISTED_COLUMNS],
        "target_column": target,
        "problem_type": problem_type,
    }
    report(1.0, f"loaded {len(frame)} rows and {len(columns)} columns of {loaded.name!r}")
    return NodeOutcome(output=measure.json_safe(output), value=loaded)


# --- preprocess -------------------------------------------------------------------------------
#: The parts a date column becomes (``date_parts``).
DATE_PARTS = ("year", "month", "day", "day_of_week", "day_of_year", "hour")


def date_parts(frame: Any) -> np.ndarray:
    """Each date column as its year, month, day, day of week, day of year and hour
    (missing stays missing). Module-level, so a saved pipeline can pickle it."""
    frame = pd.DataFrame(frame)
    parts = []
    for name in frame.columns:
        column = pd.to_datetime(frame[name], errors="coerce", utc=True)
        for part in DATE_PARTS:
            parts.append(getattr(column.dt, part).astype("float64").to_numpy())
    return np.column_stack(parts) if parts else np.empty((len(frame), 0))


def _date_names(transformer: Any, names: Any) -> list[str]:
    return [f"{n}_{part}" for n in names for part in DATE_PARTS]


def _identifier(column: pd.Series) -> bool:
    """Every row a different text value (the profile's ``high_cardinality``), or whole
    numbers counting up one by one: an identifier, no feature."""
    values = column.dropna()
    if len(values) < 2 or values.nunique() != len(values):
        return False
    if pd.api.types.is_integer_dtype(values) and not pd.api.types.is_bool_dtype(values):
        ordered = np.sort(values.to_numpy())
        return bool((np.diff(ordered) == 1).all())
    return not pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_datetime64_any_dtype(
        values
    )


def _column_kinds(
    x: pd.DataFrame, keep: frozenset[str] = frozenset()
) -> tuple[list[str], list[str], list[str], dict[str, str]]:
    """numeric, categorical and date columns, and the ignored ones with the reason.
    Identifier and constant columns are left out unless named in ``keep``."""
    numeric: list[str] = []
    categorical: list[str] = []
    dates: list[str] = []
    ignored: dict[str, str] = {}
    for name in x.columns:
        column = x[name]
        if column.isna().all():
            ignored[name] = "no values"
        elif name not in keep and len(column) > 1 and column.nunique(dropna=True) == 1:
            ignored[name] = "constant: a single value"
        elif name not in keep and _identifier(column):
            ignored[name] = "an identifier: every row differs"
        elif pd.api.types.is_bool_dtype(column):
            categorical.append(name)
        elif pd.api.types.is_numeric_dtype(column):
            numeric.append(name)
        elif pd.api.types.is_datetime64_any_dtype(column):
            dates.append(name)
        elif pd.api.types.is_timedelta64_dtype(column):
            ignored[name] = "durations are not features"
        else:
            categorical.append(name)
    return numeric, categorical, dates, ignored


def build_transformer(
    config: PreprocessConfig,
    numeric: list[str],
    categorical: list[str],
    dates: list[str] | None = None,
) -> ColumnTransformer:
    """The unfitted ``ColumnTransformer`` of ``config`` (other columns are dropped)."""
    parts: list[tuple[str, Any, list[str]]] = []
    if dates:
        steps_d: list[tuple[str, Any]] = [
            ("parts", FunctionTransformer(date_parts, feature_names_out=_date_names))
        ]
        if config.impute != "none":
            steps_d.append(("impute", SimpleImputer(strategy="most_frequent")))
        parts.append(("dates", Pipeline(steps_d), dates))
    if numeric:
        steps: list[tuple[str, Any]] = []
        if config.impute != "none":
            steps.append(("impute", SimpleImputer(strategy=config.impute)))
        if config.scale == "standard":
            steps.append(("scale", StandardScaler()))
        elif config.scale == "minmax":
            steps.append(("scale", MinMaxScaler()))
        parts.append(("numeric", Pipeline(steps) if steps else "passthrough", numeric))
    if categorical and config.encode != "none":
        # Text columns may hold pd.NA (nullable dtypes), which the imputer and the
        # encoders refuse: an object array with NaN for every missing value first.
        # pandas' own method, so the saved pipeline needs nothing of this package.
        steps = [
            (
                "objects",
                FunctionTransformer(
                    pd.DataFrame.to_numpy,
                    kw_args={"dtype": object, "na_value": np.nan},
                    feature_names_out="one-to-one",
                ),
            )
        ]
        if config.impute != "none":
            steps.append(("impute", SimpleImputer(strategy="most_frequent")))
        if config.encode == "onehot":
            steps.append(("encode", OneHotEncoder(handle_unknown="ignore")))
        else:
            steps.append(
                (
                    "encode",
                    OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                )
            )
        parts.append(("categorical", Pipeline(steps), categorical))
    return ColumnTransformer(parts, remainder="drop")


def prepare(dataset: LoadedDataset, config: PreprocessConfig) -> PreparedData:
    """A preprocess node's work on ``dataset`` (also a model fed by a dataset directly,
    with the default config)."""
    frame = dataset.frame
    target = dataset.target_column
    dropped_rows = 0
    y: pd.Series | None = None
    if target is not None:
        missing = frame[target].isna()
        dropped_rows = int(missing.sum())
        frame = frame.loc[~missing]
        y = frame[target]
        x = frame.drop(columns=[target])
    else:
        x = frame
    named = [c for c in (config.include or ()) + config.exclude if c not in x.columns]
    if named:
        raise NodeFailed(
            "include / exclude name columns the data does not have: "
            + ", ".join(repr(c) for c in named[:20])
        )
    left_out: dict[str, str] = {}
    for name in dataset.ignored_columns:
        if name in x.columns and name not in (config.include or ()):
            left_out[name] = "ignored by the dataset"
    for name in config.exclude:
        left_out[name] = "excluded"
    if config.include is not None:
        left_out.update({c: "not included" for c in x.columns if c not in config.include})
    x = x.drop(columns=[c for c in x.columns if c in left_out])
    numeric, categorical, dates, ignored = _column_kinds(x, frozenset(config.include or ()))
    ignored = {**left_out, **ignored}
    if config.encode == "none":
        ignored.update({c: "encode is none" for c in categorical})
        categorical = []
    features = [c for c in x.columns if c in set(numeric) | set(categorical) | set(dates)]
    if not features:
        raise NodeFailed("no feature columns are left to learn from")
    rows = len(x)
    test_rows = math.ceil(config.test_size * rows)
    if rows < 2 or rows - test_rows < 1:
        what = "rows with a target value" if target is not None else "rows"
        raise NodeFailed(
            f"the split needs at least 2 {what} and one training row; there are {rows}"
        )
    target_type = infer_problem_type(y) if y is not None else None
    stratify = None
    classification = supervised_problem_type(_declared(dataset), target_type)
    if y is not None and classification == ProblemType.CLASSIFICATION:
        counts = y.value_counts()
        classes = len(counts)
        if counts.min() >= 2 and test_rows >= classes and rows - test_rows >= classes:
            stratify = y
    x = x[features]
    if y is None:
        x_train, x_test = train_test_split(
            x, test_size=config.test_size, random_state=DEFAULT_RANDOM_STATE
        )
        y_train = y_test = None
    else:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=config.test_size, random_state=DEFAULT_RANDOM_STATE, stratify=stratify
        )
    output = {
        "impute": config.impute,
        "scale": config.scale,
        "encode": config.encode,
        "test_size": config.test_size,
        "train_rows": len(x_train),
        "test_rows": len(x_test),
        "dropped_rows": dropped_rows,
        "target_column": target,
        "stratified": stratify is not None,
        "features": features,
        "numeric_features": numeric,
        "categorical_features": categorical,
        "date_features": dates,
        "ignored_columns": ignored,
    }
    return PreparedData(
        dataset=dataset,
        config=config,
        transformer=build_transformer(config, numeric, categorical, dates),
        features=features,
        x_train=x_train,
        x_test=x_test,
        y_train=y_train,
        y_test=y_test,
        target_problem_type=target_type,
        output=output,
    )


def _split_message(prepared: PreparedData) -> str:
    out = prepared.output
    text = (
        f"{out['train_rows']} training rows and {out['test_rows']} test rows"
        f"{' (stratified)' if out['stratified'] else ''}; {len(out['features'])} features"
        f" ({len(out['numeric_features'])} numeric, {len(out['categorical_features'])}"
        " categorical)"
    )
    if out["dropped_rows"]:
        text += f"; {out['dropped_rows']} rows without a target dropped"
    if out["ignored_columns"]:
        text += f"; {len(out['ignored_columns'])} columns ignored"
    return text


# --- model ------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _train(
    definition: WorkflowDefinition,
    node_id: str,
    config: ModelConfig,
    source: Any,
    report: Progress = _silent,
    *,
    n_jobs: int = 1,
) -> TrainedModel:
    if isinstance(source, LoadedDataset):
        data = prepare(source, PreprocessConfig())
        report(0.05, f"default preprocessing: {_split_message(data)}")
    else:
        data = _expect(source, PreparedData, node_id)
    dataset = data.dataset
    info = DatasetInfo(
        problem_type=_declared(dataset),
        target_column=dataset.target_column,
        columns=tuple(str(c) for c in dataset.frame.columns),
        target_problem_type=data.target_problem_type,
    )
    problem_type, problems = model_problems(definition, node_id, info)
    if problems:
        raise NodeFailed("; ".join(problems))
    assert problem_type is not None  # a supervised model has a target, so a type
    supervised = is_supervised(config.algorithm)
    if problem_type == ProblemType.REGRESSION:
        assert data.y_train is not None
        if not pd.api.types.is_numeric_dtype(data.y_train) or pd.api.types.is_bool_dtype(
            data.y_train
        ):
            raise NodeFailed(
                f"node {node_id!r}: regression needs a numeric target, and"
                f" {dataset.target_column!r} is not numeric"
            )
    estimator = build_estimator(
        config.algorithm, problem_type, config.hyperparameters, n_jobs=n_jobs
    )
    pipeline = Pipeline([("preprocess", clone(data.transformer)), ("model", estimator)])
    y_train = data.y_train.to_numpy() if supervised and data.y_train is not None else None
    report(
        0.1,
        f"fitting {type(estimator).__name__} on {len(data.x_train)} rows"
        f" and {len(data.features)} features",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pipeline.fit(data.x_train, y_train)
            report(0.8, f"fitted; scoring on {len(data.x_test)} test rows")
            predictions = np.asarray(pipeline.predict(data.x_test))
        except MemoryError:
            raise
        except Exception as exc:  # scikit-learn's refusal, in its own words
            raise NodeFailed(
                f"node {node_id!r}: fitting {type(estimator).__name__} failed: {_first_line(exc)}"
            ) from None
    notes = list(dict.fromkeys(_first_line(Warning(w.message)) for w in caught))
    notes = notes[:MAX_WARNINGS]
    with warnings.catch_warnings():
        # An undefined metric is left out with a note; its warning would say no more.
        warnings.simplefilter("ignore")
        scores, more = _holdout_metrics(pipeline, data, predictions, problem_type)
    report(1.0, _metrics_message(scores))
    return TrainedModel(
        pipeline=pipeline,
        algorithm=config.algorithm,
        problem_type=problem_type,
        metrics=scores,
        hyperparameters=dict(config.hyperparameters),
        data=data,
        predictions=predictions,
        notes=notes + more,
    )


def _search(
    definition: WorkflowDefinition,
    node_id: str,
    config: AutoMLConfig,
    source: Any,
    report: Progress = _silent,
    *,
    n_jobs: int = 1,
    on_trial: automl.OnTrial | None = None,
    on_interim: OnInterim | None = None,
) -> tuple[TrainedModel, dict[str, Any]]:
    """An automl node: FLAML's search on the training rows, the best pipeline scored on
    the test rows (:mod:`pipeline.automl`)."""
    if isinstance(source, LoadedDataset):
        data = prepare(source, PreprocessConfig())
        report(0.01, f"default preprocessing: {_split_message(data)}")
    else:
        data = _expect(source, PreparedData, node_id)
    dataset = data.dataset
    info = DatasetInfo(
        problem_type=_declared(dataset),
        target_column=dataset.target_column,
        columns=tuple(str(c) for c in dataset.frame.columns),
        target_problem_type=data.target_problem_type,
    )
    classes = None if data.y_train is None else int(data.y_train.nunique())
    problem_type, problems = automl_problems(definition, node_id, info, classes)
    if problems:
        raise NodeFailed("; ".join(problems))
    assert problem_type is not None and data.y_train is not None
    if problem_type == ProblemType.REGRESSION and (
        not pd.api.types.is_numeric_dtype(data.y_train) or pd.api.types.is_bool_dtype(data.y_train)
    ):
        raise NodeFailed(
            f"node {node_id!r}: regression needs a numeric target, and"
            f" {dataset.target_column!r} is not numeric"
        )
    try:
        result = automl.search(
            data.transformer,
            data.x_train,
            data.y_train.to_numpy(),
            problem_type,
            time_budget_s=config.time_budget_s,
            metric=config.metric,
            learners=tuple(config.estimators) if config.estimators else None,
            folds=config.folds,
            max_trials=config.max_trials,
            seed=config.seed,
            n_jobs=n_jobs,
            on_trial=on_trial,
            progress=report,
            scheduler=automl.dask_address(),
            on_best=_interim_saver(definition, node_id, data, problem_type, on_interim),
        )
    except automl.SearchFailed as exc:
        raise NodeFailed(f"node {node_id!r}: {exc}") from None
    pipeline = result.pipeline
    predictions = np.asarray(pipeline.predict(data.x_test))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores, notes = _holdout_metrics(pipeline, data, predictions, problem_type)
    report(1.0, _metrics_message(scores))
    hyperparameters = {"learner": result.learner, **result.config}
    found = {
        "learner": result.learner,
        "metric": result.metric,
        "best_cv_score": result.best_score,
        "folds": config.folds,
        "trials": result.trials,
        "seconds": round(result.seconds, 3),
        "time_budget_s": config.time_budget_s,
    }
    trained = TrainedModel(
        pipeline=pipeline,
        algorithm="automl",
        problem_type=problem_type,
        metrics=scores,
        hyperparameters=hyperparameters,
        data=data,
        predictions=predictions,
        notes=notes,
    )
    return trained, found


def _interim_saver(
    definition: WorkflowDefinition,
    node_id: str,
    data: PreparedData,
    problem_type: ProblemType,
    on_interim: OnInterim | None,
) -> automl.OnBest | None:
    """An automl node's ``on_best``: each save node it feeds serializes the best trial
    so far (its fold model, scored on the held-out test rows like the final one) and
    hands it to ``on_interim``. None when nobody listens or nothing would be saved."""
    saves = [
        (n, cfg)
        for n in definition.outputs(node_id)
        if isinstance(cfg := definition.node(n).typed_config(), SaveConfig)
    ]
    if on_interim is None or not saves:
        return None

    def save(found: automl.BestSoFar) -> None:
        pipeline = found.pipeline
        predictions = np.asarray(pipeline.predict(data.x_test))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores, notes = _holdout_metrics(pipeline, data, predictions, problem_type)
        trained = TrainedModel(
            pipeline=pipeline,
            algorithm="automl",
            problem_type=problem_type,
            metrics=scores,
            hyperparameters={"learner": found.learner, **found.config},
            data=data,
            predictions=predictions,
            notes=notes,
        )
        for save_id, config in saves:
            outcome = _save(config, trained)
            outcome.output["kept_from"] = {
                "automl_node": node_id,
                "trial": found.trial,
                "cv_score": found.score,
                "fitted_on": "the training part of the trial's last cross-validation fold"
                " (not refitted on every training row: the search ended before its refit)",
                "sample_size": found.sample_size,
            }
            on_interim(save_id, found.trial, outcome)

    return save


def _metrics_message(scores: Mapping[str, float]) -> str:
    if not scores:
        return "no metric could be computed"
    shown = ", ".join(f"{name} {value:.4g}" for name, value in scores.items())
    return f"test metrics: {shown}"


def _holdout_metrics(
    pipeline: Pipeline, data: PreparedData, predictions: np.ndarray, problem_type: ProblemType
) -> tuple[dict[str, float], list[str]]:
    if problem_type == ProblemType.CLUSTERING:
        features = pipeline[:-1].transform(data.x_test)
        model = pipeline[-1]
        return measure.clustering(
            features, predictions, float(model.inertia_), int(model.n_clusters)
        )
    assert data.y_test is not None
    y_test = data.y_test.to_numpy()
    if problem_type == ProblemType.REGRESSION:
        return measure.regression(y_test.astype(float), predictions.astype(float))
    proba = None
    if hasattr(pipeline[-1], "predict_proba"):
        proba = pipeline.predict_proba(data.x_test)
    return measure.classification(y_test, predictions, proba, list(pipeline[-1].classes_))


def _model_output(trained: TrainedModel) -> dict[str, Any]:
    return {
        "algorithm": trained.algorithm,
        "estimator": trained.estimator_name,
        "problem_type": trained.problem_type,
        "metrics": trained.metrics,
        "hyperparameters": trained.hyperparameters,
        "train_rows": len(trained.data.x_train),
        "test_rows": len(trained.data.x_test),
        "features": trained.data.features,
        "notes": trained.notes,
    }


# --- visualize --------------------------------------------------------------------------------
def _visualize(kind: str, model: TrainedModel) -> dict[str, Any]:
    if kind == "confusion_matrix":
        return _confusion_matrix(model)
    if kind == "feature_importance":
        return _feature_importance(model)
    return _residuals(model)


def _confusion_matrix(model: TrainedModel) -> dict[str, Any]:
    assert model.data.y_test is not None
    y_true = model.data.y_test.to_numpy()
    labels = list(model.pipeline[-1].classes_)
    known = set(np.asarray(labels).tolist())
    labels += [v for v in pd.unique(y_true).tolist() if v not in known]
    matrix = confusion_matrix(y_true, model.predictions, labels=labels)
    return {"labels": labels, "matrix": matrix.tolist(), "rows": "actual", "columns": "predicted"}


def _short_name(name: str) -> str:
    for prefix in ("numeric__", "categorical__"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _feature_importance(model: TrainedModel) -> dict[str, Any]:
    estimator = model.pipeline[-1]
    if hasattr(estimator, "feature_importances_"):
        names = [_short_name(n) for n in model.pipeline[:-1].get_feature_names_out()]
        values = np.asarray(estimator.feature_importances_, dtype=float)
        method = "feature_importances_"
    elif hasattr(estimator, "coef_"):
        names = [_short_name(n) for n in model.pipeline[:-1].get_feature_names_out()]
        values = np.abs(np.atleast_2d(np.asarray(estimator.coef_, dtype=float))).mean(axis=0)
        method = "abs(coef_)"
    else:
        data = model.data
        assert data.y_test is not None
        result = permutation_importance(
            model.pipeline,
            data.x_test,
            data.y_test.to_numpy(),
            n_repeats=5,
            random_state=DEFAULT_RANDOM_STATE,
        )
        names = list(data.features)
        values = np.asarray(result.importances_mean, dtype=float)
        method = "permutation_importance"
    order = np.argsort(-values, kind="stable")[:MAX_IMPORTANCE_FEATURES]
    return {
        "features": [names[i] for i in order],
        "importances": [float(values[i]) for i in order],
        "method": method,
        "total_features": len(names),
    }


def _residuals(model: TrainedModel) -> dict[str, Any]:
    assert model.data.y_test is not None
    actual = model.data.y_test.to_numpy(dtype=float)
    predicted = model.predictions.astype(float)
    residuals = actual - predicted
    count = len(actual)
    index = np.arange(count)
    if count > MAX_RESIDUAL_POINTS:
        rng = np.random.default_rng(DEFAULT_RANDOM_STATE)
        index = np.sort(rng.choice(count, MAX_RESIDUAL_POINTS, replace=False))
    return {
        "actual": actual[index].tolist(),
        "predicted": predicted[index].tolist(),
        "residuals": residuals[index].tolist(),
        "points": len(index),
        "total_points": count,
        "summary": {
            "mean": float(residuals.mean()),
            "std": float(residuals.std()),
            "mean_abs": float(np.abs(residuals).mean()),
            "max_abs": float(np.abs(residuals).max()),
            "rmse": float(np.sqrt(np.mean(residuals**2))),
        },
    }


# --- save -------------------------------------------------------------------------------------
def serialize(pipeline: Pipeline) -> bytes:
    """The fitted pipeline as joblib bytes (``joblib.load(io.BytesIO(data))`` reads it);
    :func:`pipeline.formats.export` writes the other formats."""
    return formats.export(pipeline, ModelFormat.JOBLIB)


def _save(config: SaveConfig, model: TrainedModel, report: Progress = _silent) -> NodeOutcome:
    report(0.1, f"serializing the fitted {model.estimator_name} pipeline")
    estimator = model.pipeline[-1]
    if "n_jobs" in estimator.get_params(deep=False):
        estimator.set_params(n_jobs=None)  # the worker's threads are not the model's
    artifact = serialize(model.pipeline)
    report(1.0, f"model {config.name!r} serialized ({len(artifact)} bytes)")
    features = model.data.x_train[model.data.features]
    record = ModelRecord(
        name=config.name,
        algorithm=model.algorithm,
        problem_type=model.problem_type,
        metrics=dict(model.metrics),
        hyperparameters=dict(model.hyperparameters),
        signature=formats.recorded_signature(features, model.predictions),
        input_example=formats.recorded_example(features),
        environment=current_environment(),
        register=config.registration,
    )
    output = {
        "name": config.name,
        "algorithm": model.algorithm,
        "estimator": model.estimator_name,
        "problem_type": model.problem_type,
        "metrics": model.metrics,
        "hyperparameters": model.hyperparameters,
        "features": model.data.features,
        "artifact_bytes": len(artifact),
        "signature_columns": len(record.signature.get("inputs", [])),
    }
    if config.registration is not None:
        output["register"] = config.registration.model_dump()
    return NodeOutcome(
        output=measure.json_safe(output), value=record, artifact=artifact, model=record
    )
