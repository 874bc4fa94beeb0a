"""Colour spaces: CIE Lab and YIQ against published reference values and the NTSC luma weights."""

from __future__ import annotations

import numpy as np

from jaxmosaic.color import rgb_to_lab, rgb_to_yiq, yiq_to_rgb


def test_lab_and_yiq_reference_values(variant):
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0], [0.5, 0.5, 0.5]], np.float32)
    expected = np.array([[53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [32.30, 79.19, -107.86], [100, 0, 0], [0, 0, 0], [53.39, 0, 0]])
    np.testing.assert_allclose(np.asarray(variant(rgb_to_lab, colours)), expected, atol=0.02)
    yiq = variant(rgb_to_yiq, colours)
    np.testing.assert_allclose(np.asarray(yiq)[:, 0], colours @ np.array([0.299, 0.587, 0.114]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(variant(yiq_to_rgb, yiq)), colours, atol=1e-5)
    np.testing.assert_allclose(np.asarray(yiq)[3:, 1:], 0, atol=1e-5)
