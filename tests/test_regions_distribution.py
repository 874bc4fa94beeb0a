"""Regions with the sliced Wasserstein and histogram losses: the masked losses against NumPy on the
gathered rows, a region's loss in a style transfer against NumPy on the region's positions (the
output's where its guide exceeds 1/2, the style image's under its style mask) with the same
directions, zero gradients outside `inside` regions, a two-region run, the one-line refusal of a
region without positions, tiled and batched region runs against untiled and separate ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from distribution_reference import histogram_loss_numpy, sliced_wasserstein_numpy
from helpers import sample_image

from jaxmosaic import random_directions, vgg19_features
from jaxmosaic.distribution_losses import (
    masked_histogram_loss,
    masked_sliced_wasserstein_loss,
    region_positions,
)
from jaxmosaic.guides import Region
from jaxmosaic.techniques.style import (
    StyleConfig,
    StyleInputs,
    style_memory,
    style_problem,
    style_transfer,
)

CHEAP = {"content_layers": ("relu1_1",), "style_layers": ("relu1_1", "pool1")}
STRIDES = {"relu1_1": 1, "pool1": 2}


def block_means(mask: np.ndarray, stride: int) -> np.ndarray:
    """A mask at a layer of `stride` as --guides simple brings it there."""
    h, w = mask.shape[0] // stride, mask.shape[1] // stride
    return mask[: h * stride, : w * stride].reshape(h, stride, w, stride).mean(axis=(1, 3))


def test_masked_losses_are_the_losses_of_the_gathered_rows(variant):
    rng = np.random.default_rng(0)
    features = rng.normal(0.0, 1.0, (50, 6)).astype(np.float32)
    target = rng.exponential(1.0, (37, 6)).astype(np.float32)
    inside = rng.random(50) > 0.6
    directions = np.asarray(random_directions(jax.random.PRNGKey(0), 6, 6))
    value = variant(masked_sliced_wasserstein_loss, features, inside, target, directions)
    np.testing.assert_allclose(value, sliced_wasserstein_numpy(features[inside], target, directions), rtol=1e-5)
    value = variant(lambda f, m, t: masked_histogram_loss(f, m, t, 16), features, inside, target)
    np.testing.assert_allclose(value, histogram_loss_numpy(features[inside], target, 16)[0], rtol=1e-5)


def test_masked_gradients_and_empty_masks():
    rng = np.random.default_rng(1)
    features = rng.normal(0.0, 1.0, (50, 6)).astype(np.float32)
    target = rng.exponential(1.0, (37, 6)).astype(np.float32)
    inside = rng.random(50) > 0.6
    directions = np.asarray(random_directions(jax.random.PRNGKey(0), 6, 6))
    # the histogram loss's gradient: the reference's at the region's rows, zero elsewhere
    grad = np.asarray(jax.jit(jax.grad(lambda f: masked_histogram_loss(f, inside, target, 16)))(features))
    np.testing.assert_allclose(grad[inside], histogram_loss_numpy(features[inside], target, 16)[1], rtol=1e-4, atol=1e-9)
    assert np.all(grad[~inside] == 0.0)
    grad = np.asarray(jax.jit(jax.grad(lambda f: masked_sliced_wasserstein_loss(f, inside, target, directions)))(features))
    assert np.all(grad[~inside] == 0.0) and np.abs(grad[inside]).min() > 0  # no inf or NaN from the rows left out
    losses = jax.jit(lambda m: (masked_sliced_wasserstein_loss(features, m, target, directions),
                                masked_histogram_loss(features, m, target, 16)))
    assert [float(value) for value in losses(np.zeros(50, bool))] == [0.0, 0.0]  # no position: no term (a tile outside)


@pytest.mark.parametrize("loss", ["sw", "hist"])
def test_a_regions_loss_is_numpy_on_its_gathered_positions(random_params, loss):
    content = sample_image("chelsea.png", 24, 32)
    brick, coffee = sample_image("brick.png", 32, 32), sample_image("coffee.png", 20, 32)  # both at the output's longest side
    left = np.zeros((24, 32), np.float32)
    left[:, :13] = 1.0  # an odd edge: pool1's guide is 1/2 on one column, which is not inside
    style_mask = np.zeros((20, 32), np.float32)
    style_mask[4:16, 6:28] = 1.0
    regions = [Region(left, name="left"), Region(1.0 - left, style=coffee, style_mask=style_mask, weight=2.0, name="right")]
    config = StyleConfig(size=32, steps=(1,), loss=loss, content_weight=0.0, style_weight=1.0, **CHEAP)
    stage = style_problem(config, StyleInputs(content, [brick], regions=regions), random_params).stages[0]()
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (24, 32, 3)))
    value = float(jax.jit(stage.value_fn)(jnp.asarray(x)[None], stage.data)[0])
    targets = stage.data[0]
    mine = vgg19_features(random_params, jnp.asarray(x)[None], CHEAP["style_layers"])
    expected = 0.0
    for index, (mask, style, smask, weight) in enumerate(((left, brick, None, 0.5), (1.0 - left, coffee, style_mask, 2.0))):
        theirs = vgg19_features(random_params, jnp.asarray(style)[None], CHEAP["style_layers"])
        for name in CHEAP["style_layers"]:
            s = STRIDES[name]
            f = np.asarray(mine[name][0]).reshape(-1, mine[name].shape[-1])
            t = np.asarray(theirs[name][0]).reshape(-1, theirs[name].shape[-1])
            f = f[block_means(mask, s).reshape(-1) > 0.5]
            if smask is not None:
                t = t[block_means(smask, s).reshape(-1) > 0.5]
            if loss == "sw":
                part = sliced_wasserstein_numpy(f, t, np.asarray(targets.statistics[index].directions[name]))
            else:
                part = histogram_loss_numpy(f, t, 256)[0]
            expected += 0.5 * weight * part
    # hist: float32 bins against numpy's float64 ones move a few values to the next bin (measured 4e-4 of the
    # right region's relu1_1 term, 2.3e-4 of the whole; the plain histogram loss of the gathered rows differs alike)
    np.testing.assert_allclose(value, expected, rtol=1e-4 if loss == "sw" else 1e-3)
    # the positions are a fixed index set: 13 columns at relu1_1, 6 at pool1 (the half column left out)
    assert [len(targets.positions[0][name]) for name in CHEAP["style_layers"]] == [24 * 13, 12 * 6]


@pytest.mark.parametrize("loss", ["sw", "hist"])
def test_inside_guides_give_zero_gradient_outside_the_region(random_params, loss):
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(4), (24, 40, 3)))
    style = sample_image("brick.png", 24, 24)
    mask = np.zeros((24, 40), np.float32)
    mask[:, :24] = 1.0
    settings = {"size": 40, "steps": (1,), "loss": loss, "content_weight": 0.0, "style_weight": 1.0, **CHEAP}

    def gradient(guides):
        config = StyleConfig(**settings, guides=guides)
        stage = style_problem(config, StyleInputs(x, [style], regions=[Region(mask, name="left")]), random_params).stages[0]()
        return np.asarray(jax.jit(jax.grad(lambda p: stage.value_fn(p[None], stage.data)[0]))(jnp.asarray(x)))

    inside = gradient("inside")
    assert np.all(inside[:, 24:] == 0.0)
    assert np.abs(inside[:, :24]).max() > 0
    if loss == "sw":
        assert np.abs(gradient("simple")[:, 24:]).max() > 0  # resized guides reach across the edge


def _flat(color, seed, shape=(32, 32)):
    """A flat-ish colour: the colour with a little texture."""
    noise = np.random.default_rng(seed).normal(0.0, 0.06, (*shape, 3))
    return np.clip(np.asarray(color) + noise, 0.0, 1.0).astype(np.float32)


def test_two_regions_take_their_own_styles_with_sliced_wasserstein(random_params):
    content = _flat((0.5, 0.5, 0.5), 0)
    red, blue = _flat((0.85, 0.25, 0.2), 1), _flat((0.15, 0.35, 0.85), 2)
    left = np.zeros((32, 32), np.float32)
    left[:, :16] = 1.0
    regions = [Region(left, name="left.png"), Region(1.0 - left, name="right.png")]
    config = StyleConfig(size=32, steps=(30,), loss="sw", content_weight=1e-3, style_weight=1e3,
                         content_layers=("pool1",), style_layers=("relu1_1", "pool1"))
    result = style_transfer(config, StyleInputs(content, [red, blue], regions=regions), random_params)
    image = result.images[0]
    for half, own, other in ((image[:, :14], red, blue), (image[:, 18:], blue, red)):
        mean = half.reshape(-1, 3).mean(0)
        # measured: each half's mean colour within 0.03 of its own style's, 0.8 from the other's
        assert np.linalg.norm(mean - own.reshape(-1, 3).mean(0)) < 0.3 * np.linalg.norm(mean - other.reshape(-1, 3).mean(0))


def test_a_region_without_positions_is_refused_naming_it(tmp_path):
    from helpers import one_line_error, run_cli
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "content.png")
    thin = np.zeros((32, 32), np.uint8)
    thin[:, 5] = 255  # one column: 1/2 at pool1, no position above it
    Image.fromarray(thin).save(tmp_path / "thin.png")
    out = tmp_path / "out.png"
    base = ["style", tmp_path / "content.png", tmp_path / "content.png", "-o", out, "--weights", "random", "--size", "32",
            "--steps", "1", "--style-layers", "relu1_1,pool1", "--content-layers", "relu1_1", "--region", tmp_path / "thin.png"]
    for loss in ("sw", "hist", "gram+hist"):
        one_line_error(run_cli(*base, "--loss", loss), "thin.png: the region has no position at pool1 in the output's guides",
                       f"--loss {loss}")
    assert not out.exists()
    content = np.full((32, 32, 3), 0.5, np.float32)
    region = Region(thin / 255.0, name="thin.png")
    style_memory(StyleConfig(size=32, steps=(1,), **CHEAP), StyleInputs(content, [content], regions=[region]))  # gram: 1/2 > 0


def test_the_memory_estimate_counts_each_regions_positions():
    from jaxmosaic.resources import activation_bytes

    # XLA's scratch for the loss and gradient at 128 px (default layers) measured 50 MiB more per region of every
    # position for sw and 52 MiB for hist (gram: 15 MiB); each region's targets come on top (sw: 7.6 MiB)
    content = np.full((128, 128, 3), 0.5, np.float32)
    regions = [Region(np.ones((128, 128), np.float32), style=content[:64], name=f"{index}.png") for index in range(3)]
    for loss, measured in (("sw", 50 + 7.6), ("hist", 52), ("gram", 15)):
        sizes = [style_memory(StyleConfig(size=128, loss=loss), StyleInputs(content, [content], regions=regions[:count]))
                 for count in (1, 3)]
        own_style = activation_bytes(64, 128, StyleConfig().style_layers)  # each region's style image's features, counted too
        per_region = ((sizes[1] - sizes[0]) / 2 - own_style) / 2**20
        assert measured <= per_region <= 1.25 * measured, (loss, per_region)


ADAM = {"optimizer": "adam", "lr": 0.05}


def test_tiled_regions_with_sliced_wasserstein_report_the_whole_images_loss(random_params):
    content = sample_image("chelsea.png", 80, 80)
    red, blue = np.zeros((40, 40, 3), np.float32), np.zeros((40, 40, 3), np.float32)
    red[..., 0], blue[..., 2] = 0.9, 0.9
    red[::4] = blue[::4] = 0.3
    left = np.zeros((80, 80), np.float32)
    left[:, :36] = 1.0  # the left tile (at 0) holds all of the left region, the right one (at 16) part of it
    inputs = StyleInputs(content, [red, blue], regions=[Region(left, name="left"), Region(1.0 - left, name="right")])
    settings = {"size": 80, "steps": (2,), "loss": "sw", "content_weight": 0.0, **ADAM, **CHEAP}
    tiled = style_transfer(StyleConfig(**settings, tile=64, overlap=16, tile_steps=2), inputs, random_params)
    untiled = style_problem(StyleConfig(**settings), inputs, random_params)
    judged = untiled.terms(tiled.images)[0]
    np.testing.assert_allclose(judged["total"], tiled.loss[0]["total"], rtol=1e-4)  # the tiled report is the whole image's
    np.testing.assert_allclose(judged["style"], tiled.loss[0]["style"], rtol=1e-4)
    start = untiled.terms(np.asarray(untiled.stages[0]().start(None)))[0]
    assert judged["style"] < 0.7 * start["style"], (judged, start)  # the tiles lowered the whole image's loss


def test_regions_in_a_batch_take_each_outputs_style(random_params):
    content = sample_image("chelsea.png", 32, 32)
    styles = [sample_image("brick.png", 32, 32), sample_image("coffee.png", 32, 32)]
    left = np.zeros((32, 32), np.float32)
    left[:, :16] = 1.0
    regions = [Region(left, name="left"), Region(1.0 - left, style=sample_image("rocket.jpg", 32, 32), name="right")]
    settings = {"size": 32, "steps": (2,), "loss": "gram+hist", **ADAM, **CHEAP}
    batch = style_transfer(StyleConfig(**settings, batch=True), StyleInputs(content, styles, regions=regions), random_params)
    alone = style_transfer(StyleConfig(**settings), StyleInputs(content, styles[1:], regions=regions), random_params)
    np.testing.assert_allclose(batch.images[1], alone.images[0], atol=2e-5)
    np.testing.assert_allclose(batch.loss[1]["style"], alone.loss[0]["style"], rtol=1e-4)
    assert np.abs(batch.images[0] - batch.images[1]).mean() > 2e-4  # the left halves took different styles


def test_region_positions_fixed_and_padded():
    guide = np.array([[0.2, 0.6], [0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(region_positions({"l": guide})["l"], [1, 3])
    np.testing.assert_array_equal(jax.jit(lambda g: region_positions(g, padded=True))({"l": guide})["l"], [-1, 1, -1, 3])
