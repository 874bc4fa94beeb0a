"""Colour spaces: CIE Lab (D65) and YIQ, from and to sRGB.

Images are float arrays with sRGB values in [0, 1], channels last (HWC or NHWC; any leading
shape works). All functions are pure and work under `jit` and `vmap`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmosaic.image import srgb_to_linear

__all__ = ["rgb_to_lab", "rgb_to_yiq", "yiq_to_rgb", "luminance"]

# linear sRGB -> XYZ (D65), IEC 61966-2-1
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375), (0.2126729, 0.7151522, 0.0721750), (0.0193339, 0.1191920, 0.9503041))
_WHITE_D65 = (0.95047, 1.0, 1.08883)
# NTSC 1953 YIQ; its Y is the Rec. 601 luma
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.595716, -0.274453, -0.321263), (0.211456, -0.522591, 0.311135))


def _apply(matrix, images: jax.Array) -> jax.Array:
    images = jnp.asarray(images)
    return jnp.einsum("...c,dc->...d", images, jnp.asarray(matrix, images.dtype))


def rgb_to_lab(images: jax.Array) -> jax.Array:
    """sRGB in [0, 1] to CIE L*a*b* (D65 white): L in [0, 100], a and b roughly in [-128, 127].

    Pure red (1, 0, 0) gives (53.24, 80.09, 67.20), as in every Lab reference table.
    """
    xyz = _apply(_RGB_TO_XYZ, srgb_to_linear(jnp.clip(images, 0.0, 1.0), curve="srgb"))
    t = xyz / jnp.asarray(_WHITE_D65, xyz.dtype).reshape((1,) * (xyz.ndim - 1) + (3,))
    delta = 6.0 / 29.0
    f = jnp.where(t > delta**3, jnp.cbrt(jnp.maximum(t, delta**3)), t / (3 * delta**2) + 4.0 / 29.0)
    lightness = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return jnp.stack([lightness, a, b], axis=-1)


def rgb_to_yiq(images: jax.Array) -> jax.Array:
    """sRGB values to YIQ (Y in [0, 1]; I and Q centred on 0 for greys)."""
    return _apply(_RGB_TO_YIQ, images)


def yiq_to_rgb(images: jax.Array) -> jax.Array:
    """The exact inverse of `rgb_to_yiq` (no clipping)."""
    images = jnp.asarray(images)
    return _apply(jnp.linalg.inv(jnp.asarray(_RGB_TO_YIQ, jnp.float32)).astype(images.dtype), images)


def luminance(images: jax.Array) -> jax.Array:
    """Rec. 601 luma Y = 0.299 R + 0.587 G + 0.114 B, keeping a channel axis of 1."""
    return rgb_to_yiq(images)[..., :1]
