"""Reference computations the tests take their expected values from, written from their sources in
numpy (the PyTorch references are in torch_reference.py). Float64 unless the inputs say otherwise.
"""

from __future__ import annotations

import math

import numpy as np


def opencv_gabor(ksize, sigma, theta, lambd, gamma, psi) -> np.ndarray:
    """cv2.getGaborKernel((ksize, ksize), sigma, theta, lambd, gamma, psi) transcribed from OpenCV's
    modules/imgproc/src/gabor.cpp (float64; checked against opencv-python 5.0 to 1e-16): a
    (2 (ksize // 2) + 1)-sided kernel, stored flipped (row ymax - y, column xmax - x)."""
    half = ksize // 2
    c, s = math.cos(theta), math.sin(theta)
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    xr, yr = x * c + y * s, -x * s + y * c
    sigma_y = sigma / gamma
    values = np.exp(-0.5 / sigma**2 * xr**2 - 0.5 / sigma_y**2 * yr**2) * np.cos(2 * math.pi / lambd * xr + psi)
    kernel = np.empty_like(values)
    kernel[half - y.astype(int), half - x.astype(int)] = values
    return kernel


def squared_distances(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Brute-force squared Euclidean distances, (N, D) x (K, D) -> (N, K), in the inputs' precision."""
    return ((points[:, None, :] - centers[None]) ** 2).sum(-1)
