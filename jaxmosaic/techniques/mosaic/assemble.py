"""Photomosaic assembly: split a target into patches, match each to a tile of a library, enforce
the reuse rules, colour the tiles towards their patches and put them together.

Images are float32 in [0, 1], channels last. The array functions are pure and jit-able.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import time
from collections.abc import Callable
from fractions import Fraction
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.assignment import assignment_memory_bytes, check_capacity, optimal_assignment
from jaxmosaic.color import luminance, reinhard_transfer
from jaxmosaic.config import ConfigError, choice, number, setting, whole
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.image import resize
from jaxmosaic.search import l2_normalize, match_memory_bytes, match_sharded, match_tiles, shard_dictionary
from jaxmosaic.techniques.mosaic.features import ColorMode, FeatureKind, batched_features, feature_function
from jaxmosaic.techniques.mosaic.quadtree import cell_centres, cells_per_size, check_subdivision, cut_cells, paste_cells, subdivide

__all__ = [
    "Fit",
    "Score",
    "Assign",
    "MosaicConfig",
    "mosaic_grid",
    "split_cells",
    "assemble_cells",
    "colorize",
    "Assignment",
    "assign_tiles",
    "MosaicResult",
    "mosaic_cells",
    "mosaic_memory",
    "make_mosaic",
]


class Score(enum.StrEnum):
    """How a patch and a tile are compared: "cosine" (their inner product, unit rows) or "abs"
    (its absolute value, the original article's MRF rule: a tile and its negative match alike)."""

    cosine = "cosine"
    abs = "abs"


class Fit(enum.StrEnum):
    """How a target becomes a whole number of patches: resized (its aspect changes by under half
    a patch) or centre-cropped."""

    resize = "resize"
    crop = "crop"


class Assign(enum.StrEnum):
    """How cells get their tiles under the reuse rules: "greedy" (cells best-first, each its best
    allowed candidate) or "optimal" (the least total cost under the cap, certified:
    `jaxmosaic.optimal_assignment`)."""

    greedy = "greedy"
    optimal = "optimal"


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
    """How a target is cut into patches, matched and rendered."""

    patch: int = setting(16, "Side in target pixels of the patch matched to one tile.")
    render: int | None = setting(None, "Side in pixels of each tile in the output (default: --patch).")
    cols: int | None = setting(None, "Tiles across; the target is rescaled to cols x patch pixels wide (default: width / patch).")
    fit: Fit = setting(Fit.resize, "Make the target a whole number of patches by resizing (aspect changes < half a patch) or centre-cropping.")
    alpha: float = setting(0.3, "--color blend: weight of the target.")
    max_reuse: int | None = setting(None, "Use each tile at most this many times.")
    min_distance: float = setting(0.0, "Repeats of a tile must be at least this many cells apart (with --subdivide: between cell centres, in top-level cells).")
    top_k: int | None = setting(None, "Candidates per patch for the reuse rules (default 32 with them, else 1).")
    score: Score = setting(Score.cosine, "cosine, or abs: rank by |score| (the original article's MRF rule).")
    assign: Assign = setting(Assign.greedy, "greedy (best-first), or optimal: the highest total score under --max-reuse, certified.")
    subdivide: tuple[float, ...] | None = setting(None, "Contrast thresholds T1,T2,...: a cell whose contrast (mean over channels of its pixels' standard deviation, in [0, 0.5]) exceeds T1 is split into four, each of those against T2, and so on.")

    def __post_init__(self):
        whole("patch", self.patch, minimum=1, maximum=4096)
        if self.render is not None:
            whole("render", self.render, minimum=1, maximum=4096)
        if self.cols is not None:
            whole("cols", self.cols, minimum=1, maximum=4096)
        object.__setattr__(self, "fit", choice("fit", self.fit, Fit))
        object.__setattr__(self, "score", choice("score", self.score, Score))
        object.__setattr__(self, "alpha", number("alpha", self.alpha, minimum=0.0, maximum=1.0))
        if self.max_reuse is not None:
            whole("max_reuse", self.max_reuse, minimum=1)
        object.__setattr__(self, "min_distance", number("min_distance", self.min_distance, minimum=0.0, maximum=4096.0))
        if self.top_k is not None:
            whole("top_k", self.top_k, minimum=1, maximum=4096)
        object.__setattr__(self, "assign", choice("assign", self.assign, Assign))
        if self.subdivide is not None:
            object.__setattr__(self, "subdivide", check_subdivision(self.subdivide, self.patch, render=self.side))
        if self.assign == Assign.optimal and self.min_distance > 1:
            raise ConfigError("min_distance", "cannot be combined with --assign optimal (repeats kept apart are no "
                                              "transportation problem); use --assign greedy for it")

    def check_features(self, kind: str) -> None:
        """Refuse settings that do not fit the library's feature kind: --score abs with subpixel
        features (a subpixel score is negative when a patch is far from a tile, so |score| would
        rank the farthest tiles first).

        Raises:
          ConfigError: naming `score`.
        """
        if self.absolute and kind == FeatureKind.subpixel:
            raise ConfigError("score", "abs cannot be used with subpixel features: their score is negative for tiles far "
                                       "from a dark patch, so |score| would pick the worst; use --score cosine")

    @property
    def side(self) -> int:
        """Each tile's side in the output."""
        return self.render or self.patch

    @property
    def absolute(self) -> bool:
        return self.score == Score.abs

    @property
    def constrained(self) -> bool:
        return self.max_reuse is not None or self.min_distance > 1


def mosaic_grid(height: int, width: int, patch: int, *, cols: int | None = None, fit: str = "resize") -> tuple[int, int, int, int]:
    """The grid for a target of height x width: (rows, cols, target height, target width).

    With "resize" the target is resized to rows x cols whole patches, cols = `cols` or
    round(width / patch) and rows chosen to keep the aspect (it changes by under half a patch).
    With "crop" the target is centre-cropped to whole patches (at most patch - 1 pixels lost per
    axis); `cols` then first rescales the target to about cols patches across.
    """
    whole("patch", patch, minimum=1)
    fit = choice("fit", fit, Fit)
    if cols is not None:
        whole("cols", cols, minimum=1)
    scale = 1.0 if cols is None else cols * patch / width
    scaled_h, scaled_w = height * scale, width * scale
    if min(scaled_h, scaled_w) < patch:
        raise ConfigError("patch", f"{patch} is larger than the target ({round(scaled_w)}x{round(scaled_h)} after scaling)")
    if fit == Fit.resize:
        c = cols or max(1, round(width / patch))
        r = max(1, round(height * c / width))
    else:
        c = cols or int(scaled_w // patch)
        r = int(scaled_h // patch)
    return r, c, r * patch, c * patch


def split_cells(image: jax.Array, rows: int, cols: int) -> jax.Array:
    """(rows * p, cols * q, C) -> (rows * cols, p, q, C), row-major."""
    height, width, channels = image.shape
    p, q = height // rows, width // cols
    return image.reshape(rows, p, cols, q, channels).transpose(0, 2, 1, 3, 4).reshape(rows * cols, p, q, channels)


def assemble_cells(cells: jax.Array, rows: int, cols: int) -> jax.Array:
    """The inverse of `split_cells`: (rows * cols, p, q, C) -> (rows * p, cols * q, C)."""
    _, p, q, channels = cells.shape
    return cells.reshape(rows, cols, p, q, channels).transpose(0, 2, 1, 3, 4).reshape(rows * p, cols * q, channels)


def colorize(tiles: jax.Array, patches: jax.Array, mode: str, alpha=0.3) -> jax.Array:
    """Colour each tile towards its patch (both NHWC, same size); results clipped to [0, 1].

    - "none": the tile as it is.
    - "multiply": the original article's colouring, a grey tile times the patch's mean RGB; the tile's
      luminance is first divided by its mean so the cell keeps the patch's brightness.
    - "transfer": each channel shifted and scaled to the patch's mean and standard deviation.
    - "blend": (1 - alpha) tile + alpha patch.
    - "reinhard": each tile's CIE Lab mean and standard deviation moved to its patch's
      (`jaxmosaic.reinhard_transfer`).
    """
    tiles = jnp.asarray(tiles)
    patches = jnp.asarray(patches, tiles.dtype)
    axes = (-3, -2)
    if mode == ColorMode.none:
        out = tiles
    elif mode == ColorMode.multiply:
        grey = luminance(tiles)
        scale = grey / jnp.maximum(jnp.mean(grey, axis=axes, keepdims=True), 1e-3)
        out = scale * jnp.mean(patches, axis=axes, keepdims=True)
    elif mode == ColorMode.transfer:
        t_mean, t_std = jnp.mean(tiles, axis=axes, keepdims=True), jnp.std(tiles, axis=axes, keepdims=True)
        p_mean, p_std = jnp.mean(patches, axis=axes, keepdims=True), jnp.std(patches, axis=axes, keepdims=True)
        out = (tiles - t_mean) / jnp.maximum(t_std, 1e-3) * p_std + p_mean
    elif mode == ColorMode.blend:
        out = (1 - alpha) * tiles + alpha * patches
    elif mode == ColorMode.reinhard:
        out = reinhard_transfer(tiles, patches)
    else:
        raise ValueError(f"color mode must be one of none, multiply, transfer, blend, reinhard, got {mode!r}")
    return jnp.clip(out, 0.0, 1.0)


class Assignment(NamedTuple):
    """The tile each cell gets under the reuse rules (`assign_tiles`)."""

    tiles: np.ndarray  # (cells,) int: the tile chosen for each cell, row-major
    scores: np.ndarray  # (cells,) float: its match score
    fallbacks: int  # cells for which no top-k candidate was allowed and all tiles were searched


def _near_offsets(min_distance: float) -> np.ndarray:
    reach = max(0, math.ceil(min_distance) - 1)
    offsets = [(dr, dc) for dr in range(-reach, reach + 1) for dc in range(-reach, reach + 1)
               if (dr or dc) and dr * dr + dc * dc < min_distance * min_distance]
    return np.asarray(offsets, dtype=np.int64).reshape(-1, 2)


def _neighbourhood(rows: int, cols: int, min_distance: float, centres: np.ndarray | None) -> Callable[[int], np.ndarray]:
    """cell -> the indices of the cells closer than `min_distance` to it: on the rows x cols
    grid (row-major), or between `centres`."""
    if centres is None:
        offsets = _near_offsets(min_distance)

        def on_grid(cell: int) -> np.ndarray:
            near = offsets + divmod(cell, cols)
            inside = (near[:, 0] >= 0) & (near[:, 0] < rows) & (near[:, 1] >= 0) & (near[:, 1] < cols)
            return near[inside, 0] * cols + near[inside, 1]
        return on_grid
    from scipy.spatial import cKDTree  # imported when needed: `import jaxmosaic` reads no data file

    centres = np.asarray(centres, np.float64)
    tree = cKDTree(centres)
    radius = float(np.nextafter(min_distance, 0.0))  # the ball is closed; repeats at exactly min_distance are allowed
    return lambda cell: np.asarray(tree.query_ball_point(centres[cell], radius), np.int64)


def assign_tiles(
    scores: np.ndarray,
    candidates: np.ndarray,
    *,
    rows: int,
    cols: int,
    tiles: int,
    max_reuse: int | None = None,
    min_distance: float = 0.0,
    all_scores: Callable[[int], np.ndarray] | None = None,
    centres: np.ndarray | None = None,
) -> Assignment:
    """Pick one tile per cell from its candidates under a reuse cap and a repeat distance.

    Greedy: cells are visited from the most to the least confident (by their best score); each
    takes its best candidate that has been used fewer than `max_reuse` times and does not appear
    in any cell closer than `min_distance` (Euclidean, in cells). When all of a cell's top-k
    candidates are ruled out, `all_scores(cell)` (scores against every tile) is searched.
    Without constraints this is the plain argmax.

    Args:
      scores, candidates: (cells, k) from `match_tiles`, best first.
      rows, cols: the grid (cells = rows * cols, row-major), unless `centres` are given.
      tiles: size of the tile library.
      centres: (cells, 2) the cells' centres when they are not the rows x cols grid (cells of
        several sizes, `subdivide`; `cell_centres` measures them in top-level cells): repeats are
        then kept `min_distance` apart between centres.

    Raises:
      ValueError: the constraints cannot be met.
    """
    scores = np.asarray(scores)
    candidates = np.asarray(candidates)
    cells = rows * cols if centres is None else len(centres)
    if max_reuse is not None:
        check_capacity(cells, tiles, max_reuse, field="max_reuse")
    if max_reuse is None and min_distance <= 1:
        return Assignment(candidates[:, 0].copy(), scores[:, 0].copy(), 0)
    near_cells = _neighbourhood(rows, cols, min_distance, centres)
    used = np.zeros(tiles, np.int64)
    chosen = np.full(cells, -1, np.int64)
    chosen_score = np.empty(cells, np.float32)
    fallbacks = 0
    cap = max_reuse if max_reuse is not None else cells
    for cell in np.argsort(-scores[:, 0], kind="stable"):
        nearby = chosen[near_cells(int(cell))]
        nearby = nearby[nearby >= 0]
        name = f"cell {divmod(int(cell), cols) if centres is None else int(cell)}"
        allowed = (used[candidates[cell]] < cap) & ~np.isin(candidates[cell], nearby)
        if allowed.any():
            pick = int(np.argmax(allowed))
            tile, score = int(candidates[cell, pick]), float(scores[cell, pick])
        else:
            if all_scores is None:
                raise ValueError(f"no candidate tile is allowed for {name}; pass all_scores or more candidates")
            fallbacks += 1
            every = np.asarray(all_scores(int(cell)), np.float64).copy()
            every[used >= cap] = -np.inf
            every[nearby] = -np.inf
            tile = int(np.argmax(every))
            if not np.isfinite(every[tile]):
                raise ConfigError("min_distance", f"no tile satisfies the reuse rules at {name}; "
                                                  "allow more reuse, a smaller distance, or use more tiles")
            score = float(every[tile])
        chosen[cell], chosen_score[cell] = tile, score
        used[tile] += 1
    return Assignment(chosen, chosen_score, fallbacks)


def _fit_target(target: np.ndarray, rows: int, cols: int, patch: int, fit: str, scale_cols: int | None) -> np.ndarray:
    height, width = target.shape[:2]
    if fit == Fit.resize:
        return np.asarray(resize(target, rows * patch, cols * patch))
    if scale_cols is not None:
        scale = scale_cols * patch / width
        target = np.asarray(resize(target, max(rows * patch, round(height * scale)), max(cols * patch, round(width * scale))))
        height, width = target.shape[:2]
    top, left = (height - rows * patch) // 2, (width - cols * patch) // 2
    return target[top : top + rows * patch, left : left + cols * patch]


class MosaicResult(NamedTuple):
    """A photomosaic (`make_mosaic`): the picture, each cell's tile and score, and its figures."""

    image: np.ndarray  # (rows * render, cols * render, 3) float32
    tiles: np.ndarray  # (rows, cols) int: the tile index of each cell; (cells,) in the order of `cells` with subdivide
    scores: np.ndarray  # (rows, cols) float: each cell's match score; (cells,) with subdivide
    stats: dict  # patches, tiles, k, energy, match seconds, mean scores, fallbacks, cells per size
    cells: np.ndarray | None = None  # with subdivide: (cells, 3) (y, x, size) in target pixels (`subdivide`)


def mosaic_cells(config: MosaicConfig, target: np.ndarray) -> np.ndarray | None:
    """The `subdivide` cells of `target` under `config` (fitted to the grid as `make_mosaic` fits
    it), or None without --subdivide. Cheap (a few reductions of the target): computed before a
    run to estimate its memory, or on the target as given when the matched one is recoloured."""
    if config.subdivide is None:
        return None
    rows, cols, _, _ = mosaic_grid(*np.shape(target)[:2], config.patch, cols=config.cols, fit=config.fit)
    fitted = _fit_target(np.asarray(target, np.float32), rows, cols, config.patch, config.fit, config.cols)
    return subdivide(fitted, config.patch, config.subdivide)


def mosaic_memory(config: MosaicConfig, target_shape, features: int, *, cells: int | None = None, colors=None,
                  tiles: int = 0) -> int:
    """Bytes a mosaic of a target of this shape needs at its peak (rendered cells, matching and,
    with `--assign optimal`, the sparse problem and its certificate's scan).

    Args:
      cells: with --subdivide, the number of cells (`len(mosaic_cells(...))`); without it, every
        cell is assumed split at every level (the most there can be).
      colors: a `MosaicColorConfig`: --color-target-to-tiles adds the recoloured target (and its
        Lab copy), --color-tiles-to-target a second feature matrix of `tiles` rows and its SVD.
      tiles: the library's size, for --color-tiles-to-target.
    """
    rows, cols, _, _ = mosaic_grid(*target_shape[:2], config.patch, cols=config.cols, fit=config.fit)
    side = config.side
    top_k = config.top_k or 32
    if cells is None:
        cells = rows * cols * 4 ** len(config.subdivide or ())  # at most: every cell split at every level
    optimal = 0
    if config.assign == Assign.optimal:  # without a cap each cell takes its best tile: less than a cap of 1
        optimal = assignment_memory_bytes(cells, top_k=top_k, max_uses=config.max_reuse or 1)
    palette = 0
    if colors is not None and colors.color_target_to_tiles:  # the recoloured target and its Lab copy, float32
        palette = 2 * math.prod(target_shape[:2]) * 3 * 4
    if colors is not None and colors.color_tiles_to_target:  # the recoloured tiles' rows, their SVD's working copy
        palette = 2 * tiles * features * 4
    return rows * cols * side * side * 3 * 4 * 6 + match_memory_bytes(cells, features, top_k=top_k) + optimal + palette


def _negative_scores(queries: jax.Array, dictionary: jax.Array, *, absolute: bool) -> jax.Array:
    scores = queries @ dictionary.T
    return -(jnp.abs(scores) if absolute else scores)


def _optimal(config: MosaicConfig, queries: np.ndarray, dictionary: np.ndarray, candidates: np.ndarray,
             greedy: Assignment, greedy_seconds: float) -> tuple[Assignment, dict]:
    """The optimal assignment (cost = minus the score), started from the matcher's candidates and
    scanned in blocks on the device, and its figures beside the greedy one's."""
    cells, tiles = len(queries), len(dictionary)
    device_queries, device_dictionary = jnp.asarray(queries), jnp.asarray(dictionary)
    cost = jax.jit(functools.partial(_negative_scores, absolute=config.absolute))
    start = time.perf_counter()
    optimum = optimal_assignment(lambda first, stop: cost(device_queries[first:stop], device_dictionary),
                                 config.max_reuse or cells, shape=(cells, tiles), candidates=candidates,
                                 top_k=candidates.shape[1])
    seconds = time.perf_counter() - start
    stats = {"assignment": {
        "method": "optimal", "cost": optimum.total, "greedy_cost": -float(np.sum(greedy.scores, dtype=np.float64)),
        "rounds": optimum.rounds, "pairs_added": optimum.pairs_added, "pairs": optimum.pairs,
        "seconds": seconds, "greedy_seconds": greedy_seconds,
        "uses": np.bincount(optimum.uses).tolist(), "greedy_uses": np.bincount(np.bincount(greedy.tiles, minlength=tiles)).tolist(),
    }}
    return Assignment(optimum.tiles, (-optimum.costs).astype(np.float32), greedy.fallbacks), stats


def _layout_features(describe: Callable, fitted: np.ndarray, layout: np.ndarray) -> np.ndarray:
    """Each `subdivide` cell's features, from its own patch of the fitted target (the feature
    function brings every size to its input size, as it does full-size patches)."""
    rows = {}
    for size in np.unique(layout[:, 2]):
        indices, patches = cut_cells(fitted, layout, int(size))
        rows[int(size)] = (indices, batched_features(describe, patches))
    dimension = next(iter(rows.values()))[1].shape[1]
    queries = np.empty((len(layout), dimension), np.float32)
    for indices, features in rows.values():
        queries[indices] = features
    return queries


def _render_layout(library, tiles: np.ndarray, layout: np.ndarray, target: np.ndarray, scale: Fraction,
                   alpha: float) -> np.ndarray:
    """The mosaic of `subdivide` cells: each cell's tile rendered at its size x `scale` and
    coloured towards its part of `target` (the fitted target drawn `scale` times larger)."""
    image = np.zeros_like(target)
    for size in np.unique(layout[:, 2]):
        indices, patches = cut_cells(target, layout, int(size), scale=scale)
        used, inverse = np.unique(tiles[indices], return_inverse=True)
        rendered = library.render(used, int(size * scale))[inverse]
        paste_cells(image, layout[indices], np.asarray(colorize(rendered, patches, library.color, alpha)), scale=scale)
    return image


def make_mosaic(config: MosaicConfig, target: np.ndarray, library, params=None, *, mesh=None,
                cells: np.ndarray | None = None) -> MosaicResult:
    """Build a photomosaic of `target` (HWC in [0, 1]) from a tile library.

    Patches are described as the library's tiles are (its `settings`), compared in the SVD
    subspace the library holds (`library.svd`; exact matching without one), assigned under the
    reuse rules, rendered at `config.side` px and coloured by the library's colour mode.

    Args:
      config: the grid, matching and rendering settings.
      library: a `TileLibrary`.
      params: VGG19 or AlexNet params, for libraries with such features.
      mesh: local devices to shard the dictionary over (each device's top-k merged), or None.
      cells: with --subdivide, the cells to use (`mosaic_cells` of another image, e.g. the target
        before its palette was matched); default: those of `target`.
    """
    config.check_features(library.settings.kind)
    n, t = len(library), library.dimension
    height, width = target.shape[:2]
    rows, cols, _, _ = mosaic_grid(height, width, config.patch, cols=config.cols, fit=config.fit)
    if config.max_reuse is not None:
        check_capacity(rows * cols, n, config.max_reuse, field="max_reuse")
    fitted = _fit_target(np.asarray(target, np.float32), rows, cols, config.patch, config.fit, config.cols)
    layout = None if config.subdivide is None else subdivide(fitted, config.patch, config.subdivide) if cells is None \
        else np.asarray(cells, np.int64)
    describe = feature_function(library.settings, params, patches=True)
    if layout is not None and (layout.ndim != 2 or layout.shape[1] != 3 or int(np.sum(layout[:, 2] ** 2)) != fitted.shape[0] * fitted.shape[1]):
        raise ValueError(f"cells must be (cells, 3) rows (y, x, size) tiling the fitted {fitted.shape[1]}x{fitted.shape[0]} "
                         f"target (`mosaic_cells`), got shape {layout.shape}")
    if layout is None:
        queries = batched_features(describe, np.asarray(split_cells(fitted, rows, cols)))
    else:
        if config.max_reuse is not None:
            check_capacity(len(layout), n, config.max_reuse, field="max_reuse")
        queries = _layout_features(describe, fitted, layout)
    if queries.shape[1] != t:
        raise JaxmosaicError(f"the library's tiles have {t} features, but its settings describe a patch by {queries.shape[1]}; "
                             f"build the library again")
    dictionary, energy, k_kept = library.features, 1.0, 0
    if library.svd is not None:
        basis, energy, k_kept = library.svd["basis"], library.svd["energy"], library.svd["k"]
        projections = jnp.asarray(dictionary) if library.projected else jnp.asarray(dictionary) @ jnp.asarray(basis)
        dictionary = np.asarray(l2_normalize(projections))
        queries = np.asarray(queries @ basis)
    k = min(n, config.top_k or (32 if config.constrained else 1))
    start = time.perf_counter()
    if mesh is not None and mesh.devices.size > 1 and n // mesh.devices.size >= k:
        matcher = functools.partial(match_sharded, mesh=mesh, tiles=n)
        dictionary = shard_dictionary(dictionary, mesh)
    else:
        matcher = match_tiles
    compiled = jax.jit(matcher, static_argnames=("top_k", "absolute")).lower(
        queries, dictionary, top_k=k, absolute=config.absolute).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores, candidates = (np.asarray(a) for a in jax.block_until_ready(compiled(queries, dictionary)))
    match_seconds = time.perf_counter() - start

    dictionary = np.asarray(dictionary)

    def all_scores(cell: int) -> np.ndarray:
        s = dictionary[:n] @ queries[cell]
        return np.abs(s) if config.absolute else s

    start = time.perf_counter()
    assignment = assign_tiles(scores, candidates, rows=rows, cols=cols, tiles=n, max_reuse=config.max_reuse,
                              min_distance=config.min_distance, all_scores=all_scores,
                              centres=None if layout is None else cell_centres(layout, config.patch))
    greedy_seconds = time.perf_counter() - start
    optimal_stats = {}
    if config.assign == Assign.optimal:
        assignment, optimal_stats = _optimal(config, queries, dictionary[:n], candidates, assignment, greedy_seconds)
    used, inverse = np.unique(assignment.tiles, return_inverse=True)
    side = config.side
    if layout is None:
        tiles = library.render(used, side)[inverse]
        target_cells = split_cells(np.asarray(resize(fitted, rows * side, cols * side)), rows, cols)
        image = np.asarray(assemble_cells(colorize(tiles, target_cells, library.color, config.alpha), rows, cols))
    else:
        image = _render_layout(library, assignment.tiles, layout, np.asarray(resize(fitted, rows * side, cols * side)),
                               Fraction(side, config.patch), config.alpha)
    stats = {
        "patches": len(queries), "rows": rows, "cols": cols, "tiles": n, "features": t, "k": k_kept, "energy_kept": float(energy),
        "candidates": k, "match_seconds": match_seconds, "match_compile_seconds": compile_seconds,
        "mean_score": float(assignment.scores.mean()), "unconstrained_mean_score": float(scores[:, 0].mean()),
        "distinct_tiles": int(len(used)), "max_uses": int(np.bincount(assignment.tiles).max()), "fallbacks": assignment.fallbacks,
        "cells_per_size": {str(config.patch): rows * cols} if layout is None else cells_per_size(layout),
        **optimal_stats,
    }
    if layout is not None:
        return MosaicResult(image, assignment.tiles, assignment.scores, stats, layout)
    return MosaicResult(image, assignment.tiles.reshape(rows, cols), assignment.scores.reshape(rows, cols), stats)
