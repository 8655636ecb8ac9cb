"""Loss along a line through weight space: slopes against backprop and finite differences, ends, files."""

from __future__ import annotations

import csv
import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from sgdcli import api
from sgdcli.analysis import directions, landscape, landscape_files
from sgdcli.config.loading import load_config
from sgdcli.errors import CheckpointError, UsageError
from sgdcli.runs import checkpoint
from sgdcli.training import build

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
H = 1e-4  # central-difference step: truncation ~H² and rounding ~1e-16/H are both far below 1e-4 relative


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """moons, 2-8(tanh)-2, cross-entropy, float32 weights; keeps epoch-0002 as well."""
    config = load_config(tiny_config(training__checkpoint_every=2))
    return api.train(config, runs_dir=tmp_path_factory.mktemp("runs")).run_dir


@pytest.fixture(scope="module")
def regressor(tmp_path_factory) -> Path:
    """sine, 1-8(tanh)-dropout-1, mse, float64 weights: dropout must be off while measuring."""
    config = load_config(tiny_config(
        data={"source": "synthetic", "dataset": "sine", "samples": 64, "validation": 0.25},
        model={"dtype": "float64", "layers": [{"type": "dense", "units": 8, "activation": "tanh"},
                                              {"type": "dropout", "rate": 0.2}, {"type": "dense", "units": 1}]},
        loss={"type": "mse"}, optimizer={"type": "sgd", "learning_rate": 0.05}))
    return api.train(config, runs_dir=tmp_path_factory.mktemp("runs")).run_dir


def backprop(run: Path, name: str = "best") -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradient on the whole training split, rebuilt independently: float64 data from
    prepare_data (which refits the same scaler), one forward and one backward pass."""
    saved = checkpoint.load(run / "checkpoints" / f"{name}.safetensors")
    raw = saved.meta["config"]
    config = load_config({**raw, "model": {**raw["model"], "dtype": "float64"}})
    prepared = build.prepare_data(config, build.Rngs.from_seed(config.seed))
    model = build.build_model(config.model, prepared.x_train.shape[1], build.output_width(config, prepared),
                              np.random.default_rng(0))
    model.load_parameters(saved.params)
    out, caches = model.forward(prepared.x_train)
    value, dout = build.build_loss(config.loss).value_and_grad(out, prepared.y_train)
    return value, model.backward(dout, caches)


def central_difference(result: landscape.Landscape) -> float:
    assert result.alphas.tolist() == [-H, 0.0, H]
    return (result.losses[2] - result.losses[0]) / (2 * H)


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- slopes
@pytest.mark.parametrize("run, direction, parameter, index", [
    ("classifier", "0.weight[1,3]", "0.weight", (1, 3)),
    ("classifier", "1.bias[0]", "1.bias", (0,)),
    ("regressor", "2.weight[4,0]", "2.weight", (4, 0)),
    ("regressor", "0.bias[2]", "0.bias", (2,)),
])
def test_slope_along_one_coefficient_is_its_backprop_gradient(request, run, direction, parameter, index):
    run_dir = request.getfixturevalue(run)
    result = landscape.compute(run_dir, direction=direction, span=(-H, H), points=3)
    value, grads = backprop(run_dir)
    gradient = float(grads[parameter][index])
    assert abs(gradient) > 1e-4, "pick a coefficient whose gradient is not ~0, or the check means nothing"
    assert central_difference(result) == pytest.approx(result.slope, rel=1e-4)
    assert result.slope == pytest.approx(gradient, rel=1e-4)
    assert result.origin_loss == pytest.approx(value, rel=1e-12) == result.losses[1]


def test_one_coefficient_curve_is_drawn_against_its_value_with_every_other_weight_fixed(classifier):
    weight = float(checkpoint.load(classifier / "checkpoints" / "best.safetensors").params["0.weight"][1, 3])
    result = landscape.compute(classifier, direction="0.weight[1, 3]")
    reach = max(1.0, abs(weight))  # the default span reaches the value 0: the weight switched off
    assert result.direction == "0.weight[1,3]" and result.origin_x == pytest.approx(weight, rel=1e-6)
    assert result.alphas[0] == -reach and result.alphas[-1] == reach and 0.0 in result.alphas
    assert len(result.alphas) == 51 and result.x.min() <= 0 <= result.x.max()
    assert result.tangent and result.tangent_losses[result.alphas == 0.0] == result.origin_loss


@pytest.mark.parametrize("direction", ["init-to-final", "gradient", "random"])
def test_slope_is_the_directional_derivative_for_every_direction(classifier, direction):
    result = landscape.compute(classifier, direction=direction, span=(-H, H), points=3)
    assert central_difference(result) == pytest.approx(result.slope, rel=1e-4)


# ---------------------------------------------------------------- the three named directions
@pytest.mark.parametrize("run, rel", [("classifier", 1e-5), ("regressor", 1e-10)])  # float32 / float64 runs
def test_init_to_final_runs_from_the_initial_loss_to_the_final_loss(request, run, rel):
    run_dir = request.getfixturevalue(run)
    result = landscape.compute(run_dir, checkpoint="last", direction="init-to-final")
    assert result.alphas[0] == -0.5 and result.alphas[-1] == 1.5 and np.all(np.diff(result.alphas) > 0)
    at_initial, at_final = result.losses[result.alphas == 0.0], result.losses[result.alphas == 1.0]
    initial = api.evaluate(run_dir / "checkpoints" / "initial.safetensors", split="train")
    final = api.evaluate(run_dir / "checkpoints" / "last.safetensors", split="train")
    assert initial["samples"] == final["samples"] and f"{initial['samples']} samples" in result.data
    assert at_initial[0] == pytest.approx(initial["loss"], rel=rel)
    assert at_final[0] == pytest.approx(final["loss"], rel=rel)
    assert result.origin_loss == pytest.approx(at_initial[0], rel=1e-12)
    assert [alpha for alpha, _ in result.marks] == [0.0, 1.0] and not result.tangent
    assert "initial.safetensors" in result.checkpoint and "last.safetensors" in result.checkpoint


def test_gradient_direction_descends_at_rate_minus_the_gradient_norm(classifier):
    _, grads = backprop(classifier)
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    result = landscape.compute(classifier, direction="gradient")
    assert result.slope == pytest.approx(-norm, rel=1e-9)
    step = 0.1 * norm  # the config's learning_rate × ‖∇L‖: one full-batch SGD step
    assert result.alphas[0] == pytest.approx(-2.5 * step) and result.alphas[-1] == pytest.approx(10 * step)
    one_step = result.marks[1][0]
    assert one_step == pytest.approx(step, rel=1e-12)  # the mark is the step; it lies exactly on the grid
    assert len(result.alphas) == 51 and one_step in result.alphas and result.tangent
    near = landscape.compute(classifier, direction="gradient", span=(0.0, 1e-3 * step), points=5)
    assert np.all(np.diff(near.losses) < 0) and near.losses[0] == near.origin_loss


def test_random_direction_is_seeded_and_independent_of_the_sample_cap(classifier):
    first = landscape.compute(classifier, direction="random", seed=3, points=11)
    again = landscape.compute(classifier, direction="random", seed=3, points=11)
    other = landscape.compute(classifier, direction="random", seed=4, points=11)
    np.testing.assert_array_equal(first.losses, again.losses)
    assert first.slope == again.slope and not np.allclose(first.losses, other.losses)
    assert first.alphas[0] == -1.0 and first.alphas[-1] == 1.0 and "‖d‖ = ‖w‖" in first.x_label
    subset = landscape.compute(classifier, direction="random", seed=3, points=11, samples=20)
    assert subset.data == "train split, 20 of 90 samples (seed 3)"
    assert subset.x_label == first.x_label  # the same direction, measured on fewer samples


def test_checkpoint_by_name_by_path_or_as_the_run(classifier):
    best = classifier / "checkpoints" / "best.safetensors"
    default = landscape.compute(classifier, direction="random", points=5)
    for target, chosen in ((classifier, "best"), (classifier, best), (best, None)):
        same = landscape.compute(target, checkpoint=chosen, direction="random", points=5)
        np.testing.assert_array_equal(same.losses, default.losses)
    epoch = landscape.compute(classifier, checkpoint="epoch-0002", direction="random", points=5)
    assert "epoch-0002.safetensors (epoch 2)" in epoch.checkpoint and epoch.origin_loss != default.origin_loss
    with pytest.raises(CheckpointError, match=r"the run has best, epoch-0002, epoch-0004, initial, last.*'bset'"):
        landscape.compute(classifier, checkpoint="bset")
    with pytest.raises(UsageError, match="holds the initial weights"):
        landscape.compute(classifier, checkpoint="initial", direction="init-to-final")


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("text, hint", [
    ("", None), ("grad", None), ("init_to_final", "did you mean 'init-to-final'?"),
    ("gradients", "did you mean 'gradient'?"), ("0.weight", None), ("0.weight[a]", None),
    ("weight[1,2]", None), ("0.weight[-1,0]", None), ("0.weight[1,]", None),
])
def test_unreadable_directions_say_what_was_expected_and_received(text, hint):
    with pytest.raises(UsageError) as caught:
        directions.parse_direction(text)
    message = str(caught.value)
    assert "expected init-to-final, gradient, random, or one coefficient" in message and repr(text) in message
    assert hint is None or hint in message


def test_directions_parse_once_into_objects():
    assert directions.parse_direction("gradient") == directions.Gradient()
    assert directions.parse_direction(" 12.weight[ 3 , 5 ] ") == directions.Coefficient("12.weight", (3, 5))
    assert str(directions.parse_direction("2.bias[1]")) == "2.bias[1]"


@pytest.mark.parametrize("direction, expected", [
    ("5.weight[0,0]", "the model has no parameter '5.weight'"),
    ("0.weigth[0,0]", "the model has no parameter '0.weigth'"),
    ("0.weight[2,0]", "0.weight has shape (2, 8), so expected 2 indexes in [0..1,0..7], received [2,0]"),
    ("0.weight[1]", "received [1]"),
    ("0.bias[1,1]", "0.bias has shape (8,), so expected 1 index in [0..7], received [1,1]"),
])
def test_unknown_coefficients_list_the_model_parameters(classifier, direction, expected):
    with pytest.raises(UsageError) as caught:
        landscape.compute(classifier, direction=direction, points=3)
    message = str(caught.value)
    assert expected in message
    assert "0.weight (2, 8), 0.bias (8,), 1.weight (8, 2), 1.bias (2,)" in message


@pytest.mark.parametrize("options, expected", [
    ({"points": 1}, "--points: expected an integer of at least 2, received 1"),
    ({"span": (1.0, -1.0)}, "--span: expected two finite numbers FROM < TO, received (1.0, -1.0)"),
    ({"span": (0.0, math.inf)}, "--span"),
    ({"split": "validation"}, "--split: expected one of train, val, test, received 'validation'"),
    ({"split": "test"}, "--split test: the run's config names no test data"),
    ({"samples": 0}, "--samples: expected a positive integer, received 0"),
])
def test_bad_options_are_usage_errors(classifier, options, expected):
    with pytest.raises(UsageError) as caught:
        landscape.compute(classifier, **options)
    assert expected in str(caught.value)


def test_val_split_is_measured_on_the_held_out_samples(classifier):
    result = landscape.compute(classifier, direction="random", split="val", points=3)
    report = api.evaluate(classifier, split="val")
    assert result.data == f"val split, {report['samples']} samples"
    assert result.origin_loss == pytest.approx(report["loss"], rel=1e-5)


# ---------------------------------------------------------------- files
def test_write_makes_a_csv_and_a_png_at_the_prefix_and_leaves_the_run_alone(classifier, tmp_path):
    before = snapshot(classifier)
    coefficient = landscape.compute(classifier, direction="0.weight[0,1]", points=11)
    line = landscape.compute(classifier, direction="init-to-final", points=21)
    csv_path, png_path = landscape_files.write(coefficient, tmp_path / "plots" / "w01")
    assert (csv_path, png_path) == (tmp_path / "plots" / "w01.csv", tmp_path / "plots" / "w01.png")
    rows = list(csv.reader(csv_path.read_text().splitlines()))
    assert rows[0] == ["alpha", "value", "loss", "tangent"] and len(rows) == 12
    values = np.array(rows[1:], dtype=float)
    np.testing.assert_array_equal(values[:, 0], coefficient.alphas)
    np.testing.assert_array_equal(values[:, 2], coefficient.losses)  # repr(float) round-trips exactly
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE
    csv_path, png_path = landscape_files.write(line, tmp_path / "line.v2")  # a dot in the prefix is kept
    assert csv_path.name == "line.v2.csv" and png_path.read_bytes()[:8] == PNG_SIGNATURE
    assert next(csv.reader(csv_path.read_text().splitlines())) == ["alpha", "loss"]
    assert landscape_files.csv_text(landscape.compute(classifier, direction="gradient", points=3)).startswith(
        "alpha,loss,tangent\n")
    assert snapshot(classifier) == before


def test_default_prefix_is_outside_the_run(classifier):
    prefix = landscape_files.default_prefix(classifier, "0.weight[3, 5]")
    assert prefix == Path(f"landscape-{classifier.name}-0.weight-3-5") and not prefix.is_absolute()
    assert landscape_files.default_prefix(classifier, "init-to-final").name == f"landscape-{classifier.name}-init-to-final"


# ---------------------------------------------------------------- what the command prints (issue 10, item 8)
@pytest.mark.parametrize("direction", ["init-to-final", "gradient", "random", "0.weight[1,3]"])
def test_the_printed_checkpoint_loss_and_slope_are_the_csvs(classifier, tmp_path, direction):
    """`at the checkpoint: loss L, slope S` must be the CSV's loss where the checkpoint lies on the
    line (α = 1 for init-to-final, the initial weights being α = 0) and the slope there."""
    from typer.testing import CliRunner

    from sgdcli.cli.app import app

    at = 1.0 if direction == "init-to-final" else 0.0
    out = tmp_path / "line"
    result = CliRunner().invoke(app, ["landscape", str(classifier), "--direction", direction, "--points", "3",
                                      "--span", str(at - H), str(at + H), "--out", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    printed = result.stdout.replace("\n", " ")
    loss, slope = (float(v) for v in re.search(
        r"at the checkpoint(?: \(α = [\d.]+\))?: loss (\S+), slope (\S+?);", printed).groups())
    rows = list(csv.DictReader((tmp_path / "line.csv").open()))
    alphas, losses = [float(r["alpha"]) for r in rows], [float(r["loss"]) for r in rows]
    assert alphas[1] == at
    assert loss == pytest.approx(losses[1], rel=1e-5)
    assert slope == pytest.approx((losses[2] - losses[0]) / (2 * H), rel=1e-3)
