"""What a resume must check before it continues a run: the same experiment (the command line, the
run's config.yaml and the checkpoint agree), the same data, and whether anything is left to do."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sgdcli.config import precision
from sgdcli.config.loading import flatten, load_config
from sgdcli.config.schema import CosineConfig, ExperimentConfig
from sgdcli.config.yamlio import read_yaml
from sgdcli.engine import workers
from sgdcli.errors import CheckpointError, ConfigError, DataError, RunDirError
from sgdcli.runs import best as best_rule
from sgdcli.runs import checkpoint
from sgdcli.runs import directory as runs
from sgdcli.training import provenance


def saved_config(run_dir: Path) -> ExperimentConfig:
    """The run's config.yaml, validated (not ``precision.check``: a setting it refuses is no damage; ``check_settings``)."""
    path = run_dir / runs.CONFIG
    try:
        config = load_config(read_yaml(path), check_precision=False).read_from(str(path))
    except ConfigError as exc:
        raise RunDirError(f"the run's saved config is damaged: {exc.message}", source=str(path)) from None
    if not isinstance(config, ExperimentConfig):
        raise RunDirError("an objective run is a few hundred steps: train it again instead of resuming",
                          source=str(run_dir))
    return config


def differences(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """Each differing dotted key as "key: OLD in the run, NEW now"; a larger training.epochs is allowed."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    changed = [key for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)]
    changed = [key for key in changed if key != "training.epochs" or b[key] < a[key]]
    return [f"{key}: {a.get(key)!r} in the run, {b.get(key)!r} now" for key in changed]


def check_requested(saved: ExperimentConfig, requested: ExperimentConfig, run_dir: Path) -> None:
    """A CONFIG or --set given with --resume continues the same experiment: only training.epochs may grow; and
    the settings it trains with must hold in its model dtype (``check_settings``)."""
    changed = differences(saved, requested)
    if len(changed) == 1 and changed[0].startswith("training.epochs:"):
        raise ConfigError(f"training.epochs: expected at least {saved.training.epochs} (the epochs the run "
                          f"{run_dir} has planned: on --resume only training.epochs may grow), "
                          f"received {requested.training.epochs}", source=requested.file)
    if changed:
        raise ConfigError("--resume continues the same experiment; only training.epochs may grow. Differing: "
                          + "; ".join(changed), source=requested.file)
    check_settings(requested)


def check_settings(config: ExperimentConfig) -> None:
    """The settings a resumed run would train with must hold in its model dtype (``precision.check``): a run
    trained before that check existed may have one that is 0 there, and would go on training nothing."""
    problem = precision.check(config, advice=False)
    if problem:
        raise ConfigError(f"{problem}; a resumed run keeps its settings: train a new run with this one changed",
                          source=config.file)


def checkpoint_config(path: Path, state: checkpoint.Checkpoint) -> ExperimentConfig:
    try:
        config = load_config(state.meta["config"], check_precision=False)  # (compared, not trained with)
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"the config stored in the checkpoint is not valid: {exc}", source=str(path)) from None
    if not isinstance(config, ExperimentConfig):
        raise CheckpointError("the checkpoint holds no experiment config", source=str(path))
    return config


def check_saved(saved: ExperimentConfig, path: Path, state: checkpoint.Checkpoint, run_dir: Path) -> None:
    """The run's config.yaml must be the config its checkpoint was trained with (a hand edit would
    mix two experiments in one run); only training.epochs may have grown."""
    if changed := differences(checkpoint_config(path, state), saved):
        raise RunDirError(f"{runs.CONFIG} differs from the config stored in {path.name}, so resuming would mix two "
                          "experiments (only training.epochs may grow). Differing: "
                          + "; ".join(c.replace(" in the run,", " in the checkpoint,").replace(" now", f" in {runs.CONFIG}")
                                      for c in changed), source=str(run_dir / runs.CONFIG))


def check_files(recorded: dict[str, Any] | None, path: Path) -> None:
    """The training and validation files are the ones the run was trained on (before they are read)."""
    if recorded is None:  # a checkpoint from before sgdcli recorded its data
        return
    try:
        provenance.verify(recorded, ("train", "validation"), "; resuming would train on other data")
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"damaged record of the training data ({exc!r})", source=str(path)) from None


def check_same_data(theirs: dict[str, Any] | None, mine: dict[str, Any], source: Path) -> None:
    """A data-parallel process reads the training and validation files rank 0 reads (``theirs``, from the
    checkpoint it sent) and draws the same split: each process reads the data itself, and another file at the
    same path (another machine's copy) would train one model on two datasets, or end in MPI's own error
    when the row counts differ. DataError (exit 3) naming the file."""
    if theirs is None:
        return
    roles = ("train", "validation")
    expected = {entry["path"]: entry for entry in theirs.get("files", []) if entry.get("role") in roles}
    for entry in mine["files"]:
        other = expected.get(entry["path"])
        if entry["role"] in roles and other is not None and (other["sha256"], other["size"]) != (entry["sha256"], entry["size"]):
            raise DataError(f"expected the file MPI process 0 reads ({other['size']} bytes, SHA-256 "
                            f"{other['sha256'][:12]}…), received {entry['size']} bytes with SHA-256 "
                            f"{entry['sha256'][:12]}…: every process must read the same data", source=entry["path"])
    check_split(theirs, mine, source)


def check_split(recorded: dict[str, Any] | None, current: dict[str, Any], path: Path) -> None:
    """The validation split drawn now is the one the run was trained with."""
    if recorded is not None and recorded.get("split") != current.get("split"):
        raise CheckpointError("the validation split drawn now differs from the one the run was trained with "
                              "(another sgdcli version?); resuming would mix training and validation rows",
                              source=str(path))


def schedule_epochs(config: ExperimentConfig, state: checkpoint.Checkpoint, path: Path) -> int:
    """The epochs the run's step-size schedule was created for (a resume keeps its length)."""
    stored = state.meta.get("schedule_epochs")
    return int(stored) if stored is not None else checkpoint_config(path, state).training.epochs


def schedule_note(config: ExperimentConfig, epochs_of_schedule: int, last_rate: float) -> str | None:
    """What a run longer than its schedule does after the schedule's end (only cosine has an end)."""
    if not isinstance(config.optimizer.schedule, CosineConfig) or config.training.epochs <= epochs_of_schedule:
        return None
    return (f"the cosine schedule keeps the length it was created with ({epochs_of_schedule} epochs); epochs "
            f"{epochs_of_schedule + 1}-{config.training.epochs} use its final step size {last_rate:.6g}")


def early_stop(config: ExperimentConfig, epoch: int, best: dict[str, Any]) -> str:
    """What the console and summary.json say when `training.patience` ends a run after `epoch`;
    `best` is the session's best epoch ({"epoch", "score", "row"})."""
    column = best_rule.score_column(best["row"])
    return (f"stopped early after epoch {epoch} of {config.training.epochs}: {column} has not improved for "
            f"{epoch - best['epoch']} epochs (training.patience: {config.training.patience}); the best, "
            f"{best['score']:.6g} at epoch {best['epoch']}, is in {runs.CHECKPOINTS}/{runs.BEST}")


def rewrite_note(run_dir: Path, status: str, message: str | None) -> str:
    """What summary.json adds when a run's end-of-run files could not all be written: how the run had ended, and
    what resuming writes again (its training then does what is left, if anything). The plots and the GIF are drawn
    from metrics.csv, the weights and the boundary frames; the trajectory and the frames were only in memory
    (written first: Recorders.write), so if their own files failed a resumed run's hold the epochs from the
    resume on (README, Run directory)."""
    return (f"the run had {status}{f' ({message})' if message else ''}; `sgdcli train --resume {run_dir}` "
            "draws its plots again (a trajectory or boundary-frames file that was not written is lost)")


def finished(run_dir: Path, epochs_done: int, planned: int, batch: int, patience_exhausted: bool) -> str | None:
    """A message when the run has nothing left to do and its summary says it completed; else None."""
    try:
        summary = json.loads((run_dir / runs.SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(summary, dict) or summary.get("status") != "completed" or batch:
        return None
    if epochs_done >= planned:
        return (f"nothing to do: the run has completed its {epochs_done} epochs "
                "(to train longer, pass --set training.epochs=N with a larger N)")
    if patience_exhausted:
        return f"nothing to do: the run stopped early at epoch {epochs_done} (training.patience)"
    return None


def check_meta(meta: dict[str, Any], path: Path) -> None:
    """What resuming reads from a checkpoint's metadata, checked before any of it is used: a valid
    checksum proves only that the file is as written (issue 11: crafted checkpoints)."""
    position, best = meta.get("position"), meta.get("best")
    counters = ("epoch", "batch", "updates", "samples", "forward_passes")
    if not isinstance(position, dict) or set(position) - {*counters, "loss_sum", "epoch_rng"} or not all(
            isinstance(position.get(k), int) and not isinstance(position.get(k), bool) and position[k] >= 0
            for k in counters):
        raise CheckpointError(f"position: expected whole numbers {', '.join(counters)}, received {position!r:.100}",
                              source=str(path))
    if best is not None and not (isinstance(best, dict) and isinstance(best.get("score"), (int, float))
                                 and isinstance(best.get("epoch"), int) and isinstance(best.get("row"), dict)):
        raise CheckpointError(f"best: expected the best epoch's score, epoch and metrics, received {best!r:.100}",
                              source=str(path))




def resume_command(run_dir: Path, processes: int) -> str:
    """The command that continues the run in `run_dir` on the `processes` it trained on (`mpiexec -n P` before
    it for more than one); it trains on the BLAS thread count the run recorded by itself (``blas_threads``)."""
    return f"{f'mpiexec -n {processes} ' if processes > 1 else ''}sgdcli train --resume {run_dir}"


KERNEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,31}")  # OpenBLAS's core names; shown in a command to paste


def blas_threads(meta: dict[str, Any], path: Path, current: int | None,
                 kernel: str | None = None) -> tuple[int | None, str | None]:
    """The BLAS thread count a resumed run trains on, and a note or None. A product's bits depend on
    OpenBLAS's thread count (from ~400 rows of a batch), so a run resumes on the count it trained on
    (``meta["blas_threads"]``; a sweep's ``--jobs`` members and MPI's processes train on fewer than the machine
    has, a run under OPENBLAS_NUM_THREADS on the user's count), set for the run (``blas.threads(exactly=True)``),
    also above this process's count (`current`) and its usable cores: the same bits, more slowly (the note says
    so). Checkpoints before sgdcli recorded it, or a NumPy whose BLAS count cannot be set (`current` None):
    the count as it is. The bits depend on OpenBLAS's kernels too, which are set when NumPy loads (engine/spin.py;
    ``sgdcli train --resume`` loads the ones the run recorded where sgdcli chose them; a user's OPENBLAS_CORETYPE
    wins): where the run's recorded ones (``meta["blas_kernel"]``) are not this process's `kernel` (a run of the
    Python API in a process that loaded NumPy itself, a run trained under the user's variable), the note says
    the run continues rounding otherwise, and gives the command that resumes it on the recorded ones."""
    trained = None if meta.get("blas_threads") is None else _recorded_count(meta, "blas_threads", path)
    recorded = meta.get("blas_kernel")
    if recorded is not None and not (isinstance(recorded, str) and KERNEL_NAME.fullmatch(recorded)):
        raise CheckpointError(f"blas_kernel: expected the name of OpenBLAS's kernels (letters and digits, such as "
                              f"Haswell), received {recorded!r:.100}", source=str(path))
    kernels = None if recorded is None or kernel is None or recorded == kernel else (
        f"the run trained on OpenBLAS's {recorded} kernels and this process runs its {kernel} kernels: it continues "
        f"with other rounding; for the same bits: OPENBLAS_CORETYPE={recorded} "
        f"{resume_command(path.parent.parent, _recorded_count({'processes': 1, **meta}, 'processes', path))}")
    if trained is None or current is None:
        return current, kernels
    cores = workers.usable_cores()
    if trained > cores:
        return trained, "; ".join(filter(None, (
            f"the run trained on {trained} BLAS threads and this process may use {cores} core{'s' * (cores != 1)}: "
            f"it resumes on {trained} threads for the same bits, more slowly", kernels)))
    return trained, kernels


def _recorded_count(meta: dict[str, Any], key: str, path: Path) -> int:
    """meta[key], a count the run recorded, checked: a whole number of at least 1 (CheckpointError otherwise)."""
    count = meta[key]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise CheckpointError(f"{key}: expected a whole number of at least 1, received {count!r:.100}", source=str(path))
    return count


def check_processes(meta: dict[str, Any], path: Path, processes: int) -> None:
    """A run continues on the number of MPI processes it was trained on (checkpoints before sgdcli
    recorded it: 1): another number cuts every batch differently and adds the gradients in another
    order, so the run would not continue bit for bit."""
    trained = _recorded_count({"processes": 1, **meta}, "processes", path)
    if trained != processes:
        def count(p: int) -> str:
            return f"{p} process" + "es" * (p != 1)
        raise CheckpointError(f"the run was trained on {count(trained)} and this resume runs on {count(processes)}: "
                              "a data-parallel run resumes only on the number of processes it was trained on, "
                              "else its batches would be cut and its gradients added differently; continue with: "
                              f"{resume_command(path.parent.parent, trained)}", source=str(path))
