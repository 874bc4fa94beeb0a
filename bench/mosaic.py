"""Tile matching at scale: 10,000 queries x 100,000 tiles x 512 features (top-1 by inner product).

Rows: jaxmosaic's blocked `match_tiles` (exact, and SVD-compressed to k dimensions), jitted and
eager; faiss `IndexFlatIP` (exact); numpy (blocked BLAS matmul and argmax). Every row reports
seconds, GFLOP/s of its matmul work, and its time against the time the machine's measured matmul
peak would need for those FLOPs. The compressed rows report recall@1 against exact matching.
Peak resident memory above the inputs is measured around the exact jitted call.

The features are synthetic but shaped like CNN features: unit rows with a power-law spectrum
(s_i ~ i^-0.75) on a random basis, so that a 64-dimensional subspace means something.

    python bench/mosaic.py [--queries 10000] [--tiles 100000] [--features 512] [--k 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, matmul_peak_gflops, timeit, write_results  # noqa: E402

from jaxmosaic.search import compress_queries, match_tiles, svd_compress  # noqa: E402


def features(rng, n, t, basis, spectrum):
    x = (rng.standard_normal((n, t)).astype(np.float32) * spectrum) @ basis
    x += 0.5 * basis[0]  # a shared component, as non-negative CNN features have
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def numpy_match(queries, dictionary, block=4096):
    best = np.full(len(queries), -np.inf, np.float32)
    index = np.zeros(len(queries), np.int64)
    for start in range(0, len(dictionary), block):
        scores = queries @ dictionary[start : start + block].T
        j = scores.argmax(axis=1)
        s = scores[np.arange(len(queries)), j]
        better = s > best
        best[better], index[better] = s[better], j[better] + start
    return best, index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--tiles", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    q, n, t, k = args.queries, args.tiles, args.features, args.k
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((t, t)))[0].T.astype(np.float32)
    spectrum = (np.arange(1, t + 1, dtype=np.float32) ** -0.75)
    dictionary = features(rng, n, t, basis, spectrum)
    queries = features(rng, q, t, basis, spectrum)
    peak = matmul_peak_gflops()
    exact_flops, compressed_flops = 2 * q * n * t, 2 * q * n * k
    rows = []

    def add(name, seconds, flops, **extra):
        rows.append({"method": name, "seconds": seconds, "GFLOP/s": flops / seconds / 1e9,
                     "time / peak time": seconds / (flops / (peak * 1e9)), **extra})

    dq, dd = jnp.asarray(queries), jnp.asarray(dictionary)
    match = jax.jit(match_tiles)
    start = time.perf_counter()
    compiled = match.lower(dq, dd).compile()
    compile_seconds = time.perf_counter() - start
    jax.block_until_ready(compiled(dq, dd))
    before = rss_bytes("VmRSS")
    measured = reset_peak()
    _, exact = jax.block_until_ready(compiled(dq, dd))
    extra_memory = rss_bytes("VmHWM") - before if measured else None
    exact = np.asarray(exact)[:, 0]
    seconds = timeit(lambda: jax.block_until_ready(compiled(dq, dd)), repeats=args.repeats, warmup=0)["min"]
    add("jaxmosaic exact (jit)", seconds, exact_flops, recall=1.0, compile_s=compile_seconds)
    exact_seconds = seconds
    start = time.perf_counter()
    jax.block_until_ready(match_tiles(dq, dd))
    add("jaxmosaic exact (eager)", time.perf_counter() - start, exact_flops)

    start = time.perf_counter()
    compressed = jax.block_until_ready(svd_compress(dd, k, method="randomized", key=jax.random.PRNGKey(0)))
    svd_seconds = time.perf_counter() - start
    cq = jax.block_until_ready(compress_queries(dq, compressed))
    cmatch = match.lower(cq, compressed.dictionary).compile()
    _, approx = jax.block_until_ready(cmatch(cq, compressed.dictionary))
    recall = float((np.asarray(approx)[:, 0] == exact).mean())
    seconds = timeit(lambda: jax.block_until_ready(cmatch(cq, compressed.dictionary)), repeats=args.repeats)["min"]
    add(f"jaxmosaic k={k} (jit)", seconds, compressed_flops, recall=recall, svd_s=svd_seconds, energy=float(compressed.energy))
    compressed_seconds = seconds

    faiss_seconds = None
    try:
        import faiss
    except ImportError:
        print("faiss is not installed (pip install faiss-cpu): skipping its row")
    else:
        index = faiss.IndexFlatIP(t)
        index.add(dictionary)
        _, found = index.search(queries, 1)
        faiss_seconds = timeit(lambda: index.search(queries, 1), repeats=args.repeats, warmup=0)["min"]
        add("faiss IndexFlatIP", faiss_seconds, exact_flops, recall=float((found[:, 0] == exact).mean()), threads=faiss.omp_get_max_threads())
        findex = faiss.IndexFlatIP(k)
        findex.add(np.asarray(compressed.dictionary))
        fq = np.asarray(cq)
        seconds = timeit(lambda: findex.search(fq, 1), repeats=args.repeats)["min"]
        add(f"faiss IndexFlatIP k={k}", seconds, compressed_flops, recall=recall)

    _, found = numpy_match(queries, dictionary)
    seconds = timeit(lambda: numpy_match(queries, dictionary), repeats=1, warmup=0)["min"]
    add("numpy (BLAS + argmax)", seconds, exact_flops, recall=float((found == exact).mean()))

    ratios = {
        "matmul peak GFLOP/s": peak,
        "exact: faiss / jaxmosaic": None if faiss_seconds is None else faiss_seconds / exact_seconds,
        f"k={k}: faiss exact / jaxmosaic": None if faiss_seconds is None else faiss_seconds / compressed_seconds,
        f"k={k} recall@1 vs exact": recall,
        "extra resident memory of the exact match (MiB)": None if extra_memory is None else extra_memory / 2**20,
    }
    path = write_results("mosaic", {"config": vars(args), "rows": rows, "ratios": ratios})
    print(f"top-1 matching: {q} queries x {n} tiles x {t} features (k={k} compressed); matmul peak {peak:.0f} GFLOP/s")
    print(markdown_table(rows, ["method", "seconds", "GFLOP/s", "time / peak time", "recall", "compile_s", "svd_s", "energy"]))
    print()
    print(markdown_table([{"ratio": key, "value": value} for key, value in ratios.items()], ["ratio", "value"]))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
