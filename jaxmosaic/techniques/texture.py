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

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.image import resize
from jaxmosaic.losses import gram_matrix, style_loss
from jaxmosaic.optimize import ChunkReport, minimize
from jaxmosaic.spectrum import spectrum_loss, spectrum_target
from jaxmosaic.vgg import VGG19_LAYERS, check_layers, layer_stride, vgg19_features

__all__ = [
    "TEXTURE_LAYERS",
    "SPECTRUM_SHARE",
    "TextureTargets",
    "TextureProgress",
    "TextureResult",
    "gram_targets",
    "texture_targets",
    "texture_loss",
    "calibrate_spectrum_weight",
    "match_histograms",
    "is_gray",
    "minimum_size",
    "synthesize_texture",
]

TEXTURE_LAYERS = ("relu1_1", "pool1", "pool2", "pool3", "pool4")
SPECTRUM_SHARE = 0.1
"""The spectrum term's share of the loss on the reference noise image when beta is "auto"."""


class TextureTargets(NamedTuple):
    grams: dict  # layer -> the exemplar's Gram matrix A^l (C_l, C_l), scaled to the output's positions
    spectrum: jax.Array  # (H, W, C) image whose Fourier modulus is the target (`spectrum_target`)


class TextureProgress(NamedTuple):
    step: int  # steps done
    total: int  # steps asked for
    losses: np.ndarray  # loss before each step of the last chunk: (chunk,) or (chunk, variations)
    images: Any  # current pixels (unclipped), (N, H, W, C)
    opt_state: Any


class TextureResult(NamedTuple):
    images: np.ndarray  # (N, H, W, C) in [0, 1]
    loss: list[dict]  # per variation: {"gram", "spectrum" (unweighted), "total"} on the returned image
    spectrum_weight: float  # beta used
    steps: int
    history: np.ndarray  # (steps,) or (steps, N): loss before each step
    seconds: float
    compile_seconds: float
    opt_state: Any


def _positions(height: int, width: int, layer: str) -> int:
    stride = layer_stride(layer)
    return (height // stride) * (width // stride)


def _rgb(images: jax.Array) -> jax.Array:
    """The network's three channels: grey repeated, colour as it is."""
    return jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def minimum_size(layers: Sequence[str]) -> int:
    """The smallest side an image needs for every layer to keep at least one position."""
    return max(layer_stride(name) for name in check_layers(tuple(layers)))


def gram_targets(params, image: jax.Array, layers: Sequence[str], *, size: tuple[int, int] | None = None,
                 pooling: str = "avg") -> dict:
    """The Gram matrices A^l of an HWC image, scaled to the number of positions of an output of
    `size` (height, width): A^l * M_l(output) / M_l(image), so E_l compares Gram matrices per
    position whatever the two sizes are (for equal sizes this is A^l exactly)."""
    layers = check_layers(tuple(layers))
    image = _rgb(jnp.asarray(image))
    height, width = size or image.shape[:2]
    features = vgg19_features(params, image[None], layers, pooling=pooling)
    return {name: gram_matrix(features[name][0]) * (_positions(height, width, name) / _positions(*image.shape[:2], name))
            for name in layers}


def texture_targets(params, exemplar: jax.Array, *, size: tuple[int, int] | None = None,
                    layers: Sequence[str] = TEXTURE_LAYERS, pooling: str = "avg") -> TextureTargets:
    """Gram matrices for an output of `size` (height, width; default the exemplar's) and the
    spectrum target at that size (the exemplar's periodic component, embedded when the sizes
    differ: `jaxmosaic.spectrum.spectrum_target`)."""
    exemplar = jnp.asarray(exemplar)
    height, width = size or exemplar.shape[:2]
    return TextureTargets(gram_targets(params, exemplar, layers, size=(height, width), pooling=pooling),
                          spectrum_target(exemplar, height, width))


def texture_loss(
    x: jax.Array,
    targets: TextureTargets,
    params,
    *,
    layer_weights: Mapping[str, float],
    spectrum_weight=0.0,
    pooling: str = "avg",
    padding: str = "zeros",
) -> tuple[jax.Array, dict]:
    """(total, {"gram", "spectrum"}) for one HWC image: gram = sum_l w_l E_l, spectrum =
    1/2 ||x - P(x)||^2 unweighted, total = gram + spectrum_weight * spectrum. With padding
    "circular" the network sees x as a torus (for tileable textures)."""
    features = vgg19_features(params, _rgb(x)[None], tuple(layer_weights), pooling=pooling, padding=padding)
    gram = style_loss({name: features[name][0] for name in layer_weights}, targets.grams, layer_weights)
    spectrum = spectrum_loss(x, targets.spectrum)
    return gram + spectrum_weight * spectrum, {"gram": gram, "spectrum": spectrum}


def calibrate_spectrum_weight(params, targets: TextureTargets, layer_weights: Mapping[str, float], *,
                              channels: int, share: float = SPECTRUM_SHARE, pooling: str = "avg",
                              padding: str = "zeros") -> float:
    """beta such that the spectrum term is `share` of the total on a reference image: uniform
    noise drawn with PRNGKey(0) at the output size. It depends on the exemplar, size, layers and
    weights only, not on the seed, so every variation and every continued run uses the same loss.

    The Gram term of noise is many times its final value while the spectrum term is of the order
    of the texture's own variance, so a modest share at the start lets the Gram term shape the
    texture first and leaves the spectrum term a real part of the loss once the Gram term has
    fallen (measured on the brick sample: README, "Texture synthesis").
    """
    height, width = targets.spectrum.shape[:2]
    noise = jax.random.uniform(jax.random.PRNGKey(0), (height, width, channels), jnp.float32)
    _, terms = jax.jit(lambda x: texture_loss(x, targets, params, layer_weights=layer_weights, pooling=pooling, padding=padding))(noise)
    gram, spectrum = float(terms["gram"]), float(terms["spectrum"])
    if not (np.isfinite(gram) and np.isfinite(spectrum)) or spectrum <= 0:
        raise FloatingPointError("cannot calibrate the spectrum weight (loss not finite); give --spectrum-weight a number")
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


def weighted_layers(layers: Sequence[str], layer_weights: Sequence[float] | None, option: str) -> dict:
    """{layer: w_l}: the given weights, or 1 / number of layers each; the layers checked (errors
    name `option` and --layer-weights)."""
    layers = check_layers(tuple(layers), option)
    weights = layer_weights if layer_weights is not None else [1.0 / len(layers)] * len(layers)
    if len(weights) != len(layers):
        raise ValueError(f"--layer-weights has {len(weights)} values for {len(layers)} {option.strip('-').replace('-', ' ')}")
    return dict(zip(layers, (float(w) for w in weights)))


def check_texture_settings(exemplar_shape, size: tuple[int, int], layers: Sequence[str], layer_weights, steps: int,
                           variations: int) -> dict:
    """Validate the settings before any work; returns {layer: w_l}. Messages name the CLI options."""
    weights = weighted_layers(layers, layer_weights, "--layers")
    layers = tuple(weights)
    smallest = minimum_size(layers)
    if min(exemplar_shape[:2]) < smallest:
        raise ValueError(f"the exemplar is {exemplar_shape[1]}x{exemplar_shape[0]}; the layers up to "
                         f"{max(layers, key=VGG19_LAYERS.index)} need at least {smallest}x{smallest} pixels")
    if min(size) < smallest:
        raise ValueError(f"--size {size[1]}x{size[0]} is too small: the layers need at least {smallest} pixels a side")
    if steps < 1 or variations < 1:
        raise ValueError("--steps and --variations must be at least 1")
    return weights


def synthesize_texture(
    params,
    exemplar: np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    layers: Sequence[str] = TEXTURE_LAYERS,
    layer_weights: Sequence[float] | None = None,
    spectrum_weight: float | str = "auto",
    pooling: str = "avg",
    tileable: bool = False,
    steps: int = 300,
    variations: int = 1,
    seed: int = 0,
    init: np.ndarray | None = None,
    histogram: bool = False,
    optimizer: str = "lbfgs",
    learning_rate: float | None = None,
    chunk: int | None = None,
    callback: Callable[[TextureProgress], None] | None = None,
    opt_state=None,
    start_step: int = 0,
) -> TextureResult:
    """Synthesise `variations` textures like `exemplar`, all in one compiled, vmapped call.

    Args:
      params: VGG19 params.
      exemplar: HWC image, 3 channels (colour) or 1 (grey; the output is grey too).
      size: output (height, width); default the exemplar's.
      layers, layer_weights: the Gram layers and w_l (default 1 / number of layers).
      spectrum_weight: beta; "auto" (`calibrate_spectrum_weight`) or a number (0: no spectrum term).
      tileable: circular padding in the network (the spectrum term is periodic already): the
        output wraps around seamlessly.
      variations: N outputs; variation i starts from uniform noise drawn with PRNGKey(seed + i),
        so it equals a separate run with seed + i.
      init: start from this image (HWC, resized to the output size) instead of noise: to continue
        a synthesis. With `opt_state` and `start_step`, continue an optimisation exactly.
      histogram: match each output channel's histogram to the exemplar's afterwards (DeepTextures).
      chunk: steps per compiled chunk (the callback runs after each).
    """
    exemplar = np.asarray(exemplar, np.float32)
    height, width = size or exemplar.shape[:2]
    weights = check_texture_settings(exemplar.shape, (height, width), layers, layer_weights, steps, variations)
    padding = "circular" if tileable else "zeros"
    channels = exemplar.shape[-1]
    targets = texture_targets(params, exemplar, size=(height, width), layers=tuple(weights), pooling=pooling)
    if spectrum_weight == "auto":
        spectrum_weight = calibrate_spectrum_weight(params, targets, weights, channels=channels, pooling=pooling, padding=padding)
    beta = float(spectrum_weight)
    if init is not None:
        start = jnp.asarray(init, jnp.float32)
        start = resize(start, height, width) if start.shape[:2] != (height, width) else start
        x = jnp.broadcast_to(start[..., :channels], (variations, height, width, channels))
    else:
        keys = jnp.stack([jax.random.PRNGKey(seed + i) for i in range(variations)])
        x = jax.vmap(lambda key: jax.random.uniform(key, (height, width, channels), jnp.float32))(keys)

    def value(pixels, data):
        t, p = data
        return texture_loss(pixels, t, p, layer_weights=weights, spectrum_weight=beta, pooling=pooling, padding=padding)[0]

    def report(chunk_report: ChunkReport) -> None:
        if callback is not None:
            pixels = chunk_report.params if batched else chunk_report.params[None]
            callback(TextureProgress(chunk_report.step, chunk_report.total, chunk_report.losses, pixels, chunk_report.opt_state))

    # one texture runs unbatched: under vmap L-BFGS's line-search branches become selects (more evaluations)
    batched = variations > 1
    outcome = minimize(value, x if batched else x[0], (targets, params), optimizer=optimizer, learning_rate=learning_rate,
                       steps=steps, chunk=chunk, batched=batched, data_axes=None, opt_state=opt_state, start_step=start_step,
                       callback=report)
    if outcome.diverged_at is not None:
        raise FloatingPointError(f"the optimisation diverged at step {int(np.max(outcome.diverged_at))} (loss not finite); "
                                 "try a smaller --spectrum-weight or --lr")
    final = jnp.clip(outcome.params if batched else outcome.params[None], 0.0, 1.0)
    if histogram:
        final = jax.vmap(match_histograms, in_axes=(0, None))(final, jnp.asarray(exemplar))
    loss_fn = jax.jit(jax.vmap(lambda pixels: texture_loss(pixels, targets, params, layer_weights=weights, spectrum_weight=beta,
                                                           pooling=pooling, padding=padding)))
    totals, terms = loss_fn(final)
    losses = [{"gram": float(terms["gram"][i]), "spectrum": float(terms["spectrum"][i]), "total": float(totals[i])}
              for i in range(variations)]
    return TextureResult(np.asarray(final), losses, beta, outcome.steps - start_step, outcome.history,
                         outcome.seconds, outcome.compile_seconds, outcome.opt_state)
