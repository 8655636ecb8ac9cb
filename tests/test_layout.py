"""The package layout shows the pipeline, and imports only run downward through it.

Folders in the order data flows (README "Code map"); a module may import from its own layer and
any layer below, never from one above. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "sgdcli"

# Lowest first. The shared ground (errors, file I/O, plots, strict JSON, the package root) sits under everything.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sgdcli", "sgdcli.errors", "sgdcli.fileio", "sgdcli.plots", "sgdcli.strict_json"),
    ("sgdcli.engine",),
    ("sgdcli.config",),
    ("sgdcli.data",),
    ("sgdcli.runs",),
    ("sgdcli.training",),
    ("sgdcli.export",),
    ("sgdcli.analysis",),
    ("sgdcli.api",),
    ("sgdcli.cli", "sgdcli.__main__"),
)
MAX_MODULE_LINES = 400  # STYLE.md: split a module when it owns two ideas or passes ~400 lines


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def layer_of(module: str, layers=LAYERS) -> int | None:
    """The index of the layer that owns `module` (longest matching prefix), or None.

    The package root ("sgdcli") owns only its own __init__, not everything under it."""
    best, best_length = None, -1
    for index, prefixes in enumerate(layers):
        for prefix in prefixes:
            inside = "." in prefix and module.startswith(prefix + ".")
            if (module == prefix or inside) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def imported_modules(module: str, path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, module) for every import of the package in `path`, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if candidate in known else base))
    root = next(iter(known)).split(".")[0]
    return [(line, name) for line, name in found if name == root or name.startswith(root + ".")]


def violations(root: Path, layers=LAYERS) -> list[str]:
    """Every import that runs upward, and every module no layer owns, as readable lines."""
    known = module_names(root)
    problems = []
    for module, path in known.items():
        own = layer_of(module, layers)
        if own is None:
            problems.append(f"{module}: no layer owns it; add it to a folder (or to the table in this test)")
            continue
        for line, target in imported_modules(module, path, known):
            theirs = layer_of(target, layers)
            if theirs is not None and theirs > own:
                problems.append(f"{path.relative_to(root.parent)}:{line}: {module} (layer {own}) imports "
                                f"{target} (layer {theirs}, above it)")
    return problems


def test_imports_only_run_downward():
    assert violations(PACKAGE_ROOT) == []


def test_every_folder_says_what_it_owns():
    folders = {path.parent for path in PACKAGE_ROOT.rglob("*.py") if "__pycache__" not in path.parts}
    missing = sorted(str(folder) for folder in folders if not (folder / "__init__.py").is_file())
    assert missing == [], f"folders without __init__.py (a namespace package by accident): {missing}"
    for init in PACKAGE_ROOT.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.splitlines()) <= 3, f"{init}: expected a one- or two-line docstring"


def test_no_module_passes_the_size_limit():
    long = {str(path.relative_to(PACKAGE_ROOT.parent)): n for path in PACKAGE_ROOT.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"split these modules (more than {MAX_MODULE_LINES} lines): {long}"


# ---------------------------------------------------------------- the checker itself can fail
def fake_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "sgdcli"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "__init__.py": '"""root"""\n',
    "errors.py": "",
    "engine/__init__.py": "",
    "engine/layers.py": "from .activations import relu\nfrom sgdcli.errors import SgdcliError\n",
    "engine/activations.py": "",
    "training/__init__.py": "",
    "training/loop.py": "from sgdcli.engine import layers\nimport sgdcli.errors\n",
    "cli/__init__.py": "",
    "cli/app.py": "def main():\n    from sgdcli.training.loop import train\n",
}


def test_checker_passes_a_clean_tree(tmp_path):
    assert violations(fake_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize("module, text, culprit", [
    ("engine/layers.py", "from sgdcli.training import loop\n", "sgdcli.training.loop"),
    ("engine/layers.py", "import sgdcli.cli.app\n", "sgdcli.cli.app"),
    ("engine/layers.py", "def f():\n    from sgdcli.training.loop import train\n", "sgdcli.training.loop"),
    ("engine/activations.py", "from ..training import loop\n", "sgdcli.training.loop"),
    ("errors.py", "from sgdcli.engine.layers import Dense\n", "sgdcli.engine.layers"),
    ("training/loop.py", "from sgdcli import cli\n", "sgdcli.cli"),
])
def test_checker_finds_an_upward_import(tmp_path, module, text, culprit):
    problems = violations(fake_tree(tmp_path, {**CLEAN, module: text}))
    assert len(problems) == 1 and culprit in problems[0] and "above it" in problems[0], problems


def test_checker_finds_a_module_no_layer_owns(tmp_path):
    problems = violations(fake_tree(tmp_path, {**CLEAN, "stray.py": ""}))
    assert problems == ["sgdcli.stray: no layer owns it; add it to a folder (or to the table in this test)"]
