"""Tile libraries for photomosaics: a folder of images or a generated Gabor basis, with features.

A library holds where its tiles come from (relative paths under a folder, or Gabor parameters),
one L2-normalised feature row per tile, the `FeatureConfig` they were computed with, the colour
mode it serves, a fingerprint of its source and, optionally, an SVD of its rows. It is saved as
a jaxmosaic artefact (`jaxmosaic.io.artifacts`: .npz arrays plus a JSON header; no pickles). The
fingerprint of a folder covers every image file's relative path, size and modification time, so
a changed folder is re-indexed and an unchanged one is not, without reading every image again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxmosaic.config import ConfigError
from jaxmosaic.errors import ImageError, JaxmosaicError
from jaxmosaic.io.artifacts import load_artifact, save_artifact
from jaxmosaic.io.images import IMAGE_SUFFIXES, load_image, scan_folder
from jaxmosaic.search import svd_compress
from jaxmosaic.techniques.mosaic.features import ColorMode, FeatureConfig, batched_features, feature_function
from jaxmosaic.techniques.mosaic.bank import BankGrid, render_bank
from jaxmosaic.techniques.mosaic.tiles import GaborGrid, gabor_parameters, gabor_tiles

__all__ = [
    "TileLibrary",
    "folder_fingerprint",
    "load_tile",
    "build_library",
    "save_library",
    "load_library",
    "AUTO_SVD_CAP",
    "AUTO_SVD_ENERGY",
    "auto_svd_k",
    "spectrum_svd_k",
    "attach_svd",
    "is_current",
]

_KIND = "tile-library"

AUTO_SVD_CAP = 100
"""The most dimensions svd_k "auto" keeps."""
AUTO_SVD_ENERGY = 0.998
"""The share of the tiles' spread around their mean that svd_k "auto" keeps."""


@dataclasses.dataclass
class TileLibrary:
    kind: str  # "folder", "gabor" or "bank" (the original article's Gabor bank)
    source: str  # the folder (absolute), "gabor" or "gabor-bank"
    entries: list[str]  # folder: relative paths of the tiles, in feature-row order
    gabor: np.ndarray | None  # gabor: (m, 5) parameters of `gabor_parameters`
    colors: np.ndarray | None  # gabor: (c, 3) tints, or None for grey tiles only
    features: np.ndarray  # (n, t) float32 unit rows; for a streamed library D_k = D V_k, (n, k) (see `projected`)
    settings: FeatureConfig  # how the features were computed
    color: ColorMode  # the colour mode the library serves (its features compare `view_for(color)`)
    fingerprint: str  # of the source: folder listing or Gabor parameters
    skipped: list[str] = dataclasses.field(default_factory=list)  # folder files that could not be read
    svd: dict | None = None  # {"k", "basis" (t, k), "singular_values" (k,), "energy", ["projected": True]}
    bank: tuple[int, int, int, int] | None = None  # bank: its grid (see `bank.BankGrid`); tile i is bank tile i
    build: dict | None = None  # streamed: how it was built (tiles per second, seconds, processes, devices, chunk)

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def projected(self) -> bool:
        """Whether `features` holds the projections D V_k (a streamed build) rather than D."""
        return bool(self.svd and self.svd.get("projected"))

    @property
    def dimension(self) -> int:
        """The length t of a feature row (of a patch's features, before any projection)."""
        return self.svd["basis"].shape[0] if self.projected else self.features.shape[1]

    def render(self, indices: Sequence[int], size: int) -> np.ndarray:
        """Tiles `indices` as (len, size, size, 3) float32 images."""
        indices = np.asarray(indices, np.int64)
        if self.kind == "bank":
            return render_bank(BankGrid(*self.bank), indices, size)
        if self.kind == "gabor":
            tints = 1 if self.colors is None else len(self.colors)
            tiles = np.asarray(gabor_tiles(self.gabor[indices // tints], size))
            if self.colors is not None:
                tiles = tiles * self.colors[indices % tints][:, None, None, :]
            return tiles.astype(np.float32)
        if not len(indices):
            return np.zeros((0, size, size, 3), np.float32)
        return np.stack([load_tile(self.tile_path(i), size) for i in indices])

    def tile_path(self, index: int) -> Path:
        """The file of a folder library's tile, refused if its entry leads outside the folder."""
        root = Path(self.source).resolve()
        path = (root / self.entries[index]).resolve()
        if not path.is_relative_to(root):
            raise JaxmosaicError(f"tile library entry {self.entries[index]!r} leads outside its folder {root}; rebuild the library")
        return path


def folder_fingerprint(root: str | os.PathLike, files: Sequence[Path]) -> str:
    """SHA-256 over each file's relative path, size and modification time (nanoseconds); a file
    that cannot be examined counts by its path alone."""
    digest = hashlib.sha256()
    for path in files:
        try:
            stat = path.stat()
            facts = f"{stat.st_size}\0{stat.st_mtime_ns}"
        except OSError:
            facts = "unreadable"
        digest.update(f"{path.relative_to(root).as_posix()}\0{facts}\n".encode())
    return digest.hexdigest()


def load_tile(path: str | os.PathLike, size: int) -> np.ndarray:
    """A tile image centre-cropped to a square and resized to size x size (Lanczos), float32 RGB."""
    array = load_image(path)
    height, width = array.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = np.round(array[top : top + side, left : left + side] * 255).astype(np.uint8)
    picture = Image.fromarray(square).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(picture, np.float32) / 255.0


def spectrum_svd_k(values: np.ndarray, total: float, *, energy: float = AUTO_SVD_ENERGY, cap: int = AUTO_SVD_CAP) -> int:
    """One dimension for the mean direction plus the fewest principal directions that keep
    `energy` of the spread, at most `cap`.

    Args:
      values: the leading eigenvalues of the centred D^T D, descending (at least `cap` of them,
        or all).
      total: the sum of all its eigenvalues (its trace).
    """
    kept = np.cumsum(values) / max(float(total), 1e-30)
    return max(1, min(int(np.searchsorted(kept, energy) + 2), cap))


def auto_svd_k(features: np.ndarray, energy: float = AUTO_SVD_ENERGY, cap: int = AUTO_SVD_CAP) -> int:
    """One dimension for the features' mean direction plus the fewest principal directions that
    keep `energy` of the tiles' spread around it, at most `cap` (see `spectrum_svd_k`).

    The uncentred energy of D is the wrong guide: features share a large common component (the
    mean tile), so one singular vector already holds most of ||D||_F^2 while telling no tiles apart.
    """
    n, t = features.shape
    centred = features.astype(np.float64) - features.mean(axis=0, dtype=np.float64)
    values = np.sort(np.clip(np.linalg.eigvalsh(centred.T @ centred), 0, None))[::-1]
    return max(1, min(spectrum_svd_k(values, values.sum(), energy=energy, cap=cap), n, t))


def attach_svd(library: TileLibrary, k: int) -> None:
    """Store the exact SVD compression of the library's features at k dimensions (0: none)."""
    if k == 0:
        library.svd = None
        return
    n, t = library.features.shape
    if not 1 <= k <= min(n, t):
        raise ConfigError("svd_k", f"{k} is larger than min(tiles, feature dimension) = min({n}, {t}); use at most "
                                   f"{min(n, t)}, or 0 for exact matching")
    compressed = svd_compress(jnp.asarray(library.features), k)
    library.svd = {"k": k, "basis": np.asarray(compressed.basis), "singular_values": np.asarray(compressed.singular_values),
                   "energy": float(compressed.energy)}


def build_library(source: str, settings: FeatureConfig, color: ColorMode, *, params=None, grid: GaborGrid = GaborGrid(),
                  colors: np.ndarray | None = None, progress: Callable[[int, int], None] | None = None) -> TileLibrary:
    """Compute a library's features: `source` is a folder path or "gabor".

    Unreadable files in a folder are skipped and listed in `TileLibrary.skipped`.

    Raises:
      JaxmosaicError: the folder holds no image files, or none that can be read.
    """
    fn = feature_function(settings, params)
    if source == "gabor":
        parameters = gabor_parameters(grid)
        tiles = np.asarray(gabor_tiles(parameters, settings.size, colors))
        features = batched_features(fn, tiles)
        if progress:
            progress(len(tiles), len(tiles))
        digest = hashlib.sha256(parameters.tobytes() + (b"" if colors is None else np.asarray(colors, np.float32).tobytes()))
        return TileLibrary("gabor", "gabor", [], parameters, None if colors is None else np.asarray(colors, np.float32),
                           features.astype(np.float32), settings, color, digest.hexdigest())
    root = Path(source).resolve()
    files = scan_folder(root)
    if not files:
        raise JaxmosaicError(f"{source}: no image files in the folder (looked for {', '.join(IMAGE_SUFFIXES)})")
    fingerprint = folder_fingerprint(root, files)
    entries, skipped, rows, pending = [], [], [], []

    def flush() -> None:
        if pending:
            rows.append(batched_features(fn, np.stack(pending)))
            pending.clear()

    for done, path in enumerate(files, 1):
        try:
            pending.append(load_tile(path, settings.size))
            entries.append(path.relative_to(root).as_posix())
        except (ImageError, OSError):
            skipped.append(path.relative_to(root).as_posix())
        if len(pending) == 128:
            flush()
        if progress:
            progress(done, len(files))
    flush()
    if not entries:
        raise JaxmosaicError(f"{source}: none of the {len(files)} image files could be read")
    return TileLibrary("folder", str(root), entries, None, None, np.concatenate(rows).astype(np.float32), settings, color,
                       fingerprint, skipped)


def save_library(path: str | os.PathLike, library: TileLibrary, inputs: Sequence = ()) -> None:
    """Write `library` as one .npz artefact, atomically."""
    header = {"kind": library.kind, "source": library.source, "entries": library.entries, "settings": library.settings.as_dict(),
              "color": str(library.color), "fingerprint": library.fingerprint, "skipped": library.skipped,
              "svd": None if library.svd is None else {"k": library.svd["k"], "energy": library.svd["energy"],
                                                       "projected": library.projected},
              "bank": None if library.bank is None else list(library.bank), "build": library.build}
    arrays = {"features": library.features}
    if library.gabor is not None:
        arrays["gabor"] = library.gabor
    if library.colors is not None:
        arrays["colors"] = library.colors
    if library.svd is not None:
        arrays["svd_basis"] = library.svd["basis"]
        arrays["svd_singular_values"] = library.svd["singular_values"]
    save_artifact(path, _KIND, header, arrays, inputs=inputs)


def _damaged(path, what: str) -> JaxmosaicError:
    return JaxmosaicError(f"{path}: damaged tile library ({what}); build it again with `jaxmosaic library build`")


def load_library(path: str | os.PathLike) -> TileLibrary:
    """Read and check a library written by `save_library`: header fields, array shapes and
    dtypes, finite non-empty features; every failure is one line naming the file."""
    header, arrays = load_artifact(path, _KIND, arrays=("features",))
    features = arrays["features"]
    try:
        settings = FeatureConfig(**header["settings"])
        color = ColorMode(header["color"])
        kind, source, entries = header["kind"], str(header["source"]), [str(e) for e in header["entries"]]
        fingerprint, skipped = str(header["fingerprint"]), [str(s) for s in header.get("skipped", [])]
    except (KeyError, TypeError, ValueError):
        raise _damaged(path, "its header is incomplete") from None
    if features.ndim != 2 or features.shape[0] < 1 or features.shape[1] < 1 or not np.issubdtype(features.dtype, np.floating):
        raise _damaged(path, f"features of shape {features.shape} and type {features.dtype}")
    if not np.all(np.isfinite(features)):
        raise _damaged(path, "its features are not all finite")
    if kind == "folder" and len(entries) != len(features):
        raise _damaged(path, f"{len(entries)} entries for {len(features)} feature rows")
    gabor, colors = arrays.get("gabor"), arrays.get("colors")
    if kind == "gabor":
        tints = 1 if colors is None else len(colors)
        if gabor is None or gabor.ndim != 2 or gabor.shape[1] != 5 or len(gabor) * tints != len(features):
            raise _damaged(path, "its Gabor parameters do not match its features")
    elif kind == "bank":
        bank = header.get("bank")
        if not isinstance(bank, list) or len(bank) != 4 or int(np.prod(bank)) != len(features):
            raise _damaged(path, "its Gabor bank grid does not match its features")
    elif kind != "folder":
        raise _damaged(path, f"unknown kind {kind!r}")
    svd = None
    if header.get("svd") is not None:
        basis, values = arrays.get("svd_basis"), arrays.get("svd_singular_values")
        k = int(header["svd"]["k"])
        projected = bool(header["svd"].get("projected", False))
        rows = basis.shape[0] if projected and basis is not None else features.shape[1]
        if (basis is None or values is None or basis.shape != (rows, k) or not np.all(np.isfinite(basis))
                or (projected and features.shape[1] != k)):
            raise _damaged(path, "its SVD does not match its features")
        svd = {"k": k, "energy": float(header["svd"]["energy"]), "basis": basis.astype(np.float32), "singular_values": values,
               "projected": projected}
    if kind == "bank" and svd is None:
        raise _damaged(path, "a bank library without its SVD")
    bank = tuple(int(n) for n in header["bank"]) if kind == "bank" else None
    build = header.get("build") if isinstance(header.get("build"), dict) else None
    return TileLibrary(kind, source, entries, gabor, colors, features.astype(np.float32), settings, color, fingerprint, skipped, svd,
                       bank, build)


def is_current(library: TileLibrary, settings: FeatureConfig) -> bool:
    """Whether `library` was built with `settings` from its source as it is now."""
    if library.settings != settings:
        return False
    if library.kind in ("gabor", "bank"):
        return True
    root = Path(library.source)
    return root.is_dir() and folder_fingerprint(root, scan_folder(root)) == library.fingerprint
