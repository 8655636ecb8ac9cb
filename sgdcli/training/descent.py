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


def run(config: ObjectiveConfig, runs_dir: Path, should_stop: Callable[[], bool] | None = None,
        run_dir: Path | None = None) -> TrainResult:
    """Take `training.steps` updates from `objective.start`; metrics.csv holds the path (w0, w1, ...).

    NumPy's overflow warnings are silenced: the path is checked for non-finite values (a diverged
    run ends with its own message) and its plot may hold huge ones.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), interrupts.deferring(should_stop):
        return _run(config, runs_dir, should_stop, run_dir)


def prepare(config: ObjectiveConfig) -> Objective:
    """The objective, built (least_squares: its CSV read and checked) and its batches checked against
    its samples: every check before the first step, so `validate` makes them and a failed one leaves
    no run directory."""
    objective = build.build_objective(config.objective)
    batches(config, objective)
    return objective


def _run(config: ObjectiveConfig, runs_dir: Path, should_stop: Callable[[], bool] | None,
         place: Path | None) -> TrainResult:
    objective = prepare(config)
    run_dir = runs.create_run_dir(Path(runs_dir), config.name, checkpoints=False, path=place)
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
    params, passes, samples, started = {"w": w}, 0, 0, time.perf_counter()
    path, losses = [w.copy()], [objective.value(w)]
    draw = batches(config, objective)
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(1, config.training.steps + 1):
            learning_rate = schedule(step - 1)
            index = draw() if draw is not None else None
            samples += len(index) if index is not None else 0
            if isinstance(optimizer, CoordinateSearch):
                loss = (lambda: objective.value(w)) if index is None else (lambda: objective.value(w, index))
                _, used = optimizer.step(params, loss, learning_rate)
                passes += used
            else:
                grad = objective.gradient(w) if index is None else objective.gradient(w, index)
                if not np.isfinite(grad).all():
                    return "diverged", path, losses
                optimizer.step(params, {"w": grad}, learning_rate)
                passes += 1
            value = objective.value(w)
            if not (math.isfinite(value) and np.isfinite(w).all()):
                return "diverged", path, losses
            path.append(w.copy())
            losses.append(value)
            writer.write({"epoch": step, "updates": step, "samples": samples, "forward_passes": passes,
                          "seconds": round(time.perf_counter() - started, 6), "learning_rate": learning_rate,
                          "train_loss": value, **{f"w{i}": float(v) for i, v in enumerate(w)}})
            if should_stop is not None and should_stop():
                return "interrupted", path, losses
    return "completed", path, losses


def batches(config: ObjectiveConfig, objective: Objective) -> Callable[[], np.ndarray] | None:
    """For an objective built from data: a function giving each step's sample indices, drawn like the
    training loop draws them (sgd: 1, minibatch: size, full: all; reshuffled each pass, seeded)."""
    samples = getattr(objective, "samples", None)
    if samples is None:
        return None
    size = build.batch_size(config.training, samples) if config.training.batch is not None else samples
    rng = build.Rngs.from_seed(config.seed).shuffle
    state = {"order": np.arange(samples), "at": samples}

    def draw() -> np.ndarray:
        if state["at"] >= samples:
            state["order"], state["at"] = (rng.permutation(samples) if size < samples else state["order"]), 0
        index = state["order"][state["at"]:state["at"] + size]
        state["at"] += size
        return index

    return draw


def _describe(config: ObjectiveConfig) -> str:
    optimizer = config.optimizer.model_dump(exclude={"schedule"})
    text = ", ".join(f"{k} {v}" for k, v in optimizer.items() if v not in (None, False, 0.0) or k == "type")
    batch = config.training.batch
    if batch is not None:
        text += f", batch {batch.mode}" + (f" {batch.size}" if batch.mode == "minibatch" else "")
    return text


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
