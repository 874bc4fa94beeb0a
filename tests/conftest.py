"""Shared fixtures: strict JAX settings, the compilation cache, and a torchvision-layout VGG19."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", str(ROOT / ".cache" / "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# The same layout as torchvision.models.vgg19 (configuration "E").
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own jaxmosaic cache and no way to reach the real download URL."""
    monkeypatch.setenv("JAXMOSAIC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXMOSAIC_VGG19_URL", "http://127.0.0.1:9/vgg19-dcbb9e9d.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("JAXMOSAIC_NO_COMPILATION_CACHE", "1")
    monkeypatch.delenv("JAXMOSAIC_WEIGHTS", raising=False)


def torch_vgg19():
    """torchvision's VGG19 built with plain torch.nn: `features` as in torchvision, a small classifier.

    The classifier keeps torchvision's names (classifier.0/3/6) but not its 120M parameters,
    which the converter drops anyway; it keeps the test checkpoint small.
    """
    torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch (pip install torch)")
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
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.features:
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.in_channels * 9
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="session")
def torch_model():
    return torch_vgg19()


@pytest.fixture(scope="session")
def torch_checkpoint(torch_model, tmp_path_factory) -> Path:
    """The random VGG19 saved by `torch.save(model.state_dict())` (zip format), named like torchvision's."""
    import torch

    path = tmp_path_factory.mktemp("torch") / "vgg19-random.pth"
    torch.save(torch_model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def torch_params(torch_checkpoint):
    """The converted parameters of `torch_model`, as jaxmosaic reads them."""
    from jaxmosaic._pth import read_state_dict
    from jaxmosaic.weights import params_from_state_dict

    return params_from_state_dict(read_state_dict(torch_checkpoint))


@pytest.fixture(scope="session")
def random_params():
    from jaxmosaic.weights import random_vgg19

    return random_vgg19(jax.random.PRNGKey(0))


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)


def pytest_report_header(config):
    return f"jax {jax.__version__} on {jax.default_backend()}; cpu count {os.cpu_count()}"
