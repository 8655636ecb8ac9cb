"""The files a command writes outside the run directories: checked before the command's work starts.

``fileio.check_new_output`` decides for each file on its own (a new file, or an existing regular file with
--force; never a device, FIFO or socket). This module adds what needs the run layout and the whole set: no
output inside a run directory (README: eval, compare and the other commands only read runs; a --force
must not turn a run's checkpoint or summary into a PNG), and no two outputs of one command on one path.
"""

from __future__ import annotations

from pathlib import Path

from sgdcli import fileio
from sgdcli.errors import UsageError
from sgdcli.runs import directory as runs


def check_new_outputs(paths: list[Path], overwrite: bool, creates_folder: bool = False) -> None:
    """UsageError (exit 2) unless every one of `paths` may be written as a new output: none inside a run
    directory (a folder holding a run's config.yaml and its metrics, lock or checkpoints), none twice, and
    each as ``fileio.check_new_output`` allows (`overwrite`: --force; `creates_folder`: the caller makes
    the folder)."""
    seen: dict[Path, Path] = {}
    for path in map(Path, paths):
        run = run_holding(path)
        if run is not None:
            raise UsageError(f"is inside the run directory {run}, which holds only what training writes; choose a "
                             "file outside it", source=str(path))
        key = path.absolute().resolve()
        if key in seen:
            raise UsageError(f"this command would write two of its files here ({seen[key].name} and {path.name}); "
                             "choose another name", source=str(path))
        seen[key] = path
        fileio.check_new_output(path, overwrite, creates_folder)


def run_holding(path: Path) -> Path | None:
    """The run directory `path` would be written into (its folder or any folder above it), else None."""
    for folder in Path(path).absolute().resolve().parents:
        if (folder / runs.CONFIG).is_file() and any(
                (folder / name).exists() for name in (runs.METRICS, runs.LOCK, runs.CHECKPOINTS)):
            return folder
    return None
