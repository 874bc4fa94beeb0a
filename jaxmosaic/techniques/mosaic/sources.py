"""Where a mosaic's tiles come from: the built-in Gabor tiles, a folder of images (indexed once
and cached until it changes), or a library file; and which features describe them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxmosaic.config import MAX_INT, choice, setting, whole
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.techniques.mosaic.features import ColorMode, FeatureConfig, FeatureKind, PatchPool, view_for
from jaxmosaic.techniques.mosaic.library import (
    TileLibrary,
    attach_svd,
    auto_svd_k,
    build_library,
    is_current,
    load_library,
    save_library,
)
from jaxmosaic.techniques.mosaic.tiles import gabor_colors

__all__ = ["LibraryConfig", "parse_svd_k", "color_mode", "feature_config", "weights_fingerprint", "obtain_library", "with_svd"]


def parse_svd_k(text: str) -> int | str:
    return "auto" if text.strip() == "auto" else int(text)


@dataclasses.dataclass(frozen=True)
class LibraryConfig:
    """Which features describe the tiles (and the patches matched to them), and their SVD."""

    features: FeatureKind | None = setting(None, "color (weight-free Lab grid means) or vgg (a VGG19 layer); default: the library's, else color.")
    color: ColorMode = setting(ColorMode.auto, "How tiles take the patch's colour: none, multiply (grey tile x mean colour), transfer (mean/std), blend; auto: multiply for gabor, a library's own mode, else none.")
    layer: str = setting("relu4_1", "vgg features: the VGG19 layer.")
    pool: PatchPool = setting(PatchPool.mean, "vgg features: 'mean' (spatial average) or 'flat' (the whole map).")
    svd_k: int | str = setting("auto", "SVD dimensions kept: 'auto' (99.8% of the tiles' spread, at most 100), a number, or 0 for exact matching.",
                               parse=parse_svd_k, example="auto or a whole number")
    gabor_colors: int = setting(1, "gabor tiles: 1 for grey tiles, N for grey plus N-1 tinted copies of each.")
    seed: int = setting(0, "Seed for --weights random.")

    def __post_init__(self):
        if self.features is not None:
            object.__setattr__(self, "features", choice("features", self.features, FeatureKind))
        object.__setattr__(self, "color", choice("color", self.color, ColorMode))
        object.__setattr__(self, "pool", choice("pool", self.pool, PatchPool))
        FeatureConfig(layer=self.layer)  # checks the layer name
        if self.svd_k != "auto":
            whole("svd_k", self.svd_k, minimum=0, maximum=100_000)
        whole("gabor_colors", self.gabor_colors, minimum=1, maximum=64)
        whole("seed", self.seed, minimum=0, maximum=MAX_INT)


def color_mode(config: LibraryConfig, tiles: str, library: TileLibrary | None = None) -> ColorMode:
    """The colour mode "auto" stands for: a library's own, multiply for Gabor tiles, else none."""
    if config.color != ColorMode.auto:
        return config.color
    if library is not None:
        return library.color
    return ColorMode.multiply if tiles == "gabor" else ColorMode.none


def weights_fingerprint(params) -> str:
    """A short fingerprint of VGG19 weights, so features of other weights are never mixed."""
    return hashlib.sha256(np.asarray(params["conv1_1"]["kernel"]).tobytes()).hexdigest()[:16]


def feature_config(config: LibraryConfig, mode: ColorMode, library: TileLibrary | None = None, params=None) -> FeatureConfig:
    """The features to describe tiles by: a library's own when no kind is asked for (with the
    view of the colour mode), else those the settings name."""
    view = view_for(mode)
    if config.features is None and library is not None:
        return dataclasses.replace(library.settings, view=view)
    if (config.features or FeatureKind.color) == FeatureKind.color:
        return FeatureConfig.color(view)
    if params is None:
        raise ValueError("VGG features need VGG19 weights")
    return FeatureConfig.vgg(view, layer=config.layer, pool=config.pool, weights=weights_fingerprint(params))


def with_svd(library: TileLibrary, svd_k: int | str) -> TileLibrary:
    """The library with the SVD `svd_k` asks for ("auto": `auto_svd_k`, 0: none) attached, reusing
    one it holds already."""
    k = auto_svd_k(library.features) if svd_k == "auto" else int(svd_k)
    if (library.svd or {}).get("k", 0) != k:
        attach_svd(library, k)
    return library


def obtain_library(tiles: str, config: LibraryConfig, settings: FeatureConfig, mode: ColorMode, *, params=None,
                   loaded: TileLibrary | None = None, cache: Path | None = None,
                   progress: Callable[[int, int], None] | None = None, say: Callable[[str], None] = lambda line: None,
                   inputs=()) -> TileLibrary:
    """The library for a tile source, with `settings`' features and the SVD `config.svd_k` asks for.

    Args:
      tiles: "gabor", a folder (indexed once and cached under `cache` until it changes) or a
        library file (`loaded`, if the caller has read it; used as it is when current, else its
        source is indexed again).
      say: receives a line for the user when something worth knowing happens.
    """
    source = Path(tiles)
    if tiles == "gabor":
        library = build_library("gabor", settings, mode, params=params, colors=gabor_colors(config.gabor_colors),
                                progress=progress)
    elif source.is_file() or loaded is not None:
        library = loaded or load_library(source)
        if not is_current(library, settings):
            why = "its folder changed" if library.settings == settings else "it was built with other feature settings"
            say(f"{source}: {why}; indexing its tiles again (run `jaxmosaic library build` to update the file)")
            return obtain_library(library.source, config, settings, mode, params=params, cache=cache, progress=progress, say=say)
        library.color = mode
    elif source.is_dir():
        library = _cached_folder(source, config, settings, mode, params=params, cache=cache, progress=progress, say=say,
                                 inputs=inputs)
    else:
        raise JaxmosaicError(f"{tiles}: no such folder or library file (or use gabor)")
    return with_svd(library, config.svd_k)


def _cached_folder(source: Path, config, settings, mode, *, params, cache, progress, say, inputs) -> TileLibrary:
    cached = None
    if cache is not None:
        key = hashlib.sha256(json.dumps([str(source.resolve()), settings.as_dict()], sort_keys=True).encode()).hexdigest()[:20]
        cached = cache / f"{key}.npz"
        if cached.is_file():
            with contextlib.suppress(JaxmosaicError):
                library = load_library(cached)
                if is_current(library, settings):
                    say(f"tile library for {source} is up to date ({cached})")
                    library.color = mode
                    return library
    library = build_library(str(source), settings, mode, params=params, progress=progress)
    if library.skipped:
        say(f"skipped {len(library.skipped)} unreadable file(s), e.g. {library.skipped[0]} (see `jaxmosaic library info`)")
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_library(cached, library, inputs=inputs)
    return library
