"""Atomic writes that never replace an input file.

A file jaxmosaic writes goes to a temporary name beside it (`.NAME.jaxmosaic-PID-XXXX.tmp`) and is
renamed over NAME only when complete; the temporaries a killed run left behind are removed the
next time the same output is written. A write that fills the disk removes its temporary, leaves
NAME as it was, and raises `DiskFullError` naming NAME and the space left.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.resources import format_bytes

__all__ = ["PID_MAX", "DiskFullError", "atomic_path", "check_not_input", "write_json", "process_alive", "is_disk_full",
           "disk_full", "first_line"]

PID_MAX = 2**22
"""The largest process id there can be (Linux's highest pid_max); a larger number names no process."""

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.jaxmosaic-(?P<pid>\d{1,20})-[0-9a-f]{8}\.tmp")
# how the OS says a device is full (ENOSPC; EDQUOT: a quota), and how tensorstore (under Orbax) passes it on
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded", "os_error_code='28'", "os_error_code='122'")


class DiskFullError(JaxmosaicError):
    """An output could not be written for lack of space; nothing it would have replaced was touched."""


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` says the device (or the user's quota) is full: an OSError with ENOSPC or
    EDQUOT, or an error whose message carries the OS's words for it (as tensorstore's do)."""
    if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
        return True
    return any(words in str(error) for words in _FULL_MESSAGES)


def first_line(error: BaseException) -> str:
    """An error's one line: a full disk the OS reports for a named file (outside `atomic_path`)
    as `disk_full` names it; anything else the first line of its message, else its type's name."""
    if isinstance(error, OSError) and not isinstance(error, JaxmosaicError) and is_disk_full(error) and error.filename:
        error = disk_full(error.filename)
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def disk_full(path: str | os.PathLike, *, needed: int | None = None, what: str = "", kept: str = "") -> DiskFullError:
    """The one-line `DiskFullError` for `path` (`what` it is, e.g. "a new checkpoint version"):
    the bytes `needed` when known, the space free where it goes, and what was `kept`."""
    path = Path(path)
    folder = path.parent.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{format_bytes(shutil.disk_usage(folder).free)} free in {folder}"
    except OSError:
        free = f"the free space in {folder} is unknown"
    size = f"needs about {format_bytes(needed)}, " if needed is not None else ""
    return DiskFullError(f"{path}: no space left on the device{' for ' + what if what else ''} ({size}{free})"
                         f"{'; ' + kept if kept else ''}")


def process_alive(pid: int) -> bool:
    """Whether a process with this id is running (on this machine); False for a number no process
    can have."""
    if not 0 < pid <= PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftovers(path: Path) -> None:
    """Remove the temporaries of `path` that killed runs left (their process is gone)."""
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            match = _TEMPORARY.fullmatch(entry.name)
            if match and match["name"] == path.name and int(match["pid"]) != os.getpid() and not process_alive(int(match["pid"])):
                entry.unlink(missing_ok=True)


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def check_not_input(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Raise if `path` is one of `inputs` or lies inside an input folder (after resolving links)."""
    target = _resolved(path)
    for item in inputs:
        source = Path(item)
        if not source.exists():
            continue
        source = _resolved(source)
        if source == target:
            raise JaxmosaicError(f"{path}: refusing to overwrite an input file")
        if source.is_dir() and target.is_relative_to(source):
            raise JaxmosaicError(f"{path}: inside the input folder {item}; write outputs elsewhere")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else remove it."""
    path = Path(path)
    check_not_input(path, inputs)
    if path.is_dir():
        raise JaxmosaicError(f"{path}: is a folder, expected a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise JaxmosaicError(f"{path}: folder {parent} does not exist")
    _remove_leftovers(path)
    tmp = parent / f".{path.name}.jaxmosaic-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        tmp.touch(exist_ok=False)
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the permissions a plain open() would give
        os.replace(tmp, path)
    except Exception as err:
        if not is_disk_full(err):
            raise
        tmp.unlink(missing_ok=True)  # before the free space is measured
        kept = "the file there is unchanged" if path.exists() else ""
        raise disk_full(path, kept=kept) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path, inputs) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
