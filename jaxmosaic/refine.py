"""Tiled refinement: a stage too large for the memory optimised one overlapping tile at a time.

In passes, each visiting every tile once in a shuffled order (`jaxmosaic.tiling.visit_order`)
and giving it up to `Tiles.steps` steps from a fresh optimiser state, until every tile has had the
stage's steps; each refined tile is blended back with its window (`jaxmosaic.tiling.blend_tile`).
The loss of a tile is the technique's; nothing here knows a network.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.optimize import (ChunkReport, Optimizer, Outcome, batched_value_and_grad, compile_timed, divergence,
                                init_state, make_chunk, make_optimizer, merge_divergence, problem_group)
from jaxmosaic.tiling import blend_tile, tile_window, visit_order

__all__ = ["Tiles", "tiled_steps", "tiled_state", "tile_visits", "refine_tiles"]


class Tiles(NamedTuple):
    """How a stage is refined tile by tile. The stage's params are then the whole images
    (count, H, W, C); its value_fn takes tiles, and its data comes from `data`."""

    grid: Sequence[tuple[int, int]]  # (top, left) of every tile
    shape: tuple[int, int]  # (height, width) of a tile
    overlap: int  # px over which a tile's edge blends into its neighbours
    steps: int  # steps per visit
    data: Callable[[int, int], Any]  # (top, left) -> the data of the tile's loss there
    seed: int = 0  # of the visiting order


def tiled_steps(steps: int, grid: Sequence[tuple[int, int]]) -> int:
    """The steps a stage tiled by `grid` counts (and reports, and checkpoints at): `steps` for
    every tile."""
    return steps * len(grid)


def tiled_state(count: int):
    """The optimiser state a tiled stage reports and checkpoints: none is kept between visits."""
    return jnp.zeros((count,), jnp.float32)


def tile_visits(tiles: Tiles, steps: int) -> list[tuple[int, int, int]]:
    """(pass, tile, steps) of every visit, in order, for `steps` tiled steps."""
    per_tile, done, visits, index = steps // len(tiles.grid), 0, [], 0
    while done < per_tile:
        length = min(tiles.steps, per_tile - done)
        visits += [(index, tile, length) for tile in visit_order(len(tiles.grid), index, tiles.seed)]
        done, index = done + length, index + 1
    return visits


def _refiner(value_fn: Callable, optimizer: str, lr: float | None, length: int, data_axes, group: int | None):
    """A function (tiles, data) -> (tiles, losses, good, evaluations): `length` steps from a
    fresh optimiser state (the evaluation that starts L-BFGS counted), the loss evaluated
    `group` tiles at a time."""
    transform = make_optimizer(optimizer, lr)
    lbfgs = Optimizer(optimizer) == Optimizer.lbfgs
    chunk = make_chunk(value_fn, transform, length, lbfgs=lbfgs, data_axes=data_axes, group=group)

    def refine(params, data):
        evaluate = batched_value_and_grad(value_fn, data, data_axes=data_axes, group=group) if lbfgs else None
        state = init_state(transform, params, value_and_grad=evaluate)
        good = jnp.ones((jax.tree_util.tree_leaves(params)[0].shape[0],), bool)
        params, state, good, losses = chunk(params, state, good, data)
        evaluations = state.evaluations if lbfgs else jnp.zeros(good.shape, jnp.int32)
        return params, losses, good, evaluations

    return refine


def refine_tiles(tiles: Tiles, value_fn: Callable, images, *, optimizer: str, learning_rate: float | None, steps: int,
                 start_step: int = 0, data_axes=None, group: int | None = None,
                 report: Callable[..., None] | None = None) -> Outcome:
    """Refine `images` (count, H, W, C) tile by tile for `steps` tiled steps (`tiled_steps`),
    from `start_step`; `report(ChunkReport, tile=(tile, tiles, pass))` after every visit.
    Returns an `Outcome` as `minimize` does."""
    images = jnp.asarray(images)
    count, height, width = images.shape[:3]
    compiled: dict[int, Any] = {}
    history, seconds, compile_seconds = [], 0.0, 0.0
    evaluations = np.zeros(count, np.int64)
    diverged = np.full(count, -1)
    done = 0
    for pass_index, tile, length in tile_visits(tiles, steps):
        if done + length <= start_step:
            done += length
            continue
        top, left = tiles.grid[tile]
        before = images[:, top:top + tiles.shape[0], left:left + tiles.shape[1]]
        data = tiles.data(top, left)
        if length not in compiled:
            function = _refiner(value_fn, optimizer, learning_rate, length, data_axes, problem_group(group, count))
            compiled[length], took = compile_timed(function, before, data)
            compile_seconds += took
        start = time.perf_counter()
        after, losses, good, used = jax.block_until_ready(compiled[length](before, data))
        window = jnp.asarray(tile_window(top, left, tiles.shape, (height, width), tiles.overlap))
        images = jax.block_until_ready(blend_tile(images, before, after, window, top, left))
        seconds += time.perf_counter() - start
        losses = np.asarray(losses)
        history.append(losses)
        evaluations += np.asarray(used)
        diverged = merge_divergence(diverged, divergence(losses, ~np.asarray(good)), offset=done)
        done += length
        if report is not None:
            report(ChunkReport(done, steps, losses, images, tiled_state(count)), tile=(tile, len(tiles.grid), pass_index))
    full = np.concatenate(history, axis=0) if history else np.zeros((0, count))
    lbfgs = Optimizer(optimizer) == Optimizer.lbfgs
    return Outcome(images, tiled_state(count), done, full, diverged if np.any(diverged >= 0) else None, seconds,
                   compile_seconds, evaluations if lbfgs else None)
