"""Hybrid image optimisation, the original article's run: 512x512, kernel 15, sigma 3, gradient descent lr 0.3.

Seconds per step of: jaxmosaic's loop (jitted chunks of steps), the same step in JAX eager (op by
op, no jit), and the original article's method as a PyTorch eager loop (depthwise conv2d blur, autograd).
Compilation is timed apart. The final losses of jaxmosaic and PyTorch after the same number of
steps are reported side by side.

    python bench/hybrid.py [--size 512] [--steps 200] [--eager-steps 10] [--no-torch]
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
from common import markdown_table, write_results  # noqa: E402

from jaxmosaic import load_image, resize  # noqa: E402
from jaxmosaic.filters import gaussian_kernel1d  # noqa: E402
from jaxmosaic.techniques.hybrid import HybridConfig, HybridInputs, hybrid_loss, hybrid_optimize  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def torch_loop(near, far, kernel, steps, lr, ratio):
    """The original article's gradient descent in PyTorch eager (tests/torch_reference.py's `hybrid_loss`)."""
    import torch
    from torch_reference import hybrid_loss as torch_hybrid_loss
    from torch_reference import nchw

    article = torch_hybrid_loss(nchw(near), nchw(far), kernel)
    theta = torch.zeros_like(nchw(near), requires_grad=True)

    def loss_fn():
        return article(torch.sigmoid(theta), ratio, 1.0)[0]

    start = time.perf_counter()
    for _ in range(steps):
        (grad,) = torch.autograd.grad(loss_fn(), theta)
        with torch.no_grad():
            theta -= lr * grad
    seconds = time.perf_counter() - start
    with torch.no_grad():
        final = loss_fn().item()
    return seconds / steps, final, torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eager-steps", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    size, steps, ratio, lr = args.size, args.steps, 0.1, 0.3
    near = np.asarray(resize(load_image(SAMPLES / "astronaut.png"), size, size))
    far = np.asarray(resize(load_image(SAMPLES / "coffee.png"), size, size))
    kernel = gaussian_kernel1d(15, 3.0)

    pair = HybridInputs(near, far)
    result = hybrid_optimize(HybridConfig(size=0, ratios=(ratio,), steps=steps), pair, chunk=steps)
    jit_step = result.seconds / steps
    batch3 = hybrid_optimize(HybridConfig(size=0, ratios=(0.1, 0.3, 1.0), steps=steps), pair, chunk=steps)

    def step(theta):
        value, grad = jax.value_and_grad(
            lambda t: hybrid_loss(jax.nn.sigmoid(t), near, far, m_precise=ratio, m_blurred=1.0, kernel=kernel)[0])(theta)
        return theta - lr * grad, value

    theta = jnp.zeros(near.shape, jnp.float32)
    with jax.disable_jit():
        jax.block_until_ready(step(theta))
        start = time.perf_counter()
        for _ in range(args.eager_steps):
            theta, _ = jax.block_until_ready(step(theta))
        eager_step = (time.perf_counter() - start) / args.eager_steps

    row = {
        "size": size, "steps": steps, "compile s": result.compile_seconds, "jit s/step": jit_step,
        "eager s/step": eager_step, "eager / jit": eager_step / jit_step,
        "3 ratios s/step": batch3.seconds / steps, "jaxmosaic final loss": result.loss[0]["total"],
    }
    if not args.no_torch:
        try:
            torch_step, torch_final, threads = torch_loop(near, far, kernel, steps, lr, ratio)
        except ImportError:
            print("torch is not installed: skipping the PyTorch column")
        else:
            row.update({"torch s/step": torch_step, "torch / jit": torch_step / jit_step,
                        "torch final loss": torch_final, "torch threads": threads})
    columns = ["size", "steps", "compile s", "jit s/step", "eager s/step", "torch s/step", "eager / jit",
               "torch / jit", "3 ratios s/step", "jaxmosaic final loss", "torch final loss"]
    path = write_results("hybrid", {"rows": [row]})
    print(f"hybrid optimisation, {size}x{size}, kernel 15, sigma 3, gradient descent lr {lr}, ratio {ratio}")
    print(markdown_table([row], columns))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
