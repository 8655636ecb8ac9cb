"""One training run in its directory: epochs become metrics rows, checkpoints and a summary; resume."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sgdcli import plots
from sgdcli.config.loading import flatten, load_config
from sgdcli.config.schema import GRADIENT_OPTIMIZERS, ExperimentConfig
from sgdcli.config.yamlio import read_yaml
from sgdcli.engine.metrics import loss_and_accuracy
from sgdcli.engine.model import ParameterMismatch
from sgdcli.errors import (
    CheckpointError,
    ConfigError,
    DiskError,
    DivergenceError,
    RunDirError,
    SgdcliError,
)
from sgdcli.runs import checkpoint
from sgdcli.runs import directory as runs
from sgdcli.training import build
from sgdcli.training.filters import write_filters_plot
from sgdcli.training.loop import (
    EpochResult,
    Interrupted,
    Position,
    Problem,
    train_epochs,
)


class Reporter(Protocol):
    """What training tells its caller (the CLI draws progress bars from it)."""

    def start(self, info: dict[str, Any]) -> None: ...
    def batch(self, done: int, total: int, loss: float) -> None: ...
    def epoch(self, row: dict[str, Any]) -> None: ...
    def warn(self, message: str) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed | diverged | interrupted
    summary: dict[str, Any]
    message: str | None = None


def _build(config: ExperimentConfig) -> tuple[build.PreparedData, Problem, build.Rngs]:
    """Data, model, loss, optimizer and schedule: everything before the run directory exists."""
    rngs = build.Rngs.from_seed(config.seed)
    prepared = build.prepare_data(config, rngs)
    model = build.build_model(config.model, prepared.sample_shape, build.output_width(config, prepared), rngs.init)
    batch_size = build.batch_size(config.training, len(prepared.x_train))
    build.check_batch_norm_batches(config.model, prepared.sample_shape, batch_size, len(prepared.x_train))
    updates_per_epoch = math.ceil(len(prepared.x_train) / batch_size)
    problem = Problem(
        model=model,
        loss=build.build_loss(config.loss),
        optimizer=build.build_optimizer(config.optimizer),
        schedule=build.build_schedule(config.optimizer, updates_per_epoch, config.training.epochs),
        x=prepared.x_train,
        y=prepared.y_train,
        batch_size=batch_size,
        shuffle=config.training.shuffle,
        clip_norm=config.optimizer.clip_norm if isinstance(config.optimizer, GRADIENT_OPTIMIZERS) else None,
    )
    return prepared, problem, rngs


class Session:
    """A run being trained: holds the run directory's lock from start (or resume) to the end."""

    def __init__(self, config: ExperimentConfig, run_dir: Path | None, reporter: Reporter | None) -> None:
        self.config, self.run_dir, self.reporter = config, run_dir, reporter
        self.prepared, self.problem, self.rngs = _build(config)
        self.position = Position()
        self.classification = config.is_classification
        self.best: dict[str, Any] | None = None
        self.last_row: dict[str, Any] | None = None
        self.train_seconds = 0.0
        self.resumed_from: int | None = None
        self._lock = None

    # ------------------------------------------------------------ starting
    @classmethod
    def start(cls, config: ExperimentConfig, runs_dir: Path, reporter: Reporter | None) -> "Session":
        """Build everything first (bad data or config: nothing written), then create the run."""
        session = cls(config, None, reporter)
        session.run_dir = runs.create_run_dir(Path(runs_dir), config.name)
        session._lock = runs.lock_run(session.run_dir)
        runs.write_config(session.run_dir, config.to_dict())
        folder = session.run_dir / runs.CHECKPOINTS
        state = session._state()
        checkpoint.save(folder / runs.INITIAL, state)
        checkpoint.save(folder / runs.LAST, state)
        return session

    @classmethod
    def resume(cls, run_dir: Path, requested: ExperimentConfig | None, overrides: list[str] | tuple[str, ...],
               reporter: Reporter | None) -> "Session":
        """Continue a run from its newest valid checkpoint, exactly as if it had not stopped."""
        run_dir = Path(run_dir)
        if not (run_dir / runs.CONFIG).is_file():
            raise RunDirError("not a run directory (no config.yaml)", source=str(run_dir))
        lock = runs.lock_run(run_dir)
        try:
            runs.prepare_existing(run_dir)
            saved = _saved_config(run_dir)
            config = requested or load_config(saved.to_dict(), overrides)
            _check_same_experiment(saved, config, run_dir)
            path, state, warnings = runs.newest_checkpoint(run_dir)
            if state.meta["position"]["epoch"] > config.training.epochs:
                raise ConfigError(f"training.epochs: the run has already done {state.meta['position']['epoch']}"
                                  f" epochs; expected at least that many, received {config.training.epochs}")
            session = cls(config, run_dir, reporter)
            session._lock = lock
            session._restore(path, state)
        except BaseException:
            lock.close()
            raise
        for warning in warnings:
            session._warn(warning)
        runs.keep_metrics_until(run_dir / runs.METRICS, session.position.epoch)
        runs.write_config(run_dir, config.to_dict())
        return session

    def _restore(self, path: Path, state: checkpoint.Checkpoint) -> None:
        meta = state.meta
        try:
            self.problem.model.load_parameters(state.params)
            self.problem.optimizer.load_state_dict(state.optimizer)
            self.position = Position(**meta["position"])
            self.rngs.shuffle.bit_generator.state = meta["rng"]["shuffle"]
            self.rngs.dropout.bit_generator.state = meta["rng"]["dropout"]
            self.best = meta["best"]
            self.train_seconds = float(meta["train_seconds"])
        except ParameterMismatch as exc:
            raise CheckpointError(f"the weights do not fit the config's model: {exc}", source=str(path)) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"cannot resume from this checkpoint ({exc})", source=str(path)) from None
        self.resumed_from = self.position.epoch

    # ------------------------------------------------------------ training
    def run(self, should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Train to the configured number of epochs; the run's lock is released however this ends."""
        try:
            return self._run(should_stop)
        finally:
            self.close()

    def _run(self, should_stop: Callable[[], bool] | None) -> TrainResult:
        started = resumed = time.perf_counter()
        status, message, stopped_early = "completed", None, False
        writer = runs.MetricsWriter(self.run_dir / runs.METRICS, runs.metric_columns(self.classification))
        try:
            try:
                if self.reporter:
                    self.reporter.start(self._info())
                epochs = train_epochs(self.problem, self.position, self.config.training.epochs, self.rngs.shuffle,
                                      self.rngs.dropout, self._on_batch(), should_stop)
                resumed = time.perf_counter()
                for result in epochs:
                    self.train_seconds += time.perf_counter() - resumed
                    row = self._measure(result)
                    writer.write(row)
                    self._save_epoch(row)
                    if self.reporter:
                        self.reporter.epoch(row)
                    if self._patience_exhausted():
                        stopped_early = True
                        break
                    if should_stop is not None and should_stop():
                        raise Interrupted()
                    resumed = time.perf_counter()
            except DivergenceError as exc:
                status, message = "diverged", exc.message
            except Interrupted:
                if self.position.batch:  # stopped inside an epoch: count its training time
                    self.train_seconds += time.perf_counter() - resumed
                self._save_last()  # mid-epoch state: `--resume` continues from this very update
                status = "interrupted"
                message = (f"interrupted after update {self.position.updates} (epoch {self.position.epoch + 1}); "
                           f"continue with: sgdcli train --resume {self.run_dir}")
        except DiskError as exc:  # the previous checkpoint is intact; say so in the summary if there is room
            self._finish("failed", exc.message, False, started)
            raise
        finally:
            writer.close()
        return self._finish(status, message, stopped_early, started)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _on_batch(self) -> Callable[[int, float], None] | None:
        if self.reporter is None:
            return None
        total, reporter = self.problem.updates_per_epoch, self.reporter
        return lambda done, value: reporter.batch(done, total, value)

    def _finish(self, status: str, message: str | None, stopped_early: bool, started: float) -> TrainResult:
        summary = self._summary(status, message, stopped_early, time.perf_counter() - started)
        try:
            runs.write_summary(self.run_dir, summary)
            rows = runs.read_metrics(self.run_dir / runs.METRICS)
            if rows:
                plots.loss_curves([plots.Curve.from_rows(self.run_dir.name, rows, "epoch")], "epoch",
                                  self.run_dir / runs.LOSS_PLOT)
            write_filters_plot(self.run_dir, self.problem.model)
        except SgdcliError:
            if status != "failed":
                raise
        return TrainResult(self.run_dir, status, summary, message)

    def _warn(self, message: str) -> None:
        if self.reporter:
            self.reporter.warn(message)

    def _info(self) -> dict[str, Any]:
        p = self.problem
        return {"run_dir": str(self.run_dir), "name": self.config.name, "train_samples": len(p.x),
                "val_samples": 0 if self.prepared.x_val is None else len(self.prepared.x_val),
                "batch_size": p.batch_size, "updates_per_epoch": p.updates_per_epoch,
                "epochs": self.config.training.epochs, "parameters": p.model.num_parameters(),
                "classification": self.classification, "resumed_from": self.resumed_from,
                "position": self.position.to_dict()}

    def _measure(self, result: EpochResult) -> dict[str, Any]:
        p, prepared = self.problem, self.prepared
        row: dict[str, Any] = {
            "epoch": result.epoch, "updates": self.position.updates, "samples": self.position.samples,
            "forward_passes": self.position.forward_passes, "seconds": round(self.train_seconds, 4), "learning_rate": result.learning_rate,
            "train_loss": result.train_loss,
        }
        if self.config.training.eval_train:
            row["train_loss_full"], row["train_accuracy"] = loss_and_accuracy(
                p.model, p.loss, p.x, p.y, self.classification)
        if prepared.x_val is not None:
            row["val_loss"], row["val_accuracy"] = loss_and_accuracy(
                p.model, p.loss, prepared.x_val, prepared.y_val, self.classification)
        self.last_row = row
        return row

    # ------------------------------------------------------------ checkpoints
    def _save_epoch(self, row: dict[str, Any]) -> None:
        score = _score(row)
        improved = score is not None and (self.best is None or score < self.best["score"])
        if improved:
            self.best = {"score": score, "epoch": row["epoch"], "row": row}
        state = self._save_last()
        folder = self.run_dir / runs.CHECKPOINTS
        if improved:
            checkpoint.save(folder / runs.BEST, state)
        every = self.config.training.checkpoint_every
        if every and row["epoch"] % every == 0:
            checkpoint.save(folder / f"epoch-{row['epoch']:04d}{checkpoint.SUFFIX}", state)

    def _save_last(self) -> checkpoint.Checkpoint:
        state = self._state()
        folder = self.run_dir / runs.CHECKPOINTS
        # The old `last` becomes `previous` only once the new one is safely written.
        checkpoint.save(folder / runs.LAST, state, before_replace=lambda: runs.keep_previous(folder))
        return state

    def _state(self) -> checkpoint.Checkpoint:
        meta = {
            "epoch": self.position.epoch, "updates": self.position.updates, "samples": self.position.samples,
            "position": self.position.to_dict(),
            "rng": {"shuffle": self.rngs.shuffle.bit_generator.state, "dropout": self.rngs.dropout.bit_generator.state},
            "best": self.best, "metrics": self.last_row, "train_seconds": self.train_seconds,
            "class_names": list(self.prepared.class_names) if self.prepared.class_names else None,
            "feature_names": list(self.prepared.feature_names),
            "sample_shape": list(self.prepared.sample_shape),
            "outputs": build.output_width(self.config, self.prepared),
            "config": self.config.to_dict(),
            "versions": runs.versions(),
        }
        return checkpoint.Checkpoint(
            params={k: v.copy() for k, v in self.problem.model.state_dict().items()},
            optimizer=self.problem.optimizer.state_dict(),
            shift=self.prepared.scaler.shift, scale=self.prepared.scaler.scale, meta=meta,
        )

    def _patience_exhausted(self) -> bool:
        patience = self.config.training.patience
        return bool(patience and self.best and self.position.epoch - self.best["epoch"] >= patience)

    def _summary(self, status: str, message: str | None, stopped_early: bool, wall: float) -> dict[str, Any]:
        epochs = self.position.epoch
        return {
            "name": self.config.name,
            "status": status,
            "message": message,
            "stopped_early": stopped_early,
            "epochs": epochs,
            "epochs_planned": self.config.training.epochs,
            "updates": self.position.updates,
            "samples": self.position.samples,
            "resumed_from_epoch": self.resumed_from,
            "train_seconds": round(self.train_seconds, 3),
            "wall_seconds": round(wall, 3),
            "seconds_per_epoch": round(self.train_seconds / epochs, 4) if epochs else None,
            "batch_size": self.problem.batch_size,
            "parameters": self.problem.model.num_parameters(),
            "final": self.last_row,
            "best": self.best["row"] if self.best else None,
            "best_epoch": self.best["epoch"] if self.best else None,
            "versions": runs.versions(),
        }


def _score(row: dict[str, Any]) -> float | None:
    """What 'best' means: validation loss, else the whole-training-set loss; never NaN."""
    for key in ("val_loss", "train_loss_full", "train_loss"):
        value = row.get(key)
        if value is not None:
            return value if math.isfinite(value) else None
    return None


def _saved_config(run_dir: Path) -> ExperimentConfig:
    path = run_dir / runs.CONFIG
    try:
        config = load_config(read_yaml(path))
    except ConfigError as exc:
        raise RunDirError(f"the run's saved config is damaged: {exc.message}", source=str(path)) from None
    if not isinstance(config, ExperimentConfig):
        raise RunDirError("an objective run is a few hundred steps: train it again instead of resuming",
                          source=str(run_dir))
    return config


def _check_same_experiment(saved: ExperimentConfig, requested: ExperimentConfig, run_dir: Path) -> None:
    """Resuming continues the same experiment: only training.epochs may change (and only grow)."""
    old, new = flatten(saved.to_dict()), flatten(requested.to_dict())
    changed = [key for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    changed = [key for key in changed if key != "training.epochs" or new[key] < old[key]]
    if changed:
        lines = "; ".join(f"{key}: {old.get(key)!r} in the run, {new.get(key)!r} now" for key in changed)
        raise ConfigError(f"--resume continues the same experiment; only training.epochs may grow. Differing: {lines}",
                          source=str(run_dir))
