"""Neural style transfer (Gatys, Ecker and Bethge 2015): pixels optimised so that their VGG19
content features match one image and their Gram matrices match another's.

    L = alpha L_content + beta L_style + tv_weight TV        (definitions in `jaxmosaic.losses`)

Defaults are the paper's: content relu4_2; style relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 with
w_l = 1/5; alpha / beta = 1e-3; L-BFGS. Images are float32 in [0, 1], HWC; the optimised pixels
are unconstrained and clipped to [0, 1] when returned.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.color import match_color, match_luminance, rgb_to_yiq, yiq_to_rgb
from jaxmosaic.config import ConfigError, choice, layer_weights, names, number, numbers, setting, whole, wholes
from jaxmosaic.distribution_losses import (HISTOGRAM_BINS, Directions, DistributionTargets, Loss, check_loss, distribution_targets, distribution_terms,
                                           image_distribution_targets, region_distribution_terms, region_positions, stack_targets)
from jaxmosaic.errors import ImageError
from jaxmosaic.guides import GuideMode, Region, check_region_mask, guided_gram_matrix, guided_style_losses, layer_guides
from jaxmosaic.image import fit_shape, resize
from jaxmosaic.losses import content_losses, gram_targets, style_losses, tv_losses
from jaxmosaic.resources import activation_bytes, held_bytes, optimisation_bytes
from jaxmosaic.stages import Problem, Progress, Resume, Solution, per_image, solve
from jaxmosaic.techniques.common import SynthesisConfig, plan_steps, synthesis_stage, tile_note, tile_plan, tiled_terms
from jaxmosaic.tiled_losses import (HALO, position_share, statistic_tile, tile_guides, tiled_features, tiled_grams,
                                    tiled_guided_grams, tiled_style_terms)
from jaxmosaic.tiling import TilePlan
from jaxmosaic.vgg import Pooling, check_layers, layer_channels, layer_stride, smallest_side, three_channels, vgg19_features

__all__ = [
    "CONTENT_LAYERS",
    "STYLE_LAYERS",
    "INITS",
    "ColorControl",
    "StyleConfig",
    "StyleInputs",
    "StyleTargets",
    "style_targets",
    "style_transfer_loss",
    "style_transfer_losses",
    "keep_colors",
    "color_controlled",
    "layer_sources",
    "style_memory",
    "style_tiles",
    "style_problem",
    "style_transfer",
]

CONTENT_LAYERS = ("relu4_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
INITS = ("noise", "content", "style")


class ColorControl(enum.StrEnum):
    """What a style transfer keeps of the content's colours (Gatys et al., "Controlling Perceptual
    Factors in Neural Style Transfer"): "luminance" transfers on luminance only and takes the
    result's chroma from the content; "pca", "cholesky" and "symmetric" map the style images'
    colours linearly to the content's mean and covariance first (`jaxmosaic.match_color`)."""

    none = "none"
    luminance = "luminance"
    pca = "pca"
    cholesky = "cholesky"
    symmetric = "symmetric"


def layer_sources(spec: str) -> tuple[tuple[str, ...], str]:
    """"relu1_1,relu2_1=FINE.png" as ((layers), image path): the style layers whose targets come
    from that image (`StyleInputs.layer_styles`); a `ConfigError` of "style_layers_from" else."""
    layers, _, path = str(spec).partition("=")
    layers = tuple(name.strip() for name in layers.split(",") if name.strip())
    if not layers or not path.strip():
        raise ConfigError("style_layers_from", f"{spec!r}: expected LAYER[,LAYER...]=IMAGE, e.g. relu1_1,relu2_1=fine.png")
    return check_layers(layers, "style_layers_from"), path.strip()


@dataclasses.dataclass(frozen=True, kw_only=True)
class StyleConfig(SynthesisConfig):
    """Settings of a style transfer; the defaults are the paper's (L-BFGS included)."""

    size: int = setting(512, "Longest side of the output.")
    scales: tuple[int, ...] | None = setting(None, "Coarse to fine, e.g. 256,512: each scale starts from the previous result upsampled (overrides --size).")
    steps: tuple[int, ...] = setting((500,), "Iterations: one count, or one per scale (e.g. 300,100).", resume=False)
    style_blend: tuple[float, ...] | None = setting(None, "Blend weights of the style images, e.g. 2,1 (default: equal).")
    batch: bool = setting(False, "One output per style image, optimised together in one compiled call.")
    content_layers: tuple[str, ...] = setting(CONTENT_LAYERS, "Comma-separated VGG19 layers for content.")
    style_layers: tuple[str, ...] = setting(STYLE_LAYERS, "Comma-separated VGG19 layers for style.")
    layer_weights: tuple[float, ...] | None = setting(None, "w_l per style layer (default: equal, summing to 1).")
    content_weight: float = setting(1.0, "alpha.")
    style_weight: float = setting(1e3, "beta (alpha / beta = 1e-3 in the paper).")
    tv_weight: float = setting(0.0, "Weight of the squared total variation (smoothness).")
    pooling: Pooling = setting(Pooling.max, "VGG19 pooling.")
    init: str = setting("noise", "noise (seeded), content, style, or an image path.")
    style_scale: float = setting(1.0, "Style image size relative to the output's.")
    loss: Loss = setting(Loss.gram, "The style statistic matched at every style layer: gram, sw (sliced Wasserstein), hist (histograms) or gram+hist.")
    directions: Directions = setting(Directions.fixed, "sw: fixed (drawn once per scale, what L-BFGS needs) or random (new ones at every step; adam or sgd).")
    original_colors: bool = setting(False, "Keep the content's colours: the same as --color-control luminance.")
    color_control: ColorControl = setting(
        ColorControl.none, "Colour control: luminance (transfer luminance only, the content's chroma kept, YIQ), or the "
                           "style images' colours mapped to the content's first: pca, cholesky or symmetric; or none.")
    guides: GuideMode = setting(GuideMode.simple, "How --region masks reach each layer: simple (resized), inside (positions "
                                                  "whose receptive field lies inside the region) or all (that touch it).")
    guide_grow: int = setting(0, "With --guides simple: grow (> 0) or shrink (< 0) each layer's guide by this many positions.")
    style_layers_from: str | None = setting(
        None, "Scale control: these style layers' targets from another image, e.g. relu1_1,relu2_1=FINE.png (the other "
              "layers from the style images).", parse=str, example="LAYERS=IMAGE")

    def __post_init__(self):
        super().__post_init__()
        put = functools.partial(object.__setattr__, self)
        whole("size", self.size, minimum=16)
        if self.scales is not None:
            put("scales", wholes("scales", self.scales, minimum=16))
        put("steps", wholes("steps", self.steps, minimum=1))
        if len(self.steps) not in (1, len(self.sizes)):
            raise ConfigError("steps", f"has {len(self.steps)} counts for {len(self.sizes)} scales")
        if self.style_blend is not None:
            put("style_blend", numbers("style_blend", self.style_blend, minimum=0.0))
            if sum(self.style_blend) <= 0:
                raise ConfigError("style_blend", "the weights must not all be zero")
            if self.batch:
                raise ConfigError("style_blend", "does not go with batch, which makes one output per style")
        put("content_layers", check_layers(names("content_layers", self.content_layers), "content_layers"))
        put("style_layers", check_layers(names("style_layers", self.style_layers), "style_layers"))
        if self.layer_weights is not None:
            put("layer_weights", tuple(layer_weights("layer_weights", self.style_layers, self.layer_weights).values()))
        for name in ("content_weight", "style_weight", "tv_weight"):
            put(name, number(name, getattr(self, name), minimum=0.0))
        put("pooling", choice("pooling", self.pooling, Pooling))
        if not str(self.init).strip():
            raise ConfigError("init", "expected noise, content, style or an image path")
        put("style_scale", number("style_scale", self.style_scale, above=0.0, maximum=64.0))
        check_loss(self)
        put("color_control", choice("color_control", self.color_control, ColorControl))
        put("guides", choice("guides", self.guides, GuideMode))
        whole("guide_grow", self.guide_grow, minimum=-64, maximum=64)
        if self.guide_grow and self.guides != GuideMode.simple:
            raise ConfigError("guide_grow", f"goes with --guides simple; {self.guides.value} guides follow the network's geometry")
        if self.style_layers_from is not None:
            layers, _ = layer_sources(self.style_layers_from)
            unused = [name for name in layers if name not in self.style_layers]
            if unused:
                raise ConfigError("style_layers_from", f"{', '.join(unused)} is not one of the style layers "
                                                       f"({', '.join(self.style_layers)})")
        if self.original_colors:
            if self.color_control not in (ColorControl.none, ColorControl.luminance):
                raise ConfigError("original_colors", f"is --color-control luminance; it does not go with {self.color_control.value}")
            put("color_control", ColorControl.luminance)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The longest side at each scale."""
        return self.scales or (self.size,)

    @property
    def step_counts(self) -> tuple[int, ...]:
        """The steps at each scale."""
        return self.steps * len(self.sizes) if len(self.steps) == 1 else self.steps

    @property
    def layer_weight_map(self) -> dict[str, float]:
        """{style layer: w_l}."""
        return layer_weights("layer_weights", self.style_layers, self.layer_weights)


class StyleInputs(NamedTuple):
    """The images a style transfer reads."""

    content: np.ndarray  # HWC in [0, 1]
    styles: Sequence[np.ndarray]  # HWC images
    init: np.ndarray | None = None  # the starting image, when the config's init is a path
    names: Sequence[str] = ()  # what to call the style images in messages (e.g. their files)
    regions: Sequence[Region] = ()  # spatial control: each region's mask, style, style mask and weight
    layer_styles: Mapping[str, np.ndarray] | None = None  # scale control: {style layer: the image its target comes from}


class StyleTargets(NamedTuple):
    """What a style transfer matches: the content features P^l and the style Gram matrices A^l,
    or other statistics (`--loss`); with regions each region's, at the region's positions."""

    content: dict  # layer -> P, the content image's (H, W, C) features (batched: (B, H, W, C))
    grams: dict  # layer -> A, the blended style Gram matrix (C, C) (batched: (B, C, C))
    statistics: DistributionTargets | tuple | None = None  # --loss sw, hist, gram+hist: `jaxmosaic.distribution_targets`;
    # regions: one per region (of its style image's positions), a tuple
    guides: dict | None = None  # regions: layer -> (R, H, W) the output's guides; grams then layer -> (R, C, C) per position
    region_weights: jax.Array | dict | None = None  # regions: gw_r, (R,) (a tile: layer -> (R,) for the Gram terms)
    positions: tuple | None = None  # regions, --loss sw, hist, gram+hist: per region, layer -> (K,) int32, the output's
    # positions in the region (`jaxmosaic.distribution_losses.region_positions`; a tile's padded with -1)
    distribution_weights: dict | None = None  # regions in a tile: layer -> (R,) the sw and hist terms' gw_r (else region_weights)


def style_targets(params, content: jax.Array, styles: Sequence[jax.Array], *, blend: Sequence[float] | None = None,
                  content_layers: Sequence[str] = CONTENT_LAYERS, style_layers: Sequence[str] = STYLE_LAYERS,
                  pooling: str = "max") -> StyleTargets:
    """The content features P^l and the style Gram matrices A^l to match.

    Several style images are blended as neural-style does: A^l = sum_i b_i A_i^l with the blend
    weights b normalised to sum 1. A style image of another size than the content is rescaled to
    the content's number of positions (`jaxmosaic.losses.gram_targets`), so E_l compares Gram
    matrices per position (for equal sizes this is the paper's A^l exactly).
    """
    content_layers, style_layers = tuple(content_layers), tuple(style_layers)
    blend = np.full(len(styles), 1.0 / len(styles)) if blend is None else np.asarray(blend, np.float64) / np.sum(blend)
    content_features = vgg19_features(params, jnp.asarray(content)[None], content_layers, pooling=pooling)
    grams = {name: 0.0 for name in style_layers}
    for weight, style in zip(blend, styles):
        style_grams = gram_targets(params, style, style_layers, size=content.shape[:2], pooling=pooling)
        grams = {name: grams[name] + float(weight) * style_grams[name] for name in style_layers}
    return StyleTargets({name: content_features[name][0] for name in content_layers}, grams)


def style_transfer_losses(x: jax.Array, targets: StyleTargets, params, *, layer_weights: Mapping[str, float], alpha=1.0,
                          beta=1e3, tv_weight=0.0, pooling: str = "max", loss: str = "gram") -> tuple[jax.Array, dict]:
    """The loss of each image of an NHWC batch, the network run once on the whole batch:
    (totals (N,), {"content", "style", "tv"}: (N,) each). `targets` are shared by the batch or
    hold one entry per image (content features (N, H, W, C), Gram matrices (N, C, C)). With
    another `loss` than "gram", "style" is the sum of its terms (`jaxmosaic.distribution_terms`);
    with regions (`targets.guides`) the guided Gram terms and each region's sw or hist terms at
    its positions (`jaxmosaic.distribution_losses.region_distribution_terms`)."""
    layers = tuple(dict.fromkeys((*targets.content, *layer_weights)))
    features = vgg19_features(params, x, layers, pooling=pooling)
    l_content = sum(content_losses(features[name], targets.content[name]) for name in targets.content)
    if targets.guides is not None:
        l_style = 0.0
        if Loss(loss) in (Loss.gram, Loss.gram_hist):
            l_style = guided_style_losses(features, targets.guides, targets.grams, layer_weights, targets.region_weights)
        if Loss(loss) != Loss.gram:
            weights = targets.region_weights if targets.distribution_weights is None else targets.distribution_weights
            l_style = l_style + sum(region_distribution_terms(features, targets.positions, targets.statistics, layer_weights,
                                                              weights, loss=loss, pixels=x).values())
    elif Loss(loss) == Loss.gram:
        l_style = style_losses({name: features[name] for name in layer_weights}, targets.grams, layer_weights)
    else:
        l_style = sum(distribution_terms(features, targets.grams, targets.statistics, layer_weights, loss=loss, pixels=x).values())
    tv = tv_losses(x)
    return alpha * l_content + beta * l_style + tv_weight * tv, {"content": l_content, "style": l_style, "tv": tv}


def style_transfer_loss(x: jax.Array, targets: StyleTargets, params, *, layer_weights: Mapping[str, float], alpha=1.0,
                        beta=1e3, tv_weight=0.0, pooling: str = "max", loss: str = "gram") -> tuple[jax.Array, dict]:
    """(total, {"content", "style", "tv"}) for one HWC image: the unweighted L_content (summed over
    the content layers), L_style = sum_l w_l E_l (or, for another `loss`, the sum of its terms),
    and TV; total = alpha L_content + beta L_style + tv_weight TV."""
    totals, terms = style_transfer_losses(x[None], targets, params, layer_weights=layer_weights, alpha=alpha, beta=beta,
                                          tv_weight=tv_weight, pooling=pooling, loss=loss)
    return totals[0], {name: value[0] for name, value in terms.items()}


def keep_colors(stylised: jax.Array, content: jax.Array) -> jax.Array:
    """Original colours: the stylised image's luminance with the content's chroma (YIQ).

    Y is clipped to the range in which Y plus the content's chroma stays inside [0, 1] in every
    channel, so the result needs no clipping and its I and Q are exactly the content's.
    """
    y = rgb_to_yiq(stylised)[..., :1]
    iq = rgb_to_yiq(content)[..., 1:]
    offsets = yiq_to_rgb(jnp.concatenate([jnp.zeros_like(y), iq], axis=-1))  # RGB = Y + offsets
    low = jnp.max(-offsets, axis=-1, keepdims=True)
    high = jnp.min(1.0 - offsets, axis=-1, keepdims=True)
    y = jnp.clip(y, low, jnp.maximum(low, high))
    return yiq_to_rgb(jnp.concatenate([y, iq], axis=-1))


def _style_sizes(config: StyleConfig, inputs: StyleInputs, size: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(output height, width) at a scale's longest side, and each style image's size there."""
    height, width = fit_shape(*inputs.content.shape[:2], size)
    side = max(16, round(max(height, width) * config.style_scale))
    return (height, width), [fit_shape(*style.shape[:2], side) for style in inputs.styles]


def _check_regions(config: StyleConfig, inputs: StyleInputs) -> None:
    """Regions and per-layer styles: their masks against their images, and what they go with."""
    if inputs.layer_styles:
        unused = [name for name in inputs.layer_styles if name not in config.style_layers]
        if unused:
            raise ConfigError("style_layers_from", f"{', '.join(unused)} is not one of the style layers")
        if inputs.regions or config.loss != Loss.gram:
            raise ConfigError("style_layers_from", "goes with --loss gram and without --region")
    if not inputs.regions:
        return
    first = inputs.regions[0].name
    if config.batch and all(region.style is not None for region in inputs.regions):
        raise ConfigError("batch", f"makes one output per style image, which the regions without a style of their own "
                                   f"take; every region ({first}, ...) names its own, so the outputs would be the same")
    height, width = inputs.content.shape[:2]
    positional = 0
    for region in inputs.regions:
        check_region_mask(region.mask, height, width, region.name)
        if region.style is None:
            positional += 1
            if positional > len(inputs.styles) and not config.batch:
                raise ImageError(f"{region.name}: more regions without a style of their own ({positional}) than style "
                                 f"images ({len(inputs.styles)})")
        if region.style_mask is not None:
            styles = [region.style] if region.style is not None else inputs.styles if config.batch \
                else [inputs.styles[positional - 1]]
            for style in styles:
                check_region_mask(region.style_mask, *style.shape[:2], _style_mask_name(region), what="its style image")
        if region.weight is not None:
            number("region", region.weight, minimum=0.0)


def _region_style_indices(config: StyleConfig, inputs: StyleInputs, output: int) -> list[int | None]:
    """Which style image each region takes in output `output` of the run: None for a region's
    own, else the index of the next of the style images in turn (with `config.batch`, the
    output's own style image, the same for every region without a style of its own)."""
    positional = iter(range(len(inputs.styles)))
    return [None if region.style is not None else output if config.batch else next(positional) for region in inputs.regions]


def _region_styles(config: StyleConfig, inputs: StyleInputs, output: int) -> list:
    """The style image of each region for output `output` (`_region_style_indices`)."""
    return [region.style if index is None else inputs.styles[index]
            for region, index in zip(inputs.regions, _region_style_indices(config, inputs, output))]


def _style_mask_name(region: Region) -> str:
    return region.style_mask_name or f"{region.name} (style mask)"


_layer_guides = jax.jit(layer_guides, static_argnames=("layers", "mode", "grow"))  # one program, not each operation alone


def _region_guides(config: StyleConfig, region: Region, style_shape, shape) -> tuple[dict, dict]:
    """A region's guides at every style layer, on the style image (of `style_shape`, under its
    style mask) and on the output (of `shape`); an `ImageError` naming the mask's file, the layer
    and --guides when either vanishes at a layer (a silent zero target or no style term else)."""
    names = tuple(config.layer_weight_map)
    style_mask = jnp.ones(style_shape, jnp.float32) if region.style_mask is None else \
        resize(jnp.asarray(region.style_mask, jnp.float32)[..., None], *style_shape)[..., 0]
    mask = resize(jnp.asarray(region.mask, jnp.float32)[..., None], *shape)[..., 0]
    style_guides = _layer_guides(style_mask, names, mode=config.guides, grow=config.guide_grow)
    output_guides = _layer_guides(mask, names, mode=config.guides, grow=config.guide_grow)
    how = GuideMode(config.guides).value + (f" --guide-grow {config.guide_grow}" if config.guide_grow else "")
    for name in names:
        for guides, file, side in ((output_guides, region.name, "the output's"),
                                   (style_guides, _style_mask_name(region), "the style image's")):
            if not float(jnp.max(guides[name])) > 0:
                raise ImageError(f"{file}: the region vanishes at {name} in {side} guides with --guides {how} (at "
                                 f"{shape[1]}x{shape[0]} px): a larger region or size, or other --guides")
            if config.loss != Loss.gram and not float(jnp.max(guides[name])) > 0.5:
                raise ImageError(f"{file}: the region has no position at {name} in {side} guides (none above 1/2, the "
                                 f"positions --loss {config.loss.value} compares) with --guides {how} (at {shape[1]}x{shape[0]} "
                                 f"px): a larger or less grey region, a larger size, or other --guides")
    return style_guides, output_guides


def _check_guides(config: StyleConfig, inputs: StyleInputs) -> None:
    """Every region's guides at every scale, before any work (`_region_guides`)."""
    outputs = range(len(inputs.styles)) if config.batch else range(1)
    for size in config.sizes:
        (height, width), _ = _style_sizes(config, inputs, size)
        side = max(16, round(max(height, width) * config.style_scale))
        for output in outputs:
            for region, style in zip(inputs.regions, _region_styles(config, inputs, output)):
                _region_guides(config, region, fit_shape(*np.shape(style)[:2], side), (height, width))


def _check_inputs(config: StyleConfig, inputs: StyleInputs) -> None:
    if not inputs.styles:
        raise ValueError("at least one style image is needed")
    if config.style_blend is not None and len(config.style_blend) != len(inputs.styles):
        raise ConfigError("style_blend", f"has {len(config.style_blend)} weights for {len(inputs.styles)} style images")
    if config.init not in INITS and inputs.init is None:
        raise ConfigError("init", f"{config.init!r} is neither noise, content, style nor a given image")
    _check_regions(config, inputs)
    if config.loss != Loss.gram and len(inputs.styles) > 1 and not config.batch and not inputs.regions:
        raise ConfigError("loss", f"{config.loss.value} does not blend style images: give one, or --batch for one output each")
    if (config.loss == Loss.sw and config.directions == Directions.random and config.batch
            and any(len(set(_style_sizes(config, inputs, size)[1])) > 1 for size in config.sizes)):
        raise ConfigError("directions", "random with --batch needs style images of one size (their features are stacked)")
    layers = (*config.content_layers, *config.style_layers)
    smallest = smallest_side(config.style_layers)
    for size in config.sizes:
        (height, width), style_shapes = _style_sizes(config, inputs, size)
        if min(height, width) < smallest_side(layers):
            raise ValueError(f"the output at {width}x{height} is too small for the chosen layers: they need "
                             f"{smallest_side(layers)} pixels a side (a larger size, or a less elongated content image)")
        for index, (h, w) in enumerate(style_shapes):
            name = inputs.names[index] if index < len(inputs.names) else f"style image {index + 1}"
            if min(h, w) < smallest:
                raise ValueError(f"{name} becomes {w}x{h} at this scale, too thin for the style layers "
                                 f"(they need {smallest} pixels a side); use a larger style_scale or another image")
    _check_guides(config, inputs)


_RUNTIME = 512 * 2**20  # the process itself: Python, JAX and the compiled programs


def _style_bytes(config: StyleConfig, shapes, tile: int | None) -> int:
    """Peak bytes of the style images' Gram matrices: whole, or tile by tile with a halo."""
    if tile is None:
        return sum(activation_bytes(h, w, config.style_layers) for h, w in shapes)
    side = statistic_tile(tile) + 2 * HALO
    return max(activation_bytes(min(h, side), min(w, side), config.style_layers) for h, w in shapes)


def _region_bytes(config: StyleConfig, inputs: StyleInputs, height: int, width: int) -> int:
    """Bytes regions and per-layer styles add at an output of (height, width): the guided losses
    keep R guide-weighted copies of every style layer's features for the backward pass
    (R x sum_l H_l W_l C_l floats, twice), the sw and hist losses per region its targets and
    its positions' features gathered, projected and sorted (`_region_distribution_bytes`), and
    the regions' own style images and the per-layer style images have their features taken at
    the scale."""
    others = [region.style for region in inputs.regions if region.style is not None]
    others += list((inputs.layer_styles or {}).values())
    if not inputs.regions and not others:
        return 0
    count = len(inputs.styles) if config.batch else 1
    copies = count * len(inputs.regions) * _region_distribution_bytes(config, height, width, height, width)
    if config.loss in (Loss.gram, Loss.gram_hist):
        copies += count * len(inputs.regions) * _feature_bytes(config, height, width)
    side = max(16, round(max(height, width) * config.style_scale))
    return copies + sum(activation_bytes(*fit_shape(*np.shape(image)[:2], side), config.style_layers) for image in others)


def _region_distribution_bytes(config: StyleConfig, height: int, width: int, tile_height: int, tile_width: int) -> int:
    """Bytes one region of one output adds for --loss sw, hist or gram+hist, at most (a region
    of every position): its targets, sorted lists at the output's (height, width) positions (sw)
    or histograms, and at each evaluation of a (tile_height, tile_width) tile or whole output
    the positions' features gathered, with their projections and sorted copies (sw) or ranks
    and remapped values (hist), kept for the backward pass: seven copies of the style layers'
    features (XLA's scratch for the loss and gradient at 128 px, default layers, measured 50 MiB
    more per region for sw and 52 MiB for hist, one copy being 7.6 MiB)."""
    if config.loss == Loss.gram:
        return 0
    if config.loss == Loss.sw:
        targets = _feature_bytes(config, height, width) // 2
    else:
        targets = sum(2 * (HISTOGRAM_BINS + 1) * layer_channels(name) * 4 for name in config.style_layers)
    return targets + 7 * _feature_bytes(config, tile_height, tile_width) // 2


def _feature_bytes(config: StyleConfig, height: int, width: int) -> int:
    """Bytes of one image's features at the style layers, twice (a copy for the backward pass or a sort)."""
    return sum((height // layer_stride(name)) * (width // layer_stride(name)) * layer_channels(name)
               for name in config.style_layers) * 4 * 2


def _tiled_extra_bytes(config: StyleConfig, inputs: StyleInputs, plan: TilePlan, shapes, count: int) -> int:
    """What a tiled scale adds for regions (each tile's guided copies or gathered positions, the
    whole regions' sw or hist targets; the regions' own style images taken tile by tile) and for
    sorted lists and histograms (the whole output's and the style images' features, gathered
    from the tiles, with their projections and sorted copies)."""
    extra = 0
    if inputs.regions:
        side = statistic_tile(plan.tile) + 2 * HALO
        own = [fit_shape(*np.shape(region.style)[:2], max(16, round(max(plan.height, plan.width) * config.style_scale)))
               for region in inputs.regions if region.style is not None]
        if config.loss in (Loss.gram, Loss.gram_hist):
            extra += count * len(inputs.regions) * _feature_bytes(config, *plan.shape)
        extra += count * len(inputs.regions) * _region_distribution_bytes(config, plan.height, plan.width, *plan.shape)
        if config.loss != Loss.gram:  # the regions' own style images' features, gathered from their tiles
            extra += sum(_feature_bytes(config, h, w) for h, w in own)
        extra += max([activation_bytes(min(h, side), min(w, side), config.style_layers) for h, w in own], default=0)
    if config.loss != Loss.gram:
        extra += 2 * (count * _feature_bytes(config, plan.height, plan.width) + sum(_feature_bytes(config, h, w) for h, w in shapes))
    return extra


def style_tiles(config: StyleConfig, inputs: StyleInputs) -> list[TilePlan]:
    """Which scales are tiled and how: every scale larger than `config.tile`, or, with a tile
    setting, whose untiled optimisation does not fit `config.max_memory` (default: what is free);
    `tile="auto"` takes the largest tile that fits."""
    count = len(inputs.styles) if config.batch else 1
    layers = (*config.content_layers, *config.style_layers)
    plans = []
    for size in config.sizes:
        (height, width), shapes = _style_sizes(config, inputs, size)
        untiled = optimisation_bytes(height, width, layers, count) + _style_bytes(config, shapes, None) \
            + _region_bytes(config, inputs, height, width)
        fixed = held_bytes(height, width, count) + _style_bytes(config, shapes, 512) + _RUNTIME  # as `style_memory` weighs it
        plans.append(tile_plan(config, height, width, untiled=untiled, fixed=fixed, layers=layers, count=count))
    return plans


def style_memory(config: StyleConfig, inputs: StyleInputs) -> int:
    """Check the inputs against the settings (before any work) and estimate the peak memory of
    the run in bytes: the optimisation at the largest scale (of one tile at a tiled scale), the
    style images' features and what regions and per-layer styles add (their guide-weighted
    feature copies and their own style images' features)."""
    _check_inputs(config, inputs)
    count = len(inputs.styles) if config.batch else 1
    layers = (*config.content_layers, *config.style_layers)
    peak = 0
    for size, plan in zip(config.sizes, style_tiles(config, inputs)):
        _, shapes = _style_sizes(config, inputs, size)
        if plan.tile is None:
            needed = optimisation_bytes(plan.height, plan.width, layers, count) + _style_bytes(config, shapes, None) \
                + _region_bytes(config, inputs, plan.height, plan.width)
        else:
            side = statistic_tile(plan.tile) + 2 * HALO  # the final loss, taken tile by tile, sees images and content
            step = max(optimisation_bytes(*plan.shape, layers, count), activation_bytes(side, side, layers, count + 1))
            needed = step + held_bytes(plan.height, plan.width, count) + _style_bytes(config, shapes, plan.tile) + _RUNTIME \
                + _tiled_extra_bytes(config, inputs, plan, shapes, count)
        peak = max(peak, needed)
    return peak


class _Regions(NamedTuple):
    """A scale's region targets (`style_problem`'s regions_at): the `StyleTargets` region fields."""

    grams: dict | None  # --loss gram, gram+hist: layer -> (R, C, C) ((B, R, C, C) with --batch)
    guides: dict  # layer -> (R, h, w), the output's guides
    weights: jax.Array  # gw_r (R,)
    statistics: tuple | None  # --loss sw, hist, gram+hist: per region its DistributionTargets
    positions: tuple | None  # --loss sw, hist, gram+hist: per region, layer -> (k,) int32, the output's positions in it


def _start(config: StyleConfig, inputs: StyleInputs, height: int, width: int, count: int) -> jax.Array:
    """The first scale's pixels, (count, height, width, 3)."""
    if config.init == "noise":
        image = jax.random.uniform(jax.random.PRNGKey(config.seed), (height, width, 3), jnp.float32)
    elif config.init == "content":
        image = resize(inputs.content, height, width)
    elif config.init == "style":
        return jnp.stack([resize(style, height, width) for style in inputs.styles[:count]])
    else:
        image = resize(jnp.asarray(inputs.init, jnp.float32), height, width)
    return jnp.broadcast_to(image, (count, height, width, 3))


def color_controlled(config: StyleConfig, inputs: StyleInputs) -> StyleInputs:
    """The images a transfer under `config.color_control` optimises against: with "luminance" the
    content's luminance and each style image's luminance matched to the content's mean and spread
    (`jaxmosaic.match_luminance`), grey in three channels; with "pca", "cholesky" or "symmetric"
    the style images' colours mapped to the content's (`jaxmosaic.match_color`); else as given."""
    control = ColorControl(config.color_control)
    if control == ColorControl.none:
        return inputs
    content = jnp.asarray(inputs.content, jnp.float32)
    if control == ColorControl.luminance:
        def recolor(style):
            return np.asarray(three_channels(match_luminance(jnp.asarray(style, jnp.float32), content)))
        content_image = np.asarray(three_channels(match_luminance(content, content)))
    else:
        def recolor(style):
            return np.asarray(match_color(jnp.asarray(style, jnp.float32), content, control.value))
        content_image = inputs.content
    regions = [region._replace(style=None if region.style is None else recolor(region.style)) for region in inputs.regions]
    layer_styles = None if inputs.layer_styles is None else {name: recolor(image) for name, image in inputs.layer_styles.items()}
    return inputs._replace(content=content_image, styles=[recolor(style) for style in inputs.styles], regions=regions,
                           layer_styles=layer_styles)


def style_problem(config: StyleConfig, inputs: StyleInputs, params) -> Problem:
    """The style transfer as a `Problem`: one stage per scale, coarse to fine, each starting from
    the previous result upsampled; with `config.batch` one image per style, else one image. A
    tiled scale (`style_tiles`) is refined tile by tile: each tile's loss is the content loss on
    its region plus the style loss against the whole style image's statistics (Gram matrices
    scaled to the tile's positions; sorted lists and histograms at the tile's positions; the
    regions' guided Gram matrices under the tile's guides), so every tile aims at the same
    style. Its reported losses are the whole image's, taken tile by tile."""
    style_memory(config, inputs)
    plans = style_tiles(config, inputs)
    original = jnp.asarray(inputs.content, jnp.float32)
    inputs = color_controlled(config, inputs)
    content = jnp.asarray(inputs.content, jnp.float32)
    styles = [jnp.asarray(style, jnp.float32) for style in inputs.styles]
    count = len(styles) if config.batch else 1
    layer_weights = config.layer_weight_map
    settings = {"layer_weights": layer_weights, "alpha": config.content_weight, "beta": config.style_weight,
                "tv_weight": config.tv_weight, "pooling": config.pooling, "loss": config.loss}
    tile_of = {(plan.height, plan.width): plan for plan in plans}

    def scaled_styles(height: int, width: int) -> list:
        side = max(16, round(max(height, width) * config.style_scale))
        return [resize(style, *fit_shape(*style.shape[:2], side)) for style in styles]

    def tile_at(height: int, width: int) -> int | None:
        plan = tile_of.get((height, width))
        return None if plan is None else plan.tile

    def scale_key(height: int, width: int) -> jax.Array:
        """The key of a scale's fixed directions: drawn once per scale, the same for the whole and its tiles."""
        return jax.random.fold_in(jax.random.PRNGKey(config.seed), [(plan.height, plan.width) for plan in plans].index((height, width)))

    @functools.cache
    def regions_at(height: int, width: int) -> _Regions:
        """Regions (`_Regions`): each region's targets from its style image under its style mask,
        guided Gram matrices (layer -> (R, C, C)) and for --loss sw, hist, gram+hist its
        positions' sorted lists or histograms at the output's count of the region's positions
        (one per region; with --batch one set per output, stacked), the output's guides (layer
        -> (R, h, w)), the region's positions there (`region_positions`) and the weights gw_r
        (R,). At a tiled scale the style images' statistics are taken tile by tile."""
        side = max(16, round(max(height, width) * config.style_scale))
        names, tile = tuple(layer_weights), tile_at(height, width)
        grams_wanted, distributions_wanted = config.loss in (Loss.gram, Loss.gram_hist), config.loss != Loss.gram
        output_guides = {}

        def positions(index: int) -> dict:
            return region_positions(output_guides[index])

        @functools.cache
        def target(index: int, style_index: int | None) -> tuple[dict | None, DistributionTargets | None]:
            region = inputs.regions[index]
            style = styles[style_index] if style_index is not None else jnp.asarray(region.style, jnp.float32)
            style = resize(style, *fit_shape(*style.shape[:2], side))
            style_guides, output_guides[index] = _region_guides(config, region, style.shape[:2], (height, width))
            grams, statistics = None, None
            if tile is None:
                features = {name: value[0] for name, value in vgg19_features(params, style[None], names, pooling=config.pooling).items()}
                if grams_wanted:
                    grams = {name: guided_gram_matrix(features[name], style_guides[name]) for name in names}
            else:
                if grams_wanted:
                    grams = tiled_guided_grams(params, style, {name: style_guides[name][None] for name in names},
                                               tile=statistic_tile(tile), halo=HALO, pooling=config.pooling)
                    grams = {name: grams[name][0] for name in names}
                if distributions_wanted:
                    features = {name: value[0] for name, value in tiled_features(params, style[None], names, tile=statistic_tile(tile),
                                                                                 halo=HALO, pooling=config.pooling).items()}
            if distributions_wanted:
                counts = {name: len(value) for name, value in positions(index).items()}
                statistics = distribution_targets(features, counts, loss=config.loss, directions=config.directions,
                                                  key=jax.random.fold_in(scale_key(height, width), index), masks=style_guides)
            return grams, statistics

        each = [[target(index, style_index) for index, style_index in enumerate(_region_style_indices(config, inputs, output))]
                for output in range(count)]
        grams, statistics, where = None, None, None
        if grams_wanted:
            grams = {name: jnp.stack([jnp.stack([one[0][name] for one in regions]) for regions in each]) for name in names}
            if not config.batch:
                grams = {name: value[0] for name, value in grams.items()}
        if distributions_wanted:
            statistics = tuple(stack_targets([regions[index][1] for regions in each], shared=False) if config.batch
                               else each[0][index][1] for index in range(len(inputs.regions)))
            where = tuple({name: jnp.asarray(value) for name, value in positions(index).items()}
                          for index in range(len(inputs.regions)))
        guides = {name: jnp.stack([output_guides[index][name] for index in range(len(inputs.regions))]) for name in names}
        weights = [1.0 / len(inputs.regions) if region.weight is None else region.weight for region in inputs.regions]
        return _Regions(grams, guides, jnp.asarray(weights, jnp.float32), statistics, where)

    def layer_style_grams(height: int, width: int) -> dict:
        """Scale control: the targets of the layers taken from other images."""
        side = max(16, round(max(height, width) * config.style_scale))
        grams = {}
        for name, image in (inputs.layer_styles or {}).items():
            image = jnp.asarray(image, jnp.float32)
            image = resize(image, *fit_shape(*image.shape[:2], side))
            grams.update(gram_targets(params, image, (name,), size=(height, width), pooling=config.pooling))
        return grams

    @functools.cache
    def grams_at(height: int, width: int) -> dict:
        """The style Gram targets of an output of this size: blended, or one per style (batch)."""
        if inputs.regions:
            return regions_at(height, width).grams
        plan = tile_of.get((height, width))
        tile = None if plan is None else plan.tile
        each = []
        for style in scaled_styles(height, width):
            if tile is None:
                each.append(gram_targets(params, style, tuple(layer_weights), size=(height, width), pooling=config.pooling))
            else:
                each.append(tiled_grams(params, style, tuple(layer_weights), tile=statistic_tile(tile), halo=HALO,
                                        pooling=config.pooling, size=(height, width)))
        if inputs.layer_styles:
            each = [{**grams, **layer_style_grams(height, width)} for grams in each]
        if config.batch:
            return {name: jnp.stack([grams[name] for grams in each]) for name in layer_weights}
        blend = np.full(len(each), 1.0 / len(each)) if config.style_blend is None else np.asarray(config.style_blend) / sum(config.style_blend)
        return {name: sum(float(b) * grams[name] for b, grams in zip(blend, each)) for name in layer_weights}

    @functools.cache
    def style_features_at(height: int, width: int) -> list:
        """At a tiled scale: each style image's features at the style layers, taken tile by tile."""
        tile = statistic_tile(tile_at(height, width))
        return [{name: value[0] for name, value in tiled_features(params, style[None], tuple(layer_weights), tile=tile,
                                                                   halo=HALO, pooling=config.pooling).items()}
                for style in scaled_styles(height, width)]

    @functools.cache
    def statistics_at(height: int, width: int, size: tuple[int, int]) -> DistributionTargets:
        """--loss sw, hist, gram+hist: the style images' targets at a scale, for outputs of `size`
        (the whole output, or a tile: its sorted lists are the style's quantiles at the tile's
        positions); fixed directions are drawn once per scale, the same for the whole and its tiles."""
        key = scale_key(height, width)
        if tile_at(height, width) is None:
            return image_distribution_targets(params, scaled_styles(height, width), size, tuple(layer_weights), loss=config.loss,
                                              directions=config.directions, pooling=config.pooling, key=key,
                                              stacked=config.batch)
        positions = {name: (size[0] // layer_stride(name)) * (size[1] // layer_stride(name)) for name in layer_weights}
        each = [distribution_targets(features, positions, loss=config.loss, directions=config.directions, key=key)
                for features in style_features_at(height, width)]
        return stack_targets(each, shared=False) if config.batch else each[0]

    @functools.cache
    def targets_at(height: int, width: int) -> StyleTargets:
        scaled = resize(content, height, width)
        features = vgg19_features(params, scaled[None], config.content_layers, pooling=config.pooling)
        content_features = {name: features[name][0] for name in config.content_layers}
        if inputs.regions:
            regions = regions_at(height, width)
            return StyleTargets(content_features, regions.grams, regions.statistics, regions.guides, regions.weights,
                                regions.positions)
        grams = grams_at(height, width) if config.loss in (Loss.gram, Loss.gram_hist) else None
        statistics = None if config.loss == Loss.gram else statistics_at(height, width, (height, width))
        return StyleTargets(content_features, grams, statistics)

    def tile_data(plan: TilePlan):
        """(top, left) -> a tile's targets: the content features of its region, and the whole
        style image's statistics as the tile compares with them: Gram matrices scaled to the
        tile's positions, sorted lists and histograms at the tile's positions; for regions the
        whole regions' guided Gram matrices and sorted lists or histograms, the tile's guides
        (`tile_guides`) and its positions of each region (guide above 1/2, padded to the tile's
        positions), and each region weighed at each layer by the tile's share of the region (of
        its guide squared for the Gram terms, of its positions for the sw and hist terms) over
        its share of the positions (the stage weighs w_l by the latter)."""
        scaled = resize(content, plan.height, plan.width)
        grams = None
        if config.loss in (Loss.gram, Loss.gram_hist) and not inputs.regions:
            grams = {name: value * position_share(plan, name) for name, value in grams_at(plan.height, plan.width).items()}
        statistics = None
        if config.loss != Loss.gram and not inputs.regions:
            statistics = statistics_at(plan.height, plan.width, plan.shape)
        features = jax.jit(lambda crop: vgg19_features(params, crop[None], config.content_layers, pooling=config.pooling))
        names = tuple(layer_weights)
        if inputs.regions:
            regions = regions_at(plan.height, plan.width)
            grams, statistics, weights = regions.grams, regions.statistics, regions.weights
            masks = [resize(jnp.asarray(region.mask, jnp.float32)[..., None], plan.height, plan.width)[..., 0]
                     for region in inputs.regions]
            mass = {name: jnp.sum(jnp.square(regions.guides[name]), axis=(1, 2)) for name in names}
            if regions.positions is not None:
                counts = {name: jnp.asarray([len(one[name]) for one in regions.positions], jnp.float32) for name in names}

        def data(top: int, left: int):
            crop = jax.lax.dynamic_slice(scaled, (top, left, 0), (*plan.shape, 3))
            content_features = features(crop)
            content_features = {name: content_features[name][0] for name in config.content_layers}
            if not inputs.regions:
                return StyleTargets(content_features, grams, statistics), params
            each = [tile_guides(mask, top, left, plan.shape, names, mode=config.guides, grow=config.guide_grow) for mask in masks]
            guides = {name: jnp.stack([one[name] for one in each]) for name in names}
            shares = {name: weights * jnp.sum(jnp.square(guides[name]), axis=(1, 2)) / mass[name] / position_share(plan, name)
                      for name in names}
            if regions.positions is None:
                return StyleTargets(content_features, grams, None, guides, shares), params
            where = tuple(region_positions(one, padded=True) for one in each)
            inside = {name: jnp.sum(guides[name] > 0.5, axis=(1, 2)).astype(jnp.float32) for name in names}
            counted = {name: weights * inside[name] / counts[name] / position_share(plan, name) for name in names}
            return StyleTargets(content_features, grams, statistics, guides, shares, where, counted), params

        return data

    def stage(index: int):
        plan = plans[index]

        def start(previous):
            if previous is None:
                return _start(config, inputs, plan.height, plan.width, count)
            return resize(previous, plan.height, plan.width)

        axes = (StyleTargets(None, 0, 0) if config.batch else None, None)  # the content is shared by a batch of styles
        if plan.tile is not None:
            return synthesis_stage(config, plan, start=start, losses=style_transfer_losses, settings=settings,
                                   tile_data=tile_data(plan), data_axes=axes)
        return synthesis_stage(config, plan, start=start, losses=style_transfer_losses, settings=settings,
                               data=(targets_at(plan.height, plan.width), params), data_axes=axes)

    def view(pixels):
        return jnp.clip(pixels, 0.0, 1.0)

    def finish(images):
        if config.color_control != ColorControl.luminance:
            return images
        return keep_colors(images, jnp.broadcast_to(resize(original, *images.shape[1:3]), images.shape))

    terms_of = jax.jit(lambda x, t, p: style_transfer_losses(x, t, p, **settings))
    region_terms = jax.jit(lambda features, positions, statistics, weights, pixels: sum(region_distribution_terms(
        features, positions, statistics, layer_weights, weights, loss=config.loss, pixels=pixels).values()))

    def terms(images):
        height, width = images.shape[1:3]
        plan = tile_of.get((height, width))
        if plan is None or plan.tile is None:
            return per_image(terms_of(jnp.asarray(images), targets_at(height, width), params))
        tiling = {"tile": statistic_tile(plan.tile), "halo": HALO, "pooling": config.pooling}
        scaled = resize(content, height, width)
        if inputs.regions:  # guided Gram terms taken tile by tile; sw and hist terms of the gathered features' regions
            regions = regions_at(height, width)
            guided = layer_weights if regions.grams is not None else {}
            parts = tiled_style_terms(params, images, scaled, regions.grams or {}, guided, config.content_layers, **tiling,
                                      guides=regions.guides, region_weights=regions.weights)
            if regions.positions is not None:
                features = tiled_features(params, images, tuple(layer_weights), **tiling)
                parts["style"] = parts["style"] + region_terms(features, regions.positions, regions.statistics, regions.weights,
                                                               jnp.asarray(images))
        elif config.loss == Loss.gram:
            parts = tiled_terms(params, images, plan, grams_at(height, width), layer_weights, pooling=config.pooling,
                                content=scaled, content_layers=config.content_layers)
        else:  # sorted lists and histograms of the whole images' features, gathered from the tiles
            parts = tiled_style_terms(params, images, scaled, {}, {}, config.content_layers, **tiling)
            features = tiled_features(params, images, tuple(layer_weights), **tiling)
            grams = grams_at(height, width) if config.loss == Loss.gram_hist else None
            parts["style"] = sum(distribution_terms(features, grams, statistics_at(height, width, (height, width)), layer_weights,
                                                    loss=config.loss, pixels=jnp.asarray(images)).values())
        total = config.content_weight * parts["content"] + config.style_weight * parts["style"] + config.tv_weight * parts["tv"]
        return per_image((total, parts))

    tiled = [plan for plan in plans if plan.tile is not None]
    facts = {"tiles": [{"scale": f"{plan.width}x{plan.height}", "tile": plan.tile, "count": len(plan.grid)}
                       for plan in tiled]} if tiled else {}
    return Problem(stages=tuple(functools.partial(stage, i) for i in range(len(config.sizes))),
                   steps=tuple(plan_steps(plan, steps) for plan, steps in zip(plans, config.step_counts)),
                   optimizer=config.optimizer, learning_rate=config.learning_rate, count=count, view=view, finish=finish,
                   terms=terms, facts=facts,
                   notes=tuple(f"scale {plan.width}x{plan.height}: {tile_note(plan, config.overlap)}" for plan in tiled))


def style_transfer(config: StyleConfig, inputs: StyleInputs, params, *, callback: Callable[[Progress], None] | None = None,
                   resume: Resume | None = None, chunk: int | None = None, mesh=None, split_image: bool = False) -> Solution:
    """Stylise `inputs.content` with `inputs.styles`, coarse to fine over `config.sizes`.

    Args:
      config: the settings (`StyleConfig()` is the paper's).
      inputs: the content image, the style images (blended into one target, or with
        `config.batch` one output each, optimised together as one batch through the network)
        and the starting image when `config.init` names one.
      params: VGG19 params.
      callback: called with a `jaxmosaic.stages.Progress` after each chunk of steps.
      resume: continue from a `Resume` (e.g. a checkpoint) instead of starting over.
      chunk: steps per compiled chunk.
      mesh: devices to share the work (`jaxmosaic.sharding.device_mesh`): the batch of styles
        is sharded over them, or with `split_image` the one output's height.

    Returns:
      A `Solution`: images (count, H, W, 3) and per image {"total", "content", "style", "tv"}.
    """
    problem = style_problem(config, inputs, params)._replace(split=split_image)
    return solve(problem, callback=callback, resume=resume, chunk=chunk, mesh=mesh)
