"""Which processes an MPI launcher started, from the environment alone: no NumPy and no mpi4py, so the
command line can ask before anything heavy is loaded (cli/ranks.py)."""

from __future__ import annotations

import os

# What MPI launchers tell the processes they start: MPICH's hydra and Intel MPI (PMI_SIZE, also
# set by srun --mpi=pmi2), Open MPI (OMPI_COMM_WORLD_SIZE), MVAPICH (MV2_COMM_WORLD_SIZE).
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _launched(variables: tuple[str, ...], default: int) -> int:
    for name in variables:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return default


def launched_size() -> int:
    """The number of processes an MPI launcher started (1 when not launched by one); reads only the environment."""
    return _launched(SIZE_VARIABLES, 1)


def launched_rank() -> int:
    return _launched(RANK_VARIABLES, 0)

