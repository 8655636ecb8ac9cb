"""Crash-safe file writing: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
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


def check_new_output(path: Path, overwrite: bool, creates_folder: bool = False) -> Path:
    """`path` if a new output file may take that name: never a folder or any other file that is not a regular
    file (a device such as /dev/null, a FIFO, a socket: the new file would take its name and destroy it), and
    an existing file only with `overwrite` (nothing is replaced silently); in an existing folder unless the
    caller `creates_folder`. UsageError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise UsageError("is a folder; expected a file name to write", source=str(path))
    special = special_kind(path)
    if special:
        raise UsageError(f"is {special}, not a regular file; sgdcli writes a new file and renames it into place, "
                         "which would replace it: choose a file name", source=str(path))
    if os.path.lexists(path) and not overwrite:
        raise UsageError("already exists; choose another file or pass --force to replace it", source=str(path))
    if not creates_folder and not path.absolute().parent.is_dir():
        raise UsageError("no such folder to write the file in", source=str(path))
    return path


def special_kind(path: Path) -> str | None:
    """What `path` is when it exists and is neither a regular file, a folder nor a symbolic link ("a character
    device", "a FIFO"...), else None. A link is not followed: replacing it leaves its target as it is."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), None)


@contextlib.contextmanager
def _atomic_file(path: Path, mode: str, before_replace: Callable[[], None] | None = None) -> Iterator:
    """A temporary file beside `path`, fsynced and renamed to `path` when the block ends without an
    error (deleted otherwise); write errors name `path` and say whether a previous file is intact."""
    kept = "the previous file is intact" if os.path.lexists(path) else "nothing was written"
    special = special_kind(path)
    if special:  # renaming over it would destroy it (a device, a FIFO): never done, whoever asks
        raise RunDirError(f"cannot write: it is {special}, not a regular file; it is left as it is", source=str(path))
    try:
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.absolute().parent)
    except OSError as exc:
        raise write_error(path, exc, kept) from None
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
            raise write_error(path, exc, kept) from None
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


def read_bytes(path: Path | str, error: type[SgdcliError], what: str, limit: int | None = None,
               regular_only: bool = False) -> bytes:
    """The file's bytes, or `error` naming the file: missing, a directory, unreadable, or (with
    `limit`) longer than `limit` bytes. With `regular_only`, also a pipe or a device (which would
    block, or like /dev/zero never end).

    The limit is applied while reading, so a device or pipe that never ends (/dev/zero) costs at
    most `limit` + 1 bytes of memory.
    """
    with reading(path, error, what), open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError
        if regular_only and not stat.S_ISREG(mode):
            raise error(f"expected {what}, received a special file (a pipe or a device)", source=str(path))
        if stat.S_ISFIFO(mode):
            os.set_blocking(handle.fileno(), True)
        data = handle.read() if limit is None else handle.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise error(f"expected at most {limit} bytes ({what}), received more", source=str(path))
    return data


def regular_file_size(path: Path | str, error: type[SgdcliError], what: str) -> int:
    """The size of a regular file in bytes: what it declares before anything is read.

    A missing file, a folder, a device or a pipe (no size to check before reading; /dev/zero
    never ends) is `error` naming the file.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error("file not found", source=str(path)) from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}", source=str(path)) from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"expected {what}, received a directory", source=str(path))
    if not stat.S_ISREG(info.st_mode):
        kind = "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a pipe or socket"
        raise error(f"expected {what} (a regular file, whose size is known before reading), received {kind}",
                    source=str(path))
    return info.st_size


CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def memory_available() -> tuple[int, str]:
    """The most memory this process may use, in bytes, and what sets that limit: the machine's
    physical memory, the address-space limit (`ulimit -v`) or a container's cgroup limit (v2 or v1).

    Data loading (what a file declares) and the model's estimate are compared with this before
    anything is allocated.
    """
    try:
        limits = [(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's physical memory")]
    except (ValueError, OSError):
        limits = [(1 << 62, "no known limit")]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append((soft, "the address-space limit (ulimit -v)"))
    for control in CGROUP_LIMITS:
        try:
            text = control.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append((int(text), "the container's memory limit (cgroup)"))
    return min(limits)


def memory_limit() -> int:
    """memory_available()'s bytes alone."""
    return memory_available()[0]


def check_fits(needed: int, source: str, what: str, error: type[SgdcliError]) -> None:
    """`error` naming `source` when `needed` bytes exceed memory_limit(), before allocating them."""
    limit = memory_limit()
    if needed > limit:
        raise error(f"{what} needs {format_bytes(needed)} of memory; this machine allows {format_bytes(limit)}",
                    source=source)


def format_bytes(count: int | float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disk and memory sizes are usually quoted)."""
    if count < 1000:
        return f"{count:.0f} bytes"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        count /= 1000
        if count < 1000 or unit == "PB":
            break
    return f"{count:.1f} {unit}"


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
