"""The checks every output passes before any work starts.

`check_outputs` refuses an output that is an input, lies inside an input folder (or holds one),
has no writable folder or an image suffix Pillow cannot write, would replace a file that
jaxmosaic did not write (unless the user says `--overwrite`), or would write into a folder that
is not jaxmosaic's own of the same kind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.files import check_not_input
from jaxmosaic.io.folders import check_folder
from jaxmosaic.io.images import check_image_name, image_software

__all__ = ["check_outputs", "written_by_jaxmosaic"]


def _resolved(path) -> Path:
    return Path(path).expanduser().resolve()


def written_by_jaxmosaic(path: str | os.PathLike) -> bool:
    """Whether an existing file carries jaxmosaic's signature: the "Software" of an image,
    the header of an artefact, the `technique` of a metrics file."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text())
            return isinstance(data, dict) and "technique" in data and "outputs" in data
        if suffix == ".npz":
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
                header = json.loads(bytes(data["header"]).decode())
            return str(header.get("format", "")).startswith("jaxmosaic-")
        return image_software(path).startswith("jaxmosaic")
    except Exception:  # any file that cannot be read as one of ours is not ours
        return False


def _writable(folder: Path) -> bool:
    """Whether a file can be created in `folder` (tried, since permissions alone do not tell:
    a read-only file system, or root)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_outputs(outputs: Iterable[str | os.PathLike | None], inputs: Iterable[str | os.PathLike], *,
                  images: Iterable[str | os.PathLike | None] = (), folders: Iterable[tuple[str | os.PathLike | None, str]] = (),
                  overwrite: bool = False) -> None:
    """Before any work starts, for every output file, image file and folder (with its kind):
    it is no input and lies in no input folder, no input lies inside it, its folder exists and is
    writable; an image's name has a suffix Pillow can write; an existing file is replaced only
    when jaxmosaic wrote it (or with `overwrite`); an existing folder only when it carries
    jaxmosaic's marker of the same kind (never otherwise)."""
    inputs = [Path(item) for item in inputs if item is not None]
    items = [(Path(output), None) for output in outputs if output is not None]
    items += [(Path(image), "image") for image in images if image is not None]
    items += [(Path(folder), kind) for folder, kind in folders if folder is not None]
    for output, kind in items:
        check_not_input(output, inputs)
        target = _resolved(output)
        for item in inputs:
            if item.exists() and target.is_dir() and _resolved(item).is_relative_to(target):
                raise JaxmosaicError(f"{output}: holds the input {item}; write outputs elsewhere")
        if not target.parent.is_dir():
            raise JaxmosaicError(f"{output}: folder {output.parent} does not exist")
        if not _writable(target.parent):
            raise JaxmosaicError(f"{output}: cannot write into the folder {output.parent} (read-only or permission denied)")
        if kind == "image":
            check_image_name(output)
        elif kind is not None:
            check_folder(output, kind)
            continue
        if output.is_dir():
            raise JaxmosaicError(f"{output}: is a folder, expected a file name")
        if output.exists() and not overwrite and not written_by_jaxmosaic(output):
            raise JaxmosaicError(f"{output}: exists and was not written by jaxmosaic; refusing to replace it "
                                 "(choose another name, or --overwrite)")
