"""Shared fixtures: tiny configs written into a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def tiny_config(**changes) -> dict:
    """A config that trains in well under a second (synthetic moons, 2-8-2 network).

    Its two features would draw boundary.gif at the end of every run (~0.5 s each): off here,
    tests/test_boundary.py covers it."""
    config = {
        "name": "tiny",
        "seed": 0,
        "data": {"source": "synthetic", "dataset": "moons", "samples": 120, "noise": 0.1, "validation": 0.25},
        "model": {"layers": [{"type": "dense", "units": 8, "activation": "tanh"}, {"type": "dense", "units": 2}]},
        "loss": {"type": "cross_entropy"},
        "optimizer": {"type": "sgd", "learning_rate": 0.1, "momentum": 0.9},
        "training": {"epochs": 4, "batch": {"mode": "minibatch", "size": 16}, "boundary": False},
    }
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return config


@pytest.fixture
def write_config(tmp_path: Path):
    """write_config(dict, name='c.yaml') -> path of the YAML file in tmp_path."""

    def write(config: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Decoded-IDX caches go to a temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_run(tmp_path_factory):
    """configs/fashion-mlp.yaml, 64 hidden units, trained for one epoch (a few seconds); skipped without Fashion-MNIST."""
    if not FASHION.is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from sgdcli import api

    config = api.load_config(REPO / "configs" / "fashion-mlp.yaml", ["training.epochs=1", "training.eval_train=false",
                                                                          "model.layers.0.units=64"])
    with pytest.MonkeyPatch.context() as patch:  # the decode cache stays out of ~/.cache here too
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        return api.train(config, runs_dir=tmp_path_factory.mktemp("fashion")).run_dir


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """configs/digits-mlp.yaml trained for five epochs (under a second)."""
    from sgdcli import api

    config = api.load_config(REPO / "configs" / "digits-mlp.yaml", ["training.epochs=5"])
    return api.train(config, runs_dir=tmp_path_factory.mktemp("digits")).run_dir
