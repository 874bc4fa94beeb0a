"""What `mosaic` and `library` share: tile libraries, the networks their features need, the
local devices."""

from __future__ import annotations

from pathlib import Path

from jaxmosaic.cli._common import vgg_params
from jaxmosaic.cli.console import echo, rate_progress
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.live import LiveView
from jaxmosaic.sharding import device_mesh
from jaxmosaic.techniques.mosaic import FeatureKind, LibraryConfig, TileLibrary, color_mode, feature_config, load_library
from jaxmosaic.techniques.mosaic import obtain_library
from jaxmosaic.techniques.mosaic.bank import BANK
from jaxmosaic.weights import cache_folder, load_weights


def network_params(kind: FeatureKind, weights: str | None, seed: int):
    """The weights `kind` features need (VGG19 or AlexNet), or None for colour features."""
    return vgg_params(weights, seed, arch=kind.network) if kind.network else None


def local_mesh(devices: int | None):
    """A mesh over the first `devices` local devices (default all), or None for one."""
    try:
        return device_mesh(devices, local=True)
    except ValueError as error:
        raise JaxmosaicError(f"--devices {devices}: {error}") from None


def source_paths(source: str | None) -> list[Path]:
    """A tile source or a --weights value as an input path (none for gabor, random or the lookup)."""
    return [Path(source)] if source not in (None, "gabor", "random") and Path(source).exists() else []


def _library_cache(tiles: str) -> Path | None:
    """The cache of tile libraries: skipped where it cannot be written (it only saves time), except
    for the Gabor bank, which is built there."""
    return cache_folder("libraries", required=tiles == BANK, create=False)  # made when a library is kept there


def obtain_tile_library(tiles: str, config: LibraryConfig, weights: str | None, inputs, *, cache: bool,
                        live: LiveView | None = None) -> tuple[TileLibrary, object]:
    """(the library for a tile source, the network params its features need or None); the tiles
    indexed are counted on `live` when given.

    A library file's header never starts a download: when only it names a network (no --features,
    no --weights), that network's weights must already be here."""
    loaded = load_library(tiles) if Path(tiles).is_file() else None
    mode = color_mode(config, tiles, loaded)
    kind = FeatureKind(config.features or (loaded.settings.kind if loaded is not None else FeatureKind.color))
    if config.features is None and weights is None and kind.network:
        params = load_weights(None, arch=kind.network, download_missing=False)
    else:
        params = network_params(kind, weights, config.seed)
    settings = feature_config(config, mode, loaded, params)
    library_cache = _library_cache(tiles) if cache else None
    with rate_progress(f"indexing {tiles}") as progress:
        progress = live.counter(update=progress, unit="tiles") if live is not None else progress
        library = obtain_library(tiles, config, settings, mode, params=params, loaded=loaded, progress=progress, say=echo,
                                 cache=library_cache, inputs=inputs, weights=weights)
    return library, params
