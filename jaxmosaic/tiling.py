"""Tiles of a large image: where they lie, how their edges blend, the order they are visited in.

Tiled refinement (`jaxmosaic.refine`) optimises an output too large for the memory one tile at a
time: overlapping tiles of T px (their starts evenly spread, so every overlap is at least the one
asked for), each blended back with a window that rises smoothly from 0 at a tile edge that has a
neighbour to 1 over the overlap (and is 1 at the image's own edges), in an order shuffled anew
each pass so the image is covered evenly. Geometry only: the statistics of a large image taken
tile by tile are `jaxmosaic.tiled_losses`'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

__all__ = [
    "TilePlan",
    "plan_tiles",
    "tile_starts",
    "tile_grid",
    "tile_window",
    "visit_order",
    "blend_tile",
    "seam_ratio",
]


class TilePlan(NamedTuple):
    """How an image of (height, width) is optimised: whole (tile None), or in tiles of `tile` px."""

    height: int
    width: int
    tile: int | None
    grid: tuple[tuple[int, int], ...] = ()  # (top, left) of every tile
    shape: tuple[int, int] | None = None  # (height, width) of a tile


def plan_tiles(height: int, width: int, setting: int | str | None, overlap: int, *, fits: bool,
               largest: Callable[[], int]) -> TilePlan:
    """Whether and how to tile an image: with `setting` T (px), when it is larger than T or its
    untiled optimisation does not `fit`; with "auto", only when it does not fit, in the
    `largest` tile that does (asked only then); with None, never."""
    tile = None
    if setting == "auto":
        tile = None if fits else largest()
    elif setting is not None and (max(height, width) > setting or not fits):
        tile = setting
    if tile is None or tile >= max(height, width):
        return TilePlan(height, width, None)
    return TilePlan(height, width, tile, tuple(tile_grid(height, width, tile, overlap)), (min(tile, height), min(tile, width)))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of `tile` px covering [0, length), evenly spread, neighbours overlapping by
    at least `overlap` px (one tile when it covers everything)."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"the overlap must be at least 0 and less than the tile ({tile}), got {overlap}")
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(top, left) of every tile of an image, row by row."""
    return [(top, left) for top in tile_starts(height, tile, overlap) for left in tile_starts(width, tile, overlap)]


def _ramp(length: int, overlap: int, before: bool, after: bool) -> np.ndarray:
    weights = np.ones(length, np.float32)
    if overlap <= 0:
        return weights
    rise = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap).astype(np.float32) ** 2
    if before:
        weights[:overlap] = np.minimum(weights[:overlap], rise)
    if after:
        weights[-overlap:] = np.minimum(weights[-overlap:], rise[::-1])
    return weights


def tile_window(top: int, left: int, shape: tuple[int, int], image: tuple[int, int], overlap: int) -> np.ndarray:
    """The (th, tw, 1) blending weights of the tile at (top, left) of an image of (height, width):
    sin^2 rising over `overlap` px from each edge that lies inside the image, 1 elsewhere."""
    (th, tw), (height, width) = shape, image
    rows = _ramp(th, min(overlap, th // 2), top > 0, top + th < height)
    columns = _ramp(tw, min(overlap, tw // 2), left > 0, left + tw < width)
    return (rows[:, None] * columns[None, :])[..., None]


def visit_order(count: int, pass_index: int, seed: int = 0) -> list[int]:
    """The order tiles are refined in during one pass: a permutation drawn anew for every pass."""
    return [int(i) for i in np.random.default_rng([seed, pass_index]).permutation(count)]


@jax.jit
def blend_tile(image: jax.Array, before: jax.Array, after: jax.Array, window: jax.Array, top, left) -> jax.Array:
    """`image` (..., H, W, C) with the tile at (top, left) moved from `before` towards its
    refined `after` by `window`: image + window * (after - before) there."""
    region = jax.lax.dynamic_slice_in_dim(jax.lax.dynamic_slice_in_dim(image, top, after.shape[-3], -3), left, after.shape[-2], -2)
    window = window.reshape((1,) * (after.ndim - window.ndim) + window.shape)
    updated = region + window * (after - before)
    starts = (0,) * (image.ndim - 3) + (top, left, 0)
    return jax.lax.dynamic_update_slice(image, updated.astype(image.dtype), starts)


def seam_ratio(image, grid: Sequence[tuple[int, int]], shape: tuple[int, int], *, band: int = 1, margin: int = 4,
               sigma: float = 0.0) -> float:
    """How visible tile edges are: the mean gradient magnitude of an HWC image within `band` px
    of the lines where tiles end inside the image, over its mean farther than `margin` px from
    every such line (about 1 where no seam shows; a seam raises it). `sigma` > 0 blurs the
    image first (Gaussian, px), so that a step in brightness or colour between tiles stands out
    from a fine texture's own gradients."""
    image = np.asarray(image, np.float64)
    if sigma > 0:
        from scipy.ndimage import gaussian_filter

        image = gaussian_filter(image, (sigma, sigma, 0))
    dy = np.diff(image, axis=0)[:, :-1]
    dx = np.diff(image, axis=1)[:-1, :]
    magnitude = np.sqrt(np.sum(dy**2 + dx**2, axis=-1))
    height, width = magnitude.shape
    rows = {top for top, _ in grid if top > 0} | {top + shape[0] for top, _ in grid if top + shape[0] < image.shape[0]}
    columns = {left for _, left in grid if left > 0} | {left + shape[1] for _, left in grid if left + shape[1] < image.shape[1]}

    def distance(lines, length):
        positions = np.arange(length)[:, None]
        return np.min(np.abs(positions - (np.array(sorted(lines))[None, :] - 0.5)), axis=1) if lines else np.full(length, np.inf)

    near = np.minimum(distance(rows, height)[:, None], distance(columns, width)[None, :])
    border, interior = near <= band, near > margin
    if not border.any() or not interior.any():
        raise ValueError("the image has no tile edges inside it, or no interior away from them")
    return float(magnitude[border].mean() / magnitude[interior].mean())
