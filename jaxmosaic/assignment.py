"""Optimal assignment of cells to tiles under a reuse cap, certified against the full problem.

Cells i < m, tiles j < n and a cost c_ij, lower is better (in a photomosaic, minus the match
score). Each cell takes one tile, each tile serves at most `max_uses` cells, and the total cost is
minimised. This is a transportation problem: a linear programme whose optimum is integral (its
constraint matrix is totally unimodular), with the dual

    maximise  sum_i u_i - max_uses * sum_j v_j   subject to  c_ij - u_i + v_j >= 0,  v_j >= 0,

u_i what cell i is worth and v_j the price of tile j (zero unless the tile is full). An
assignment and prices with equal objectives are both optimal. So an assignment that is optimal
over a subset of the pairs, with prices that make it so, is the optimum of the whole m x n problem
as soon as no pair of the whole problem has a negative reduced cost c_ij - u_i + v_j.

`optimal_assignment` works that way and never holds the m x n matrix:

1. Candidates: the `top_k` cheapest tiles of each cell, from a scan of the cost rows in blocks
   (a top-k per block; `jax.lax.top_k`, jitted, on the device that holds a JAX block).
2. The sparse problem, solved exactly: cells against every candidate tile repeated
   min(max_uses, its number of candidate pairs) times, by scipy's sparse Jonker-Volgenant
   (`scipy.sparse.csgraph.min_weight_full_bipartite_matching`). When the candidates cannot serve
   every cell under the cap, the cells a maximum matching leaves out take twice as many of their
   cheapest tiles, until they can.
3. Prices from that optimum: shortest distances in the residual graph of the min-cost flow
   source -> cells (capacity 1) -> tiles (candidate pairs) -> sink (capacity max_uses), see
   `_prices`.
4. The certificate: every reduced cost of the whole problem, in blocks (on the device, jitted).
   Pairs with a negative one join the candidates (the `top_k` most negative of each cell per
   round) and the sparse problem is solved again, until none is left.

Why scipy's matching with prices derived afterwards, rather than a min-cost-flow solver that
returns its duals: the sparse Jonker-Volgenant is compiled code among the dependencies already
(OR-Tools is not one), a min-cost flow written in Python would be orders of magnitude slower, and
the prices cost one Bellman-Ford pass over the candidate pairs, vectorised in numpy.

Costs come as a dense (cells, tiles) array (small problems) or as a callable
`cost_block(start, stop)` returning the rows start..stop-1, (stop - start, tiles), for problems
whose matrix does not fit. A JAX block is reduced on its device in its dtype; any other block on
the host in float64.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmosaic.config import ConfigError, number, whole

__all__ = ["OptimalAssignment", "optimal_assignment", "check_capacity", "assignment_memory_bytes"]

CostBlock = Callable[[int, int], "np.ndarray | jax.Array"]


class OptimalAssignment(NamedTuple):
    """The optimum of a transportation problem (`optimal_assignment`) and how it was certified."""

    tiles: np.ndarray  # (cells,) int64: the tile of each cell
    costs: np.ndarray  # (cells,) float64: the cost of each cell's tile
    total: float  # the sum of `costs`, the minimum over every assignment under the cap
    uses: np.ndarray  # (tiles,) int64: how many cells each tile serves, at most max_uses
    values: np.ndarray  # (cells,) float64: u, what each cell is worth
    prices: np.ndarray  # (tiles,) float64: v >= 0, each tile's price (0 unless it is full); every
    # c_ij - u_i + v_j >= -tolerance and sum(u) - max_uses * sum(v) = total: the certificate
    rounds: int  # sparse problems solved and priced; the last one's prices certified the optimum
    pairs_added: int  # pairs the certificate found with a negative reduced cost and added
    pairs: int  # candidate pairs of the last sparse problem (the memory it took)


class _Pairs(NamedTuple):
    """Candidate pairs, sorted by (cell, tile) without repeats."""

    cell: np.ndarray  # (p,) int64
    tile: np.ndarray  # (p,) int64
    cost: np.ndarray  # (p,) float64


def check_capacity(cells: int, tiles: int, max_uses: int, *, field: str = "max_uses") -> None:
    """Refuse, in one line naming `field`, a cap under which the tiles cannot serve every cell."""
    if max_uses * tiles < cells:
        raise ConfigError(field, f"{max_uses} with {tiles} tiles covers only {max_uses * tiles} of {cells} cells")


def assignment_memory_bytes(cells: int, *, top_k: int = 16, max_uses: int = 1, tiles: int = 0,
                            block: int = 2**22) -> int:
    """An upper estimate of the memory `optimal_assignment` needs: the candidate pairs (twice
    `top_k` per cell, for the pairs the certificate adds), their copies in the sparse matching
    (one per use a tile may take), the prices and one block of costs with its reduced costs
    (`block` entries, fewer when cells x tiles is smaller; tiles=0 when not known yet)."""
    pairs = cells * 2 * top_k
    copies = pairs * min(max_uses, cells)
    scanned = min(block, cells * tiles) if tiles else block
    return pairs * 24 * 3 + copies * 12 * 3 + (cells + tiles) * 8 * 6 + scanned * 8 * 3


@functools.partial(jax.jit, static_argnames="k")
def _lowest_on_device(costs: jax.Array, u: jax.Array, v: jax.Array, *, k: int):
    reduced = costs - u[:, None] + v[None, :]
    _, index = lax.top_k(-reduced, k)
    return jnp.take_along_axis(reduced, index, axis=1), index, jnp.take_along_axis(costs, index, axis=1)


@jax.jit
def _gather_on_device(costs: jax.Array, index: jax.Array) -> jax.Array:
    return jnp.take_along_axis(costs, index, axis=1)


def _on_device(costs) -> bool:
    return isinstance(costs, jax.Array)


def _floating(costs: jax.Array) -> jax.Array:
    return costs if jnp.issubdtype(costs.dtype, jnp.floating) else costs.astype(jnp.float32)


def _lowest(costs, u: np.ndarray, v: np.ndarray, k: int):
    """The k lowest reduced costs c - u + v of each row of a block: (reduced, tile, cost), (rows, k) each."""
    if _on_device(costs):
        costs = _floating(costs)
        found = _lowest_on_device(costs, jnp.asarray(u, costs.dtype), jnp.asarray(v, costs.dtype), k=k)
        return tuple(np.asarray(a) for a in found)
    costs = np.asarray(costs, np.float64)
    reduced = costs - u[:, None] + v[None, :]
    index = np.argpartition(reduced, k - 1, axis=1)[:, :k]
    return np.take_along_axis(reduced, index, axis=1), index, np.take_along_axis(costs, index, axis=1)


def _gather(costs, index: np.ndarray) -> np.ndarray:
    if _on_device(costs):
        return np.asarray(_gather_on_device(_floating(costs), jnp.asarray(index)))
    return np.take_along_axis(np.asarray(costs, np.float64), index, axis=1)


class _Scan:
    """The cost rows in blocks of equal height (the last block pulled back to end at the last
    cell, so that a jitted cost sees one shape)."""

    def __init__(self, cost_block: CostBlock, cells: int, tiles: int, block: int):
        self.cost_block, self.cells, self.tiles = cost_block, cells, tiles
        self.rows = max(1, min(cells, block // tiles))
        self.starts = np.minimum(np.arange(0, cells, self.rows), cells - self.rows)
        self.eps = np.finfo(np.float64).eps

    def _blocks(self, only: np.ndarray | None):
        for start in self.starts:
            stop = start + self.rows
            if only is not None and not only[start:stop].any():
                continue
            costs = self.cost_block(int(start), int(stop))
            if tuple(costs.shape) != (self.rows, self.tiles):
                raise ValueError(f"cost_block({start}, {stop}) returned shape {tuple(costs.shape)}, "
                                 f"expected {(self.rows, self.tiles)}")
            if _on_device(costs):
                self.eps = max(self.eps, float(jnp.finfo(_floating(costs).dtype).eps))
            yield start, stop, costs

    def lowest(self, k: int, u: np.ndarray | None = None, v: np.ndarray | None = None,
               only: np.ndarray | None = None) -> tuple[_Pairs, np.ndarray]:
        """The k lowest reduced costs of each cell (of the cells `only` marks), as pairs with their
        reduced costs. Without prices, the k cheapest tiles."""
        u = np.zeros(self.cells) if u is None else u
        v = np.zeros(self.tiles) if v is None else v
        cells, tiles, costs, reduced = [], [], [], []
        for start, stop, block in self._blocks(only):
            r, index, c = _lowest(block, u[start:stop], v, k)
            keep = np.ones(stop - start, bool) if only is None else only[start:stop]
            cells.append(np.repeat(np.arange(start, stop)[keep], k))
            tiles.append(index[keep].reshape(-1))
            costs.append(c[keep].reshape(-1))
            reduced.append(r[keep].reshape(-1))
        return _pairs(*(np.concatenate(a) for a in (cells, tiles, costs, reduced)))

    def gather(self, candidates: np.ndarray) -> _Pairs:
        """The costs of the given (cells, K) candidate tiles, as pairs."""
        costs = np.empty(candidates.shape)
        for start, stop, block in self._blocks(None):
            costs[start:stop] = _gather(block, candidates[start:stop])
        cells = np.repeat(np.arange(self.cells), candidates.shape[1])
        return _pairs(cells, candidates.reshape(-1), costs.reshape(-1), np.zeros(costs.size))[0]


def _pairs(cell, tile, cost, reduced) -> tuple[_Pairs, np.ndarray]:
    """Pairs sorted by (cell, tile), repeats dropped, with their reduced costs."""
    key = np.asarray(cell, np.int64) * (int(np.max(tile, initial=0)) + 1) + np.asarray(tile, np.int64)
    _, first = np.unique(key, return_index=True)
    return (_Pairs(np.asarray(cell, np.int64)[first], np.asarray(tile, np.int64)[first],
                   np.asarray(cost, np.float64)[first]), np.asarray(reduced, np.float64)[first])


def _merge(pairs: _Pairs, more: _Pairs) -> tuple[_Pairs, int]:
    """The union of two sets of pairs, and how many of `more` were new."""
    merged, _ = _pairs(*(np.concatenate([a, b]) for a, b in zip(pairs, more)), np.zeros(len(pairs.cell) + len(more.cell)))
    return merged, len(merged.cell) - len(pairs.cell)


def _cost_of(pairs: _Pairs, cells: np.ndarray, tiles: np.ndarray, width: int) -> np.ndarray:
    keys = pairs.cell * width + pairs.tile
    return pairs.cost[np.searchsorted(keys, cells * width + tiles)]


def _solve_sparse(pairs: _Pairs, cells: int, max_uses: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The optimal tile of each cell over the candidate pairs, or (None, the cells a maximum
    matching leaves out) when the pairs cannot serve every cell under the cap."""
    from scipy.sparse import csr_array  # imported when used: `import jaxmosaic` reads no data file
    from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

    tiles, owner = np.unique(pairs.tile, return_inverse=True)
    copies = np.minimum(np.bincount(owner), max_uses)  # a tile never serves more cells than it has pairs
    first = np.cumsum(copies) - copies
    per_pair = copies[owner]
    pair = np.repeat(np.arange(len(owner)), per_pair)
    copy = np.arange(len(pair)) - np.repeat(np.cumsum(per_pair) - per_pair, per_pair)
    lowest = np.full(cells, np.inf)
    np.minimum.at(lowest, pairs.cell, pairs.cost)
    # the sparse solver reads a stored zero as no edge: shift each cell's costs to start at 1
    # (a constant per cell changes every assignment's total alike)
    weight = pairs.cost - lowest[pairs.cell] + 1.0
    graph = csr_array((weight[pair], (pairs.cell[pair], first[owner[pair]] + copy)), shape=(cells, int(copies.sum())))
    matched = maximum_bipartite_matching(graph, perm_type="column")
    if (matched < 0).any():
        return None, np.flatnonzero(matched < 0)
    row, column = min_weight_full_bipartite_matching(graph)
    chosen = np.empty(cells, np.int64)
    chosen[row] = tiles[np.repeat(np.arange(len(tiles)), copies)[column]]
    return chosen, np.empty(0, np.int64)


def _prices(pairs: _Pairs, chosen: np.ndarray, assigned: np.ndarray, tiles: int, max_uses: int,
            tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Prices (u, v) that certify an optimal assignment over the candidate pairs.

    In the residual graph of the optimal flow source -> cells -> tiles -> sink, d is the shortest
    distance from the sink (no negative cycle: the flow is optimal), so d(b) <= d(a) + cost(a, b)
    on every residual arc. With u_i = -d(cell i), v_j = -d(tile j) for a full tile and 0 otherwise:
    - a used pair (i, j): the only arc into cell i comes from j (cost -c_ij), so d(i) = d(j) - c_ij
      and its reduced cost is 0;
    - a used tile has the arc sink -> j (cost 0, flow to undo), so d(j) <= 0 and v_j >= 0;
    - an unused pair (i, j): the arc i -> j gives d(j) <= d(i) + c_ij, so c_ij - u_i + v_j >= 0
      for a full tile, and for one with room the arc j -> sink (cost 0) gives d(j) >= 0 >= -v_j;
    - v_j > 0 only on full tiles, and used pairs cost exactly u_i - v_j: both objectives are equal.
    Only tile distances are iterated: a cell's one incoming arc makes d(i) = d(chosen tile) - c_i.
    """
    uses = np.bincount(chosen, minlength=tiles)
    distance = np.where(uses > 0, 0.0, np.inf)
    spare = pairs.tile != chosen[pairs.cell]
    source, target = chosen[pairs.cell[spare]], pairs.tile[spare]
    weight = pairs.cost[spare] - assigned[pairs.cell[spare]]  # tile -> cell -> other tile
    changed = uses > 0
    for _ in range(tiles + 1):
        active = changed[source]
        if not active.any():
            break
        proposed = distance.copy()
        np.minimum.at(proposed, target[active], distance[source[active]] + weight[active])
        changed = proposed < distance - tolerance
        distance = np.where(changed, proposed, distance)
    else:
        raise RuntimeError("the prices did not settle: the sparse solution is not optimal")
    u = assigned - distance[chosen]
    v = np.where(uses >= max_uses, np.maximum(-distance, 0.0), 0.0)
    return u, v


def _cost_rows(cost, shape) -> tuple[CostBlock, int, int]:
    if callable(cost):
        if shape is None:
            raise ValueError("optimal_assignment: a cost callable needs shape=(cells, tiles)")
        return cost, int(shape[0]), int(shape[1])
    matrix = cost if _on_device(cost) else np.asarray(cost)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"optimal_assignment: the cost must be a (cells, tiles) matrix, got shape {matrix.shape}")
    if shape is not None and tuple(shape) != tuple(matrix.shape):
        raise ValueError(f"optimal_assignment: shape {tuple(shape)} differs from the cost's {matrix.shape}")
    return (lambda start, stop: matrix[start:stop]), *matrix.shape


def optimal_assignment(
    cost: np.ndarray | jax.Array | CostBlock,
    max_uses: int,
    *,
    shape: tuple[int, int] | None = None,
    candidates: np.ndarray | None = None,
    top_k: int = 16,
    block: int = 2**22,
    tolerance: float | None = None,
) -> OptimalAssignment:
    """The assignment of one tile per cell, each tile at most `max_uses` times, of least total cost.

    The exact optimum of the whole problem, certified by prices (see the module doc), holding only
    candidate pairs and one block of costs at a time. Equals `scipy.optimize.linear_sum_assignment`
    on the cost matrix with each tile's column repeated `max_uses` times, in total cost (ties may
    pick other tiles).

    Args:
      cost: a (cells, tiles) array, or a callable `cost_block(start, stop)` returning the cost rows
        of cells start..stop-1 as a (stop - start, tiles) array (numpy, or JAX to scan on its
        device); lower is better.
      max_uses: the most cells one tile may serve (at least 1).
      shape: (cells, tiles) of a callable cost.
      candidates: (cells, K) tiles to start from (e.g. from `jaxmosaic.match_tiles`) instead of
        each cell's `top_k` cheapest.
      top_k: candidates per cell at the start, and pairs the certificate adds per cell and round.
      block: cost entries per block of the scans (cells per block = block // tiles, at least 1).
      tolerance: a reduced cost below -tolerance joins the candidates. Default: the largest
        candidate |cost| times max(16 x the blocks' machine epsilon, 1e-12); the total is then
        within cells x tolerance of the optimum.

    Returns:
      An `OptimalAssignment`: each cell's tile and cost, the total, each tile's uses, the prices
      that certify the optimum, the rounds of the certificate, the pairs it added and the pairs of
      the last sparse problem.

    Raises:
      ConfigError: max_uses x tiles is less than the cells (before any work).
    """
    cost_block, cells, tiles = _cost_rows(cost, shape)
    whole("max_uses", max_uses, minimum=1)
    whole("top_k", top_k, minimum=1)
    whole("block", block, minimum=1)
    if tolerance is not None:
        number("tolerance", tolerance, minimum=0.0)
    check_capacity(cells, tiles, max_uses)
    scan = _Scan(cost_block, cells, tiles, block)
    if max_uses >= cells:  # no cap binds: each cell takes its cheapest tile, priced u_i = that cost, v = 0
        pairs, _ = scan.lowest(1)
        return _result(pairs.tile, pairs.cost, (pairs.cost, np.zeros(tiles)), rounds=1, added=0, pairs=cells)
    k = min(top_k, tiles)
    if candidates is None:
        pairs, _ = scan.lowest(k)
    else:
        candidates = np.asarray(candidates, np.int64)
        if candidates.ndim != 2 or candidates.shape[0] != cells or candidates.min() < 0 or candidates.max() >= tiles:
            raise ValueError(f"optimal_assignment: candidates must be ({cells}, K) tile indices below {tiles}")
        pairs = scan.gather(candidates)
    depth = np.full(cells, k if candidates is None else candidates.shape[1])
    rounds = added = 0
    while True:
        chosen, left_out = _solve_sparse(pairs, cells, max_uses)
        if chosen is None:
            if depth[left_out].min() >= tiles:  # a cell that sees every tile is always served when the cap covers the cells
                raise RuntimeError("the sparse matching left out a cell that has every tile as a candidate")
            deeper = min(tiles, 2 * int(depth[left_out].max()))
            depth[left_out] = deeper
            only = np.zeros(cells, bool)
            only[left_out] = True
            pairs, _ = _merge(pairs, scan.lowest(deeper, only=only)[0])
            continue
        rounds += 1
        assigned = _cost_of(pairs, np.arange(cells), chosen, tiles)
        limit = tolerance if tolerance is not None else (
            float(np.abs(pairs.cost).max()) * max(16 * scan.eps, 1e-12))
        u, v = _prices(pairs, chosen, assigned, tiles, max_uses, limit / 8)
        found, reduced = scan.lowest(k, u, v)
        negative = reduced < -limit
        pairs, new = _merge(pairs, _Pairs(*(a[negative] for a in found)))
        if not new:
            return _result(chosen, assigned, (u, v), rounds=rounds, added=added, pairs=len(pairs.cell))
        added += new


def _result(chosen: np.ndarray, assigned: np.ndarray, prices: tuple[np.ndarray, np.ndarray], *, rounds: int, added: int,
            pairs: int) -> OptimalAssignment:
    chosen = np.asarray(chosen, np.int64)
    values, tile_prices = prices
    return OptimalAssignment(tiles=chosen, costs=np.asarray(assigned, np.float64), total=float(np.sum(assigned)),
                             uses=np.bincount(chosen, minlength=len(tile_prices)), values=values, prices=tile_prices,
                             rounds=rounds, pairs_added=added, pairs=pairs)
