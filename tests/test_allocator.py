"""Training reuses the memory an update freed (engine/allocator.py): no fresh pages faulted in per update."""

from __future__ import annotations

import os
import resource

import numpy as np
import pytest

from sgdcli.engine.activations import Identity, ReLU
from sgdcli.engine.allocator import retain_freed_memory
from sgdcli.engine.conv import Conv2d
from sgdcli.engine.init import glorot_uniform, he_uniform
from sgdcli.engine.layers import Dense, Flatten
from sgdcli.engine.losses import CrossEntropy
from sgdcli.engine.model import Sequential
from sgdcli.engine.optimizers import Adam
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
    rng = np.random.default_rng(0)
    model = Sequential([Conv2d.create(1, 32, (3, 3), ReLU(), he_uniform, rng, np.float32), MaxPool2d((2, 2)),
                        Flatten(), Dense.create(32 * 13 * 13, 10, Identity(), glorot_uniform, rng, np.float32)],
                       input_shape=(1, 28, 28))
    x, y = rng.random((4 * 128, 784), dtype=np.float32), rng.integers(0, 10, 4 * 128)
    problem = Problem(model, CrossEntropy(), Adam(), Constant(1e-3), x, y, batch_size=128)
    position, shuffle, dropout = Position(), np.random.default_rng(1), np.random.default_rng(2)
    next(train_epochs(problem, position, 1, shuffle, dropout))  # warm-up: the heap grows to what an update needs
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    next(train_epochs(problem, position, 3, shuffle, dropout))
    next(train_epochs(problem, position, 3, shuffle, dropout))
    faults_per_update = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8
    assert faults_per_update < 100  # 11 MiB of fresh 4 KiB pages alone would be 2,800
