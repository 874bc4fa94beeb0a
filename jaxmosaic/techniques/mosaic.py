"""Photomosaic: split a target into patches and replace each by its best-matching tile.

Patches and tiles are described by L2-normalised feature vectors, weight-free colour features
or VGG19 activations; the tile dictionary may be compressed by SVD (see `jaxmosaic.search`);
candidates are found by blocked top-k matching; a greedy pass enforces a reuse cap and a minimum
distance between repeats; tiles are coloured towards their patches and assembled.

Images are float32 in [0, 1], channels last. The array functions are pure and jit-able.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.color import luminance, rgb_to_lab
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.filters import gabor_kernel
from jaxmosaic.image import resize
from jaxmosaic.search import l2_normalize, match_tiles, svd_compress
from jaxmosaic.vgg import vgg19_features

__all__ = [
    "COLOR_MODES",
    "FEATURE_KINDS",
    "GaborGrid",
    "gabor_parameters",
    "gabor_tiles",
    "matching_view",
    "color_features",
    "vgg_patch_features",
    "split_cells",
    "assemble_cells",
    "colorize",
    "assign_tiles",
    "Assignment",
    "mosaic_grid",
    "feature_function",
    "batched_features",
    "make_mosaic",
    "view_for",
    "MosaicResult",
]

COLOR_MODES = ("none", "multiply", "transfer", "blend")
FEATURE_BATCH = 128
FEATURE_KINDS = ("color", "vgg")


class GaborGrid(NamedTuple):
    """A grid of Gabor parameters; sigma and lambd are fractions of the tile side, so a tile
    library can be rendered at any size. The seed's grid was 50 x 10 x 25 x 25 at 224 px; the
    default (3 x 8 x 4 x 2 x 2 = 384 tiles) is sized for a CPU."""

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
    tinted = tiles[:, None] * colors[None, :, None, None, :]
    return tinted.reshape(-1, size, size, 3)


def matching_view(images: jax.Array, color_mode: str) -> jax.Array:
    """What matching compares, given how tiles will be coloured afterwards.

    "none" and "blend" show tiles as they are, so colour matters. "multiply" replaces a tile's
    colour by the patch's mean colour, so only luminance structure is compared. "transfer" also
    replaces the tile's mean and contrast, so luminance is compared after standardising each
    image to mean 0.5 and standard deviation 0.2 (flat images stay flat).
    """
    if color_mode in ("none", "blend"):
        return images
    grey = luminance(images)
    if color_mode == "multiply":
        return jnp.repeat(grey, 3, axis=-1)
    if color_mode == "transfer":
        mean = jnp.mean(grey, axis=(-3, -2, -1), keepdims=True)
        std = jnp.std(grey, axis=(-3, -2, -1), keepdims=True)
        return jnp.repeat(0.5 + 0.2 * (grey - mean) / jnp.maximum(std, 1e-3), 3, axis=-1)
    raise ValueError(f"color mode must be one of {', '.join(COLOR_MODES)}, got {color_mode!r}")


def color_features(images: jax.Array, grid: int = 4) -> jax.Array:
    """Weight-free features: the mean CIE Lab colour of each cell of a grid x grid split
    (metapixel's idea, with Lab instead of YIQ), L2-normalised.

    Each cell contributes (L/100, a/100, b/100, 0.5): the constant keeps brightness in the
    features, since L2 normalisation alone would make a dark grey and a light grey identical.

    Args:
      images: NHWC, each at least grid x grid.
      grid: cells per side (static).

    Returns:
      (N, grid * grid * 4) unit rows.
    """
    images = jnp.asarray(images)
    cells = resize(images, grid, grid, method="linear") if images.shape[-3:-1] != (grid, grid) else images
    lab = rgb_to_lab(cells) / 100.0
    features = jnp.concatenate([lab, jnp.full((*lab.shape[:-1], 1), 0.5, lab.dtype)], axis=-1)
    return l2_normalize(features.reshape(images.shape[0], -1))


def vgg_patch_features(params, images: jax.Array, *, layer: str = "relu4_1", size: int = 64, pool: str = "mean", pooling: str = "max") -> jax.Array:
    """VGG19 features of images resized to size x size: one layer, spatially averaged ("mean",
    C features) or flattened ("flat", C * H * W), L2-normalised.

    Args:
      params: VGG19 params.
      images: NHWC.
      layer: one of `vgg.VGG19_LAYERS` (static).
      size: side the images are resized to before the network (static).
      pool: "mean" or "flat" (static).
    """
    images = resize(jnp.asarray(images), size, size)
    maps = vgg19_features(params, images, (layer,), pooling=pooling)[layer]
    if pool == "mean":
        features = jnp.mean(maps, axis=(1, 2))
    elif pool == "flat":
        features = maps.reshape(maps.shape[0], -1)
    else:
        raise ValueError(f"pool must be 'mean' or 'flat', got {pool!r}")
    return l2_normalize(features)


def mosaic_grid(height: int, width: int, patch: int, *, cols: int | None = None, fit: str = "resize") -> tuple[int, int, int, int]:
    """The grid for a target of height x width: (rows, cols, target height, target width).

    With "resize" the target is resized to rows x cols whole patches, cols = `cols` or
    round(width / patch) and rows chosen to keep the aspect (it changes by under half a patch).
    With "crop" the target is centre-cropped to whole patches (at most patch - 1 pixels lost per
    axis); `cols` then first rescales the target to about cols patches across.
    """
    if patch < 1:
        raise ValueError(f"--patch must be a positive integer, got {patch}")
    if fit not in ("resize", "crop"):
        raise ValueError(f"--fit must be 'resize' or 'crop', got {fit!r}")
    if cols is not None and cols < 1:
        raise ValueError(f"--cols must be a positive integer, got {cols}")
    scale = 1.0 if cols is None else cols * patch / width
    scaled_h, scaled_w = height * scale, width * scale
    if min(scaled_h, scaled_w) < patch:
        raise ValueError(f"--patch {patch} is larger than the target ({round(scaled_w)}x{round(scaled_h)} after scaling)")
    if fit == "resize":
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
    - "multiply": the seed's colouring, a grey tile times the patch's mean RGB; the tile's
      luminance is first divided by its mean so the cell keeps the patch's brightness.
    - "transfer": each channel shifted and scaled to the patch's mean and standard deviation.
    - "blend": (1 - alpha) tile + alpha patch.
    """
    tiles = jnp.asarray(tiles)
    patches = jnp.asarray(patches, tiles.dtype)
    axes = (-3, -2)
    if mode == "none":
        out = tiles
    elif mode == "multiply":
        grey = luminance(tiles)
        scale = grey / jnp.maximum(jnp.mean(grey, axis=axes, keepdims=True), 1e-3)
        out = scale * jnp.mean(patches, axis=axes, keepdims=True)
    elif mode == "transfer":
        t_mean, t_std = jnp.mean(tiles, axis=axes, keepdims=True), jnp.std(tiles, axis=axes, keepdims=True)
        p_mean, p_std = jnp.mean(patches, axis=axes, keepdims=True), jnp.std(patches, axis=axes, keepdims=True)
        out = (tiles - t_mean) / jnp.maximum(t_std, 1e-3) * p_std + p_mean
    elif mode == "blend":
        out = (1 - alpha) * tiles + alpha * patches
    else:
        raise ValueError(f"color mode must be one of {', '.join(COLOR_MODES)}, got {mode!r}")
    return jnp.clip(out, 0.0, 1.0)


class Assignment(NamedTuple):
    tiles: np.ndarray  # (cells,) int: the tile chosen for each cell, row-major
    scores: np.ndarray  # (cells,) float: its match score
    fallbacks: int  # cells for which no top-k candidate was allowed and all tiles were searched


def _near_offsets(min_distance: float) -> np.ndarray:
    reach = max(0, math.ceil(min_distance) - 1)
    offsets = [(dr, dc) for dr in range(-reach, reach + 1) for dc in range(-reach, reach + 1)
               if (dr or dc) and dr * dr + dc * dc < min_distance * min_distance]
    return np.asarray(offsets, dtype=np.int64).reshape(-1, 2)


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
) -> Assignment:
    """Pick one tile per cell from its candidates under a reuse cap and a repeat distance.

    Greedy: cells are visited from the most to the least confident (by their best score); each
    takes its best candidate that has been used fewer than `max_reuse` times and does not appear
    in any cell closer than `min_distance` (Euclidean, in cells). When all of a cell's top-k
    candidates are ruled out, `all_scores(cell)` (scores against every tile) is searched.
    Without constraints this is the plain argmax.

    Args:
      scores, candidates: (cells, k) from `match_tiles`, best first.
      rows, cols: the grid (cells = rows * cols, row-major).
      tiles: size of the tile library.

    Raises:
      ValueError: the constraints cannot be met.
    """
    scores = np.asarray(scores)
    candidates = np.asarray(candidates)
    cells = rows * cols
    if max_reuse is not None and max_reuse * tiles < cells:
        raise ValueError(f"--max-reuse {max_reuse} with {tiles} tiles covers only {max_reuse * tiles} of {cells} cells")
    if max_reuse is None and min_distance <= 1:
        return Assignment(candidates[:, 0].copy(), scores[:, 0].copy(), 0)
    offsets = _near_offsets(min_distance)
    used = np.zeros(tiles, np.int64)
    grid = np.full((rows, cols), -1, np.int64)
    chosen = np.empty(cells, np.int64)
    chosen_score = np.empty(cells, np.float32)
    fallbacks = 0
    cap = max_reuse if max_reuse is not None else cells
    for cell in np.argsort(-scores[:, 0], kind="stable"):
        r, c = divmod(int(cell), cols)
        near = offsets + (r, c)
        inside = (near[:, 0] >= 0) & (near[:, 0] < rows) & (near[:, 1] >= 0) & (near[:, 1] < cols)
        nearby = grid[near[inside, 0], near[inside, 1]]
        allowed = (used[candidates[cell]] < cap) & ~np.isin(candidates[cell], nearby)
        if allowed.any():
            pick = int(np.argmax(allowed))
            tile, score = int(candidates[cell, pick]), float(scores[cell, pick])
        else:
            if all_scores is None:
                raise ValueError(f"no candidate tile is allowed for cell ({r}, {c}); pass all_scores or more candidates")
            fallbacks += 1
            every = np.asarray(all_scores(int(cell)), np.float64).copy()
            every[used >= cap] = -np.inf
            every[nearby[nearby >= 0]] = -np.inf
            tile = int(np.argmax(every))
            if not np.isfinite(every[tile]):
                raise ValueError(
                    f"no tile satisfies --max-reuse/--min-distance at cell ({r}, {c}); "
                    "allow more reuse, a smaller --min-distance, or use more tiles"
                )
            score = float(every[tile])
        chosen[cell], chosen_score[cell] = tile, score
        used[tile] += 1
        grid[r, c] = tile
    return Assignment(chosen, chosen_score, fallbacks)


def feature_function(settings: dict, params=None) -> Callable[[jax.Array], jax.Array]:
    """A jitted function: NHWC images at settings["size"] -> (N, t) features."""
    view = settings["view"]
    if settings["features"] == "color":
        grid = settings["grid"]
        return jax.jit(lambda images: color_features(matching_view(images, view), grid))
    if params is None:
        raise JaxmosaicError("VGG features need VGG19 weights")
    layer, size, pool = settings["layer"], settings["size"], settings["pool"]
    return jax.jit(lambda images: vgg_patch_features(params, matching_view(images, view), layer=layer, size=size, pool=pool))


def batched_features(fn, images: np.ndarray, batch: int = FEATURE_BATCH) -> np.ndarray:
    """`fn` over `images` in fixed-size batches (the last padded), so it compiles once."""
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)]) if len(chunk) < batch else chunk
        out.append(np.asarray(fn(jnp.asarray(padded)))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def view_for(color_mode: str) -> str:
    """The `matching_view` a colour mode needs ("blend" compares colours as "none" does)."""
    if color_mode not in COLOR_MODES:
        raise ValueError(f"--color must be one of {', '.join(COLOR_MODES)}, got {color_mode!r}")
    return "none" if color_mode == "blend" else color_mode


class MosaicResult(NamedTuple):
    image: np.ndarray  # (rows * render, cols * render, 3) float32
    tiles: np.ndarray  # (rows, cols) int: the tile index of each cell
    scores: np.ndarray  # (rows, cols) float: each cell's match score
    stats: dict  # patches, tiles, k, energy, match seconds, mean scores, fallbacks


def _fit_target(target: np.ndarray, rows: int, cols: int, patch: int, fit: str, scale_cols: int | None) -> np.ndarray:
    height, width = target.shape[:2]
    if fit == "resize":
        return np.asarray(resize(target, rows * patch, cols * patch))
    if scale_cols is not None:
        scale = scale_cols * patch / width
        target = np.asarray(resize(target, max(rows * patch, round(height * scale)), max(cols * patch, round(width * scale))))
        height, width = target.shape[:2]
    top, left = (height - rows * patch) // 2, (width - cols * patch) // 2
    return target[top : top + rows * patch, left : left + cols * patch]


def make_mosaic(
    target: np.ndarray,
    library,
    *,
    patch: int = 16,
    render: int | None = None,
    cols: int | None = None,
    fit: str = "resize",
    color: str = "none",
    alpha: float = 0.3,
    svd_k: int = 0,
    top_k: int | None = None,
    max_reuse: int | None = None,
    min_distance: float = 0.0,
    absolute: bool = False,
    params=None,
) -> MosaicResult:
    """Build a photomosaic of `target` (HWC in [0, 1]) from a tile library.

    Args:
      library: a `tile_library.TileLibrary` whose features were computed for `view_for(color)`.
      patch: side of the target patch matched to one tile, in target pixels (after `cols` scaling).
      render: side of each tile in the output (default: `patch`).
      cols, fit: see `mosaic_grid`.
      color, alpha: see `colorize`.
      svd_k: dimensions kept by SVD compression (0: exact matching in the full feature space).
      top_k: candidates per patch (default 1, or 32 with a reuse cap or minimum distance).
      max_reuse, min_distance: see `assign_tiles`.
      absolute: rank by |score| (the seed's rule).
      params: VGG19 params, for libraries with VGG features.
    """
    render = render or patch
    if render < 1:
        raise ValueError(f"--render must be a positive integer, got {render}")
    if library.settings["view"] != view_for(color):
        raise JaxmosaicError(f"the tile library's features were computed for --color {library.settings['view']}, not {color}")
    n, t = library.features.shape
    if svd_k < 0 or svd_k > min(n, t):
        raise ValueError(f"--svd-k {svd_k} is larger than min(tiles, feature dimension) = min({n}, {t}); use at most {min(n, t)} or 0 for exact matching")
    height, width = target.shape[:2]
    rows, cols_, th, tw = mosaic_grid(height, width, patch, cols=cols, fit=fit)
    fitted = _fit_target(np.asarray(target, np.float32), rows, cols_, patch, fit, cols)
    cells = np.asarray(split_cells(fitted, rows, cols_))
    size = library.settings["size"]
    fn = feature_function(library.settings, params)
    queries = batched_features(jax.jit(lambda batch: fn(resize(batch, size, size))), cells)

    dictionary = library.features
    energy = 1.0
    if svd_k:
        if library.svd is not None and library.svd["k"] == svd_k:
            basis = library.svd["basis"]
            energy = library.svd["energy"]
            dictionary = np.asarray(l2_normalize(jnp.asarray(dictionary @ basis)))
        else:
            compressed = svd_compress(jnp.asarray(dictionary), svd_k)
            basis, dictionary, energy = np.asarray(compressed.basis), np.asarray(compressed.dictionary), float(compressed.energy)
        queries = np.asarray(queries @ basis)
    constrained = max_reuse is not None or min_distance > 1
    k = min(n, top_k or (32 if constrained else 1))
    matcher = jax.jit(match_tiles, static_argnames=("top_k", "absolute")).lower(queries, dictionary, top_k=k, absolute=absolute)
    start = time.perf_counter()
    compiled = matcher.compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores, candidates = jax.block_until_ready(compiled(queries, dictionary))
    match_seconds = time.perf_counter() - start
    scores, candidates = np.asarray(scores), np.asarray(candidates)

    def all_scores(cell: int) -> np.ndarray:
        s = dictionary @ queries[cell]
        return np.abs(s) if absolute else s

    assignment = assign_tiles(scores, candidates, rows=rows, cols=cols_, tiles=n, max_reuse=max_reuse,
                              min_distance=min_distance, all_scores=all_scores)
    used, inverse = np.unique(assignment.tiles, return_inverse=True)
    tiles = library.render(used, render)[inverse]
    target_cells = split_cells(np.asarray(resize(fitted, rows * render, cols_ * render)), rows, cols_)
    image = np.asarray(assemble_cells(colorize(tiles, target_cells, color, alpha), rows, cols_))
    stats = {
        "patches": rows * cols_, "rows": rows, "cols": cols_, "tiles": n, "features": t, "k": svd_k, "energy_kept": float(energy),
        "candidates": k, "match_seconds": match_seconds, "match_compile_seconds": compile_seconds,
        "mean_score": float(assignment.scores.mean()), "unconstrained_mean_score": float(scores[:, 0].mean()),
        "distinct_tiles": int(len(used)), "max_uses": int(np.bincount(assignment.tiles).max()), "fallbacks": assignment.fallbacks,
    }
    return MosaicResult(image, assignment.tiles.reshape(rows, cols_), assignment.scores.reshape(rows, cols_), stats)
