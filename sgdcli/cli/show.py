"""Terminal output of the commands that show training from new angles (lr-find, plane landscapes, seeds)."""

from __future__ import annotations

from sgdcli.cli.render import _num, out


def lr_find(result) -> None:
    """The range test's end, its suggestions and the config key to set."""
    out.print(f"{len(result.learning_rates)} updates from step size {_num(result.learning_rates[0])} to "
              f"{_num(result.learning_rates[-1])} ({result.stopped}); smoothed loss "
              f"{_num(result.smoothed[0])} -> minimum {_num(float(result.smoothed.min()))}")
    if result.steepest is not None:
        out.print(f"steepest descent:  --set {result.key}={result.steepest:.3g}")
    else:
        out.print("steepest descent:  none (the smoothed loss never fell; try a larger --end)")
    out.print(f"minimum / 10:      --set {result.key}={result.minimum_tenth:.3g}")
    out.print(f"wrote {result.out_dir}/lr_find.csv and lr_find.png")
