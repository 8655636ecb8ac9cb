"""The experiment config: pydantic models (unknown keys refused), loading and --set overrides."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from sgdcli.errors import ConfigError
from sgdcli.yamlio import parse_scalar, read_yaml

PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    """Base of every config section: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


def _resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Relative data paths are relative to the config file's folder."""
    if value is None:
        return None
    base = (info.context or {}).get("base_dir")
    value = Path(value).expanduser()
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value.resolve()


# ---------------------------------------------------------------- data
class DataBase(Section):
    scale: Literal["standard", "minmax", "none"] = Field(
        "standard", description="feature scaling, fit on the training split only")
    validation: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.2, description="fraction of the training data held out (stratified for classification)")


class FileDataBase(DataBase):
    path: Path = Field(description="training data file (relative to the config file)")
    validation_file: Path | None = Field(None, description="separate validation file (replaces the fraction)")
    test_file: Path | None = Field(None, description="held-out test file, used by `sgdcli eval --split test`")

    _paths = field_validator("path", "validation_file", "test_file")(_resolve_path)


class CsvDataConfig(FileDataBase):
    """A CSV file with a header row: numeric feature columns and one target column."""

    source: Literal["csv"]
    target: str = Field(description="name of the target column")
    features: list[str] | None = Field(None, description="feature columns (default: every other column)")


class NpzDataConfig(FileDataBase):
    """An .npz file holding arrays `x` (N, D) and `y` (N,) or (N, k)."""

    source: Literal["npz"]


class SyntheticDataConfig(DataBase):
    """A built-in generated dataset for quick experiments."""

    source: Literal["synthetic"]
    dataset: Literal["xor", "spirals", "moons", "circles", "sine"]
    samples: int = Field(400, ge=4, le=1_000_000)
    noise: float = Field(0.1, ge=0, le=10)


class IdxDataConfig(DataBase):
    """Images and labels in the IDX format of MNIST and Fashion-MNIST (gzip-compressed or not)."""

    source: Literal["idx"]
    path: Path | None = Field(None, description="folder holding the standard file names (train-images-idx3-ubyte[.gz], ...)")
    train_images: Path | None = None
    train_labels: Path | None = None
    test_images: Path | None = None
    test_labels: Path | None = None
    class_names: list[str] | None = Field(None, min_length=2, description="a name per label 0, 1, ...")
    scale: Literal["unit", "standard", "minmax", "none"] = Field(
        "unit", description="unit: pixel values divided by 255, to [0, 1]")

    _paths = field_validator("path", "train_images", "train_labels", "test_images", "test_labels")(_resolve_path)

    @model_validator(mode="after")
    def _one_way_to_name_the_files(self) -> "IdxDataConfig":
        explicit = (self.train_images, self.train_labels)
        if self.path is None and None in explicit:
            raise ValueError("give data.path (a folder with the standard file names) "
                             "or both data.train_images and data.train_labels")
        if self.path is not None and any(v is not None for v in (*explicit, self.test_images, self.test_labels)):
            raise ValueError("give data.path or the explicit file paths, not both")
        if (self.test_images is None) != (self.test_labels is None):
            raise ValueError("give both data.test_images and data.test_labels, or neither")
        return self


DataConfig = Annotated[
    Union[CsvDataConfig, NpzDataConfig, SyntheticDataConfig, IdxDataConfig], Field(discriminator="source")
]


# ---------------------------------------------------------------- model
Activation = Literal["relu", "leaky_relu", "sigmoid", "tanh", "identity"]
Init = Literal["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "small_normal"]


class DenseConfig(Section):
    """A fully connected layer y = activation(x @ weight + bias)."""

    type: Literal["dense"]
    units: int = Field(ge=1, le=1_000_000)
    activation: Activation = "identity"
    negative_slope: float = Field(0.01, ge=0, lt=1, description="slope of leaky_relu for x < 0")
    init: Init | None = Field(None, description="weight init (default: he_uniform for relu-like, else glorot_uniform)")


class ActivationConfig(Section):
    """A standalone activation function."""

    type: Literal["activation"]
    function: Activation
    negative_slope: float = Field(0.01, ge=0, lt=1)


class DropoutConfig(Section):
    """Inverted dropout: zero each input with probability `rate` while training."""

    type: Literal["dropout"]
    rate: Probability


LayerConfig = Annotated[Union[DenseConfig, ActivationConfig, DropoutConfig], Field(discriminator="type")]


class ModelConfig(Section):
    layers: list[LayerConfig] = Field(min_length=1)
    dtype: Literal["float32", "float64"] = "float32"

    @field_validator("layers")
    @classmethod
    def _has_a_dense_layer(cls, layers: list) -> list:
        if not any(isinstance(layer, DenseConfig) for layer in layers):
            raise ValueError("expected at least one dense layer")
        return layers


# ---------------------------------------------------------------- loss
class MseConfig(Section):
    type: Literal["mse"]


class MaeConfig(Section):
    type: Literal["mae"]


class HuberConfig(Section):
    type: Literal["huber"]
    delta: PositiveFloat = 1.0


class BinaryCrossEntropyConfig(Section):
    type: Literal["binary_cross_entropy"]


class CrossEntropyConfig(Section):
    type: Literal["cross_entropy"]


LossConfig = Annotated[
    Union[MseConfig, MaeConfig, HuberConfig, BinaryCrossEntropyConfig, CrossEntropyConfig], Field(discriminator="type")
]
CLASSIFICATION_LOSSES = (BinaryCrossEntropyConfig, CrossEntropyConfig)


# ---------------------------------------------------------------- schedules
class ConstantConfig(Section):
    type: Literal["constant"]
    warmup_epochs: float = Field(0, ge=0)


class StepDecayConfig(Section):
    type: Literal["step"]
    every_epochs: float = Field(gt=0, description="multiply the step size by `factor` every this many epochs")
    factor: Annotated[float, Field(gt=0, le=1)] = 0.5
    warmup_epochs: float = Field(0, ge=0)


class ExponentialConfig(Section):
    type: Literal["exponential"]
    decay_rate: Annotated[float, Field(gt=0, le=1)] = Field(description="step size multiplied by this per epoch")
    warmup_epochs: float = Field(0, ge=0)


class InverseTimeConfig(Section):
    type: Literal["inverse_time"]
    decay_rate: float = Field(gt=0, description="lr / (1 + decay_rate * epochs_done)")
    warmup_epochs: float = Field(0, ge=0)


class CosineConfig(Section):
    type: Literal["cosine"]
    min_learning_rate: float = Field(0.0, ge=0)
    warmup_epochs: float = Field(0, ge=0)


ScheduleConfig = Annotated[
    Union[ConstantConfig, StepDecayConfig, ExponentialConfig, InverseTimeConfig, CosineConfig],
    Field(discriminator="type"),
]


# ---------------------------------------------------------------- optimizers
def _constant_by_default(data: Any) -> Any:
    """A schedule section without a type is the constant one (`--set optimizer.schedule.warmup_epochs=2`)."""
    if isinstance(data, dict) and isinstance(data.get("schedule"), dict) and "type" not in data["schedule"]:
        data = {**data, "schedule": {"type": "constant", **data["schedule"]}}
    return data


class OptimizerBase(Section):
    learning_rate: PositiveFloat = Field(description="the step size")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient (AdamW: decoupled)")
    clip_norm: PositiveFloat | None = Field(None, description="clip gradients to this global L2 norm")
    schedule: ScheduleConfig = Field(default_factory=lambda: ConstantConfig(type="constant"))

    _schedule_type = model_validator(mode="before")(_constant_by_default)

    @property
    def step_size(self) -> float:
        return self.learning_rate


class SgdConfig(OptimizerBase):
    type: Literal["sgd"]
    momentum: Probability = 0.0
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "SgdConfig":
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: true needs momentum > 0")
        return self


class AdagradConfig(OptimizerBase):
    type: Literal["adagrad"]
    epsilon: PositiveFloat = 1e-10
    initial_accumulator: float = Field(0.0, ge=0)


class RmspropConfig(OptimizerBase):
    type: Literal["rmsprop"]
    rho: Probability = 0.9
    epsilon: PositiveFloat = 1e-8
    momentum: Probability = 0.0


class AdamConfig(OptimizerBase):
    type: Literal["adam"]
    beta1: Probability = 0.9
    beta2: Probability = 0.999
    epsilon: PositiveFloat = 1e-8


class AdamwConfig(AdamConfig):
    type: Literal["adamw"]  # type: ignore[assignment]
    weight_decay: float = Field(0.01, ge=0, description="decoupled decay: w -= learning_rate * weight_decay * w")


class PerturbConfig(Section):
    """The slow way, without gradients: nudge one coefficient at a time by ±delta, keep what helps."""

    type: Literal["perturb"]
    delta: PositiveFloat = Field(description="how far each coefficient is nudged up and down")
    schedule: ScheduleConfig = Field(default_factory=lambda: ConstantConfig(type="constant"))

    _schedule_type = model_validator(mode="before")(_constant_by_default)

    @property
    def step_size(self) -> float:
        return self.delta


OptimizerConfig = Annotated[
    Union[SgdConfig, AdagradConfig, RmspropConfig, AdamConfig, AdamwConfig, PerturbConfig], Field(discriminator="type")
]
GRADIENT_OPTIMIZERS = (SgdConfig, AdagradConfig, RmspropConfig, AdamConfig, AdamwConfig)


# ---------------------------------------------------------------- training
class BatchConfig(Section):
    mode: Literal["sgd", "minibatch", "full"] = Field(
        "minibatch", description="sgd: one sample per update; minibatch: `size` samples; full: the whole training set")
    size: int = Field(32, ge=1, description="samples per update in minibatch mode (ignored otherwise)")


class TrainingConfig(Section):
    epochs: int = Field(ge=1, le=1_000_000)
    batch: BatchConfig = Field(default_factory=lambda: BatchConfig())
    shuffle: bool = Field(True, description="reshuffle the training set every epoch (seeded)")
    eval_train: bool = Field(True, description="measure the loss on the whole training set after each epoch")
    checkpoint_every: int = Field(0, ge=0, description="also keep a checkpoint every N epochs (0: only last and best)")
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without a better validation loss")


class RunConfig(Section):
    """What every config names: the run and its seed."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", description="run name (prefix of the run directory)")
    seed: int = Field(0, ge=0, le=2**63 - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (paths as strings): what config.yaml in a run directory holds."""
        return self.model_dump(mode="json")


class ExperimentConfig(RunConfig):
    """A network trained on data."""

    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    optimizer: OptimizerConfig
    training: TrainingConfig

    @property
    def is_classification(self) -> bool:
        return isinstance(self.loss, CLASSIFICATION_LOSSES)


# ---------------------------------------------------------------- objectives
class DoubleWellConfig(Section):
    """f(w) = w^4 - 4 w^2 + w: a local minimum near w = 1.35 and the global one near w = -1.47."""

    type: Literal["double_well"]
    start: list[float] = Field(min_length=1, max_length=1, description="the starting parameter [w]")


class ValleyConfig(Section):
    """f(x, y) = (x^2 + condition * y^2) / 2: a narrow valley, ill-conditioned for large `condition`."""

    type: Literal["valley"]
    start: list[float] = Field(min_length=2, max_length=2, description="the starting point [x, y]")
    condition: float = Field(50.0, ge=1, le=1e6, description="curvature ratio across / along the valley")


class RosenbrockConfig(Section):
    """f(x, y) = (1 - x)^2 + 100 (y - x^2)^2: a curved valley with its minimum at (1, 1)."""

    type: Literal["rosenbrock"]
    start: list[float] = Field(min_length=2, max_length=2, description="the starting point [x, y]")


ObjectiveSpec = Annotated[Union[DoubleWellConfig, ValleyConfig, RosenbrockConfig], Field(discriminator="type")]


class StepsConfig(Section):
    steps: int = Field(ge=1, le=1_000_000, description="how many updates to take")


class ObjectiveConfig(RunConfig):
    """A built-in function of a few parameters replaces data, model and loss: watch the path."""

    objective: ObjectiveSpec
    optimizer: OptimizerConfig
    training: StepsConfig


AnyConfig = Union[ExperimentConfig, ObjectiveConfig]


# ---------------------------------------------------------------- loading
def load_config(
    source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = (), base_dir: Path | None = None
) -> AnyConfig:
    """Load a config from a YAML file or a dict, apply `KEY=VALUE` overrides, validate.

    A config with an `objective:` section is an ObjectiveConfig (no data, model or loss).
    Relative data paths resolve against the config file's folder (or `base_dir`, default the
    current directory, for a dict).
    """
    if isinstance(source, dict):
        raw, where = _deep_copy(source), "<config>"
        base = Path(base_dir or Path.cwd())
    else:
        path = Path(source)
        raw, where = read_yaml(path), str(path)
        base = base_dir or path.parent
        if raw is None:
            raise ConfigError("the file is empty; expected a mapping of config keys", source=where)
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of config keys at the top level, received {_kind(raw)}", source=where)
    for item in overrides:
        apply_override(raw, item)
    schema = ObjectiveConfig if "objective" in raw else ExperimentConfig
    try:
        return schema.model_validate(raw, context={"base_dir": base})
    except pydantic.ValidationError as exc:
        raise ConfigError(format_validation_error(exc, schema), source=where) from None


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `dotted.path=value` to the raw config dict (value parsed as a YAML scalar)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects KEY=VALUE with a dotted key such as optimizer.momentum=0.9, received {item!r}")
    try:
        value = parse_scalar(text)
    except ConfigError as exc:
        raise ConfigError(f"--set {key}: {exc.message}") from None
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {here} expects a list index 0..{len(node) - 1}, received {part!r}")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and index not in node:
                node[index] = {}
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is a single value, not a section")
        if last:
            node[index] = value
        else:
            node = node[index]


def format_validation_error(exc: pydantic.ValidationError, schema: type[BaseModel]) -> str:
    """One line per problem: dotted path, what was expected, what was received."""
    lines = []
    for error in exc.errors():
        path, owner = _walk(error["loc"], schema)
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            key = str((error.get("ctx") or {}).get("discriminator", "type")).strip("'")
            path = f"{path}.{key}" if path else key
        lines.append(f"{path or '(top level)'}: {_describe(error, owner)}")
    return "\n".join(lines)


def _walk(loc: tuple, schema: type[BaseModel]) -> tuple[str, type[BaseModel] | None]:
    """Follow pydantic's loc (which includes union tags) through the schema.

    Returns the dotted path without the tags, and the model class owning the last key.
    """
    parts: list[str] = []
    current: Any = schema
    owner: type[BaseModel] | None = None
    for element in loc:
        current = _unwrap(current)
        if isinstance(current, list):  # a discriminated union: this element is the tag
            current = _unwrap(next((m for m in current if element in _tags(m)), None))
            continue
        parts.append(str(element))
        owner = current if isinstance(current, type) and issubclass(current, BaseModel) else None
        if owner is not None and element in owner.model_fields:
            current = owner.model_fields[element].annotation
        elif isinstance(element, int) and typing.get_origin(current) is list:
            current = typing.get_args(current)[0]
        else:
            current = None
    return ".".join(parts), owner


def _unwrap(tp: Any) -> Any:
    """Strip Annotated/Optional; a union of several models becomes a list of its members."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [m for m in typing.get_args(tp) if m is not type(None)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(models) > 1:
            return models
        return _unwrap(members[0]) if len(members) == 1 else tp
    return tp


def _tags(model: type[BaseModel]) -> tuple:
    for name in ("type", "source"):
        field = model.model_fields.get(name)
        if field is not None:
            return typing.get_args(field.annotation)
    return ()


def _describe(error: dict, owner: type[BaseModel] | None) -> str:
    kind, received = error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        allowed = sorted(owner.model_fields) if owner else []
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    if kind in ("union_tag_invalid", "literal_error"):
        expected = ctx.get("expected_tags") or ctx.get("expected")
        tag = ctx.get("tag", received)
        close = difflib.get_close_matches(str(tag), [t.strip(" '") for t in str(expected).replace(" or ", ",").split(",")], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"expected one of {expected}, received {tag!r}{hint}"
    if kind == "union_tag_not_found":
        return "required key is missing" if isinstance(received, dict) else f"expected a mapping, received {_show(received)}"
    if kind in ("model_attributes_type", "model_type", "dict_type"):
        return f"expected a mapping, received {_kind(received)} {_show(received)}"
    if kind == "string_pattern_mismatch":
        return f"expected a string matching {ctx.get('pattern')}, received {_show(received)}"
    message = error["msg"]
    if message.startswith("Value error, "):
        return message[len("Value error, "):]
    else:
        message = "expected " + message[0].lower() + message[1:].removeprefix("input should be ").removeprefix(
            "Input should be ")
        message = message.replace("expected input should be ", "expected ")
    return f"{message}, received {_show(received)}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}, 'l': [{'c': 2}]} -> {'a.b': 1, 'l.0.c': 2}: dotted paths of every leaf."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    if not out and prefix:
        out[prefix] = data
    return out
