"""Sequential model: a list of layers with named parameters ("0.weight", "2.bias", ...)."""

from __future__ import annotations

import numpy as np

from .conv import Conv2d
from .fusion import stages
from .gradients import Gradient
from .layers import Layer

PREDICT_VALUES = 2**24  # values per pass of an image model's predict (64 MiB in float32)


class ParameterMismatch(ValueError):
    """Parameter values that do not fit a model: missing, unexpected or wrongly shaped keys."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        wrong_shape: list[tuple[str, tuple, tuple]],
        wrong_dtype: list[tuple[str, str]] = (),
    ) -> None:
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.wrong_shape = list(wrong_shape)
        self.wrong_dtype = list(wrong_dtype)
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = []
        if self.missing:
            parts.append("missing " + ", ".join(self.missing))
        if self.unexpected:
            parts.append("unexpected " + ", ".join(self.unexpected))
        if self.wrong_shape:
            parts.append(
                "wrong shape "
                + ", ".join(f"{key} (expected {expected}, got {got})" for key, expected, got in self.wrong_shape)
            )
        if self.wrong_dtype:
            parts.append("not floating point " + ", ".join(f"{key} (expected float, got {dtype})"
                                                         for key, dtype in self.wrong_dtype))
        return "parameters do not match the model: " + "; ".join(parts)

    def __str__(self) -> str:
        return self._describe()


class Sequential:
    """Layers applied in order. ``parameters()`` names each layer array ``f"{index}.{name}"``.

    Inputs are converted to the model dtype on entry (a no-op when they already have it), so
    integer or float64 data never silently turns a float32 model's activations into float64.
    With ``input_shape`` (e.g. (1, 28, 28) for a conv model), flat rows (N, prod(input_shape))
    are viewed as (N, *input_shape) on entry; inputs already of that shape pass unchanged.
    ``buffers()`` is the layers' non-trainable state (batch norm's running statistics), keyed
    like the parameters; ``state_dict()`` is both, what a checkpoint stores.
    """

    def __init__(self, layers: list[Layer], input_shape: tuple[int, ...] | None = None) -> None:
        self.layers = list(layers)
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {index} is not a Layer: {layer!r}")
        dtypes = {array.dtype for array in self.state_dict().values()}
        if len(dtypes) > 1:
            raise ValueError(f"all parameters must share one dtype, got {sorted(map(str, dtypes))}")
        self.stages = stages(self.layers)  # what forward and backward run (fusion.stages); layers are fixed
        # backward's lowest stage: the first with parameters (none below it needs a gradient)
        self._first_trained = next((number for number, (_, stage) in enumerate(self.stages) if stage.params),
                                   len(self.stages))

    @property
    def dtype(self) -> np.dtype:
        for layer in self.layers:
            for array in layer.params.values():
                return array.dtype
        return np.dtype(np.float32)

    @property
    def per_sample(self) -> bool:
        """Whether every layer treats each sample on its own in training (``Layer.per_sample``), so a batch's
        gradient is the sum of its rows' (no batch norm)."""
        return all(layer.per_sample for layer in self.layers)

    def parameters(self) -> dict[str, np.ndarray]:
        """The layers' own arrays (not copies) under stable keys, in layer order."""
        return {
            f"{index}.{name}": array
            for index, layer in enumerate(self.layers)
            for name, array in layer.params.items()
        }

    def buffers(self) -> dict[str, np.ndarray]:
        """The layers' non-trainable state arrays (not copies), keyed like ``parameters()``."""
        return {
            f"{index}.{name}": array
            for index, layer in enumerate(self.layers)
            for name, array in layer.buffers.items()
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers (not copies), in layer order: everything a checkpoint must hold."""
        return {
            f"{index}.{name}": array
            for index, layer in enumerate(self.layers)
            for name, array in (*layer.params.items(), *layer.buffers.items())
        }

    def num_parameters(self) -> int:
        return sum(array.size for array in self.parameters().values())

    def forward(
        self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, list]:
        """Return ``(out, caches)`` with one cache per stage (``fusion.stages``: a layer; a conv or batch
        norm and the max pool after it run as one; a ReLU conv before batch norm as its product alone,
        the ReLU then applied inside batch norm's passes), for ``backward``."""
        out = self._input(x)
        caches = []
        for _, stage in self.stages:
            out, cache = stage.forward(out, training=training, rng=rng)
            caches.append(cache)
        return out, caches

    def backward(self, dout: np.ndarray, caches: list, *, factored: bool = False,
                 into: dict[str, np.ndarray] | None = None) -> dict[str, Gradient]:
        """Gradients keyed like ``parameters()``, given dL/dout and the caches of one ``forward``.

        Stages below the first one with parameters are not visited, and that one computes no dx.
        ``factored``: a gradient may come as its factors (a dense weight's from one sample as a
        ``gradients.OuterProduct``, which the optimizers apply without building it); else all are arrays.
        ``into``: arrays keyed like ``parameters()`` (shaped and typed as them) that receive the
        gradients (``Layer.backward_into``) and are returned; not with ``factored``.
        """
        plan = self.stages
        if len(caches) != len(plan):
            raise ValueError(f"expected {len(plan)} caches (one per stage), got {len(caches)}")
        first = self._first_trained
        per_layer: dict[int, dict[str, Gradient]] = {}
        for number in range(len(plan) - 1, first - 1, -1):
            index, stage = plan[number]  # a stage's parameters are its first layer's
            if into is not None:
                per_layer[index] = {name: into[f"{index}.{name}"] for name in stage.params}
                dout = stage.backward_into(dout, caches[number], per_layer[index], need_dx=number > first)
                continue
            backward = stage.backward_factored if factored else stage.backward
            dout, per_layer[index] = backward(dout, caches[number], need_dx=number > first)
        return {
            f"{index}.{name}": per_layer[index][name]
            for index, layer in enumerate(self.layers)
            for name in layer.params
        }

    def predict(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Outputs in evaluation mode, keeping no caches; ``batch_size`` bounds the rows per pass.

        Image models also bound them by memory: at most PREDICT_VALUES activation values (and conv
        im2col columns) per pass, so a 4,096-image evaluation of a CNN does not take gigabytes.
        """
        x = self._input(x)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if self.input_shape is not None and len(x) > 1:
            rows = max(1, PREDICT_VALUES // self._values_per_sample(x[:1]))
            batch_size = rows if batch_size is None else min(batch_size, rows)
        if batch_size is None or len(x) <= batch_size:
            return self._infer(x)
        return np.concatenate([self._infer(x[start : start + batch_size]) for start in range(0, len(x), batch_size)])

    def _values_per_sample(self, sample: np.ndarray) -> int:
        """The most values one sample holds at once in a pass: the widest layer output or conv columns."""
        widest = sample.size
        for layer in self.layers:
            out, _ = layer.forward(sample, training=False)
            columns = out.size // layer.weight.shape[0] * layer.weight[0].size if isinstance(layer, Conv2d) else 0
            widest, sample = max(widest, out.size, columns), out
        return widest

    def _input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=self.dtype)
        shape = self.input_shape
        if shape is None or x.shape[1:] == shape:
            return x
        if x.ndim == 2 and x.shape[1] == int(np.prod(shape)):
            return x.reshape(len(x), *shape)
        raise ValueError(f"expected inputs of shape (N, {', '.join(map(str, shape))}) or flat rows "
                         f"(N, {int(np.prod(shape))}), got shape {x.shape}")

    def _infer(self, x: np.ndarray) -> np.ndarray:
        for _, stage in self.stages:
            x, _ = stage.forward(x, training=False)
        return x

    def load_parameters(self, values: dict[str, np.ndarray]) -> None:
        """Copy ``values`` (keyed like ``state_dict()``: parameters and buffers) into the existing arrays,
        cast to the model dtype.

        Raises ParameterMismatch (changing nothing) unless the keys and shapes match exactly and
        every value is floating point (integer or boolean weights are no trained model's).
        """
        params = self.state_dict()
        missing = [key for key in params if key not in values]
        unexpected = [key for key in values if key not in params]
        wrong_shape = [
            (key, array.shape, tuple(np.shape(values[key])))
            for key, array in params.items()
            if key in values and np.shape(values[key]) != array.shape
        ]
        wrong_dtype = [(key, str(np.asarray(value).dtype)) for key, value in values.items()
                       if key in params and np.asarray(value).dtype.kind != "f"]
        if missing or unexpected or wrong_shape or wrong_dtype:
            raise ParameterMismatch(missing, unexpected, wrong_shape, wrong_dtype)
        # Convert everything first so an uncastable value (e.g. complex) fails before any copy.
        converted = {key: np.asarray(values[key]).astype(array.dtype, casting="same_kind", copy=False) for key, array in params.items()}
        for key, array in params.items():
            np.copyto(array, converted[key])

    def __repr__(self) -> str:
        return "Sequential([" + ", ".join(map(repr, self.layers)) + "])"
