"""What every schema module builds on: the Section base class and the shared field types."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationInfo

# Strict types, field by field (pydantic's strict mode): a boolean only where a boolean is meant
# (`epochs: true` is not 1), an integer only as an integer (`epochs: 3.0` and `"3"` are refused),
# a number never from a quoted string (`learning_rate: "0.1"`); an integer is a valid number.
Integer = Annotated[int, Strict()]
Number = Annotated[float, Strict()]
Flag = Annotated[bool, Strict()]
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
Probability = Annotated[float, Strict(), Field(ge=0, lt=1)]
Activation = Literal["relu", "leaky_relu", "sigmoid", "tanh", "identity"]
Init = Literal["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "small_normal"]


class Section(BaseModel):
    """Base of every config section: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


def resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Relative data paths are relative to the config file's folder."""
    if value is None:
        return None
    base = (info.context or {}).get("base_dir")
    value = Path(value).expanduser()
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value.resolve()
