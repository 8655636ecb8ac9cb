"""What every schema module builds on: the Section base class and the shared field types."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, lt=1)]
Activation = Literal["relu", "leaky_relu", "sigmoid", "tanh", "identity"]
Init = Literal["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "small_normal"]


class Section(BaseModel):
    """Base of every config section: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
