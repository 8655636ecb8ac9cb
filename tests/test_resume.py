"""Resume: bit-identical to an uninterrupted run, from any interruption point, in every batch mode."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import tiny_config

from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.errors import CheckpointError, ConfigError, RunDirError
from sgdcli.runs import checkpoint
from sgdcli.runs import directory as runs

# Dropout (uses its random stream), Adam (state + step count) and a cosine schedule (position
# dependent): everything a resume must restore exactly.
LAYERS = [{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dropout", "rate": 0.2},
          {"type": "dense", "units": 2}]


def config_for(mode: str, epochs: int = 5):
    return load_config(tiny_config(
        model__layers=LAYERS, training__epochs=epochs, training__batch__mode=mode,
        optimizer={"type": "adam", "learning_rate": 0.01, "schedule": {"type": "cosine", "warmup_epochs": 1}}))


class StopAfter:
    """Reporter + should_stop: asks to stop once `updates` updates have been applied."""

    def __init__(self, updates: int) -> None:
        self.updates, self.done, self.warnings = updates, 0, []

    def start(self, info): pass
    def epoch(self, row): pass
    def warn(self, message): self.warnings.append(message)

    def batch(self, done, total, loss):
        self.done += 1

    def __call__(self) -> bool:
        return self.done >= self.updates


def interrupt(config, runs_dir, updates):
    stopper = StopAfter(updates)
    return api.train(config, runs_dir=runs_dir, reporter=stopper, should_stop=stopper)


def resume(run_dir, updates=None, **kwargs):
    stopper = StopAfter(updates if updates is not None else 10**9)
    return api.resume(run_dir, reporter=stopper, should_stop=stopper, **kwargs)


def metrics_without_wall_clock(run_dir):
    rows = list(csv.reader((run_dir / "metrics.csv").open()))
    seconds = rows[0].index("seconds")
    return [row[:seconds] + row[seconds + 1:] for row in rows]


def final_weights(run_dir):
    return checkpoint.load(run_dir / "checkpoints" / "last.safetensors").params


def assert_identical(a, b):
    assert metrics_without_wall_clock(a) == metrics_without_wall_clock(b)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].tobytes() == wb[key].tobytes(), key


# 90 training samples: sgd mode has 90 updates an epoch, minibatch (16) 6, full 1.
CASES = [
    ("sgd", 180, "epoch boundary"), ("sgd", 200, "mid-epoch"),
    ("minibatch", 12, "epoch boundary"), ("minibatch", 15, "mid-epoch"), ("minibatch", 1, "after one update"),
    ("full", 2, "epoch boundary"), ("full", 4, "epoch boundary, later"),
]


@pytest.mark.parametrize("mode,updates,where", CASES, ids=[f"{m}-{w}" for m, _, w in CASES])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, mode, updates, where):
    config = config_for(mode)
    reference = api.train(config, runs_dir=tmp_path / "reference")
    interrupted = interrupt(config, tmp_path / "runs", updates)
    assert interrupted.status == "interrupted"
    saved = checkpoint.load(interrupted.run_dir / "checkpoints" / "last.safetensors")
    assert saved.meta["updates"] == updates
    summary = json.loads((interrupted.run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "--resume" in summary["message"]
    resumed = api.resume(interrupted.run_dir)
    assert resumed.status == "completed" and resumed.summary["resumed_from_epoch"] == saved.meta["epoch"]
    assert_identical(reference.run_dir, resumed.run_dir)


@pytest.mark.parametrize("updates", [90, 131])
@pytest.mark.parametrize("schedule", [None, {"type": "cosine"}], ids=["constant", "cosine"])
def test_a_prepared_batch_one_run_resumes_bit_identical(tmp_path, monkeypatch, schedule, updates):
    # Dense layers and SGD with momentum at batch 1: engine/one_sample.py's prepared update, whose calls
    # hold the velocity's addresses (made again in the resumed process, from the loaded state).
    from sgdcli.engine.one_sample import OneSampleUpdate

    steps: list[int] = []
    step = OneSampleUpdate.step
    monkeypatch.setattr(OneSampleUpdate, "step", lambda self, lr: steps.append(1) or step(self, lr))
    optimizer = {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9, **({"schedule": schedule} if schedule else {})}
    config = load_config(tiny_config(
        model__layers=[{"type": "dense", "units": 8, "activation": "tanh"}, {"type": "dense", "units": 2}],
        training__epochs=3, training__batch__mode="sgd", optimizer=optimizer))
    reference = api.train(config, runs_dir=tmp_path / "reference")
    assert len(steps) == 3 * 90
    interrupted = interrupt(config, tmp_path / "runs", updates)
    resumed = api.resume(interrupted.run_dir)
    assert resumed.status == "completed" and len(steps) == 2 * 3 * 90
    assert_identical(reference.run_dir, resumed.run_dir)


def test_resume_twice_and_grow_the_epochs(tmp_path):
    reference = api.train(config_for("minibatch", epochs=7), runs_dir=tmp_path / "reference")
    first = interrupt(config_for("minibatch", epochs=7), tmp_path / "runs", 9)
    assert resume(first.run_dir, updates=10).status == "interrupted"
    final = api.resume(first.run_dir)
    assert_identical(reference.run_dir, final.run_dir)
    # Continuing a finished run for longer is allowed; the rows go on from where they were.
    longer = api.resume(first.run_dir, overrides=["training.epochs=9"])
    assert longer.status == "completed"
    epochs = [int(row[0]) for row in metrics_without_wall_clock(longer.run_dir)[1:]]
    assert epochs == list(range(1, 10))


def test_a_row_written_after_the_checkpoint_is_not_duplicated(tmp_path):
    reference = api.train(config_for("minibatch"), runs_dir=tmp_path / "reference")
    run = interrupt(config_for("minibatch"), tmp_path / "runs", 14)  # epoch 3 under way
    metrics = run.run_dir / "metrics.csv"
    rows = metrics.read_text().splitlines(keepends=True)
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2"]
    # As if killed after a row for epoch 3 was appended, then again half-way through the next row.
    metrics.write_text("".join(rows) + "3" + rows[-1][1:] + "4,24,36")
    resumed = api.resume(run.run_dir)
    assert_identical(reference.run_dir, resumed.run_dir)


def test_damaged_last_checkpoint_falls_back_to_previous(tmp_path):
    reference = api.train(config_for("minibatch"), runs_dir=tmp_path / "reference")
    run = interrupt(config_for("minibatch"), tmp_path / "runs", 18)
    folder = run.run_dir / "checkpoints"
    last = folder / "last.safetensors"
    raw = bytearray(last.read_bytes())
    raw[-3] ^= 0x10
    last.write_bytes(bytes(raw))
    stopper = StopAfter(10**9)
    resumed = api.resume(run.run_dir, reporter=stopper)
    warnings = stopper.warnings
    assert any("last.safetensors" in w and "checksum mismatch" in w for w in warnings)
    assert any("resuming from previous.safetensors" in w for w in warnings)
    assert_identical(reference.run_dir, resumed.run_dir)


def test_resume_refuses_a_different_experiment(tmp_path):
    run = interrupt(config_for("minibatch"), tmp_path, 3)
    with pytest.raises(ConfigError) as info:
        api.resume(run.run_dir, overrides=["optimizer.learning_rate=0.5", "training.batch.mode=full"])
    message = str(info.value)
    assert "optimizer.learning_rate: 0.01 in the run, 0.5 now" in message and "training.batch.mode" in message
    with pytest.raises(ConfigError, match="training.epochs"):
        api.resume(run.run_dir, overrides=["training.epochs=2"])  # shrinking is not continuing


def test_resume_without_a_valid_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    run = interrupt(config_for("minibatch"), tmp_path, 3)
    for path in (run.run_dir / "checkpoints").iterdir():
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 1  # provably damaged: the checksum fails
        path.write_bytes(bytes(raw))
    before = (run.run_dir / "metrics.csv").read_bytes()
    with pytest.raises(CheckpointError, match="no valid checkpoint to resume from"):
        api.resume(run.run_dir)
    assert (run.run_dir / "metrics.csv").read_bytes() == before
    for path in (run.run_dir / "checkpoints").iterdir():
        path.write_bytes(b"garbage")  # not a checkpoint at all: not provably damaged, so never skipped
    with pytest.raises(CheckpointError, match="--resume changed nothing"):
        api.resume(run.run_dir)
    assert (run.run_dir / "metrics.csv").read_bytes() == before
    with pytest.raises(RunDirError, match="not a run directory"):
        api.resume(tmp_path / "nowhere")


def test_a_run_being_written_is_locked(tmp_path):
    run = interrupt(config_for("minibatch"), tmp_path, 3)
    holder = runs.lock_run(run.run_dir)
    try:
        with pytest.raises(RunDirError, match="being written by sgdcli process"):
            api.resume(run.run_dir)
    finally:
        holder.close()
    assert api.resume(run.run_dir).status == "completed"


def test_stale_temporary_files_are_cleaned_at_resume(tmp_path):
    run = interrupt(config_for("minibatch"), tmp_path, 3)
    stale = run.run_dir / "checkpoints" / ".tmp-abc123"
    stale.write_bytes(b"half a checkpoint")
    api.resume(run.run_dir)
    assert not stale.exists()


def test_initial_checkpoint_holds_the_starting_weights(tmp_path):
    run = api.train(config_for("full", epochs=1), runs_dir=tmp_path)
    initial = checkpoint.load(run.run_dir / "checkpoints" / "initial.safetensors")
    last = checkpoint.load(run.run_dir / "checkpoints" / "last.safetensors")
    assert initial.meta["updates"] == 0 and last.meta["updates"] == 1
    assert not np.array_equal(initial.params["0.weight"], last.params["0.weight"])
    shutil.rmtree(run.run_dir)


def test_a_run_whose_checkpoints_predate_the_data_record_still_resumes(tmp_path):
    # Checkpoints written before `data`, `schedule_epochs` and `wall_seconds` existed.
    reference = api.train(config_for("minibatch"), runs_dir=tmp_path / "reference")
    run = interrupt(config_for("minibatch"), tmp_path / "runs", 15).run_dir
    for path in (run / "checkpoints").glob("*.safetensors"):
        state = checkpoint.load(path)
        for key in ("data", "schedule_epochs", "wall_seconds"):
            del state.meta[key]
        checkpoint.save(path, state)
    assert api.resume(run).status == "completed"
    assert_identical(reference.run_dir, run)


@pytest.mark.parametrize("updates", [3, 5], ids=["after an epoch's last update", "mid-epoch"])
def test_tracked_statistics_of_the_interrupted_epoch_survive_a_resume(tmp_path, updates):
    # The layer statistics of training.track are sums over the epoch's sampled updates: a checkpoint taken
    # before the epoch's row is written keeps them, so the resumed row equals the uninterrupted one
    # (they used to restart at 0: different numbers, or empty columns after a stop at an epoch's end).
    config = load_config(tiny_config(
        model__layers=LAYERS, training__epochs=2, training__batch={"mode": "minibatch", "size": 40},
        training__track=["grad_norm", "weight_norm", "update_ratio"]))
    reference = api.train(config, runs_dir=tmp_path / "reference")
    stopped = interrupt(config, tmp_path / "runs", updates)
    assert stopped.status == "interrupted"
    resumed = api.resume(stopped.run_dir)
    assert_identical(reference.run_dir, resumed.run_dir)
    header, *rows = metrics_without_wall_clock(resumed.run_dir)
    assert any(name.startswith("grad_norm/") for name in header) and all(rows[0])  # no empty column in epoch 1


def test_a_stop_after_the_last_epoch_is_saved_leaves_the_run_completed(tmp_path):
    """Ctrl-C while the last epoch is measured and saved: the run is done, not "interrupted" (it named an
    epoch 3 of a 2-epoch run); a stop at an earlier epoch's end names that epoch's end."""
    config = load_config(tiny_config(training__epochs=2))
    calls = []

    def stop_at(call):  # the loop asks after every update, the session after each epoch's checkpoint
        return lambda: calls.append(1) or len(calls) >= call

    updates = 6  # 90 training rows in batches of 16
    done = api.train(config, runs_dir=tmp_path / "last", should_stop=stop_at(2 * updates + 2))
    assert len(calls) == 2 * updates + 2 and done.status == "completed" and done.message is None
    calls.clear()
    early = api.train(config, runs_dir=tmp_path / "first", should_stop=stop_at(updates + 1))
    assert early.status == "interrupted" and early.message.startswith(f"interrupted after update {updates} (the end of epoch 1);")
