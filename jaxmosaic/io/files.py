"""Atomic writes that never replace an input file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from jaxmosaic.errors import JaxmosaicError

__all__ = ["atomic_path", "check_not_input", "check_outputs", "replace_dir", "write_json"]


def check_not_input(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Raise if `path` is one of `inputs` (compared after resolving links)."""
    target = Path(path).resolve()
    for item in inputs:
        source = Path(item)
        if source.exists() and source.resolve() == target:
            raise JaxmosaicError(f"{path}: refusing to overwrite an input file")


def check_outputs(outputs: Iterable[str | os.PathLike | None], inputs: Iterable[str | os.PathLike]) -> None:
    """Before any work starts: no output is an input, and each output's folder exists."""
    inputs = list(inputs)
    for output in outputs:
        if output is None:
            continue
        check_not_input(output, inputs)
        parent = Path(output).parent
        if not parent.is_dir():
            raise JaxmosaicError(f"{output}: folder {parent} does not exist")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else remove it.

    The temporary name keeps the suffix so that writers choosing a format by extension work.
    """
    path = Path(path)
    check_not_input(path, inputs)
    if path.is_dir():
        raise JaxmosaicError(f"{path}: is a directory, expected a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise JaxmosaicError(f"{path}: folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path, inputs) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def replace_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `target`, replacing an older one only once `tmp` is complete."""
    tmp, target = Path(tmp), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
