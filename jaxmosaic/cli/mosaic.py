"""`jaxmosaic mosaic`, `jaxmosaic tiles gabor` and `jaxmosaic library ...`: photomosaics."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Annotated

import jax
import numpy as np
import typer

from jaxmosaic.cli._common import MetricsOption, OverwriteOption, WeightsOption, echo, guarded, output_name, rate_progress
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
from jaxmosaic.resources import check_disk, check_memory, memory_budget
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
from jaxmosaic.optimize import device_mesh
from jaxmosaic.techniques.mosaic.bank import BANK
from jaxmosaic.techniques.mosaic.stream import stream_library, stream_memory, tile_source
from jaxmosaic.weights import cache_dir

TilesOption = Annotated[str, typer.Option(help="'gabor' (built-in Gabor tiles), 'gabor-bank' (the original article's 312,500, built once into the cache), a folder of images, or a library .npz from `library build`.")]
DevicesOption = Annotated[int | None, typer.Option(help="Local devices to share the work over (default: all).", min=1)]


def _network_params(kind: FeatureKind, weights: str | None, seed: int):
    """The weights `kind` features need (VGG19 or AlexNet), or None for colour features."""
    return vgg_params(weights, seed, arch=kind.network) if kind.network else None


def _mesh(devices: int | None):
    """A mesh over the first `devices` local devices (default all), or None for one."""
    try:
        return device_mesh(devices, local=True)
    except ValueError as error:
        raise JaxmosaicError(f"--devices {devices}: {error}") from None


def _tile_library(tiles: str, config: LibraryConfig, weights: str | None, inputs, *, cache: bool) -> tuple[TileLibrary, object]:
    """(the library for a tile source, the network params its features need or None)."""
    loaded = load_library(tiles) if Path(tiles).is_file() else None
    mode = color_mode(config, tiles, loaded)
    kind = config.features or (loaded.settings.kind if loaded is not None else FeatureKind.color)
    params = _network_params(FeatureKind(kind), weights, config.seed)
    settings = feature_config(config, mode, loaded, params)
    with rate_progress(f"indexing {tiles}") as progress:
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
    devices: DevicesOption = None,
) -> None:
    """Rebuild TARGET from tiles: each patch becomes its best-matching tile."""
    start = time.perf_counter()
    preview_path = output_name(out, "preview", ".png") if preview else None
    inputs = [target, *_sources(tiles)]
    check_outputs([metrics], [*inputs, *_sources(weights)], images=[out, preview_path], overwrite=overwrite)
    image = load_image(target)
    dimension = {FeatureKind.vgg: 512, FeatureKind.alexnet: 9216}.get(library.features, 64)
    check_memory(mosaic_memory(config, image.shape, dimension), f"a mosaic of {target}")
    mesh = _mesh(devices)
    tile_library, params = _tile_library(tiles, library, weights, inputs, cache=True)
    result = make_mosaic(config, image, tile_library, params, mesh=mesh)
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
         f"mean {config.score} score {stats['mean_score']:.4f}; matched in {stats['match_seconds']:.3f} s")
    echo(f"wrote {', '.join(map(str, written))}")
    settings = {**settings_dict(config), **settings_dict(library), "tiles": tiles, "color": str(tile_library.color),
                "features": tile_library.settings.as_dict(), "weights": weights or "lookup"}
    write_metrics(metrics, "mosaic", settings, inputs, written, seconds=time.perf_counter() - start,
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
    tiles: Annotated[str, typer.Argument(help="A folder of tile images (searched recursively), 'gabor', or 'gabor-bank'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Library file to write (.npz).")],
    library: LibraryConfig,
    weights: WeightsOption = None,
    force: Annotated[bool, typer.Option("--force", help="Index again even if the library is up to date.")] = False,
    overwrite: OverwriteOption = False,
    stream: Annotated[bool, typer.Option("--stream", help="Build chunk by chunk in bounded memory (always for gabor-bank): the library then holds D_k = D V_k, not D.")] = False,
    chunk: Annotated[int, typer.Option(help="Streaming: tiles embedded together.", min=1, max=65536)] = 256,
    resume: Annotated[bool, typer.Option("--resume", help="Streaming: continue a stopped build from its last finished chunk (OUT.build).")] = False,
    keep_features: Annotated[bool, typer.Option("--keep-features", help="Streaming: keep the build folder with every tile's full feature row.")] = False,
    devices: DevicesOption = None,
    max_memory: Annotated[float | None, typer.Option(help="Streaming: GiB the build may use (default: what is free).", min=0.01)] = None,
    coordinator: Annotated[str | None, typer.Option(help="Several processes: the coordinator's HOST:PORT (jax.distributed), or 'auto' for a cluster's environment.")] = None,
    num_processes: Annotated[int | None, typer.Option(help="Several processes: how many.", min=1)] = None,
    process_id: Annotated[int | None, typer.Option(help="Several processes: this one's id, 0 to num-processes - 1.", min=0)] = None,
) -> None:
    """Compute the features (and SVD) of a tile set and store them, re-indexing only when the folder changed.

    gabor-bank (or --stream) builds chunk by chunk: memory stays bounded whatever the number of
    tiles, a stopped build continues with --resume, chunks are shared over the local devices and,
    with --coordinator/--num-processes/--process-id, over several processes or machines (each
    embeds a contiguous share; D^T D is summed by a collective; process 0 writes OUT).
    """
    if out.suffix != ".npz":
        raise JaxmosaicError(f"--out {out}: a tile library file must end in .npz")
    distributed = coordinator is not None or num_processes is not None or process_id is not None
    if tiles == BANK or stream or resume or distributed or keep_features:
        _stream_build(tiles, out, library, weights, overwrite=overwrite, chunk=chunk, resume=resume, keep=keep_features,
                      devices=devices, max_memory=max_memory, coordinator=coordinator, num_processes=num_processes,
                      process_id=process_id)
        return
    check_outputs([out], [*_sources(tiles), *_sources(weights)], overwrite=overwrite)
    if out.is_file() and not force:
        with contextlib.suppress(JaxmosaicError):
            old = load_library(out)
            params = _network_params(FeatureKind(library.features or FeatureKind.color), weights, library.seed)
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


def _start_processes(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """`jax.distributed.initialize` from the flags (all three), or from a cluster's environment
    (--coordinator auto); nothing for one process."""
    if coordinator is None and num_processes is None and process_id is None:
        return
    if coordinator == "auto":
        jax.distributed.initialize()
        return
    if coordinator is None or num_processes is None or process_id is None:
        raise JaxmosaicError("--coordinator, --num-processes and --process-id go together (or --coordinator auto on a cluster)")
    if process_id >= num_processes:
        raise JaxmosaicError(f"--process-id {process_id}: must be below --num-processes {num_processes}")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise JaxmosaicError(f"--coordinator {coordinator}: expected HOST:PORT")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def _stream_build(tiles: str, out: Path, library: LibraryConfig, weights: str | None, *, overwrite: bool, chunk: int, resume: bool,
                  keep: bool, devices: int | None, max_memory: float | None, coordinator, num_processes, process_id) -> None:
    _start_processes(coordinator, num_processes, process_id)
    leader = jax.process_index() == 0
    inputs = [*_sources(tiles), *_sources(weights)]
    if leader:
        check_outputs([out], inputs, overwrite=overwrite)
    mode = color_mode(library, tiles)
    kind = FeatureKind(library.features or FeatureKind.color)
    params = _network_params(kind, weights, library.seed)
    settings = feature_config(library, mode, None, params)
    source = tile_source(tiles, settings, library.bank_grid)
    k = 100 if library.svd_k == 0 else library.svd_k
    dimension = settings.dimension or (512 if kind == FeatureKind.vgg else 64)
    needed = stream_memory(settings, dimension, chunk, source.count, 100 if k == "auto" else int(k))
    check_memory(needed, f"a streaming build in chunks of {chunk}", budget=memory_budget(max_memory), hint="a smaller --chunk")
    check_disk(out.parent, source.count * dimension * 4 // max(1, jax.process_count()), f"the feature rows of {source.count} tiles")
    mesh = _mesh(devices)
    with rate_progress(f"embedding {tiles}", unit="tiles") as progress:
        made = stream_library(source, settings, mode, out, params=params, weights=settings.weights, k=k, chunk=chunk, resume=resume,
                              mesh=mesh, progress=progress, keep_work=keep, say=echo)
    if made is None:
        echo(f"process {jax.process_index()}: done; process 0 writes {out}")
        return
    if made.skipped:
        echo(f"skipped {len(made.skipped)} unreadable file(s): {', '.join(made.skipped[:5])}{' ...' if len(made.skipped) > 5 else ''}")
    rate = made.build["tiles_per_second"]
    echo(f"indexed {len(made)} tiles ({dimension} {settings.kind} features -> k={made.svd['k']} keeps {made.svd['energy']:.1%} "
         f"of the energy; {rate:.1f} tiles/s on process 0 over {made.build['devices']} device(s), "
         f"{made.build['processes']} process(es)) -> {out}")


@library_app.command()
@guarded
def info(library_file: Annotated[Path, typer.Argument(help="A library .npz.")]) -> None:
    """Describe a tile library: source, size, features, SVD, skipped files, and whether it is current."""
    library = load_library(library_file)
    summary = {
        "kind": library.kind, "source": library.source, "tiles": len(library), "features": library.dimension,
        "settings": library.settings.as_dict(), "color": str(library.color),
        "svd": None if library.svd is None else {"k": library.svd["k"], "energy": library.svd["energy"],
                                                 "projected": library.projected},
        "bank": None if library.bank is None else ",".join(map(str, library.bank)), "build": library.build,
        "current": is_current(library, library.settings), "skipped": library.skipped,
    }
    typer.echo(json.dumps(summary, indent=2))
