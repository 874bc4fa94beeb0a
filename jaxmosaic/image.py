"""Image arrays: resizing, cropping and the sRGB curves, as pure JAX functions.

Images are float32 arrays with values in [0, 1], channels last: HWC for one image, NHWC for a
batch. Every function accepts one image or a batch and works under `jit` and `vmap`; reading and
writing files is `jaxmosaic.io`'s business.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["fit_shape", "resize", "center_crop", "srgb_to_linear", "linear_to_srgb"]


def fit_shape(height: int, width: int, longest: int | None) -> tuple[int, int]:
    """The (height, width) with the longest side equal to `longest`, keeping the aspect ratio.

    `None` or 0 keeps the size.
    """
    if not longest:
        return height, width
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(images: jax.Array, height: int, width: int, *, method: str = "lanczos3") -> jax.Array:
    """Resize HWC or NHWC images to (height, width), antialiased when shrinking.

    Uses `jax.image.resize`; values may overshoot [0, 1] slightly with lanczos and are clipped.
    `height` and `width` are static.
    """
    images = jnp.asarray(images)
    shape = (*images.shape[:-3], height, width, images.shape[-1])
    if shape == images.shape:
        return images
    return jnp.clip(jax.image.resize(images, shape, method=method, antialias=True), 0.0, 1.0)


def center_crop(images: jax.Array, height: int, width: int) -> jax.Array:
    """The central (height, width) window of HWC or NHWC images (static sizes)."""
    h, w = images.shape[-3], images.shape[-2]
    if height > h or width > w:
        raise ValueError(f"crop {height}x{width} is larger than the image {h}x{w}")
    top, left = (h - height) // 2, (w - width) // 2
    return images[..., top : top + height, left : left + width, :]


def srgb_to_linear(images: jax.Array, *, gamma: float = 2.2, curve: str = "power") -> jax.Array:
    """sRGB-encoded values in [0, 1] to linear light.

    `curve="power"` is x ** gamma (gamma 2.2 by default, as in the hybrid-image article);
    `curve="srgb"` is the exact piecewise IEC 61966-2-1 curve (gamma is then ignored).
    """
    images = jnp.asarray(images)
    if curve == "power":
        return images**gamma
    if curve == "srgb":
        return jnp.where(images <= 0.04045, images / 12.92, ((jnp.maximum(images, 0.04045) + 0.055) / 1.055) ** 2.4)
    raise ValueError(f"curve must be 'power' or 'srgb', got {curve!r}")


def linear_to_srgb(images: jax.Array, *, gamma: float = 2.2, curve: str = "power") -> jax.Array:
    """Linear light in [0, 1] to sRGB-encoded values; the inverse of `srgb_to_linear`."""
    images = jnp.asarray(images)
    if curve == "power":
        return images ** (1.0 / gamma)
    if curve == "srgb":
        safe = jnp.maximum(images, 0.0031308)
        return jnp.where(images <= 0.0031308, images * 12.92, 1.055 * safe ** (1.0 / 2.4) - 0.055)
    raise ValueError(f"curve must be 'power' or 'srgb', got {curve!r}")
