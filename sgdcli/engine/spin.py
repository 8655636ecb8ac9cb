"""OpenBLAS's load-time settings for one process, chosen from the model it will run before NumPy loads
OpenBLAS: its idle spin and, on AMD Zen 4, its kernel.

**The spin.** After each product OpenBLAS's threads spin-wait for the next one: 2^28 CPU cycles (~0.1 s)
by default, or 2^N for ``OPENBLAS_THREAD_TIMEOUT=N`` (4 <= N <= 30), which OpenBLAS reads once, when
it loads, i.e. when NumPy is first imported. A convolutional network runs its memory-bound passes
(im2col copies, max pool, ReLU, batch norm) on two threads between its products
(``engine/workers.py``), and the spinning BLAS threads take the core those passes need: with 2^18
cycles (~0.1 ms) the CNN race (benchmarks/bench_cnn.py) ran 10-20% faster. A dense network loses
with it: its products come every 0.1-0.5 ms, and BLAS threads that have fallen asleep must be
woken for each (batch 128 ~10-20% slower, batch 1 ~25%; README Performance). So the spin is a
property of the model.

**The kernel.** OpenBLAS picks its kernels by the processor (``OPENBLAS_CORETYPE`` overrides it, also read
once, at load). On AMD Zen 4 (family 0x19 with AVX-512) the 0.3 series takes its SkylakeX (AVX-512) kernels,
and Zen 4 runs a 512-bit instruction as two 256-bit halves: its Haswell (AVX2) kernels, the ones OpenBLAS
gives Zen 1-3, were faster for every float32 product a model here makes (this project's 2-core Zen 4 VM,
best of 100, one and two threads, the same placement: 128x784 @ 784x512 501 against 539-547 us, its
weight gradient 476 against 514, 4,096 rows 15.5 against 16.0-16.2 ms, conv-sized products 2-6%, one
thread 945 against 1,015). Whole runs, processes alternating: batch-128 epochs 3-6% shorter (momentum,
Adam, RMSprop), full-batch updates 3-4%. Its float64 products were slower (128x784 @ 784x512 1,127
against 1,035-1,065 us, the weight gradient 1,082 against 995), so a float64 model keeps OpenBLAS's choice;
and so does one sample an update, whose momentum step is a product of inner dimension 1 scaled into the
velocity (``OuterProduct.add_to``), where the Haswell kernels' separate scaling pass made it 68 against 49 us
(784 x 512, one thread; the batch-1 momentum race 206 against ~190 us an update).
On Zen 5 (family 26) the SkylakeX kernels OpenBLAS picks are the faster ones, 1.5-1.9x the Haswell kernels'
speed for the same float32 products (README Performance, session 15): there OpenBLAS keeps its choice.
Measured with NumPy 2.4's OpenBLAS 0.3.31; 0.3.34 changed its SGEMM blocking on Zen 4 hosts (described in
OpenMathLib/OpenBLAS#6021), so a NumPy that brings it needs measuring again (benchmarks/bench.py).

``load_numpy(conv, kernel)``, called by every command that runs a model (and by the benchmarks) before
anything imports NumPy, with ``kernel_for`` (a new model) or ``resumed_kernel`` (a trained run: the kernels it
recorded, so that ``sgdcli train --resume`` continues on them), is the one place that makes both choices. A
variable is set only while NumPy loads and removed again: it is this process's choice, and a child process (a
sweep member, an mpiexec rank: each an ``sgdcli`` command of its own) makes its own from its own model. A
user's own setting of either variable always wins, and is passed on.

No NumPy at import: this module is imported before NumPy is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

VARIABLE = "OPENBLAS_THREAD_TIMEOUT"
CONV_SPIN = 18  # 2^18 cycles; 14 and 16 no faster, 20 and above slower (bench_cnn_spin.py, README Performance)
KERNEL_VARIABLE = "OPENBLAS_CORETYPE"
ZEN4_KERNEL = "Haswell"  # OpenBLAS's AVX2 kernels (its "Zen" target runs them too)
CPUINFO = "/proc/cpuinfo"


def spin_for(conv: bool, environ: MutableMapping[str, str] | None = None) -> int | None:
    """The ``OPENBLAS_THREAD_TIMEOUT`` sgdcli sets for a process running a model with (`conv`) or without
    conv2d layers: CONV_SPIN for a conv model, None (OpenBLAS's default) otherwise, and None whenever the
    user has set the variable (theirs wins, even set empty)."""
    environ = os.environ if environ is None else environ
    if VARIABLE in environ or not conv:
        return None
    return CONV_SPIN


def kernel_for(float64: bool, one_sample: bool = False, environ: MutableMapping[str, str] | None = None,
               cpuinfo: str | None = None) -> str | None:
    """The ``OPENBLAS_CORETYPE`` sgdcli sets for a process running a new model in float32 (not `float64`) on
    batches of more than one sample (not `one_sample`): ZEN4_KERNEL on AMD Zen 4 (module doc), None otherwise
    (OpenBLAS chooses), and None whenever the user has set the variable (theirs wins, even set empty).
    `cpuinfo`: the text of /proc/cpuinfo (read here by default; none outside Linux: None)."""
    environ = os.environ if environ is None else environ
    if KERNEL_VARIABLE in environ or float64 or one_sample:
        return None
    return ZEN4_KERNEL if zen4(_cpuinfo(cpuinfo)) else None


def resumed_kernel(recorded: str | None, environ: MutableMapping[str, str] | None = None,
                   cpuinfo: str | None = None) -> str | None:
    """The ``OPENBLAS_CORETYPE`` for a command on a trained run whose checkpoints record the kernels `recorded`
    (``blas_kernel``; None for a run from before sgdcli recorded them): ZEN4_KERNEL where the run trained on
    them and this is a Zen 4, so that a resume gives the bits the run would have given; None otherwise
    (OpenBLAS's choice, which runs from before sgdcli chose kernels trained on; other recorded kernels are
    not forced, and a resume notes them). None whenever the user has set the variable."""
    environ = os.environ if environ is None else environ
    if KERNEL_VARIABLE in environ or recorded != ZEN4_KERNEL:
        return None
    return ZEN4_KERNEL if zen4(_cpuinfo(cpuinfo)) else None


def _cpuinfo(given: str | None) -> str:
    """`given`, or the start of /proc/cpuinfo (the first processor's block is enough; all are alike), or ""."""
    if given is not None:
        return given
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as file:
            return file.read(1 << 16)
    except OSError:
        return ""


def zen4(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's first processor is an AMD Zen 4: vendor AuthenticAMD, family 25 (0x19, Zen 3
    and 4) and the avx512f flag (Zen 4 alone of the two; Zen 5 is family 26)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return (fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25"
            and "avx512f" in fields.get("flags", "").split())


def load_numpy(conv: bool, kernel: str | None = None) -> dict[str, str]:
    """Import NumPy, so that OpenBLAS loads with the spin `spin_for(conv)` chooses and the kernels `kernel`
    (``kernel_for`` for a new model, ``resumed_kernel`` for a trained run; None: OpenBLAS's choice; a user's
    variable wins); returns the variables set ({} when OpenBLAS keeps the user's settings or its defaults, or
    NumPy was already loaded: nothing can change then). The environment is as before when this returns."""
    if "numpy" in sys.modules:
        return {}
    if KERNEL_VARIABLE in os.environ:
        kernel = None
    chosen = {name: str(value) for name, value in ((VARIABLE, spin_for(conv)), (KERNEL_VARIABLE, kernel))
              if value is not None}
    os.environ.update(chosen)
    try:
        import numpy  # noqa: F401  (loads OpenBLAS, which reads the variables now and never again)
    finally:
        for name in chosen:
            del os.environ[name]
    return chosen


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
