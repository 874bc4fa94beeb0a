"""The photomosaic library at the original article's scale: 312,500 Gabor bank tiles, AlexNet
features (d = 9216), k = 100.

Measured on this machine, in one run:
- tiles per second for rendering + AlexNet features at 224 px (the article's setting), and for
  VGG19 relu4_1 features at 64 px (jaxmosaic's default), per device; AlexNet's GFLOP/s against
  the matmul peak measured in the same run;
- a streaming build of a bank subset (AlexNet, chunks of 256): its rate, its peak resident
  memory, the seconds of the SVD statistics per chunk (float64 syrk) and of the eigen step on
  the full 9216 x 9216 D^T D (k = 100), which does not grow with the number of tiles;
- the projected time of the full bank on one machine and on P processes;
- the match time of a 100 x 100-cell target (10,000 queries) against 312,500 x 100, top-1 by |score|;
- scikit-learn's `randomized_svd(D, 100)` on the subset's D against the streaming statistics +
  eigen step: time and the largest principal angle between the two V_k.

    python bench/library.py [--subset 2048] [--processes 1,2,4,8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, matmul_peak_gflops, timeit, write_results  # noqa: E402

from jaxmosaic.search import l2_normalize, match_tiles  # noqa: E402
from jaxmosaic.techniques.mosaic.bank import BankGrid, bank_parameters  # noqa: E402
from jaxmosaic.techniques.mosaic.features import ColorMode, FeatureConfig  # noqa: E402
from jaxmosaic.techniques.mosaic.stream import BankSource, accumulate_gram, build_folder, stream_library, top_eigen  # noqa: E402
from jaxmosaic.weights import random_alexnet, random_vgg19  # noqa: E402

FULL = BankGrid()


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def alexnet_flops(size: int = 224) -> float:
    """Multiply-adds x 2 of AlexNet's five convolutions for one image."""
    side, channels, total = size, 3, 0.0
    for out, kernel, stride, pad, pooled in ((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
                                             (256, 3, 1, 1, False), (256, 3, 1, 1, True)):
        side = (side + 2 * pad - kernel) // stride + 1
        total += 2.0 * side * side * out * channels * kernel * kernel
        channels = out
        if pooled:
            side = (side - 3) // 2 + 1
    return total


def embedding_rate(source: BankSource, settings: FeatureConfig, params, chunk: int, repeats: int) -> dict:
    program = jax.jit(source.program(settings))
    inputs = jnp.asarray(bank_parameters(source.grid, np.arange(chunk)))
    timing = timeit(lambda: jax.block_until_ready(program(params, inputs)), repeats=repeats)
    return {"seconds_per_chunk": timing["min"], "tiles_per_second": chunk / timing["min"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=2048, help="bank tiles in the measured streaming build")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--processes", default="1,2,4,8")
    args = parser.parse_args()
    chunk = args.chunk
    peak = matmul_peak_gflops()
    devices = len(jax.local_devices())
    alexnet, vgg = random_alexnet(jax.random.PRNGKey(0)), random_vgg19(jax.random.PRNGKey(0))
    alex_settings = FeatureConfig.alexnet(ColorMode.multiply, weights="random")
    vgg_settings = FeatureConfig.vgg(ColorMode.multiply, weights="random")
    source = BankSource(FULL)
    rates = {"alexnet 224": embedding_rate(source, alex_settings, alexnet, chunk, 3),
             "vgg19 relu4_1 64": embedding_rate(source, vgg_settings, vgg, chunk, 3)}
    rates["alexnet 224"]["gflops"] = alexnet_flops() * rates["alexnet 224"]["tiles_per_second"] / 1e9
    rates["alexnet 224"]["share_of_peak"] = rates["alexnet 224"]["gflops"] / peak

    # a streaming build of a subset: rate, peak memory, the rows for the statistics and the comparison
    grid = _subset_grid(args.subset)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "subset.npz"
        reset_peak()
        rss_before = peak_rss()
        start = time.perf_counter()
        library = stream_library(BankSource(grid), alex_settings, ColorMode.multiply, out, params=alexnet, weights="random",
                                 k=100, chunk=chunk, keep_work=True)
        build_seconds = time.perf_counter() - start
        build_peak = peak_rss()
        rows = np.concatenate([np.load(path)["features"] for path in sorted(build_folder(out).glob("chunk-*.npz"))])
    d = rows.shape[1]
    # the statistics: float64 syrk per chunk, projected to the full bank
    gram = np.zeros((d, d), np.float64, order="F")
    block = rows[:chunk]
    timing = timeit(lambda: accumulate_gram(gram, block), repeats=3)
    statistics_per_chunk = timing["min"]
    gram = np.zeros((d, d), np.float64, order="F")
    start = time.perf_counter()
    for s in range(0, len(rows), chunk):
        gram = accumulate_gram(gram, rows[s : s + chunk])
    statistics_subset = time.perf_counter() - start
    start = time.perf_counter()
    values, basis = top_eigen(gram, 100)
    eigen_seconds = time.perf_counter() - start
    exact_start = time.perf_counter()
    _, exact = scipy.linalg.eigh(gram, lower=False, subset_by_index=[d - 100, d - 1])
    exact_seconds = time.perf_counter() - exact_start
    angle_exact = float(scipy.linalg.subspace_angles(basis, exact).max())

    chunks_full = -(-FULL.size // chunk)
    embed_full = FULL.size / rates["alexnet 224"]["tiles_per_second"]
    statistics_full = chunks_full * statistics_per_chunk
    projections = []
    for processes in (int(p) for p in args.processes.split(",")):
        seconds = (embed_full + statistics_full) / processes + eigen_seconds
        projections.append({"processes": processes, "hours": seconds / 3600,
                            "embed_hours": embed_full / processes / 3600, "statistics_minutes": statistics_full / processes / 60,
                            "eigen_seconds": eigen_seconds})
    full_peak_extra = FULL.size * 100 * 4 * 2  # D_k held and gathered

    # matching: 100 x 100 cells against 312,500 x 100, |score|
    rng = np.random.default_rng(0)
    dictionary = jnp.asarray(l2_normalize(jnp.asarray(rng.standard_normal((FULL.size, 100), np.float32))))
    queries = jnp.asarray(rng.standard_normal((10_000, 100), np.float32))
    match = jax.jit(match_tiles, static_argnames=("top_k", "absolute"))
    first = time.perf_counter()
    jax.block_until_ready(match(queries, dictionary, absolute=True))
    match_first = time.perf_counter() - first
    match_timing = timeit(lambda: jax.block_until_ready(match(queries, dictionary, absolute=True)), repeats=3)
    match_gflops = 2 * 10_000 * FULL.size * 100 / match_timing["min"] / 1e9

    # scikit-learn's randomized_svd on the subset's D
    comparison = None
    try:
        from sklearn.utils.extmath import randomized_svd

        start = time.perf_counter()
        _, _, vt = randomized_svd(rows, 100, random_state=0)
        sklearn_seconds = time.perf_counter() - start
        comparison = {"sklearn_seconds": sklearn_seconds, "ours_seconds": statistics_subset + eigen_seconds,
                      "angle_rad": float(scipy.linalg.subspace_angles(vt.T.astype(np.float64), basis).max()),
                      "tiles": len(rows)}
    except ImportError:
        pass

    payload = {
        "machine": machine(), "matmul_peak_gflops": peak, "devices": devices, "chunk": chunk, "rates": rates,
        "subset_build": {"tiles": len(rows), "seconds": build_seconds, "tiles_per_second": library.build["tiles_per_second"],
                         "peak_rss_gib": build_peak / 2**30, "rss_before_gib": rss_before / 2**30,
                         "energy_kept": library.svd["energy"]},
        "statistics": {"seconds_per_chunk": statistics_per_chunk, "full_minutes": statistics_full / 60},
        "eigen": {"seconds": eigen_seconds, "exact_seconds": exact_seconds, "angle_to_exact_rad": angle_exact, "d": d, "k": 100},
        "full_bank": {"tiles": FULL.size, "projections": projections,
                      "projected_peak_gib": (build_peak + full_peak_extra) / 2**30,
                      "feature_rows_on_disk_gib": FULL.size * d * 4 / 2**30},
        "match": {"queries": 10_000, "tiles": FULL.size, "k": 100, "seconds": match_timing["min"], "first_call_seconds": match_first,
                  "gflops": match_gflops, "share_of_peak": match_gflops / peak},
        "sklearn": comparison,
    }
    path = write_results("library", payload)
    table = [{"what": f"embed {name}", "value": f"{r['tiles_per_second']:.1f} tiles/s per device"
              + (f" ({r['gflops']:.0f} GFLOP/s, {r['share_of_peak']:.0%} of the matmul peak {peak:.0f})" if "gflops" in r else "")}
             for name, r in rates.items()]
    table += [
        {"what": f"streaming build of {len(rows)} bank tiles", "value": f"{build_seconds:.1f} s, peak RSS {build_peak / 2**30:.2f} GiB"},
        {"what": "SVD statistics (float64 syrk) per 256-tile chunk", "value": f"{statistics_per_chunk:.3f} s; full bank {statistics_full / 60:.1f} min"},
        {"what": "eigen step, d = 9216, k = 100 (randomized)", "value": f"{eigen_seconds:.1f} s (exact LAPACK {exact_seconds:.1f} s, angle {angle_exact:.1e} rad)"},
    ]
    table += [{"what": f"full bank, {p['processes']} process(es)", "value": f"{p['hours']:.2f} h projected"} for p in projections]
    table += [{"what": "full bank peak memory (projected)", "value": f"{(build_peak + full_peak_extra) / 2**30:.2f} GiB; "
                                                                      f"feature rows on disk {FULL.size * d * 4 / 2**30:.1f} GiB"},
              {"what": "match 100x100 cells vs 312,500 x 100, |score|", "value": f"{match_timing['min']:.2f} s ({match_gflops:.0f} GFLOP/s)"}]
    if comparison:
        table.append({"what": f"scikit-learn randomized_svd on {comparison['tiles']} x {d}",
                      "value": f"{comparison['sklearn_seconds']:.1f} s vs ours {comparison['ours_seconds']:.1f} s; "
                               f"V_k angle {comparison['angle_rad']:.1e} rad"})
    print(markdown_table(table, ["what", "value"]))
    print(f"wrote {path}")


def _subset_grid(tiles: int) -> BankGrid:
    """A grid of about `tiles` tiles with the full bank's ranges (each axis scaled alike)."""
    scale = (tiles / FULL.size) ** 0.25
    return BankGrid(*(max(1, round(n * scale)) for n in FULL))


if __name__ == "__main__":
    main()
