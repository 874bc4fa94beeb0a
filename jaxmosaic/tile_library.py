"""Tile libraries for photomosaics: a folder of images or a generated Gabor basis, with features.

A library holds where its tiles come from (relative paths under a folder, or Gabor parameters),
one L2-normalised feature row per tile, the feature settings, and a fingerprint of its source.
It is saved as one `.npz` file (arrays plus a JSON header; no pickles). The fingerprint of a
folder covers every image file's relative path, size and modification time, so a changed folder
is re-indexed and an unchanged one is not, without reading every image again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxmosaic.errors import ImageError, JaxmosaicError
from jaxmosaic.files import atomic_path
from jaxmosaic.image import load_image
from jaxmosaic.search import svd_compress
from jaxmosaic.techniques.mosaic import FEATURE_BATCH, GaborGrid, batched_features, feature_function, gabor_parameters, gabor_tiles

__all__ = [
    "IMAGE_SUFFIXES",
    "TileLibrary",
    "feature_settings",
    "scan_folder",
    "folder_fingerprint",
    "load_tile",
    "build_library",
    "save_library",
    "load_library",
    "auto_svd_k",
    "attach_svd",
    "is_current",
    "gabor_colors",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
_FORMAT = "jaxmosaic-tile-library/1"


@dataclass
class TileLibrary:
    kind: str  # "folder" or "gabor"
    source: str  # the folder (absolute) or "gabor"
    entries: list[str]  # folder: relative paths of the tiles, in feature-row order
    gabor: np.ndarray | None  # gabor: (m, 5) parameters of `gabor_parameters`
    colors: np.ndarray | None  # gabor: (c, 3) tints, or None for grey tiles only
    features: np.ndarray  # (n, t) float32 unit rows
    settings: dict  # how the features were computed (see `feature_settings`)
    fingerprint: str  # of the source: folder listing or Gabor parameters
    skipped: list[str] = field(default_factory=list)  # folder files that could not be read
    svd: dict | None = None  # {"k", "basis" (t, k), "singular_values" (k,), "energy"}

    def __len__(self) -> int:
        return self.features.shape[0]

    def render(self, indices: Sequence[int], size: int) -> np.ndarray:
        """Tiles `indices` as (len, size, size, 3) float32 images."""
        indices = np.asarray(indices, np.int64)
        if self.kind == "gabor":
            tints = 1 if self.colors is None else len(self.colors)
            params = self.gabor[indices // tints]
            tiles = np.asarray(gabor_tiles(params, size))
            if self.colors is not None:
                tiles = tiles * self.colors[indices % tints][:, None, None, :]
            return tiles.astype(np.float32)
        root = Path(self.source)
        return np.stack([load_tile(root / self.entries[i], size) for i in indices]) if len(indices) else np.zeros((0, size, size, 3), np.float32)


def feature_settings(kind: str, view: str, *, grid: int = 4, layer: str = "relu4_1", size: int = 64, pool: str = "mean", weights_id: str = "") -> dict:
    """The settings a library's features depend on: kind ("color" | "vgg"), the matching view
    (the colour mode whose `matching_view` is applied) and the kind's own settings."""
    if kind == "color":
        return {"features": "color", "view": view, "grid": grid, "size": max(grid, 16)}
    if kind == "vgg":
        return {"features": "vgg", "view": view, "layer": layer, "size": size, "pool": pool, "weights": weights_id}
    raise ValueError(f"--features must be 'color' or 'vgg', got {kind!r}")


def scan_folder(root: str | os.PathLike) -> list[Path]:
    """Image files under `root` (recursive, by suffix, hidden names skipped), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise JaxmosaicError(f"{root}: not a folder")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                files.append(Path(dirpath) / name)
    return sorted(files)


def folder_fingerprint(root: str | os.PathLike, files: Sequence[Path]) -> str:
    """SHA-256 over each file's relative path, size and modification time (nanoseconds)."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
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


def gabor_colors(count: int) -> np.ndarray:
    """`count` tints for Gabor tiles: white, then hues evenly spaced at saturation 0.6."""
    if count < 1:
        raise ValueError(f"--gabor-colors must be at least 1, got {count}")
    colors = [np.ones(3, np.float32)]
    for i in range(count - 1):
        hue = i / max(1, count - 1)
        rgb = np.clip(np.abs(((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6) - 3) - 1, 0, 1)
        colors.append((1 - 0.6 + 0.6 * rgb).astype(np.float32))
    return np.stack(colors)


def auto_svd_k(features: np.ndarray, energy: float = 0.998, cap: int = 100) -> int:
    """One dimension for the features' mean direction plus the fewest principal directions that
    keep `energy` of the tiles' spread around it, at most `cap`.

    The uncentred energy of D is the wrong guide: features share a large common component (the
    mean tile), so one singular vector already holds most of ||D||_F^2 while telling no tiles apart.
    """
    n, t = features.shape
    centred = features.astype(np.float64) - features.mean(axis=0, dtype=np.float64)
    values = np.sort(np.clip(np.linalg.eigvalsh(centred.T @ centred), 0, None))[::-1]
    kept = np.cumsum(values) / max(values.sum(), 1e-30)
    k = int(np.searchsorted(kept, energy) + 2)
    return max(1, min(k, cap, n, t))


def attach_svd(library: TileLibrary, k: int) -> None:
    """Store the exact SVD compression of the library's features at k dimensions."""
    compressed = svd_compress(jnp.asarray(library.features), k)
    library.svd = {
        "k": k,
        "basis": np.asarray(compressed.basis),
        "singular_values": np.asarray(compressed.singular_values),
        "energy": float(compressed.energy),
    }


def build_library(
    source: str,
    settings: dict,
    *,
    params=None,
    grid: GaborGrid = GaborGrid(),
    colors: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TileLibrary:
    """Compute a library's features: `source` is a folder path or "gabor".

    Unreadable files in a folder are skipped and listed in `TileLibrary.skipped`.

    Raises:
      JaxmosaicError: the folder holds no image files, or none that can be read.
    """
    fn = feature_function(settings, params)
    size = settings["size"]
    if source == "gabor":
        parameters = gabor_parameters(grid)
        tiles = np.asarray(gabor_tiles(parameters, size, colors))
        features = batched_features(fn, tiles)
        if progress:
            progress(len(tiles), len(tiles))
        digest = hashlib.sha256(parameters.tobytes() + (b"" if colors is None else np.asarray(colors, np.float32).tobytes()))
        return TileLibrary("gabor", "gabor", [], parameters, None if colors is None else np.asarray(colors, np.float32),
                           features.astype(np.float32), settings, digest.hexdigest())
    root = Path(source).resolve()
    files = scan_folder(root)
    if not files:
        raise JaxmosaicError(f"{source}: no image files in the folder (looked for {', '.join(IMAGE_SUFFIXES)})")
    fingerprint = folder_fingerprint(root, files)
    entries, skipped, rows = [], [], []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            rows.append(batched_features(fn, np.stack(pending)))
            pending.clear()

    for done, path in enumerate(files, 1):
        try:
            pending.append(load_tile(path, size))
            entries.append(path.relative_to(root).as_posix())
        except ImageError:
            skipped.append(path.relative_to(root).as_posix())
        if len(pending) == FEATURE_BATCH:
            flush()
        if progress:
            progress(done, len(files))
    flush()
    if not entries:
        raise JaxmosaicError(f"{source}: none of the {len(files)} image files could be read")
    return TileLibrary("folder", str(root), entries, None, None, np.concatenate(rows).astype(np.float32), settings, fingerprint, skipped)


def save_library(path: str | os.PathLike, library: TileLibrary, inputs: Sequence = ()) -> None:
    """Write `library` to one .npz file, atomically."""
    header = {
        "format": _FORMAT, "kind": library.kind, "source": library.source, "entries": library.entries,
        "settings": library.settings, "fingerprint": library.fingerprint, "skipped": library.skipped,
        "svd": None if library.svd is None else {"k": library.svd["k"], "energy": library.svd["energy"]},
    }
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8), "features": library.features}
    if library.gabor is not None:
        arrays["gabor"] = library.gabor
    if library.colors is not None:
        arrays["colors"] = library.colors
    if library.svd is not None:
        arrays["svd_basis"] = library.svd["basis"]
        arrays["svd_singular_values"] = library.svd["singular_values"]
    path = Path(path)
    if path.suffix != ".npz":
        raise JaxmosaicError(f"{path}: a tile library file must end in .npz")
    with atomic_path(path, inputs) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def load_library(path: str | os.PathLike) -> TileLibrary:
    """Read a library written by `save_library`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            if header.get("format") != _FORMAT:
                raise JaxmosaicError(f"{path}: not a jaxmosaic tile library")
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise JaxmosaicError(f"{path}: cannot read the tile library ({err})") from None
    svd = None
    if header["svd"] is not None:
        svd = {**header["svd"], "basis": arrays["svd_basis"], "singular_values": arrays["svd_singular_values"]}
    return TileLibrary(header["kind"], header["source"], header["entries"], arrays.get("gabor"), arrays.get("colors"),
                       arrays["features"], header["settings"], header["fingerprint"], header["skipped"], svd)


def is_current(library: TileLibrary, settings: dict) -> bool:
    """Whether `library` was built with `settings` from its source as it is now."""
    if library.settings != settings:
        return False
    if library.kind == "gabor":
        return True
    root = Path(library.source)
    return root.is_dir() and folder_fingerprint(root, scan_folder(root)) == library.fingerprint
