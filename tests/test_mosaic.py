"""Photomosaic: Gabor tiles, colour features, tile libraries, reuse rules, rendering."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import sample_cells, sample_image
from jaxmosaic.color import rgb_to_lab
from jaxmosaic.image import resize
from jaxmosaic.search import compress_queries, match_tiles, svd_compress
from jaxmosaic.techniques.mosaic import (
    ColorMode,
    FeatureConfig,
    MosaicConfig,
    assemble_cells,
    assign_tiles,
    auto_svd_k,
    batched_features,
    build_library,
    color_features,
    colorize,
    feature_function,
    is_current,
    load_library,
    load_tile,
    make_mosaic,
    mosaic_grid,
    save_library,
    split_cells,
    with_svd,
)


def test_color_features_tell_brightness_apart_and_pick_the_nearest_colour():
    palette = np.random.default_rng(0).uniform(size=(60, 3)).astype(np.float32)
    tiles = np.broadcast_to(palette[:, None, None, :], (60, 16, 16, 3))
    dark, light = np.full((1, 16, 16, 3), 0.2, np.float32), np.full((1, 16, 16, 3), 0.8, np.float32)
    assert float(jnp.sum(color_features(dark) * color_features(light))) < 0.99
    queries = np.clip(palette[:20] + 0.02, 0, 1)[:, None, None, :] * np.ones((1, 16, 16, 1), np.float32)
    _, indices = match_tiles(color_features(queries), color_features(tiles))
    lab = np.asarray(rgb_to_lab(palette))
    nearest = np.argmin(np.linalg.norm(np.asarray(rgb_to_lab(queries[:, 0, 0]))[:, None] - lab[None], axis=2), axis=1)
    assert (np.asarray(indices)[:, 0] == nearest).mean() >= 0.9


def test_split_and_assemble_are_inverse():
    image = np.random.default_rng(0).uniform(size=(6 * 5, 4 * 5, 3)).astype(np.float32)
    cells = split_cells(image, 6, 4)
    assert cells.shape == (24, 5, 5, 3)
    np.testing.assert_array_equal(np.asarray(cells[4 + 2]), image[5:10, 10:15])
    np.testing.assert_array_equal(np.asarray(assemble_cells(cells, 6, 4)), image)


def test_mosaic_grid():
    assert mosaic_grid(100, 200, 16) == (6, 12, 96, 192)
    assert mosaic_grid(100, 200, 16, cols=20) == (10, 20, 160, 320)
    assert mosaic_grid(100, 200, 16, fit="crop") == (6, 12, 96, 192)
    with pytest.raises(ValueError, match="larger than the target"):
        mosaic_grid(10, 200, 16)


@pytest.mark.parametrize("mode", ["multiply", "transfer", "blend", "none"])
def test_colorize_modes(mode, variant):
    rng = np.random.default_rng(0)
    tiles = rng.uniform(0.3, 0.7, size=(5, 8, 8, 3)).astype(np.float32)
    patches = rng.uniform(0.3, 0.6, size=(5, 8, 8, 3)).astype(np.float32)
    if mode == "multiply":
        grey = np.repeat(tiles[..., :1], 3, axis=-1)
        multiplied = np.asarray(variant(lambda t, p: colorize(t, p, "multiply"), grey, patches))
        np.testing.assert_allclose(multiplied.mean(axis=(1, 2)), patches.mean(axis=(1, 2)), rtol=1e-5)
        np.testing.assert_allclose(multiplied / multiplied.mean(axis=(1, 2), keepdims=True),
                                   grey / grey.mean(axis=(1, 2), keepdims=True), rtol=1e-5)
    elif mode == "transfer":
        transferred = np.asarray(variant(lambda t, p: colorize(t, p, "transfer"), tiles, patches))
        np.testing.assert_allclose(transferred.mean(axis=(1, 2)), patches.mean(axis=(1, 2)), atol=2e-3)
        np.testing.assert_allclose(transferred.std(axis=(1, 2)), patches.std(axis=(1, 2)), atol=2e-3)
    elif mode == "blend":
        blended = variant(lambda t, p: colorize(t, p, "blend", 0.25), tiles, patches)
        np.testing.assert_allclose(np.asarray(blended), 0.75 * tiles + 0.25 * patches, atol=1e-6)
    else:
        np.testing.assert_array_equal(np.asarray(variant(lambda t, p: colorize(t, p, "none"), tiles, patches)), tiles)


def grid_distances(tiles_grid, min_distance):
    """Closest distance (in cells) between two uses of the same tile, and the largest use count."""
    rows, cols = tiles_grid.shape
    closest = np.inf
    positions = {}
    for r in range(rows):
        for c in range(cols):
            positions.setdefault(int(tiles_grid[r, c]), []).append((r, c))
    for cells in positions.values():
        a = np.asarray(cells, np.float64)
        if len(a) > 1:
            d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
            closest = min(closest, d[~np.eye(len(a), dtype=bool)].min())
    return closest, max(len(v) for v in positions.values())


@pytest.mark.parametrize("max_reuse,min_distance", [(3, 0.0), (None, 3.0), (2, 2.5)])
def test_assign_tiles_respects_reuse_rules(max_reuse, min_distance):
    rng = np.random.default_rng(1)
    rows, cols, n = 12, 15, 120
    queries = rng.standard_normal((rows * cols, 8)).astype(np.float32)
    dictionary = rng.standard_normal((n, 8)).astype(np.float32)
    dictionary[:3] *= 5  # three tiles every cell would want
    scores, candidates = match_tiles(queries, dictionary, top_k=8)
    full = queries @ dictionary.T
    result = assign_tiles(np.asarray(scores), np.asarray(candidates), rows=rows, cols=cols, tiles=n, max_reuse=max_reuse,
                          min_distance=min_distance, all_scores=lambda cell: full[cell])
    closest, most = grid_distances(result.tiles.reshape(rows, cols), min_distance)
    if max_reuse:
        assert most <= max_reuse
    assert closest >= min_distance
    np.testing.assert_allclose(result.scores, full[np.arange(rows * cols), result.tiles], rtol=1e-5)
    unconstrained = assign_tiles(np.asarray(scores), np.asarray(candidates), rows=rows, cols=cols, tiles=n)
    np.testing.assert_array_equal(unconstrained.tiles, np.asarray(candidates)[:, 0])
    assert result.scores.mean() < unconstrained.scores.mean()


def test_assign_tiles_refuses_an_impossible_cap():
    with pytest.raises(ValueError, match="covers only 10 of 12 cells"):
        assign_tiles(np.zeros((12, 1)), np.zeros((12, 1), np.int64), rows=3, cols=4, tiles=5, max_reuse=2)


def test_svd_recall_on_a_library_of_sample_patches(record_property):
    """Recall@1 of the default compressed matching against exact matching, on real image patches."""
    tiles = np.concatenate([sample_cells(n) for n in ("chelsea.png", "coffee.png", "rocket.jpg", "brick.png")])
    queries = sample_cells("astronaut.png")
    fn = feature_function(FeatureConfig.color("none"))
    dictionary, query_features = batched_features(fn, tiles), batched_features(fn, queries)
    k = auto_svd_k(dictionary)
    exact = np.asarray(match_tiles(query_features, dictionary)[1])[:, 0]
    compressed = svd_compress(jnp.asarray(dictionary), k)
    approx = np.asarray(match_tiles(compress_queries(query_features, compressed), compressed.dictionary)[1])[:, 0]
    recall = float((approx == exact).mean())
    record_property("recall_at_1", recall)
    record_property("k", k)
    print(f"\n{len(tiles)} tiles x {dictionary.shape[1]} colour features: default k={k}, energy {float(compressed.energy):.5f}, recall@1 {recall:.3f}")
    assert k < dictionary.shape[1]
    assert recall >= 0.9


def test_folder_library_skips_bad_files_and_reindexes_on_change(tile_folder, tmp_path):
    settings = FeatureConfig.color("none")
    library = build_library(str(tile_folder), settings, ColorMode.none)
    assert len(library) == 60 and library.skipped == ["broken.jpg"]
    assert library.entries[0] == "chelsea/00.png"
    path = tmp_path / "lib.npz"
    save_library(path, library)
    loaded = load_library(path)
    np.testing.assert_array_equal(loaded.features, library.features)
    assert loaded.entries == library.entries and is_current(loaded, settings, folder=tile_folder)
    assert not is_current(loaded, FeatureConfig.color("multiply"), folder=tile_folder)
    (tile_folder / "chelsea" / "00.png").touch()
    os.utime(tile_folder / "chelsea" / "00.png", ns=(1, 1))
    assert not is_current(loaded, settings, folder=tile_folder)
    # the same tiles render exactly as they were indexed
    rendered = library.render([0, 59], 16)
    np.testing.assert_allclose(np.asarray(color_features(rendered)), library.features[[0, 59]], atol=1e-6)


def test_mosaic_cells_show_one_tile_each_and_respect_the_rules(tile_folder):
    target = sample_image("astronaut.png")
    library = with_svd(build_library(str(tile_folder), FeatureConfig.color("none"), ColorMode.none), 8)
    result = make_mosaic(MosaicConfig(patch=32, render=24, max_reuse=3, min_distance=2.0), target, library)
    rows, cols = result.tiles.shape
    assert (rows, cols) == (8, 8) and result.image.shape == (8 * 24, 8 * 24, 3)
    cells = np.asarray(split_cells(result.image, rows, cols))
    rendered = library.render(result.tiles.reshape(-1), 24)
    np.testing.assert_allclose(cells, rendered, atol=1e-6)
    closest, most = grid_distances(result.tiles, 2.0)
    assert most <= 3 and closest >= 2.0
    stats = result.stats
    assert stats["patches"] == 64 and stats["tiles"] == 60 and stats["k"] == 8 and 0 < stats["energy_kept"] <= 1
    assert stats["mean_score"] <= stats["unconstrained_mean_score"]


def test_gabor_mosaic_multiply_keeps_patch_colours():
    target = sample_image("coffee.png", 64, 96)
    library = build_library("gabor", FeatureConfig.color("multiply"), ColorMode.multiply)
    assert len(library) == 384
    result = make_mosaic(MosaicConfig(patch=8, render=8), target, library)
    cells = np.asarray(split_cells(result.image, 8, 12))
    patches = np.asarray(split_cells(target, 8, 12))
    unclipped = cells.max(axis=(1, 2, 3)) < 1
    np.testing.assert_allclose(cells.mean(axis=(1, 2))[unclipped], patches.mean(axis=(1, 2))[unclipped], atol=2e-3)
    # exact matching (k = 0) picks each patch's best tile by brute force
    fn = feature_function(library.settings)
    queries = batched_features(fn, patches)
    best = np.argmax(queries @ library.features.T, axis=1)
    scores = queries @ library.features.T
    chosen = result.tiles.reshape(-1)
    np.testing.assert_allclose(scores[np.arange(len(chosen)), chosen], scores[np.arange(len(best)), best], atol=1e-5)


def test_vgg_feature_library_equals_pytorch_features(torch_model, torch_params, tile_folder):
    import torch
    from torch_reference import features

    settings = FeatureConfig.vgg("none", layer="relu3_1", size=32, weights="test")
    library = build_library(str(tile_folder), settings, ColorMode.none, params=torch_params)
    assert library.features.shape == (60, 256)
    tiles = np.stack([load_tile(tile_folder / entry, 32) for entry in library.entries])
    maps = features(torch_model, tiles, ("relu3_1",), dtype=torch.float64)["relu3_1"].mean(dim=(2, 3)).numpy()
    expected = maps / np.linalg.norm(maps, axis=1, keepdims=True)
    np.testing.assert_allclose(library.features, expected, atol=1e-5)
    target = sample_image("chelsea.png")
    result = make_mosaic(MosaicConfig(patch=32), target, library, torch_params)
    assert result.image.shape == (5 * 32, 8 * 32, 3)
    cells = np.asarray(split_cells(np.asarray(resize(target, 5 * 32, 8 * 32)), 5, 8))
    patch_maps = features(torch_model, cells, ("relu3_1",), dtype=torch.float64)["relu3_1"].mean(dim=(2, 3)).numpy()
    best = np.argmax(patch_maps @ expected.T, axis=1)  # the normalised patch's ranking is its raw ranking
    np.testing.assert_array_equal(result.tiles.reshape(-1), best)
