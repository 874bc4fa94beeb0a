"""One file format for every array artefact jaxmosaic saves: an `.npz` of arrays plus a JSON header.

The header is stored as the uint8 array `header` and always carries `format`, "jaxmosaic-KIND/N"
(KIND names the artefact: a tile library, a VQ codebook, features). Nothing is pickled, so
reading a file runs no code. Files are written atomically.

Reading is bounded before anything is decompressed: `load_artifact` opens only the members the
reader names (an unexpected member is refused unread), checks each member's `.npy` header (dtype,
rank, element count) against its `ArraySpec` and against the size the archive declares for it,
validates the JSON header with the kind's schema (given the members' shapes, so the header and
the arrays are checked against each other), and only then reads the arrays. Every failure is one
line naming the file and the field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ValidationError

from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.files import atomic_path
from jaxmosaic.io.schemas import schema_message

__all__ = ["ArtifactError", "ArraySpec", "Layout", "MAX_ELEMENTS", "save_artifact", "load_artifact", "read_arrays",
           "artifact_format", "artifact_kind"]

MAX_ELEMENTS = 2**31 - 1
"""The most elements one array of an artefact may hold, unless its `ArraySpec` says fewer."""

_MAX_HEADER_BYTES = 64 * 2**20  # a folder library of a million tiles lists their paths in its header
_MAX_NPY_HEADER = 10_000  # numpy's own limit on an .npy header's length


class ArtifactError(JaxmosaicError, ValueError):
    """An artefact file is missing, damaged, or of another kind."""


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """What one array of an artefact may be, checked on its `.npy` header before its data is read."""

    kinds: str = "f"  # the allowed `dtype.kind` letters: f float, i / u whole numbers, U text
    ndim: int | None = None  # its rank (None: any)
    max_elements: int = MAX_ELEMENTS
    optional: bool = False  # may be absent


class Layout(NamedTuple):
    """An array's shape and dtype, as its `.npy` header states them."""

    shape: tuple[int, ...]
    dtype: np.dtype


_HEADER_SPEC = ArraySpec(kinds="u", ndim=1, max_elements=_MAX_HEADER_BYTES)


def artifact_format(kind: str, version: int = 1) -> str:
    """The `format` line of an artefact's header: "jaxmosaic-KIND/VERSION"."""
    return f"jaxmosaic-{kind}/{version}"


def artifact_kind(path: str | os.PathLike) -> str | None:
    """The KIND an existing file's header names ("jaxmosaic-KIND/N"); None for a file that is no
    jaxmosaic artefact. Reads the header member only (bounded, no pickles)."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("header.npy")
            if info.file_size > _MAX_HEADER_BYTES + _MAX_NPY_HEADER:
                return None
            with archive.open(info) as stream:
                text = np.lib.format.read_array(stream, allow_pickle=False, max_header_size=_MAX_NPY_HEADER)
        header = json.loads(bytes(np.asarray(text, np.uint8)).decode())
    except Exception:  # not an archive, no header, a damaged one: no artefact
        return None
    found = header.get("format") if isinstance(header, dict) else None
    parts = found.removeprefix("jaxmosaic-").rpartition("/") if isinstance(found, str) and found.startswith("jaxmosaic-") else None
    return parts[0] if parts and parts[0] and parts[2].isdigit() else None


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


def _layout(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, spec: ArraySpec, path: Path) -> Layout:
    """The member's shape and dtype from its `.npy` header, checked against `spec` and against the
    size the archive declares for it; nothing past the header is decompressed."""
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=_MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=_MAX_NPY_HEADER)
        else:
            raise ArtifactError(f"{path}: {name}: .npy format version {version} is not one numpy writes for plain arrays")
        start = stream.tell()
    if dtype.hasobject or dtype.kind not in spec.kinds or dtype.itemsize == 0:
        raise ArtifactError(f"{path}: {name}: holds {dtype.str}, expected {_kinds(spec.kinds)}")
    if spec.ndim is not None and len(shape) != spec.ndim:
        raise ArtifactError(f"{path}: {name}: {len(shape)} dimensions, expected {spec.ndim}")
    elements = math.prod(shape)
    if elements > spec.max_elements:
        raise ArtifactError(f"{path}: {name}: its header claims {elements} elements, more than the {spec.max_elements} allowed")
    if info.file_size != start + elements * dtype.itemsize:
        raise ArtifactError(f"{path}: {name}: the archive declares {info.file_size} bytes for a {dtype.str} array of "
                            f"shape {tuple(shape)} ({start + elements * dtype.itemsize} bytes); damaged")
    return Layout(tuple(int(n) for n in shape), dtype)


def _kinds(kinds: str) -> str:
    words = {"f": "floating point", "i": "signed integers", "u": "unsigned integers", "U": "text", "b": "booleans"}
    return " or ".join(words.get(kind, kind) for kind in kinds)


def _members(archive: zipfile.ZipFile, arrays: Mapping[str, ArraySpec] | None, path: Path, what: str,
             reserved: Iterable[str] = ()) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by array name: each expected, none twice, none compressed; the
    required ones present."""
    found: dict[str, zipfile.ZipInfo] = {}
    allowed = None if arrays is None else {*arrays, *reserved}
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        shown = ascii(info.filename)[1:-1][:80]
        if not info.filename.endswith(".npy") or (allowed is not None and name not in allowed):
            expected = ", ".join(sorted(allowed)) if allowed is not None else "arrays"
            raise ArtifactError(f"{path}: {shown}: not a member of a {what} (it holds {expected}); not read")
        if name in found:
            raise ArtifactError(f"{path}: {shown}: the archive holds it twice")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ArtifactError(f"{path}: {shown}: a compressed member (jaxmosaic stores its arrays uncompressed); not read")
        found[name] = info
    for name, spec in (arrays or {}).items():
        if name not in found and not spec.optional:
            raise ArtifactError(f"{path}: {name}: the array is missing; damaged {what}")
    return found


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as stream:
        return np.lib.format.read_array(stream, allow_pickle=False, max_header_size=_MAX_NPY_HEADER)


@contextlib.contextmanager
def _opened(path: Path, what: str) -> Iterator[zipfile.ZipFile]:
    """The archive `path`; what the archive and numpy raise on a damaged file becomes one line naming it."""
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except JaxmosaicError:
        raise
    except (EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error) as err:
        raise ArtifactError(f"{path}: cannot read it as a jaxmosaic {what} (truncated or damaged: {err})") from None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ArtifactError(f"{path}: cannot read it as a jaxmosaic {what} ({type(err).__name__}: not an .npz archive "
                            f"of arrays)") from None


def read_arrays(path: str | os.PathLike, arrays: Mapping[str, ArraySpec], what: str, *,
                layouts_only: bool = False) -> dict[str, np.ndarray | Layout]:
    """The arrays of a plain `.npz` archive (no JSON header), each checked against its spec before
    it is read (or, with `layouts_only`, their `Layout`s: nothing past the headers is read); an
    unexpected member is refused unread. Raises ArtifactError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such {what} file")
    with _opened(path, what) as archive:
        members = _members(archive, arrays, path, what)
        layouts = {name: _layout(archive, info, name, arrays[name], path) for name, info in members.items()}
        return layouts if layouts_only else {name: _read(archive, info) for name, info in members.items()}


def load_artifact(path: str | os.PathLike, kind: str, *, version: int = 1, arrays: Mapping[str, ArraySpec] | None = None,
                  schema: type[BaseModel] | None = None) -> tuple[dict | BaseModel, dict]:
    """(header, arrays) of a file written by `save_artifact` for `kind`.

    Args:
      arrays: the members the reader expects, by name; any other member is refused unread. None:
        every member, each within `MAX_ELEMENTS` (for tools that copy an artefact as it is).
      schema: a pydantic model of the header (without its `format`), validated strictly with
        `context={"arrays": {name: Layout}}` before any array's data is read; the header is then
        returned as that model.

    Raises:
      ArtifactError: one line naming the file and what is wrong.
    """
    path = Path(path)
    what = kind.replace("-", " ")
    if not path.is_file():
        raise ArtifactError(f"{path}: no such {what} file")
    with open(path, "rb") as handle:
        if handle.read(6) == b"\x93NUMPY":
            raise ArtifactError(f"{path}: not a jaxmosaic {what} (a single .npy array, not an .npz archive)")
    with _opened(path, what) as archive:
        members = _members(archive, arrays, path, what, reserved=("header",))
        if "header" not in members:
            raise ArtifactError(f"{path}: not a jaxmosaic {what} (no header)")
        specs = {name: (arrays or {}).get(name, ArraySpec(kinds="fiub")) for name in members if name != "header"}
        header_layout = _layout(archive, members["header"], "header", _HEADER_SPEC, path)
        if header_layout.dtype != np.uint8:
            raise ArtifactError(f"{path}: header: holds {header_layout.dtype.str}, expected uint8 JSON text")
        layouts = {name: _layout(archive, members[name], name, spec, path) for name, spec in specs.items()}
        header = json.loads(bytes(_read(archive, members["header"])).decode())
        found = header.get("format") if isinstance(header, dict) else None
        if found != artifact_format(kind, version):
            shown = ascii(found)[:80] if isinstance(found, str) else type(found).__name__
            raise ArtifactError(f"{path}: not a jaxmosaic {what} (format {shown}, expected {artifact_format(kind, version)!r})")
        if schema is not None:
            body = {key: value for key, value in header.items() if key != "format"}
            try:
                header = schema.model_validate(body, strict=True, context={"arrays": layouts})
            except ValidationError as err:
                raise ArtifactError(schema_message(path, err)) from None
        return header, {name: _read(archive, members[name]) for name in specs}
