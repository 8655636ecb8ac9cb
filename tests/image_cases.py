"""Gradient-check cases of the image layers (float64, tiny), keyed by their config type names."""

from __future__ import annotations

import numpy as np

from sgdcli.engine.activations import Tanh
from sgdcli.engine.conv import Conv2d
from sgdcli.engine.init import glorot_normal
from sgdcli.engine.layers import Flatten
from sgdcli.engine.normalization import BatchNorm
from sgdcli.engine.pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d


def _conv2d_case(rng: np.random.Generator):
    # Uneven kernel, strides and padding, so a swapped axis or a wrong offset shows up.
    layer = Conv2d.create(2, 3, (3, 2), Tanh(), glorot_normal, rng, np.float64, stride=(2, 1), padding=(1, 0, 1, 2))
    layer.params["bias"][:] = rng.normal(size=3)
    return layer, rng.normal(size=(2, 2, 6, 5)), False


def _max_pool2d_case(rng: np.random.Generator):
    # Overlapping windows (3 wide, step 2); distinct values keep the argmax fixed under +-eps.
    return MaxPool2d((3, 3), (2, 2)), rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) * 0.01, False


def _batch_norm_case(rng: np.random.Generator):
    layer = BatchNorm.create(3, np.float64)
    layer.params["weight"][:] = rng.uniform(0.5, 2.0, size=3)
    layer.params["bias"][:] = rng.normal(size=3)
    return layer, rng.normal(size=(4, 3, 3, 2)) * 2 + 1, True  # training: batch statistics


IMAGE_LAYER_CASES = {
    "conv2d": _conv2d_case,
    "max_pool2d": _max_pool2d_case,
    "avg_pool2d": lambda rng: (AvgPool2d((2, 3), (1, 2)), rng.normal(size=(2, 3, 5, 7)), False),
    "global_avg_pool2d": lambda rng: (GlobalAvgPool2d(), rng.normal(size=(3, 2, 4, 5)), False),
    "flatten": lambda rng: (Flatten(), rng.normal(size=(3, 2, 4, 5)), False),
    "batch_norm": _batch_norm_case,
}
