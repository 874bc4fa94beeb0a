"""Gabor tiles: a grid of OpenCV-convention Gabor kernels rendered as grey (or tinted) images.

Tiles are float32 RGB in [0, 1], NHWC.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.config import setting, whole
from jaxmosaic.filters import gabor_kernel

__all__ = ["GaborGrid", "GaborTilesConfig", "gabor_parameters", "gabor_tiles", "gabor_colors", "gabor_tile_name"]


class GaborGrid(NamedTuple):
    """A grid of Gabor parameters; sigma and lambd are fractions of the tile side, so a tile
    library can be rendered at any size. The original article's grid was 50 x 10 x 25 x 25 at
    224 px; the default (3 x 8 x 4 x 2 x 2 = 384 tiles) is sized for a CPU."""

    sigma: tuple[float, ...] = (0.06, 0.12, 0.24)
    theta: tuple[float, ...] = tuple(i * math.pi / 8 for i in range(8))
    lambd: tuple[float, ...] = (0.15, 0.3, 0.6, 1.2)
    gamma: tuple[float, ...] = (0.5, 1.0)
    psi: tuple[float, ...] = (0.0, math.pi)


def gabor_parameters(grid: GaborGrid = GaborGrid()) -> np.ndarray:
    """Every combination of the grid as rows (sigma, theta, lambd, gamma, psi): (m, 5) float32."""
    mesh = np.meshgrid(*(np.asarray(values, np.float32) for values in grid), indexing="ij")
    return np.stack([axis.reshape(-1) for axis in mesh], axis=1)


def gabor_tiles(parameters: jax.Array, size: int, colors: jax.Array | None = None) -> jax.Array:
    """Render Gabor tiles: 0.5 + 0.5 g, with g from `filters.gabor_kernel` (OpenCV's convention).

    Args:
      parameters: (m, 5) rows of `gabor_parameters` (sigma and lambd as fractions of `size`).
      size: tile side in pixels (static).
      colors: optional (c, 3) RGB tints; the result then holds every tile in every tint
        (tile-major: tile i in tint j is row i * c + j), each tint multiplying the grey tile.

    Returns:
      (m, size, size, 3), or (m * c, size, size, 3) with tints.
    """
    parameters = jnp.asarray(parameters, jnp.float32)

    def one(p):
        return gabor_kernel(size, p[0] * size, p[1], p[2] * size, p[3], p[4])

    grey = 0.5 + 0.5 * jax.vmap(one)(parameters)
    tiles = jnp.repeat(grey[..., None], 3, axis=-1)
    if colors is None:
        return tiles
    colors = jnp.asarray(colors, jnp.float32)
    return (tiles[:, None] * colors[None, :, None, None, :]).reshape(-1, size, size, 3)


def gabor_colors(count: int) -> np.ndarray | None:
    """`count` tints for Gabor tiles, (count, 3): white, then hues evenly spaced at saturation
    0.6; None for a single (white) tint, i.e. grey tiles only."""
    if count < 1:
        raise ValueError(f"the number of tints must be at least 1, got {count}")
    if count == 1:
        return None
    colors = [np.ones(3, np.float32)]
    for i in range(count - 1):
        hue = i / max(1, count - 1)
        rgb = np.clip(np.abs(((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6) - 3) - 1, 0, 1)
        colors.append((1 - 0.6 + 0.6 * rgb).astype(np.float32))
    return np.stack(colors)


@dataclasses.dataclass(frozen=True)
class GaborTilesConfig:
    """Gabor tiles written as image files."""

    size: int = setting(224, "Tile side in pixels (the original article used 224).")
    colors: int = setting(1, "1 for grey tiles, N for grey plus N-1 tinted copies of each.")
    sheet: bool = setting(True, "Also write OUT_DIR/contact-sheet.png with every tile.")

    def __post_init__(self):
        whole("size", self.size, minimum=4, maximum=4096)
        whole("colors", self.colors, minimum=1, maximum=64)


def gabor_tile_name(index: int, parameters: np.ndarray, colors: int) -> str:
    """The file name of tile `index` (of `gabor_tiles(parameters, size, <colors tints>)`): its
    number and its parameters (sigma, theta, lambda, gamma, psi; angles in degrees) and tint."""
    sigma, theta, lambd, gamma, psi = parameters[index // colors]
    tint = f"-c{index % colors}" if colors > 1 else ""
    return (f"gabor-{index:04d}-s{sigma:.2f}-t{np.degrees(theta):03.0f}-l{lambd:.2f}-g{gamma:.1f}"
            f"-p{np.degrees(psi):03.0f}{tint}.png")
