"""Patch VQ: k-means on the original article's configuration against faiss and scikit-learn, in one run.

70,000 grey 8x8 patches (64 dimensions) from the bundled samples, k = 1024. The samples are
256 px, so the patches are taken at stride 2 from them and their mirror images (the original article's
stride 4 over its larger photographs gives the same count). Each method's final inertia is
measured the same way: the sum of squared distances of all 70,000 patches to their nearest
returned centre.

    python bench/vq.py [--samples 70000] [--k 1024] [--iterations 25] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, matmul_peak_gflops, write_results  # noqa: E402

from jaxmosaic import load_image  # noqa: E402
from jaxmosaic.clustering import kmeans, nearest_centers  # noqa: E402
from jaxmosaic.techniques.vq import sample_patches  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def inertia(data, centers) -> float:
    return float(np.sum(np.asarray(nearest_centers(data, np.asarray(centers, np.float32))[1], np.float64)))


def best_time(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=70000)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    images = [load_image(path) for path in sorted(SAMPLES.glob("*.*")) if path.suffix in (".png", ".jpg")]
    images += [image[:, ::-1] for image in images]
    data = sample_patches(jax.random.PRNGKey(0), images, 8, 2, args.samples)
    n, d = data.shape
    flops = 2 * n * args.k * d * args.iterations  # the distance matmuls of the Lloyd iterations
    peak = matmul_peak_gflops()
    rows = []

    def ours(init):
        def run():
            return jax.block_until_ready(kmeans(jax.random.PRNGKey(1), data, args.k, init=init, max_iter=args.iterations, tol=0.0))

        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        seconds, result = best_time(run, args.repeats)
        return {"method": f"jaxmosaic Lloyd, {init} (jit)", "seconds": seconds, "first call s": first,
                "inertia": inertia(data, result.centers), "GFLOP/s": flops / seconds / 1e9}

    rows.append(ours("random"))
    rows.append(ours("k-means++"))
    try:
        import faiss
    except ImportError:
        print("faiss is not installed: skipping faiss.Kmeans")
    else:
        def run_faiss():
            km = faiss.Kmeans(d, args.k, niter=args.iterations, seed=1, verbose=False)
            km.train(data)
            return km.centroids

        seconds, centers = best_time(run_faiss, args.repeats)
        rows.append({"method": f"faiss.Kmeans (niter={args.iterations})", "seconds": seconds, "inertia": inertia(data, centers),
                     "GFLOP/s": flops / seconds / 1e9})
    try:
        from sklearn.cluster import MiniBatchKMeans
    except ImportError:
        print("scikit-learn is not installed: skipping MiniBatchKMeans")
    else:
        seconds, model = best_time(lambda: MiniBatchKMeans(args.k, random_state=0).fit(data), 1)
        rows.append({"method": "scikit-learn MiniBatchKMeans (defaults)", "seconds": seconds,
                     "inertia": inertia(data, model.cluster_centers_)})
    reference = next((r for r in rows if r["method"].startswith("faiss")), None)
    for row in rows:
        row["GFLOP/s / peak"] = row["GFLOP/s"] / peak if "GFLOP/s" in row else None
        if reference:
            row["inertia / faiss"] = row["inertia"] / reference["inertia"]
            row["faiss s / s"] = reference["seconds"] / row["seconds"]
    config = {**vars(args), "points": n, "dimensions": d, "matmul peak GFLOP/s": peak, "threads": jax.local_device_count()}
    path = write_results("vq", {"config": config, "rows": rows})
    print(f"k-means: {n} patches x {d} dimensions, k = {args.k}, {args.iterations} iterations; matmul peak {peak:.0f} GFLOP/s")
    print(markdown_table(rows, ["method", "seconds", "inertia", "inertia / faiss", "faiss s / s", "GFLOP/s", "GFLOP/s / peak",
                                "first call s"]))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
