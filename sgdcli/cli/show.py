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


def plane(result, csv_path, png_path) -> None:
    """Where the plane's loss is lowest and highest, where the trajectory starts and ends on it."""
    finite = result.losses[result.losses == result.losses]
    i, j = divmod(int(result.losses.argmin()) if finite.size else 0, result.losses.shape[1])
    out.print(f"plane through {result.centre}, {result.directions} directions, "
              f"{len(result.alphas)}×{len(result.betas)} points on {result.data}")
    out.print(f"loss: {_num(float(finite.min()) if finite.size else None)} (lowest, at α={result.alphas[j]:.3g}, "
              f"β={result.betas[i]:.3g}) … {_num(float(finite.max()) if finite.size else None)}")
    out.print(f"trajectory: {len(result.path)} snapshots, epoch {result.path_epochs[0]} at "
              f"({result.path[0, 0]:.3g}, {result.path[0, 1]:.3g}) → epoch {result.path_epochs[-1]} at "
              f"({result.path[-1, 0]:.3g}, {result.path[-1, 1]:.3g})")
    out.print(f"wrote {csv_path} and {png_path}")


def boundary(files, maps) -> None:
    """The files written and, with unit maps, how many units never switch on over the plane."""
    if maps is not None:
        flat = maps.reshape(len(maps), -1)
        dead = int(((flat.max(axis=1) - flat.min(axis=1)) == 0).sum())
        out.print(f"{len(maps)} first-layer units; {dead} constant over the whole plane (dead)")
    out.print("wrote " + " and ".join(str(f) for f in files))
