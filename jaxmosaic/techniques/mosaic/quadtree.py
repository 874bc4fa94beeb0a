"""Adaptive mosaic cells: a cell whose contrast exceeds a threshold is split into four, each of
those again against the next threshold, and so on (a quadtree per top-level cell).

Images are float32 RGB (or any number of channels) in [0, 1], HWC; contrasts and thresholds are
in that scale: the contrast of a cell is the mean over channels of the (population) standard
deviation of its pixels, so it lies in [0, 0.5]. `cell_contrast` is pure and jit-able; the
quadtree itself (`subdivide`) has a data-dependent number of cells and is built in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.config import ConfigError, numbers

__all__ = ["MAX_CONTRAST", "cell_centres", "cell_contrast", "cells_per_size", "check_subdivision", "cut_cells", "paste_cells",
           "parse_thresholds", "subdivide"]

MAX_CONTRAST = 0.5
"""The largest contrast a cell of an image in [0, 1] can have (half its pixels 0, half 1)."""


def parse_thresholds(thresholds: Sequence[float] | str) -> tuple[float, ...]:
    """Thresholds given as numbers or as the command line's text "0.1,0.2" (one number is one level).

    Raises:
      ConfigError: naming `subdivide`, for text that is not comma-separated numbers.
    """
    if isinstance(thresholds, str):
        try:
            return tuple(float(part) for part in thresholds.split(",") if part.strip())
        except ValueError:
            raise ConfigError("subdivide", f"{thresholds!r}: expected comma-separated numbers") from None
    if isinstance(thresholds, (int, float)):
        return (thresholds,)
    return tuple(thresholds)


def check_subdivision(thresholds: Sequence[float] | str, cell: int, *, render: int | None = None) -> tuple[float, ...]:
    """The thresholds as a tuple of floats in [0, `MAX_CONTRAST`], checked against the cell side:
    each level halves it, so `cell` (and `render`, the side a top-level cell is drawn at) must be
    divisible by 2 ** len(thresholds). Text is read as the command line's "T1,T2,..."
    (`parse_thresholds`), a single number as one level.

    Raises:
      ConfigError: naming `subdivide` (the command line's --subdivide).
    """
    thresholds = numbers("subdivide", parse_thresholds(thresholds), minimum=0.0, maximum=MAX_CONTRAST)
    levels = len(thresholds)
    for name, side in (("patch", cell), ("render", render)):
        if side is None:
            continue
        if side >> levels < 1:
            raise ConfigError("subdivide", f"{levels} levels would split a {side} px cell (--{name}) below 1 px; "
                                           f"use at most {side.bit_length() - 1} thresholds or a larger --{name}")
        if side % (1 << levels):
            raise ConfigError("subdivide", f"{levels} levels halve a cell {levels} times, so --{name} must be divisible "
                                           f"by {1 << levels}, got {side}")
    return thresholds


def cell_contrast(image: jax.Array, size: int) -> jax.Array:
    """The contrast of each size x size cell of an image: the mean over channels of the
    standard deviation (ddof 0) of the cell's pixels, as numpy's `cell.std(axis=(0, 1)).mean()`.

    Args:
      image: (H, W, C) with H and W multiples of `size`.
      size: the cell side in pixels (static).

    Returns:
      (H // size, W // size) contrasts, in the image's scale ([0, 0.5] for an image in [0, 1]).
    """
    image = jnp.asarray(image)
    height, width, channels = image.shape
    blocks = image.reshape(height // size, size, width // size, size, channels)
    return jnp.mean(jnp.std(blocks, axis=(1, 3)), axis=-1)


_contrast = jax.jit(cell_contrast, static_argnums=1)


def subdivide(image, cell: int, thresholds: Sequence[float] | str) -> np.ndarray:
    """The cells of an adaptive mosaic grid: top-level cells of `cell` px, each split into four
    while its contrast exceeds the threshold of its level (strictly: a contrast equal to the
    threshold keeps the cell whole).

    A top-level cell is split when its contrast exceeds thresholds[0]; each quarter is split when
    its own contrast exceeds thresholds[1]; and so on, at most len(thresholds) times.

    Args:
      image: (H, W, C) float in [0, 1], H and W multiples of `cell`.
      cell: the side of the top-level cells in pixels; it must be divisible by
        2 ** len(thresholds).
      thresholds: one contrast per level, in [0, 0.5] (the image's scale; see `cell_contrast`),
        or the command line's text "T1,T2,...".

    Returns:
      (cells, 3) int64 rows (y, x, size): each cell's top-left pixel and side. Top-level cells
      come row-major; the cells inside one are in quadtree order, depth first (top-left,
      top-right, bottom-left, bottom-right). They tile the image exactly.

    Raises:
      ConfigError: naming `subdivide`, for thresholds out of range or more levels than the
        cell allows.
    """
    thresholds = check_subdivision(thresholds, cell)
    image = np.asarray(image, np.float32)
    height, width = image.shape[:2]
    if height % cell or width % cell:
        raise ConfigError("subdivide", f"the image ({width}x{height}) is not a whole number of {cell} px cells")
    contrasts = [np.asarray(_contrast(image, cell >> level)) for level in range(len(thresholds))]
    cells: list[tuple[int, int, int]] = []

    def visit(y: int, x: int, level: int) -> None:
        size = cell >> level
        if level < len(thresholds) and contrasts[level][y // size, x // size] > thresholds[level]:
            half = size // 2
            for dy, dx in ((0, 0), (0, half), (half, 0), (half, half)):
                visit(y + dy, x + dx, level + 1)
        else:
            cells.append((y, x, size))

    for top in range(0, height, cell):
        for left in range(0, width, cell):
            visit(top, left, 0)
    return np.asarray(cells, np.int64).reshape(-1, 3)


def cell_centres(cells: np.ndarray, cell: int) -> np.ndarray:
    """(cells, 2) float64 centres (row, column) of `subdivide`'s cells in units of `cell`, the
    top-level cell's side: the positions a repeat distance (--min-distance, "cells apart") is
    measured between. The unit depends only on the settings, not on which cells were split, so
    two top-level cells' centres are always a whole number apart, as on an undivided grid."""
    cells = np.asarray(cells)
    return (cells[:, :2] + cells[:, 2:] / 2) / cell


def cells_per_size(cells: np.ndarray) -> dict[str, int]:
    """How many of `subdivide`'s cells there are of each side, largest first ({"16": 40, "8": 24})."""
    sizes, counts = np.unique(np.asarray(cells)[:, 2], return_counts=True)
    return {str(int(size)): int(count) for size, count in sorted(zip(sizes, counts), reverse=True)}


def _pixels(cells: np.ndarray, scale: Fraction) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices, (n, s, 1) and (n, 1, s), of cells of one side drawn `scale` times larger."""
    top, left = (cells[:, :2] * scale.numerator // scale.denominator).T
    side = int(cells[0, 2] * scale) if len(cells) else 0
    steps = np.arange(side)
    return top[:, None, None] + steps[None, :, None], left[:, None, None] + steps[None, None, :]


def cut_cells(image: np.ndarray, cells: np.ndarray, size: int, *, scale: Fraction | int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The cells of one side cut out of an image, which may be drawn `scale` times larger than
    the one they were found in (a cell's position and side times `scale` must be whole).

    Returns:
      (their indices in `cells`, (n, size * scale, size * scale, C) pixels).
    """
    cells, scale = np.asarray(cells), Fraction(scale)
    indices = np.flatnonzero(cells[:, 2] == size)
    rows, cols = _pixels(cells[indices], scale)
    return indices, np.asarray(image)[rows, cols]


def paste_cells(image: np.ndarray, cells: np.ndarray, pictures: np.ndarray, *, scale: Fraction | int = 1) -> np.ndarray:
    """`image` (numpy, written in place and returned) with `pictures` (n, s, s, C) drawn over
    `cells` (n rows (y, x, size) of one side, s = size * scale)."""
    cells = np.asarray(cells)
    rows, cols = _pixels(cells, Fraction(scale))
    image[rows, cols] = pictures
    return image
