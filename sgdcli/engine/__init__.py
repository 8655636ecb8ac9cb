"""Pure-NumPy backprop engine: layers, activations, initialisers, losses, optimizers, schedules, model."""

from .activations import Activation, Identity, LeakyReLU, ReLU, Sigmoid, Tanh, sigmoid
from .init import glorot_normal, glorot_uniform, he_normal, he_uniform, small_normal
from .layers import ActivationLayer, Dense, Dropout, Initializer, Layer
from .losses import BinaryCrossEntropy, CrossEntropy, Huber, Loss, MeanAbsoluteError, MeanSquaredError
from .model import ParameterMismatch, Sequential
from .optimizers import SGD, AdaGrad, Adam, AdamW, Optimizer, RMSProp, clip_by_global_norm
from .schedules import (
    Constant,
    CosineDecay,
    ExponentialDecay,
    InverseTimeDecay,
    Schedule,
    StepDecay,
    Warmup,
)

__all__ = [
    "Activation",
    "ActivationLayer",
    "AdaGrad",
    "Adam",
    "AdamW",
    "BinaryCrossEntropy",
    "Constant",
    "CosineDecay",
    "CrossEntropy",
    "Dense",
    "Dropout",
    "ExponentialDecay",
    "Huber",
    "Identity",
    "Initializer",
    "InverseTimeDecay",
    "Layer",
    "LeakyReLU",
    "Loss",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "Optimizer",
    "ParameterMismatch",
    "ReLU",
    "RMSProp",
    "SGD",
    "Schedule",
    "Sequential",
    "Sigmoid",
    "StepDecay",
    "Tanh",
    "Warmup",
    "clip_by_global_norm",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "sigmoid",
    "small_normal",
]
