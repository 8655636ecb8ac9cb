"""The config schema: pydantic models of every section, unknown keys and non-finite numbers refused."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from sgdcli.config.base import (
    Activation,
    Flag,
    Init,
    Integer,
    Number,
    PositiveFloat,
    Probability,
    Section,
    resolve_path,
)
from sgdcli.config.data_sources import DataConfig
from sgdcli.config.image_layers import (
    AvgPool2dConfig,
    BatchNormConfig,
    Conv2dConfig,
    FlattenConfig,
    GlobalAvgPool2dConfig,
    MaxPool2dConfig,
)

# ---------------------------------------------------------------- model

class DenseConfig(Section):
    """A fully connected layer y = activation(x @ weight + bias)."""

    type: Literal["dense"]
    units: Integer = Field(ge=1, le=1_000_000)
    activation: Activation = "identity"
    negative_slope: Number = Field(0.01, ge=0, lt=1, description="slope of leaky_relu for x < 0")
    init: Init | None = Field(None, description="weight init (default: he_uniform for relu-like, else glorot_uniform)")

    @model_validator(mode="before")
    @classmethod
    def _resolve_init(cls, data: Any) -> Any:  # so validate and a run's config.yaml show the init used
        if isinstance(data, dict) and data.get("init") is None:
            relu_like = data.get("activation") in ("relu", "leaky_relu")
            data = {**data, "init": "he_uniform" if relu_like else "glorot_uniform"}
        return data


class ActivationConfig(Section):
    """A standalone activation function."""

    type: Literal["activation"]
    function: Activation
    negative_slope: Number = Field(0.01, ge=0, lt=1)


class DropoutConfig(Section):
    """Inverted dropout: zero each input with probability `rate` while training."""

    type: Literal["dropout"]
    rate: Probability


LayerConfig = Annotated[
    Union[DenseConfig, ActivationConfig, DropoutConfig, Conv2dConfig, MaxPool2dConfig, AvgPool2dConfig,
          GlobalAvgPool2dConfig, FlattenConfig, BatchNormConfig],
    Field(discriminator="type"),
]


class ModelConfig(Section):
    layers: list[LayerConfig] = Field(min_length=1)
    dtype: Literal["float32", "float64"] = "float32"

    @field_validator("layers")
    @classmethod
    def _has_a_dense_layer(cls, layers: list) -> list:
        if not any(isinstance(layer, DenseConfig) for layer in layers):
            raise ValueError("expected at least one dense layer")
        return layers

    @property
    def convolutional(self) -> bool:
        """Whether the model has a conv2d layer (what OpenBLAS's idle spin is chosen by: engine/spin.py)."""
        return any(isinstance(layer, Conv2dConfig) for layer in self.layers)


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
    warmup_epochs: Number = Field(0, ge=0)


class StepDecayConfig(Section):
    type: Literal["step"]
    every_epochs: Number = Field(gt=0, description="multiply the step size by `factor` every this many epochs")
    factor: Annotated[Number, Field(gt=0, le=1)] = 0.5
    warmup_epochs: Number = Field(0, ge=0)


class ExponentialConfig(Section):
    type: Literal["exponential"]
    decay_rate: Annotated[Number, Field(gt=0, le=1)] = Field(description="step size multiplied by this per epoch")
    warmup_epochs: Number = Field(0, ge=0)


class InverseTimeConfig(Section):
    type: Literal["inverse_time"]
    decay_rate: Number = Field(gt=0, description="lr / (1 + decay_rate * epochs_done)")
    warmup_epochs: Number = Field(0, ge=0)


class CosineConfig(Section):
    type: Literal["cosine"]
    min_learning_rate: Number = Field(0.0, ge=0)
    warmup_epochs: Number = Field(0, ge=0)


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
    weight_decay: Number = Field(0.0, ge=0, description="L2 penalty added to the gradient (AdamW: decoupled)")
    clip_norm: PositiveFloat | None = Field(None, description="clip gradients to this global L2 norm")
    schedule: ScheduleConfig = Field(default_factory=lambda: ConstantConfig(type="constant"))

    _schedule_type = model_validator(mode="before")(_constant_by_default)

    @property
    def step_size(self) -> float:
        return self.learning_rate


class SgdConfig(OptimizerBase):
    type: Literal["sgd"]
    momentum: Probability = 0.0
    nesterov: Flag = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "SgdConfig":
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: true needs momentum > 0")
        return self


class AdagradConfig(OptimizerBase):
    type: Literal["adagrad"]
    epsilon: PositiveFloat = 1e-10
    initial_accumulator: Number = Field(0.0, ge=0)


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
    weight_decay: Number = Field(0.01, ge=0, description="decoupled decay: w -= learning_rate * weight_decay * w")


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
    size: Integer = Field(32, ge=1, description="samples per update in minibatch mode (ignored otherwise)")


class TrainingConfig(Section):
    epochs: Integer = Field(ge=1, le=1_000_000)
    batch: BatchConfig = Field(default_factory=lambda: BatchConfig())
    shuffle: Flag = Field(True, description="reshuffle the training set every epoch (seeded)")
    eval_train: Flag = Field(True, description="measure the loss on the whole training set after each epoch")
    checkpoint_every: Integer = Field(0, ge=0, description="also keep a checkpoint every N epochs (0: only last and best)")
    patience: Integer | None = Field(None, ge=1, description="stop after this many epochs without a better validation loss")
    track: list[Literal["grad_norm", "weight_norm", "update_ratio"]] = Field(default_factory=list)  # layers.png
    boundary: Flag = Field(True, description="1 or 2 input features: boundary.png and boundary.gif")


class RunConfig(Section):
    """What every config names: the run and its seed."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", description="run name (prefix of the run directory)")
    seed: Integer = Field(0, ge=0, le=2**63 - 1)
    _file: str = PrivateAttr("<config>")  # the YAML file it was read from: later messages name it

    @property
    def file(self) -> str:
        return self._file

    def read_from(self, file: str) -> "RunConfig":
        self._file = file
        return self

    def __eq__(self, other: object) -> bool:  # the same values, whichever file they were read from
        return type(self) is type(other) and self.__dict__ == other.__dict__

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
    start: list[Number] = Field(min_length=1, max_length=1, description="the starting parameter [w]")


class ValleyConfig(Section):
    """f(x, y) = (x^2 + condition * y^2) / 2: a narrow valley, ill-conditioned for large `condition`."""

    type: Literal["valley"]
    start: list[Number] = Field(min_length=2, max_length=2, description="the starting point [x, y]")
    condition: Number = Field(50.0, ge=1, le=1e6, description="curvature ratio across / along the valley")


class RosenbrockConfig(Section):
    """f(x, y) = (1 - x)^2 + 100 (y - x^2)^2: a curved valley with its minimum at (1, 1)."""

    type: Literal["rosenbrock"]
    start: list[Number] = Field(min_length=2, max_length=2, description="the starting point [x, y]")


class LeastSquaresConfig(Section):
    """f(w, b) = mean((w x_i + b - y_i)^2) over two columns x, y of a CSV file: a line fitted by batches."""

    type: Literal["least_squares"]
    data: Path = Field(description="a CSV file with a header row (relative to the config file)")
    x: str = Field(description="the input column")
    y: str = Field(description="the target column")
    scale: Literal["standard", "none"] = Field("standard", description="standard: both columns to mean 0, variance 1")
    start: list[Number] = Field([0.0, 0.0], min_length=2, max_length=2, description="the starting point [w, b]")
    _paths = field_validator("data")(resolve_path)


ObjectiveSpec = Annotated[Union[DoubleWellConfig, ValleyConfig, RosenbrockConfig, LeastSquaresConfig],
                          Field(discriminator="type")]


class StepsConfig(Section):
    steps: Integer = Field(ge=1, le=1_000_000, description="how many updates to take")
    batch: BatchConfig | None = Field(None, description="least_squares: samples per update (default: full)")


class ObjectiveConfig(RunConfig):
    """A built-in function of a few parameters replaces data, model and loss: watch the path."""

    objective: ObjectiveSpec
    optimizer: OptimizerConfig
    training: StepsConfig

    @model_validator(mode="after")
    def _batches_need_samples(self) -> "ObjectiveConfig":
        if self.training.batch is not None and not isinstance(self.objective, LeastSquaresConfig):
            raise ValueError(f"training.batch: only the least_squares objective has samples to batch; "
                             f"{self.objective.type} is a plain function")
        return self


AnyConfig = Union[ExperimentConfig, ObjectiveConfig]
