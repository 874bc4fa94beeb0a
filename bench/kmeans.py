"""k-means at corpus scale: points streamed from disk, against faiss and scikit-learn.

The points (--points x --dim float32, blobs around 4 k centres with unit noise) are generated once
to --data as .npy chunks of --chunk points. Each method then runs in a fresh Python (so that its
peak resident memory, VmHWM, is its own), from the same initial centres (the stream's first k
points) where the method takes them:

- jaxmosaic exact: `stream_kmeans(method="exact")`, --iterations passes of out-of-core Lloyd,
  reading one chunk file at a time;
- jaxmosaic sample: faiss's rule, a streaming pass drawing min(N, 256 k) points, then Lloyd on them;
- jaxmosaic batch: mini-batch k-means, one pass over the stream, each chunk a batch;
- faiss (faiss.Kmeans, its default 256 points per centre sample), in memory;
- scikit-learn KMeans(algorithm="lloyd", init=C0, n_init=1, tol=0), in memory, up to --sklearn-max points;
- scikit-learn MiniBatchKMeans.partial_fit, one pass over the same chunks.

Each row: seconds per iteration (the fastest pass or Lloyd iteration; compilation in the first is
reported apart), total seconds, peak resident MiB (VmHWM) and the final inertia over --eval points,
and the exact Lloyd iteration's GFLOP/s (2 n k d per pass) against the machine's matmul peak.
Ratios are against scikit-learn's Lloyd and faiss measured in the same run (same N and k). Each
row records the load average (1 minute) before and after its method ran: the machine may be shared.
New rows replace the rows of the same method, N, d and k in bench/results/kmeans-cpu.json and keep
the others; the file is rewritten after every row, so a long run that is stopped keeps what it measured.

    python bench/kmeans.py [--points 1000000] [--dim 64] [--ks 1024] [--iterations 3] [--data DIR]
    python bench/kmeans.py --points 10000000 --ks 4096 --iterations 1 --sklearn-max 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, matmul_peak_gflops, results_path, write_results

METHODS = ("jaxmosaic-exact", "jaxmosaic-sample", "jaxmosaic-batch", "faiss", "sklearn-lloyd", "sklearn-minibatch")


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def generate(folder: Path, points: int, dim: int, chunk: int, k: int) -> list[Path]:
    """The chunk files of the stream (written once; reused when they are there)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"chunk-{i:05d}.npy" for i in range(-(-points // chunk))]
    marker = folder / f"points-{points}x{dim}-{chunk}.done"
    if marker.exists():
        return files
    rng = np.random.default_rng(0)
    means = rng.normal(0, 4, (4 * k, dim)).astype(np.float32)
    for i, path in enumerate(files):
        size = min(chunk, points - i * chunk)
        block = means[rng.integers(0, len(means), size)] + rng.standard_normal((size, dim), np.float32)
        np.save(path, block.astype(np.float32))
    marker.write_text("")
    return files


def stream(files):
    """The chunks from the `start`-th on, each read when it is needed (read whole, not memory-mapped:
    the pages of a mapping would count in the peak as if held)."""
    return lambda start: (np.load(path) for path in files[start:])


def inertia(centers: np.ndarray, points: np.ndarray) -> float:
    import jax.numpy as jnp

    from jaxmosaic import nearest_centers

    return float(jnp.sum(nearest_centers(jnp.asarray(points), jnp.asarray(centers))[1]))


def worker(method: str, files: list[Path], k: int, iterations: int, evaluate: int) -> dict:
    """One method, in this process: its timings, peak memory and inertia."""
    import jax

    from jaxmosaic.kmeans_stream import stream_kmeans

    base = peak_mib()
    load_before = os.getloadavg()[0]
    first = np.load(files[0], mmap_mode="r")
    initial = np.array(first[:k])
    check = np.array(first[:evaluate])
    passes = []
    start = time.perf_counter()
    if method.startswith("jaxmosaic"):
        kind = method.split("-")[1]
        marks = [time.perf_counter()]

        def on_pass(state):
            marks.append(time.perf_counter())
            passes.append(marks[-1] - marks[-2])

        result = stream_kmeans(stream(files), k, key=jax.random.PRNGKey(0), method=kind,
                               init=initial if kind != "sample" else "random",
                               max_iter=iterations if kind != "batch" else 1, on_pass=on_pass)
        centers, ran = result.centers, result.iterations
        if kind == "sample":  # the sampling pass, then the fastest of Lloyd's iterations on the sample (each marked)
            passes = [passes[0], min(passes[1:])] if len(passes) > 1 else passes
    elif method == "faiss":
        import faiss

        data = np.concatenate([np.load(path) for path in files])
        start = time.perf_counter()
        kmeans = faiss.Kmeans(data.shape[1], k, niter=iterations, seed=1234, verbose=False)
        kmeans.train(data, init_centroids=initial)
        centers, ran = kmeans.centroids, iterations
        passes = [(time.perf_counter() - start) / iterations]
    elif method == "sklearn-lloyd":
        from sklearn.cluster import KMeans

        data = np.concatenate([np.load(path) for path in files])
        start = time.perf_counter()
        model = KMeans(k, init=initial, n_init=1, max_iter=iterations, tol=0.0, algorithm="lloyd").fit(data)
        centers, ran = model.cluster_centers_, model.n_iter_
        passes = [(time.perf_counter() - start) / ran]
    else:
        from sklearn.cluster import MiniBatchKMeans

        model = MiniBatchKMeans(k, init=initial, n_init=1, reassignment_ratio=0.0, compute_labels=False)
        for path in files:
            model.partial_fit(np.load(path))
        centers, ran = model.cluster_centers_, 1
        passes = [time.perf_counter() - start]
    seconds = time.perf_counter() - start
    return {"method": method, "iterations": int(ran), "seconds": seconds, "passes": [float(p) for p in passes],
            "peak_mib": peak_mib(), "peak_after_imports_mib": base, "load_average": [load_before, os.getloadavg()[0]],
            "inertia_per_point": inertia(np.asarray(centers, np.float32), check) / len(check)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--ks", default="1024")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--evaluate", type=int, default=65536, help="points the final inertia is measured on")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sklearn-max", type=int, default=2_000_000, help="largest N for the in-memory peers")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "jaxmosaic-kmeans-bench")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    folder = args.data / f"{args.points}x{args.dim}"
    if args.worker:
        files = generate(folder, args.points, args.dim, args.chunk, ks[0])
        print(json.dumps(worker(args.worker, files, ks[0], args.iterations, args.evaluate)))
        return
    peak = matmul_peak_gflops()
    config = {**vars(args), "data": str(args.data)}
    rows = _kept_rows(results_path("kmeans"))
    for k in ks:
        generate(folder, args.points, args.dim, args.chunk, ks[0])
        flops = 2.0 * args.points * k * args.dim
        for method in args.methods.split(","):
            if method in ("faiss", "sklearn-lloyd") and args.points > args.sklearn_max:
                continue
            if method == "faiss":
                try:
                    import faiss  # noqa: F401
                except ImportError:
                    continue
            command = [sys.executable, __file__, "--worker", method, "--points", str(args.points), "--dim", str(args.dim),
                       "--ks", str(k), "--iterations", str(args.iterations), "--chunk", str(args.chunk),
                       "--evaluate", str(args.evaluate), "--data", str(args.data)]
            done = subprocess.run(command, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row.update(k=k, points=args.points, dim=args.dim, chunk=args.chunk,
                       seconds_per_iteration=min(row["passes"][1:] or row["passes"]),
                       first_pass_seconds=row["passes"][0])
            if method == "jaxmosaic-exact":
                row["gflops"] = flops / row["seconds_per_iteration"] / 1e9
                row["of_matmul_peak"] = row["gflops"] / peak
            rows = [r for r in rows if (r["method"], r["points"], r["dim"], r["k"]) != (method, args.points, args.dim, k)] + [row]
            _add_ratios(rows)
            write_results("kmeans", {"config": config, "matmul_peak_gflops": peak, "rows": rows})
            print(json.dumps(row), flush=True)
    print(markdown_table(rows, ["method", "points", "k", "seconds_per_iteration", "first_pass_seconds", "seconds", "peak_mib",
                                "inertia_per_point", "vs_sklearn_lloyd", "vs_faiss", "gflops", "load_average"]))
    print(f"wrote {results_path('kmeans')}")


def _kept_rows(path: Path) -> list[dict]:
    """The rows already in `path` (each replaced when this run measures its method, N, d and k again)."""
    return json.loads(path.read_text()).get("rows", []) if path.exists() else []


def _add_ratios(rows: list[dict]) -> None:
    """Each row's speed against scikit-learn's Lloyd and faiss on the same N, d and k (when measured)."""
    for row in rows:
        same = {r["method"]: r for r in rows if (r["k"], r["points"], r["dim"]) == (row["k"], row["points"], row["dim"])}
        for peer, name in (("sklearn-lloyd", "vs_sklearn_lloyd"), ("faiss", "vs_faiss")):
            if peer in same:
                row[name] = same[peer]["seconds_per_iteration"] / row["seconds_per_iteration"]

if __name__ == "__main__":
    main()
