"""Gaussian kernels and separable blurs.

Images are float arrays, channels last: HWC or NHWC. Kernel sizes are static; sigma may be traced.
"""

from __future__ import annotations

import enum
import math

import jax
import jax.numpy as jnp

__all__ = ["Padding", "gaussian_kernel1d", "separable_blur", "gaussian_blur", "fft_gaussian_blur", "gabor_kernel"]


class Padding(enum.StrEnum):
    """How a blur sees beyond the image's edges."""

    zeros = "zeros"
    reflect = "reflect"  # scipy.ndimage's "reflect": the edge sample repeated, d c b a | a b c d
    wrap = "wrap"  # periodic


_PAD_MODES = {Padding.reflect: "symmetric", Padding.zeros: "constant", Padding.wrap: "wrap"}  # -> jnp.pad's mode


def gaussian_kernel1d(size: int, sigma, *, dtype=jnp.float32) -> jax.Array:
    """The normalised 1-D Gaussian k[i] = exp(-(c - i)^2 / (2 sigma^2)) / sum, c = (size - 1) // 2.

    The hybrid-image article's kernel: `gaussian_kernel1d(11, 2)` is 0.00881223, 0.02714358, ...,
    0.20056541, ... For odd sizes it equals scipy.ndimage's Gaussian of radius (size - 1) / 2.

    Args:
      size: number of taps (static, >= 1).
      sigma: standard deviation in pixels (> 0; may be traced).

    Returns:
      An array of shape (size,).
    """
    if int(size) != size or size < 1:
        raise ValueError(f"kernel size must be a positive integer, got {size}")
    center = (size - 1) // 2
    offsets = center - jnp.arange(size, dtype=dtype)
    weights = jnp.exp(-(offsets**2) / (2 * jnp.asarray(sigma, dtype) ** 2))
    return weights / jnp.sum(weights)


_BLOCK = 64


def _blur_axis(images: jax.Array, kernel: jax.Array, axis: int, padding: str) -> jax.Array:
    """Correlate NHWC `images` with a 1-D kernel along axis 1 (H) or 2 (W), each channel alone.

    Written as a blocked Toeplitz matrix product rather than a depthwise convolution: XLA's CPU
    convolutions with three channels run at well under 1 GFLOP/s, while this form runs at matmul
    speed (a 512x512 blur with its gradient is about 20x faster) and stays linear in the image
    size. Each block of _BLOCK output rows reads _BLOCK + size - 1 padded input rows, gathered
    with reshapes and slices (a gather's scatter-add gradient would double the cost).
    """
    size = kernel.shape[0]
    before = (size - 1) // 2
    length = images.shape[axis]
    block = min(_BLOCK, length)
    blocks = -(-length // block)
    pad = [(0, 0)] * 4
    pad[axis] = (before, size - 1 - before)
    padded = jnp.pad(images, pad, mode=_PAD_MODES[padding])
    pad[axis] = (0, (blocks + 1) * block - padded.shape[axis])
    rows = jnp.moveaxis(jnp.pad(padded, pad), axis, 0)
    head = rows[: blocks * block].reshape(blocks, block, *rows.shape[1:])
    tail = rows[block : (blocks + 1) * block].reshape(blocks, block, *rows.shape[1:])[:, : size - 1]
    windows = jnp.concatenate([head, tail], axis=1)
    offset = jnp.arange(block + size - 1)[None, :] - jnp.arange(block)[:, None]
    toeplitz = jnp.where((offset >= 0) & (offset < size), kernel[jnp.clip(offset, 0, size - 1)], 0).astype(images.dtype)
    out = jnp.einsum("ij,bj...->bi...", toeplitz, windows).reshape(blocks * block, *rows.shape[1:])
    return jnp.moveaxis(out[:length], 0, axis)


def separable_blur(images: jax.Array, kernel: jax.Array, *, padding: str = "reflect") -> jax.Array:
    """Blur each channel with `kernel` along H and then W (a separable correlation).

    Matches scipy.ndimage.correlate1d along both axes with mode="reflect" / "constant" / "wrap"
    (for a Gaussian of odd size: scipy.ndimage.gaussian_filter1d with the same radius).

    Args:
      images: HWC or NHWC.
      kernel: 1-D taps, e.g. `gaussian_kernel1d(15, 3.0)`; no longer than the image's height and width.
      padding: "reflect" (edge sample repeated), "zeros" or "wrap" (periodic).

    Returns:
      Blurred images, same shape and dtype.
    """
    if padding not in _PAD_MODES:
        raise ValueError(f"padding must be one of {', '.join(Padding)}, got {padding!r}")
    images = jnp.asarray(images)
    single = images.ndim == 3
    batch = images[None] if single else images
    height, width = batch.shape[1:3]
    if kernel.shape[0] > min(height, width):
        raise ValueError(f"kernel of {kernel.shape[0]} taps is larger than the image ({height}x{width})")
    out = _blur_axis(_blur_axis(batch, kernel, 1, padding), kernel, 2, padding)
    return out[0] if single else out


def gaussian_blur(images: jax.Array, sigma, kernel_size: int, *, padding: str = "reflect") -> jax.Array:
    """`separable_blur` with `gaussian_kernel1d(kernel_size, sigma)`."""
    return separable_blur(images, gaussian_kernel1d(kernel_size, sigma, dtype=jnp.asarray(images).dtype), padding=padding)


def fft_gaussian_blur(images, sigma: float):
    """Gaussian low-pass in the Fourier domain, transfer exp(-2 pi^2 sigma^2 |f|^2).

    The image is first extended by mirror padding (3 sigma on each side), so the periodic FFT
    does not wrap one edge into the other. `sigma` is static. HWC or NHWC.
    """
    images = jnp.asarray(images)
    pad = int(math.ceil(3 * sigma))
    height, width = images.shape[-3], images.shape[-2]
    pad_h, pad_w = min(pad, height - 1), min(pad, width - 1)
    widths = [(0, 0)] * (images.ndim - 3) + [(pad_h, pad_h), (pad_w, pad_w), (0, 0)]
    padded = jnp.pad(images, widths, mode="symmetric")
    rows, cols = padded.shape[-3], padded.shape[-2]
    fy = jnp.fft.fftfreq(rows)[:, None]
    fx = jnp.fft.rfftfreq(cols)[None, :]
    transfer = jnp.exp(-2 * (jnp.pi * sigma) ** 2 * (fy**2 + fx**2))[..., None]
    spectrum = jnp.fft.rfft2(padded, axes=(-3, -2))
    spectrum = spectrum * transfer.astype(spectrum.dtype)
    out = jnp.fft.irfft2(spectrum, s=(rows, cols), axes=(-3, -2)).astype(images.dtype)
    return out[..., pad_h : pad_h + height, pad_w : pad_w + width, :]


def gabor_kernel(size: int, sigma, theta, lambd, gamma, psi=0.0, *, dtype=jnp.float32) -> jax.Array:
    """A Gabor kernel in OpenCV's `getGaborKernel` convention, values in [-1, 1].

    g(x, y) = exp(-(x'^2 + gamma^2 y'^2) / (2 sigma^2)) * cos(2 pi x' / lambd + psi),
    x' = x cos(theta) + y sin(theta), y' = -x sin(theta) + y cos(theta), for x, y in
    [-(size // 2), size // 2], stored as OpenCV stores it: row i holds y = size // 2 - i and
    column j holds x = size // 2 - j. An odd `size` gives exactly cv2.getGaborKernel((size, size),
    sigma, theta, lambd, gamma, psi); an even one drops OpenCV's last row and column.

    Args:
      size: side in pixels (static).
      sigma, theta, lambd, gamma, psi: envelope width (px), orientation (rad), wavelength (px),
        aspect ratio, phase (rad); may be traced, so a grid is one `vmap`.

    Returns:
      (size, size) array.
    """
    half = size // 2
    coords = half - jnp.arange(size, dtype=dtype)
    y, x = coords[:, None], coords[None, :]
    c, s = jnp.cos(jnp.asarray(theta, dtype)), jnp.sin(jnp.asarray(theta, dtype))
    xr = x * c + y * s
    yr = -x * s + y * c
    envelope = jnp.exp(-(xr**2 + (gamma**2) * yr**2) / (2 * jnp.asarray(sigma, dtype) ** 2))
    return envelope * jnp.cos(2 * jnp.pi * xr / lambd + psi)
