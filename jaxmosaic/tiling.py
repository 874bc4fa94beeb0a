"""Tiles of a large image: where they lie, how their edges blend, the order they are visited in,
and VGG19 statistics of an image too large for one pass through the network.

Tiled refinement optimises an output too large for the memory one tile at a time: overlapping
tiles of T px (their starts evenly spread, so every overlap is at least the one asked for), each
blended back with a window that rises smoothly from 0 at a tile edge that has a neighbour to 1
over the overlap (and is 1 at the image's own edges), in an order shuffled anew each pass so the
image is covered evenly. The statistics of a whole large image (the Gram matrices of the style
image, the reported losses of the output) are sums over positions, so they are taken tile by tile:
each tile is run through the network with a halo of context around it and only the positions of
its own interior are counted (exact wherever the halo covers the layer's receptive field, and at
the image's borders, which the network pads as it does the whole image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.losses import _positions as _cells, gram_matrix, tv_losses
from jaxmosaic.resources import largest_tile
from jaxmosaic.vgg import layer_stride, three_channels, vgg19_features

__all__ = [
    "TilePlan",
    "plan_tiles",
    "tile_starts",
    "tile_grid",
    "tile_window",
    "visit_order",
    "held_bytes",
    "position_share",
    "tile_weights",
    "HALO",
    "statistic_tile",
    "blend_tile",
    "tiled_grams",
    "tiled_style_terms",
    "seam_ratio",
]

_ALIGN = 32  # tile starts of the statistics are multiples of the deepest pooling stride
HALO = 96
"""px of context around each tile of statistics taken tile by tile: enough for Gram matrices up
to relu5_1 to equal the whole image's to 5e-7 (tests/test_tiling.py)."""


def statistic_tile(tile: int) -> int:
    """The tile of the statistics for an optimisation tile of `tile` px: a multiple of 32."""
    return max(_ALIGN, tile // _ALIGN * _ALIGN)


class TilePlan(NamedTuple):
    """How an image of (height, width) is optimised: whole (tile None), or in tiles of `tile` px."""

    height: int
    width: int
    tile: int | None
    grid: tuple[tuple[int, int], ...] = ()  # (top, left) of every tile
    shape: tuple[int, int] | None = None  # (height, width) of a tile


def plan_tiles(height: int, width: int, setting: int | str | None, overlap: int, *, untiled: int, budget: int | None,
               layers: Sequence[str], count: int = 1, fixed: int = 0) -> TilePlan:
    """Whether and how to tile an image: with `setting` T (px), when it is larger than T or its
    `untiled` optimisation (bytes) does not fit `budget`; with "auto", only when it does not fit,
    in the largest tile that does besides the `fixed` bytes held anyway; with None, never."""
    fits = budget is None or untiled <= budget
    tile = None
    if setting == "auto":
        tile = None if fits else largest_tile(budget, layers, count, fixed=fixed)
    elif setting is not None and (max(height, width) > setting or not fits):
        tile = setting
    if tile is None or tile >= max(height, width):
        return TilePlan(height, width, None)
    return TilePlan(height, width, tile, tuple(tile_grid(height, width, tile, overlap)), (min(tile, height), min(tile, width)))


def position_share(plan: TilePlan, layer: str) -> float:
    """A tile's share of the image's positions at a layer: E_l is per position while sums over
    positions (content, spectrum, TV) are not, so a tile's w_l times this makes the tile's
    gradient the whole loss's gradient there."""
    return _cells(*plan.shape, layer) / _cells(plan.height, plan.width, layer)


def tile_weights(plan: TilePlan, weights: Mapping[str, float]) -> dict[str, float]:
    """Per-layer weights w_l of a tile's style or Gram loss: each times the tile's `position_share`."""
    return {name: weight * position_share(plan, name) for name, weight in weights.items()}


def held_bytes(height: int, width: int, count: int, channels: int = 3) -> int:
    """Bytes of whole images a tiled optimisation holds besides a tile's: the images, the
    content or targets, the blended copy, a view for the progress and the final picture."""
    return (5 * count + 2) * height * width * channels * 4


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


def _statistic_tiles(length: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """(crop start, crop end, interior start, interior end) along one axis: interiors of `tile`
    px (a multiple of 32) partition [0, length); crops add `halo` px each side (within the image)."""
    spans = []
    for start in range(0, length, tile):
        end = min(length, start + tile)
        spans.append((max(0, start - halo), min(length, end + halo), start, end))
    return spans


def _interiors(params, crops: jax.Array, layers: Sequence[str], spans, pooling: str) -> dict:
    """Each layer's features of the crops' interior positions."""
    (y0, _, iy0, iy1), (x0, _, ix0, ix1) = spans
    features = vgg19_features(params, crops, tuple(layers), pooling=pooling)
    out = {}
    for name in layers:
        s = layer_stride(name)
        out[name] = features[name][:, (iy0 - y0) // s:(iy1 - y0) // s, (ix0 - x0) // s:(ix1 - x0) // s, :]
    return out


def _check_statistics(tile: int, halo: int) -> None:
    if tile % _ALIGN or halo % _ALIGN or tile <= 0 or halo < 0:
        raise ValueError(f"tiles and halos of tiled statistics must be multiples of {_ALIGN} px, got {tile} and {halo}")


def tiled_grams(params, image, layers: Sequence[str], *, tile: int = 512, halo: int = HALO, pooling: str = "max",
                size: tuple[int, int] | None = None) -> dict:
    """`jaxmosaic.losses.gram_targets` of an HWC image, taken tile by tile (memory of one tile
    plus its halo): {layer: G (C, C)} scaled to the positions of an output of `size`."""
    _check_statistics(tile, halo)
    image = jnp.asarray(image, jnp.float32)
    height, width = image.shape[:2]
    layers = tuple(layers)
    grams = {name: 0.0 for name in layers}
    run = jax.jit(_interiors, static_argnames=("layers", "spans", "pooling"))
    for rows in _statistic_tiles(height, tile, halo):
        for columns in _statistic_tiles(width, tile, halo):
            crop = image[rows[0]:rows[1], columns[0]:columns[1]][None]
            features = run(params, crop, layers, (rows, columns), pooling)
            grams = {name: grams[name] + gram_matrix(features[name][0]) for name in layers}
    out_h, out_w = size or (height, width)
    return {name: grams[name] * (_cells(out_h, out_w, name) / _cells(height, width, name)) for name in layers}


def tiled_style_terms(params, images, content, grams: Mapping[str, jax.Array], style_weights: Mapping[str, float],
                      content_layers: Sequence[str] = (), *, tile: int = 512, halo: int = HALO, pooling: str = "max") -> dict:
    """The unweighted style-transfer terms of large images (N, H, W, C) against one content image
    (H, W, 3; None for none) and Gram targets (C, C), or (N, C, C) one per image, taken tile by
    tile: {"content": (N,) (with a content image), "style": (N,), "tv": (N,)} as
    `style_transfer_losses` defines them (grey images are seen in three channels)."""
    _check_statistics(tile, halo)
    images = jnp.asarray(images, jnp.float32)
    count, height, width = images.shape[:3]
    network = three_channels(images)
    content_layers = tuple(content_layers) if content is not None else ()
    layers = tuple(dict.fromkeys((*content_layers, *style_weights)))
    run = jax.jit(_interiors, static_argnames=("layers", "spans", "pooling"))
    sums = {name: jnp.zeros((count,) + (grams[name].shape[-1],) * 2) for name in style_weights}
    l_content = jnp.zeros(count)
    for rows in _statistic_tiles(height, tile, halo):
        for columns in _statistic_tiles(width, tile, halo):
            crops = network[:, rows[0]:rows[1], columns[0]:columns[1]]
            if content is not None:
                crops = jnp.concatenate([crops, jnp.asarray(content, jnp.float32)[None, rows[0]:rows[1], columns[0]:columns[1]]])
            features = run(params, crops, layers, (rows, columns), pooling)
            for name in content_layers:
                l_content = l_content + 0.5 * jnp.sum(jnp.square(features[name][:count] - features[name][count:]), axis=(1, 2, 3))
            for name in style_weights:
                sums[name] = sums[name] + gram_matrix(features[name][:count])
    l_style = jnp.zeros(count)
    for name, weight in style_weights.items():
        target = jnp.asarray(grams[name])
        target = target[None] if target.ndim == 2 else target
        positions = _cells(height, width, name)
        channels = target.shape[-1]
        l_style = l_style + weight * jnp.sum(jnp.square(sums[name] - target), axis=(1, 2)) / (4.0 * channels**2 * positions**2)
    terms = {"content": l_content} if content is not None else {}
    return {**terms, "style": l_style, "tv": tv_losses(images)}


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
