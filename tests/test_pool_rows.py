"""engine/pool.py with a weight gradient built in the parts: each part computes its own rows of a BatchProduct
(``BatchProduct.rows_call``) and then updates them, and the result does not depend on how the split ran."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from test_resume import assert_identical, interrupt

from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.engine import blas, pool, workers
from sgdcli.engine.gradients import BatchProduct
from sgdcli.engine.optimizers import AdaGrad, Adam, AdamW, RMSProp
from sgdcli.errors import CheckpointError, DataError
from sgdcli.runs import checkpoint
from sgdcli.runs.directory import find_checkpoint
from sgdcli.training import resume as resuming

TWO_THREADS = (blas.thread_count() or 1) >= 2 and pool._driver() is not None
OPTIMIZERS = [Adam, AdamW, RMSProp, AdaGrad, lambda: RMSProp(momentum=0.9), lambda: Adam(weight_decay=1e-3)]


@pytest.fixture(autouse=True)
def fresh_timings(monkeypatch) -> None:
    monkeypatch.setattr(pool, "_TIMINGS", {})
    monkeypatch.setattr(pool, "_OTHERS", lambda: False)


def start(seed: int, shape: tuple[int, int], batch: int, dtype, steps: int):
    """Starting weights and the factors (x, dz) of `steps` batch gradients."""
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(shape).astype(dtype)
    return w0, [(rng.standard_normal((batch, shape[0])).astype(dtype), rng.standard_normal((batch, shape[1])).astype(dtype))
                for _ in range(steps)]


def train(make, w0, factors, monkeypatch, how: str, built: list | None = None):
    """Five steps with BatchProduct gradients; ``how``: "parts" (the pool splits) or "whole" (the pool could split
    but runs whole: another process busy). ``built``: receives each step's gradient as the parts built it."""
    monkeypatch.setattr(pool, "_OTHERS", lambda: how == "whole")
    optimizer, w = make(), w0.copy()
    for x, dz in factors:
        optimizer.step({"w": w}, {"w": BatchProduct(x, dz, 1.0 / len(x))}, 1e-2)
        if built is not None and "w" in optimizer._built:
            built.append(optimizer._built["w"].copy())
    return w, optimizer.state_dict()


@pytest.mark.parametrize("make", OPTIMIZERS)
@pytest.mark.parametrize("shape, batch", [((784, 512), 128), ((1000, 300), 96), ((300, 437), 1100), ((256, 1024), 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_built_in_the_parts_give_the_same_bits_as_the_whole_run(make, shape, batch, dtype, monkeypatch) -> None:
    """In parts and whole (the pool's own choice, timed or with the machine busy) the same bits: the whole run
    builds the same rows with the same calls on one thread. The rows are the product's to rounding (its bits may
    depend on OpenBLAS's thread count, and Adam's m / sqrt(v) of a gradient near 0 magnifies any difference)."""
    w0, factors = start(3, shape, batch, dtype, 5)
    rows = []
    real = BatchProduct.rows_call
    monkeypatch.setattr(BatchProduct, "rows_call", lambda self, out, a, b, *alpha: rows.append((a, b)) or real(self, out, a, b, *alpha))
    built: list[np.ndarray] = []
    w_parts, state_parts = train(make, w0, factors, monkeypatch, "parts", built)
    parts_rows, rows[:] = list(rows), []
    w_whole, state_whole = train(make, w0, factors, monkeypatch, "whole")
    assert np.array_equal(w_parts, w_whole)
    for key in state_parts:
        assert np.array_equal(state_parts[key], state_whole[key]), key
    if TWO_THREADS:  # by rows, two ranges a step, covering the weight (L2 decay: g built by rows before the update)
        assert len(parts_rows) == 10 and all(a < b for a, b in parts_rows)
        assert sorted(parts_rows[:2]) == [(0, parts_rows[0][1]), (parts_rows[0][1], shape[0])]
    if parts_rows:
        tolerance = 1e-5 if dtype == np.float32 else 1e-12
        for g, (x, dz) in zip(built, factors):
            exact = (x.astype(np.float64).T @ dz.astype(np.float64)) / len(x)
            np.testing.assert_allclose(g, exact, rtol=0, atol=tolerance * np.abs(exact).max())
    assert not np.array_equal(w_parts, w0)


def test_a_gradient_already_built_is_not_built_again(monkeypatch) -> None:
    """Clipping builds the product (``squared_norm``): the parts then read it, no gemm in them."""
    rng = np.random.default_rng(4)
    x, dz = rng.standard_normal((64, 784)).astype(np.float32), rng.standard_normal((64, 512)).astype(np.float32)
    grad = BatchProduct(x, dz)
    grad.squared_norm()
    monkeypatch.setattr(BatchProduct, "rows_call", lambda *args: pytest.fail("rows built again"))
    w = np.zeros((784, 512), np.float32)
    Adam().step({"w": w}, {"w": grad}, 1e-2)
    reference = np.zeros((784, 512), np.float32)
    Adam().step({"w": reference}, {"w": x.T @ dz}, 1e-2)
    np.testing.assert_allclose(w, reference, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("width", [512, 300, 437, 1])
def test_row_units_keep_every_part_at_whole_rows_and_long_enough(width: int) -> None:
    unit = pool.UNIT * width // np.gcd(pool.UNIT, width)
    for rows in (64, 255, 256, 784, 1000, 5000):
        count = rows * width
        edges = pool.cuts(count, unit)
        assert edges[0] == 0 and edges[-1] == count
        assert all(edge % width == 0 and edge % pool.UNIT == 0 for edge in edges[:-1])
        if len(edges) > 2:
            assert all(b - a >= blas.MIN_SIZE for a, b in zip(edges, edges[1:])), (rows, edges)


@pytest.mark.parametrize("make", OPTIMIZERS)
@pytest.mark.parametrize("shape, batch, dtype", [((784, 512), 1000, np.float32), ((600, 437), 700, np.float64)])
def test_a_product_built_first_gives_the_same_bits_and_still_splits(make, shape, batch, dtype, monkeypatch) -> None:
    """Clipping (a norm it never reaches) and ``training.track`` build g first (``squared_norm``): that must
    change neither the bits (g is built by the same rows, whoever builds it) nor the update's split."""
    w0, factors = start(5, shape, batch, dtype, 3)
    splits = []
    real_split = pool.split
    monkeypatch.setattr(pool, "split", lambda count, work, *more, **named: (splits.append(count), real_split(count, work, *more, **named)))
    results = []
    for built_first in (False, True):
        optimizer, w = make(), w0.copy()
        for x, dz in factors:
            grad = BatchProduct(x, dz / len(x))  # scale 1, the mean in dz: as Dense.backward_factored gives it
            if built_first:
                assert np.isfinite(grad.squared_norm())
            optimizer.step({"w": w}, {"w": grad}, 1e-2)
        results.append((w, optimizer.state_dict()))
    (w_plain, state_plain), (w_built, state_built) = results
    assert np.array_equal(w_plain, w_built)
    for key in state_plain:
        assert np.array_equal(state_plain[key], state_built[key]), key
    assert splits.count(w0.size) >= 3 * 2  # every update split, in both runs (and each product built by rows)


def test_a_run_resumes_on_the_blas_thread_count_it_trained_on(tmp_path) -> None:
    """A sweep's --jobs members train on fewer BLAS threads than the machine has; resumed by the printed
    command, on all of them, a product of 1,000 rows would round otherwise. The count is recorded in each
    checkpoint and the resume trains on it: the same bits as the uninterrupted run."""
    if (blas.thread_count() or 1) < 2:
        pytest.skip("one BLAS thread: nothing to lower")
    digits = Path(__file__).resolve().parents[1] / "data" / "digits.csv"  # 64 features: a 64 x 512 BatchProduct
    config = load_config(tiny_config(training__epochs=3, training__batch__size=700, model__dtype="float64",
                                     data={"source": "csv", "path": str(digits), "target": "digit", "validation": 0.2},
                                     model__layers__0__units=512, model__layers__1__units=10,
                                     optimizer={"type": "adam", "learning_rate": 0.01}))
    with blas.threads(1):
        reference = api.train(config, runs_dir=tmp_path / "reference")
        interrupted = interrupt(config, tmp_path / "runs", 4)  # mid-epoch 2 (3 updates an epoch)
    other = api.train(config, runs_dir=tmp_path / "other")  # the premise: on this process's count it rounds otherwise
    assert not np.array_equal(*(checkpoint.load(find_checkpoint(run)).params["0.weight"]
                                for run in (reference.run_dir, other.run_dir)))
    assert interrupted.status == "interrupted"
    assert checkpoint.load(find_checkpoint(interrupted.run_dir)).meta["blas_threads"] == 1
    resumed = api.resume(interrupted.run_dir)  # on this process's count
    assert resumed.status == "completed" and blas.thread_count() >= 2
    assert_identical(reference.run_dir, resumed.run_dir)


def test_the_recorded_count_is_checked_and_one_above_the_cores_noted(monkeypatch) -> None:
    path = Path("runs/r/checkpoints/last.safetensors")
    monkeypatch.setattr(workers, "usable_cores", lambda: 2)
    assert resuming.blas_threads({}, path, 2) == (2, None)  # checkpoints before the count was recorded
    assert resuming.blas_threads({"blas_threads": 1}, path, 2) == (1, None)  # lowered
    assert resuming.blas_threads({"blas_threads": 2}, path, 1) == (2, None)  # raised: the cores are there
    assert resuming.blas_threads({"blas_threads": 4}, path, None) == (None, None)  # a BLAS whose count is not ours
    count, note = resuming.blas_threads({"blas_threads": 4}, path, 2)  # more than the cores: the same bits, slower
    assert count == 4 and note == ("the run trained on 4 BLAS threads and this process may use 2 cores: it resumes "
                                   "on 4 threads for the same bits, more slowly")
    for bad in (0, -1, True, "2", 1.5):
        with pytest.raises(CheckpointError, match="blas_threads: expected a whole number"):
            resuming.blas_threads({"blas_threads": bad}, path, 2)


def test_the_command_that_continues_a_run_names_its_processes() -> None:
    """The interrupted run's "continue with", and a wrong number of processes' refusal: the launcher for the
    processes the run trained on; the BLAS thread count needs no naming (a resume trains on the recorded one)."""
    run = Path("runs/r")
    assert resuming.resume_command(run, 1) == "sgdcli train --resume runs/r"
    assert resuming.resume_command(run, 2) == "mpiexec -n 2 sgdcli train --resume runs/r"
    with pytest.raises(CheckpointError) as info:
        resuming.check_processes({"processes": 2, "blas_threads": 4}, run / "checkpoints" / "last.safetensors", 1)
    assert str(info.value.message).endswith("continue with: mpiexec -n 2 sgdcli train --resume runs/r")


def test_a_run_resumes_on_more_blas_threads_than_the_process_has(tmp_path) -> None:
    """Trained on two BLAS threads and resumed in a process on one (OPENBLAS_NUM_THREADS=1, taskset, an MPI
    process's share): the resume raises the count to the recorded two for the run, and gives the same bits."""
    if (blas.thread_count() or 1) < 2:
        pytest.skip("one BLAS thread: a run trained on two cannot be made here")
    digits = Path(__file__).resolve().parents[1] / "data" / "digits.csv"
    config = load_config(tiny_config(training__epochs=3, training__batch__size=700, model__dtype="float64",
                                     data={"source": "csv", "path": str(digits), "target": "digit", "validation": 0.2},
                                     model__layers__0__units=512, model__layers__1__units=10,
                                     optimizer={"type": "adam", "learning_rate": 0.01}))
    reference = api.train(config, runs_dir=tmp_path / "reference")
    interrupted = interrupt(config, tmp_path / "runs", 4)
    assert checkpoint.load(find_checkpoint(interrupted.run_dir)).meta["blas_threads"] == blas.thread_count()
    with blas.threads(1):
        resumed = api.resume(interrupted.run_dir)
        assert blas.thread_count() == 1  # (set back after the run)
    assert resumed.status == "completed"
    assert_identical(reference.run_dir, resumed.run_dir)


def test_a_process_reading_other_data_at_the_same_path_is_refused() -> None:
    """Each MPI process reads the data itself: another machine's copy at the same path trained one model on
    two datasets, silently (or ended in MPI's own "Message truncated"). The follower compares its files with
    what rank 0's checkpoint records, before any update."""
    def record(train_hash: str, size: int = 100, test_hash: str = "t" * 64) -> dict:
        return {"files": [{"role": "train", "path": "/d/train.csv", "sha256": train_hash, "size": size},
                          {"role": "test", "path": "/d/test.csv", "sha256": test_hash, "size": 10}],
                "split": {"rows": 80, "validation_rows": 20, "validation_mask": "AAA="}}
    source = Path("<MPI rank 0's last.safetensors>")
    resuming.check_same_data(record("a" * 64), record("a" * 64), source)
    resuming.check_same_data(record("a" * 64), record("a" * 64, test_hash="u" * 64), source)  # rank 0 alone tests
    resuming.check_same_data(None, record("b" * 64), source)  # (a checkpoint without the record)
    with pytest.raises(DataError) as info:
        resuming.check_same_data(record("a" * 64), record("b" * 64, size=99), source)
    assert str(info.value) == ("/d/train.csv: expected the file MPI process 0 reads (100 bytes, SHA-256 aaaaaaaaaaaa…), "
                               "received 99 bytes with SHA-256 bbbbbbbbbbbb…: every process must read the same data")
    other_split = record("a" * 64)
    other_split["split"] = {**other_split["split"], "validation_mask": "AAE="}
    with pytest.raises(CheckpointError, match="validation split"):
        resuming.check_same_data(record("a" * 64), other_split, source)


def test_a_resume_on_other_openblas_kernels_says_it_rounds_otherwise() -> None:
    """The kernels are set when NumPy loads (engine/spin.py): a resume cannot change them, and says so where the
    run's recorded ones differ (a run of `sgdcli train` resumed in a Python process that loaded NumPy itself)."""
    path = Path("runs/r/checkpoints/last.safetensors")
    assert resuming.blas_threads({"blas_threads": 2, "blas_kernel": "Haswell"}, path, 2, "Haswell") == (2, None)
    assert resuming.blas_threads({"blas_threads": 2}, path, 2, "SkylakeX") == (2, None)  # not recorded: nothing to say
    count, note = resuming.blas_threads({"blas_threads": 2, "blas_kernel": "Haswell"}, path, 2, "SkylakeX")
    assert count == 2 and note == ("the run trained on OpenBLAS's Haswell kernels and this process runs its SkylakeX "
                                   "kernels: it continues with other rounding; for the same bits: "
                                   "OPENBLAS_CORETYPE=Haswell sgdcli train --resume runs/r")
    _, note = resuming.blas_threads({"blas_threads": 2, "blas_kernel": "Haswell", "processes": 2}, path, 2, "Zen")
    assert note.endswith("for the same bits: OPENBLAS_CORETYPE=Haswell mpiexec -n 2 sgdcli train --resume runs/r")
    for bad in (5, "", "x" * 33, ["Haswell"], "Haswell; touch /tmp/x", "Haswell\nerror: forged", "\u0000", "9x", "Has well"):
        with pytest.raises(CheckpointError, match="blas_kernel: expected the name of OpenBLAS's kernels"):
            resuming.blas_threads({"blas_threads": 2, "blas_kernel": bad}, path, 2, "Haswell")


def test_a_run_records_its_kernels_and_its_resume_on_others_warns(tmp_path, monkeypatch) -> None:
    config = load_config(tiny_config(training__epochs=2))
    interrupted = interrupt(config, tmp_path / "runs", 8)
    quiet = interrupt(config, tmp_path / "quiet", 8)
    recorded = checkpoint.load(find_checkpoint(interrupted.run_dir)).meta["blas_kernel"]
    assert recorded == blas.kernel()
    monkeypatch.setattr(blas, "kernel", lambda: "Elsewhere")
    warnings: list[str] = []

    class Listener:
        def __getattr__(self, name):
            return (lambda message, *rest: warnings.append(message)) if name == "warn" else (lambda *a, **k: None)

    resumed = api.resume(interrupted.run_dir, reporter=Listener())
    assert resumed.status == "completed"
    if recorded is not None:
        said = f"the run trained on OpenBLAS's {recorded} kernels and this process runs its Elsewhere kernels"
        assert any(said in message for message in warnings), warnings
        with pytest.warns(UserWarning, match=said):  # no reporter: a Python warning, not silence
            assert api.resume(quiet.run_dir).status == "completed"
