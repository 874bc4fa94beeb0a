"""The schemas of what a photomosaic reads back: a tile library's header, checked together with the
shapes of the library's arrays before any array is read (`jaxmosaic.io.artifacts.load_artifact`),
and the feature settings a library and a streaming build's plan record.

Types, ranges and bounds are stated here once; the ranges of the feature settings are
`FeatureConfig`'s own. A library's header never names work to do: its `source` is where its tiles
were found, shown to the user and used to read the tiles it lists, never a folder to walk.
"""

from __future__ import annotations

import enum
import math
import os
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from jaxmosaic.config import ConfigError
from jaxmosaic.io.artifacts import ArraySpec
from jaxmosaic.techniques.mosaic.bank import BANK, BankGrid
from jaxmosaic.techniques.mosaic.features import ColorMode, FeatureConfig, FeatureKind, PatchPool, SubpixelSpace

__all__ = ["MAX_TILES", "LIBRARY_ARRAYS", "FeatureSettings", "SvdRecord", "BuildRecord", "LibraryHeader", "Name", "Token"]

MAX_TILES = 2**31 - 1
"""The most tiles a library indexes (its rows are numbered by int32 in the matching)."""


def _choices(kind: type[enum.Enum], *leave_out: enum.Enum):
    """A Literal of the enum's values (strict validation of JSON text accepts strings, not members)."""
    return Literal[tuple(member.value for member in kind if member not in leave_out)]


def _printable(text: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("holds control characters")
    return text


def _inside(entry: str) -> str:
    """A tile's path relative to its folder, which cannot lead outside it."""
    parts = PurePosixPath(entry).parts
    if not entry or entry.startswith("/") or ".." in parts or "\\" in entry:
        raise ValueError(f"{ascii(entry)[:80]} leads outside its folder")
    return entry


Name = Annotated[str, Field(max_length=4096), AfterValidator(_printable)]
"""A path or a file name: at most 4096 characters, none a control character."""
Token = Annotated[str, Field(max_length=256, pattern=r"^[A-Za-z0-9_.,:+ -]*$")]
"""A short identifier: a layer name, a fingerprint."""
Entry = Annotated[Name, AfterValidator(_inside)]

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class FeatureSettings(BaseModel):
    """`FeatureConfig.as_dict()`: how a library's feature rows were computed."""

    model_config = _STRICT

    kind: _choices(FeatureKind)
    view: _choices(ColorMode, ColorMode.auto)
    grid: int
    size: int
    layer: Token
    pool: _choices(PatchPool)
    weights: Token  # the network's fingerprint; "" for colour and subpixel features
    subpixel_space: _choices(SubpixelSpace) = "hsv"  # subpixel features' colour space (absent before they existed)
    subpixel_weights: Annotated[list[Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)]],
                                Field(min_length=3, max_length=3)] = [1.0, 1.0, 1.0]  # and their channel weights

    @model_validator(mode="after")
    def _a_feature_config(self) -> FeatureSettings:
        try:
            config = self.config()
        except ConfigError as err:
            raise ValueError(f"{err.field}: {err.reason}") from None
        if (config.kind.network is None) != (not self.weights):
            raise ValueError("weights: colour and subpixel features name no network's weights, network features always do")
        return self

    def config(self) -> FeatureConfig:
        return FeatureConfig(**self.model_dump())


class SvdRecord(BaseModel):
    """The SVD a library holds (its arrays `svd_basis` (d, k), `svd_singular_values` (k,))."""

    model_config = _STRICT

    k: int = Field(ge=1, le=MAX_TILES)
    energy: float = Field(ge=0.0, le=1.0 + 1e-6, allow_inf_nan=False)  # the share of ||D||^2 kept
    projected: bool = False  # `features` holds D V_k (a streamed build), not D


class BuildRecord(BaseModel):
    """How a streamed library was built."""

    model_config = _STRICT

    tiles_per_second: float = Field(ge=0.0, le=1e12, allow_inf_nan=False)
    seconds: float = Field(ge=0.0, le=1e9, allow_inf_nan=False)  # 30 years
    processes: int = Field(ge=1, le=2**16)
    devices: int = Field(ge=1, le=2**20)
    chunk: int = Field(ge=1, le=65536)
    resumed: int = Field(default=0, ge=0, le=2**40)  # tiles read back from a stopped build's chunks (not in the rate)


LIBRARY_ARRAYS = {
    "features": ArraySpec(kinds="f", ndim=2),  # (tiles, t), or (tiles, k) projected
    "gabor": ArraySpec(kinds="f", ndim=2, optional=True),  # gabor: (m, 5) parameters
    "colors": ArraySpec(kinds="f", ndim=2, optional=True),  # gabor: (c, 3) tints
    "svd_basis": ArraySpec(kinds="f", ndim=2, optional=True),  # (t, k)
    "svd_singular_values": ArraySpec(kinds="f", ndim=1, optional=True),  # (k,)
}
"""The arrays a tile library file may hold; no other member is read."""


class LibraryHeader(BaseModel):
    """A tile library's JSON header. Validated with `context={"arrays": {name: Layout}}`, it also
    checks the arrays' shapes against it and against each other."""

    model_config = _STRICT

    kind: Literal["folder", "gabor", "bank"]
    source: Name  # folder: its absolute path; else "gabor" or "gabor-bank"
    entries: Annotated[list[Entry], Field(max_length=MAX_TILES)]  # folder: tile paths in row order
    settings: FeatureSettings
    color: _choices(ColorMode, ColorMode.auto)  # the colour mode the library serves
    fingerprint: Token  # of the source: folder listing, Gabor parameters or bank grid
    skipped: Annotated[list[Name], Field(max_length=MAX_TILES)] = []
    svd: SvdRecord | None = None
    bank: Annotated[list[Annotated[int, Field(ge=1, le=MAX_TILES)]], Field(min_length=4, max_length=4)] | None = None
    build: BuildRecord | None = None

    @model_validator(mode="after")
    def _matches_its_arrays(self, info: ValidationInfo) -> LibraryHeader:
        arrays = (info.context or {}).get("arrays")
        self._check_source()
        if arrays is not None:
            self._check_arrays(arrays)
        return self

    def _check_source(self) -> None:
        if self.kind == "folder":
            if not os.path.isabs(self.source):
                raise ValueError("source: a folder library's source is the absolute path of its folder")
            if self.bank is not None:
                raise ValueError("bank: a folder library has no Gabor bank grid")
        elif self.source != {"gabor": "gabor", "bank": BANK}[self.kind]:
            raise ValueError(f"source: a {self.kind} library's source is {'gabor' if self.kind == 'gabor' else BANK}")
        elif self.entries:
            raise ValueError(f"entries: a {self.kind} library lists no files")
        if self.kind == "bank":
            if self.bank is None:
                raise ValueError("bank: a bank library needs its grid")
            if self.svd is None:
                raise ValueError("svd: a bank library is always stored projected by its SVD")
            if self.fingerprint != f"{BANK} {BankGrid(*self.bank)}":
                raise ValueError(f"fingerprint: a bank library's is '{BANK} S,T,L,G', its grid")
        elif self.kind == "gabor" and self.bank is not None:
            raise ValueError("bank: a gabor library has no Gabor bank grid")

    def _check_arrays(self, arrays: dict) -> None:
        allowed = {"features", *(("gabor", "colors") if self.kind == "gabor" else ()),
                   *(("svd_basis", "svd_singular_values") if self.svd else ())}
        for name in arrays:
            if name not in allowed:
                raise ValueError(f"{name}: not part of a {self.kind} library{'' if self.svd else ' without an SVD'}")
        tiles, width = arrays["features"].shape
        if tiles < 1 or width < 1:
            raise ValueError(f"features: shape {(tiles, width)} holds no feature rows")
        if self.kind == "folder" and len(self.entries) != tiles:
            raise ValueError(f"entries: {len(self.entries)} entries for {tiles} feature rows")
        if self.kind == "gabor":
            gabor, colors = arrays.get("gabor"), arrays.get("colors")
            tints = 1 if colors is None else colors.shape[0]
            if gabor is None or gabor.shape[1] != 5 or (colors is not None and colors.shape[1] != 3):
                raise ValueError("gabor: a gabor library holds (m, 5) parameters and optional (c, 3) tints")
            if gabor.shape[0] * tints != tiles:
                raise ValueError(f"gabor: {gabor.shape[0]} tiles in {tints} tint(s) for {tiles} feature rows")
        if self.kind == "bank" and math.prod(self.bank) != tiles:
            raise ValueError(f"bank: the grid {BankGrid(*self.bank)} makes {math.prod(self.bank)} tiles for {tiles} feature rows")
        dimension = self.settings.config().dimension
        if self.svd is None:
            if width != dimension:
                raise ValueError(f"features: {width} columns, but its settings ({self.settings.kind} features) make {dimension}")
            return
        basis, values = arrays.get("svd_basis"), arrays.get("svd_singular_values")
        k = self.svd.k
        if basis is None or values is None:
            raise ValueError("svd: its basis and singular values are missing")
        if basis.shape != (dimension, k) or values.shape != (k,):
            raise ValueError(f"svd: a basis of shape {basis.shape} and {values.shape[0]} singular values, but its settings and "
                             f"svd.k make ({dimension}, {k}) and {k}")
        if width != (k if self.svd.projected else dimension):
            raise ValueError(f"features: {width} columns, but its settings and svd make {k if self.svd.projected else dimension}")
        if k > min(tiles, dimension):
            raise ValueError(f"svd.k: {k} is more than min(tiles, feature dimension) = {min(tiles, dimension)}")
