"""What a photomosaic compares: weight-free colour features, VGG19 activations or the original
article's AlexNet features of patches and tiles, L2-normalised, computed on the view of an image
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
from jaxmosaic.color import luminance, rgb_to_lab
from jaxmosaic.config import ConfigError, choice, whole
from jaxmosaic.image import resize
from jaxmosaic.search import l2_normalize
from jaxmosaic.vgg import check_layers, vgg19_features

__all__ = [
    "FeatureKind",
    "PatchPool",
    "ColorMode",
    "FeatureConfig",
    "matching_view",
    "view_for",
    "color_features",
    "vgg_patch_features",
    "alexnet_patch_features",
    "feature_function",
    "batched_features",
    "FEATURE_BATCH",
]

FEATURE_BATCH = 128


class FeatureKind(enum.StrEnum):
    """color: a grid of mean CIE Lab colours (no weights); vgg: one VGG19 layer's activations;
    alexnet: AlexNet's avgpool (9216 values at any input size), the original article's features."""

    color = "color"
    vgg = "vgg"
    alexnet = "alexnet"

    @property
    def network(self) -> str | None:
        """The weights these features need: "vgg19", "alexnet", or None."""
        return {"vgg": "vgg19", "alexnet": "alexnet"}.get(self.value)

    @property
    def typical_dimension(self) -> int:
        """The length of a feature row at this kind's default settings (color: a 4 x 4 grid; vgg:
        relu4_1's 512 channels averaged; alexnet: avgpool flattened), for estimates made before
        the settings are known."""
        return {"color": 64, "vgg": 512, "alexnet": 9216}[self.value]


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

    def __post_init__(self):
        object.__setattr__(self, "kind", choice("kind", self.kind, FeatureKind))
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
        return _network_dimension(self)

    def as_dict(self) -> dict:
        return {name: str(value) if isinstance(value, enum.Enum) else value for name, value in dataclasses.asdict(self).items()}


def view_for(color_mode: str) -> ColorMode:
    """The `matching_view` a colour mode needs ("blend" compares colours as "none" does)."""
    mode = ColorMode(color_mode)
    if mode == ColorMode.auto:
        raise ValueError("resolve the colour mode 'auto' before asking for its view")
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


def feature_program(config: FeatureConfig) -> Callable:
    """The pure function (params, NHWC images) -> (N, t) rows that `config` describes (params is
    ignored by colour features)."""
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


def feature_function(config: FeatureConfig, params=None) -> Callable[[jax.Array], jax.Array]:
    """A function from NHWC images (any size; resized to `config.size`) to (N, t) feature rows,
    jitted once (the network's weights are an argument, not constants of the program)."""
    if config.kind != FeatureKind.color and params is None:
        raise ValueError(f"{config.kind} features need {config.kind.network} weights")
    compute = jax.jit(feature_program(config))
    return lambda images: compute(params, images)


def batched_features(fn: Callable, images: np.ndarray, batch: int = FEATURE_BATCH) -> np.ndarray:
    """`fn` over `images` in fixed-size batches (the last padded), so it compiles once."""
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)]) if len(chunk) < batch else chunk
        out.append(np.asarray(fn(jnp.asarray(padded)))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
