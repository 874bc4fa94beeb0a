"""Colour control: match_color against a numpy transcription of neural-style's linear colour
transfer, luminance matching, and the luminance-only transfer keeping the content's chroma."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import SHALLOW_LAYERS, sample_image
from jaxmosaic import match_color, match_luminance, rgb_to_yiq
from jaxmosaic.config import ConfigError
from jaxmosaic.techniques.style import ColorControl, StyleConfig, StyleInputs, color_controlled, style_transfer


def numpy_match_color(target, source, mode, eps=1e-5):
    """linear-color-transfer.py of neural-style (ProGamerGov/Neural-Tools), in float64."""
    mu_t = target.mean(0).mean(0)
    t = (target - mu_t).transpose(2, 0, 1).reshape(3, -1)
    ct = t.dot(t.T) / t.shape[1] + eps * np.eye(3)
    mu_s = source.mean(0).mean(0)
    s = (source - mu_s).transpose(2, 0, 1).reshape(3, -1)
    cs = s.dot(s.T) / s.shape[1] + eps * np.eye(3)
    if mode == "cholesky":
        ts = np.linalg.cholesky(cs).dot(np.linalg.inv(np.linalg.cholesky(ct))).dot(t)
    elif mode == "pca":
        eva_t, eve_t = np.linalg.eigh(ct)
        qt = eve_t.dot(np.sqrt(np.diag(eva_t))).dot(eve_t.T)
        eva_s, eve_s = np.linalg.eigh(cs)
        qs = eve_s.dot(np.sqrt(np.diag(eva_s))).dot(eve_s.T)
        ts = qs.dot(np.linalg.inv(qt)).dot(t)
    else:
        eva_t, eve_t = np.linalg.eigh(ct)
        qt = eve_t.dot(np.sqrt(np.diag(eva_t))).dot(eve_t.T)
        eva, eve = np.linalg.eigh(qt.dot(cs).dot(qt))
        root = eve.dot(np.sqrt(np.diag(eva))).dot(eve.T)
        ts = np.linalg.inv(qt).dot(root).dot(np.linalg.inv(qt)).dot(t)
    matched = ts.reshape(*target.transpose(2, 0, 1).shape).transpose(1, 2, 0) + mu_s
    return np.clip(matched, 0, 1)


def _correlated(seed, mean, mixing, shape=(24, 20)):
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((*shape, 3))
    return (mean + noise @ np.asarray(mixing).T).astype(np.float32)


def _stats(image):
    flat = np.asarray(image, np.float64).reshape(-1, 3)
    return flat.mean(0), np.cov(flat.T, bias=True)


@pytest.mark.parametrize("mode", ["pca", "cholesky", "symmetric"])
def test_match_color_takes_the_reference_mean_and_covariance(mode, variant):
    image = _correlated(0, (0.5, 0.45, 0.5), ((0.06, 0.02, 0.0), (0.01, 0.05, 0.01), (0.0, 0.03, 0.04)))
    reference = _correlated(1, (0.4, 0.55, 0.45), ((0.04, 0.0, 0.02), (0.02, 0.07, 0.0), (0.01, 0.01, 0.05)), (30, 16))
    expected = numpy_match_color(image.astype(np.float64), reference.astype(np.float64), mode)
    assert 0 < expected.min() and expected.max() < 1  # nothing clips
    ours = np.asarray(variant(lambda a, b: match_color(a, b, mode), image, reference))
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    mean, cov = _stats(ours)
    ref_mean, ref_cov = _stats(reference)
    np.testing.assert_allclose(mean, ref_mean, atol=1e-4)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-4)
    assert np.abs(cov - _stats(image)[1]).max() > 1e-3  # the covariance did change


def test_the_three_modes_differ_but_agree_on_the_statistics():
    image = _correlated(2, (0.5, 0.5, 0.5), ((0.05, 0.03, 0.0), (0.0, 0.05, 0.02), (0.02, 0.0, 0.05)))
    reference = _correlated(3, (0.45, 0.5, 0.55), ((0.07, 0.0, 0.0), (0.03, 0.03, 0.0), (0.0, 0.02, 0.06)))
    results = {mode: np.asarray(match_color(image, reference, mode)) for mode in ("pca", "cholesky", "symmetric")}
    assert np.abs(results["pca"] - results["cholesky"]).max() > 1e-3
    assert np.abs(results["symmetric"] - results["cholesky"]).max() > 1e-3
    with pytest.raises(ValueError, match="mode must be one of pca, cholesky, symmetric"):
        match_color(image, reference, "lab")


def test_match_luminance_takes_the_reference_mean_and_spread(variant):
    image, reference = sample_image("rocket.jpg", 24, 24), sample_image("chelsea.png", 20, 28)
    ours = np.asarray(variant(match_luminance, image, reference))
    y = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    y_ref = reference.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    expected = (y - y.mean()) / y.std() * y_ref.std() + y_ref.mean()
    assert ours.shape == (24, 24, 1)
    np.testing.assert_allclose(ours[..., 0], expected, atol=1e-5)


def test_luminance_control_keeps_the_content_chroma_and_transfers_grey(random_params):
    content, style = sample_image("chelsea.png", 48, 48), sample_image("rocket.jpg", 48, 48)
    config = StyleConfig(size=48, steps=(10,), color_control="luminance", **SHALLOW_LAYERS)
    grey = color_controlled(config, StyleInputs(content, [style]))
    for image in (grey.content, grey.styles[0]):
        assert np.abs(np.asarray(rgb_to_yiq(image))[..., 1:]).max() <= 1e-5  # grey
    y_style, y_content = np.asarray(rgb_to_yiq(grey.styles[0]))[..., 0], np.asarray(rgb_to_yiq(content))[..., 0]
    assert y_style.mean() == pytest.approx(y_content.mean(), abs=1e-4)
    assert y_style.std() == pytest.approx(y_content.std(), rel=1e-3)
    result = style_transfer(config, StyleInputs(content, [style]), random_params)
    ours = np.asarray(rgb_to_yiq(result.images[0]))[..., 1:]
    expected = np.asarray(rgb_to_yiq(content))[..., 1:]
    assert np.abs(ours - expected).max() <= 1e-3
    assert np.abs(result.images[0] - content).max() > 0.05  # the luminance did change


def test_pca_control_recolours_the_style_and_original_colors_is_an_alias():
    content = sample_image("chelsea.png", 32, 32)
    style = sample_image("rocket.jpg", 32, 32)
    mapped = color_controlled(StyleConfig(color_control="cholesky"), StyleInputs(content, [style]))
    np.testing.assert_allclose(mapped.styles[0], numpy_match_color(style.astype(np.float64), content.astype(np.float64),
                                                                   "cholesky"), atol=1e-4)
    assert mapped.content is content
    assert StyleConfig(original_colors=True).color_control == ColorControl.luminance
    with pytest.raises(ConfigError, match="original_colors: .*does not go with pca"):
        StyleConfig(original_colors=True, color_control="pca")
    with pytest.raises(ConfigError, match="color_control: must be one of"):
        StyleConfig(color_control="lab")
