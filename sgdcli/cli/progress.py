"""What the live progress bar shows: epoch i/N, the epoch's and the run's ETA, and the loss so far."""

from __future__ import annotations

from dataclasses import dataclass, field


def duration(seconds: float | None) -> str:
    """12s, 3:05 (minutes:seconds) or 1:02:03 (hours:minutes:seconds); '-' when not known yet."""
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}" if minutes else f"{secs}s"


def loss_text(value: float) -> str:
    """Four significant digits, whatever the magnitude: 0.6931, 5.000e-05, 1234."""
    return f"{value:#.4g}".rstrip(".")


@dataclass
class ProgressState:
    """Counts updates and times them from the start of the run (or resume) and of the epoch.

    `mean_loss`: show the running mean of the epoch's batch losses instead of the last batch's
    (sgd mode, where one sample's loss jumps from update to update)."""

    epochs: int
    updates_per_epoch: int
    first_update: int  # updates already done when this process started (resume)
    started: float
    mean_loss: bool
    epoch: int = 1
    _updates: int = 0
    _epoch_started: float = 0.0
    _epoch_first_batch: int = 0
    _loss_sum: float = 0.0
    _loss_count: int = 0
    _run_total: int = field(init=False)

    def __post_init__(self) -> None:
        self._epoch_started = self.started
        self._run_total = self.epochs * self.updates_per_epoch

    def new_epoch(self, epoch: int, now: float) -> None:
        self.epoch, self._epoch_started, self._epoch_first_batch = epoch, now, 0
        self._loss_sum, self._loss_count = 0.0, 0

    def fields(self, done: int, loss: float, now: float) -> dict[str, str]:
        """The bar's text fields after batch `done` of the epoch, whose loss was `loss`."""
        self._updates += 1
        if self._loss_count == 0:
            self._epoch_first_batch = done - 1
        self._loss_sum += loss
        self._loss_count += 1
        shown = self._loss_sum / self._loss_count if self.mean_loss else loss
        in_epoch = done - self._epoch_first_batch
        epoch_rate = (now - self._epoch_started) / in_epoch
        run_rate = (now - self.started) / self._updates
        remaining = self._run_total - (self.first_update + self._updates)
        return {"epoch": f"{self.epoch}/{self.epochs}",
                "loss": f"{'mean loss' if self.mean_loss else 'loss'} {loss_text(shown)}",
                "eta": f"ETA epoch {duration(epoch_rate * (self.updates_per_epoch - done))}, "
                       f"run {duration(run_rate * max(remaining, 0))}"}
