"""OpenBLAS's idle spin for one process: chosen from the model it will run, before NumPy loads OpenBLAS.

After each product OpenBLAS's threads spin-wait for the next one: 2^28 CPU cycles (~0.1 s) by
default, or 2^N for ``OPENBLAS_THREAD_TIMEOUT=N`` (4 <= N <= 30), which OpenBLAS reads once, when
it loads, i.e. when NumPy is first imported. A convolutional network runs its memory-bound passes
(im2col copies, max pool, ReLU, batch norm) on two threads between its products
(``engine/workers.py``), and the spinning BLAS threads take the core those passes need: with 2^18
cycles (~0.1 ms) the CNN race (benchmarks/bench_cnn.py) ran 10-20% faster. A dense network loses
with it: its products come every 0.1-0.5 ms, and BLAS threads that have fallen asleep must be
woken for each (batch 128 ~10-20% slower, batch 1 ~25%; README Performance). So the spin is a
property of the model, and this module is the one place that chooses it: ``load_numpy(conv)``,
called by every command that runs a model (and by the benchmark) before anything imports NumPy.

The variable is set only while NumPy loads and removed again: it is this process's choice, and a
child process (a sweep member, an mpiexec rank: each an ``sgdcli`` command of its own) makes its
own from its own model. A user's own ``OPENBLAS_THREAD_TIMEOUT`` always wins, and is passed on.

No NumPy at import: this module is imported before NumPy is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

VARIABLE = "OPENBLAS_THREAD_TIMEOUT"
CONV_SPIN = 18  # 2^18 cycles; 14 and 16 no faster, 20 and above slower (bench_cnn_spin.py, README Performance)


def spin_for(conv: bool, environ: MutableMapping[str, str] | None = None) -> int | None:
    """The ``OPENBLAS_THREAD_TIMEOUT`` sgdcli sets for a process running a model with (`conv`) or without
    conv2d layers: CONV_SPIN for a conv model, None (OpenBLAS's default) otherwise, and None whenever the
    user has set the variable (theirs wins, even set empty)."""
    environ = os.environ if environ is None else environ
    if VARIABLE in environ or not conv:
        return None
    return CONV_SPIN


def load_numpy(conv: bool) -> int | None:
    """Import NumPy, so that OpenBLAS loads with the spin `spin_for(conv)` chooses; returns the value set,
    or None when OpenBLAS keeps the user's setting or its default, or NumPy was already loaded (the spin
    can no longer change). The environment is as before when this returns."""
    value = spin_for(conv)
    if value is None or "numpy" in sys.modules:
        return None
    os.environ[VARIABLE] = str(value)
    try:
        import numpy  # noqa: F401  (loads OpenBLAS, which reads the variable now and never again)
    finally:
        del os.environ[VARIABLE]
    return value


def loaded_spin() -> int | None:
    """The ``OPENBLAS_THREAD_TIMEOUT`` NumPy's OpenBLAS read when it loaded (0: not set, its default), or
    None when NumPy's BLAS is not scipy-openblas64 (whose ``openblas_thread_timeout`` says). Imports NumPy."""
    import ctypes

    from sgdcli.engine.blas import numpy_blas_library

    library = numpy_blas_library()
    reader = getattr(library, "openblas_thread_timeout", None) if library is not None else None
    if reader is None:
        return None
    reader.restype, reader.argtypes = ctypes.c_int, []
    return int(reader())
