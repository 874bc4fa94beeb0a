"""`jaxmosaic mosaic` and `jaxmosaic tiles gabor`: photomosaics and the tiles they are made of."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from jaxmosaic.cli._common import WaitOption, WeightsOption, guarded, output_name
from jaxmosaic.cli.console import echo, rate_progress
from jaxmosaic.cli._libraries import local_mesh, obtain_tile_library, source_paths
from jaxmosaic.cli._common import write_metrics
from jaxmosaic.cli._options import command
from jaxmosaic.config import setting, settings_dict, whole
from jaxmosaic.image import resize
from jaxmosaic.io.outputs import check_outputs
from jaxmosaic.io.folders import OutputFolder
from jaxmosaic.io.locks import wait_setting
from jaxmosaic.io.images import load_image, save_image
from jaxmosaic.pictures import contact_sheet, side_by_side
from jaxmosaic.resources import check_memory
from jaxmosaic.techniques.mosaic import (
    FeatureKind,
    GaborTilesConfig,
    LibraryConfig,
    MosaicConfig,
    gabor_colors,
    gabor_parameters,
    gabor_tile_name,
    gabor_tiles,
    MosaicColorConfig,
    check_recolorable,
    mosaic_cells,
    mosaic_memory,
    palette_mosaic,
)

TilesOption = Annotated[str, typer.Option(help="'gabor' (built-in Gabor tiles), 'gabor-bank' (the original article's 312,500, built once into the cache), a folder of images, or a library .npz from `library build`.")]


@dataclasses.dataclass(frozen=True)
class MosaicRunConfig:
    """What a mosaic run writes besides its image, and the devices it runs on."""

    preview: bool = setting(False, "Also write OUT-preview.png: target and mosaic side by side.")
    metrics: Path | None = setting(None, "Write a JSON summary here.")
    overwrite: bool = setting(False, "Replace output files that exist although jaxmosaic did not write them.")
    wait: bool = wait_setting()
    devices: int | None = setting(None, "Local devices to share the work over (default: all).")

    def __post_init__(self):
        if self.devices is not None:
            whole("devices", self.devices, minimum=1)


@guarded
@command(config=MosaicConfig, library=LibraryConfig, run=MosaicRunConfig, colors=MosaicColorConfig)
def mosaic(
    target: Annotated[Path, typer.Argument(help="The picture to rebuild from tiles.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output image.")],
    config: MosaicConfig,
    library: LibraryConfig,
    run: MosaicRunConfig,
    colors: MosaicColorConfig,
    tiles: TilesOption = "gabor",
    weights: WeightsOption = None,
) -> None:
    """Rebuild TARGET from tiles: each patch becomes its best-matching tile."""
    start = time.perf_counter()
    preview_path = output_name(out, "preview", ".png") if run.preview else None
    inputs = [target, *source_paths(tiles)]
    check_outputs([], [*inputs, *source_paths(weights)], images=[out, preview_path], files=[(run.metrics, "metrics")],
                  overwrite=run.overwrite, wait=run.wait, say=echo)
    image = load_image(target)
    config.check_features(library.features)  # a library file's own kind is checked once it is read
    dimension = (library.features or FeatureKind.color).typical_dimension
    cells = mosaic_cells(config, image)  # with --subdivide: the real cells, not every cell split at every level
    check_memory(mosaic_memory(config, image.shape, dimension, cells=None if cells is None else len(cells), colors=colors),
                 f"a mosaic of {target}")
    mesh = local_mesh(run.devices)
    tile_library, params = obtain_tile_library(tiles, library, weights, inputs, cache=True)
    if colors.color_tiles_to_target:
        check_recolorable(tile_library)
        check_memory(mosaic_memory(config, image.shape, tile_library.dimension, cells=None if cells is None else len(cells),
                                   colors=colors, tiles=len(tile_library)), f"a mosaic of {target} with recoloured tiles")
    pooling = colors.color_target_to_tiles or colors.color_tiles_to_target  # renders every tile once: show it
    with rate_progress("pooling the tiles' colours") if pooling else contextlib.nullcontext() as progress:
        result = palette_mosaic(config, colors, image, tile_library, params=params, mesh=mesh, progress=progress)
    save_image(out, result.image, inputs=inputs)
    written = [out]
    if preview_path:
        height = min(512, result.image.shape[0])
        width = round(result.image.shape[1] * height / result.image.shape[0])
        save_image(preview_path, side_by_side([resize(image, height, width), resize(result.image, height, width)], gap=0),
                   inputs=inputs)
        written.append(preview_path)
    stats = result.stats
    grid = f"{stats['cols']}x{stats['rows']}" if cells is None else f"{stats['patches']} (in {stats['cols']}x{stats['rows']})"
    echo(f"{grid} cells from {stats['tiles']} tiles ({stats['distinct_tiles']} used, at most "
         f"{stats['max_uses']}x each); k={stats['k'] or 'exact'} keeps {stats['energy_kept']:.1%} of the energy; "
         f"mean {config.score} score {stats['mean_score']:.4f}; matched in {stats['match_seconds']:.3f} s")
    if config.subdivide is not None:
        echo("subdivided cells: " + ", ".join(f"{count} of {size} px" for size, count in stats["cells_per_size"].items()))
    if "assignment" in stats:
        figures = stats["assignment"]
        echo(f"optimal assignment: total score {-figures['cost']:.4f} (greedy {-figures['greedy_cost']:.4f}), certified in "
             f"{figures['rounds']} round(s) with {figures['pairs_added']} pairs added, {figures['seconds']:.3f} s")
    echo(f"wrote {', '.join(map(str, written))}")
    settings = {**settings_dict(config), **settings_dict(library), **settings_dict(colors), "tiles": tiles, "color": str(tile_library.color),
                "features": tile_library.settings.as_dict(), "weights": weights or "lookup"}
    write_metrics(run.metrics, "mosaic", settings, inputs, written, seconds=time.perf_counter() - start,
                  compile_seconds=stats["match_compile_seconds"], mosaic=stats,
                  library={"tiles": len(tile_library), "kind": tile_library.kind, "k": stats["k"], "energy_kept": stats["energy_kept"],
                           "features": stats["features"], "match_seconds": stats["match_seconds"], "build": tile_library.build})


tiles_app = typer.Typer(help="Generate tile sets.", no_args_is_help=True, rich_markup_mode="rich")


@tiles_app.command()
@guarded
@command(config=GaborTilesConfig)
def gabor(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the tiles into (created, or one this command wrote before).")],
    config: GaborTilesConfig,
    wait: WaitOption = False,
) -> None:
    """Write the built-in Gabor tiles (OpenCV's getGaborKernel over a grid) as PNG files."""
    check_outputs([], [], folders=[(out_dir, "tiles")], wait=wait, say=echo)
    parameters = gabor_parameters()
    count = len(parameters) * config.colors
    check_memory(count * config.size**2 * 3 * 4 * 3, f"{count} tiles of {config.size}x{config.size}")
    images = np.asarray(gabor_tiles(parameters, config.size, gabor_colors(config.colors)))
    folder = OutputFolder(out_dir, "tiles", say=echo)
    names = [gabor_tile_name(index, parameters, config.colors) for index in range(len(images))]
    folder.expect([*names, "contact-sheet.png"] if config.sheet else names)
    for name, tile in zip(names, images):
        save_image(folder.file(name), tile)
    if config.sheet:
        save_image(folder.file("contact-sheet.png"), contact_sheet(images, thumb=min(config.size, 48)))
    folder.finish()
    echo(f"wrote {len(images)} tiles of {config.size}x{config.size} to {out_dir}")
