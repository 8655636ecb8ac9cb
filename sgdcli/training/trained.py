"""A trained model rebuilt from a checkpoint, with the preprocessing it was trained with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sgdcli.config.loading import load_config
from sgdcli.config.schema import ExperimentConfig
from sgdcli.data.scaling import Scaler
from sgdcli.engine import metrics
from sgdcli.engine.model import ParameterMismatch, Sequential
from sgdcli.errors import CheckpointError, ConfigError, DataError
from sgdcli.runs import checkpoint
from sgdcli.runs import directory as runs
from sgdcli.training import build


@dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint, with the preprocessing it was trained with."""

    model: Sequential
    config: ExperimentConfig
    scaler: Scaler
    class_names: tuple[str, ...] | None
    feature_names: tuple[str, ...]
    checkpoint: Path
    meta: dict[str, Any] = field(repr=False)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs (logits for classification) for unscaled features x (N, D)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise DataError(f"expected features of shape (N, {len(self.feature_names)}), received {x.shape}")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # far-out rows: inf/NaN outputs, as such
            return self.model.predict(self.scaler.transform(x, self.model.dtype), batch_size=metrics.EVAL_BATCH)

    def predict_classes(self, x: np.ndarray) -> list[str | None]:
        """The predicted class name of each row of x; None where the outputs name no class (metrics.NO_CLASS)."""
        if self.class_names is None:
            raise ConfigError("this model does regression; use predict()")
        return metrics.class_names_of(metrics.predict_labels(self.predict(x)), self.class_names)


def sample_shape_of(meta: dict[str, Any]) -> tuple[int, ...]:
    """The shape of one sample the checkpoint's model was built for (older checkpoints: flat features)."""
    return tuple(int(d) for d in meta.get("sample_shape") or (len(meta["feature_names"]),))


def load_trained(target: Path | str) -> TrainedModel:
    """A run directory (best checkpoint, else last) or a checkpoint file -> TrainedModel."""
    path = runs.find_checkpoint(Path(target))
    saved = checkpoint.load(path)
    try:
        config = load_config(saved.meta["config"], check_precision=False)  # (it has trained: evaluate it as it is)
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"the config stored in the checkpoint is not valid: {exc}", source=str(path)) from None
    meta = saved.meta
    _check_arrays(saved, config, path)
    rng = np.random.default_rng(0)  # the weights are overwritten below
    try:
        model = build.build_model(config.model, sample_shape_of(meta), int(meta["outputs"]), rng)
        model.load_parameters(saved.params)
    except ParameterMismatch as exc:
        raise CheckpointError(f"the weights do not fit the saved architecture: {exc}", source=str(path)) from None
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"damaged checkpoint metadata ({exc})", source=str(path)) from None
    class_names = tuple(meta["class_names"]) if meta.get("class_names") else None
    return TrainedModel(model, config, Scaler.restore(saved.shift, saved.scale, str(path)), class_names,
                        tuple(meta["feature_names"]), path, meta)


def _check_arrays(saved: checkpoint.Checkpoint, config: ExperimentConfig, path: Path) -> None:
    """The arrays and names a model is rebuilt from must agree with each other: a checksum only
    proves the file is as written, not that what was written fits together."""
    meta, source = saved.meta, str(path)
    features, names, outputs = meta.get("feature_names"), meta.get("class_names"), meta.get("outputs")
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        raise CheckpointError(f"feature_names: expected a list of column names, received {_short(features)}",
                              source=source)
    if not isinstance(outputs, int) or isinstance(outputs, bool) or outputs < 1:
        raise CheckpointError(f"outputs: expected a whole number of at least 1, received {_short(outputs)}",
                              source=source)
    for name, array in (("data/shift", saved.shift), ("data/scale", saved.scale)):
        if array.dtype.kind != "f" or array.shape != (len(features),):
            raise CheckpointError(f"{name}: expected {len(features)} floating-point values (one per feature), "
                                  f"received {array.dtype} of shape {array.shape}", source=source)
    if config.is_classification:
        expected = 2 if outputs == 1 else outputs
        if not isinstance(names, list) or len(names) != expected or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"class_names: expected {expected} names (one per class the model outputs), "
                                  f"received {_short(names)}", source=source)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
