"""AlexNet (torchvision's layout) as a flax.linen module, and named-layer feature extraction.

The network of the original photomosaic: its tiles and patches are described by
`avgpool(features(x))`, 256 x 6 x 6 = 9216 values. Images are float32 RGB in [0, 1], NHWC (one
HWC image is accepted too); the ImageNet normalisation happens inside. Parameters are the pytree
`{"conv1": {"kernel": HWIO, "bias": O}, ..., "conv5": ...}`; `jaxmosaic.load_alexnet` and
`jaxmosaic.random_alexnet` return it. The classifier is not part of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.vgg import IMAGENET_MEAN, IMAGENET_STD, check_names

__all__ = [
    "AlexNet",
    "ALEXNET_LAYERS",
    "ALEXNET_CONVS",
    "ALEXNET_SHAPES",
    "alexnet_features",
    "adaptive_avg_pool",
    "check_alexnet_layers",
    "flatten_channels_first",
]

# (name, out channels, kernel, stride, padding) of torchvision's features.{0,3,6,8,10}
_CONVS = (("conv1", 64, 11, 4, 2), ("conv2", 192, 5, 1, 2), ("conv3", 384, 3, 1, 1), ("conv4", 256, 3, 1, 1),
          ("conv5", 256, 3, 1, 1))
_POOLED = ("conv1", "conv2", "conv5")  # a 3x3 stride-2 max pooling follows their ReLU

ALEXNET_CONVS: tuple[str, ...] = tuple(name for name, *_ in _CONVS)
"""The five convolution names, in the order of torchvision's features.{0,3,6,8,10}."""


def _shapes() -> dict[str, tuple[int, int, int, int]]:
    shapes, channels = {}, 3
    for name, out, kernel, _, _ in _CONVS:
        shapes[name] = (out, channels, kernel, kernel)
        channels = out
    return shapes


ALEXNET_SHAPES = _shapes()
"""Each convolution's weight shape in PyTorch's OIHW order."""


def _sequence() -> tuple[str, ...]:
    names = []
    for name, *_ in _CONVS:
        index = name[-1]
        names += [name, f"relu{index}"]
        if name in _POOLED:
            names.append(f"pool{index}")
    return (*names, "avgpool")


ALEXNET_LAYERS: tuple[str, ...] = _sequence()
"""The named layers in order: conv1, relu1, pool1, conv2, relu2, pool2, conv3, relu3, conv4,
relu4, conv5, relu5, pool5, avgpool (adaptive average pooling to 6 x 6)."""
_INDEX = {name: i for i, name in enumerate(ALEXNET_LAYERS)}


def check_alexnet_layers(layers: Sequence[str], field: str | None = None) -> tuple[str, ...]:
    """`layers` as a tuple, or an error naming the unknown ones (a `ConfigError` for `field`)."""
    return check_names(layers, ALEXNET_LAYERS, "AlexNet", field)


def _averaging_matrix(size: int, out: int) -> np.ndarray:
    """(out, size): row i averages input positions floor(i size / out) to ceil((i + 1) size / out),
    PyTorch's adaptive pooling windows."""
    matrix = np.zeros((out, size), np.float32)
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jax.Array, out: int = 6) -> jax.Array:
    """PyTorch's `AdaptiveAvgPool2d((out, out))` of NHWC (windows may overlap, as there)."""
    rows = jnp.asarray(_averaging_matrix(x.shape[1], out), x.dtype)
    cols = jnp.asarray(_averaging_matrix(x.shape[2], out), x.dtype)
    return jnp.einsum("ih,nhwc,jw->nijc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def _max_pool_3x3(x: jax.Array) -> jax.Array:
    """`MaxPool2d(kernel_size=3, stride=2)` of NHWC (no padding, floor mode)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


class _Conv(nn.Module):
    """torchvision's Conv2d(kernel, stride, padding) with zero padding, HWIO kernel."""

    features: int
    size: int
    stride: int
    pad: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.size, self.size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        pad = ((self.pad, self.pad), (self.pad, self.pad))
        y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (self.stride, self.stride), pad,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(x.dtype).reshape(1, 1, 1, -1)


class AlexNet(nn.Module):
    """The five convolutions of torchvision's AlexNet and its adaptive average pooling, with
    named outputs. Nothing past the deepest layer asked for is computed."""

    layers: tuple[str, ...] = ALEXNET_LAYERS

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        layers = check_alexnet_layers(self.layers)
        wanted, deepest = set(layers), max(_INDEX[name] for name in layers)
        mean = jnp.asarray(IMAGENET_MEAN, images.dtype).reshape(1, 1, 1, 3)
        std = jnp.asarray(IMAGENET_STD, images.dtype).reshape(1, 1, 1, 3)
        x = (images - mean) / std
        outputs = {}

        def keep(name, value):
            if name in wanted:
                outputs[name] = value
            return _INDEX[name] >= deepest

        for name, channels, size, stride, pad in _CONVS:
            index = name[-1]
            x = _Conv(channels, size, stride, pad, name=name)(x)
            if keep(name, x):
                return outputs
            x = nn.relu(x)
            if keep(f"relu{index}", x):
                return outputs
            if name in _POOLED:
                x = _max_pool_3x3(x)
                if keep(f"pool{index}", x):
                    return outputs
        keep("avgpool", adaptive_avg_pool(x, 6))
        return outputs


def alexnet_features(params, images: jax.Array, layers: Sequence[str] = ("avgpool",)) -> dict[str, jax.Array]:
    """AlexNet activations of the requested named layers.

    Args:
      params: the convolution parameters (`load_alexnet`, `random_alexnet`).
      images: float RGB in [0, 1], NHWC or HWC; at least 63 px a side for pool5 (torchvision's
        model takes 224 x 224).
      layers: names from `ALEXNET_LAYERS`; static under jit.

    Returns:
      A dict from each requested name to its activation, NHWC (HWC for an HWC input);
      "avgpool" is (N, 6, 6, 256): `flatten_channels_first` gives torchvision's 9216-vector.
    """
    layers = check_alexnet_layers(layers)
    deepest = max(layers, key=_INDEX.__getitem__)
    needed = [name for name in ALEXNET_CONVS if _INDEX[name] <= _INDEX[deepest]]
    missing = [name for name in needed if name not in params]
    if missing:
        raise ValueError(f"the AlexNet params have no {missing[0]}, which {deepest} needs")
    module = AlexNet(layers=layers)
    images = jnp.asarray(images)
    variables = {"params": {name: params[name] for name in needed}}
    if images.ndim == 3:
        return {name: value[0] for name, value in module.apply(variables, images[None]).items()}
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be HWC or NHWC with 3 channels, got shape {images.shape}")
    return module.apply(variables, images)


def flatten_channels_first(maps: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, C * H * W) in PyTorch's `torch.flatten(x, 1)` order of NCHW."""
    return jnp.transpose(maps, (0, 3, 1, 2)).reshape(maps.shape[0], -1)
