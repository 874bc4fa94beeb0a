"""Losses of images too large for one pass through the network, taken tile by tile.

The statistics of a whole large image (the Gram matrices of a style image, the reported losses
of a tiled output) are sums over positions, so they are taken tile by tile: each tile is run
through the network with a halo of context around it and only the positions of its own interior
are counted (exact wherever the halo covers the layer's receptive field, and at the image's
borders, which the network pads as it does the whole image). A tile being optimised weighs its
per-position terms by its share of the positions (`tile_weights`).

Guided Gram matrices (regions) are sums over positions too, each position weighed by the whole
image's guide there (`tiled_guided_grams`, `tiled_style_terms` with guides). Sorted lists and
histograms are not sums: they are taken over the whole image's features, gathered tile by tile
from the interiors (`tiled_features`), which holds one copy of the layers' features but never the
network's activations of the whole image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxmosaic.guides import GuideMode, layer_guides, unit_rms
from jaxmosaic.losses import _positions as _cells, gram_matrix, tv_losses
from jaxmosaic.tiling import TilePlan
from jaxmosaic.vgg import layer_stride, three_channels, vgg19_features

__all__ = [
    "HALO",
    "statistic_tile",
    "position_share",
    "tile_weights",
    "tiled_grams",
    "tiled_features",
    "tiled_guided_grams",
    "tile_guides",
    "tiled_style_terms",
]

_ALIGN = 32  # tile starts of the statistics are multiples of the deepest pooling stride
HALO = 96
"""px of context around each tile of statistics taken tile by tile: enough for Gram matrices up
to relu5_1 to equal the whole image's to 5e-7 (tests/test_tiling.py)."""


def statistic_tile(tile: int) -> int:
    """The tile of the statistics for an optimisation tile of `tile` px: a multiple of 32."""
    return max(_ALIGN, tile // _ALIGN * _ALIGN)


def position_share(plan: TilePlan, layer: str) -> float:
    """A tile's share of the image's positions at a layer: E_l is per position while sums over
    positions (content, spectrum, TV) are not, so a tile's w_l times this makes the tile's
    gradient the whole loss's gradient there."""
    return _cells(*plan.shape, layer) / _cells(plan.height, plan.width, layer)


def tile_weights(plan: TilePlan, layer_weights: Mapping[str, float]) -> dict[str, float]:
    """The per-layer weights w_l of a tile's style or Gram loss: each times the tile's `position_share`."""
    return {name: weight * position_share(plan, name) for name, weight in layer_weights.items()}


def _statistic_tiles(length: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """(crop start, crop end, interior start, interior end) along one axis: interiors of `tile`
    px (a multiple of 32) partition [0, length); crops add `halo` px each side (within the image)."""
    spans = []
    for start in range(0, length, tile):
        end = min(length, start + tile)
        spans.append((max(0, start - halo), min(length, end + halo), start, end))
    return spans


def _interiors(params, crops: jax.Array, layers: Sequence[str], interior, pooling: str) -> dict:
    """Each layer's features of the crops' interior positions: `interior` ((top, bottom), (left,
    right)) in px within the crop. Relative to the crop, so tiles of one shape and placement
    (every tile away from the edges) share one compiled program."""
    (top, bottom), (left, right) = interior
    features = vgg19_features(params, crops, tuple(layers), pooling=pooling)
    out = {}
    for name in layers:
        s = layer_stride(name)
        out[name] = features[name][:, top // s:bottom // s, left // s:right // s, :]
    return out


_run_interiors = jax.jit(_interiors, static_argnames=("layers", "interior", "pooling"))


def _interior(rows: tuple[int, int, int, int], columns: tuple[int, int, int, int]) -> tuple:
    """The interior of a crop of `_statistic_tiles` spans, relative to the crop (see `_interiors`)."""
    return tuple((span[2] - span[0], span[3] - span[0]) for span in (rows, columns))


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
    run = _run_interiors
    for rows in _statistic_tiles(height, tile, halo):
        for columns in _statistic_tiles(width, tile, halo):
            crop = image[rows[0]:rows[1], columns[0]:columns[1]][None]
            features = run(params, crop, layers, _interior(rows, columns), pooling)
            grams = {name: grams[name] + gram_matrix(features[name][0]) for name in layers}
    out_h, out_w = size or (height, width)
    return {name: grams[name] * (_cells(out_h, out_w, name) / _cells(height, width, name)) for name in layers}


def tiled_features(params, images, layers: Sequence[str], *, tile: int = 512, halo: int = HALO,
                   pooling: str = "max") -> dict:
    """The VGG19 features of whole images (N, H, W, C; grey ones seen in three channels) at
    `layers`, taken tile by tile and gathered from the tiles' interiors: {layer: (N, H // s,
    W // s, C_l)}, equal to `vgg19_features` of the whole images wherever the halo covers the
    layer's receptive field (to 5e-7 of the largest value up to relu5_1 with the default halo)."""
    _check_statistics(tile, halo)
    images = three_channels(jnp.asarray(images, jnp.float32))
    height, width = images.shape[1:3]
    layers = tuple(layers)
    run = _run_interiors
    rows_of = []
    for rows in _statistic_tiles(height, tile, halo):
        row = [run(params, images[:, rows[0]:rows[1], columns[0]:columns[1]], layers, _interior(rows, columns), pooling)
               for columns in _statistic_tiles(width, tile, halo)]
        rows_of.append({name: jnp.concatenate([part[name] for part in row], axis=2) for name in layers})
    return {name: jnp.concatenate([row[name] for row in rows_of], axis=1) for name in layers}


def _guided_sums(features: jax.Array, guides: jax.Array) -> jax.Array:
    """sum over positions of (F o T_r)^T (F o T_r) of NHWC features and guides (R, H, W): (N, R, C, C)."""
    weighted = features[:, None] * guides[None, ..., None].astype(features.dtype)
    flat = weighted.reshape(*weighted.shape[:2], -1, weighted.shape[-1])
    return jnp.einsum("nrmc,nrmd->nrcd", flat, flat)


def _unit_guides(guides: Mapping[str, jax.Array], layers: Sequence[str]) -> dict:
    """Each layer's guides (R, H_l, W_l) of the whole image, each scaled to unit root-mean-square."""
    return {name: jax.vmap(unit_rms)(jnp.asarray(guides[name], jnp.float32)) for name in layers}


def tiled_guided_grams(params, image, guides: Mapping[str, jax.Array], *, tile: int = 512, halo: int = HALO,
                       pooling: str = "max") -> dict:
    """`jaxmosaic.guided_gram_matrix` of an HWC image under R guides at once, taken tile by tile:
    {layer: G_T (R, C, C)} for guides {layer: (R, H // s, W // s)} of the whole image (e.g.
    `jaxmosaic.layer_guides` of each region's mask), each scaled to unit RMS over the whole image."""
    _check_statistics(tile, halo)
    image = three_channels(jnp.asarray(image, jnp.float32))
    height, width = image.shape[:2]
    layers = tuple(guides)
    unit = _unit_guides(guides, layers)
    run = _run_interiors
    sums = {name: 0.0 for name in layers}
    for rows in _statistic_tiles(height, tile, halo):
        for columns in _statistic_tiles(width, tile, halo):
            features = run(params, image[None, rows[0]:rows[1], columns[0]:columns[1]], layers, _interior(rows, columns), pooling)
            for name in layers:
                s = layer_stride(name)
                part = unit[name][:, rows[2] // s:rows[2] // s + features[name].shape[1],
                                  columns[2] // s:columns[2] // s + features[name].shape[2]]
                sums[name] = sums[name] + _guided_sums(features[name], part)[0]
    return {name: sums[name] / _cells(height, width, name) for name in layers}


def tile_guides(mask, top: int, left: int, shape: tuple[int, int], layers: Sequence[str], *, mode: str = "simple",
                grow: int = 0, halo: int = HALO) -> dict:
    """The guides of an optimisation tile of `shape` (height, width) at (top, left) in an image
    whose region mask (H, W) is `mask`: `jaxmosaic.layer_guides` of the mask cropped with `halo`
    px of context each side and brought back to the tile's positions, {layer: (h // s, w // s)},
    so that a position's guide sees the region beyond the tile's edge ("inside", "all" and
    `grow` look that far). Beyond the image the crop holds the value that erosion or dilation
    ignores, as the whole image's padding does: a tile covering the image gets the whole
    image's guides exactly. `halo` is a multiple of 32 px, so the crop's positions line up with
    the tile's at every layer."""
    _check_statistics(_ALIGN, halo)
    mode = GuideMode(mode)
    mask = jnp.asarray(mask, jnp.float32)
    height, width = shape
    erode = mode == GuideMode.inside or (mode == GuideMode.simple and grow < 0)
    padded = jnp.pad(mask, ((halo, halo), (halo, halo)), constant_values=1.0 if erode else 0.0)
    crop = padded[top:top + height + 2 * halo, left:left + width + 2 * halo]
    guides = layer_guides(crop, tuple(layers), mode=mode, grow=grow)
    out = {}
    for name in layers:
        s = layer_stride(name)
        out[name] = guides[name][halo // s:halo // s + height // s, halo // s:halo // s + width // s]
    return out


def tiled_style_terms(params, images, content, grams: Mapping[str, jax.Array], layer_weights: Mapping[str, float],
                      content_layers: Sequence[str] = (), *, tile: int = 512, halo: int = HALO, pooling: str = "max",
                      guides: Mapping[str, jax.Array] | None = None, region_weights: jax.Array | None = None) -> dict:
    """The unweighted style-transfer terms of large images (N, H, W, C) against one content image
    (H, W, 3; None for none) and Gram targets (C, C), or (N, C, C) one per image, taken tile by
    tile: {"content": (N,) (with a content image), "style": (N,), "tv": (N,)} as
    `style_transfer_losses` defines them (grey images are seen in three channels).

    With `guides` {layer: (R, H // s, W // s)} (regions: the whole images' guides, not yet at unit
    RMS) and `region_weights` gw_r (R,), "style" is the guided style loss
    (`jaxmosaic.guided_style_losses`) against guided targets (R, C, C), or (N, R, C, C)."""
    _check_statistics(tile, halo)
    images = jnp.asarray(images, jnp.float32)
    count, height, width = images.shape[:3]
    network = three_channels(images)
    content_layers = tuple(content_layers) if content is not None else ()
    layers = tuple(dict.fromkeys((*content_layers, *layer_weights)))
    run = _run_interiors
    unit = None if guides is None else _unit_guides(guides, tuple(layer_weights))
    sums = {name: 0.0 for name in layer_weights}
    l_content = jnp.zeros(count)
    for rows in _statistic_tiles(height, tile, halo):
        for columns in _statistic_tiles(width, tile, halo):
            crops = network[:, rows[0]:rows[1], columns[0]:columns[1]]
            if content is not None:
                crops = jnp.concatenate([crops, jnp.asarray(content, jnp.float32)[None, rows[0]:rows[1], columns[0]:columns[1]]])
            features = run(params, crops, layers, _interior(rows, columns), pooling)
            for name in content_layers:
                l_content = l_content + 0.5 * jnp.sum(jnp.square(features[name][:count] - features[name][count:]), axis=(1, 2, 3))
            for name in layer_weights:
                mine = features[name][:count]
                if unit is None:
                    sums[name] = sums[name] + gram_matrix(mine)
                    continue
                s = layer_stride(name)
                part = unit[name][:, rows[2] // s:rows[2] // s + mine.shape[1], columns[2] // s:columns[2] // s + mine.shape[2]]
                sums[name] = sums[name] + _guided_sums(mine, part)
    l_style = jnp.zeros(count)
    for name, weight in layer_weights.items():
        target = jnp.asarray(grams[name])
        positions = _cells(height, width, name)
        channels = target.shape[-1]
        if unit is None:
            target = target[None] if target.ndim == 2 else target
            l_style = l_style + weight * jnp.sum(jnp.square(sums[name] - target), axis=(1, 2)) / (4.0 * channels**2 * positions**2)
            continue
        target = target[None] if target.ndim == 3 else target
        per_region = jnp.sum(jnp.square(sums[name] / positions - target), axis=(2, 3))
        l_style = l_style + weight * jnp.sum(per_region * jnp.asarray(region_weights, jnp.float32)[None], axis=1) / (4.0 * channels**2)
    terms = {"content": l_content} if content is not None else {}
    return {**terms, "style": l_style, "tv": tv_losses(images)}
