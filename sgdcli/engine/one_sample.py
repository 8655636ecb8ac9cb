"""A batch-1 update of a dense network, prepared once: every array it writes made when it is built, the
optimizer's calls prepared with their addresses and replayed.

At batch 1 (``training.batch.mode: sgd``) an update's arithmetic is small beside what starts it. The general
path (``Sequential.forward``, the loss's ``value_and_grad``, ``Sequential.backward(factored=True)``, the
gradient check and ``Optimizer.step``) makes ~230 Python calls an update and decides again, for every update,
what it decided for the last: which BLAS routine, whether it writes in place, which addresses. On the
784-512-10 race (benchmarks/bench.py, one BLAS thread, AMD Zen 5) that was ~68 of a momentum update's ~142 us;
the rest is the first layer's passes over its weights. Here a model of dense layers trained with a
replayable optimizer (``Optimizer.replays``: SGD, plain, momentum or Nesterov, without weight decay) runs the
same operations on the same values in the same order, into arrays of its own (that loop: momentum 141-146 ->
100-102 us an update with SGD's rank-1 momentum pass, plain SGD 91-95 -> 61-64 us):

- forward: each layer's product ``x @ W`` into its own (1, M) array, then ``+= b`` and the activation as the
  layer applies them (``Dense.forward``);
- the loss: cross-entropy with an integer class label in range through ``CrossEntropy.value_and_grad_of_label``,
  any other loss or target (a label out of range included, for the loss's own message) through its
  ``value_and_grad``;
- backward: the activation's backward, copied into the array the weight gradient's factor lives in, the
  bias gradient ``dz + 0.0`` and ``dz @ W.T`` as ``Dense.backward_factored`` computes them;
- the check: ``surely_finite`` passes exactly where ``training.loop``'s check would (the same squared norms
  from the factors); where it does not, the caller runs that check on ``grads``, the same gradients;
- the step: ``Optimizer.begin_step``, the calls of ``Optimizer.step_calls`` (made again only when the
  learning rate, the state's arrays or the optimizer's settings change; ``Optimizer.step`` itself where
  changed settings no longer replay), ``Optimizer.flush_state``.

What it does not take (``prepare``) goes the general way: the same results, more calls.

So the bits are the general path's (tests/test_one_sample.py trains both ways and compares every array after
every update), and a run, its resume and a run the general path takes (layer statistics, clipping) agree.
"""

from __future__ import annotations

import math

import numpy as np

from .allocator import aligned_full
from .gradients import Call, Gradient, OuterProduct
from .layers import Dense
from .losses import CrossEntropy, Loss
from .model import Sequential
from .optimizer_base import Optimizer
from .pool import run


class OneSampleUpdate:
    """One-sample updates of ``model`` (its stages all ``Dense``) by ``optimizer``, prepared (module doc).

    Build with ``prepare``. Per update: ``value = gradient(x, y)`` (x (1, D) in the model's dtype or
    convertible, y (1,) a label or (1, C) a target; returns the loss as a float), then, when the value is
    finite, ``surely_finite()`` (else the caller checks ``grads``), then ``step(learning_rate)``. ``grads`` are
    the gradients keyed like ``model.parameters()``: each weight's an ``OuterProduct`` of arrays owned here,
    each bias's an array owned here; valid until the next ``gradient``, never to be scaled (clipping takes
    the general path).
    """

    def __init__(self, model: Sequential, loss: Loss, optimizer: Optimizer, labels: bool) -> None:
        dtype = model.dtype
        self.loss, self.optimizer = loss, optimizer
        self.layers: list[Dense] = [stage for _, stage in model.stages]
        self.params = model.parameters()
        self._labels = labels and type(loss) is CrossEntropy  # (a subclass may compute its own way)
        self._classes = self.layers[-1].units
        new = lambda width: aligned_full((1, width), dtype, 0)  # noqa: E731 (one row: 64-byte aligned, zeros)
        self._x = new(self.layers[0].in_features)  # the input, copied: the first weight gradient's factor
        self._z = [new(layer.units) for layer in self.layers]  # x @ W + b, then the activation where in place
        # Each layer's output: z itself where the activation overwrites it (ReLU), else an array of its own.
        self._a = [z if layer.activation.forward_in_place(z) is z else new(layer.units)
                   for layer, z in zip(self.layers, self._z)]
        self._dz = [new(layer.units) for layer in self.layers]  # dL/dz: the weight gradient's second factor
        self._dx = [None] + [new(layer.in_features) for layer in self.layers[1:]]  # dL/dx (none for the first)
        self._dout = new(self.layers[-1].units)  # the loss gradient (cross-entropy with labels writes it here)
        inputs = [self._x, *self._a[:-1]]
        self.grads: dict[str, Gradient] = {}
        for number, (index, layer) in enumerate(model.stages):
            self.grads[f"{index}.weight"] = OuterProduct(inputs[number][0], self._dz[number][0])
            self.grads[f"{index}.bias"] = aligned_full((layer.units,), dtype, 0)
        self._bias = [self.grads[f"{index}.bias"] for index, _ in model.stages]
        self._weights = [self.grads[f"{index}.weight"] for index, _ in model.stages]
        self._calls: list[Call] = []
        self._prepared_for: tuple[float, int] | None = None  # (learning rate, optimizer.state_version)
        self._settings: tuple | None = None  # the optimizer's settings when it was last asked whether it replays
        self._replays = False

    @classmethod
    def prepare(cls, model: Sequential, loss: Loss, optimizer: Optimizer, x: np.ndarray,
                y: np.ndarray) -> OneSampleUpdate | None:
        """The prepared update for training ``model`` on rows of ``x`` with targets ``y``, or None where it
        does not apply, so that the general path runs (and reports what does not fit): a model or stage other
        than a plain ``Sequential`` of plain ``Dense`` layers (conv, batch norm, dropout, subclasses), an
        image model, a dtype other than float32/float64, x not (N, the first layer's inputs) with y as long, or
        rows that are not contiguous in the model's dtype (the general path's weight gradient reads the row
        in place, where BLAS takes only contiguous factors), or an optimizer whose step cannot be replayed
        (``Optimizer.replays``: Adam, RMSProp, AdaGrad, weight decay, a subclass's own update)."""
        stages = [stage for _, stage in model.stages]
        dtype = model.dtype
        if (type(model) is not Sequential or not stages or model.input_shape is not None
                or dtype not in (np.float32, np.float64)
                or any(type(stage) is not Dense or set(stage.params) != {"weight", "bias"} for stage in stages)):
            return None
        x, y = np.asanyarray(x), np.asanyarray(y)
        if x.ndim != 2 or x.shape[1] != stages[0].in_features or len(y) != len(x) or (
                x.dtype == dtype and not x[:1].flags.c_contiguous):
            return None
        update = cls(model, loss, optimizer, labels=y.ndim == 1 and y.dtype.kind in "iu")
        return update if optimizer.replays(update.grads) else None

    def gradient(self, x: np.ndarray, y: np.ndarray) -> float:
        """Forward, loss and backward of one sample into this object's arrays (``grads``); returns the loss."""
        x = np.asarray(x, dtype=self._x.dtype)  # as Sequential's entry: a row of the training array, no copy
        np.copyto(self._x, x)
        layers, z, a, inputs = self.layers, self._z, self._a, x
        for number, layer in enumerate(layers):
            product = np.matmul(inputs, layer.weight, out=z[number])  # x @ W (one row: no parts, forward_parts)
            np.add(product, layer.bias, out=product)
            inputs = layer.activation.forward_in_place(product)
            if inputs is not a[number]:
                np.copyto(a[number], inputs)
                inputs = a[number]
        label = int(y[0]) if self._labels else -1
        if 0 <= label < self._classes:
            value, dout = self.loss.value_and_grad_of_label(inputs, label, self._dout)
        else:  # other losses and targets; a label out of range, for cross-entropy's own message
            value, dout = self.loss.value_and_grad(inputs, y)
        if not math.isfinite(value):
            return value
        for number in range(len(layers) - 1, -1, -1):
            layer, dz = layers[number], self._dz[number]
            found = layer.activation.backward(dout, z[number], a[number])
            if found is not dz:
                np.copyto(dz, found)
            np.add(dz[0], 0.0, out=self._bias[number])  # Dense.backward_factored's dz[0] + 0.0
            if number:
                dout = np.matmul(dz, layer.weight.T, out=self._dx[number])
        return value

    def surely_finite(self) -> bool:
        """True where ``training.loop``'s gradient check passes for certain: every weight gradient's squared norm
        (``OuterProduct.squared_norm``, the check's own) finite, which makes its bias's (‖dz‖², the same values)
        finite too. False leaves the verdict to that check, on ``grads``."""
        return all(math.isfinite(grad.squared_norm()) for grad in self._weights)

    def step(self, learning_rate: float) -> None:
        """The optimizer's step with ``grads``: the same bits as ``optimizer.step(params, grads, learning_rate)``,
        which it is where the optimizer's settings, changed since this was prepared, no longer replay."""
        optimizer = self.optimizer
        settings = optimizer.settings()
        if settings != self._settings:  # the first step, or momentum, weight decay... set since the last one
            self._settings, self._prepared_for = settings, None
            self._replays = optimizer.replays(self.grads)
        if not self._replays:
            optimizer.step(self.params, self.grads, learning_rate)
            return
        flush = optimizer.begin_step(self.params)
        prepared_for = (float(learning_rate), optimizer.state_version)
        if prepared_for != self._prepared_for:
            self._calls = optimizer.step_calls(self.params, self.grads, prepared_for[0])
            self._prepared_for = prepared_for
        run(self._calls)
        if flush:
            optimizer.flush_state()
