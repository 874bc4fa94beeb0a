"""Typed schemas of the JSON files jaxmosaic writes and reads back (pydantic).

The writer builds the model and dumps it; the reader validates the file into the same model and
uses its fields only. Types, ranges and bounds are stated here once. A file that does not fit is
one line naming the file, the field and the reason (`read_model`, `schema_message`).

- `Marker`: a folder's `.jaxmosaic` (`jaxmosaic.io.folders`).
- `Pointer`: a versioned folder's `current`.
- `CheckpointMeta`: a run's checkpoint `meta.json` (`jaxmosaic.cli._runner`); what it records that
  depends on the run (the stage, the step against the run's stages) is checked once the run is built.
- `WeightsSource`: a weights folder's `source.json` (`jaxmosaic.weights`).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from jaxmosaic.errors import JaxmosaicError

__all__ = ["SchemaError", "FolderKind", "MARKER", "POINTER", "VERSION_NAME", "MAX_MARKER_FILES",
           "MAX_CHECKPOINT_ELEMENTS", "CHECKPOINT_FORMAT", "Marker", "Pointer", "InputFile", "CheckpointMeta", "WeightsSource", "plain_name",
           "schema_message", "read_model"]

MARKER = ".jaxmosaic"
"""The marker file of a folder jaxmosaic writes."""

POINTER = "current"
"""The file of a versioned folder that names its current version."""

MAX_MARKER_FILES = 1_000_000
"""Files a marker may list (a streamed build of the Gabor bank in chunks of one lists 312,501)."""

MAX_CHECKPOINT_ELEMENTS = 2**31
"""Elements a checkpoint's pixels may hold (float32: 8 GiB)."""

_MAX_BYTES = 64 * 2**20  # the largest JSON file read back (a marker of a million tile names is about 40 MiB)
_MAX_TEXT = 4096  # the longest free text (a path, a URL)

FolderKind = Literal["tiles", "clusters", "frames", "library-build", "weights", "checkpoint", "video-checkpoint", "video-frames",
                     "vq-compressed"]
"""The kinds of folder jaxmosaic writes: `OutputFolder`s of files side by side, and versioned folders."""

VERSION_NAME = r"v\d{20}"
"""The name of a version inside a versioned folder (`v` and the time of the save in nanoseconds)."""

CHECKPOINT_FORMAT = "jaxmosaic-checkpoint/3"
"""The format of a run's checkpoint (3: the inputs' SHA-256 recorded)."""


class SchemaError(JaxmosaicError, ValueError):
    """A file jaxmosaic reads back does not fit its schema (names the file and the field)."""


def plain_name(name: str) -> str:
    """A file name inside a folder: no path separators, not `.`/`..`, not the folder's own files."""
    if not 0 < len(name) <= 255:
        raise ValueError("expected a file name of 1 to 255 characters")
    if name in (".", "..", MARKER, POINTER) or any(c in name for c in "/\\\0"):
        raise ValueError("expected a plain file name (no folder, not the folder's own files)")
    return name


def _sha256(digest: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("expected 64 lower-case hex digits")
    return digest


PlainName = Annotated[str, AfterValidator(plain_name)]
Sha256 = Annotated[str, AfterValidator(_sha256)]
Text = Annotated[str, Field(max_length=_MAX_TEXT)]
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class Marker(BaseModel):
    """`.jaxmosaic`: the folder's kind and, for a folder of files, the files jaxmosaic wrote there."""

    model_config = _STRICT

    jaxmosaic: FolderKind
    version: int = Field(ge=1, le=1)
    files: Annotated[list[PlainName], Field(max_length=MAX_MARKER_FILES)]


class Pointer(BaseModel):
    """`current`: the version folder a versioned folder holds now."""

    model_config = _STRICT

    version: Annotated[str, Field(pattern=f"^{VERSION_NAME}$")]


class InputFile(BaseModel):
    """A file a run read, and the SHA-256 of its content then."""

    model_config = _STRICT

    path: Text
    sha256: Sha256


def _bounded_shape(shape: list[int]) -> list[int]:
    if math.prod(shape) > MAX_CHECKPOINT_ELEMENTS:
        raise ValueError(f"more than {MAX_CHECKPOINT_ELEMENTS} elements")
    return shape


class CheckpointMeta(BaseModel):
    """`meta.json` of a run's checkpoint: what the run was (to refuse a resume of another one) and
    where it stood."""

    model_config = _STRICT

    format: Literal[CHECKPOINT_FORMAT]
    technique: Literal["style", "texture", "hybrid"]
    settings: Annotated[dict[str, Any], Field(max_length=1000)]  # the settings a resumed run must keep
    inputs: Annotated[list[InputFile], Field(max_length=10_000)]
    stage: int = Field(ge=0, le=1000)  # below the run's number of stages: checked against the run
    step: int = Field(ge=0, le=2**31 - 1)  # at most the stage's steps: checked against the run
    shape: Annotated[list[Annotated[int, Field(ge=1, le=MAX_CHECKPOINT_ELEMENTS)]], Field(min_length=1, max_length=8),
                     AfterValidator(_bounded_shape)]  # the pixels' (problems, H, W, C)
    tiled: bool  # the stage refines tile by tile (no optimiser state kept)


class WeightsSource(BaseModel):
    """`source.json` of a weights folder: the architecture and where the weights came from (a
    folder written before AlexNet support names none: VGG19)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    arch: Literal["vgg19", "alexnet"] = "vgg19"
    source: Text  # a URL, the converted file's path, or "random"
    format: Text = ""
    file: Text | None = None  # the converted file's name
    sha256: Sha256 | None = None  # of the converted file
    seed: int | None = Field(None, ge=0, le=2**31 - 1)  # of random weights
    converted: Text | None = None  # when (ISO 8601)
    jaxmosaic: Annotated[str, Field(max_length=64)] | None = None  # the version that converted them


def _escaped(text: str, limit: int) -> str:
    text = text.encode("ascii", "backslashreplace").decode().replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def schema_message(path: str | os.PathLike, err: ValidationError) -> str:
    """One line for the first problem a validation found: `PATH: FIELD: reason` (the reason short,
    escaped, never the value itself)."""
    first = err.errors(include_url=False, include_input=False, include_context=False)[0]
    if first["type"] == "json_invalid":
        return f"{path}: not valid JSON ({_escaped(first['msg'].removeprefix('Invalid JSON: '), 120)})"
    where = ""
    for part in first["loc"]:
        where += f"[{part}]" if isinstance(part, int) else f"{'.' if where else ''}{_escaped(str(part), 40)}"
    reason = first["msg"].removeprefix("Value error, ")
    reason = _escaped(reason[:1].lower() + reason[1:], 160)
    return f"{path}: {where}: {reason}" if where else f"{path}: {reason}"


Model = TypeVar("Model", bound=BaseModel)


def read_model(model: type[Model], path: str | os.PathLike, *, error: type[Exception] = SchemaError) -> Model:
    """The JSON file `path` validated into `model`; `error` (one line naming the file and the field)
    when it cannot be read or does not fit."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_BYTES + 1)
    except OSError as err:
        raise error(f"{path}: cannot read it ({err.strerror or type(err).__name__})") from None
    if len(data) > _MAX_BYTES:
        raise error(f"{path}: larger than {_MAX_BYTES // 2**20} MiB; not a file jaxmosaic wrote")
    try:
        return model.model_validate_json(data)
    except ValidationError as err:
        raise error(schema_message(path, err)) from None
