"""Tile libraries for photomosaics: a folder of images or a generated Gabor basis, with features.

A library holds where its tiles come from (relative paths under a folder, or Gabor parameters),
one L2-normalised feature row per tile, the `FeatureConfig` they were computed with, the colour
mode it serves, a fingerprint of its source and, optionally, an SVD of its rows. It is saved as
a jaxmosaic artefact (`jaxmosaic.io.artifacts`: .npz arrays plus a JSON header; no pickles),
whose header is checked by `schema.LibraryHeader` before any array is read. The fingerprint of a
folder covers every image file's relative path, size and modification time, so a changed folder
is re-indexed and an unchanged one is not, without reading every image again. Symbolic links in a
folder are skipped (and listed), so what is indexed always lies inside the folder.

Reading a library never starts work: its header's source is never walked; whether a folder
library is current is asked with the folder the user names (`is_current(..., folder=...)`).
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
from jaxmosaic.techniques.mosaic.schema import LIBRARY_ARRAYS, LibraryHeader
from jaxmosaic.techniques.mosaic.tiles import GaborGrid, gabor_parameters, gabor_tiles

__all__ = [
    "TileLibrary",
    "tile_files",
    "folder_fingerprint",
    "load_tile",
    "gabor_library",
    "build_library",
    "save_library",
    "load_library",
    "AUTO_SVD_CAP",
    "AUTO_SVD_ENERGY",
    "auto_svd_k",
    "spectrum_svd_k",
    "attach_svd",
    "is_current",
    "built_from",
]

_KIND = "tile-library"

AUTO_SVD_CAP = 100
"""The most dimensions svd_k "auto" keeps."""
AUTO_SVD_ENERGY = 0.998
"""The share of the tiles' spread around their mean that svd_k "auto" keeps."""


@dataclasses.dataclass
class TileLibrary:
    """A tile library: where its tiles come from, one feature row per tile, how the rows were
    computed, and optionally their SVD (see the module's docstring)."""

    kind: str  # "folder", "gabor" or "bank" (the original article's Gabor bank)
    source: str  # the folder (absolute), "gabor" or "gabor-bank"
    entries: list[str]  # folder: relative paths of the tiles, in feature-row order
    gabor: np.ndarray | None  # gabor: (m, 5) parameters of `gabor_parameters`
    colors: np.ndarray | None  # gabor: (c, 3) tints, or None for grey tiles only
    features: np.ndarray  # (n, t) float32 unit rows; for a streamed library D_k = D V_k, (n, k) (see `projected`)
    settings: FeatureConfig  # how the features were computed
    color: ColorMode  # the colour mode the library serves (its features compare `view_for(color)`)
    fingerprint: str  # of the source: folder listing or Gabor parameters
    skipped: list[str] = dataclasses.field(default_factory=list)  # folder files left out: unreadable, or symbolic links
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


def tile_files(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(the image files under `root` a library indexes, the symbolic links among the image files,
    which it skips): a link could lead outside the folder, where a library never reads."""
    files = scan_folder(root)
    return [path for path in files if not path.is_symlink()], [path for path in files if path.is_symlink()]


def folder_fingerprint(root: str | os.PathLike, files: Sequence[Path], *, links: Sequence[Path] = ()) -> str:
    """SHA-256 over each file's relative path, size and modification time (nanoseconds), and each
    skipped link's relative path; a file that cannot be examined counts by its path alone."""
    digest = hashlib.sha256()
    for path in files:
        try:
            stat = path.stat()
            facts = f"{stat.st_size}\0{stat.st_mtime_ns}"
        except OSError:
            facts = "unreadable"
        digest.update(f"{path.relative_to(root).as_posix()}\0{facts}\n".encode())
    for path in links:
        digest.update(f"{path.relative_to(root).as_posix()}\0link\n".encode())
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


def gabor_library(parameters: np.ndarray, colors: np.ndarray | None, settings: FeatureConfig, color: ColorMode, *,
                  params=None, progress: Callable[[int, int], None] | None = None) -> TileLibrary:
    """The library of the Gabor tiles of `parameters` ((m, 5) rows of `gabor_parameters`), each in
    every tint of `colors` ((c, 3), or None for grey tiles only)."""
    fn = feature_function(settings, params)
    tiles = np.asarray(gabor_tiles(parameters, settings.size, colors))
    features = batched_features(fn, tiles)
    if progress:
        progress(len(tiles), len(tiles))
    colors = None if colors is None else np.asarray(colors, np.float32)
    digest = hashlib.sha256(np.asarray(parameters, np.float32).tobytes() + (b"" if colors is None else colors.tobytes()))
    return TileLibrary("gabor", "gabor", [], np.asarray(parameters, np.float32), colors, features.astype(np.float32), settings,
                       color, digest.hexdigest())


def build_library(source: str, settings: FeatureConfig, color: ColorMode, *, params=None, grid: GaborGrid = GaborGrid(),
                  colors: np.ndarray | None = None, progress: Callable[[int, int], None] | None = None) -> TileLibrary:
    """Compute a library's features: `source` is a folder path or "gabor".

    Unreadable files and symbolic links in a folder are skipped and listed in `TileLibrary.skipped`.

    Raises:
      JaxmosaicError: the folder holds no image files, or none that can be read.
    """
    if source == "gabor":
        return gabor_library(gabor_parameters(grid), colors, settings, color, params=params, progress=progress)
    fn = feature_function(settings, params)
    root = Path(source).resolve()
    files, links = tile_files(root)
    if not files:
        found = f" ({len(links)} symbolic link(s) skipped)" if links else ""
        raise JaxmosaicError(f"{source}: no image files in the folder{found} (looked for {', '.join(IMAGE_SUFFIXES)})")
    fingerprint = folder_fingerprint(root, files, links=links)
    entries, skipped, rows, pending = [], [path.relative_to(root).as_posix() for path in links], [], []

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
                       fingerprint, sorted(skipped))


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
    return JaxmosaicError(f"{path}: {what}; damaged tile library, build it again with `jaxmosaic library build`")


def load_library(path: str | os.PathLike) -> TileLibrary:
    """Read and check a library written by `save_library`: the header against `LibraryHeader` and
    the arrays' shapes (before any array is read), then finite values; every failure is one line
    naming the file and the field. Nothing is walked, built or downloaded."""
    header, arrays = load_artifact(path, _KIND, arrays=LIBRARY_ARRAYS, schema=LibraryHeader)
    for name, array in arrays.items():
        if not np.all(np.isfinite(array)):
            raise _damaged(path, f"{name}: not all finite")
    svd = None
    if header.svd is not None:
        svd = {"k": header.svd.k, "energy": header.svd.energy, "basis": arrays["svd_basis"].astype(np.float32),
               "singular_values": arrays["svd_singular_values"].astype(np.float32), "projected": header.svd.projected}
    gabor, colors = arrays.get("gabor"), arrays.get("colors")
    return TileLibrary(header.kind, header.source, list(header.entries), None if gabor is None else gabor.astype(np.float32),
                       None if colors is None else colors.astype(np.float32), arrays["features"].astype(np.float32),
                       header.settings.config(), ColorMode(header.color), header.fingerprint, list(header.skipped), svd,
                       None if header.bank is None else tuple(header.bank),
                       None if header.build is None else header.build.model_dump())


def built_from(library: TileLibrary, folder: str | os.PathLike) -> bool:
    """Whether `folder` is the folder a folder library was built from."""
    return library.kind == "folder" and Path(folder).resolve() == Path(library.source)


def is_current(library: TileLibrary, settings: FeatureConfig, *, folder: str | os.PathLike | None = None) -> bool:
    """Whether `library` was built with `settings` and, for a folder library, from `folder` (the
    folder the caller was given, never the library's own record of it) as it is now. A folder
    library is not current without a folder to compare: its source is never walked on its own say."""
    if library.settings != settings:
        return False
    if library.kind != "folder":
        return True
    if folder is None or not built_from(library, folder) or not Path(folder).is_dir():
        return False
    files, links = tile_files(Path(folder).resolve())
    return folder_fingerprint(Path(library.source), files, links=links) == library.fingerprint
