"""`jaxmosaic mosaic`, `jaxmosaic tiles gabor` and `jaxmosaic library ...`: photomosaics."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from jaxmosaic.cli._common import echo, err_console, guarded, output_name, vgg_params


class Features(str, Enum):
    color = "color"
    vgg = "vgg"


class ColorMode(str, Enum):
    auto = "auto"
    none = "none"
    multiply = "multiply"
    transfer = "transfer"
    blend = "blend"


class Fit(str, Enum):
    resize = "resize"
    crop = "crop"


FeaturesOption = Annotated[Features | None, typer.Option(help="color (weight-free Lab grid means) or vgg (a VGG19 layer); default: the library's, else color.")]
LayerOption = Annotated[str, typer.Option(help="vgg features: the VGG19 layer.")]
PoolOption = Annotated[str, typer.Option(help="vgg features: 'mean' (spatial average) or 'flat' (the whole map).")]
WeightsOption = Annotated[str | None, typer.Option(help="vgg features: weights folder or .pth, or 'random' (default: $JAXMOSAIC_WEIGHTS, then the cache).")]
SeedOption = Annotated[int, typer.Option(help="Seed for --weights random.")]
SvdKOption = Annotated[str, typer.Option(help="SVD dimensions kept: 'auto' (99.8% of the tiles' spread, at most 100), a number, or 0 for exact matching.")]
GaborColorsOption = Annotated[int, typer.Option(help="gabor tiles: 1 for grey tiles, N for grey plus N-1 tinted copies of each.")]


@contextlib.contextmanager
def _feature_progress(label: str) -> Iterator:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _weights_id(params) -> str:
    import numpy as np

    return hashlib.sha256(np.asarray(params["conv1_1"]["kernel"]).tobytes()).hexdigest()[:16]


def _settings(kind: str, view: str, layer: str, pool: str, weights: str | None, seed: int):
    """(feature settings, VGG params or None)."""
    from jaxmosaic.tile_library import feature_settings
    from jaxmosaic.vgg import check_layers

    if kind == "vgg":
        check_layers((layer,), "--layer")
        if pool not in ("mean", "flat"):
            raise ValueError(f"--pool must be 'mean' or 'flat', got {pool!r}")
        params = vgg_params(weights, seed)
        return feature_settings("vgg", view, layer=layer, pool=pool, weights_id=_weights_id(params)), params
    return feature_settings("color", view), None


def _svd_k(text: str, features) -> int:
    from jaxmosaic.tile_library import auto_svd_k

    if text == "auto":
        return auto_svd_k(features)
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--svd-k {text!r}: expected 'auto' or a whole number") from None


def _obtain_library(tiles: str, settings: dict, params, gabor_colors: int, *, inputs=(), loaded=None):
    """The library for `--tiles`: "gabor", a folder (indexed once, cached until it changes), or a
    .npz (`loaded`, if the caller has read it already)."""
    from jaxmosaic.tile_library import build_library, gabor_colors as tints, is_current, load_library, save_library
    from jaxmosaic.weights import cache_dir

    source = Path(tiles)
    if tiles == "gabor":
        colors = tints(gabor_colors) if gabor_colors > 1 else None
        with _feature_progress("gabor tiles") as progress:
            return build_library("gabor", settings, params=params, colors=colors, progress=progress)
    if source.is_file():
        library = loaded or load_library(source)
        if is_current(library, settings):
            return library
        why = "its folder changed" if library.settings == settings else "it was built with other feature settings"
        echo(f"{source}: {why}; indexing its tiles again (run `jaxmosaic library build` to update the file)")
        return _obtain_library(library.source, settings, params, gabor_colors)
    if not source.exists():
        raise FileNotFoundError(f"--tiles {tiles}: no such folder or library file (or use --tiles gabor)")
    key = hashlib.sha256(json.dumps([str(source.resolve()), settings], sort_keys=True).encode()).hexdigest()[:20]
    cached = cache_dir() / "libraries" / f"{key}.npz"
    if cached.is_file():
        with contextlib.suppress(Exception):
            library = load_library(cached)
            if is_current(library, settings):
                echo(f"tile library for {source} is up to date ({cached})")
                return library
    with _feature_progress(f"indexing {source}") as progress:
        library = build_library(str(source), settings, params=params, progress=progress)
    if library.skipped:
        echo(f"skipped {len(library.skipped)} unreadable file(s), e.g. {library.skipped[0]} (see `jaxmosaic library info`)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_library(cached, library, inputs=inputs)
    return library


@guarded
def mosaic(
    target: Annotated[Path, typer.Argument(help="The picture to rebuild from tiles.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output image.")],
    tiles: Annotated[str, typer.Option(help="'gabor' (built-in Gabor tiles), a folder of images, or a library .npz from `library build`.")] = "gabor",
    patch: Annotated[int, typer.Option(help="Side in target pixels of the patch matched to one tile.")] = 16,
    render: Annotated[int | None, typer.Option(help="Side in pixels of each tile in the output (default: --patch).")] = None,
    cols: Annotated[int | None, typer.Option(help="Tiles across; the target is rescaled to cols x patch pixels wide (default: width / patch).")] = None,
    fit: Annotated[Fit, typer.Option(help="Make the target a whole number of patches by resizing (aspect changes < half a patch) or centre-cropping.")] = Fit.resize,
    features: FeaturesOption = None,
    layer: LayerOption = "relu4_1",
    pool: PoolOption = "mean",
    weights: WeightsOption = None,
    seed: SeedOption = 0,
    svd_k: SvdKOption = "auto",
    color: Annotated[ColorMode, typer.Option(help="How tiles take the patch's colour: none, multiply (grey tile x mean colour), transfer (mean/std), blend; auto: multiply for gabor, else none.")] = ColorMode.auto,
    alpha: Annotated[float, typer.Option(help="--color blend: weight of the target.")] = 0.3,
    max_reuse: Annotated[int | None, typer.Option(help="Use each tile at most this many times.")] = None,
    min_distance: Annotated[float, typer.Option(help="Repeats of a tile must be at least this many cells apart.")] = 0.0,
    top_k: Annotated[int | None, typer.Option(help="Candidates per patch for the reuse rules (default 32 with them, else 1).")] = None,
    absolute: Annotated[bool, typer.Option("--absolute", help="Rank by |score| (the seed's MRF rule).")] = False,
    gabor_colors: GaborColorsOption = 1,
    preview: Annotated[bool, typer.Option("--preview", help="Also write OUT-preview.png: target and mosaic side by side.")] = False,
    metrics: Annotated[Path | None, typer.Option(help="Write a JSON summary here.")] = None,
) -> None:
    """Rebuild TARGET from tiles: each patch becomes its best-matching tile."""
    import numpy as np

    from jaxmosaic.files import check_outputs, write_json
    from jaxmosaic.image import load_image, resize, save_image
    from jaxmosaic.resources import check_memory
    from jaxmosaic.techniques.mosaic import make_mosaic, mosaic_grid, view_for

    start = time.perf_counter()
    if render is not None and render < 1:
        raise ValueError(f"--render must be a positive integer, got {render}")
    if max_reuse is not None and max_reuse < 1:
        raise ValueError(f"--max-reuse must be at least 1, got {max_reuse}")
    if min_distance < 0 or top_k is not None and top_k < 1:
        raise ValueError("--min-distance must not be negative and --top-k must be at least 1")
    if not 0 <= alpha <= 1:
        raise ValueError(f"--alpha must be between 0 and 1, got {alpha}")
    preview_path = output_name(out, "preview", ".png") if preview else None
    inputs = [target] + ([tiles] if Path(tiles).is_file() else [])
    check_outputs([out, preview_path, metrics], inputs)
    image = load_image(target)
    rows, cols_, _, _ = mosaic_grid(*image.shape[:2], patch, cols=cols, fit=fit.value)
    side = render or patch
    from jaxmosaic.search import match_memory_bytes

    feature_dim = 512 if features == Features.vgg else 64
    check_memory(rows * cols_ * side * side * 3 * 4 * 6 + match_memory_bytes(rows * cols_, feature_dim, top_k=top_k or 32),
                 f"a {cols_ * side}x{rows * side} mosaic")

    mode = color.value if color != ColorMode.auto else ("multiply" if tiles == "gabor" else "none")
    loaded = None
    if Path(tiles).is_file():
        from jaxmosaic.tile_library import load_library

        loaded = load_library(tiles)
    kind = features.value if features else (loaded.settings["features"] if loaded else "color")
    settings, params = _settings(kind, view_for(mode), layer, pool, weights, seed)
    library = _obtain_library(tiles, settings, params, gabor_colors, inputs=inputs, loaded=loaded)
    k = _svd_k(svd_k, library.features)
    result = make_mosaic(image, library, patch=patch, render=render, cols=cols, fit=fit.value, color=mode, alpha=alpha, svd_k=k,
                         top_k=top_k, max_reuse=max_reuse, min_distance=min_distance, absolute=absolute, params=params)
    save_image(out, result.image, inputs=inputs)
    written = [str(out)]
    if preview_path:
        height = min(512, result.image.shape[0])
        width = round(result.image.shape[1] * height / result.image.shape[0])
        pair = np.concatenate([np.asarray(resize(image, height, width)), np.asarray(resize(result.image, height, width))], axis=1)
        save_image(preview_path, pair, inputs=inputs)
        written.append(str(preview_path))
    stats = result.stats
    echo(f"{stats['cols']}x{stats['rows']} cells from {stats['tiles']} tiles ({stats['distinct_tiles']} used, at most {stats['max_uses']}x each); "
         f"k={stats['k'] or 'exact'} keeps {stats['energy_kept']:.1%} of the energy; mean score {stats['mean_score']:.4f}")
    echo(f"wrote {', '.join(written)}")
    if metrics:
        summary = {
            "technique": "mosaic",
            "settings": {"target": str(target), "tiles": tiles, "patch": patch, "render": side, "cols": cols, "fit": fit.value,
                         "features": settings, "svd_k": k, "color": mode, "alpha": alpha, "max_reuse": max_reuse,
                         "min_distance": min_distance, "absolute": absolute},
            "steps": 0, "seconds": time.perf_counter() - start, "compile_seconds": stats["match_compile_seconds"],
            "mosaic": stats, "outputs": written,
        }
        write_json(metrics, summary, inputs=inputs)


tiles_app = typer.Typer(help="Generate tile sets.", no_args_is_help=True, rich_markup_mode="rich")


@tiles_app.command()
@guarded
def gabor(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the tiles into (created; must be empty if it exists).")],
    size: Annotated[int, typer.Option(help="Tile side in pixels (the seed used 224).")] = 224,
    colors: GaborColorsOption = 1,
    sheet: Annotated[bool, typer.Option(help="Also write OUT_DIR/contact-sheet.png with every tile.")] = True,
) -> None:
    """Write the built-in Gabor tiles (OpenCV's getGaborKernel over a grid) as PNG files."""
    import numpy as np

    from jaxmosaic.image import resize, save_image
    from jaxmosaic.techniques.mosaic import assemble_cells, gabor_parameters, gabor_tiles
    from jaxmosaic.tile_library import gabor_colors

    if size < 4:
        raise ValueError(f"--size must be at least 4, got {size}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: folder is not empty")
    tints = gabor_colors(colors) if colors > 1 else None
    parameters = gabor_parameters()
    images = np.asarray(gabor_tiles(parameters, size, tints))
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, tile in enumerate(images):
        p = parameters[i // colors]
        tag = f"-c{i % colors}" if colors > 1 else ""
        save_image(out_dir / f"gabor-{i:04d}-s{p[0]:.2f}-t{np.degrees(p[1]):03.0f}-l{p[2]:.2f}-g{p[3]:.1f}-p{np.degrees(p[4]):03.0f}{tag}.png", tile)
    if sheet:
        thumb = min(size, 48)
        small = np.asarray(resize(images, thumb, thumb))
        cols = int(np.ceil(np.sqrt(len(small))))
        rows = -(-len(small) // cols)
        padded = np.concatenate([small, np.ones((rows * cols - len(small), thumb, thumb, 3), np.float32)])
        save_image(out_dir / "contact-sheet.png", assemble_cells(padded, rows, cols))
    echo(f"wrote {len(images)} tiles of {size}x{size} to {out_dir}")


library_app = typer.Typer(help="Index a folder of tiles once, for fast mosaics.", no_args_is_help=True, rich_markup_mode="rich")


@library_app.command()
@guarded
def build(
    tiles: Annotated[str, typer.Argument(help="A folder of tile images (searched recursively), or 'gabor'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Library file to write (.npz).")],
    features: FeaturesOption = None,
    color: Annotated[ColorMode, typer.Option(help="The colour mode the library will be used with (it decides what features compare).")] = ColorMode.auto,
    layer: LayerOption = "relu4_1",
    pool: PoolOption = "mean",
    weights: WeightsOption = None,
    seed: SeedOption = 0,
    svd_k: SvdKOption = "auto",
    gabor_colors: GaborColorsOption = 1,
    force: Annotated[bool, typer.Option("--force", help="Index again even if the library is up to date.")] = False,
) -> None:
    """Compute the features (and SVD) of a tile set and store them, re-indexing only when the folder changed."""
    from jaxmosaic.files import check_outputs
    from jaxmosaic.techniques.mosaic import view_for
    from jaxmosaic.tile_library import attach_svd, is_current, load_library, save_library

    if out.suffix != ".npz":
        raise ValueError(f"--out {out}: a tile library file must end in .npz")
    check_outputs([out], [])
    mode = color.value if color != ColorMode.auto else ("multiply" if tiles == "gabor" else "none")
    settings, params = _settings((features or Features.color).value, view_for(mode), layer, pool, weights, seed)
    if out.is_file() and not force:
        with contextlib.suppress(Exception):
            old = load_library(out)
            if is_current(old, settings) and (svd_k == "auto" or (old.svd or {}).get("k") == int(svd_k)):
                echo(f"{out} is up to date ({len(old)} tiles); nothing to do")
                return
    if tiles == "gabor":
        library = _obtain_library(tiles, settings, params, gabor_colors)
    else:
        if not Path(tiles).is_dir():
            raise FileNotFoundError(f"{tiles}: not a folder")
        from jaxmosaic.tile_library import build_library

        with _feature_progress(f"indexing {tiles}") as progress:
            library = build_library(tiles, settings, params=params, progress=progress)
    k = _svd_k(svd_k, library.features)
    if k:
        attach_svd(library, k)
    save_library(out, library)
    if library.skipped:
        echo(f"skipped {len(library.skipped)} unreadable file(s): {', '.join(library.skipped[:5])}{' ...' if len(library.skipped) > 5 else ''}")
    energy = f", k={k} keeps {library.svd['energy']:.1%} of the energy" if library.svd else ""
    echo(f"indexed {len(library)} tiles ({library.features.shape[1]} {library.settings['features']} features{energy}) -> {out}")


@library_app.command()
@guarded
def info(library_file: Annotated[Path, typer.Argument(help="A library .npz.")]) -> None:
    """Describe a tile library: source, size, features, SVD, skipped files, and whether it is current."""
    from jaxmosaic.tile_library import is_current, load_library

    library = load_library(library_file)
    summary = {
        "kind": library.kind, "source": library.source, "tiles": len(library), "features": library.features.shape[1],
        "settings": library.settings, "svd": None if library.svd is None else {"k": library.svd["k"], "energy": library.svd["energy"]},
        "current": is_current(library, library.settings), "skipped": library.skipped,
    }
    typer.echo(json.dumps(summary, indent=2))
