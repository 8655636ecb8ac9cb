"""The library API the CLI and the tests both call: train, load, predict, evaluate, compare."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sgdcli import build, checkpoint, metrics, plots, runs
from sgdcli.config import ExperimentConfig, flatten, load_config
from sgdcli.data import Scaler
from sgdcli.engine.model import ParameterMismatch, Sequential
from sgdcli.errors import CheckpointError, ConfigError, DataError, DivergenceError
from sgdcli.train import EpochResult, Interrupted, Position, Problem, train_epochs

__all__ = ["load_config", "train", "load_trained", "evaluate", "compare", "TrainedModel", "TrainResult",
           "Comparison", "Reporter"]


class Reporter(Protocol):
    """What training tells its caller (the CLI draws progress bars from it)."""

    def start(self, info: dict[str, Any]) -> None: ...
    def batch(self, done: int, total: int, loss: float) -> None: ...
    def epoch(self, row: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed | diverged | interrupted
    summary: dict[str, Any]
    message: str | None = None


# ---------------------------------------------------------------- training
def train(config: ExperimentConfig, runs_dir: Path | str = "runs", name: str | None = None,
          reporter: Reporter | None = None, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train `config` into a new run directory under `runs_dir`.

    Data and config problems raise before anything is written. Divergence and interruption
    return a result with that status; the run keeps its last good checkpoint.
    """
    if name is not None:
        config = _renamed(config, name)
    rngs = build.Rngs.from_seed(config.seed)
    prepared = build.prepare_data(config, rngs)
    model = build.build_model(config.model, prepared.x_train.shape[1], build.output_width(config, prepared), rngs.init)
    batch_size = build.batch_size(config.training, len(prepared.x_train))
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
        clip_norm=config.optimizer.clip_norm,
    )
    run_dir = runs.create_run_dir(Path(runs_dir), config.name)
    session = _Session(config, prepared, problem, run_dir, rngs, reporter)
    return session.run(should_stop)


def _renamed(config: ExperimentConfig, name: str) -> ExperimentConfig:
    return load_config({**config.to_dict(), "name": name}, base_dir=Path.cwd())


class _Session:
    """One run: the loop's epochs turned into metrics rows, checkpoints and a summary."""

    def __init__(self, config: ExperimentConfig, prepared: build.PreparedData, problem: Problem, run_dir: Path,
                 rngs: build.Rngs, reporter: Reporter | None) -> None:
        self.config, self.prepared, self.problem, self.run_dir = config, prepared, problem, run_dir
        self.rngs, self.reporter = rngs, reporter
        self.position = Position()
        self.classification = config.is_classification
        self.best: dict[str, Any] | None = None
        self.last_row: dict[str, Any] | None = None
        self.train_seconds = 0.0

    def run(self, should_stop: Callable[[], bool] | None) -> TrainResult:
        runs.write_config(self.run_dir, self.config.to_dict())
        writer = runs.MetricsWriter(self.run_dir / runs.METRICS, runs.metric_columns(self.classification))
        started = time.perf_counter()
        status, message, stopped_early = "completed", None, False
        if self.reporter:
            self.reporter.start(self._info())
        on_batch = None
        if self.reporter:
            total = self.problem.updates_per_epoch
            on_batch = lambda done, value: self.reporter.batch(done, total, value)  # noqa: E731
        epochs = train_epochs(self.problem, self.position, self.config.training.epochs, self.rngs.shuffle,
                              self.rngs.dropout, on_batch, should_stop)
        try:
            resumed = time.perf_counter()
            for result in epochs:
                self.train_seconds += time.perf_counter() - resumed
                row = self._measure(result)
                writer.write(row)
                self._checkpoint(row)
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
            status, message = "interrupted", "interrupted; the last checkpoint is from the last completed epoch"
        finally:
            writer.close()
        summary = self._summary(status, message, stopped_early, time.perf_counter() - started)
        runs.write_summary(self.run_dir, summary)
        _plot_run(self.run_dir)
        return TrainResult(self.run_dir, status, summary, message)

    def _info(self) -> dict[str, Any]:
        p = self.problem
        return {"run_dir": str(self.run_dir), "name": self.config.name, "train_samples": len(p.x),
                "val_samples": 0 if self.prepared.x_val is None else len(self.prepared.x_val),
                "batch_size": p.batch_size, "updates_per_epoch": p.updates_per_epoch,
                "epochs": self.config.training.epochs, "parameters": p.model.num_parameters(),
                "classification": self.classification}

    def _measure(self, result: EpochResult) -> dict[str, Any]:
        p, prepared = self.problem, self.prepared
        row: dict[str, Any] = {
            "epoch": result.epoch, "updates": self.position.updates, "samples": self.position.samples,
            "seconds": round(self.train_seconds, 4), "learning_rate": result.learning_rate,
            "train_loss": result.train_loss,
        }
        if self.config.training.eval_train:
            row["train_loss_full"], row["train_accuracy"] = metrics.loss_and_accuracy(
                p.model, p.loss, p.x, p.y, self.classification)
        if prepared.x_val is not None:
            row["val_loss"], row["val_accuracy"] = metrics.loss_and_accuracy(
                p.model, p.loss, prepared.x_val, prepared.y_val, self.classification)
        self.last_row = row
        return row

    def _checkpoint(self, row: dict[str, Any]) -> None:
        score = _score(row)
        improved = score is not None and (self.best is None or score < self.best["score"])
        if improved:
            self.best = {"score": score, "epoch": row["epoch"], "row": row}
        data = self._checkpoint_data(row)
        folder = self.run_dir / runs.CHECKPOINTS
        checkpoint.save(folder / runs.LAST, data)
        if improved:
            checkpoint.save(folder / runs.BEST, data)
        every = self.config.training.checkpoint_every
        if every and row["epoch"] % every == 0:
            checkpoint.save(folder / f"epoch-{row['epoch']:04d}{checkpoint.SUFFIX}", data)

    def _checkpoint_data(self, row: dict[str, Any]) -> checkpoint.Checkpoint:
        meta = {
            "epoch": self.position.epoch, "updates": self.position.updates, "samples": self.position.samples,
            "metrics": row, "best_epoch": self.best["epoch"] if self.best else None,
            "best_score": self.best["score"] if self.best else None,
            "rng": {"shuffle": self.rngs.shuffle.bit_generator.state, "dropout": self.rngs.dropout.bit_generator.state},
            "class_names": list(self.prepared.class_names) if self.prepared.class_names else None,
            "feature_names": list(self.prepared.feature_names),
            "sample_shape": list(self.prepared.sample_shape),
            "outputs": build.output_width(self.config, self.prepared),
            "config": self.config.to_dict(),
            "versions": runs.versions(),
        }
        return checkpoint.Checkpoint(
            params={k: v.copy() for k, v in self.problem.model.parameters().items()},
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


def _plot_run(run_dir: Path) -> None:
    rows = runs.read_metrics(run_dir / runs.METRICS)
    if rows:
        plots.loss_curves([plots.Curve.from_rows(run_dir.name, rows, "epoch")], "epoch", run_dir / runs.LOSS_PLOT)


# ---------------------------------------------------------------- loading and prediction
@dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint, with the preprocessing it was trained with."""

    model: Sequential
    config: ExperimentConfig
    scaler: Scaler
    class_names: tuple[str, ...] | None
    feature_names: tuple[str, ...]
    checkpoint: Path
    meta: dict[str, Any] = field(repr=False)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs (logits for classification) for unscaled features x (N, D)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise DataError(f"expected features of shape (N, {len(self.feature_names)}), received {x.shape}")
        return self.model.predict(self.scaler.transform(x, self.model.dtype), batch_size=metrics.EVAL_BATCH)

    def predict_classes(self, x: np.ndarray) -> list[str]:
        if self.class_names is None:
            raise ConfigError("this model does regression; use predict()")
        return [self.class_names[i] for i in metrics.predict_labels(self.predict(x))]


def load_trained(target: Path | str) -> TrainedModel:
    """A run directory (best checkpoint, else last) or a checkpoint file -> TrainedModel."""
    path = runs.find_checkpoint(Path(target))
    saved = checkpoint.load(path)
    try:
        config = load_config(saved.meta["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"the config stored in the checkpoint is not valid: {exc}", source=str(path)) from None
    meta = saved.meta
    rng = np.random.default_rng(0)  # the weights are overwritten below
    try:
        model = build.build_model(config.model, len(meta["feature_names"]), int(meta["outputs"]), rng)
        model.load_parameters(saved.params)
    except ParameterMismatch as exc:
        raise CheckpointError(f"the weights do not fit the saved architecture: {exc}", source=str(path)) from None
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"damaged checkpoint metadata ({exc})", source=str(path)) from None
    class_names = tuple(meta["class_names"]) if meta.get("class_names") else None
    return TrainedModel(model, config, Scaler(saved.shift, saved.scale), class_names,
                        tuple(meta["feature_names"]), path, meta)


# ---------------------------------------------------------------- evaluation
def evaluate(target: Path | str, data: Path | str | None = None, split: str | None = None) -> dict[str, Any]:
    """Loss and metrics of a trained model on a split of its own data, or on another file."""
    trained = load_trained(target)
    config = trained.config
    dataset, split_name = _eval_dataset(trained, data, split)
    outputs = trained.model.predict(trained.scaler.transform(dataset.x, trained.model.dtype),
                                    batch_size=metrics.EVAL_BATCH)
    if outputs.shape[1] != int(trained.meta["outputs"]):
        raise DataError("the model's outputs do not match", source=dataset.source)
    loss = build.build_loss(config.loss)
    target_values = build.target_array(dataset.y, config, trained.model.dtype)
    report: dict[str, Any] = {
        "checkpoint": str(trained.checkpoint), "epoch": trained.meta.get("epoch"), "data": dataset.source,
        "split": split_name, "samples": len(dataset), "loss_type": config.loss.type,
        "loss": loss.value(outputs, target_values),
    }
    if config.is_classification:
        report.update(metrics.classification_report(dataset.y, metrics.predict_labels(outputs), trained.class_names))
    else:
        report.update(metrics.regression_report(dataset.y, outputs))
    return report


def _eval_dataset(trained: TrainedModel, data: Path | str | None, split: str | None):
    config = trained.config
    if data is not None:
        if split is not None:
            raise ConfigError("give either --data or --split, not both")
        dataset = build.load_dataset(config.data, config.is_classification, path=Path(data),
                                     class_names=trained.class_names)
        if dataset.x.shape[1] != len(trained.feature_names):
            raise DataError(f"expected {len(trained.feature_names)} feature columns like the training data, "
                            f"received {dataset.x.shape[1]}", source=dataset.source)
        return dataset, "file"
    split = split or ("test" if build.has_test_set(config) else "val")
    if split == "test":
        test_set = build.load_test_set(config, trained.class_names)
        if test_set is None:
            raise ConfigError("--split test: the run's config names no test data (data.test_file, or an IDX "
                              "test pair); pass --data FILE or use --split val")
        return test_set, "test"
    train_set, val_set = build.split_data(config, build.Rngs.from_seed(config.seed))
    if split == "val":
        if val_set is None:
            raise ConfigError("--split val: the run had no validation split (data.validation is 0)")
        return val_set, "val"
    return train_set, "train"


# ---------------------------------------------------------------- comparison
X_AXES = {"epoch": "epoch", "step": "updates", "updates": "updates", "samples": "samples", "seconds": "seconds"}
IGNORED_KEYS = {"name"}


@dataclass
class Comparison:
    runs: list[runs.RunRecord]
    differing: list[str]
    rows: list[dict[str, Any]]
    plot: Path | None


def compare(paths: Sequence[Path | str], x: str = "epoch", plot: Path | str | None = "compare.png") -> Comparison:
    """One row per run (the config values that differ, losses, accuracy, effort) and one overlay plot."""
    if x not in X_AXES:
        raise ConfigError(f"--x: expected one of {', '.join(X_AXES)}, received {x!r}")
    if not paths:
        raise ConfigError("expected at least one run directory")
    records = [runs.read_run(Path(p)) for p in paths]
    flat = [flatten(r.config) if r.config else {} for r in records]
    keys = sorted({k for f in flat for k in f} - IGNORED_KEYS)
    differing = [k for k in keys if len({repr(f.get(k)) for f in flat if f}) > 1] if len(records) > 1 else []
    rows = [_compare_row(r, f, differing) for r, f in zip(records, flat)]
    plot_path = None
    if plot is not None:
        curves = [plots.Curve.from_rows(r.name, r.metrics, X_AXES[x]) for r in records if r.metrics]
        if curves:
            plot_path = plots.loss_curves(curves, x, Path(plot))
    return Comparison(records, differing, rows, plot_path)


def _compare_row(record: runs.RunRecord, flat: dict[str, Any], differing: list[str]) -> dict[str, Any]:
    rows, summary = record.metrics, record.summary or {}
    last = rows[-1] if rows else {}

    def best(column: str, pick: Callable) -> float | None:
        values = [r[column] for r in rows if r.get(column) is not None and math.isfinite(r[column])]
        return pick(values) if values else None

    train_col = "train_loss_full" if last.get("train_loss_full") is not None else "train_loss"
    return {
        "run": record.name,
        **{key: flat.get(key) for key in differing},
        "status": summary.get("status", "unknown" if not record.problems else "damaged"),
        "epochs": int(last["epoch"]) if last else 0,
        "updates": int(last["updates"]) if last else 0,
        "samples": int(last["samples"]) if last else 0,
        "seconds": last.get("seconds"),
        "final_train_loss": last.get(train_col),
        "best_train_loss": best(train_col, min),
        "final_val_loss": last.get("val_loss"),
        "best_val_loss": best("val_loss", min),
        "final_val_accuracy": last.get("val_accuracy"),
        "best_val_accuracy": best("val_accuracy", max),
        "problems": "; ".join(record.problems),
    }

