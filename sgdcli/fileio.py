"""Crash-safe file writing: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from sgdcli.errors import DiskError, RunDirError

TEMP_PREFIX = ".tmp-"

def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees either the old or the new file, never half."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
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
