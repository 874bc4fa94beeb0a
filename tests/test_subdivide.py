"""Adaptive mosaic cells: the contrast rule against numpy, cell counts on an image with known busy
regions, matching, assignment and rendering of cells of several sizes, and the command line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from helpers import SAMPLES, one_line_error, run_cli, sample_image
from scipy.optimize import linear_sum_assignment

from jaxmosaic import ConfigError, load_image, resize, subdivide
from jaxmosaic.techniques.mosaic import (
    ColorMode,
    FeatureConfig,
    MosaicColorConfig,
    MosaicConfig,
    build_library,
    cell_contrast,
    feature_function,
    lab_statistics,
    make_mosaic,
    mosaic_cells,
    mosaic_grid,
    mosaic_memory,
    palette_mosaic,
    tile_lab_statistics,
    transfer_lab_statistics,
)
from jaxmosaic.techniques.mosaic.quadtree import cell_centres, cells_per_size


def numpy_contrast(block: np.ndarray) -> float:
    """The issue's rule, transcribed: the mean over channels of the standard deviation of the pixels."""
    return float(np.asarray(block, np.float64).std(axis=(0, 1)).mean())


def numpy_subdivide(image: np.ndarray, cell: int, thresholds) -> list[tuple[int, int, int]]:
    """A direct recursive transcription of the rule, in float64: split while contrast > threshold."""
    out = []

    def visit(y, x, size, level):
        if level < len(thresholds) and numpy_contrast(image[y : y + size, x : x + size]) > thresholds[level]:
            half = size // 2
            for dy, dx in ((0, 0), (0, half), (half, 0), (half, half)):
                visit(y + dy, x + dx, half, level + 1)
        else:
            out.append((y, x, size))

    for top in range(0, image.shape[0], cell):
        for left in range(0, image.shape[1], cell):
            visit(top, left, cell, 0)
    return out


def test_cell_contrast_equals_numpy(variant):
    image = np.random.default_rng(0).uniform(size=(24, 40, 3)).astype(np.float32) ** 3
    got = np.asarray(variant(lambda im: cell_contrast(im, 8), image))
    expected = [[numpy_contrast(image[r : r + 8, c : c + 8]) for c in range(0, 40, 8)] for r in range(0, 24, 8)]
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def busy_image() -> np.ndarray:
    """64 x 64 flat grey with noise in the top-left quadrant, an 8 x 8 noisy block at (32, 48) and a
    4 x 4 one at (48, 0)."""
    rng = np.random.default_rng(1)
    image = np.full((64, 64, 3), 0.5, np.float32)
    image[:32, :32] = rng.uniform(size=(32, 32, 3))
    image[32:40, 48:56] = rng.uniform(size=(8, 8, 3))
    image[48:52, 0:4] = rng.uniform(size=(4, 4, 3))
    return image


def test_cell_counts_on_an_image_with_known_busy_regions():
    image = busy_image()
    cells = subdivide(image, 16, (0.1, 0.1))
    # the quadrant: 4 top cells, each split into 4, each of those into 4 cells of 4 px (64); the
    # 8 px block: its top cell (contrast sqrt(1/48) = 0.14 > 0.1) splits, its noisy quarter splits
    # again (4 cells of 4 px) and the three flat quarters stay 8 px; the 4 px block makes its top
    # cell's contrast 0.07 < 0.1, so that cell stays whole, as the other 10 flat ones do
    assert cells_per_size(cells) == {"16": 11, "8": 3, "4": 68}
    assert cells.dtype == np.int64 and cells.shape == (82, 3)
    assert numpy_contrast(image[48:64, 0:16]) < 0.1 < numpy_contrast(image[32:48, 48:64])
    # order: top-level cells row-major, quadtree order (TL, TR, BL, BR) depth-first inside
    np.testing.assert_array_equal(cells[:5], [[0, 0, 4], [0, 4, 4], [4, 0, 4], [4, 4, 4], [0, 8, 4]])
    assert [tuple(c) for c in cells[32:35]] == [(0, 32, 16), (0, 48, 16), (16, 0, 4)]  # after the first two top cells' 32
    assert [tuple(c) for c in cells[66:68]] == [(16, 32, 16), (16, 48, 16)]
    inside = cells[[tuple(c[:2]) == (32, 48) or (32 <= c[0] < 48 and c[1] >= 48) for c in cells]]
    assert [tuple(c) for c in inside] == [(32, 48, 4), (32, 52, 4), (36, 48, 4), (36, 52, 4), (32, 56, 8), (40, 48, 8), (40, 56, 8)]
    covered = np.zeros((64, 64), np.int64)
    for y, x, size in cells:
        covered[y : y + size, x : x + size] += 1
    assert (covered == 1).all()  # the cells tile the image exactly
    # one threshold stops at the first level; a threshold above every contrast splits nothing
    assert cells_per_size(subdivide(image, 16, (0.1,))) == {"16": 11, "8": 20}
    assert cells_per_size(subdivide(image, 16, (0.5, 0.0))) == {"16": 16}


def test_subdivide_equals_a_numpy_transcription():
    rng = np.random.default_rng(2)
    amplitude = np.kron(rng.uniform(0, 1, size=(12, 16)) ** 4 * 0.5, np.ones((4, 4)))[..., None]
    image = np.clip(0.5 + amplitude * rng.standard_normal((48, 64, 3)), 0, 1).astype(np.float32)
    thresholds = (0.11, 0.13, 0.12)
    for level, threshold in enumerate(thresholds):  # no contrast so close to its threshold that float32 could flip it
        size = 16 >> level
        contrasts = [numpy_contrast(image[r : r + size, c : c + size]) for r in range(0, 48, size) for c in range(0, 64, size)]
        assert min(abs(np.asarray(contrasts) - threshold)) > 1e-5
    expected = numpy_subdivide(image, 16, thresholds)
    got = subdivide(image, 16, thresholds)
    assert [tuple(int(v) for v in row) for row in got] == expected
    assert len(set(map(tuple, got[:, 2:].tolist()))) == 4  # every level occurs


@pytest.mark.parametrize("cell,thresholds,fragment", [
    (8, (0.1,) * 4, "below 1 px"),
    (12, (0.1, 0.1, 0.1), "divisible by 8, got 12"),
    (16, (0.7,), "at most 0.5"),
    (16, (-0.1,), "at least 0"),
    (16, (), "no values"),
    (24, (0.1,), "not a whole number of 24 px cells"),
])
def test_subdivide_refuses_bad_settings(cell, thresholds, fragment):
    with pytest.raises(ConfigError, match=fragment) as error:
        subdivide(np.zeros((32, 32, 3), np.float32), cell, thresholds)
    assert error.value.field == "subdivide"


@pytest.fixture(scope="module")
def gabor_plain():
    return build_library("gabor", FeatureConfig.color("none"), ColorMode.none)


@pytest.fixture(scope="module")
def capped_runs(gabor_plain):
    """The coffee sample as subdivided mosaics of the uncoloured Gabor tiles, each tile at most once:
    greedy and optimal, with each cell's features computed here one cell at a time."""
    target = sample_image("coffee.png", 64, 96)
    runs = {name: make_mosaic(MosaicConfig(patch=16, render=8, subdivide=(0.05, 0.05), max_reuse=1, assign=name),
                              target, gabor_plain) for name in ("greedy", "optimal")}
    fitted = np.asarray(resize(target, 64, 96))
    describe = feature_function(gabor_plain.settings)
    cells = runs["greedy"].cells
    queries = np.zeros((len(cells), gabor_plain.dimension), np.float64)
    for size in np.unique(cells[:, 2]):
        pick = np.flatnonzero(cells[:, 2] == size)
        patches = np.stack([fitted[y : y + s, x : x + s] for y, x, s in cells[pick]])
        queries[pick] = np.asarray(describe(patches))
    return runs, fitted, queries @ gabor_plain.features.T.astype(np.float64)


def test_subdivided_cells_are_matched_from_their_own_patches_and_rendered_at_their_size(gabor_plain, capped_runs):
    runs, fitted, scores = capped_runs
    result = runs["greedy"]
    np.testing.assert_array_equal(result.cells, subdivide(fitted, 16, (0.05, 0.05)))
    assert result.image.shape == (32, 48, 3) and result.tiles.shape == (len(result.cells),)
    assert result.stats["cells_per_size"] == cells_per_size(result.cells) and len(result.stats["cells_per_size"]) == 3
    assert result.stats["patches"] == len(result.cells) <= len(gabor_plain)
    np.testing.assert_allclose(result.scores, scores[np.arange(len(scores)), result.tiles], atol=1e-5)
    assert result.stats["unconstrained_mean_score"] == pytest.approx(scores.max(axis=1).mean(), abs=1e-5)
    for size in np.unique(result.cells[:, 2]):  # colour "none": each cell shows its tile, drawn at half the cell's size
        pick = result.cells[:, 2] == size
        half = int(size) // 2
        shown = np.stack([result.image[y // 2 : y // 2 + half, x // 2 : x // 2 + half] for y, x, _ in result.cells[pick]])
        np.testing.assert_allclose(shown, gabor_plain.render(result.tiles[pick], half), atol=1e-6)


def test_optimal_assignment_over_cells_of_every_size_is_the_dense_optimum(capped_runs):
    runs, _, scores = capped_runs
    cells = runs["optimal"].cells
    np.testing.assert_array_equal(cells, runs["greedy"].cells)
    cost = -scores
    rows, cols = linear_sum_assignment(cost)
    optimum = cost[rows, cols].sum()
    totals = {name: cost[np.arange(len(cells)), run.tiles].sum() for name, run in runs.items()}
    for run in runs.values():
        assert np.bincount(run.tiles).max() == 1  # the cap counts the cells of every size
    figures = runs["optimal"].stats["assignment"]
    assert totals["optimal"] == pytest.approx(optimum, abs=1e-4 * len(cells))
    assert figures["cost"] == pytest.approx(optimum, abs=1e-4 * len(cells))
    assert figures["greedy_cost"] == pytest.approx(totals["greedy"], abs=1e-4 * len(cells))
    assert totals["optimal"] <= totals["greedy"] + 1e-9 and optimum < totals["greedy"] - 1e-3


def test_repeats_are_kept_apart_between_the_centres_of_cells_of_every_size(gabor_plain):
    target = sample_image("coffee.png", 64, 96)
    result = make_mosaic(MosaicConfig(patch=16, render=4, subdivide=(0.05, 0.05), min_distance=1.5), target, gabor_plain)
    centres = cell_centres(result.cells, 16)
    assert result.cells[:, 2].min() == 4  # cells of 4 px, a quarter of the unit (the 16 px top-level cell)
    np.testing.assert_array_equal(centres * 16, result.cells[:, :2] + result.cells[:, 2:] / 2)
    same = result.tiles[:, None] == result.tiles[None, :]
    distance = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    np.fill_diagonal(same, False)
    assert same.any() and distance[same].min() >= 1.5
    assert result.stats["mean_score"] < result.stats["unconstrained_mean_score"]


def test_cli_subdivide_writes_the_right_size_and_counts_and_optimal_respects_the_cap(tmp_path):
    target = SAMPLES / "coffee.png"
    image = load_image(target)
    rows, cols, height, width = mosaic_grid(*image.shape[:2], 8, cols=8)
    expected = cells_per_size(subdivide(np.asarray(resize(image, height, width)), 8, (0.06, 0.06)))
    assert len(expected) == 3
    out, metrics = tmp_path / "m.png", tmp_path / "m.json"
    result = run_cli("mosaic", target, "-o", out, "--cols", 8, "--patch", 8, "--render", 4, "--subdivide", "0.06,0.06",
                     "--max-reuse", 1, "--assign", "optimal", "--metrics", metrics, "--preview")
    assert result.exit_code == 0, result.output
    counts = ", ".join(f"{n} of {size} px" for size, n in expected.items())
    assert f"subdivided cells: {counts}" in result.output
    assert f"{sum(expected.values())} (in {cols}x{rows}) cells from 384 tiles" in result.output  # the real count
    assert load_image(out).shape == (rows * 4, cols * 4, 3) and (tmp_path / "m-preview.png").exists()
    written = json.loads(metrics.read_text())
    mosaic = written["mosaic"]
    assert mosaic["cells_per_size"] == expected and mosaic["patches"] == sum(expected.values())
    assert written["settings"]["subdivide"] == [0.06, 0.06]
    figures = mosaic["assignment"]  # tiles used 0, 1, ... times: at most the cap of 1, over the cells of every size
    assert len(figures["uses"]) <= 2 and sum(t * n for t, n in enumerate(figures["uses"])) == sum(expected.values())
    assert len(figures["greedy_uses"]) <= 2
    assert figures["cost"] <= figures["greedy_cost"] + 1e-6 * abs(figures["greedy_cost"])
    assert mosaic["mean_score"] == pytest.approx(-figures["cost"] / sum(expected.values()), rel=1e-5)


@pytest.mark.parametrize("args,fragment", [
    (["--subdivide", "abc"], "expected comma-separated numbers"),
    (["--subdivide", "0.1,0.1,0.1,0.1"], "below 1 px"),
    (["--subdivide", "0.9"], "at most 0.5"),
    (["--patch", 12, "--subdivide", "0.1,0.1,0.1"], "--patch must be divisible by 8"),
    (["--render", 10, "--subdivide", "0.1,0.1"], "--render must be divisible by 4"),
    (["--cols", 20, "--max-reuse", 1, "--subdivide", "0"], "--max-reuse: 1 with 384 tiles covers only 384"),
])
def test_bad_subdivide_settings_are_refused_in_one_line(tmp_path, args, fragment):
    result = run_cli("mosaic", SAMPLES / "coffee.png", "-o", tmp_path / "m.png", "--patch", 8, *args)
    line = one_line_error(result, fragment)
    assert "--subdivide" in line or "--max-reuse" in line
    assert not (tmp_path / "m.png").exists()


def test_min_distance_is_measured_in_top_level_cells_whatever_is_split():
    flat = np.full((32, 64, 3), 0.5, np.float32)
    busy = flat.copy()
    busy[16:32, 48:64:2], busy[16:32, 49:64:2] = 1.0, 0.0  # one busy top-level cell, in a corner
    for image, count in ((flat, 8), (busy, 8 - 1 + 16)):
        cells = subdivide(image, 16, (0.1, 0.1))
        assert len(cells) == count
        centres = cell_centres(cells, 16)
        np.testing.assert_allclose(centres, (cells[:, :2] + cells[:, 2:] / 2) / 16)
        assert np.linalg.norm(centres[0] - centres[1]) == 1.0  # the two top-left 16 px cells: one cell apart
        assert np.linalg.norm(centres[0] - centres[4]) == 1.0  # and the one below the first
    small = cell_centres(subdivide(busy, 16, (0.1, 0.1)), 16)[7:]
    np.testing.assert_allclose(small[0], [1 + 1 / 8, 3 + 1 / 8])  # the first 4 px cell of the busy corner
    assert np.linalg.norm(small[0] - small[1]) == 0.25  # 4 px cells are a quarter of a cell apart


def test_thresholds_given_as_text_are_parsed_or_refused():
    image = busy_image()
    np.testing.assert_array_equal(subdivide(image, 16, "0.1, 0.1"), subdivide(image, 16, (0.1, 0.1)))
    np.testing.assert_array_equal(subdivide(image, 16, 0.1), subdivide(image, 16, (0.1,)))
    assert MosaicConfig(subdivide="0.05,0.1").subdivide == (0.05, 0.1)
    with pytest.raises(ConfigError, match="expected comma-separated numbers") as error:
        MosaicConfig(subdivide="0.1;0.2")
    assert error.value.field == "subdivide"


def test_the_memory_estimate_counts_the_real_cells_and_the_colour_options():
    config = MosaicConfig(cols=150, assign="optimal", max_reuse=2, subdivide=(0.1, 0.1, 0.1, 0.1))
    rows, cols, _, _ = mosaic_grid(3000, 4000, 16, cols=150)
    worst = mosaic_memory(config, (3000, 4000, 3), 64)
    plain = mosaic_memory(dataclasses.replace(config, subdivide=None), (3000, 4000, 3), 64)
    flat = mosaic_memory(config, (3000, 4000, 3), 64, cells=rows * cols)  # a flat target: nothing split
    some = mosaic_memory(config, (3000, 4000, 3), 64, cells=rows * cols + 3 * 500)  # 500 cells split once
    assert worst > 40 * 2**30 and flat == plain < 2**30 and plain < some < worst
    colors = MosaicColorConfig(color_target_to_tiles=True)
    assert mosaic_memory(config, (3000, 4000, 3), 64, cells=rows * cols, colors=colors) - flat == 2 * 3000 * 4000 * 3 * 4
    colors = MosaicColorConfig(color_tiles_to_target=True)
    assert mosaic_memory(config, (3000, 4000, 3), 64, cells=rows * cols, colors=colors, tiles=1000) - flat == 2 * 1000 * 64 * 4
    # the real cells of a small target: mostly flat, one busy corner split at every level
    target = np.full((64, 64, 3), 0.5, np.float32)
    target[48:, 48:] = np.random.default_rng(0).uniform(size=(16, 16, 3))
    cells = mosaic_cells(MosaicConfig(subdivide=(0.1, 0.1, 0.1)), target)
    np.testing.assert_array_equal(cells, subdivide(target, 16, (0.1, 0.1, 0.1)))
    assert len(cells) == 15 + 64 and mosaic_cells(MosaicConfig(), target) is None


def test_target_to_tiles_splits_the_target_as_given_not_as_recoloured():
    library = build_library("gabor", FeatureConfig.color(ColorMode.multiply), ColorMode.multiply)
    image = load_image(SAMPLES / "coffee.png")
    config = MosaicConfig(patch=8, render=4, cols=8, subdivide=(0.06, 0.06))
    rows, cols, height, width = mosaic_grid(*image.shape[:2], 8, cols=8)
    fitted = np.asarray(resize(image, height, width))
    expected = subdivide(fitted, 8, (0.06, 0.06))
    recoloured = np.asarray(transfer_lab_statistics(image, lab_statistics(image), tile_lab_statistics(library, 4)))
    assert cells_per_size(subdivide(np.asarray(resize(recoloured, height, width)), 8, (0.06, 0.06))) != cells_per_size(expected)
    seen = []
    result = palette_mosaic(config, MosaicColorConfig(color_target_to_tiles=True), image, library,
                            progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_array_equal(result.cells, expected)
    assert seen[-1] == (384, 384) and len(seen) == 2  # pooled in chunks of 256 tiles, progress after each


def test_the_memory_estimate_allows_for_every_cell_being_split():
    plain = mosaic_memory(MosaicConfig(cols=100, max_reuse=2, assign="optimal"), (1000, 1000, 3), 64)
    split = mosaic_memory(MosaicConfig(cols=100, max_reuse=2, assign="optimal", subdivide=(0.1, 0.1)), (1000, 1000, 3), 64)
    assert split > plain
