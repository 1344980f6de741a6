"""A saved model in every format the platform hands out, and loaded back.

The worker saves a fitted ``Pipeline([("preprocess", ColumnTransformer), ("model",
estimator)])`` with joblib (:func:`pipeline.execute.serialize`); its ``predict`` takes
the dataset's raw feature columns. This module turns that pipeline into:

- ``joblib``: the saved artifact as it is (a pickle: load only what you trust);
- ``skops``: :func:`skops.io.dump`; :func:`load` reads it with
  :func:`skops.io.get_untrusted_types` and refuses any type outside
  :data:`TRUSTED_SKOPS_TYPES` (:class:`UntrustedContent`), so a file from anyone can
  be opened without running its code;
- ``onnx``: skl2onnx, one input per feature column (``[N, 1]``, float for numbers,
  string for text, from the signature); the column names are in the model's metadata
  (``feature_columns``) since ONNX renames inputs. An estimator or step skl2onnx
  cannot convert is :class:`FormatUnsupported`, naming it. Numbers are float32 in
  ONNX: regression outputs agree with scikit-learn to about 1e-5 relative;
- ``mlflow``: an MLflow model directory, zipped (files at the root of the zip):
  ``MLmodel`` (flavors ``python_function`` through ``mlflow.sklearn`` and
  ``sklearn`` with ``serialization_format: pickle``; the signature in MLflow's
  format; the input example), ``model.pkl``, ``conda.yaml``, ``python_env.yaml``,
  ``requirements.txt``, ``input_example.json``, ``serving_input_example.json``.
  ``mlflow.pyfunc.load_model(<unzipped folder>).predict(frame)`` predicts as the
  platform does. Written without importing mlflow (a test-only dependency here).

:func:`signature_of` and :func:`input_example_of` describe what a caller must send
(recorded with the trained model when it is saved); :func:`load_version` is THE
loader of a registered model version in the platform: it refuses a version whose
recorded environment does not match this one (:class:`IncompatibleEnvironment`),
whatever the format.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import math
import pickle
import platform
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import joblib
import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from database import registry
from database.models.enums import ModelFormat
from database.storage import Storage

#: Rows an input example keeps.
INPUT_EXAMPLE_ROWS = 5
#: The longest signature and input example the database keeps, as JSON text
#: (``ck_models_signature_shape``, ``ck_models_input_example_shape``).
MAX_SIGNATURE_CHARS = 100_000
MAX_EXAMPLE_CHARS = 100_000

#: Types a skops file may hold beyond skops' own trusted set (scikit-learn's
#: estimators, numpy arrays): what the platform's pipelines contain and nothing
#: more: plain data, and ``numpy.asarray`` (the text columns' first step, see
#: :func:`_skops_ready`).
TRUSTED_SKOPS_TYPES: frozenset[str] = frozenset(
    {"builtins.object", "numpy.asarray", "numpy.dtype", "sklearn.tree._tree.Tree"}
)

#: File name suffix and media type of each format.
SUFFIXES: dict[ModelFormat, str] = {
    ModelFormat.JOBLIB: ".joblib",
    ModelFormat.SKOPS: ".skops",
    ModelFormat.ONNX: ".onnx",
    ModelFormat.MLFLOW: ".zip",
}
MEDIA_TYPES: dict[ModelFormat, str] = {
    ModelFormat.JOBLIB: "application/octet-stream",
    ModelFormat.SKOPS: "application/octet-stream",
    ModelFormat.ONNX: "application/octet-stream",
    ModelFormat.MLFLOW: "application/zip",
}


class FormatError(Exception):
    """A model that cannot be written or read in a format."""


class FormatUnsupported(FormatError):
    """The format cannot hold this model (skl2onnx has no converter for a step)."""

    def __init__(self, format: ModelFormat | str, estimator: str, reason: str) -> None:
        self.format = ModelFormat(format)
        self.estimator = estimator
        self.reason = reason
        super().__init__(f"{self.format} export does not support {estimator}: {reason}")


class UntrustedContent(FormatError):
    """A skops file holding types outside :data:`TRUSTED_SKOPS_TYPES` (not loaded)."""

    def __init__(self, types: Sequence[str]) -> None:
        self.types = sorted(types)
        super().__init__(
            "the skops file holds types that are not trusted: " + ", ".join(self.types)
        )


class IncompatibleEnvironment(Exception):
    """A model version saved with package versions this environment cannot load."""

    def __init__(self, what: str, problems: Sequence[str]) -> None:
        self.what = what
        self.problems = list(problems)
        super().__init__(f"{what} cannot be loaded here: " + "; ".join(self.problems))


class Predictor(Protocol):
    def predict(self, frame: pd.DataFrame) -> Any: ...


# --- what a caller sends ---------------------------------------------------------------------
def column_type(column: pd.Series) -> str:
    """The MLflow data type of a column: ``boolean``, ``long``, ``double``,
    ``datetime`` or ``string`` (text, categories, anything else)."""
    if pd.api.types.is_bool_dtype(column):
        return "boolean"
    if pd.api.types.is_integer_dtype(column):
        return "long"
    if pd.api.types.is_numeric_dtype(column):
        return "double"
    if pd.api.types.is_datetime64_any_dtype(column):
        return "datetime"
    return "string"


def _output_type(predictions: np.ndarray | None) -> str | None:
    if predictions is None:
        return None
    return column_type(pd.Series(np.asarray(predictions).ravel()))


def signature_of(features: pd.DataFrame, predictions: np.ndarray | None = None) -> dict[str, Any]:
    """The input schema of a model trained on ``features`` (the columns its
    ``predict`` reads, in order): ``{"inputs": [{"name", "type", "required"}],
    "outputs": [{"type", "required"}]}``, types as MLflow names them. A column with
    missing values in training is not ``required`` (MLflow's meaning: it may hold
    missing values)."""
    inputs = [
        {
            "name": str(name),
            "type": column_type(features[name]),
            "required": not bool(features[name].isna().any()),
        }
        for name in features.columns
    ]
    out: dict[str, Any] = {"inputs": inputs}
    output = _output_type(predictions)
    if output is not None:
        out["outputs"] = [{"type": output, "required": True}]
    return out


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, pd.Timestamp | dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, pd.Timedelta | dt.timedelta):
        return str(value)
    try:
        if bool(pd.isna(value)):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def input_example_of(
    features: pd.DataFrame, rows: int = INPUT_EXAMPLE_ROWS
) -> list[dict[str, Any]]:
    """A few rows of ``features`` as JSON records: missing values as null, dates as
    ISO text, numpy numbers as plain numbers."""
    head = features.head(rows)
    names = [str(c) for c in head.columns]
    return [
        {name: _json_value(value) for name, value in zip(names, row, strict=True)}
        for row in head.itertuples(index=False, name=None)
    ]


def _chars(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False))


def recorded_signature(
    features: pd.DataFrame, predictions: np.ndarray | None = None
) -> dict[str, Any]:
    """:func:`signature_of`, or, for a frame so wide that its signature is over
    :data:`MAX_SIGNATURE_CHARS`, ``{"omitted": <why>}`` (the model is saved all the
    same; ONNX then has no inputs to convert with)."""
    signature = signature_of(features, predictions)
    if _chars(signature) <= MAX_SIGNATURE_CHARS:
        return signature
    return {
        "omitted": f"the signature of {features.shape[1]} columns is over"
        f" {MAX_SIGNATURE_CHARS} characters"
    }


def recorded_example(features: pd.DataFrame) -> list[dict[str, Any]] | None:
    """:func:`input_example_of` with as many rows (up to :data:`INPUT_EXAMPLE_ROWS`)
    as fit in :data:`MAX_EXAMPLE_CHARS`; None when not even one does."""
    example = input_example_of(features)
    while example and _chars(example) > MAX_EXAMPLE_CHARS:
        example = example[:-1]
    return example or None


def example_frame(
    signature: Mapping[str, Any], example: Sequence[Mapping[str, Any]]
) -> pd.DataFrame:
    """The input example as the frame a caller would send (the signature's columns
    and types)."""
    columns = [c["name"] for c in signature.get("inputs", [])]
    frame = pd.DataFrame.from_records(list(example), columns=columns or None)
    for spec in signature.get("inputs", []):
        name, kind = spec["name"], spec.get("type")
        if kind == "double":
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        elif kind == "long" and not frame[name].isna().any():
            frame[name] = frame[name].astype("int64")
        elif kind == "datetime":
            frame[name] = pd.to_datetime(frame[name])
    return frame


# --- joblib ----------------------------------------------------------------------------------
def _joblib_bytes(pipeline: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer, compress=3)
    return buffer.getvalue()


# --- skops -----------------------------------------------------------------------------------
def _to_numpy_steps(pipeline: Any) -> list[tuple[Pipeline, int]]:
    """The text columns' first steps (``FunctionTransformer(DataFrame.to_numpy)``, see
    ``pipeline.execute.build_transformer``): (their pipeline, their index)."""
    found = []
    steps = pipeline.steps if isinstance(pipeline, Pipeline) else []
    for _, step in steps:
        # the fitted ones, and the parameters they were cloned from
        parts = [*getattr(step, "transformers_", []), *getattr(step, "transformers", [])]
        for _, part, _ in parts:
            if isinstance(part, Pipeline):
                for index, (_, s) in enumerate(part.steps):
                    if isinstance(s, FunctionTransformer) and s.func is pd.DataFrame.to_numpy:
                        found.append((part, index))
    return found


def _skops_ready(pipeline: Any) -> Any:
    """A copy skops can write and read back: skops names a function by its module and
    name, and ``DataFrame.to_numpy`` (a method) cannot be found again that way. The
    step becomes ``numpy.asarray(frame, dtype=object)``: the same object array, a
    frame read by pandas having NaN for a missing text. An object column holding
    ``None`` or ``pd.NA`` is the one input the two pipelines see differently (the
    platform's counts it missing, the copy an unknown category)."""
    ready = copy.deepcopy(pipeline)
    for part, index in _to_numpy_steps(ready):
        step = part.steps[index][1]
        step.func = np.asarray
        step.kw_args = {"dtype": object}
    return ready


def _skops_bytes(pipeline: Any) -> bytes:
    import skops.io as sio

    # deflated: a forest's arrays shrink several times (skops stores them raw)
    return bytes(sio.dumps(_skops_ready(pipeline), compression=zipfile.ZIP_DEFLATED))


def _skops_load(data: bytes, trusted: Sequence[str] | None) -> Any:
    import skops.io as sio

    allowed = TRUSTED_SKOPS_TYPES | set(trusted or ())
    try:
        found = sio.get_untrusted_types(data=data)
    except Exception as exc:  # not a skops file: a zip or JSON skops cannot read
        raise FormatError(f"not a readable skops file: {exc}") from None
    refused = [t for t in found if t not in allowed]
    if refused:
        raise UntrustedContent(refused)
    return sio.loads(data, trusted=found)


# --- ONNX ------------------------------------------------------------------------------------
def _estimator_name(pipeline: Any) -> str:
    final = pipeline[-1] if isinstance(pipeline, Pipeline) else pipeline
    return type(final).__name__


def _onnx_ready(pipeline: Any) -> Any:
    """A copy skl2onnx can read: the text columns' first step (``DataFrame.to_numpy``
    to an object array, needed by pandas' missing values) is dropped, since ONNX gets
    the text columns as strings already, and their imputers take "" as missing (what
    :class:`OnnxModel` sends for a missing text)."""
    ready = copy.deepcopy(pipeline)
    for part, index in reversed(_to_numpy_steps(ready)):
        del part.steps[index]
        for _, s in part.steps:
            statistics = getattr(s, "statistics_", None)
            if isinstance(s, SimpleImputer) and np.asarray(statistics).dtype == object:
                s.missing_values = ""
    return ready


def _onnx_types(signature: Mapping[str, Any]) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    out: list[tuple[str, Any]] = []
    for spec in signature.get("inputs", []):
        kind = spec.get("type")
        if kind in ("double", "long", "float", "integer"):
            out.append((spec["name"], FloatTensorType([None, 1])))
        elif kind == "string":
            out.append((spec["name"], StringTensorType([None, 1])))
        else:
            raise FormatUnsupported(
                ModelFormat.ONNX, f"the {kind} column {spec['name']!r}", "no ONNX input type"
            )
    return out


def _onnx_bytes(pipeline: Any, signature: Mapping[str, Any]) -> bytes:
    from skl2onnx import convert_sklearn

    if not signature.get("inputs"):
        raise FormatUnsupported(ModelFormat.ONNX, _estimator_name(pipeline), "no signature")
    types = _onnx_types(signature)
    ready = _onnx_ready(pipeline)
    options: dict[int, dict[str, Any]] = {}
    final = ready[-1] if isinstance(ready, Pipeline) else ready
    if hasattr(final, "predict_proba"):
        options[id(final)] = {"zipmap": False}
    try:
        model = convert_sklearn(ready, initial_types=types, options=options or None)
    except Exception as exc:  # skl2onnx: MissingShapeCalculator, RuntimeError, ...
        reason = str(exc).split("\n", 1)[0][:300] or type(exc).__name__
        raise FormatUnsupported(ModelFormat.ONNX, _estimator_name(pipeline), reason) from None
    entry = model.metadata_props.add()
    entry.key = "feature_columns"
    entry.value = json.dumps([name for name, _ in types])
    entry = model.metadata_props.add()
    entry.key = "signature"
    entry.value = json.dumps(dict(signature))
    return bytes(model.SerializeToString())


class OnnxModel:
    """An ONNX model read back, predicting from a frame like the pipeline (needs
    onnxruntime, which the platform does not install: a dev dependency)."""

    def __init__(self, data: bytes) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.columns: list[str] = json.loads(meta["feature_columns"])
        self.signature: dict[str, Any] = json.loads(meta.get("signature", "{}"))
        self.inputs = self.session.get_inputs()

    def feeds(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        out = {}
        for spec, column in zip(self.inputs, self.columns, strict=True):
            values = frame[column]
            if spec.type == "tensor(string)":
                text = values.astype(object).where(values.notna(), "")
                array = np.asarray([str(v) for v in text], dtype=object)
            else:
                array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float32)
            out[spec.name] = array.reshape(-1, 1)
        return out

    def run(self, frame: pd.DataFrame) -> list[Any]:
        return list(self.session.run(None, self.feeds(frame)))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.run(frame)[0]).ravel()


# --- MLflow ----------------------------------------------------------------------------------
def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(str(value))  # a JSON string is a YAML double-quoted scalar


def _yaml(value: Mapping[str, Any] | Sequence[Any], indent: int = 0) -> str:
    """Block YAML of nested mappings and lists of scalars (enough for MLmodel and
    conda.yaml; strings always quoted, so nothing is read as another type)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, Mapping | list) and item:
                lines.append(f"{pad}{key}:")
                lines.append(_yaml(item, indent + 1))
            elif isinstance(item, Mapping):
                lines.append(f"{pad}{key}: {{}}")
            elif isinstance(item, list):
                lines.append(f"{pad}{key}: []")
            else:
                lines.append(f"{pad}{key}: {_yaml_scalar(item)}")
    else:
        for item in value:
            if isinstance(item, Mapping | list):
                lines.append(f"{pad}-")
                lines.append(_yaml(item, indent + 1))
            else:
                lines.append(f"{pad}- {_yaml_scalar(item)}")
    return "\n".join(lines)


def _mlflow_signature(signature: Mapping[str, Any]) -> dict[str, Any]:
    inputs = [
        {"type": s["type"], "name": s["name"], "required": bool(s.get("required", True))}
        for s in signature.get("inputs", [])
    ]
    outputs = signature.get("outputs")
    return {
        "inputs": json.dumps(inputs),
        "outputs": json.dumps(list(outputs)) if outputs else None,
        "params": None,
    }


def _requirements(environment: Mapping[str, Any]) -> list[str]:
    pins = [("scikit-learn", "sklearn"), ("numpy", "numpy"), ("pandas", "pandas")]
    return ["mlflow"] + [
        f"{name}=={environment[key]}" if environment.get(key) else name for name, key in pins
    ]


def _mlflow_bytes(
    pipeline: Any,
    signature: Mapping[str, Any],
    input_example: Sequence[Mapping[str, Any]] | None,
    environment: Mapping[str, Any],
) -> bytes:
    python = str(environment.get("python") or platform.python_version())
    sklearn_version = environment.get("sklearn")
    mlmodel: dict[str, Any] = {
        "artifact_path": "model",
        "flavors": {
            "python_function": {
                "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
                "loader_module": "mlflow.sklearn",
                "model_path": "model.pkl",
                "predict_fn": "predict",
                "python_version": python,
            },
            "sklearn": {
                "code": None,
                "pickled_model": "model.pkl",
                "serialization_format": "pickle",
                "sklearn_version": sklearn_version,
            },
        },
        "model_uuid": uuid.uuid4().hex,
        "utc_time_created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
    }
    files: dict[str, bytes] = {
        "model.pkl": pickle.dumps(pipeline, protocol=pickle.DEFAULT_PROTOCOL),
    }
    if signature.get("inputs"):
        mlmodel["signature"] = _mlflow_signature(signature)
    if input_example:
        columns = [s["name"] for s in signature.get("inputs", [])] or list(input_example[0])
        split = {
            "columns": columns,
            "data": [[row.get(c) for c in columns] for row in input_example],
        }
        files["input_example.json"] = json.dumps(split).encode()
        files["serving_input_example.json"] = json.dumps(
            {"dataframe_split": split}, indent=2
        ).encode()
        mlmodel["saved_input_example_info"] = {
            "artifact_path": "input_example.json",
            "pandas_orient": "split",
            "serving_input_path": "serving_input_example.json",
            "type": "dataframe",
        }
    requirements = _requirements(environment)
    files["requirements.txt"] = ("\n".join(requirements) + "\n").encode()
    files["conda.yaml"] = (
        _yaml(
            {
                "channels": ["conda-forge"],
                "dependencies": [f"python={python}", "pip", {"pip": requirements}],
                "name": "mlflow-env",
            }
        )
        + "\n"
    ).encode()
    files["python_env.yaml"] = (
        _yaml(
            {
                "python": python,
                "build_dependencies": ["pip", "setuptools", "wheel"],
                "dependencies": ["-r requirements.txt"],
            }
        )
        + "\n"
    ).encode()
    files["MLmodel"] = (_yaml(mlmodel) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            archive.writestr(name, files[name])
    return buffer.getvalue()


def _mlflow_load(data: bytes) -> Any:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            if "MLmodel" not in names or "model.pkl" not in names:
                raise FormatError("not an MLflow model zip: MLmodel or model.pkl is missing")
            return pickle.loads(archive.read("model.pkl"))
    except zipfile.BadZipFile as exc:
        raise FormatError(f"not an MLflow model zip: {exc}") from None


# --- the formats -----------------------------------------------------------------------------
def export(
    pipeline: Any,
    format: ModelFormat | str,
    *,
    signature: Mapping[str, Any] | None = None,
    input_example: Sequence[Mapping[str, Any]] | None = None,
    environment: Mapping[str, Any] | None = None,
) -> bytes:
    """The fitted ``pipeline`` as the bytes of a file in ``format``.

    ``signature`` (:func:`signature_of`) gives ONNX its inputs and MLflow its schema;
    ``input_example`` and ``environment`` (``registry.current_environment()`` when
    not given) go into the MLflow model. :class:`FormatUnsupported` when the format
    cannot hold the model (ONNX)."""
    fmt = ModelFormat(format)
    signature = signature or {}
    if fmt == ModelFormat.JOBLIB:
        return _joblib_bytes(pipeline)
    if fmt == ModelFormat.SKOPS:
        return _skops_bytes(pipeline)
    if fmt == ModelFormat.ONNX:
        return _onnx_bytes(pipeline, signature)
    env = dict(environment or registry.current_environment())
    return _mlflow_bytes(pipeline, signature, input_example, env)


def load(data: bytes, format: ModelFormat | str, *, trusted: Sequence[str] = ()) -> Any:
    """A model file read back: the pipeline (joblib, skops, mlflow's ``model.pkl``)
    or an :class:`OnnxModel`; each has ``predict(frame)``.

    joblib and mlflow unpickle: only for files the platform wrote. skops refuses a
    type outside :data:`TRUSTED_SKOPS_TYPES` and ``trusted``
    (:class:`UntrustedContent`) before loading anything."""
    fmt = ModelFormat(format)
    if fmt == ModelFormat.JOBLIB:
        return joblib.load(io.BytesIO(data))
    if fmt == ModelFormat.SKOPS:
        return _skops_load(data, trusted)
    if fmt == ModelFormat.ONNX:
        return OnnxModel(data)
    return _mlflow_load(data)


# --- registered versions ---------------------------------------------------------------------
@dataclass(frozen=True)
class VersionArtifact:
    """What loading or converting a registered model version needs."""

    version_id: uuid.UUID
    user_id: uuid.UUID
    registered_model: str
    version: int
    location: str | None
    signature: dict[str, Any]
    input_example: list[Any] | None
    environment: dict[str, Any]
    estimator: str

    @property
    def title(self) -> str:
        return f"model version {self.version} of {self.registered_model!r}"


def version_artifact(session: Any, version_id: uuid.UUID) -> VersionArtifact:
    """The version's artifact and what was recorded with it;
    ``registry.ModelVersionNotFound`` when there is no such version."""
    from sqlalchemy import text

    row = session.execute(
        text(
            "SELECT v.id, v.user_id, r.name, v.version, m.s3_path, v.signature,"
            " v.input_example, v.environment, m.algorithm"
            " FROM model_versions AS v JOIN registered_models AS r ON r.id = v.registered_model_id"
            " JOIN models AS m ON m.id = v.model_id WHERE v.id = :v"
        ),
        {"v": version_id},
    ).one_or_none()
    if row is None:
        raise registry.ModelVersionNotFound(f"model version {version_id} does not exist")
    return VersionArtifact(
        version_id=row[0],
        user_id=row[1],
        registered_model=row[2],
        version=row[3],
        location=row[4],
        signature=dict(row[5] or {}),
        input_example=row[6],
        environment=dict(row[7] or {}),
        estimator=row[8],
    )


def check_environment(
    what: str, stored: Mapping[str, Any], current: Mapping[str, str] | None = None
) -> None:
    """:class:`IncompatibleEnvironment` when ``stored`` (a version's environment)
    cannot be loaded in ``current`` (this one by default), naming the versions."""
    problems = registry.environment_problems(stored, current or registry.current_environment())
    if problems:
        raise IncompatibleEnvironment(what, problems)


def cache_key(artifact: VersionArtifact, format: ModelFormat | str) -> str:
    """Where the version's file in ``format`` is kept once converted (by version and
    format: a version's model never changes, ML061)."""
    fmt = ModelFormat(format)
    return f"models/{artifact.user_id}/formats/{artifact.version_id}/model{SUFFIXES[fmt]}"


def _read(storage: Storage, location: str) -> bytes:
    with storage.open_read(location) as stream:
        return stream.read()


def converted_location(
    storage: Storage,
    artifact: VersionArtifact,
    format: ModelFormat | str,
    *,
    environment: Mapping[str, str] | None = None,
) -> str:
    """The location of the version's file in ``format``: the saved artifact for
    joblib; for the others the cached conversion, made (and stored) on first use.

    Converting loads the pipeline here, so it refuses an incompatible environment
    first (:class:`IncompatibleEnvironment`); :class:`FormatUnsupported` when the
    format cannot hold the model; ``FileNotFoundError`` when the artifact is gone."""
    fmt = ModelFormat(format)
    if artifact.location is None:
        raise FileNotFoundError(f"{artifact.title} has no artifact")
    if fmt == ModelFormat.JOBLIB:
        if not storage.exists(artifact.location):
            raise FileNotFoundError(f"the artifact of {artifact.title} is not in storage")
        return artifact.location
    key = cache_key(artifact, fmt)
    location = storage.location(key)
    if storage.exists(location):
        return location
    check_environment(artifact.title, artifact.environment, environment)
    pipeline = load(_read(storage, artifact.location), ModelFormat.JOBLIB)
    data = export(
        pipeline,
        fmt,
        signature=artifact.signature,
        input_example=artifact.input_example,
        environment=artifact.environment or None,
    )
    return storage.write_bytes(key, data)


def load_version(
    session: Any,
    storage: Storage,
    version_id: uuid.UUID,
    format: ModelFormat | str = ModelFormat.JOBLIB,
    *,
    environment: Mapping[str, str] | None = None,
) -> Any:
    """THE loader of a registered model version in the platform (serving calls it):
    refuses a version saved in an environment this one cannot load
    (:class:`IncompatibleEnvironment`, naming the versions), then reads the version's
    file in ``format`` (converted and cached on first use) and loads it (an object
    with ``predict(frame)``). Access is the caller's to check (``registry.can``)."""
    artifact = version_artifact(session, version_id)
    check_environment(artifact.title, artifact.environment, environment)
    location = converted_location(storage, artifact, format, environment=environment)
    return load(_read(storage, location), format)


def download_filename(artifact: VersionArtifact, format: ModelFormat | str) -> str:
    """``<registered model>-v<version><suffix>``, safe as a file name."""
    import re

    base = re.sub(r"[^A-Za-z0-9._-]+", "_", artifact.registered_model).strip("._")[:100] or "model"
    return f"{base}-v{artifact.version}{SUFFIXES[ModelFormat(format)]}"


__all__ = [
    "INPUT_EXAMPLE_ROWS",
    "MAX_EXAMPLE_CHARS",
    "MAX_SIGNATURE_CHARS",
    "MEDIA_TYPES",
    "SUFFIXES",
    "TRUSTED_SKOPS_TYPES",
    "FormatError",
    "FormatUnsupported",
    "IncompatibleEnvironment",
    "OnnxModel",
    "Predictor",
    "UntrustedContent",
    "VersionArtifact",
    "cache_key",
    "check_environment",
    "column_type",
    "converted_location",
    "download_filename",
    "example_frame",
    "export",
    "input_example_of",
    "load",
    "load_version",
    "recorded_example",
    "recorded_signature",
    "signature_of",
    "version_artifact",
]
