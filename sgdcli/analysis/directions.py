"""The directions a loss landscape can be drawn along, and their command-line spelling."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import ClassVar, Union

from sgdcli.errors import UsageError


class _Named:
    text: ClassVar[str]

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class InitToFinal(_Named):
    """α = 0 is the run's initial weights, α = 1 the checkpoint's: d = w_final − w_init."""

    text: ClassVar[str] = "init-to-final"


@dataclass(frozen=True)
class Gradient(_Named):
    """Steepest descent at the checkpoint: d = −∇L/‖∇L‖, so α is the distance moved in weight space."""

    text: ClassVar[str] = "gradient"


@dataclass(frozen=True)
class RandomDirection(_Named):
    """A seeded Gaussian direction at the checkpoint, scaled to the length of the weights: ‖d‖ = ‖w‖."""

    text: ClassVar[str] = "random"


@dataclass(frozen=True)
class Coefficient:
    """One weight, every other frozen: d is 1 at `parameter[index]`, 0 elsewhere; α is that weight's change."""

    parameter: str  # "0.weight"
    index: tuple[int, ...]  # (3, 5)

    def __str__(self) -> str:
        return f"{self.parameter}[{','.join(map(str, self.index))}]"


Direction = Union[InitToFinal, Gradient, RandomDirection, Coefficient]
NAMED: dict[str, Direction] = {d.text: d for d in (InitToFinal(), Gradient(), RandomDirection())}
COEFFICIENT = re.compile(r"\s*(\d+\.[A-Za-z_]\w*)\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]\s*")


def parse_direction(text: str) -> Direction:
    """"init-to-final", "gradient", "random", or one coefficient such as "0.weight[3,5]" or "2.bias[1]"."""
    if text in NAMED:
        return NAMED[text]
    match = COEFFICIENT.fullmatch(text)
    if match is None:
        close = difflib.get_close_matches(text, NAMED, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"--direction: expected init-to-final, gradient, random, or one coefficient as "
                         f"LAYER.PARAM[i,j] (e.g. 0.weight[3,5] or 2.bias[1]); received {text!r}{hint}")
    return Coefficient(match[1], tuple(int(i) for i in match[2].split(",")))
