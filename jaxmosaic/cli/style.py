"""`jaxmosaic style`: neural style transfer (Gatys et al.), with checkpoints and batches of styles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jaxmosaic.cli._common import WeightsOption, guarded, output_name, vgg_params
from jaxmosaic.cli._options import command
from jaxmosaic.cli._runner import Job, RunConfig, optimise
from jaxmosaic.guides import load_regions, parse_region
from jaxmosaic.io.images import load_image
from jaxmosaic.pictures import tile_map
from jaxmosaic.techniques.style import (
    INITS,
    StyleConfig,
    StyleInputs,
    layer_sources,
    style_memory,
    style_problem,
    style_tiles,
)

REGION_HELP = ("A region, repeatable: MASK.png[=STYLE.png[:STYLE_MASK.png]][@WEIGHT] (white = inside); without =STYLE "
               "the next STYLE argument; LABELS.png#RRGGBB for one colour of a label image, LABELS.png#* for each.")


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
    region: Annotated[list[str] | None, typer.Option("--region", help=REGION_HELP)] = None,
) -> None:
    """Paint CONTENT in the style of STYLE (Gatys, Ecker and Bethge)."""
    init = [] if config.init in INITS else [Path(config.init)]
    regions = [parse_region(text) for text in region or ()]
    region_files = [Path(name) for spec in regions for name in (spec.mask, spec.style, spec.style_mask) if name]
    layers_from = layer_sources(config.style_layers_from) if config.style_layers_from else None
    extra = [*region_files, *([Path(layers_from[1])] if layers_from else [])]
    outputs = [output_name(out, f"style{i + 1}") for i in range(len(styles))] if config.batch else [out]

    def load() -> StyleInputs:
        layer_styles = None
        if layers_from:
            image = load_image(layers_from[1])
            layer_styles = {name: image for name in layers_from[0]}
        return StyleInputs(load_image(content), [load_image(path) for path in styles],
                           load_image(init[0]) if init else None, [str(path) for path in styles],
                           regions=load_regions(region or ()), layer_styles=layer_styles)


    def tiles_picture(inputs: StyleInputs, images):
        last = style_tiles(config, inputs)[-1]
        grid, shape = (last.grid, last.shape) if last.tile is not None else (((0, 0),), (last.height, last.width))
        return tile_map(images[0], grid, shape, overlap=config.overlap)

    pictures = [(output_name(out, "tiles", ".png"), tiles_picture)] if preview else []
    optimise(Job(technique="style", config=config, out=out, outputs=outputs, inputs=[content, *styles, *init, *extra], load=load,
                 memory=lambda inputs: style_memory(config, inputs),
                 problem=lambda inputs: style_problem(config, inputs, vgg_params(weights, config.seed)), pictures=pictures,
                 weights=weights), run)
