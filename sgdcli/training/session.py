"""One training run in its directory: epochs become metrics rows, checkpoints and a summary; resume."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sgdcli import plots
from sgdcli.config.loading import load_config
from sgdcli.config.schema import GRADIENT_OPTIMIZERS, ExperimentConfig
from sgdcli.engine import blas
from sgdcli.engine.metrics import loss_and_accuracy
from sgdcli.engine.model import ParameterMismatch
from sgdcli.errors import CheckpointError, ConfigError, DiskError, DivergenceError, RunDirError, SgdcliError
from sgdcli.runs import best as best_rule
from sgdcli.runs import checkpoint
from sgdcli.runs import directory as runs
from sgdcli.training import build, interrupts, plan, provenance
from sgdcli.training import resume as resuming
from sgdcli.training.parallel import DataParallel
from sgdcli.training.loop import EpochResult, Interrupted, Position, Problem, train_epochs
from sgdcli.training.recorders import Recorders


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


def _build(config: ExperimentConfig, schedule_epochs: int,
           test_set: bool = True) -> tuple[build.PreparedData, Problem, build.Rngs]:
    """Data (with `test_set`, the test data checked too), model, loss, optimizer and schedule: everything
    before the run directory exists. The schedule is created for `schedule_epochs` (the run's epochs when
    it started): a resumed run that grows keeps its schedule's length, which then holds its last value."""
    rngs = build.Rngs.from_seed(config.seed)
    prepared, checked, model = plan.prepare_checked(config, rngs, test_set)
    batch_size, updates_per_epoch = checked.batch_size, checked.updates_per_epoch
    with plan.naming(config):
        build.check_batch_norm_batches(config.model, prepared.sample_shape, batch_size, len(prepared.x_train))
    problem = Problem(
        model=model,
        loss=build.build_loss(config.loss),
        optimizer=build.build_optimizer(config.optimizer),
        schedule=build.build_schedule(config.optimizer, updates_per_epoch, schedule_epochs),
        x=prepared.x_train, y=prepared.y_train,
        batch_size=batch_size,
        shuffle=config.training.shuffle,
        clip_norm=config.optimizer.clip_norm if isinstance(config.optimizer, GRADIENT_OPTIMIZERS) else None,
    )
    return prepared, problem, rngs


class Session:
    """A run being trained: holds the run directory's lock from start (or resume) to the end."""

    def __init__(self, config: ExperimentConfig, run_dir: Path | None, reporter: Reporter | None,
                 schedule_epochs: int | None = None, parallel: DataParallel | None = None) -> None:
        self.config, self.run_dir, self.reporter = config, run_dir, reporter
        self.schedule_epochs = schedule_epochs or config.training.epochs
        # the test data is checked before its SHA-256 is recorded (MPI: by rank 0, before the others start)
        self.prepared, self.problem, self.rngs = _build(config, self.schedule_epochs, not (parallel and parallel.rank))
        self.parallel, self.processes = parallel, 1 if parallel is None else parallel.size
        if parallel is not None:
            parallel.attach(config, self.problem)
        self.data = provenance.record(config, self.prepared.validation_mask)  # the files and split, in checkpoints
        self.wall_before = 0.0  # wall seconds of earlier segments (before a resume)
        self.blas_threads, self.blas_kernel = blas.thread_count(), blas.kernel()  # in checkpoints: resuming.blas_threads
        self._segment_started: float | None = None
        self.position = Position()
        self.classification = config.is_classification
        self.best: dict[str, Any] | None = None
        self.last_row: dict[str, Any] | None = None
        self.train_seconds = 0.0
        self.resumed_from: int | None = None
        self.finished: str | None = None  # resume: why there is nothing to do
        self._lock = None
        self.recorders = Recorders(config, self.prepared, self.problem.model, self.problem.updates_per_epoch,
                                   self.classification)

    # ------------------------------------------------------------ starting
    @classmethod
    def start(cls, config: ExperimentConfig, runs_dir: Path, reporter: Reporter | None,
              run_dir: Path | None = None, parallel: DataParallel | None = None) -> "Session":
        """Build everything first (bad data or config: nothing written), then create the run (in
        runs_dir, or exactly `run_dir`, which must not exist yet)."""
        session = cls(config, None, reporter, parallel=parallel)
        session.run_dir = runs.create_run_dir(Path(runs_dir), config.name, path=run_dir)
        try:
            session._lock = runs.lock_run(session.run_dir)
            runs.write_config(session.run_dir, config.to_dict())
            folder = session.run_dir / runs.CHECKPOINTS
            state = session._state()
            checkpoint.save(folder / runs.INITIAL, state)
            checkpoint.save(folder / runs.LAST, state)
        except BaseException as exc:  # no initial checkpoint: a run that cannot be resumed is not left behind
            session.close()
            gone = runs.remove_unstarted(session.run_dir)
            if isinstance(exc, SgdcliError):
                what = "was removed" if gone else "could not be removed; delete it"
                raise type(exc)(f"{exc.message}; the run could not start, and its directory {session.run_dir} "
                                f"{what}", source=exc.source) from None
            raise
        return session

    @classmethod
    def resume(cls, run_dir: Path, requested: ExperimentConfig | None, overrides: list[str] | tuple[str, ...],
               reporter: Reporter | None, parallel: DataParallel | None = None) -> "Session":
        """Continue a run from its newest valid checkpoint, exactly as if it had not stopped.

        Nothing is written until every check has passed: no symbolic links in the run, config.yaml
        equal to the checkpoint's config and the request (only training.epochs may grow), the same
        data files and split. Provably damaged checkpoints are then moved aside, never deleted."""
        run_dir = Path(run_dir)
        if not (run_dir / runs.CONFIG).is_file():
            raise RunDirError("not a run directory (no config.yaml)", source=str(run_dir))
        runs.refuse_run_links(run_dir)
        lock = runs.lock_run(run_dir)
        try:
            runs.refuse_run_links(run_dir)  # again, now that no other sgdcli process can change the run
            saved = resuming.saved_config(run_dir)
            path, state, damaged = runs.newest_checkpoint(run_dir)
            resuming.check_meta(state.meta, path)
            resuming.check_processes(state.meta, path, 1 if parallel is None else parallel.size)
            resuming.check_saved(saved, path, state, run_dir)
            config = requested or load_config(saved.to_dict(), overrides, check_precision=False).read_from(saved.file)
            resuming.check_requested(saved, config, run_dir)
            if state.meta["position"]["epoch"] > config.training.epochs:
                raise ConfigError(f"training.epochs: expected at least the {state.meta['position']['epoch']} epochs "
                                  f"the run {run_dir} has already done, received {config.training.epochs}",
                                  source=config.file)
            resuming.check_files(state.meta.get("data"), path)
            session = cls(config, run_dir, reporter, resuming.schedule_epochs(config, state, path), parallel)
            resuming.check_split(state.meta.get("data"), session.data, path)
            session._lock = lock
            session.blas_threads, threads_note = resuming.blas_threads(state.meta, path, session.blas_threads, session.blas_kernel)
            session._restore(path, state)
        except BaseException:
            lock.close()
            raise
        session.finished = resuming.finished(run_dir, session.position.epoch, config.training.epochs,
                                             session.position.batch, session._patience_exhausted())
        if session.finished:
            return session  # change nothing
        for damaged_path, why in damaged:
            moved = runs.set_aside(damaged_path)
            session._warn(f"{damaged_path}: {why}; moved aside to {moved.name}")
        if damaged:
            session._warn(f"resuming from {path.name} (epoch {state.meta.get('epoch')}, update {state.meta.get('updates')})")
        for note in (threads_note, resuming.schedule_note(config, session.schedule_epochs, session.problem.schedule(10**12))):
            session._warn(note)
        runs.prepare_existing(run_dir)
        aside = run_dir / f"metrics{runs.DAMAGED_MARK}{time.strftime('%Y%m%d-%H%M%S')}.csv" if damaged else None
        runs.keep_metrics_until(run_dir / runs.METRICS, session.position.epoch, aside)
        if aside is not None and aside.exists():
            session._warn(f"the metrics rows after the checkpoint resumed from are kept in {aside.name}")
        session.recorders.resume_from(run_dir, session.position.epoch)
        runs.write_config(run_dir, config.to_dict())
        return session

    def _restore(self, path: Path, state: checkpoint.Checkpoint) -> None:
        meta = state.meta
        try:
            self.problem.model.load_parameters(state.params)
            self.problem.optimizer.load_state_dict(state.optimizer, self.problem.model.parameters())
            self.position = Position(**meta["position"])
            self.rngs.shuffle.bit_generator.state = meta["rng"]["shuffle"]
            self.rngs.dropout.bit_generator.state = meta["rng"]["dropout"]
            self.best, self.train_seconds = meta["best"], float(meta["train_seconds"])
            self.recorders.resume_partial(meta.get("tracked"))  # the interrupted epoch's statistics so far
            self.wall_before = float(meta.get("wall_seconds", self.train_seconds))  # older checkpoints: a floor
            self.last_row = meta.get("metrics")
        except ParameterMismatch as exc:
            raise CheckpointError(f"the weights do not fit the config's model: {exc}", source=str(path)) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"cannot resume from this checkpoint ({exc})", source=str(path)) from None
        self.resumed_from = self.position.epoch

    # ------------------------------------------------------------ training
    def run(self, should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Train to the configured number of epochs, on ``blas_threads``; the run's lock is released however this
        ends. NumPy's overflow warnings are silenced: the loop checks every loss and gradient and ends a diverged
        run with its own message, and losses measured after an epoch may be inf or NaN."""
        try:
            if self.finished:
                return TrainResult(self.run_dir, "completed", runs.read_run(self.run_dir).summary or {}, self.finished)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"), interrupts.deferring(should_stop), \
                    blas.threads(self.blas_threads or 1, exactly=True):  # (the recorded count; none without OpenBLAS)
                return self._run(should_stop if self.parallel is None else self.parallel.watch(should_stop))
        finally:
            self.close()

    def _run(self, should_stop: Callable[[], bool] | None) -> TrainResult:
        started = resumed = self._segment_started = time.perf_counter()
        status, message, stopped_early = "completed", None, False
        columns = runs.metric_columns(self.classification) + self.recorders.columns
        writer = self._metrics_writer(columns)
        try:
            try:
                if self.reporter:
                    self.reporter.start(self._info())
                epochs = train_epochs(self.problem, self.position, self.config.training.epochs, self.rngs.shuffle,
                                      self.rngs.dropout, self._on_batch(), should_stop, observer=self.recorders.tracker)
                self.recorders.record(self.position.epoch, self.problem.model)
                resumed = time.perf_counter()
                for result in epochs:
                    self.train_seconds += time.perf_counter() - resumed
                    row = self._measure(result)
                    final = result.epoch == self.config.training.epochs
                    self.recorders.record(result.epoch, self.problem.model, last=final)
                    writer.write(row)
                    self._save_epoch(row)
                    if self.reporter:
                        self.reporter.epoch(row)
                    if self._patience_exhausted():
                        stopped_early, message = True, resuming.early_stop(self.config, result.epoch, self.best)
                        break
                    if should_stop is not None and should_stop() and not final:  # (after the last epoch: done)
                        raise Interrupted()
                    resumed = time.perf_counter()
            except DivergenceError as exc:
                status, message = "diverged", exc.message
            except Interrupted:
                if self.position.batch:  # stopped inside an epoch: count its training time
                    self.train_seconds += time.perf_counter() - resumed
                self._save_last()  # mid-epoch state: `--resume` continues from this very update
                status = "interrupted"
                where = f"epoch {self.position.epoch + 1}" if self.position.batch else f"the end of epoch {self.position.epoch}"
                message = (f"interrupted after update {self.position.updates} ({where}); "
                           f"continue with: {resuming.resume_command(self.run_dir, self.processes)}")
        except DiskError as exc:  # the previous checkpoint is intact; say so in the summary if there is room
            self._finish("failed", str(exc), False, started)  # naming the file
            raise
        finally:
            writer.close()
        return self._finish(status, message, stopped_early, started)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _on_batch(self) -> Callable[[int, float], None] | None:
        total, reporter = self.problem.updates_per_epoch, self.reporter
        return None if reporter is None else lambda done, value: reporter.batch(done, total, value)

    def _finish(self, status: str, message: str | None, stopped_early: bool, started: float) -> TrainResult:
        """The end-of-run files, then summary.json: a run whose files could not all be written is `failed`, and says
        what resume redraws (resuming.rewrite_note). Wall seconds up to here, as checkpoints carry them (interrupted:
        the checkpoint's, which a resume adds to, so that a resumed run's total is never the smaller)."""
        failure, wall = None, self._saved_wall if status == "interrupted" else self.wall_before + time.perf_counter() - started
        try:
            rows = runs.read_metrics(self.run_dir / runs.METRICS)
            try:  # the recorders' files first: their frames and snapshots are only in memory
                self.recorders.write(self.run_dir, self.position.epoch, self.problem.model, rows)
            finally:  # loss.png even when they failed: metrics.csv keeps what it is drawn from
                if rows:
                    plots.loss_curves([plots.Curve.from_rows(self.run_dir.name, rows, "epoch")], "epoch",
                                      self.run_dir / runs.LOSS_PLOT)
        except SgdcliError as exc:
            failure = None if status == "failed" else exc
        if failure is not None:
            status, message = "failed", f"{failure}; {resuming.rewrite_note(self.run_dir, status, message)}"
        summary = self._summary(status, message, stopped_early, wall)
        try:
            runs.write_summary(self.run_dir, summary)
        except SgdcliError:
            if failure is None and status != "failed":
                raise
        if failure is not None:
            raise failure
        return TrainResult(self.run_dir, status, summary, message)

    def _warn(self, message: str | None) -> None:  # without a reporter (the API's default): a Python warning
        if message:
            self.reporter.warn(message) if self.reporter else warnings.warn(message, UserWarning, stacklevel=3)

    def _info(self) -> dict[str, Any]:
        p = self.problem
        return {"run_dir": str(self.run_dir), "name": self.config.name, "train_samples": len(p.x),
                "val_samples": 0 if self.prepared.x_val is None else len(self.prepared.x_val),
                "batch_size": p.batch_size, "updates_per_epoch": p.updates_per_epoch,
                "epochs": self.config.training.epochs, "parameters": p.model.num_parameters(),
                "classification": self.classification, "resumed_from": self.resumed_from, "wall_before": self.wall_before,
                "position": self.position.to_dict(), "processes": self.processes, "blas_threads": self.blas_threads}

    def _measure(self, result: EpochResult) -> dict[str, Any]:
        p, prepared = self.problem, self.prepared
        row: dict[str, Any] = {
            "epoch": result.epoch, "updates": self.position.updates, "samples": self.position.samples,
            "forward_passes": self.position.forward_passes, "seconds": round(self.train_seconds, 4), "learning_rate": result.learning_rate,
            "train_loss": result.train_loss,
        }
        measure = self.parallel.loss_and_accuracy if self.parallel else loss_and_accuracy  # (each rank its share)
        if self.config.training.eval_train:
            row["train_loss_full"], row["train_accuracy"] = measure(p.model, p.loss, p.x, p.y, self.classification)
        if prepared.x_val is not None:
            row["val_loss"], row["val_accuracy"] = measure(p.model, p.loss, prepared.x_val, prepared.y_val, self.classification)
        row.update(self.recorders.epoch_row(p.model))
        self.last_row = row
        return row

    # ------------------------------------------------------------ checkpoints
    def _metrics_writer(self, columns: list[str]) -> runs.MetricsWriter:
        return runs.MetricsWriter(self.run_dir / runs.METRICS, columns)

    def _note_best(self, row: dict[str, Any]) -> bool:
        """Whether the epoch of `row` is the best so far (then it becomes `self.best`)."""
        score = best_rule.score(row)
        improved = score is not None and (self.best is None or score < self.best["score"])
        if improved:
            self.best = {"score": score, "epoch": row["epoch"], "row": row}
        return improved

    def _save_epoch(self, row: dict[str, Any]) -> None:
        improved = self._note_best(row)
        state = self._save_last()
        folder = self.run_dir / runs.CHECKPOINTS
        if improved:
            checkpoint.save(folder / runs.BEST, state)
        every = self.config.training.checkpoint_every
        if every and row["epoch"] % every == 0:
            checkpoint.save(folder / f"epoch-{row['epoch']:04d}{checkpoint.SUFFIX}", state)

    def _save_last(self) -> checkpoint.Checkpoint:
        state, folder = self._state(), self.run_dir / runs.CHECKPOINTS
        self._saved_wall = state.meta["wall_seconds"]  # what an interrupted run's summary says (_finish)
        # The old `last` becomes `previous` only once the new one is safely written.
        checkpoint.save(folder / runs.LAST, state, before_replace=lambda: runs.keep_previous(folder))
        return state

    def _state(self) -> checkpoint.Checkpoint:
        meta = {
            "epoch": self.position.epoch, "updates": self.position.updates, "samples": self.position.samples,
            "position": self.position.to_dict(),
            "rng": {"shuffle": self.rngs.shuffle.bit_generator.state, "dropout": self.rngs.dropout.bit_generator.state},
            "best": self.best, "metrics": self.last_row, "train_seconds": self.train_seconds, "tracked": self.recorders.partial(),
            "wall_seconds": self.wall_before + (0.0 if self._segment_started is None
                                                else time.perf_counter() - self._segment_started),
            "schedule_epochs": self.schedule_epochs, "data": self.data, "processes": self.processes,
            "blas_threads": self.blas_threads, "blas_kernel": self.blas_kernel,
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
            "schedule_epochs": self.schedule_epochs,
            "schedule_note": resuming.schedule_note(self.config, self.schedule_epochs, self.problem.schedule(10**12)),
            "updates": self.position.updates,
            "samples": self.position.samples,
            "resumed_from_epoch": self.resumed_from,
            "train_seconds": round(self.train_seconds, 3),
            "wall_seconds": round(wall, 3),
            "seconds_per_epoch": round(self.train_seconds / epochs, 4) if epochs else None,
            "batch_size": self.problem.batch_size,
            "processes": self.processes,
            "parameters": self.problem.model.num_parameters(),
            "final": self.last_row,
            "best": self.best["row"] if self.best else None,
            "best_epoch": self.best["epoch"] if self.best else None,
            "versions": runs.versions(),
        }
