"""Config loading: every shipped config validates; bad configs name the file and dotted path."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, tiny_config

from sgdcli.config.loading import flatten, load_config
from sgdcli.config.schema import ExperimentConfig, ObjectiveConfig
from sgdcli.config.yamlio import parse_yaml
from sgdcli.errors import ConfigError

SHIPPED = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_shipped_configs():
    names = {p.name for p in SHIPPED}
    assert {"quickstart.yaml", "digits-mlp.yaml", "iris.yaml", "diabetes.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_validates(path: Path):
    config = load_config(path)
    if isinstance(config, ObjectiveConfig):
        return
    assert isinstance(config, ExperimentConfig)
    if config.data.source in ("csv", "npz"):  # shipped data must ship; IDX sets are installed separately
        assert config.data.path.is_file(), f"{path.name} points at missing data {config.data.path}"


def test_learning_rate_written_as_1e_minus_3_is_a_number(write_config):
    path = write_config(tiny_config())
    text = path.read_text().replace("learning_rate: 0.1", "learning_rate: 1e-3")
    path.write_text(text)
    assert "1e-3" in text
    assert load_config(path).optimizer.learning_rate == pytest.approx(0.001)


def test_yaml_12_scalars():
    # YAML 1.1 surprises that our loader does not have: `no` is a string, 012 is twelve.
    assert parse_yaml("a: no\nb: 012\nc: 1e-3\nd: true\ne: .inf") == {
        "a": "no", "b": 12, "c": 0.001, "d": True, "e": float("inf")}


def test_defaults_are_filled_and_relative_paths_resolve_against_the_config(tmp_path, write_config):
    (tmp_path / "sub").mkdir()
    config = tiny_config()
    config["data"] = {"source": "csv", "path": "sub/d.csv", "target": "y"}
    loaded = load_config(write_config(config))
    assert loaded.data.path == (tmp_path / "sub" / "d.csv").resolve()
    assert loaded.data.scale == "standard" and loaded.data.validation == 0.2
    assert loaded.optimizer.nesterov is False
    assert loaded.training.batch.mode == "minibatch"


def test_overrides_apply_by_dotted_path():
    config = load_config(tiny_config(), ["optimizer.momentum=0.5", "model.layers.0.units=3",
                                         "training.batch.mode=full", "optimizer.learning_rate=2e-2"])
    assert config.optimizer.momentum == 0.5
    assert config.model.layers[0].units == 3
    assert config.training.batch.mode == "full"
    assert config.optimizer.learning_rate == pytest.approx(0.02)



@pytest.mark.parametrize("overrides,section,before", [
    (["optimizer.momentum=0.9", "optimizer.type=adam"], "optimizer", "sgd"),  # momentum is an sgd key
    (["model.layers.0.type=conv2d"], "model.layers.0", "dense"),  # units is a dense key
])
def test_set_of_a_sections_type_says_the_files_other_keys_stay_and_how_to_replace_it(overrides, section, before):
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config(), overrides)
    message = str(info.value)
    assert f"{section}." in message.splitlines()[0]  # the error itself comes first, as always
    after = overrides[-1].split("=")[1]
    assert (f"--set {section}.type={after} replaced only the file's {section}.type ({before})" in message
            and f"--set '{section}={{type: {after}, ...}}'" in message), message


def test_set_of_a_whole_section_as_a_mapping_replaces_it_and_a_valid_retype_needs_no_note():
    config = load_config(tiny_config(), ["optimizer.momentum=0.9", "optimizer={type: adam, learning_rate: 0.01}"])
    assert config.optimizer.type == "adam" and config.optimizer.learning_rate == pytest.approx(0.01)
    with pytest.raises(ConfigError) as info:  # a retype that is not what the error is about gets no note
        load_config(tiny_config(), ["loss.type=mse", "optimizer.momentun=0.9"])
    assert "note:" not in str(info.value)


BAD = [
    # (change to the tiny config as dotted=value overrides, text the message must contain)
    (["optimizer.momentun=0.9"], "optimizer.momentun: unknown key; did you mean 'momentum'?"),
    (["optimizer.learning_rate=0"], "optimizer.learning_rate: expected greater than 0"),
    (["optimizer.learning_rate=-0.1"], "optimizer.learning_rate"),
    (["optimizer.learning_rate=.nan"], "optimizer.learning_rate: expected a finite number"),
    (["optimizer.momentum=1"], "optimizer.momentum: expected less than 1"),
    (["training.epochs=0"], "training.epochs"),
    (["training.batch.size=0"], "training.batch.size"),
    (["training.batch.mode=ful"], "training.batch.mode: expected one of 'sgd', 'minibatch' or 'full'"),
    (["model.layers.0.units=-1"], "model.layers.0.units"),
    (["model.layers.0.activation=rleu"], "model.layers.0.activation"),
    (["model.layers.0.type=dropout"], "model.layers.0.rate: required key is missing"),
    (["loss.type=cross_entropyy"], "loss.type: expected one of"),
    (["optimizer.type=adamm"], "did you mean 'adam'?"),
    (["optimizer.nesterov=true", "optimizer.momentum=0"], "nesterov: true needs momentum > 0"),
    (["data.samples=abc"], "data.samples"),
    (["nmae=x"], "nmae: unknown key; did you mean 'name'?"),
    (["name=has space"], "name: expected a string matching"),
    (["seed=-1"], "seed"),
    (["model=3"], "model: expected a mapping"),
    (["optimizer.schedule.type=cosine", "optimizer.schedule.warmup_epochs=-1"], "optimizer.schedule.warmup_epochs"),
]


@pytest.mark.parametrize("overrides,expected", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_configs_name_the_file_and_dotted_path(write_config, overrides, expected):
    path = write_config(tiny_config())
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message


def test_dropout_rate_of_one_is_refused():
    config = tiny_config()
    config["model"]["layers"].insert(1, {"type": "dropout", "rate": 1.0})
    with pytest.raises(ConfigError, match=r"model\.layers\.1\.rate: expected less than 1"):
        load_config(config)


def test_missing_required_sections_are_listed():
    with pytest.raises(ConfigError) as info:
        load_config({"name": "x"})
    for key in ("data", "model", "loss", "optimizer", "training"):
        assert f"{key}: required key is missing" in str(info.value)


@pytest.mark.parametrize("override", ["novalue", "=3", "a..b=1", "model.layers.9.units=3"])
def test_malformed_set_is_a_config_error(override):
    with pytest.raises(ConfigError, match="--set"):
        load_config(tiny_config(), [override])


@pytest.mark.parametrize("text,expected", [
    ("", "empty"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("a: 1\na: 2\n", "duplicate key 'a' on lines 1 and 2"),
    ("a: !!python/object/apply:os.system ['echo hi']\n", "only plain data"),
    ("a: &x [1, 2]\nb: *x\n", "aliases"),
    ("a:\n\tb: 1\n", "tab character"),
    ("a: 1\n---\nb: 2\n", "several"),
    ("a: [1, 2\n", "not valid YAML"),
    ("[" * 100 + "]" * 100, "nested more than"),
])
def test_hostile_or_broken_yaml(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_non_utf8_and_missing_files(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    from sgdcli.config.yamlio import dump_yaml

    first = load_config(tiny_config(), ["optimizer.learning_rate=1e-5"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(first.to_dict()))
    assert load_config(path) == first


def test_flatten_gives_dotted_paths():
    assert flatten({"a": {"b": 1}, "l": [{"c": 2}], "e": {}}) == {"a.b": 1, "l.0.c": 2, "e": {}}


def test_a_schedule_without_a_type_is_the_constant_one():
    config = load_config(tiny_config(), ["optimizer.schedule.warmup_epochs=2"])
    assert config.optimizer.schedule.type == "constant" and config.optimizer.schedule.warmup_epochs == 2
    with pytest.raises(ConfigError, match="optimizer.schedule.every_epochs: required key is missing"):
        load_config(tiny_config(), ["optimizer.schedule.type=step"])
