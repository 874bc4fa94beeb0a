"""`jaxmosaic texture`: texture synthesis from an exemplar (VGG19 Gram matrices plus the spectrum constraint)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from jaxmosaic.cli._common import WeightsOption, guarded, output_name, vgg_params
from jaxmosaic.cli._options import command
from jaxmosaic.cli._runner import Job, RunConfig, optimise
from jaxmosaic.color import luminance
from jaxmosaic.io.images import load_image
from jaxmosaic.pictures import beside
from jaxmosaic.techniques.texture import TextureConfig, TextureInputs, texture_memory, texture_problem

MASK_HELP = "Synthesise from the statistics of this region of the exemplar only (white = inside; the exemplar's size)."


@guarded
@command(config=TextureConfig, run=RunConfig)
def texture(
    exemplar: Annotated[Path, typer.Argument(help="The texture exemplar (grey or colour).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output image; with --variations N, OUT-1.png ... OUT-N.png.")],
    config: TextureConfig,
    run: RunConfig,
    continue_from: Annotated[Path | None, typer.Option("--continue", help="Continue optimising this earlier result (e.g. the OUT of a previous run) instead of starting from noise.")] = None,
    weights: WeightsOption = None,
    mask: Annotated[Path | None, typer.Option("--mask", help=MASK_HELP)] = None,
) -> None:
    """Synthesise a new texture like EXEMPLAR (Gatys et al. with the spectrum constraint of Liu et al.)."""
    outputs = [output_name(out, str(i + 1)) for i in range(config.variations)] if config.variations > 1 else [out]
    pictures = [(output_name(out, "side"), lambda inputs, images: beside(inputs.exemplar, images))]
    if config.tileable:
        pictures.append((output_name(out, "tiled"), lambda inputs, images: np.tile(images[0], (2, 2, 1))))
    start = [continue_from] if continue_from else []
    masks = [mask] if mask else []

    def load() -> TextureInputs:
        region = None if mask is None else np.asarray(luminance(load_image(mask)))[..., 0]
        return TextureInputs(load_image(exemplar), load_image(continue_from) if continue_from else None, str(exemplar),
                             mask=region, mask_name=str(mask))

    optimise(Job(technique="texture", config=config, out=out, outputs=outputs, inputs=[exemplar, *start, *masks], load=load,
                 memory=lambda inputs: texture_memory(config, inputs),
                 problem=lambda inputs: texture_problem(config, inputs, vgg_params(weights, config.seed)), pictures=pictures,
                 weights=weights), run)
