"""Shared benchmark helpers: timing, the machine's matmul peak, JSON results and markdown tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


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


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), **payload}
    path = RESULTS / f"{name}-{jax.default_backend()}.json"
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


def torch_features(params, wanted, *, pooling: str = "max"):
    """A PyTorch (eager) VGG19 on the same weights, up to the deepest of `wanted`: a function from
    an HWC tensor in [0, 1] to {name: CHW activation} for the names in `wanted`."""
    import torch

    from jaxmosaic.vgg import VGG19_LAYERS

    layers, convs = [], iter(n for n in VGG19_LAYERS if n.startswith("conv"))
    for name in VGG19_LAYERS[: max(VGG19_LAYERS.index(n) for n in wanted) + 1]:
        if name.startswith("conv"):
            p = params[next(convs)]
            conv = torch.nn.Conv2d(p["kernel"].shape[2], p["kernel"].shape[3], 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy()))
                conv.bias.copy_(torch.from_numpy(np.array(p["bias"])))
            layers.append((name, conv))
        elif name.startswith("relu"):
            layers.append((name, torch.nn.ReLU()))
        else:
            layers.append((name, torch.nn.MaxPool2d(2, 2) if pooling == "max" else torch.nn.AvgPool2d(2, 2)))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    wanted = set(wanted)

    def features(image):
        h = (image.permute(2, 0, 1)[None] - mean) / std
        out = {}
        for name, module in layers:
            h = module(h)
            if name in wanted:
                out[name] = h[0]
        return out

    return features


def jit_and_eager_seconds(fn: Callable, args: tuple, repeats: int) -> dict:
    """`fn(*args)` jitted (first call, then min over repeats) and op by op under `disable_jit`."""
    jitted = jax.jit(fn)
    compile_seconds = first_call_seconds(lambda: jax.block_until_ready(jitted(*args)))
    jit_seconds = timeit(lambda: jax.block_until_ready(jitted(*args)), repeats=repeats)["min"]
    with jax.disable_jit():
        eager_seconds = timeit(lambda: jax.block_until_ready(fn(*args)), repeats=max(1, repeats - 1))["min"]
    return {"jit s/iter": jit_seconds, "eager s/iter": eager_seconds, "eager / jit": eager_seconds / jit_seconds,
            "first call s": compile_seconds}
