"""SVD compression of a feature dictionary and blocked top-k matching at matmul speed.

A dictionary is an (n, t) array: one L2-normalised feature row per tile. Queries are (q, t).
The score of a query against a tile is their inner product (the cosine, for unit rows); the
original photomosaic's MRF rule takes its absolute value (`absolute=True`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["Compressed", "l2_normalize", "svd_compress", "compress_queries", "match_tiles", "match_memory_bytes",
           "shard_dictionary", "match_sharded"]

# Columns of a score block reduced together: the running best is kept per sub-block of this many
# tiles, and the winner inside its sub-block is found afterwards by one small recomputation.
# XLA's CPU argmax over a long row is ~10x slower than its max, so this keeps the reduction at
# memory speed.
_SUB = 128
# Queries refined together when recomputing the winning sub-block (bounds the gathered rows).
_REFINE = 64


class Compressed(NamedTuple):
    """A dictionary compressed to its k leading right singular vectors."""

    basis: jax.Array  # (t, k) float: V_k, the leading right singular vectors of D
    dictionary: jax.Array  # (n, k) float: D V_k, each row re-normalised to unit length
    singular_values: jax.Array  # (k,) float: the k largest singular values of D, descending
    energy: jax.Array  # () float: sum of the kept s_i^2 over ||D||_F^2


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / ||x|| along `axis`; an all-zero row stays zero."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def svd_compress(
    dictionary: jax.Array,
    k: int,
    *,
    method: str = "exact",
    key: jax.Array | None = None,
    oversample: int = 10,
    power_iterations: int = 2,
    renormalize: bool = True,
) -> Compressed:
    """Keep the k leading right singular vectors of `dictionary` (D = U S V^T).

    Rows of D V_k are re-normalised (the original article did not): a tile whose features lie partly outside
    the k-dimensional subspace gets a shorter projection, and without re-normalising its score
    would shrink with it, so tiles would be ranked by how well the subspace represents them
    rather than by how well they match. Re-normalised, the score is the cosine within the subspace.

    Args:
      dictionary: (n, t) features.
      k: dimensions kept (static), 1 <= k <= min(n, t).
      method: "exact" (`jnp.linalg.svd`) or "randomized" (Halko, Martinsson and Tropp 2011:
        a Gaussian sketch of k + oversample columns and `power_iterations` QR-stabilised passes).
      key: PRNG key for "randomized".

    Returns:
      A `Compressed` tuple.
    """
    n, t = dictionary.shape
    if not 1 <= k <= min(n, t):
        raise ValueError(f"k must be between 1 and min(tiles, features) = {min(n, t)}, got {k}")
    dictionary = jnp.asarray(dictionary)
    if method == "exact":
        _, s, vt = jnp.linalg.svd(dictionary, full_matrices=False)
        basis, singular = vt[:k].T, s[:k]
    elif method == "randomized":
        if key is None:
            raise ValueError("svd_compress(method='randomized') needs a key")
        width = min(k + oversample, n, t)
        sketch = dictionary @ jax.random.normal(key, (t, width), dictionary.dtype)
        q, _ = jnp.linalg.qr(sketch)
        for _ in range(power_iterations):
            z, _ = jnp.linalg.qr(dictionary.T @ q)
            q, _ = jnp.linalg.qr(dictionary @ z)
        _, s, vt = jnp.linalg.svd(q.T @ dictionary, full_matrices=False)
        basis, singular = vt[:k].T, s[:k]
    else:
        raise ValueError(f"method must be 'exact' or 'randomized', got {method!r}")
    projected = dictionary @ basis
    energy = jnp.sum(jnp.square(projected)) / jnp.maximum(jnp.sum(jnp.square(dictionary)), 1e-30)
    if renormalize:
        projected = l2_normalize(projected)
    return Compressed(basis, projected, singular, energy)


def compress_queries(queries: jax.Array, compressed: Compressed) -> jax.Array:
    """Project (q, t) queries onto the kept subspace: (q, k). (Scaling a query does not change
    its ranking, so the projections are not re-normalised.)"""
    return queries @ compressed.basis


def _blocks(length: int, block: int, multiple: int = 1) -> tuple[int, int]:
    """(block size, number of blocks) covering `length`, the block a multiple of `multiple`."""
    block = min(block, -(-length // multiple) * multiple)
    block = -(-block // multiple) * multiple
    return block, -(-length // block)


def match_memory_bytes(queries: int, features: int, *, top_k: int = 1, query_block: int = 1024, tile_block: int = 4096) -> int:
    """An upper estimate of the temporary memory `match_tiles` needs beyond its inputs."""
    bq = min(query_block, queries)
    scores = bq * tile_block * 4 * 3  # the score block, its masked copy and the reduction
    refine = _REFINE * _SUB * features * 4 * 2
    padded = (queries + bq) * features * 4
    return scores + refine + padded + queries * top_k * 8 * 4


def match_tiles(
    queries: jax.Array,
    dictionary: jax.Array,
    *,
    top_k: int = 1,
    absolute: bool = False,
    query_block: int = 1024,
    tile_block: int = 4096,
) -> tuple[jax.Array, jax.Array]:
    """The `top_k` best tiles for each query, best first, by inner product.

    Blocked over queries and tiles with a running top-k, so the (q, n) score matrix is never
    materialised: memory beyond the inputs is about query_block x tile_block floats. Pure and
    jit-able; `top_k`, `absolute` and the block sizes are static. Equals a brute-force
    `argsort(-(queries @ dictionary.T))` up to ties and float rounding.

    Args:
      queries: (q, t).
      dictionary: (n, t); for compressed matching, `Compressed.dictionary` with
        `compress_queries(queries, compressed)` as the queries.
      top_k: candidates per query (<= n).
      absolute: rank by |<query, tile>| (the original article's MRF rule) instead of the signed product.

    Returns:
      (scores, indices): (q, top_k) float and (q, top_k) int32.
    """
    queries = jnp.asarray(queries)
    dictionary = jnp.asarray(dictionary, queries.dtype)
    q, t = queries.shape
    n = dictionary.shape[0]
    if dictionary.shape[1] != t:
        raise ValueError(f"queries have {t} features but the dictionary has {dictionary.shape[1]}")
    if not 1 <= top_k <= n:
        raise ValueError(f"top_k must be between 1 and the number of tiles ({n}), got {top_k}")
    bq, nq = _blocks(q, query_block)
    bd, nd = _blocks(n, tile_block, _SUB)
    # Blocks are read in place (no padded copy of a large dictionary): the last block's start is
    # pulled back so it ends at n, and the tiles it shares with the previous block are masked.
    tiles = dictionary if n >= bd else jnp.pad(dictionary, ((0, bd - n), (0, 0)))
    length = tiles.shape[0]
    nominal = jnp.arange(nd, dtype=jnp.int32) * bd
    starts = jnp.minimum(nominal, length - bd)
    query_blocks = jnp.pad(queries, ((0, nq * bq - q), (0, 0))).reshape(nq, bq, t)

    def scores_of(qb, start, first):
        block = lax.dynamic_slice_in_dim(tiles, start, bd)
        s = lax.dot_general(qb, block, (((1,), (1,)), ((), ())))
        if absolute:
            s = jnp.abs(s)
        index = start + jnp.arange(bd, dtype=jnp.int32)
        return jnp.where(((index >= first) & (index < n))[None, :], s, -jnp.inf)

    def best_one(qb):
        def body(carry, xs):
            best, sub = carry
            start, first = xs
            per_sub = jnp.max(scores_of(qb, start, first).reshape(bq, bd // _SUB, _SUB), axis=2)
            j = jnp.argmax(per_sub, axis=1)
            m = jnp.take_along_axis(per_sub, j[:, None], axis=1)[:, 0]
            better = m > best
            return (jnp.where(better, m, best), jnp.where(better, start + j.astype(jnp.int32) * _SUB, sub)), None

        init = (jnp.full((bq,), -jnp.inf, queries.dtype), jnp.zeros((bq,), jnp.int32))
        (_, sub), _ = lax.scan(body, init, (starts, nominal))
        # recompute each query's winning sub-block of _SUB tiles and pick the tile inside it
        nr = -(-bq // _REFINE)
        pad = nr * _REFINE - bq
        gather = jax.vmap(lambda start: lax.dynamic_slice_in_dim(tiles, start, _SUB))

        def refine(args):
            qc, sc = args
            s = jnp.einsum("qt,qst->qs", qc, gather(sc))
            if absolute:
                s = jnp.abs(s)
            index = sc[:, None] + jnp.arange(_SUB, dtype=jnp.int32)[None, :]
            s = jnp.where(index < n, s, -jnp.inf)
            j = jnp.argmax(s, axis=1)
            return jnp.take_along_axis(s, j[:, None], axis=1), jnp.take_along_axis(index, j[:, None], axis=1)

        qc = jnp.pad(qb, ((0, pad), (0, 0))).reshape(nr, _REFINE, t)
        sc = jnp.pad(sub, (0, pad)).reshape(nr, _REFINE)
        score, index = lax.map(refine, (qc, sc))
        return score.reshape(-1, 1)[:bq], index.reshape(-1, 1)[:bq]

    def best_k(qb):
        kb = min(top_k, bd)

        def body(carry, xs):
            best, index = carry
            start, first = xs
            s, j = lax.top_k(scores_of(qb, start, first), kb)
            both = jnp.concatenate([best, s], axis=1)
            both_index = jnp.concatenate([index, j.astype(jnp.int32) + start], axis=1)
            s, j = lax.top_k(both, top_k)
            return (s, jnp.take_along_axis(both_index, j, axis=1)), None

        init = (jnp.full((bq, top_k), -jnp.inf, queries.dtype), jnp.zeros((bq, top_k), jnp.int32))
        (score, index), _ = lax.scan(body, init, (starts, nominal))
        return score, index

    score, index = lax.map(best_one if top_k == 1 else best_k, query_blocks)
    return score.reshape(nq * bq, top_k)[:q], index.reshape(nq * bq, top_k)[:q]


def shard_dictionary(dictionary, mesh) -> jax.Array:
    """The dictionary's rows padded with zero rows to a multiple of the mesh's devices and split
    over them (`NamedSharding`, axis "devices"); `match_sharded` masks the padding."""
    dictionary = jnp.asarray(dictionary)
    devices = mesh.devices.size
    pad = -dictionary.shape[0] % devices
    if pad:
        dictionary = jnp.pad(dictionary, ((0, pad), (0, 0)))
    return jax.device_put(dictionary, NamedSharding(mesh, PartitionSpec("devices")))


def match_sharded(queries: jax.Array, dictionary: jax.Array, *, mesh, tiles: int | None = None, top_k: int = 1,
                  absolute: bool = False) -> tuple[jax.Array, jax.Array]:
    """`match_tiles` with the dictionary's rows split over a mesh's devices: each device finds the
    top-k of its shard, and the shards' candidates are merged into the overall top-k.

    Args:
      dictionary: (n', t) rows, n' a multiple of the devices (`shard_dictionary`).
      mesh: a one-axis mesh ("devices").
      tiles: the real number of tiles n <= n' (static); rows past it are padding and never chosen.
    """
    devices = mesh.devices.size
    total = dictionary.shape[0]
    if total % devices:
        raise ValueError(f"the dictionary's {total} rows do not split over {devices} devices; use shard_dictionary")
    tiles = total if tiles is None else tiles
    per = total // devices
    local_k = min(top_k, per)

    def local(q, d):
        scores, indices = match_tiles(q, d, top_k=local_k, absolute=absolute)
        indices = indices + lax.axis_index("devices").astype(jnp.int32) * per
        scores = jnp.where(indices < tiles, scores, -jnp.inf)
        return scores[None], indices[None]

    scores, indices = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec("devices")),
                                    out_specs=(PartitionSpec("devices"), PartitionSpec("devices")), check_vma=False)(queries, dictionary)
    q = queries.shape[0]
    scores = jnp.transpose(scores, (1, 0, 2)).reshape(q, devices * local_k)
    indices = jnp.transpose(indices, (1, 0, 2)).reshape(q, devices * local_k)
    best, where = lax.top_k(scores, top_k)
    return best, jnp.take_along_axis(indices, where, axis=1)
