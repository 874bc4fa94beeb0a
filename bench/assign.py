"""Tile assignment under a reuse cap: greedy against the certified optimum, 2,500 x 10,000 and
10,000 x 100,000 (cells x tiles), d = 64.

Rows, for each size and cap: jaxmosaic's greedy (`match_tiles` top-32 candidates, then
`assign_tiles`: cells best-first, each its best candidate still allowed) and `optimal_assignment`
(top-16 candidates, the sparse problem solved exactly, then certificate scans of every reduced
cost in blocks, jitted), and scipy's dense `linear_sum_assignment` (each tile's column repeated
cap times) where the dense matrix fits under --dense-mib. The cost of a pair is minus its score
(the inner product), so a lower total is better. Each row reports the total, its excess over the
optimum, seconds, and for the optimum the certificate's rounds, the pairs it added and the pairs
of the last sparse problem; peak host memory allocated by numpy and scipy during the call
(tracemalloc) and the growth of the peak resident memory (VmHWM, everything, XLA included),
against the float32 cells x tiles matrix the method avoids.

The features are those of bench/mosaic.py (unit rows with a power-law spectrum); cells are drawn
around `--clusters` centres with relative noise `--noise`, as the flat regions of a photograph
are: many cells want the same tiles, so the cap binds.

    python bench/assign.py [--sizes 2500x10000,10000x100000] [--caps 1,3] [--clusters 50] [--noise 0.2]
"""

from __future__ import annotations

import argparse
import functools
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, write_results  # noqa: E402
from mosaic import features, reset_peak, rss_bytes  # noqa: E402

from jaxmosaic import assign_tiles, match_tiles, optimal_assignment  # noqa: E402


def instance(rng, cells: int, tiles: int, dimension: int, clusters: int, noise: float):
    basis = np.linalg.qr(rng.standard_normal((dimension, dimension)))[0].T.astype(np.float32)
    spectrum = np.arange(1, dimension + 1, dtype=np.float32) ** -0.75
    library = features(rng, tiles, dimension, basis, spectrum)
    centres = features(rng, clusters, dimension, basis, spectrum)
    queries = centres[rng.integers(0, clusters, cells)] + noise * features(rng, cells, dimension, basis, spectrum)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True), library


def measured(run):
    """(result, seconds, peak host MiB allocated by Python-side arrays, growth of the peak resident MiB)."""
    before = rss_bytes("VmRSS")
    reset = reset_peak()
    tracemalloc.start()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    host_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    resident = (rss_bytes("VmHWM") - before) / 2**20 if reset else None
    return result, seconds, host_peak / 2**20, resident


SCORE = jax.jit(lambda queries, library: -(queries @ library.T))
MATCH = jax.jit(match_tiles, static_argnames="top_k")


class Problem:
    """One instance: cells' and tiles' features, on the host and on the device."""

    def __init__(self, queries: np.ndarray, library: np.ndarray):
        self.queries, self.library = queries, library
        self.cells, self.tiles = len(queries), len(library)
        self.device_queries, self.device_library = jnp.asarray(queries), jnp.asarray(library)

    def cost_block(self, start: int, stop: int) -> jax.Array:
        return SCORE(self.device_queries[start:stop], self.device_library)

    def optimal(self, cap: int, cells: int | None = None):
        return optimal_assignment(self.cost_block, cap, shape=(cells or self.cells, self.tiles))

    def greedy(self, cap: int):
        scores, candidates = jax.block_until_ready(MATCH(self.device_queries, self.device_library, top_k=32))
        return assign_tiles(np.asarray(scores), np.asarray(candidates), rows=1, cols=self.cells, tiles=self.tiles,
                            max_reuse=cap, all_scores=lambda cell: self.library @ self.queries[cell])

    def dense(self, cap: int) -> float:
        matrix = np.repeat(-(self.queries.astype(np.float64) @ self.library.T.astype(np.float64)), cap, axis=1)
        cell, column = linear_sum_assignment(matrix)
        return float(matrix[cell, column].sum())


def compare(problem: Problem, cap: int, dense_mib: float) -> list[dict]:
    """Greedy, the certified optimum and (where it fits) scipy's dense solver at one cap."""
    cells, tiles = problem.cells, problem.tiles
    base = {"cells x tiles": f"{cells} x {tiles}", "cap": cap, "dense matrix MiB": cells * tiles * 4 / 2**20}
    best, seconds, host, resident = measured(functools.partial(problem.optimal, cap))
    optimum = {**base, "method": "optimal (certified)", "total cost": best.total, "excess %": 0.0, "seconds": seconds,
               "rounds": best.rounds, "pairs added": best.pairs_added, "pairs": best.pairs, "max uses": int(best.uses.max()),
               "host peak MiB": host, "resident growth MiB": resident}
    found, seconds, host, resident = measured(functools.partial(problem.greedy, cap))
    total = -float(np.sum(found.scores, dtype=np.float64))
    rows = [{**base, "method": "greedy", "total cost": total, "excess %": 100 * (total - best.total) / abs(best.total),
             "seconds": seconds, "max uses": int(np.bincount(found.tiles).max()), "host peak MiB": host,
             "resident growth MiB": resident}, optimum]
    if cells * tiles * cap * 8 <= dense_mib * 2**20:
        total, seconds, host, resident = measured(functools.partial(problem.dense, cap))
        rows.append({**base, "method": "scipy linear_sum_assignment (dense)", "total cost": total,
                     "excess %": 100 * (total - best.total) / abs(best.total), "seconds": seconds,
                     "host peak MiB": host, "resident growth MiB": resident})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2500x10000,10000x100000", help="cells x tiles, comma-separated")
    parser.add_argument("--caps", default="1,3")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--dense-mib", type=float, default=512, help="largest dense float64 matrix for scipy's solver")
    args = parser.parse_args()
    sizes = [tuple(int(x) for x in size.split("x")) for size in args.sizes.split(",")]
    caps = [int(cap) for cap in args.caps.split(",")]
    rows = []
    for cells, tiles in sizes:
        problem = Problem(*instance(np.random.default_rng(0), cells, tiles, args.features, args.clusters, args.noise))
        # compile outside the timings: the matcher, and the scans on one block of the default height
        start = time.perf_counter()
        jax.block_until_ready(MATCH(problem.device_queries, problem.device_library, top_k=32))
        problem.optimal(1, cells=min(cells, max(1, 2**22 // tiles)))
        compile_seconds = time.perf_counter() - start
        for cap in caps:
            found = [{**row, "compile s": compile_seconds} for row in compare(problem, cap, args.dense_mib)]
            print(markdown_table(found, ["cells x tiles", "cap", "method", "total cost", "excess %", "seconds", "rounds"]),
                  flush=True)
            rows += found
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    path = write_results("assign", {"config": vars(args), "rows": rows, "process peak resident MiB": peak})
    print(f"\nassignment under a reuse cap, d = {args.features}, cells around {args.clusters} centres (noise {args.noise})")
    print(markdown_table(rows, ["cells x tiles", "cap", "method", "total cost", "excess %", "seconds", "rounds", "pairs added",
                                "pairs", "max uses", "host peak MiB", "resident growth MiB", "dense matrix MiB"]))
    print(f"\npeak resident memory of the whole run: {peak:.0f} MiB\nwrote {path}")


if __name__ == "__main__":
    main()
