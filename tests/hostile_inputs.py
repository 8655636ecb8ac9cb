"""Hostile inputs shared by the input table and the all-commands corpus (issue 11): configs with
control characters or a model too large for memory, and run directories whose checkpoints carry a
valid, recomputed checksum over arrays that disagree with their metadata."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from conftest import tiny_config

from sgdcli import api
from sgdcli.runs import checkpoint

HUGE_LAYERS = [{"type": "dense", "units": 1_000_000, "activation": "relu"},
               {"type": "dense", "units": 1_000_000, "activation": "relu"}, {"type": "dense", "units": 2}]
ANIMALS_CSV = "weight,height,animal\n" + "".join(
    f"{w},{h},{a}\n" for w, h, a in [(1, 2, "cat"), (3, 1, "dog"), (5, 4, "emu"), (2, 2, "cat"), (4, 1, "dog"),
                                     (6, 5, "emu"), (1.5, 2.5, "cat"), (3.5, 0.5, "dog"), (5.5, 4.5, "emu"),
                                     (2.5, 1.5, "cat"), (4.5, 1.5, "dog"), (6.5, 4, "emu")])


def config_text(**changes) -> str:
    return yaml.safe_dump(tiny_config(**changes), sort_keys=False)


def with_character(character: str) -> str:
    """The tiny config with `character` inside the run's name."""
    return config_text().replace("name: tiny", f"name: ti{character}ny")


def huge_model() -> str:
    return config_text(model__layers=HUGE_LAYERS)


Craft = Callable[[checkpoint.Checkpoint], None]


def crafted_run(craft: Craft, epochs: int = 1) -> Callable[[Path], None]:
    """A FileMaker: train the tiny config into `path` (a run directory), then rewrite every
    checkpoint with `craft` applied; saving recomputes the checksum, so only the contents disagree."""

    def make(path: Path) -> None:
        result = api.train(api.load_config(tiny_config(training__epochs=epochs)), runs_dir=path.parent / ".crafting")
        result.run_dir.rename(path)
        (path.parent / ".crafting").rmdir()
        for file in sorted((path / "checkpoints").glob("*.safetensors")):
            state = checkpoint.load(file)
            craft(state)
            checkpoint.save(file, state)

    return make


def _scale_too_short(state: checkpoint.Checkpoint) -> None:
    state.scale = state.scale[:1]


def _one_class_name(state: checkpoint.Checkpoint) -> None:
    state.meta["class_names"] = state.meta["class_names"][:1]


def _int64_weights(state: checkpoint.Checkpoint) -> None:
    state.params["0.weight"] = (state.params["0.weight"] * 100).astype(np.int64)


def _bool_weights(state: checkpoint.Checkpoint) -> None:
    state.params["0.weight"] = state.params["0.weight"] > 0


def _names_not_strings(state: checkpoint.Checkpoint) -> None:
    state.meta["class_names"] = [0, 1]


def _int64_optimizer_state(state: checkpoint.Checkpoint) -> None:
    if "velocity/0.weight" in state.optimizer:  # none before the first update (initial.safetensors)
        state.optimizer["velocity/0.weight"] = (state.optimizer["velocity/0.weight"] * 1000).astype(np.int64)


def _optimizer_state_of_the_wrong_shape(state: checkpoint.Checkpoint) -> None:
    if "velocity/0.bias" in state.optimizer:
        state.optimizer["velocity/0.bias"] = state.optimizer["velocity/0.bias"][:1]


def _position_not_numbers(state: checkpoint.Checkpoint) -> None:
    state.meta["position"]["epoch"] = "one"


def _best_not_a_record(state: checkpoint.Checkpoint) -> None:
    state.meta["best"] = 7


# What `train --resume` rebuilds from a checkpoint: the optimizer state and the position.
CRAFTED_FOR_RESUME = {
    "int64 optimizer state": (_int64_optimizer_state, "int64"),
    "optimizer state of the wrong shape": (_optimizer_state_of_the_wrong_shape, "velocity/0.bias"),
    "position that is not numbers": (_position_not_numbers, "position"),
    "best that is not a record": (_best_not_a_record, "best"),
    "bool weights": (_bool_weights, "bool"),
}
CRAFTED = {
    "scale vector of the wrong length": (_scale_too_short, "data/scale"),
    "too few class names": (_one_class_name, "class_names"),
    "int64 weights": (_int64_weights, "int64"),
    "bool weights": (_bool_weights, "bool"),
    "class names that are not strings": (_names_not_strings, "class_names"),
}
