"""The library API the CLI and the tests both call: train, resume, sweep, gradcheck, landscape,
load and predict, evaluate, compare, export."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from sgdcli import fileio
from sgdcli.analysis import gradcheck as gradcheck_module
from sgdcli.analysis import heatmap as heatmap_module
from sgdcli.analysis import landscape as landscape_module
from sgdcli.analysis import landscape_files, unit_maps
from sgdcli.analysis import lr_find as lr_find_module
from sgdcli.analysis import plane as plane_module
from sgdcli.analysis.comparison import Comparison, compare, comparison_files
from sgdcli.config import editor_schema
from sgdcli.config.loading import load_config
from sgdcli.config.schema import AnyConfig, ExperimentConfig, ObjectiveConfig
from sgdcli.engine import metrics
from sgdcli.errors import ConfigError, DataError
from sgdcli.export import npz_arrays, onnx_graph, torch_state
from sgdcli.export import steps as export_steps
from sgdcli.runs.outputs import check_new_outputs
from sgdcli.training import build, descent, mpi_run, parallel, plan, provenance
from sgdcli.training import predict as predict_module
from sgdcli.training import sweep as sweep_module
from sgdcli.training.session import Reporter, Session, TrainResult
from sgdcli.training.trained import TrainedModel, load_trained

__all__ = ["load_config", "validate", "train", "resume", "sweep", "gradcheck", "landscape", "load_trained", "evaluate",
           "predict", "export", "config_schema", "compare", "TrainedModel", "TrainResult", "Comparison", "Reporter"]


# ---------------------------------------------------------------- training
def train(config: AnyConfig | Path | str, runs_dir: Path | str = "runs", name: str | None = None,
          reporter: Reporter | None = None, should_stop: Callable[[], bool] | None = None,
          run_dir: Path | str | None = None, overrides: Sequence[str] = ()) -> TrainResult:
    """Train `config` into a new run directory under `runs_dir` (or exactly `run_dir`, which must not exist).

    `config`: a loaded config, or a YAML file's path, read with `overrides` (`load_config`); under
    mpiexec rank 0 alone reads it and sends it to the others, so a bad config is reported once.
    Data and config problems raise before anything is written. Divergence and interruption
    return a result with that status; the run keeps its last good checkpoint. An objective
    config records the path of its few parameters instead. Without a `reporter`, what training would
    tell it as a warning comes as a Python warning (UserWarning).
    """
    def loaded() -> AnyConfig:
        return _named(load_config(config, list(overrides)) if isinstance(config, (str, Path)) else config, name)

    place = None if run_dir is None else Path(run_dir)
    if parallel.launched_size() > 1:  # under mpiexec: one model, data-parallel on every process
        return mpi_run.train(loaded, Path(runs_dir), reporter, should_stop, place)
    config = loaded()
    if isinstance(config, ObjectiveConfig):
        return descent.run(config, Path(runs_dir), should_stop, place)
    return Session.start(config, Path(runs_dir), reporter, place).run(should_stop)


def resume(run_dir: Path | str, config: ExperimentConfig | Path | str | None = None, overrides: Sequence[str] = (),
           reporter: Reporter | None = None, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Continue a run from its newest valid checkpoint, bit for bit as if it had never stopped.

    `config` (a loaded config, or a YAML file's path read with `overrides`; or None: the run's own
    config with `overrides`) must equal the run's, except that training.epochs may grow. Under
    mpiexec, on the number of processes the run was trained on; rank 0 alone reads the files. Without
    a `reporter`, its warnings (checkpoints set aside, a resume on other OpenBLAS kernels, which continues
    with other rounding) come as Python warnings (UserWarning).
    """
    def loaded() -> ExperimentConfig | None:
        return load_config(config, list(overrides)) if isinstance(config, (str, Path)) else config

    if parallel.launched_size() > 1:
        return mpi_run.resume(Path(run_dir), loaded, overrides, reporter, should_stop)
    return Session.resume(Path(run_dir), loaded(), tuple(overrides), reporter).run(should_stop)


def _named(config: AnyConfig, name: str | None) -> AnyConfig:
    """`config` renamed `name` (--name), which must be a valid config name: ConfigError naming --name."""
    try:
        return config if name is None else load_config({**config.to_dict(), "name": name}).read_from(config.file)
    except ConfigError as exc:  # the option's value, not a config file's
        raise ConfigError(exc.message, source="--name") from None


def sweep(config: Path | str, overrides: Sequence[str], sweeps: Sequence[str], runs_dir: Path | str = "runs",
          jobs: int = 1, name: str | None = None, plot: Path | str | None = "compare.png",
          on_done: Callable[[sweep_module.Member], None] | None = None,
          should_stop: Callable[[], bool] | None = None, seeds: int | None = None,
          scheduler: str | None = None, on_note: Callable[[str], None] | None = None,
          overwrite: bool = False) -> Comparison:
    """Train the Cartesian product of the `sweeps` values (`KEY=V1,V2,...`), each a normal run in its
    own process, at most `jobs` at once — or, with a Dask `scheduler` address, each a task on that
    cluster (sgdcli.training.dask_sweep); return their comparison. Failed or diverged members are
    rows of the comparison, not errors. The same seed gives every member the same initial weights.
    `seeds` K adds seeds seed, seed + 1, ..., seed + K − 1 (the config's seed first) to the sweep and
    compares with bands: mean ± standard deviation over the seeds. `on_note` hears what a Dask sweep
    has to say while it waits (its cluster without workers, and back). The comparison's files (`plot`, and
    sweep.png beside it for two keys) must be new unless `overwrite`: checked before the first member starts.
    """
    if parallel.launched_size() > 1:
        mpi_run.refuse("--sweep and --seeds train each member in a process of its own")
    base = _named(load_config(config, list(overrides)), name)  # the sweep's own config must be valid
    if seeds is not None:
        if seeds < 1 or any(s.partition("=")[0].strip() == "seed" for s in sweeps):
            raise ConfigError(f"--seeds: expected a positive count and no --sweep seed=..., received {seeds}")
        sweeps = [*sweeps, "seed=" + ",".join(str(base.seed + i) for i in range(seeds))]
    parsed = sweep_module.parse(list(sweeps))
    members = sweep_module.members(base.name, parsed)
    if plot is not None:  # in an existing folder, or in the runs folder the members create
        check_new_outputs(comparison_files(Path(plot), isinstance(base, ObjectiveConfig))
                          + ([Path(plot).with_name(heatmap_module.FILE)] if len(parsed) == 2 and seeds is None else []),
                          overwrite, Path(plot).absolute().parent == Path(runs_dir).absolute())
    if scheduler is None:
        sweep_module.run(Path(config), list(overrides), members, Path(runs_dir), jobs, on_done, should_stop)
    else:
        from sgdcli.training import dask_sweep  # imports dask only now

        dask_sweep.run(Path(config), list(overrides), members, Path(runs_dir), scheduler, on_done, should_stop,
                        on_note)
    finished = [m.run_dir for m in members if m.run_dir is not None]
    swept = [key for key, _ in parsed]
    swept = [key for key in swept if seeds is None or key != "seed"]
    result = (compare(finished, plot=plot, keys=swept, band=seeds is not None, overwrite=overwrite) if finished
              else Comparison([], swept, [], None))
    for member in members:
        if member.run_dir is None:
            result.rows.append({"run": member.name, **dict(o.split("=", 1) for o in member.overrides),
                                "status": member.status, "problems": member.message or ""})
        elif member.status != "completed" and member.message:
            row = next((r for r in result.rows if r["run"] == member.run_dir.name), None)  # None: a seed band
            if row is not None:
                row["problems"] = "; ".join(filter(None, [row.get("problems"), member.message]))
    if len(parsed) == 2 and seeds is None and plot is not None:
        result.sweep_plot = heatmap_module.for_sweep(base, parsed, members, result.rows, result.runs,
                                                     Path(plot).with_name(heatmap_module.FILE))
    return result


# ---------------------------------------------------------------- validation
def validate(config: AnyConfig) -> tuple[dict[str, Any], plan.Plan | None]:
    """Every check `train` makes before its first update, without training or writing anything.

    Returns the resolved config (defaults filled in, data-dependent ones too: the CSV's feature
    columns, IDX class names) and the plan: samples, features, outputs, batch, memory estimate
    (None for an objective config, whose only data, a least_squares CSV, is read and checked).
    """
    if isinstance(config, ObjectiveConfig):
        descent.prepare(config)  # least_squares: its data file read and checked, as train reads it
        return config.to_dict(), None
    checked = plan.check_config(config)
    return plan.resolved(config, checked), checked


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
    with plan.naming(config):
        prepared = build.prepare_data(config, rngs)
    outputs = build.output_width(config, prepared)
    batch = min(samples, len(prepared.x_train))
    plan.check_model(config, prepared.sample_shape, outputs, prepared.class_names, prepared.source, batch, None, "float64",
                     "the gradient check (float64)")
    model = build.build_model(config.model.model_copy(update={"dtype": "float64"}), prepared.sample_shape, outputs,
                              rngs.init)
    # Biases start at 0, which puts an all-zero input (a blank image window, zero padding) exactly on
    # ReLU's kink, where no derivative exists: check at a nearby point, every bias moved a little.
    for key, array in model.parameters().items():
        if key.endswith(".bias"):
            array += rng.normal(0.0, 0.01, size=array.shape)
    pick = rng.choice(len(prepared.x_train), size=batch, replace=False)
    x = prepared.x_train[pick].astype(np.float64)
    y = prepared.y_train[pick]
    y = y.astype(np.float64) if y.dtype.kind == "f" else y
    return gradcheck_module.check_model(model, build.build_loss(config.loss), x, y, eps=eps, rtol=rtol,
                                        max_entries=max_entries, rng=rng, training=True, seed=config.seed)


# ---------------------------------------------------------------- landscape
def landscape(run: Path | str, checkpoint: str | None = None, direction: str = "init-to-final",
              span: tuple[float, float] | None = None, points: int = 51, split: str = "train",
              samples: int | None = None, seed: int = 0, out: Path | str | None = None,
              overwrite: bool = False):
    """The loss along a line through weight space (see sgdcli.analysis.landscape); writes OUT.csv and OUT.png
    (default ./landscape-<run>-<direction>; existing files only with `overwrite`) and returns (the Landscape,
    csv path, png path)."""
    prefix = out if out is not None else landscape_files.default_prefix(run, direction)
    check_new_outputs(list(landscape_files.output_paths(prefix)), overwrite, creates_folder=True)
    result = landscape_module.compute(run, checkpoint=checkpoint, direction=direction, span=span, points=points,
                                      split=split, samples=samples, seed=seed)
    csv_path, png_path = landscape_files.write(result, prefix)
    return result, csv_path, png_path


def landscape_plane(run: Path | str, directions: str = "random", checkpoint: str | None = None, points: int = 41,
                    span: tuple[float, float] | None = None, split: str = "train",
                    samples: int | None = None, seed: int = 0, out: Path | str | None = None,
                    overwrite: bool = False):
    """The loss over a plane through a checkpoint (default: last) with the run's trajectory projected onto
    it (see sgdcli.analysis.plane), measured on at most `samples` (default 2,000) samples; writes OUT.csv
    and OUT.png (default ./landscape-<run>-plane-<directions>; existing files only with `overwrite`) and returns
    (the Plane, csv path, png path)."""
    prefix = out if out is not None else plane_module.default_prefix(run, directions)
    check_new_outputs(list(landscape_files.output_paths(prefix)), overwrite)
    result = plane_module.compute(run, directions, checkpoint, points, span, split, samples, seed)
    csv_path, png_path = plane_module.write(result, prefix)
    return result, csv_path, png_path


def boundary(run: Path | str, checkpoint: str | None = None, units: bool = False, out: Path | str | None = None,
             overwrite: bool = False):
    """A classifier on two features from its checkpoint: OUT.png (regions and data) and, with `units`,
    OUT-units.png (each first-layer unit over the plane; existing files only with `overwrite`); returns
    (files, unit maps or None)."""
    check_new_outputs(unit_maps.output_paths(out if out is not None else unit_maps.default_prefix(run),
                                                    units), overwrite)
    return unit_maps.draw(run, checkpoint, units, out)


# ---------------------------------------------------------------- learning-rate range test
def lr_find(config: AnyConfig, start: float = 1e-7, end: float = 10.0, updates: int = 100,
            out: Path | str = "lr-find") -> lr_find_module.RangeTest:
    """The learning-rate range test (see sgdcli.analysis.lr_find) from the config's initial weights;
    writes OUT/<name>-lr-find-<time>/lr_find.csv and lr_find.png (the result's `out_dir`)."""
    result = lr_find_module.range_test(config, start=start, end=end, updates=updates)
    lr_find_module.write(result, config.name, Path(out))
    return result


# ---------------------------------------------------------------- evaluation
def evaluate(target: Path | str, data: Path | str | None = None, split: str | None = None) -> dict[str, Any]:
    """Loss and metrics of a trained model on a split of its own data, or on another file.

    NumPy's floating-point warnings are silenced while the model is evaluated: a diverged checkpoint's
    outputs, loss and metrics may be inf or NaN, which the report itself carries (null in JSON)."""
    trained = load_trained(target)
    config = trained.config
    dataset, split_name = _eval_dataset(trained, data, split)
    target_values = build.target_array(dataset.y, config, trained.model.dtype)
    loss = build.build_loss(config.loss)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # scaling, the model, its loss and metrics
        outputs = trained.model.predict(trained.scaler.transform(dataset.x, trained.model.dtype),
                                        batch_size=metrics.EVAL_BATCH)
        if outputs.shape[1] != int(trained.meta["outputs"]):
            raise DataError("the model's outputs do not match", source=dataset.source)
        report: dict[str, Any] = {
            "checkpoint": str(trained.checkpoint), "epoch": trained.meta.get("epoch"), "data": dataset.source,
            "split": split_name, "samples": len(dataset), "loss_type": config.loss.type,
            "loss": loss.value(outputs, target_values),
        }
        if config.is_classification:
            report.update(metrics.classification_report(dataset.y, metrics.predict_labels(outputs),
                                                        trained.class_names))
        else:
            report.update(metrics.regression_report(dataset.y, outputs))
    return report


def predict(target: Path | str, data: Path | str, out: Path | str | None = None, fmt: str = "csv",
            keep: Sequence[str] = (), overwrite: bool = False, stream: TextIO | None = None) -> int:
    """Predict every row of `data` (a file in the training data's format) in batches of
    predict.BATCH_ROWS, writing CSV or JSON to `out` (atomically; an existing file only with
    `overwrite`) or to `stream` (default stdout). Returns the number of rows. Columns: see
    sgdcli.training.predict.output_columns; `keep` copies CSV columns through first."""
    if fmt not in predict_module.FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(predict_module.FORMATS)}, received {fmt!r}")
    trained = load_trained(target)
    batches = predict_module.predictions(trained, Path(data), list(keep))
    if out is None:
        return predict_module.write(batches, stream or sys.stdout, fmt)
    check_new_outputs([Path(out)], overwrite)
    with fileio.atomic_text_stream(Path(out), overwrite) as handle:
        return predict_module.write(batches, handle, fmt)


EXPORTERS = {"onnx": onnx_graph.encode, "torch": torch_state.encode, "npz": npz_arrays.encode}


def export(target: Path | str, fmt: str, out: Path | str, probabilities: bool = True,
           overwrite: bool = False) -> str:
    """Write a trained model in another format (see sgdcli.export): `onnx` (one graph with the scaling,
    every layer, and a softmax/sigmoid when `probabilities`), `torch` (safetensors in nn.Sequential
    layout) or `npz` (arrays and the architecture as JSON). Returns a note for the user: for torch,
    the Python that loads the file."""
    if fmt not in EXPORTERS:
        raise ConfigError(f"--format: expected one of {', '.join(EXPORTERS)}, received {fmt!r}")
    path = Path(out)
    check_new_outputs([path], overwrite)
    model = export_steps.exportable(load_trained(target), probabilities)
    data, note = EXPORTERS[fmt](model, path)
    fileio.atomic_write(path, data)
    return note


def config_schema(out: Path | str | None = None, overwrite: bool = False) -> str:
    """The config's JSON Schema as text (what sgdcli-config.schema.json holds); written to `out` if given."""
    text = editor_schema.schema_text()
    if out is not None:
        check_new_outputs([Path(out)], overwrite)
        fileio.atomic_write(Path(out), text.encode("utf-8"))
    return text


def _eval_dataset(trained: TrainedModel, data: Path | str | None, split: str | None):
    config = trained.config
    if data is not None:
        if split is not None:
            raise ConfigError("give either --data or --split, not both")
        dataset = build.load_dataset(config.data, config.is_classification, path=Path(data),
                                     class_names=trained.class_names, features=trained.feature_names)
        return build.check_width(dataset, trained.feature_names), "file"
    split = split or ("test" if build.has_test_set(config) else "val")
    return provenance.own_split(config, trained.meta, trained.class_names, split, str(trained.checkpoint),
                                "pass --data FILE or use --split val"), split
