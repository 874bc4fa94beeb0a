"""Regions with the sliced Wasserstein and histogram losses: the masked losses against NumPy on the
gathered rows, a region's loss in a style transfer against NumPy on the region's positions (the
output's where its guide exceeds 1/2, resized or eroded, the style image's under its style mask)
with the same directions, zero gradients outside `inside` regions (and not outside resized ones),
a two-region run, the one-line refusal of a region without positions, tiled and batched region
runs against untiled and separate ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from distribution_reference import histogram_loss_numpy, sliced_wasserstein_numpy
from helpers import flat_color, sample_image
from scipy.ndimage import minimum_filter

from jaxmosaic import random_directions, vgg19_features
from jaxmosaic.distribution_losses import (
    masked_histogram_loss,
    masked_sliced_wasserstein_loss,
    region_distribution_terms,
    region_positions,
)
from jaxmosaic.guides import Region
from jaxmosaic.stages import solve
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


def eroded(mask: np.ndarray, layer: str) -> np.ndarray:
    """A mask at a layer as --guides inside brings it there: each 3x3 convolution before the layer
    erodes by one position (the image's border counts as inside), pool1 takes each 2x2 block's minimum."""
    for _ in range(1 if layer == "relu1_1" else 2):
        mask = minimum_filter(mask, size=3, mode="nearest")
    return mask if layer == "relu1_1" else mask.reshape(mask.shape[0] // 2, 2, mask.shape[1] // 2, 2).min(axis=(1, 3))


@pytest.mark.parametrize(("loss", "guides"), [("sw", "simple"), ("hist", "inside")])
def test_a_regions_loss_is_numpy_on_its_positions_and_its_gradient_stays_inside(random_params, loss, guides):
    """One run per loss: the loss against NumPy on the regions' positions (the output's, and the style
    image's under its style mask) with the same directions; the gradient in the gap between the two
    regions: exactly zero with `inside` guides, not with resized ones (they reach across the edge)."""
    content = sample_image("chelsea.png", 24, 32)
    brick, coffee = sample_image("brick.png", 32, 32), sample_image("coffee.png", 20, 32)  # both at the output's longest side
    left, right = np.zeros((24, 32), np.float32), np.zeros((24, 32), np.float32)
    left[:, :13] = 1.0  # an odd edge: pool1's resized guide is 1/2 on one column, which is not inside
    right[:, 20:] = 1.0  # columns 13 to 19 are in neither region
    style_mask = np.zeros((20, 32), np.float32)
    style_mask[4:16, 6:28] = 1.0
    regions = [Region(left, name="left"), Region(right, style=coffee, style_mask=style_mask, weight=2.0, name="right")]
    config = StyleConfig(size=32, steps=(1,), loss=loss, guides=guides, content_weight=0.0, style_weight=1.0, **CHEAP)
    stage = style_problem(config, StyleInputs(content, [brick], regions=regions), random_params).stages[0]()
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (24, 32, 3)))
    value, grad = jax.jit(jax.value_and_grad(lambda p: stage.value_fn(p[None], stage.data)[0]))(jnp.asarray(x))
    targets = stage.data[0]
    features = jax.jit(lambda image: vgg19_features(random_params, image[None], CHEAP["style_layers"]))  # one program a shape
    mine = features(jnp.asarray(x))
    at = (lambda mask, name: block_means(mask, STRIDES[name])) if guides == "simple" else eroded
    expected = 0.0
    for index, (mask, style, smask, weight) in enumerate(((left, brick, None, 0.5), (right, coffee, style_mask, 2.0))):
        theirs = features(jnp.asarray(style))
        for name in CHEAP["style_layers"]:
            f = np.asarray(mine[name][0]).reshape(-1, mine[name].shape[-1])
            t = np.asarray(theirs[name][0]).reshape(-1, theirs[name].shape[-1])
            f = f[at(mask, name).reshape(-1) > 0.5]
            t = t[at(np.ones(style.shape[:2], np.float32) if smask is None else smask, name).reshape(-1) > 0.5]
            if loss == "sw":
                part = sliced_wasserstein_numpy(f, t, np.asarray(targets.statistics[index].directions[name]))
            else:
                part = histogram_loss_numpy(f, t, 256)[0]
            expected += 0.5 * weight * part
    # measured 5e-8 (sw) and 9e-8 (hist) here; hist's bar as before: float32 bins against numpy's float64 ones can move
    # a few values to the next bin (measured 2.3e-4 of the whole with resized guides and the regions meeting)
    np.testing.assert_allclose(float(value), expected, rtol=1e-4 if loss == "sw" else 1e-3)
    # the positions are a fixed index set: simple, 13 columns at relu1_1 and 6 at pool1 (the half column left out);
    # inside, 12 (the 13th touches the outside) and 5 (pool1's receptive field is 6 px wide)
    counts = [24 * 13, 12 * 6] if guides == "simple" else [24 * 12, 12 * 5]
    assert [len(targets.positions[0][name]) for name in CHEAP["style_layers"]] == counts
    grad = np.asarray(grad)
    assert np.abs(grad[:, :13]).max() > 0 and np.abs(grad[:, 20:]).max() > 0
    if guides == "inside":
        assert np.all(grad[:, 13:20] == 0.0)
    else:
        assert np.abs(grad[:, 13]).max() > 0  # resized guides reach across the edge


def test_inside_guides_give_zero_gradient_outside_the_region_with_sliced_wasserstein(random_params):
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(4), (24, 32, 3)))  # the shapes above: their programs serve
    style = sample_image("brick.png", 32, 32)
    mask = np.zeros((24, 32), np.float32)
    mask[:, :20] = 1.0
    config = StyleConfig(size=32, steps=(1,), loss="sw", guides="inside", content_weight=0.0, style_weight=1.0, **CHEAP)
    stage = style_problem(config, StyleInputs(x, [style], regions=[Region(mask, name="left")]), random_params).stages[0]()
    inside = np.asarray(jax.jit(jax.grad(lambda p: stage.value_fn(p[None], stage.data)[0]))(jnp.asarray(x)))
    assert np.all(inside[:, 20:] == 0.0)
    assert np.abs(inside[:, :20]).max() > 0


def test_two_regions_take_their_own_styles_with_sliced_wasserstein(random_params):
    content = flat_color((0.5, 0.5, 0.5), 0)
    red, blue = flat_color((0.85, 0.25, 0.2), 1), flat_color((0.15, 0.35, 0.85), 2)
    left = np.zeros((32, 32), np.float32)
    left[:, :16] = 1.0
    regions = [Region(left, name="left.png"), Region(1.0 - left, name="right.png")]
    config = StyleConfig(size=32, steps=(15,), loss="sw", content_weight=1e-3, style_weight=1e3,
                         content_layers=("pool1",), style_layers=("relu1_1", "pool1"))
    result = style_transfer(config, StyleInputs(content, [red, blue], regions=regions), random_params)
    image = result.images[0]
    for half, own, other in ((image[:, :14], red, blue), (image[:, 18:], blue, red)):
        mean = half.reshape(-1, 3).mean(0)
        # measured at 15 steps: each half's mean colour within 0.016 of its own style's, 0.97 from the other's
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
    content = sample_image("chelsea.png", 64, 80)  # one row of two tiles
    red, blue = np.zeros((40, 40, 3), np.float32), np.zeros((40, 40, 3), np.float32)
    red[..., 0], blue[..., 2] = 0.9, 0.9
    red[::4] = blue[::4] = 0.3
    left = np.zeros((64, 80), np.float32)
    left[:, :36] = 1.0  # the left tile (at 0) holds all of the left region, the right one (at 16) part of it
    inputs = StyleInputs(content, [red, blue], regions=[Region(left, name="left"), Region(1.0 - left, name="right")])
    settings = {"size": 80, "steps": (2,), "loss": "sw", "content_weight": 0.0, **ADAM, **CHEAP}
    problem = style_problem(StyleConfig(**settings, tile=64, overlap=16, tile_steps=2), inputs, random_params)
    tiled = solve(problem)
    untiled = style_problem(StyleConfig(**settings), inputs, random_params)
    judged = untiled.terms(tiled.images)[0]
    np.testing.assert_allclose(judged["total"], tiled.loss[0]["total"], rtol=1e-4)  # the tiled report is the whole image's
    np.testing.assert_allclose(judged["style"], tiled.loss[0]["style"], rtol=1e-4)
    start = untiled.terms(np.asarray(untiled.stages[0]().start(None)))[0]
    # the tiles lowered the whole image's loss (measured 0.56 of the start's)
    assert judged["style"] < 0.7 * start["style"], (judged, start)
    # the left tile holds the whole left region (k_t = K): its term of that region, weighed as the tile's run weighs
    # it (w_l times the tile's share of the positions, gw_r times k_t / K over that share), is the whole image's
    # (the tile's positions there see the same pixels), so the tiles minimise the whole image's objective there
    weights = StyleConfig(**settings).layer_weight_map
    whole = untiled.stages[0]().data[0]
    part = problem.stages[0]().tiles.data(0, 0)[0]
    share = (64 * 64) / (64 * 80)  # the tile's share of the positions at relu1_1 and at pool1

    @jax.jit
    def left_terms(image):
        features = vgg19_features(random_params, image[None], CHEAP["style_layers"])
        tile_features = vgg19_features(random_params, image[None, :, :64], CHEAP["style_layers"])
        tiled_weights = {name: w * share for name, w in weights.items()}
        return (region_distribution_terms(features, whole.positions[:1], whole.statistics[:1], weights,
                                          whole.region_weights, loss="sw")["sw"][0],
                region_distribution_terms(tile_features, part.positions[:1], part.statistics[:1], tiled_weights,
                                          part.distribution_weights, loss="sw")["sw"][0])

    value, tile_value = left_terms(jnp.asarray(tiled.images[0]))
    assert float(value) > 0
    np.testing.assert_allclose(float(tile_value), float(value), rtol=1e-5)


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
