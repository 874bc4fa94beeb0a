"""Losses on VGG19 feature maps and on pixels: Gram matrices, content, style and total variation.

Feature maps are NHWC (or HWC) float arrays as `vgg19_features` returns them; F^l is the layer's
C_l x M_l matrix of responses (M_l = H * W positions). Definitions follow Gatys, Ecker and Bethge:

    G^l = F^l F^l^T                                          (C_l x C_l, not normalised)
    L_content = 1/2 sum (F - P)^2
    E_l = 1 / (4 C_l^2 M_l^2) sum (G^l - A^l)^2,   L_style = sum_l w_l E_l

The `..._losses` functions return one value per image of a batch (for optimising a batch of
independent problems natively); the others sum. All are pure and work under `jit`, `grad` and
`vmap`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxmosaic.vgg import check_layers, layer_stride, vgg19_features

__all__ = [
    "gram_matrix",
    "gram_targets",
    "content_loss",
    "style_layer_loss",
    "style_loss",
    "tv_loss",
    "content_losses",
    "style_layer_losses",
    "style_losses",
    "tv_losses",
]


def gram_matrix(features: jax.Array) -> jax.Array:
    """G = F F^T for HWC (-> C x C) or NHWC (-> N x C x C) feature maps; sums over positions.

    A batch is computed one image at a time (each its own matrix product), so that an image's
    Gram matrix and its gradient are bitwise those it has alone: a batched product sums in
    another order, and optimisers amplify the last bit into different images.
    """
    features = jnp.asarray(features)
    flat = features.reshape(*features.shape[:-3], -1, features.shape[-1])
    if flat.ndim == 2:
        return flat.T @ flat
    batch = flat.reshape(-1, *flat.shape[-2:])
    grams = jnp.stack([image.T @ image for image in batch])
    return grams.reshape(*flat.shape[:-2], flat.shape[-1], flat.shape[-1])


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


def _images(x: jax.Array) -> jax.Array:
    """HWC as a batch of one; NHWC as it is."""
    x = jnp.asarray(x)
    return x if x.ndim == 4 else x[None]


def _each(target: jax.Array, batch: jax.Array) -> jax.Array:
    """A target shared by the batch gets the batch axis (so that nothing broadcasts by rank)."""
    target = jnp.asarray(target, batch.dtype)
    return target[None] if target.ndim == batch.ndim - 1 else target


def content_losses(features: jax.Array, target: jax.Array) -> jax.Array:
    """1/2 sum (F - P)^2 of each image: NHWC features, a target per image or shared (HWC) -> (N,)."""
    features = _images(features)
    return 0.5 * jnp.sum(jnp.square(features - _each(target, features)), axis=(1, 2, 3))


def style_layer_losses(features: jax.Array, target_gram: jax.Array) -> jax.Array:
    """E_l = sum (G - A)^2 / (4 C^2 M^2) of each image: NHWC features, a Gram target per image
    (N, C, C) or shared (C, C), M = H * W -> (N,)."""
    features = _images(features)
    _, height, width, channels = features.shape
    gram = gram_matrix(features)
    return jnp.sum(jnp.square(gram - _each(target_gram, gram)), axis=(1, 2)) / (4.0 * channels**2 * (height * width) ** 2)


def style_losses(features: Mapping[str, jax.Array], target_grams: Mapping[str, jax.Array],
                 layer_weights: Mapping[str, float]) -> jax.Array:
    """L_style = sum_l w_l E_l of each image, over the layers named in `layer_weights` -> (N,)."""
    return sum(weight * style_layer_losses(features[name], target_grams[name]) for name, weight in layer_weights.items())


def tv_losses(images: jax.Array) -> jax.Array:
    """Squared total variation of each image (NHWC): the sum of squared differences between
    vertical and between horizontal neighbours (neural-style's TV term), over channels -> (N,)."""
    images = _images(images)
    dy = images[:, 1:, :, :] - images[:, :-1, :, :]
    dx = images[:, :, 1:, :] - images[:, :, :-1, :]
    return jnp.sum(jnp.square(dy), axis=(1, 2, 3)) + jnp.sum(jnp.square(dx), axis=(1, 2, 3))


def content_loss(features: jax.Array, target: jax.Array) -> jax.Array:
    """1/2 sum (F - P)^2 over everything (HWC, or NHWC: a batch sums too)."""
    return jnp.sum(content_losses(features, target))


def style_layer_loss(features: jax.Array, target_gram: jax.Array) -> jax.Array:
    """E_l = sum (G - A)^2 / (4 C^2 M^2), with G the Gram matrix of `features` (HWC or NHWC; a
    batch sums its E_l) and M = H * W of `features`."""
    return jnp.sum(style_layer_losses(features, target_gram))


def style_loss(features: Mapping[str, jax.Array], target_grams: Mapping[str, jax.Array],
               layer_weights: Mapping[str, float]) -> jax.Array:
    """L_style = sum_l w_l E_l over the layers named in `layer_weights` (a batch sums too)."""
    return jnp.sum(style_losses(features, target_grams, layer_weights))


def tv_loss(images: jax.Array) -> jax.Array:
    """Squared total variation: sum of squared differences between vertical and between horizontal
    neighbours (neural-style's TV term), summed over channels (and a batch)."""
    return jnp.sum(tv_losses(images))
