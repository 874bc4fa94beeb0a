"""Texture synthesis (Gatys, Ecker and Bethge 2015) with the Fourier spectrum constraint of Liu,
Gousseau and Xia (2016): pixels optimised so that their VGG19 Gram matrices match an exemplar's
and their Fourier modulus stays close to the exemplar's.

    L = sum_l w_l E_l + beta * 1/2 ||x - P(x)||^2      (E_l in `jaxmosaic.losses`, P in `jaxmosaic.spectrum`)

Defaults: layers relu1_1, pool1, pool2, pool3, pool4 with average pooling and w_l = 1/5; L-BFGS
from uniform noise. beta = "auto" makes the spectrum term `SPECTRUM_SHARE` of the loss on a
reference noise image (see `calibrate_spectrum_weight`); beta = 0 is plain Gatys synthesis.

Images are float32 in [0, 1], HWC with 3 channels (colour) or 1 (grey: the network sees it
repeated in three channels). The optimised pixels are unconstrained and clipped when returned.
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

from jaxmosaic.config import ConfigError, MAX_INT, choice, layer_weights, names, number, setting, whole
from jaxmosaic.distribution_losses import (SEED_AXES, Directions, DistributionTargets, Loss, check_loss, distribution_targets,
                                           distribution_terms, image_targets, stack_targets)
from jaxmosaic.errors import ImageError
from jaxmosaic.guides import check_region_mask, layer_guides, masked_gram_targets
from jaxmosaic.image import fit_shape, resize
from jaxmosaic.losses import gram_targets, style_losses
from jaxmosaic.resources import activation_bytes, held_bytes, optimisation_bytes
from jaxmosaic.spectrum import spectrum_losses, spectrum_target
from jaxmosaic.stages import Problem, Progress, Solution, per_image, solve
from jaxmosaic.techniques.common import SynthesisConfig, plan_steps, synthesis_stage, tile_note, tile_plan, tiled_terms
from jaxmosaic.tiled_losses import HALO, statistic_tile, tiled_features
from jaxmosaic.tiling import TilePlan
from jaxmosaic.vgg import VGG19_LAYERS, Pooling, check_layers, layer_stride, smallest_side, three_channels, vgg19_features

__all__ = [
    "TEXTURE_LAYERS",
    "SPECTRUM_SHARE",
    "TextureColor",
    "TextureConfig",
    "TextureInputs",
    "TextureTargets",
    "texture_targets",
    "texture_loss",
    "texture_losses",
    "calibrate_spectrum_weight",
    "match_histograms",
    "is_gray",
    "texture_memory",
    "texture_tiles",
    "texture_exemplar",
    "texture_problem",
    "synthesize_texture",
]

TEXTURE_LAYERS = ("relu1_1", "pool1", "pool2", "pool3", "pool4")
SPECTRUM_SHARE = 0.1
"""The spectrum term's share of the loss on the reference noise image when beta is "auto"."""


class TextureColor(enum.StrEnum):
    """Whether the texture is grey or colour; "auto": grey when the exemplar's channels are equal."""

    auto = "auto"
    gray = "gray"
    rgb = "rgb"


def parse_size(text: str) -> int | tuple[int, int]:
    """"512" (the longest side) or "640x480" (width x height, returned as (height, width))."""
    text = text.strip().lower()
    if "x" in text:
        width, height = (int(value) for value in text.split("x"))
        return height, width
    return int(text)


def parse_spectrum_weight(text: str) -> float | str:
    return "auto" if text.strip() == "auto" else float(text)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextureConfig(SynthesisConfig):
    """Settings of a texture synthesis (L-BFGS from noise by default)."""

    size: int | tuple[int, int] | None = setting(
        None, "Output size: the longest side (e.g. 512) or WxH (default: the exemplar's).",
        parse=parse_size, example="512 or 640x480")
    steps: int = setting(300, "Iterations.", resume=False)
    layers: tuple[str, ...] = setting(TEXTURE_LAYERS, "Comma-separated VGG19 layers for the Gram matrices.")
    layer_weights: tuple[float, ...] | None = setting(None, "w_l per layer (default: equal, summing to 1).")
    spectrum_weight: float | str = setting(
        "auto", "beta of the spectrum term: 'auto' (10% of the loss on noise at the start) or a number; 0 gives plain Gatys synthesis.",
        parse=parse_spectrum_weight, example="auto or a number")
    variations: int = setting(1, "Synthesise N textures from seeds SEED ... SEED+N-1 in one compiled call.")
    tileable: bool = setting(False, "Circular padding: the texture wraps around seamlessly (also writes OUT-tiled.png, 2x2).")
    match_histogram: bool = setting(False, "Match each channel's histogram to the exemplar's at the end.")
    color: TextureColor = setting(TextureColor.auto, "auto: grey when the exemplar's channels are equal.")
    pooling: Pooling = setting(Pooling.avg, "VGG19 pooling (avg is better for synthesis).")
    loss: Loss = setting(Loss.gram, "The statistic matched at every layer: gram, sw (sliced Wasserstein), hist (histograms) or gram+hist.")
    directions: Directions = setting(Directions.fixed, "sw: fixed (drawn once per stage, what L-BFGS needs) or random (new ones at every step; adam or sgd).")

    def __post_init__(self):
        super().__post_init__()
        put = functools.partial(object.__setattr__, self)
        if isinstance(self.size, tuple):
            if len(self.size) != 2:
                raise ConfigError("size", f"expected a longest side or (height, width), got {self.size!r}")
            put("size", tuple(whole("size", side, minimum=1, maximum=2**16) for side in self.size))
        elif self.size is not None:
            whole("size", self.size, minimum=1, maximum=2**16)
        whole("steps", self.steps, minimum=1)
        put("layers", check_layers(names("layers", self.layers), "layers"))
        if self.layer_weights is not None:
            put("layer_weights", tuple(layer_weights("layer_weights", self.layers, self.layer_weights).values()))
        if self.spectrum_weight != "auto":
            put("spectrum_weight", number("spectrum_weight", self.spectrum_weight, minimum=0.0))
        whole("variations", self.variations, minimum=1, maximum=1024)
        put("color", choice("color", self.color, TextureColor))
        put("pooling", choice("pooling", self.pooling, Pooling))
        whole("seed", self.seed, minimum=0, maximum=MAX_INT - self.variations)
        if self.tile is not None and self.tileable:
            raise ConfigError("tile", "does not go with tileable: a texture refined in tiles cannot wrap around")
        check_loss(self)

    @property
    def layer_weight_map(self) -> dict[str, float]:
        """{layer: w_l}."""
        return layer_weights("layer_weights", self.layers, self.layer_weights)

    def output_size(self, exemplar_shape) -> tuple[int, int]:
        """(height, width) of the output for an exemplar of this shape."""
        if self.size is None:
            return tuple(exemplar_shape[:2])
        if isinstance(self.size, tuple):
            return self.size
        return fit_shape(*exemplar_shape[:2], self.size)


class TextureInputs(NamedTuple):
    """The images a texture synthesis reads."""

    exemplar: np.ndarray  # HWC, 3 channels (grey exemplars have equal channels) or 1
    start: np.ndarray | None = None  # continue from this image (an earlier result) instead of noise
    name: str = "the exemplar"  # what to call the exemplar in messages (e.g. its file)
    mask: np.ndarray | None = None  # (H, W) over the exemplar: only its statistics there are matched
    mask_name: str = "the mask"  # what to call the mask in messages


class TextureTargets(NamedTuple):
    """What a texture synthesis matches: the exemplar's Gram matrices and its spectrum."""

    grams: dict  # layer -> the exemplar's Gram matrix A^l (C_l, C_l), scaled to the output's positions
    spectrum: jax.Array  # (H, W, C) image whose Fourier modulus is the target (`spectrum_target`)
    statistics: DistributionTargets | None = None  # --loss sw, hist, gram+hist: `jaxmosaic.distribution_targets`


def texture_targets(params, exemplar: jax.Array, *, size: tuple[int, int] | None = None,
                    layers: Sequence[str] = TEXTURE_LAYERS, pooling: str = "avg", loss: str = "gram",
                    directions: str = "fixed", seeds: Sequence[int] = (0,), mask: jax.Array | None = None) -> TextureTargets:
    """Gram matrices for an output of `size` (height, width; default the exemplar's) and the
    spectrum target at that size (the exemplar's periodic component, embedded when the sizes
    differ: `jaxmosaic.spectrum.spectrum_target`); for a `loss` other than "gram" the
    distribution targets too, one entry per seed for what the seed draws (`stack_targets`). With
    a `mask` (H, W) over the exemplar, the Gram matrices are those of the region's positions
    (`jaxmosaic.guides.masked_gram_targets`) and the distribution targets those of the positions
    whose guide (`layer_guides`, "simple") exceeds 1/2; the spectrum target stays the whole
    exemplar's (`texture_problem` turns the spectrum term off under a mask)."""
    exemplar = jnp.asarray(exemplar)
    height, width = size or exemplar.shape[:2]
    loss = Loss(loss)
    grams = None
    if loss in (Loss.gram, Loss.gram_hist):
        grams = gram_targets(params, three_channels(exemplar), layers, size=(height, width), pooling=pooling) if mask is None \
            else masked_gram_targets(params, three_channels(exemplar), mask, layers, size=(height, width), pooling=pooling)
    statistics = None
    if loss != Loss.gram:
        features = {name: value[0] for name, value in
                    vgg19_features(params, three_channels(exemplar)[None], tuple(layers), pooling=pooling).items()}
        positions = {name: (height // layer_stride(name)) * (width // layer_stride(name)) for name in layers}
        masks = None if mask is None else layer_guides(jnp.asarray(mask, jnp.float32), tuple(layers), mode="simple")
        statistics = stack_targets([distribution_targets(features, positions, loss=loss, directions=directions,
                                                         key=jax.random.PRNGKey(seed), masks=masks) for seed in seeds],
                                   shared=True)
    return TextureTargets(grams, spectrum_target(exemplar, height, width), statistics)


def texture_losses(x: jax.Array, targets: TextureTargets, params, *, layer_weights: Mapping[str, float], spectrum_weight=0.0,
                   pooling: str = "avg", padding: str = "zeros", loss: str = "gram") -> tuple[jax.Array, dict]:
    """The loss of each image of an NHWC batch, the network run once on the whole batch:
    (totals (N,), {"gram" | "sw" | "hist" (`Loss.terms`), "spectrum"}: (N,) each), as
    `texture_loss` defines them."""
    features = vgg19_features(params, three_channels(x), tuple(layer_weights), pooling=pooling, padding=padding)
    if Loss(loss) == Loss.gram:
        statistic = {"gram": style_losses(features, targets.grams, layer_weights)}
    else:
        statistic = distribution_terms(features, targets.grams, targets.statistics, layer_weights, loss=loss, pixels=x)
    spectrum = spectrum_losses(x, targets.spectrum)
    return sum(statistic.values()) + spectrum_weight * spectrum, {**statistic, "spectrum": spectrum}


def texture_loss(x: jax.Array, targets: TextureTargets, params, *, layer_weights: Mapping[str, float], spectrum_weight=0.0,
                 pooling: str = "avg", padding: str = "zeros", loss: str = "gram") -> tuple[jax.Array, dict]:
    """(total, {"gram", "spectrum"}) for one HWC image: gram = sum_l w_l E_l, spectrum =
    1/2 ||x - P(x)||^2 unweighted, total = gram + spectrum_weight * spectrum. With padding
    "circular" the network sees x as a torus (for tileable textures). Another `loss` reports
    its own terms (`Loss.terms`: sum_l w_l of the layer's sliced Wasserstein or histogram loss)
    in place of "gram", and the total sums them."""
    totals, terms = texture_losses(x[None], targets, params, layer_weights=layer_weights, spectrum_weight=spectrum_weight,
                                   pooling=pooling, padding=padding, loss=loss)
    return totals[0], {name: value[0] for name, value in terms.items()}


def calibrate_spectrum_weight(params, targets: TextureTargets, layer_weights: Mapping[str, float], *, channels: int,
                              share: float = SPECTRUM_SHARE, pooling: str = "avg", padding: str = "zeros",
                              loss: str = "gram") -> float:
    """beta such that the spectrum term is `share` of the total on a reference image: uniform
    noise drawn with PRNGKey(0) at the output size. It depends on the exemplar, size, layers and
    weights only, not on the seed, so every variation and every continued run uses the same loss.

    The Gram term of noise is many times its final value while the spectrum term is of the order
    of the texture's own variance, so a modest share at the start lets the Gram term shape the
    texture first and leaves the spectrum term a real part of the loss once the Gram term has
    fallen (measured on the brick sample: README, "Texture synthesis"). Another `loss` takes
    the share of the sum of its terms (targets of one image: `image_targets`).
    """
    height, width = targets.spectrum.shape[:2]
    noise = jax.random.uniform(jax.random.PRNGKey(0), (height, width, channels), jnp.float32)
    evaluate = jax.jit(lambda x, t, p: texture_loss(x, t, p, layer_weights=layer_weights, pooling=pooling, padding=padding,
                                                    loss=loss))
    _, terms = evaluate(noise, targets, params)
    gram, spectrum = sum(float(terms[name]) for name in Loss(loss).terms), float(terms["spectrum"])
    if not (np.isfinite(gram) and np.isfinite(spectrum)) or spectrum <= 0:
        raise FloatingPointError("cannot calibrate the spectrum weight (loss not finite); give the spectrum weight a number")
    return share / (1.0 - share) * gram / spectrum


def match_histograms(image: jax.Array, reference: jax.Array) -> jax.Array:
    """Per-channel histogram matching: each channel's values replaced by the reference channel's
    quantiles at the same ranks (ties broken by position). With as many pixels as the reference,
    the result's sorted values are exactly the reference's. HWC (matching channels)."""
    image, reference = jnp.asarray(image), jnp.asarray(reference, jnp.asarray(image).dtype)
    flat = image.reshape(-1, image.shape[-1])
    ref = jnp.sort(reference.reshape(-1, reference.shape[-1]), axis=0)
    n, m = flat.shape[0], ref.shape[0]
    ranks = jnp.argsort(jnp.argsort(flat, axis=0), axis=0)
    quantiles = (ranks.astype(image.dtype) + 0.5) / n
    grid = (jnp.arange(m, dtype=image.dtype) + 0.5) / m
    matched = jax.vmap(lambda q, r: jnp.interp(q, grid, r), in_axes=1, out_axes=1)(quantiles, ref)
    return matched.reshape(image.shape)


def is_gray(image: np.ndarray, tolerance: float = 0.5 / 255) -> bool:
    """True when an RGB image's three channels are equal (to half a level of 8 bits)."""
    image = np.asarray(image)
    return image.shape[-1] == 1 or bool(np.all(np.abs(image - image[..., :1]) <= tolerance))


def texture_exemplar(config: TextureConfig, inputs: TextureInputs) -> np.ndarray:
    """The exemplar as the synthesis sees it: one channel when the texture is grey."""
    exemplar = np.asarray(inputs.exemplar, np.float32)
    gray = config.color == TextureColor.gray or (config.color == TextureColor.auto and is_gray(exemplar))
    return np.mean(exemplar, axis=-1, keepdims=True) if gray and exemplar.shape[-1] != 1 else exemplar


def texture_memory(config: TextureConfig, inputs: TextureInputs) -> int:
    """Check the exemplar and the output size against the layers (before any work) and estimate
    the peak memory of the synthesis in bytes."""
    layers = config.layers
    smallest = smallest_side(layers)
    height, width = inputs.exemplar.shape[:2]
    deepest = max(layers, key=VGG19_LAYERS.index)
    if min(height, width) < smallest:
        raise ValueError(f"{inputs.name} is {width}x{height}; the layers up to {deepest} need at least {smallest}x{smallest} pixels")
    out_height, out_width = config.output_size(inputs.exemplar.shape)
    if min(out_height, out_width) < smallest:
        raise ConfigError("size", f"{out_width}x{out_height} is too small: the layers up to {deepest} need at least {smallest} pixels a side")
    if inputs.mask is not None:
        check_region_mask(inputs.mask, height, width, inputs.mask_name, what="the exemplar")
        if np.shape(inputs.mask) != (height, width):
            raise ImageError(f"{inputs.mask_name}: the mask is {np.shape(inputs.mask)[1]}x{np.shape(inputs.mask)[0]} px, "
                             f"the exemplar {width}x{height} px; a texture's mask must have the exemplar's size")
        if config.spectrum_weight not in ("auto", 0.0):
            raise ConfigError("spectrum_weight", f"must be 0 or auto with --mask ({inputs.mask_name}): the spectrum target "
                                                 "is the whole exemplar's and would pull the texture to its mean colour")
        if config.loss != Loss.gram:  # the distribution targets keep the positions whose guide exceeds 1/2
            guides = layer_guides(jnp.asarray(inputs.mask, jnp.float32), layers, mode="simple")
            for name in layers:
                if not float(jnp.max(guides[name])) > 0.5:
                    raise ImageError(f"{inputs.mask_name}: the region has no position at {name} for --loss {config.loss.value} "
                                     f"(no block of {layer_stride(name)}x{layer_stride(name)} px more than half inside)")
    plan = texture_tiles(config, inputs)
    exemplar = optimisation_bytes(height, width, layers) // 2
    if plan.tile is None:
        return optimisation_bytes(out_height, out_width, layers, config.variations) + exemplar
    return optimisation_bytes(*plan.shape, layers, config.variations) + held_bytes(out_height, out_width, config.variations) + exemplar


def texture_tiles(config: TextureConfig, inputs: TextureInputs) -> TilePlan:
    """Whether the output is refined in tiles and how: when it is larger than `config.tile`, or,
    with a tile setting, when its untiled optimisation does not fit `config.max_memory` (default:
    what is free); `tile="auto"` takes the largest tile that fits."""
    height, width = config.output_size(inputs.exemplar.shape)
    untiled = optimisation_bytes(height, width, config.layers, config.variations)
    fixed = held_bytes(height, width, config.variations) + activation_bytes(*inputs.exemplar.shape[:2], config.layers)
    return tile_plan(config, height, width, untiled=untiled, fixed=fixed, layers=config.layers, count=config.variations)


def texture_problem(config: TextureConfig, inputs: TextureInputs, params) -> Problem:
    """The synthesis as a `Problem`: one stage, `config.variations` images (a batch when more
    than one); the spectrum weight "auto" is calibrated here (see `Problem.facts`)."""
    texture_memory(config, inputs)
    exemplar = texture_exemplar(config, inputs)
    height, width = config.output_size(exemplar.shape)
    channels, count = exemplar.shape[-1], config.variations
    padding = "circular" if config.tileable else "zeros"
    layer_weights = config.layer_weight_map
    plan = texture_tiles(config, inputs)
    targets = texture_targets(params, exemplar, size=(height, width), layers=tuple(layer_weights), pooling=config.pooling,
                              loss=config.loss, directions=config.directions, seeds=range(config.seed, config.seed + count),
                              mask=inputs.mask)
    first = targets if targets.statistics is None else targets._replace(statistics=image_targets(targets.statistics, 0, shared=True))
    beta = config.spectrum_weight
    masked = inputs.mask is not None and beta == "auto"
    if masked:  # the spectrum target is the whole exemplar's: its mean colour would pull the texture out of the region
        beta = 0.0
    elif beta == "auto" and plan.tile is None:
        beta = calibrate_spectrum_weight(params, first, layer_weights, channels=channels, pooling=config.pooling, padding=padding,
                                         loss=config.loss)
    at_tile = None
    if plan.tile is not None:  # every tile aims at the same statistics: the Gram matrices, sorted lists, histograms and
        # the spectrum at the tile's size (the sorted lists as the exemplar's quantiles at the tile's positions)
        at_tile = texture_targets(params, exemplar, size=plan.shape, layers=tuple(layer_weights), pooling=config.pooling,
                                  loss=config.loss, directions=config.directions, seeds=range(config.seed, config.seed + count),
                                  mask=inputs.mask)
    if beta == "auto" and plan.tile is not None:  # calibrated on a tile, for the whole image: the spectrum term sums over pixels
        first_tile = at_tile if at_tile.statistics is None else \
            at_tile._replace(statistics=image_targets(at_tile.statistics, 0, shared=True))
        beta = calibrate_spectrum_weight(params, first_tile, layer_weights, channels=channels, pooling=config.pooling,
                                         padding=padding, loss=config.loss) * plan.shape[0] * plan.shape[1] / (height * width)
    settings = {"layer_weights": layer_weights, "spectrum_weight": float(beta), "pooling": config.pooling, "padding": padding,
                "loss": config.loss}

    def start(_):
        if inputs.start is not None:
            image = jnp.asarray(inputs.start, jnp.float32)[..., :channels]
            if image.shape[-1] != channels:
                image = jnp.repeat(image, channels, axis=-1)
            return jnp.broadcast_to(resize(image, height, width), (count, height, width, channels))
        keys = jnp.stack([jax.random.PRNGKey(config.seed + i) for i in range(count)])
        return jax.vmap(lambda key: jax.random.uniform(key, (height, width, channels), jnp.float32))(keys)

    def view(pixels):
        return jnp.clip(pixels, 0.0, 1.0)

    def finish(images):
        if not config.match_histogram:
            return images
        return jax.vmap(match_histograms, in_axes=(0, None))(images, jnp.asarray(exemplar))

    terms_of = jax.jit(lambda x, t, p: texture_losses(x, t, p, **settings))
    spectrum_of = jax.jit(lambda x, target: spectrum_losses(x, target))

    def terms(images):
        if plan.tile is None:
            return per_image(terms_of(jnp.asarray(images), targets, params))
        spectrum = spectrum_of(jnp.asarray(images), targets.spectrum)
        if config.loss == Loss.gram:
            statistic = {"gram": tiled_terms(params, images, plan, targets.grams, layer_weights, pooling=config.pooling)["style"]}
        else:  # sorted lists and histograms of the whole images' features, gathered from the tiles
            features = tiled_features(params, images, tuple(layer_weights), tile=statistic_tile(plan.tile), halo=HALO,
                                      pooling=config.pooling)
            statistic = distribution_terms(features, targets.grams, targets.statistics, layer_weights, loss=config.loss,
                                           pixels=jnp.asarray(images))
        return per_image((sum(statistic.values()) + float(beta) * spectrum, {**statistic, "spectrum": spectrum}))

    axes = None if targets.statistics is None else (TextureTargets(None, None, SEED_AXES), None)  # directions: one set per seed
    if plan.tile is None:
        stage = synthesis_stage(config, plan, start=start, losses=texture_losses, settings=settings, data=(targets, params),
                                data_axes=axes)
        notes, facts = (), {}
    else:
        stage = synthesis_stage(config, plan, start=start, losses=texture_losses, settings=settings,
                                tile_data=lambda top, left: (at_tile, params), data_axes=axes)
        notes = (tile_note(plan, config.overlap),)
        facts = {"tiles": [{"size": f"{width}x{height}", "tile": plan.tile, "count": len(plan.grid)}]}
    if masked:
        notes = (*notes, f"--mask ({inputs.mask_name}): --spectrum-weight auto is 0 (the spectrum target is the whole exemplar's)")
    facts = {"spectrum_weight": float(beta), "gray": channels == 1, "size": [width, height], **facts}
    return Problem(stages=(lambda: stage,), steps=(plan_steps(plan, config.steps),), optimizer=config.optimizer,
                   learning_rate=config.learning_rate, count=count, view=view, finish=finish, terms=terms, facts=facts,
                   notes=notes)


def synthesize_texture(config: TextureConfig, inputs: TextureInputs, params, *,
                       callback: Callable[[Progress], None] | None = None, chunk: int | None = None, mesh=None,
                       split_image: bool = False) -> Solution:
    """Synthesise `config.variations` textures like `inputs.exemplar`, optimised together as one
    batch through the network.

    Variation i starts from uniform noise drawn with PRNGKey(seed + i), so it equals a separate
    run with seed + i; with `inputs.start` every variation starts from that image instead. With
    `config.tileable` the network uses circular padding (the spectrum term is periodic already),
    so the output wraps around seamlessly. `mesh` shares the variations (or, with `split_image`,
    one texture's height) over devices.

    Returns:
      A `Solution`: images (N, H, W, C), C = 1 for grey textures, and per image
      {"total", "gram", "spectrum" (unweighted)}.
    """
    problem = texture_problem(config, inputs, params)._replace(split=split_image)
    return solve(problem, callback=callback, chunk=chunk, mesh=mesh)
