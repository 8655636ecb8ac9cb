"""A valid checkpoint is never mistaken for a pickle or a zip because of its header length's bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from sgdcli.errors import CheckpointError
from sgdcli.runs import checkpoint


def _with_header_length(predicate, start: int) -> bytes:
    """Encode checkpoints with growing padding until the 8-byte header length satisfies `predicate`."""
    for pad in range(start, start + 70_000):
        state = checkpoint.Checkpoint(params={"0.weight": np.ones((2, 2), np.float32)}, optimizer={},
                                      shift=np.zeros(2), scale=np.ones(2), meta={"pad": "a" * pad})
        raw = checkpoint.encode(state)
        if predicate(struct.unpack("<Q", raw[:8])[0]):
            return raw
    raise AssertionError("no padding gave that header length")


@pytest.mark.parametrize("predicate, start, looks_like", [
    (lambda size: size % 256 == 0x80, 0, b"\x80"),  # a pickle's first byte
    (lambda size: size % 65536 == 0x4B50, 18_500, b"PK"),  # a zip's first bytes
])
def test_header_lengths_that_look_like_magic_bytes_still_load(tmp_path, predicate, start, looks_like):
    raw = _with_header_length(predicate, start)
    assert raw.startswith(looks_like)
    path = tmp_path / "c.safetensors"
    path.write_bytes(raw)
    np.testing.assert_array_equal(checkpoint.load(path).params["0.weight"], np.ones((2, 2)))


def test_a_real_pickle_is_still_refused_by_name(tmp_path):
    path = tmp_path / "p.safetensors"
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoint.load(path)
