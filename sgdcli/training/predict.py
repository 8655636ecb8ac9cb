"""Predictions of a trained model on a file, streamed in batches: class names and probabilities, or values."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from sgdcli import strict_json
from sgdcli.config import data_sources
from sgdcli.data import npzfile, stream
from sgdcli.engine.activations import sigmoid
from sgdcli.engine.metrics import class_names_of, predict_labels
from sgdcli.errors import DataError, UsageError
from sgdcli.training.trained import TrainedModel

BATCH_ROWS = 8192  # rows read, scaled and predicted at a time: memory is bounded by this, not the file
FORMATS = ("csv", "json")


def output_columns(trained: TrainedModel) -> list[str]:
    """Classification: the predicted class name, then p_<class> for each class. Regression: one column
    per output. The prediction is named predicted_<target> for CSV data (so --keep <target> can sit beside
    it), else predicted (predicted_0, predicted_1, ... for several regression outputs)."""
    data = trained.config.data
    name = f"predicted_{data.target}" if isinstance(data, data_sources.CsvDataConfig) else "predicted"
    if trained.class_names is not None:
        return [name, *(f"p_{label}" for label in trained.class_names)]
    outputs = int(trained.meta["outputs"])
    return [name] if outputs == 1 else [f"{name}_{k}" for k in range(outputs)]


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities (N, C) from logits: softmax over C outputs (cross_entropy), or for one
    binary output [1 - sigmoid(z), sigmoid(z)] (binary_cross_entropy)."""
    if logits.shape[1] == 1:
        p = sigmoid(logits[:, 0])
        return np.stack([1 - p, p], axis=1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def feature_batches(trained: TrainedModel, path: Path, keep: Sequence[str] = (),
                    rows: int = BATCH_ROWS) -> Iterator[stream.FeatureBatch]:
    """Raw features of `path`, read the way the model's training data was (CSV columns by name, the
    target column not needed; NPZ `x`; IDX images), `rows` at a time."""
    data, width = trained.config.data, len(trained.feature_names)
    if isinstance(data, data_sources.CsvDataConfig):
        yield from stream.csv_batches(path, trained.feature_names, keep, rows)
        return
    if keep:
        raise UsageError(f"--keep copies CSV columns; {Path(path).name} is read as {data.source} data, which has none")
    if isinstance(data, data_sources.NpzDataConfig):
        x = npzfile.load_npz_features(path)
        what = f"{width} features (x of shape (N, {width}))"
    elif isinstance(data, data_sources.IdxDataConfig):
        x, _ = stream.idx_images(path)
        what = f"images of {width} pixels ({'x'.join(map(str, trained.meta.get('sample_shape') or [width]))})"
    else:
        raise DataError("a built-in synthetic dataset has no file format to read other files in", source=str(path))
    if x.shape[1] != width:
        raise DataError(f"expected {what} like the training data, received {x.shape[1]} per sample", source=str(path))
    yield from stream.array_batches(x, rows)


def predictions(trained: TrainedModel, path: Path, keep: Sequence[str] = (),
                rows: int = BATCH_ROWS) -> Iterator[dict[str, Any]]:
    """Column batches: the `keep` columns (text), then `output_columns(trained)` — class names (str)
    and probabilities (float), or predicted values — for `rows` input rows at a time."""
    names = output_columns(trained)
    clash = sorted(set(keep) & set(names))
    if clash:
        raise UsageError(f"--keep {', '.join(clash)}: the output already has a column of that name")
    for batch in feature_batches(trained, path, keep, rows):
        columns: dict[str, Any] = dict(batch.kept)
        # A diverged model's outputs may be inf or NaN: written as such (null in JSON), without NumPy's
        # warnings. Never around the yield, which would silence the caller's code too.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            outputs = trained.predict(batch.x)
            if trained.class_names is None:
                columns.update(zip(names, outputs.T))
            else:
                labels = predict_labels(outputs)
                columns[names[0]] = class_names_of(labels, trained.class_names)  # None (empty, null): no class
                columns.update(zip(names[1:], probabilities(outputs).T))
        yield columns


def write(batches: Iterator[dict[str, Any]], handle: TextIO, fmt: str) -> int:
    """Write column batches as CSV (a header row) or JSON (an array of one object per row), streaming.
    Floats keep 9 significant digits (float32 round-trips); in JSON a non-finite one is null (strict
    JSON), in CSV nan or inf. Returns the number of rows written."""
    if fmt not in FORMATS:
        raise UsageError(f"--format: expected one of {', '.join(FORMATS)}, received {fmt!r}")
    count = 0
    writer = csv.writer(handle, lineterminator="\n")
    for columns in batches:
        names = list(columns)
        if fmt == "csv":
            if count == 0:
                writer.writerow(names)
            rows = list(zip(*[_text(values) for values in columns.values()]))
            writer.writerows(rows)
            count += len(rows)
            continue
        for row in zip(*[_json_values(values) for values in columns.values()]):
            handle.write(("[\n" if count == 0 else ",\n") + strict_json.dumps(dict(zip(names, row))))
            count += 1
    if fmt == "json":
        handle.write("[\n]\n" if count == 0 else "\n]\n")
    return count


def _text(values: Any) -> list[str]:
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return [format(v, ".9g") for v in values.tolist()]
    return list(values)


def _json_values(values: Any) -> list[Any]:
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return [float(format(v, ".9g")) for v in values.tolist()]
    return list(values)
