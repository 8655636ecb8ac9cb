"""Crash-safe file writing: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import errno
import os
import stat
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
    kept = "the previous file is intact" if os.path.lexists(path) else "nothing was written"
    try:
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc, kept) from None
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
            raise write_error(path, exc, kept) from None
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

def read_bytes(path: Path | str, error: type[SgdcliError], what: str, regular_only: bool = False) -> bytes:
    """The file's bytes, or `error` naming the file: missing, a directory, or unreadable. With
    `regular_only`, also a pipe or a device (which would block, or like /dev/zero never end)."""
    try:
        if not regular_only:
            return Path(path).read_bytes()
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            if not stat.S_ISREG(mode):
                raise error(f"expected {what}, received a special file (a pipe or a device)", source=str(path))
            return handle.read()
    except FileNotFoundError:
        raise error("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise error(f"expected {what}, received a directory", source=str(path)) from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}", source=str(path)) from None


def write_error(path: Path, exc: OSError, kept: str | None = None) -> Exception:
    """Our error type for an OSError raised while writing `path`; `kept` says what is still intact,
    as the caller knows it (no claim when None)."""
    after = f"; {kept}" if kept else ""
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return DiskError(f"cannot write: {exc.strerror}{after}", source=str(path))
    return RunDirError(f"cannot write: {exc.strerror}{after}", source=str(path))


def open_no_follow(path: Path, append: bool) -> int:
    """Open (a raw descriptor) a file inside a run directory for writing in place, created if missing, refusing a
    symbolic link, anything but a regular file, and a file with other hard links: writing through
    any of them would change a file outside the run. RunDirError (exit 4) names the path."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_APPEND if append else 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirError("is a symbolic link; sgdcli never writes through a link inside a run directory",
                              source=str(path)) from None
        raise write_error(path, exc) from None
    info = os.fstat(fd)
    problem = ("is not a regular file" if not stat.S_ISREG(info.st_mode) else
               f"has {info.st_nlink} hard links; sgdcli never writes into a file shared with another path"
               if info.st_nlink > 1 else None)
    if problem:
        os.close(fd)
        raise RunDirError(problem, source=str(path))
    os.set_blocking(fd, True)
    return fd


def refuse_links(paths: list[Path]) -> None:
    """RunDirError naming the first of `paths` that is a symbolic link (reading or replacing through
    it would act on a file outside the run directory)."""
    for path in paths:
        if os.path.islink(path):
            raise RunDirError("is a symbolic link; sgdcli does not follow links inside a run directory",
                              source=str(path))

def remove_stale_temps(folder: Path) -> None:
    """Delete temp files a killed process left behind."""
    for stale in Path(folder).glob(TEMP_PREFIX + "*"):
        try:
            stale.unlink()
        except OSError:
            pass
