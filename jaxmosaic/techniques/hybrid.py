"""Hybrid images: one picture seen up close, another from afar.

Two ways. `hybrid_optimize` fits pixels x = sigmoid(theta) to a sharp term and a blurred term in
linear light (the optimisation of the hybrid-image seed):

    L = m_precise * sum((x - A)^2) + m_blurred * sum((blur(x^g)^(1/g) - blur(B^g)^(1/g))^2)

with A the near image, B the far image, g = 2.2 and blur a separable Gaussian. `hybrid_fourier`
is the classic filter construction (Oliva, Torralba and Schyns 2006):
H = lowpass(B) + A - lowpass(A), with Gaussian filters applied in the Fourier domain.

Images are float32 in [0, 1], HWC (or NHWC where stated).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.filters import PADDING_MODES, fft_gaussian_blur, gaussian_kernel1d, separable_blur
from jaxmosaic.image import linear_to_srgb, srgb_to_linear
from jaxmosaic.optimize import ChunkReport, minimize

__all__ = [
    "hybrid_loss",
    "seen_from_afar",
    "hybrid_fourier",
    "hybrid_optimize",
    "distance_preview",
    "HybridResult",
    "HybridProgress",
    "INITS",
]

INITS = ("grey", "near", "fourier")


def seen_from_afar(images, kernel, *, gamma: float = 2.2, padding: str = "zeros"):
    """blur(images^gamma)^(1/gamma): the image as a distant viewer sees it (blurred in linear light)."""
    return linear_to_srgb(separable_blur(srgb_to_linear(images, gamma=gamma), kernel, padding=padding), gamma=gamma)


def hybrid_loss(x, near, far, *, m_precise, m_blurred, kernel, gamma: float = 2.2, padding: str = "zeros", far_seen=None):
    """The seed's loss, summed over every pixel and channel of `x` (one image or a batch).

    Args:
      x, near, far: images of one shape, HWC or NHWC, values in (0, 1].
      m_precise, m_blurred: weights of the two terms (may be traced).
      kernel: 1-D blur taps, e.g. `gaussian_kernel1d(15, 3.0)`.
      gamma: the power that takes sRGB values to linear light and back.
      padding: the blur's edge handling: "zeros" (the seed's), "reflect" or "wrap".
      far_seen: `seen_from_afar(far, ...)` if already computed (an optimisation loop computes it
        once); `far` is then not used.

    Returns:
      (total, {"precise": sum((x - near)^2), "blurred": sum of squared blurred differences}).
    """
    if far_seen is None:
        far_seen = seen_from_afar(far, kernel, gamma=gamma, padding=padding)
    precise = jnp.sum((x - near) ** 2)
    blurred = jnp.sum((seen_from_afar(x, kernel, gamma=gamma, padding=padding) - far_seen) ** 2)
    return m_precise * precise + m_blurred * blurred, {"precise": precise, "blurred": blurred}


def hybrid_fourier(near, far, *, sigma_low: float, sigma_high: float, linear_light: bool = False, gamma: float = 2.2):
    """lowpass(far, sigma_low) + near - lowpass(near, sigma_high), clipped to [0, 1].

    With `linear_light` the sum is formed on x^gamma and taken back by the power 1/gamma.
    Sigmas are static. Values outside [0, 1], the method's known flaw, are clipped.
    """
    near, far = jnp.asarray(near), jnp.asarray(far)
    if linear_light:
        near, far = srgb_to_linear(near, gamma=gamma), srgb_to_linear(far, gamma=gamma)
    mixed = fft_gaussian_blur(far, sigma_low) + near - fft_gaussian_blur(near, sigma_high)
    mixed = jnp.clip(mixed, 0.0, 1.0)
    return linear_to_srgb(mixed, gamma=gamma) if linear_light else mixed


class HybridResult(NamedTuple):
    images: np.ndarray  # (R, H, W, 3): one hybrid per ratio
    ratios: tuple[float, ...]
    loss: list[dict]  # per ratio: {"total", "precise", "blurred"} of the returned image
    history: np.ndarray  # (steps, R): total loss before each step
    steps: int
    seconds: float
    compile_seconds: float
    diverged_at: np.ndarray | None  # per ratio: the step that was not finite, or -1


class HybridProgress(NamedTuple):
    """What `hybrid_optimize`'s callback sees after each chunk of steps."""

    step: int
    total: int
    loss: list[dict]  # per ratio: {"total", "precise", "blurred"} at the current images
    images: jax.Array  # (R, H, W, 3) current images


def distance_preview(image, *, gap: int = 8) -> np.ndarray:
    """The hybrid at full, 1/2, 1/4 and 1/8 size side by side, bottom-aligned on white.

    Shrinking stands in for stepping back: the far image takes over as the copies get smaller.
    """
    from jaxmosaic.image import resize

    image = np.asarray(image, np.float32)
    height, width = image.shape[:2]
    copies = [image] + [
        np.asarray(resize(image, max(1, height // f), max(1, width // f), method="linear")) for f in (2, 4, 8)
    ]
    canvas = np.ones((height, sum(c.shape[1] for c in copies) + gap * (len(copies) - 1), 3), np.float32)
    left = 0
    for copy in copies:
        canvas[height - copy.shape[0] :, left : left + copy.shape[1]] = copy
        left += copy.shape[1] + gap
    return canvas


def _logit(image, eps: float = 1e-3):
    image = jnp.clip(image, eps, 1 - eps)
    return jnp.log(image) - jnp.log1p(-image)


def hybrid_optimize(
    near,
    far,
    *,
    ratios: Sequence[float] = (0.1,),
    m_blurred: float = 1.0,
    steps: int = 200,
    kernel_size: int = 15,
    sigma: float = 3.0,
    learning_rate: float = 0.3,
    optimizer: str = "sgd",
    init: str = "grey",
    padding: str = "zeros",
    gamma: float = 2.2,
    chunk: int | None = None,
    callback: Callable[[HybridProgress], None] | None = None,
) -> HybridResult:
    """Optimise one hybrid per ratio m_precise / m_blurred, all in one vmapped, compiled loop.

    Defaults are the seed's run: grey start, plain gradient descent with lr 0.3 on the summed
    loss, 200 steps, kernel 15, sigma 3, zero padding; ratio 0.1 (the seed also tried 0.3 and 1).

    Args:
      near, far: HWC images of the same shape (resize or crop beforehand).
      ratios: m_precise for each output (m_blurred fixed).
      init: "grey" (theta = 0), "near" (the near image) or "fourier" (`hybrid_fourier` with sigma).
      chunk: steps per compiled chunk; `callback` gets a `HybridProgress` after each chunk.

    Returns:
      A `HybridResult`; loss values are those of the returned images.
    """
    near, far = jnp.asarray(near, jnp.float32), jnp.asarray(far, jnp.float32)
    if near.shape != far.shape or near.ndim != 3:
        raise ValueError(f"near and far must be HWC images of one shape, got {near.shape} and {far.shape}")
    if not ratios or any(not (r >= 0) for r in ratios):
        raise ValueError(f"ratios must be non-negative numbers, got {list(ratios)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if kernel_size < 1 or kernel_size > min(near.shape[:2]):
        raise ValueError(f"kernel size {kernel_size} must be between 1 and the image's smaller side ({min(near.shape[:2])})")
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {', '.join(PADDING_MODES)}, got {padding!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    kernel = gaussian_kernel1d(kernel_size, sigma)
    count = len(ratios)
    far_seen = jax.jit(seen_from_afar, static_argnames=("gamma", "padding"))(far, kernel, gamma=gamma, padding=padding)
    options = {"kernel": kernel, "gamma": gamma, "padding": padding, "far_seen": far_seen}

    def value(theta, data):
        m_precise, weight_blurred = data
        return hybrid_loss(jax.nn.sigmoid(theta), near, None, m_precise=m_precise, m_blurred=weight_blurred, **options)[0]

    if init == "grey":
        theta = jnp.zeros(near.shape, jnp.float32)
    elif init == "near":
        theta = _logit(near)
    else:
        theta = _logit(hybrid_fourier(near, far, sigma_low=float(sigma), sigma_high=float(sigma), linear_light=True, gamma=gamma))
    theta = jnp.broadcast_to(theta, (count, *near.shape))
    data = (jnp.asarray(ratios, jnp.float32), jnp.full((count,), m_blurred, jnp.float32))

    def terms(x, m_precise):
        total, parts = hybrid_loss(x, near, None, m_precise=m_precise, m_blurred=m_blurred, **options)
        return {"total": total, **parts}

    terms_of = jax.jit(jax.vmap(terms))

    def report(x):
        values = terms_of(x, data[0])
        return [{name: float(v[i]) for name, v in values.items()} for i in range(count)]

    def on_chunk(chunk_report: ChunkReport) -> None:
        x = jax.nn.sigmoid(chunk_report.params)
        callback(HybridProgress(chunk_report.step, chunk_report.total, report(x), x))

    outcome = minimize(
        value, theta, data, optimizer=optimizer, learning_rate=learning_rate, steps=steps,
        chunk=chunk, batched=True, callback=on_chunk if callback else None,
    )
    images = jax.nn.sigmoid(outcome.params)
    losses = report(images)
    return HybridResult(
        np.asarray(images), tuple(float(r) for r in ratios), losses, outcome.history, outcome.steps,
        outcome.seconds, outcome.compile_seconds, outcome.diverged_at,
    )
