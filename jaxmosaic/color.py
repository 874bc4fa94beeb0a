"""Colour spaces: CIE Lab (D65) and YIQ, from and to sRGB.

Images are float arrays with sRGB values in [0, 1], channels last (HWC or NHWC; any leading
shape works). All functions are pure and work under `jit` and `vmap`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmosaic.image import linear_to_srgb, srgb_to_linear

__all__ = ["rgb_to_lab", "rgb_to_yiq", "yiq_to_rgb", "luminance", "match_color", "match_luminance", "COLOR_MODES", "lab_to_rgb",
           "reinhard_transfer", "lab_moment_transfer"]

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


COLOR_MODES = ("pca", "cholesky", "symmetric")
"""The linear colour transfers of `match_color`."""


def _sqrtm(matrix: jax.Array) -> jax.Array:
    """The symmetric square root of a symmetric positive definite matrix."""
    values, vectors = jnp.linalg.eigh(matrix)
    return (vectors * jnp.sqrt(jnp.maximum(values, 0.0))[None, :]) @ vectors.T


def match_color(image: jax.Array, reference: jax.Array, mode: str, *, eps: float = 1e-5) -> jax.Array:
    """The image's colours mapped linearly, x -> A (x - mu_x) + mu_r, so that their mean and
    covariance become the reference's (the colour transfer of Gatys et al., "Controlling
    Perceptual Factors in Neural Style Transfer", as neural-style's linear-color-transfer.py has it).

    Args:
      image: HWC RGB in [0, 1] (vmap for a batch).
      reference: HWC RGB whose colour statistics the result takes (any size).
      mode: how A is chosen among the matrices with A C_x A^T = C_r: "pca" A = C_r^1/2 C_x^-1/2
        (symmetric square roots), "cholesky" A = L_r L_x^-1 (Cholesky factors), "symmetric" the
        symmetric A = C_x^-1/2 (C_x^1/2 C_r C_x^1/2)^1/2 C_x^-1/2.
      eps: added to both covariances' diagonals (flat images stay invertible).

    Returns:
      The mapped image, HWC, clipped to [0, 1] (mean and covariance exactly the reference's
      where nothing clips).
    """
    if mode not in COLOR_MODES:
        raise ValueError(f"mode must be one of {', '.join(COLOR_MODES)}, got {mode!r}")
    image, reference = jnp.asarray(image), jnp.asarray(reference, jnp.asarray(image).dtype)
    x = image.reshape(-1, image.shape[-1])
    r = reference.reshape(-1, reference.shape[-1])
    mu_x, mu_r = jnp.mean(x, axis=0, keepdims=True), jnp.mean(r, axis=0, keepdims=True)
    eye = eps * jnp.eye(x.shape[-1], dtype=x.dtype)
    cov_x = (x - mu_x).T @ (x - mu_x) / x.shape[0] + eye
    cov_r = (r - mu_r).T @ (r - mu_r) / r.shape[0] + eye
    if mode == "cholesky":
        matrix = jnp.linalg.cholesky(cov_r) @ jnp.linalg.inv(jnp.linalg.cholesky(cov_x))
    elif mode == "pca":
        matrix = _sqrtm(cov_r) @ jnp.linalg.inv(_sqrtm(cov_x))
    else:
        root = _sqrtm(cov_x)
        inverse = jnp.linalg.inv(root)
        matrix = inverse @ _sqrtm(root @ cov_r @ root) @ inverse
    return jnp.clip((x - mu_x) @ matrix.T + mu_r, 0.0, 1.0).reshape(image.shape)


def match_luminance(image: jax.Array, reference: jax.Array, *, eps: float = 1e-8) -> jax.Array:
    """The image's luminance (Rec. 601 Y) shifted and scaled so that its mean and standard
    deviation are the reference's luminance's: (Y - mean) / std * std_ref + mean_ref, keeping a
    channel axis of 1 (HWC -> HW1; vmap for a batch). The luminance-only transfer of Gatys et
    al.'s colour control matches the style's luminance to the content's so."""
    y, target = luminance(image), luminance(jnp.asarray(reference, jnp.asarray(image).dtype))
    scale = jnp.std(target) / jnp.maximum(jnp.std(y), eps)
    return (y - jnp.mean(y)) * scale + jnp.mean(target)


def lab_to_rgb(lab: jax.Array) -> jax.Array:
    """CIE L*a*b* (D65 white) to sRGB, the inverse of `rgb_to_lab` (no clipping: colours outside
    the sRGB gamut come out below 0 or above 1)."""
    lab = jnp.asarray(lab)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = jnp.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    delta = 6.0 / 29.0
    t = jnp.where(f > delta, f**3, 3 * delta**2 * (f - 4.0 / 29.0))
    xyz = t * jnp.asarray(_WHITE_D65, lab.dtype).reshape((1,) * (lab.ndim - 1) + (3,))
    linear = _apply(jnp.linalg.inv(jnp.asarray(_RGB_TO_XYZ, jnp.float32)).astype(lab.dtype), xyz)
    # the sRGB curve's odd extension keeps out-of-gamut values finite and monotone
    return jnp.sign(linear) * linear_to_srgb(jnp.abs(linear), curve="srgb")


def reinhard_transfer(image: jax.Array, reference: jax.Array, *, eps: float = 0.1) -> jax.Array:
    """Reinhard et al.'s colour transfer ("Color Transfer between Images", 2001) in CIE Lab: each
    Lab channel of the image shifted and scaled so that its mean and standard deviation over the
    pixels become the reference's, then back to sRGB, clipped to [0, 1].

    Statistics are taken over the last two spatial axes, so a batch of images (N, H, W, 3) is
    matched against a batch of references (N, H', W', 3) one to one, and it works under `vmap`.
    Reshape a set of images to one (N * H, W, 3) image to match their pooled statistics.
    The article works in its own l-alpha-beta space; this, like OpenCV-based ports, uses CIE Lab
    (D65), kept in floating point (no 8-bit Lab rounding).

    Args:
      image: (..., H, W, 3) sRGB in [0, 1].
      reference: (..., H', W', 3) sRGB in [0, 1], whose statistics the result takes.
      eps: the least standard deviation (Lab units, of L's 100) divided by: a flat channel stays
        flat, float32 rounding in it is not magnified into texture.

    Returns:
      (..., H, W, 3): the image's Lab mean and standard deviation are the reference's where
      nothing clips.
    """
    image = jnp.asarray(image)
    lab, target = rgb_to_lab(image), rgb_to_lab(jnp.asarray(reference, image.dtype))
    axes = (-3, -2)
    return lab_moment_transfer(lab, jnp.mean(lab, axis=axes, keepdims=True), jnp.std(lab, axis=axes, keepdims=True),
                               jnp.mean(target, axis=axes, keepdims=True), jnp.std(target, axis=axes, keepdims=True), eps=eps)


def lab_moment_transfer(lab: jax.Array, mean: jax.Array, std: jax.Array, target_mean: jax.Array, target_std: jax.Array, *,
                        eps: float = 0.1) -> jax.Array:
    """The core of Reinhard's transfer, with the statistics given: each Lab channel mapped by
    (x - mean) / max(std, eps) * target_std + target_mean, back to sRGB, clipped to [0, 1]
    (`reinhard_transfer` takes the statistics of an image and a reference;
    `jaxmosaic.techniques.mosaic.transfer_lab_statistics` those of whole sets of pixels).

    Args:
      lab: (..., 3) CIE Lab (`rgb_to_lab`).
      mean, std, target_mean, target_std: the statistics, broadcasting against `lab` (same rank).
      eps: the least standard deviation divided by.

    Returns:
      (..., 3) sRGB in [0, 1].
    """
    moved = (lab - mean) / jnp.maximum(std, eps) * target_std + target_mean
    return jnp.clip(lab_to_rgb(moved), 0.0, 1.0)
