"""What a command that runs a model does before anything imports NumPy: load NumPy with the OpenBLAS
idle spin and kernel chosen for that model (engine/spin.py owns the choice; README Performance, "OpenBLAS's
idle spin" and "OpenBLAS's kernel on Zen 4"). Imports nothing heavy at module level: the CLI imports it for every command, ``--help`` too."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# The run directory's layout (sgdcli/runs/directory.py, which loads NumPy): its config snapshot and
# the folder of its checkpoints. tests/test_spin.py checks these names against it.
RUN_CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"


def config_and_numpy(config: Path, overrides: Sequence[str]):
    """The command's config (`config` with `overrides`, ``load_config``: its errors raised), after loading
    NumPy for its model."""
    from sgdcli.config.loading import load_config

    experiment = load_config(config, list(overrides))
    load_numpy_for(experiment)
    return experiment


def spin_for_file(config: Path | None, overrides: Sequence[str], run: Path | None = None) -> None:
    """Load NumPy for the model of `config` (with `overrides`), or of `run` (a run directory) without a
    file, for a command that reads the config again itself: a config that cannot be read keeps
    OpenBLAS's default here, and the command reports what is wrong (under mpiexec, rank 0 alone)."""
    from sgdcli.config.loading import load_config
    from sgdcli.errors import SgdcliError

    if config is None and run is not None:
        return load_numpy_for_run(run)
    try:
        experiment = load_config(config, list(overrides)) if config is not None else None
    except (SgdcliError, OSError):  # not ours to report
        experiment = None
    load_numpy_for(experiment)


def load_numpy_for(config) -> None:
    """Load NumPy for a command that runs `config`'s model (an ExperimentConfig; anything else has no
    model: OpenBLAS's default spin, and the kernel of a float32 model)."""
    from sgdcli.config.schema import ExperimentConfig
    from sgdcli.engine import spin

    if not isinstance(config, ExperimentConfig):
        spin.load_numpy(False)
        return
    batch = config.training.batch
    spin.load_numpy(config.model.convolutional, float64=config.model.dtype == "float64",
                    one_sample=batch.mode == "sgd" or (batch.mode == "minibatch" and batch.size == 1))


def load_numpy_for_run(target: Path) -> None:
    """Load NumPy for a command that runs a trained model: `target` a run directory or a checkpoint file
    in its ``checkpoints/``, whose run's config.yaml says what the model is. Anything else (a checkpoint
    file elsewhere, a run whose config cannot be read) keeps OpenBLAS's default, and the command itself
    then reports what is wrong, if anything."""
    from sgdcli.config.loading import load_config
    from sgdcli.errors import SgdcliError

    target = Path(target)
    folder = target.parent.parent if target.parent.name == CHECKPOINTS else target
    path = folder / RUN_CONFIG
    try:
        config = load_config(path, check_precision=False) if path.is_file() else None  # (a run: it has trained)
    except (SgdcliError, OSError):  # not ours to report: the command reads the run and says what is wrong
        config = None
    load_numpy_for(config)
