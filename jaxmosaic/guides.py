"""Spatial control of style transfer and texture synthesis: guided Gram matrices and the guides
that bring a region's mask to each VGG19 layer (Gatys, Ecker, Bethge, Hertzmann and Shechtman,
"Controlling Perceptual Factors in Neural Style Transfer", CVPR 2017).

Masks are float (H, W) arrays in [0, 1] at the image's resolution: 1 inside the region, 0
outside, grey for soft edges. Feature maps are HWC (NHWC for the batched losses). At layer l
with M_l positions, the region's guide T^l is the mask at the layer's resolution scaled to unit
root-mean-square, and

    G_T^l = (1/M_l) (F^l o T^l)^T (F^l o T^l)                      (C_l x C_l)
    E_l = sum_r gw_r / (4 C_l^2) ||G_{T_r}^l(x) - G_{S_r}^l(s_r)||^2

with S_r the style image's guide (ones without a style mask). A guide of ones gives G^l / M_l,
and E_l is then `jaxmosaic.losses.style_layer_loss` exactly. All functions are pure and work
under `jit` and `vmap` (the layer names, the mode and `grow` are static).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.color import luminance
from jaxmosaic.errors import ConfigError, ImageError
from jaxmosaic.vgg import VGG19_LAYERS, check_layers, layer_stride, vgg19_features

__all__ = [
    "GuideMode",
    "Region",
    "RegionSpec",
    "parse_region",
    "load_regions",
    "check_region_mask",
    "unit_rms",
    "guided_gram_matrix",
    "layer_guides",
    "guided_gram_targets",
    "guided_style_layer_losses",
    "guided_style_losses",
    "masked_gram_targets",
]


class GuideMode(enum.StrEnum):
    """How a mask reaches a layer: "simple" resized (block means over the layer's stride, then
    grown or shrunk by `grow` positions); "inside" exactly the positions whose receptive field
    lies wholly inside the region (an erosion through the network's 3x3 convolutions and 2x2
    pools); "all" the positions whose receptive field touches it (a dilation)."""

    simple = "simple"
    inside = "inside"
    all = "all"


def unit_rms(guide: jax.Array) -> jax.Array:
    """The guide scaled so that its root-mean-square is 1 (all zeros stays all zeros)."""
    guide = jnp.asarray(guide)
    rms = jnp.sqrt(jnp.mean(jnp.square(guide)))
    return jnp.where(rms > 0, guide / jnp.where(rms > 0, rms, 1.0), 0.0)


def guided_gram_matrix(features: jax.Array, guide: jax.Array) -> jax.Array:
    """G_T = (1/M) (F o T)^T (F o T) of HWC features (M = H * W positions) and a guide (H, W) at
    the features' resolution, T the guide scaled to unit root-mean-square: (C, C). A guide of
    ones gives `jaxmosaic.gram_matrix(features) / M`."""
    features = jnp.asarray(features)
    height, width, channels = features.shape
    weighted = features.reshape(-1, channels) * unit_rms(guide).reshape(-1, 1).astype(features.dtype)
    return weighted.T @ weighted / (height * width)


def _morph(mask: jax.Array, size: int, stride: int, erode: bool, padding) -> jax.Array:
    """Grey-scale erosion (min) or dilation (max) of (H, W) over size x size windows; padded
    positions take the neutral value, so the image's border counts neither for nor against."""
    init, op = (jnp.inf, jax.lax.min) if erode else (-jnp.inf, jax.lax.max)
    return jax.lax.reduce_window(mask, jnp.asarray(init, mask.dtype), op, (size, size), (stride, stride), padding)


def _grown(guide: jax.Array, grow: int) -> jax.Array:
    if grow == 0:
        return guide
    size = 2 * abs(grow) + 1
    return _morph(guide, size, 1, grow < 0, "SAME")


def _block_mean(mask: jax.Array, stride: int) -> jax.Array:
    height, width = mask.shape[0] // stride, mask.shape[1] // stride
    return mask[: height * stride, : width * stride].reshape(height, stride, width, stride).mean(axis=(1, 3))


def layer_guides(mask: jax.Array, layers: Sequence[str], *, mode: str = "simple", grow: int = 0) -> dict[str, jax.Array]:
    """The region's guide at each layer: {layer: (H // s, W // s)} for a mask (H, W) in [0, 1]
    at the network's input resolution (s the layer's stride), not yet scaled to unit RMS.

    Args:
      mask: (H, W), 1 inside the region.
      layers: VGG19 layer names.
      mode: "simple", "inside" or "all" (see `GuideMode`). "inside" and "all" follow VGG19's own
        geometry: each 3x3 convolution (padding 1) erodes or dilates by one position, each 2x2
        stride-2 pool takes the block's minimum or maximum (flooring odd sizes as the pool does);
        the zero padding at the image's border is no pixel and counts as neither.
      grow: with "simple", positions to dilate (> 0) or erode (< 0) the resized guide by.
    """
    layers = check_layers(tuple(layers))
    mode = GuideMode(mode)
    mask = jnp.asarray(mask)
    if mode == GuideMode.simple:
        return {name: _grown(_block_mean(mask, layer_stride(name)), grow) for name in layers}
    erode = mode == GuideMode.inside
    wanted, deepest = set(layers), max(VGG19_LAYERS.index(name) for name in layers)
    guides, guide = {}, mask
    for name in VGG19_LAYERS[: deepest + 1]:
        if name.startswith("conv"):
            guide = _morph(guide, 3, 1, erode, "SAME")
        elif name.startswith("pool"):
            guide = _morph(guide, 2, 2, erode, "VALID")
        if name in wanted:
            guides[name] = guide
    return guides


def guided_gram_targets(features: Mapping[str, jax.Array], guides: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """{layer: G_T (C, C)} of one image's HWC features under its guides (`layer_guides`)."""
    return {name: guided_gram_matrix(features[name], guides[name]) for name in guides}


def guided_style_layer_losses(features: jax.Array, guides: jax.Array, targets: jax.Array,
                              region_weights: jax.Array) -> jax.Array:
    """E_l = sum_r gw_r ||G_{T_r}(x) - A_r||^2 / (4 C^2) of each image of NHWC features, for R
    regions: guides (R, H, W) at the features' resolution, targets A_r (R, C, C) (per position,
    as `guided_gram_matrix` gives them; (N, R, C, C) one set per image), weights gw_r (R,) -> (N,).
    Each image's Gram matrices are its own products (bitwise what it has alone)."""
    features = jnp.asarray(features)
    features = features if features.ndim == 4 else features[None]
    channels = features.shape[-1]
    targets = jnp.asarray(targets, features.dtype)
    region_weights = jnp.asarray(region_weights, features.dtype)
    losses = []
    for index, image in enumerate(features):
        image_targets = targets[index] if targets.ndim == 4 else targets
        per_region = jnp.stack([jnp.sum(jnp.square(guided_gram_matrix(image, guides[r]) - image_targets[r]))
                                for r in range(guides.shape[0])])
        losses.append(jnp.sum(region_weights * per_region) / (4.0 * channels**2))
    return jnp.stack(losses)


def guided_style_losses(features: Mapping[str, jax.Array], guides: Mapping[str, jax.Array],
                        targets: Mapping[str, jax.Array], layer_weights: Mapping[str, float],
                        region_weights: jax.Array | Mapping[str, jax.Array]) -> jax.Array:
    """L_style = sum_l w_l E_l (`guided_style_layer_losses`) of each image -> (N,). The region
    weights gw_r (R,) are the same at every layer, or {layer: (R,)} one set per layer (a tile of
    a tiled stage weighs each region by the tile's share of it at each layer)."""
    def weights(name):
        return region_weights[name] if isinstance(region_weights, Mapping) else region_weights

    return sum(weight * guided_style_layer_losses(features[name], guides[name], targets[name], weights(name))
               for name, weight in layer_weights.items())


class Region(NamedTuple):
    """One region of a style transfer: where in the output, which style, how much."""

    mask: np.ndarray  # (H, W) in [0, 1], white inside: the content's size or its aspect ratio
    style: np.ndarray | None = None  # HWC style image; None: the next of the transfer's style images
    style_mask: np.ndarray | None = None  # (h, w) over the style image: only its statistics there count
    weight: float | None = None  # gw_r; None: 1 / the number of regions
    name: str = "region"  # what messages call it (its mask file)
    style_mask_name: str | None = None  # what messages call the style mask (its file); None: "NAME (style mask)"


class RegionSpec(NamedTuple):
    """A region as the command line names it (`parse_region`)."""

    mask: str  # the mask file (or a label image)
    color: str | None  # with a label image: "rrggbb", or "*" for one region per colour
    style: str | None
    style_mask: str | None
    weight: float | None


def parse_region(text: str) -> RegionSpec:
    """MASK.png[#RRGGBB|#*][=STYLE.png[:STYLE_MASK.png]][@WEIGHT] as a `RegionSpec`.

    MASK.png#RRGGBB takes the pixels of that colour of a colour-coded label image as the mask;
    LABELS.png#* makes one region of each colour (in the order the colours first appear, row by
    row), each taking the next style image. Without =STYLE a region takes the next style image
    given to the command. Errors are `ConfigError`s of the field "region".
    """
    spec, weight = text.strip(), None
    if "@" in spec:
        spec, _, raw = spec.rpartition("@")
        try:
            weight = float(raw)
        except ValueError:
            raise ConfigError("region", f"{text!r}: the weight after @ must be a number, got {raw!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError("region", f"{text!r}: the weight must be a finite number >= 0, got {raw}")
    mask, _, style = spec.partition("=")
    style, _, style_mask = style.partition(":")
    mask, _, color = mask.partition("#")
    if not mask:
        raise ConfigError("region", f"{text!r}: expected MASK.png[=STYLE.png[:STYLE_MASK.png]][@WEIGHT]")
    color = color.strip().lower().removeprefix("0x") or None
    if color is not None and color != "*" and (len(color) != 6 or any(c not in "0123456789abcdef" for c in color)):
        raise ConfigError("region", f"{text!r}: a label colour is #RRGGBB (six hex digits) or #*, got #{color}")
    if color == "*" and style:
        raise ConfigError("region", f"{text!r}: #* makes one region per colour, each taking the next style image; name no style")
    return RegionSpec(mask, color, style or None, style_mask or None, weight)


def _labels(image: np.ndarray) -> list[tuple[int, int, int]]:
    """The colours of a label image, in the order they first appear row by row."""
    codes = np.round(image * 255).astype(np.int64)
    flat = (codes[..., 0] << 16 | codes[..., 1] << 8 | codes[..., 2]).reshape(-1)
    _, first = np.unique(flat, return_index=True)
    return [tuple(int(v) for v in codes.reshape(-1, 3)[index]) for index in np.sort(first)]


def load_regions(specs: Sequence[str], *, load=None) -> list[Region]:
    """The regions the command line names (`parse_region` syntax), their images read with
    `load` (default `jaxmosaic.io.images.load_image`): a mask is the luminance of its file
    (Rec. 601), a label colour the pixels of exactly that colour (to 8 bits)."""
    if load is None:
        from jaxmosaic.io.images import load_image as load
    regions = []
    for text in specs:
        spec = parse_region(text)
        image = np.asarray(load(spec.mask), np.float32)
        style = None if spec.style is None else np.asarray(load(spec.style), np.float32)
        style_mask = None
        if spec.style_mask is not None:
            style_mask = np.asarray(luminance(np.asarray(load(spec.style_mask), np.float32)))[..., 0]
        if spec.color is None:
            mask = np.asarray(luminance(image))[..., 0]
            regions.append(Region(np.clip(mask, 0.0, 1.0), style, style_mask, spec.weight, spec.mask, spec.style_mask))
            continue
        codes = np.round(image * 255).astype(np.int64)
        colors = _labels(image) if spec.color == "*" else [tuple(int(spec.color[i:i + 2], 16) for i in (0, 2, 4))]
        for color in colors:
            mask = np.all(codes == np.asarray(color), axis=-1).astype(np.float32)
            name = f"{spec.mask}#{color[0]:02x}{color[1]:02x}{color[2]:02x}"
            regions.append(Region(mask, style, style_mask, spec.weight, name, spec.style_mask))
    return regions


def check_region_mask(mask: np.ndarray, height: int, width: int, name: str, *, what: str = "the content") -> None:
    """A mask fits an image of (height, width) when it has its size or its aspect ratio (it is
    resized with the image: its other side, scaled, within a pixel of the image's); and a
    region is not empty. Else an `ImageError` naming the file."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ImageError(f"{name}: a mask must be one image (H, W), got shape {mask.shape}")
    h, w = mask.shape
    if abs(w * height / h - width) > 1.0 and abs(h * width / w - height) > 1.0:
        raise ImageError(f"{name}: the mask is {w}x{h} px, {what} {width}x{height} px; a mask must have its size "
                         f"or its aspect ratio")
    if not np.max(mask) > 0:
        raise ImageError(f"{name}: the region is empty (the mask has no white or grey pixel)")


def masked_gram_targets(params, image: jax.Array, mask: jax.Array, layers: Sequence[str], *,
                        size: tuple[int, int] | None = None, mode: str = "simple", pooling: str = "max") -> dict:
    """The statistics of an image's region as targets for a whole output: {layer: M_l(output)
    G_T^l (C, C)}, G_T the guided Gram matrix of the image's features under the mask's guide
    (`layer_guides`), so that an unguided Gram matrix of an output of `size` (height, width;
    default the image's) compares with it as `jaxmosaic.gram_targets` does (for a mask of ones
    these are `gram_targets` exactly)."""
    layers = check_layers(tuple(layers))
    image = jnp.asarray(image)
    height, width = size or image.shape[:2]
    features = vgg19_features(params, image[None], layers, pooling=pooling)
    guides = layer_guides(jnp.asarray(mask, image.dtype), layers, mode=mode)
    out = {}
    for name in layers:
        stride = layer_stride(name)
        out[name] = guided_gram_matrix(features[name][0], guides[name]) * ((height // stride) * (width // stride))
    return out
