"""The one place where config objects become runtime objects: data, model, loss, optimizer, schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from sgdcli.config import data_sources, shapes
from sgdcli.config import image_layers as image
from sgdcli.config import schema as cfg
from sgdcli.data import csvfile, idx, npzfile, splits
from sgdcli.data.dataset import Dataset, DataShape
from sgdcli.data.scaling import Scaler
from sgdcli.data.synthetic import synthetic
from sgdcli.engine import (
    activations,
    conv,
    init,
    layers,
    losses,
    normalization,
    objectives,
    optimizers,
    pooling,
    schedules,
)
from sgdcli.engine.model import Sequential
from sgdcli.engine.search import CoordinateSearch
from sgdcli.errors import ConfigError, DataError

ACTIVATIONS = {
    "relu": lambda slope: activations.ReLU(),
    "leaky_relu": lambda slope: activations.LeakyReLU(slope),
    "sigmoid": lambda slope: activations.Sigmoid(),
    "tanh": lambda slope: activations.Tanh(),
    "identity": lambda slope: activations.Identity(),
}
INITS = {
    "glorot_uniform": init.glorot_uniform,
    "glorot_normal": init.glorot_normal,
    "he_uniform": init.he_uniform,
    "he_normal": init.he_normal,
    "small_normal": init.small_normal,
}
LOSSES = {
    cfg.MseConfig: lambda c: losses.MeanSquaredError(),
    cfg.MaeConfig: lambda c: losses.MeanAbsoluteError(),
    cfg.HuberConfig: lambda c: losses.Huber(delta=c.delta),
    cfg.BinaryCrossEntropyConfig: lambda c: losses.BinaryCrossEntropy(),
    cfg.CrossEntropyConfig: lambda c: losses.CrossEntropy(),
}
OPTIMIZERS = {
    cfg.SgdConfig: lambda c: optimizers.SGD(momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay),
    cfg.AdagradConfig: lambda c: optimizers.AdaGrad(
        epsilon=c.epsilon, initial_accumulator=c.initial_accumulator, weight_decay=c.weight_decay),
    cfg.RmspropConfig: lambda c: optimizers.RMSProp(
        rho=c.rho, epsilon=c.epsilon, momentum=c.momentum, weight_decay=c.weight_decay),
    cfg.AdamConfig: lambda c: optimizers.Adam(
        beta1=c.beta1, beta2=c.beta2, epsilon=c.epsilon, weight_decay=c.weight_decay),
    cfg.AdamwConfig: lambda c: optimizers.AdamW(
        beta1=c.beta1, beta2=c.beta2, epsilon=c.epsilon, weight_decay=c.weight_decay),
    cfg.PerturbConfig: lambda c: CoordinateSearch(),
}
OBJECTIVES = {
    cfg.DoubleWellConfig: lambda c: objectives.DoubleWell(),
    cfg.ValleyConfig: lambda c: objectives.Valley(c.condition),
    cfg.RosenbrockConfig: lambda c: objectives.Rosenbrock(),
    cfg.LeastSquaresConfig: lambda c: _least_squares(c),
}


# ---------------------------------------------------------------- random streams
@dataclass
class Rngs:
    """Independent seeded streams, so that e.g. the initial weights do not depend on batch mode."""

    init: np.random.Generator
    split: np.random.Generator
    data: np.random.Generator
    shuffle: np.random.Generator
    dropout: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int) -> "Rngs":
        return cls(*(np.random.default_rng([seed, stream]) for stream in range(5)))


# ---------------------------------------------------------------- data
@dataclass(frozen=True)
class PreparedData:
    """Scaled float arrays for training, with what is needed to treat new data the same way."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    scaler: Scaler
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...] | None
    source: str
    sample_shape: tuple[int, ...]
    validation_mask: np.ndarray | None = None  # (N,) bool over the training file's rows; None: no split


def load_dataset(data: data_sources.DataConfig, classification: bool, rng: np.random.Generator | None = None,
                 path: Path | None = None, class_names: tuple[str, ...] | None = None,
                 features: tuple[str, ...] | None = None) -> Dataset:
    """Read the config's training data, or `path`: another file (a folder for IDX) in the same format.

    `class_names` and `features` are a trained model's classes and CSV columns: labels outside
    them are a data error, and columns are found by name.
    """
    if isinstance(data, data_sources.IdxDataConfig):
        if not classification:
            raise ConfigError("loss.type: IDX files hold class labels; expected cross_entropy, "
                              "received a regression loss")
        if path is not None:
            found = idx.find_idx_files(path)
            images, labels = found.get("test", found["train"])
        else:
            images, labels = idx_files(data, "train")
        return idx.load_idx(images, labels, tuple(data.class_names or ()) or None, class_names)
    if isinstance(data, data_sources.CsvDataConfig):
        return csvfile.load_csv(path or data.path, data.target, features or data.features, classification, class_names)
    if isinstance(data, data_sources.NpzDataConfig):
        return npzfile.load_npz(path or data.path, classification, class_names)
    if path is not None:
        raise DataError("a built-in synthetic dataset has no file format to read other files in", source=str(path))
    assert rng is not None
    return synthetic(data.dataset, data.samples, data.noise, rng)


def load_test_set(config: cfg.ExperimentConfig, class_names: tuple[str, ...] | None,
                  features: tuple[str, ...] | None = None, cached: bool = True) -> Dataset | None:
    """The config's held-out test set (data.test_file, or the IDX test pair), if it names one, read as
    the training data defines it: labels among its `class_names`, CSV columns found by its `features`
    names (any order, others ignored), as many features. `cached`: IDX through the decode cache."""
    data = config.data
    if isinstance(data, data_sources.IdxDataConfig):
        files = idx_files(data, "test")
        test = None if files is None else idx.load_idx(*files, tuple(data.class_names or ()) or None, class_names,
                                                       cached)
    elif getattr(data, "test_file", None) is not None:
        test = load_dataset(data, config.is_classification, path=data.test_file, class_names=class_names,
                            features=features)
    else:
        return None
    return test if test is None or features is None else check_width(test, features)


def check_width(dataset: Dataset | DataShape, features: tuple[str, ...]) -> Dataset | DataShape:
    """`dataset` (or its shape), which must have the training data's number of `features`: else a DataError."""
    if len(dataset.feature_names) != len(features):
        raise DataError(f"expected {len(features)} feature columns like the training data, "
                        f"received {len(dataset.feature_names)}", source=dataset.source)
    return dataset


def has_test_set(config: cfg.ExperimentConfig) -> bool:
    data = config.data
    if isinstance(data, data_sources.IdxDataConfig):
        return data.test_images is not None or (data.path is not None and "test" in idx.find_idx_files(data.path))
    return getattr(data, "test_file", None) is not None


def idx_files(data: data_sources.IdxDataConfig, split: str) -> tuple[Path, Path] | None:
    if data.path is not None:
        return idx.find_idx_files(data.path).get(split)
    if split == "train":
        return data.train_images, data.train_labels
    return None if data.test_images is None else (data.test_images, data.test_labels)


def split_data(config: cfg.ExperimentConfig, rngs: Rngs) -> tuple[Dataset, Dataset | None]:
    """The training and validation sets, unscaled: a separate file, or a seeded (stratified) split."""
    train, val, _ = split_with_mask(config, rngs)
    return train, val


def split_with_mask(config: cfg.ExperimentConfig, rngs: Rngs,
                    mask: np.ndarray | None = None) -> tuple[Dataset, Dataset | None, np.ndarray | None]:
    """split_data, and the validation mask over the training file's rows (None with a validation file
    or no validation). A given `mask` (a run's recorded split) is applied instead of drawing one."""
    data, classification = config.data, config.is_classification
    full = load_dataset(data, classification, rngs.data)
    check_targets(config, full.class_names, full.source)
    validation_file = getattr(data, "validation_file", None)
    if validation_file is not None:
        val = load_dataset(data, classification, path=validation_file, class_names=full.class_names,
                           features=full.feature_names)
        return full, check_width(val, full.feature_names), None
    if mask is None:
        mask = splits.validation_mask(full, data.validation, rngs.split, stratify=classification)
    elif len(mask) != len(full):
        raise DataError(f"the run's validation split covers {len(mask)} rows, the data now has {len(full)}",
                        source=full.source)
    return (*splits.apply_mask(full, mask), mask)


def prepare_data(config: cfg.ExperimentConfig, rngs: Rngs) -> PreparedData:
    """Load, split and scale (the scaler is fit on the training split only)."""
    train, val, mask = split_with_mask(config, rngs)
    scaler = Scaler.fit(train.x, config.data.scale)
    dtype = np.dtype(config.model.dtype)
    return PreparedData(
        x_train=scaler.transform(train.x, dtype),
        y_train=target_array(train.y, config, dtype),
        x_val=None if val is None else scaler.transform(val.x, dtype),
        y_val=None if val is None else target_array(val.y, config, dtype),
        scaler=scaler,
        feature_names=train.feature_names,
        class_names=train.class_names,
        source=train.source,
        sample_shape=sample_shape(config.data, train.x.shape[1], train.sample_shape),
        validation_mask=mask,
    )


def sample_shape(data: data_sources.DataConfig, width: int, own: tuple[int, ...]) -> tuple[int, ...]:
    """The data's own sample shape `own` (images keep theirs), or CSV's data.sample_shape over its `width` columns."""
    given = getattr(data, "sample_shape", None)
    if given is None:
        return own or (width,)
    if math.prod(given) != width:
        raise ConfigError(f"data.sample_shape: expected a shape of {width} values (the data's feature columns), "
                          f"received {list(given)} ({math.prod(given)} values)")
    return tuple(given)


def target_array(y: np.ndarray, config: cfg.ExperimentConfig, dtype: np.dtype) -> np.ndarray:
    """Targets as the loss wants them: class indices for cross-entropy, (N, 1) floats for binary."""
    if isinstance(config.loss, cfg.CrossEntropyConfig):
        return y
    if isinstance(config.loss, cfg.BinaryCrossEntropyConfig):
        return y.reshape(-1, 1).astype(dtype)
    return y.astype(dtype)


def check_targets(config: cfg.ExperimentConfig, class_names: tuple[str, ...] | None, source: str) -> None:
    """binary_cross_entropy needs exactly 2 classes: a DataError naming the data file and the config."""
    names = class_names or ()
    if isinstance(config.loss, cfg.BinaryCrossEntropyConfig) and len(names) != 2:
        raise DataError(f"{_target_name(config)}: expected exactly 2 classes for loss.type binary_cross_entropy "
                        f"(in {config.file}), received {len(names)}: {names_text(names)}", source=source)


def names_text(names: tuple[str, ...], shown: int = 10) -> str:
    """Class names for a message: 'cat, dog, emu', or the first ten and how many in all."""
    return ", ".join(names[:shown]) + (f", … ({len(names)} in all)" if len(names) > shown else "")


def _target_name(config: cfg.ExperimentConfig) -> str:
    target = getattr(config.data, "target", None)
    return f"column {target!r}" if target else "the labels"


def output_width(config: cfg.ExperimentConfig, prepared: PreparedData) -> int:
    """How many outputs the last layer must have for this data and loss."""
    return outputs_for(config, prepared.class_names, prepared.y_train)


def outputs_for(config: cfg.ExperimentConfig, class_names: tuple[str, ...] | None, y) -> int:
    """Outputs the last layer needs: one per class (cross_entropy), 1 (binary), else y's columns."""
    if isinstance(config.loss, cfg.CrossEntropyConfig):
        return len(class_names or ())
    if isinstance(config.loss, cfg.BinaryCrossEntropyConfig):
        return 1
    return y.shape[1] if y.ndim == 2 else 1


# ---------------------------------------------------------------- model
def build_model(model: cfg.ModelConfig, sample_shape: int | tuple[int, ...], out_features: int,
                rng: np.random.Generator) -> Sequential:
    """Layers in config order for samples of `sample_shape` (an int: flat features); the last dense
    layer's units must match the targets. A layer that does not fit its input is a ConfigError."""
    last_dense = max(i for i, layer in enumerate(model.layers) if isinstance(layer, cfg.DenseConfig))
    if model.layers[last_dense].units != out_features:
        raise ConfigError(f"model.layers.{last_dense}.units: expected {out_features} (the number of "
                          f"{'classes' if out_features > 1 else 'outputs'} the data and loss need), "
                          f"received {model.layers[last_dense].units}")
    try:
        shape_list = shapes.infer_shapes(model.layers, (sample_shape,) if isinstance(sample_shape, int) else sample_shape)
    except shapes.ShapeError as exc:
        raise ConfigError(str(exc)) from None
    dtype = np.dtype(model.dtype)
    built = [LAYERS[type(spec)](spec, shape_list[i], dtype, rng) for i, spec in enumerate(model.layers)]
    input_shape = shape_list[0]
    return Sequential(built, input_shape=input_shape if len(input_shape) > 1 else None)


def _initializer(spec: cfg.DenseConfig | image.Conv2dConfig):
    return INITS[spec.init or ("he_uniform" if spec.activation in ("relu", "leaky_relu") else "glorot_uniform")]


def _dense(spec: cfg.DenseConfig, in_shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> layers.Layer:
    activation = ACTIVATIONS[spec.activation](spec.negative_slope)
    return layers.Dense.create(in_shape[0], spec.units, activation, _initializer(spec), rng, dtype)


def _conv2d(spec: image.Conv2dConfig, in_shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> layers.Layer:
    activation = ACTIVATIONS[spec.activation](spec.negative_slope)
    return conv.Conv2d.create(in_shape[0], spec.filters, shapes.pair(spec.kernel_size), activation,
                              _initializer(spec), rng, dtype, stride=shapes.pair(spec.stride),
                              padding=shapes.conv_padding(spec, in_shape), bias=spec.bias)


def _pool(pool: type[pooling.MaxPool2d] | type[pooling.AvgPool2d]):
    return lambda spec, in_shape, dtype, rng: pool(
        shapes.pair(spec.pool_size), shapes.pair(spec.stride if spec.stride is not None else spec.pool_size))


LAYERS = {
    cfg.DenseConfig: _dense,
    cfg.ActivationConfig: lambda spec, in_shape, dtype, rng: layers.ActivationLayer(
        ACTIVATIONS[spec.function](spec.negative_slope)),
    cfg.DropoutConfig: lambda spec, in_shape, dtype, rng: layers.Dropout(spec.rate),
    image.Conv2dConfig: _conv2d,
    image.MaxPool2dConfig: _pool(pooling.MaxPool2d),
    image.AvgPool2dConfig: _pool(pooling.AvgPool2d),
    image.GlobalAvgPool2dConfig: lambda spec, in_shape, dtype, rng: pooling.GlobalAvgPool2d(),
    image.FlattenConfig: lambda spec, in_shape, dtype, rng: layers.Flatten(),
    image.BatchNormConfig: lambda spec, in_shape, dtype, rng: normalization.BatchNorm.create(
        in_shape[0], dtype, spec.momentum, spec.epsilon),
}


def build_loss(loss: cfg.LossConfig) -> losses.Loss:
    return LOSSES[type(loss)](loss)


def build_optimizer(optimizer: cfg.OptimizerConfig) -> optimizers.Optimizer | CoordinateSearch:
    return OPTIMIZERS[type(optimizer)](optimizer)


def build_objective(spec: cfg.ObjectiveSpec) -> objectives.Objective:
    return OBJECTIVES[type(spec)](spec)


def _least_squares(spec: cfg.LeastSquaresConfig) -> objectives.LeastSquares:
    """Columns `x` and `y` of the CSV, each standardised with `scale: standard`."""
    table = csvfile.load_csv(spec.data, spec.y, [spec.x], classification=False)
    columns = [table.x.reshape(-1), np.asarray(table.y, dtype=np.float64).reshape(-1)]
    if spec.scale == "standard":
        columns = [Scaler.fit(c.reshape(-1, 1), "standard").transform(c.reshape(-1, 1), np.float64).reshape(-1)
                   for c in columns]
    return objectives.LeastSquares(*columns)


def batch_size(training: cfg.TrainingConfig, n_train: int) -> int:
    """The batch mode becomes a number once: sgd -> 1, minibatch -> size, full -> N."""
    mode = training.batch.mode
    if mode == "sgd":
        return 1
    if mode == "full":
        return n_train
    if training.batch.size > n_train:
        raise ConfigError(f"training.batch.size: expected at most the {n_train} training samples, "
                          f"received {training.batch.size}")
    return training.batch.size


def check_batch_norm_batches(model: cfg.ModelConfig, sample_shape: tuple[int, ...], size: int, n_train: int) -> None:
    """A batch_norm layer on flat features (or 1x1 images) needs batches of 2 or more in training (a variance
    of one value is meaningless; PyTorch refuses it too): neither `size` nor the epoch's last batch may be 1."""
    if size > 1 and n_train % size != 1:
        return
    shape_list = shapes.infer_shapes(model.layers, sample_shape)
    for index, spec in enumerate(model.layers):
        if isinstance(spec, image.BatchNormConfig) and math.prod(shape_list[index][1:]) == 1:  # (D,) or (C, 1, 1)
            which = "every batch" if size == 1 else f"the last batch of each epoch ({n_train} samples, batches of {size})"
            raise ConfigError(f"model.layers.{index} (batch_norm): normalizes each feature over the batch, but "
                              f"{which} holds 1 sample; expected training.batch.size of at least 2 that leaves "
                              "no single-sample batch")


def build_schedule(optimizer: cfg.OptimizerConfig, updates_per_epoch: int, epochs: int) -> schedules.Schedule:
    """Epoch-based schedule settings become update counts here."""
    spec, lr, per_epoch = optimizer.schedule, optimizer.step_size, updates_per_epoch
    if isinstance(spec, cfg.StepDecayConfig):
        # the period as the decimal the config wrote (0.1 epochs of 30 updates is exactly 3 updates)
        period = Fraction(repr(float(spec.every_epochs))) * per_epoch
        schedule: schedules.Schedule = schedules.StepDecay(lr, period, spec.factor)
    elif isinstance(spec, cfg.ExponentialConfig):
        schedule = schedules.ExponentialDecay(lr, spec.decay_rate, per_epoch)
    elif isinstance(spec, cfg.InverseTimeConfig):
        schedule = schedules.InverseTimeDecay(lr, spec.decay_rate, per_epoch)
    elif isinstance(spec, cfg.CosineConfig):
        schedule = schedules.CosineDecay(lr, per_epoch * epochs, spec.min_learning_rate)
    else:
        schedule = schedules.Constant(lr)
    warmup = math.ceil(spec.warmup_epochs * per_epoch)
    return schedules.Warmup(schedule, warmup) if warmup > 0 else schedule
