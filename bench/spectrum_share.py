"""How large a share of the texture loss the spectrum term should have (README, "Texture synthesis").

For each share s (0 turns the term off), beta is set so that the spectrum term is s of the loss
on the reference noise image (`calibrate_spectrum_weight`), and a texture of the brick sample is
synthesised (random VGG19 weights, L-BFGS, the default layers). Reported per share:

- gram end / start: the Gram term of the result over that of the starting noise;
- spectrum distance ||x - P(x)|| / ||x|| of the result as written (clipped to [0, 1]) and of the
  optimised pixels before clipping (P: the projection on the target's Fourier modulus);
- radial spectrum error: the mean absolute difference of the radially averaged log10 power
  spectra (`radial_power_spectrum`, 32 rings, frequency in cycles per pixel) of the result and of
  the exemplar at its own size (the spectrum target keeps the exemplar's frequencies per pixel at
  any output size, as random-phase-noise synthesis does), and against the spectrum target itself;
- the spectrum term's share of the loss at the end.

    python bench/spectrum_share.py [--size 128] [--steps 300] [--shares 0,0.02,0.1,0.3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, write_results  # noqa: E402

from jaxmosaic import TextureConfig, TextureInputs, load_image, random_vgg19, synthesize_texture  # noqa: E402
from jaxmosaic.spectrum import radial_power_spectrum, spectrum_distance  # noqa: E402
from jaxmosaic.techniques.texture import calibrate_spectrum_weight, texture_exemplar, texture_loss, texture_targets  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--shares", default="0,0.02,0.1,0.3")
    parser.add_argument("--exemplar", default="brick.png")
    args = parser.parse_args()
    params = random_vgg19(jax.random.PRNGKey(0))
    exemplar = np.asarray(load_image(SAMPLES / args.exemplar))
    base = TextureConfig(size=args.size, steps=args.steps, spectrum_weight=0.0)
    grey = texture_exemplar(base, TextureInputs(exemplar))  # one channel for a grey exemplar, as the synthesis sees it
    height, width = base.output_size(grey.shape)
    channels = grey.shape[-1]
    targets = texture_targets(params, grey, size=(height, width), layers=base.layers, pooling=base.pooling)
    noise = jax.random.uniform(jax.random.PRNGKey(base.seed), (height, width, channels), jnp.float32)
    weights = base.layer_weight_map
    _, start_terms = texture_loss(noise, targets, params, layer_weights=weights, pooling=base.pooling)
    reference = radial_power_spectrum(jnp.asarray(grey, jnp.float32))
    target = radial_power_spectrum(targets.spectrum)
    rows = []
    for share in (float(s) for s in args.shares.split(",")):
        beta = 0.0 if share == 0 else calibrate_spectrum_weight(params, targets, weights, channels=channels, share=share,
                                                                pooling=base.pooling)
        config = TextureConfig(size=args.size, steps=args.steps, spectrum_weight=beta)
        solution = synthesize_texture(config, TextureInputs(exemplar), params)
        image = jnp.asarray(solution.images[0])
        terms = solution.loss[0]
        row = {"share": share, "beta": beta, "gram end / start": terms["gram"] / float(start_terms["gram"]),
               "spectrum distance": float(spectrum_distance(image, targets.spectrum)),
               "unclipped": float(spectrum_distance(jnp.asarray(solution.params[0]), targets.spectrum)),
               "radial spectrum error": float(jnp.mean(jnp.abs(radial_power_spectrum(image) - reference))),
               "vs target": float(jnp.mean(jnp.abs(radial_power_spectrum(image) - target))),
               "spectrum share at the end": beta * terms["spectrum"] / terms["total"] if share else 0.0,
               "seconds": solution.seconds}
        rows.append(row)
        print(markdown_table([row], list(row)), flush=True)
    path = write_results("spectrum-share", {"config": vars(args), "size": [width, height], "rows": rows})
    print(f"\nthe spectrum term's share: {args.exemplar} at {width}x{height}, {args.steps} L-BFGS steps, random VGG19 weights")
    print(markdown_table(rows, list(rows[0])))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
