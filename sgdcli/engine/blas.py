"""In-place BLAS updates NumPy has no call for (``ger``, ``gemm`` into an array, ``axpby``, ``axpy``), and the pool's size.

NumPy cannot accumulate into an existing array: ``a += alpha * outer(x, y)`` builds the (D, M)
product first and then reads it again, and ``y = beta * y + alpha * x`` takes three passes
(``y *= beta; s = x * alpha; y += s``). BLAS ``ger`` (a += alpha x yᵀ), ``axpby`` and ``axpy``
write straight into the target, one pass over memory. Each takes the routine of the target's
precision (``s`` for float32, ``d`` for float64) and falls back to NumPy (same formula, NumPy's
rounding; BLAS may fuse a multiply and an add) for arrays below ``MIN_SIZE`` elements (a rank-1
update below ``RANK1_MIN_SIZE``, or into a single column: ``writes_in_place``), other dtypes, or
memory BLAS cannot address in place.

The routines are NumPy's own BLAS: the scipy-openblas64 library NumPy's wheels ship, whose CBLAS
symbols carry the ``scipy_`` prefix and ``64_`` suffix (64-bit integers), called through ctypes.
Its thread pool is the one NumPy's matrix products use. scipy.linalg.blas runs in scipy's own
OpenBLAS, a second pool: called between NumPy's products on a 2-core machine (whose pool's
workers spin-wait after each product) its ``axpy`` measured 3x slower per update, its ``sgemm``
3.6x slower than NumPy's, and NumPy-BLAS ``axpy`` next to scipy's ``ger`` made a batch-1
momentum update 17x slower. With another NumPy build, ``ger`` takes scipy's (imported on first
use, ~0.13 s; its f2py wrappers copy an argument not contiguous in the order they expect, so a
C-contiguous (D, M) ``a`` is handed over as its transpose, the F-contiguous (M, D) matrix Fortran
sees) and ``axpby``/``axpy`` return False for the caller's NumPy passes. ``sgdcli --help`` and
small models load neither.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

MIN_SIZE = 1 << 15  # elements (128 KiB in float32): below this NumPy is as fast
# A rank-1 update (``ger``, a gemm of inner dimension 1) replaces two or three NumPy passes and a
# temporary with one call: one BLAS thread took 5.1 against 10.4 us for a 512 x 10 ``ger``, 3.0 against
# 4.7 for 128 x 10 (NumPy's outer product, scaled and added), the same from ~640 elements up.
RANK1_MIN_SIZE = 1 << 10

_ROUTINES: dict[tuple[str, str], object] = {}


def _routine(name: str, dtype: np.dtype):
    """The scipy BLAS routine `name` ("ger") for float32 (s) or float64 (d): where NumPy has no BLAS of its own here."""
    key = (name, dtype.char)
    routine = _ROUTINES.get(key)
    if routine is None:
        from scipy.linalg import blas  # lazy: ~0.13 s, only once arrays are large

        routine = _ROUTINES[key] = getattr(blas, ("s" if dtype == np.float32 else "d") + name)
    return routine


def writes_in_place(target: np.ndarray, *operands: np.ndarray, rank_one: bool = False) -> bool:
    """Whether BLAS runs on `target` in place: large (``MIN_SIZE`` elements), float32/float64,
    C-contiguous, aligned, writeable, and every operand of the same dtype and contiguous.

    ``rank_one``: the update is rank 1 (``ger``, a gemm of inner dimension 1) of a (D, M) target: BLAS
    from ``RANK1_MIN_SIZE`` elements where NumPy has its own BLAS (scipy's second pool keeps
    ``MIN_SIZE``), and never for a single column (M = 1, one output unit), where BLAS walks D columns of
    one element: 1024 x 1 took 7.1 us against NumPy's 3.2, 4096 x 1 18 against 4.1 (one BLAS thread).
    """
    dtype = target.dtype
    if rank_one:
        if target.ndim != 2 or target.shape[1] == 1:
            return False
        least = min(MIN_SIZE, RANK1_MIN_SIZE) if _numpy_blas() is not None else MIN_SIZE
    else:
        least = MIN_SIZE
    if target.size < least or dtype not in _FLOATS:
        return False
    flags = target.flags  # (each .flags builds an object: one look, not four; a batch-1 update asks ~4 times)
    if not (flags.c_contiguous and flags.aligned and flags.writeable):
        return False
    for operand in operands:
        if operand.dtype != dtype or not operand.flags.c_contiguous:
            return False
    return True


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))  # native byte order: what BLAS reads


def ger(alpha: float, x: np.ndarray, y: np.ndarray, a: np.ndarray) -> None:
    """Rank-1 update in place: a += alpha * outer(x, y). x (D,), y (M,), a (D, M).

    BLAS ``sger``/``dger``, so the product is never built: NumPy's own (row-major CBLAS) where it has
    one (see ``axpby``: one thread pool for every BLAS call of an update), else scipy's on aᵀ (a
    C-contiguous (D, M) array is the Fortran (M, D) matrix aᵀ, and aᵀ += alpha y xᵀ is the same update).
    """
    function, arguments = ger_call(alpha, x, y, a)
    function(*arguments)


def ger_call(alpha: float, x: np.ndarray, y: np.ndarray, a: np.ndarray) -> tuple:
    """``ger`` prepared, not run (see ``axpby_call``): (the routine, its arguments), NumPy's passes
    (``_outer_added``) where BLAS cannot write a in place. Raises ValueError for shapes that do not fit."""
    if a.shape != (len(x), len(y)):
        raise ValueError(f"ger: a has shape {a.shape}, expected {(len(x), len(y))} from x {x.shape} and y {y.shape}")
    if not writes_in_place(a, x, y, rank_one=True):
        return _outer_added, (alpha, x, y, a)
    library = _numpy_blas()
    if library is not None:  # NumPy's own pool, the one its products and axpy/axpby use
        routine = library.scipy_cblas_sger64_ if a.dtype == np.float32 else library.scipy_cblas_dger64_
        return routine, (ROW_MAJOR, len(x), len(y), alpha, _address(x), 1, _address(y), 1, _address(a), len(y))
    return _scipy_ger, (alpha, x, y, a)


def _outer_added(alpha: float, x: np.ndarray, y: np.ndarray, a: np.ndarray) -> None:
    a += alpha * np.multiply.outer(x, y)


def _scipy_ger(alpha: float, x: np.ndarray, y: np.ndarray, a: np.ndarray) -> None:
    _routine("ger", a.dtype)(alpha, y, x, a=a.T, overwrite_a=True)


def gemm_tn(alpha: float, a: np.ndarray, b: np.ndarray, beta: float, c: np.ndarray, *, fallback: bool = True) -> bool:
    """c = alpha * a.T @ b + beta * c in place. a (N, D), b (N, M), c (D, M). Returns whether BLAS ran.

    One BLAS ``sgemm``/``dgemm`` (NumPy's own library, see ``axpby``) writing straight into c, so a
    weight gradient can land in the velocity or the weights without being stored first. Elsewhere
    (small c, other dtypes or layouts, another NumPy build) NumPy's product and passes, same formula;
    with ``fallback=False`` nothing instead (c untouched, False), for a caller with a cheaper way
    than building the product. With beta == 0, c's old contents are not read (as BLAS: a NaN there
    does not propagate).
    """
    call = gemm_tn_call(alpha, a, b, beta, c)
    if call is None:
        if not fallback:
            return False
        product = a.T @ b
        if alpha != 1.0:
            product *= alpha
        if beta == 0.0:
            np.copyto(c, product)
        else:
            if beta != 1.0:
                c *= beta
            c += product
        return False
    call[0](*call[1])
    return True


def gemm_tn_call(alpha: float, a: np.ndarray, b: np.ndarray, beta: float, c: np.ndarray) -> tuple | None:
    """``gemm_tn`` prepared, not run (see ``axpby_call``): (the routine, its arguments), or None where
    ``gemm_tn`` would not run BLAS on these arrays. Raises ValueError for shapes that do not fit."""
    if a.ndim != 2 or b.ndim != 2 or len(a) != len(b) or c.shape != (a.shape[1], b.shape[1]):
        raise ValueError(f"gemm_tn: c has shape {c.shape}, expected {(a.shape[1:] + b.shape[1:])} "
                         f"from a {a.shape} and b {b.shape}")
    library = _gemm_library(a, b, c)
    if library is None:
        return None
    routine = library.scipy_cblas_sgemm64_ if c.dtype == np.float32 else library.scipy_cblas_dgemm64_
    (n, d), m = a.shape, b.shape[1]
    return routine, (ROW_MAJOR, TRANS, NO_TRANS, d, m, n, alpha, _address(a), d, _address(b), m, beta, _address(c), m)


def gemm_tn_rows_call(alpha: float, a: np.ndarray, b: np.ndarray, c: np.ndarray, first: int, stop: int) -> tuple | None:
    """c[first:stop] = alpha * a[:, first:stop].T @ b, prepared, not run (see ``axpby_call``): rows first..stop
    of ``gemm_tn``'s product with beta 0, one ``sgemm``/``dgemm`` reading a's columns in place (its row stride
    D as the leading dimension); None where ``gemm_tn`` would not run BLAS on these arrays. A part of an update
    (``engine/pool``) builds its own rows of a weight gradient this way, on its own core."""
    if a.ndim != 2 or b.ndim != 2 or len(a) != len(b) or c.shape != (a.shape[1], b.shape[1]) or not 0 <= first <= stop <= len(c):
        raise ValueError(f"gemm_tn_rows_call: c {c.shape}, a {a.shape}, b {b.shape}, rows {first}:{stop} do not fit")
    library = _gemm_library(a, b, c)
    if library is None:
        return None
    routine = library.scipy_cblas_sgemm64_ if c.dtype == np.float32 else library.scipy_cblas_dgemm64_
    (n, d), m, size = a.shape, b.shape[1], c.itemsize
    return routine, (ROW_MAJOR, TRANS, NO_TRANS, stop - first, m, n, alpha, _address(a) + first * size, d, _address(b),
                     m, 0.0, _address(c) + first * m * size, m)


def gemm_nn_rows_call(a: np.ndarray, b: np.ndarray, c: np.ndarray, first: int, stop: int) -> tuple:
    """c = a[:, first:stop] @ b[first:stop], prepared, not run: a (N, D), b (D, M), c (N, M), one ``sgemm``/``dgemm``
    with beta 0 reading a's columns and b's rows in place (a part of a layer's product over its weight rows:
    ``engine/forward_parts``). Raises ValueError where BLAS cannot write c in place from these arrays."""
    if (a.ndim != 2 or b.ndim != 2 or a.shape[1] != len(b) or c.shape != (len(a), b.shape[1])
            or not 0 <= first <= stop <= len(b)):
        raise ValueError(f"gemm_nn_rows_call: c {c.shape}, a {a.shape}, b {b.shape}, rows {first}:{stop} do not fit")
    library = _gemm_library(a, b, c)
    if library is None:
        raise ValueError("gemm_nn_rows_call: NumPy's BLAS cannot write c in place from a and b")
    routine = library.scipy_cblas_sgemm64_ if c.dtype == np.float32 else library.scipy_cblas_dgemm64_
    (n, d), m, size = a.shape, b.shape[1], c.itemsize
    return routine, (ROW_MAJOR, NO_TRANS, NO_TRANS, n, m, stop - first, 1.0, _address(a) + first * size, d,
                     _address(b) + first * m * size, m, 0.0, _address(c), m)


def _gemm_library(a: np.ndarray, b: np.ndarray, c: np.ndarray):
    """NumPy's BLAS where a gemm may write c = a.T @ b in place (``writes_in_place``, c overlapping neither), else None."""
    if writes_in_place(c, a, b, rank_one=len(a) == 1) and not np.may_share_memory(c, a) and not np.may_share_memory(c, b):
        return _numpy_blas()
    return None


def _address(a: np.ndarray) -> int:
    """The address of a's first element, for a C-contiguous array: through ctypes' view of its buffer
    (~0.2 us), or ``a.ctypes.data`` (~1 us, which builds a helper object) where the buffer is read-only
    or empty. A batch-1 update hands BLAS ~10 addresses."""
    try:
        return ctypes.addressof(_BYTE.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


_BYTE = ctypes.c_char
_NUMPY_BLAS: list = []  # [library or None], looked up on first use
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS_ORDER CblasRowMajor, CBLAS_TRANSPOSE CblasNoTrans / CblasTrans


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
                size, pointer = ctypes.c_int64, ctypes.c_void_p
                library.scipy_openblas_get_num_threads64_.restype = ctypes.c_int
                library.scipy_openblas_get_num_threads64_.argtypes = []
                library.scipy_openblas_set_num_threads64_.restype = None
                library.scipy_openblas_set_num_threads64_.argtypes = [ctypes.c_int]
                for name in ("saxpy", "daxpy", "saxpby", "daxpby", "sger", "dger", "sgemm", "dgemm", "srotm", "drotm"):
                    routine = getattr(library, f"scipy_cblas_{name}64_")
                    real = ctypes.c_float if name[0] == "s" else ctypes.c_double
                    routine.restype = None
                    routine.argtypes = {
                        "axpy": [size, real, pointer, size, pointer, size],
                        "axpby": [size, real, pointer, size, real, pointer, size],
                        "ger": [ctypes.c_int, size, size, real, pointer, size, pointer, size, pointer, size],
                        "gemm": [ctypes.c_int, ctypes.c_int, ctypes.c_int, size, size, size, real, pointer, size,
                                 pointer, size, real, pointer, size],
                        "rotm": [size, pointer, size, pointer, size, ctypes.POINTER(real)],
                    }[name[1:]]
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
    call = axpby_call(alpha, x, beta, y)
    if call is None:
        return False
    call[0](*call[1])
    return True


def axpy(alpha: float, x: np.ndarray, y: np.ndarray) -> bool:
    """y += alpha * x in place (one pass, NumPy's BLAS ``saxpy``/``daxpy``); False, with y untouched,
    where that library or these arrays do not allow it."""
    call = axpy_call(alpha, x, y)
    if call is None:
        return False
    call[0](*call[1])
    return True


def axpby_call(alpha: float, x: np.ndarray, beta: float, y: np.ndarray) -> tuple | None:
    """``axpby`` prepared, not run: (the BLAS routine, its arguments), checked as ``axpby`` checks them, or
    None where it would return False. The arguments hold the arrays' addresses: the call is valid while x
    and y are (an update's calls are built before ``engine/pool`` runs them, see there)."""
    library = _level1(y, x, alpha, beta)
    if library is None:
        return None
    routine = library.scipy_cblas_saxpby64_ if y.dtype == np.float32 else library.scipy_cblas_daxpby64_
    return routine, (y.size, alpha, _address(x), 1, beta, _address(y), 1)


def axpy_call(alpha: float, x: np.ndarray, y: np.ndarray) -> tuple | None:
    """``axpy`` prepared, not run (see ``axpby_call``)."""
    library = _level1(y, x, alpha)
    if library is None:
        return None
    routine = library.scipy_cblas_saxpy64_ if y.dtype == np.float32 else library.scipy_cblas_daxpy64_
    return routine, (y.size, alpha, _address(x), 1, _address(y), 1)


def rotm_call(x: np.ndarray, y: np.ndarray, h11: float, h12: float, h21: float, h22: float) -> tuple | None:
    """x, y = h11 * x + h12 * y, h21 * x + h22 * y in place, both at once (each element of x and y read once
    and written once), prepared, not run (see ``axpby_call``): NumPy's BLAS ``srotm``/``drotm``, the modified
    Givens rotation with a full H (flag -1), held by the arguments; None where that library or these arrays
    do not allow it (as ``axpby``, x writeable and aligned too)."""
    library = _level1(y, x, 1.0) if x.flags.writeable and x.flags.aligned else None
    if library is None:
        return None
    single = x.dtype == np.float32
    routine = library.scipy_cblas_srotm64_ if single else library.scipy_cblas_drotm64_
    h = ((ctypes.c_float if single else ctypes.c_double) * 5)(-1.0, h11, h21, h12, h22)  # flag, then H by columns
    return routine, (x.size, _address(x), 1, _address(y), 1, h)


@contextmanager
def threads(count: int, exactly: bool = False) -> Iterator[None]:
    """Run NumPy's BLAS (products, ``ger``, ``axpy``...) on at most ``count`` threads inside the block (on
    ``count`` ``exactly``: a resumed run on the count it trained on, even above the usable cores: OpenBLAS
    starts the threads it lacks), and on as many as before after it (also when the block raises).

    ``openblas_set_num_threads`` of NumPy's own OpenBLAS: it changes the whole process's pool for the
    block's duration (other threads' BLAS calls included) and raises the count only ``exactly``. The count is
    read and set under ``COUNT_LOCK``, so a block waits for an ``engine/pool`` split in progress
    (which runs with the pool at one thread, and would wait for itself if another thread raised the
    count under it). Restoring is one call in ``finally``, so an exception from a signal handler
    (Ctrl-C) comes after it, never between. A no-op with another NumPy build. The library keeps its
    idle threads; restoring costs no thread start. Raises ValueError for count < 1.
    """
    if count < 1:
        raise ValueError(f"threads: count must be >= 1, got {count}")
    library = _numpy_blas()
    previous = None
    try:
        if library is not None:
            with COUNT_LOCK:
                current = int(library.scipy_openblas_get_num_threads64_())
                if current > count or (exactly and current < count):
                    previous = current  # (before the call: restored even if an exception follows the call)
                    library.scipy_openblas_set_num_threads64_(count)
        yield
    finally:
        if previous is not None:
            _set_count(library, previous)


COUNT_LOCK = threading.Lock()  # held while the pool's thread count changes, and through an engine/pool split


def _set_count(library, count: int) -> None:
    """Set the pool's count under COUNT_LOCK, also when an exception from a signal handler (Ctrl-C)
    interrupts the wait for the lock (a split on another thread holds it): it is raised after."""
    pending = None
    while True:
        try:
            with COUNT_LOCK:
                library.scipy_openblas_set_num_threads64_(count)
            break
        except BaseException as error:  # noqa: BLE001 (raised below, once the count is set)
            pending = error
    if pending is not None:
        raise pending


def thread_count() -> int | None:
    """How many threads NumPy's BLAS runs on now, or None with another NumPy build (see ``threads``)."""
    library = _numpy_blas()
    return None if library is None else int(library.scipy_openblas_get_num_threads64_())


def kernel() -> str | None:
    """The kernels NumPy's OpenBLAS runs ("Haswell", "SkylakeX"...: ``openblas_get_corename``, chosen when NumPy
    loaded it: engine/spin.py), or None with another NumPy build. A product's bits depend on them."""
    library = _numpy_blas()
    reader = getattr(library, "scipy_openblas_get_corename64_", None) if library is not None else None
    if reader is None:
        return None
    reader.restype, reader.argtypes = ctypes.c_char_p, []
    return (reader() or b"").decode("ascii", "replace") or None


def numpy_blas_library():
    """NumPy's own scipy-openblas64 library (ctypes, loaded by NumPy: the same copy), or None when NumPy
    was built with another BLAS; for calls beyond this module's (engine/spin.py reads its thread timeout)."""
    return _numpy_blas()
