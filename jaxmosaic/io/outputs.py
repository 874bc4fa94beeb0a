"""The checks every output passes before any work starts.

`check_outputs` refuses two outputs of one run on the same path, an output that is an input,
lies inside an input folder (or holds one), has no writable folder or an image suffix Pillow
cannot write, would replace a file that jaxmosaic did not write or a jaxmosaic file of another
kind (unless the user says `--overwrite`), or would write into a folder that is not jaxmosaic's
own of the same kind. It locks every output (`jaxmosaic.io.locks`) before it looks at what the
output holds, so the check and the writes that follow have one owner: another run on the same
output is refused, or waited for.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.artifacts import artifact_kind
from jaxmosaic.io.files import check_not_input
from jaxmosaic.io.folders import check_folder
from jaxmosaic.io.images import check_image_name
from jaxmosaic.io.images import written_by_jaxmosaic as signed_image
from jaxmosaic.io.locks import lock_output, release_output

__all__ = ["check_outputs", "jaxmosaic_kind", "written_by_jaxmosaic"]


def _resolved(path) -> Path:
    return Path(path).expanduser().resolve()


def jaxmosaic_kind(path: str | os.PathLike) -> str | None:
    """The kind of jaxmosaic file an existing file is, by its signature: "metrics" (a JSON summary
    with its `technique` and `outputs`), an artefact's kind (its header's format), "image" (the
    "Software" of an image); None for a file jaxmosaic did not write."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except Exception:  # any file that cannot be read as one of ours is not ours
            return None
        return "metrics" if isinstance(data, dict) and "technique" in data and "outputs" in data else None
    if suffix == ".npz":
        return artifact_kind(path)
    return "image" if signed_image(path) else None


def written_by_jaxmosaic(path: str | os.PathLike) -> bool:
    """Whether an existing file carries jaxmosaic's signature (`jaxmosaic_kind`)."""
    return jaxmosaic_kind(path) is not None


def _writable(folder: Path) -> bool:
    """Whether a file can be created in `folder` (tried, since permissions alone do not tell:
    a read-only file system, or root)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_outputs(outputs: Iterable[str | os.PathLike | None], inputs: Iterable[str | os.PathLike], *,
                  images: Iterable[str | os.PathLike | None] = (), files: Iterable[tuple[str | os.PathLike | None, str]] = (),
                  folders: Iterable[tuple[str | os.PathLike | None, str]] = (), overwrite: bool = False,
                  wait: bool = False, say: Callable[[str], None] | None = None) -> None:
    """Before any work starts, for every output: files of any kind, image files, `files` of a
    kind ("metrics", or an artefact's kind) and folders of a kind. No two are the same path; each
    is no input and lies in no input folder, no input lies inside it, its folder exists and is
    writable; then it is locked for this process (`lock_output`: held until the command ends;
    another run holding it is refused with `OutputInUse`, or waited for with `wait`, `say`
    getting one line); an image's name has a suffix Pillow can write; an existing file is
    replaced only when jaxmosaic wrote it, as a file of the same kind when the kind is given (or
    with `overwrite`); an existing folder only when it carries jaxmosaic's marker of the same
    kind (never otherwise). When a check fails, the locks this call took are released."""
    inputs = [Path(item) for item in inputs if item is not None]
    # (path, kind, what it is, whether it is a folder)
    items = [(Path(output), None, "a file", False) for output in outputs if output is not None]
    items += [(Path(image), "image", "an image", False) for image in images if image is not None]
    items += [(Path(file), kind, f"a {kind} file", False) for file, kind in files if file is not None]
    items += [(Path(folder), kind, f"the {kind} folder", True) for folder, kind in folders if folder is not None]
    seen: dict[Path, str] = {}
    for output, _, role, _ in items:
        if _resolved(output) in seen:
            raise JaxmosaicError(f"{output}: named twice as an output of this run ({seen[_resolved(output)]} and {role}); "
                                 "give each its own name")
        seen[_resolved(output)] = role
    for output, _, _, _ in items:
        check_not_input(output, inputs)
        target = _resolved(output)
        for item in inputs:
            if item.exists() and target.is_dir() and _resolved(item).is_relative_to(target):
                raise JaxmosaicError(f"{output}: holds the input {item}; write outputs elsewhere")
        if not target.parent.is_dir():
            raise JaxmosaicError(f"{output}: folder {output.parent} does not exist")
        if not _writable(target.parent):
            raise JaxmosaicError(f"{output}: cannot write into the folder {output.parent} (read-only or permission denied)")
    taken = []
    try:
        for output in sorted((item[0] for item in items), key=_resolved):  # one order: two waiting runs never deadlock
            if lock_output(output, wait=wait, say=say):
                taken.append(output)
        _check_contents(items, overwrite)
    except BaseException:
        for output in taken:
            release_output(output)
        raise


def _check_contents(items: list[tuple[Path, str | None, str, bool]], overwrite: bool) -> None:
    """What each (locked) output holds may be replaced: see `check_outputs`."""
    for output, kind, role, folder in items:
        if kind == "image":
            check_image_name(output)
        elif folder:
            check_folder(output, kind)
            continue
        if output.is_dir():
            raise JaxmosaicError(f"{output}: is a folder, expected a file name")
        if not output.exists() or overwrite:
            continue
        found = jaxmosaic_kind(output)
        if found is None:
            raise JaxmosaicError(f"{output}: exists and was not written by jaxmosaic; refusing to replace it "
                                 "(choose another name, or --overwrite)")
        if kind is not None and found != kind:
            raise JaxmosaicError(f"{output}: a jaxmosaic {found} file, not {role}; refusing to replace it "
                                 "(choose another name, or --overwrite)")
