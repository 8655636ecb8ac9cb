"""The shape of one sample after each layer of a model config; errors name the layer and the shapes.

Shapes are per sample, without the batch axis: (D,) for flat features, (C, H, W) for images
(channels first, as PyTorch). Pure functions of the config, so `sgdcli validate` and the model
builder apply the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sgdcli.config import image_layers as image
from sgdcli.config import schema as cfg

Shape = tuple[int, ...]
IMAGE_LAYERS = (image.Conv2dConfig, image.MaxPool2dConfig, image.AvgPool2dConfig, image.GlobalAvgPool2dConfig)
FLATTENING = (image.FlattenConfig, image.GlobalAvgPool2dConfig)


class ShapeError(ValueError):
    """A layer that does not fit the shape it receives; the message starts with the layer's dotted key."""


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """An int or [h, w] as (h, w)."""
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def describe(shape: Shape) -> str:
    return f"images (C, H, W) = {shape}" if len(shape) == 3 else f"flat features of shape {shape}"


def check_order(layers: Sequence[cfg.LayerConfig]) -> None:
    """Without the data's shape: image layers come before the flatten, dense layers after it."""
    images = any(isinstance(layer, IMAGE_LAYERS) for layer in layers)
    for index, spec in enumerate(layers):
        where = f"model.layers.{index} ({spec.type})"
        if isinstance(spec, cfg.DenseConfig) and images:
            raise ShapeError(f"{where}: a dense layer needs flat features, but it receives images (C, H, W) "
                             "(a model with conv or pooling layers takes images); put a flatten (or global_avg_pool2d) layer before it")
        if isinstance(spec, IMAGE_LAYERS) and not images:
            raise ShapeError(f"{where}: expected images (C, H, W), but a flatten or global_avg_pool2d layer "
                             "before it gives flat features")
        if isinstance(spec, FLATTENING):
            images = False


def model_input_shape(layers: Sequence[cfg.LayerConfig], sample_shape: Shape) -> Shape:
    """What the first layer receives: (C, H, W) for a model with conv or pooling layers (an (H, W)
    sample gains a channel axis: (28, 28) -> (1, 28, 28)), else the flat (D,)."""
    sample_shape = tuple(int(d) for d in sample_shape)
    if not any(isinstance(layer, IMAGE_LAYERS) for layer in layers):
        return (math.prod(sample_shape),)
    if len(sample_shape) == 2:
        return (1, *sample_shape)
    if len(sample_shape) == 3:
        return sample_shape
    first = next(i for i, layer in enumerate(layers) if isinstance(layer, IMAGE_LAYERS))
    raise ShapeError(f"model.layers.{first} ({layers[first].type}): expected images (C, H, W) or (H, W) from the "
                     f"data, received samples of shape {sample_shape}; for a CSV file set data.sample_shape "
                     f"(e.g. [1, 8, 8] for 64 pixel columns)")


def conv_padding(spec: image.Conv2dConfig, input_shape: Shape) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero rows/columns for `padding` valid, same (TensorFlow's rule) or an int."""
    (kh, kw), (sh, sw) = pair(spec.kernel_size), pair(spec.stride)
    if spec.padding == "valid":
        return 0, 0, 0, 0
    if spec.padding == "same":
        _, h, w = input_shape
        return (*_same(h, kh, sh), *_same(w, kw, sw))
    p = int(spec.padding)
    return p, p, p, p


def _same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    # output ceil(size / stride); an odd total puts the extra zero after (TensorFlow, PyTorch 'same')
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def output_shape(index: int, spec: cfg.LayerConfig, shape: Shape) -> Shape:
    """The shape layer `index` (config `spec`) gives for one sample of `shape`; ShapeError if it does not fit."""
    where = f"model.layers.{index} ({spec.type})"
    is_image = len(shape) == 3
    if isinstance(spec, cfg.DenseConfig):
        if is_image:
            raise ShapeError(f"{where}: a dense layer needs flat features (D,), received {describe(shape)}; "
                             "put a flatten (or global_avg_pool2d) layer before it")
        return (spec.units,)
    if isinstance(spec, image.FlattenConfig):
        return (math.prod(shape),)
    if not isinstance(spec, IMAGE_LAYERS):  # activation, dropout, batch_norm: any shape
        return shape
    if not is_image:
        raise ShapeError(f"{where}: expected images (C, H, W), received {describe(shape)} "
                         "(a layer before it flattened them, or the data has no image shape)")
    c, h, w = shape
    if isinstance(spec, image.GlobalAvgPool2dConfig):
        return (c,)
    if isinstance(spec, image.Conv2dConfig):
        kernel, stride, key = pair(spec.kernel_size), pair(spec.stride), "kernel_size"
        top, bottom, left, right = conv_padding(spec, shape)
        channels = spec.filters
    else:
        kernel = pair(spec.pool_size)
        stride, key = pair(spec.stride if spec.stride is not None else spec.pool_size), "pool_size"
        top = bottom = left = right = 0
        channels = c
    padded = (h + top + bottom, w + left + right)
    if kernel[0] > padded[0] or kernel[1] > padded[1]:
        padding = f" padded to {padded}" if padded != (h, w) else ""
        raise ShapeError(f"model.layers.{index}.{key}: the window {list(kernel)} is bigger than the layer's "
                         f"input, images (C, H, W) = {shape}{padding}")
    return channels, (padded[0] - kernel[0]) // stride[0] + 1, (padded[1] - kernel[1]) // stride[1] + 1


def infer_shapes(layers: Sequence[cfg.LayerConfig], sample_shape: Shape) -> list[Shape]:
    """[input of layer 0, output of layer 0, ..., output of the last layer] for samples of `sample_shape`."""
    shapes = [model_input_shape(layers, sample_shape)]
    for index, spec in enumerate(layers):
        shapes.append(output_shape(index, spec, shapes[-1]))
    return shapes
