"""Safe YAML reading: plain data only, YAML 1.2 numbers and booleans, duplicate keys refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sgdcli.errors import ConfigError
from sgdcli.fileio import read_bytes

# Caps applied before the parser sees the text: a config is a few hundred bytes, and the
# pure-Python loader recurses once per nesting level.
MAX_BYTES = 1_000_000
MAX_DEPTH = 64

# YAML 1.2 core schema: `1e-3` is a float, only true/false are booleans (`no` stays a string),
# and `012` is the integer 12, not octal 10.
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")
_INT = re.compile(r"^[-+]?[0-9]+$")
_BOOL = re.compile(r"^(true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(~|null|Null|NULL|)$")
# What the YAML spec (1.2, section 5.1) does not allow in a stream: C0 controls other than tab,
# LF and CR, DEL, C1 controls other than NEL, surrogates and the two non-characters.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")


class _Loader(yaml.SafeLoader):
    """SafeLoader (pure Python) with YAML 1.2 scalars and duplicate-key detection."""


_Loader.yaml_implicit_resolvers = {}
for tag, pattern, first in [
    ("tag:yaml.org,2002:bool", _BOOL, list("tTfF")),
    ("tag:yaml.org,2002:int", _INT, list("-+0123456789")),
    ("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789")),
    ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
]:
    _Loader.add_implicit_resolver(tag, pattern, first)


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    return int(loader.construct_scalar(node))


def _construct_float(loader: _Loader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower()
    if text.lstrip("+-") == ".inf":
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise ConfigError(f"line {line}: a mapping key must be a plain value, received {type(key).__name__}")
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} on lines {seen[key]} and {line}")
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _check_printable(text: str) -> None:
    """Refuse control characters (a NUL, a bell, an escape) with their line, column and code point."""
    found = _UNPRINTABLE.search(text)
    if found:
        line = text.count("\n", 0, found.start()) + 1
        column = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
        raise ConfigError(f"line {line}, column {column}: expected printable text, received the control character "
                          f"U+{ord(found.group()):04X}")


def _check_depth(text: str) -> None:
    """Refuse documents nested deeper than MAX_DEPTH before parsing (flow or block style)."""
    depth = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"nested more than {MAX_DEPTH} levels deep; a config needs a handful")
        elif ch in "]}":
            depth = max(depth - 1, 0)
    indents = [len(line) - len(line.lstrip(" -")) for line in text.splitlines() if line.strip()]
    if indents and max(indents) > 2 * MAX_DEPTH * 4:
        raise ConfigError(f"indented more than {MAX_DEPTH} levels deep; a config needs a handful")


def parse_yaml(text: str) -> Any:
    """Parse one YAML document of plain data; ConfigError (without a source) on any problem."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"expected at most {MAX_BYTES} bytes of YAML, received {len(text)}")
    if "\t" in text:
        line = text[: text.index("\t")].count("\n") + 1
        raise ConfigError(f"line {line}: tab character; YAML indentation must use spaces")
    _check_printable(text)
    _check_depth(text)
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:  # the reader checks characters as it is built
        raise ConfigError(f"not valid YAML ({exc})") from None
    try:
        if not loader.check_node():
            return None
        node = loader.get_node()
        if loader.check_node():
            raise ConfigError("expected one YAML document, received several (a second '---')")
        _check_aliases(node)
        return loader.construct_document(node)
    except yaml.constructor.ConstructorError as exc:
        where = f"line {exc.problem_mark.line + 1}: " if exc.problem_mark else ""
        raise ConfigError(f"{where}{exc.problem}; only plain data (mappings, lists, numbers, strings) is allowed") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{where}not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    except RecursionError:
        raise ConfigError("nested too deeply to read") from None
    finally:
        loader.dispose()


def _check_aliases(node: yaml.Node) -> None:
    """Refuse anchors and aliases: they are how 'billion laughs' documents grow."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            raise ConfigError(f"line {current.start_mark.line + 1}: YAML aliases (*name) are not allowed in configs")
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                stack.extend((key, value))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def read_yaml(path: Path) -> Any:
    """Read and parse a YAML file; errors name the file. At most MAX_BYTES are read, so a file
    that never ends (/dev/zero, a pipe) is refused instead of filling memory."""
    raw = read_bytes(path, ConfigError, "a YAML file", limit=MAX_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (bad byte at offset {exc.start})", source=str(path)) from None
    try:
        return parse_yaml(text)
    except ConfigError as exc:
        raise ConfigError(exc.message, source=str(path)) from None


def parse_scalar(text: str) -> Any:
    """Parse the VALUE of a --set KEY=VALUE the way the config file would read it."""
    value = parse_yaml(text) if text.strip() else ""
    return value


def dump_yaml(data: Any) -> str:
    """Plain block-style YAML, keys in schema order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
