"""Texture losses side by side: gram, sw (sliced Wasserstein), hist (histograms) and gram+hist.

Two measurements, both on the brick sample with random VGG19 weights (seeded, in torchvision's
layout: the time of a loss evaluation does not depend on the weights' values, only on the
network's shapes):

1. seconds of one loss-and-gradient evaluation (jitted, min and median over repeats) of each
   statistic over the default texture layers (relu1_1, pool1..pool4, average pooling) at each
   size, and its ratio to the Gram loss's in the same run;
2. the texture statistics each loss reaches after the same number of L-BFGS steps from the same
   noise (spectrum weight 0, so only the statistic shapes the texture): the channel-histogram
   distance of the output to the exemplar in pixel space (total variation between 64-bin
   histograms, mean over channels, 0 = equal, 1 = disjoint) and the spectrum distance
   ||x - P(x)|| / ||x|| (`jaxmosaic.spectrum.spectrum_distance`).

    python bench/losses.py [--sizes 256,512] [--repeats 3] [--quality-size 128] [--steps 100]

The texture-statistics rows come first; results/losses-cpu.json is rewritten after every row
("complete": false until the end), so a run cut short on a loaded machine keeps what it measured.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, timeit, write_results  # noqa: E402

from jaxmosaic import load_image, resize  # noqa: E402
from jaxmosaic.spectrum import spectrum_distance  # noqa: E402
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
LOSSES = ("gram", "sw", "hist", "gram+hist")


def histogram_distance(image: np.ndarray, exemplar: np.ndarray, bins: int = 64) -> float:
    """Mean over channels of the total variation distance between 64-bin histograms on [0, 1]."""
    distances = []
    for c in range(image.shape[-1]):
        mine, _ = np.histogram(image[..., c], bins=bins, range=(0.0, 1.0))
        theirs, _ = np.histogram(exemplar[..., c], bins=bins, range=(0.0, 1.0))
        distances.append(0.5 * np.abs(mine / mine.sum() - theirs / theirs.sum()).sum())
    return float(np.mean(distances))


def evaluation_seconds(params, exemplar: np.ndarray, loss: str, repeats: int) -> dict:
    """One jitted loss-and-gradient evaluation of the statistic alone, in the image."""
    x = np.random.default_rng(0).random(exemplar.shape).astype(np.float32)
    targets = texture_targets(params, exemplar, loss=loss)

    def total(pixels, t, p):
        return texture_loss(pixels, t, p, layer_weights=WEIGHTS, loss=loss)[0]

    evaluate = jax.jit(jax.value_and_grad(total))
    jax.block_until_ready(evaluate(x, targets, params))
    return timeit(lambda: jax.block_until_ready(evaluate(x, targets, params)), repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="L-BFGS steps of the texture-statistics rows")
    args = parser.parse_args()
    conditions = (f"{os.cpu_count()} CPU cores shared with other work (a long background computation and other "
                  "processes): absolute seconds are inflated and vary from run to run; the ratios to gram, "
                  "measured in the same run, are the figures to read")
    load = {"before": list(os.getloadavg())}  # 1, 5 and 15 minute averages
    params = random_vgg19(jax.random.PRNGKey(0))
    brick = load_image(SAMPLES / "brick.png")
    timing_rows, quality_rows = [], []

    def save(complete: bool) -> Path:
        """The results so far (a long run on a loaded machine leaves what it measured)."""
        load["after"] = list(os.getloadavg())
        return write_results("losses", {"config": vars(args), "conditions": conditions, "load average": load,
                                        "complete": complete, "timing": timing_rows, "quality": quality_rows})

    exemplar = np.asarray(resize(brick, args.quality_size, args.quality_size))
    noise = np.random.default_rng(0).random(exemplar.shape).astype(np.float32)
    start = {"histogram distance": histogram_distance(noise, exemplar),
             "spectrum distance": float(spectrum_distance(noise, exemplar))}
    quality_rows.append({"loss": "(the starting noise)", **start})
    for loss in LOSSES:
        config = TextureConfig(steps=args.steps, loss=loss, spectrum_weight=0.0)
        result = synthesize_texture(config, TextureInputs(exemplar), params, chunk=args.steps)
        image = result.images[0]
        quality_rows.append({"loss": loss, "histogram distance": histogram_distance(image, exemplar),
                             "spectrum distance": float(spectrum_distance(image, exemplar)),
                             "s/step": result.seconds / args.steps,
                             "evaluations": int(result.evaluations[0])})
        print(quality_rows[-1], flush=True)
        save(False)
    for size in (int(s) for s in args.sizes.split(",")):
        exemplar = np.asarray(resize(brick, size, size))
        times = {}
        for loss in LOSSES:
            times[loss] = evaluation_seconds(params, exemplar, loss, args.repeats)
            timing_rows.append({"size": size, "loss": loss, "s/evaluation (min)": times[loss]["min"],
                                "s/evaluation (median)": times[loss]["median"],
                                "/ gram": times[loss]["min"] / times["gram"]["min"]})
            print(timing_rows[-1], flush=True)
            save(False)
    path = save(True)
    print(f"texture statistics after {args.steps} L-BFGS steps at {args.quality_size} px (brick, spectrum weight 0)")
    print(markdown_table(quality_rows, ["loss", "histogram distance", "spectrum distance", "s/step", "evaluations"]))
    print("\none loss-and-gradient evaluation over relu1_1, pool1..pool4 (random VGG19 weights)")
    print(markdown_table(timing_rows, ["size", "loss", "s/evaluation (min)", "s/evaluation (median)", "/ gram"]))
    print(f"\n{conditions}; load average (1, 5, 15 min) {load['before']} before, {load['after']} after\nwrote {path}")


if __name__ == "__main__":
    main()
