"""The sharded update (ZeRO stage 1): each rank steps one slice of the weights and of the optimizer
state; the weights, the whole optimizer state in checkpoints, the divergence verdict and the failure
protocol must be exactly a single process's (ranks as threads, the fake communicator of test_parallel)."""

from __future__ import annotations

import numpy as np
import pytest

from sgdcli.engine.optimizers import Adam
from sgdcli.errors import DivergenceError
from sgdcli.training import loop
from sgdcli.training.loop import Interrupted, Position, train_epochs
from sgdcli.training.parallel import DataParallel, PeerFailed, QuietExit, exit_code
from sgdcli.training.session import _build
from sgdcli.training.sharding import FlatLayout, ShardedOptimizer
from sgdcli.training.track import LayerTracker
from test_parallel import config, run_ranks

OPTIMIZERS = {
    "sgd": {"type": "sgd", "learning_rate": 0.1},
    "sgd-nesterov-l2": {"type": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    "adagrad": {"type": "adagrad", "learning_rate": 0.1},
    "rmsprop-momentum": {"type": "rmsprop", "learning_rate": 0.01, "momentum": 0.5},
    "adam-l2": {"type": "adam", "learning_rate": 0.01, "weight_decay": 0.001},
    "adamw": {"type": "adamw", "learning_rate": 0.01},
}


def run(experiment, comm=None, shard_update=True, stop_after=None, start=None):
    """Train `experiment` (on `comm`'s ranks), stopping after `stop_after` updates if given, or going on
    from `start` (what a checkpoint holds); returns what a checkpoint would hold, and the layer
    statistics of `training.track` per epoch."""
    _, problem, rngs = _build(experiment, experiment.training.epochs)
    should_stop = None
    if stop_after is not None:
        should_stop = lambda: position.updates >= stop_after  # noqa: E731 - position is bound below
    if comm is not None:
        data_parallel = DataParallel(comm, shard_update)
        data_parallel.attach(experiment, problem)
        should_stop = data_parallel.watch(should_stop)
    position, rows = Position(), []
    tracker = LayerTracker(experiment.training.track, problem.model.parameters(), problem.updates_per_epoch)
    if start is not None:
        problem.model.load_parameters(start["params"])
        problem.optimizer.load_state_dict(start["optimizer"], problem.model.parameters())
        position = Position(**start["position"])
        rngs.shuffle.bit_generator.state, rngs.dropout.bit_generator.state = start["rngs"]
    try:
        for _ in train_epochs(problem, position, experiment.training.epochs, rngs.shuffle, rngs.dropout,
                              should_stop=should_stop, observer=tracker if tracker.statistics else None):
            rows.append(tracker.epoch_row(problem.model.parameters()))
    except Interrupted:
        pass
    return {"params": {k: v.copy() for k, v in problem.model.state_dict().items()},
            "optimizer": problem.optimizer.state_dict(), "position": position.to_dict(),
            "rngs": (rngs.shuffle.bit_generator.state, rngs.dropout.bit_generator.state), "problem": problem,
            "rows": rows}


def assert_close(state, expected):
    for part in ("params", "optimizer"):
        assert state[part].keys() == expected[part].keys()
        for name, value in expected[part].items():
            assert state[part][name].shape == value.shape, name
            np.testing.assert_allclose(state[part][name], value, rtol=1e-12, atol=1e-14, err_msg=name)


def assert_identical(state, expected):
    for part in ("params", "optimizer"):
        assert state[part].keys() == expected[part].keys()
        assert all(np.array_equal(state[part][k], v) for k, v in expected[part].items())


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS), ids=list(OPTIMIZERS))
def test_sharded_ranks_end_with_one_process_weights_and_optimizer_state(size, optimizer):
    # 2-8-2 network: 42 values, slices of 32 (P = 2) or 16 (P = 3): layer 0's weight is cut between
    # ranks 0 and 1 (P = 2) or 0, 1 and 2 (P = 3), and the last rank also holds padding
    experiment = config(optimizer=OPTIMIZERS[optimizer])
    alone = run(experiment)
    sharded = run_ranks(size, lambda rank, comm: run(experiment, comm))
    replicated = run_ranks(size, lambda rank, comm: run(experiment, comm, shard_update=False))
    again = run_ranks(size, lambda rank, comm: run(experiment, comm))
    messages = run_ranks(size, lambda rank, comm: run(experiment, comm), shares_memory=False)  # across machines
    assert all(isinstance(state["problem"].optimizer, ShardedOptimizer) for state in sharded)
    assert all(state["problem"].parallel.rows is not None for state in sharded)
    assert all(state["problem"].parallel.rows is None for state in messages)
    assert alone["optimizer"]["iterations"] == 3 * 7
    for state in sharded:
        assert state["position"] == alone["position"] | {"loss_sum": state["position"]["loss_sum"]}
        assert_close(state, alone)
    for state, other, repeat in zip(sharded, replicated, again):  # every rank: the same bits
        assert_identical(state, sharded[0])
        assert_identical(state, other)  # sharded = replicated, bit for bit
        assert_identical(state, repeat)  # and every run the same
    for state in messages:  # gradients sent as messages = gradients read from shared memory
        assert_identical(state, sharded[0])


@pytest.mark.parametrize("track,sharded", [(["weight_norm", "update_ratio"], True), (["grad_norm"], False)])
def test_layer_statistics_are_one_process_statistics(track, sharded):
    # update_ratio reads the whole weights before and after a step: every rank holds them, so the update
    # stays sharded; grad_norm needs the whole gradient on every rank: the update is not sharded
    experiment = config(optimizer=OPTIMIZERS["adam-l2"], training__track=track)
    alone = run(experiment)
    for state in run_ranks(2, lambda rank, comm: run(experiment, comm)):
        assert isinstance(state["problem"].optimizer, ShardedOptimizer) == sharded
        assert_close(state, alone)
        assert len(state["rows"]) == 3 and state["rows"][0].keys() == alone["rows"][0].keys()
        for row, expected in zip(state["rows"], alone["rows"]):
            for column, value in expected.items():
                assert row[column] == pytest.approx(value, rel=1e-12), column


def test_each_rank_keeps_the_optimizer_state_of_its_slice_only():
    experiment = config(optimizer=OPTIMIZERS["adam-l2"], model__layers=[
        {"type": "dense", "units": 30, "activation": "tanh"}, {"type": "dense", "units": 2}])  # 152 values
    states = run_ranks(3, lambda rank, comm: run(experiment, comm))
    held = []
    for state in states:
        inner = state["problem"].optimizer.optimizer  # the process's own Adam
        assert isinstance(inner, Adam)
        held.append(sum(array.size for name, array in inner.state_dict().items() if name.startswith("first_moment/")))
    assert held == [64, 64, 24]  # slices of 64 values (152 / 3 rounded up to 16s); the rest is padding
    weights = states[0]["problem"].model.parameters()
    flat = states[0]["problem"].parallel.weights
    assert all(np.shares_memory(array, flat) for array in weights.values())  # the allgather writes them in place


@pytest.mark.parametrize("shares_memory", [True, False], ids=["shared memory", "messages"])
def test_a_mid_epoch_checkpoint_holds_the_whole_state_and_resuming_is_bit_identical(shares_memory):
    experiment = config(optimizer=OPTIMIZERS["rmsprop-momentum"])
    straight = run_ranks(3, lambda rank, comm: run(experiment, comm))
    # a rank's stop request travels with the next update: asked after update 9, all stop after update 10
    stopped = run_ranks(3, lambda rank, comm: run(experiment, comm, stop_after=9), shares_memory)  # epoch 2, 3 of 7
    alone = run(experiment, stop_after=10)
    assert stopped[0]["position"]["updates"] == 10 and stopped[0]["position"]["batch"] == 3
    assert_close(stopped[0], alone)  # the whole state, shaped as the parameters
    checkpoint = stopped[0]  # what rank 0 writes; every rank resumes from it
    resumed = run_ranks(3, lambda rank, comm: run(experiment, comm, start=checkpoint), shares_memory)
    for state in resumed:
        assert_identical(state, straight[0])


def test_a_stale_sharded_state_is_never_handed_out():
    experiment = config(optimizer=OPTIMIZERS["adam-l2"])
    state = run_ranks(2, lambda rank, comm: run(experiment, comm))[0]
    optimizer = state["problem"].optimizer
    optimizer.optimizer.iterations += 1  # as if a step had been taken without gathering the state
    with pytest.raises(RuntimeError, match="gathered after update 21"):
        optimizer.state_dict()


def test_a_bad_whole_state_is_refused_and_changes_nothing():
    experiment = config(optimizer=OPTIMIZERS["adam-l2"])
    state = run_ranks(2, lambda rank, comm: run(experiment, comm))[0]
    optimizer, good = state["problem"].optimizer, state["optimizer"]
    bad = dict(good, **{"first_moment/0.weight": good["first_moment/0.weight"][:1]})
    with pytest.raises(ValueError, match="first_moment/0.weight has shape"):
        optimizer.load_state_dict(bad, state["problem"].model.parameters())
    assert_identical({"params": {}, "optimizer": optimizer.state_dict()}, {"params": {}, "optimizer": good})


@pytest.mark.parametrize("size", [2, 3])
def test_divergence_is_found_alike_by_every_rank_and_by_one_process(size):
    experiment = config(optimizer={"type": "sgd", "learning_rate": 1e30, "momentum": 0.9}, model__layers=[
        {"type": "dense", "units": 8, "activation": "relu"}, {"type": "dense", "units": 2}])
    with pytest.raises(DivergenceError) as alone, np.errstate(all="ignore"):
        run(experiment)
    assert "update 7: the loss is nan" in alone.value.message
    def work(rank, comm):
        with np.errstate(all="ignore"):  # per thread
            return run(experiment, comm)

    for result in run_ranks(size, work):
        assert isinstance(result, DivergenceError) and result.message == alone.value.message


@pytest.mark.parametrize("values,expected", [
    ({1: np.inf}, ("1.weight", False)),  # one entry of rank 1's piece: not finite
    ({0: 1e154, 1: 1e154}, ("1.weight", True)),  # each piece's sum of squares finite, their sum overflows
    ({0: np.nan}, ("1.weight", False)),
    ({}, None),
])
def test_the_sharded_check_is_the_whole_gradients_check(values, expected):
    # 2-8-2 network, 42 values on 2 ranks: slices of 32, so 1.weight (16 values) is cut 8 + 8 between them
    experiment = config()

    def work(rank, comm):
        _, problem, _ = _build(experiment, 3)
        data_parallel = DataParallel(comm)
        data_parallel.attach(experiment, problem)
        whole = {key: np.full(p.shape, 0.5) for key, p in problem.model.parameters().items()}
        layout = FlatLayout(whole, comm.size)
        for owner, value in values.items():  # rank 0's last value of 1.weight, rank 1's first
            piece = layout.pieces(owner)[-1 if owner == 0 else 0]
            assert piece.key == "1.weight"
            whole["1.weight"].reshape(-1)[piece.inner.stop - 1 if owner == 0 else piece.inner.start] = value
        for piece in layout.pieces(rank):
            data_parallel.grads[piece.key][...] = whole[piece.key].reshape(-1)[piece.inner]
        with np.errstate(over="ignore", invalid="ignore"):
            return data_parallel.nonfinite(data_parallel.grads), loop.nonfinite(whole)

    for found, whole in run_ranks(2, work):
        assert found == whole == expected


def _fail_during(phase_method: str):
    """A rank-1 failure inside the 4th update, in `phase_method` of DataParallel (before its collective),
    handled as mpi_run does: `finish` with the error's exit status."""
    def work(rank, comm):
        experiment = config(optimizer=OPTIMIZERS["adam-l2"])
        _, problem, rngs = _build(experiment, 3)
        data_parallel = DataParallel(comm)
        data_parallel.attach(experiment, problem)
        if rank == 1:
            target, name = {"backward": (problem.model, "backward"), "nonfinite": (data_parallel, "nonfinite"),
                            "step": (data_parallel.optimizer.optimizer, "step")}[phase_method]
            plain, calls = getattr(target, name), [0]

            def broken(*args, **kwargs):
                calls[0] += 1
                if calls[0] == 4:
                    raise MemoryError("simulated")
                return plain(*args, **kwargs)
            setattr(target, name, broken)
        try:
            for _ in train_epochs(problem, Position(), 3, rngs.shuffle, rngs.dropout):
                pass
        except (PeerFailed, QuietExit):
            raise
        except BaseException as exc:
            data_parallel.finish(exit_code(exc))
            raise
        data_parallel.finish(0)
        return "completed"
    return work


@pytest.mark.parametrize("shares_memory", [True, False], ids=["shared memory", "messages"])
@pytest.mark.parametrize("phase_method", ["backward", "nonfinite", "step"])
def test_a_rank_failing_mid_update_stops_the_others_instead_of_leaving_them_waiting(phase_method, shares_memory):
    rank_0, rank_1 = run_ranks(2, _fail_during(phase_method), shares_memory)
    assert isinstance(rank_1, MemoryError)
    assert isinstance(rank_0, PeerFailed) and rank_0.exit_code == 1 and "MPI process 1" in rank_0.message


@pytest.mark.parametrize("shares_memory", [True, False], ids=["shared memory", "messages"])
def test_a_float32_sharded_update_keeps_every_buffer_and_state_float32(shares_memory):
    experiment = config(model__dtype="float32", optimizer=OPTIMIZERS["adam-l2"])
    for state in run_ranks(3, lambda rank, comm: run(experiment, comm), shares_memory):
        data_parallel, optimizer = state["problem"].parallel, state["problem"].optimizer
        shared = {"gradient rows": data_parallel.rows} if shares_memory else {}
        arrays = {"send": data_parallel.send, "received": data_parallel.received, "total": data_parallel.total, **shared,
                  "norms": data_parallel.all_norms, "weights": data_parallel.weights,
                  **{f"own state {k}": v for k, v in optimizer.optimizer.state_dict().items() if k != "iterations"},
                  **{f"whole state {k}": v for k, v in state["optimizer"].items() if k != "iterations"}}
        assert {name: str(array.dtype) for name, array in arrays.items() if array.dtype != np.float32} == {}
