"""Loading configs: YAML or a dict, --set overrides, and validation errors as dotted paths."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import pydantic
from pydantic import BaseModel

from sgdcli.config import precision, shapes
from sgdcli.config.schema import (
    GRADIENT_OPTIMIZERS,
    AnyConfig,
    ExperimentConfig,
    ObjectiveConfig,
)
from sgdcli.config.yamlio import parse_scalar, read_yaml
from sgdcli.errors import ConfigError

__all__ = ["load_config", "apply_override", "format_validation_error", "flatten", "AnyConfig", "ExperimentConfig",
           "ObjectiveConfig", "GRADIENT_OPTIMIZERS"]


# ---------------------------------------------------------------- loading
def load_config(
    source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = (), base_dir: Path | None = None,
    check_precision: bool = True,
) -> AnyConfig:
    """Load a config from a YAML file or a dict, apply `KEY=VALUE` overrides, validate.

    A config with an `objective:` section is an ObjectiveConfig (no data, model or loss).
    Relative data paths resolve against the config file's folder (or `base_dir`, default the
    current directory, for a dict). ``check_precision``: refuse settings the model's dtype turns into 0 or
    infinity (``precision.check``); off for a stored run's config, which has trained already (``eval``).
    Raises ConfigError.
    """
    if isinstance(source, dict):
        raw, where = _deep_copy(source), "<config>"
        base = Path(base_dir or Path.cwd())
    else:
        path = Path(source)
        raw, where = read_yaml(path), str(path)
        base = base_dir or path.parent
        if raw is None:
            raise ConfigError("the file is empty; expected a mapping of config keys", source=where)
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of config keys at the top level, received {_kind(raw)}", source=where)
    retyped: dict[str, tuple[Any, Any]] = {}  # section -> (its type in the file, the type --set gave it)
    for item in overrides:
        key, before, after = apply_override(raw, item)
        section, _, last = key.rpartition(".")
        if last == "type" and section and before is not None and before != after:
            retyped.setdefault(section, (before, after))
    schema = ObjectiveConfig if "objective" in raw else ExperimentConfig
    try:
        config = schema.model_validate(raw, context={"base_dir": base})
    except pydantic.ValidationError as exc:
        message = format_validation_error(exc, schema)
        raise ConfigError(message + _retype_hint(message, retyped), source=where) from None
    if isinstance(config, ExperimentConfig):
        _check_shapes(config, where)
        problem = precision.check(config) if check_precision else None
        if problem:
            raise ConfigError(problem, source=where)
    return config.read_from(where)


def _check_shapes(config: ExperimentConfig, where: str) -> None:
    """Layer order always; every layer's shape too when the config alone gives the sample shape."""
    try:
        shapes.check_order(config.model.layers)
        sample_shape = getattr(config.data, "sample_shape", None)
        if sample_shape is not None:
            shapes.infer_shapes(config.model.layers, tuple(sample_shape))
    except shapes.ShapeError as exc:
        raise ConfigError(str(exc), source=where) from None


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _retype_hint(message: str, retyped: dict[str, tuple[Any, Any]]) -> str:
    """For each section whose `type` --set changed and that an error line is about: why its other keys
    remain (they came from the file, written for the old type) and how to replace the section whole."""
    lines = message.splitlines()
    hints = [f"\nnote: --set {section}.type={after} replaced only the file's {section}.type ({before}); the file's "
             f"other {section} keys are still there; to replace the whole section, give it as a mapping: "
             f"--set '{section}={{type: {after}, ...}}'"
             for section, (before, after) in retyped.items() if any(line.startswith(f"{section}.") for line in lines)]
    return "".join(hints)


def apply_override(raw: dict[str, Any], item: str) -> tuple[str, Any, Any]:
    """Apply one `dotted.path=value` to the raw config dict (value parsed as YAML, as the file is read).

    Returns the dotted key, the value it replaced (None where there was none) and the new value.
    Raises ConfigError naming the key when the path does not fit the config (an index past a list's
    end, a key below a single value) or the text is not YAML.
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects KEY=VALUE with a dotted key such as optimizer.momentum=0.9, received {item!r}")
    try:
        value = parse_scalar(text)
    except ConfigError as exc:
        raise ConfigError(f"--set {key}: {exc.message}") from None
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {here} expects a list index 0..{len(node) - 1}, received {part!r}")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and index not in node:
                node[index] = {}
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is a single value, not a section")
        if last:
            break
        node = node[index]
    before = node[index] if isinstance(node, list) else node.get(index)
    node[index] = value
    return key, before, value


def format_validation_error(exc: pydantic.ValidationError, schema: type[BaseModel]) -> str:
    """One line per problem: dotted path, what was expected, what was received."""
    lines = []
    for error in exc.errors():
        path, owner = _walk(error["loc"], schema)
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            key = str((error.get("ctx") or {}).get("discriminator", "type")).strip("'")
            path = f"{path}.{key}" if path else key
        lines.append(f"{path or '(top level)'}: {_describe(error, owner)}")
    return "\n".join(lines)


def _walk(loc: tuple, schema: type[BaseModel]) -> tuple[str, type[BaseModel] | None]:
    """Follow pydantic's loc (which includes union tags) through the schema.

    Returns the dotted path without the tags, and the model class owning the last key.
    """
    parts: list[str] = []
    current: Any = schema
    owner: type[BaseModel] | None = None
    for element in loc:
        current = _unwrap(current)
        if isinstance(current, list):  # a discriminated union: this element is the tag
            current = _unwrap(next((m for m in current if element in _tags(m)), None))
            continue
        parts.append(str(element))
        owner = current if isinstance(current, type) and issubclass(current, BaseModel) else None
        if owner is not None and element in owner.model_fields:
            current = owner.model_fields[element].annotation
        elif isinstance(element, int) and typing.get_origin(current) is list:
            current = typing.get_args(current)[0]
        else:
            current = None
    return ".".join(parts), owner


def _unwrap(tp: Any) -> Any:
    """Strip Annotated/Optional; a union of several models becomes a list of its members."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [m for m in typing.get_args(tp) if m is not type(None)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(models) > 1:
            return models
        return _unwrap(members[0]) if len(members) == 1 else tp
    return tp


def _tags(model: type[BaseModel]) -> tuple:
    for name in ("type", "source"):
        field = model.model_fields.get(name)
        if field is not None:
            return typing.get_args(field.annotation)
    return ()


def _describe(error: dict, owner: type[BaseModel] | None) -> str:
    kind, received = error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        allowed = sorted(owner.model_fields) if owner else []
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    if kind in ("union_tag_invalid", "literal_error"):
        expected = ctx.get("expected_tags") or ctx.get("expected")
        tag = ctx.get("tag", received)
        close = difflib.get_close_matches(str(tag), [t.strip(" '") for t in str(expected).replace(" or ", ",").split(",")], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"expected one of {expected}, received {tag!r}{hint}"
    if kind == "union_tag_not_found":
        return "required key is missing" if isinstance(received, dict) else f"expected a mapping, received {_show(received)}"
    if kind in ("model_attributes_type", "model_type", "dict_type"):
        return f"expected a mapping, received {_kind(received)} {_show(received)}"
    if kind == "string_pattern_mismatch":
        return f"expected a string matching {ctx.get('pattern')}, received {_show(received)}"
    message = error["msg"]
    if message.startswith("Value error, "):
        return message[len("Value error, "):]
    else:
        message = "expected " + message[0].lower() + message[1:].removeprefix("input should be ").removeprefix(
            "Input should be ")
        message = message.replace("expected input should be ", "expected ")
    return f"{message}, received {_show(received)}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}, 'l': [{'c': 2}]} -> {'a.b': 1, 'l.0.c': 2}: dotted paths of every leaf."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    if not out and prefix:
        out[prefix] = data
    return out
