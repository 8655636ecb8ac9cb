"""2-D loss landscapes (Li et al. 2018): filter-normalised and PCA directions, the projected trajectory,
the grid's numbers, and the bounded trajectory file that feeds them."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from sgdcli import api
from sgdcli.analysis import landscape, plane
from sgdcli.cli.app import app
from sgdcli.runs import checkpoint
from sgdcli.training import trajectory


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    config = api.load_config(tiny_config(training__epochs=12, training__boundary=False))
    return api.train(config, runs_dir=tmp_path_factory.mktemp("runs")).run_dir


def test_filter_normalised_direction_matches_each_units_weight_norm():
    rng = np.random.default_rng(0)
    weights = {"0.weight": rng.normal(size=(5, 3)) * [1.0, 10.0, 0.1], "0.bias": np.ones(3)}
    d = plane.filter_normalized(weights, np.random.default_rng(1))
    np.testing.assert_allclose(np.linalg.norm(d["0.weight"], axis=0), np.linalg.norm(weights["0.weight"], axis=0))
    assert not d["0.bias"].any()  # biases are not perturbed (Li et al.'s default)


def test_pca_of_a_planar_trajectory_keeps_every_distance():
    """Snapshots on a 2-D affine plane: the projection onto the top-2 PCA directions is an isometry."""
    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.normal(size=(50, 2)))[0]
    coefficients = rng.normal(size=(9, 2)) * [5.0, 1.0]
    snapshots = 3.0 + coefficients @ basis.T
    d1, d2, ratios = plane.pca_directions(snapshots, snapshots[-1])
    assert np.dot(d1, d2) == pytest.approx(0, abs=1e-12) and np.linalg.norm(d1) == pytest.approx(1)
    coords = plane.project(snapshots - snapshots[-1], d1, d2)
    distances = lambda points: np.linalg.norm(points[:, None] - points[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(distances(coords), distances(snapshots), atol=1e-9)
    assert coords[-1] == pytest.approx([0, 0], abs=1e-12) and ratios.sum() == pytest.approx(1)


def test_pca_plane_through_the_final_weights_puts_the_last_point_at_the_origin(run_dir, tmp_path):
    result = plane.compute(run_dir, "pca", points=5)
    assert result.path_epochs.tolist() == list(range(13))  # epoch 0 and every epoch of 12
    assert result.path[-1] == pytest.approx([0, 0], abs=1e-9)
    initial = plane.compute(run_dir, "pca", checkpoint="initial", points=5)  # centred on the initial weights
    assert initial.path[0] == pytest.approx([0, 0], abs=1e-9)
    assert result.alphas[0] < result.path[:, 0].min() and result.alphas[-1] > result.path[:, 0].max()


def test_grid_values_are_the_loss_at_w_plus_alpha_d1_plus_beta_d2(run_dir):
    result = plane.compute(run_dir, "random", points=5, seed=3)
    trained = api.load_trained(run_dir / "checkpoints" / "last.safetensors")
    model = landscape._float64_model(trained)
    x, y, _ = landscape._data(trained, "train", None, 0)
    loss = landscape.build.build_loss(trained.config.loss)
    centre = landscape._copy(model.parameters())
    d1, d2 = (plane.filter_normalized(centre, np.random.default_rng([3, s])) for s in plane.RANDOM_STREAMS)
    i, j = 1, 4  # β = betas[1] = -0.5, α = alphas[4] = 1
    point = {k: centre[k] + result.alphas[j] * d1[k] + result.betas[i] * d2[k] for k in centre}
    expected = landscape.loss_along(model, loss, x, y, point, {k: 0 * v for k, v in centre.items()}, [0.0])[0]
    assert result.losses[i, j] == pytest.approx(expected, rel=1e-12)
    landscape._assign(model, centre)  # loss_along leaves the model at its origin
    assert result.losses[2, 2] == pytest.approx(landscape.loss_and_gradient(model, loss, x, y)[0], rel=1e-12)


def test_trajectory_file_holds_the_weights_and_stays_small(run_dir):
    epochs, weights = trajectory.read(run_dir)
    last = checkpoint.load(run_dir / "checkpoints" / "last.safetensors").params
    assert epochs.tolist() == list(range(13))
    np.testing.assert_array_equal(weights["0.weight"][-1], last["0.weight"].astype(np.float32))
    big = trajectory.TrajectoryRecorder({"w": np.zeros(300_000, np.float32)}, epochs=100)  # 1.2 MB a snapshot
    assert big.snapshots == 3 and big.every == 100  # initial, epoch 100 and the last: ≤ 4 MB
    for epoch in range(101):
        big.record(epoch, {"w": np.zeros(300_000)}, last=epoch == 100)
    assert big.epochs == [0, 100]
    huge = trajectory.TrajectoryRecorder({"w": np.zeros(600_000, np.float32)}, epochs=10)
    assert huge.snapshots == 1  # two snapshots would pass 4 MB: no file at all
    huge.record(0, {"w": np.zeros(600_000)})
    assert huge.write(run_dir.parent) is None


def test_cli_writes_grid_csv_and_png(run_dir, tmp_path):
    out = tmp_path / "plane"
    result = CliRunner().invoke(app, ["landscape", str(run_dir), "--plane", "--directions", "pca", "--points", "7",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "plane.csv").read_text().splitlines()
    assert rows[0] == "alpha,beta,loss" and len(rows) == 1 + 7 * 7
    assert (tmp_path / "plane.png").read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(app, ["landscape", str(run_dir), "--plane", "--directions", "pcb"])
    assert bad.exit_code == 2 and "expected random or pca" in bad.output


def test_without_a_trajectory_file_the_epoch_checkpoints_and_the_centre_are_the_path(tmp_path):
    config = api.load_config(tiny_config(training__epochs=6, training__checkpoint_every=2, training__boundary=False))
    run = api.train(config, runs_dir=tmp_path).run_dir
    (run / trajectory.FILE).unlink()  # a run from before trajectories were kept
    result = plane.compute(run, "pca", points=3)
    assert result.path_epochs.tolist() == [0, 2, 4, 6]  # initial, epoch-0002, epoch-0004, epoch-0006 (= last)
    assert result.path[-1] == pytest.approx([0, 0], abs=1e-9)
