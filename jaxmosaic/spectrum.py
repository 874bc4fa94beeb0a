"""Fourier spectrum constraints on images: the projection onto a Fourier modulus (Liu, Gousseau and
Xia 2016), the periodic component (Moisan 2011) and a target spectrum at another size (as in
random-phase-noise texture synthesis, Galerne, Gousseau and Morel 2011), radial power spectra.

Images are float arrays HWC (or NHWC: the transforms run over the two spatial axes); one channel
for grey, three for colour. All functions are pure and work under `jit`, `grad` and `vmap`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "spectrum_projection",
    "spectrum_loss",
    "spectrum_losses",
    "spectrum_distance",
    "periodic_component",
    "spectrum_target",
    "radial_power_spectrum",
]

_AXES = (-3, -2)


def _fft(images: jax.Array) -> jax.Array:
    return jnp.fft.rfft2(images, axes=_AXES)


def _ifft(spectrum: jax.Array, shape) -> jax.Array:
    return jnp.fft.irfft2(spectrum, s=shape[-3:-1], axes=_AXES)


def spectrum_projection(x: jax.Array, exemplar: jax.Array) -> jax.Array:
    """P(x): the image closest to `x` (in L2) whose Fourier modulus is the exemplar's, per channel.

    With x^ and u^ the 2-D FFTs of x and the exemplar u, one phase is shared by all channels, so
    colours keep their correlations:

        phi(f) = sum_c x^_c(f) conj(u^_c(f)),    P(x)_c = IFFT(phi / |phi| * u^_c)

    Where phi(f) = 0 (x has no energy along u at f) every phase is equally close; the phase 1 is
    taken, so |FFT(P(x))| = |u^| everywhere. For one channel this is |u^| e^{i arg x^}.

    Args:
      x: the image, HWC or NHWC (a batch projects each image).
      exemplar: an image of the same height, width and channels (HWC), or a batch like x.

    Returns:
      P(x), the shape of x.
    """
    x = jnp.asarray(x)
    exemplar = jnp.asarray(exemplar, x.dtype)
    x_hat, u_hat = _fft(x), _fft(exemplar)
    if u_hat.ndim < x_hat.ndim:  # one exemplar for a batch
        u_hat = u_hat.reshape((1,) * (x_hat.ndim - u_hat.ndim) + u_hat.shape)
    phi = jnp.sum(x_hat * jnp.conj(u_hat), axis=-1, keepdims=True)
    nonzero = jnp.abs(phi) > 0
    safe = jnp.where(nonzero, phi, 1.0)  # keeps the gradient of |phi| finite where phi = 0
    phase = jnp.where(nonzero, safe / jnp.abs(safe).astype(safe.dtype), 1.0)
    return _ifft(phase * u_hat, x.shape).astype(x.dtype)


def spectrum_losses(x: jax.Array, exemplar: jax.Array) -> jax.Array:
    """1/2 ||x - P(x)||^2 of each image of an NHWC batch (one exemplar for all, or one each) -> (N,).

    P(x) is held constant in the gradient, which is therefore exactly x - P(x): the gradient of
    half the squared distance to a set at a point with a unique closest point (the paper's
    gradient; differentiating through P gives the same, as a test checks).
    """
    x = jnp.asarray(x)
    x = x if x.ndim == 4 else x[None]
    exemplar = jnp.asarray(exemplar, x.dtype)
    # one image at a time: a batched FFT may round otherwise than the image's own, and an
    # optimiser amplifies the last bit into another image
    exemplars = exemplar if exemplar.ndim == 4 else [exemplar] * x.shape[0]
    projected = jnp.stack([spectrum_projection(image, target) for image, target in zip(x, exemplars)])
    return 0.5 * jnp.sum(jnp.square(x - jax.lax.stop_gradient(projected)), axis=(1, 2, 3))


def spectrum_loss(x: jax.Array, exemplar: jax.Array) -> jax.Array:
    """1/2 ||x - P(x)||^2 (summed over a batch), with P `spectrum_projection` held constant in
    the gradient (see `spectrum_losses`)."""
    return jnp.sum(spectrum_losses(x, exemplar))


def spectrum_distance(x: jax.Array, exemplar: jax.Array) -> jax.Array:
    """||x - P(x)|| / ||x||: how far x is from having the exemplar's spectrum, relative to x."""
    x = jnp.asarray(x)
    return jnp.linalg.norm((x - spectrum_projection(x, exemplar)).ravel()) / jnp.linalg.norm(x.ravel())


def periodic_component(image: jax.Array) -> jax.Array:
    """The periodic component p of an HWC image (Moisan, "Periodic plus smooth image decomposition").

    u = p + s with s smooth and p periodic: p's periodic discrete Laplacian equals u's Laplacian
    taken with inside neighbours only, and mean(p) = mean(u). Its spectrum has none of the cross
    that the jump between opposite borders puts in u's, which makes it the image to take a
    Fourier modulus from.
    """
    image = jnp.asarray(image)
    height, width = image.shape[-3:-1]
    # the boundary image v: the jumps between opposite borders, at the border pixels
    rows = image[..., -1:, :, :] - image[..., :1, :, :]
    cols = image[..., :, -1:, :] - image[..., :, :1, :]
    v = jnp.zeros_like(image)
    v = v.at[..., :1, :, :].add(rows).at[..., -1:, :, :].add(-rows)
    v = v.at[..., :, :1, :].add(cols).at[..., :, -1:, :].add(-cols)
    q = jnp.arange(height, dtype=image.dtype).reshape(-1, 1)
    r = jnp.arange(width // 2 + 1, dtype=image.dtype).reshape(1, -1)
    denominator = 2 * jnp.cos(2 * jnp.pi * q / height) + 2 * jnp.cos(2 * jnp.pi * r / width) - 4
    denominator = denominator.at[0, 0].set(1.0).reshape((1,) * (image.ndim - 3) + (height, width // 2 + 1, 1))
    v_hat = _fft(v)
    s_hat = v_hat / denominator.astype(v_hat.dtype)
    s_hat = s_hat.at[..., 0, 0, :].set(0.0)  # s has mean 0, so p keeps u's mean
    return image - _ifft(s_hat, image.shape).astype(image.dtype)


def spectrum_target(exemplar: jax.Array, height: int, width: int) -> jax.Array:
    """An image of `height` x `width` whose Fourier modulus is the exemplar's texture spectrum.

    The exemplar's periodic component p, minus its mean m, is embedded in a flat image of mean m
    (centred; centre-cropped along a side where the output is smaller), and scaled by
    sqrt(output pixels / embedded pixels) so the variance per pixel is kept: the "spot" of
    random-phase-noise texture synthesis (Galerne, Gousseau and Morel 2011). At the exemplar's
    own size this is p itself.

    Args:
      exemplar: HWC image.
      height, width: the output size (static).

    Returns:
      An HWC image of the output size (its mean is the exemplar's).
    """
    p = periodic_component(jnp.asarray(exemplar))
    h, w = p.shape[0], p.shape[1]
    mean = jnp.mean(p, axis=(0, 1), keepdims=True)
    ch, cw = min(h, height), min(w, width)
    top, left = (h - ch) // 2, (w - cw) // 2
    spot = p[top : top + ch, left : left + cw] - mean
    if (ch, cw) != (h, w):
        spot = periodic_component(spot + mean) - mean
    scale = np.sqrt(height * width / (ch * cw))
    canvas = jnp.zeros((height, width, p.shape[2]), p.dtype)
    y, x = (height - ch) // 2, (width - cw) // 2
    return canvas.at[y : y + ch, x : x + cw].set(scale * spot) + mean


def radial_power_spectrum(image: jax.Array, bins: int = 32) -> jax.Array:
    """log10 of the mean power |x^|^2 / pixels in `bins` rings of radial frequency (0 to Nyquist),
    averaged over channels, mean removed. HWC input; for comparing textures' spectra."""
    image = jnp.asarray(image)
    height, width = image.shape[:2]
    centred = image - jnp.mean(image, axis=(0, 1), keepdims=True)
    power = jnp.mean(jnp.abs(jnp.fft.fft2(centred, axes=(0, 1))) ** 2, axis=-1) / (height * width)
    fy = np.fft.fftfreq(height).reshape(-1, 1)
    fx = np.fft.fftfreq(width).reshape(1, -1)
    radius = np.sqrt(fy**2 + fx**2) / 0.5  # 1 at Nyquist along an axis
    ring = np.minimum((radius * bins).astype(int), bins)  # corners beyond Nyquist fall in a last ring
    inside = (ring < bins) & (radius > 0)
    sums = jnp.zeros(bins + 1, power.dtype).at[ring.ravel()].add(jnp.where(inside, power, 0).ravel())
    counts = np.bincount(ring.ravel()[inside.ravel()], minlength=bins + 1)
    return jnp.log10(sums[:bins] / np.maximum(counts[:bins], 1).astype(power.dtype) + 1e-12)
