"""Evaluation metrics: accuracy, per-class precision/recall/F1, confusion matrix, MSE/MAE/R²."""

from __future__ import annotations

from typing import Any

import numpy as np

from sgdcli.engine.losses import Loss
from sgdcli.engine.model import Sequential

EVAL_BATCH = 4096


NO_CLASS = -1  # a row whose outputs name no class: NaN among them, or several at +inf


def predict_labels(outputs: np.ndarray) -> np.ndarray:
    """Class indices (N,) from logits (N, C): argmax over C outputs, or logit > 0 for one binary output; NO_CLASS
    for a row with a NaN output or (C > 1) a tie at +inf, which argmax would silently call class 0."""
    labels = (outputs[:, 0] > 0).astype(np.int64) if outputs.shape[1] == 1 else outputs.argmax(axis=1)
    undefined = np.isnan(outputs).any(axis=1)
    if outputs.shape[1] > 1:
        undefined |= (outputs == np.inf).sum(axis=1) > 1
    labels[undefined] = NO_CLASS
    return labels


def class_names_of(labels: np.ndarray, class_names: tuple[str, ...]) -> list[str | None]:
    """The name of each predicted class, None for NO_CLASS."""
    return [None if i == NO_CLASS else class_names[i] for i in labels]


def loss_and_accuracy(model: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray,
                      classification: bool) -> tuple[float, float | None]:
    """Mean loss over the whole set (in chunks of EVAL_BATCH rows, weighted by chunk size) and accuracy if it
    applies: ``combine_chunks`` of every chunk's ``chunk_sums``."""
    return combine_chunks(chunk_sums(model, loss, x, y, classification), len(x), classification)


def chunk_count(rows: int) -> int:
    """How many chunks of EVAL_BATCH rows ``loss_and_accuracy`` evaluates ``rows`` in."""
    return -(-rows // EVAL_BATCH)


def chunk_sums(model: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray, classification: bool,
               chunks: range | None = None) -> np.ndarray:
    """(C, 2) float64, C = ``chunk_count(len(x))``: for chunk c (rows c * EVAL_BATCH onwards) its loss summed
    over its rows (the loss's mean times the rows) and its number of correct labels (0 without
    ``classification``), for the chunks in ``chunks`` (None: all); the others' rows are 0, so that sums over
    processes that took different chunks give each chunk's numbers exactly (x + 0 = x)."""
    sums = np.zeros((chunk_count(len(x)), 2))
    for chunk in range(len(sums)) if chunks is None else chunks:
        rows = slice(chunk * EVAL_BATCH, (chunk + 1) * EVAL_BATCH)
        outputs, target = model.predict(x[rows]), y[rows]
        sums[chunk, 0] = loss.value(outputs, target) * len(outputs)
        if classification:
            sums[chunk, 1] = int((predict_labels(outputs) == _labels(target)).sum())
    return sums


def combine_chunks(sums: np.ndarray, rows: int, classification: bool) -> tuple[float, float | None]:
    """(mean loss, accuracy or None) of ``rows`` rows from their chunks' ``chunk_sums``, added in chunk order: the
    same numbers however the chunks were shared out."""
    total, correct = 0.0, 0
    for loss_sum, right in sums:
        total += float(loss_sum)
        correct += int(right)
    return total / rows, (correct / rows if classification else None)


def _labels(target: np.ndarray) -> np.ndarray:
    return target.reshape(-1).astype(np.int64) if target.ndim == 2 and target.shape[1] == 1 else target


def classification_report(true: np.ndarray, predicted: np.ndarray, class_names: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, confusion matrix (rows: true class, columns: predicted), per-class scores of every
    class, and their macro averages.

    Macro precision, recall and F1 are the unweighted means over the classes present in `true` or
    `predicted` (scikit-learn's default `labels=unique_labels(y_true, y_pred)`), so a class
    absent from both does not pull the average down; a score with a zero denominator is 0
    (scikit-learn's zero_division). true, predicted: class indices (N,) into `class_names`.
    """
    count, defined = len(class_names), predicted != NO_CLASS
    confusion = np.zeros((count, count), dtype=np.int64)
    np.add.at(confusion, (true[defined], predicted[defined]), 1)
    actual = np.bincount(true, minlength=count)  # rows with no predicted class are wrong, not left out
    per_class = []
    for c, name in enumerate(class_names):
        tp = confusion[c, c]
        predicted_c, actual_c = confusion[:, c].sum(), actual[c]
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / actual_c if actual_c else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"class": name, "precision": float(precision), "recall": float(recall),
                          "f1": float(f1), "support": int(actual_c)})
    present = [row for row, t, p in zip(per_class, actual, confusion.sum(axis=0)) if t or p]
    unpredicted = {"no_class": int((~defined).sum())} if not defined.all() else {}
    return {
        **unpredicted,  # rows whose outputs name no class (NaN): counted as wrong; absent when there are none
        "accuracy": float(np.trace(confusion) / max(len(true), 1)),
        "macro_f1": _mean(row["f1"] for row in present),
        "macro_precision": _mean(row["precision"] for row in present),
        "macro_recall": _mean(row["recall"] for row in present),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
    }


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0


def regression_report(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MSE, MAE and R² = 1 - SS_res / SS_tot (averaged over output columns)."""
    true, predicted = true.astype(np.float64), predicted.astype(np.float64)
    residual = true - predicted
    ss_tot = ((true - true.mean(axis=0)) ** 2).sum(axis=0)
    ss_res = (residual**2).sum(axis=0)
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), 0.0)
    return {"mse": float((residual**2).mean()), "mae": float(np.abs(residual).mean()), "r2": float(r2.mean())}
