"""Decision boundaries and fitted curves across training: which model, which grid, which frames."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, tiny_config
from sgdcli import api
from sgdcli.training import boundary, build


def _prepared(config):
    return build.prepare_data(config, build.Rngs.from_seed(config.seed))


def test_regions_are_the_models_classes_on_the_grid_rows_y_columns_x():
    """A hand-set linear model: class 0 where x0 > x1 (logit 0 = x0, logit 1 = x1)."""
    config = api.load_config(tiny_config(data__scale="none"))
    prepared = _prepared(config)
    model = build.build_model(config.model.model_copy(update={"layers": [config.model.layers[1]]}), 2, 2,
                              np.random.default_rng(0))
    model.load_parameters({"0.weight": np.eye(2), "0.bias": np.zeros(2)})
    recorder = boundary.build_recorder(prepared, True, 2, epochs=4)
    recorder.record(4, model, last=True)
    epoch, labels = recorder.frames[-1]
    xs, ys = recorder.axes
    expected = (ys[:, None] > xs[None, :]).astype(np.int8)  # row i is y = ys[i], column j is x = xs[j]
    assert epoch == 4 and labels.shape == (boundary.GRID, boundary.GRID)
    assert np.array_equal(labels, expected)
    # the grid spans the data (original units) with a 15% margin each side
    both = np.concatenate([prepared.x_train, prepared.x_val])
    span = both.max(axis=0) - both.min(axis=0)
    assert xs[0] == pytest.approx(both[:, 0].min() - 0.15 * span[0])
    assert ys[-1] == pytest.approx(both[:, 1].max() + 0.15 * span[1])


def default_boundary(config: dict) -> dict:
    """The config as a user writes it: training.boundary left to its default (on); tiny_config turns it off."""
    del config["training"]["boundary"]
    return config


def test_frames_every_k_epochs_at_most_about_sixty_and_the_gif_has_them(tmp_path):
    config = api.load_config(default_boundary(tiny_config(training__epochs=130, training__batch={"mode": "full"})))
    result = api.train(config, runs_dir=tmp_path)
    # k = ceil(130 / 60) = 3: epochs 0, 3, ..., 129 (44 frames) and the last, 130
    with Image.open(result.run_dir / "boundary.gif") as gif:
        assert gif.n_frames == 45
    png = Image.open(result.run_dir / "boundary.png")
    assert png.size[0] > 300


def test_the_last_frame_is_the_trained_model(tmp_path):
    config = api.load_config(tiny_config())
    result = api.train(config, runs_dir=tmp_path)
    trained = api.load_trained(result.run_dir / "checkpoints" / "last.safetensors")
    recorder = boundary.build_recorder(_prepared(config), True, 2, epochs=4)
    recorder.record(4, trained.model, last=True)
    grid = np.stack([a.reshape(-1) for a in np.meshgrid(*recorder.axes)], axis=1)
    names = trained.predict_classes(grid)
    assert np.array_equal(np.array(names).reshape(boundary.GRID, boundary.GRID),
                          np.array(trained.class_names)[recorder.frames[-1][1]])


def test_one_input_regression_draws_the_fitted_curve(tmp_path):
    config = api.load_config(default_boundary(tiny_config(
        data={"source": "synthetic", "dataset": "sine", "samples": 80, "validation": 0.25},
        model={"layers": [{"type": "dense", "units": 6, "activation": "tanh"}, {"type": "dense", "units": 1}]},
        loss={"type": "mse"})))
    result = api.train(config, runs_dir=tmp_path)
    assert (result.run_dir / "boundary.gif").is_file()
    trained = api.load_trained(result.run_dir / "checkpoints" / "last.safetensors")
    recorder = boundary.build_recorder(_prepared(config), False, 1, epochs=4)
    recorder.record(4, trained.model, last=True)
    np.testing.assert_allclose(recorder.frames[-1][1], trained.predict(recorder.axes[0][:, None])[:, 0], rtol=1e-6)


def test_no_pictures_for_other_widths_or_when_switched_off(tmp_path):
    off = api.train(api.load_config(tiny_config(training__boundary=False)), runs_dir=tmp_path / "off")
    assert not (off.run_dir / "boundary.png").exists() and not (off.run_dir / "boundary.gif").exists()
    iris = api.load_config({**tiny_config(), "model": {"layers": [{"type": "dense", "units": 3}]},
                            "data": {"source": "csv", "path": str(REPO / "data" / "iris.csv"), "target": "species"}})
    assert boundary.build_recorder(_prepared(iris), True, 3, 4) is None  # four features
    assert boundary.build_recorder(_prepared(api.load_config(tiny_config())), False, 2, 4) is None  # two outputs


def test_boundary_command_draws_each_first_layer_unit_over_the_plane(tmp_path):
    from typer.testing import CliRunner

    from sgdcli.cli.app import app

    result = api.train(api.load_config(tiny_config(training__boundary=False)), runs_dir=tmp_path / "runs")
    files, maps = api.boundary(result.run_dir, "last", units=True, out=tmp_path / "b")
    assert [f.name for f in files] == ["b.png", "b-units.png"]
    trained = api.load_trained(result.run_dir / "checkpoints" / "last.safetensors")
    recorder = boundary.build_recorder(_prepared(trained.config), True, 2, 1)
    grid = np.stack([a.reshape(-1) for a in np.meshgrid(*recorder.axes)], axis=1)
    scaled = (grid - trained.scaler.shift) / trained.scaler.scale
    weight, bias = trained.model.parameters()["0.weight"], trained.model.parameters()["0.bias"]
    for unit in (0, 7):  # tanh(x·W[:, k] + b[k]) on the grid, row = y, column = x
        expected = np.tanh(scaled @ weight[:, unit].astype(np.float64) + bias[unit]).reshape(boundary.GRID, -1)
        np.testing.assert_allclose(maps[unit], expected, atol=1e-5)
    assert maps.shape == (8, boundary.GRID, boundary.GRID)
    cli = CliRunner().invoke(app, ["boundary", str(result.run_dir), "--units", "--out", str(tmp_path / "c")])
    assert cli.exit_code == 0 and "8 first-layer units" in cli.output and (tmp_path / "c-units.png").is_file()
    iris = api.train(api.load_config({**tiny_config(), "model": {"layers": [{"type": "dense", "units": 3}]},
                                      "data": {"source": "csv", "path": str(REPO / "data" / "iris.csv"),
                                               "target": "species"}}), runs_dir=tmp_path / "iris")
    refused = CliRunner().invoke(app, ["boundary", str(iris.run_dir)])
    assert refused.exit_code == 2 and "two input features" in refused.output and "4 feature(s)" in refused.output


@pytest.mark.parametrize("most,stop", [(60, 14), (3, 3 * 6 + 2), (3, 4 * 6)],
                         ids=["every epoch, mid-epoch", "every 2nd, mid-epoch after an unscheduled one", "every 2nd, at an end"])
def test_a_resumed_run_keeps_the_frames_drawn_before_the_interruption(tmp_path, monkeypatch, most, stop):
    # The frames lived only in memory: a resumed run's boundary.gif lost those before the interruption.
    from safetensors.numpy import load
    from test_resume import interrupt

    monkeypatch.setattr(boundary, "MAX_FRAMES", most)  # 6 epochs: frames every epoch, or every 2nd
    config = api.load_config(tiny_config(training__epochs=6, training__boundary=True))
    reference = api.train(config, runs_dir=tmp_path / "reference")
    stopped = interrupt(config, tmp_path / "runs", stop)
    assert stopped.status == "interrupted"
    resumed = api.resume(stopped.run_dir)
    want = load((reference.run_dir / boundary.FRAMES_NAME).read_bytes())
    got = load((resumed.run_dir / boundary.FRAMES_NAME).read_bytes())
    assert list(got["epochs"]) == list(want["epochs"]) and np.array_equal(got["frames"], want["frames"])
    assert Image.open(resumed.run_dir / boundary.GIF_NAME).n_frames == len(want["epochs"])


def test_a_damaged_frames_file_stops_the_resume_with_a_message(tmp_path):
    from test_resume import interrupt

    from sgdcli.errors import RunDirError

    config = api.load_config(tiny_config(training__epochs=4, training__boundary=True))
    stopped = interrupt(config, tmp_path / "runs", 9)
    (stopped.run_dir / boundary.FRAMES_NAME).write_bytes(b"not safetensors")
    with pytest.raises(RunDirError, match="damaged boundary frames file"):
        api.resume(stopped.run_dir)


def test_the_frames_are_written_before_the_pictures_drawn_from_them(tmp_path, monkeypatch):
    """The frames exist only in memory until the end; the GIF and PNG can be drawn again from them (a resume),
    so a run whose GIF could not be written still keeps its frames."""
    from safetensors.numpy import load

    from sgdcli.errors import DiskError

    config = api.load_config(tiny_config(training__epochs=4, training__boundary=True))
    reference = api.train(config, runs_dir=tmp_path / "reference")

    def full(self, title):
        raise DiskError("cannot write: File too large", source="boundary.gif")

    monkeypatch.setattr(boundary.BoundaryRecorder, "_gif", full)
    with pytest.raises(DiskError):
        api.train(config, runs_dir=tmp_path / "runs")
    run_dir = next((tmp_path / "runs").iterdir())
    want = load((reference.run_dir / boundary.FRAMES_NAME).read_bytes())
    got = load((run_dir / boundary.FRAMES_NAME).read_bytes())
    assert list(got["epochs"]) == list(want["epochs"]) and np.array_equal(got["frames"], want["frames"])
    assert not (run_dir / boundary.GIF_NAME).exists()
