"""Tiled refinement: the tile grid and its windows, statistics taken tile by tile against the
whole image's, and a tiled style transfer against an untiled one (losses, seams, resume, CLI)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import SHALLOW_LAYERS, run_cli, sample_image
from jaxmosaic.io.images import load_image, save_image
from jaxmosaic.losses import gram_targets
from jaxmosaic.stages import Resume
from jaxmosaic.techniques.style import (StyleConfig, StyleInputs, style_problem, style_tiles, style_transfer,
                                        style_transfer_losses, style_targets)
from jaxmosaic.tiled_losses import tiled_grams, tiled_style_terms
from jaxmosaic.tiling import seam_ratio, tile_grid, tile_starts, tile_window, visit_order

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@pytest.mark.parametrize("length, tile, overlap", [(300, 128, 32), (256, 128, 32), (1000, 512, 64), (100, 128, 16)])
def test_tiles_cover_the_image_and_their_windows_blend(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and min(starts[-1] + tile, length) == length
    assert all(a + tile - b >= overlap for a, b in zip(starts, starts[1:]))  # every overlap at least the one asked
    grid = tile_grid(length, length // 2 + 1, tile, overlap)
    shape = (min(tile, length), min(tile, length // 2 + 1))
    best = np.zeros((length, length // 2 + 1))
    for top, left in grid:
        window = tile_window(top, left, shape, (length, length // 2 + 1), overlap)[..., 0]
        assert window.min() >= 0 and window.max() <= 1
        region = best[top:top + shape[0], left:left + shape[1]]
        np.maximum(region, window, out=region)
    assert best.min() >= 0.5  # every pixel is mostly some tile's own
    assert best[0, 0] == best[-1, -1] == 1.0  # the image's own edges are not faded


def test_a_window_fades_only_towards_neighbours():
    window = tile_window(0, 100, (128, 128), (128, 356), 32)[..., 0]
    assert window[0, 64] == 1.0 and window[-1, 64] == 1.0  # no neighbour above or below
    assert window[64, 0] < 0.01 and window[64, -1] < 0.01  # neighbours left and right
    np.testing.assert_allclose(window[64, :32] + window[64, :32][::-1], 1.0, atol=1e-6)  # sin^2 + cos^2


def test_each_pass_visits_every_tile_once_in_a_new_order():
    orders = [visit_order(12, index, seed=3) for index in range(4)]
    assert all(sorted(order) == list(range(12)) for order in orders)
    assert len({tuple(order) for order in orders}) == 4
    assert visit_order(12, 1, seed=3) == orders[1]


def test_tiled_grams_equal_the_whole_images(random_params):
    image = jax.random.uniform(jax.random.PRNGKey(4), (256, 224, 3))
    whole = jax.jit(lambda x: gram_targets(random_params, x, LAYERS, size=(200, 300)))(image)  # compiled whole: op by op costs more
    tiled = tiled_grams(random_params, image, LAYERS, tile=128, halo=96, size=(200, 300))
    for name in LAYERS:
        np.testing.assert_allclose(tiled[name], whole[name], rtol=2e-5, atol=2e-5 * float(jnp.max(whole[name])))
    bare = tiled_grams(random_params, image, ("relu5_1",), tile=128, halo=0)["relu5_1"]
    untiled = jax.jit(lambda x: gram_targets(random_params, x, ("relu5_1",))["relu5_1"])(image)
    assert float(jnp.max(jnp.abs(bare - untiled))) > 1e-3 * float(jnp.max(whole["relu5_1"]))
    with pytest.raises(ValueError, match="multiples of 32"):
        tiled_grams(random_params, image, LAYERS, tile=100, halo=96)


def test_tiled_terms_equal_the_untiled_loss(random_params):
    content = sample_image("astronaut.png", 256, 192)
    images = jnp.stack([jax.random.uniform(jax.random.PRNGKey(i), (256, 192, 3)) for i in range(2)])
    # the untiled references compiled whole (op by op they cost twice the CPU); 2 x 2 tiles of 128 px
    # (measured: content 6e-8 apart, style and TV equal; with 3 x 2 tiles of 96 px 1.2e-7)
    targets = jax.jit(lambda image, style: style_targets(random_params, image, [style]))(content, sample_image("brick.png", 160, 160))
    weights = {name: 0.2 for name in LAYERS}
    _, whole = jax.jit(lambda x, aims: style_transfer_losses(x, aims, random_params, layer_weights=weights))(images, targets)
    tiled = tiled_style_terms(random_params, images, content, targets.grams, weights, ("relu4_2",), tile=128, halo=96)
    for name in ("content", "style", "tv"):
        np.testing.assert_allclose(tiled[name], whole[name], rtol=1e-4)


@pytest.fixture(scope="module")
def tiled_and_untiled(random_params):
    """A 192 px style transfer, untiled and in 3 x 3 tiles of 96 px with 24 px overlap, same steps."""
    inputs = StyleInputs(sample_image("rocket.jpg", 192, 192), [sample_image("brick.png", 192, 192)])
    settings = {"size": 192, "steps": (12,)}
    untiled = style_transfer(StyleConfig(**settings), inputs, random_params)
    config = StyleConfig(**settings, tile=96, overlap=24, tile_steps=6)
    return inputs, config, untiled, style_transfer(config, inputs, random_params)


def test_tiled_style_transfer_reaches_the_untiled_losses(random_params, tiled_and_untiled):
    inputs, config, untiled, tiled = tiled_and_untiled
    plan = style_tiles(config, inputs)[0]
    assert plan.tile == 96 and len(plan.grid) == 9
    # the tiled run's losses, computed untiled on its final image, against the untiled run's
    # (measured: content 8.2% and style 4.9% apart; the total 0.078 of the start)
    judged = style_problem(StyleConfig(size=192), inputs, random_params).terms(tiled.images)[0]
    for name in ("content", "style"):
        assert abs(judged[name] - untiled.loss[0][name]) <= 0.1 * untiled.loss[0][name], (name, judged, untiled.loss)
    assert judged["total"] < 0.2 * untiled.history[0][0, 0]  # both came far from the noise they started at
    np.testing.assert_allclose(judged["total"], tiled.loss[0]["total"], rtol=1e-4)  # the reported loss is the whole image's


def test_tiled_style_transfer_leaves_no_seam(tiled_and_untiled):
    inputs, config, untiled, tiled = tiled_and_untiled
    plan = style_tiles(config, inputs)[0]
    # measured: ratios 0.940 and 0.953, 1.9% and 1.6% from the untiled image's; 1.18 with the seam below
    for sigma in (0.0, 2.0):  # the fine texture's gradients, and the image blurred (steps between tiles)
        ratio = seam_ratio(tiled.images[0], plan.grid, plan.shape, sigma=sigma)
        assert 0.9 <= ratio <= 1.1, (sigma, ratio)
        reference = seam_ratio(untiled.images[0], plan.grid, plan.shape, sigma=sigma)  # the picture's own lines
        assert abs(ratio / reference - 1) <= 0.1, (sigma, ratio, reference)
    # the measure sees a seam: the middle tile 0.1 brighter, without blending
    seamed = tiled.images[0].copy()
    top, left = plan.grid[4]
    seamed[top:top + 96, left:left + 96] = np.clip(seamed[top:top + 96, left:left + 96] + 0.1, 0, 1)
    assert seam_ratio(seamed, plan.grid, plan.shape, sigma=2.0) > 1.15


def test_a_tiled_run_resumes_where_it_stopped(random_params):
    inputs = StyleInputs(sample_image("chelsea.png", 128, 96), [sample_image("coffee.png", 96, 96)])
    config = StyleConfig(scales=(64, 128), steps=(3, 4), tile=64, overlap=16, tile_steps=2, **SHALLOW_LAYERS)
    whole = style_transfer(config, inputs, random_params)
    seen = []

    def stop(progress):
        seen.append(progress)
        if progress.stage == 1 and progress.tile is not None and len(seen) == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        style_transfer(config, inputs, random_params, callback=stop)
    last = seen[-1]
    assert last.tile is not None and 0 < last.step < last.steps
    resumed = style_transfer(config, inputs, random_params, resume=Resume(last.stage, last.step, last.params, last.opt_state))
    np.testing.assert_array_equal(resumed.images, whole.images)
    assert len(whole.history[1]) == last.steps  # every tile had the scale's steps


def test_cli_tiles_writes_the_tile_map_and_refuses_what_would_not_fit(tmp_path):
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    save_image(content, sample_image("chelsea.png", 96, 128))
    save_image(style, sample_image("brick.png", 64, 64))
    common = ["style", str(content), str(style), "--size", "128", "--steps", "4", "--content-layers", "relu2_2",
              "--style-layers", "relu1_1,relu2_1", "--weights", "random"]
    result = run_cli(*common, "-o", tmp_path / "big.png", "--max-memory", "0.01")
    assert result.exit_code != 0
    assert "--tile auto" in result.output and "10.2 MiB is allowed" in result.output
    assert not (tmp_path / "big.png").exists()
    out = tmp_path / "out.png"
    result = run_cli(*common, "-o", out, "--tile", "64", "--overlap", "16", "--tile-steps", "2",
                     "--preview", "--metrics", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert "6 tiles of 64x64 px" in result.output
    picture = load_image(tmp_path / "out-tiles.png")
    assert picture.shape[:2] == (96, 128)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["style"]["tiles"] == [{"scale": "128x96", "tile": 64, "count": 6}]
    assert metrics["steps"] == 4 * 6
    result = run_cli(*common, "-o", out, "--tile", "64", "--overlap", "40")
    assert result.exit_code != 0 and "--overlap" in result.output


def test_tile_auto_tiles_only_what_does_not_fit():
    inputs = StyleInputs(np.zeros((512, 512, 3), np.float32), [np.zeros((256, 256, 3), np.float32)])
    roomy = style_tiles(StyleConfig(scales=(256, 512), tile="auto", max_memory=64.0), inputs)
    assert [plan.tile for plan in roomy] == [None, None]
    tight = style_tiles(StyleConfig(scales=(256, 512), tile="auto", max_memory=2.0), inputs)
    assert tight[0].tile is None and tight[1].tile is not None and tight[1].tile < 512


def test_tiled_texture_reaches_the_untiled_losses(random_params):
    from jaxmosaic.techniques.texture import TextureConfig, TextureInputs, synthesize_texture, texture_problem, texture_tiles

    inputs = TextureInputs(sample_image("brick.png", 128, 128))
    settings = {"size": 160, "steps": 16, "spectrum_weight": 1e-4}
    untiled = synthesize_texture(TextureConfig(**settings), inputs, random_params)
    config = TextureConfig(**settings, tile=96, overlap=24, tile_steps=8)
    plan = texture_tiles(config, inputs)
    assert plan.tile == 96 and len(plan.grid) == 4
    tiled = synthesize_texture(config, inputs, random_params)
    judged = texture_problem(TextureConfig(**settings), inputs, random_params).terms(tiled.images)[0]
    np.testing.assert_allclose(judged["total"], tiled.loss[0]["total"], rtol=1e-4)  # the tiled report is the whole image's
    # measured: the tiled Gram loss ends 1.6x the untiled one after 16 steps (192 px in 9 tiles)
    assert judged["gram"] < 2.0 * untiled.loss[0]["gram"], (judged, untiled.loss)
    assert judged["gram"] < 0.01 * untiled.history[0][0, 0], (judged, untiled.history[0][0])
    assert 0.9 <= seam_ratio(tiled.images[0], plan.grid, plan.shape, sigma=2.0) <= 1.1
    with pytest.raises(Exception, match="tileable"):
        TextureConfig(tile=96, overlap=16, tileable=True)


def test_a_tiled_batch_one_tile_per_network_call_equals_the_whole_batch(random_params, monkeypatch):
    # on a CPU large tiles go through the network one at a time (images_per_call); each style's
    # tile keeps its own Gram targets and shares the content
    inputs = StyleInputs(sample_image("chelsea.png", 96, 96), [sample_image("coffee.png", 64, 64), sample_image("brick.png", 64, 64)])
    config = StyleConfig(size=96, steps=(4,), batch=True, tile=64, overlap=16, tile_steps=2, **SHALLOW_LAYERS)
    whole = style_transfer(config, inputs, random_params)
    monkeypatch.setattr("jaxmosaic.techniques.common.images_per_call", lambda height, width: 1)
    one_by_one = style_transfer(config, inputs, random_params)
    assert len(style_tiles(config, inputs)[0].grid) == 4
    np.testing.assert_allclose(one_by_one.images, whole.images, atol=1e-5)
    np.testing.assert_array_equal(one_by_one.evaluations, whole.evaluations)
    assert np.abs(one_by_one.images[0] - one_by_one.images[1]).mean() > 2e-3  # each tile saw its own style (measured 1e-2)
