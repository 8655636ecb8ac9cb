"""Training reuses the memory an update freed (engine/allocator.py): no fresh pages faulted in per update;
the arrays every update streams through start on a cache line."""

from __future__ import annotations

import ctypes
import os
import resource

import numpy as np
import pytest

from sgdcli.engine.activations import Identity, ReLU
from sgdcli.engine import accumulate, allocator
from sgdcli.engine.allocator import ALIGNMENT, aligned_copy, aligned_empty, aligned_full, retain_freed_memory
from sgdcli.engine.conv import Conv2d
from sgdcli.engine.init import glorot_uniform, he_uniform
from sgdcli.engine.layers import Dense, Flatten
from sgdcli.engine.losses import CrossEntropy
from sgdcli.engine.model import Sequential
from sgdcli.engine.optimizers import SGD, AdaGrad, Adam, AdamW, RMSProp
from sgdcli.engine.pooling import MaxPool2d
from sgdcli.engine.schedules import Constant
from sgdcli.training.loop import Position, Problem, train_epochs

glibc = pytest.mark.skipif(not hasattr(os, "confstr") or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only")


@glibc
def test_retain_freed_memory_is_accepted_by_glibc_and_idempotent() -> None:
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True


@glibc
def test_training_updates_do_not_fault_in_fresh_pages_for_their_arrays() -> None:
    # The CNN race's first layer at batch 128: 11 MiB conv outputs, allocated and freed every update.
    # Before train_epochs kept freed memory, each update mapped them afresh: thousands of page faults.
    # glibc's thresholds start at their static 128 KiB here, as in a process that set them (an earlier
    # test's retain_freed_memory would otherwise do train_epochs' job, and glibc's own sliding threshold
    # would hide a loop that forgot the call).
    libc = ctypes.CDLL(None)
    assert libc.mallopt(allocator.M_MMAP_THRESHOLD, 128 * 1024) and libc.mallopt(allocator.M_TRIM_THRESHOLD, 128 * 1024)
    try:
        rng = np.random.default_rng(0)
        model = Sequential([Conv2d.create(1, 32, (3, 3), ReLU(), he_uniform, rng, np.float32), MaxPool2d((2, 2)),
                            Flatten(), Dense.create(32 * 13 * 13, 10, Identity(), glorot_uniform, rng, np.float32)],
                           input_shape=(1, 28, 28))
        x, y = rng.random((4 * 128, 784), dtype=np.float32), rng.integers(0, 10, 4 * 128)
        problem = Problem(model, CrossEntropy(), Adam(), Constant(1e-3), x, y, batch_size=128)
        position, shuffle, dropout = Position(), np.random.default_rng(1), np.random.default_rng(2)
        next(train_epochs(problem, position, 1, shuffle, dropout))  # warm-up: the heap grows to what an update needs
        windows = []  # faults per update over three stretches of two epochs (8 updates)
        for _ in range(3):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(2):
                next(train_epochs(problem, position, position.epoch + 1, shuffle, dropout))
            windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8)
        # 11 MiB of fresh 4 KiB pages alone would be 2,800 in every stretch. The heap can still grow once more
        # in a stretch when an earlier test left it fragmented (~130 faults an update; it failed CI once): the
        # best stretch is what an update costs once the heap has settled.
        assert min(windows) < 100, windows
    finally:
        retain_freed_memory()  # as every later test in this process finds it


def on_a_line(array: np.ndarray) -> bool:
    return array.ctypes.data % ALIGNMENT == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8])
@pytest.mark.parametrize("shape", [(784, 512), (3,), (2, 3, 5), (0,), ()])
def test_aligned_arrays_start_on_a_cache_line_and_behave_as_numpy_arrays(shape, dtype) -> None:
    for _ in range(5):  # several allocations: malloc's 16-byte alignment would put some off the line
        empty = aligned_empty(shape, dtype)
        assert (empty.shape, empty.dtype) == (shape, np.dtype(dtype))
        assert empty.flags.c_contiguous and empty.flags.writeable
        assert on_a_line(empty) or empty.size == 0
        full = aligned_full(shape, dtype, 3)
        assert np.array_equal(full, np.full(shape, 3, dtype)) and (on_a_line(full) or full.size == 0)
    source = np.arange(24.0).reshape(4, 6)[:, ::2]  # not contiguous
    copy = aligned_copy(source, np.float32)
    assert copy.dtype == np.float32 and copy.flags.c_contiguous and on_a_line(copy)
    assert np.array_equal(copy, source) and not np.shares_memory(copy, source)
    objects = aligned_copy(np.array([1, "a"], dtype=object))  # references, not bytes: NumPy's own array
    assert objects.tolist() == [1, "a"]


def test_aligned_arrays_refuse_negative_dimensions_as_numpy_does() -> None:
    for shape in ((2, -1), (-1, 2), (-2,)):
        with pytest.raises(ValueError, match="negative dimensions"):
            aligned_empty(shape, np.float32)


@pytest.mark.parametrize("optimizer", [SGD(momentum=0.9), SGD(momentum=0.9, nesterov=True), Adam(), AdamW(),
                                       RMSProp(momentum=0.5), AdaGrad(initial_accumulator=0.1)],
                         ids=lambda o: type(o).__name__)
def test_parameters_optimizer_state_and_work_arrays_start_on_a_cache_line(optimizer) -> None:
    # A batch-1 momentum update's passes over a 784 x 512 layer took 102-106 us on a cache line and 118-122
    # us 16 or 48 bytes past one (benchmarks/alignment.py): where malloc put an array decided the speed.
    rng = np.random.default_rng(3)
    model = Sequential([Conv2d.create(1, 4, (3, 3), ReLU(), he_uniform, rng, np.float32), Flatten(),
                        Dense.create(4 * 6 * 6, 33, ReLU(), glorot_uniform, rng, np.float32),
                        Dense.create(33, 3, Identity(), glorot_uniform, rng, np.float32)], input_shape=(1, 8, 8))
    params = model.parameters()
    assert all(on_a_line(array) for array in params.values())
    x, y = rng.random((5, 64), dtype=np.float32), rng.integers(0, 3, 5)
    for batch in (x[:1], x):  # a factored batch-1 gradient (work array for the built one), then a batch
        out, caches = model.forward(batch, training=True)
        grads = model.backward(CrossEntropy().value_and_grad(out, y[: len(batch)])[1], caches, factored=True)
        optimizer.step(params, grads, 0.01)
    arrays = {f"state {name}/{key}": a for key, state in optimizer._state.items() for name, a in state.items()}
    arrays |= {f"scratch {key}": a for key, a in optimizer._scratch.items()}
    arrays |= {f"built {key}": a for key, a in optimizer._built.items()}
    assert arrays and all(on_a_line(a) for a in arrays.values()), {k: a.ctypes.data % ALIGNMENT for k, a in arrays.items()}
    restored = type(optimizer)(**({"momentum": optimizer.momentum} if hasattr(optimizer, "momentum") else {}))
    restored.load_state_dict(optimizer.state_dict(), params)  # a resumed run's state: copies, on a line too
    assert all(on_a_line(a) for state in restored._state.values() for a in state.values())
    assert all(np.array_equal(restored._state[k][n], a) for k, s in optimizer._state.items() for n, a in s.items())


def test_a_chunked_batch_sums_its_gradient_into_arrays_on_a_cache_line(monkeypatch) -> None:
    monkeypatch.setattr(accumulate, "CHUNK_ROWS", 8)
    sums: list[np.ndarray] = []
    original = accumulate.value_and_gradients

    def spy(model, loss, x, y, rng, into, *args, **kwargs):
        sums.extend(into.values())
        return original(model, loss, x, y, rng, into, *args, **kwargs)

    monkeypatch.setattr(accumulate, "value_and_gradients", spy)
    rng = np.random.default_rng(4)
    model = Sequential([Dense.create(6, 5, ReLU(), glorot_uniform, rng, np.float64),
                        Dense.create(5, 2, Identity(), glorot_uniform, rng, np.float64)])
    x, y = rng.random((30, 6)), rng.integers(0, 2, 30)
    problem = Problem(model, CrossEntropy(), Adam(), Constant(1e-3), x, y, batch_size=30)
    next(train_epochs(problem, Position(), 1, np.random.default_rng(1), np.random.default_rng(2)))
    assert sums and all(on_a_line(a) for a in sums)
