"""Gradients kept in factored form: a dense layer's weight gradient x dzᵀ (one sample) or x.T dz (a batch).

With a batch of one, a dense layer's weight gradient x.T @ dz is the outer product of the input x
(D,) and dz (M,). Building it costs a pass over a weight-sized array, and an optimizer then reads
it again; kept as its two factors, SGD (plain, momentum, Nesterov) and Adam apply it with BLAS
rank-1 updates (``blas.ger``) straight into the weights, the velocity or the moments. What needs
the values themselves (AdaGrad, RMSProp, L2 weight decay) calls ``materialize``; the global
norm (divergence check, clipping, layer statistics) comes from the factors:
‖x dzᵀ‖² = ‖x‖² ‖dz‖², the same value up to rounding.

With a batch of N > 1 the weight gradient x.T @ dz is a matrix product (``BatchProduct``). Plain
and momentum SGD take it as one BLAS gemm writing into the weights or the velocity (v = m v - lr
x.T dz, beta = m), one pass over the weights fewer than building g first; the other optimizers get
it built into a work array. Its divergence check needs no product: ``surely_finite`` bounds its sum
of squares by ‖x‖² ‖dz‖² and only a bound near overflow sends the check to the built array.

``squared_norm``, ``as_array`` and in-place scaling (``g *= factor``) work on every kind and on a
plain array, so code that inspects gradients handles each.
"""

from __future__ import annotations

import math

import numpy as np

from . import blas, pool
from .pool import run


class _Factors:
    """What both factored gradients share: the factors x and dz, referenced and never written, a
    ``scale`` that ``g *= factor`` changes (clipping) instead of the values, g's dtype, and
    ``np.asarray(g)`` building g (``materialize``, which the subclass provides)."""

    __slots__ = ("x", "dz", "scale")

    def __init__(self, x: np.ndarray, dz: np.ndarray, scale: float) -> None:
        self.x, self.dz, self.scale = x, dz, float(scale)

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype

    def __imul__(self, factor: float):
        self.scale *= float(factor)
        return self

    def materialize(self, out: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.materialize()
        return array if dtype is None else array.astype(dtype, copy=False)


class OuterProduct(_Factors):
    """The gradient g = scale * outer(x, dz) of a (D, M) weight, kept as its factors.

    x (D,) and dz (M,) are referenced, not copied, and never written; ``g *= factor`` changes
    only ``scale`` (clipping). ``shape`` and ``dtype`` are those of g.
    """

    __slots__ = ()

    def __init__(self, x: np.ndarray, dz: np.ndarray, scale: float = 1.0) -> None:
        if x.ndim != 1 or dz.ndim != 1 or x.dtype != dz.dtype:
            raise ValueError(f"OuterProduct needs two 1-D factors of one dtype, got {x.shape} {x.dtype} "
                             f"and {dz.shape} {dz.dtype}")
        super().__init__(x, dz, scale)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.x), len(self.dz))

    def squared_norm(self) -> float:
        """‖g‖² = scale² ‖x‖² ‖dz‖² (float64), or inf where the array's own sum of squares in its
        dtype would overflow (above finfo.max), as ``squared_norm`` of the built array reports.

        When a factor's own squared norm is not finite (a non-finite entry, or |x| so large that ‖x‖²
        overflows while g itself may not), the value is taken from the built array, so the verdict
        on a finite or non-finite gradient is the built array's.
        """
        xx, dd = float(np.dot(self.x, self.x)), float(np.dot(self.dz, self.dz))
        if not (math.isfinite(xx) and math.isfinite(dd)):
            return squared_norm(self.materialize())
        value = self.scale * self.scale * xx * dd
        return value if value <= _largest(self.dtype) else math.inf

    def materialize(self, out: np.ndarray | None = None) -> np.ndarray:
        """g as a (D, M) C-contiguous array, written into ``out`` when given (no allocation)."""
        if out is not None and blas.writes_in_place(out, self.x):
            out.fill(0)  # then one rank-1 update: ~3x faster than NumPy's broadcast multiply
            self.add_to(out, 1.0)
            return out
        dz = self.dz if self.scale == 1.0 else self.dz * self.scale
        return np.multiply(self.x[:, None], dz, out=out)

    def add_to(self, target: np.ndarray, alpha: float, decay: float = 1.0) -> None:
        """target = decay * target + alpha * g in place: the product is never built. BLAS ``ger`` for
        decay 1; else one ``gemm`` with inner dimension 1 (beta = decay), one pass over target instead
        of a scaling pass and ``ger`` (a batch-1 momentum update of 784 x 512: 55 against 70 us),
        where NumPy's BLAS takes target in place (else the two passes)."""
        run(self.add_calls(target, alpha, decay))

    def add_calls(self, target: np.ndarray, alpha: float, decay: float = 1.0) -> list[Call]:
        """``add_to`` as prepared calls (``scaled_calls``). They hold addresses, not the arrays: valid while target
        and both factors are alive and keep their memory, and for this ``scale`` (a prepared update replays
        them: ``engine/one_sample``)."""
        alpha = alpha * self.scale
        calls = []
        if decay != 1.0:
            call = blas.gemm_tn_call(alpha, self.x[None, :], self.dz[None, :], decay, target)
            if call is not None:
                return [call]
            calls.append((np.multiply, (target, decay, target)))
        return calls + [blas.ger_call(alpha, self.x, self.dz, target)]

    def __repr__(self) -> str:
        return f"OuterProduct(shape={self.shape}, dtype={self.dtype}, scale={self.scale})"


class BatchProduct(_Factors):
    """The gradient g = scale * x.T @ dz of a (D, M) weight from a batch of N samples, kept as its factors.

    x (N, D) and dz (N, M) are referenced, not copied, and never written. ``add_to`` and
    ``materialize`` are one BLAS gemm writing into the target (``blas.gemm_tn``), so SGD puts the
    product straight into the velocity or the weights and it is never stored on its own.

    ``surely_finite`` decides without the product that its sum of squares is finite (see there).
    ``squared_norm`` (clipping, layer statistics, a check the bound left open) builds the product
    x.T @ dz once, into a new array kept on this object: from then on ``materialize`` and ``add_to``
    use it (one pass, ``add_scaled``), so a clipped update still runs one gemm, not two.
    ``g *= factor`` changes only ``scale``. ``shape`` and ``dtype`` are those of g.
    """

    __slots__ = ("product",)

    def __init__(self, x: np.ndarray, dz: np.ndarray, scale: float = 1.0) -> None:
        if x.ndim != 2 or dz.ndim != 2 or len(x) != len(dz) or x.dtype != dz.dtype:
            raise ValueError(f"BatchProduct needs two 2-D factors with one row count and dtype, got {x.shape} "
                             f"{x.dtype} and {dz.shape} {dz.dtype}")
        super().__init__(x, dz, scale)
        self.product: np.ndarray | None = None  # x.T @ dz (without scale), once something needed the values

    @property
    def shape(self) -> tuple[int, int]:
        return (self.x.shape[1], self.dz.shape[1])

    def surely_finite(self) -> bool:
        """True when sum(g * g), computed in g's dtype, is certainly finite: scale² ‖x‖² ‖dz‖² is at
        most a quarter of finfo.max. Each g_ij = scale Σ_n x_ni dz_nj is at most scale ‖x_:i‖ ‖dz_:j‖ in
        size (Cauchy-Schwarz), so Σ g_ij² ≤ scale² ‖x‖² ‖dz‖²; the quarter covers the rounding of the
        product, of the sum of squares and of this bound (each a relative (1 + n·eps)). False (then
        the caller checks the built g) for non-finite factors or a bound above that: a verdict
        "not finite" is never taken from the bound. The two norms read x and dz, not the D x M product.
        """
        xx, dd = float(np.dot(self.x.reshape(-1), self.x.reshape(-1))), float(np.dot(self.dz.reshape(-1), self.dz.reshape(-1)))
        bound = self.scale * self.scale * xx * dd
        return bound <= _largest(self.dtype) / 4  # False for inf and NaN too

    def squared_norm(self) -> float:
        """sum(g * g) of the built g (float64 value of a sum in g's dtype, as ``squared_norm`` of an
        array; scale² times the product's when clipping has scaled g). Builds and keeps the product."""
        if self.product is None:
            self.product = self._build(np.empty(self.shape, dtype=self.dtype), 1.0)
        value = squared_norm(self.product)
        return value if self.scale == 1.0 else self.scale * self.scale * value

    def materialize(self, out: np.ndarray | None = None) -> np.ndarray:
        """g as a (D, M) C-contiguous array, written into ``out`` when given (no allocation)."""
        if out is None:
            out = np.empty(self.shape, dtype=self.dtype)
        if self.product is not None:
            np.multiply(self.product, self.scale, out=out)
        else:
            self._build(out, self.scale)
        return out

    def rows_call(self, out: np.ndarray, first: int, stop: int, alpha: float | None = None) -> tuple:
        """Rows first..stop of alpha * x.T @ dz (alpha: ``scale``) written into out[first:stop], prepared
        (``blas.gemm_tn_rows_call``: one gemm reading x's columns in place); else NumPy's product, then scaled."""
        alpha = self.scale if alpha is None else alpha
        call = blas.gemm_tn_rows_call(alpha, self.x, self.dz, out, first, stop)
        if call is None:
            call = (np.multiply, (self.x[:, first:stop].T @ self.dz, alpha, out[first:stop]))
        return call

    def _build(self, out: np.ndarray, alpha: float) -> np.ndarray:
        """out = alpha * x.T @ dz, by rows as an element-wise update's parts build them (``pool.split_calls``, each
        part its rows on one thread; whole, the same rows in turn): whoever builds g, a clipping or tracking run's
        ``squared_norm`` too, gets the same bits (a product's bits depend on OpenBLAS's thread count)."""
        width = out.shape[1]
        pool.split_calls(out.size, lambda start, stop: [self.rows_call(out, start // width, stop // width, alpha)],
                         pool.row_unit(width))
        return out

    def add_to(self, target: np.ndarray, alpha: float, decay: float = 1.0) -> None:
        """target = decay * target + alpha * g in place: one gemm (the product never stored), or one
        pass over the product when ``squared_norm`` has built it."""
        if self.product is None:
            blas.gemm_tn(alpha * self.scale, self.x, self.dz, decay, target)
        elif not (blas.axpy(alpha * self.scale, self.product, target) if decay == 1.0
                  else blas.axpby(alpha * self.scale, self.product, decay, target)):
            if decay != 1.0:
                target *= decay
            target += self.product * (alpha * self.scale)

    def __repr__(self) -> str:
        return f"BatchProduct(shape={self.shape}, dtype={self.dtype}, rows={len(self.x)}, scale={self.scale})"


Gradient = np.ndarray | OuterProduct | BatchProduct

_LARGEST: dict[np.dtype, float] = {}


def _largest(dtype: np.dtype) -> float:
    """finfo(dtype).max as a float, looked up once per dtype (np.finfo costs ~1 us a call)."""
    largest = _LARGEST.get(dtype)
    if largest is None:
        largest = _LARGEST[dtype] = float(np.finfo(dtype).max)
    return largest


def squared_norm(grad: Gradient) -> float:
    """sum(g * g) as a Python float, accumulated in g's dtype (so it overflows to inf where g's
    sum of squares does); for an OuterProduct from its factors (``OuterProduct.squared_norm``)."""
    if isinstance(grad, (OuterProduct, BatchProduct)):
        return grad.squared_norm()
    flat = grad.reshape(-1)
    return float(np.dot(flat, flat))


def as_array(grad: Gradient) -> np.ndarray:
    """The gradient's values as an array (an OuterProduct is built; an array is returned as is)."""
    return grad.materialize() if isinstance(grad, (OuterProduct, BatchProduct)) else grad


def surely_finite(grad: Gradient) -> bool:
    """Whether g's sum of squares is known finite without reading a D x M array: a ``BatchProduct``'s
    bound (``BatchProduct.surely_finite``); False for any other gradient (then check ``squared_norm``)."""
    return isinstance(grad, BatchProduct) and grad.surely_finite()


Call = tuple  # (function, arguments): one step of an update, prepared (``scaled_calls``)


def add_scaled(target: np.ndarray, alpha: float, grad: Gradient, scratch: np.ndarray, decay: float = 1.0) -> None:
    """target = decay * target + alpha * g in place: one BLAS ``ger`` or ``gemm`` for an OuterProduct
    (``OuterProduct.add_to``), one ``gemm`` for a BatchProduct; for an array one BLAS pass
    (``blas.axpby``/``axpy``), else NumPy passes through ``scratch`` (a work array shaped like
    target, which g itself may be), no temporary. ``scaled_calls`` run."""
    run(scaled_calls(target, alpha, grad, scratch, decay))


def scaled_calls(target: np.ndarray, alpha: float, grad: Gradient, scratch: np.ndarray, decay: float = 1.0) -> list[Call]:
    """``add_scaled`` as prepared calls, built now and run later (BLAS arguments checked and addresses taken
    here, so that running them is the calls alone: ``engine/pool.split_calls``)."""
    if isinstance(grad, OuterProduct):
        return grad.add_calls(target, alpha, decay)
    if isinstance(grad, BatchProduct):
        return [(grad.add_to, (target, alpha, decay))]
    call = None if target.size < blas.MIN_SIZE else (
        blas.axpy_call(alpha, grad, target) if decay == 1.0 else blas.axpby_call(alpha, grad, decay, target))
    if call is not None:
        return [call]
    calls = [(np.multiply, (target, decay, target))] if decay != 1.0 else []
    if alpha != 1.0:
        calls.append((np.multiply, (grad, alpha, scratch)))
    return calls + [(np.add, (target, grad if alpha == 1.0 else scratch, target))]


def add_squared(target: np.ndarray, alpha: float, grad: Gradient, scratch: np.ndarray, decay: float = 1.0) -> None:
    """target = decay * target + alpha * g * g (elementwise) in place, using ``scratch`` (shaped like target).

    An OuterProduct's square is rank-1 too, (scale x)² ⊗ dz², so it is one ``ger`` (or ``gemm``, with the
    decay: ``OuterProduct.add_to``) and g is never built. ``squared_calls`` run.
    """
    run(squared_calls(target, alpha, grad, scratch, decay))


def squared_calls(target: np.ndarray, alpha: float, grad: Gradient, scratch: np.ndarray, decay: float = 1.0) -> list[Call]:
    """``add_squared`` as prepared calls (see ``scaled_calls``); an OuterProduct's squared factors are built now,
    and held by the call (its bound ``add_to``: calls prepared with their addresses would not keep them alive)."""
    if isinstance(grad, OuterProduct):
        squared = OuterProduct(np.square(grad.x), np.square(grad.dz), grad.scale * grad.scale)
        return [(squared.add_to, (target, alpha, decay))]
    return [(np.square, (grad, scratch)), *scaled_calls(target, alpha, scratch, scratch, decay)]


def clip_by_global_norm(grads: dict[str, Gradient], max_norm: float) -> float:
    """Scale all ``grads`` in place by max_norm / norm when their global L2 norm exceeds ``max_norm``.

    norm = sqrt(sum over arrays of sum(g * g)) (an OuterProduct's from its factors, and scaled by its ``scale``).
    Returns the norm before clipping. A non-finite norm is returned as is and the gradients are left alone, so the
    caller can detect divergence.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    norm = math.sqrt(sum(squared_norm(g) for g in grads.values()))
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / norm
        for g in grads.values():
            g *= scale
    return norm
