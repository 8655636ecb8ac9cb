"""Runs of a built-in objective: the parameters' path under an optimizer, drawn over the function."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sgdcli import plots
from sgdcli.config.schema import ObjectiveConfig
from sgdcli.engine.objectives import Objective
from sgdcli.engine.search import CoordinateSearch
from sgdcli.runs import directory as runs
from sgdcli.training import build, interrupts
from sgdcli.training.session import TrainResult

PATH_PLOT = "path.png"


def run(config: ObjectiveConfig, runs_dir: Path, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Take `training.steps` updates from `objective.start`; metrics.csv holds the path (w0, w1, ...).

    NumPy's overflow warnings are silenced: the path is checked for non-finite values (a diverged
    run ends with its own message) and its plot may hold huge ones.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), interrupts.deferring(should_stop):
        return _run(config, runs_dir, should_stop)


def _run(config: ObjectiveConfig, runs_dir: Path, should_stop: Callable[[], bool] | None) -> TrainResult:
    objective = build.build_objective(config.objective)
    run_dir = runs.create_run_dir(Path(runs_dir), config.name, checkpoints=False)
    lock = runs.lock_run(run_dir)
    try:
        runs.write_config(run_dir, config.to_dict())
        columns = ["epoch", "updates", "samples", "forward_passes", "seconds", "learning_rate", "train_loss"]
        writer = runs.MetricsWriter(run_dir / runs.METRICS, columns + [f"w{i}" for i in range(objective.dims)])
        started = time.perf_counter()
        try:
            status, path, losses = _descend(config, objective, writer, should_stop)
        finally:
            writer.close()
        message = None
        if status == "diverged":
            message = (f"diverged at step {len(path)}: the step would leave the finite numbers. "
                       "Try a smaller optimizer.learning_rate.")
        summary = _summary(config, status, message, path, losses, time.perf_counter() - started)
        runs.write_summary(run_dir, summary)
        plots.objective_path(objective, np.array(path), np.array(losses), f"{config.name}: {config.objective.type}, "
                             f"{_describe(config)}", run_dir / PATH_PLOT)
        rows = runs.read_metrics(run_dir / runs.METRICS)
        if rows:
            plots.loss_curves([plots.Curve.from_rows(run_dir.name, rows, "epoch")], "step", run_dir / runs.LOSS_PLOT)
    finally:
        lock.close()
    return TrainResult(run_dir, status, summary, message)


def _descend(config: ObjectiveConfig, objective: Objective, writer: runs.MetricsWriter,
             should_stop: Callable[[], bool] | None) -> tuple[str, list[np.ndarray], list[float]]:
    """The loop: one metrics row per step; stops before a step that would leave the finite numbers."""
    optimizer = build.build_optimizer(config.optimizer)
    schedule = build.build_schedule(config.optimizer, 1, config.training.steps)  # an "epoch" is one step here
    w = np.array(config.objective.start, dtype=np.float64)
    params, passes, started = {"w": w}, 0, time.perf_counter()
    path, losses = [w.copy()], [objective.value(w)]
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(1, config.training.steps + 1):
            learning_rate = schedule(step - 1)
            if isinstance(optimizer, CoordinateSearch):
                _, used = optimizer.step(params, lambda: objective.value(w), learning_rate)
                passes += used
            else:
                grad = objective.gradient(w)
                if not np.isfinite(grad).all():
                    return "diverged", path, losses
                optimizer.step(params, {"w": grad}, learning_rate)
                passes += 1
            value = objective.value(w)
            if not (math.isfinite(value) and np.isfinite(w).all()):
                return "diverged", path, losses
            path.append(w.copy())
            losses.append(value)
            writer.write({"epoch": step, "updates": step, "samples": 0, "forward_passes": passes,
                          "seconds": round(time.perf_counter() - started, 6), "learning_rate": learning_rate,
                          "train_loss": value, **{f"w{i}": float(v) for i, v in enumerate(w)}})
            if should_stop is not None and should_stop():
                return "interrupted", path, losses
    return "completed", path, losses


def _describe(config: ObjectiveConfig) -> str:
    optimizer = config.optimizer.model_dump(exclude={"schedule"})
    return ", ".join(f"{k} {v}" for k, v in optimizer.items() if v not in (None, False, 0.0) or k == "type")


def _summary(config: ObjectiveConfig, status: str, message: str | None, path: list[np.ndarray],
             losses: list[float], wall: float) -> dict[str, Any]:
    best = int(np.argmin(losses))
    steps = len(path) - 1
    return {
        "name": config.name, "status": status, "message": message, "objective": config.objective.type,
        "epochs": steps, "updates": steps, "start": [float(v) for v in path[0]],
        "final_params": [float(v) for v in path[-1]], "final_loss": losses[-1],
        "best_params": [float(v) for v in path[best]], "best_loss": losses[best], "best_epoch": best,
        "final": {"train_loss": losses[-1]}, "best": {"train_loss": losses[best]},
        "wall_seconds": round(wall, 4), "seconds_per_epoch": round(wall / steps, 6) if steps else None,
        "versions": runs.versions(),
    }
