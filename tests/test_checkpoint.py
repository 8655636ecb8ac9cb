"""Checkpoints: round trip, checksums, and files that are not ours."""

from __future__ import annotations

import numpy as np
import pytest

from sgdcli.errors import CheckpointError
from sgdcli.runs import checkpoint


def sample() -> checkpoint.Checkpoint:
    rng = np.random.default_rng(0)
    return checkpoint.Checkpoint(
        params={"0.weight": rng.standard_normal((3, 4)).astype(np.float32), "0.bias": np.zeros(4, np.float32)},
        optimizer={"velocity/0.weight": np.ones((3, 4), np.float32), "iterations": np.array(7, np.int64)},
        shift=np.zeros(3), scale=np.ones(3), meta={"epoch": 2, "rng": {"state": 2**100}},
    )


def test_round_trip(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, sample())
    loaded = checkpoint.load(path)
    original = sample()
    assert loaded.meta == original.meta
    for key, value in original.params.items():
        assert np.array_equal(loaded.params[key], value) and loaded.params[key].dtype == value.dtype
    assert int(loaded.optimizer["iterations"]) == 7
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_flipped_bit_anywhere_in_the_tensors_is_caught(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, sample())
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01  # inside the tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(path)


def test_every_truncation_is_refused_cleanly(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, sample())
    raw = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for length in range(len(raw)):  # every prefix
        cut.write_bytes(raw[:length])
        with pytest.raises(CheckpointError):
            checkpoint.load(cut)


def test_a_flipped_bit_in_any_byte_is_refused(tmp_path):
    # Header length, JSON header, metadata, checksum text or tensor data: one flipped bit anywhere
    # must be refused (or, in JSON padding whitespace, change nothing that is read).
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, sample())
    raw = path.read_bytes()
    original = checkpoint.load(path)
    flipped = tmp_path / "flipped.safetensors"
    accepted = []
    for position in range(len(raw)):
        damaged = bytearray(raw)
        damaged[position] ^= 1 << (position % 8)
        flipped.write_bytes(bytes(damaged))
        try:
            loaded = checkpoint.load(flipped)
        except CheckpointError:
            continue
        accepted.append(position)
        assert loaded.meta == original.meta and all(
            np.array_equal(loaded.params[k], v) for k, v in original.params.items())
    assert len(accepted) < 8, f"bit flips accepted at {accepted}"


@pytest.mark.parametrize("payload,expected", [
    (b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00", "pickle"),
    (b"PK\x03\x04" + b"\x00" * 40, "zip archive"),
    (b"\xff" * 8 + b"{}", "unknown bytes"),
    (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "sgdcli metadata"),
])
def test_foreign_files_are_refused(tmp_path, payload, expected):
    path = tmp_path / "x.safetensors"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=expected):
        checkpoint.load(path)


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"], ids=["like a pickle", "like a zip"])
def test_a_header_length_that_starts_like_another_format_still_loads(tmp_path, first_bytes):
    # The 8-byte header length is little-endian: a 0x1580-byte header starts with 0x80 (a pickle's
    # first byte), a 0x4B50-byte one with "PK" (a zip's). Found with a batch-norm CNN's checkpoint.
    path = tmp_path / "c.safetensors"
    wanted = int.from_bytes(first_bytes, "little")
    modulus = 256 ** len(first_bytes)
    state = sample()
    state.meta["padding"] = ""
    size = int.from_bytes(checkpoint.encode(state)[:8], "little")
    state.meta["padding"] = "x" * ((wanted - size) % modulus)  # each x adds one byte to the header
    raw = checkpoint.encode(state)
    assert raw[: len(first_bytes)] == first_bytes
    path.write_bytes(raw)
    assert checkpoint.load(path).meta["padding"] == state.meta["padding"]
