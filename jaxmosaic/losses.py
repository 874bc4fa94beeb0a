"""Losses on VGG19 feature maps and on pixels: Gram matrices, content, style and total variation.

Feature maps are NHWC (or HWC) float arrays as `vgg19_features` returns them; F^l is the layer's
C_l x M_l matrix of responses (M_l = H * W positions). Definitions follow Gatys, Ecker and Bethge:

    G^l = F^l F^l^T                                          (C_l x C_l, not normalised)
    L_content = 1/2 sum (F - P)^2
    E_l = 1 / (4 C_l^2 M_l^2) sum (G^l - A^l)^2,   L_style = sum_l w_l E_l

All functions are pure and work under `jit`, `grad` and `vmap`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxmosaic.vgg import check_layers, layer_stride, vgg19_features

__all__ = ["gram_matrix", "gram_targets", "content_loss", "style_layer_loss", "style_loss", "tv_loss"]


def gram_matrix(features: jax.Array) -> jax.Array:
    """G = F F^T for HWC (-> C x C) or NHWC (-> N x C x C) feature maps; sums over positions."""
    features = jnp.asarray(features)
    flat = features.reshape(*features.shape[:-3], -1, features.shape[-1])
    return jnp.einsum("...mc,...md->...cd", flat, flat)


def _positions(height: int, width: int, layer: str) -> int:
    stride = layer_stride(layer)
    return (height // stride) * (width // stride)


def gram_targets(params, image: jax.Array, layers: Sequence[str], *, size: tuple[int, int] | None = None,
                 pooling: str = "max", padding: str = "zeros") -> dict:
    """The Gram matrices A^l of an RGB HWC image's VGG19 features, scaled to the number of
    positions of an output of `size` (height, width): A^l * M_l(output) / M_l(image), so E_l
    compares Gram matrices per position whatever the two sizes are (for equal sizes this is A^l
    exactly, the paper's target)."""
    layers = check_layers(tuple(layers))
    image = jnp.asarray(image)
    height, width = size or image.shape[:2]
    features = vgg19_features(params, image[None], layers, pooling=pooling, padding=padding)
    return {name: gram_matrix(features[name][0]) * (_positions(height, width, name) / _positions(*image.shape[:2], name))
            for name in layers}


def content_loss(features: jax.Array, target: jax.Array) -> jax.Array:
    """1/2 sum (F - P)^2 over everything (a batch sums too)."""
    return 0.5 * jnp.sum(jnp.square(features - target))


def style_layer_loss(features: jax.Array, target_gram: jax.Array) -> jax.Array:
    """E_l = sum (G - A)^2 / (4 C^2 M^2), with G the Gram matrix of `features` (HWC or NHWC; a
    batch sums its E_l) and M = H * W of `features`."""
    features = jnp.asarray(features)
    height, width, channels = features.shape[-3:]
    positions = height * width
    return jnp.sum(jnp.square(gram_matrix(features) - target_gram)) / (4.0 * channels**2 * positions**2)


def style_loss(features: Mapping[str, jax.Array], target_grams: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
    """L_style = sum_l w_l E_l over the layers named in `weights`."""
    return sum(weights[name] * style_layer_loss(features[name], target_grams[name]) for name in weights)


def tv_loss(images: jax.Array) -> jax.Array:
    """Squared total variation: sum of squared differences between vertical and between horizontal
    neighbours (neural-style's TV term), summed over channels (and a batch)."""
    images = jnp.asarray(images)
    dy = images[..., 1:, :, :] - images[..., :-1, :, :]
    dx = images[..., :, 1:, :] - images[..., :, :-1, :]
    return jnp.sum(jnp.square(dy)) + jnp.sum(jnp.square(dx))
