"""The config's JSON Schema: shipped, current, and every shipped config validates against it."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, tiny_config
from typer.testing import CliRunner

from sgdcli.cli.app import app
from sgdcli.config import editor_schema
from sgdcli.config.loading import load_config
from sgdcli.config.yamlio import read_yaml

jsonschema = pytest.importorskip("jsonschema")
SHIPPED = REPO / editor_schema.FILE_NAME
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
MODELINE = "# yaml-language-server: $schema="


def validator():
    schema = json.loads(SHIPPED.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_schema_is_current():
    # If this fails: sgdcli schema --out sgdcli-config.schema.json --force
    assert SHIPPED.read_text() == editor_schema.schema_text()
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0 and json.loads(result.stdout) == json.loads(SHIPPED.read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_names_the_schema_and_validates_against_it(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith(MODELINE), f"{path} must start with {MODELINE}<relative path>"
    assert (path.parent / first[len(MODELINE):]).resolve() == SHIPPED.resolve()
    errors = sorted(validator().iter_errors(read_yaml(path)), key=str)
    assert not errors, [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def test_the_schema_rejects_what_the_loader_rejects_and_accepts_what_it_accepts():
    check = validator()
    good = tiny_config()
    assert not list(check.iter_errors(good))
    load_config(good)
    untyped_schedule = tiny_config(optimizer={"type": "sgd", "learning_rate": 0.1, "schedule": {"warmup_epochs": 2}})
    load_config(untyped_schedule)  # a schedule without a type is the constant one
    assert not list(check.iter_errors(untyped_schedule))
    for bad in (tiny_config(optimizer={"type": "sgd", "learning_rate": 0.1, "momentun": 0.9}),  # unknown key
                tiny_config(optimizer={"type": "sgd", "learning_rate": -1}),  # out of range
                tiny_config(model__layers__0__activation="relu6"),  # unknown activation
                tiny_config(training__batch__mode="stochastic")):
        assert list(check.iter_errors(bad)), bad
