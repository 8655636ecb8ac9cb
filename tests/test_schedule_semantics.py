"""Schedules as a run uses them: the README's formulas per update, the PyTorch scheduler each one
equals, and what a resumed run that grows does with a schedule that has an end (issue 10, items 3, 7)."""

from __future__ import annotations

import csv
import math

import pytest
from conftest import tiny_config

from sgdcli import api
from sgdcli.config.loading import load_config
from sgdcli.training import build


def rates(run_dir) -> list[float]:
    """The learning_rate column: in full-batch mode (one update an epoch) the step size of each update."""
    return [float(row["learning_rate"]) for row in csv.DictReader((run_dir / "metrics.csv").open())]


def full_batch(schedule: dict, epochs: int = 10, **changes):
    return load_config(tiny_config(training__epochs=epochs, training__batch__mode="full",
                                   optimizer={"type": "sgd", "learning_rate": 0.1, "schedule": schedule}, **changes))


def test_cosine_reaches_its_floor_at_the_last_update(tmp_path):
    # The run: 10 updates at lr 0.1, min 0.01; the last one used 0.0122 before.
    used = rates(api.train(full_batch({"type": "cosine", "min_learning_rate": 0.01}), runs_dir=tmp_path).run_dir)
    assert used[0] == 0.1 and used[-1] == pytest.approx(0.01, rel=1e-12)
    # t = 0..9, T = 9: 0.01 + 0.045 (1 + cos(pi t / 9))
    assert used == pytest.approx([0.01 + 0.045 * (1 + math.cos(math.pi * t / 9)) for t in range(10)], rel=1e-12)


def test_step_with_a_fractional_period_floors_t_over_the_period(tmp_path):
    # every_epochs 2.5, one update an epoch: lr * 0.5 ** floor(t / 2.5) -> exponents 0 0 0 1 1 2 2 2 3 3.
    # Rounding the period to 2 updates (Python rounds 2.5 to 2) gave 0 0 1 1 2 2 3 3 4 4.
    used = rates(api.train(full_batch({"type": "step", "every_epochs": 2.5, "factor": 0.5}), runs_dir=tmp_path).run_dir)
    assert used == pytest.approx([0.1 * 0.5 ** e for e in (0, 0, 0, 1, 1, 2, 2, 2, 3, 3)], rel=1e-12)


def test_step_period_is_the_decimal_the_config_writes():
    # 0.1 epochs of 30 updates is 3 updates; 0.1 * 30 in floating point is 3.0000000000000004.
    config = load_config(tiny_config(optimizer={"type": "sgd", "learning_rate": 0.1,
                                                "schedule": {"type": "step", "every_epochs": 0.1, "factor": 0.5}}))
    schedule = build.build_schedule(config.optimizer, 30, 4)
    assert [schedule(t) for t in (2, 3, 5, 6)] == [0.1, 0.05, 0.05, 0.025]


def test_a_grown_resume_keeps_the_schedule_length_and_holds_its_last_value(tmp_path):
    config = full_batch({"type": "cosine", "min_learning_rate": 0.01})
    run = api.train(config, runs_dir=tmp_path).run_dir
    first = rates(run)
    resumed = api.resume(run, overrides=["training.epochs=20"])
    used = rates(run)
    assert used[:10] == first  # the first ten rows are kept as they were
    assert used[10:] == [pytest.approx(0.01, rel=1e-12)] * 10  # no jump back up at the resume point
    assert "keeps the length it was created with (10 epochs)" in resumed.summary["schedule_note"]
    assert resumed.summary["schedule_epochs"] == 10


TORCH_CASES = [
    ({"type": "constant"}, None),
    ({"type": "step", "every_epochs": 2, "factor": 0.5}, lambda torch, opt, u: torch.optim.lr_scheduler.StepLR(
        opt, step_size=2 * u, gamma=0.5)),
    ({"type": "exponential", "decay_rate": 0.5}, lambda torch, opt, u: torch.optim.lr_scheduler.ExponentialLR(
        opt, gamma=0.5 ** (1 / u))),
    ({"type": "inverse_time", "decay_rate": 0.5}, lambda torch, opt, u: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 1 / (1 + 0.5 * t / u))),
    ({"type": "cosine", "min_learning_rate": 0.01}, lambda torch, opt, u: torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=10 * u - 1, eta_min=0.01)),
    ({"type": "cosine", "warmup_epochs": 1}, lambda torch, opt, u: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1, (t + 1) / u) * 0.5 * (1 + math.cos(math.pi * min(t, 10 * u - 1) / (10 * u - 1))))),
    ({"type": "step", "every_epochs": 1, "warmup_epochs": 1}, lambda torch, opt, u: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1, (t + 1) / u) * 0.5 ** (t // u))),
]


@pytest.mark.parametrize("schedule,scheduler", TORCH_CASES, ids=[c[0]["type"] + str(i) for i, c in enumerate(TORCH_CASES)])
def test_each_schedule_equals_the_pytorch_scheduler_the_readme_names(schedule, scheduler):
    torch = pytest.importorskip("torch")  # optional cross-check: torch is never a dependency
    updates_per_epoch = 4
    ours = build.build_schedule(full_batch(schedule).optimizer, updates_per_epoch, 10)
    weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    theirs = scheduler(torch, optimizer, updates_per_epoch) if scheduler else None
    for t in range(10 * updates_per_epoch):  # the run's updates (past T_max PyTorch's cosine rises again)
        assert ours(t) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9), t
        optimizer.step()
        if theirs is not None:
            theirs.step()
