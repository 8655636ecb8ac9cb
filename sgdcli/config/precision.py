"""Settings the model's float type would turn into 0, a subnormal or infinity, refused when a config is loaded.

A config's numbers are read as Python floats (float64), but training computes in ``model.dtype``:
float32 by default, whose normal numbers run from 1.2e-38 (NumPy's ``finfo(float32).tiny``) to 3.4e38.
A positive setting below that becomes 0 or a subnormal in the arithmetic of an update, and one above
it becomes infinity. All pass the schema's "greater than 0", and all fail later, silently or misleadingly:

- an ``epsilon`` (AdaGrad, RMSProp, Adam, batch norm) that becomes 0 makes 0 / (sqrt(0) + 0) = NaN for
  a weight whose gradient has been 0 so far (a border pixel) or a constant feature, and the run stops
  as "diverged" with advice about the step size;
- a ``learning_rate``, ``clip_norm``, Huber ``delta`` or perturb ``delta`` that becomes 0 trains nothing;
- a subnormal keeps a few digits at most, and arithmetic on it runs many times slower;
- infinity makes the first update NaN (inf * 0) or every update 0 (g / inf).

Adam adds epsilon times its bias correction sqrt(1 - beta2**t) (``engine/optimizers.py`` folds the
correction into its scalars), smallest at the first update: sqrt(1 - beta2). With beta2 = 0.999 the
least epsilon that stays a normal float32 there is 1.2e-38 / 0.0316 = 3.7e-37.

No NumPy here: a config is loaded before NumPy is (``cli/before_numpy.py``), so the limits are written
out (float32: 2**-126 and (2 - 2**-23) * 2**127) and float32 rounding is ``struct``'s, which
tests/test_precision.py checks against NumPy's.

``load_config`` runs ``check`` on every experiment config (train, validate, resume, sweeps); not on a
stored run's config read for eval, predict or export (``check_precision=False``): that run has trained
already, and evaluating it must not be refused.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Iterator

from sgdcli.config import image_layers as image
from sgdcli.config import schema as cfg

# (smallest normal number, largest number) of each model.dtype; np.finfo's tiny and max
LIMITS = {"float32": (2.0**-126, (2 - 2.0**-23) * 2.0**127), "float64": (sys.float_info.min, sys.float_info.max)}

WHY_NOT_ZERO = {  # what a setting that becomes 0 would do (None: 0 is allowed, only infinity is refused)
    "learning_rate": "every update would be 0: no weight would move",
    "epsilon": "a weight whose gradient has been 0 so far would get 0 / (sqrt(0) + 0) = NaN",
    "clip_norm": "every gradient would be scaled to 0: no weight would move",
    "loss.delta": "every gradient would be clipped to [0, 0]: no weight would move",
    "optimizer.delta": "every nudge would leave the weights as they are",
    "weight_decay": None,
}
WHY_NOT_INFINITE = "the first update would be NaN or every update 0"

# The float settings of an experiment's schema not checked here, with why: a guard in tests/test_precision.py
# fails for a float setting in neither this list nor those ``_settings`` yields.
NOT_CHECKED = {
    "momentum": "a fraction in [0, 1]",
    "beta1": "a fraction in [0, 1)",
    "beta2": "a fraction in [0, 1), checked through Adam's epsilon",
    "rho": "a fraction in [0, 1)",
    "rate": "a dropout probability in [0, 1)",
    "negative_slope": "a fraction in [0, 1)",
    "initial_accumulator": "added under a square root beside epsilon; 0 is allowed",
    "min_learning_rate": "a schedule's floor, 0 allowed, applied to the checked learning rate in float64",
    "factor": "a schedule's factor in (0, 1], applied in float64",
    "decay_rate": "a schedule's factor, applied in float64",
    "every_epochs": "a count of epochs, never in the model's arithmetic",
    "warmup_epochs": "a count of epochs, never in the model's arithmetic",
    "validation": "a fraction of the rows",
    "noise": "added to generated data in float64 before the data is cast",
}


def check(config: cfg.ExperimentConfig) -> str | None:
    """The first setting of ``config`` its model dtype turns into 0, a subnormal or infinity (where the
    formula needs a positive, finite number), as one message naming the dotted key, what it becomes and
    what is expected; None when every setting holds."""
    dtype = config.model.dtype
    tiny, largest = LIMITS[dtype]
    for key, value, scale, scale_note in _settings(config):
        if value > largest:
            return (f"{key}: expected at most {largest:.3g} ({dtype}'s largest number), received {value:g}, "
                    f"which is infinity in {dtype} (model.dtype): {WHY_NOT_INFINITE}")
        reason, used = WHY_NOT_ZERO.get(key, WHY_NOT_ZERO.get(key.rpartition(".")[2])), value * scale
        if reason is not None and used < tiny:
            zero = _rounded(used, dtype) == 0.0
            if not zero:
                reason = "it keeps a few digits at most, and arithmetic on it runs many times slower"
            scaled = "" if scale == 1.0 else f", and epsilon x {scale:.3g} = {used:.3g}"
            return (f"{key}: expected at least {tiny / scale:.3g} ({dtype}'s smallest normal number"
                    f"{'' if scale == 1.0 else f' {tiny:.3g}'}{scale_note}), received {value:g}{scaled}, "
                    f"which is {'0' if zero else 'a subnormal number'} in {dtype} (model.dtype): {reason}"
                    + ("; or set model.dtype: float64" if dtype != "float64" else ""))
    return None


def _rounded(value: float, dtype: str) -> float:
    """``value`` (at most the dtype's largest) rounded to ``dtype``, as NumPy's cast rounds it (to nearest, ties even)."""
    return struct.unpack("<f", struct.pack("<f", value))[0] if dtype == "float32" else value


def _settings(config: cfg.ExperimentConfig) -> Iterator[tuple[str, float, float, str]]:
    """(dotted key, value, the least factor the engine multiplies it by before it meets the arrays, a note on that
    factor)."""
    optimizer = config.optimizer
    if isinstance(optimizer, cfg.GRADIENT_OPTIMIZERS):
        yield "optimizer.learning_rate", optimizer.learning_rate, 1.0, ""
        if optimizer.clip_norm is not None:
            yield "optimizer.clip_norm", optimizer.clip_norm, 1.0, ""
        yield "optimizer.weight_decay", optimizer.weight_decay, 1.0, ""
        if isinstance(optimizer, cfg.AdamConfig):  # (AdamW too)
            correction = math.sqrt(1.0 - optimizer.beta2)  # 1 for beta2 = 0
            yield ("optimizer.epsilon", optimizer.epsilon, correction, "" if correction == 1.0 else
                   f" over sqrt(1 - beta2) = {correction:.3g}: Adam adds epsilon x sqrt(1 - beta2) at its first update")
        elif isinstance(optimizer, (cfg.AdagradConfig, cfg.RmspropConfig)):
            yield "optimizer.epsilon", optimizer.epsilon, 1.0, ""
    elif isinstance(optimizer, cfg.PerturbConfig):
        yield "optimizer.delta", optimizer.delta, 1.0, ""
    if isinstance(config.loss, cfg.HuberConfig):
        yield "loss.delta", config.loss.delta, 1.0, ""
    for index, layer in enumerate(config.model.layers):
        if isinstance(layer, image.BatchNormConfig):
            yield f"model.layers.{index}.epsilon", layer.epsilon, 1.0, ""
