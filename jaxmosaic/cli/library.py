"""`jaxmosaic library build / info`: index a tile set once, for fast mosaics."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Annotated

import jax
import typer

from jaxmosaic.cli._common import OverwriteOption, WeightsOption, guarded
from jaxmosaic.cli.console import echo, error_line, rate_progress
from jaxmosaic.cli._libraries import local_mesh, network_params, obtain_tile_library, source_paths
from jaxmosaic.cli._options import command
from jaxmosaic.config import settings_dict
from jaxmosaic.distributed import DistributedConfig, agree, start_distributed
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.live import LiveView, live_view
from jaxmosaic.io.outputs import check_outputs
from jaxmosaic.resources import check_disk, check_memory, memory_budget
from jaxmosaic.techniques.mosaic import (
    FeatureKind,
    LibraryConfig,
    TileLibrary,
    built_from,
    color_mode,
    feature_config,
    is_current,
    load_library,
    save_library,
)
from jaxmosaic.techniques.mosaic.stream import LibraryBuildConfig, build_folder, stream_disk, stream_library, stream_memory, stream_svd_k
from jaxmosaic.techniques.mosaic.stream import kept_chunks, tile_source

library_app = typer.Typer(help="Index a folder of tiles once, for fast mosaics.", no_args_is_help=True, rich_markup_mode="rich")


@library_app.command()
@guarded
@command(library=LibraryConfig, config=LibraryBuildConfig, distributed=DistributedConfig)
def build(
    tiles: Annotated[str, typer.Argument(help="A folder of tile images (searched recursively), 'gabor', or 'gabor-bank'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Library file to write (.npz).")],
    library: LibraryConfig,
    config: LibraryBuildConfig,
    distributed: DistributedConfig,
    weights: WeightsOption = None,
    force: Annotated[bool, typer.Option("--force", help="Index again even if the library is up to date.")] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Compute the features (and SVD) of a tile set and store them, re-indexing only when the folder changed.

    gabor-bank (or --stream) builds chunk by chunk: memory stays bounded whatever the number of
    tiles, a stopped build continues with --resume, chunks are shared over the local devices and,
    with --coordinator/--num-processes/--process-id, over several processes or machines (each
    embeds a contiguous share; D^T D is summed by a collective; process 0 writes OUT).
    """
    if out.suffix != ".npz":
        raise JaxmosaicError(f"--out {out}: a tile library file must end in .npz")
    web = config.web
    if web is not None and distributed.process_id:  # the processes of one machine would all bind the same port
        echo(f"--web: process 0 serves the live view; process {distributed.process_id} does not")
        web = None
    with live_view(web, command="library build", say=echo) as live:
        if config.streams(tiles) or distributed.active:
            _stream_build(tiles, out, library, config, distributed, weights, live, overwrite=overwrite)
        else:
            _build(tiles, out, library, weights, live, force=force, overwrite=overwrite, wait=config.wait)


def _build(tiles: str, out: Path, library: LibraryConfig, weights: str | None, live: LiveView | None, *, force: bool,
           overwrite: bool, wait: bool) -> None:
    """`build` in memory, unless the library is up to date."""
    check_outputs([], [*source_paths(tiles), *source_paths(weights)], files=[(out, "tile-library")], overwrite=overwrite,
                  wait=wait, say=echo)
    if out.is_file() and not force:
        with contextlib.suppress(JaxmosaicError):
            old = load_library(out)
            params = network_params(library.features or FeatureKind.color, weights, library.seed)
            wanted = feature_config(library, color_mode(library, tiles), None, params)
            folder = tiles if Path(tiles).is_dir() else None
            if is_current(old, wanted, folder=folder) and (library.svd_k == "auto" or (old.svd or {}).get("k", 0) == library.svd_k):
                echo(f"{out} is up to date ({len(old)} tiles); nothing to do")
                return
    made, _ = obtain_tile_library(tiles, library, weights, [], cache=False, live=live)
    save_library(out, made, inputs=source_paths(tiles))
    _say_skipped(made)
    energy = f", k={made.svd['k']} keeps {made.svd['energy']:.1%} of the energy" if made.svd else ""
    echo(f"indexed {len(made)} tiles ({made.features.shape[1]} {made.settings.kind} features{energy}) -> {out}")


def _stream_build(tiles: str, out: Path, library: LibraryConfig, config: LibraryBuildConfig, distributed: DistributedConfig,
                  weights: str | None, live: LiveView | None, *, overwrite: bool) -> None:
    """`build` chunk by chunk, over the local devices and the processes `distributed` names."""
    start_distributed(distributed, say=echo)
    processes, process = jax.process_count(), jax.process_index()
    with agree(on_failure="no process started") as shared:  # each process checks its own outputs, then all go on or none
        check_outputs([], [*source_paths(tiles), *source_paths(weights)], files=[(out, "tile-library")] if process == 0 else [],
                      folders=[(build_folder(out, processes, process), "library-build")], overwrite=overwrite,
                      wait=config.wait, say=echo)
        mode = color_mode(library, tiles)
        params = network_params(library.features or FeatureKind.color, weights, library.seed)
        settings = feature_config(library, mode, None, params)
        source = tile_source(tiles, settings, library.bank_grid)
        k = stream_svd_k(library.svd_k)
        check_memory(stream_memory(settings, min(config.chunk, source.count), source.count, k, render=source.render),
                     f"a streaming build in chunks of {config.chunk} (--chunk)", budget=memory_budget(config.max_memory),
                     hint="a smaller --chunk")
        check_disk(out.parent, stream_disk(settings, source.count) // max(1, processes),
                   f"the feature rows of {source.count} tiles")
        mesh = local_mesh(config.devices)
        shared.update({f"--{name.replace('_', '-')}": value for name, value in settings_dict(library).items()})
        shared.update({"--weights": settings.weights, "TILES": source.fingerprint, "--out": os.path.abspath(out),
                       "--chunk": config.chunk, "--num-processes": processes})
    try:
        with rate_progress(f"embedding {tiles}", unit="tiles") as progress:
            progress = live.counter(update=progress, unit="tiles") if live is not None else progress
            made = stream_library(source, settings, mode, out, params=params, weights=settings.weights, k=k, chunk=config.chunk,
                                  resume=config.resume, mesh=mesh, progress=progress, keep_work=config.keep_features, say=echo)
    except KeyboardInterrupt:
        error_line(_interrupted(out, processes, process))
        raise typer.Exit(130) from None
    if made is None:
        echo(f"process {jax.process_index()}: done; process 0 wrote {out}")
        return
    _say_skipped(made)
    rate = made.build["tiles_per_second"]
    resumed = made.build.get("resumed", 0)
    resumed = f", {resumed} read back from the stopped build" if resumed else ""
    echo(f"indexed {len(made)} tiles ({made.dimension} {made.settings.kind} features -> k={made.svd['k']} keeps "
         f"{made.svd['energy']:.1%} of the energy; {rate:.1f} tiles/s on process 0 over {made.build['devices']} device(s), "
         f"{made.build['processes']} process(es){resumed}) -> {out}")


def _interrupted(out: Path, processes: int, process: int) -> str:
    """The line a streaming build stopped by Ctrl-C ends with: what its build folder keeps, and how to go on."""
    kept = kept_chunks(out, processes=processes, process=process)
    if kept is None:
        return "interrupted; no build folder was kept to resume from"
    done, total = kept
    return (f"interrupted after {done} of {total} chunks; kept in {build_folder(out, processes, process)}; "
            "rerun with --resume to continue")


def _say_skipped(made: TileLibrary) -> None:
    if made.skipped:
        echo(f"skipped {len(made.skipped)} file(s) (unreadable, or symbolic links): {', '.join(made.skipped[:5])}"
             f"{' ...' if len(made.skipped) > 5 else ''}")


@library_app.command()
@guarded
def info(
    library_file: Annotated[Path, typer.Argument(help="A library .npz.")],
    tiles: Annotated[Path | None, typer.Option("--tiles", help="The folder a folder library was built from, to tell whether it is current (its own record of the folder is never walked).")] = None,
) -> None:
    """Describe a tile library: source, size, features, SVD, skipped files, and whether it is current."""
    library = load_library(library_file)
    if tiles is not None and not built_from(library, tiles):
        raise JaxmosaicError(f"{library_file}: built from {library.source}, not from the folder {tiles}")
    current = None if library.kind == "folder" and tiles is None else is_current(library, library.settings, folder=tiles)
    summary = {
        "kind": library.kind, "source": library.source, "tiles": len(library), "features": library.dimension,
        "settings": library.settings.as_dict(), "color": str(library.color),
        "svd": None if library.svd is None else {"k": library.svd["k"], "energy": library.svd["energy"],
                                                 "projected": library.projected},
        "bank": None if library.bank is None else ",".join(map(str, library.bank)), "build": library.build,
        "current": current, "skipped": library.skipped,
    }
    typer.echo(json.dumps(summary, indent=2))
