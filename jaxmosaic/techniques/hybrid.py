"""Hybrid images: one picture seen up close, another from afar.

Two ways. The optimisation of the original article fits pixels x = sigmoid(theta) to a sharp
term and a blurred term in linear light:

    L = m_precise * sum((x - A)^2) + m_blurred * sum((blur(x^g)^(1/g) - blur(B^g)^(1/g))^2)

with A the near image, B the far image, g = 2.2 and blur a separable Gaussian. `hybrid_fourier`
is the classic filter construction (Oliva, Torralba and Schyns 2006):
H = lowpass(B) + A - lowpass(A), with Gaussian filters applied in the Fourier domain.

Images are float32 in [0, 1], HWC (or NHWC where stated).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.config import ConfigError, choice, number, numbers, setting, whole
from jaxmosaic.filters import Padding, fft_gaussian_blur, gaussian_kernel1d, separable_blur
from jaxmosaic.image import center_crop, fit_shape, linear_to_srgb, resize, srgb_to_linear
from jaxmosaic.optimize import Optimizer
from jaxmosaic.stages import Problem, Progress, Solution, Stage, per_image, solve
from jaxmosaic.techniques.common import OptimizerConfig

__all__ = [
    "HybridMethod",
    "HybridInit",
    "HybridConfig",
    "HybridInputs",
    "hybrid_loss",
    "hybrid_losses",
    "seen_from_afar",
    "hybrid_fourier",
    "fit_pair",
    "hybrid_memory",
    "hybrid_problem",
    "hybrid_optimize",
]


class HybridMethod(enum.StrEnum):
    """"optimize": pixels fitted to the two terms (the original article's way); "fourier": the
    classic filter construction."""

    optimize = "optimize"
    fourier = "fourier"


class HybridInit(enum.StrEnum):
    """Where the optimisation starts: grey (theta = 0), the near image, or the fourier result."""

    grey = "grey"
    near = "near"
    fourier = "fourier"


@dataclasses.dataclass(frozen=True, kw_only=True)
class HybridConfig(OptimizerConfig):
    """Settings of a hybrid image; the defaults are the original article's run."""

    optimizer: Optimizer = setting(Optimizer.sgd, "sgd (plain gradient descent), adam or lbfgs.")
    lr: float = setting(0.3, "Learning rate (sgd, adam; scales lbfgs's step).")
    method: HybridMethod = setting(HybridMethod.optimize, "optimize pixels (the original article's way) or the fourier filter construction.")
    ratios: tuple[float, ...] = setting((0.1,), "m_precise / m_blurred; several, comma-separated, run together in one compiled call.", flag="--ratio")
    steps: int = setting(200, "Optimisation steps.", resume=False)
    kernel: int = setting(15, "Gaussian kernel size (taps, odd).")
    sigma: float = setting(3.0, "Gaussian sigma in pixels (fourier: the far image's low-pass).")
    sigma_high: float | None = setting(None, "fourier: sigma of the low-pass removed from the near image (default: --sigma).")
    init: HybridInit = setting(HybridInit.grey, "Start from grey, the near image, or the fourier result.")
    padding: Padding = setting(Padding.zeros, "Blur edge handling.")
    gamma: float = setting(2.2, "sRGB <-> linear light power.")
    size: int = setting(512, "Resize the near image so its longest side is this (0 keeps it).")
    crop: bool = setting(False, "Centre-crop the far image to the near one's aspect before resizing.")
    m_blurred: float = setting(1.0, "Weight of the blurred term (m_precise is ratio x m_blurred).", cli=False)

    def __post_init__(self):
        super().__post_init__()
        put = functools.partial(object.__setattr__, self)
        put("lr", number("lr", self.lr, above=0.0, maximum=1e6))
        put("method", choice("method", self.method, HybridMethod))
        put("ratios", numbers("ratios", self.ratios, minimum=0.0, maximum=1e6))
        whole("steps", self.steps, minimum=1)
        whole("kernel", self.kernel, minimum=1, maximum=4097, odd=True)
        put("sigma", number("sigma", self.sigma, above=0.0, maximum=1e4))
        if self.sigma_high is not None:
            put("sigma_high", number("sigma_high", self.sigma_high, above=0.0, maximum=1e4))
        put("init", choice("init", self.init, HybridInit))
        put("padding", choice("padding", self.padding, Padding))
        put("gamma", number("gamma", self.gamma, above=0.0, maximum=10.0))
        whole("size", self.size, minimum=0, maximum=2**16)
        put("m_blurred", number("m_blurred", self.m_blurred, minimum=0.0))


class HybridInputs(NamedTuple):
    """The two images a hybrid is made of."""

    near: np.ndarray  # HWC, the image seen up close (kept sharp)
    far: np.ndarray  # HWC, the image seen from afar (matched after blurring)
    names: tuple[str, str] = ("the near image", "the far image")  # for messages (e.g. their files)


def seen_from_afar(images, kernel, *, gamma: float = 2.2, padding: str = "zeros"):
    """blur(images^gamma)^(1/gamma): the image as a distant viewer sees it (blurred in linear light)."""
    return linear_to_srgb(separable_blur(srgb_to_linear(images, gamma=gamma), kernel, padding=padding), gamma=gamma)


def hybrid_losses(x, near, far, *, m_precise, m_blurred, kernel, gamma: float = 2.2, padding: str = "zeros", far_seen=None):
    """The original article's loss of each image of an NHWC batch -> (totals (N,),
    {"precise", "blurred"}: (N,) each); the weights may be one per image or shared.
    See `hybrid_loss` for the arguments."""
    x = jnp.asarray(x)
    if far_seen is None:
        far_seen = seen_from_afar(far, kernel, gamma=gamma, padding=padding)
    near, far_seen = jnp.asarray(near, x.dtype), jnp.asarray(far_seen, x.dtype)
    near = near if near.ndim == 4 else near[None]
    far_seen = far_seen if far_seen.ndim == 4 else far_seen[None]
    precise = jnp.sum((x - near) ** 2, axis=(1, 2, 3))
    blurred = jnp.sum((seen_from_afar(x, kernel, gamma=gamma, padding=padding) - far_seen) ** 2, axis=(1, 2, 3))
    return m_precise * precise + m_blurred * blurred, {"precise": precise, "blurred": blurred}


def hybrid_loss(x, near, far, *, m_precise, m_blurred, kernel, gamma: float = 2.2, padding: str = "zeros", far_seen=None):
    """The original article's loss, summed over every pixel and channel of `x` (one image or a batch).

    Args:
      x, near, far: images of one shape, HWC or NHWC, values in (0, 1].
      m_precise, m_blurred: weights of the two terms (may be traced).
      kernel: 1-D blur taps, e.g. `gaussian_kernel1d(15, 3.0)`.
      gamma: the power that takes sRGB values to linear light and back.
      padding: the blur's edge handling: "zeros" (the article's), "reflect" or "wrap".
      far_seen: `seen_from_afar(far, ...)` if already computed (an optimisation loop computes it
        once); `far` is then not used.

    Returns:
      (total, {"precise": sum((x - near)^2), "blurred": sum of squared blurred differences}).
    """
    x = jnp.asarray(x)
    batch = x if x.ndim == 4 else x[None]
    _, terms = hybrid_losses(batch, near, far, m_precise=1.0, m_blurred=1.0, kernel=kernel, gamma=gamma, padding=padding,
                             far_seen=far_seen)
    precise, blurred = jnp.sum(terms["precise"]), jnp.sum(terms["blurred"])
    return m_precise * precise + m_blurred * blurred, {"precise": precise, "blurred": blurred}


def hybrid_fourier(near, far, *, sigma_low: float, sigma_high: float, linear_light: bool = False, gamma: float = 2.2):
    """lowpass(far, sigma_low) + near - lowpass(near, sigma_high), clipped to [0, 1].

    With `linear_light` the sum is formed on x^gamma and taken back by the power 1/gamma.
    Sigmas are static. Values outside [0, 1], the method's known flaw, are clipped.
    """
    near, far = jnp.asarray(near), jnp.asarray(far)
    if linear_light:
        near, far = srgb_to_linear(near, gamma=gamma), srgb_to_linear(far, gamma=gamma)
    mixed = jnp.clip(fft_gaussian_blur(far, sigma_low) + near - fft_gaussian_blur(near, sigma_high), 0.0, 1.0)
    return linear_to_srgb(mixed, gamma=gamma) if linear_light else mixed


def fit_pair(config: HybridConfig, inputs: HybridInputs) -> tuple[np.ndarray, np.ndarray, str]:
    """The near image resized to `config.size` (its longest side; 0 keeps it) and the far image
    brought to the same size (centre-cropped to the near image's aspect first with `config.crop`),
    with a line saying what was done."""
    for name, image in zip(inputs.names, (inputs.near, inputs.far)):
        if min(image.shape[:2]) < 2:
            raise ValueError(f"{name} is {image.shape[1]}x{image.shape[0]}, too small for a hybrid")
    height, width = fit_shape(*inputs.near.shape[:2], config.size)
    near = np.asarray(resize(inputs.near, height, width))
    far = inputs.far
    note = f"far image {far.shape[1]}x{far.shape[0]}"
    if config.crop:
        scale = min(far.shape[0] / height, far.shape[1] / width)
        far = center_crop(far, max(1, round(height * scale)), max(1, round(width * scale)))
        note += f" centre-cropped to {far.shape[1]}x{far.shape[0]} and"
    return near, np.asarray(resize(far, height, width)), f"near image at {width}x{height}; {note} resized to {width}x{height}"


def hybrid_memory(config: HybridConfig, inputs: HybridInputs) -> int:
    """Check the settings against the inputs (before any work) and estimate the peak memory:
    a generous bound on the image-sized float32 buffers one step keeps alive per ratio."""
    height, width = fit_shape(*inputs.near.shape[:2], config.size)
    if config.kernel > min(height, width):
        raise ConfigError("kernel", f"{config.kernel} is larger than the image ({width}x{height})")
    count = len(config.ratios) if config.method == HybridMethod.optimize else 1
    return count * height * width * 3 * 4 * 48 + 2 * (inputs.far.size + inputs.near.size) * 4


def _logit(image, eps: float = 1e-3):
    image = jnp.clip(image, eps, 1 - eps)
    return jnp.log(image) - jnp.log1p(-image)


def hybrid_problem(config: HybridConfig, inputs: HybridInputs, params=None) -> Problem:
    """The hybrid as a `Problem`: one image per ratio m_precise / m_blurred, optimised together
    (a batch), or with the fourier method the filter construction itself (no stage; its loss
    terms are reported on the same scale as the optimisation's). `params` is unused: no network."""
    hybrid_memory(config, inputs)
    near, far, note = fit_pair(config, inputs)
    near, far = jnp.asarray(near, jnp.float32), jnp.asarray(far, jnp.float32)
    kernel = gaussian_kernel1d(config.kernel, config.sigma)
    options = {"kernel": kernel, "gamma": config.gamma, "padding": config.padding}
    far_seen = jax.jit(seen_from_afar, static_argnames=("gamma", "padding"))(far, **options)
    fourier = config.method == HybridMethod.fourier
    ratios = config.ratios[:1] if fourier else config.ratios
    m_precise = jnp.asarray(ratios, jnp.float32) * config.m_blurred
    m_blurred = jnp.full((len(ratios),), config.m_blurred, jnp.float32)

    def loss(x, weights):
        return hybrid_losses(x, near, None, m_precise=weights[0], m_blurred=weights[1], far_seen=far_seen, **options)

    terms_of = jax.jit(loss)

    def terms(images):
        return per_image(terms_of(jnp.asarray(images), (m_precise, m_blurred)))

    def constructed(sigma_high):
        return hybrid_fourier(near, far, sigma_low=config.sigma, sigma_high=sigma_high, linear_light=True, gamma=config.gamma)

    if fourier:
        image = constructed(config.sigma_high or config.sigma)
        return Problem(stages=(), steps=(), optimizer=config.optimizer, learning_rate=config.learning_rate, count=1,
                       view=lambda x: x, finish=lambda x: x, terms=terms, initial=image[None], notes=(note,))

    def start(_):
        theta = {HybridInit.grey: lambda: jnp.zeros(near.shape, jnp.float32), HybridInit.near: lambda: _logit(near),
                 HybridInit.fourier: lambda: _logit(constructed(config.sigma))}[config.init]()
        return jnp.broadcast_to(theta, (len(ratios), *near.shape))

    def value(theta, weights):
        return loss(jax.nn.sigmoid(theta), weights)[0]

    stage = Stage(label=f"{near.shape[1]}x{near.shape[0]}", start=start, value_fn=value, data=(m_precise, m_blurred),
                  data_axes=0)
    return Problem(stages=(lambda: stage,), steps=(config.steps,), optimizer=config.optimizer,
                   learning_rate=config.learning_rate, count=len(ratios), view=jax.nn.sigmoid, finish=lambda x: x,
                   terms=terms, notes=(note,))


def hybrid_optimize(config: HybridConfig, inputs: HybridInputs, *, callback: Callable[[Progress], None] | None = None,
                    chunk: int | None = None, mesh=None) -> Solution:
    """One hybrid per ratio m_precise / m_blurred, optimised together as one batch through the
    blur (or the fourier construction, with `config.method`); `mesh` shares the ratios over devices.

    `HybridConfig()` is the original article's run: 512 px, grey start, plain gradient descent
    with lr 0.3 on the summed loss, 200 steps, kernel 15, sigma 3, zero padding; ratio 0.1 (the
    article also tried 0.3 and 1).

    Returns:
      A `Solution`: images (R, H, W, 3) and per image {"total", "precise", "blurred"}.
    """
    return solve(hybrid_problem(config, inputs), callback=callback, chunk=chunk, mesh=mesh)
