"""Static guard: the package never unpickles, never uses unsafe YAML, never evaluates strings."""

from __future__ import annotations

import re

from conftest import REPO

FORBIDDEN = re.compile(
    r"import pickle|from pickle|pickle\.load|allow_pickle\s*=\s*True|yaml\.load\(|yaml\.unsafe_load|"
    r"yaml\.full_load|CSafeLoader|(?<![\w.])eval\(|(?<![\w.])exec\(|torch\.load"
)


def test_package_source_has_no_unsafe_loading():
    offenders = []
    sources = sorted((REPO / "sgdcli").rglob("*.py"))
    assert len(sources) > 10
    for path in sources:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if FORBIDDEN.search(line.split("#")[0]):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_guard_itself_catches_each_pattern():
    for line in ("import pickle", "np.load(f, allow_pickle=True)", "yaml.load(text)", "x = eval(s)", "exec(code)"):
        assert FORBIDDEN.search(line), line
    assert not FORBIDDEN.search("model.evaluate(x)") and not FORBIDDEN.search("np.load(f, allow_pickle=False)")
