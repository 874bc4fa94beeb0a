"""The PyTorch reference every parity test and benchmark uses: torchvision's VGG19 and AlexNet
layouts, their named activations, and the Gatys, texture and hybrid-image losses written plainly
in PyTorch.

torch is a test and benchmark dependency only. Images are numpy NHWC (or HWC) float arrays in
[0, 1]; activations come back as torch tensors NCHW (CHW for an HWC input). Each loss is a
factory that computes its targets once and returns loss(pixels), so that a benchmark can time
the step alone; `gatys` and `texture` evaluate it once in float64 with its gradient.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import torch
import torch.nn.functional as F

from jaxmosaic.vgg import VGG19_CONVS, VGG19_LAYERS

# torchvision.models.vgg19's configuration "E"
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def torch_vgg19(params=None, *, seed: int = 0) -> torch.nn.Module:
    """torchvision's VGG19 built with plain torch.nn: `features` as in torchvision, a small classifier.

    The classifier keeps torchvision's names (classifier.0/3/6) but not its 120M parameters, which
    the converter drops anyway; it keeps the test checkpoint small. The convolutions get He-normal
    weights and small random biases from `seed`, or the given jaxmosaic `params` (HWIO kernels).
    """
    layers, channels = [], 3
    for item in VGG19_CFG:
        if item == "M":
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [torch.nn.Conv2d(channels, item, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True)]
            channels = item
    model = torch.nn.Module()
    model.features = torch.nn.Sequential(*layers)
    model.avgpool = torch.nn.AdaptiveAvgPool2d((7, 7))
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(512, 16), torch.nn.ReLU(True), torch.nn.Dropout(), torch.nn.Linear(16, 16),
        torch.nn.ReLU(True), torch.nn.Dropout(), torch.nn.Linear(16, 10),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, index in zip(VGG19_CONVS, CONV_INDICES):
            conv = model.features[index]
            if params is None:
                fan_in = conv.in_channels * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.05)
            else:
                conv.weight.copy_(torch.from_numpy(np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1).copy()))
                conv.bias.copy_(torch.from_numpy(np.array(params[name]["bias"])))
    return model.eval()


@functools.lru_cache(maxsize=4)
def _in_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)


def features(model, images, layers, *, pooling: str = "max", padding: str = "zeros", dtype=torch.float64) -> dict:
    """Named VGG19 activations (jaxmosaic's names) of the layers asked for, up to the deepest.

    Args:
      model: a torchvision-layout VGG19 (`torch_vgg19`).
      images: NHWC or HWC, numpy or a torch tensor (kept in the graph, for gradients).
      pooling: "max" or "avg" (avg_pool2d in place of every MaxPool2d).
      padding: "zeros" or "circular" (each convolution's input padded periodically).
      dtype: the precision of the whole computation.
    """
    with torch.set_grad_enabled(isinstance(images, torch.Tensor) and images.requires_grad):
        return _features(_in_dtype(model, dtype), images, layers, pooling, padding, dtype)


def _features(model, images, layers, pooling, padding, dtype) -> dict:
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images)).to(dtype)
    single = x.ndim == 3
    x = x[None] if single else x
    mean = torch.tensor(MEAN, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=dtype).view(1, 3, 1, 1)
    x = (x.permute(0, 3, 1, 2) - mean) / std
    wanted = set(layers)
    deepest = max(VGG19_LAYERS.index(name) for name in wanted)
    out = {}
    for name, module in zip(VGG19_LAYERS[: deepest + 1], model.features):
        if isinstance(module, torch.nn.Conv2d):
            if padding == "circular":
                x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), module.weight, module.bias)
            else:
                x = module(x)
        elif isinstance(module, torch.nn.ReLU):
            x = torch.relu(x)  # not in place: the convolution's output may be asked for too
        else:
            x = F.avg_pool2d(x, 2, 2) if pooling == "avg" else F.max_pool2d(x, 2, 2)
        if name in wanted:
            out[name] = x[0] if single else x
    return out


def gram(f: torch.Tensor) -> torch.Tensor:
    """G = F F^T of one CHW feature map."""
    flat = f.reshape(f.shape[0], -1)
    return flat @ flat.T


def style_term(f: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """E_l = sum (G - A)^2 / (4 C^2 M^2) of one CHW feature map."""
    c, m = f.shape[0], f.shape[1] * f.shape[2]
    return ((gram(f) - target) ** 2).sum() / (4 * c**2 * m**2)


def gatys_loss(model, content, style, *, alpha, beta, tv_weight, content_layers=("relu4_2",), style_weights=None,
               pooling="max", dtype=torch.float64):
    """The paper's loss as a function of one HWC image tensor (in `dtype`, in the graph):
    loss(pixels) -> (total, {"content", "style", "tv"}) with total = alpha L_content + beta
    L_style + tv_weight TV. The content features and style Gram matrices are computed once, here."""
    style_weights = style_weights or {name: 0.2 for name in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")}
    with torch.no_grad():
        p = features(model, content, content_layers, pooling=pooling, dtype=dtype)
        a = {name: gram(f) for name, f in features(model, style, tuple(style_weights), pooling=pooling, dtype=dtype).items()}

    def loss(pixels):
        f = features(model, pixels, (*content_layers, *style_weights), pooling=pooling, dtype=dtype)
        l_content = sum(0.5 * ((f[name] - p[name]) ** 2).sum() for name in content_layers)
        l_style = sum(w * style_term(f[name], a[name]) for name, w in style_weights.items())
        tv = ((pixels[1:] - pixels[:-1]) ** 2).sum() + ((pixels[:, 1:] - pixels[:, :-1]) ** 2).sum()
        return alpha * l_content + beta * l_style + tv_weight * tv, {"content": l_content, "style": l_style, "tv": tv}

    return loss


def gatys(model, x, content, style, *, alpha, beta, tv_weight, content_layers=("relu4_2",),
          style_weights=None, pooling="max") -> tuple[dict, np.ndarray]:
    """The paper's loss for one HWC image in float64: ({content, style, tv, total}, d total / d x)."""
    loss = gatys_loss(model, content, style, alpha=alpha, beta=beta, tv_weight=tv_weight, content_layers=content_layers,
                      style_weights=style_weights, pooling=pooling)
    pixels = torch.from_numpy(np.array(x, np.float64)).requires_grad_(True)
    total, terms = loss(pixels)
    total.backward()
    return {**{name: value.item() for name, value in terms.items()}, "total": total.item()}, pixels.grad.numpy()


def texture_loss(model, exemplar, *, beta, weights, pooling="avg", dtype=torch.float64):
    """Gram loss over the texture layers plus beta/2 ||x - P(x)||^2 (the shared-phase spectrum
    projection of Liu et al., P held constant) as a function of one HWC image tensor (in `dtype`,
    in the graph): loss(pixels) -> (gram term, total). The Gram targets and the exemplar's
    spectrum are computed once, here."""
    u = torch.from_numpy(np.array(exemplar)).to(dtype)
    u_hat = torch.fft.fft2(u, dim=(0, 1))
    with torch.no_grad():
        targets = {name: gram(f) for name, f in features(model, u, tuple(weights), pooling=pooling, dtype=dtype).items()}

    def loss(pixels):
        f = features(model, pixels, tuple(weights), pooling=pooling, dtype=dtype)
        gram_term = sum(w * style_term(f[name], targets[name]) for name, w in weights.items())
        with torch.no_grad():
            x_hat = torch.fft.fft2(pixels, dim=(0, 1))
            phi = (x_hat * u_hat.conj()).sum(-1, keepdim=True)
            projected = torch.fft.ifft2(phi / phi.abs().clamp_min(1e-30) * u_hat, dim=(0, 1)).real
        return gram_term, gram_term + beta * 0.5 * ((pixels - projected) ** 2).sum()

    return loss


def texture(model, x, exemplar, *, beta, weights, pooling="avg") -> tuple[float, float, np.ndarray]:
    """`texture_loss` for one HWC image in float64: (gram term, total, d total / d x)."""
    loss = texture_loss(model, exemplar, beta=beta, weights=weights, pooling=pooling)
    pixels = torch.from_numpy(np.array(x, np.float64)).requires_grad_(True)
    gram_term, total = loss(pixels)
    total.backward()
    return gram_term.item(), total.item(), pixels.grad.numpy()


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    """An NCHW tensor as a numpy NHWC array (a tensor of another rank as it is)."""
    array = tensor.detach().numpy()
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def nchw(image) -> torch.Tensor:
    """An HWC numpy image as a 1 x C x H x W tensor of its dtype."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)[None]))


def depthwise_blur(image: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """The separable blur of an NCHW image with the 1-D kernel `taps`: a vertical then a
    horizontal depthwise conv2d, zero padding (the original hybrid-image article's blur)."""
    half = (len(taps) - 1) // 2
    channels = image.shape[1]
    vertical = taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    horizontal = taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    image = F.conv2d(image, vertical, padding=(half, 0), groups=channels)
    return F.conv2d(image, horizontal, padding=(0, half), groups=channels)


def hybrid_loss(near: torch.Tensor, far: torch.Tensor, kernel, *, gamma: float = 2.2):
    """The original hybrid-image article's loss as a function of an NCHW image tensor:
    loss(x, m_precise, m_blurred) -> (total, precise, blurred), with precise = ||x - near||^2,
    blurred = ||blur(x^gamma)^(1/gamma) - blur(far^gamma)^(1/gamma)||^2 and total = m_precise
    precise + m_blurred blurred. The far image's blurred view is computed once, here."""
    taps = torch.tensor(np.array(kernel))
    far_seen = depthwise_blur(far**gamma, taps) ** (1 / gamma)

    def loss(x, m_precise, m_blurred):
        precise = ((x - near) ** 2).sum()
        blurred = ((depthwise_blur(x**gamma, taps) ** (1 / gamma) - far_seen) ** 2).sum()
        return m_precise * precise + m_blurred * blurred, precise, blurred

    return loss


def torch_alexnet(*, seed: int = 0) -> torch.nn.Module:
    """torchvision's AlexNet built with plain torch.nn (`features`, `avgpool`, a small classifier
    under torchvision's names), He-normal weights and small random biases from `seed`."""
    model = torch.nn.Module()
    model.features = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(kernel_size=3, stride=2),
        torch.nn.Conv2d(64, 192, kernel_size=5, padding=2), torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(kernel_size=3, stride=2),
        torch.nn.Conv2d(192, 384, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(384, 256, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(256, 256, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(kernel_size=3, stride=2),
    )
    model.avgpool = torch.nn.AdaptiveAvgPool2d((6, 6))
    model.classifier = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Linear(9216, 8), torch.nn.ReLU(True),
                                           torch.nn.Dropout(), torch.nn.Linear(8, 8), torch.nn.ReLU(True), torch.nn.Linear(8, 4))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.features:
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.05)
    return model.eval()


ALEXNET_NAMES = ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "conv4", "relu4", "conv5",
                 "relu5", "pool5")


def alexnet_features(model, images, dtype=torch.float64) -> dict:
    """AlexNet's named activations (as `jaxmosaic.alexnet.ALEXNET_LAYERS`) and `avgpool`, NCHW,
    and "flat": torch.flatten(avgpool(features(x)), 1), the original photomosaic's 9216 features."""
    model = _in_dtype(model, dtype)
    x = torch.from_numpy(np.asarray(images, np.float64)).permute(0, 3, 1, 2).to(dtype)
    x = (x - torch.tensor(MEAN, dtype=dtype).view(1, 3, 1, 1)) / torch.tensor(STD, dtype=dtype).view(1, 3, 1, 1)
    out, names = {}, iter(ALEXNET_NAMES)
    with torch.no_grad():
        for module in model.features:
            x = module(x)
            out[next(names)] = x.clone()  # the next ReLU works in place
        out["avgpool"] = model.avgpool(x)
        out["flat"] = torch.flatten(out["avgpool"], 1)
    return out
