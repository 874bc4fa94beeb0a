"""A mosaic's colours as a whole: the tiles' palette matched to the target's, or the target's to
the tiles' (phomo's two directions), and the target blended over the result (metapixel's --cheat).

phomo matches palettes with Reinhard et al.'s transfer over all pixels at once: the Lab mean and
standard deviation of every pixel of the tile set (or of the target) moved to the other side's,
in OpenCV's 8-bit Lab. Here it is the same transfer in floating-point CIE Lab (`jaxmosaic.color`),
with the tiles' statistics pooled over the library chunk by chunk (bounded memory).

Images are float32 RGB in [0, 1], NHWC; the array functions are pure and jit-able.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.color import lab_moment_transfer, rgb_to_lab
from jaxmosaic.config import ConfigError, number, setting
from jaxmosaic.image import resize
from jaxmosaic.techniques.mosaic.assemble import (
    MosaicConfig,
    MosaicResult,
    _fit_target,
    make_mosaic,
    mosaic_cells,
    mosaic_grid,
)
from jaxmosaic.techniques.mosaic.features import batched_features, feature_function
from jaxmosaic.techniques.mosaic.library import TileLibrary, attach_svd

__all__ = ["MosaicColorConfig", "LabStatistics", "lab_statistics", "tile_lab_statistics", "transfer_lab_statistics",
           "overlay", "RecoloredLibrary", "check_recolorable", "recolored_library", "palette_mosaic"]

_CHUNK = 256  # tiles rendered at once while pooling statistics or embedding recoloured tiles


@dataclasses.dataclass(frozen=True)
class MosaicColorConfig:
    """The colours of a mosaic as a whole: one palette matched to the other, and the overlay."""

    color_tiles_to_target: bool = setting(False, "Move the tile set's overall Lab colour distribution (mean and spread of all its pixels) to the target's before matching (phomo's tiles-to-master); the library's features are computed again for the recoloured tiles.")
    color_target_to_tiles: bool = setting(False, "Move the target's overall Lab colour distribution to the tile set's before matching (phomo's master-to-tiles).")
    overlay: float = setting(0.0, "Blend P percent (0..100) of the target over the finished mosaic (metapixel's --cheat).")

    def __post_init__(self):
        object.__setattr__(self, "overlay", number("overlay", self.overlay, minimum=0.0, maximum=100.0))
        if self.color_tiles_to_target and self.color_target_to_tiles:
            raise ConfigError("color_tiles_to_target", "cannot be combined with --color-target-to-tiles: the palettes are "
                                                       "matched in one direction")


class LabStatistics(NamedTuple):
    """The per-channel CIE Lab mean and (population) standard deviation of a set of pixels."""

    mean: np.ndarray  # (3,) float64: L, a, b
    std: np.ndarray  # (3,) float64


def lab_statistics(images) -> LabStatistics:
    """The Lab statistics of all pixels of `images` (HWC or NHWC, RGB in [0, 1]), pooled."""
    lab = np.asarray(rgb_to_lab(jnp.asarray(images, jnp.float32)), np.float64).reshape(-1, 3)
    return LabStatistics(lab.mean(axis=0), lab.std(axis=0))


def tile_lab_statistics(library: TileLibrary, side: int, *,
                        progress: Callable[[int, int], None] | None = None) -> LabStatistics:
    """The Lab statistics of every pixel of every tile of `library` rendered at `side` px (as a
    mosaic draws them), pooled; rendered `_CHUNK` tiles at a time, `progress(done, total)` called
    after each chunk (every tile is rendered: minutes for a library of 10^5 tiles)."""
    total, squares, count = np.zeros(3), np.zeros(3), 0
    for start in range(0, len(library), _CHUNK):
        tiles = library.render(np.arange(start, min(start + _CHUNK, len(library))), side)
        lab = np.asarray(batched_features(_LAB, tiles, _CHUNK), np.float64).reshape(-1, 3)
        total, squares, count = total + lab.sum(axis=0), squares + (lab * lab).sum(axis=0), count + len(lab)
        if progress is not None:
            progress(start + len(tiles), len(library))
    mean = total / count
    return LabStatistics(mean, np.sqrt(np.maximum(squares / count - mean * mean, 0.0)))


def transfer_lab_statistics(images: jax.Array, source: LabStatistics, target: LabStatistics, *, eps: float = 0.1) -> jax.Array:
    """Reinhard's transfer with given statistics: each Lab channel of `images` mapped by
    (x - source.mean) / source.std * target.std + target.mean, back to RGB, clipped to [0, 1]
    (`jaxmosaic.reinhard_transfer` with the statistics of whole sets of pixels).

    Args:
      images: (..., 3) RGB in [0, 1].
      source, target: `LabStatistics`; `eps` is the least source standard deviation divided by.
    """
    images = jnp.asarray(images)
    stats = [jnp.asarray(value, images.dtype).reshape((1,) * (images.ndim - 1) + (3,)) for value in (*source, *target)]
    return lab_moment_transfer(rgb_to_lab(images), *stats, eps=eps)


_LAB = jax.jit(rgb_to_lab)
_TRANSFER = jax.jit(transfer_lab_statistics)


def overlay(mosaic: jax.Array, target: jax.Array, percent) -> jax.Array:
    """`percent` percent of `target` blended over `mosaic`, both uint8 of one shape:
    floor(((100 - P) * mosaic + P * target) / 100 + 1/2), the nearest whole value with halves
    rounded up, as uint8.

    metapixel's --cheat computes each term in 16.16 fixed point and truncates it
    ((m * (65536 - o)) >> 16) + ((t * o) >> 16) with o = P * 65536 / 100, so it comes out up to
    two levels darker; here the blend is rounded once.

    Args:
      mosaic, target: uint8 arrays of the same shape (any layout).
      percent: in [0, 100] (a number or a traced scalar).

    Returns:
      uint8, the shape of `mosaic`.
    """
    if isinstance(percent, (int, float)) and not 0 <= percent <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    weight = jnp.asarray(percent, jnp.float32)
    blended = ((100.0 - weight) * jnp.asarray(mosaic, jnp.float32) + weight * jnp.asarray(target, jnp.float32)) / 100.0
    return jnp.floor(blended + 0.5).astype(jnp.uint8)


@dataclasses.dataclass
class RecoloredLibrary(TileLibrary):
    """A tile library whose tiles are drawn through a Lab transfer (`transfer_lab_statistics`),
    with feature rows computed from the recoloured tiles (`recolored_library`)."""

    transfer: tuple[LabStatistics, LabStatistics] | None = None  # (from, to)

    def render(self, indices, size: int) -> np.ndarray:
        tiles = super().render(indices, size)
        return batched_features(lambda chunk: _TRANSFER(chunk, *self.transfer), tiles, _CHUNK) if len(tiles) else tiles


def check_recolorable(library: TileLibrary) -> None:
    """Refuse --color-tiles-to-target for a library whose features cannot be computed again (held
    projected by its SVD: a streamed build, such as the gabor-bank's), before any tile is rendered.

    Raises:
      ConfigError: naming `color_tiles_to_target`.
    """
    if library.projected:
        raise ConfigError("color_tiles_to_target", f"{library.source}: the library holds its features projected (a "
                                                   "streamed build), so they cannot be computed again for recoloured "
                                                   "tiles; use --color-target-to-tiles")


def recolored_library(library: TileLibrary, source: LabStatistics, target: LabStatistics, *, params=None) -> RecoloredLibrary:
    """`library` with every tile moved from `source` to `target` Lab statistics and its features
    (and SVD, at the same k) computed again from the recoloured tiles, as a library build would.

    Raises:
      ConfigError: (color_tiles_to_target) the library holds its features projected by its SVD (a
        streamed build): its tiles are not embedded again here.
    """
    check_recolorable(library)
    describe = feature_function(library.settings, params)
    rows = []
    for start in range(0, len(library), _CHUNK):
        tiles = library.render(np.arange(start, min(start + _CHUNK, len(library))), library.settings.size)
        rows.append(batched_features(describe, batched_features(lambda chunk: _TRANSFER(chunk, source, target), tiles, _CHUNK)))
    fields = {field.name: getattr(library, field.name) for field in dataclasses.fields(TileLibrary)}
    made = RecoloredLibrary(**{**fields, "features": np.concatenate(rows).astype(np.float32), "svd": None},
                            transfer=(source, target))
    if library.svd is not None:
        attach_svd(made, library.svd["k"])
    return made


def palette_mosaic(config: MosaicConfig, colors: MosaicColorConfig, target: np.ndarray, library: TileLibrary, *,
                   params=None, mesh=None, progress: Callable[[int, int], None] | None = None) -> MosaicResult:
    """`make_mosaic` with the palettes matched first and the target overlaid last, as `colors` says.

    The target's palette is matched by recolouring the target before its patches are described;
    the tiles' by recolouring every tile and computing its features again (`recolored_library`),
    so the features always describe what is matched and drawn. The overlay blends the target as
    given (fitted to the grid, resized to the mosaic), not as recoloured, and with --subdivide the
    cells are those of the target as given (`mosaic_cells`): recolouring changes its contrasts.
    `progress(done, total)` follows the pooling of the tiles' statistics (every tile rendered).

    Raises:
      ConfigError: --color-tiles-to-target with a library held projected (`check_recolorable`),
        before anything is rendered.
    """
    target = np.asarray(target, np.float32)
    if colors.color_tiles_to_target:
        check_recolorable(library)
    config.check_features(library.settings.kind)
    matched, stats, cells = target, {}, None
    if colors.color_target_to_tiles:
        cells = mosaic_cells(config, target)
        tiles = tile_lab_statistics(library, config.side, progress=progress)
        matched = np.asarray(transfer_lab_statistics(target, lab_statistics(target), tiles))
        stats["palette"] = {"direction": "target-to-tiles", "tiles": _plain(tiles)}
    elif colors.color_tiles_to_target:
        tiles, wanted = tile_lab_statistics(library, config.side, progress=progress), lab_statistics(target)
        library = recolored_library(library, tiles, wanted, params=params)
        stats["palette"] = {"direction": "tiles-to-target", "tiles": _plain(tiles), "target": _plain(wanted)}
    result = make_mosaic(config, matched, library, params, mesh=mesh, cells=cells)
    image = result.image
    if colors.overlay:
        height, width = image.shape[:2]
        rows, cols, _, _ = mosaic_grid(*target.shape[:2], config.patch, cols=config.cols, fit=config.fit)
        under = np.asarray(resize(_fit_target(target, rows, cols, config.patch, config.fit, config.cols), height, width))
        blended = overlay(_to_bytes(image), _to_bytes(under), colors.overlay)
        image = np.asarray(blended, np.float32) / 255.0
        stats["overlay"] = colors.overlay
    return result._replace(image=image, stats={**result.stats, **stats})


def _to_bytes(image: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] as the uint8 values an image file holds (as `save_image` rounds)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _plain(stats: LabStatistics) -> dict:
    return {"mean": [float(v) for v in stats.mean], "std": [float(v) for v in stats.std]}
