"""Data-parallel training's maths without MPI: shards, the ordered sum, and P ranks as threads that
share a fake communicator, against one process (the same code path mpiexec runs, minus the transport)."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest

from conftest import REPO, tiny_config
from sgdcli.config.loading import load_config
from sgdcli.engine import metrics
from sgdcli.errors import ConfigError
from sgdcli.training import communicator, parallel
from sgdcli.training.loop import Interrupted, Position, train_epochs
from sgdcli.training.parallel import DataParallel, PeerFailed, QuietExit
from sgdcli.training.sharding import ordered_sum, shard
from sgdcli.training.session import _build


class Hub:
    """What the ranks of one fake world share: a barrier and one slot per rank; `shares_memory`: whether
    `shared` grants memory (ranks on one machine) or not (ranks on several)."""

    def __init__(self, size: int, shares_memory: bool = True) -> None:
        self.size, self.barrier, self.slots = size, threading.Barrier(size, timeout=20), [None] * size
        self.calls: dict[str, int] = {}
        self.shares_memory, self.memory = shares_memory, None


class FakeComm:
    """MPI's collectives on threads. Every rank must call the same collective with the same shape at
    the same time, as MPI requires: a mismatch raises on every rank (MPI would fail or hang)."""

    def __init__(self, hub: Hub, rank: int) -> None:
        self.hub, self.rank, self.size = hub, rank, hub.size

    def _exchange(self, kind: str, data: np.ndarray) -> list[np.ndarray]:
        self.hub.slots[self.rank] = (kind, data.shape, data.dtype, data.copy())
        self.hub.barrier.wait()
        slots = list(self.hub.slots)
        if self.rank == 0:
            self.hub.calls[kind] = self.hub.calls.get(kind, 0) + 1
        self.hub.barrier.wait()
        if len({slot[:3] for slot in slots}) != 1:
            raise AssertionError(f"ranks called different collectives: {[slot[:3] for slot in slots]}")
        return [slot[3] for slot in slots]

    def allgather(self, send: np.ndarray, out: np.ndarray) -> None:
        out[...] = np.stack(self._exchange("allgather", send))

    def allgather_slices(self, buffer: np.ndarray) -> None:
        buffer[...] = np.stack([whole[rank] for rank, whole in enumerate(self._exchange("allgather_slices", buffer))])

    def alltoall(self, send: np.ndarray, out: np.ndarray) -> None:
        for rank, whole in enumerate(self._exchange("alltoall", send)):
            if rank != self.rank:  # as MpiCommunicator: a rank's own row is not sent
                out[rank] = whole[self.rank]

    def broadcast(self, data: bytes | None) -> bytes:
        raise AssertionError("not used by the loop")

    def shared(self, shape: tuple[int, ...], dtype) -> np.ndarray | None:
        self._exchange("shared", np.array(shape))  # a collective: every rank asks for the same shape
        if not self.hub.shares_memory:
            return None
        if self.rank == 0:
            self.hub.memory = np.zeros(shape, dtype)
        self.hub.barrier.wait()
        memory = self.hub.memory
        self.hub.barrier.wait()
        return memory

    def fence(self) -> None:
        """Threads see each other's writes after any barrier."""

    def barrier(self) -> None:
        self._exchange("barrier", np.zeros(0))


def run_ranks(size: int, work, shares_memory: bool = True) -> list:
    """work(rank, comm) on `size` threads; their results (or the exceptions they raised) in rank order.
    `shares_memory`: the ranks are on one machine (the sharded update's gradients in shared memory)."""
    hub = Hub(size, shares_memory)
    results: list = [None] * size

    def target(rank: int) -> None:
        try:
            results[rank] = work(rank, FakeComm(hub, rank))
        except BaseException as exc:  # noqa: BLE001 - handed back to the test (a rank left waiting times out)
            results[rank] = exc

    threads = [threading.Thread(target=target, args=(rank,)) for rank in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def config(**changes):
    base = {"model__dtype": "float64", "data__samples": 130, "training__epochs": 3}  # 97 training rows: a last batch of 1
    return load_config(tiny_config(**{**base, **changes}))


def train(experiment, comm=None, epochs=None, should_stop=None):
    _, problem, rngs = _build(experiment, experiment.training.epochs)
    if comm is not None:
        data_parallel = DataParallel(comm)
        data_parallel.attach(experiment, problem)
        should_stop = data_parallel.watch(should_stop)
    position = Position()
    for _ in train_epochs(problem, position, epochs or experiment.training.epochs, rngs.shuffle, rngs.dropout,
                          should_stop=should_stop):
        pass
    return {k: v.copy() for k, v in problem.model.parameters().items()}, position


@pytest.mark.parametrize("count,size", [(10, 3), (7, 2), (2, 3), (1, 4), (512, 2), (1000, 7)])
def test_shards_are_contiguous_in_rank_order_and_differ_by_at_most_one_row(count, size):
    bounds = [shard(count, size, rank) for rank in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    lengths = [hi - lo for lo, hi in bounds]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)
    assert lengths == [len(part) for part in np.array_split(np.arange(count), size)]


def test_ten_rows_on_three_ranks_are_four_three_three():
    assert [shard(10, 3, rank) for rank in range(3)] == [(0, 4), (4, 7), (7, 10)]


def test_ordered_sum_adds_rank_0_first_then_1_then_2():
    # 1e16 + 1 rounds back to 1e16, so the order shows: (1e16 + 1) - 1e16 = 0, but (1e16 - 1e16) + 1 = 1
    rows = np.array([[1e16], [1.0], [-1e16]])
    assert ordered_sum(rows, np.empty(1))[0] == 0.0
    assert ordered_sum(rows[[0, 2, 1]], np.empty(1))[0] == 1.0
    many = np.random.default_rng(0).standard_normal((5, 1000)) * 10.0 ** np.arange(5)[:, None]
    expected = (((many[0] + many[1]) + many[2]) + many[3]) + many[4]
    assert np.array_equal(ordered_sum(many, np.empty(1000)), expected)


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("changes", [
    {},
    {"model__layers": [{"type": "dense", "units": 8, "activation": "tanh"}, {"type": "dropout", "rate": 0.3},
                       {"type": "dense", "units": 2}]},
    {"optimizer": {"type": "adam", "learning_rate": 0.01, "clip_norm": 0.5}},
    {"training__batch": {"mode": "full"}},
], ids=["sgd-momentum", "dropout", "adam-clipped", "full-batch"])
def test_ranks_train_the_weights_one_process_trains(size, changes):
    experiment = config(**changes)
    alone, position = train(experiment)
    results = run_ranks(size, lambda rank, comm: train(experiment, comm))
    for params, ranked_position in results:
        assert ranked_position.updates == position.updates and ranked_position.samples == position.samples
        for name, value in alone.items():
            np.testing.assert_allclose(params[name], value, rtol=1e-12, atol=1e-14)
        assert abs(ranked_position.loss_sum - position.loss_sum) <= 1e-12 * abs(position.loss_sum)
    for params, _ in results[1:]:  # every rank holds the same weights, bit for bit
        assert all(np.array_equal(params[name], results[0][0][name]) for name in params)


def test_an_empty_shard_of_a_conv_network_keeps_every_rank_in_step():
    # 1,797 digits in batches of 1,796: the last batch is 1 row, so rank 1's shard is empty
    experiment = load_config({
        "name": "cnn", "seed": 0, "data": {"source": "csv", "path": str(REPO / "data" / "digits.csv"),
                                           "target": "digit", "validation": 0, "sample_shape": [1, 8, 8]},
        "model": {"dtype": "float64", "layers": [
            {"type": "conv2d", "filters": 3, "kernel_size": 3, "activation": "relu"}, {"type": "flatten"},
            {"type": "dropout", "rate": 0.3}, {"type": "dense", "units": 10}]},
        "loss": {"type": "cross_entropy"}, "optimizer": {"type": "sgd", "learning_rate": 0.1},
        "training": {"epochs": 2, "batch": {"mode": "minibatch", "size": 1796}}})
    alone, position = train(experiment)
    for params, ranked_position in run_ranks(2, lambda rank, comm: train(experiment, comm)):
        assert ranked_position.updates == position.updates == 4
        for name, value in alone.items():
            np.testing.assert_allclose(params[name], value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("changes,shares_memory,expected", [
    # sharded on one machine: the gradients in shared memory (asked for once), an allgather of the loss
    # sums, one of the slices' norms (divergence check), a barrier before reading the updated weight
    # slices there; after each epoch's last update the optimizer state is gathered (3 epochs)
    ({}, True, {"shared": 1, "allgather": 2 * 21, "barrier": 21, "allgather_slices": 3}),
    # sharded across machines: the gradient slices (and loss sums) by alltoall, the weights by allgather
    ({}, False, {"shared": 1, "alltoall": 21, "allgather": 21, "allgather_slices": 21 + 3}),
    # clipping needs the whole gradient everywhere: one allgather of every gradient, nothing else
    ({"optimizer": {"type": "sgd", "learning_rate": 0.1, "clip_norm": 1.0}}, True, {"allgather": 21}),
], ids=["sharded, shared memory", "sharded, messages", "replicated"])
def test_collectives_per_update(changes, shares_memory, expected):
    hub_calls = []

    def work(rank, comm):
        result = train(config(**changes), comm)
        hub_calls.append(comm.hub.calls)
        return result

    (_, position), _ = run_ranks(2, work, shares_memory)
    assert position.updates == 3 * 7  # 97 rows in batches of 16: 7 updates an epoch
    assert hub_calls[0] == expected


def test_a_stop_seen_by_one_rank_stops_every_rank_after_the_same_update():
    seen = {"calls": 0}

    def rank_1_stop():  # only rank 1 is told to stop, during its 5th update
        seen["calls"] += 1
        return seen["calls"] >= 5

    def work(rank, comm):
        try:
            train(config(), comm, should_stop=rank_1_stop if rank == 1 else (lambda: False))
        except Interrupted:
            return "interrupted"

    assert run_ranks(2, work) == ["interrupted", "interrupted"]


def test_a_failed_rank_stops_the_others_before_the_next_update():
    def work(rank, comm):
        if rank == 1:
            data_parallel = DataParallel(comm)
            data_parallel.attach(config(), _build(config(), 3)[1])
            data_parallel.finish(3)  # as a rank whose data could not be read
            return "failed"
        return train(config(), comm)

    rank_0, rank_1 = run_ranks(2, work)
    assert isinstance(rank_0, PeerFailed) and rank_0.exit_code == 3 and "MPI process 1" in rank_0.message
    assert rank_1 == "failed"
    quiet = run_ranks(2, lambda rank, comm: work(1 - rank, comm))[1]  # the same, seen from rank 1
    assert isinstance(quiet, QuietExit) and quiet.code == 3


@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_ranks_measure_an_epoch_each_on_their_chunks_and_all_get_one_process_numbers(size, task, monkeypatch):
    """An epoch's loss and accuracy over every row: each rank evaluates its shard of the chunks (7 ranks:
    some none) and all get, bit for bit, the numbers one process computes over all chunks."""
    monkeypatch.setattr(metrics, "EVAL_BATCH", 16)  # ~100 rows: 7 chunks, the last smaller
    changes = {} if task == "classification" else {"data__dataset": "sine", "loss": {"type": "mse"},
                                                    "model__layers__1__units": 1}
    _, problem, _ = _build(config(**changes), 3)
    classification = task == "classification"
    expected = metrics.loss_and_accuracy(problem.model, problem.loss, problem.x, problem.y, classification)
    assert (expected[1] is None) != classification
    rows: dict[int, list[int]] = {}

    def work(rank, comm):
        model = copy.deepcopy(problem.model)  # (each rank its own, as MPI's processes)
        predict = model.predict
        model.predict = lambda x: rows.setdefault(rank, []).append(len(x)) or predict(x)
        return DataParallel(comm).loss_and_accuracy(model, problem.loss, problem.x, problem.y, classification)

    assert run_ranks(size, work) == [expected] * size
    chunks = [len(problem.x[start : start + 16]) for start in range(0, len(problem.x), 16)]
    assert len(chunks) == 7 and sorted(n for counts in rows.values() for n in counts) == sorted(chunks)  # each once
    assert all(len(rows.get(rank, [])) == len(range(*shard(7, size, rank))) for rank in range(size))


def test_a_rank_failing_to_measure_tells_the_others_and_has_no_collective_left(monkeypatch):
    monkeypatch.setattr(metrics, "EVAL_BATCH", 16)  # a chunk for every rank
    _, problem, _ = _build(config(), 3)

    def work(rank, comm):
        data_parallel, model = DataParallel(comm), copy.deepcopy(problem.model)
        if rank == 1:
            model.predict = lambda x: (_ for _ in ()).throw(MemoryError("no room"))
        try:
            return data_parallel.loss_and_accuracy(model, problem.loss, problem.x, problem.y, True)
        except MemoryError:
            data_parallel.finish(1)  # as mpi_run's _train: returns at once (the others no longer wait)
            return "failed"

    rank_0, rank_1, rank_2 = run_ranks(3, work)
    assert isinstance(rank_0, PeerFailed) and rank_0.exit_code == 1 and "MPI process 1" in rank_0.message
    assert rank_1 == "failed" and isinstance(rank_2, QuietExit) and rank_2.code == 1


@pytest.mark.parametrize("changes,key", [
    ({"training__batch": {"mode": "sgd"}}, "training.batch.mode"),
    ({"training__batch": {"mode": "minibatch", "size": 2}}, "training.batch.size"),
    ({"model__layers": [{"type": "dense", "units": 8}, {"type": "batch_norm"}, {"type": "dense", "units": 2}]},
     "model.layers.1: batch_norm"),
    ({"optimizer": {"type": "perturb", "delta": 0.1}}, "optimizer.type"),
])
def test_what_cannot_be_split_is_refused_naming_the_key(changes, key):
    experiment = config(**changes)
    problem = _build(experiment, 3)[1]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as caught:
        DataParallel(FakeComm(Hub(3), 0)).attach(experiment, problem)
    assert caught.value.exit_code == 2 and "3" in caught.value.message
    if "batch_norm" in key:  # the sentence reads as one (it once said "are not be split")
        assert "which cannot be split across the 3 MPI processes; run it without mpiexec" in caught.value.message


def test_launch_is_detected_from_the_environment_only(monkeypatch):
    for name in communicator.SIZE_VARIABLES + communicator.RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert (parallel.launched_size(), parallel.launched_rank()) == (1, 0)
    monkeypatch.setenv("PMI_SIZE", "3")
    monkeypatch.setenv("PMI_RANK", "2")
    assert (parallel.launched_size(), parallel.launched_rank()) == (3, 2)
    monkeypatch.delenv("PMI_SIZE")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert parallel.launched_size() == 4
