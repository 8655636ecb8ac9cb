"""Time of a 2-D loss landscape (issue 14, item 4): `sgdcli landscape RUN --plane` on the digits MLP.

    flock /tmp/sgdcli-heavy.lock python benchmarks/bench_plane.py

Trains configs/digits-mlp.yaml into a temporary folder, then times api.landscape_plane for both
directions at the defaults (41 x 41 grid, at most 2,000 samples of the training split), files
included. Target: under a minute each. Also reports the size of the run's trajectory file.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from sgdcli import api
from sgdcli.training import trajectory

REPO = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 60.0


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        run = api.train(api.load_config(REPO / "configs" / "digits-mlp.yaml"), runs_dir=folder).run_dir
        size = (run / trajectory.FILE).stat().st_size
        print(f"trajectory.safetensors: {size / 1e6:.2f} MB (limit {trajectory.MAX_BYTES / 1e6:.1f} MB)")
        worst = 0.0
        for directions in ("random", "pca"):
            started = time.perf_counter()
            result, _, _ = api.landscape_plane(run, directions, out=Path(folder) / f"plane-{directions}")
            seconds = time.perf_counter() - started
            worst = max(worst, seconds)
            print(f"--directions {directions}: {len(result.alphas)}x{len(result.betas)} grid on {result.data}: "
                  f"{seconds:.2f} s")
    print(f"target < {TARGET_SECONDS:.0f} s: {'met' if worst < TARGET_SECONDS else 'NOT met'}")
    return 0 if worst < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
