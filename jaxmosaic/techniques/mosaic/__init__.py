"""Photomosaic: split a target into patches and replace each by its best-matching tile.

Patches and tiles are described by L2-normalised feature vectors, weight-free colour features
or VGG19 activations (`features`); tiles come from a library (`library`: a folder of images or
the built-in Gabor tiles of `tiles`, found through `sources`), whose dictionary may be compressed
by SVD (see `jaxmosaic.search`); candidates are found by blocked top-k matching; a greedy pass
enforces a reuse cap and a minimum distance between repeats; tiles are coloured towards their
patches and assembled (`assemble`). Libraries too large for memory are built chunk by chunk (`stream`).
"""

from jaxmosaic.techniques.mosaic.assemble import (
    Assignment,
    Fit,
    MosaicConfig,
    MosaicResult,
    assemble_cells,
    assign_tiles,
    colorize,
    make_mosaic,
    mosaic_grid,
    mosaic_memory,
    split_cells,
)
from jaxmosaic.techniques.mosaic.features import (
    ColorMode,
    FeatureConfig,
    FeatureKind,
    PatchPool,
    batched_features,
    color_features,
    feature_function,
    matching_view,
    vgg_patch_features,
    view_for,
)
from jaxmosaic.techniques.mosaic.library import (
    AUTO_SVD_CAP,
    AUTO_SVD_ENERGY,
    TileLibrary,
    attach_svd,
    auto_svd_k,
    build_library,
    built_from,
    is_current,
    load_library,
    load_tile,
    save_library,
    spectrum_svd_k,
)
from jaxmosaic.techniques.mosaic.sources import LibraryConfig, color_mode, feature_config, obtain_library, with_svd
from jaxmosaic.techniques.mosaic.tiles import GaborGrid, GaborTilesConfig, gabor_colors, gabor_parameters, gabor_tile_name, gabor_tiles

__all__ = [
    "Assignment",
    "Fit",
    "MosaicConfig",
    "MosaicResult",
    "assemble_cells",
    "assign_tiles",
    "colorize",
    "make_mosaic",
    "mosaic_grid",
    "mosaic_memory",
    "split_cells",
    "ColorMode",
    "FeatureConfig",
    "FeatureKind",
    "PatchPool",
    "batched_features",
    "color_features",
    "feature_function",
    "matching_view",
    "vgg_patch_features",
    "view_for",
    "AUTO_SVD_CAP",
    "AUTO_SVD_ENERGY",
    "TileLibrary",
    "attach_svd",
    "auto_svd_k",
    "build_library",
    "built_from",
    "is_current",
    "load_library",
    "load_tile",
    "save_library",
    "spectrum_svd_k",
    "LibraryConfig",
    "color_mode",
    "feature_config",
    "obtain_library",
    "with_svd",
    "GaborGrid",
    "GaborTilesConfig",
    "gabor_colors",
    "gabor_tile_name",
    "gabor_parameters",
    "gabor_tiles",
]
