"""Neural style transfer (Gatys, Ecker and Bethge 2015): pixels optimised so that their VGG19
content features match one image and their Gram matrices match another's.

    L = alpha L_content + beta L_style + tv_weight TV        (definitions in `jaxmosaic.losses`)

Defaults are the paper's: content relu4_2; style relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 with
w_l = 1/5; alpha / beta = 1e-3; L-BFGS. Images are float32 in [0, 1], HWC; the optimised pixels
are unconstrained and clipped to [0, 1] when returned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.color import rgb_to_yiq, yiq_to_rgb
from jaxmosaic.image import fit_shape, resize
from jaxmosaic.losses import content_loss, style_loss, tv_loss
from jaxmosaic.optimize import ChunkReport, minimize
from jaxmosaic.techniques.texture import gram_targets, weighted_layers
from jaxmosaic.vgg import VGG19_LAYERS, check_layers, layer_channels, layer_stride, vgg19_features

__all__ = [
    "CONTENT_LAYERS",
    "STYLE_LAYERS",
    "INITS",
    "StyleTargets",
    "StyleSettings",
    "check_settings",
    "style_targets",
    "style_transfer_loss",
    "keep_colors",
    "style_transfer",
    "StyleProgress",
    "StyleResult",
    "Resume",
    "memory_estimate",
]

CONTENT_LAYERS = ("relu4_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
INITS = ("noise", "content", "style")


class StyleTargets(NamedTuple):
    content: dict  # layer -> P, the content image's (H, W, C) features (batched: (B, H, W, C))
    grams: dict  # layer -> A, the blended style Gram matrix (C, C) (batched: (B, C, C))


class StyleSettings(NamedTuple):
    content_layers: tuple[str, ...]
    style_weights: dict  # style layer -> w_l
    steps: list[int]  # per scale


def check_settings(
    styles: int,
    *,
    blend: Sequence[float] | None = None,
    content_layers: Sequence[str] = CONTENT_LAYERS,
    style_layers: Sequence[str] = STYLE_LAYERS,
    layer_weights: Sequence[float] | None = None,
    sizes: Sequence[int] = (512,),
    steps: int | Sequence[int] = 500,
) -> StyleSettings:
    """Validate `style_transfer`'s settings for `styles` style images (before any work starts);
    the messages name the command-line options."""
    content_layers = check_layers(tuple(content_layers), "--content-layers")
    style_weights = weighted_layers(style_layers, layer_weights, "--style-layers")
    if styles < 1:
        raise ValueError("at least one style image is needed")
    if blend is not None and len(blend) != styles:
        raise ValueError(f"--style-blend has {len(blend)} weights for {styles} style images")
    if blend is not None and (any(w < 0 for w in blend) or sum(blend) <= 0):
        raise ValueError("--style-blend weights must be non-negative and not all zero")
    step_counts = [steps] * len(sizes) if isinstance(steps, int) else list(steps)
    if len(step_counts) == 1:
        step_counts = step_counts * len(sizes)
    if len(step_counts) != len(sizes):
        raise ValueError(f"--steps has {len(step_counts)} counts for {len(sizes)} scales")
    if any(s < 1 for s in step_counts) or any(s < 16 for s in sizes):
        raise ValueError("every scale needs at least 1 step (--steps) and a size of at least 16 pixels (--size/--scales)")
    return StyleSettings(content_layers, style_weights, step_counts)


def style_targets(
    params,
    content: jax.Array,
    styles: Sequence[jax.Array],
    *,
    blend: Sequence[float] | None = None,
    content_layers: Sequence[str] = CONTENT_LAYERS,
    style_layers: Sequence[str] = STYLE_LAYERS,
    pooling: str = "max",
) -> StyleTargets:
    """The content features P^l and the style Gram matrices A^l to match.

    Several style images are blended as neural-style does: A^l = sum_i b_i A_i^l with the blend
    weights b normalised to sum 1. A style image of another size than the content is rescaled to
    the content's number of positions: A_i^l * M_l(content) / M_l(style), so E_l compares Gram
    matrices per position (for equal sizes this is the paper's A^l exactly).
    """
    content_layers, style_layers = tuple(content_layers), tuple(style_layers)
    blend = np.full(len(styles), 1.0 / len(styles)) if blend is None else np.asarray(blend, np.float64) / np.sum(blend)
    content_features = vgg19_features(params, jnp.asarray(content)[None], content_layers, pooling=pooling)
    targets = {name: content_features[name][0] for name in content_layers}
    grams = {name: 0.0 for name in style_layers}
    for weight, style in zip(blend, styles):
        style_grams = gram_targets(params, style, style_layers, size=content.shape[:2], pooling=pooling)
        grams = {name: grams[name] + float(weight) * style_grams[name] for name in style_layers}
    return StyleTargets(targets, grams)


def style_transfer_loss(
    x: jax.Array,
    targets: StyleTargets,
    params,
    *,
    style_weights: Mapping[str, float],
    alpha=1.0,
    beta=1e3,
    tv_weight=0.0,
    pooling: str = "max",
) -> tuple[jax.Array, dict]:
    """(total, {"content", "style", "tv"}) for one HWC image: the unweighted L_content (summed over
    the content layers), L_style = sum_l w_l E_l, and TV; total = alpha L_content + beta L_style +
    tv_weight TV."""
    layers = tuple(dict.fromkeys((*targets.content, *style_weights)))
    features = vgg19_features(params, x[None], layers, pooling=pooling)
    l_content = sum(content_loss(features[name][0], targets.content[name]) for name in targets.content)
    l_style = style_loss({name: features[name][0] for name in style_weights}, targets.grams, style_weights)
    tv = tv_loss(x)
    total = alpha * l_content + beta * l_style + tv_weight * tv
    return total, {"content": l_content, "style": l_style, "tv": tv}


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


def memory_estimate(height: int, width: int, layers: Sequence[str], batch: int = 1) -> int:
    """Bytes one L-BFGS step holds at the peak: every VGG activation up to the deepest layer twice
    (forward and its gradient, float32) plus the optimiser's image-sized buffers."""
    deepest = max(VGG19_LAYERS.index(name) for name in layers)
    floats = 0
    for name in VGG19_LAYERS[: deepest + 1]:
        stride = layer_stride(name)
        floats += (height // stride) * (width // stride) * layer_channels(name)
    return batch * (2 * floats * 4 + 30 * height * width * 3 * 4) + 200 * 2**20


class StyleProgress(NamedTuple):
    scale: int  # index into the scales
    size: tuple[int, int]  # (height, width) at this scale
    step: int  # steps done at this scale
    total: int  # steps asked for at this scale
    losses: np.ndarray  # loss before each step of the last chunk: (chunk,) or (chunk, batch)
    images: Any  # current pixels (unclipped), (B, H, W, 3)
    opt_state: Any


class Resume(NamedTuple):
    scale: int  # the scale to continue
    step: int  # steps already done at that scale
    images: Any  # (B, H, W, 3) pixels at that scale
    opt_state: Any


class StyleResult(NamedTuple):
    images: np.ndarray  # (B, H, W, 3) in [0, 1]: one per style with batch, else one
    loss: list[dict]  # per image: {"total", "content", "style", "tv"} on the returned image
    steps: int  # steps run over all scales
    history: list[np.ndarray]  # per scale: the loss before each step
    seconds: float
    compile_seconds: float
    opt_state: Any  # at the last scale


def _init(init, key, content, styles, height, width, batch):
    if isinstance(init, str):
        if init == "noise":
            image = jax.random.uniform(key, (height, width, 3), jnp.float32)
            return jnp.broadcast_to(image, (batch, height, width, 3))
        if init == "content":
            return jnp.broadcast_to(resize(content, height, width), (batch, height, width, 3))
        if init == "style":
            images = [resize(style, height, width) for style in styles]
            return jnp.stack(images[:batch]) if batch > 1 else images[0][None]
        raise ValueError(f"init must be one of {', '.join(INITS)} or an image, got {init!r}")
    return jnp.broadcast_to(resize(jnp.asarray(init), height, width), (batch, height, width, 3))


def style_transfer(
    params,
    content: np.ndarray,
    styles: Sequence[np.ndarray],
    *,
    blend: Sequence[float] | None = None,
    batch: bool = False,
    content_layers: Sequence[str] = CONTENT_LAYERS,
    style_layers: Sequence[str] = STYLE_LAYERS,
    layer_weights: Sequence[float] | None = None,
    alpha: float = 1.0,
    beta: float = 1e3,
    tv_weight: float = 0.0,
    pooling: str = "max",
    optimizer: str = "lbfgs",
    learning_rate: float | None = None,
    sizes: Sequence[int] = (512,),
    steps: int | Sequence[int] = 500,
    style_scale: float = 1.0,
    init: str | np.ndarray = "noise",
    seed: int = 0,
    original_colors: bool = False,
    chunk: int | None = None,
    callback: Callable[[StyleProgress], None] | None = None,
    resume: Resume | None = None,
) -> StyleResult:
    """Stylise `content` with `styles`, coarse to fine over `sizes` (longest side per scale).

    Args:
      params: VGG19 params.
      content: HWC image.
      styles: HWC images; blended by `blend` into one target, or with `batch` one output each,
        optimised together in one vmapped, compiled loop (all at the content's size).
      layer_weights: w_l per style layer (default 1 / number of layers).
      sizes: the longest side at each scale; each later scale starts from the previous result
        upsampled. `steps`: one count for every scale, or one per scale.
      style_scale: each style image's longest side relative to the content's.
      init: "noise" (uniform, seeded), "content", "style" or an image.
      chunk: steps per compiled chunk (the callback runs after each).
      resume: continue from a `Resume` (e.g. a checkpoint) instead of starting over.
    """
    checked = check_settings(len(styles), blend=blend, content_layers=content_layers, style_layers=style_layers,
                             layer_weights=layer_weights, sizes=sizes, steps=steps)
    content_layers, style_weights, step_counts = checked
    style_layers = tuple(style_weights)
    sizes = list(sizes)
    count = len(styles) if batch else 1
    key = jax.random.PRNGKey(seed)
    data_axes = (0, None) if batch else None
    images = None
    history, total_steps, seconds, compile_seconds, opt_state = [], 0, 0.0, 0.0, None
    first = resume.scale if resume is not None else 0
    for index, size in enumerate(sizes):
        height, width = fit_shape(*content.shape[:2], size)
        if index < first:
            continue
        scaled_content = resize(content, height, width)
        style_side = max(16, round(max(height, width) * style_scale))
        scaled_styles = [resize(style, *fit_shape(*style.shape[:2], style_side)) for style in styles]
        if batch:
            per_style = [style_targets(params, scaled_content, [s], content_layers=content_layers, style_layers=style_layers, pooling=pooling) for s in scaled_styles]
            targets = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_style)
        else:
            targets = style_targets(params, scaled_content, scaled_styles, blend=blend, content_layers=content_layers,
                                    style_layers=style_layers, pooling=pooling)
        start_step, state = 0, None
        if resume is not None and index == first:
            x, start_step, state = jnp.asarray(resume.images), resume.step, resume.opt_state
        elif images is None:
            x = _init(init, key, scaled_content, scaled_styles, height, width, count)
        else:
            x = resize(images, height, width)

        def value(pixels, data):
            t, p = data
            return style_transfer_loss(pixels, t, p, style_weights=style_weights, alpha=alpha, beta=beta, tv_weight=tv_weight, pooling=pooling)[0]

        def report(chunk_report: ChunkReport, index=index, shape=(height, width)) -> None:
            if callback is not None:
                pixels = chunk_report.params if batch else chunk_report.params[None]
                callback(StyleProgress(index, shape, chunk_report.step, chunk_report.total, chunk_report.losses, pixels, chunk_report.opt_state))

        outcome = minimize(
            value, x if batch else x[0], (targets, params), optimizer=optimizer, learning_rate=learning_rate,
            steps=step_counts[index], chunk=chunk, batched=batch, data_axes=data_axes,
            opt_state=state, start_step=start_step, callback=report,
        )
        images = outcome.params if batch else outcome.params[None]
        history.append(outcome.history)
        total_steps += outcome.steps - start_step
        seconds += outcome.seconds
        compile_seconds += outcome.compile_seconds
        opt_state = outcome.opt_state
        if outcome.diverged_at is not None:
            raise FloatingPointError(f"the optimisation diverged at step {int(np.max(outcome.diverged_at))} of scale {size} (loss not finite); try a smaller --lr or --style-weight")
    final = jnp.clip(images, 0.0, 1.0)
    if original_colors:
        final = keep_colors(final, jnp.broadcast_to(resize(content, *final.shape[1:3]), final.shape))
    losses = []
    for i in range(count):
        t = jax.tree_util.tree_map(lambda a: a[i], targets) if batch else targets
        total, terms = style_transfer_loss(final[i], t, params, style_weights=style_weights, alpha=alpha, beta=beta, tv_weight=tv_weight, pooling=pooling)
        losses.append({"total": float(total), **{name: float(v) for name, v in terms.items()}})
    return StyleResult(np.asarray(final), losses, total_steps, history, seconds, compile_seconds, opt_state)
