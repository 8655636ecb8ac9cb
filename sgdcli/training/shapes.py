"""The sizes `validate` checks a config against, read without the features: a data file's rows,
feature names, sample shape and classes (data.dataset.DataShape), and the training and validation
sample counts the seeded split will give, counted from the classes as splits.validation_mask draws them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sgdcli.config import data_sources
from sgdcli.config import schema as cfg
from sgdcli.data import csvfile, idx, npzfile, splits
from sgdcli.data.dataset import DataShape
from sgdcli.errors import ConfigError
from sgdcli.training import build


def training_shapes(config: cfg.ExperimentConfig) -> tuple[DataShape, int, int]:
    """(the training file's shape, training samples, validation samples) for a file-backed data
    section; the errors `build.split_with_mask` raises for the same config, in the same words."""
    data, classification = config.data, config.is_classification
    full = data_shape(data, classification)
    build.check_targets(config, full.class_names, full.source)
    validation_file = getattr(data, "validation_file", None)
    if validation_file is not None:
        val = data_shape(data, classification, Path(validation_file), full.class_names, full.feature_names)
        return full, full.rows, build.check_width(val, full.feature_names).rows
    if data.validation <= 0:
        return full, full.rows, 0
    if classification:
        classes, counts = np.unique(full.y, return_counts=True)
        names = [full.class_names[c] if full.class_names else str(c) for c in classes.tolist()]
    else:
        counts, names = [full.rows], [None]
    held = sum(splits.held_out_counts([int(c) for c in counts], names, data.validation, full.source))
    return full, full.rows - held, held


def data_shape(data: data_sources.DataConfig, classification: bool, path: Path | None = None,
               class_names: tuple[str, ...] | None = None, features: tuple[str, ...] | None = None) -> DataShape:
    """build.load_dataset's checks, reading only the header, the row count and the targets of the
    config's training data, or of `path` (another file in the same format, e.g. the validation file,
    its CSV columns found by the training data's `features`)."""
    if isinstance(data, data_sources.IdxDataConfig):
        if not classification:
            raise ConfigError("loss.type: IDX files hold class labels; expected cross_entropy, "
                              "received a regression loss")
        images, labels = build.idx_files(data, "train")
        return idx.idx_shape(images, labels, tuple(data.class_names or ()) or None, class_names)
    if isinstance(data, data_sources.CsvDataConfig):
        return csvfile.csv_shape(path or data.path, data.target, features or data.features, classification,
                                 class_names)
    assert isinstance(data, data_sources.NpzDataConfig), "synthetic data has no file to read"
    return npzfile.npz_shape(path or data.path, classification, class_names)
