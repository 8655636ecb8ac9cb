"""Learning-rate schedules against their formulas, with the values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from sgdcli.engine.schedules import (
    Constant,
    CosineDecay,
    ExponentialDecay,
    InverseTimeDecay,
    StepDecay,
    Warmup,
)


def assert_values(schedule, expected: dict[int, float]) -> None:
    got = {t: schedule(t) for t in expected}
    assert got == pytest.approx(expected, rel=1e-9, abs=0)


def test_constant() -> None:
    assert_values(Constant(0.1), {0: 0.1, 1: 0.1, 10_000: 0.1})


def test_step_decay() -> None:
    # 0.1 * 0.5 ** (t // 10): t 0..9 -> 0.1, t 10 -> 0.05, t 25 -> 0.1 * 0.25 = 0.025
    assert_values(StepDecay(0.1, step_updates=10, factor=0.5), {0: 0.1, 9: 0.1, 10: 0.05, 19: 0.05, 25: 0.025})


def test_exponential_decay() -> None:
    # 0.1 * 0.5 ** (t / 10): t 5 -> 0.1 / sqrt(2) = 0.0707106781, t 10 -> 0.05, t 20 -> 0.025
    assert_values(ExponentialDecay(0.1, decay_rate=0.5, decay_updates=10), {0: 0.1, 5: 0.0707106781186548, 10: 0.05, 20: 0.025})


def test_inverse_time_decay() -> None:
    # 0.1 / (1 + 0.5 t / 10): t 5 -> 0.1 / 1.25 = 0.08, t 10 -> 0.1 / 1.5 = 0.0666667, t 20 -> 0.1 / 2 = 0.05
    assert_values(InverseTimeDecay(0.1, decay_rate=0.5, decay_updates=10), {0: 0.1, 5: 0.08, 10: 0.1 / 1.5, 20: 0.05})


def test_cosine_decay() -> None:
    # 101 updates, t = 0..100, T = 100: 0.01 + 0.5 * 0.09 * (1 + cos(pi min(t, 100) / 100))
    # t 25: 0.01 + 0.045 * (1 + 0.70710678) = 0.086819805;  t 50: 0.01 + 0.045 = 0.055;  t >= 100: 0.01
    assert_values(
        CosineDecay(0.1, total_updates=101, min_learning_rate=0.01),
        {0: 0.1, 25: 0.0868198051533946, 50: 0.055, 100: 0.01, 150: 0.01},
    )
    # the last of 100 updates (t = 99) uses the floor
    assert CosineDecay(0.1, total_updates=100)(99) == pytest.approx(0.0, abs=1e-15)
    assert CosineDecay(0.1, total_updates=1)(0) == 0.1  # a single update: the first is the last


def test_warmup_of_a_constant() -> None:
    # t < 4: 0.1 * (t + 1) / 4 -> 0.025, 0.05, 0.075, 0.1; then 0.1
    assert_values(Warmup(Constant(0.1), warmup_updates=4), {0: 0.025, 1: 0.05, 2: 0.075, 3: 0.1, 4: 0.1, 10: 0.1})


def test_warmup_scales_the_wrapped_schedule_at_the_same_t() -> None:
    # StepDecay(0.1, 2, 0.5): 0.1, 0.1, 0.05, 0.05, 0.025 at t = 0..4
    # warmup 4: t 0 -> 0.1 / 4 = 0.025; t 2 -> 0.05 * 3 / 4 = 0.0375; t 3 -> 0.05; t 4 -> 0.025 (no warmup)
    assert_values(Warmup(StepDecay(0.1, 2, 0.5), warmup_updates=4), {0: 0.025, 2: 0.0375, 3: 0.05, 4: 0.025})


def test_zero_warmup_is_the_wrapped_schedule() -> None:
    assert Warmup(Constant(0.3), warmup_updates=0)(0) == 0.3


@pytest.mark.parametrize(
    "schedule",
    [
        Constant(0.1),
        StepDecay(0.1, 3, 0.5),
        ExponentialDecay(0.1, 0.9, 7),
        InverseTimeDecay(0.1, 0.5, 3),
        CosineDecay(0.1, 9),
        Warmup(CosineDecay(0.1, 9), 3),
    ],
    ids=repr,
)
def test_returns_python_floats_even_for_numpy_integer_t(schedule) -> None:
    # np.float64 results would silently upcast float32 updates; the schedules hand out plain floats.
    assert type(schedule(np.int64(5))) is float and type(schedule(5)) is float


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="step_updates"):
        StepDecay(0.1, 0, 0.5)
    with pytest.raises(ValueError, match="total_updates"):
        CosineDecay(0.1, 0)
    with pytest.raises(ValueError, match="learning_rate"):
        Constant(-1.0)
    with pytest.raises(ValueError, match="warmup_updates"):
        Warmup(Constant(0.1), -1)
