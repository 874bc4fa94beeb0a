"""Shared benchmark helpers: timing, the machine's matmul peak, JSON results and markdown tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
# bench/run.py sets these for the scripts it runs: where results go, and a tag for their names
RESULTS_ENV, TAG_ENV = "JAXMOSAIC_BENCH_RESULTS", "JAXMOSAIC_BENCH_TAG"
# the PyTorch reference (torchvision's VGG19 layout and the losses written in PyTorch) lives with the tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def timeit(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> dict:
    """Min and median seconds of `fn()` (which must block on its result) over `repeats` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"min": min(times), "median": statistics.median(times), "repeats": repeats}


def first_call_seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 GFLOP/s of a jitted n x n matmul: the practical peak XLA reaches on this machine."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    seconds = timeit(lambda: jax.block_until_ready(matmul(a, b)), repeats=repeats)["min"]
    return 2 * n**3 / seconds / 1e9


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "numpy": np.__version__,
    }


def results_path(name: str) -> Path:
    """bench/results/NAME-BACKEND.json (cpu, gpu, tpu), or NAME-BACKEND-TAG.json with $JAXMOSAIC_BENCH_TAG,
    in $JAXMOSAIC_BENCH_RESULTS when it is set."""
    folder = Path(os.environ.get(RESULTS_ENV) or RESULTS)
    tag = os.environ.get(TAG_ENV)
    return folder / f"{name}-{jax.default_backend()}{'-' + tag if tag else ''}.json"


def write_results(name: str, payload: dict) -> Path:
    payload = {"benchmark": name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), **payload}
    path = results_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def jit_and_eager_seconds(fn: Callable, args: tuple, repeats: int) -> dict:
    """`fn(*args)` jitted (first call, then min over repeats) and op by op under `disable_jit`."""
    jitted = jax.jit(fn)
    compile_seconds = first_call_seconds(lambda: jax.block_until_ready(jitted(*args)))
    jit_seconds = timeit(lambda: jax.block_until_ready(jitted(*args)), repeats=repeats)["min"]
    with jax.disable_jit():
        eager_seconds = timeit(lambda: jax.block_until_ready(fn(*args)), repeats=max(1, repeats - 1))["min"]
    return {"jit s/iter": jit_seconds, "eager s/iter": eager_seconds, "eager / jit": eager_seconds / jit_seconds,
            "first call s": compile_seconds}


def vgg_conv_flops(size: int, deepest: str, width: int | None = None) -> float:
    """Multiply-adds x 2 of VGG19's convolutions up to `deepest`, forward only, for one image of
    size x width (default square)."""
    from jaxmosaic.vgg import VGG19_LAYERS, layer_channels

    flops, height, width, channels = 0.0, size, width or size, 3
    for name in VGG19_LAYERS[: VGG19_LAYERS.index(deepest) + 1]:
        if name.startswith("conv"):
            out = layer_channels(name)
            flops += 2 * height * width * channels * out * 9
            channels = out
        elif name.startswith("pool"):
            height, width = height // 2, width // 2
    return flops
