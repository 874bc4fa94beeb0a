"""`jaxmosaic style`: neural style transfer (Gatys et al.), with checkpoints and batches of styles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jaxmosaic.cli._common import WeightsOption, guarded, output_name, vgg_params
from jaxmosaic.cli._options import command
from jaxmosaic.cli._runner import Job, RunConfig, optimise
from jaxmosaic.io.images import load_image
from jaxmosaic.pictures import tile_map
from jaxmosaic.techniques.style import INITS, StyleConfig, StyleInputs, style_memory, style_problem, style_tiles


@guarded
@command(config=StyleConfig, run=RunConfig)
def style(
    content: Annotated[Path, typer.Argument(help="The content image.")],
    styles: Annotated[list[Path], typer.Argument(help="One or more style images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output image; with --batch, OUT-style1.png, OUT-style2.png, ...")],
    config: StyleConfig,
    run: RunConfig,
    weights: WeightsOption = None,
    preview: Annotated[bool, typer.Option("--preview", help="Also write OUT-tiles.png: the tiles of the last scale over a thumbnail of the result.")] = False,
) -> None:
    """Paint CONTENT in the style of STYLE (Gatys, Ecker and Bethge)."""
    init = [] if config.init in INITS else [Path(config.init)]
    outputs = [output_name(out, f"style{i + 1}") for i in range(len(styles))] if config.batch else [out]

    def load() -> StyleInputs:
        return StyleInputs(load_image(content), [load_image(path) for path in styles],
                           load_image(init[0]) if init else None, [str(path) for path in styles])


    def tiles_picture(inputs: StyleInputs, images):
        last = style_tiles(config, inputs)[-1]
        grid, shape = (last.grid, last.shape) if last.tile is not None else (((0, 0),), (last.height, last.width))
        return tile_map(images[0], grid, shape, overlap=config.overlap)

    pictures = [(output_name(out, "tiles", ".png"), tiles_picture)] if preview else []
    optimise(Job(technique="style", config=config, out=out, outputs=outputs, inputs=[content, *styles, *init], load=load,
                 memory=lambda inputs: style_memory(config, inputs),
                 problem=lambda inputs: style_problem(config, inputs, vgg_params(weights, config.seed)), pictures=pictures,
                 weights=weights), run)
