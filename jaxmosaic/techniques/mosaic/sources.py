"""Where a mosaic's tiles come from: the built-in Gabor tiles, the original article's Gabor bank
(built chunk by chunk and cached), a folder of images (indexed once and cached until it changes),
or a library file; and which features describe them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from jaxmosaic.config import MAX_INT, ConfigError, choice, setting, whole
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.locks import output_lock
from jaxmosaic.techniques.mosaic.features import ColorMode, FeatureConfig, FeatureKind, PatchPool, SubpixelSpace, view_for
from jaxmosaic.techniques.mosaic.features import check_subpixel_weights
from jaxmosaic.techniques.mosaic.library import (
    AUTO_SVD_CAP,
    AUTO_SVD_ENERGY,
    TileLibrary,
    attach_svd,
    auto_svd_k,
    build_library,
    gabor_library,
    is_current,
    load_library,
    save_library,
)
from jaxmosaic.techniques.mosaic.bank import BANK, BankGrid, parse_bank_grid
from jaxmosaic.techniques.mosaic.tiles import gabor_colors

__all__ = ["LibraryConfig", "parse_svd_k", "color_mode", "feature_config", "weights_fingerprint", "difference", "rebuild_command",
           "obtain_library", "with_svd"]


def parse_svd_k(text: str) -> int | str:
    """--svd-k as the user typed it: "auto" or a whole number."""
    return "auto" if text.strip() == "auto" else int(text)


@dataclasses.dataclass(frozen=True)
class LibraryConfig:
    """Which features describe the tiles (and the patches matched to them), and their SVD."""

    features: FeatureKind | None = setting(None, "color (weight-free Lab grid means), subpixel (metapixel's 5x5 metric), vgg (a VGG19 layer) or alexnet (AlexNet's avgpool, 9216 values, the original article's); default: the library's, else color.")
    color: ColorMode = setting(ColorMode.auto, "How tiles take the patch's colour: none, multiply (grey tile x mean colour), transfer (mean/std), blend, reinhard (Lab mean/std); auto: multiply for gabor, a library's own mode, else none.")
    layer: str | None = setting(None, "vgg or alexnet features: the layer (default relu4_1 for vgg, avgpool for alexnet).")
    pool: PatchPool | None = setting(None, "vgg or alexnet features: 'mean' (spatial average) or 'flat' (the whole map); default mean for vgg, flat for alexnet.")
    svd_k: int | str = setting("auto", f"SVD dimensions kept: 'auto' ({AUTO_SVD_ENERGY:.1%} of the tiles' spread, at most {AUTO_SVD_CAP}), a number, or 0 for exact matching.",
                               parse=parse_svd_k, example="auto or a whole number")
    gabor_colors: int = setting(1, "gabor tiles: 1 for grey tiles, N for grey plus N-1 tinted copies of each.")
    bank_grid: BankGrid = setting(BankGrid(), "gabor-bank: the number of sigma, theta, lambda and gamma values (50,10,25,25 is the original's 312,500 tiles; 2,2,3,3 is 36).",
                                  parse=parse_bank_grid, example="S,T,L,G")
    seed: int = setting(0, "Seed for --weights random.")
    subpixel_space: SubpixelSpace | None = setting(None, "subpixel features: the colour space, rgb, hsv or yiq (metapixel's; default: a subpixel library's own, else hsv).")
    subpixel_weights: tuple[float, ...] | None = setting(None, "subpixel features: the weights A,B,C of the three channels (metapixel's --weights; default: a subpixel library's own, else 1,1,1).")

    def __post_init__(self):
        if self.features is not None:
            object.__setattr__(self, "features", choice("features", self.features, FeatureKind))
        object.__setattr__(self, "color", choice("color", self.color, ColorMode))
        if self.pool is not None:
            object.__setattr__(self, "pool", choice("pool", self.pool, PatchPool))
        if self.layer is not None:
            if self.features == FeatureKind.alexnet:
                FeatureConfig.alexnet(ColorMode.none, layer=self.layer)  # checks the layer name
            else:
                FeatureConfig(layer=self.layer)
        if not isinstance(self.bank_grid, BankGrid):
            object.__setattr__(self, "bank_grid", parse_bank_grid(self.bank_grid))
        if self.svd_k != "auto":
            whole("svd_k", self.svd_k, minimum=0, maximum=100_000)
        whole("gabor_colors", self.gabor_colors, minimum=1, maximum=64)
        whole("seed", self.seed, minimum=0, maximum=MAX_INT)
        if self.subpixel_space is not None:
            object.__setattr__(self, "subpixel_space", choice("subpixel_space", self.subpixel_space, SubpixelSpace))
        if self.subpixel_weights is not None:
            object.__setattr__(self, "subpixel_weights", check_subpixel_weights(self.subpixel_weights))


def color_mode(config: LibraryConfig, tiles: str, library: TileLibrary | None = None) -> ColorMode:
    """The colour mode "auto" stands for: a library's own, multiply for Gabor tiles, else none."""
    if config.color != ColorMode.auto:
        return config.color
    if library is not None:
        return library.color
    return ColorMode.multiply if tiles in ("gabor", BANK) else ColorMode.none


def weights_fingerprint(params) -> str:
    """The identity of VGG19 or AlexNet weights: SHA-256 over every array's name, shape, dtype and
    bytes, so features of other weights are never mixed (weights alike in one layer are still told apart)."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_leaves_with_path(params)
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype.str}:{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:32]


def feature_config(config: LibraryConfig, mode: ColorMode, library: TileLibrary | None = None, params=None) -> FeatureConfig:
    """The features to describe tiles by: a library's own when no kind is asked for (with the
    view of the colour mode and the fingerprint of the weights `params` at hand), else those the
    settings name."""
    view = view_for(mode)
    if config.features is None and library is not None:
        if library.settings.kind == FeatureKind.subpixel:
            _check_subpixel_options(config, library.settings)
        if library.settings.kind.network is None:
            return dataclasses.replace(library.settings, view=view)
        if params is None:
            raise ValueError(f"{library.settings.kind} features need {library.settings.kind.network} weights")
        return dataclasses.replace(library.settings, view=view, weights=weights_fingerprint(params))
    kind = config.features or FeatureKind.color
    if kind == FeatureKind.color:
        return FeatureConfig.color(view)
    if kind == FeatureKind.subpixel:
        return FeatureConfig.subpixel(view, space=config.subpixel_space or SubpixelSpace.hsv,
                                      weights=config.subpixel_weights or (1.0, 1.0, 1.0))
    if params is None:
        raise ValueError(f"{kind} features need {kind.network} weights")
    if kind == FeatureKind.alexnet:
        return FeatureConfig.alexnet(view, layer=config.layer or "avgpool", pool=config.pool or PatchPool.flat,
                                     weights=weights_fingerprint(params))
    return FeatureConfig.vgg(view, layer=config.layer or "relu4_1", pool=config.pool or PatchPool.mean,
                             weights=weights_fingerprint(params))


def _check_subpixel_options(config: LibraryConfig, built: FeatureConfig) -> None:
    """Refuse --subpixel-space/--subpixel-weights that differ from a subpixel library's own."""
    if config.subpixel_space is not None and config.subpixel_space != built.subpixel_space:
        raise ConfigError("subpixel_space", f"{config.subpixel_space}: the library's subpixel features are in "
                                            f"{built.subpixel_space}; leave the option out or build the library again")
    if config.subpixel_weights is not None and tuple(config.subpixel_weights) != tuple(built.subpixel_weights):
        library = ",".join(f"{w:g}" for w in built.subpixel_weights)
        given = ",".join(f"{w:g}" for w in config.subpixel_weights)
        raise ConfigError("subpixel_weights", f"{given}: the library's subpixel features weigh the channels {library}; "
                                              "leave the option out or build the library again")


def difference(built: FeatureConfig, wanted: FeatureConfig) -> str:
    """Why a library built with `built` features cannot serve `wanted` ones, for the user."""
    if built.kind != wanted.kind:
        return f"it was built with {built.kind} features, not {wanted.kind}"
    if built.weights != wanted.weights:
        return (f"its {built.kind} features were embedded by other {built.kind.network} weights (fingerprint "
                f"{built.weights[:12]}, these weights' is {wanted.weights[:12]}); features of two networks never match")
    name = next(field.name for field in dataclasses.fields(FeatureConfig) if getattr(built, field.name) != getattr(wanted, field.name))
    return f"it was built with {built.kind} features of another {name} ({getattr(built, name)}, not {getattr(wanted, name)})"


def rebuild_command(source: str, settings: FeatureConfig, mode: ColorMode, out, *, weights: str | None = None, seed: int = 0,
                    grid: BankGrid | None = None) -> str:
    """The `jaxmosaic library build` command line that makes a library of `settings` from `source`."""
    parts = ["jaxmosaic library build", shlex.quote(source)]
    if grid is not None:
        parts += ["--bank-grid", str(grid)]
    parts += ["--features", str(settings.kind)]
    if settings.kind == FeatureKind.subpixel:
        parts += ["--subpixel-space", str(settings.subpixel_space), "--subpixel-weights",
                  ",".join(f"{w:g}" for w in settings.subpixel_weights)]
    elif settings.kind.network:
        parts += ["--layer", settings.layer, "--pool", str(settings.pool)]
        if weights:
            parts += ["--weights", shlex.quote(weights)]
        if weights == "random" and seed:
            parts += ["--seed", str(seed)]
    parts += ["--color", str(mode), "-o", shlex.quote(str(out))]
    return " ".join(parts)


def with_svd(library: TileLibrary, svd_k: int | str) -> TileLibrary:
    """The library with the SVD `svd_k` asks for ("auto": `auto_svd_k`, 0: none) attached, reusing
    one it holds already. A streamed library keeps the k it was built with."""
    if library.projected:
        if svd_k not in ("auto", library.svd["k"]):
            raise ConfigError("svd_k", f"{svd_k}: the library holds its tiles projected to k={library.svd['k']}; "
                                       f"build it again with `jaxmosaic library build ... --svd-k {svd_k}`")
        return library
    k = auto_svd_k(library.features) if svd_k == "auto" else int(svd_k)
    if (library.svd or {}).get("k", 0) != k:
        attach_svd(library, k)
    return library


def obtain_library(tiles: str, config: LibraryConfig, settings: FeatureConfig, mode: ColorMode, *, params=None,
                   loaded: TileLibrary | None = None, cache: Path | None = None,
                   progress: Callable[[int, int], None] | None = None, say: Callable[[str], None] = lambda line: None,
                   inputs=(), weights: str | None = None) -> TileLibrary:
    """The library for a tile source, with `settings`' features and the SVD `config.svd_k` asks for.

    Args:
      tiles: "gabor", "gabor-bank" (built once into `cache`), a folder (indexed once and cached
        under `cache` until it changes) or a library file (`loaded`, if the caller has read it).
        A library file is used as it is when its features are `settings`; otherwise a Gabor or
        bank library is embedded again from its own parameters or grid (bounded by its rows),
        and a folder library is refused with the command that rebuilds it: the folder its header
        names is never walked.
      say: receives a line for the user when something worth knowing happens.
      weights: the --weights value, for the command a refusal names.
    """
    source = Path(tiles)
    if tiles == BANK:
        library = _from_cache(_bank_recipe(config.bank_grid, config.svd_k, settings, mode, params=params, progress=progress,
                                           say=say), cache, settings, mode, say)
    elif tiles == "gabor":
        library = build_library("gabor", settings, mode, params=params, colors=gabor_colors(config.gabor_colors),
                                progress=progress)
    elif source.is_file() or loaded is not None:
        library = loaded or load_library(source)
        if library.settings != settings:
            library = _embedded_again(tiles, library, config, settings, mode, params=params, cache=cache, progress=progress,
                                      say=say, weights=weights)
        library.color = mode
    elif source.is_dir():
        library = _from_cache(_folder_recipe(source, settings, mode, params=params, progress=progress, say=say, inputs=inputs),
                              cache, settings, mode, say)
    else:
        raise JaxmosaicError(f"{tiles}: no such folder or library file (or use gabor or {BANK})")
    return with_svd(library, config.svd_k)


def _embedded_again(tiles: str, library: TileLibrary, config: LibraryConfig, settings: FeatureConfig, mode: ColorMode, *,
                    params, cache: Path | None, progress, say, weights: str | None) -> TileLibrary:
    """A library file's tiles with other features: Gabor tiles from its own parameters, bank tiles
    from its own grid (into the cache); a folder library's are refused in one line."""
    why = difference(library.settings, settings)
    if library.kind == "gabor":
        say(f"{tiles}: {why}; embedding its {len(library)} Gabor tiles again")
        return gabor_library(library.gabor, library.colors, settings, mode, params=params, progress=progress)
    if library.kind == "bank" and cache is not None:
        grid = BankGrid(*library.bank)
        say(f"{tiles}: {why}; embedding its {grid.size} {BANK} tiles ({grid}) again")
        return _from_cache(_bank_recipe(grid, config.svd_k, settings, mode, params=params, progress=progress, say=say), cache,
                           settings, mode, say)
    source, grid = (BANK, BankGrid(*library.bank)) if library.kind == "bank" else (library.source, None)
    command = rebuild_command(source, settings, mode, tiles, weights=weights, seed=config.seed, grid=grid)
    raise JaxmosaicError(f"{tiles}: {why}; rebuild it with `{command}`")


class _Recipe(NamedTuple):
    """How a library the cache keeps is found there and made."""

    prefix: str  # of its file's name in the cache
    key: list  # what the library depends on (hashed into the file's name)
    what: str  # the library, for the user
    make: Callable[[Path | None], TileLibrary]  # the file to write it to (None: no cache) -> the library
    folder: Path | None = None  # the folder the user named, that a cached folder library must still match


def _from_cache(recipe: _Recipe, cache: Path | None, settings: FeatureConfig, mode: ColorMode,
                say: Callable[[str], None]) -> TileLibrary:
    """The library of `recipe`: read from `cache` when it is there and current for `settings`
    (serving `mode`), else made (into the cache when there is one)."""
    if cache is None:
        return recipe.make(None)
    key = hashlib.sha256(json.dumps(recipe.key, sort_keys=True).encode()).hexdigest()[:20]
    cached = cache / f"{recipe.prefix}{key}.npz"
    made = [folder for folder in (cache, *cache.parents) if not folder.exists()]  # the folders made here for the lock
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with output_lock(cached, wait=True, say=say):  # two runs needing one library: one makes it, the other then reads it
            if cached.is_file():
                with contextlib.suppress(JaxmosaicError):
                    library = load_library(cached)
                    if is_current(library, settings, folder=recipe.folder):
                        library.color = mode
                        say(f"{recipe.what} ({len(library)} tiles) is up to date ({cached})")
                        return library
            return recipe.make(cached)
    finally:
        for folder in made:  # innermost first; rmdir removes only a folder left empty (nothing was kept)
            with contextlib.suppress(OSError):
                folder.rmdir()


def _bank_recipe(grid: BankGrid, svd_k: int | str, settings: FeatureConfig, mode: ColorMode, *, params, progress,
                 say) -> _Recipe:
    """The library of the Gabor bank's `grid`: built chunk by chunk into the cache once (resuming a
    build that was stopped), then read from there."""
    from jaxmosaic.resources import check_disk, check_memory
    from jaxmosaic.techniques.mosaic.stream import DEFAULT_CHUNK, BankSource, stream_disk, stream_library, stream_memory
    from jaxmosaic.techniques.mosaic.stream import stream_svd_k

    k = stream_svd_k(svd_k)

    def make(cached: Path | None) -> TileLibrary:
        if cached is None:
            raise ValueError(f"{BANK} is built into the library cache; pass a cache folder")
        check_memory(stream_memory(settings, DEFAULT_CHUNK, grid.size, k, render=BankSource.render), f"building the {BANK} library",
                     hint="build it with `jaxmosaic library build gabor-bank --chunk N` first")
        check_disk(cached.parent, stream_disk(settings, grid.size), f"the feature rows of {grid.size} bank tiles")
        cached.parent.mkdir(parents=True, exist_ok=True)
        say(f"building the {BANK} library ({grid.size} tiles) once, into {cached}")
        return stream_library(BankSource(grid), settings, mode, cached, params=params, weights=settings.weights, k=k,
                              resume=True, progress=progress)

    return _Recipe("bank-", [BANK, str(grid), settings.as_dict(), k], f"{BANK} library", make)


def _folder_recipe(source: Path, settings: FeatureConfig, mode: ColorMode, *, params, progress, say, inputs) -> _Recipe:
    """A folder's library: indexed in memory, kept in the cache until the folder changes."""

    def make(cached: Path | None) -> TileLibrary:
        library = build_library(str(source), settings, mode, params=params, progress=progress)
        if library.skipped:
            say(f"skipped {len(library.skipped)} file(s) (unreadable, or symbolic links), e.g. {library.skipped[0]} "
                f"(see `jaxmosaic library info`)")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            save_library(cached, library, inputs=inputs)
        return library

    return _Recipe("", [str(source.resolve()), settings.as_dict()], f"tile library for {source}", make, source)
