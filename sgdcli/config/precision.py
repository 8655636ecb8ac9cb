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

# (smallest normal number, largest number) of each model.dtype: NumPy's finfo(dtype).tiny and .max
LIMITS = {"float32": (2.0**-126, (2 - 2.0**-23) * 2.0**127), "float64": (sys.float_info.min, sys.float_info.max)}

NO_MOVE = "no weight would move"
SLOW = "it keeps a few digits at most, and arithmetic on it runs many times slower"

# The float settings of an experiment's schema not checked here, with why: a guard in tests/test_precision.py
# fails for a float setting in neither this list nor among those ``_settings`` yields.
NOT_CHECKED = {
    "momentum": "a fraction in [0, 1]",
    "beta1": "a fraction in [0, 1)",
    "beta2": "a fraction in [0, 1), checked through Adam's epsilon",
    "rho": "a fraction in [0, 1)",
    "rate": "a dropout probability in [0, 1)",
    "negative_slope": "a fraction in [0, 1)",
    "factor": "a schedule's factor in (0, 1], applied in float64 to the checked learning rate",
    "decay_rate": "a schedule's factor, applied in float64 to the checked learning rate, which it only lowers",
    "every_epochs": "a count of epochs, never in the model's arithmetic",
    "warmup_epochs": "a count of epochs, never in the model's arithmetic",
    "validation": "a fraction of the rows",
    "noise": "at most 10, added to generated data in float64 before the data is cast",
}


def check(config: cfg.ExperimentConfig, advice: bool = True) -> str | None:
    """The first setting of ``config`` that its model dtype turns into 0, a subnormal or infinity where the
    formula needs a normal, finite number, as one message naming the dotted key, what was expected and
    received and what the value would do; None when every setting holds. ``advice``: end with the other way
    out (model.dtype: float64), not for a run being resumed, whose settings are fixed."""
    for key, value, scale, note, zero, infinite in _settings(config):
        problem = bound_problem(key, value, config.model.dtype, scale=scale, scale_note=note, zero=zero,
                                infinite=infinite, advice=advice)
        if problem:
            return problem
    return None


def bound_problem(key: str, value: float, dtype: str, *, scale: float = 1.0, scale_note: str = "",
                  zero: str | None = None, infinite: str | None = None, advice: bool = True) -> str | None:
    """Why ``value`` (its product with ``scale``, the factor the engine multiplies it by first) cannot be
    used in ``dtype`` arithmetic, or None: a message for the key when it rounds to infinity (``infinite``
    says what that would do; None: allowed) or, unless it is 0 and ``zero`` is None (0 allowed), to 0 or
    a subnormal (``zero`` says what 0 would do). ``advice``: end with the other way out, model.dtype: float64."""
    tiny, largest = LIMITS[dtype]
    used = _rounded(value * scale, dtype)
    if infinite is not None and math.isinf(_rounded(value, dtype)):
        problem = (f"{key}: expected at most {largest:.9g} ({dtype}'s largest number), received {value:.9g}, which "
                   f"is infinity in {dtype} (model.dtype): {infinite}")
    elif used >= tiny or (zero is None and value == 0):
        return None
    else:
        scaled = "" if scale == 1.0 else f", and {key.rpartition('.')[2]} x {scale:.4g} = {value * scale:.9g}"
        problem = (f"{key}: expected at least {tiny / scale:.9g} ({dtype}'s smallest normal number"
                   f"{'' if scale == 1.0 else f' {tiny:.9g}'}{scale_note}), received {value:.9g}{scaled}, which is "
                   + (f"0 in {dtype} (model.dtype): {zero or 'as good as leaving it out: set 0 for that'}" if used == 0
                      else f"a subnormal number in {dtype} (model.dtype): {SLOW}"))
    return problem + ("; or set model.dtype: float64" if advice and dtype != "float64" else "")


def _rounded(value: float, dtype: str) -> float:
    """``value`` rounded to ``dtype`` as NumPy's cast rounds it (to nearest, ties to even; inf beyond the largest)."""
    if dtype != "float32" or math.isinf(value) or math.isnan(value):
        return value
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:  # (struct refuses what rounds past the largest float32; NumPy makes it infinity)
        return math.copysign(math.inf, value)


def _settings(config: cfg.ExperimentConfig) -> Iterator[tuple[str, float, float, str, str | None, str | None]]:
    """(dotted key, value, the least factor the engine multiplies it by before it meets the arrays, a note on
    that factor, what 0 would do (None: 0 is allowed), what infinity would do (None: allowed))."""
    optimizer = config.optimizer
    nan = "the first update would make the weights NaN"
    if isinstance(optimizer, cfg.GRADIENT_OPTIMIZERS):
        yield "optimizer.learning_rate", optimizer.learning_rate, 1.0, "", f"every update would be 0: {NO_MOVE}", nan
        if optimizer.clip_norm is not None:  # (compared with the norm in float64: a huge one never clips)
            yield ("optimizer.clip_norm", optimizer.clip_norm, 1.0, "",
                   f"a clipped gradient would be scaled to 0: {NO_MOVE}", None)
        yield "optimizer.weight_decay", optimizer.weight_decay, 1.0, "", None, nan
        epsilon_zero = "a weight whose gradient has been 0 so far would get 0 / (sqrt(0) + 0) = NaN"
        epsilon_infinite = f"every update would be g / infinity = 0: {NO_MOVE}"
        if isinstance(optimizer, cfg.AdamConfig):  # (AdamW too)
            correction = math.sqrt(1.0 - optimizer.beta2)  # 1 for beta2 = 0
            yield ("optimizer.epsilon", optimizer.epsilon, correction,
                   "" if correction == 1.0 else f" over sqrt(1 - beta2) = {correction:.4g}: Adam adds epsilon x "
                   "sqrt(1 - beta2) at its first update", epsilon_zero, epsilon_infinite)
        elif isinstance(optimizer, (cfg.AdagradConfig, cfg.RmspropConfig)):
            yield "optimizer.epsilon", optimizer.epsilon, 1.0, "", epsilon_zero, epsilon_infinite
        if isinstance(optimizer, cfg.AdagradConfig):
            yield ("optimizer.initial_accumulator", optimizer.initial_accumulator, 1.0, "", None,
                   f"every update would be g / infinity = 0: {NO_MOVE}")
        schedule = optimizer.schedule
        if isinstance(schedule, cfg.CosineConfig):
            yield "optimizer.schedule.min_learning_rate", schedule.min_learning_rate, 1.0, "", None, nan
    elif isinstance(optimizer, cfg.PerturbConfig):
        yield ("optimizer.delta", optimizer.delta, 1.0, "", "every nudge would leave the weights as they are",
               "the first nudge would make the weights infinite")
    if isinstance(config.loss, cfg.HuberConfig):
        yield ("loss.delta", config.loss.delta, 1.0, "", f"every gradient would be clipped to [0, 0]: {NO_MOVE}",
               "the loss would be infinity x 0 = NaN")
    for index, layer in enumerate(config.model.layers):
        if isinstance(layer, image.BatchNormConfig):
            yield (f"model.layers.{index}.epsilon", layer.epsilon, 1.0, "",
                   "a constant feature or channel (variance 0) would be divided by sqrt(0 + 0) = 0: NaN",
                   "every output would be divided by infinity: the layer would output its bias alone")
