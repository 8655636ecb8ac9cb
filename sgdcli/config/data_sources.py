"""The `data` section of a config: where the samples come from (CSV, NPZ, IDX images or a built-in set)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sgdcli.config.base import Integer, Number, Section, resolve_path


class DataBase(Section):
    scale: Literal["standard", "minmax", "none"] = Field(
        "standard", description="feature scaling, fit on the training split only")
    validation: Annotated[Number, Field(ge=0, lt=1)] = Field(
        0.2, description="fraction of the training data held out (stratified for classification)")


class FileDataBase(DataBase):
    path: Path = Field(description="training data file (relative to the config file)")
    validation_file: Path | None = Field(None, description="separate validation file (replaces the fraction)")
    test_file: Path | None = Field(None, description="held-out test file, used by `sgdcli eval --split test`")

    _paths = field_validator("path", "validation_file", "test_file")(resolve_path)


class CsvDataConfig(FileDataBase):
    """A CSV file with a header row: numeric feature columns and one target column."""

    source: Literal["csv"]
    target: str = Field(description="name of the target column")
    features: list[str] | None = Field(None, min_length=1, description="feature columns (default: every other column)")
    sample_shape: list[Annotated[Integer, Field(ge=1)]] | None = Field(
        None, min_length=1, max_length=3,
        description="shape of one sample, e.g. [1, 8, 8]: the feature columns in C order as images for conv layers")

    @field_validator("features")
    @classmethod
    def _features_once_and_not_the_target(cls, features: list[str] | None, info: ValidationInfo) -> list[str] | None:
        """A target among the features leaks the answer into the input; a column twice is a typo."""
        target = info.data.get("target")
        if features is not None and target in features:
            raise ValueError(f"lists the target column {target!r} (data.target) among the features; the model would "
                             f"be given the answer as an input")
        twice = sorted(name for name, count in Counter(features or ()).items() if count > 1)
        if twice:
            raise ValueError(f"lists column(s) {', '.join(map(repr, twice))} more than once; expected each feature once")
        return features


class NpzDataConfig(FileDataBase):
    """An .npz file holding arrays `x` (N, D) and `y` (N,) or (N, k)."""

    source: Literal["npz"]


class SyntheticDataConfig(DataBase):
    """A built-in generated dataset for quick experiments."""

    source: Literal["synthetic"]
    dataset: Literal["xor", "spirals", "moons", "circles", "sine"]
    samples: Integer = Field(400, ge=4, le=1_000_000)
    noise: Number = Field(0.1, ge=0, le=10)


class IdxDataConfig(DataBase):
    """Images and labels in the IDX format of MNIST and Fashion-MNIST (gzip-compressed or not)."""

    source: Literal["idx"]
    path: Path | None = Field(None, description="folder holding the standard file names (train-images-idx3-ubyte[.gz], ...)")
    train_images: Path | None = None
    train_labels: Path | None = None
    test_images: Path | None = None
    test_labels: Path | None = None
    class_names: list[str] | None = Field(None, min_length=2, description="a name per label 0, 1, ...")
    scale: Literal["unit", "standard", "minmax", "none"] = Field(
        "unit", description="unit: pixel values divided by 255, to [0, 1]")

    _paths = field_validator("path", "train_images", "train_labels", "test_images", "test_labels")(resolve_path)

    @model_validator(mode="after")
    def _one_way_to_name_the_files(self) -> "IdxDataConfig":
        explicit = (self.train_images, self.train_labels)
        if self.path is None and None in explicit:
            raise ValueError("give data.path (a folder with the standard file names) "
                             "or both data.train_images and data.train_labels")
        if self.path is not None and any(v is not None for v in (*explicit, self.test_images, self.test_labels)):
            raise ValueError("give data.path or the explicit file paths, not both")
        if (self.test_images is None) != (self.test_labels is None):
            raise ValueError("give both data.test_images and data.test_labels, or neither")
        return self


DataConfig = Annotated[
    Union[CsvDataConfig, NpzDataConfig, SyntheticDataConfig, IdxDataConfig], Field(discriminator="source")
]
