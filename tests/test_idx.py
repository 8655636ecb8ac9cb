"""IDX reader: round trips, every malformed-file message, finding files, and the decode cache."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from sgdcli.data import idx
from sgdcli.errors import DataError

CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode `array` as IDX by hand (struct header, big-endian data), independently of idx.py."""
    header = struct.pack(">BBBB", 0, 0, CODES[array.dtype.str[1:]], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes | np.ndarray, gz: bool = False) -> Path:
    raw = idx_bytes(data) if isinstance(data, np.ndarray) else data
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def images_and_labels(n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 4, 3), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def assert_data_error(path: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        idx.read_idx(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_ubyte_pair_round_trip(tmp_path, gz):
    x, y = images_and_labels()
    suffix = ".gz" if gz else ""
    images = write(tmp_path / f"images{suffix}", x, gz)
    labels = write(tmp_path / f"labels{suffix}", y, gz)
    got_x, got_y = idx.load_idx_pair(images, labels)
    assert got_x.dtype == np.uint8 and got_x.shape == (5, 4, 3)
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)


def test_gzip_detected_by_magic_bytes_not_suffix(tmp_path):
    x, _ = images_and_labels()
    np.testing.assert_array_equal(idx.read_idx(write(tmp_path / "images.bin", x, gz=True)), x)


@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "f4", "f8"])
def test_multibyte_types_decode_big_endian_to_native(tmp_path, dtype):
    # 258 = 0x0102 is read as 513 if the byte order is wrong; -2 and 1.5 catch sign and float.
    values = {"i1": [-2, 1, 127], "i2": [258, -2, 1], "i4": [258, -2, 70000],
              "f4": [1.5, -2.0, 258.25], "f8": [1.5, -2.0, 1e300]}[dtype]
    array = np.array(values, dtype=dtype).reshape(3, 1)
    got = idx.read_idx(write(tmp_path / "a.idx", array))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative and got.shape == (3, 1)
    np.testing.assert_array_equal(got, array)
    got[0, 0] = 0  # returned arrays are writable copies, not views of read-only bytes


# --- malformed files ---------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert_data_error(tmp_path / "nope.idx", "file not found")


def test_empty_file(tmp_path):
    assert_data_error(write(tmp_path / "empty.idx", b""), "expected at least 4 bytes, received 0")


def test_bad_magic(tmp_path):
    path = write(tmp_path / "bad.idx", b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    assert_data_error(path, "expected magic bytes 00 00 <type> <ndim>", "received 01 02 08 01")


def test_unknown_type_byte(tmp_path):
    path = write(tmp_path / "type.idx", b"\x00\x00\x0a\x01" + struct.pack(">I", 1) + b"\x00")
    assert_data_error(path, "unknown IDX type byte 0x0A", "0x08")


def test_truncated_header(tmp_path):
    # 3 dimensions need 4 + 3*4 = 16 header bytes; only 4 + 6 = 10 are present.
    path = write(tmp_path / "head.idx", b"\x00\x00\x08\x03" + struct.pack(">IH", 60000, 28))
    assert_data_error(path, "expected 16 header bytes", "received 10")


def test_zero_dimensions(tmp_path):
    assert_data_error(write(tmp_path / "zero.idx", b"\x00\x00\x08\x00"), "0 dimensions")


def test_truncated_data(tmp_path):
    x, _ = images_and_labels()  # 5*4*3 = 60 data bytes
    path = write(tmp_path / "short.idx", idx_bytes(x)[:-7])
    assert_data_error(path, "truncated", "expected 60 bytes of data", "received 53")


def test_trailing_bytes(tmp_path):
    x, _ = images_and_labels()
    path = write(tmp_path / "long.idx.gz", idx_bytes(x) + b"\x00\x00", gz=True)
    # inflation stops one byte past the declared size, so a .gz says "at least"
    assert_data_error(path, "trailing", "expected 60 bytes of data", "received 61 or more")


def test_gz_named_garbage_says_not_gzip(tmp_path):
    path = write(tmp_path / "train-images-idx3-ubyte.gz", b"<html>404</html>")
    assert_data_error(path, "expected magic bytes 00 00", "received 3c 68 74 6d", "not gzip")


def test_corrupt_gzip_stream(tmp_path):
    x, _ = images_and_labels()
    path = write(tmp_path / "cut.gz", gzip.compress(idx_bytes(x))[:20])
    assert_data_error(path, "not a valid gzip file")


def test_count_mismatch_names_both_files(tmp_path):
    x, y = images_and_labels(n=5)
    images = write(tmp_path / "imgs.idx", x)
    labels = write(tmp_path / "labs.idx", y[:4])
    with pytest.raises(DataError) as info:
        idx.load_idx_pair(images, labels)
    message = str(info.value)
    assert str(images) in message and str(labels) in message
    assert "5 images" in message and "4 labels" in message


def test_labels_with_three_dimensions(tmp_path):
    x, _ = images_and_labels()
    labels = write(tmp_path / "labs.idx", np.zeros((5, 2, 2), dtype=np.uint8))
    with pytest.raises(DataError) as info:
        idx.load_idx_pair(write(tmp_path / "imgs.idx", x), labels)
    message = str(info.value)
    assert str(labels) in message and "1 dimension" in message and "received 3" in message


def test_images_with_one_dimension(tmp_path):
    images = write(tmp_path / "imgs.idx", np.zeros(5, dtype=np.uint8))
    labels = write(tmp_path / "labs.idx", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="expected an idx3 image file.*received 1") as info:
        idx.load_idx_pair(images, labels)
    assert str(images) in str(info.value)


# --- finding files -----------------------------------------------------------------------------


def touch_pair(folder: Path, split: str, suffix: str = "") -> tuple[Path, Path]:
    paths = tuple(folder / (name + suffix) for name in idx.STANDARD_NAMES[split])
    for path in paths:
        path.write_bytes(b"")
    return paths


def test_find_gz_names(tmp_path):
    train, test = touch_pair(tmp_path, "train", ".gz"), touch_pair(tmp_path, "test", ".gz")
    assert idx.find_idx_files(tmp_path) == {"train": train, "test": test}


def test_find_raw_names_preferred_over_gz(tmp_path):
    touch_pair(tmp_path, "train", ".gz")
    train = touch_pair(tmp_path, "train")
    assert idx.find_idx_files(tmp_path) == {"train": train}


def test_find_dotted_variant(tmp_path):
    images, labels = tmp_path / "train-images.idx3-ubyte", tmp_path / "train-labels.idx1-ubyte.gz"
    images.write_bytes(b"")
    labels.write_bytes(b"")
    assert idx.find_idx_files(tmp_path) == {"train": (images, labels)}


def test_find_train_only_has_no_test_key(tmp_path):
    train = touch_pair(tmp_path, "train")
    assert idx.find_idx_files(tmp_path) == {"train": train}


def test_find_missing_train_pair_lists_expected_names(tmp_path):
    touch_pair(tmp_path, "test")
    with pytest.raises(DataError) as info:
        idx.find_idx_files(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message


def test_find_half_a_test_pair_is_an_error(tmp_path):
    touch_pair(tmp_path, "train")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        idx.find_idx_files(tmp_path)


def test_find_on_a_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        idx.find_idx_files(tmp_path / "absent")


# --- cache -------------------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path):
    x, y = images_and_labels()
    images = write(tmp_path / "imgs.idx.gz", x, gz=True)
    return x, y, images, write(tmp_path / "labs.idx.gz", y, gz=True)


def forbid_decode(monkeypatch):
    def fail(raw, source):
        raise AssertionError(f"decoded {source} despite a cache entry")

    monkeypatch.setattr(idx, "_decode", fail)


def test_second_load_comes_from_cache(tmp_path, pair, monkeypatch):
    x, y, images, labels = pair
    cache = tmp_path / "cache"
    idx.load_idx_pair(images, labels, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob(".tmp-*"))
    forbid_decode(monkeypatch)
    got_x, got_y = idx.load_idx_pair(images, labels, cache_dir=cache)
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    assert got_x.dtype == np.uint8 and got_x.flags.writeable


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickled", "wrong shape"])
def test_corrupt_cache_entry_is_rewritten(tmp_path, pair, monkeypatch, damage):
    x, y, images, labels = pair
    cache = tmp_path / "cache"
    idx.load_idx_pair(images, labels, cache_dir=cache)
    for entry in cache.glob("*.npy"):
        if damage == "garbage":
            entry.write_bytes(b"not an npy file")
        elif damage == "truncated":
            entry.write_bytes(entry.read_bytes()[:-5])
        elif damage == "pickled":
            np.save(entry, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        else:
            np.save(entry, np.zeros((2, 2), dtype=np.uint8))
    got_x, got_y = idx.load_idx_pair(images, labels, cache_dir=cache)
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    forbid_decode(monkeypatch)  # the entries were rewritten, so a third load needs no decode
    np.testing.assert_array_equal(idx.load_idx_pair(images, labels, cache_dir=cache)[0], x)


def test_unwritable_cache_dir_still_loads(tmp_path, pair):
    x, y, images, labels = pair
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")  # a cache dir beneath a regular file can never be created
    got_x, got_y = idx.load_idx_pair(images, labels, cache_dir=blocker / "cache")
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)


def test_changed_source_is_not_served_stale(tmp_path, pair):
    x, y, images, labels = pair
    cache = tmp_path / "cache"
    idx.load_idx_pair(images, labels, cache_dir=cache)
    x2 = x.copy()
    x2[0, 0, 0] ^= 0xFF  # same size, different bytes
    write(images, x2, gz=True)
    np.testing.assert_array_equal(idx.load_idx_pair(images, labels, cache_dir=cache)[0], x2)


def test_invalid_file_is_still_an_error_with_a_cache(tmp_path):
    path = write(tmp_path / "bad.idx", b"\x00\x00\x0a\x01")
    with pytest.raises(DataError, match="unknown IDX type byte"):
        idx.load_idx_pair(path, path, cache_dir=tmp_path / "cache")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert idx.default_cache_dir() == tmp_path / "sgdcli" / "idx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert idx.default_cache_dir() == Path.home() / ".cache" / "sgdcli" / "idx"


# --- the real dataset --------------------------------------------------------------------------


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist(tmp_path):
    files = idx.find_idx_files(FASHION)
    x, y = idx.load_idx_pair(*files["train"], cache_dir=tmp_path)
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60000,) and y.min() == 0 and y.max() == 9
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 6000))
    cached_x, _ = idx.load_idx_pair(*files["train"], cache_dir=tmp_path)
    np.testing.assert_array_equal(cached_x, x)
    test_x, test_y = idx.load_idx_pair(*files["test"])
    assert test_x.shape == (10000, 28, 28) and test_y.shape == (10000,)
