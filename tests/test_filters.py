"""Gaussian kernels and blurs against the original article's printed kernel and scipy.ndimage; Gabor
kernels against OpenCV's."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import scipy.ndimage as ndi

from jaxmosaic.filters import fft_gaussian_blur, gabor_kernel, gaussian_blur, gaussian_kernel1d, separable_blur
from references import opencv_gabor

ARTICLE_KERNEL = [0.00881223, 0.02714358, 0.06511406, 0.12164907, 0.17699836, 0.20056541,
               0.17699836, 0.12164907, 0.06511406, 0.02714358, 0.00881223]


def test_kernel_equals_the_article():
    np.testing.assert_allclose(gaussian_kernel1d(11, 2.0), ARTICLE_KERNEL, atol=1e-7)
    assert float(gaussian_kernel1d(15, 3.0).sum()) == pytest.approx(1.0, abs=1e-6)
    even = np.asarray(gaussian_kernel1d(4, 1.0))
    assert even.argmax() == 1  # c = (size - 1) // 2, as the article defines it
    with pytest.raises(ValueError):
        gaussian_kernel1d(0, 1.0)


@pytest.mark.parametrize("padding,mode", [("reflect", "reflect"), ("zeros", "constant"), ("wrap", "wrap")])
@pytest.mark.parametrize("size,sigma", [(11, 2.0), (15, 3.0), (5, 0.8)])
def test_blur_matches_scipy(padding, mode, size, sigma, variant):
    images = np.random.default_rng(0).random((2, 37, 70, 3)).astype(np.float32) * 3 - 1  # out of range too
    kernel = gaussian_kernel1d(size, sigma)
    expected = ndi.gaussian_filter1d(images.astype(np.float64), sigma, axis=1, mode=mode, radius=size // 2)
    expected = ndi.gaussian_filter1d(expected, sigma, axis=2, mode=mode, radius=size // 2)
    np.testing.assert_allclose(variant(lambda x: separable_blur(x, kernel, padding=padding), images), expected, atol=1e-5)
    np.testing.assert_allclose(gaussian_blur(images[0], sigma, size, padding=padding), expected[0], atol=1e-5)


def test_blur_rejects_kernel_larger_than_image():
    with pytest.raises(ValueError, match="larger than the image"):
        separable_blur(np.zeros((1, 8, 20, 3), np.float32), gaussian_kernel1d(9, 2.0))
    with pytest.raises(ValueError, match="padding"):
        separable_blur(np.zeros((1, 8, 20, 3), np.float32), gaussian_kernel1d(3, 1.0), padding="mirror")


def test_fft_blur_close_to_scipy_gaussian_filter():
    images = np.random.default_rng(1).random((40, 52, 3)).astype(np.float32)
    ours = np.asarray(fft_gaussian_blur(images, 3.0))
    expected = ndi.gaussian_filter(images.astype(np.float64), (3.0, 3.0, 0), mode="reflect", truncate=6.0)
    # the continuous Gaussian's transfer function versus scipy's sampled kernel, and mirror padding
    # of 3 sigma versus scipy's unbounded reflection: close, not equal
    assert np.abs(ours - expected)[9:-9, 9:-9].max() < 2e-3
    assert np.abs(ours - expected).max() < 2e-2


@pytest.mark.parametrize("params", [(21, 4.0, 0.0, 10.0, 0.5, 0.0), (31, 5.0, 0.7, 8.0, 1.0, math.pi / 2), (15, 3.0, 2.2, 6.0, 0.3, 1.0)])
def test_gabor_kernel_matches_opencv(params):
    size, *rest = params
    ours = np.asarray(gabor_kernel(size, *rest))
    np.testing.assert_allclose(ours, opencv_gabor(size, *rest), atol=2e-6)
    cv2 = pytest.importorskip("cv2") if os.environ.get("JAXMOSAIC_TEST_CV2") else None
    if cv2 is not None:
        np.testing.assert_allclose(ours, cv2.getGaborKernel((size, size), *rest, ktype=cv2.CV_64F), atol=2e-6)
