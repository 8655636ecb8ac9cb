"""Our own error types: each maps to one documented exit code at the CLI boundary."""

from __future__ import annotations


class SgdcliError(Exception):
    """Base of every error that is the user's input rather than our bug."""

    exit_code = 1
    only_here = False  # under mpiexec: an error only this process saw, which it reports itself (not left to rank 0)

    def __init__(self, message: str, *, source: str | None = None) -> None:
        # `source` names where the problem is: a file, optionally with a field or row.
        self.message = message
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class ConfigError(SgdcliError):
    """A config file or --set override that is missing, malformed or invalid."""

    exit_code = 2


class UsageError(SgdcliError):
    """Command-line arguments that do not fit together."""

    exit_code = 2


class DataError(SgdcliError):
    """A data file that is missing, malformed or does not fit the model."""

    exit_code = 3


class CheckpointError(SgdcliError):
    """A checkpoint or run directory that cannot be read or does not fit."""

    exit_code = 4


class DamagedCheckpointError(CheckpointError):
    """A checkpoint that is provably damaged: sgdcli wrote it, and it is truncated or fails its checksum.

    Only such a file may be set aside for an older checkpoint; a file that merely fails to parse
    may be valid data that sgdcli does not understand, and is never skipped.
    """


class RunDirError(CheckpointError):
    """A run directory that is missing, incomplete or cannot be written."""


class DivergenceError(SgdcliError):
    """Training produced a non-finite loss or gradient."""

    exit_code = 5


class DiskError(SgdcliError):
    """Writing failed for lack of space or a file-size limit."""

    exit_code = 6
