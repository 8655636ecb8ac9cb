"""In-place BLAS updates NumPy has no call for: rank-1 ``ger`` (scipy.linalg.blas, imported on first
use), and ``axpby`` / ``axpy`` (NumPy's own BLAS).

NumPy cannot accumulate into an existing array: ``a += alpha * outer(x, y)`` builds the (D, M)
product first and then reads it again. BLAS ``ger`` (a += alpha x yᵀ) writes straight into ``a``,
one pass over memory. ``ger`` takes the routine of the target's precision (``sger`` for float32,
``dger`` for float64) and falls back to NumPy (same formula, NumPy's rounding) for arrays below
``MIN_SIZE`` elements, other dtypes, or memory BLAS cannot address in place. scipy's f2py wrappers
copy an argument that is not contiguous in the order they expect (and then write into the copy),
so the layout is checked first and a C-contiguous (D, M) ``a`` is handed over as its transpose,
the F-contiguous (M, D) matrix Fortran sees.

Importing scipy.linalg takes ~0.13 s, paid once by a process whose arrays reach ``MIN_SIZE``;
``sgdcli --help`` and small models never import it.

``axpby`` and ``axpy`` (y = alpha x + beta y, y += alpha x) do an optimizer's two- and three-pass
NumPy sequences (``y *= beta; s = x * alpha; y += s``) in one pass over memory, through NumPy's
own BLAS: the scipy-openblas64 library NumPy's wheels ship, whose CBLAS symbols carry the
``scipy_`` prefix and ``64_`` suffix (64-bit integers). Its thread pool is the one NumPy's matrix
products use. scipy's ``axpy`` would run in scipy's own OpenBLAS, a second thread pool: run
between NumPy's products on a 2-core machine (whose pool's workers spin-wait after each product)
it measured 3x slower per update, and scipy's ``sgemm`` right after NumPy's products 3.6x slower
than NumPy's. Without that library (another NumPy build) they return False and the caller
takes its NumPy passes: same formula, NumPy's rounding (BLAS may fuse the multiply and add).
"""

from __future__ import annotations

import ctypes
import glob
import os

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


_NUMPY_BLAS: list = []  # [library or None], looked up on first use


def _numpy_blas():
    """NumPy's own scipy-openblas64 library (ctypes), or None when NumPy was built with another BLAS."""
    if not _NUMPY_BLAS:
        library = None
        blas_config = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {})
        if blas_config.get("name") == "scipy-openblas" and "USE64BITINT" in str(blas_config.get("openblas configuration")):
            folder = os.path.dirname(np.__file__)
            found = sorted(glob.glob(os.path.join(folder, os.pardir, "numpy.libs", "libscipy_openblas64_*"))
                           + glob.glob(os.path.join(folder, ".dylibs", "libscipy_openblas64_*")))
            try:
                library = ctypes.CDLL(found[0]) if found else None  # already loaded by NumPy: the same copy
                for name in ("saxpy", "daxpy", "saxpby", "daxpby"):
                    routine = getattr(library, f"scipy_cblas_{name}64_")
                    real = ctypes.c_float if name[0] == "s" else ctypes.c_double
                    size, pointer = ctypes.c_int64, ctypes.c_void_p
                    routine.restype = None
                    routine.argtypes = ([size, real, pointer, size, pointer, size] if name.endswith("axpy")
                                        else [size, real, pointer, size, real, pointer, size])
            except (OSError, AttributeError, TypeError):
                library = None
        _NUMPY_BLAS.append(library)
    return _NUMPY_BLAS[0]


def _level1(y: np.ndarray, x: np.ndarray, *scalars: float):
    """The library if y and x can be handed to it as they are, else None: of one float32/float64 dtype
    and shape, C-contiguous and aligned, y writeable and not overlapping x, every scalar non-zero (BLAS
    may skip reading an operand scaled by 0, where NumPy's 0 * inf is NaN), ``MIN_SIZE`` elements."""
    if not (y.size >= MIN_SIZE and y.dtype in (np.float32, np.float64) and x.dtype == y.dtype and x.shape == y.shape
            and y.flags.c_contiguous and x.flags.c_contiguous and y.flags.aligned and x.flags.aligned
            and y.flags.writeable and all(scalars) and not np.may_share_memory(x, y)):
        return None
    return _numpy_blas()


def axpby(alpha: float, x: np.ndarray, beta: float, y: np.ndarray) -> bool:
    """y = alpha * x + beta * y in place (one pass, NumPy's BLAS ``saxpby``/``daxpby``); False, with y
    untouched, where that library or these arrays do not allow it (see the module doc)."""
    library = _level1(y, x, alpha, beta)
    if library is None:
        return False
    routine = library.scipy_cblas_saxpby64_ if y.dtype == np.float32 else library.scipy_cblas_daxpby64_
    routine(y.size, alpha, x.ctypes.data, 1, beta, y.ctypes.data, 1)
    return True


def axpy(alpha: float, x: np.ndarray, y: np.ndarray) -> bool:
    """y += alpha * x in place (one pass, NumPy's BLAS ``saxpy``/``daxpy``); False, with y untouched,
    where that library or these arrays do not allow it."""
    library = _level1(y, x, alpha)
    if library is None:
        return False
    routine = library.scipy_cblas_saxpy64_ if y.dtype == np.float32 else library.scipy_cblas_daxpy64_
    routine(y.size, alpha, x.ctypes.data, 1, y.ctypes.data, 1)
    return True
