"""VGG19 (torchvision's layout) as a flax.linen module, and named-layer feature extraction.

Images are float32 RGB in [0, 1], NHWC (one HWC image is accepted too); the ImageNet
normalisation happens inside. Parameters are the pytree `{"conv1_1": {"kernel": HWIO, "bias": O},
...}` for the 16 convolutions; `jaxmosaic.load_vgg19` and `jaxmosaic.random_vgg19` return it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmosaic.errors import ConfigError

__all__ = [
    "VGG19",
    "VGG19_LAYERS",
    "VGG19_CONVS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Pooling",
    "vgg19_features",
    "images_per_call",
    "layer_channels",
    "layer_stride",
    "smallest_side",
    "activation_floats",
    "check_layers",
    "three_channels",
    "conv3x3",
]


class Pooling(enum.StrEnum):
    """VGG19's 2x2 pooling: "max" (as trained) or "avg" (smoother gradients, better for synthesis)."""

    max = "max"
    avg = "avg"


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BLOCKS = ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512))


def _sequence() -> tuple[tuple[str, str, int], ...]:
    """(kind, name, channels) for each of the 37 named layers, in order."""
    layers = []
    for block, widths in enumerate(_BLOCKS, start=1):
        for index, width in enumerate(widths, start=1):
            layers.append(("conv", f"conv{block}_{index}", width))
            layers.append(("relu", f"relu{block}_{index}", width))
        layers.append(("pool", f"pool{block}", widths[-1]))
    return tuple(layers)


_SEQUENCE = _sequence()
VGG19_LAYERS: tuple[str, ...] = tuple(name for _, name, _ in _SEQUENCE)
"""The 37 layer names in order: conv1_1, relu1_1, conv1_2, relu1_2, pool1, ..., relu5_4, pool5."""
VGG19_CONVS: tuple[str, ...] = tuple(name for kind, name, _ in _SEQUENCE if kind == "conv")
"""The 16 convolution names, in the order of torchvision's features.{0,2,5,...,34}."""
_INDEX = {name: i for i, name in enumerate(VGG19_LAYERS)}
_CHANNELS = {name: channels for _, name, channels in _SEQUENCE}


def layer_channels(name: str) -> int:
    """Number of channels of a named layer."""
    return _CHANNELS[check_layers((name,))[0]]


def layer_stride(name: str) -> int:
    """Downsampling factor of a named layer relative to the input (1, 2, 4, 8, 16 or 32)."""
    index = _INDEX[check_layers((name,))[0]]
    return 2 ** sum(1 for kind, _, _ in _SEQUENCE[: index + 1] if kind == "pool")


def check_layers(layers: Sequence[str], field: str | None = None) -> tuple[str, ...]:
    """`layers` as a tuple, or an error naming the unknown ones and listing the valid names: a
    `ConfigError` for the setting `field` when one is named, else a ValueError."""
    return check_names(layers, VGG19_LAYERS, "VGG19", field)


def check_names(layers: Sequence[str], valid: Sequence[str], network: str, field: str | None = None) -> tuple[str, ...]:
    """`layers` as a tuple if every name is one of `valid` (a network's layer names), else an
    error naming the unknown ones and listing the valid ones (a `ConfigError` for `field`)."""
    if isinstance(layers, str):
        layers = (layers,)
    unknown = [name for name in layers if name not in valid]
    reason = None
    if unknown:
        reason = f"unknown {network} layer(s) {', '.join(unknown)}; valid names: {', '.join(valid)}"
    elif not layers:
        reason = f"no {network} layer requested"
    if reason is not None:
        raise ConfigError(field, reason) if field else ValueError(reason)
    return tuple(layers)


def smallest_side(layers: Sequence[str]) -> int:
    """The smallest image side for which every one of `layers` keeps at least one position."""
    return max(layer_stride(name) for name in check_layers(tuple(layers)))


def activation_floats(height: int, width: int, layers: Sequence[str]) -> int:
    """How many floats one image's activations hold, every layer up to the deepest of `layers`."""
    deepest = max(_INDEX[name] for name in check_layers(tuple(layers)))
    total = 0
    for name in VGG19_LAYERS[: deepest + 1]:
        stride = layer_stride(name)
        total += (height // stride) * (width // stride) * _CHANNELS[name]
    return total


def _pool_2x2(x: jax.Array, pooling: str) -> jax.Array:
    """2x2 stride-2 pooling of NHWC, flooring odd sizes like PyTorch's MaxPool2d(2, 2).

    Written as a reshape and a reduction: on CPU its gradient is about 4x faster than the
    select-and-scatter of `lax.reduce_window`. At exact ties the max's gradient is shared
    between the tied inputs (a valid subgradient; after a ReLU ties only occur at zero).
    """
    n, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :].reshape(n, h // 2, 2, w // 2, 2, c)
    return x.max(axis=(2, 4)) if pooling == "max" else x.mean(axis=(2, 4))


_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DIMENSIONS)


@jax.custom_vjp
def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A 'VALID' NHWC x HWIO convolution whose input gradient is itself a plain NHWC x HWIO
    convolution (of the padded cotangent with the flipped, transposed kernel).

    The values are those of `lax.conv_general_dilated`. XLA's CPU backend runs the transposed
    convolution that autodiff would emit about 3x slower inside a loop body (`lax.scan`,
    `while_loop`, `cond`) than outside one (jax-ml/jax#12868), and every optimiser step runs in
    such a body; written this way, a step in a loop costs what it costs outside one.
    """
    return _conv_valid(x, kernel)


def _conv3x3_forward(x, kernel):
    return _conv_valid(x, kernel), (x, kernel)


def _conv3x3_backward(residuals, cotangent):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    padded = jnp.pad(cotangent, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    dx = _conv_valid(padded, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    _, kernel_vjp = jax.vjp(lambda k: _conv_valid(x, k), kernel)  # removed by XLA when unused
    return dx, kernel_vjp(cotangent)[0]


conv3x3.defvjp(_conv3x3_forward, _conv3x3_backward)


class _Conv(nn.Module):
    """torchvision's Conv2d(k=3, padding=1) (zero padding) or with circular padding."""

    features: int
    padding: str = "zeros"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features)).astype(x.dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(x.dtype)
        pad = ((0, 0), (1, 1), (1, 1), (0, 0))
        x = jnp.pad(x, pad) if self.padding == "zeros" else jnp.pad(x, pad, mode="wrap")
        return conv3x3(x, kernel) + bias.reshape(1, 1, 1, -1)


class VGG19(nn.Module):
    """The 16 convolutions of torchvision's VGG19, with named outputs.

    Attributes:
      layers: names of the layers to return; nothing past the deepest one is computed.
      pooling: "max" (as trained) or "avg" (smoother gradients, better for synthesis).
      padding: "zeros" (as trained) or "circular" (for textures that tile seamlessly).
    """

    layers: tuple[str, ...] = VGG19_LAYERS
    pooling: str = "max"
    padding: str = "zeros"

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        layers = check_layers(self.layers)
        if self.pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {self.pooling!r}")
        if self.padding not in ("zeros", "circular"):
            raise ValueError(f"padding must be 'zeros' or 'circular', got {self.padding!r}")
        wanted = set(layers)
        deepest = max(_INDEX[name] for name in layers)
        mean = jnp.asarray(IMAGENET_MEAN, images.dtype).reshape(1, 1, 1, 3)
        std = jnp.asarray(IMAGENET_STD, images.dtype).reshape(1, 1, 1, 3)
        x = (images - mean) / std
        outputs = {}
        for kind, name, channels in _SEQUENCE[: deepest + 1]:
            if kind == "conv":
                x = _Conv(channels, self.padding, name=name)(x)
            elif kind == "relu":
                x = nn.relu(x)
            else:
                x = _pool_2x2(x, self.pooling)
            if name in wanted:
                outputs[name] = x
        return outputs


CPU_PIXELS_PER_CALL = 256 * 256


def images_per_call(height: int, width: int) -> int | None:
    """How many images of this size a batched optimisation should run through the network at
    once (`minimize`'s group): on a CPU as many as make up 256x256 pixels, at least one; on
    other backends None, the whole batch (batching is what fills a GPU).

    XLA's CPU convolutions slow down per image once a call's activations outgrow the caches.
    On a 2-core CPU, per image and Adam step of texture synthesis: 8 images of 128 px 0.083 s
    at once, 0.072 s four at a time; 4 of 192 px 0.184 s at once, 0.153 s two at a time; 4 of
    256 px 0.34 s at once, 0.27 s one at a time (0.29 s in a run of its own).
    """
    if jax.default_backend() != "cpu":
        return None
    return max(1, CPU_PIXELS_PER_CALL // (height * width))


def three_channels(images: jax.Array) -> jax.Array:
    """The network's three input channels: a grey image (last axis 1) repeated, colour as it is.

    Concatenated, not `jnp.repeat`ed: the gradient of a broadcast is a reduction that XLA's CPU
    backend fuses differently for different batch sizes, so a batch of variations would round
    otherwise than each image alone (1e-9 in the first gradient, 2.4e-3 in the images after 30
    L-BFGS steps); the gradient of a concatenation is a sum of slices, the same at any batch size."""
    return jnp.concatenate([images] * 3, axis=-1) if images.shape[-1] == 1 else images


def vgg19_features(
    params,
    images: jax.Array,
    layers: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
    *,
    pooling: str = "max",
    padding: str = "zeros",
) -> dict[str, jax.Array]:
    """VGG19 activations of the requested named layers.

    Args:
      params: the convolution parameters (`load_vgg19`, `random_vgg19`).
      images: float RGB in [0, 1], NHWC or HWC.
      layers: names from `VGG19_LAYERS`; static under jit.
      pooling: "max" or "avg"; static.
      padding: "zeros" or "circular"; static.

    Returns:
      A dict from each requested name to its activation, NHWC (HWC for an HWC input). Max and
      average pooling floor odd sizes, as PyTorch's `MaxPool2d(2, 2)` and `avg_pool2d` do.
    """
    layers = check_layers(layers)
    deepest = max(layers, key=_INDEX.__getitem__)
    missing = [name for kind, name, _ in _SEQUENCE[: _INDEX[deepest] + 1] if kind == "conv" and name not in params]
    if missing:
        raise ValueError(f"the VGG19 params have no {missing[0]}, which {deepest} needs")
    module = VGG19(layers=layers, pooling=pooling, padding=padding)
    images = jnp.asarray(images)
    if images.ndim == 3:
        return {name: value[0] for name, value in module.apply({"params": params}, images[None]).items()}
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be HWC or NHWC with 3 channels, got shape {images.shape}")
    return module.apply({"params": params}, images)
