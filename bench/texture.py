"""Texture synthesis: seconds per iteration, jit vs eager vs a PyTorch eager loop of the original article's method.

One iteration = the loss (Gram matrices at relu1_1, pool1..pool4 with average pooling, plus
beta/2 ||x - P(x)||^2) and its gradient in the image, on the brick sample at each size, random
VGG19 weights in torchvision's layout shared by both libraries. Also: the seconds per step of a
whole L-BFGS synthesis (line search included), and with Adam of one texture and of 4 variations
optimised as one batch (bench/batch.py compares batches in detail).

    python bench/texture.py [--sizes 256] [--repeats 3] [--steps 20]
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
from jaxmosaic.techniques.texture import (  # noqa: E402
    TEXTURE_LAYERS,
    TextureConfig,
    TextureInputs,
    synthesize_texture,
    texture_loss,
    texture_targets,
)
from jaxmosaic.weights import random_vgg19  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
WEIGHTS = {name: 1 / len(TEXTURE_LAYERS) for name in TEXTURE_LAYERS}
BETA = 1e-4


def torch_step_seconds(params, x, exemplar, repeats):
    """The original article's loop in PyTorch eager, float32: VGG19 features, Gram loss, spectrum
    projection, backward (tests/torch_reference.py's `texture_loss`)."""
    import torch
    from torch_reference import texture_loss, torch_vgg19

    loss = texture_loss(torch_vgg19(params), exemplar, beta=BETA, weights=WEIGHTS, dtype=torch.float32)
    pixels = torch.from_numpy(x.copy()).requires_grad_(True)

    def step():
        pixels.grad = None
        loss(pixels)[1].backward()

    return timeit(step, repeats=repeats)["min"], torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="L-BFGS steps of the whole-synthesis rows")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    params = random_vgg19(jax.random.PRNGKey(0))
    brick = load_image(SAMPLES / "brick.png")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        exemplar = np.asarray(resize(brick, size, size))
        x = np.random.default_rng(0).random((size, size, 3)).astype(np.float32)
        targets = texture_targets(params, exemplar)._replace(spectrum=exemplar)

        def loss(pixels, t, p):
            return texture_loss(pixels, t, p, layer_weights=WEIGHTS, spectrum_weight=BETA)[0]

        timing = jit_and_eager_seconds(jax.value_and_grad(loss), (x, targets, params), args.repeats)
        jit_seconds = timing["jit s/iter"]
        inputs, chunk = TextureInputs(exemplar), args.steps
        run = synthesize_texture(TextureConfig(spectrum_weight=BETA, steps=args.steps), inputs, params, chunk=chunk)
        adam = {"optimizer": "adam", "lr": 0.02, "spectrum_weight": BETA, "steps": args.steps}
        adam_one = synthesize_texture(TextureConfig(**adam), inputs, params, chunk=chunk)
        adam_four = synthesize_texture(TextureConfig(variations=4, **adam), inputs, params, chunk=chunk)
        row = {"size": size, **timing, "L-BFGS s/step": run.seconds / args.steps,
               "adam s/step": adam_one.seconds / args.steps, "adam 4 variations s/step": adam_four.seconds / args.steps,
               "4 separate / 4 batched": 4 * adam_one.seconds / adam_four.seconds}
        if not args.no_torch:
            try:
                torch_seconds, threads = torch_step_seconds(params, x, exemplar, args.repeats)
            except ImportError:
                print("torch is not installed: skipping the PyTorch column")
            else:
                row.update({"torch s/iter": torch_seconds, "torch / jit": torch_seconds / jit_seconds, "torch threads": threads})
        rows.append(row)
    path = write_results("texture", {"config": vars(args), "rows": rows})
    print("texture synthesis: seconds per iteration (Gram + spectrum loss and its gradient), random VGG19 weights")
    print(markdown_table(rows, ["size", "jit s/iter", "eager s/iter", "torch s/iter", "eager / jit", "torch / jit",
                                "L-BFGS s/step", "adam s/step", "adam 4 variations s/step", "4 separate / 4 batched", "first call s"]))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
