"""Neural style transfer: seconds per iteration, and time to a fixed loss with and without multi-scale.

Part 1, at each size: one iteration = the total loss (content relu4_2, five style layers) and its
gradient in the image. jaxmosaic jitted, the same function in JAX eager (op by op), and a
PyTorch eager Gatys loop on the same weights (random VGG19 weights in torchvision's layout).

Part 2, at the largest size of --converge (L-BFGS, default settings): a single-scale run from
noise for --steps iterations sets the target loss (its final value); a coarse-to-fine run (half
size first, then full size) is timed until it reaches the same loss.

    python bench/style.py [--sizes 256,512] [--repeats 3] [--converge 256] [--steps 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import jit_and_eager_seconds, markdown_table, timeit, write_results  # noqa: E402

from jaxmosaic import load_image, resize  # noqa: E402
from jaxmosaic.techniques.style import (  # noqa: E402
    STYLE_LAYERS,
    StyleConfig,
    StyleInputs,
    style_targets,
    style_transfer,
    style_transfer_loss,
)
from jaxmosaic.weights import random_vgg19  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
WEIGHTS = {name: 1 / len(STYLE_LAYERS) for name in STYLE_LAYERS}


def torch_step_seconds(params, x, content, style, repeats):
    """The paper's loss and its gradient in PyTorch eager, float32 (tests/torch_reference.py's `gatys_loss`)."""
    import torch
    from torch_reference import gatys_loss, torch_vgg19

    loss = gatys_loss(torch_vgg19(params), content, style, alpha=1.0, beta=1e3, tv_weight=0.0, style_weights=WEIGHTS,
                      dtype=torch.float32)
    pixels = torch.from_numpy(x.copy()).requires_grad_(True)

    def step():
        pixels.grad = None
        loss(pixels)[0].backward()

    return timeit(step, repeats=repeats)["min"], torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--converge", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    params = random_vgg19(jax.random.PRNGKey(0))
    content_image, style_image = load_image(SAMPLES / "astronaut.png"), load_image(SAMPLES / "brick.png")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        content = np.asarray(resize(content_image, size, size))
        style = np.asarray(resize(style_image, size, size))
        x = np.random.default_rng(0).random((size, size, 3)).astype(np.float32)
        targets = style_targets(params, content, [style])

        def loss(pixels, t, p):
            return style_transfer_loss(pixels, t, p, layer_weights=WEIGHTS)[0]

        timing = jit_and_eager_seconds(jax.value_and_grad(loss), (x, targets, params), args.repeats)
        jit_seconds = timing["jit s/iter"]
        row = {"size": size, **timing}
        if not args.no_torch:
            try:
                torch_seconds, threads = torch_step_seconds(params, x, content, style, args.repeats)
            except ImportError:
                print("torch is not installed: skipping the PyTorch column")
            else:
                row.update({"torch s/iter": torch_seconds, "torch / jit": torch_seconds / jit_seconds, "torch threads": threads})
        rows.append(row)

    size, steps = args.converge, args.steps
    inputs = StyleInputs(content_image, [style_image])
    single = style_transfer(StyleConfig(size=size, steps=(steps,)), inputs, params, chunk=steps)
    per_step = single.seconds / steps
    target = float(single.history[0][-1, 0])  # a stage's history is (steps, problems)
    coarse_steps = steps // 2
    multi = style_transfer(StyleConfig(scales=(size // 2, size), steps=(coarse_steps, steps)), inputs, params, chunk=steps)
    fine = multi.history[1][:, 0]
    reached = np.nonzero(fine <= target)[0]
    # the coarse scale timed alone; the fine steps cost what the single run's steps cost
    coarse = style_transfer(StyleConfig(size=size // 2, steps=(coarse_steps,)), inputs, params, chunk=coarse_steps)
    coarse_seconds = coarse.seconds
    multi_steps = int(reached[0]) if len(reached) else None
    converge = {
        "size": size, "target loss": target, "single-scale steps": steps, "single-scale s": single.seconds,
        "multi-scale": f"{size // 2} x {coarse_steps} then {size}", "multi-scale fine steps to target": multi_steps,
        "multi-scale s": None if multi_steps is None else coarse_seconds + multi_steps * per_step,
    }
    if multi_steps is not None:
        converge["single / multi"] = single.seconds / converge["multi-scale s"]
    path = write_results("style", {"config": vars(args), "rows": rows, "converge": converge})
    print("style transfer: seconds per iteration (total loss and its gradient), random VGG19 weights")
    print(markdown_table(rows, ["size", "jit s/iter", "eager s/iter", "torch s/iter", "eager / jit", "torch / jit", "first call s"]))
    print(f"\nL-BFGS to a fixed loss at {size}x{size}")
    print(markdown_table([converge], list(converge)))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
