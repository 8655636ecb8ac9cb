"""The run directory: config snapshot, metrics.csv, checkpoints, summary.json — writing and reading."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgdcli import strict_json
from sgdcli.config.yamlio import dump_yaml, read_yaml
from sgdcli.errors import CheckpointError, DamagedCheckpointError, RunDirError, SgdcliError
from sgdcli.fileio import (
    atomic_write_text,
    fsync_dir,
    open_no_follow,
    refuse_links,
    remove_stale_temps,
    special_kind,
    write_error,
)
from sgdcli.runs import checkpoint

CONFIG = "config.yaml"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LOSS_PLOT = "loss.png"
LAST = "last.safetensors"
PREVIOUS = "previous.safetensors"  # the last checkpoint before `last`: the fallback if `last` is damaged
PREFERENCE = {LAST: 2, PREVIOUS: 1}  # a resume's choice among equally advanced checkpoints: the rolling ones
INITIAL = "initial.safetensors"  # the state before the first update
BEST = "best.safetensors"
LOCK = "run.lock"

# metrics.csv columns; `seconds` is the only wall-clock column.
BASE_COLUMNS = ["epoch", "updates", "samples", "forward_passes", "seconds", "learning_rate", "train_loss",
                "train_loss_full", "val_loss"]
ACCURACY_COLUMNS = ["train_accuracy", "val_accuracy"]
WALL_CLOCK_COLUMNS = {"seconds"}


def metric_columns(classification: bool) -> list[str]:
    return BASE_COLUMNS + (ACCURACY_COLUMNS if classification else [])


def create_run_dir(runs_dir: Path, name: str, now: float | None = None, checkpoints: bool = True,
                   path: Path | None = None) -> Path:
    """runs_dir/<name>-<YYYYmmdd-HHMMSS>, with -2, -3, ... if taken; never reuses a directory.

    With `path`, exactly that directory (`train --run-dir`: a sweep member whose place must be known
    before it starts); it must not exist yet (RunDirError, exit 4)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    parent = runs_dir if path is None else path.parent
    blocking = next((p for p in (parent, *parent.parents) if os.path.lexists(p) and not p.is_dir()), None)
    if blocking is not None:  # named for what it is, not mkdir's "File exists"
        kind = special_kind(blocking) or ("a symbolic link to nothing" if not blocking.exists() else "a file")
        raise RunDirError(f"is {kind}, not a folder: no run directory can be made in it", source=str(blocking))
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create the runs directory: {exc.strerror}", source=str(parent)) from None
    candidates = [path] if path is not None else [
        runs_dir / (f"{name}-{stamp}" if attempt == 1 else f"{name}-{stamp}-{attempt}") for attempt in range(1, 1000)]
    for candidate in candidates:
        try:
            candidate.mkdir()  # atomic: exactly one process gets each name
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_error(candidate, exc) from None
        if checkpoints:
            try:
                (candidate / CHECKPOINTS).mkdir()
            except OSError as exc:
                remove_unstarted(candidate)
                raise write_error(candidate / CHECKPOINTS, exc, "the run could not start and was removed") from None
        return candidate
    if path is not None:
        raise RunDirError("is a file, not a run directory: choose another --run-dir" if not path.is_dir() else
                          "already exists, and a run directory is never reused: continue that run with "
                          "`sgdcli train --resume` or choose another --run-dir", source=str(path))
    raise RunDirError("more than 999 runs with this name in one second", source=str(runs_dir))


class RunLock:
    """An exclusive flock on run.lock (released by the kernel if this process dies); close() releases it
    and empties the file again, so a run that is not being written holds no stale process id."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def lock_run(run_dir: Path) -> RunLock:
    """Hold an exclusive lock on the run; a symbolic link or a shared file at run.lock is refused
    (exit 4), never truncated or written through."""
    path = run_dir / LOCK
    fd = open_no_follow(path, append=False)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise RunDirError(f"the run is being written by {holder}; wait for it to finish", source=str(run_dir)) from None
    try:  # who holds the lock, for the message another process gets; the lock works without it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"sgdcli process {os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return RunLock(fd)


def remove_unstarted(run_dir: Path) -> bool:
    """Remove a run directory this process just created and that never got its initial checkpoint
    (it holds only our own files); True when it is gone."""
    shutil.rmtree(run_dir, ignore_errors=True)
    return not os.path.lexists(run_dir)


class MetricsWriter:
    """Appends one row per epoch to metrics.csv, unbuffered, as training goes; a row that cannot be
    written whole is taken back, so the file never ends in half a row. A symbolic link, a special
    file or a file with other hard links at metrics.csv is refused (exit 4), never written through."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        self._fd: int | None = open_no_follow(path, append=True)
        if os.lseek(self._fd, 0, os.SEEK_END) == 0:
            self._append(",".join(columns) + "\n")

    def write(self, row: dict[str, Any]) -> None:
        self._append(",".join(_format_cell(row.get(column)) for column in self.columns) + "\n")

    def _append(self, line: str) -> None:
        data = line.encode("utf-8")
        size = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            rest = memoryview(data)
            while rest:  # after a short write the next one raises the real cause (EFBIG past a file-size limit)
                rest = rest[os.write(self._fd, rest):]
        except OSError as exc:
            try:
                os.ftruncate(self._fd, size)
                kept = "the row was not written; the rows before it are intact"
            except OSError:
                kept = None
            raise write_error(self.path, exc, kept) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def keep_metrics_until(path: Path, epoch: int, aside: Path | None = None) -> None:
    """Keep exactly one whole row for each epoch 1..`epoch` (rows written after the checkpoint a
    run resumes from, or cut short by a kill, go). With `aside`, whole rows that go are first
    written there (with the header): a resume that falls back past damaged checkpoints loses none."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = lines[:1]
    for line in lines[1:]:
        if len(kept) <= epoch and line.endswith("\n") and line.split(",", 1)[0] == str(len(kept)):
            kept.append(line)
    dropped = [line for line in lines[len(kept):] if line.endswith("\n")] if kept == lines[:len(kept)] else []
    if aside is not None and dropped:
        atomic_write_text(aside, "".join(lines[:1] + dropped))
    if kept != lines:
        atomic_write_text(path, "".join(kept))


def keep_previous(folder: Path) -> None:
    """Before `last` is replaced, keep it as `previous` (a hard link: no copy, never a moment
    without `last`)."""
    last, previous = folder / LAST, folder / PREVIOUS
    if not last.exists():
        return
    temp = folder / f".tmp-previous-{os.getpid()}"
    try:
        os.link(last, temp)
        os.replace(temp, previous)
    except OSError:
        try:
            temp.unlink()
        except OSError:
            pass


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form: identical runs give identical bytes
    return str(value)


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_text(run_dir / CONFIG, dump_yaml(config))


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(run_dir / SUMMARY, strict_json.dumps(summary, indent=2) + "\n")


def checkpoint_path(run_dir: Path, kind: str) -> Path:
    return run_dir / CHECKPOINTS / kind


def prepare_existing(run_dir: Path) -> None:
    remove_stale_temps(run_dir)
    remove_stale_temps(run_dir / CHECKPOINTS)


# ---------------------------------------------------------------- reading
@dataclass
class RunRecord:
    """What `compare` and `eval` read from a run directory (they never write into it)."""

    path: Path
    config: dict[str, Any] | None = None
    metrics: list[dict[str, float | None]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


def read_run(path: Path) -> RunRecord:
    """Read whatever of a run is readable; missing or damaged files become `problems`."""
    path = Path(path)
    record = RunRecord(path)
    if not path.is_dir():
        record.problems.append("not a run directory" if path.exists() else "no such run directory")
        return record
    try:
        config = read_yaml(path / CONFIG)
        record.config = config if isinstance(config, dict) else None
        if record.config is None:
            record.problems.append(f"{CONFIG} is not a mapping")
    except SgdcliError as exc:
        record.problems.append(f"{CONFIG}: {exc.message}")
    try:
        record.metrics = read_metrics(path / METRICS)
    except SgdcliError as exc:
        record.problems.append(f"{METRICS}: {exc.message}")
    try:
        # Python's lenient parser: a summary written before non-finite values became null holds bare NaN
        record.summary = json.loads((path / SUMMARY).read_text(encoding="utf-8"))
    except FileNotFoundError:
        record.problems.append(f"{SUMMARY} is missing (the run may still be going, or was killed)")
    except (OSError, ValueError, UnicodeDecodeError):
        record.problems.append(f"{SUMMARY} is damaged")
    return record


def read_metrics(path: Path) -> list[dict[str, float | None]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunDirError("missing", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"cannot read ({exc})", source=str(path)) from None
    rows = []
    for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            rows.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items() if k is not None})
        except ValueError:
            if number == len(text.splitlines()):  # a row cut short by a killed process
                break
            raise RunDirError(f"row {number}: expected numbers", source=str(path)) from None
    return rows


def find_checkpoint(target: Path) -> Path:
    """A checkpoint file as given, or a run directory's best checkpoint (else its last)."""
    target = Path(target)
    if not target.exists():
        raise CheckpointError("no such run directory or checkpoint file", source=str(target))
    if not target.is_dir():
        return target  # a file; loading refuses anything that is not a checkpoint
    for kind in (BEST, LAST):
        candidate = checkpoint_path(target, kind)
        if os.path.lexists(candidate):  # whatever it is: loading it says what is wrong, never a silent `last`
            return candidate
    if _is_objective_run(target):
        raise CheckpointError("an objective run has no model to load: its path is in metrics.csv and path.png, "
                              "its end point in summary.json", source=str(target))
    if not (target / CONFIG).exists() and not (target / CHECKPOINTS).exists():
        raise CheckpointError(_not_a_run(target), source=str(target))
    raise CheckpointError(f"no checkpoint in {CHECKPOINTS}/ (expected {BEST} or {LAST}); "
                          "was the run stopped before its first epoch ended?", source=str(target))


DAMAGED_MARK = ".damaged-"  # last.damaged-20261129-190000.safetensors: set aside by a resume, never read again


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The run's checkpoints, without the damaged ones a resume has set aside."""
    return sorted(p for p in (run_dir / CHECKPOINTS).glob("*" + checkpoint.SUFFIX) if DAMAGED_MARK not in p.name)


def newest_checkpoint(run_dir: Path) -> tuple[Path, checkpoint.Checkpoint, list[tuple[Path, str]]]:
    """The valid checkpoint with the most updates, and each provably damaged one (path, why).

    A file that fails to load without being provably damaged (a foreign file, another format
    version) stops the resume before anything is changed: skipping it could rewind the run over
    valid data that this version merely does not read.
    """
    valid, damaged = [], []
    for path in checkpoint_files(run_dir):
        try:
            valid.append((path, checkpoint.load(path)))
        except DamagedCheckpointError as exc:
            damaged.append((path, exc.message))
        except CheckpointError as exc:
            raise CheckpointError(f"{exc.message}. --resume changed nothing: it skips only checkpoints that are "
                                  "provably damaged (truncated, or failing their checksum); move this file out of "
                                  f"{CHECKPOINTS}/ to resume from the others", source=exc.source) from None
    if not valid:
        found = "; ".join(f"{path.name}: {why}" for path, why in damaged) or f"{CHECKPOINTS}/ holds no checkpoint"
        raise CheckpointError(f"no valid checkpoint to resume from ({found})", source=str(run_dir))
    path, state = max(valid, key=lambda item: (int(item[1].meta.get("updates", -1)), PREFERENCE.get(item[0].name, 0)))
    return path, state, damaged


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to `<name>.damaged-<time>.safetensors` (never replacing a file)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = path.name.removesuffix(checkpoint.SUFFIX)
    for attempt in range(1, 1000):
        target = path.with_name(f"{stem}{DAMAGED_MARK}{stamp}{'' if attempt == 1 else f'-{attempt}'}{checkpoint.SUFFIX}")
        try:
            os.link(path, target)  # fails if the name is taken: nothing is overwritten
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_error(target, exc, f"{path.name} is unchanged") from None
        os.unlink(path)
        fsync_dir(path.parent)
        return target
    raise RunDirError("cannot find a free name to set the damaged checkpoint aside", source=str(path))


def refuse_run_links(run_dir: Path) -> None:
    """RunDirError (exit 4) if a file of the run, or its checkpoints folder, is a symbolic link."""
    folder = run_dir / CHECKPOINTS
    refuse_links([run_dir / name for name in (CONFIG, METRICS, SUMMARY, LOCK, LOSS_PLOT, CHECKPOINTS)])
    refuse_links(sorted(folder.iterdir()) if folder.is_dir() else [])


def _not_a_run(folder: Path) -> str:
    """What to say about a folder that is not a run directory: often a folder of runs (`runs`)."""
    try:
        inside = [p for p in folder.iterdir() if p.is_dir() and ((p / CONFIG).exists() or (p / CHECKPOINTS).is_dir())]
    except OSError:
        inside = []
    if not inside:
        return (f"not a run directory (no {CONFIG} or {CHECKPOINTS}/ in it); expected a run directory written by "
                "sgdcli train, or a checkpoint file")
    newest = max(inside, key=lambda p: (p.stat().st_mtime, p.name))
    runs = "1 run" if len(inside) == 1 else f"{len(inside)} runs"
    return (f"a folder of {runs}, not a run directory; name one of them, e.g. {newest} (the newest), "
            f"or compare them all with: sgdcli compare {folder}/*")


def _is_objective_run(run_dir: Path) -> bool:
    try:
        config = read_yaml(run_dir / CONFIG)
    except SgdcliError:
        return False
    return isinstance(config, dict) and "objective" in config


def versions() -> dict[str, str]:
    import platform

    import numpy

    from sgdcli import __version__

    return {"sgdcli": __version__, "numpy": numpy.__version__, "python": platform.python_version()}
