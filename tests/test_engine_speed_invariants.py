"""What the engine's speed rests on, checked as facts rather than timings: float32 end to end,
optimizer updates that allocate nothing, scratch that is never state, the subnormal flush,
in-place activations and the batch-of-one gradient path."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from sgdcli.engine.activations import Identity, LeakyReLU, ReLU, Sigmoid, Tanh
from sgdcli.engine.init import glorot_uniform, he_uniform
from sgdcli.engine.layers import Dense, Dropout
from sgdcli.engine.losses import CrossEntropy
from sgdcli.engine.model import Sequential
from sgdcli.engine.optimizers import SGD, AdaGrad, Adam, AdamW, RMSProp

OPTIMIZERS = {
    "sgd": SGD,
    "sgd_momentum": lambda: SGD(momentum=0.9),
    "sgd_nesterov": lambda: SGD(momentum=0.9, nesterov=True),
    "adagrad": AdaGrad,
    "rmsprop": RMSProp,
    "rmsprop_momentum": lambda: RMSProp(momentum=0.9),
    "adam": Adam,
    "adamw": AdamW,
}
ACTIVATIONS = {"relu": ReLU, "leaky_relu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh, "identity": Identity}


def float32_model(rng: np.random.Generator, activation=ReLU) -> Sequential:
    return Sequential([
        Dense.create(6, 8, activation(), he_uniform, rng, np.float32),
        Dropout(0.25),
        Dense.create(8, 3, Identity(), glorot_uniform, rng, np.float32),
    ])


def float64_arrays(where: str, arrays) -> list[str]:
    return [f"{where}[{key}]" for key, array in arrays if np.asarray(array).dtype == np.float64]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_float32_training_step_creates_no_float64_array(name: str, activation: str) -> None:
    rng = np.random.default_rng(0)
    model = float32_model(rng, ACTIVATIONS[activation])
    optimizer = OPTIMIZERS[name]()
    for step in range(optimizer.flush_every() + 1):  # through one subnormal flush too
        x = rng.normal(size=(5, 6))  # float64 data: the model converts it once, on entry
        out, caches = model.forward(x, training=True, rng=rng)
        _, dout = CrossEntropy().value_and_grad(out, rng.integers(0, 3, size=5))
        grads = model.backward(dout, caches)
        optimizer.step(model.parameters(), grads, np.float64(0.01))  # an np.float64 step size as well
        cached = [(f"{i}.{j}", a) for i, cache in enumerate(caches) if cache is not None
                  for j, a in enumerate(cache if isinstance(cache, tuple) else (cache,))]
        bad = (float64_arrays("output", [("", out)]) + float64_arrays("dout", [("", dout)])
               + float64_arrays("cache", cached) + float64_arrays("grad", grads.items())
               + float64_arrays("param", model.parameters().items())
               + float64_arrays("state", ((k, v) for k, v in optimizer.state_dict().items() if k != "iterations"))
               + float64_arrays("scratch", optimizer._scratch.items()))
        assert not bad, f"step {step + 1}: float64 arrays in a float32 step: {bad}"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_an_update_allocates_no_parameter_sized_array(name: str) -> None:
    # numpy reports its array buffers to tracemalloc. After the first step has created the state
    # and the scratch, an update (and the subnormal flush) works in place and in the scratch.
    rng = np.random.default_rng(1)
    params = {"w": rng.normal(size=(500, 400)).astype(np.float32)}
    grad = {"w": rng.normal(size=(500, 400)).astype(np.float32)}
    optimizer = OPTIMIZERS[name]()
    optimizer.step(params, grad, 0.01)
    peaks = []
    # tracemalloc counts every thread's allocations: a thread another test left running (a Dask
    # client's, say) can allocate during one window. An allocation of the update itself is in each.
    for _ in range(3):
        tracemalloc.start()
        try:
            for _ in range(optimizer.flush_every()):
                optimizer.step(params, grad, 0.01)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert min(peaks) < params["w"].nbytes / 50, \
        f"{name}: an update allocated {min(peaks)} bytes for a {params['w'].nbytes}-byte parameter"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_scratch_is_never_state(name: str) -> None:
    rng = np.random.default_rng(2)
    params = {"0.weight": rng.normal(size=(3, 2)).astype(np.float32), "0.bias": np.zeros(2, np.float32)}
    optimizer = OPTIMIZERS[name]()
    expected = sorted(optimizer._init_state(params["0.weight"]))
    for _ in range(3):
        optimizer.step(params, {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}, 0.1)
    state = optimizer.state_dict()
    assert sorted({key.partition("/")[0] for key in state if key != "iterations"}) == expected
    assert all(not np.shares_memory(array, scratch) for array in state.values() for scratch in optimizer._scratch.values())
    restored = OPTIMIZERS[name]()
    restored.load_state_dict(state)
    assert restored._scratch == {}  # made on the next step, never loaded


def test_scratch_follows_a_parameter_whose_shape_or_dtype_changes() -> None:
    optimizer = SGD(momentum=0.5)
    optimizer.step({"w": np.ones(3, np.float32)}, {"w": np.ones(3, np.float32)}, 0.1)
    optimizer.load_state_dict({"iterations": np.array(1), "velocity/w": np.zeros(4)})
    params = {"w": np.ones(4)}
    optimizer.step(params, {"w": np.ones(4)}, 0.1)  # v = 0.5 * 0 - 0.1 * 1; w = 1 - 0.1
    np.testing.assert_allclose(params["w"], 0.9)
    assert optimizer._scratch["w"].shape == (4,) and optimizer._scratch["w"].dtype == np.float64


def zero_gradient_run(optimizer, steps: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Coordinate 0 gets a gradient once, then never again: its state decays towards 0.
    Coordinate 1 always gets one."""
    params = {"w": np.array([0.5, 0.5, -0.25], dtype=np.float32)}
    for step in range(steps):
        g = np.array([1e-3 if step == 0 else 0.0, 1e-3, 0.0], dtype=np.float32)
        optimizer.step(params, {"w": g}, 0.01)
    return params["w"], optimizer.state_dict()


def subnormal(array: np.ndarray) -> np.ndarray:
    return (array != 0) & (np.abs(array) < np.finfo(array.dtype).tiny)


@pytest.mark.parametrize("name", ["sgd_momentum", "sgd_nesterov", "rmsprop", "rmsprop_momentum", "adam"])
def test_the_subnormal_flush_leaves_no_subnormal_state_and_changes_no_weight(name: str) -> None:
    steps = 2000  # momentum 0.9 / rho 0.9 / beta1 0.9: 1e-3 * 0.9**2000 is far below the smallest float32
    flushed = OPTIMIZERS[name]()
    unflushed = OPTIMIZERS[name]()
    unflushed.FLUSH_EVERY = steps * 10
    w_flushed, state_flushed = zero_gradient_run(flushed, steps)
    w_unflushed, state_unflushed = zero_gradient_run(unflushed, steps)
    np.testing.assert_array_equal(w_flushed, w_unflushed)  # the flushed values were below any weight's rounding
    decaying = [key for key, value in state_unflushed.items() if key != "iterations" and subnormal(value).any()]
    if name != "adam":  # Adam's second moment decays with beta2 = 0.999: still normal after 2000 steps
        assert decaying, "the test should drive some state into subnormal floats without the flush"
    for key, value in state_flushed.items():
        if key != "iterations":
            assert not subnormal(value).any(), f"{key} keeps subnormal values: {value}"


@pytest.mark.parametrize("optimizer, every", [
    (SGD(), 32), (SGD(momentum=0.5), 32), (SGD(momentum=0.9), 128), (SGD(momentum=0.99), 1024),
    (AdaGrad(), 32), (RMSProp(), 128), (RMSProp(rho=0.0, momentum=0.95), 256), (Adam(), 128),
    (Adam(beta1=0.0), 8192), (AdamW(beta1=0.8, beta2=0.9), 64)])
def test_a_decaying_state_value_is_flushed_before_it_turns_subnormal(optimizer, every: int) -> None:
    # The flush interval follows the state's fastest decay d: a float32 value just above the flush
    # threshold, multiplied by d at each step, is still a normal float when the next flush comes.
    assert optimizer.flush_every() == every
    decays = [getattr(optimizer, name) for name in optimizer.DECAYS if 0 < getattr(optimizer, name) < 1]
    tiny = np.finfo(np.float32).tiny
    for d in decays:  # below 0.61 a value needs fewer than the minimum 32 steps (see Optimizer's doc)
        value = np.float32(tiny / np.finfo(np.float32).eps) * np.float32(1.001)
        for _ in range(every):
            value = np.float32(value * np.float32(d))
        assert value >= tiny or d < 0.61, (d, every)
        if every > optimizer.FLUSH_EVERY and d == min(decays):  # twice as long would be too long
            for _ in range(every):
                value = np.float32(value * np.float32(d))
            assert value < tiny, (d, every)


def test_the_flush_only_zeroes_values_below_tiny_over_eps() -> None:
    threshold = float(np.finfo(np.float32).tiny / np.finfo(np.float32).eps)  # 9.86e-32
    optimizer = SGD(momentum=1e-9)  # velocity = the last -lr * g (1e-9 v is below its rounding)
    params = {"w": np.zeros(4, np.float32)}
    g = np.array([-2 * threshold, -0.5 * threshold, 0.5 * threshold, -1.0], dtype=np.float32)
    for _ in range(optimizer.flush_every()):
        optimizer.step(params, {"w": g}, 1.0)
    velocity = optimizer.state_dict()["velocity/w"]
    assert velocity[0] == -g[0]  # above the threshold: kept exactly
    assert velocity[1] == 0.0 and velocity[2] == 0.0  # below: flushed
    assert velocity[3] == 1.0


def test_nan_state_survives_the_flush() -> None:
    optimizer = SGD(momentum=0.5)
    params = {"w": np.zeros(2, np.float32)}
    for _ in range(optimizer.flush_every()):
        optimizer.step(params, {"w": np.array([np.nan, 1.0], np.float32)}, 0.1)
    assert np.isnan(optimizer.state_dict()["velocity/w"][0])


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "identity"])
def test_dense_keeps_one_activation_sized_array_when_backward_needs_only_the_output(activation: str) -> None:
    rng = np.random.default_rng(3)
    layer = Dense.create(4, 5, ACTIVATIONS[activation](), he_uniform, rng, np.float32)
    out, (_, z, a) = layer.forward(rng.normal(size=(6, 4)).astype(np.float32))
    assert a is out and np.shares_memory(z, a)


def test_dense_keeps_z_for_an_activation_whose_backward_reads_it() -> None:
    rng = np.random.default_rng(4)
    layer = Dense.create(4, 5, LeakyReLU(0.1), he_uniform, rng, np.float64)
    _, (_, z, a) = layer.forward(rng.normal(size=(6, 4)))
    assert not np.shares_memory(z, a)
    np.testing.assert_allclose(a, np.where(z > 0, z, 0.1 * z))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_forward_in_place_equals_forward(activation: str) -> None:
    z = np.random.default_rng(5).normal(size=(7, 3)) * 5
    expected = ACTIVATIONS[activation]().forward(z.copy())
    np.testing.assert_array_equal(ACTIVATIONS[activation]().forward_in_place(z.copy()), expected)


def test_leaky_relu_rejects_a_slope_its_fast_formula_does_not_cover() -> None:
    with pytest.raises(ValueError, match="negative_slope"):
        LeakyReLU(1.5)


def test_a_batch_of_one_gets_the_outer_product_gradient() -> None:
    rng = np.random.default_rng(6)
    layer = Dense.create(5, 3, Tanh(), glorot_uniform, rng, np.float64)
    x = rng.normal(size=(1, 5))
    out, cache = layer.forward(x)
    dout = rng.normal(size=(1, 3))
    _, grads = layer.backward(dout, cache)
    dz = dout * (1 - out**2)
    np.testing.assert_allclose(grads["weight"], np.outer(x[0], dz[0]), rtol=1e-12)
    assert grads["weight"].flags.c_contiguous
    np.testing.assert_allclose(grads["bias"], dz[0], rtol=1e-12)
