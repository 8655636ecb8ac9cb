"""The training progress bar: epoch i/N, ETAs, a loss with 4 significant digits; the Ctrl-C hint on one line."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from sgdcli.cli import render
from sgdcli.cli.progress import ProgressState, duration, loss_text


@pytest.mark.parametrize("value, text", [(5e-5, "5.000e-05"), (0.693147, "0.6931"), (2.0, "2.000"),
                                         (1234.6, "1235"), (123456.0, "1.235e+05")])
def test_loss_has_four_significant_digits_at_any_magnitude(value, text):
    assert loss_text(value) == text


@pytest.mark.parametrize("seconds, text", [(None, "-"), (0.4, "0s"), (12.2, "12s"), (185, "3:05"), (3723, "1:02:03")])
def test_durations(seconds, text):
    assert duration(seconds) == text


def test_fields_show_the_epoch_of_all_and_both_etas():
    # 3 epochs of 10 updates, one update per second.
    state = ProgressState(epochs=3, updates_per_epoch=10, first_update=0, started=0.0, mean_loss=False)
    for done in range(1, 6):
        fields = state.fields(done, loss=0.5 / done, now=float(done))
    assert fields == {"epoch": "1/3", "loss": "loss 0.1000", "eta": "ETA epoch 5s, run 25s"}
    state.new_epoch(2, now=10.0)
    fields = state.fields(1, loss=5e-5, now=12.0)  # the second epoch's first update took 2 s
    assert fields["epoch"] == "2/3" and fields["loss"] == "loss 5.000e-05"
    assert fields["eta"] == "ETA epoch 18s, run 48s"  # 9 left x 2 s; 12 s / 6 updates = 2 s x 24 left


def test_sgd_mode_shows_the_running_mean_of_the_epoch():
    state = ProgressState(epochs=1, updates_per_epoch=4, first_update=0, started=0.0, mean_loss=True)
    texts = [state.fields(done, loss, float(done))["loss"] for done, loss in enumerate([1.0, 0.0, 1.0, 0.0], 1)]
    assert texts == ["mean loss 1.000", "mean loss 0.5000", "mean loss 0.6667", "mean loss 0.5000"]


def test_after_resume_the_etas_count_from_where_it_continued():
    # Resumed at epoch 2, batch 5 of 10 (15 of 30 updates done); one update takes 2 s now.
    state = ProgressState(epochs=3, updates_per_epoch=10, first_update=15, started=0.0, mean_loss=False, epoch=2)
    fields = state.fields(6, loss=1.0, now=2.0)
    assert fields["epoch"] == "2/3" and fields["eta"] == "ETA epoch 8s, run 28s"


def test_the_live_bar_draws_these_fields():
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    reporter = render.TrainingReporter(console)
    reporter.start({"name": "tiny", "train_samples": 90, "val_samples": 30, "parameters": 42, "batch_size": 1,
                    "updates_per_epoch": 90, "epochs": 3, "resumed_from": None,
                    "position": {"epoch": 0, "batch": 0, "updates": 0}})
    for done in range(1, 91):
        reporter.batch(done, 90, 5e-5)
    reporter.close()
    text = console.file.getvalue()
    assert "epoch 1/3" in text and "mean loss 5.000e-05" in text and "ETA epoch" in text and ", run " in text


def test_the_ctrl_c_hint_is_one_line_however_narrow_the_terminal(monkeypatch, capsys):
    console = Console(file=io.StringIO(), width=40, color_system=None)
    monkeypatch.setattr(render, "err", console)
    run_dir = "/home/someone/experiments/runs/digits-mlp-mode-minibatch-20261129-190812"
    summary = {"name": "digits-mlp", "status": "interrupted", "epochs": 1, "updates": 5, "wall_seconds": 1.0,
               "seconds_per_epoch": 0.5, "final": {}, "best": {},
               "message": f"interrupted after update 5 (epoch 1); continue with: sgdcli train --resume {run_dir}"}
    render.training_summary(summary, run_dir)
    lines = console.file.getvalue().splitlines()
    assert any(line.endswith(f"continue with: sgdcli train --resume {run_dir}") for line in lines), lines
