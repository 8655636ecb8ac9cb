"""What a command that runs a model does before anything imports NumPy: load NumPy with the OpenBLAS
idle spin and kernels chosen for that model (engine/spin.py owns the choice; README Performance, "OpenBLAS's
idle spin" and "OpenBLAS's kernels on Zen 4"). Imports nothing heavy at module level: the CLI imports it for
every command, ``--help`` too."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

# The run directory's layout (sgdcli/runs/directory.py, which loads NumPy): its config snapshot, the folder
# of its checkpoints and the mark of one set aside as damaged. tests/test_spin.py checks these against it.
RUN_CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
DAMAGED_MARK = ".damaged-"
PREFERENCE = {"last.safetensors": 2, "previous.safetensors": 1}  # among equally advanced ones, as a resume
HEADER_LIMIT = 100_000_000  # checkpoint.MAX_HEADER_BYTES: the largest safetensors header a checkpoint may have


def config_and_numpy(config: Path, overrides: Sequence[str]):
    """The command's config (`config` with `overrides`, ``load_config``: its errors raised), after loading
    NumPy for its model."""
    from sgdcli.config.loading import load_config

    experiment = load_config(config, list(overrides))
    load_numpy_for(experiment)
    return experiment


def spin_for_file(config: Path | None, overrides: Sequence[str], run: Path | None = None) -> None:
    """Load NumPy for the model of `config` (with `overrides`), or of `run` (a run directory) without a
    file, for a command that reads the config again itself (with `run`: a resume, on the kernels the run
    recorded); a config that cannot be read keeps OpenBLAS's defaults here, and the command reports what is
    wrong (under mpiexec, rank 0 alone)."""
    from sgdcli.config.loading import load_config
    from sgdcli.errors import SgdcliError

    if config is None and run is not None:
        return load_numpy_for_run(run)
    try:
        experiment = load_config(config, list(overrides)) if config is not None else None
    except (SgdcliError, OSError):  # not ours to report
        experiment = None
    load_numpy_for(experiment, None if run is None else _run_folder(Path(run)))


def load_numpy_for(config, run: Path | None = None) -> None:
    """Load NumPy for a command that runs `config`'s model (an ExperimentConfig; anything else has no
    model: OpenBLAS's defaults): the spin for its layers, and the kernels for a new model (``spin.kernel_for``)
    or, for a trained run (`run`, its folder), the ones it recorded (``spin.resumed_kernel``)."""
    from sgdcli.config.schema import ExperimentConfig
    from sgdcli.engine import spin

    model = config.model if isinstance(config, ExperimentConfig) else None
    if run is not None:
        kernel = spin.resumed_kernel(recorded_kernel(run))
    elif model is not None:
        batch = config.training.batch
        kernel = spin.kernel_for(model.dtype == "float64", batch.mode == "sgd" or (batch.mode == "minibatch"
                                                                                    and batch.size == 1))
    else:
        kernel = None
    spin.load_numpy(model is not None and model.convolutional, kernel)


def load_numpy_for_run(target: Path) -> None:
    """Load NumPy for a command that runs a trained model: `target` a run directory or a checkpoint file
    in its ``checkpoints/``, whose run's config.yaml says what the model is, and whose checkpoints which
    kernels it trained on. Anything else (a checkpoint file elsewhere, a run whose config cannot be read)
    keeps OpenBLAS's defaults, and the command itself then reports what is wrong, if anything."""
    from sgdcli.config.loading import load_config
    from sgdcli.errors import SgdcliError

    folder = _run_folder(Path(target))
    path = folder / RUN_CONFIG
    try:
        config = load_config(path, check_precision=False) if path.is_file() else None  # (a run: it has trained)
    except (SgdcliError, OSError):  # not ours to report: the command reads the run and says what is wrong
        config = None
    load_numpy_for(config, folder if config is not None else None)


def _run_folder(target: Path) -> Path:
    return target.parent.parent if target.parent.name == CHECKPOINTS else target


def recorded_kernel(run: Path) -> str | None:
    """The OpenBLAS kernels the run's most advanced checkpoint records (``blas_kernel``; the one a resume starts
    from: ``runs.directory.newest_checkpoint``), read from the checkpoints' safetensors headers alone (NumPy is
    not loaded yet); None where none records them (a run from before sgdcli did) or none can be read (the
    command reports that itself). Regular files only: a FIFO or a device there would block or never end."""
    best: tuple[tuple[int, int], str | None] = ((-1, -1), None)
    for path in sorted((run / CHECKPOINTS).glob("*.safetensors")):
        if DAMAGED_MARK in path.name or not path.is_file():
            continue
        try:
            with open(path, "rb") as file:
                size = int.from_bytes(file.read(8), "little")
                header = json.loads(file.read(size)) if 0 < size <= HEADER_LIMIT else None
            meta = json.loads(header["__metadata__"]["meta"])
            rank, kernel = (int(meta["updates"]), PREFERENCE.get(path.name, 0)), meta.get("blas_kernel")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if rank > best[0]:
            best = (rank, kernel if isinstance(kernel, str) else None)
    return best[1]
