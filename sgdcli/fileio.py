"""Crash-safe file writing: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from sgdcli.errors import DiskError, RunDirError, SgdcliError

TEMP_PREFIX = ".tmp-"

def atomic_write(path: Path, data: bytes, before_replace: Callable[[], None] | None = None) -> None:
    """Replace `path` with `data` so that a reader sees either the old or the new file, never half.

    `before_replace` runs once the new bytes are safely on disk, just before they take the name.
    """
    path = Path(path)
    try:
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a normal file respects the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
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
    fsync_dir(path.parent)

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

def read_bytes(path: Path | str, error: type[SgdcliError], what: str) -> bytes:
    """The file's bytes, or `error` naming the file: missing, a directory, or unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise error("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise error(f"expected {what}, received a directory", source=str(path)) from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}", source=str(path)) from None


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
