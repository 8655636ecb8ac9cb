"""compare reports the metrics of the best checkpoint's epoch, the one train's summary and eval use
(issue 10, item 10): never the extreme of each column taken from different epochs."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config

from sgdcli import api
from sgdcli.config.loading import load_config

HEADER = "epoch,updates,samples,forward_passes,seconds,learning_rate,train_loss,train_loss_full,val_loss,train_accuracy,val_accuracy\n"


def fake_run(folder, rows, summary=None):
    folder.mkdir()
    (folder / "config.yaml").write_text("name: fake\n")
    (folder / "metrics.csv").write_text(HEADER + "".join(rows))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


ROWS = ["1,1,10,1,0.1,0.1,1.0,0.9,0.80,0.50,0.60\n",
        "2,2,20,2,0.2,0.1,0.8,0.7,0.40,0.70,0.90\n",   # lowest validation loss: the best epoch
        "3,3,30,3,0.3,0.1,0.6,0.5,0.55,0.95,0.97\n"]   # highest accuracies, but a higher validation loss


@pytest.mark.parametrize("summary", [{"status": "completed", "best_epoch": 2}, None], ids=["summary", "no-summary"])
def test_best_columns_are_all_from_the_best_epoch(tmp_path, summary):
    # Without summary.json (a killed run) the same rule picks the epoch from metrics.csv.
    row, = api.compare([fake_run(tmp_path / "run", ROWS, summary)], plot=None).rows
    assert row["best_epoch"] == 2
    assert (row["best_epoch_val_loss"], row["best_epoch_val_accuracy"]) == (0.40, 0.90)
    assert (row["best_epoch_train_loss"], row["best_epoch_train_accuracy"]) == (0.7, 0.70)
    assert 0.97 not in row.values() or row["final_val_accuracy"] == 0.97  # 0.97 appears only as the final value
    assert not any(key.startswith("best_") and not key.startswith("best_epoch") for key in row)


def test_compare_agrees_with_eval_of_the_best_checkpoint(tmp_path):
    run = api.train(load_config(tiny_config(training__epochs=12, optimizer={"type": "sgd", "learning_rate": 0.5,
                                                                            "momentum": 0.9})),
                    runs_dir=tmp_path).run_dir
    row, = api.compare([run], plot=None).rows
    report = api.evaluate(run, split="val")
    assert row["best_epoch"] == report["epoch"]
    assert row["best_epoch_val_accuracy"] == pytest.approx(report["accuracy"], abs=1e-12)
    assert row["best_epoch_val_loss"] == pytest.approx(report["loss"], rel=1e-5)
