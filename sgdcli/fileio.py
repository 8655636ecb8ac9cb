"""Crash-safe file writing: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from sgdcli.errors import DiskError, RunDirError, SgdcliError, UsageError

TEMP_PREFIX = ".tmp-"

def atomic_write(path: Path, data: bytes, before_replace: Callable[[], None] | None = None) -> None:
    """Replace `path` with `data` so that a reader sees either the old or the new file, never half.

    `before_replace` runs once the new bytes are safely on disk, just before they take the name.
    """
    with _atomic_file(Path(path), "wb", before_replace) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_text_stream(path: Path, overwrite: bool = False) -> Iterator[TextIO]:
    """A text file written as a stream into a temporary file beside `path`, which takes the name only
    when the block ends without an error; an existing `path` is replaced only with `overwrite`."""
    path = check_new_output(Path(path), overwrite)
    with _atomic_file(path, "w") as handle:
        yield handle


def check_new_output(path: Path, overwrite: bool) -> Path:
    """`path` if a new output file may take that name: never a folder, and an existing file only with
    `overwrite` (nothing is replaced silently). UsageError otherwise."""
    if path.is_dir():
        raise UsageError("is a folder; expected a file name to write", source=str(path))
    if path.exists() and not overwrite:
        raise UsageError("already exists; choose another file or pass --force to replace it", source=str(path))
    if not path.absolute().parent.is_dir():
        raise UsageError("no such folder to write the file in", source=str(path))
    return path


@contextlib.contextmanager
def _atomic_file(path: Path, mode: str, before_replace: Callable[[], None] | None = None) -> Iterator:
    try:
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.absolute().parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a normal file respects the umask
        text = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
        with os.fdopen(fd, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(temp, path)
    except BaseException as exc:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    fsync_dir(path.absolute().parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))

def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

@contextlib.contextmanager
def reading(path: Path | str, error: type[SgdcliError], what: str) -> Iterator[None]:
    """Reading inside this block fails with `error` naming the file: missing, a directory, or unreadable."""
    try:
        yield
    except FileNotFoundError:
        raise error("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise error(f"expected {what}, received a directory", source=str(path)) from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}", source=str(path)) from None


def read_bytes(path: Path | str, error: type[SgdcliError], what: str) -> bytes:
    """The file's bytes, or `error` naming the file: missing, a directory, or unreadable."""
    with reading(path, error, what):
        return Path(path).read_bytes()


def write_error(path: Path, exc: OSError) -> Exception:
    """Our error type for an OSError raised while writing `path`."""
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return DiskError(f"cannot write: {exc.strerror}; the previous file is intact", source=str(path))
    return RunDirError(f"cannot write: {exc.strerror}", source=str(path))

def remove_stale_temps(folder: Path) -> None:
    """Delete temp files a killed process left behind."""
    for stale in Path(folder).glob(TEMP_PREFIX + "*"):
        try:
            stale.unlink()
        except OSError:
            pass
