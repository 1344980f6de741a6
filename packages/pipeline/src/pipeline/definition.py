"""Workflow definitions: their shape, their node configs, and whether they can run.

A definition is ``{"nodes": [{"id", "type", "config", "label"?}], "edges":
[{"source", "target"}]}``. The API validates what it stores with this module, and the
worker runs what this module accepts, so the two never disagree.

Rules checked on every save (:func:`definition_problems`):

- structure: node ids unique; an edge joins two existing nodes, once, never a node
  to itself; no cycle; a dataset node has no incoming edge and every other node has
  an input, so every path starts at a dataset;
- configs: each node's ``config`` parses into the typed config of its type
  (:data:`CONFIG_MODELS`), unknown keys refused; a model's hyperparameters are
  valid for scikit-learn (for an algorithm that is a classifier or a regressor
  depending on the data, valid for at least one of them);
- shape: preprocess takes exactly one input, a dataset node; model exactly one, a
  preprocess or a dataset node (a dataset directly means default preprocessing);
  visualize and save exactly one, a model node. Several dataset branches may share
  a workflow.

A dataset node may omit ``dataset_id`` while the workflow is a draft. Before a run,
:func:`check_runnable` checks the definition against what is known of the datasets
it reads (:class:`DatasetInfo`): every dataset node names a dataset, supervised
algorithms have a target column that exists, the algorithm and the visualizations
suit the problem type, the hyperparameters suit the estimator actually chosen.
"""

from __future__ import annotations

import builtins
import heapq
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args

import numpy as np
import pandas as pd
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from database.models.enums import NodeType, ProblemType
from pipeline.automl import Learner, Metric
from pipeline.automl import config_problems as automl_config_problems
from pipeline.estimators import (
    ALGORITHM_NAMES,
    ALGORITHMS,
    PLATFORM_PARAMETERS,
    Algorithm,
    estimator_class,
    hyperparameters_schema,
    is_supervised,
    parameter_problem,
)

INT32_MAX = 2**31 - 1
MAX_JSON_DEPTH = 32
MAX_NODES = 200
MAX_EDGES = 1000
#: A numeric target with more distinct values than this is a regression target.
MAX_CLASSES = 20


class DefinitionError(ValueError):
    """A definition that cannot be saved or run; ``problems`` says why, one per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# --- input guards (what PostgreSQL's jsonb accepts) ---------------------------------------
def no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text may not contain NUL characters")
    return value


def check_json(value: Any, depth: int = 0) -> Any:
    """JSON PostgreSQL's jsonb accepts: no NUL in strings, finite numbers, bounded depth."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        no_nul(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
    elif isinstance(value, dict):
        for k, v in value.items():
            no_nul(str(k))
            check_json(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            check_json(v, depth + 1)
    return value


NodeId = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
]
Label = Annotated[str, StringConstraints(max_length=200), AfterValidator(no_nul)]
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json)]


# --- node configs ---------------------------------------------------------------------------
Impute = Literal["mean", "median", "most_frequent", "none"]
Scale = Literal["standard", "minmax", "none"]
Encode = Literal["onehot", "ordinal", "none"]
VisualizationKind = Literal["confusion_matrix", "feature_importance", "residuals"]

#: The problem types each visualization kind can show.
KIND_PROBLEM_TYPES: dict[str, tuple[ProblemType, ...]] = {
    "confusion_matrix": (ProblemType.CLASSIFICATION,),
    "residuals": (ProblemType.REGRESSION,),
    "feature_importance": (ProblemType.CLASSIFICATION, ProblemType.REGRESSION),
}


class _Config(BaseModel):
    # Attribute docstrings are the fields' descriptions in /openapi.json.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class DatasetConfig(_Config):
    """Where a workflow's data comes from: one of the caller's datasets, at a version."""

    dataset_id: uuid.UUID | None = None
    """The dataset read (``GET /v1/datasets``); null only in a draft: a run refuses it."""
    version: Annotated[int, Field(ge=1, le=INT32_MAX, strict=True)] | None = None
    """The dataset's version number; null: the dataset's current version when the run starts."""


ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(no_nul)]


class PreprocessConfig(_Config):
    """How the dataset's rows become features: missing values, scaling, encoding, the
    columns used and the share held out for testing."""

    impute: Impute = "mean"
    """How missing numeric values are filled (categorical ones take the most frequent
    value); ``none`` leaves them (the algorithm must then accept gaps)."""
    scale: Scale = "standard"
    """How numeric features are scaled: to mean 0 and variance 1, to [0, 1], or not."""
    encode: Encode = "onehot"
    """How categorical features become numbers: one column per value, one integer per
    value, or not at all (the columns are dropped)."""
    test_size: Annotated[float, Field(gt=0, lt=1, strict=True)] = 0.2
    """The share of rows held out to measure the model (between 0 and 1, exclusive)."""
    include: Annotated[tuple[ColumnName, ...], Field(max_length=1000)] | None = None
    """Only these columns are features (identifier and constant columns are then kept if
    named here); null: every column but the ones left out by default."""
    exclude: Annotated[tuple[ColumnName, ...], Field(max_length=1000)] = ()
    """Columns that are never features (on top of the dataset's ignored columns)."""

    @model_validator(mode="after")
    def _lists_apart(self) -> PreprocessConfig:
        both = set(self.include or ()) & set(self.exclude)
        if both:
            raise ValueError(f"columns both included and excluded: {', '.join(sorted(both))}")
        return self


class ModelConfig(_Config):
    """Train one scikit-learn estimator. In /openapi.json this is a union discriminated
    by ``algorithm`` (:data:`MODEL_CONFIG_VARIANTS`), each variant listing its
    hyperparameters with their types, ranges and defaults."""

    algorithm: Algorithm
    """The algorithm; classification or regression follows from the dataset."""
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the scikit-learn estimator, checked by scikit-learn on save."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Documented as the union of the algorithms' configs; validated as this model.
        schema = handler(TypeAdapter(ModelConfigVariant).core_schema)
        return {
            "description": "Trains one scikit-learn estimator: the algorithm selects"
            " which hyperparameters it takes.",
            **schema,
        }

    @field_validator("hyperparameters")
    @classmethod
    def _valid_for_scikit_learn(cls, value: dict[str, Any], info: ValidationInfo) -> Any:
        algorithm = info.data.get("algorithm")
        if algorithm is not None:
            problem = hyperparameter_problem(algorithm, value)
            if problem:
                raise ValueError(problem)
        return value


class VisualizeConfig(_Config):
    """Draw a plot of the model node it follows."""

    kind: VisualizationKind
    """The plot: a confusion matrix (classification), the residuals (regression) or the
    feature importances (both)."""


#: A registered model's name (``registered_models.name``: 1 to 200 characters).
RegisteredName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(no_nul),
]
#: An alias (``model_aliases.alias``): a lowercase word, never a pure number.
AliasName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]


class RegisterConfig(_Config):
    """Register the saved model as the next version of the caller's registered model
    ``name`` (created when absent), and point ``alias`` at it."""

    name: RegisteredName
    """The registered model's name (created when the caller has none by that name)."""
    alias: AliasName | None = None
    """An alias (a lowercase word, e.g. ``staging``) moved to the new version; null: none."""


class SaveConfig(_Config):
    """Save the model node it follows as a trained model (``GET /v1/models``), and
    optionally register it as a new version in the model registry."""

    name: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
        AfterValidator(no_nul),
    ]
    """The saved model's name."""
    # (the attribute is ``registration``: ``register`` is a method of pydantic's classes).
    registration: RegisterConfig | None = Field(default=None, alias="register")
    """Also register it in the model registry: ``"register": {"name": ..., "alias": ...}``."""


#: Bounds of an automl node's budget (seconds) and folds.
MAX_TIME_BUDGET_S = 3600
MAX_FOLDS = 20
MAX_TRIALS = 10_000


class AutoMLConfig(_Config):
    """A search over learners and hyperparameters (:mod:`pipeline.automl`)."""

    time_budget_s: Annotated[int, Field(ge=1, le=MAX_TIME_BUDGET_S, strict=True)] = 60
    """Wall-clock seconds the search may take (FLAML's ``time_budget``); the price grows
    with it."""
    metric: Metric | None = None
    """The metric the search optimizes; null: accuracy (classification) or r2 (regression)."""
    estimators: (
        Annotated[list[Learner], Field(min_length=1, max_length=len(get_args(Learner)))] | None
    ) = None
    """The learners tried, each at most once; null: every learner that suits the problem."""
    folds: Annotated[int, Field(ge=2, le=MAX_FOLDS, strict=True)] = 5
    """Cross-validation folds of every trial."""
    max_trials: Annotated[int, Field(ge=1, le=MAX_TRIALS, strict=True)] | None = None
    """At most this many trials (FLAML's ``max_iter``); null: as many as the budget allows."""
    seed: Annotated[int, Field(ge=0, le=INT32_MAX, strict=True)] | None = None
    """The search's seed; null: 0 (the search is repeatable)."""

    @field_validator("estimators")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) < len(value):
            raise ValueError("a learner is named twice")
        return value


NodeConfig = (
    DatasetConfig | PreprocessConfig | ModelConfig | VisualizeConfig | SaveConfig | AutoMLConfig
)
C = TypeVar(
    "C", DatasetConfig, PreprocessConfig, ModelConfig, VisualizeConfig, SaveConfig, AutoMLConfig
)

CONFIG_MODELS: dict[NodeType, type[_Config]] = {
    NodeType.DATASET: DatasetConfig,
    NodeType.PREPROCESS: PreprocessConfig,
    NodeType.MODEL: ModelConfig,
    NodeType.VISUALIZE: VisualizeConfig,
    NodeType.SAVE: SaveConfig,
    NodeType.AUTOML: AutoMLConfig,
}

# --- the schema of a node, as /openapi.json shows it ---------------------------------------
# A discriminated union: a node's ``type`` selects its ``config``'s schema, and a model
# node's ``algorithm`` selects its hyperparameters' (types, ranges, defaults). For the
# schema only: a definition is validated as :class:`WorkflowNode` (the config stored as
# given, then checked against :data:`CONFIG_MODELS` by :func:`definition_problems`), so
# every problem of every node is reported at once, named by node and field.
_CLASS_NAMES = {"kmeans": "KMeans"}


def _literal(value: Any) -> Any:
    """``Literal[value]``, built at run time."""
    return Literal[value]


def _union(types: Iterable[type[BaseModel]]) -> Any:
    """``Union[...]`` of ``types``, built at run time."""
    return Union[tuple(types)]  # noqa: UP007


def _model_config_variant(algorithm: str) -> type[BaseModel]:
    name = _CLASS_NAMES.get(algorithm) or "".join(w.capitalize() for w in algorithm.split("_"))
    types = " or ".join(str(p) for p in ALGORITHMS[algorithm])
    return create_model(
        f"{name}Config",
        __base__=_Config,
        __doc__=f"A model node's config for {algorithm} ({types}).",
        algorithm=(_literal(algorithm), Field(description="The algorithm.")),
        hyperparameters=(
            Annotated[dict[str, Any], WithJsonSchema(hyperparameters_schema(algorithm))],
            Field(
                default_factory=dict,
                description="Keyword arguments of the scikit-learn estimator; any left out"
                " take scikit-learn's default.",
            ),
        ),
    )


#: algorithm -> the schema of a model node's config with it.
MODEL_CONFIG_VARIANTS: dict[str, type[BaseModel]] = {
    a: _model_config_variant(a) for a in ALGORITHM_NAMES
}
ModelConfigVariant: Any = Annotated[
    _union(MODEL_CONFIG_VARIANTS.values()), Field(discriminator="algorithm")
]


class _NodeSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    id: NodeId
    """The node's id, unique in the definition; edges name nodes by it."""
    label: Label | None = None
    """A name shown for the node (free text)."""


def _node_variant(node_type: NodeType, config: type[BaseModel], doc: str) -> type[BaseModel]:
    # A config with a required field is required (an empty one cannot be valid).
    required = any(f.is_required() for f in config.model_fields.values())
    default: dict[str, Any] = {} if required else {"default_factory": dict}
    return create_model(
        f"{node_type.value.capitalize() if node_type != NodeType.AUTOML else 'AutoML'}Node",
        __base__=_NodeSchema,
        __doc__=doc,
        type=(_literal(node_type), Field(description="The node's type: selects its config.")),
        config=(
            config,
            Field(description=f"The {node_type.value} node's settings.", **default),
        ),
    )


#: node type -> the schema of a node of that type.
NODE_VARIANTS: dict[NodeType, type[BaseModel]] = {
    NodeType.DATASET: _node_variant(
        NodeType.DATASET, DatasetConfig, "Reads a dataset version; every path starts at one."
    ),
    NodeType.PREPROCESS: _node_variant(
        NodeType.PREPROCESS,
        PreprocessConfig,
        "Turns a dataset node's rows into features and a train/test split.",
    ),
    NodeType.MODEL: _node_variant(
        NodeType.MODEL,
        ModelConfig,
        "Trains one scikit-learn estimator on a preprocess node's output (or a dataset node's,"
        " with default preprocessing).",
    ),
    NodeType.VISUALIZE: _node_variant(
        NodeType.VISUALIZE, VisualizeConfig, "Draws a plot of a model or automl node's model."
    ),
    NodeType.SAVE: _node_variant(
        NodeType.SAVE,
        SaveConfig,
        "Saves a model or automl node's model, and optionally registers it.",
    ),
    NodeType.AUTOML: _node_variant(
        NodeType.AUTOML,
        AutoMLConfig,
        "Searches learners and hyperparameters (FLAML) on a preprocess or dataset node's"
        " output, within a time budget.",
    ),
}
NodeVariant: Any = Annotated[_union(NODE_VARIANTS.values()), Field(discriminator="type")]

#: node type -> the node types its one input may have (dataset: no input).
INPUT_TYPES: dict[NodeType, tuple[NodeType, ...]] = {
    NodeType.DATASET: (),
    NodeType.PREPROCESS: (NodeType.DATASET,),
    NodeType.MODEL: (NodeType.PREPROCESS, NodeType.DATASET),
    NodeType.VISUALIZE: (NodeType.MODEL, NodeType.AUTOML),
    NodeType.SAVE: (NodeType.MODEL, NodeType.AUTOML),
    NodeType.AUTOML: (NodeType.PREPROCESS, NodeType.DATASET),
}


def hyperparameter_problem(
    algorithm: str, params: Mapping[str, Any], problem_type: ProblemType | None = None
) -> str | None:
    """Why ``params`` cannot configure ``algorithm``, or None.

    With ``problem_type``, checked against that estimator; without, against every
    estimator of the algorithm, and valid when valid for at least one (on save, the
    problem type is not known yet).
    """
    if problem_type is not None:
        return parameter_problem(estimator_class(algorithm, problem_type), params)
    classes = list(ALGORITHMS[algorithm].values())
    problems = [parameter_problem(cls, params) for cls in classes]
    if any(p is None for p in problems):
        return None
    if len(classes) == 1:
        return problems[0]
    valid = set().union(*(cls().get_params(deep=False) for cls in classes))
    unknown = sorted(set(params) - valid - set(PLATFORM_PARAMETERS))
    if unknown:
        names = " or ".join(cls.__name__ for cls in classes)
        allowed = ", ".join(sorted(valid - set(PLATFORM_PARAMETERS)))
        return f"unknown parameter {unknown[0]!r} for {names}; valid: {allowed}"
    return "; ".join(dict.fromkeys(p for p in problems if p))


def _error_text(node_id: str, error: Mapping[str, Any], model: type[_Config]) -> str:
    where = ".".join(str(p) for p in ("config", *error.get("loc", ())))
    message = str(error.get("msg", ""))
    if error.get("type") == "extra_forbidden":
        message = f"unknown key; allowed: {', '.join(model.model_fields) or 'none'}"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    return f"node {node_id!r}: {where}: {message}"


# --- the definition ---------------------------------------------------------------------------
class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class WorkflowNode(_Input):
    """One step of a workflow. Its ``config`` is checked against the schema of its
    ``type``; in /openapi.json a node is the union of those, discriminated by ``type``."""

    id: NodeId
    """The node's id, unique in the definition; edges name nodes by it."""
    type: NodeType
    """The node's type: selects its config."""
    # Stored as given; :meth:`typed_config` is what it means.
    config: JsonObject = Field(default_factory=dict)
    """The node's settings, per its type."""
    label: Label | None = None
    """A name shown for the node (free text)."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Documented as the discriminated union of the node types; validated as this
        # model (see NODE_VARIANTS).
        schema = handler(TypeAdapter(NodeVariant).core_schema)
        return {
            "description": "One step of a workflow; its type selects its config's schema.",
            **schema,
        }

    def config_problems(self) -> list[str]:
        """Why ``config`` does not fit the node's type, each naming the node and field."""
        model = CONFIG_MODELS[self.type]
        try:
            model.model_validate(self.config)
        except ValidationError as exc:
            return [_error_text(self.id, e, model) for e in exc.errors()]
        return []

    def typed_config(self) -> NodeConfig:
        """The config as its node type's model; :class:`DefinitionError` when it does not fit."""
        model = CONFIG_MODELS[self.type]
        try:
            parsed = model.model_validate(self.config)
        except ValidationError as exc:
            raise DefinitionError([_error_text(self.id, e, model) for e in exc.errors()]) from None
        assert isinstance(parsed, NodeConfig)
        return parsed

    def config_as(self, model: builtins.type[C]) -> C:  # (``type`` is a field here)
        """:meth:`typed_config`, checked to be ``model`` (for typed callers)."""
        parsed = self.typed_config()
        if not isinstance(parsed, model):
            raise TypeError(f"node {self.id!r} is a {self.type} node, not {model.__name__}")
        return parsed


class WorkflowEdge(_Input):
    """Data flows from ``source`` to ``target``."""

    source: NodeId
    """The id of the node whose output is used."""
    target: NodeId
    """The id of the node that takes it as input."""


class WorkflowDefinition(_Input):
    """Nodes of the seed's NodeTypes, and edges that form a DAG starting at datasets.

    The rules are :func:`definition_problems`'s (see the module's doc). An empty
    definition is a draft.
    """

    nodes: list[WorkflowNode] = Field(default_factory=list, max_length=MAX_NODES)
    """The steps, in any order."""
    edges: list[WorkflowEdge] = Field(default_factory=list, max_length=MAX_EDGES)
    """How data flows between them: a DAG whose every path starts at a dataset node."""

    @model_validator(mode="after")
    def _rules(self) -> WorkflowDefinition:
        problems = definition_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- navigation (on a validated definition) --
    def node(self, node_id: str) -> WorkflowNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def inputs(self, node_id: str) -> list[str]:
        """The ids of the nodes feeding ``node_id``, in edge order."""
        return [e.source for e in self.edges if e.target == node_id]

    def outputs(self, node_id: str) -> list[str]:
        """The ids of the nodes ``node_id`` feeds, in edge order."""
        return [e.target for e in self.edges if e.source == node_id]

    def downstream(self, node_id: str) -> set[str]:
        """Every node reachable from ``node_id`` (not itself): what its failure skips."""
        seen: set[str] = set()
        todo = self.outputs(node_id)
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.outputs(current))
        return seen

    def order(self) -> list[str]:
        """Node ids in topological order; ties broken by position in ``nodes`` (deterministic)."""
        position = {n.id: i for i, n in enumerate(self.nodes)}
        indegree = {n.id: 0 for n in self.nodes}
        for edge in self.edges:
            indegree[edge.target] += 1
        ready = [(position[n], n) for n, d in indegree.items() if d == 0]
        heapq.heapify(ready)
        out: list[str] = []
        while ready:
            _, current = heapq.heappop(ready)
            out.append(current)
            for target in self.outputs(current):
                indegree[target] -= 1
                if indegree[target] == 0:
                    heapq.heappush(ready, (position[target], target))
        return out

    def dataset_ids(self) -> dict[str, uuid.UUID]:
        """node id -> dataset id, for the dataset nodes that name one."""
        out = {}
        for node in self.nodes:
            if node.type == NodeType.DATASET:
                dataset_id = node.config_as(DatasetConfig).dataset_id
                if dataset_id is not None:
                    out[node.id] = dataset_id
        return out

    def dataset_node(self, node_id: str) -> str:
        """The dataset node at the start of ``node_id``'s chain of single inputs."""
        current = node_id
        while self.node(current).type != NodeType.DATASET:
            current = self.inputs(current)[0]
        return current


def definition_problems(definition: WorkflowDefinition) -> list[str]:
    """Every reason ``definition`` cannot be saved (empty: it can)."""
    problems: list[str] = []
    types: dict[str, NodeType] = {}
    for node in definition.nodes:
        if node.id in types:
            problems.append(f"node id {node.id!r} is used twice")
        types[node.id] = node.type
        problems.extend(node.config_problems())
    incoming: dict[str, list[str]] = {n: [] for n in types}
    outgoing: dict[str, list[str]] = {n: [] for n in types}
    structural = False
    for edge in definition.edges:
        missing = [n for n in (edge.source, edge.target) if n not in types]
        if missing:
            problems.append(f"edge {edge.source}->{edge.target} names unknown node {missing[0]!r}")
        elif edge.source == edge.target:
            problems.append(f"edge {edge.source}->{edge.target} joins a node to itself")
        elif edge.target in outgoing[edge.source]:
            problems.append(f"edge {edge.source}->{edge.target} is given twice")
        else:
            outgoing[edge.source].append(edge.target)
            incoming[edge.target].append(edge.source)
            continue
        structural = True
    if structural or len(types) < len(definition.nodes):
        return problems
    for node_id, node_type in types.items():
        sources = incoming[node_id]
        if node_type == NodeType.DATASET:
            if sources:
                problems.append(f"dataset node {node_id!r} has an incoming edge")
            continue
        if not sources:
            problems.append(f"node {node_id!r} has no input: every path starts at a dataset node")
            continue
        allowed = INPUT_TYPES[node_type]
        wanted = " or ".join(f"{'an' if t[0] in 'aeiou' else 'a'} {t} node" for t in allowed)
        if len(sources) > 1:
            problems.append(
                f"{node_type} node {node_id!r} takes exactly one input ({wanted}),"
                f" not {len(sources)}"
            )
        elif types[sources[0]] not in allowed:
            problems.append(
                f"{node_type} node {node_id!r} takes {wanted} as input,"
                f" not the {types[sources[0]]} node {sources[0]!r}"
            )
    # Kahn: whatever is left after removing sources repeatedly lies on a cycle.
    indegree = {n: len(s) for n, s in incoming.items()}
    ready = [n for n, d in indegree.items() if d == 0]
    seen = 0
    while ready:
        current = ready.pop()
        seen += 1
        for target in outgoing[current]:
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
    if seen < len(types):
        cyclic = sorted(n for n, d in indegree.items() if d > 0)
        problems.append(f"the edges form a cycle through {', '.join(cyclic[:5])}")
    return problems


# --- problem types ------------------------------------------------------------------------
def infer_problem_type(target: pd.Series) -> ProblemType:
    """What a target's values say: regression for a numeric column whose values are
    not all whole numbers or take more than :data:`MAX_CLASSES` distinct values;
    classification otherwise (text, booleans, categories, few whole numbers)."""
    values = target.dropna()
    if values.empty or pd.api.types.is_bool_dtype(values):
        return ProblemType.CLASSIFICATION
    if pd.api.types.is_numeric_dtype(values):
        if pd.api.types.is_float_dtype(values):
            numbers = values.to_numpy(dtype=float)
            if not bool(np.all(np.isfinite(numbers) & (np.mod(numbers, 1) == 0))):
                return ProblemType.REGRESSION
        if values.nunique() > MAX_CLASSES:
            return ProblemType.REGRESSION
    return ProblemType.CLASSIFICATION


_DISTINCT_KEYS = ("n_unique", "unique_count", "distinct_count", "nunique")


def infer_problem_type_from_metadata(column: Mapping[str, Any]) -> ProblemType | None:
    """:func:`infer_problem_type` from a column's ingestion metadata, or None when only
    the values can tell.

    Reads ``dtype``, and a distinct count when the metadata has one (the first of
    ``n_unique``, ``unique_count``, ``distinct_count``, ``nunique``). Text, boolean
    and category columns are classification; integers with a known count are decided
    by it; floats with more than :data:`MAX_CLASSES` distinct values are regression,
    other floats wait for the data.
    """
    dtype = str(column.get("dtype") or "").lower()
    if not dtype:
        return None
    distinct = next(
        (int(v) for k in _DISTINCT_KEYS if isinstance(v := column.get(k), int | float)), None
    )
    if dtype.startswith("bool"):
        return ProblemType.CLASSIFICATION
    if dtype.startswith(("int", "uint", "float", "double", "decimal")):
        if distinct is not None and distinct > MAX_CLASSES:
            return ProblemType.REGRESSION
        if dtype.startswith(("int", "uint")) and distinct is not None:
            return ProblemType.CLASSIFICATION
        return None
    if dtype.startswith(("datetime", "timedelta", "date", "time", "period")):
        return None
    return ProblemType.CLASSIFICATION


def resolve_problem_type(
    algorithm: str, declared: ProblemType | None, inferred: ProblemType | None
) -> ProblemType | None:
    """The problem a model node solves (None: not known until the data is read).

    ``kmeans`` is clustering. A supervised algorithm takes the dataset's declared
    type when it is classification or regression, else what the target's values say
    (``inferred``, from :func:`infer_problem_type`). The API and the worker both
    decide with this function.
    """
    if not is_supervised(algorithm):
        return ProblemType.CLUSTERING
    return supervised_problem_type(declared, inferred)


def supervised_problem_type(
    declared: ProblemType | None, inferred: ProblemType | None
) -> ProblemType | None:
    """The declared type when it is classification or regression, else ``inferred``."""
    if declared in (ProblemType.CLASSIFICATION, ProblemType.REGRESSION):
        return declared
    return inferred


# --- runnable ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetInfo:
    """What is known, before a run, of the dataset version a dataset node reads."""

    problem_type: ProblemType | None = None
    target_column: str | None = None
    #: The version's column names; None when not known (the column checks then wait).
    columns: tuple[str, ...] | None = None
    #: What the target's values say (:func:`infer_problem_type`), when known.
    target_problem_type: ProblemType | None = None

    @classmethod
    def from_metadata(
        cls,
        problem_type: ProblemType | None,
        target_column: str | None,
        columns_metadata: Mapping[str, Any] | None,
    ) -> DatasetInfo:
        """From a dataset and its version's ``columns_metadata``
        (``{"columns": [{"name", "dtype", ...}]}``; anything else counts as unknown)."""
        entries = columns_metadata.get("columns") if isinstance(columns_metadata, Mapping) else None
        if not isinstance(entries, list) or not all(
            isinstance(e, Mapping) and isinstance(e.get("name"), str) for e in entries
        ):
            return cls(problem_type, target_column)
        columns = tuple(e["name"] for e in entries)
        target = next((e for e in entries if e["name"] == target_column), None)
        inferred = infer_problem_type_from_metadata(target) if target is not None else None
        return cls(problem_type, target_column, columns, inferred)

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, problem_type: ProblemType | None, target_column: str | None
    ) -> DatasetInfo:
        """From the data itself (the worker, at run time)."""
        columns = tuple(str(c) for c in frame.columns)
        inferred = (
            infer_problem_type(frame[target_column])
            if target_column is not None and target_column in frame.columns
            else None
        )
        return cls(problem_type, target_column, columns, inferred)


def model_problems(
    definition: WorkflowDefinition, node_id: str, info: DatasetInfo
) -> tuple[ProblemType | None, list[str]]:
    """The problem type model node ``node_id`` solves on ``info``'s dataset, and why it
    cannot run there."""
    node = definition.node(node_id)
    config = node.config_as(ModelConfig)
    algorithm = config.algorithm
    problems: list[str] = []
    data_node = definition.dataset_node(node_id)
    if is_supervised(algorithm):
        if info.target_column is None:
            problems.append(
                f"node {node_id!r}: {algorithm} needs a target column, and the dataset of"
                f" node {data_node!r} has none (set the dataset's target_column)"
            )
        elif info.columns is not None and info.target_column not in info.columns:
            problems.append(
                f"node {node_id!r}: the target column {info.target_column!r} is not a column"
                f" of the dataset of node {data_node!r}"
            )
    problem_type = resolve_problem_type(algorithm, info.problem_type, info.target_problem_type)
    if problem_type is None:
        return None, problems
    if problem_type not in ALGORITHMS[algorithm]:
        fits = " or ".join(str(p) for p in ALGORITHMS[algorithm])
        problems.append(
            f"node {node_id!r}: {algorithm} is for {fits}, but the dataset of node"
            f" {data_node!r} is a {problem_type} problem"
        )
        return problem_type, problems
    problem = hyperparameter_problem(algorithm, config.hyperparameters, problem_type)
    if problem:
        problems.append(f"node {node_id!r}: config.hyperparameters: {problem}")
    return problem_type, problems


def automl_problems(
    definition: WorkflowDefinition, node_id: str, info: DatasetInfo, classes: int | None = None
) -> tuple[ProblemType | None, list[str]]:
    """The problem type automl node ``node_id`` solves on ``info``'s dataset, and why it
    cannot run there (``classes``: the target's class count, when known)."""
    config = definition.node(node_id).config_as(AutoMLConfig)
    data_node = definition.dataset_node(node_id)
    problems: list[str] = []
    if info.target_column is None:
        problems.append(
            f"node {node_id!r}: automl needs a target column, and the dataset of node"
            f" {data_node!r} has none (set the dataset's target_column)"
        )
        return None, problems
    if info.columns is not None and info.target_column not in info.columns:
        problems.append(
            f"node {node_id!r}: the target column {info.target_column!r} is not a column"
            f" of the dataset of node {data_node!r}"
        )
    problem_type = supervised_problem_type(info.problem_type, info.target_problem_type)
    if info.problem_type == ProblemType.CLUSTERING:
        problem_type = ProblemType.CLUSTERING  # declared: automl_config_problems refuses it
    if problem_type is None:
        return None, problems
    learners = tuple(config.estimators) if config.estimators else None
    problems.extend(
        f"node {node_id!r}: {p}"
        for p in automl_config_problems(problem_type, config.metric, learners, classes)
    )
    return problem_type, problems


def visualize_problems(
    definition: WorkflowDefinition, node_id: str, problem_type: ProblemType | None
) -> list[str]:
    """Why visualize node ``node_id`` cannot show its model (solving ``problem_type``)."""
    kind = definition.node(node_id).config_as(VisualizeConfig).kind
    if problem_type is None or problem_type in KIND_PROBLEM_TYPES[kind]:
        return []
    fits = " or ".join(str(p) for p in KIND_PROBLEM_TYPES[kind])
    model = definition.inputs(node_id)[0]
    return [
        f"node {node_id!r}: {kind} shows a {fits} model, but model node {model!r}"
        f" solves {problem_type}"
    ]


def runnable_problems(
    definition: WorkflowDefinition, datasets: Mapping[str, DatasetInfo]
) -> list[str]:
    """Why ``definition`` cannot run on ``datasets`` (dataset node id -> what is known)."""
    if not definition.nodes:
        return ["the workflow has no nodes"]
    problems: list[str] = []
    solves: dict[str, ProblemType | None] = {}
    for node_id in definition.order():
        node = definition.node(node_id)
        if node.type == NodeType.DATASET:
            if node.config_as(DatasetConfig).dataset_id is None:
                problems.append(f"dataset node {node_id!r} names no dataset (config.dataset_id)")
            elif node_id not in datasets:
                problems.append(f"dataset node {node_id!r}: nothing is known of its dataset")
        elif node.type == NodeType.MODEL:
            info = datasets.get(definition.dataset_node(node_id))
            if info is not None:
                solves[node_id], found = model_problems(definition, node_id, info)
                problems.extend(found)
        elif node.type == NodeType.AUTOML:
            info = datasets.get(definition.dataset_node(node_id))
            if info is not None:
                solves[node_id], found = automl_problems(definition, node_id, info)
                problems.extend(found)
        elif node.type == NodeType.VISUALIZE:
            model = definition.inputs(node_id)[0]
            problems.extend(visualize_problems(definition, node_id, solves.get(model)))
    return problems


def check_runnable(definition: WorkflowDefinition, datasets: Mapping[str, DatasetInfo]) -> None:
    """:func:`runnable_problems`, raised as a :class:`DefinitionError` when there are any."""
    problems = runnable_problems(definition, datasets)
    if problems:
        raise DefinitionError(problems)


__all__ = [
    "AutoMLConfig",
    "automl_problems",
    "CONFIG_MODELS",
    "DatasetConfig",
    "DatasetInfo",
    "DefinitionError",
    "ModelConfig",
    "NodeConfig",
    "PreprocessConfig",
    "RegisterConfig",
    "SaveConfig",
    "VisualizeConfig",
    "WorkflowDefinition",
    "WorkflowEdge",
    "WorkflowNode",
    "check_runnable",
    "definition_problems",
    "hyperparameter_problem",
    "infer_problem_type",
    "infer_problem_type_from_metadata",
    "model_problems",
    "resolve_problem_type",
    "supervised_problem_type",
    "runnable_problems",
    "visualize_problems",
]
