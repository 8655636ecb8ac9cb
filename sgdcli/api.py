"""The library API the CLI and the tests both call: train, resume, sweep, gradcheck, landscape,
load and predict, evaluate, compare."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sgdcli import plots
from sgdcli.analysis import gradcheck as gradcheck_module
from sgdcli.analysis import landscape as landscape_module
from sgdcli.analysis import landscape_files
from sgdcli.config.loading import flatten, load_config
from sgdcli.config.schema import AnyConfig, ExperimentConfig, ObjectiveConfig
from sgdcli.engine import metrics
from sgdcli.errors import ConfigError, DataError
from sgdcli.runs import directory as runs
from sgdcli.training import build, descent
from sgdcli.training import sweep as sweep_module
from sgdcli.training.session import Reporter, Session, TrainResult
from sgdcli.training.trained import TrainedModel, load_trained

__all__ = ["load_config", "train", "resume", "sweep", "gradcheck", "landscape", "load_trained", "evaluate",
           "compare", "TrainedModel", "TrainResult", "Comparison", "Reporter"]


# ---------------------------------------------------------------- training
def train(config: AnyConfig, runs_dir: Path | str = "runs", name: str | None = None,
          reporter: Reporter | None = None, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train `config` into a new run directory under `runs_dir`.

    Data and config problems raise before anything is written. Divergence and interruption
    return a result with that status; the run keeps its last good checkpoint. An objective
    config records the path of its few parameters instead.
    """
    if name is not None:
        config = load_config({**config.to_dict(), "name": name})
    if isinstance(config, ObjectiveConfig):
        return descent.run(config, Path(runs_dir), should_stop)
    return Session.start(config, Path(runs_dir), reporter).run(should_stop)


def resume(run_dir: Path | str, config: ExperimentConfig | None = None, overrides: Sequence[str] = (),
           reporter: Reporter | None = None, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Continue a run from its newest valid checkpoint, bit for bit as if it had never stopped.

    `config` (or the run's own config with `overrides`) must equal the run's, except that
    training.epochs may grow.
    """
    return Session.resume(Path(run_dir), config, tuple(overrides), reporter).run(should_stop)


def sweep(config: Path | str, overrides: Sequence[str], sweeps: Sequence[str], runs_dir: Path | str = "runs",
          jobs: int = 1, name: str | None = None, plot: Path | str | None = "compare.png",
          on_done: Callable[[sweep_module.Member], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> Comparison:
    """Train the Cartesian product of the `sweeps` values (`KEY=V1,V2,...`), each a normal run in its
    own process, at most `jobs` at once; return their comparison. Failed or diverged members are
    rows of the comparison, not errors. The same seed gives every member the same initial weights.
    """
    base = load_config(config, list(overrides))  # the sweep's own config must be valid
    parsed = sweep_module.parse(list(sweeps))
    members = sweep_module.members(name or base.name, parsed)
    sweep_module.run(Path(config), list(overrides), members, Path(runs_dir), jobs, on_done, should_stop)
    finished = [m.run_dir for m in members if m.run_dir is not None]
    swept = [key for key, _ in parsed]
    result = compare(finished, plot=plot, keys=swept) if finished else Comparison([], swept, [], None)
    for member in members:
        if member.run_dir is None:
            result.rows.append({"run": member.name, **dict(o.split("=", 1) for o in member.overrides),
                                "status": member.status, "problems": member.message or ""})
        elif member.status != "completed" and member.message:
            row = next(r for r in result.rows if r["run"] == member.run_dir.name)
            row["problems"] = "; ".join(filter(None, [row.get("problems"), member.message]))
    return result


# ---------------------------------------------------------------- gradient check
def gradcheck(config: AnyConfig, samples: int = 16, eps: float = 1e-6, max_entries: int = 200,
              rtol: float = 1e-5) -> list[gradcheck_module.TensorCheck]:
    """Backprop against central differences (float64) for every parameter tensor of the config's own
    model on a batch of its own training data (dropout on, with one fixed mask) — or, for an
    objective config, the objective's gradient at its starting point.

    Tensors with more than `max_entries` entries are checked on a seeded random subset plus one
    random direction.
    """
    rng = np.random.default_rng(config.seed)
    if isinstance(config, ObjectiveConfig):
        objective = build.build_objective(config.objective)
        w = np.array(config.objective.start, dtype=np.float64)
        return gradcheck_module.check_gradients(lambda: objective.value(w), {"w": w}, {"w": objective.gradient(w)},
                                                eps=eps, rtol=rtol, rng=rng)
    rngs = build.Rngs.from_seed(config.seed)
    prepared = build.prepare_data(config, rngs)
    model = build.build_model(config.model.model_copy(update={"dtype": "float64"}), prepared.sample_shape,
                              build.output_width(config, prepared), rngs.init)
    # Biases start at 0, which puts an all-zero input (a blank image window, zero padding) exactly on
    # ReLU's kink, where no derivative exists: check at a nearby point, every bias moved a little.
    for key, array in model.parameters().items():
        if key.endswith(".bias"):
            array += rng.normal(0.0, 0.01, size=array.shape)
    pick = rng.choice(len(prepared.x_train), size=min(samples, len(prepared.x_train)), replace=False)
    x = prepared.x_train[pick].astype(np.float64)
    y = prepared.y_train[pick]
    y = y.astype(np.float64) if y.dtype.kind == "f" else y
    return gradcheck_module.check_model(model, build.build_loss(config.loss), x, y, eps=eps, rtol=rtol,
                                        max_entries=max_entries, rng=rng, training=True, seed=config.seed)


# ---------------------------------------------------------------- landscape
def landscape(run: Path | str, checkpoint: str | None = None, direction: str = "init-to-final",
              span: tuple[float, float] | None = None, points: int = 51, split: str = "train",
              samples: int | None = None, seed: int = 0, out: Path | str | None = None):
    """The loss along a line through weight space (see sgdcli.analysis.landscape); writes OUT.csv and OUT.png
    (default ./landscape-<run>-<direction>) and returns (the Landscape, csv path, png path)."""
    result = landscape_module.compute(run, checkpoint=checkpoint, direction=direction, span=span, points=points,
                                      split=split, samples=samples, seed=seed)
    prefix = out if out is not None else landscape_files.default_prefix(run, direction)
    csv_path, png_path = landscape_files.write(result, prefix)
    return result, csv_path, png_path


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
                                     class_names=trained.class_names, features=trained.feature_names)
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
X_AXES = {"epoch": "epoch", "step": "updates", "updates": "updates", "samples": "samples",
          "forward_passes": "forward_passes", "seconds": "seconds"}
IGNORED_KEYS = {"name"}


@dataclass
class Comparison:
    runs: list[runs.RunRecord]
    differing: list[str]
    rows: list[dict[str, Any]]
    plot: Path | None


def compare(paths: Sequence[Path | str], x: str = "epoch", plot: Path | str | None = "compare.png",
            keys: Sequence[str] = ()) -> Comparison:
    """One row per run (the config values that differ, and `keys`; losses, accuracy, effort) and one
    overlay plot."""
    if x not in X_AXES:
        raise ConfigError(f"--x: expected one of {', '.join(X_AXES)}, received {x!r}")
    if not paths:
        raise ConfigError("expected at least one run directory")
    records = [runs.read_run(Path(p)) for p in paths]
    flat = [flatten(r.config) if r.config else {} for r in records]
    all_keys = sorted({k for f in flat for k in f} - IGNORED_KEYS)
    differing = [k for k in all_keys if len({repr(f.get(k)) for f in flat if f}) > 1] if len(records) > 1 else []
    differing = list(dict.fromkeys([*keys, *differing]))
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
        "forward_passes": int(last["forward_passes"]) if last.get("forward_passes") is not None else None,
        "seconds": last.get("seconds"),
        "wall_seconds": summary.get("wall_seconds"),
        "final_train_loss": last.get(train_col),
        "best_train_loss": best(train_col, min),
        "final_train_accuracy": last.get("train_accuracy"),
        "best_train_accuracy": best("train_accuracy", max),
        "final_val_loss": last.get("val_loss"),
        "best_val_loss": best("val_loss", min),
        "final_val_accuracy": last.get("val_accuracy"),
        "best_val_accuracy": best("val_accuracy", max),
        "problems": "; ".join(record.problems),
    }

