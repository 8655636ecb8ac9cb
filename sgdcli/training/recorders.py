"""What a run records on the way besides its metrics: layer statistics (training.track), the
decision-boundary frames, the weight trajectory, and the pictures drawn from them at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sgdcli.config.schema import GRADIENT_OPTIMIZERS, ExperimentConfig
from sgdcli.engine.model import Sequential
from sgdcli.errors import SgdcliError
from sgdcli.training import boundary, build, track, trajectory
from sgdcli.training.filters import write_filters_plot


class Recorders:
    """The session's recorders; each is optional but the trajectory (kept small by its own limits)."""

    def __init__(self, config: ExperimentConfig, prepared: build.PreparedData, model: Sequential,
                 updates_per_epoch: int, classification: bool) -> None:
        epochs = config.training.epochs
        self.tracker = track.build_tracker(config.training.track, model.parameters(), updates_per_epoch,
                                           isinstance(config.optimizer, GRADIENT_OPTIMIZERS))
        self.boundary = boundary.build_recorder(prepared, classification, build.output_width(config, prepared),
                                                epochs) if config.training.boundary else None
        self.trajectory = trajectory.TrajectoryRecorder(model.parameters(), epochs)

    @property
    def columns(self) -> list[str]:
        """Extra metrics.csv columns (the tracked statistics)."""
        return self.tracker.columns if self.tracker else []

    def epoch_row(self, model: Sequential) -> dict[str, Any]:
        return self.tracker.epoch_row(model.parameters()) if self.tracker else {}

    def partial(self) -> dict[str, Any] | None:
        """The tracked statistics of the epoch in progress (JSON), kept in a checkpoint; None when nothing is tracked."""
        return self.tracker.partial() if self.tracker else None

    def resume_partial(self, saved: dict[str, Any] | None) -> None:
        """Go on with the statistics a checkpoint kept (``partial``); a checkpoint without them starts them at 0."""
        if self.tracker and saved is not None:
            self.tracker.resume_partial(saved)

    def resume_from(self, run_dir: Path, epoch: int) -> None:
        self.trajectory.resume_from(run_dir, epoch)
        if self.boundary:
            self.boundary.resume_from(run_dir, epoch)

    def record(self, epoch: int, model: Sequential, last: bool = False) -> None:
        """A boundary frame and a trajectory snapshot when their schedules ask for this epoch."""
        if self.boundary:
            self.boundary.record(epoch, model, last=last)
        self.trajectory.record(epoch, model.parameters(), last=last)

    def write(self, run_dir: Path, epoch: int, model: Sequential, rows: list[dict[str, Any]]) -> None:
        """The run's end (any end): the last frame and snapshot, then every file drawn from them, each tried
        even when one before it could not be written (the first such SgdcliError is raised after all)."""
        self.record(epoch, model, last=True)
        tracker = self.tracker
        writes = [lambda: self.trajectory.write(run_dir)]  # first what is only in memory: snapshots, then frames
        if self.boundary:
            writes.append(lambda: self.boundary.write(run_dir, run_dir.name))
        writes.append(lambda: write_filters_plot(run_dir, model))
        if rows and tracker:
            writes.append(lambda: track.plot(rows, tracker.statistics, tracker.names, run_dir.name,
                                             run_dir / track.LAYERS_PLOT))
        failures = []
        for write in writes:
            try:
                write()
            except SgdcliError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
