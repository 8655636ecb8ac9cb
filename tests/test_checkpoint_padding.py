"""A checkpoint is judged by parsing it, never by its first bytes, and a resume never loses a newer
checkpoint (issue 10, item 1).

A safetensors file begins with its header length as a little-endian u64, so a valid checkpoint can
begin with 0x80 (a pickle's first opcode) or "PK" (a zip archive's); the format allows the header
to be padded with spaces, which is how these tests reach every such length.
"""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from test_resume import StopAfter, assert_identical, config_for, interrupt
from typer.testing import CliRunner

from sgdcli import api
from sgdcli.cli.app import app
from sgdcli.config.loading import load_config
from sgdcli.errors import CheckpointError
from sgdcli.runs import checkpoint


def repad(raw: bytes, length: int) -> bytes:
    """The same checkpoint with its JSON header padded with spaces to `length` bytes."""
    (size,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + size].rstrip(b" ")
    assert length >= len(header)
    return struct.pack("<Q", length) + header + b" " * (length - len(header)) + raw[8 + size :]


def header_length(raw: bytes) -> int:
    return struct.unpack("<Q", raw[:8])[0]


def lengths_to_try(shortest: int) -> list[int]:
    """Every header length mod 256, one with low 16 bits 0x4B50 ("PK"), and 300 random lengths."""
    every_residue = [shortest + (r - shortest) % 256 for r in range(256)]
    pk = shortest + (0x4B50 - shortest) % 65536
    rng = random.Random(10)
    return every_residue + [pk] + [shortest + rng.randrange(0, 200_000) for _ in range(300)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return api.train(load_config(tiny_config()), runs_dir=tmp_path_factory.mktemp("runs")).run_dir


def test_every_header_length_loads(trained, tmp_path):
    raw = (trained / "checkpoints" / "best.safetensors").read_bytes()
    original = checkpoint.load(trained / "checkpoints" / "best.safetensors")
    shortest = len(raw[8 : 8 + header_length(raw)].rstrip(b" "))
    padded = tmp_path / "padded.safetensors"
    first_bytes = set()
    for length in lengths_to_try(shortest):
        data = repad(raw, length)
        first_bytes.add(data[:2])
        padded.write_bytes(data)
        loaded = checkpoint.load(padded)
        assert loaded.meta == original.meta, length
        assert all(np.array_equal(loaded.params[k], v) for k, v in original.params.items()), length
    assert b"PK" in first_bytes and any(b[:1] == b"\x80" for b in first_bytes)  # the cases that misfired


@pytest.mark.parametrize("length_mod", [0x80, 0x4B50], ids=["starts-0x80", "starts-PK"])
def test_eval_accepts_a_checkpoint_whose_first_bytes_look_foreign(trained, tmp_path, length_mod):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    raw = (trained / "checkpoints" / "best.safetensors").read_bytes()
    shortest = len(raw[8 : 8 + header_length(raw)].rstrip(b" "))
    modulus = 256 if length_mod < 256 else 65536
    (run / "checkpoints" / "best.safetensors").write_bytes(repad(raw, shortest + (length_mod - shortest) % modulus))
    result = CliRunner().invoke(app, ["eval", str(run / "checkpoints" / "best.safetensors"), "--json"])
    assert result.exit_code == 0, result.stderr


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_resume_uses_valid_checkpoints_whatever_their_first_bytes(tmp_path):
    reference = api.train(config_for("minibatch"), runs_dir=tmp_path / "reference")
    run = interrupt(config_for("minibatch"), tmp_path / "runs", 15).run_dir  # mid-epoch 3: last is newest
    folder = run / "checkpoints"
    for name, residue, modulus in (("last.safetensors", 0x80, 256), ("best.safetensors", 0x4B50, 65536)):
        raw = (folder / name).read_bytes()
        shortest = len(raw[8 : 8 + header_length(raw)].rstrip(b" "))
        (folder / name).write_bytes(repad(raw, shortest + (residue - shortest) % modulus))
    stopper = StopAfter(10**9)
    resumed = api.resume(run, reporter=stopper)
    assert stopper.warnings == []  # nothing skipped, nothing rewound
    assert resumed.summary["resumed_from_epoch"] == 2
    assert_identical(reference.run_dir, run)


DAMAGE = {"flipped bit": lambda raw: raw[:-2] + bytes([raw[-2] ^ 0x04]) + raw[-1:],  # the checksum fails
          "cut in the tensors": lambda raw: raw[: len(raw) - 7],
          "cut in the header": lambda raw: raw[:100]}


@pytest.mark.parametrize("how", DAMAGE)
def test_a_resume_loses_no_byte_of_a_newer_checkpoint(tmp_path, how):
    run = interrupt(config_for("minibatch", epochs=8), tmp_path, 27).run_dir  # mid-epoch 5
    folder = run / "checkpoints"
    last = folder / "last.safetensors"
    damaged = DAMAGE[how](last.read_bytes())
    last.write_bytes(bytes(damaged))
    before = {name: (folder / name).read_bytes() for name in digests(folder)}
    resumed_from = checkpoint.load(folder / "previous.safetensors").meta["updates"]
    stopper = StopAfter(10**9)
    api.resume(run, reporter=stopper)
    after = {p.read_bytes() for p in folder.iterdir() if p.is_file()}
    for name, data in before.items():
        try:
            newer = _updates(tmp_path, data) > resumed_from
        except CheckpointError:
            newer = True  # unreadable: it may have been the newest state
        if newer:
            assert data in after, f"{name}: its bytes are gone"
    aside = list(folder.glob("last.damaged-*.safetensors"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(damaged)
    assert any("moved aside" in w and "last.safetensors" in w for w in stopper.warnings)


def _updates(tmp_path: Path, data: bytes) -> int:
    probe = tmp_path / "probe.safetensors"
    probe.write_bytes(data)
    try:
        return int(checkpoint.load(probe).meta["updates"])
    finally:
        probe.unlink()


def test_an_unreadable_but_not_damaged_checkpoint_stops_the_resume_and_changes_nothing(tmp_path):
    run = interrupt(config_for("minibatch"), tmp_path, 15).run_dir
    folder = run / "checkpoints"
    last = folder / "last.safetensors"
    raw = last.read_bytes()
    # a future format version: valid data this version does not read, so it must not be skipped
    last.write_bytes(raw.replace(b'"format_version":"1"', b'"format_version":"9"'))
    before = {p.name: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != "run.lock"}
    with pytest.raises(CheckpointError, match="--resume changed nothing"):
        api.resume(run)
    assert {p.name: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != "run.lock"} == before


def test_a_header_larger_than_16_mib_loads(trained, tmp_path):
    # Any header the safetensors writer makes (up to its 100 MB limit) is one sgdcli reads back:
    # a size check must not refuse valid files either.
    saved = checkpoint.load(trained / "checkpoints" / "best.safetensors")
    saved.meta["class_names"] = ["x" * 1000] * 20_000  # about 20 MB of metadata
    path = tmp_path / "big.safetensors"
    checkpoint.save(path, saved)
    assert header_length(path.read_bytes()) > 16 * 1024 * 1024
    assert checkpoint.load(path).meta == saved.meta


def test_falling_back_past_damaged_checkpoints_keeps_the_metrics_rows_it_redoes(tmp_path):
    run = interrupt(config_for("minibatch", epochs=6), tmp_path, 27).run_dir  # rows for epochs 1-4
    folder = run / "checkpoints"
    for name in ("last", "previous", "best"):
        path = folder / f"{name}.safetensors"
        path.write_bytes(path.read_bytes()[:-5])  # truncated: provably damaged
    rows = (run / "metrics.csv").read_text().splitlines(keepends=True)
    assert len(rows) == 5
    stopper = StopAfter(10**9)
    api.resume(run, reporter=stopper)  # from initial.safetensors
    aside, = run.glob("metrics.damaged-*.csv")
    assert aside.read_text() == "".join(rows)
    assert len(list(folder.glob("*.damaged-*.safetensors"))) == 3
