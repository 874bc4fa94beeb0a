"""Sliced Wasserstein and histogram losses and regions in tiles and batches: statistics gathered
tile by tile against the whole image's, a tile's loss against NumPy transcriptions of its
definition (the tile's sorted lists against the whole style's quantiles, its guided Gram
matrices against the whole region's), tiled runs against untiled ones, regions in a batch
against separate runs, and the sliced Wasserstein loss against ott-jax's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from distribution_reference import histogram_loss_numpy, sliced_wasserstein_numpy
from helpers import sample_image

from jaxmosaic import (
    ConfigError,
    guided_gram_matrix,
    layer_guides,
    random_directions,
    sliced_wasserstein_loss,
    vgg19_features,
)
from jaxmosaic.guides import Region
from jaxmosaic.techniques.style import (
    StyleConfig,
    StyleInputs,
    style_problem,
    style_tiles,
    style_transfer,
)
from jaxmosaic.techniques.texture import (
    TextureConfig,
    TextureInputs,
    synthesize_texture,
    texture_problem,
)
from jaxmosaic.tiled_losses import (
    tile_guides,
    tiled_features,
    tiled_guided_grams,
    tiled_style_terms,
)

CHEAP = {"content_layers": ("relu1_1",), "style_layers": ("relu1_1", "relu2_1")}
TILED = {"size": 96, "tile": 64, "overlap": 16, "tile_steps": 3}


def half_mask(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.float32)
    mask[:, : width // 2] = 1.0
    return mask


def test_features_and_guided_grams_gathered_from_tiles_equal_the_whole_images(random_params):
    layers = ("relu1_1", "relu2_1")
    images = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3))  # 2 x 2 tiles of 32 px, every crop 64 px
    whole = vgg19_features(random_params, images, layers)
    tiled = tiled_features(random_params, images, layers, tile=32, halo=32)
    for name in layers:
        assert tiled[name].shape == whole[name].shape
        np.testing.assert_allclose(tiled[name], whole[name], atol=1e-5 * float(jnp.max(whole[name])))
    masks = np.stack([half_mask(64, 64), np.eye(64, 64, dtype=np.float32) * 0.5 + 0.25])
    guides = {name: jnp.stack([layer_guides(mask, (name,))[name] for mask in masks]) for name in layers}
    grams = tiled_guided_grams(random_params, images[0], guides, tile=32, halo=32)
    for name in layers:
        for r in range(2):
            expected = guided_gram_matrix(whole[name][0], guides[name][r])
            np.testing.assert_allclose(grams[name][r], expected, rtol=1e-4, atol=1e-5 * float(jnp.max(expected)))
    # the guided style terms taken tile by tile, against the guided loss written out in NumPy on the whole features
    weights, region_weights = {"relu1_1": 0.5, "relu2_1": 0.5}, np.array([0.7, 0.3], np.float32)
    targets = {name: grams[name] * 1.5 for name in weights}
    terms = tiled_style_terms(random_params, images, None, targets, weights, tile=32, halo=32, guides=guides,
                              region_weights=region_weights)
    expected = np.zeros(2)
    for name, weight in weights.items():
        features = np.asarray(whole[name], np.float64)
        channels = features.shape[-1]
        for r in range(2):
            guide = np.asarray(guides[name][r], np.float64)
            guide = guide / np.sqrt(np.mean(guide**2))
            weighted = (features * guide[None, ..., None]).reshape(2, -1, channels)
            own = np.einsum("nmc,nmd->ncd", weighted, weighted) / weighted.shape[1]
            expected += weight * region_weights[r] * np.sum((own - np.asarray(targets[name][r])) ** 2, axis=(1, 2)) / (4 * channels**2)
    np.testing.assert_allclose(terms["style"], expected, rtol=1e-4)


@pytest.mark.parametrize("mode, grow", [("simple", 0), ("simple", 1), ("simple", -1), ("inside", 0), ("all", 0)])
def test_tile_guides_see_the_region_beyond_the_tile(mode, grow):
    layers = ("relu1_1", "relu2_1", "relu3_1")
    mask = np.zeros((160, 128), np.float32)
    mask[20:130, 30:100] = 1.0
    mask[60:70, 10:40] = 0.5
    whole = layer_guides(mask, layers, mode=mode, grow=grow)
    covering = tile_guides(mask, 0, 0, (160, 128), layers, mode=mode, grow=grow)
    for name in layers:  # one tile covering the image: exactly the whole image's guides
        np.testing.assert_array_equal(covering[name], whole[name])
    # a tile on the positions' grid: the whole image's guides there (the 96 px halo covers relu3_1's receptive field)
    top, left, shape = 32, 64, (96, 64)
    tile = tile_guides(mask, top, left, shape, layers, mode=mode, grow=grow)
    for name in layers:
        s = {"relu1_1": 1, "relu2_1": 2, "relu3_1": 4}[name]
        np.testing.assert_array_equal(tile[name], whole[name][top // s:(top + shape[0]) // s, left // s:(left + shape[1]) // s])
    if mode == "inside":  # without the halo the tile's edge would cut the region and erode it there too
        bare = layer_guides(mask[top:top + shape[0], left:left + shape[1]], layers, mode=mode)
        assert float(jnp.sum(bare["relu3_1"])) != float(jnp.sum(tile["relu3_1"]))


def block_means(mask: np.ndarray, stride: int) -> np.ndarray:
    h, w = mask.shape[0] // stride, mask.shape[1] // stride
    return mask[: h * stride, : w * stride].reshape(h, stride, w, stride).mean(axis=(1, 3))


def tile_loss(problem, top: int, left: int, image: np.ndarray) -> float:
    """The loss a tiled stage minimises at the tile at (top, left) of `image`, and the stage's data there."""
    stage = problem.stages[0]()
    data = stage.tiles.data(top, left)
    h, w = stage.tiles.shape
    return float(stage.value_fn(jnp.asarray(image)[None, top:top + h, left:left + w], data)[0]), data


@pytest.mark.parametrize("loss", ["sw", "hist"])
def test_a_tile_compares_its_sorted_lists_with_the_whole_styles(random_params, loss):
    content, style = sample_image("chelsea.png", 96, 96), sample_image("brick.png", 96, 96)
    config = StyleConfig(**TILED, **CHEAP, steps=(1,), loss=loss, content_weight=0.0, style_weight=1.0)
    problem = style_problem(config, StyleInputs(content, [style]), random_params)
    plan = style_tiles(config, StyleInputs(content, [style]))[0]
    top, left = plan.grid[-1]
    image = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), (96, 96, 3)))
    value, (targets, _) = tile_loss(problem, top, left, image)
    crop = image[top:top + 64, left:left + 64]
    mine = vgg19_features(random_params, jnp.asarray(crop)[None], CHEAP["style_layers"])
    theirs = vgg19_features(random_params, jnp.asarray(style)[None], CHEAP["style_layers"])
    expected = 0.0
    for name in CHEAP["style_layers"]:
        s = 1 if name == "relu1_1" else 2
        share = (64 // s) ** 2 / (96 // s) ** 2  # the tile's share of the positions
        f, t = np.asarray(mine[name][0]).reshape(-1, mine[name].shape[-1]), np.asarray(theirs[name][0]).reshape(-1, theirs[name].shape[-1])
        if loss == "sw":
            part = sliced_wasserstein_numpy(f, t, np.asarray(targets.statistics.directions[name]))
        else:
            part = histogram_loss_numpy(f, t, 256)[0]
        expected += 0.5 * share * part
    np.testing.assert_allclose(value, expected, rtol=2e-4)


def test_a_tile_weighs_each_region_by_its_share_of_it(random_params):
    content, style = sample_image("chelsea.png", 96, 96), sample_image("brick.png", 96, 96)
    other = sample_image("coffee.png", 96, 96)
    mask = np.zeros((96, 96), np.float32)
    mask[:, :40] = 1.0
    regions = [Region(mask, name="left"), Region(1.0 - mask, style=other, name="right", weight=2.0)]
    config = StyleConfig(**TILED, **CHEAP, steps=(1,), content_weight=0.0, style_weight=1.0)
    inputs = StyleInputs(content, [style], regions=regions)
    plan = style_tiles(config, inputs)[0]
    image = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (96, 96, 3)))
    problem = style_problem(config, inputs, random_params)
    for top, left in (plan.grid[0], plan.grid[-1]):
        value, _ = tile_loss(problem, top, left, image)
        crop = jnp.asarray(image[top:top + 64, left:left + 64])[None]
        mine = vgg19_features(random_params, crop, CHEAP["style_layers"])
        expected = 0.0
        for name in CHEAP["style_layers"]:
            s = 1 if name == "relu1_1" else 2
            features = np.asarray(mine[name][0], np.float64).reshape(-1, mine[name].shape[-1])
            channels = features.shape[-1]
            for region, source, weight in ((mask, style, 1.0 / 2), (1.0 - mask, other, 2.0)):
                theirs = np.asarray(vgg19_features(random_params, jnp.asarray(source)[None], (name,))[name][0], np.float64)
                target = theirs.reshape(-1, channels).T @ theirs.reshape(-1, channels) / theirs[..., 0].size
                whole = block_means(region, s)
                guide = block_means(region[top:top + 64, left:left + 64], s).reshape(-1, 1)
                share = np.sum(guide**2) / np.sum(whole**2)  # the tile's share of the region at this layer
                if share == 0:
                    continue
                weighted = features * guide / np.sqrt(np.mean(guide**2))
                own = weighted.T @ weighted / features.shape[0]
                expected += 0.5 * weight * share * np.sum((own - target) ** 2) / (4 * channels**2)
        np.testing.assert_allclose(value, expected, rtol=2e-4)


ADAM = {"optimizer": "adam", "lr": 0.05}


def test_tiled_sliced_wasserstein_reaches_the_untiled_losses(random_params):
    inputs = StyleInputs(sample_image("chelsea.png", 96, 96), [sample_image("brick.png", 96, 96)])
    settings = {"size": 96, "steps": (8,), "loss": "sw", "content_weight": 1e-3, **ADAM, **CHEAP}
    untiled = style_transfer(StyleConfig(**settings), inputs, random_params)
    tiled = style_transfer(StyleConfig(**settings, tile=64, overlap=16, tile_steps=4), inputs, random_params)
    judged = style_problem(StyleConfig(**settings), inputs, random_params).terms(tiled.images)[0]
    np.testing.assert_allclose(judged["total"], tiled.loss[0]["total"], rtol=1e-4)  # the tiled report is the whole image's
    np.testing.assert_allclose(judged["style"], tiled.loss[0]["style"], rtol=1e-4)
    start = untiled.history[0][0, 0]
    # measured: the tiled style loss 1.10x the untiled one; the tiled total 0.05 of the start (overlaps are
    # stepped more than once, so the content loss from noise falls further: 0.44x the untiled one)
    assert judged["total"] < 0.15 * start, (judged, start)
    assert abs(judged["style"] / untiled.loss[0]["style"] - 1) <= 0.3, (judged, untiled.loss)


def test_tiled_regions_reach_the_untiled_losses(random_params):
    content = sample_image("chelsea.png", 96, 96)
    red, blue = np.zeros((48, 48, 3), np.float32), np.zeros((48, 48, 3), np.float32)
    red[..., 0], blue[..., 2] = 0.9, 0.9
    red[::4] = blue[::4] = 0.3
    regions = [Region(half_mask(96, 96), name="left"), Region(1.0 - half_mask(96, 96), name="right")]
    inputs = StyleInputs(content, [red, blue], regions=regions)
    settings = {"size": 96, "steps": (8,), "content_weight": 0.0, **ADAM, **CHEAP}
    untiled = style_transfer(StyleConfig(**settings), inputs, random_params)
    tiled = style_transfer(StyleConfig(**settings, tile=64, overlap=16, tile_steps=4), inputs, random_params)
    judged = style_problem(StyleConfig(**settings), inputs, random_params).terms(tiled.images)[0]
    np.testing.assert_allclose(judged["total"], tiled.loss[0]["total"], rtol=1e-4)  # the tiled report is the whole image's
    # measured: the tiled style loss 0.85x the untiled one; totals 0.25 (tiled) and 0.30 (untiled) of the start
    assert abs(judged["style"] / untiled.loss[0]["style"] - 1) <= 0.3, (judged, untiled.loss)
    assert judged["total"] < 0.4 * untiled.history[0][0, 0]
    left, right = tiled.images[0][:, :40].reshape(-1, 3).mean(0), tiled.images[0][:, 56:].reshape(-1, 3).mean(0)
    # measured: left (0.68, 0.26, 0.24), right (0.24, 0.25, 0.67): each half took its own style's colour
    assert left[0] - left[2] > 0.2 and right[2] - right[0] > 0.2, (left, right)


def test_regions_in_a_batch_take_each_outputs_style(random_params):
    content = sample_image("chelsea.png", 64, 64)
    styles = [sample_image("brick.png", 64, 64), sample_image("coffee.png", 64, 64)]
    own = sample_image("rocket.jpg", 64, 64)
    regions = [Region(half_mask(64, 64), name="left"), Region(1.0 - half_mask(64, 64), style=own, name="right")]
    settings = {"size": 64, "steps": (3,), **CHEAP}
    batch = style_transfer(StyleConfig(**settings, batch=True), StyleInputs(content, styles, regions=regions), random_params)
    assert batch.images.shape[0] == 2
    alone = style_transfer(StyleConfig(**settings), StyleInputs(content, styles[1:], regions=regions), random_params)
    np.testing.assert_allclose(batch.images[1], alone.images[0], atol=2e-5)
    np.testing.assert_allclose(batch.loss[1]["style"], alone.loss[0]["style"], rtol=1e-4)
    # the left halves took different styles (measured 5.3e-4 after 3 steps; 0 for a batch of one style twice)
    assert np.abs(batch.images[0] - batch.images[1]).mean() > 2e-4
    named = [Region(half_mask(64, 64), style=own, name="left.png"), Region(1.0 - half_mask(64, 64), style=own, name="right.png")]
    with pytest.raises(ConfigError, match="^batch: .*left.png"):
        style_problem(StyleConfig(**settings, batch=True), StyleInputs(content, styles, regions=named), random_params)


def test_tiled_texture_histograms_report_the_whole_images_loss(random_params):
    exemplar = sample_image("brick.png", 64, 64)
    # 80 px: still 2 x 2 tiles of 64 (at 0 and 16); 2 steps: the tiled run's time is mostly per-step overhead
    settings = {"size": 80, "steps": 2, "loss": "hist", "layers": ("relu1_1", "pool1"), "spectrum_weight": 0.0, "variations": 2,
                **ADAM}
    tiled = synthesize_texture(TextureConfig(**settings, tile=64, overlap=16, tile_steps=2), TextureInputs(exemplar), random_params)
    problem = texture_problem(TextureConfig(**settings), TextureInputs(exemplar), random_params)
    judged = problem.terms(tiled.images)
    for index in range(2):
        np.testing.assert_allclose(judged[index]["hist"], tiled.loss[index]["hist"], rtol=1e-4)
    start = problem.terms(problem.stages[0]().start(None))
    for index in range(2):  # measured at 80 px and 2 steps: 0.16 and 0.15 of the starting noise's
        assert judged[index]["hist"] < 0.4 * start[index]["hist"], (judged, start)


def test_sliced_wasserstein_against_ott():
    ott_sliced = pytest.importorskip("ott.tools.sliced")
    rng = np.random.default_rng(5)
    features = np.maximum(rng.exponential(1.0, (300, 8)) - 0.3, 0.0).astype(np.float32)
    target = rng.normal(0.5, 1.0, (300, 8)).astype(np.float32)
    directions = random_directions(jax.random.PRNGKey(1), 8, 8)
    project = lambda x: x @ directions
    # ott: the mean over directions of the 1-D optimal transport cost under the squared Euclidean
    # cost between uniform measures, i.e. W2^2 per direction, not its root: the loss itself for equal sizes
    reference, _ = ott_sliced.sliced_wasserstein(jnp.asarray(features), jnp.asarray(target), proj_fn=project)
    np.testing.assert_allclose(sliced_wasserstein_loss(features, target, directions), reference, rtol=1e-5)
    # unequal sizes: the loss compares with the target's interpolated quantiles, an approximation of W2^2
    # (measured: 0.7% from ott's exact 1-D transport for 300 against 470 positions)
    larger = rng.normal(0.5, 1.0, (470, 8)).astype(np.float32)
    reference, _ = ott_sliced.sliced_wasserstein(jnp.asarray(features), jnp.asarray(larger), proj_fn=project)
    np.testing.assert_allclose(sliced_wasserstein_loss(features, larger, directions), reference, rtol=0.02)


def test_tiles_no_longer_refuse_distribution_losses():
    for loss in ("sw", "hist", "gram+hist"):
        assert StyleConfig(loss=loss, tile=256).tile == 256
        assert TextureConfig(loss=loss, tile=256).tile == 256
