"""The in-place BLAS rank-1 update NumPy has no call for (scipy.linalg.blas, imported on first use).

NumPy cannot accumulate into an existing array: ``a += alpha * outer(x, y)`` builds the (D, M)
product first and then reads it again. BLAS ``ger`` (a += alpha x yᵀ) writes straight into ``a``,
one pass over memory. ``ger`` takes the routine of the target's precision (``sger`` for float32,
``dger`` for float64) and falls back to NumPy (same formula, NumPy's rounding) for arrays below
``MIN_SIZE`` elements, other dtypes, or memory BLAS cannot address in place. scipy's f2py wrappers
copy an argument that is not contiguous in the order they expect (and then write into the copy),
so the layout is checked first and a C-contiguous (D, M) ``a`` is handed over as its transpose,
the F-contiguous (M, D) matrix Fortran sees.

Only ger: for elementwise passes (``y += alpha * x``) NumPy is as fast, and scipy's ``axpy``,
run between NumPy's own BLAS calls on a 2-core machine, measured 3x slower per update in the
training loop (two OpenBLAS thread pools in one process).

Importing scipy.linalg takes ~0.13 s, paid once by a process whose arrays reach ``MIN_SIZE``;
``sgdcli --help`` and small models never import it.
"""

from __future__ import annotations

import numpy as np

MIN_SIZE = 1 << 15  # elements (128 KiB in float32): below this NumPy is as fast and scipy is not imported

_ROUTINES: dict[tuple[str, str], object] = {}


def _routine(name: str, dtype: np.dtype):
    """The scipy BLAS routine `name` ("ger") for float32 (s) or float64 (d)."""
    key = (name, dtype.char)
    routine = _ROUTINES.get(key)
    if routine is None:
        from scipy.linalg import blas  # lazy: ~0.13 s, only once arrays are large

        routine = _ROUTINES[key] = getattr(blas, ("s" if dtype == np.float32 else "d") + name)
    return routine


def writes_in_place(target: np.ndarray, *operands: np.ndarray) -> bool:
    """Whether ``ger`` runs BLAS on `target` in place: large (``MIN_SIZE``), float32/float64,
    C-contiguous, aligned, writeable, and every operand of the same dtype and contiguous."""
    return (target.size >= MIN_SIZE and target.dtype in (np.float32, np.float64)
            and target.flags.c_contiguous and target.flags.aligned and target.flags.writeable
            and all(a.dtype == target.dtype and a.flags.c_contiguous for a in operands))


def ger(alpha: float, x: np.ndarray, y: np.ndarray, a: np.ndarray) -> None:
    """Rank-1 update in place: a += alpha * outer(x, y). x (D,), y (M,), a (D, M).

    BLAS ``sger``/``dger`` on aᵀ (a C-contiguous (D, M) array is the Fortran (M, D) matrix aᵀ, and
    aᵀ += alpha y xᵀ is the same update), so the product is never built.
    """
    if a.shape != (len(x), len(y)):
        raise ValueError(f"ger: a has shape {a.shape}, expected {(len(x), len(y))} from x {x.shape} and y {y.shape}")
    if not writes_in_place(a, x, y):
        a += alpha * np.multiply.outer(x, y)
        return
    _routine("ger", a.dtype)(alpha, y, x, a=a.T, overwrite_a=True)
