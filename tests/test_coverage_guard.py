"""Completeness guards: every type the config schema accepts has a gradient check, a builder and docs."""

from __future__ import annotations

import typing

from conftest import REPO
from test_gradients import ACTIVATION_CASES, LAYER_CASES, LOSS_CASES

from sgdcli.config import base
from sgdcli.config import schema as config
from sgdcli.training import build


def literal_values(annotation) -> set[str]:
    return set(typing.get_args(annotation))


def union_tags(union, key: str = "type") -> set[str]:
    members = typing.get_args(typing.get_args(union)[0])
    return {tag for member in members for tag in literal_values(member.model_fields[key].annotation)}


def test_every_layer_type_in_the_schema_has_a_gradient_check():
    assert union_tags(config.LayerConfig) == set(LAYER_CASES)


def test_every_layer_type_in_the_schema_has_a_builder():
    assert set(typing.get_args(typing.get_args(config.LayerConfig)[0])) == set(build.LAYERS)


def test_every_activation_in_the_schema_has_a_gradient_check_and_a_builder():
    assert literal_values(base.Activation) == set(ACTIVATION_CASES) == set(build.ACTIVATIONS)


def test_every_loss_in_the_schema_has_a_gradient_check_and_a_builder():
    assert union_tags(config.LossConfig) == set(LOSS_CASES)
    assert {literal_values(c.model_fields["type"].annotation).pop() for c in build.LOSSES} == set(LOSS_CASES)


def test_every_optimizer_in_the_schema_has_a_builder():
    assert set(typing.get_args(typing.get_args(config.OptimizerConfig)[0])) == set(build.OPTIMIZERS)


def test_the_guard_would_notice_a_new_type():
    # A schema with one more loss than the checks cover must not compare equal.
    assert union_tags(config.LossConfig) | {"new_loss"} != set(LOSS_CASES)


def sections_in(annotation) -> list[type]:
    """The config section classes named anywhere inside a type annotation."""
    found, stack = [], [annotation]
    while stack:
        current = stack.pop()
        if isinstance(current, type) and issubclass(current, base.Section):
            found.append(current)
        else:
            stack.extend(typing.get_args(current))
    return found


def all_config_keys(model=config.ExperimentConfig, prefix="") -> set[str]:
    """Dotted paths of every leaf key; list items appear as N (model.layers.N.units)."""
    keys = set()
    for name, field in model.model_fields.items():
        dotted = prefix + name
        sections = sections_in(field.annotation)
        if not sections:
            keys.add(dotted)
        for section in sections:
            keys |= all_config_keys(section, f"{dotted}.N." if typing.get_origin(field.annotation) is list else f"{dotted}.")
    return keys


def test_readme_documents_every_config_key():
    readme = (REPO / "README.md").read_text()
    keys = all_config_keys() | all_config_keys(config.ObjectiveConfig)
    assert {"optimizer.learning_rate", "model.layers.N.units", "training.batch.mode", "data.path",
            "objective.start", "training.steps"} <= keys
    missing = sorted(k for k in keys if f"`{k}`" not in readme)  # each key in backticks, e.g. `data.path`
    assert not missing, f"README's config table lacks: {missing}"
