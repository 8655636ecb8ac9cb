"""Losses on raw model outputs: mean value and its gradient with respect to the predictions.

Classification losses take logits and fuse the sigmoid/softmax in a numerically stable way.
Every gradient has the dtype and shape of ``pred``; values are Python floats.
"""

from __future__ import annotations

import numpy as np

from .activations import sigmoid


def _check_batch(loss: Loss, pred: np.ndarray) -> None:
    if pred.ndim == 0 or pred.shape[0] == 0:
        raise ValueError(f"{type(loss).__name__} needs a non-empty batch of predictions, got shape {pred.shape}")


def _elementwise_target(loss: Loss, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``target`` as an array of pred's shape and dtype; (N,) is accepted for (N, 1) predictions."""
    _check_batch(loss, pred)
    target = np.asarray(target)
    if target.shape != pred.shape:
        if pred.ndim == 2 and pred.shape[1] == 1 and target.shape == pred.shape[:1]:
            target = target.reshape(pred.shape)
        else:
            also = f" or {pred.shape[:1]}" if pred.ndim == 2 and pred.shape[1] == 1 else ""
            raise ValueError(
                f"{type(loss).__name__}: expected target of shape {pred.shape}{also} to match the "
                f"predictions, got {target.shape}"
            )
    return np.asarray(target, dtype=pred.dtype)


class Loss:
    """Base class: ``value`` is the mean loss, ``value_and_grad`` adds d(mean loss)/d(pred)."""

    def value(self, pred: np.ndarray, target: np.ndarray) -> float:
        return self.value_and_grad(pred, target)[0]

    def value_and_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MeanSquaredError(Loss):
    """L = mean((pred - target)^2) over all elements;  dL/dpred = 2 (pred - target) / n."""

    def value(self, pred: np.ndarray, target: np.ndarray) -> float:
        diff = pred - _elementwise_target(self, pred, target)
        return float(np.mean(np.square(diff, out=diff)))

    def value_and_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        diff = pred - _elementwise_target(self, pred, target)
        grad = diff * (2.0 / diff.size)
        return float(np.mean(np.square(diff, out=diff))), grad


class MeanAbsoluteError(Loss):
    """L = mean(|pred - target|) over all elements;  dL/dpred = sign(pred - target) / n (0 at 0)."""

    def value(self, pred: np.ndarray, target: np.ndarray) -> float:
        diff = pred - _elementwise_target(self, pred, target)
        return float(np.mean(np.abs(diff, out=diff)))

    def value_and_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        diff = pred - _elementwise_target(self, pred, target)
        grad = np.sign(diff)
        grad *= 1.0 / diff.size
        return float(np.mean(np.abs(diff, out=diff))), grad


class Huber(Loss):
    """Huber loss with threshold ``delta``, mean over all elements (PyTorch ``HuberLoss``).

    With d = pred - target and q = min(|d|, delta): per element 0.5 q^2 + delta (|d| - q),
    i.e. 0.5 d^2 for |d| <= delta and delta (|d| - 0.5 delta) beyond;
    dL/dpred = clip(d, -delta, delta) / n.
    """

    def __init__(self, delta: float = 1.0) -> None:
        if not delta > 0:
            raise ValueError(f"Huber delta must be positive, got {delta}")
        self.delta = float(delta)

    def _mean(self, diff: np.ndarray) -> float:
        """Mean Huber loss of ``diff``, which it overwrites."""
        abs_diff = np.abs(diff, out=diff)
        quadratic = np.minimum(abs_diff, self.delta)
        linear = abs_diff
        linear -= quadratic
        linear *= self.delta
        quadratic *= quadratic
        quadratic *= 0.5
        quadratic += linear
        return float(np.mean(quadratic))

    def value(self, pred: np.ndarray, target: np.ndarray) -> float:
        return self._mean(pred - _elementwise_target(self, pred, target))

    def value_and_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        diff = pred - _elementwise_target(self, pred, target)
        grad = np.clip(diff, -self.delta, self.delta)
        grad *= 1.0 / diff.size
        return self._mean(diff), grad

    def __repr__(self) -> str:
        return f"Huber(delta={self.delta})"


class BinaryCrossEntropy(Loss):
    """Sigmoid + binary cross-entropy on logits x with 0/1 (or soft) targets y, mean over all elements.

    Per element log(1 + exp(x)) - x y, computed as logaddexp(0, x) - x y so no exp overflows;
    dL/dx = (sigmoid(x) - y) / n. Targets have pred's shape, or (N,) for (N, 1) logits.
    """

    def _target(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        target = _elementwise_target(self, pred, target)
        low, high = target.min(), target.max()
        if low < 0 or high > 1:
            bad = low if low < 0 else high
            raise ValueError(f"BinaryCrossEntropy: expected targets in [0, 1] (0/1 labels), got {bad:g}")
        return target

    def value(self, pred: np.ndarray, target: np.ndarray) -> float:
        target = self._target(pred, target)
        per_element = np.logaddexp(0, pred)
        per_element -= pred * target
        return float(np.mean(per_element))

    def value_and_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        target = self._target(pred, target)
        per_element = np.logaddexp(0, pred)
        per_element -= pred * target
        grad = sigmoid(pred)
        grad -= target
        grad *= 1.0 / pred.size
        return float(np.mean(per_element)), grad


_UNSIGNED: dict[np.dtype, np.dtype] = {}


def _unsigned(dtype: np.dtype) -> np.dtype:
    """The unsigned integer dtype of an integer dtype's size (itself if unsigned), looked up once per dtype."""
    found = _UNSIGNED.get(dtype)
    if found is None:
        found = _UNSIGNED[dtype] = np.dtype(dtype.str.replace("i", "u"))
    return found


class CrossEntropy(Loss):
    """Softmax + cross-entropy on logits x (N, C), mean over the N samples.

    With s = x - max_c x (row-wise) and lse = log sum_c exp(s):
    int labels y (N,):           L = mean_n(lse_n - s[n, y_n]);  dL/dx = (softmax(x) - onehot(y)) / N.
    probabilities t (N, C):      L = -sum(t * (s - lse)) / N;    dL/dx = (softmax(x) * sum_c t - t) / N
                                 (= (softmax(x) - t) / N when each row of t sums to 1).
    """

    def _prepare(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Validate; return int labels (N,) or probabilities (N, C) in pred's dtype."""
        _check_batch(self, pred)
        if pred.ndim != 2:
            raise ValueError(f"CrossEntropy expects logits of shape (N, C), got shape {pred.shape}")
        n, classes = pred.shape
        target = np.asarray(target)
        if target.shape == pred.shape:
            return np.asarray(target, dtype=pred.dtype)
        if target.shape != (n,):
            raise ValueError(
                f"CrossEntropy: expected target of shape ({n},) with class indices or {pred.shape} with "
                f"probabilities to match logits {pred.shape}, got {target.shape}"
            )
        if target.dtype.kind not in "iu":  # not an integer type (issubdtype, ~10x slower per batch)
            if not (target.dtype.kind == "f" and np.all(target == np.round(target))):
                raise ValueError(
                    f"CrossEntropy: expected integer class labels of shape ({n},), got dtype {target.dtype}"
                    + (" with non-integer values" if target.dtype.kind == "f" else "")
                )
            if not np.all(np.isfinite(target)):
                raise ValueError("CrossEntropy: class labels must be finite")
            target = target.astype(np.int64)
        # One reduction per batch: a negative label read as unsigned is at least 2**(bits - 1), above any
        # class count up to that; only a narrow signed type with more classes (int8, 300) needs its minimum.
        if target.view(_unsigned(target.dtype)).max() >= classes or (
                target.dtype.kind == "i" and classes > 1 << (8 * target.dtype.itemsize - 1) and target.min() < 0):
            low, high = target.min(), target.max()
            bad = low if low < 0 else high
            raise ValueError(
                f"class label {bad} out of range for {classes} outputs (expected 0..{classes - 1})"
            )
        return target

    @staticmethod
    def _shifted(pred: np.ndarray) -> np.ndarray:
        # The ufunc reductions themselves: ndarray.max and .sum reach them through a Python wrapper (~0.2 us).
        # C order whatever pred's layout, so that value_and_grad's reshape(-1) is a view of it.
        return np.subtract(pred, np.maximum.reduce(pred, axis=1, keepdims=True), order="C")

    def value_and_grad_of_label(self, pred: np.ndarray, label: int, out: np.ndarray) -> tuple[float, np.ndarray]:
        """``value_and_grad`` of one sample, logits pred (1, C), with a class index ``label`` the caller has
        checked (0 <= label < C): the same operations (the same bits) without the checks, the gradient
        written into ``out`` (1, C, pred's dtype, C-contiguous) and returned. For a prepared batch-1
        update (``engine/one_sample``)."""
        np.subtract(pred, np.maximum.reduce(pred, axis=1, keepdims=True), out=out)
        return self._labelled(out, int(label))

    @staticmethod
    def _labelled(shifted: np.ndarray, labels: np.ndarray | int) -> tuple[float, np.ndarray]:
        """The mean loss and its gradient (written over ``shifted``: shifted logits (N, C), C-contiguous)
        from each row's label as its index in the flat (N * C) array (intp (N,), or an int for one row:
        the same element read and written, without an index array)."""
        n = len(shifted)
        flat = shifted.reshape(-1)  # a view: the shifted logits are C-contiguous
        picked = flat[labels]
        grad = np.exp(shifted, out=shifted)
        sums = np.add.reduce(grad, axis=1, keepdims=True)
        value = (float(np.add.reduce(np.log(sums), axis=None)) - float(np.add.reduce(picked))) / n
        # softmax / N in one pass over (N, C): exp(s) * (1 / (N * sum_c exp(s))), then - onehot / N
        grad *= np.reciprocal(sums * n, out=sums)
        flat[labels] -= 1.0 / n
        return value, grad

    def value(self, pred: np.ndarray, target: np.ndarray) -> float:
        target = self._prepare(pred, target)
        shifted = self._shifted(pred)
        if target.ndim == 1:
            picked = shifted[np.arange(len(target)), target]
            lse = np.log(np.exp(shifted, out=shifted).sum(axis=1))
            lse -= picked
            return float(np.mean(lse))
        lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        shifted -= lse  # log-probabilities
        shifted *= target
        return -float(np.sum(shifted)) / len(pred)

    def value_and_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        target = self._prepare(pred, target)
        n = len(pred)
        shifted = self._shifted(pred)
        if target.ndim == 1:
            labels = np.arange(0, shifted.size, shifted.shape[1])  # each row's label in the flat (N * C) array
            labels += target.astype(np.intp, copy=False)  # (uint64 + int64 would be float64)
            return self._labelled(shifted, labels)
        lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        shifted -= lse  # log-probabilities
        value = -float(np.sum(shifted * target)) / n
        grad = np.exp(shifted, out=shifted)  # softmax
        grad *= target.sum(axis=1, keepdims=True)
        grad -= target
        grad *= 1.0 / n
        return value, grad
