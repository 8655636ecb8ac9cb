"""A large batch computed in chunks of rows (engine/accumulate.py) gives the whole batch's mean loss and
gradient, and the training loop uses it only where that holds, bit-identically across a resume."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config
from test_resume import assert_identical, interrupt

from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.engine import accumulate
from sgdcli.engine.activations import Identity, ReLU, Tanh
from sgdcli.engine.conv import Conv2d
from sgdcli.engine.gradients import as_array
from sgdcli.engine.init import glorot_uniform, he_normal
from sgdcli.engine.layers import Dense, Dropout, Flatten
from sgdcli.engine.losses import BinaryCrossEntropy, CrossEntropy, Huber, MeanAbsoluteError, MeanSquaredError
from sgdcli.engine.model import Sequential
from sgdcli.engine.normalization import BatchNorm
from sgdcli.engine.pooling import MaxPool2d
from sgdcli.runs import checkpoint


def mlp(dtype, inputs=6, hidden=9, outputs=3, dropout=False, seed=0) -> Sequential:
    rng = np.random.default_rng(seed)
    layers = [Dense.create(inputs, hidden, ReLU(), he_normal, rng, dtype)]
    if dropout:
        layers.append(Dropout(0.3))
    layers.append(Dense.create(hidden, outputs, Identity(), glorot_uniform, rng, dtype))
    return Sequential(layers)


def targets(loss, rows: int, outputs: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(loss, CrossEntropy):
        return rng.integers(0, outputs, rows)
    if isinstance(loss, BinaryCrossEntropy):
        return (rng.random((rows, outputs)) < 0.5).astype(np.float64)
    return rng.normal(size=(rows, outputs))


def whole(model, loss, x, y, rng=None):
    outputs, caches = model.forward(x, training=True, rng=rng)
    value, dout = loss.value_and_grad(outputs, y)
    return value, {key: as_array(g) for key, g in model.backward(dout, caches, factored=True).items()}


def chunks(model, loss, x, y, rows, rng=None):
    into = {key: np.full_like(p, np.nan) for key, p in model.parameters().items()}  # contents must not matter
    return accumulate.value_and_gradients(model, loss, x, y, rng, into, chunk_rows=rows), into


LOSSES = [CrossEntropy(), MeanSquaredError(), MeanAbsoluteError(), Huber(0.5), BinaryCrossEntropy()]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: type(loss).__name__)
@pytest.mark.parametrize("rows", [1, 4, 7, 23, 64])
def test_chunks_give_the_whole_batch_mean_loss_and_gradient(loss, rows):
    rng = np.random.default_rng(1)
    model = mlp(np.float64)
    x = rng.normal(size=(23, 6))
    y = targets(loss, 23, 3, rng)
    value, grads = whole(model, loss, x, y)
    chunk_value, chunk_grads = chunks(model, loss, x, y, rows)
    assert chunk_value == pytest.approx(value, rel=1e-12)
    for key, grad in grads.items():
        np.testing.assert_allclose(chunk_grads[key], grad, rtol=1e-10, atol=1e-14, err_msg=key)


@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-10), (np.float32, 2e-5)])
def test_a_weight_large_enough_for_blas_is_summed_by_gemm_into_the_target(dtype, tolerance):
    # 256 x 128 = 32768 weights: backward gives BatchProduct / OuterProduct factors (gradients.py),
    # which the chunks write and add straight into `into`, including a last chunk of one row.
    rng = np.random.default_rng(2)
    model = mlp(dtype, inputs=256, hidden=128, outputs=4)
    x = rng.normal(size=(41, 256)).astype(dtype)
    y = rng.integers(0, 4, 41)
    loss = CrossEntropy()
    value, grads = whole(model, loss, x, y)
    chunk_value, chunk_grads = chunks(model, loss, x, y, 8)  # 5 chunks of 8 and one of 1
    assert chunk_value == pytest.approx(value, rel=tolerance)
    for key, grad in grads.items():
        assert chunk_grads[key].dtype == dtype
        np.testing.assert_allclose(chunk_grads[key], grad, rtol=tolerance, atol=tolerance * np.abs(grad).max(), err_msg=key)


def test_a_conv_model_is_chunked_too():
    rng = np.random.default_rng(3)
    model = Sequential([Conv2d.create(1, 3, (3, 3), ReLU(), he_normal, rng, np.float64), MaxPool2d((2, 2)), Flatten(),
                        Dense.create(27, 4, Tanh(), he_normal, rng, np.float64),
                        Dense.create(4, 3, Identity(), glorot_uniform, rng, np.float64)], input_shape=(1, 8, 8))
    x = rng.normal(size=(13, 64))
    y = rng.integers(0, 3, 13)
    value, grads = whole(model, CrossEntropy(), x, y)
    chunk_value, chunk_grads = chunks(model, CrossEntropy(), x, y, 5)
    assert chunk_value == pytest.approx(value, rel=1e-12)
    for key, grad in grads.items():
        np.testing.assert_allclose(chunk_grads[key], grad, rtol=1e-10, atol=1e-14, err_msg=key)


def two_dropout_layers(seed=0) -> Sequential:
    rng = np.random.default_rng(seed)
    return Sequential([Dense.create(6, 9, ReLU(), he_normal, rng, np.float64), Dropout(0.3),
                       Dense.create(9, 5, Tanh(), he_normal, rng, np.float64), Dropout(0.5),
                       Dense.create(5, 3, Identity(), glorot_uniform, rng, np.float64)])


@pytest.mark.parametrize("generator", [np.random.PCG64, np.random.PCG64DXSM])
def test_every_dropout_layer_draws_the_whole_batch_masks(generator):
    # The chunks' draws are taken from where one draw per layer over the whole batch puts them, so two
    # dropout layers (whose draws interleave chunk by chunk) still get the whole batch's masks.
    rng = np.random.default_rng(6)
    model = two_dropout_layers()
    x, y = rng.normal(size=(30, 6)), rng.integers(0, 3, 30)
    first, second = np.random.Generator(generator(11)), np.random.Generator(generator(11))
    value, grads = whole(model, CrossEntropy(), x, y, first)
    chunk_value, chunk_grads = chunks(model, CrossEntropy(), x, y, 7, second)
    assert chunk_value == pytest.approx(value, rel=1e-12)
    for key, grad in grads.items():
        np.testing.assert_allclose(chunk_grads[key], grad, rtol=1e-10, atol=1e-14, err_msg=key)
    assert first.bit_generator.state == second.bit_generator.state
    assert first.random() == second.random()


def test_one_dropout_layer_draws_the_whole_batch_masks_with_a_generator_that_cannot_skip():
    rng = np.random.default_rng(4)
    model = mlp(np.float64, dropout=True)
    x, y = rng.normal(size=(30, 6)), rng.integers(0, 3, 30)
    first, second = np.random.Generator(np.random.MT19937(9)), np.random.Generator(np.random.MT19937(9))
    value, grads = whole(model, CrossEntropy(), x, y, first)
    chunk_value, chunk_grads = chunks(model, CrossEntropy(), x, y, 7, second)
    assert chunk_value == pytest.approx(value, rel=1e-12)
    for key, grad in grads.items():
        np.testing.assert_allclose(chunk_grads[key], grad, rtol=1e-10, atol=1e-14, err_msg=key)
    assert np.array_equal(first.random(5), second.random(5))  # the generators went on from the same place


def test_a_batch_norm_model_takes_its_batch_whole():
    rng = np.random.default_rng(5)
    model = Sequential([Dense.create(4, 6, Identity(), he_normal, rng, np.float64), BatchNorm.create(6, np.float64),
                        Dense.create(6, 2, Identity(), glorot_uniform, rng, np.float64)])
    assert not model.per_sample and mlp(np.float64).per_sample
    assert not accumulate.chunked(model, 10**6) and accumulate.chunked(mlp(np.float64), accumulate.CHUNK_ROWS + 1)
    assert not accumulate.chunked(mlp(np.float64), accumulate.CHUNK_ROWS)
    into = {key: np.empty_like(p) for key, p in model.parameters().items()}
    with pytest.raises(ValueError, match="batch norm"):
        accumulate.value_and_gradients(model, CrossEntropy(), rng.normal(size=(8, 4)), rng.integers(0, 2, 8), None, into)


def full_batch_config(layers=None, optimizer=None, epochs=3):
    changes = {"training__batch__mode": "full", "training__epochs": epochs}
    if layers is not None:
        changes["model__layers"] = layers
    if optimizer is not None:
        changes["optimizer"] = optimizer
    return load_config(tiny_config(**changes))


def test_the_loop_chunks_a_large_batch_and_trains_as_the_whole_batch(tmp_path, monkeypatch):
    config = full_batch_config()
    whole_run = api.train(config, runs_dir=tmp_path / "whole")
    calls = []
    original = accumulate.value_and_gradients

    def spy(model, loss, x, *args, **kwargs):
        calls.append(len(x))
        return original(model, loss, x, *args, **kwargs)

    monkeypatch.setattr(accumulate, "CHUNK_ROWS", 16)
    monkeypatch.setattr(accumulate, "value_and_gradients", spy)
    chunked_run = api.train(config, runs_dir=tmp_path / "chunked")
    assert calls == [90, 90, 90]  # every full-batch update (90 training rows, 3 epochs)
    whole_weights = loop_weights(whole_run.run_dir)
    chunk_weights = loop_weights(chunked_run.run_dir)
    for key, w in whole_weights.items():
        np.testing.assert_allclose(chunk_weights[key], w, rtol=1e-5, atol=1e-6, err_msg=key)


def loop_weights(run_dir):
    return checkpoint.load(run_dir / "checkpoints" / "last.safetensors").params


def test_a_chunked_run_resumes_bit_identically(tmp_path, monkeypatch):
    monkeypatch.setattr(accumulate, "CHUNK_ROWS", 16)
    layers = [{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dropout", "rate": 0.2},
              {"type": "dense", "units": 2}]
    config = full_batch_config(layers, {"type": "adam", "learning_rate": 0.01}, epochs=5)
    reference = api.train(config, runs_dir=tmp_path / "reference")
    stopped = interrupt(config, tmp_path / "runs", 2)
    assert stopped.status == "interrupted"
    resumed = api.resume(stopped.run_dir)
    assert_identical(reference.run_dir, resumed.run_dir)


def test_the_loop_keeps_a_batch_norm_batch_whole(monkeypatch, tmp_path):
    monkeypatch.setattr(accumulate, "CHUNK_ROWS", 16)
    monkeypatch.setattr(accumulate, "value_and_gradients", lambda *a, **k: pytest.fail("batch norm was chunked"))
    layers = [{"type": "dense", "units": 8}, {"type": "batch_norm"}, {"type": "activation", "function": "relu"},
              {"type": "dense", "units": 2}]
    assert api.train(full_batch_config(layers), runs_dir=tmp_path).status == "completed"


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("shares_memory", [True, False], ids=["shared-memory", "messages"])
def test_data_parallel_ranks_chunk_their_shards_and_train_as_one_process(monkeypatch, size, shares_memory):
    # 98 training rows in chunks of 8: every shard is chunked, with two dropout layers whose masks must
    # be the whole batch's rows (each rank's chunks take theirs from the batch's place in the stream).
    from test_parallel import config, run_ranks, train

    monkeypatch.setattr(accumulate, "CHUNK_ROWS", 8)
    calls = []
    original = accumulate.value_and_gradients
    monkeypatch.setattr(accumulate, "value_and_gradients", lambda *a, **k: calls.append(len(a[2])) or original(*a, **k))
    experiment = config(training__batch={"mode": "full"}, model__layers=[
        {"type": "dense", "units": 8, "activation": "tanh"}, {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 6, "activation": "relu"}, {"type": "dropout", "rate": 0.5}, {"type": "dense", "units": 2}])
    alone, position = train(experiment)
    assert calls == [98] * 3
    results = run_ranks(size, lambda rank, comm: train(experiment, comm), shares_memory=shares_memory)
    assert sorted(calls[3:]) == sorted([len(part) for part in np.array_split(np.arange(98), size)] * 3)
    for params, ranked in results:
        assert ranked.updates == position.updates
        for name, value in alone.items():
            np.testing.assert_allclose(params[name], value, rtol=1e-12, atol=1e-14, err_msg=name)


def test_the_memory_estimate_counts_a_chunk_of_a_large_batch_unless_batch_norm_needs_it_whole():
    from sgdcli.training import memory

    dense = load_config(tiny_config(model__layers=[{"type": "dense", "units": 8}, {"type": "dense", "units": 3}]))
    # float32 floats per row: the input 4, outputs 8 and 3, dout and dx of the widest 2 * 8; 31 in all
    rows = accumulate.CHUNK_ROWS

    def estimate(model, batch, chunks=True):
        return memory.estimate(model, 4, batch, dense.optimizer, chunks=chunks)

    small, large = estimate(dense.model, rows), estimate(dense.model, 10 * rows)
    assert (small.activations, small.batch, small.chunk) == (31 * 4 * rows, rows, False)
    # a large batch: its input rows (gathered whole when shuffled), the other 27 floats a chunk's rows
    assert (large.activations, large.batch, large.chunk) == ((4 * 10 * rows + 27 * rows) * 4, rows, True)
    assert f"activations of a {rows}-sample chunk of each batch" in large.describe()
    whole = estimate(dense.model, 10 * rows, chunks=False)  # a command that passes the batch whole (gradcheck)
    assert (whole.activations, whole.chunk) == (31 * 4 * 10 * rows, False)
    normed = load_config(tiny_config(model__layers=[{"type": "dense", "units": 8}, {"type": "batch_norm"},
                                                    {"type": "dense", "units": 3}]))
    whole_batch = estimate(normed.model, 10 * rows)
    assert (whole_batch.batch, whole_batch.chunk) == (10 * rows, False)
    assert f"activations of a batch of {10 * rows} samples" in whole_batch.describe()


def test_training_plans_for_chunks_and_gradcheck_for_the_whole_batch(monkeypatch, tmp_path):
    from sgdcli.training import memory

    seen = []
    original = memory.estimate

    def spy(*args, **kwargs):
        seen.append(args[6] if len(args) > 6 else kwargs.get("chunks", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(memory, "estimate", spy)
    config = full_batch_config(epochs=1)
    api.train(config, runs_dir=tmp_path / "runs")
    assert seen[-1] is True
    api.gradcheck(config, samples=8)
    assert seen[-1] is False


def test_lr_find_takes_a_large_batch_in_chunks_as_training_does(monkeypatch, tmp_path):
    monkeypatch.setattr(accumulate, "CHUNK_ROWS", 16)
    calls = []
    original = accumulate.value_and_gradients
    monkeypatch.setattr(accumulate, "value_and_gradients", lambda *a, **k: calls.append(len(a[2])) or original(*a, **k))
    api.lr_find(full_batch_config(), updates=5, out=tmp_path)
    assert calls == [90] * 5
