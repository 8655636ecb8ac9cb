"""sgdcli: train neural networks with gradient descent from YAML configs."""

import os

# Before NumPy loads OpenBLAS (it reads this once): its idle worker threads spin 2^18 CPU cycles
# (~0.1 ms) waiting for the next product instead of 2^28 (~0.1 s), so that the engine's own worker
# thread gets the second core for the passes between products (engine/workers.py). Speed only.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")

__version__ = "0.1.0"
