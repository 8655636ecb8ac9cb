"""Config sections of the image layers: convolution, pooling, flatten and batch normalization."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from sgdcli.config.base import (
    Activation,
    Flag,
    Init,
    Integer,
    Number,
    PositiveFloat,
    Section,
)

Pair = Union[Annotated[Integer, Field(ge=1, le=4096)], Annotated[list[Annotated[Integer, Field(ge=1, le=4096)]],
                                                             Field(min_length=2, max_length=2)]]


class Conv2dConfig(Section):
    """A 2-D convolution over channels-first images (C, H, W), with a fused activation."""

    type: Literal["conv2d"]
    filters: Integer = Field(ge=1, le=65_536, description="output channels")
    kernel_size: Pair = Field(description="window size: an int or [height, width]")
    stride: Pair = 1
    padding: Union[Literal["valid", "same"], Annotated[Integer, Field(ge=0, le=4096)]] = Field(
        "valid", description="valid: none; same: output size ceil(input / stride); an int: zeros on every side")
    activation: Activation = "identity"
    negative_slope: Number = Field(0.01, ge=0, lt=1)
    init: Init | None = Field(None, description="kernel init, fan_in = C*kh*kw, fan_out = filters*kh*kw "
                                                "(default: he_uniform for relu-like, else glorot_uniform)")
    bias: Flag = Field(True, description="add a learned bias per filter")


class MaxPool2dConfig(Section):
    """Maximum over each pool_size window of each channel."""

    type: Literal["max_pool2d"]
    pool_size: Pair = Field(2, description="window size: an int or [height, width]")
    stride: Pair | None = Field(None, description="window step (default: pool_size)")


class AvgPool2dConfig(MaxPool2dConfig):
    """Mean over each pool_size window of each channel."""

    type: Literal["avg_pool2d"]  # type: ignore[assignment]


class GlobalAvgPool2dConfig(Section):
    """Mean over all positions of each channel: (C, H, W) -> (C,)."""

    type: Literal["global_avg_pool2d"]


class FlattenConfig(Section):
    """Images (C, H, W) to flat features (C*H*W,), in C order."""

    type: Literal["flatten"]


class BatchNormConfig(Section):
    """Batch normalization of each feature (dense) or channel (conv); running statistics for evaluation."""

    type: Literal["batch_norm"]
    momentum: Annotated[Number, Field(gt=0, le=1)] = Field(
        0.1, description="running = (1 - momentum) * running + momentum * batch statistic (PyTorch's convention)")
    epsilon: PositiveFloat = Field(1e-5, description="added to the variance before the square root")
