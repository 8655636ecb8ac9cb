"""Fault injection over the checkpoint header's length (issue 10): 40 runs of one tiny config whose
names have random lengths — the name is in every checkpoint's header, so the header length, and
with it the file's first bytes, moves — each stopped at a random update, then evaluated, resumed,
evaluated again and resumed once more (nothing left to do), all through the command line."""

from __future__ import annotations

import random
import string

from conftest import tiny_config
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.cli.app import app
from sgdcli.config.loading import load_config
from test_resume import StopAfter

runner = CliRunner()
RUNS = 40
NAME_CHARACTERS = string.ascii_letters + string.digits + "._-"


def cli(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{args}: {result.stderr}"
    return result.stderr


def test_forty_runs_with_names_of_random_length_all_eval_and_resume(tmp_path):
    rng = random.Random(20261129)
    first_bytes = set()
    for number in range(RUNS):
        name = rng.choice(string.ascii_letters) + "".join(rng.choices(NAME_CHARACTERS, k=rng.randrange(0, 100)))
        config = tiny_config(name=name, training__epochs=3, seed=number)
        # 90 training samples, batches of 16: 6 updates an epoch, 18 in all; stop somewhere in them
        stopper = StopAfter(rng.randrange(1, 18))
        run = api.train(load_config(config), runs_dir=tmp_path, reporter=stopper, should_stop=stopper).run_dir
        checkpoints = sorted((run / "checkpoints").glob("*.safetensors"))
        first_bytes.update(path.read_bytes()[:1] for path in checkpoints)
        for target in [run, *checkpoints]:
            cli("eval", target, "--json")
        cli("train", "--resume", run)
        for target in [run, *sorted((run / "checkpoints").glob("*.safetensors"))]:
            cli("eval", target, "--json")
        assert "nothing to do" in cli("train", "--resume", run)
        assert not list((run / "checkpoints").glob("*.damaged-*"))
    assert len(first_bytes) > 5  # the header length did move
