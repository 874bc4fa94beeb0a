"""k-means in JAX: greedy k-means++ seeding, Lloyd iterations and mini-batch k-means.

Data are float arrays (n, d). The nearest centre of every point is found by the blocked search of
`jaxmosaic.search.match_tiles` on augmented vectors ([x, 1] . [c, -|c|^2 / 2] = x . c - |c|^2 / 2,
largest for the nearest centre), so memory stays bounded by the block sizes and never holds the
(n, k) distance matrix. Everything is jitted and deterministic for a given key.
"""

from __future__ import annotations

import enum
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxmosaic.search import match_memory_bytes, match_tiles

__all__ = [
    "DIRECT_CENTERS",
    "KMeansInit",
    "KMeansResult",
    "kmeans",
    "kmeans_memory",
    "kmeans_plusplus",
    "nearest_centers",
    "nearest_memory",
]


class KMeansInit(enum.StrEnum):
    """Seeding: greedy k-means++ (as scikit-learn) or k distinct random points (as faiss)."""

    plusplus = "k-means++"
    random = "random"

DIRECT_CENTERS = 16384
"""Up to this many centres, `nearest_centers` scores a block of points against all of them at once."""
_GROUP = 128


class KMeansResult(NamedTuple):
    """What `kmeans` returns."""

    centers: jax.Array  # (k, d)
    labels: jax.Array  # (n,) int32: each point's nearest centre in `centers`
    inertia: jax.Array  # () sum of squared distances of the points to their nearest centre
    iterations: jax.Array  # () int32: Lloyd iterations (or mini-batch steps) run
    history: jax.Array  # (max_iter,) inertia before each iteration (Lloyd; NaN after the last run)


def nearest_centers(data: jax.Array, centers: jax.Array, *, block: int = 1024,
                    direct: int = DIRECT_CENTERS) -> tuple[jax.Array, jax.Array]:
    """(labels, squared distances): each row of `data` (n, d) to its nearest row of `centers` (k, d).

    Nearest = largest x . c - |c|^2 / 2, computed a block of `block` points at a time (memory
    block x k floats). The argmax runs in two stages (over groups of 128 centres, then inside the
    winning group), as XLA's CPU argmax over a long row is much slower than its max. More than
    `direct` centres go through `match_tiles`, which also blocks over the centres. The returned
    distance is recomputed as |x - c|^2 for the chosen centre, free of cancellation.
    """
    data = jnp.asarray(data)
    centers = jnp.asarray(centers, data.dtype)
    n, k = data.shape[0], centers.shape[0]
    half = 0.5 * jnp.sum(jnp.square(centers), axis=1)
    if k > direct:
        queries = jnp.concatenate([data, jnp.ones((n, 1), data.dtype)], axis=1)
        keys = jnp.concatenate([centers, -half[:, None]], axis=1)
        labels = match_tiles(queries, keys, top_k=1, query_block=block)[1][:, 0]
    else:
        block = min(block, n)
        blocks = -(-n // block)
        group = _GROUP if k % _GROUP == 0 else k
        padded = jnp.pad(data, ((0, blocks * block - n), (0, 0))).reshape(blocks, block, -1)

        def nearest(points):
            scores = (points @ centers.T - half[None, :]).reshape(block, k // group, group)
            best_group = jnp.argmax(jnp.max(scores, axis=2), axis=1)
            inside = jnp.take_along_axis(scores, best_group[:, None, None], axis=1)[:, 0, :]
            labels = (best_group * group + jnp.argmax(inside, axis=1)).astype(jnp.int32)
            return labels, jnp.sum(jnp.square(points - centers[labels]), axis=1)  # a block's, not n x d at once

        labels, distances = lax.map(nearest, padded)
        return labels.reshape(-1)[:n], distances.reshape(-1)[:n]
    distances = jnp.sum(jnp.square(data - centers[labels]), axis=1)
    return labels, distances


def nearest_memory(n: int, d: int, k: int, *, block: int = 1024) -> int:
    """Bytes `nearest_centers` of n points of d features among k centres holds beyond its inputs:
    the padded points, a block's scores against every centre (or, beyond `DIRECT_CENTERS`, the
    augmented vectors and `match_tiles`' blocks), each point's centre, label and distance."""
    if k > DIRECT_CENTERS:
        search = (n + k) * (d + 1) * 4 + match_memory_bytes(n, d + 1, query_block=block)
    else:
        search = (n + block) * d * 4 + min(block, n) * k * 4 * 2
    return search + n * d * 4 + n * 8


def kmeans_memory(n: int, d: int, k: int, *, init: str = "k-means++", batch_size: int | None = None,
                  block: int = 1024) -> int:
    """Bytes `kmeans` of n points of d features into k centres holds at its peak: the points, the
    centres and their updates, the seeding's (trials, n) distances (k-means++), the nearest-centre
    search over all the points (`nearest_memory`) and a mini-batch of `batch_size` points."""
    trials = 2 + int(math.log(k)) if init == str(KMeansInit.plusplus) else 0
    batch = 0 if batch_size is None else min(batch_size, n)
    return n * d * 4 + k * d * 4 * 4 + (3 + 2 * trials) * n * 4 + nearest_memory(n, d, k, block=block) + batch * d * 4 * 2


def kmeans_plusplus(key: jax.Array, data: jax.Array, k: int, *, trials: int | None = None) -> jax.Array:
    """Greedy k-means++ seeding (Arthur and Vassilvitskii 2007; the greedy variant of
    scikit-learn): each new centre is the best of `trials` candidates (default 2 + ln k) drawn with
    probability proportional to the squared distance to the nearest centre so far. (k, d)."""
    data = jnp.asarray(data)
    n = data.shape[0]
    trials = trials or 2 + int(math.log(k))
    first_key, key = jax.random.split(key)
    first = jax.random.randint(first_key, (), 0, n)
    centers = jnp.zeros((k, data.shape[1]), data.dtype).at[0].set(data[first])
    closest = jnp.sum(jnp.square(data - data[first][None, :]), axis=1)
    squares = jnp.sum(jnp.square(data), axis=1)

    def body(i, carry):
        centers, closest, key = carry
        key, draw = jax.random.split(key)
        # inverse-CDF sampling: one cumulative sum, not a Gumbel draw per point and trial
        cumulative = jnp.cumsum(closest)
        targets = jax.random.uniform(draw, (trials,), data.dtype) * cumulative[-1]
        candidates = jnp.clip(jnp.searchsorted(cumulative, targets), 0, n - 1)
        chosen = data[candidates]
        to_candidates = jnp.maximum(  # (trials, n): |x|^2 - 2 x.c + |c|^2, a matmul
            squares[None, :] - 2.0 * chosen @ data.T + jnp.sum(jnp.square(chosen), axis=1, keepdims=True), 0.0)
        potentials = jnp.minimum(closest[None, :], to_candidates)
        best = jnp.argmin(jnp.sum(potentials, axis=1))
        return centers.at[i].set(data[candidates[best]]), potentials[best], key

    centers, _, _ = lax.fori_loop(1, k, body, (centers, closest, key))
    return centers


def _update(data, labels, distances, centers):
    """New centres (means of their points); empty clusters re-seeded at the points farthest from
    their centres, the farthest first (each such point then has distance 0 to a centre)."""
    k = centers.shape[0]
    counts = jax.ops.segment_sum(jnp.ones_like(distances), labels, num_segments=k)
    sums = jax.ops.segment_sum(data, labels, num_segments=k)
    means = sums / jnp.maximum(counts, 1)[:, None]
    empty = counts == 0
    far = lax.top_k(distances, min(k, data.shape[0]))[1]
    rank = jnp.cumsum(empty) - 1  # the j-th empty cluster takes the j-th farthest point
    reseeded = data[far[jnp.clip(rank, 0, far.shape[0] - 1)]]
    return jnp.where(empty[:, None], reseeded, means)


def kmeans(
    key: jax.Array,
    data: jax.Array,
    k: int,
    *,
    init: str | jax.Array = "k-means++",
    max_iter: int = 100,
    tol: float = 1e-4,
    batch_size: int | None = None,
    block: int = 1024,
) -> KMeansResult:
    """Cluster `data` (n, d) into `k` groups.

    Args:
      key: PRNG key (seeding, and the mini-batches).
      init: "k-means++" (greedy, as scikit-learn), "random" (k distinct points, as faiss), or the
        initial centres themselves, (k, d) (as scikit-learn's `KMeans(init=C0, n_init=1)`).
      max_iter: Lloyd iterations, or mini-batch steps with `batch_size`.
      tol: Lloyd stops when the centres move by less than tol times the data's mean variance (sum
        of squared shifts, scikit-learn's rule); 0 runs all `max_iter` iterations.
      batch_size: mini-batch k-means (Sculley 2010) with per-centre learning rates 1 / count.
      block: points per block of the nearest-centre search (memory ~ block x k floats).

    Returns:
      A `KMeansResult`; labels and inertia are for the returned centres, over all the data.
    """
    data = jnp.asarray(data)
    n = data.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} clusters need at least k points; there are {n}")
    given = None
    if not isinstance(init, str):
        given = jnp.asarray(init, data.dtype)
        if given.shape != (k, data.shape[1]):
            raise ValueError(f"initial centres must be (k, d) = ({k}, {data.shape[1]}), got {given.shape}")
        init = "given"
    elif init not in tuple(KMeansInit):
        raise ValueError(f"init must be one of {', '.join(KMeansInit)} or a (k, d) array, got {init!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    return _kmeans(key, data, k, str(init), max_iter, float(tol), batch_size, block, given)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 6, 7))
def _kmeans(key, data, k, init, max_iter, tol, batch_size, block, given):
    n = data.shape[0]
    init_key, key = jax.random.split(key)
    if given is not None:
        centers = given
    elif init == "random":
        centers = data[jax.random.choice(init_key, n, (k,), replace=False)]
    else:
        centers = kmeans_plusplus(init_key, data, k)
    history = jnp.full((max_iter,), jnp.nan, data.dtype)
    if batch_size is None:
        threshold = tol * jnp.mean(jnp.var(data, axis=0))  # scikit-learn's rule

        def cond(carry):
            _, i, shift, _ = carry
            return (i < max_iter) & (shift > threshold)

        def body(carry):
            centers, i, _, history = carry
            labels, distances = nearest_centers(data, centers, block=block)
            new = _update(data, labels, distances, centers)
            return new, i + 1, jnp.sum(jnp.square(new - centers)), history.at[i].set(jnp.sum(distances))

        centers, iterations, _, history = lax.while_loop(cond, body, (centers, jnp.int32(0), jnp.asarray(jnp.inf, data.dtype), history))
    else:
        size = min(batch_size, n)

        def step(i, carry):
            centers, counts, key = carry
            key, draw = jax.random.split(key)
            batch = data[jax.random.choice(draw, n, (size,), replace=False)]
            labels, _ = nearest_centers(batch, centers, block=block)
            batch_counts = jax.ops.segment_sum(jnp.ones((size,), data.dtype), labels, num_segments=k)
            batch_sums = jax.ops.segment_sum(batch, labels, num_segments=k)
            counts = counts + batch_counts
            rate = jnp.where(counts > 0, batch_counts / jnp.maximum(counts, 1), 0.0)[:, None]
            means = batch_sums / jnp.maximum(batch_counts, 1)[:, None]
            return centers + rate * (means - centers), counts, key

        centers, _, _ = lax.fori_loop(0, max_iter, step, (centers, jnp.zeros((k,), data.dtype), key))
        iterations = jnp.int32(max_iter)
    labels, distances = nearest_centers(data, centers, block=block)
    return KMeansResult(centers, labels, jnp.sum(distances), iterations, history)
