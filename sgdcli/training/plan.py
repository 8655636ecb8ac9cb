"""What a config will train, checked once the data is read and before any weight is allocated: the
output layer against the classes, the batch against the samples, the model against the memory.
`train`, `gradcheck` and `validate` run the same checks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from sgdcli.config import data_sources
from sgdcli.config import schema as cfg
from sgdcli.config import shapes as layer_shapes
from sgdcli.data.dataset import Dataset
from sgdcli.engine import metrics
from sgdcli.engine.model import Sequential
from sgdcli.errors import ConfigError
from sgdcli.training import build, memory, shapes


@dataclass(frozen=True)
class Plan:
    """The sizes training will use, found from the data: samples, features, outputs, batch, memory."""

    source: str  # the training data
    train_samples: int
    val_samples: int
    features: int
    outputs: int
    class_names: tuple[str, ...] | None
    feature_names: tuple[str, ...]
    batch_size: int
    memory: memory.Estimate

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(self.train_samples / self.batch_size)


def for_data(config: cfg.ExperimentConfig, train: Dataset, val: Dataset | None) -> Plan:
    """Check `config` against its (unscaled) training and validation sets; ConfigError naming the
    config file and the dotted key for the first thing that does not fit."""
    width = build.outputs_for(config, train.class_names, train.y)
    with naming(config):
        sample_shape = build.sample_shape(config.data, train.x.shape[1], train.sample_shape)
    return _for_sizes(config, train.source, len(train), 0 if val is None else len(val), width,
                      train.class_names, train.feature_names, sample_shape)


def _for_sizes(config: cfg.ExperimentConfig, source: str, train_samples: int, val_samples: int, outputs: int,
               class_names: tuple[str, ...] | None, feature_names: tuple[str, ...],
               sample_shape: tuple[int, ...]) -> Plan:
    """for_data's checks on the sizes alone: what `validate` knows without reading the features."""
    with naming(config):
        batch = _batch_size(config, train_samples, source)
    measured = max(train_samples if config.training.eval_train else 0, val_samples)
    needed = check_model(config, sample_shape, outputs, class_names, source, batch, config.optimizer,
                         config.model.dtype, "training this model", min(measured, metrics.EVAL_BATCH), chunks=True)
    return Plan(source, train_samples, val_samples, len(feature_names), outputs, class_names, feature_names, batch,
                needed)


def prepare_checked(config: cfg.ExperimentConfig, rngs: build.Rngs,
                    test_set: bool = False) -> tuple[build.PreparedData, Plan, Sequential]:
    """Data read, split and scaled (with `test_set`, the test data then read and checked too:
    check_test_set), checked against the config (errors name the config file; the memory estimate
    comes before any weight is allocated), then the model built from `rngs.init`."""
    with naming(config):
        prepared = build.prepare_data(config, rngs)
        if test_set:
            check_test_set(config, prepared.class_names, prepared.feature_names)
    checked = for_prepared(config, prepared)
    with naming(config):
        model = build.build_model(config.model, prepared.sample_shape, checked.outputs, rngs.init)
    return prepared, checked, model


def check_test_set(config: cfg.ExperimentConfig, class_names: tuple[str, ...] | None,
                   features: tuple[str, ...], cached: bool = True) -> None:
    """The config's test data (data.test_file, or the IDX test pair), if it names any, read and checked
    as `eval --split test` will read it (build.load_test_set), so that a broken test file is found
    before training, not after it. Nothing is kept: eval reads the file again. `cached`: IDX files
    through the decode cache (`validate` writes nothing)."""
    build.load_test_set(config, class_names, features, cached)


def for_prepared(config: cfg.ExperimentConfig, prepared: build.PreparedData) -> Plan:
    """The same checks on data already split and scaled."""
    train = Dataset(prepared.x_train, prepared.y_train, prepared.source, prepared.feature_names, prepared.class_names,
                    prepared.sample_shape)
    val = None if prepared.x_val is None else Dataset(prepared.x_val, prepared.y_val, prepared.source, ())
    return for_data(config, train, val)


def check_model(config: cfg.ExperimentConfig, sample_shape: tuple[int, ...], outputs: int, class_names: tuple[str, ...] | None,
                source: str, batch: int, optimizer: cfg.OptimizerConfig | None, dtype: str,
                what: str, eval_rows: int = 0, chunks: bool = False) -> memory.Estimate:
    """The last dense layer against the outputs the data and loss need, and the model's memory (in
    `dtype`, with `optimizer`'s state and a batch of `batch`, taken a chunk at a time when `chunks`:
    ``memory.estimate``) against what this process may use."""
    with naming(config):
        _check_output_layer(config, outputs, class_names, source)
        needed = memory.estimate(config.model, sample_shape, max(batch, 1), optimizer, dtype, eval_rows, chunks)
        memory.check_fits(needed, what, config.file)
    return needed


@contextmanager
def naming(config: cfg.RunConfig) -> Iterator[None]:
    """A config error found after loading (in the data's light) names the config file it came from."""
    try:
        yield
    except ConfigError as exc:
        if exc.source is not None:
            raise
        raise ConfigError(exc.message, source=config.file) from None


def _check_output_layer(config: cfg.ExperimentConfig, outputs: int, class_names: tuple[str, ...] | None,
                        source: str) -> None:
    layers = config.model.layers
    last = max(i for i, layer in enumerate(layers) if isinstance(layer, cfg.DenseConfig))
    units = layers[last].units
    if units == outputs:
        return
    if isinstance(config.loss, cfg.CrossEntropyConfig):
        why = f"one per class of {source}: {build.names_text(class_names or ())}"
    elif isinstance(config.loss, cfg.BinaryCrossEntropyConfig):
        why = f"one logit for loss.type binary_cross_entropy, classes {build.names_text(class_names or ())}"
    else:
        why = f"one per target column of {source}"
    raise ConfigError(f"model.layers.{last}.units: expected {outputs} ({why}), received {units}")


def _batch_size(config: cfg.ExperimentConfig, samples: int, source: str) -> int:
    batch = config.training.batch
    if batch.mode == "minibatch" and batch.size > samples:
        held_out = f", after holding out data.validation = {config.data.validation}" \
            if getattr(config.data, "validation_file", None) is None and config.data.validation else ""
        raise ConfigError(f"training.batch.size: expected at most {samples} (the training samples of {source}"
                          f"{held_out}), received {batch.size}")
    return build.batch_size(config.training, samples)


def check_config(config: cfg.ExperimentConfig) -> Plan:
    """Everything `train` checks before its first update, without building the model or a run
    directory, reading only what the checks need: a training or validation file's header, row count
    and targets (not the feature cells or pixels; shapes.training_shapes), and the test data in full,
    as `train` and `eval` read it (check_test_set). Synthetic data is generated as training does."""
    if isinstance(config.data, data_sources.SyntheticDataConfig):
        with naming(config):
            train, val = build.split_data(config, build.Rngs.from_seed(config.seed))
            sample_shape = build.sample_shape(config.data, train.x.shape[1], train.sample_shape)
        checked = for_data(config, train, val)
    else:
        with naming(config):
            full, train_samples, val_samples = shapes.training_shapes(config)
            sample_shape = build.sample_shape(config.data, len(full.feature_names), full.sample_shape)
            check_test_set(config, full.class_names, full.feature_names, cached=False)  # read in full, as train does
        # outputs_for reads only the targets' columns (regression) or the class names
        width = build.outputs_for(config, full.class_names, np.empty((0, full.target_width)))
        checked = _for_sizes(config, full.source, train_samples, val_samples, width, full.class_names,
                             full.feature_names, sample_shape)
    with naming(config):  # what build_model and the session check next, on the sample shape alone
        try:
            layer_shapes.infer_shapes(config.model.layers, sample_shape)
        except layer_shapes.ShapeError as exc:
            raise ConfigError(str(exc)) from None
        build.check_batch_norm_batches(config.model, sample_shape, checked.batch_size, checked.train_samples)
    return checked


def resolved(config: cfg.ExperimentConfig, checked: Plan) -> dict:
    """The config with the defaults that depend on the data filled in: the CSV's feature columns,
    the IDX class names."""
    data = config.to_dict()
    if isinstance(config.data, data_sources.CsvDataConfig) and config.data.features is None:
        data["data"]["features"] = list(checked.feature_names)
    if isinstance(config.data, data_sources.IdxDataConfig) and config.data.class_names is None:
        data["data"]["class_names"] = list(checked.class_names or ())
    return data
