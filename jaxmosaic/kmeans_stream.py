"""k-means over a stream of chunks: memory O(k d + chunk) whatever the number of points.

Three ways to train, each a pure `init` / `update` / `finalize` set in optax's manner, and one
driver, `stream_kmeans`, that runs them over a re-iterable stream of chunks:

- exact (out-of-core Lloyd): every pass adds each chunk's per-centre sums, counts and inertia
  (`lloyd_update`); the new centres are the means (`lloyd_finalize`). From the same initial
  centres, t passes are t iterations of in-memory Lloyd (scikit-learn's `KMeans(algorithm="lloyd")`).
- mini-batch (Sculley 2010, as scikit-learn's `MiniBatchKMeans.partial_fit`): each chunk moves
  every centre it touches towards the mean of its points with the per-centre rate
  batch count / cumulative count (`minibatch_update`).
- faiss's sample: one pass draws a uniform sample of min(N, 256 k) points (`reservoir_update`,
  reservoir sampling by random keys: the m points of smallest hash of their stream position are
  kept, so the sample does not depend on how the stream is cut into chunks, and the samples of
  several processes merge exactly), then Lloyd runs on the sample (held in memory, taken in slices).

Empty clusters are re-seeded by faiss's rule (`split_empty`): a cluster drawn with probability
proportional to its count - 1 is split in two, both centres nudged by +-1/1024 in alternating
coordinates, each taking half the count.

A chunk is (m, d) float32; a weight per point (default 1) lets a ragged last chunk be padded to a
fixed shape with weight 0, so one compiled program serves every chunk.

Totals over many chunks are float32 pairs (hi, lo) added with Knuth's TwoSum: hi + lo is the
running total to about 48 bits, so per-centre counts stay exact integers far past 2^24 points (a
float32 total stops growing there: 2^24 + 1 rounds to 2^24) and sums keep float32 accuracy
relative to their total, however many chunks were added; the chunk itself is summed in float32
(its counts exact while one centre gets less than 2^24 of its weight). `lloyd_totals` gives
them in float64. Given a `mesh` (one axis,
"devices"), a chunk's points are sharded over it (`NamedSharding` on the point axis, centres
replicated) and each device's sums, counts and inertia are summed by `lax.psum`. With several
processes (`jax.distributed`) each streams its own share and the passes' sums are added across
processes (`multihost_utils.process_allgather`, in process order, so every process holds the
same centres).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmosaic.clustering import KMeansInit, kmeans_plusplus, nearest_centers

__all__ = [
    "FAISS_MAX_PER_CENTER",
    "FAISS_MIN_PER_CENTER",
    "KMeansInterrupted",
    "LloydState",
    "MiniBatchState",
    "ReservoirState",
    "StreamKMeansResult",
    "StreamMethod",
    "chunk_for_memory",
    "faiss_sample_size",
    "lloyd_finalize",
    "lloyd_init",
    "lloyd_totals",
    "lloyd_update",
    "minibatch_init",
    "minibatch_update",
    "reservoir_init",
    "reservoir_merge",
    "reservoir_sample",
    "reservoir_update",
    "split_empty",
    "stream_kmeans",
    "stream_memory",
]

FAISS_MAX_PER_CENTER = 256
"""faiss trains on at most this many points per centre (a uniform sample of the rest)."""
FAISS_MIN_PER_CENTER = 39
"""faiss warns below this many training points per centre."""
_SPLIT_EPS = 1.0 / 1024.0  # faiss's perturbation of a split centre
_BLOCK = 1024
_SAMPLE_CHUNK = 65536  # points of the sample Lloyd takes at once


def faiss_sample_size(points: int, k: int) -> int:
    """min(points, 256 k): how many points faiss's rule trains k centres on."""
    return min(points, FAISS_MAX_PER_CENTER * k)


# --- empty clusters ------------------------------------------------------------------------------

@jax.jit
def split_empty(key: jax.Array, centers: jax.Array, counts: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """faiss's rule for empty clusters: each empty centre, in order, becomes a copy of a centre
    drawn with probability proportional to its count - 1 (the largest when none has more than
    one point), the two nudged apart by (1 +- 1/1024) in alternating coordinates, each with half
    the donor's count.

    Returns:
      (centres (k, d), counts (k,), the number of clusters re-seeded ()).
    """
    k, d = centers.shape
    sign = jnp.where(jnp.arange(d) % 2 == 0, 1.0, -1.0).astype(centers.dtype)

    def body(i, carry):
        centers, counts, key, splits = carry
        key, draw = jax.random.split(key)
        weights = jnp.maximum(counts - 1.0, 0.0)
        drawn = jax.random.categorical(draw, jnp.log(jnp.where(weights > 0, weights, 1e-30)))
        donor = jnp.where(jnp.any(weights > 0), drawn, jnp.argmax(counts))
        empty = counts[i] == 0
        source = centers[donor]
        split = centers.at[i].set(source * (1 + _SPLIT_EPS * sign)).at[donor].set(source * (1 - _SPLIT_EPS * sign))
        half = counts[donor] / 2
        split_counts = counts.at[i].set(half).at[donor].set(counts[donor] - half)
        return (jnp.where(empty, split, centers), jnp.where(empty, split_counts, counts), key,
                splits + empty.astype(jnp.int32))

    centers, counts, _, splits = lax.fori_loop(0, k, body, (centers, counts, key, jnp.int32(0)))
    return centers, counts, splits


# --- per-chunk statistics, on one device or sharded over a mesh -----------------------------------

def _two_sum(hi, lo, value):
    """(hi, lo) + value as a new float32 pair whose sum is exact to about 48 bits: Knuth's TwoSum
    gives the rounding error of hi + value exactly, then the pair is renormalised (|lo| <= ulp(hi) / 2)."""
    total = hi + value
    back = total - hi
    error = (hi - (total - back)) + (value - back)
    rest = lo + error
    new_hi = total + rest
    return new_hi, rest - (new_hi - total)


def _chunk_stats(centers, chunk, weights):
    """(per-centre weighted sums (k, d), weights (k,), weighted inertia ()) of one chunk's points."""
    k = centers.shape[0]
    labels, distances = nearest_centers(chunk, centers, block=min(_BLOCK, chunk.shape[0]))
    sums = jax.ops.segment_sum(chunk * weights[:, None], labels, num_segments=k)
    counts = jax.ops.segment_sum(weights, labels, num_segments=k)
    return sums, counts, jnp.sum(distances * weights)


@functools.cache
def _stats_program(mesh: Mesh | None) -> Callable:
    if mesh is None:
        return _chunk_stats
    points, shared = PartitionSpec("devices"), PartitionSpec()

    def per_device(centers, chunk, weights):
        return jax.tree_util.tree_map(lambda x: lax.psum(x, "devices"), _chunk_stats(centers, chunk, weights))

    return jax.shard_map(per_device, mesh=mesh, in_specs=(shared, points, points), out_specs=(shared, shared, shared))


def _place(chunk, weights, mesh: Mesh | None):
    """The chunk (float32) and its weights (default 1), padded with weight-0 rows to a multiple of
    the mesh's devices and sharded over it on the point axis."""
    chunk = jnp.asarray(chunk, jnp.float32)
    weights = jnp.ones((chunk.shape[0],), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    if mesh is None:
        return chunk, weights
    extra = -chunk.shape[0] % mesh.size
    if extra:
        chunk = jnp.pad(chunk, ((0, extra), (0, 0)))
        weights = jnp.pad(weights, (0, extra))
    sharded = NamedSharding(mesh, PartitionSpec("devices"))
    return jax.device_put(chunk, sharded), jax.device_put(weights, sharded)


# --- exact (out-of-core) Lloyd --------------------------------------------------------------------

class LloydState(NamedTuple):
    """A pass of out-of-core Lloyd so far."""

    centers: jax.Array  # (k, d) float32: this pass's centres
    sums: jax.Array  # (k, d) float32: weighted sums of the points nearest each centre, so far (hi part)
    counts: jax.Array  # (k,) float32: their weights (hi part)
    inertia: jax.Array  # () float32: weighted squared distances to the nearest centre, so far (hi part)
    sums_low: jax.Array  # (k, d) float32: what `sums` cannot hold (sums + sums_low is the total)
    counts_low: jax.Array  # (k,) float32: likewise for `counts` (exact integers past 2^24)
    inertia_low: jax.Array  # () float32: likewise for `inertia`


def lloyd_init(centers: jax.Array) -> LloydState:
    """A new pass from `centers` (k, d): zero sums, counts and inertia."""
    centers = jnp.asarray(centers, jnp.float32)
    k, d = centers.shape
    sums, counts, inertia = jnp.zeros((k, d), jnp.float32), jnp.zeros((k,), jnp.float32), jnp.zeros((), jnp.float32)
    return LloydState(centers, sums, counts, inertia, sums, counts, inertia)


@functools.partial(jax.jit, static_argnums=(3,))
def _lloyd_step(state, chunk, weights, mesh):
    sums, counts, inertia = _stats_program(mesh)(state.centers, chunk, weights)
    sums, sums_low = _two_sum(state.sums, state.sums_low, sums)
    counts, counts_low = _two_sum(state.counts, state.counts_low, counts)
    inertia, inertia_low = _two_sum(state.inertia, state.inertia_low, inertia)
    return LloydState(state.centers, sums, counts, inertia, sums_low, counts_low, inertia_low)


def lloyd_update(state: LloydState, chunk: jax.Array, *, weights: jax.Array | None = None,
                 mesh: Mesh | None = None) -> LloydState:
    """Add a chunk (m, d) of points (with `weights` (m,), default 1; 0 for padding) to the pass:
    each point's nearest centre gets its weighted coordinates and weight. With `mesh`, the points
    are sharded over its devices and their sums added by XLA (`lax.psum`)."""
    chunk, weights = _place(chunk, weights, mesh)
    return _lloyd_step(state, chunk, weights, mesh)


def lloyd_finalize(key: jax.Array, state: LloydState) -> tuple[jax.Array, jax.Array]:
    """(the next centres (k, d): the means of the pass, empty clusters re-seeded by `split_empty`;
    the number re-seeded ())."""
    centers, _, splits = _finalize(key, state)
    return centers, splits


def _finalize(key, state: LloydState):
    """`lloyd_finalize`, and the counts after the split (a split centre and its donor each half)."""
    sums, counts = state.sums + state.sums_low, state.counts + state.counts_low
    means = sums / jnp.maximum(counts, 1e-30)[:, None]
    means = jnp.where((counts > 0)[:, None], means, state.centers)
    return split_empty(key, means, counts)


def lloyd_totals(state: LloydState) -> tuple[np.ndarray, np.ndarray, float]:
    """The pass's totals in float64 on the host: (per-centre sums (k, d), counts (k,), inertia)."""
    def total(hi, lo):
        return np.asarray(hi, np.float64) + np.asarray(lo, np.float64)

    return (total(state.sums, state.sums_low), total(state.counts, state.counts_low),
            float(total(state.inertia, state.inertia_low)))


# --- mini-batch -----------------------------------------------------------------------------------

class MiniBatchState(NamedTuple):
    """Mini-batch k-means so far."""

    centers: jax.Array  # (k, d) float32
    counts: jax.Array  # (k,) float32: the weight each centre has absorbed over all batches (hi part)
    inertia: jax.Array  # () float32: the batches' inertia against the centres they met, this pass
    counts_low: jax.Array  # (k,) float32: what `counts` cannot hold (counts + counts_low is exact past 2^24)


def minibatch_init(centers: jax.Array) -> MiniBatchState:
    """Mini-batch k-means from `centers` (k, d), no point absorbed yet."""
    centers = jnp.asarray(centers, jnp.float32)
    counts = jnp.zeros((centers.shape[0],), jnp.float32)
    return MiniBatchState(centers, counts, jnp.zeros((), jnp.float32), counts)


@functools.partial(jax.jit, static_argnums=(3,))
def _minibatch_step(state, chunk, weights, mesh):
    sums, batch_counts, inertia = _stats_program(mesh)(state.centers, chunk, weights)
    counts, counts_low = _two_sum(state.counts, state.counts_low, batch_counts)
    # scikit-learn's update: c <- (c * old count + sum of the batch's points) / new count
    old = state.counts + state.counts_low
    moved = (state.centers * old[:, None] + sums) / jnp.maximum(counts + counts_low, 1e-30)[:, None]
    centers = jnp.where((batch_counts > 0)[:, None], moved, state.centers)
    return MiniBatchState(centers, counts, state.inertia + inertia, counts_low)


def minibatch_update(state: MiniBatchState, chunk: jax.Array, *, weights: jax.Array | None = None,
                     mesh: Mesh | None = None) -> MiniBatchState:
    """One mini-batch step on a chunk (m, d) (as scikit-learn's `MiniBatchKMeans.partial_fit`
    with reassignment_ratio=0): every centre moves to the weighted mean of its old position
    (weighted by its cumulative count) and the chunk's points nearest to it."""
    chunk, weights = _place(chunk, weights, mesh)
    return _minibatch_step(state, chunk, weights, mesh)


# --- faiss's sample: reservoir sampling by random keys ---------------------------------------------

class ReservoirState(NamedTuple):
    """A uniform sample without replacement of the points seen so far (host memory, numpy)."""

    keys: np.ndarray  # (m,) uint64: the kept points' keys (in no order); 2^64 - 1 marks an empty slot
    rows: np.ndarray  # (m, d) float32: the kept points, row i the one of key i
    seen: np.ndarray  # () int64: points offered so far


def reservoir_init(size: int, dimension: int) -> ReservoirState:
    """An empty reservoir of `size` points of `dimension` features."""
    return ReservoirState(np.full((size,), np.iinfo(np.uint64).max, np.uint64), np.zeros((size, dimension), np.float32),
                          np.zeros((), np.int64))


def _keys(seed: int, ids: np.ndarray) -> np.ndarray:
    """SplitMix64 of (seed, id): a random key per stream position, the same however the stream is cut."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed * 0xBF58476D1CE4E5B9 % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return np.minimum(z, np.uint64(2**64 - 2))  # 2^64 - 1 is the empty slot's


def _keep_smallest(keys: np.ndarray, rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")[:size]
    return keys[order], rows[order]


def reservoir_update(state: ReservoirState, chunk: np.ndarray, *, seed: int, ids: np.ndarray | None = None) -> ReservoirState:
    """Offer a chunk (m, d) of points whose stream positions are `ids` (default: the next m
    positions): the reservoir keeps the points of smallest key (a hash of (seed, id)), a uniform
    sample without replacement of all the points offered.

    Only the chunk's points whose key is below the largest kept are looked at, and they replace
    the rows they push out in a copy of `state.rows` (made only when some point enters), so
    `state` stays whole however the call ends (Ctrl-C): a chunk costs O(m + size) comparisons
    and, while points still enter, one copy of the reservoir.
    """
    chunk = np.asarray(chunk, np.float32)
    if ids is None:
        ids = int(state.seen) + np.arange(len(chunk), dtype=np.int64)
    seen = np.asarray(int(state.seen) + len(chunk), np.int64)
    offered = _keys(seed, np.asarray(ids))
    size = len(state.keys)
    take = np.flatnonzero(offered < state.keys.max())
    if take.size == 0:
        return ReservoirState(state.keys, state.rows, seen)
    if take.size > size:
        take = take[np.argpartition(offered[take], size - 1)[:size]]
    count = take.size
    slots = np.argpartition(state.keys, size - count)[size - count :] if count < size else np.arange(size)
    pool = np.concatenate([state.keys[slots], offered[take]])  # the `count` largest kept, and the candidates
    winners = np.argpartition(pool, count - 1)[:count]
    entering = np.sort(winners[winners >= count]) - count
    freed = slots[np.setdiff1d(np.arange(count), winners[winners < count])]
    keys = state.keys.copy()
    keys[freed] = offered[take[entering]]
    rows = state.rows.copy()
    rows[freed] = chunk[take[entering]]
    return ReservoirState(keys, rows, seen)


def reservoir_merge(states: Iterable[ReservoirState]) -> ReservoirState:
    """The reservoir of all the points offered to any of `states` (e.g. one per process, their ids distinct)."""
    states = list(states)
    keys, rows = _keep_smallest(np.concatenate([s.keys for s in states]), np.concatenate([s.rows for s in states]),
                                len(states[0].keys))
    return ReservoirState(keys, rows, np.asarray(sum(int(s.seen) for s in states), np.int64))


def reservoir_sample(state: ReservoirState) -> np.ndarray:
    """The sample: min(size, seen) points, in the order of their keys (a random order, the same
    however the stream was cut into chunks)."""
    filled = np.flatnonzero(state.keys != np.iinfo(np.uint64).max)
    return state.rows[filled[np.argsort(state.keys[filled], kind="stable")]]


# --- the driver ------------------------------------------------------------------------------------

class StreamMethod(enum.StrEnum):
    """How `stream_kmeans` trains: "exact" (out-of-core Lloyd), "batch" (mini-batch) or "sample" (faiss's)."""

    exact = "exact"
    batch = "batch"
    sample = "sample"


class KMeansInterrupted(KeyboardInterrupt):
    """Ctrl-C during `stream_kmeans`: `state` is where it stopped (after the last whole chunk), to
    save and resume from."""

    def __init__(self, state: dict):
        super().__init__("interrupted")
        self.state = state


class StreamKMeansResult(NamedTuple):
    """What `stream_kmeans` returns."""

    centers: np.ndarray  # (k, d) float32
    counts: np.ndarray  # (k,) float64: points nearest each centre in the last pass (mini-batch: absorbed in all), exact
    inertia: float  # of the last pass: the points' squared distances to the centres they were assigned
    iterations: int  # passes of Lloyd or mini-batch run
    history: list  # inertia of each pass
    reseeded: list  # clusters re-seeded (faiss's split) after each pass
    points: int  # points in one pass over the stream (all processes)
    samples: int  # points k-means ran on: the stream's, or faiss's sample
    used: int  # codes with points after the last pass's split of empty clusters (each split centre takes half)


@dataclasses.dataclass
class _Position:
    """Where a run is, saved in a checkpoint: the pass (0: sampling) and the chunks of it done."""

    stage: int = 0
    chunk: int = 0


Chunks = Callable[[int], Iterator[np.ndarray]]


def _allsum(tree):
    """Every process's arrays of `tree` added, in process order (the same result on every process)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(jax.tree_util.tree_map(np.asarray, tree))
    return jax.tree_util.tree_map(lambda x: np.sum(np.asarray(x), axis=0), gathered)


def _allsum_pass(state: LloydState) -> LloydState:
    """A Lloyd pass's totals added over the processes: each (hi, lo) pair is gathered as it is,
    added up in float64 and split back into a float32 pair (so the counts stay exact)."""
    if jax.process_count() == 1:
        return state
    from jax.experimental import multihost_utils

    pairs = [(state.sums, state.sums_low), (state.counts, state.counts_low), (state.inertia, state.inertia_low)]
    gathered = multihost_utils.process_allgather([(np.asarray(hi), np.asarray(lo)) for hi, lo in pairs])
    totals = [np.sum(np.asarray(hi, np.float64), axis=0) + np.sum(np.asarray(lo, np.float64), axis=0) for hi, lo in gathered]
    high = [total.astype(np.float32) for total in totals]
    low = [(total - hi).astype(np.float32) for total, hi in zip(totals, high)]
    return LloydState(state.centers, *map(jnp.asarray, high), *map(jnp.asarray, low))


def _as_pairs(values) -> np.ndarray:
    """64-bit integers as pairs of uint32 (without x64, JAX would cut them down to 32 bits)."""
    return np.ascontiguousarray(np.asarray(values, np.uint64)).reshape(-1).view(np.uint32)


def _from_pairs(pairs, dtype) -> np.ndarray:
    """The 64-bit integers of `_as_pairs`, gathered along a leading axis of processes: (P, n)."""
    pairs = np.ascontiguousarray(np.asarray(pairs, np.uint32))
    return pairs.reshape(pairs.shape[0], -1).view(np.uint64).astype(dtype)


def _allsum_count(count: int) -> int:
    """A count (int64) added up over the processes, exactly (it travels as two uint32)."""
    if jax.process_count() == 1:
        return int(count)
    from jax.experimental import multihost_utils

    return int(_from_pairs(multihost_utils.process_allgather(_as_pairs([count])), np.int64).sum())


def _all_reservoirs(state: ReservoirState) -> ReservoirState:
    if jax.process_count() == 1:
        return state
    from jax.experimental import multihost_utils

    # keys and counts travel as pairs of uint32; the rows of every process are gathered (P x m x d:
    # `stream_memory` counts them, given `processes`)
    keys, rows, seen = multihost_utils.process_allgather((_as_pairs(state.keys), state.rows, _as_pairs([state.seen])))
    keys, seen = _from_pairs(keys, np.uint64), _from_pairs(seen, np.int64)
    rows = np.asarray(rows)
    return reservoir_merge(ReservoirState(keys[i], rows[i], np.asarray(seen[i, 0], np.int64))
                           for i in range(jax.process_count()))


def stream_kmeans(
    chunks: Chunks,
    k: int,
    *,
    key: jax.Array,
    method: str = "exact",
    init: str | np.ndarray = "k-means++",
    max_iter: int = 20,
    sample_size: int | None = None,
    mesh: Mesh | None = None,
    state: dict | None = None,
    on_pass: Callable[[dict], None] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> StreamKMeansResult:
    """k-means of the points `chunks(start)` yields (chunks (m, d) from the `start`-th on; each
    call starts the same pass over the same stream). A chunk may come as (points (m, d), weights
    (m,)): a weight 0 marks a point to leave out (a file that could not be read) while keeping the
    stream's positions. With several processes, each passes its own share; `chunks.offset`, when
    present, is the stream position of the share's first point.

    Args:
      key: PRNG key (seeding, the sample's keys, faiss's split).
      method: "exact" (out-of-core Lloyd, `max_iter` passes), "batch" (mini-batch, each chunk a
        batch, `max_iter` passes; one process only) or "sample" (faiss's: Lloyd on a sample of
        min(N, 256 k) points).
      init: "k-means++" or "random" over a sample of the stream (`sample_size` points, default
        min(N, 256 k); "random" takes k of them), or the initial centres (k, d), which skips the
        sampling pass of "exact" and "batch".
      mesh: a one-axis mesh ("devices") to shard each chunk's points over.
      state: what `on_pass` was last given (a checkpoint), to resume from.
      on_pass: called after the sampling pass and every pass with the run's state (a dict of
        arrays and numbers, the `state` to resume from); "pass", "inertia" and "reseeded" say how it went.
      on_chunk: called with the number of stream positions after every chunk (progress).

    Returns:
      A `StreamKMeansResult`. Below 39 points per centre on the sample, a warning says so (as faiss).
    """
    if method not in tuple(StreamMethod):
        raise ValueError(f"method must be one of {', '.join(StreamMethod)}, got {method!r}")
    if method == StreamMethod.batch and jax.process_count() > 1:
        raise ValueError("method 'batch' (mini-batch k-means) runs in one process; use 'exact' or 'sample' over several")
    given = None if isinstance(init, str) else np.asarray(init, np.float32)
    if given is None and init not in tuple(KMeansInit):
        raise ValueError(f"init must be one of {', '.join(KMeansInit)} or a (k, d) array, got {init!r}")
    if given is not None and (given.ndim != 2 or given.shape[0] != k):
        dimension = given.shape[1] if given.ndim == 2 else "d"
        raise ValueError(f"initial centres must be (k, d) = ({k}, {dimension}), got {given.shape}")
    run = _Run(dict(state or {}))
    try:
        return _train(chunks, k, key, method, given, init, max_iter, sample_size, mesh, run, on_pass, on_chunk)
    except KeyboardInterrupt:
        raise KMeansInterrupted(dict(run.state)) from None


class _Run:
    """Where a run is: `state` is replaced whole (one assignment) at every change, so Ctrl-C
    finds either the old state or the new one, never a mix."""

    def __init__(self, state: dict):
        self.state = state

    def update(self, **values) -> None:
        self.state = {**self.state, **values}

    def restart(self, values: dict) -> None:
        self.state = dict(values)


def _split(chunk) -> tuple[np.ndarray, np.ndarray | None]:
    """(points (m, d) float32, weights (m,) or None) of a chunk given as points or (points, weights)."""
    if isinstance(chunk, tuple):
        points, weights = chunk
        return np.asarray(points, np.float32), np.asarray(weights, np.float32)
    return np.asarray(chunk, np.float32), None


def _train(chunks, k, key, method, given, init, max_iter, sample_size, mesh, run, on_pass, on_chunk):
    """`stream_kmeans`, keeping `run` (where it is) up to date after every chunk."""
    sample_key, seed_key, split_key = jax.random.split(key, 3)
    seed = int(jax.random.randint(sample_key, (), 0, 2**31 - 1))
    # the stream position of this process's first point: `chunks.offset` when the stream says, so
    # that the sample of several processes is the one process's sample of the whole stream
    base = getattr(chunks, "offset", None)
    base = np.int64(base if base is not None else jax.process_index() << 40)
    position = _Position(int(run.state.get("stage", 0)), int(run.state.get("chunk", 0)))
    history, reseeded = list(run.state.get("history", [])), list(run.state.get("reseeded", []))
    points = int(run.state.get("points", 0))
    needs_sample = method == "sample" or given is None

    def offered(start):
        for index, chunk in enumerate(chunks(start), start):
            yield index, *_split(chunk)

    def padded(start):
        """Chunks padded with weight-0 rows to the first one's length: one compiled program for all."""
        width = None
        for index, chunk, given_weights in offered(start):
            width = width or len(chunk)
            weights = np.zeros((max(width, len(chunk)),), np.float32)
            weights[: len(chunk)] = 1.0 if given_weights is None else given_weights
            count = len(chunk) if given_weights is None else int(np.count_nonzero(given_weights))
            yield index, np.pad(chunk, ((0, len(weights) - len(chunk)), (0, 0))), weights, count, len(chunk)

    if position.stage == 0 and needs_sample:
        size = sample_size or FAISS_MAX_PER_CENTER * k
        saved = run.state
        reservoir = ReservoirState(saved["keys"], saved["rows"], saved["seen"]) if "keys" in saved else None
        read = int(saved.get("read", saved.get("seen", 0)))  # stream positions passed (left-out points too)
        for index, chunk, weights in offered(position.chunk):
            if reservoir is None:
                reservoir = reservoir_init(size, chunk.shape[1])
            ids = base + read + np.arange(len(chunk), dtype=np.int64)
            read += (length := len(chunk))
            if weights is not None:  # points left out keep their positions but are not offered
                chunk, ids = chunk[weights > 0], ids[weights > 0]
            reservoir = reservoir_update(reservoir, chunk, seed=seed, ids=ids)
            run.update(keys=reservoir.keys, rows=reservoir.rows, seen=reservoir.seen, read=read, stage=0, chunk=index + 1)
            if on_chunk is not None:
                on_chunk(length)
        if reservoir is None:
            raise ValueError("the stream holds no points")
        reservoir = _all_reservoirs(reservoir)
        points = int(reservoir.seen)
        sample = reservoir_sample(reservoir)
        del reservoir
        # the reservoir's memory goes back before k-means runs on its sample
        run.restart({name: value for name, value in run.state.items() if name not in ("keys", "rows")})
        if len(sample) < k:
            raise ValueError(f"k = {k} clusters need at least k points; the stream has {len(sample)}")
        if method == "sample" and len(sample) < FAISS_MIN_PER_CENTER * k:
            warnings.warn(f"clustering {len(sample)} points to {k} centroids: please provide at least "
                          f"{FAISS_MIN_PER_CENTER * k} training points", stacklevel=3)
        if given is not None:
            if given.shape[1] != sample.shape[1]:
                raise ValueError(f"initial centres must be (k, d) = ({k}, {sample.shape[1]}), got {given.shape}")
            centers = given
        elif init == KMeansInit.random:
            centers = sample[:k]  # the sample's order is random
        else:
            centers = np.asarray(kmeans_plusplus(seed_key, jnp.asarray(sample), k))
        values = {"stage": 1, "chunk": 0, "centers": centers, "points": points, "history": [], "reseeded": []}
        run.restart({**values, "sample": sample} if method == "sample" else values)
        if on_pass is not None:
            on_pass({**run.state, "pass": 0, "inertia": None, "reseeded_now": 0})
        position = _Position(1, 0)
    elif position.stage == 0:
        run.restart({"stage": 1, "chunk": 0, "centers": given, "points": 0, "history": [], "reseeded": []})
        position = _Position(1, 0)

    centers = np.asarray(run.state["centers"], np.float32)
    total = points
    if method == "sample":  # Lloyd on the sample, as on a stream of slices of it
        sample = np.asarray(run.state["sample"])
        chunks = _slices(sample, _SAMPLE_CHUNK)
        total = len(sample)

    counts = np.asarray(run.state.get("counts", np.zeros((k,), np.float32)), np.float32)
    counts_low = np.asarray(run.state.get("counts_low", np.zeros((k,), np.float32)), np.float32)
    used = int(run.state.get("used", 0))
    checked = given is None or method == "sample"
    for iteration in range(position.stage, max_iter + 1):
        saved = run.state
        if method != "batch":
            if position.chunk and "sums" in saved:
                fresh = lloyd_init(centers)
                pass_state = LloydState(fresh.centers, *(jnp.asarray(saved.get(name, getattr(fresh, name)), jnp.float32)
                                                         for name in LloydState._fields[1:]))
            else:
                pass_state = lloyd_init(centers)
        elif position.chunk and "centers_now" in saved:
            pass_state = MiniBatchState(jnp.asarray(saved["centers_now"]), jnp.asarray(saved["counts_now"]),
                                        jnp.asarray(saved["inertia"], jnp.float32),
                                        jnp.asarray(saved.get("counts_low_now", np.zeros((k,), np.float32)), jnp.float32))
        else:
            pass_state = MiniBatchState(jnp.asarray(centers), jnp.asarray(counts), jnp.zeros((), jnp.float32),
                                        jnp.asarray(counts_low))
        seen = int(saved.get("seen_pass", 0)) if position.chunk else 0
        for index, chunk, weights, count, length in padded(position.chunk):
            if not checked:
                if chunk.shape[1] != centers.shape[1]:
                    raise ValueError(f"initial centres must be (k, d) = ({k}, {chunk.shape[1]}), got {centers.shape}")
                checked = True
            if method != "batch":
                pass_state = lloyd_update(pass_state, chunk, weights=weights, mesh=mesh)
            else:
                pass_state = minibatch_update(pass_state, chunk, weights=weights, mesh=mesh)
            seen += count
            run.update(stage=iteration, chunk=index + 1, seen_pass=seen, **_pass_arrays(pass_state))
            if on_chunk is not None:
                on_chunk(length)
        pass_key = jax.random.fold_in(split_key, iteration)
        if method != "batch":
            # the sample is every process's own copy of the same points: only the stream's sums are added up
            summed = pass_state if method == "sample" else _allsum_pass(pass_state)
            new, split_counts, splits = _finalize(pass_key, summed)
            counts, counts_low = np.asarray(summed.counts), np.asarray(summed.counts_low)
            inertia = lloyd_totals(summed)[2]
        else:
            inertia = float(_allsum(pass_state.inertia))
            new, split_counts, splits = split_empty(pass_key, pass_state.centers, pass_state.counts)
            # a split halves a donor's count (and fills an empty one): its low part is dropped there
            counts, counts_low = np.asarray(split_counts), np.asarray(pass_state.counts_low)
            counts_low = np.where(counts == np.asarray(pass_state.counts), counts_low, 0.0).astype(np.float32)
        used = int(np.count_nonzero(np.asarray(split_counts)))
        centers = np.asarray(new)
        if method != "sample":
            points = _allsum_count(seen)
        history.append(inertia)
        reseeded.append(int(splits))
        values = {"stage": iteration + 1, "chunk": 0, "centers": centers, "counts": counts, "counts_low": counts_low,
                  "used": used, "points": points, "history": list(history), "reseeded": list(reseeded)}
        run.restart({**values, "sample": sample} if method == "sample" else values)
        if on_pass is not None:
            on_pass({**run.state, "pass": iteration, "inertia": inertia, "reseeded_now": int(splits)})
        position = _Position(iteration + 1, 0)
    exact_counts = counts.astype(np.float64) + counts_low.astype(np.float64)
    return StreamKMeansResult(centers, exact_counts, history[-1] if history else float("nan"), len(history), history, reseeded,
                              points, total if method == "sample" else points, used)


def _slices(points: np.ndarray, size: int) -> Chunks:
    return lambda start: (points[i : i + size] for i in range(start * size, len(points), size))


def _pass_arrays(state) -> dict:
    if isinstance(state, LloydState):
        return {name: getattr(state, name) for name in LloydState._fields[1:]}
    return {"counts_now": state.counts, "centers_now": state.centers, "inertia": state.inertia, "counts_low_now": state.counts_low}


def stream_memory(k: int, d: int, chunk: int, *, method: str = "exact", sample_size: int | None = None,
                  devices: int = 1, processes: int = 1) -> int:
    """Bytes `stream_kmeans` holds at its peak for k centres of d features and chunks of `chunk`
    points: the centres, sums and counts (a few copies), a chunk (read, cut, converted, padded,
    weighted, blocked: about 8 copies at the peak) with its labels and distances, the
    nearest-centre search's scores (a block x k per device), and the sample (min(N, 256 k) points,
    while it is drawn and while Lloyd runs on it, and k-means++'s distances). With several
    `processes`, merging their samples holds every process's sample twice (gathered, then joined)."""
    size = sample_size or FAISS_MAX_PER_CENTER * k
    merge = 2 * processes * size * (d * 4 + 8) if processes > 1 else 0
    state = 6 * k * d * 4 + 4 * k * 4
    per_chunk = 8 * chunk * d * 4 + 4 * chunk * 8 + devices * min(_BLOCK, chunk) * k * 4 * 2
    sampler = 2 * (size + chunk) * (d * 4 + 16)
    seeding = (4 + 2 * (2 + int(math.log(max(k, 2))))) * size * 4
    fit = size * d * 4 * 4 + min(_BLOCK, size) * k * 8 * 2 if method == "sample" else 0
    return state + per_chunk + sampler + merge + seeding + fit


def chunk_for_memory(budget: int, k: int, d: int, *, method: str = "exact", sample_size: int | None = None,
                     devices: int = 1, processes: int = 1, most: int = 2**20) -> int | None:
    """The largest chunk (a power of two, at most `most` points) whose `stream_memory` fits in
    `budget` bytes, or None when not even 256 points do."""
    chunk = most
    while chunk >= 256:
        if stream_memory(k, d, chunk, method=method, sample_size=sample_size, devices=devices, processes=processes) <= budget:
            return chunk
        chunk //= 2
    return None

