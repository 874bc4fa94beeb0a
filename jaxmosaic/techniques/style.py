"""Neural style transfer (Gatys, Ecker and Bethge 2015): pixels optimised so that their VGG19
content features match one image and their Gram matrices match another's.

    L = alpha L_content + beta L_style + tv_weight TV        (definitions in `jaxmosaic.losses`)

Defaults are the paper's: content relu4_2; style relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 with
w_l = 1/5; alpha / beta = 1e-3; L-BFGS. Images are float32 in [0, 1], HWC; the optimised pixels
are unconstrained and clipped to [0, 1] when returned.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.color import rgb_to_yiq, yiq_to_rgb
from jaxmosaic.config import ConfigError, choice, layer_weights, names, number, numbers, setting, whole, wholes
from jaxmosaic.image import fit_shape, resize
from jaxmosaic.losses import content_losses, gram_targets, style_losses, tv_losses
from jaxmosaic.resources import activation_bytes, held_bytes, optimisation_bytes
from jaxmosaic.stages import Problem, Progress, Resume, Solution, per_image, solve
from jaxmosaic.techniques.common import SynthesisConfig, plan_steps, synthesis_stage, tile_note, tile_plan, tiled_terms
from jaxmosaic.tiled_losses import HALO, position_share, statistic_tile, tiled_grams
from jaxmosaic.tiling import TilePlan
from jaxmosaic.vgg import Pooling, check_layers, smallest_side, vgg19_features

__all__ = [
    "CONTENT_LAYERS",
    "STYLE_LAYERS",
    "INITS",
    "StyleConfig",
    "StyleInputs",
    "StyleTargets",
    "style_targets",
    "style_transfer_loss",
    "style_transfer_losses",
    "keep_colors",
    "style_memory",
    "style_tiles",
    "style_problem",
    "style_transfer",
]

CONTENT_LAYERS = ("relu4_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
INITS = ("noise", "content", "style")


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
    original_colors: bool = setting(False, "Keep the content's colours (transfer luminance only, YIQ).")

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


class StyleTargets(NamedTuple):
    """What a style transfer matches: the content features P^l and the style Gram matrices A^l."""

    content: dict  # layer -> P, the content image's (H, W, C) features (batched: (B, H, W, C))
    grams: dict  # layer -> A, the blended style Gram matrix (C, C) (batched: (B, C, C))


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
                          beta=1e3, tv_weight=0.0, pooling: str = "max") -> tuple[jax.Array, dict]:
    """The loss of each image of an NHWC batch, the network run once on the whole batch:
    (totals (N,), {"content", "style", "tv"}: (N,) each). `targets` are shared by the batch or
    hold one entry per image (content features (N, H, W, C), Gram matrices (N, C, C))."""
    layers = tuple(dict.fromkeys((*targets.content, *layer_weights)))
    features = vgg19_features(params, x, layers, pooling=pooling)
    l_content = sum(content_losses(features[name], targets.content[name]) for name in targets.content)
    l_style = style_losses({name: features[name] for name in layer_weights}, targets.grams, layer_weights)
    tv = tv_losses(x)
    return alpha * l_content + beta * l_style + tv_weight * tv, {"content": l_content, "style": l_style, "tv": tv}


def style_transfer_loss(x: jax.Array, targets: StyleTargets, params, *, layer_weights: Mapping[str, float], alpha=1.0,
                        beta=1e3, tv_weight=0.0, pooling: str = "max") -> tuple[jax.Array, dict]:
    """(total, {"content", "style", "tv"}) for one HWC image: the unweighted L_content (summed over
    the content layers), L_style = sum_l w_l E_l, and TV; total = alpha L_content + beta L_style +
    tv_weight TV."""
    totals, terms = style_transfer_losses(x[None], targets, params, layer_weights=layer_weights, alpha=alpha, beta=beta,
                                          tv_weight=tv_weight, pooling=pooling)
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


def _check_inputs(config: StyleConfig, inputs: StyleInputs) -> None:
    if not inputs.styles:
        raise ValueError("at least one style image is needed")
    if config.style_blend is not None and len(config.style_blend) != len(inputs.styles):
        raise ConfigError("style_blend", f"has {len(config.style_blend)} weights for {len(inputs.styles)} style images")
    if config.init not in INITS and inputs.init is None:
        raise ConfigError("init", f"{config.init!r} is neither noise, content, style nor a given image")
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


_RUNTIME = 512 * 2**20  # the process itself: Python, JAX and the compiled programs


def _style_bytes(config: StyleConfig, shapes, tile: int | None) -> int:
    """Peak bytes of the style images' Gram matrices: whole, or tile by tile with a halo."""
    if tile is None:
        return sum(activation_bytes(h, w, config.style_layers) for h, w in shapes)
    side = statistic_tile(tile) + 2 * HALO
    return max(activation_bytes(min(h, side), min(w, side), config.style_layers) for h, w in shapes)


def style_tiles(config: StyleConfig, inputs: StyleInputs) -> list[TilePlan]:
    """Which scales are tiled and how: every scale larger than `config.tile`, or, with a tile
    setting, whose untiled optimisation does not fit `config.max_memory` (default: what is free);
    `tile="auto"` takes the largest tile that fits."""
    count = len(inputs.styles) if config.batch else 1
    layers = (*config.content_layers, *config.style_layers)
    plans = []
    for size in config.sizes:
        (height, width), shapes = _style_sizes(config, inputs, size)
        untiled = optimisation_bytes(height, width, layers, count) + _style_bytes(config, shapes, None)
        fixed = held_bytes(height, width, count) + _style_bytes(config, shapes, 512) + _RUNTIME  # as `style_memory` weighs it
        plans.append(tile_plan(config, height, width, untiled=untiled, fixed=fixed, layers=layers, count=count))
    return plans


def style_memory(config: StyleConfig, inputs: StyleInputs) -> int:
    """Check the inputs against the settings (before any work) and estimate the peak memory of
    the run in bytes: the optimisation at the largest scale (of one tile at a tiled scale) and
    the style images' features."""
    _check_inputs(config, inputs)
    count = len(inputs.styles) if config.batch else 1
    layers = (*config.content_layers, *config.style_layers)
    peak = 0
    for size, plan in zip(config.sizes, style_tiles(config, inputs)):
        _, shapes = _style_sizes(config, inputs, size)
        if plan.tile is None:
            needed = optimisation_bytes(plan.height, plan.width, layers, count) + _style_bytes(config, shapes, None)
        else:
            side = statistic_tile(plan.tile) + 2 * HALO  # the final loss, taken tile by tile, sees images and content
            step = max(optimisation_bytes(*plan.shape, layers, count), activation_bytes(side, side, layers, count + 1))
            needed = step + held_bytes(plan.height, plan.width, count) + _style_bytes(config, shapes, plan.tile) + _RUNTIME
        peak = max(peak, needed)
    return peak


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


def style_problem(config: StyleConfig, inputs: StyleInputs, params) -> Problem:
    """The style transfer as a `Problem`: one stage per scale, coarse to fine, each starting from
    the previous result upsampled; with `config.batch` one image per style, else one image. A
    tiled scale (`style_tiles`) is refined tile by tile: each tile's loss is the content loss on
    its region plus the style loss against the whole style image's Gram matrices, scaled to the
    tile's positions, so every tile aims at the same style."""
    style_memory(config, inputs)
    plans = style_tiles(config, inputs)
    content = jnp.asarray(inputs.content, jnp.float32)
    styles = [jnp.asarray(style, jnp.float32) for style in inputs.styles]
    count = len(styles) if config.batch else 1
    layer_weights = config.layer_weight_map
    settings = {"layer_weights": layer_weights, "alpha": config.content_weight, "beta": config.style_weight,
                "tv_weight": config.tv_weight, "pooling": config.pooling}
    tile_of = {(plan.height, plan.width): plan for plan in plans}

    def scaled_styles(height: int, width: int) -> list:
        side = max(16, round(max(height, width) * config.style_scale))
        return [resize(style, *fit_shape(*style.shape[:2], side)) for style in styles]

    @functools.cache
    def grams_at(height: int, width: int) -> dict:
        """The style Gram targets of an output of this size: blended, or one per style (batch)."""
        plan = tile_of.get((height, width))
        tile = None if plan is None else plan.tile
        each = []
        for style in scaled_styles(height, width):
            if tile is None:
                each.append(gram_targets(params, style, tuple(layer_weights), size=(height, width), pooling=config.pooling))
            else:
                each.append(tiled_grams(params, style, tuple(layer_weights), tile=statistic_tile(tile), halo=HALO,
                                        pooling=config.pooling, size=(height, width)))
        if config.batch:
            return {name: jnp.stack([grams[name] for grams in each]) for name in layer_weights}
        blend = np.full(len(each), 1.0 / len(each)) if config.style_blend is None else np.asarray(config.style_blend) / sum(config.style_blend)
        return {name: sum(float(b) * grams[name] for b, grams in zip(blend, each)) for name in layer_weights}

    @functools.cache
    def targets_at(height: int, width: int) -> StyleTargets:
        scaled = resize(content, height, width)
        features = vgg19_features(params, scaled[None], config.content_layers, pooling=config.pooling)
        return StyleTargets({name: features[name][0] for name in config.content_layers}, grams_at(height, width))

    def tile_data(plan: TilePlan):
        """(top, left) -> a tile's targets: the content features of its region, and the whole
        style image's Gram matrices scaled to the tile's positions."""
        scaled = resize(content, plan.height, plan.width)
        grams = {name: value * position_share(plan, name) for name, value in grams_at(plan.height, plan.width).items()}
        features = jax.jit(lambda crop: vgg19_features(params, crop[None], config.content_layers, pooling=config.pooling))

        def data(top: int, left: int):
            crop = jax.lax.dynamic_slice(scaled, (top, left, 0), (*plan.shape, 3))
            content_features = features(crop)
            return StyleTargets({name: content_features[name][0] for name in config.content_layers}, grams), params

        return data

    def stage(index: int):
        plan = plans[index]

        def start(previous):
            if previous is None:
                return _start(config, inputs, plan.height, plan.width, count)
            return resize(previous, plan.height, plan.width)

        axes = (StyleTargets(None, 0) if config.batch else None, None)  # the content is shared by a batch of styles
        if plan.tile is not None:
            return synthesis_stage(config, plan, start=start, losses=style_transfer_losses, settings=settings,
                                   tile_data=tile_data(plan), data_axes=axes)
        return synthesis_stage(config, plan, start=start, losses=style_transfer_losses, settings=settings,
                               data=(targets_at(plan.height, plan.width), params), data_axes=axes)

    def view(pixels):
        return jnp.clip(pixels, 0.0, 1.0)

    def finish(images):
        if not config.original_colors:
            return images
        return keep_colors(images, jnp.broadcast_to(resize(content, *images.shape[1:3]), images.shape))

    terms_of = jax.jit(lambda x, t, p: style_transfer_losses(x, t, p, **settings))

    def terms(images):
        height, width = images.shape[1:3]
        plan = tile_of.get((height, width))
        if plan is None or plan.tile is None:
            return per_image(terms_of(jnp.asarray(images), targets_at(height, width), params))
        parts = tiled_terms(params, images, plan, grams_at(height, width), layer_weights, pooling=config.pooling,
                            content=resize(content, height, width), content_layers=config.content_layers)
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
