"""Atomic writes that never replace an input file.

A file jaxmosaic writes goes to a temporary name beside it (`.NAME.jaxmosaic-PID-XXXX.tmp`) and is
renamed over NAME only when complete; the temporaries a killed run left behind are removed the
next time the same output is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from jaxmosaic.errors import JaxmosaicError

__all__ = ["PID_MAX", "atomic_path", "check_not_input", "write_json", "process_alive"]

PID_MAX = 2**22
"""The largest process id there can be (Linux's highest pid_max); a larger number names no process."""

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.jaxmosaic-(?P<pid>\d{1,20})-[0-9a-f]{8}\.tmp")


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
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path, inputs) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
