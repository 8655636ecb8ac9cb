"""Optimizers against hand-computed steps; state round trips; in-place updates; gradient clipping.

Unless a test says otherwise: lr = 0.1, w = [1, 2] and the gradient g = [0.5, -1] at both steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from sgdcli.engine.gradients import clip_by_global_norm
from sgdcli.engine.optimizers import (
    SGD,
    AdaGrad,
    Adam,
    AdamW,
    Optimizer,
    RMSProp,
)

LR = 0.1
G = [0.5, -1.0]


def two_steps(optimizer: Optimizer, grads: list[list[float]] = (G, G), w: list[float] = (1.0, 2.0)) -> list[np.ndarray]:
    """Run one step per gradient on w; return w after each step."""
    params = {"w": np.array(w, dtype=np.float64)}
    history = []
    for g in grads:
        optimizer.step(params, {"w": np.array(g, dtype=np.float64)}, LR)
        history.append(params["w"].copy())
    return history


def assert_steps(history: list[np.ndarray], expected: list[list[float]], atol: float = 1e-9) -> None:
    for step, (got, want) in enumerate(zip(history, expected, strict=True), start=1):
        np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=f"step {step}")


# --- hand-computed steps ------------------------------------------------------------------------


def test_sgd_plain() -> None:
    # w -= lr g: step 1 [1 - 0.05, 2 + 0.1] = [0.95, 2.1]; step 2 [0.9, 2.2]
    assert_steps(two_steps(SGD()), [[0.95, 2.1], [0.9, 2.2]])


def test_sgd_momentum() -> None:
    # v = 0.9 v - lr g; w += v
    # step 1: v = [-0.05, 0.1]                                  w = [0.95, 2.1]
    # step 2: v = [-0.045 - 0.05, 0.09 + 0.1] = [-0.095, 0.19]  w = [0.855, 2.29]
    assert_steps(two_steps(SGD(momentum=0.9)), [[0.95, 2.1], [0.855, 2.29]])


def test_sgd_nesterov() -> None:
    # v = 0.9 v - lr g; w += 0.9 v - lr g
    # step 1: v = [-0.05, 0.1];   w += [-0.045 - 0.05, 0.09 + 0.1] = [-0.095, 0.19]        -> [0.905, 2.19]
    # step 2: v = [-0.095, 0.19]; w += [-0.0855 - 0.05, 0.171 + 0.1] = [-0.1355, 0.271]    -> [0.7695, 2.461]
    assert_steps(two_steps(SGD(momentum=0.9, nesterov=True)), [[0.905, 2.19], [0.7695, 2.461]])


def test_sgd_l2_weight_decay() -> None:
    # g' = g + 0.1 w
    # step 1: g' = [0.5 + 0.1, -1 + 0.2] = [0.6, -0.8];          w = [1 - 0.06, 2 + 0.08] = [0.94, 2.08]
    # step 2: g' = [0.5 + 0.094, -1 + 0.208] = [0.594, -0.792];  w = [0.94 - 0.0594, 2.08 + 0.0792] = [0.8806, 2.1592]
    assert_steps(two_steps(SGD(weight_decay=0.1)), [[0.94, 2.08], [0.8806, 2.1592]])


def test_adagrad() -> None:
    # G += g^2; w -= lr g / (sqrt(G) + 1e-10)   (epsilon moves w by < 1e-10 here)
    # step 1: G = [0.25, 1];   g / sqrt(G) = [1, -1];                 w = [0.9, 2.1]
    # step 2: G = [0.5, 2];    g / sqrt(G) = [0.5 / 0.70710678, -1 / 1.41421356] = [0.70710678, -0.70710678]
    #         w = [0.9 - 0.070710678, 2.1 + 0.070710678] = [0.829289322, 2.170710678]
    assert_steps(two_steps(AdaGrad()), [[0.9, 2.1], [0.829289322, 2.170710678]])


def test_adagrad_initial_accumulator() -> None:
    # G = 0.1 + g^2 = [0.35, 1.1]; g / sqrt(G) = [0.5 / 0.5916080, -1 / 1.0488088] = [0.8451543, -0.9534626]
    # w = [1 - 0.08451543, 2 + 0.09534626] = [0.91548457, 2.09534626]
    assert_steps(two_steps(AdaGrad(initial_accumulator=0.1), grads=[G]), [[0.91548457, 2.09534626]], atol=1e-8)


def test_rmsprop() -> None:
    # s = 0.9 s + 0.1 g^2; w -= lr g / (sqrt(s) + 1e-8)   (epsilon moves w by < 1e-8 here)
    # step 1: s = [0.025, 0.1];  sqrt(s) = [0.158113883, 0.316227766];  g / sqrt(s) = [3.16227766, -3.16227766]
    #         w = [1 - 0.316227766, 2 + 0.316227766] = [0.683772234, 2.316227766]
    # step 2: s = [0.0225 + 0.025, 0.09 + 0.1] = [0.0475, 0.19];  sqrt(s) = [0.217944947, 0.435889894]
    #         g / sqrt(s) = [2.294157339, -2.294157339];  w = [0.454356500, 2.545643500]
    assert_steps(two_steps(RMSProp(rho=0.9)), [[0.683772234, 2.316227766], [0.4543565, 2.5456435]], atol=1e-7)


def test_rmsprop_momentum() -> None:
    # b = 0.9 b + g / (sqrt(s) + eps); w -= lr b   (s as in test_rmsprop)
    # step 1: b = [3.16227766, -3.16227766];                      w = [0.683772234, 2.316227766]
    # step 2: b = 0.9 * 3.16227766 + 2.294157339 = 5.140207233;   w = [0.683772234 - 0.514020723, 2.316227766 + 0.514020723]
    #                                                                = [0.169751511, 2.830248489]
    assert_steps(two_steps(RMSProp(rho=0.9, momentum=0.9)), [[0.683772234, 2.316227766], [0.169751511, 2.830248489]], atol=1e-7)


def test_adam() -> None:
    # beta1 0.9, beta2 0.999; second gradient g2 = [-0.5, 0.5] so the bias corrections matter.
    # step 1: m = 0.1 g = [0.05, -0.1];  v = 0.001 g^2 = [0.00025, 0.001]
    #         m_hat = m / 0.1 = g;  v_hat = v / 0.001 = g^2  ->  w -= lr g / |g| = lr sign(g)  ->  [0.9, 2.1]
    # step 2: m = 0.9 [0.05, -0.1] + 0.1 [-0.5, 0.5] = [-0.005, -0.04]
    #         v = 0.999 [0.00025, 0.001] + 0.001 [0.25, 0.25] = [0.00049975, 0.001249]
    #         m_hat = m / (1 - 0.81) = [-0.0263158, -0.2105263];  v_hat = v / (1 - 0.998001) = [0.25, 0.6248124]
    #         sqrt(v_hat) = [0.5, 0.7904508];  lr m_hat / sqrt(v_hat) = [-0.0052632, -0.0266337]
    #         w = [0.9 + 0.0052632, 2.1 + 0.0266337] = [0.9052632, 2.1266337]
    history = two_steps(Adam(), grads=[G, [-0.5, 0.5]])
    assert_steps(history, [[0.9, 2.1], [0.90526316, 2.12663370]], atol=1e-7)


def test_adam_first_step_is_lr_times_sign_for_any_gradient() -> None:
    g = np.array([1e-3, -4.0, 250.0, -0.2])
    w = np.zeros(4)
    Adam().step({"w": w}, {"w": g}, LR)
    np.testing.assert_allclose(w, -LR * np.sign(g), rtol=1e-5)  # epsilon 1e-8 vs |g| >= 1e-3


def test_adam_epsilon_is_outside_the_square_root() -> None:
    # epsilon 0.5, step 1: w -= lr g / (|g| + 0.5) = 0.1 [0.5 / 1, -1 / 1.5] = [0.05, -0.0666667] -> [0.95, 2.0666667]
    # (inside the root it would be 0.1 * 0.5 / sqrt(0.25 + 0.5) = 0.0577 for the first weight)
    assert_steps(two_steps(Adam(epsilon=0.5), grads=[G]), [[0.95, 2.0 + 0.1 / 1.5]])


def test_adamw_decoupled_weight_decay() -> None:
    # weight_decay 0.1: w *= 1 - lr * 0.1 = 0.99, then the Adam step (lr sign(g) for a constant g)
    # step 1: [0.99, 1.98] -> [0.89, 2.08]
    # step 2: [0.8811, 2.0592] -> [0.7811, 2.1592]
    assert_steps(two_steps(AdamW(weight_decay=0.1)), [[0.89, 2.08], [0.7811, 2.1592]], atol=1e-7)


def test_adam_l2_differs_from_adamw() -> None:
    # L2 folds 0.1 w into g: g' = [0.6, -0.8] still has g's signs, so step 1 is lr sign(g): [0.9, 2.1]
    assert_steps(two_steps(Adam(weight_decay=0.1), grads=[G]), [[0.9, 2.1]], atol=1e-7)


def test_clip_by_global_norm() -> None:
    # norm = sqrt(3^2 + 4^2 + 12^2) = sqrt(169) = 13; max_norm 6.5 scales by 0.5
    grads = {"a": np.array([3.0, 4.0]), "b": np.array([[12.0]])}
    assert clip_by_global_norm(grads, 6.5) == pytest.approx(13.0)
    np.testing.assert_allclose(grads["a"], [1.5, 2.0])
    np.testing.assert_allclose(grads["b"], [[6.0]])
    # now norm 6.5 <= 20: unchanged
    assert clip_by_global_norm(grads, 20.0) == pytest.approx(6.5)
    np.testing.assert_allclose(grads["a"], [1.5, 2.0])


def test_clip_by_global_norm_leaves_non_finite_gradients_alone() -> None:
    grads = {"a": np.array([np.inf, 1.0])}
    assert math.isinf(clip_by_global_norm(grads, 1.0))
    assert grads["a"][1] == 1.0


def test_iterations_counts_completed_steps() -> None:
    optimizer = Adam()
    assert optimizer.iterations == 0
    two_steps(optimizer)
    assert optimizer.iterations == 2


# --- every optimizer: state round trip, in-place updates, untouched gradients -------------------

OPTIMIZERS: dict[str, Callable[[], Optimizer]] = {
    "sgd": SGD,
    "sgd_momentum": lambda: SGD(momentum=0.9),
    "sgd_nesterov": lambda: SGD(momentum=0.9, nesterov=True),
    "sgd_l2": lambda: SGD(momentum=0.5, weight_decay=0.01),
    "adagrad": lambda: AdaGrad(initial_accumulator=0.1),
    "rmsprop": RMSProp,
    "rmsprop_momentum": lambda: RMSProp(momentum=0.9),
    "adam": Adam,
    "adam_l2": lambda: Adam(weight_decay=0.01),
    "adamw": AdamW,
}
STATELESS = {"sgd"}


def make_params(rng: np.random.Generator, dtype=np.float64) -> dict[str, np.ndarray]:
    return {"0.weight": rng.normal(size=(3, 2)).astype(dtype), "0.bias": rng.normal(size=2).astype(dtype)}


def random_grads(rng: np.random.Generator, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: rng.normal(size=value.shape).astype(value.dtype) for key, value in params.items()}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_round_trip_gives_an_identical_next_step(name: str) -> None:
    rng = np.random.default_rng(0)
    original = OPTIMIZERS[name]()
    params = make_params(rng)
    for _ in range(3):
        original.step(params, random_grads(rng, params), 0.05)
    state = original.state_dict()
    assert state["iterations"].dtype == np.int64 and state["iterations"].shape == () and int(state["iterations"]) == 3
    assert all(isinstance(key, str) and isinstance(value, np.ndarray) for key, value in state.items())

    restored = OPTIMIZERS[name]()
    restored.load_state_dict(state)
    fresh = OPTIMIZERS[name]()
    copies = {key: value.copy() for key, value in params.items()}
    fresh_copies = {key: value.copy() for key, value in params.items()}
    grads = random_grads(rng, params)
    original.step(params, grads, 0.05)
    restored.step(copies, grads, 0.05)
    fresh.step(fresh_copies, grads, 0.05)
    for key in params:
        assert np.array_equal(params[key], copies[key]), key
    assert restored.iterations == original.iterations == 4
    if name not in STATELESS:  # the round trip matters: a fresh optimizer steps differently
        assert not all(np.array_equal(params[key], fresh_copies[key]) for key in params)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_is_a_copy(name: str) -> None:
    rng = np.random.default_rng(1)
    optimizer = OPTIMIZERS[name]()
    params = make_params(rng)
    optimizer.step(params, random_grads(rng, params), 0.05)
    state = optimizer.state_dict()
    for value in state.values():
        value[...] = 123
    assert all(not np.any(value == 123) for value in optimizer.state_dict().values())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_step_updates_in_place_and_leaves_grads_alone(name: str) -> None:
    rng = np.random.default_rng(2)
    optimizer = OPTIMIZERS[name]()
    params = make_params(rng)
    arrays = dict(params)
    before = {key: value.copy() for key, value in params.items()}
    for _ in range(2):
        grads = random_grads(rng, params)
        grads_before = {key: value.copy() for key, value in grads.items()}
        optimizer.step(params, grads, 0.05)
        for key in grads:
            assert np.array_equal(grads[key], grads_before[key]), f"{key} gradient was modified"
    for key in params:
        assert params[key] is arrays[key], f"{key} was rebound"
        assert not np.array_equal(params[key], before[key]), f"{key} did not move"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_float32_parameters_keep_float32_state(name: str) -> None:
    rng = np.random.default_rng(3)
    optimizer = OPTIMIZERS[name]()
    params = make_params(rng, np.float32)
    for _ in range(2):
        optimizer.step(params, random_grads(rng, params), np.float64(0.05))
    assert all(value.dtype == np.float32 for value in params.values())
    assert all(value.dtype == np.float32 for key, value in optimizer.state_dict().items() if key != "iterations")


# --- errors ---------------------------------------------------------------------------------------


def test_step_rejects_mismatched_gradients() -> None:
    params = {"w": np.zeros(3)}
    with pytest.raises(ValueError, match="missing \\['w'\\]"):
        SGD().step(params, {"v": np.zeros(3)}, 0.1)
    with pytest.raises(ValueError, match="shape"):
        SGD().step(params, {"w": np.zeros((2, 3))}, 0.1)
    assert np.array_equal(params["w"], np.zeros(3))


def test_load_state_dict_rejects_foreign_or_malformed_state() -> None:
    params = {"w": np.ones(2)}
    momentum = SGD(momentum=0.9)
    momentum.step(params, {"w": np.ones(2)}, 0.1)
    with pytest.raises(ValueError, match="Adam keeps"):
        Adam().load_state_dict(momentum.state_dict())
    with pytest.raises(ValueError, match="iterations"):
        Adam().load_state_dict({})
    adam = Adam()
    with pytest.raises(ValueError, match="expected 'iterations' or '<state>/<parameter>'"):
        adam.load_state_dict({"iterations": np.array(1), "velocity": np.zeros(2)})
    assert adam.iterations == 0  # unchanged after a failed load


def test_loaded_state_must_fit_the_parameters() -> None:
    params = {"w": np.ones(2)}
    source = SGD(momentum=0.9)
    source.step(params, {"w": np.ones(2)}, 0.1)
    wrong_shape = SGD(momentum=0.9)
    wrong_shape.load_state_dict(source.state_dict())
    with pytest.raises(ValueError, match="shape"):
        wrong_shape.step({"w": np.ones(3)}, {"w": np.ones(3)}, 0.1)
    # State of a stateless optimizer after 1 step: a momentum optimizer would miss its velocity.
    plain = SGD()
    plain.step(params, {"w": np.ones(2)}, 0.1)
    missing = SGD(momentum=0.9)
    missing.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="missing \\['w'\\]"):
        missing.step(params, {"w": np.ones(2)}, 0.1)


def test_invalid_hyperparameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="nesterov"):
        SGD(nesterov=True)
    with pytest.raises(ValueError, match="beta2"):
        Adam(beta2=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        AdaGrad(weight_decay=-1)
    with pytest.raises(ValueError, match="max_norm"):
        clip_by_global_norm({}, 0.0)


def test_loaded_state_checked_at_once_when_given_the_parameters() -> None:
    # Resuming gives the parameters, so a crafted checkpoint is refused before training starts
    # (issue 11), not at the first step.
    params = {"w": np.ones(2)}
    source = SGD(momentum=0.9)
    source.step(params, {"w": np.ones(2)}, 0.1)
    with pytest.raises(ValueError, match="shape"):
        SGD(momentum=0.9).load_state_dict(source.state_dict(), {"w": np.ones(3)})
    integers = {**source.state_dict(), "velocity/w": np.array([1, 2], dtype=np.int64)}
    with pytest.raises(ValueError, match="velocity/w is int64; expected floating point"):
        SGD(momentum=0.9).load_state_dict(integers, params)
    restored = SGD(momentum=0.9)
    restored.load_state_dict(source.state_dict(), params)
    assert np.array_equal(restored.state_dict()["velocity/w"], source.state_dict()["velocity/w"])
