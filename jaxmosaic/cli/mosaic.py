"""`jaxmosaic mosaic`, `jaxmosaic tiles gabor` and `jaxmosaic library ...`: photomosaics."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from jaxmosaic.cli._common import MetricsOption, OverwriteOption, WeightsOption, count_progress, echo, guarded, output_name
from jaxmosaic.cli._common import vgg_params
from jaxmosaic.cli._common import write_metrics
from jaxmosaic.cli._options import command
from jaxmosaic.config import settings_dict
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.image import resize
from jaxmosaic.io.outputs import check_outputs
from jaxmosaic.io.folders import OutputFolder
from jaxmosaic.io.images import load_image, save_image
from jaxmosaic.pictures import contact_sheet, side_by_side
from jaxmosaic.resources import check_memory
from jaxmosaic.techniques.mosaic import (
    FeatureKind,
    GaborTilesConfig,
    LibraryConfig,
    MosaicConfig,
    TileLibrary,
    color_mode,
    feature_config,
    gabor_colors,
    gabor_parameters,
    gabor_tile_name,
    gabor_tiles,
    is_current,
    load_library,
    make_mosaic,
    mosaic_memory,
    obtain_library,
    save_library,
)
from jaxmosaic.weights import cache_dir

TilesOption = Annotated[str, typer.Option(help="'gabor' (built-in Gabor tiles), a folder of images, or a library .npz from `library build`.")]


def _tile_library(tiles: str, config: LibraryConfig, weights: str | None, inputs, *, cache: bool) -> tuple[TileLibrary, object]:
    """(the library for a tile source, the VGG19 params its features need or None)."""
    loaded = load_library(tiles) if Path(tiles).is_file() else None
    mode = color_mode(config, tiles, loaded)
    kind = config.features or (loaded.settings.kind if loaded is not None else FeatureKind.color)
    params = vgg_params(weights, config.seed) if kind == FeatureKind.vgg else None
    settings = feature_config(config, mode, loaded, params)
    with count_progress(f"indexing {tiles}") as progress:
        library = obtain_library(tiles, config, settings, mode, params=params, loaded=loaded, progress=progress, say=echo,
                                 cache=cache_dir() / "libraries" if cache else None, inputs=inputs)
    return library, params


def _sources(source: str | None) -> list[Path]:
    """A tile source or a --weights value as an input path (none for gabor, random or the lookup)."""
    return [Path(source)] if source not in (None, "gabor", "random") and Path(source).exists() else []


@guarded
@command(config=MosaicConfig, library=LibraryConfig)
def mosaic(
    target: Annotated[Path, typer.Argument(help="The picture to rebuild from tiles.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output image.")],
    config: MosaicConfig,
    library: LibraryConfig,
    tiles: TilesOption = "gabor",
    weights: WeightsOption = None,
    preview: Annotated[bool, typer.Option("--preview", help="Also write OUT-preview.png: target and mosaic side by side.")] = False,
    metrics: MetricsOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Rebuild TARGET from tiles: each patch becomes its best-matching tile."""
    start = time.perf_counter()
    preview_path = output_name(out, "preview", ".png") if preview else None
    inputs = [target, *_sources(tiles)]
    check_outputs([metrics], [*inputs, *_sources(weights)], images=[out, preview_path], overwrite=overwrite)
    image = load_image(target)
    check_memory(mosaic_memory(config, image.shape, 512 if library.features == FeatureKind.vgg else 64), f"a mosaic of {target}")
    tile_library, params = _tile_library(tiles, library, weights, inputs, cache=True)
    result = make_mosaic(config, image, tile_library, params)
    save_image(out, result.image, inputs=inputs)
    written = [out]
    if preview_path:
        height = min(512, result.image.shape[0])
        width = round(result.image.shape[1] * height / result.image.shape[0])
        save_image(preview_path, side_by_side([resize(image, height, width), resize(result.image, height, width)], gap=0),
                   inputs=inputs)
        written.append(preview_path)
    stats = result.stats
    echo(f"{stats['cols']}x{stats['rows']} cells from {stats['tiles']} tiles ({stats['distinct_tiles']} used, at most "
         f"{stats['max_uses']}x each); k={stats['k'] or 'exact'} keeps {stats['energy_kept']:.1%} of the energy; "
         f"mean score {stats['mean_score']:.4f}")
    echo(f"wrote {', '.join(map(str, written))}")
    settings = {**settings_dict(config), **settings_dict(library), "tiles": tiles, "color": str(tile_library.color),
                "features": tile_library.settings.as_dict(), "weights": weights or "lookup"}
    write_metrics(metrics, "mosaic", settings, inputs, written, seconds=time.perf_counter() - start,
                  compile_seconds=stats["match_compile_seconds"], mosaic=stats)


tiles_app = typer.Typer(help="Generate tile sets.", no_args_is_help=True, rich_markup_mode="rich")


@tiles_app.command()
@guarded
@command(config=GaborTilesConfig)
def gabor(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the tiles into (created, or one this command wrote before).")],
    config: GaborTilesConfig,
) -> None:
    """Write the built-in Gabor tiles (OpenCV's getGaborKernel over a grid) as PNG files."""
    check_outputs([], [], folders=[(out_dir, "tiles")])
    parameters = gabor_parameters()
    count = len(parameters) * config.colors
    check_memory(count * config.size**2 * 3 * 4 * 3, f"{count} tiles of {config.size}x{config.size}")
    images = np.asarray(gabor_tiles(parameters, config.size, gabor_colors(config.colors)))
    folder = OutputFolder(out_dir, "tiles")
    names = [gabor_tile_name(index, parameters, config.colors) for index in range(len(images))]
    folder.expect([*names, "contact-sheet.png"] if config.sheet else names)
    for name, tile in zip(names, images):
        save_image(folder.file(name), tile)
    if config.sheet:
        save_image(folder.file("contact-sheet.png"), contact_sheet(images, thumb=min(config.size, 48)))
    folder.finish()
    echo(f"wrote {len(images)} tiles of {config.size}x{config.size} to {out_dir}")


library_app = typer.Typer(help="Index a folder of tiles once, for fast mosaics.", no_args_is_help=True, rich_markup_mode="rich")


@library_app.command()
@guarded
@command(library=LibraryConfig)
def build(
    tiles: Annotated[str, typer.Argument(help="A folder of tile images (searched recursively), or 'gabor'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Library file to write (.npz).")],
    library: LibraryConfig,
    weights: WeightsOption = None,
    force: Annotated[bool, typer.Option("--force", help="Index again even if the library is up to date.")] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Compute the features (and SVD) of a tile set and store them, re-indexing only when the folder changed."""
    if out.suffix != ".npz":
        raise JaxmosaicError(f"--out {out}: a tile library file must end in .npz")
    check_outputs([out], [*_sources(tiles), *_sources(weights)], overwrite=overwrite)
    if out.is_file() and not force:
        with contextlib.suppress(JaxmosaicError):
            old = load_library(out)
            params = vgg_params(weights, library.seed) if library.features == FeatureKind.vgg else None
            wanted = feature_config(library, color_mode(library, tiles), None, params)
            if is_current(old, wanted) and (library.svd_k == "auto" or (old.svd or {}).get("k", 0) == library.svd_k):
                echo(f"{out} is up to date ({len(old)} tiles); nothing to do")
                return
    made, _ = _tile_library(tiles, library, weights, [], cache=False)
    save_library(out, made, inputs=_sources(tiles))
    if made.skipped:
        echo(f"skipped {len(made.skipped)} unreadable file(s): {', '.join(made.skipped[:5])}{' ...' if len(made.skipped) > 5 else ''}")
    energy = f", k={made.svd['k']} keeps {made.svd['energy']:.1%} of the energy" if made.svd else ""
    echo(f"indexed {len(made)} tiles ({made.features.shape[1]} {made.settings.kind} features{energy}) -> {out}")


@library_app.command()
@guarded
def info(library_file: Annotated[Path, typer.Argument(help="A library .npz.")]) -> None:
    """Describe a tile library: source, size, features, SVD, skipped files, and whether it is current."""
    library = load_library(library_file)
    summary = {
        "kind": library.kind, "source": library.source, "tiles": len(library), "features": library.features.shape[1],
        "settings": library.settings.as_dict(), "color": str(library.color),
        "svd": None if library.svd is None else {"k": library.svd["k"], "energy": library.svd["energy"]},
        "current": is_current(library, library.settings), "skipped": library.skipped,
    }
    typer.echo(json.dumps(summary, indent=2))
