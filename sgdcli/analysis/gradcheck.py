"""Finite-difference gradient checks for layers, losses and whole models.

Everything here works in float64 only: with float32 the rounding noise of a central
difference (~1e-7 relative / eps) swamps the errors the check must find, so build the
layer, model or predictions under test with ``dtype=np.float64``; float32 input raises.

An entry passes when  |a - n| / max(|a| + |n|, atol / rtol) <= rtol  (a: analytic,
n: numeric), i.e. relative error rtol, with entries whose gradients are both tiny
judged by the absolute error atol instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from sgdcli.engine.layers import Layer
from sgdcli.engine.losses import Loss
from sgdcli.engine.model import Sequential


@dataclass
class TensorCheck:
    """Outcome for one tensor; ``analytic`` and ``numeric`` are the values at ``worst_index``."""

    name: str
    max_abs_error: float
    max_rel_error: float
    checked: int
    passed: bool
    worst_index: tuple
    analytic: float
    numeric: float

    def __str__(self) -> str:
        status = "ok" if self.passed else "FAILED"
        return (
            f"{self.name}: {status} ({self.checked} checked, max rel error {self.max_rel_error:.3g}, "
            f"max abs error {self.max_abs_error:.3g}); worst at index {self.worst_index}: "
            f"analytic {self.analytic:.10g} vs numeric {self.numeric:.10g}"
        )


def _require_float64(name: str, array: np.ndarray) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.float64:
        dtype = getattr(array, "dtype", type(array).__name__)
        raise TypeError(
            f"gradient checks need float64 arrays, got {dtype} for {name!r}: "
            "build the layer/model and inputs with dtype=np.float64"
        )


def _as_index(index: int | Sequence[int], shape: tuple[int, ...]) -> tuple[int, ...]:
    """A full index tuple; a plain int is taken as a flat (C-order) position."""
    if isinstance(index, (int, np.integer)):
        return tuple(int(k) for k in np.unravel_index(int(index), shape))
    index = tuple(int(k) for k in index)
    if len(index) != len(shape):
        raise ValueError(f"index {index} does not address one entry of an array of shape {shape}")
    return index


def numeric_gradient(
    f: Callable[[], float],
    array: np.ndarray,
    eps: float = 1e-6,
    indices: Iterable[tuple[int, ...]] | None = None,
) -> np.ndarray:
    """Central differences (f(w + eps) - f(w - eps)) / (2 eps), one entry of ``array`` at a time.

    ``f`` must read ``array`` itself: each entry is perturbed in place and then restored to
    its exact original value (also when ``f`` raises). Returns an array shaped like ``array``,
    or, when ``indices`` are given (index tuples or flat positions), a 1-D array with one
    value per index, in order.
    """
    _require_float64("array", array)
    full = indices is None
    index_list = list(np.ndindex(array.shape)) if full else [_as_index(i, array.shape) for i in indices]
    result = np.empty(len(index_list), dtype=np.float64)
    for position, index in enumerate(index_list):
        original = array[index]
        try:
            array[index] = original + eps
            plus = float(f())
            array[index] = original - eps
            minus = float(f())
        finally:
            array[index] = original
        result[position] = (plus - minus) / (2 * eps)
    return result.reshape(array.shape) if full else result


def _compare(
    name: str,
    analytic: np.ndarray,
    numeric: np.ndarray,
    index_list: Sequence[tuple],
    rtol: float,
    atol: float,
) -> TensorCheck:
    """Compare matching 1-D arrays of analytic and numeric values taken at ``index_list``."""
    abs_error = np.abs(analytic - numeric)
    floor = atol / rtol
    rel_error = abs_error / np.maximum(np.abs(analytic) + np.abs(numeric), floor)
    if floor == 0:  # only with atol=0: an exact 0 vs 0 is no error
        rel_error[abs_error == 0] = 0.0
    worst = int(np.argmax(rel_error)) if rel_error.size else 0
    has_values = rel_error.size > 0
    return TensorCheck(
        name=name,
        max_abs_error=float(abs_error.max()) if has_values else 0.0,
        max_rel_error=float(rel_error[worst]) if has_values else 0.0,
        checked=len(index_list),
        # NaN compares false, so a NaN anywhere fails the check.
        passed=bool(np.all(rel_error <= rtol)),
        worst_index=tuple(int(i) for i in index_list[worst]) if has_values else (),
        analytic=float(analytic[worst]) if has_values else 0.0,
        numeric=float(numeric[worst]) if has_values else 0.0,
    )


def _directional_check(
    f: Callable[[], float],
    name: str,
    array: np.ndarray,
    analytic: np.ndarray,
    eps: float,
    rtol: float,
    atol: float,
    rng: np.random.Generator,
) -> TensorCheck:
    """Compare grad . u with (f(w + eps u) - f(w - eps u)) / (2 eps) for a random unit direction u."""
    direction = rng.standard_normal(array.shape)
    direction /= np.linalg.norm(direction)
    saved = array.copy()
    try:
        array += eps * direction
        plus = float(f())
        np.copyto(array, saved)
        array -= eps * direction
        minus = float(f())
    finally:
        np.copyto(array, saved)
    numeric = np.array([(plus - minus) / (2 * eps)])
    along = np.array([float(np.sum(analytic * direction))])
    return _compare(f"{name} (random direction)", along, numeric, [()], rtol, atol)


def check_gradients(
    f: Callable[[], float],
    arrays: dict[str, np.ndarray],
    analytic: dict[str, np.ndarray],
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    max_entries: int | None = None,
    rng: np.random.Generator | None = None,
) -> list[TensorCheck]:
    """Check ``analytic[name]`` against central differences of ``f`` for every array in ``arrays``.

    ``f`` must read the arrays themselves (they are perturbed in place and restored exactly).
    A tensor with more than ``max_entries`` entries is checked on a random subset of that
    many entries (drawn from ``rng``, seeded 0 when None) plus one random-direction
    directional derivative, reported as an extra check named "<name> (random direction)".
    ``atol`` is raised to the rounding noise of the differences, 100 * |f| * eps_machine / eps.
    """
    if not rtol > 0:
        raise ValueError(f"rtol must be positive, got {rtol}")
    if max_entries is not None and max_entries < 1:
        raise ValueError(f"max_entries must be a positive integer, got {max_entries}")
    rng = np.random.default_rng(0) if rng is None else rng
    # A central difference cannot resolve better than rounding in f itself allows: about
    # |f| * machine epsilon / eps. A loss in the thousands (regression on raw targets) would
    # otherwise fail tiny gradient entries on rounding noise alone.
    atol = max(atol, 100 * abs(float(f())) * np.finfo(np.float64).eps / eps)
    checks = []
    for name, array in arrays.items():
        _require_float64(name, array)
        if name not in analytic:
            raise ValueError(f"no analytic gradient for {name!r}")
        grad = np.asarray(analytic[name], dtype=np.float64)
        if grad.shape != array.shape:
            raise ValueError(f"analytic gradient for {name!r} has shape {grad.shape}, array has {array.shape}")
        if max_entries is None or array.size <= max_entries:
            index_list = list(np.ndindex(array.shape))
            numeric = numeric_gradient(f, array, eps).reshape(-1)
            checks.append(_compare(name, grad.reshape(-1), numeric, index_list, rtol, atol))
        else:
            flat = np.sort(rng.choice(array.size, size=max_entries, replace=False))
            index_list = [tuple(int(i) for i in np.unravel_index(k, array.shape)) for k in flat]
            numeric = numeric_gradient(f, array, eps, indices=index_list)
            checks.append(_compare(name, grad.reshape(-1)[flat], numeric, index_list, rtol, atol))
            checks.append(_directional_check(f, name, array, grad, eps, rtol, atol, rng))
    return checks


def check_layer(
    layer: Layer,
    x: np.ndarray,
    *,
    rng: np.random.Generator,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    max_entries: int | None = None,
    training: bool = False,
    seed: int = 0,
) -> list[TensorCheck]:
    """Check a float64 layer's backward for every parameter and for the input (named "x").

    Uses L = sum(forward(x) * R) for a fixed random R drawn from ``rng``, so dL/dout = R.
    Every forward gets a fresh ``np.random.default_rng(seed)``, which makes random layers
    (dropout with ``training=True``) deterministic across evaluations. ``x`` is copied first.
    """
    x = np.array(x, copy=True)
    _require_float64("x", x)

    def forward() -> tuple[np.ndarray, object]:
        return layer.forward(x, training=training, rng=np.random.default_rng(seed))

    out, cache = forward()
    weights = rng.standard_normal(np.shape(out))
    dx, grads = layer.backward(weights, cache)

    def objective() -> float:
        return float(np.sum(forward()[0] * weights))

    arrays = {"x": x, **layer.params}
    analytic = {"x": dx, **grads}
    return check_gradients(
        objective, arrays, analytic, eps=eps, rtol=rtol, atol=atol, max_entries=max_entries, rng=rng
    )


def check_loss(
    loss: Loss,
    pred: np.ndarray,
    target: np.ndarray,
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    max_entries: int | None = None,
    rng: np.random.Generator | None = None,
) -> list[TensorCheck]:
    """Check ``loss.value_and_grad``'s gradient against differences of ``loss.value`` (float64 ``pred``)."""
    pred = np.array(pred, copy=True)
    _require_float64("pred", pred)
    _, grad = loss.value_and_grad(pred, target)
    return check_gradients(
        lambda: loss.value(pred, target),
        {"pred": pred},
        {"pred": grad},
        eps=eps,
        rtol=rtol,
        atol=atol,
        max_entries=max_entries,
        rng=rng,
    )


def check_model(
    model: Sequential,
    loss: Loss,
    x: np.ndarray,
    target: np.ndarray,
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    max_entries: int | None = None,
    rng: np.random.Generator | None = None,
    training: bool = False,
    seed: int = 0,
) -> list[TensorCheck]:
    """Check every parameter gradient of a float64 model under ``loss`` on one batch.

    As in ``check_layer``, each forward gets ``np.random.default_rng(seed)`` so dropout
    masks are the same in every evaluation when ``training=True``.
    """

    def forward() -> tuple[np.ndarray, list]:
        return model.forward(x, training=training, rng=np.random.default_rng(seed))

    out, caches = forward()
    _, dout = loss.value_and_grad(out, target)
    grads = model.backward(dout, caches)
    return check_gradients(
        lambda: loss.value(forward()[0], target),
        model.parameters(),
        grads,
        eps=eps,
        rtol=rtol,
        atol=atol,
        max_entries=max_entries,
        rng=rng,
    )
