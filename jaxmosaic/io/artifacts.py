"""One file format for every array artefact jaxmosaic saves: an `.npz` of arrays plus a JSON header.

The header is stored as the uint8 array `header` and always carries `format`, "jaxmosaic-KIND/N"
(KIND names the artefact: a tile library, a VQ codebook, features). Nothing is pickled, so
reading a file runs no code. Files are written atomically; `load_artifact` checks the kind, the
version and the arrays a reader needs, and every failure is one line naming the file.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.files import atomic_path

__all__ = ["ArtifactError", "save_artifact", "load_artifact", "artifact_format"]


class ArtifactError(JaxmosaicError, ValueError):
    """An artefact file is missing, damaged, or of another kind."""


def artifact_format(kind: str, version: int = 1) -> str:
    return f"jaxmosaic-{kind}/{version}"


def save_artifact(path: str | os.PathLike, kind: str, header: Mapping, arrays: Mapping[str, np.ndarray], *,
                  version: int = 1, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write `arrays` and the JSON `header` (plus its format line) to the .npz file `path`, atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ArtifactError(f"{path}: a {kind.replace('-', ' ')} file must end in .npz")
    if "header" in arrays:
        raise ValueError("'header' is reserved for the JSON header")
    text = json.dumps({"format": artifact_format(kind, version), **header})
    buffer = io.BytesIO()
    np.savez(buffer, header=np.frombuffer(text.encode(), np.uint8), **{name: np.asarray(a) for name, a in arrays.items()})
    with atomic_path(path, inputs) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def load_artifact(path: str | os.PathLike, kind: str, *, version: int = 1, arrays: Iterable[str] = ()) -> tuple[dict, dict]:
    """(header, arrays) of a file written by `save_artifact` for `kind`; the names in `arrays`
    must be present. Raises ArtifactError naming the file and what is wrong."""
    path = Path(path)
    what = kind.replace("-", " ")
    if not path.is_file():
        raise ArtifactError(f"{path}: no such {what} file")
    try:
        with open(path, "rb") as handle:  # np.load leaves a path's file open when the archive is damaged
            data = np.load(handle, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ArtifactError(f"{path}: not a jaxmosaic {what} (a single .npy array, not an .npz archive)")
            if "header" not in data.files:
                raise ArtifactError(f"{path}: not a jaxmosaic {what} (no header)")
            header = json.loads(bytes(np.asarray(data["header"], np.uint8)).decode())
            loaded = {name: np.asarray(data[name]) for name in data.files if name != "header"}
    except ArtifactError:
        raise
    except (EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise ArtifactError(f"{path}: cannot read it as a jaxmosaic {what} (truncated or damaged: {err})") from None
    except (OSError, ValueError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: cannot read it as a jaxmosaic {what} ({type(err).__name__}: not an .npz archive of arrays)") from None
    if not isinstance(header, dict) or header.get("format") != artifact_format(kind, version):
        found = header.get("format") if isinstance(header, dict) else None
        raise ArtifactError(f"{path}: not a jaxmosaic {what} (format {found!r}, expected {artifact_format(kind, version)!r})")
    missing = [name for name in arrays if name not in loaded]
    if missing:
        raise ArtifactError(f"{path}: damaged {what}: the array {missing[0]!r} is missing")
    return header, loaded
