"""The fused conv2d -> max_pool2d stage against the two layers run one after the other, and the
second thread the engine splits memory-bound passes over (same bits with it or without)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sgdcli.analysis.gradcheck import check_layer, check_model
from sgdcli.engine import workers
from sgdcli.engine.activations import Identity, LeakyReLU, ReLU, Sigmoid, Tanh
from sgdcli.engine.conv import FEW_CHANNELS, Conv2d
from sgdcli.engine.fusion import BatchNormMaxPool, ConvLinear, ConvMaxPool, ReLUBatchNorm, stages
from sgdcli.engine.init import glorot_uniform, he_uniform
from sgdcli.engine.layers import Dense, Flatten
from sgdcli.engine.losses import CrossEntropy
from sgdcli.engine.model import Sequential
from sgdcli.engine.normalization import BatchNorm
from sgdcli.engine.pooling import AvgPool2d, MaxPool2d

# (channels, kernel, stride, padding, pool, pool stride, image): transposed columns (< FEW_CHANNELS)
# and ordinary ones; a pool that tiles the conv output, one that leaves a row and column unread
# (7 -> 5 -> 2), an overlapping one, padding and stride.
GEOMETRIES = [
    (1, (3, 3), (1, 1), (0, 0, 0, 0), (2, 2), None, (8, 8)),
    (FEW_CHANNELS, (3, 3), (1, 1), (0, 0, 0, 0), (2, 2), None, (7, 7)),
    (2, (3, 2), (2, 1), (1, 1, 0, 1), (2, 2), None, (9, 7)),
    (FEW_CHANNELS + 1, (2, 2), (1, 1), (1, 1, 1, 1), (3, 3), (2, 2), (6, 7)),
    (3, (1, 1), (1, 1), (0, 0, 0, 0), (2, 3), None, (5, 8)),
]


def unfused(conv: Conv2d, pool: MaxPool2d, x: np.ndarray, dout: np.ndarray, need_dx: bool = True):
    out, conv_cache = conv.forward(x, training=True)
    pooled, pool_cache = pool.forward(out, training=True)
    dpooled, _ = pool.backward(dout, pool_cache)
    dx, grads = conv.backward(dpooled, conv_cache, need_dx=need_dx)
    return pooled, dx, grads


def fused(conv: Conv2d, pool: MaxPool2d, x: np.ndarray, dout: np.ndarray, need_dx: bool = True):
    stage = ConvMaxPool(conv, pool)
    out, cache = stage.forward(x, training=True)
    dx, grads = stage.backward(dout, cache, need_dx=need_dx)
    return out, dx, grads


def make(geometry, activation, dtype, rng, bias=True):
    channels, kernel, stride, padding, pool_size, pool_stride, image = geometry
    conv = Conv2d.create(channels, 5, kernel, activation, he_uniform, rng, dtype, stride=stride, padding=padding,
                         bias=bias)
    if bias:
        conv.params["bias"][:] = rng.normal(size=5) * 0.3
    pool = MaxPool2d(pool_size, pool_stride)
    x = rng.normal(size=(3, channels, *image)).astype(dtype)
    out_shape = pool.output_shape(conv.output_shape(x.shape[1:]))
    dout = rng.normal(size=(3, *out_shape)).astype(dtype)
    return conv, pool, x, dout


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("activation", [ReLU(), LeakyReLU(0.1), Identity()], ids=repr)
@pytest.mark.parametrize("bias", [True, False])
def test_the_stage_computes_what_the_two_layers_compute(geometry, activation, bias) -> None:
    rng = np.random.default_rng(1)
    conv, pool, x, dout = make(geometry, activation, np.float32, rng, bias)
    out_a, dx_a, grads_a = unfused(conv, pool, x, dout)
    out_b, dx_b, grads_b = fused(conv, pool, x, dout)
    assert out_b.shape == out_a.shape and out_b.dtype == np.float32
    # Pooling commutes with bias and activation, rounding included; only a product over fewer rows
    # (pixels no window reads left out) may round its last rows differently in BLAS.
    np.testing.assert_allclose(out_b, out_a, rtol=3e-7, atol=0)
    np.testing.assert_allclose(dx_b, dx_a, rtol=1e-5, atol=1e-6)
    assert grads_b.keys() == grads_a.keys() == conv.params.keys()
    for key in grads_a:
        np.testing.assert_allclose(grads_b[key], grads_a[key], rtol=1e-5, atol=1e-5)
        assert grads_b[key].dtype == np.float32


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_ties_route_to_the_first_maximum_bit_for_bit(geometry) -> None:
    # Small integers: every product and sum is exact, so windows are full of exact ties (also at
    # ReLU's zero) and both ways must give the same bits, dx and the gradients included.
    rng = np.random.default_rng(2)
    conv, pool, _, _ = make(geometry, ReLU(), np.float32, rng)
    conv.params["weight"][:] = rng.integers(-1, 2, size=conv.weight.shape)
    conv.params["bias"][:] = rng.integers(-1, 2, size=5)
    x = rng.integers(0, 2, size=(3, conv.in_channels, *geometry[-1])).astype(np.float32)
    dout = rng.integers(-3, 4, size=(3, *pool.output_shape(conv.output_shape(x.shape[1:])))).astype(np.float32)
    out_a, dx_a, grads_a = unfused(conv, pool, x, dout)
    out_b, dx_b, grads_b = fused(conv, pool, x, dout)
    np.testing.assert_array_equal(out_b, out_a)
    np.testing.assert_array_equal(dx_b, dx_a)
    for key in grads_a:
        np.testing.assert_array_equal(grads_b[key], grads_a[key])


def test_ties_by_hand() -> None:
    # One 1x1 filter of weight 1 and bias -1 on a 2x2 image [[3, 3], [1, 3]]: z + bias = [[2, 2], [0, 2]]:
    # the maximum 2 is at positions 0, 1 and 3; the gradient goes to the first, (0, 0), alone.
    conv = Conv2d(np.ones((1, 1, 1, 1)), np.array([-1.0]), ReLU())
    stage = ConvMaxPool(conv, MaxPool2d((2, 2)))
    out, cache = stage.forward(np.array([[[[3.0, 3.0], [1.0, 3.0]]]]))
    np.testing.assert_array_equal(out, [[[[2.0]]]])
    dx, grads = stage.backward(np.array([[[[5.0]]]]), cache)
    np.testing.assert_array_equal(dx, [[[[5.0, 0.0], [0.0, 0.0]]]])
    np.testing.assert_array_equal(grads["weight"], [[[[15.0]]]])  # 5 * x at the argmax (3)
    np.testing.assert_array_equal(grads["bias"], [5.0])
    # All below zero after the bias: ReLU gives 0 everywhere and no gradient flows.
    out, cache = stage.forward(np.array([[[[0.5, 0.0], [-1.0, 0.25]]]]))
    np.testing.assert_array_equal(out, [[[[0.0]]]])
    dx, grads = stage.backward(np.array([[[[5.0]]]]), cache)
    assert not dx.any() and not grads["weight"].any() and not grads["bias"].any()


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_stage_gradients_by_finite_differences(geometry) -> None:
    rng = np.random.default_rng(3)
    conv, pool, x, _ = make(geometry, LeakyReLU(0.1), np.float64, rng)
    checks = check_layer(ConvMaxPool(conv, pool), x, rng=rng)
    assert {check.name for check in checks} == {"weight", "bias", "x"}
    assert all(check.passed for check in checks), [str(c) for c in checks if not c.passed]


def test_pixels_no_window_reads_are_not_computed() -> None:
    # conv 3x3 on 7x7 -> 5x5, pool 2 -> 2x2 reads 4x4: the columns hold 4*4 rows per image, not 5*5.
    rng = np.random.default_rng(4)
    conv, pool, x, dout = make(GEOMETRIES[1], ReLU(), np.float32, rng)
    stage = ConvMaxPool(conv, pool)
    _, cache = stage.forward(x)
    cols = cache[1]
    assert cols.shape == (3 * 4 * 4, 3 * 3 * FEW_CHANNELS)
    dx, _ = stage.backward(dout, cache)
    assert dx.shape == x.shape and not dx[:, :, 6, :].any() and not dx[:, :, :, 6].any()


def test_need_dx_false_gives_the_same_gradients_and_no_dx() -> None:
    rng = np.random.default_rng(5)
    conv, pool, x, dout = make(GEOMETRIES[0], ReLU(), np.float32, rng)
    stage = ConvMaxPool(conv, pool)
    out, cache = stage.forward(x)
    dx, grads = stage.backward(dout, cache, need_dx=False)
    assert dx is None
    _, grads_full = stage.backward(dout, cache)
    for key in grads:
        np.testing.assert_array_equal(grads[key], grads_full[key])


def test_which_layers_a_model_fuses() -> None:
    rng = np.random.default_rng(6)

    def conv(activation):
        return Conv2d.create(1, 2, (3, 3), activation, he_uniform, rng, np.float64)

    layers = [conv(ReLU()), MaxPool2d((2, 2)), conv(Sigmoid()), MaxPool2d((2, 2)), conv(Tanh()),
              AvgPool2d((2, 2)), conv(ReLU()), BatchNorm.create(2, np.float64), MaxPool2d((2, 2)), conv(Identity())]
    plan = stages(layers)
    assert [index for index, _ in plan] == [0, 2, 3, 4, 5, 6, 7, 9]
    assert isinstance(plan[0][1], ConvMaxPool) and plan[0][1].params is layers[0].params
    assert [stage for _, stage in plan[1:5]] == layers[2:6]  # sigmoid/tanh: float exp is not monotone to the bit
    assert isinstance(plan[5][1], ConvLinear) and plan[5][1].params is layers[6].params  # its ReLU goes to batch norm
    assert isinstance(plan[6][1], BatchNormMaxPool) and plan[6][1].buffers is layers[7].buffers and plan[6][1].relu
    assert plan[7][1] is layers[9]


def norm_and_pool(rng, dtype, pool=(2, 2), stride=None, weight=None):
    norm = BatchNorm.create(5, dtype)
    norm.params["weight"][:] = rng.uniform(0.5, 2.0, size=5) if weight is None else weight
    norm.params["bias"][:] = rng.normal(size=5)
    norm.buffers["running_mean"][:] = rng.normal(size=5)
    norm.buffers["running_var"][:] = rng.uniform(0.5, 2.0, size=5)
    return norm, MaxPool2d(pool, stride)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("pool, stride, image", [((2, 2), None, (6, 6)), ((2, 2), None, (7, 5)), ((3, 3), (2, 2), (7, 7))])
@pytest.mark.parametrize("negative", [False, True])
def test_batch_norm_stage_computes_what_the_two_layers_compute(training, pool, stride, image, negative) -> None:
    # negative: one channel's weight < 0, where a maximum would become a minimum: the layers' own order runs
    rng = np.random.default_rng(10)
    weight = np.array([1.0, -0.5, 2.0, 1.5, 0.7]) if negative else None
    x = rng.normal(size=(4, 5, *image)).astype(np.float32)
    results = []
    for run in ("layers", "stage"):
        norm, max_pool = norm_and_pool(np.random.default_rng(11), np.float32, pool, stride, weight)
        dout = np.random.default_rng(12).normal(size=(4, *max_pool.output_shape((5, *image)))).astype(np.float32)
        if run == "layers":
            y, norm_cache = norm.forward(x, training=training)
            out, pool_cache = max_pool.forward(y)
            dy, _ = max_pool.backward(dout, pool_cache)
            dx, grads = norm.backward(dy, norm_cache)
        else:
            stage = BatchNormMaxPool(norm, max_pool)
            out, cache = stage.forward(x, training=training)
            assert (cache[2] is None) == negative
            dx, grads = stage.backward(dout, cache)
        results.append((out, dx, grads, {k: v.copy() for k, v in norm.buffers.items()}))
    (out_a, dx_a, grads_a, buffers_a), (out_b, dx_b, grads_b, buffers_b) = results
    np.testing.assert_array_equal(out_b, out_a)  # scale > 0: the same bits, pooled first
    for key in buffers_a:
        np.testing.assert_array_equal(buffers_b[key], buffers_a[key])
    np.testing.assert_allclose(dx_b, dx_a, rtol=1e-4, atol=1e-6)
    for key in grads_a:
        np.testing.assert_allclose(grads_b[key], grads_a[key], rtol=1e-5, atol=1e-5)


def test_batch_norm_stage_routes_ties_to_the_first_maximum() -> None:
    # Every window holds one value twice; the pooled gradient must go to its first position, as the layers do.
    rng = np.random.default_rng(13)
    top = rng.normal(size=(3, 5, 2, 4))
    x = np.repeat(top, 2, axis=2)  # rows duplicated: each 2x2 window has its maximum twice (at least)
    dout = rng.normal(size=(3, 5, 2, 2))
    norm, max_pool = norm_and_pool(rng, np.float64)
    y, norm_cache = norm.forward(x, training=True)
    _, pool_cache = max_pool.forward(y)
    dx_a, grads_a = norm.backward(max_pool.backward(dout, pool_cache)[0], norm_cache)
    stage = BatchNormMaxPool(norm, max_pool)
    _, cache = stage.forward(x, training=True)
    dx_b, grads_b = stage.backward(dout, cache)
    np.testing.assert_allclose(dx_b, dx_a, rtol=1e-12, atol=1e-12)
    for key in grads_a:
        np.testing.assert_allclose(grads_b[key], grads_a[key], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_stage_gradients_by_finite_differences(training) -> None:
    rng = np.random.default_rng(14)
    norm, max_pool = norm_and_pool(rng, np.float64, (2, 2), None)
    checks = check_layer(BatchNormMaxPool(norm, max_pool), rng.normal(size=(3, 5, 5, 4)), rng=rng, training=training)
    assert {check.name for check in checks} == {"weight", "bias", "x"}
    assert all(check.passed for check in checks), [str(c) for c in checks if not c.passed]


def fusable_cnn(rng: np.random.Generator, dtype) -> Sequential:
    layers = [Conv2d.create(1, 4, (3, 3), ReLU(), he_uniform, rng, dtype), MaxPool2d((2, 2)),
              Conv2d.create(4, FEW_CHANNELS + 1, (2, 2), ReLU(), he_uniform, rng, dtype), MaxPool2d((2, 2)),
              Flatten(), Dense.create((FEW_CHANNELS + 1), 3, Identity(), glorot_uniform, rng, dtype)]
    for layer in layers[:3:2]:
        layer.params["bias"][:] = rng.normal(size=layer.filters) * 0.1
    return Sequential(layers, input_shape=(1, 9, 9))  # 9 -> 7 -> 3 -> 2 -> 1: both pools leave pixels unread


def test_a_model_with_fused_stages_matches_its_layers_one_by_one() -> None:
    rng = np.random.default_rng(7)
    model = fusable_cnn(rng, np.float32)
    assert sum(isinstance(stage, ConvMaxPool) for _, stage in stages(model.layers)) == 2
    x, target = rng.normal(size=(6, 81)), rng.integers(0, 3, size=6)
    out, caches = model.forward(x, training=True)
    assert len(caches) == 4  # one per stage
    _, dout = CrossEntropy().value_and_grad(out, target)
    grads = model.backward(dout, caches)
    h, layer_caches = model._input(x), []
    for layer in model.layers:
        h, cache = layer.forward(h, training=True)
        layer_caches.append(cache)
    np.testing.assert_array_equal(out, h)
    np.testing.assert_array_equal(model.predict(x), h)
    d, expected = dout, {}
    for index in range(len(model.layers) - 1, -1, -1):
        d, layer_grads = model.layers[index].backward(d, layer_caches[index], need_dx=index > 0)
        expected.update({f"{index}.{name}": value for name, value in layer_grads.items()})
    assert grads.keys() == expected.keys() == model.parameters().keys()
    for key in grads:
        np.testing.assert_allclose(grads[key], expected[key], rtol=1e-5, atol=1e-6)


def test_a_model_with_fused_stages_by_finite_differences() -> None:
    rng = np.random.default_rng(8)
    model = fusable_cnn(rng, np.float64)
    checks = check_model(model, CrossEntropy(), rng.normal(size=(4, 81)), rng.integers(0, 3, size=4))
    assert {check.name for check in checks} >= {"0.weight", "0.bias", "2.weight", "2.bias", "5.weight"}
    assert all(check.passed for check in checks), [str(c) for c in checks if not c.passed]


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setattr(workers, "_TWO_THREADS", False)


def cnn_step(batch_norm: bool):
    """Outputs, dx-free gradients and running statistics of one training step of a small float32 CNN on
    images large enough (20x20, 16 filters) that the passes cross MIN_BYTES and are split."""
    rng = np.random.default_rng(9)
    layers = [Conv2d.create(1, 16, (3, 3), ReLU(), he_uniform, rng, np.float32)]
    layers += [BatchNorm.create(16, np.float32)] if batch_norm else []
    layers += [MaxPool2d((2, 2)), Conv2d.create(16, 16, (3, 3), ReLU(), he_uniform, rng, np.float32),
               MaxPool2d((2, 2)), Flatten(), Dense.create(16 * 3 * 3, 3, Identity(), glorot_uniform, rng, np.float32)]
    model = Sequential(layers, input_shape=(1, 20, 20))
    x, target = rng.normal(size=(64, 400)), rng.integers(0, 3, size=64)
    out, caches = model.forward(x, training=True)
    _, dout = CrossEntropy().value_and_grad(out, target)
    return out, model.backward(dout, caches), model.buffers()


@pytest.mark.parametrize("batch_norm", [False, True])
def test_the_second_thread_changes_no_bit(monkeypatch, batch_norm) -> None:
    assert 18 * 18 * 16 * 64 * 4 * 2 > workers.MIN_BYTES  # the first conv's output is split
    calls = []
    original = workers._Worker._run

    def counting(self):
        calls.append(1)
        original(self)

    monkeypatch.setattr(workers, "_TWO_THREADS", True)
    monkeypatch.setattr(workers, "_worker", None)
    monkeypatch.setattr(workers._Worker, "_run", counting)
    out_a, grads_a, buffers_a = cnn_step(batch_norm)
    assert calls  # a worker thread ran
    monkeypatch.setattr(workers, "_TWO_THREADS", False)
    monkeypatch.setattr(workers, "CHUNK_BYTES", 1 << 40)  # and one chunk per pass
    out_b, grads_b, buffers_b = cnn_step(batch_norm)
    np.testing.assert_array_equal(out_a, out_b)
    for key in grads_a:
        np.testing.assert_array_equal(grads_a[key], grads_b[key])
    for key in buffers_a:
        np.testing.assert_array_equal(buffers_a[key], buffers_b[key])


def test_split_covers_every_row_once_in_chunks_and_raises_the_workers_error(monkeypatch) -> None:
    monkeypatch.setattr(workers, "_TWO_THREADS", True)
    seen = np.zeros(101, dtype=int)

    def mark(start: int, stop: int) -> None:
        seen[start:stop] += 1

    workers.split(101, mark, workers.MIN_BYTES * 10, chunked=True)
    assert (seen == 1).all()

    def fail_in_first_half(start: int, stop: int) -> None:
        if start == 0:
            raise ValueError("bad rows")

    with pytest.raises(ValueError, match="bad rows"):
        workers.split(10, fail_in_first_half, workers.MIN_BYTES)
    workers.split(10, mark, workers.MIN_BYTES)  # the worker survived its error

    def outer(start: int, stop: int) -> None:
        for n in range(start, stop):
            workers.split(25, lambda c, d, n=n: mark(25 * n + c, 25 * n + d), workers.MIN_BYTES)

    seen[:] = 0
    workers.split(4, outer, workers.MIN_BYTES)
    assert (seen[:100] == 1).all()  # a split inside a split runs (no deadlock on the busy worker)


@pytest.mark.parametrize("two_threads", [True, False])
def test_a_small_pass_is_one_call_on_this_thread_and_a_large_one_alone_still_goes_in_chunks(two_threads, monkeypatch) -> None:
    monkeypatch.setattr(workers, "_TWO_THREADS", two_threads)
    calls: list[tuple[int, int, str]] = []

    def record(start: int, stop: int) -> None:
        calls.append((start, stop, threading.current_thread().name))

    here = threading.current_thread().name
    workers.split(7, record, workers.MIN_BYTES - 1, chunked=True)
    assert calls == [(0, 7, here)]
    calls.clear()
    workers.split(0, record, 100)
    assert calls == []  # no rows: no call
    workers.split(1, record, workers.CHUNK_BYTES * 4, chunked=True)  # one row: alone, one chunk
    assert calls == [(0, 1, here)]
    calls.clear()
    if not two_threads:  # alone with a large pass: consecutive chunks of ~CHUNK_BYTES, all on this thread
        workers.split(8, record, workers.CHUNK_BYTES * 4, chunked=True)
        assert calls == [(0, 2, here), (2, 4, here), (4, 6, here), (6, 8, here)]


def test_no_second_thread_when_the_process_is_limited_to_one(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert not workers.two_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0})
    assert not workers.two_threads()


def test_one_thread_blocks_keep_every_split_on_the_calling_thread(monkeypatch) -> None:
    """An MPI rank whose share of the cores is one (training/mpi_run.cores_shared) splits nothing."""
    monkeypatch.setattr(workers, "_TWO_THREADS", True)
    names: set[str] = set()

    def record(start: int, stop: int) -> None:
        names.add(threading.current_thread().name)

    here = threading.current_thread().name
    with workers.one_thread():
        with workers.one_thread():
            workers.split(10, record, workers.MIN_BYTES * 4)
        workers.split(10, record, workers.MIN_BYTES * 4)  # still inside the outer block
    assert names == {here}
    workers.split(10, record, workers.MIN_BYTES * 4)  # after it, the worker again
    assert names == {here, "sgdcli-worker"}
    with pytest.raises(RuntimeError), workers.one_thread():
        raise RuntimeError
    assert workers._one_thread == 0  # closed however the block ends
