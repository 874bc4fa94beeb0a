"""Mosaic colours: Reinhard transfer per tile, the palette matched either way (phomo), the target
overlaid (metapixel's --cheat), and metapixel's subpixel features."""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from helpers import one_line_error, run_cli
from jaxmosaic import ConfigError, lab_to_rgb, overlay, reinhard_transfer, resize
from jaxmosaic.io.images import load_image
from jaxmosaic.search import match_tiles
from jaxmosaic.techniques.mosaic import (
    ColorMode,
    FeatureConfig,
    LibraryConfig,
    MosaicColorConfig,
    MosaicConfig,
    area_downscale,
    build_library,
    colorize,
    feature_config,
    feature_function,
    lab_statistics,
    load_library,
    make_mosaic,
    palette_mosaic,
    recolored_library,
    save_library,
    subpixel_features,
    tile_lab_statistics,
    transfer_lab_statistics,
)
from jaxmosaic.techniques.mosaic.schema import FeatureSettings

# sRGB (IEC 61966-2-1) -> XYZ (D65) -> CIE Lab, written out in float64 as the references state it
_M = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def reference_lab(rgb) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    t = linear @ _M.T / _WHITE
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_moments(images) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (mean, std) of each Lab channel over the pixels: (..., 3) each."""
    lab = reference_lab(images)
    return lab.mean(axis=(-3, -2)), lab.std(axis=(-3, -2))


def test_lab_to_rgb_inverts_rgb_to_lab():
    rgb = np.random.default_rng(0).uniform(size=(500, 3))
    np.testing.assert_allclose(np.asarray(lab_to_rgb(reference_lab(rgb).astype(np.float32))), rgb, atol=2e-5)
    np.testing.assert_allclose(np.asarray(lab_to_rgb(np.float32([[53.2408, 80.0925, 67.2032], [100, 0, 0]]))),
                               [[1, 0, 0], [1, 1, 1]], atol=1e-4)


def test_reinhard_moves_each_tiles_lab_mean_and_spread_to_its_cell(variant):
    rng = np.random.default_rng(1)
    tiles = rng.uniform(0.3, 0.7, size=(6, 12, 12, 3)).astype(np.float32)
    cells = (rng.uniform(0.35, 0.6, size=(6, 1, 1, 3)) + rng.uniform(-0.08, 0.08, size=(6, 12, 12, 3))).astype(np.float32)
    out = np.asarray(variant(lambda t, c: colorize(t, c, "reinhard"), tiles, cells))
    assert 0 < out.min() and out.max() < 1  # nothing clipped: the statistics must then match
    np.testing.assert_allclose(out, np.asarray(reinhard_transfer(tiles, cells)), atol=1e-6)
    (mean, std), (cell_mean, cell_std) = lab_moments(out), lab_moments(cells)
    np.testing.assert_allclose(mean, cell_mean, atol=2e-3)  # float32 through Lab and back
    np.testing.assert_allclose(std, cell_std, atol=2e-3)
    # saved as 8-bit: each value moves by at most half a level (0.5 / 255); in Lab that is at most
    # 0.5 / 255 * max |dLab / dRGB| (~116 / 3 / 0.3 for L at these colours, ~200 for b) ~ 0.4 per
    # pixel, and zero on average, so over 144 pixels the mean and spread move by far less
    saved = np.round(out * 255) / 255
    (mean8, std8) = lab_moments(saved)
    np.testing.assert_allclose(mean8, cell_mean, atol=0.1)
    np.testing.assert_allclose(std8, cell_std, atol=0.15)


def test_reinhard_keeps_a_flat_tile_flat_at_the_cells_mean():
    flat = np.full((1, 8, 8, 3), 0.5, np.float32)
    cell = np.random.default_rng(2).uniform(0.3, 0.6, size=(1, 8, 8, 3)).astype(np.float32)
    out = np.asarray(reinhard_transfer(flat, cell))
    assert np.ptp(out.reshape(-1, 3), axis=0).max() < 1e-6
    # float32 rounding of a flat channel's mean (~1e-5 of L) divided by eps = 0.1, times the cell's spread
    np.testing.assert_allclose(reference_lab(out[0, 0, 0]), lab_moments(cell)[0][0], atol=1e-2)


def mid_tiles(folder, count: int, rng) -> None:
    """Tiles whose pixels stay in [0.3, 0.7], so that no palette transfer here clips."""
    folder.mkdir()
    for i in range(count):
        tint = rng.uniform(0.4, 0.6, size=3)
        pixels = np.clip(tint + rng.uniform(-0.1, 0.1, size=(16, 16, 3)), 0.3, 0.7)
        Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(folder / f"{i}.png")


@pytest.fixture
def mid_library(tmp_path):
    mid_tiles(tmp_path / "tiles", 24, np.random.default_rng(3))
    return build_library(str(tmp_path / "tiles"), FeatureConfig.color(ColorMode.none), ColorMode.none)


def smooth_target(seed: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.35, 0.65, size=(4, 4, 3))
    return np.clip(np.kron(coarse, np.ones((8, 8, 1))) + rng.uniform(-0.03, 0.03, size=(32, 32, 3)), 0, 1).astype(np.float32)


def test_target_to_tiles_gives_the_target_the_tiles_pooled_lab_statistics(mid_library):
    pooled = mid_library.render(np.arange(len(mid_library)), 16)
    pooled_lab = reference_lab(pooled).reshape(-1, 3)
    stats = tile_lab_statistics(mid_library, 16)
    np.testing.assert_allclose(stats.mean, pooled_lab.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(stats.std, pooled_lab.std(axis=0), atol=1e-3)
    target = smooth_target()
    moved = np.asarray(transfer_lab_statistics(target, lab_statistics(target), stats))
    assert 0 < moved.min() and moved.max() < 1
    lab = reference_lab(moved).reshape(-1, 3)
    np.testing.assert_allclose(lab.mean(axis=0), pooled_lab.mean(axis=0), atol=5e-3)
    np.testing.assert_allclose(lab.std(axis=0), pooled_lab.std(axis=0), atol=5e-3)


def test_tiles_to_target_recolours_the_tiles_and_their_features(mid_library):
    target = smooth_target(5)
    wanted = lab_statistics(target)
    recolored = recolored_library(mid_library, tile_lab_statistics(mid_library, 16), wanted)
    tiles = recolored.render(np.arange(len(recolored)), 16)
    assert 0 < tiles.min() and tiles.max() < 1
    lab = reference_lab(tiles).reshape(-1, 3)
    target_lab = reference_lab(target).reshape(-1, 3)
    np.testing.assert_allclose(lab.mean(axis=0), target_lab.mean(axis=0), atol=5e-3)
    np.testing.assert_allclose(lab.std(axis=0), target_lab.std(axis=0), atol=5e-3)
    # the features describe the recoloured tiles: each one's nearest row is its own
    queries = np.asarray(feature_function(recolored.settings)(tiles))
    _, own = match_tiles(queries, recolored.features)
    np.testing.assert_array_equal(np.asarray(own)[:, 0], np.arange(len(recolored)))
    _, stale = match_tiles(queries, mid_library.features)
    assert (np.asarray(stale)[:, 0] != np.arange(len(recolored))).any()  # the library's own rows would not do


def test_tiles_to_target_refuses_a_projected_library(mid_library):
    projected = dataclasses.replace(mid_library, svd={"k": 2, "basis": np.eye(mid_library.dimension, 2, dtype=np.float32),
                                                      "singular_values": np.ones(2, np.float32), "energy": 1.0,
                                                      "projected": True})
    with pytest.raises(ValueError, match="projected"):
        recolored_library(projected, lab_statistics(smooth_target()), lab_statistics(smooth_target(6)))


@pytest.mark.parametrize("percent", [0, 1, 30, 50, 62.5, 99, 100])
def test_overlay_is_exact_on_random_bytes(percent, variant):
    rng = np.random.default_rng(int(percent * 10))
    mosaic, target = (rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8) for _ in range(2))
    got = np.asarray(variant(lambda m, t: overlay(m, t, percent), mosaic, target))
    expected = np.floor(((100 - percent) * mosaic.astype(np.float64) + percent * target.astype(np.float64)) / 100 + 0.5)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected.astype(np.uint8))
    # metapixel's 16.16 fixed point truncates each term: never above ours, at most two levels below
    opacity = int(percent) * 0x10000 // 100
    cheat = ((mosaic.astype(np.int64) * (0x10000 - opacity)) >> 16) + ((target.astype(np.int64) * opacity) >> 16)
    if percent == int(percent):
        assert 0 <= (got.astype(np.int64) - cheat).min() and (got.astype(np.int64) - cheat).max() <= 2


def test_area_downscale_is_the_mean_of_the_covered_area():
    image = np.random.default_rng(7).uniform(size=(2, 16, 13, 3)).astype(np.float32)
    # 16 and 13 px to 5: every pixel split 5 ways, then 5 equal blocks averaged
    fine = np.repeat(np.repeat(image, 5, axis=1), 5, axis=2)
    expected = fine.reshape(2, 5, 16, 5, 13, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(area_downscale(image, 5, 5)), expected, atol=1e-5)


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.275, -0.321], [0.212, -0.528, 0.311]])  # metapixel's color.c


def metapixel_subpixels(images: np.ndarray, space: str) -> np.ndarray:
    """metapixel's subpixels in [0, 1], from images whose sides are multiples of 5 (block means)."""
    n, h, w, _ = images.shape
    cells = images.astype(np.float64).reshape(n, 5, h // 5, 5, w // 5, 3).mean(axis=(2, 4))
    if space == "hsv":
        return np.array([colorsys.rgb_to_hsv(*pixel) for pixel in cells.reshape(-1, 3)]).reshape(cells.shape)
    if space == "yiq":
        return cells @ _YIQ.T
    return cells


def metapixel_distances(patches: np.ndarray, tiles: np.ndarray, space: str, weights) -> np.ndarray:
    """metric.c's subpixel_compare: sum over channels c and subpixels i of w_c (p_ic - t_ic)^2."""
    p, t = metapixel_subpixels(patches, space), metapixel_subpixels(tiles, space)
    diff = p[:, None] - t[None]
    return np.einsum("pthwc,c->pt", diff * diff, np.asarray(weights, np.float64))


@pytest.mark.parametrize("space,weights", [("hsv", (1, 1, 1)), ("rgb", (2, 1, 0.5)), ("yiq", (1, 0.25, 3))])
def test_subpixel_features_rank_tiles_as_metapixels_metric(space, weights):
    rng = np.random.default_rng(8)
    tiles = rng.uniform(size=(40, 20, 20, 3)).astype(np.float32)
    patches = np.clip(tiles[rng.integers(0, 40, 15)] + rng.normal(0, 0.25, size=(15, 20, 20, 3)), 0, 1).astype(np.float32)
    patches[:3] = rng.uniform(size=(3, 20, 20, 3))
    expected = metapixel_distances(patches, tiles, space, weights)
    rows = np.asarray(subpixel_features(tiles, space=space, weights=weights))
    queries = np.asarray(subpixel_features(patches, space=space, weights=weights, patches=True))
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1, atol=1e-5)
    scores = queries @ rows.T
    np.testing.assert_array_equal(np.argmax(scores, axis=1), np.argmin(expected, axis=1))
    # score = (|v_p|^2 - d) / (2 M |(v_p, 1)|): the distance read back from the scores is metapixel's
    largest = 25 * sum(weights)
    norms = np.sum(queries[:, :-2] ** 2, axis=1) / queries[:, -2] ** 2  # |v_p|^2
    distances = norms[:, None] - scores * 2 * np.sqrt(largest + largest**2 / 4) / queries[:, -2:-1]
    np.testing.assert_allclose(distances, expected, rtol=2e-3 if space == "yiq" else 1e-4, atol=1e-2)


def test_subpixel_settings_are_stored_and_old_headers_still_read(tmp_path):
    settings = FeatureConfig.subpixel(ColorMode.none, space="yiq", weights=(2, 1, 1))
    library = build_library("gabor", settings, ColorMode.none)
    save_library(tmp_path / "lib.npz", library)
    loaded = load_library(tmp_path / "lib.npz")
    assert loaded.settings == settings and loaded.features.shape == (384, 77)
    np.testing.assert_array_equal(loaded.features, library.features)
    old = {key: value for key, value in FeatureConfig.color(ColorMode.none).as_dict().items() if not key.startswith("subpixel")}
    assert FeatureSettings.model_validate(old).config() == FeatureConfig.color(ColorMode.none)
    result = run_cli("library", "info", tmp_path / "lib.npz")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["features"] == 77 and summary["settings"]["subpixel_space"] == "yiq"
    assert summary["settings"]["subpixel_weights"] == [2.0, 1.0, 1.0]


@pytest.mark.parametrize("options", [["--color", "reinhard"], ["--color-tiles-to-target"], ["--color-target-to-tiles"],
                                     ["--overlay", "40"], ["--features", "subpixel", "--subpixel-space", "rgb"]])
def test_mosaic_cli_runs_each_colour_option(tmp_path, options):
    target, out, metrics = tmp_path / "t.png", tmp_path / "m.png", tmp_path / "m.json"
    Image.fromarray(np.round(smooth_target(9)[:24] * 255).astype(np.uint8)).save(target)
    result = run_cli("mosaic", target, "-o", out, "--patch", 8, "--render", 6, "--metrics", metrics, *options)
    assert result.exit_code == 0, result.output
    assert load_image(out).shape == (3 * 6, 4 * 6, 3)
    stats = json.loads(metrics.read_text())["mosaic"]
    if "--overlay" in options:
        assert stats["overlay"] == 40
    if "--color-target-to-tiles" in options or "--color-tiles-to-target" in options:
        assert stats["palette"]["direction"] in ("target-to-tiles", "tiles-to-target")


@pytest.mark.parametrize("options,fragments", [
    (["--overlay", "-1"], ["--overlay", "at least 0"]),
    (["--overlay", "101"], ["--overlay", "at most 100"]),
    (["--color-tiles-to-target", "--color-target-to-tiles"], ["--color-tiles-to-target", "--color-target-to-tiles"]),
    (["--features", "subpixel", "--subpixel-weights", "0,0,0"], ["--subpixel-weights"]),
])
def test_mosaic_cli_refuses_bad_colour_options_in_one_line(tmp_path, options, fragments):
    target, out = tmp_path / "t.png", tmp_path / "m.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(target)
    one_line_error(run_cli("mosaic", target, "-o", out, "--patch", 8, *options), *fragments)
    assert not out.exists()


def test_color_config_checks_its_values():
    assert MosaicColorConfig(overlay=12).overlay == 12.0
    with pytest.raises(ValueError, match="overlay"):
        MosaicColorConfig(overlay=100.5)


def test_cache_keys_of_colour_and_network_features_are_those_before_subpixel_features():
    """The settings key every cached library (a hash of their JSON); values from before subpixel
    features existed, so that no cache is orphaned."""
    color = FeatureConfig.color(ColorMode.multiply).as_dict()
    assert color == {"kind": "color", "view": "multiply", "grid": 4, "size": 16, "layer": "relu4_1", "pool": "mean", "weights": ""}
    alexnet = FeatureConfig.alexnet(ColorMode.none, weights="abc123").as_dict()
    assert alexnet == {"kind": "alexnet", "view": "none", "grid": 4, "size": 224, "layer": "avgpool", "pool": "flat",
                       "weights": "abc123"}
    key = hashlib.sha256(json.dumps(["gabor-bank", "x", color, 64], sort_keys=True).encode()).hexdigest()[:20]
    assert key == "e49497e7de2517785043"
    key = hashlib.sha256(json.dumps(["gabor-bank", "x", alexnet, 64], sort_keys=True).encode()).hexdigest()[:20]
    assert key == "9df3cec9a96f5b741f87"
    subpixel = FeatureConfig.subpixel(ColorMode.none, space="yiq", weights=(2, 1, 1)).as_dict()
    assert subpixel["subpixel_space"] == "yiq" and subpixel["subpixel_weights"] == [2.0, 1.0, 1.0]
    assert FeatureSettings.model_validate(subpixel).config() == FeatureConfig.subpixel(ColorMode.none, space="yiq",
                                                                                         weights=(2, 1, 1))


@pytest.fixture(scope="module")
def subpixel_gabor():
    return build_library("gabor", FeatureConfig.subpixel(ColorMode.none, space="rgb"), ColorMode.none)


def test_subpixel_mosaic_picks_metapixels_nearest_tile_for_each_cell(subpixel_gabor):
    assert subpixel_gabor.svd is None  # exact matching (svd_k 0)
    rng = np.random.default_rng(11)
    target = np.clip(np.kron(rng.uniform(0.1, 0.9, size=(3, 5, 3)), np.ones((20, 20, 1)))
                     + rng.normal(0, 0.05, size=(60, 100, 3)), 0, 1).astype(np.float32)
    target[:20, :20] = 0.02  # a dark cell, where |score| would pick the farthest tile
    result = make_mosaic(MosaicConfig(patch=20), target, subpixel_gabor)
    fitted = np.asarray(resize(target, 60, 100))
    patches = fitted.reshape(3, 20, 5, 20, 3).transpose(0, 2, 1, 3, 4).reshape(15, 20, 20, 3)
    tiles = subpixel_gabor.render(np.arange(len(subpixel_gabor)), 20)
    expected = np.argmin(metapixel_distances(patches, tiles, "rgb", (1, 1, 1)), axis=1)
    np.testing.assert_array_equal(result.tiles.reshape(-1), expected)
    with pytest.raises(ConfigError, match="abs cannot be used with subpixel features") as error:
        make_mosaic(MosaicConfig(patch=20, score="abs"), target, subpixel_gabor)
    assert error.value.field == "score"


def test_a_subpixel_library_refuses_other_subpixel_options(tmp_path, subpixel_gabor):
    assert feature_config(LibraryConfig(), ColorMode.none, subpixel_gabor) == subpixel_gabor.settings
    assert feature_config(LibraryConfig(subpixel_space="rgb", subpixel_weights=(1, 1, 1)), ColorMode.none,
                          subpixel_gabor) == subpixel_gabor.settings
    with pytest.raises(ConfigError, match="the library's subpixel features are in rgb") as error:
        feature_config(LibraryConfig(subpixel_space="hsv"), ColorMode.none, subpixel_gabor)
    assert error.value.field == "subpixel_space"
    save_library(tmp_path / "lib.npz", subpixel_gabor)
    target, out = tmp_path / "t.png", tmp_path / "m.png"
    Image.fromarray(np.round(smooth_target(9)[:24] * 255).astype(np.uint8)).save(target)
    one_line_error(run_cli("mosaic", target, "-o", out, "--patch", 8, "--tiles", tmp_path / "lib.npz",
                           "--subpixel-weights", "2,1,1"), "--subpixel-weights", "2,1,1", "1,1,1")
    one_line_error(run_cli("mosaic", target, "-o", out, "--patch", 8, "--features", "subpixel", "--score", "abs"),
                   "--score", "subpixel")
    assert not out.exists()


def test_tiles_to_target_refuses_a_projected_library_before_rendering_any_tile(mid_library):
    projected = dataclasses.replace(mid_library, svd={"k": 2, "basis": np.eye(mid_library.dimension, 2, dtype=np.float32),
                                                      "singular_values": np.ones(2, np.float32), "energy": 1.0,
                                                      "projected": True})
    rendered = []
    projected.render = lambda indices, size: rendered.append(size)
    with pytest.raises(ConfigError, match="projected") as error:
        palette_mosaic(MosaicConfig(patch=8), MosaicColorConfig(color_tiles_to_target=True), smooth_target(), projected)
    assert error.value.field == "color_tiles_to_target" and not rendered


def test_the_overlay_of_the_cli_is_the_plain_mosaic_blended_with_the_fitted_target(tmp_path):
    target, plain, blended = tmp_path / "t.png", tmp_path / "plain.png", tmp_path / "blended.png"
    Image.fromarray(np.round(smooth_target(9)[:24] * 255).astype(np.uint8)).save(target)
    for out, options in ((plain, []), (blended, ["--overlay", "40"])):
        result = run_cli("mosaic", target, "-o", out, "--patch", 8, "--render", 6, *options)
        assert result.exit_code == 0, result.output
    under = np.asarray(resize(resize(load_image(target), 24, 32), 18, 24))
    under = np.round(np.clip(under, 0, 1) * 255).astype(np.float64)
    mosaic = np.asarray(Image.open(plain).convert("RGB"), np.float64)
    expected = np.floor((60 * mosaic + 40 * under) / 100 + 0.5)
    got = np.asarray(Image.open(blended).convert("RGB"), np.float64)
    assert not np.array_equal(got, mosaic)
    np.testing.assert_array_equal(got, expected)
