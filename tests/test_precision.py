"""Settings the model's dtype turns into 0, a subnormal or infinity are refused at load (config/precision.py)."""

from __future__ import annotations

import copy
import typing
from pathlib import Path

import numpy as np
import pydantic
import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from sgdcli.cli.app import app
from sgdcli.config import precision
from sgdcli.config.loading import load_config
from sgdcli.config.schema import ExperimentConfig
from sgdcli.engine.normalization import BatchNorm
from sgdcli.engine.optimizers import AdaGrad, Adam, RMSProp
from sgdcli.errors import ConfigError
from sgdcli.runs import checkpoint
from sgdcli.runs.directory import find_checkpoint

TINY32 = float(np.finfo(np.float32).tiny)
BATCH_NORM = [{"type": "dense", "units": 8}, {"type": "batch_norm"}, {"type": "dense", "units": 2}]


def config_with(optimizer: dict | None = None, loss: dict | None = None, layers: list | None = None,
                dtype: str | None = None) -> dict:
    config = tiny_config()
    if optimizer is not None:
        config["optimizer"] = optimizer
    if loss is not None:
        config["loss"], config["data"] = loss, {"source": "synthetic", "dataset": "sine", "samples": 60,
                                                "validation": 0.25}
        config["model"]["layers"][-1]["units"] = 1
    if layers is not None:
        config["model"]["layers"] = layers
    if dtype is not None:
        config["model"]["dtype"] = dtype
    return config


# (label, config, dotted key) for each setting the check covers, each set to 1e-50 (0 in float32)
TOO_SMALL = [
    ("sgd learning rate", config_with({"type": "sgd", "learning_rate": 1e-50}), "optimizer.learning_rate"),
    ("clip norm", config_with({"type": "sgd", "learning_rate": 0.1, "clip_norm": 1e-50}), "optimizer.clip_norm"),
    ("adagrad epsilon", config_with({"type": "adagrad", "learning_rate": 0.1, "epsilon": 1e-50}), "optimizer.epsilon"),
    ("rmsprop epsilon", config_with({"type": "rmsprop", "learning_rate": 0.1, "epsilon": 1e-50}), "optimizer.epsilon"),
    ("adam epsilon", config_with({"type": "adam", "learning_rate": 0.1, "epsilon": 1e-50}), "optimizer.epsilon"),
    ("adamw epsilon", config_with({"type": "adamw", "learning_rate": 0.1, "epsilon": 1e-50}), "optimizer.epsilon"),
    ("perturb delta", config_with({"type": "perturb", "delta": 1e-50}), "optimizer.delta"),
    ("huber delta", config_with(loss={"type": "huber", "delta": 1e-50}), "loss.delta"),
    ("batch norm epsilon", config_with(layers=[BATCH_NORM[0], {"type": "batch_norm", "epsilon": 1e-50}, BATCH_NORM[2]]),
     "model.layers.1.epsilon"),
]


@pytest.mark.parametrize("label, config, key", TOO_SMALL, ids=[case[0] for case in TOO_SMALL])
def test_a_setting_that_is_0_in_float32_is_refused_with_its_key_and_bound(label, config, key):
    config = copy.deepcopy(config)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = str(caught.value)
    assert message.startswith(f"<config>: {key}: expected at least "), message
    assert "received 1e-50" in message and "is 0 in float32 (model.dtype)" in message
    assert "model.dtype: float64" in message  # the other way out
    config["model"]["dtype"] = "float64"  # 1e-50 is a normal float64
    load_config(config)


INFINITE = [case for case in TOO_SMALL if case[0] != "clip norm"] + [
    ("adagrad initial accumulator", config_with({"type": "adagrad", "learning_rate": 0.1, "initial_accumulator": 1.0}),
     "optimizer.initial_accumulator"),
    ("cosine floor", config_with({"type": "sgd", "learning_rate": 0.1, "schedule": {"type": "cosine"}}),
     "optimizer.schedule.min_learning_rate"),
    ("weight decay", config_with({"type": "sgd", "learning_rate": 0.1, "weight_decay": 0.0}), "optimizer.weight_decay"),
]


def _set(config: dict, key: str, value: float) -> None:
    section, _, name = key.rpartition(".")
    node = config
    for part in section.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    node[name] = value


@pytest.mark.parametrize("label, config, key", INFINITE, ids=[case[0] for case in INFINITE])
def test_a_setting_that_is_infinite_in_float32_is_refused(label, config, key):
    config = copy.deepcopy(config)
    _set(config, key, 1e39)
    with pytest.raises(ConfigError, match=rf"^<config>: {key}: expected at most 3.40282347e\+38 .*received 1e\+39, "
                                          "which is infinity in float32"):
        load_config(config)
    _set(config, key, 3.4028235e38)  # NumPy's print of float32's largest: it rounds to it, not to infinity
    load_config(config)
    config["model"]["dtype"] = "float64"
    _set(config, key, 1e39)
    load_config(config)


def test_a_huge_clip_norm_is_allowed():
    """clip_norm is compared with the gradients' norm in float64: a huge one never clips, and harms nothing."""
    load_config(config_with({"type": "sgd", "learning_rate": 0.1, "clip_norm": 1e300}))


def test_values_that_round_to_the_limits_are_accepted():
    """The check rounds first, as NumPy casts: what float32 holds as a normal number passes."""
    for value in (1.1754943e-38, 1.17549435e-38, 3.4028235677973362e38, TINY32):
        load_config(config_with({"type": "sgd", "learning_rate": value}))
    with pytest.raises(ConfigError, match="infinity"):
        load_config(config_with({"type": "sgd", "learning_rate": 3.4028235677973366e38}))
    with pytest.raises(ConfigError, match="subnormal"):
        load_config(config_with({"type": "sgd", "learning_rate": 1.1754942e-38}))


def test_a_weight_decay_that_is_0_in_float32_is_refused_and_0_itself_allowed():
    with pytest.raises(ConfigError, match=r"weight_decay: .*received 1e-50, which is 0 in float32 .*set 0 for that"):
        load_config(config_with({"type": "sgd", "learning_rate": 0.1, "weight_decay": 1e-50}))


def test_a_subnormal_is_refused_and_the_bound_itself_accepted():
    config = config_with({"type": "adagrad", "learning_rate": 0.1, "epsilon": TINY32 / 4})
    with pytest.raises(ConfigError, match="is a subnormal number in float32"):
        load_config(config)
    config["optimizer"]["epsilon"] = TINY32
    load_config(config)


def test_adam_epsilon_is_checked_as_adam_adds_it_times_its_first_bias_correction():
    # 1e-37 is a normal float32, but Adam's first update adds 1e-37 * sqrt(1 - 0.999) = 3.2e-39, a subnormal
    config = config_with({"type": "adam", "learning_rate": 0.1, "epsilon": 1e-37})
    with pytest.raises(ConfigError, match=r"expected at least 3.71723953e-37 .*epsilon x 0.03162 = 3.16227766e-39, "
                                          "which is a subnormal"):
        load_config(config)
    config["optimizer"]["beta2"] = 0.0  # no correction: 1e-37 itself is what is added
    load_config(config)
    config["optimizer"].update(beta2=0.999, epsilon=TINY32 / np.sqrt(1 - 0.999) * 1.0001)
    load_config(config)


def test_weight_decay_0_is_allowed_and_default_configs_pass():
    load_config(config_with({"type": "sgd", "learning_rate": 0.1, "weight_decay": 0.0}))
    for path in sorted(Path(__file__).parent.parent.joinpath("configs").rglob("*.yaml")):
        load_config(path)


# ---------------------------------------------------------------- the premise: what the bound protects from
@pytest.mark.parametrize("make", [lambda e: AdaGrad(epsilon=e), lambda e: RMSProp(epsilon=e),
                                  lambda e: Adam(epsilon=e, beta2=0.0)], ids=["adagrad", "rmsprop", "adam"])
def test_epsilon_0_in_float32_makes_nan_and_the_smallest_normal_does_not(make):
    """A weight whose gradient is 0 gets 0 / (sqrt(0) + epsilon): NaN when epsilon is 0 in float32."""
    for epsilon, expect_nan in ((1e-50, True), (TINY32, False)):
        weights = {"w": np.ones((2, 3), np.float32)}
        optimizer = make(epsilon)
        gradient = np.zeros((2, 3), np.float32)
        gradient[0] = 0.5  # the second row's gradient is 0, as a border pixel's
        with np.errstate(invalid="ignore"):
            optimizer.step(weights, {"w": gradient}, 0.1)
        assert np.isnan(weights["w"][1]).all() == expect_nan, epsilon
        assert np.isfinite(weights["w"][0]).all()


def test_batch_norm_epsilon_0_in_float32_makes_a_constant_channel_nan():
    x = np.ones((4, 3), np.float32)  # every feature constant: variance 0
    for epsilon, expect_nan in ((1e-50, True), (TINY32, False)):
        layer = BatchNorm.create(3, np.float32, epsilon=epsilon)
        with np.errstate(invalid="ignore", divide="ignore"):
            out, _ = layer.forward(x, training=True)
        assert np.isnan(out).any() == expect_nan, epsilon


# ---------------------------------------------------------------- the command line, and what is not checked
def test_train_and_validate_exit_2_with_one_line_and_no_run(tmp_path, write_config):
    runner = CliRunner()
    path = write_config(config_with({"type": "adam", "learning_rate": 0.1, "epsilon": 1e-50}))
    for args in (["train", str(path), "--runs-dir", str(tmp_path / "runs")], ["validate", str(path)],
                 ["train", str(write_config(tiny_config(), "ok.yaml")), "--runs-dir", str(tmp_path / "runs"),
                  "--set", "optimizer.learning_rate=1e-50"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "expected at least" in lines[0], result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_stored_run_with_such_a_setting_is_still_evaluated(tmp_path, write_config):
    """eval reads the config a run trained with; a run stored with a value refused now (an older version's)
    must still be evaluated, not refused."""
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(write_config(tiny_config())), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    path = find_checkpoint(Path(result.stdout.strip().splitlines()[-1]))
    saved = checkpoint.load(path)
    saved.meta["config"]["optimizer"]["learning_rate"] = 1e-50
    checkpoint.save(path, saved)
    with pytest.raises(ConfigError):
        load_config(saved.meta["config"])
    result = runner.invoke(app, ["eval", str(path)])
    assert result.exit_code == 0, result.output


def _float_fields(model: type[pydantic.BaseModel], seen: set) -> set[str]:
    """Names of the float-typed fields of `model` and of every section reachable from it."""
    names: set[str] = set()
    if model in seen:
        return names
    seen.add(model)
    for name, field in model.model_fields.items():
        stack = [field.annotation]
        while stack:
            kind = stack.pop()
            if kind is float:
                names.add(name)
            elif isinstance(kind, type) and issubclass(kind, pydantic.BaseModel):
                names |= _float_fields(kind, seen)
            else:
                stack.extend(typing.get_args(kind))
    return names


def test_every_float_setting_is_checked_or_said_why_not():
    """Guard: a new float setting must join precision._settings (and WHY_NOT_ZERO) or NOT_CHECKED."""
    checked = {"learning_rate", "epsilon", "clip_norm", "weight_decay", "delta", "initial_accumulator",
               "min_learning_rate"}
    floats = _float_fields(ExperimentConfig, set())
    assert checked <= floats  # the walk finds the checked ones, so it would find a new one
    assert floats - checked - set(precision.NOT_CHECKED) == set()
    assert set(precision.NOT_CHECKED) <= floats, "NOT_CHECKED names a setting the schema no longer has"


def test_the_written_out_limits_and_rounding_are_numpys():
    """precision.py may not import NumPy (a config loads before it): its constants and rounding must be NumPy's."""
    for name in ("float32", "float64"):
        info = np.finfo(name)
        assert precision.LIMITS[name] == (float(info.tiny), float(info.max))
    rng = np.random.default_rng(0)
    values = np.concatenate([10.0 ** rng.uniform(-50, -36, 5000), rng.uniform(0, 2 * TINY32, 5000),
                             [2.0**-150, 2.0**-150 * (1 + 2**-40), 2.0**-149, 1e-45, 0.7e-45]])
    for value in values:
        assert precision._rounded(float(value), "float32") == float(np.float32(value)), value


def test_resume_refuses_a_run_whose_settings_float32_zeroes_with_exit_2_not_as_damage(tmp_path, write_config):
    """A run trained before the check (its config.yaml and checkpoint agree) is not "damaged": resuming it
    is refused with exit 2 and the setting, without the model.dtype advice a resumed run cannot take."""
    runner = CliRunner()
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", str(write_config(tiny_config())), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    for path in run_dir.joinpath("checkpoints").glob("*.safetensors"):
        saved = checkpoint.load(path)
        saved.meta["config"]["optimizer"]["learning_rate"] = 1e-50
        checkpoint.save(path, saved)
    config_path = run_dir / "config.yaml"
    config_path.write_text(config_path.read_text().replace("learning_rate: 0.1", "learning_rate: 1.0e-50"))
    before = sorted(p.name for p in run_dir.rglob("*"))
    result = runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "training.epochs=6"])
    assert result.exit_code == 2, result.output
    assert "optimizer.learning_rate: expected at least" in result.stderr and "damaged" not in result.stderr
    assert "a resumed run keeps its settings" in result.stderr and "float64" not in result.stderr
    assert sorted(p.name for p in run_dir.rglob("*")) == before


def test_lr_find_refuses_step_sizes_the_model_dtype_cannot_hold(tmp_path, write_config):
    runner = CliRunner()
    path = write_config(tiny_config())
    result = runner.invoke(app, ["lr-find", str(path), "--start", "1e-50", "--end", "1e-45", "--out", str(tmp_path / "lf")])
    assert result.exit_code == 2, result.output
    assert "--start: expected at least 1.17549435e-38" in result.stderr and "received 1e-50" in result.stderr
    result = runner.invoke(app, ["lr-find", str(path), "--start", "1e-3", "--end", "1e39", "--out", str(tmp_path / "lf")])
    assert result.exit_code == 2 and "--end: expected at most" in result.stderr, result.output
    assert not (tmp_path / "lf").exists()
