"""What a photomosaic compares: weight-free colour features, metapixel's subpixel metric, VGG19
activations or the original article's AlexNet features of patches and tiles, L2-normalised, computed on the view of an image
that the colouring leaves to compare.

Images are float32 RGB in [0, 1], NHWC. The array functions are pure and jit-able.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.alexnet import alexnet_features, check_alexnet_layers, flatten_channels_first
from jaxmosaic.color import luminance, rgb_to_lab, rgb_to_yiq
from jaxmosaic.config import ConfigError, choice, numbers, whole
from jaxmosaic.image import resize
from jaxmosaic.search import l2_normalize
from jaxmosaic.vgg import check_layers, vgg19_features

__all__ = [
    "FeatureKind",
    "SubpixelSpace",
    "SUBPIXEL_GRID",
    "PatchPool",
    "ColorMode",
    "FeatureConfig",
    "matching_view",
    "view_for",
    "color_features",
    "area_downscale",
    "subpixels",
    "subpixel_features",
    "vgg_patch_features",
    "alexnet_patch_features",
    "feature_function",
    "batched_features",
    "FEATURE_BATCH",
]

FEATURE_BATCH = 128


class FeatureKind(enum.StrEnum):
    """color: a grid of mean CIE Lab colours (no weights); vgg: one VGG19 layer's activations;
    alexnet: AlexNet's avgpool (9216 values at any input size), the original article's features;
    subpixel: metapixel's metric, a 5 x 5 downscale in a chosen colour space (no weights)."""

    color = "color"
    vgg = "vgg"
    alexnet = "alexnet"
    subpixel = "subpixel"

    @property
    def network(self) -> str | None:
        """The weights these features need: "vgg19", "alexnet", or None."""
        return {"vgg": "vgg19", "alexnet": "alexnet"}.get(self.value)

    @property
    def typical_dimension(self) -> int:
        """The length of a feature row at this kind's default settings (color: a 4 x 4 grid; vgg:
        relu4_1's 512 channels averaged; alexnet: avgpool flattened), for estimates made before
        the settings are known."""
        return {"color": 64, "vgg": 512, "alexnet": 9216, "subpixel": SUBPIXEL_GRID**2 * 3 + 2}[self.value]


SUBPIXEL_GRID = 5
"""Subpixels per side of the subpixel features (metapixel's NUM_SUBPIXEL_ROWS_COLS)."""


class SubpixelSpace(enum.StrEnum):
    """The colour space subpixels are compared in (metapixel's three; hsv is its default)."""

    rgb = "rgb"
    hsv = "hsv"
    yiq = "yiq"


class PatchPool(enum.StrEnum):
    """How a VGG19 activation map becomes a vector: its spatial mean, or the whole map flattened."""

    mean = "mean"
    flat = "flat"


class ColorMode(enum.StrEnum):
    """How a tile takes its patch's colour (see `colorize`); "auto" is resolved by the caller."""

    auto = "auto"
    none = "none"
    multiply = "multiply"
    transfer = "transfer"
    blend = "blend"
    reinhard = "reinhard"


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Everything a library's feature rows depend on: two libraries with equal FeatureConfigs
    (and the same tiles) have the same rows."""

    kind: FeatureKind = FeatureKind.color
    view: ColorMode = ColorMode.none  # the colour mode whose `matching_view` is applied
    grid: int = 4  # color: cells per side
    size: int = 16  # the side tiles and patches are resized to before the features
    layer: str = "relu4_1"  # vgg, alexnet
    pool: PatchPool = PatchPool.mean  # vgg, alexnet
    weights: str = ""  # vgg, alexnet: a fingerprint of the network's weights
    subpixel_space: SubpixelSpace = SubpixelSpace.hsv  # subpixel: the colour space
    subpixel_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # subpixel: each channel's weight

    def __post_init__(self):
        object.__setattr__(self, "kind", choice("kind", self.kind, FeatureKind))
        object.__setattr__(self, "subpixel_space", choice("subpixel_space", self.subpixel_space, SubpixelSpace))
        object.__setattr__(self, "subpixel_weights", check_subpixel_weights(self.subpixel_weights))
        object.__setattr__(self, "view", choice("view", self.view, ColorMode))
        object.__setattr__(self, "pool", choice("pool", self.pool, PatchPool))
        whole("grid", self.grid, minimum=1, maximum=64)
        whole("size", self.size, minimum=max(self.grid, 1), maximum=1024)
        if self.kind == FeatureKind.alexnet:
            check_alexnet_layers((self.layer,), "layer")
            if self.size < 63:
                raise ConfigError("size", f"{self.size} px is too small for AlexNet (at least 63)")
        else:
            check_layers((self.layer,), "layer")

    @classmethod
    def color(cls, view: str, grid: int = 4) -> FeatureConfig:
        return cls(FeatureKind.color, view, grid=grid, size=max(grid, 16))

    @classmethod
    def subpixel(cls, view: str, *, space: str = "hsv", weights=(1.0, 1.0, 1.0), size: int = 20) -> FeatureConfig:
        """metapixel's subpixel metric: tiles are loaded at `size` px, then area-averaged to 5 x 5."""
        return cls(FeatureKind.subpixel, view, size=size, subpixel_space=space, subpixel_weights=weights)

    @classmethod
    def vgg(cls, view: str, *, layer: str = "relu4_1", pool: str = "mean", size: int = 64, weights: str = "") -> FeatureConfig:
        return cls(FeatureKind.vgg, view, size=size, layer=layer, pool=pool, weights=weights)

    @classmethod
    def alexnet(cls, view: str, *, layer: str = "avgpool", pool: str = "flat", size: int = 224, weights: str = "") -> FeatureConfig:
        """The original article's features: AlexNet's avgpool of the image resized to 224 px, flattened (9216)."""
        return cls(FeatureKind.alexnet, view, size=size, layer=layer, pool=pool, weights=weights)

    @property
    def dimension(self) -> int:
        """The length t of a feature row (for a network, from the shapes of its program, without weights)."""
        if self.kind == FeatureKind.color:
            return self.grid * self.grid * 4
        if self.kind == FeatureKind.subpixel:
            return FeatureKind.subpixel.typical_dimension
        return _network_dimension(self)

    def as_dict(self) -> dict:
        """The settings as JSON values (they key cached libraries). The subpixel fields appear only
        for subpixel features, so the other kinds' dicts, and their caches' keys, are unchanged."""
        plain = {name: str(value) if isinstance(value, enum.Enum) else list(value) if isinstance(value, tuple) else value
                 for name, value in dataclasses.asdict(self).items()}
        if self.kind != FeatureKind.subpixel:
            del plain["subpixel_space"], plain["subpixel_weights"]
        return plain


def check_subpixel_weights(weights) -> tuple[float, float, float]:
    """Three channel weights, each in [0, 1000], not all 0 (metapixel's --weights)."""
    weights = numbers("subpixel_weights", weights, count=3, minimum=0.0, maximum=1000.0)
    if not any(weights):
        raise ConfigError("subpixel_weights", "all three weights are 0: nothing would be compared")
    return weights


def view_for(color_mode: str) -> ColorMode:
    """The `matching_view` a colour mode needs ("blend" compares colours as "none" does)."""
    mode = ColorMode(color_mode)
    if mode == ColorMode.auto:
        raise ValueError("resolve the colour mode 'auto' before asking for its view")
    if mode == ColorMode.reinhard:  # it replaces the tile's Lab mean and spread, as transfer does its RGB ones
        return ColorMode.transfer
    return ColorMode.none if mode == ColorMode.blend else mode


def matching_view(images: jax.Array, color_mode: str) -> jax.Array:
    """What matching compares, given how tiles will be coloured afterwards.

    "none" and "blend" show tiles as they are, so colour matters. "multiply" replaces a tile's
    colour by the patch's mean colour, so only luminance structure is compared. "transfer" also
    replaces the tile's mean and contrast, so luminance is compared after standardising each
    image to mean 0.5 and standard deviation 0.2 (flat images stay flat).
    """
    if color_mode in (ColorMode.none, ColorMode.blend):
        return images
    grey = luminance(images)
    if color_mode == ColorMode.multiply:
        return jnp.repeat(grey, 3, axis=-1)
    if color_mode == ColorMode.transfer:
        mean = jnp.mean(grey, axis=(-3, -2, -1), keepdims=True)
        std = jnp.std(grey, axis=(-3, -2, -1), keepdims=True)
        return jnp.repeat(0.5 + 0.2 * (grey - mean) / jnp.maximum(std, 1e-3), 3, axis=-1)
    raise ValueError(f"color mode must be one of none, multiply, transfer, blend, got {color_mode!r}")


def color_features(images: jax.Array, grid: int = 4) -> jax.Array:
    """Weight-free features: the mean CIE Lab colour of each cell of a grid x grid split
    (metapixel's idea, with Lab instead of YIQ), L2-normalised.

    Each cell contributes (L/100, a/100, b/100, 0.5): the constant keeps brightness in the
    features, since L2 normalisation alone would make a dark grey and a light grey identical.

    Args:
      images: NHWC, each at least grid x grid.
      grid: cells per side (static).

    Returns:
      (N, grid * grid * 4) unit rows.
    """
    images = jnp.asarray(images)
    cells = resize(images, grid, grid, method="linear") if images.shape[-3:-1] != (grid, grid) else images
    lab = rgb_to_lab(cells) / 100.0
    features = jnp.concatenate([lab, jnp.full((*lab.shape[:-1], 1), 0.5, lab.dtype)], axis=-1)
    return l2_normalize(features.reshape(images.shape[0], -1))


def area_downscale(images: jax.Array, height: int, width: int) -> jax.Array:
    """(..., H, W, C) -> (..., height, width, C) by area averaging: each output pixel is the mean of
    the input pixels it covers, a pixel covered in part weighted by the part (OpenCV's INTER_AREA
    when shrinking). Exact for any sizes, e.g. a 16 px patch to 5 x 5. `height`, `width` static."""
    images = jnp.asarray(images)

    def weights(source: int, target: int) -> np.ndarray:
        edges = np.arange(target + 1) * source / target  # output pixel i covers [edges[i], edges[i + 1])
        pixels = np.arange(source)
        overlap = np.minimum(edges[1:, None], pixels[None] + 1) - np.maximum(edges[:-1, None], pixels[None])
        return np.clip(overlap, 0, None) * target / source

    rows = jnp.asarray(weights(images.shape[-3], height), images.dtype)
    cols = jnp.asarray(weights(images.shape[-2], width), images.dtype)
    return jnp.einsum("ih,jw,...hwc->...ijc", rows, cols, images)


def _metapixel_hsv(rgb: jax.Array) -> jax.Array:
    """metapixel's RGB -> HSV (color.c): v = max, s = (max - min) / max, h in [0, 1) with red at
    0 and h = 0 for greys; all three in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high, low = jnp.max(rgb, axis=-1), jnp.min(rgb, axis=-1)
    delta = high - low
    saturation = jnp.where(high > 0, delta / jnp.where(high > 0, high, 1.0), 0.0)
    safe = jnp.where(delta > 0, delta, 1.0)
    hue = jnp.where(r == high, (g - b) / safe, jnp.where(g == high, 2 + (b - r) / safe, 4 + (r - g) / safe)) / 6.0
    hue = jnp.where(saturation > 0, jnp.where(hue < 0, hue + 1.0, hue), 0.0)
    return jnp.stack([hue, saturation, high], axis=-1)


def subpixels(images: jax.Array, *, space: str = "hsv") -> jax.Array:
    """metapixel's subpixels: NHWC RGB area-averaged to 5 x 5 (`area_downscale`; metapixel scales
    with a Mitchell filter), then converted to `space` ("rgb", "hsv" or "yiq"), in [0, 1] where
    metapixel has bytes 0..255, without its rounding to bytes. Its YIQ clips I and Q to [0, 1],
    losing every colour with a negative I or Q; here they keep their sign (I in +-0.60, Q in
    +-0.53), so blue and green stay apart. Its hue is compared as a number, not an angle; so here.

    Returns:
      (N, 5, 5, 3).
    """
    cells = area_downscale(jnp.asarray(images), SUBPIXEL_GRID, SUBPIXEL_GRID)
    space = SubpixelSpace(space)
    if space == SubpixelSpace.hsv:
        return _metapixel_hsv(cells)
    if space == SubpixelSpace.yiq:
        return rgb_to_yiq(cells)
    return cells


def subpixel_features(images: jax.Array, *, space: str = "hsv", weights=(1.0, 1.0, 1.0), patches: bool = False) -> jax.Array:
    """Unit rows whose inner products rank tiles as metapixel's subpixel metric does.

    metapixel scores a patch s against a tile t by sum_c w_c sum_i (s_ic - t_ic)^2 over the 75
    `subpixels` (smaller is better). With v = sqrt(w_c) * subpixels that is ||v_s - v_t||^2, and
    -||v_s - v_t||^2 / 2 = v_s . v_t - ||v_t||^2 / 2 - ||v_s||^2 / 2: a tile's row is
    (v_t, -||v_t||^2 / 2, h) / M and a patch's (v_s, 1, 0) / ||(v_s, 1)||, with h lifting every
    tile row to the same norm M (the bound of ||(v, -||v||^2 / 2)|| over all subpixels in range).
    Their inner product is (||v_s||^2 - ||v_s - v_t||^2) / (2 M ||(v_s, 1)||): for each patch the
    tiles come in exactly metapixel's order (an SVD of the library's rows, --svd-k, approximates it).

    Args:
      images: NHWC RGB in [0, 1], any size.
      space: "rgb", "hsv" (metapixel's default) or "yiq".
      weights: the three channels' weights (metapixel's default 1, 1, 1).
      patches: the rows of patches (the queries) rather than of tiles.

    Returns:
      (N, 77) unit rows.
    """
    cells = subpixels(images, space=space)
    scale = jnp.sqrt(jnp.asarray(weights, cells.dtype)).reshape(1, 1, 1, 3)
    v = (cells * scale).reshape(cells.shape[0], -1)
    norms = jnp.sum(v * v, axis=-1, keepdims=True)
    if patches:
        return jnp.concatenate([v, jnp.ones_like(norms), jnp.zeros_like(norms)], axis=-1) / jnp.sqrt(norms + 1.0)
    largest = SUBPIXEL_GRID**2 * float(sum(weights))  # ||v||^2 with every subpixel value at 1
    bound = largest + largest**2 / 4
    lift = jnp.sqrt(jnp.maximum(bound - norms - norms**2 / 4, 0.0))
    return jnp.concatenate([v, -norms / 2, lift], axis=-1) / jnp.sqrt(jnp.asarray(bound, v.dtype))


def _pooled_rows(maps: jax.Array, pool: str, flatten: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """NHWC activation maps as L2-normalised rows: their spatial mean ("mean") or `flatten`ed ("flat")."""
    if pool == PatchPool.mean:
        return l2_normalize(jnp.mean(maps, axis=(1, 2)))
    if pool == PatchPool.flat:
        return l2_normalize(flatten(maps))
    raise ValueError(f"pool must be 'mean' or 'flat', got {pool!r}")


def vgg_patch_features(params, images: jax.Array, *, layer: str = "relu4_1", size: int = 64, pool: str = "mean",
                       pooling: str = "max") -> jax.Array:
    """VGG19 features of images resized to size x size: one layer, spatially averaged ("mean",
    C features) or flattened ("flat", C * H * W), L2-normalised.

    Args:
      params: VGG19 params.
      images: NHWC.
      layer: one of `vgg.VGG19_LAYERS` (static).
      size: side the images are resized to before the network (static).
      pool: "mean" or "flat" (static).
    """
    images = resize(jnp.asarray(images), size, size)
    maps = vgg19_features(params, images, (layer,), pooling=pooling)[layer]
    return _pooled_rows(maps, pool, lambda m: m.reshape(m.shape[0], -1))


def alexnet_patch_features(params, images: jax.Array, *, layer: str = "avgpool", size: int = 224,
                           pool: str = "flat") -> jax.Array:
    """AlexNet features of images resized to size x size, the original photomosaic's
    `avgpool(features(x))` flattened in PyTorch's order ("flat": 9216 values for avgpool) or
    spatially averaged ("mean"), L2-normalised.

    Args:
      params: AlexNet params.
      images: NHWC.
      layer: one of `alexnet.ALEXNET_LAYERS` (static).
      size: side the images are resized to before the network (static).
      pool: "flat" or "mean" (static).
    """
    images = jnp.asarray(images)
    if images.shape[1:3] != (size, size):
        images = resize(images, size, size)
    maps = alexnet_features(params, images, (layer,))[layer]
    return _pooled_rows(maps, pool, flatten_channels_first)


def feature_program(config: FeatureConfig, *, patches: bool = False) -> Callable:
    """The pure function (params, NHWC images) -> (N, t) rows that `config` describes (params is
    ignored by colour and subpixel features); `patches`: the rows of the target's patches, which
    differ from the tiles' for subpixel features only (see `subpixel_features`)."""
    if config.kind == FeatureKind.subpixel:
        options = {"space": config.subpixel_space, "weights": config.subpixel_weights, "patches": patches}
        return lambda params, images: subpixel_features(matching_view(images, config.view), **options)
    if config.kind == FeatureKind.color:
        grid, view, size = config.grid, config.view, config.size
        return lambda params, images: color_features(matching_view(resize(images, size, size), view), grid)
    options = {"layer": config.layer, "size": config.size, "pool": config.pool}
    network = vgg_patch_features if config.kind == FeatureKind.vgg else alexnet_patch_features
    return lambda params, images: network(params, matching_view(images, config.view), **options)


@functools.cache
def _network_dimension(config: FeatureConfig) -> int:
    """The width of `feature_program(config)`'s rows, traced on abstract weights of the network's shapes."""
    from jaxmosaic.weights import ARCHS

    params = {name: {"kernel": jax.ShapeDtypeStruct((height, width, inputs, outputs), jnp.float32),
                     "bias": jax.ShapeDtypeStruct((outputs,), jnp.float32)}
              for name, (outputs, inputs, height, width) in ARCHS[config.kind.network].shapes.items()}
    images = jax.ShapeDtypeStruct((1, config.size, config.size, 3), jnp.float32)
    return int(jax.eval_shape(feature_program(config), params, images).shape[-1])


def feature_function(config: FeatureConfig, params=None, *, patches: bool = False) -> Callable[[jax.Array], jax.Array]:
    """A function from NHWC images (any size; resized to `config.size`) to (N, t) feature rows,
    jitted once (the network's weights are an argument, not constants of the program); `patches`:
    the rows of the target's patches (see `feature_program`)."""
    if config.kind.network and params is None:
        raise ValueError(f"{config.kind} features need {config.kind.network} weights")
    compute = jax.jit(feature_program(config, patches=patches))
    return lambda images: compute(params, images)


def batched_features(fn: Callable, images: np.ndarray, batch: int = FEATURE_BATCH) -> np.ndarray:
    """`fn` over `images` in fixed-size batches (the last padded), so it compiles once."""
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)]) if len(chunk) < batch else chunk
        out.append(np.asarray(fn(jnp.asarray(padded)))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
