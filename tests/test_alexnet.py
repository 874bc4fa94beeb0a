"""AlexNet: torchvision parity on the same random weights, conversion, lookup, random weights."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxmosaic import WeightsError, alexnet_features, load_alexnet, load_vgg19, random_alexnet
from jaxmosaic.alexnet import ALEXNET_LAYERS, adaptive_avg_pool, flatten_channels_first
from jaxmosaic.weights import convert, default_weights_dir, weights_info

torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch")
from torch_reference import alexnet_features as torch_features  # noqa: E402
from torch_reference import nhwc  # noqa: E402
from torch_reference import torch_alexnet  # noqa: E402


@pytest.fixture(scope="session")
def alexnet_model():
    return torch_alexnet(seed=3)


@pytest.fixture(scope="session")
def alexnet_checkpoint(alexnet_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("alexnet") / "alexnet-random.pth"
    torch.save(alexnet_model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def alexnet_params(alexnet_checkpoint):
    return load_alexnet(alexnet_checkpoint)


def _relative(ours, theirs) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("jit", [False, True], ids=["plain", "jit"])
def test_features_equal_torchvision_layout(alexnet_model, alexnet_params, jit):
    images = np.random.default_rng(0).uniform(size=(2, 224, 224, 3)).astype(np.float32)
    fn = jax.jit(alexnet_features, static_argnames="layers") if jit else alexnet_features
    ours = fn(alexnet_params, images, layers=ALEXNET_LAYERS)
    theirs = torch_features(alexnet_model, images)
    for name in ALEXNET_LAYERS:
        assert ours[name].shape == nhwc(theirs[name]).shape, name
        assert _relative(ours[name], nhwc(theirs[name])) < 1e-4, name
    flat = flatten_channels_first(ours["avgpool"])
    assert flat.shape == (2, 9216)
    assert _relative(flat, theirs["flat"].numpy()) < 1e-4


def test_adaptive_pooling_of_other_sizes_and_an_hwc_image(alexnet_model, alexnet_params):
    """At 100 px pool5 is 2x2 and at 300 px 8x8: AdaptiveAvgPool2d repeats or overlaps its windows."""
    for side in (100, 300):
        image = np.random.default_rng(side).uniform(size=(side, side, 3)).astype(np.float32)
        ours = alexnet_features(alexnet_params, image, ("avgpool", "relu3"))
        theirs = torch_features(alexnet_model, image[None])
        assert ours["avgpool"].shape == (6, 6, 256)
        assert _relative(ours["avgpool"], nhwc(theirs["avgpool"])[0]) < 1e-4
        assert _relative(ours["relu3"], nhwc(theirs["relu3"])[0]) < 1e-4
    x = np.random.default_rng(1).normal(size=(1, 7, 5, 2)).astype(np.float32)
    pooled = np.asarray(adaptive_avg_pool(x, 3))
    expected = torch.nn.AdaptiveAvgPool2d(3)(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(pooled, expected, rtol=1e-6, atol=1e-6)


def test_convert_download_lookup_and_the_wrong_network(alexnet_model, alexnet_checkpoint, alexnet_params, tmp_path, monkeypatch):
    state = alexnet_model.state_dict()
    np.testing.assert_array_equal(alexnet_params["conv1"]["kernel"], state["features.0.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(alexnet_params["conv5"]["bias"], state["features.10.bias"].numpy())
    folder = convert(alexnet_checkpoint, arch="alexnet")
    assert folder == default_weights_dir("alexnet")
    loaded = load_alexnet(download_missing=False)
    for name in alexnet_params:
        np.testing.assert_array_equal(loaded[name]["kernel"], alexnet_params[name]["kernel"])
    info = weights_info(arch="alexnet")
    assert info["arch"] == "alexnet" and info["format"].startswith("torchvision alexnet")
    with pytest.raises(WeightsError, match="holds AlexNet weights, not VGG19"):
        load_vgg19(folder)
    with pytest.raises(WeightsError, match="not a torchvision VGG19 state dict"):
        load_vgg19(alexnet_checkpoint)
    monkeypatch.setenv("JAXMOSAIC_ALEXNET_URL", "http://127.0.0.1:9/alexnet-owt-7be5be79.pth")
    with pytest.raises(WeightsError, match="weights download --arch alexnet"):
        load_alexnet(tmp_path / "missing")
    monkeypatch.setenv("JAXMOSAIC_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError, match="cannot download http://127.0.0.1:9/alexnet-owt-7be5be79.pth"):
        load_alexnet()


def test_random_alexnet_is_seeded_and_normalised():
    params = random_alexnet(jax.random.PRNGKey(0))
    again = random_alexnet(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(params["conv3"]["kernel"], again["conv3"]["kernel"])
    reference = jax.random.uniform(jax.random.PRNGKey(0), (1, 224, 224, 3))
    relus = alexnet_features(params, reference, ("relu1", "relu3", "relu5"))
    for name, value in relus.items():
        assert abs(float(np.mean(value)) - 1.0) < 1e-3, name
    assert params["conv1"]["kernel"].shape == (11, 11, 3, 64)
