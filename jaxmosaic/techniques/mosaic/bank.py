"""The original photomosaic's Gabor bank: 312,500 tiles rendered on demand from their index.

The bank is the product grid (sigma outermost, gamma innermost)

    sigma = linspace(15, 75, S), theta = linspace(0, pi, T),
    lambda = linspace(10, 100, L), gamma = linspace(0.1, 1.0, G),   psi = pi / 2

with (S, T, L, G) = (50, 10, 25, 25) in the article. Tile i is OpenCV's
`getGaborKernel((224, 224), sigma, theta, lambda, gamma, psi)` (a 225 x 225 kernel) without its
last row and column, min-max scaled to a grey image in [0, 1]: 224 x 224 px. No file is needed:
a library of the bank stores its grid, and a tile is rendered again from its index.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.config import ConfigError
from jaxmosaic.filters import gabor_kernel

__all__ = ["BANK", "BANK_SIZE", "BankGrid", "parse_bank_grid", "bank_axes", "bank_parameters", "bank_tiles", "render_bank"]

BANK = "gabor-bank"
"""The tile source's name on the command line."""
BANK_SIZE = 224
"""The side of a bank tile in pixels."""
_PSI = math.pi / 2


class BankGrid(NamedTuple):
    """How many values of sigma, theta, lambda and gamma the grid takes over the article's ranges."""

    sigma: int = 50
    theta: int = 10
    lambd: int = 25
    gamma: int = 25

    @property
    def size(self) -> int:
        return self.sigma * self.theta * self.lambd * self.gamma

    def __str__(self) -> str:
        return ",".join(str(n) for n in self)


def parse_bank_grid(text: str) -> BankGrid:
    """"S,T,L,G" (e.g. "50,10,25,25", the article's; "2,2,3,3" is 36 tiles) as a `BankGrid`."""
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) != 4 or not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise ConfigError("bank_grid", f"{text!r} is not four whole numbers >= 1 (sigma, theta, lambda, gamma), e.g. 50,10,25,25")
    grid = BankGrid(*(int(part) for part in parts))
    if grid.size > 2**31 - 1:
        raise ConfigError("bank_grid", f"{text} makes {grid.size} tiles, more than a library can index")
    return grid


def bank_axes(grid: BankGrid = BankGrid()) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The grid's values of sigma, theta, lambda and gamma (float64), as `np.linspace` gives them."""
    return (np.linspace(15, 75, grid.sigma), np.linspace(0, np.pi, grid.theta), np.linspace(10, 100, grid.lambd),
            np.linspace(0.1, 1.0, grid.gamma))


def bank_parameters(grid: BankGrid, indices) -> np.ndarray:
    """(m, 4) float32 rows (sigma, theta, lambda, gamma) of the tiles `indices` (sigma outermost)."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= grid.size):
        raise IndexError(f"bank tile indices must lie in [0, {grid.size}), got {indices.min()}..{indices.max()}")
    position = np.unravel_index(indices, tuple(grid))
    return np.stack([axis[i] for axis, i in zip(bank_axes(grid), position)], axis=-1).astype(np.float32)


def bank_tiles(parameters: jax.Array, size: int = BANK_SIZE) -> jax.Array:
    """Render bank tiles: (m, 4) rows of `bank_parameters` -> (m, size, size) grey in [0, 1].

    Each is `filters.gabor_kernel` (OpenCV's kernel of side size + 1 without its last row and
    column) with psi = pi / 2, min-max scaled. Pure and jit-able (`size` static).
    """
    parameters = jnp.asarray(parameters, jnp.float32)

    def one(p):
        kernel = gabor_kernel(size, p[0], p[1], p[2], p[3], _PSI)
        low, high = jnp.min(kernel), jnp.max(kernel)
        return (kernel - low) / jnp.maximum(high - low, 1e-12)

    return jax.vmap(one)(parameters)


_render = jax.jit(bank_tiles, static_argnames="size")


def render_bank(grid: BankGrid, indices, size: int = BANK_SIZE) -> np.ndarray:
    """Bank tiles `indices` as (m, size, size, 3) float32 RGB: rendered at 224 px, then resized."""
    from jaxmosaic.image import resize

    grey = _render(jnp.asarray(bank_parameters(grid, indices)), size=BANK_SIZE)
    rgb = jnp.repeat(grey[..., None], 3, axis=-1)
    if size != BANK_SIZE and len(rgb):
        rgb = jnp.clip(resize(rgb, size, size), 0.0, 1.0)
    return np.asarray(rgb, np.float32)
