"""Spatial control: guided Gram matrices against numpy and the plain Gram loss, guides against
the network's receptive fields (probed), zero gradients outside `inside` regions, region runs
of style transfer, masked texture statistics, and per-layer style sources."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from helpers import flat_color

from jaxmosaic import (
    gram_matrix,
    guided_gram_matrix,
    layer_guides,
    style_layer_loss,
    vgg19_features,
)
from jaxmosaic.guides import guided_style_layer_losses, guided_style_losses, unit_rms

PROBE_LAYERS = ("conv1_1", "relu1_2", "pool1", "relu2_1", "conv2_2", "pool2", "relu3_1")


def test_guided_gram_matrix_against_numpy(variant):
    rng = np.random.default_rng(0)
    features = rng.random((6, 5, 4)).astype(np.float32)
    guide = rng.random((6, 5)).astype(np.float32)
    t = guide.astype(np.float64) / np.sqrt(np.mean(guide.astype(np.float64) ** 2))
    weighted = features.reshape(30, 4) * t.reshape(30, 1)
    np.testing.assert_allclose(variant(guided_gram_matrix, features, guide), weighted.T @ weighted / 30, rtol=1e-5)
    np.testing.assert_allclose(variant(guided_gram_matrix, features, 3 * guide), weighted.T @ weighted / 30, rtol=1e-5)
    assert float(jnp.abs(unit_rms(np.zeros((3, 3), np.float32))).max()) == 0.0


def test_a_guide_of_ones_is_the_plain_gram_loss(variant):
    rng = np.random.default_rng(1)
    features = rng.random((2, 7, 6, 5)).astype(np.float32)
    target = rng.random((5, 5)).astype(np.float32) * 40
    ones = np.ones((1, 7, 6), np.float32)
    flat = features[0].reshape(42, 5).astype(np.float64)
    np.testing.assert_allclose(variant(guided_gram_matrix, features[0], ones[0]) * 42, flat.T @ flat, rtol=1e-5)
    np.testing.assert_allclose(guided_gram_matrix(features[0], ones[0]) * 42, gram_matrix(features[0]), rtol=1e-5)
    guided = guided_style_layer_losses(features, ones, target[None] / 42, np.ones(1, np.float32))
    plain = [float(style_layer_loss(image, target)) for image in features]
    np.testing.assert_allclose(np.asarray(guided), plain, rtol=1e-5)
    # two regions covering everything with weights 1/2 each: the same loss again
    halves = np.stack([ones[0], ones[0]])
    both = guided_style_losses({"l": features}, {"l": halves}, {"l": np.stack([target, target]) / 42}, {"l": 0.5},
                               np.full(2, 0.5, np.float32))
    np.testing.assert_allclose(np.asarray(both), 0.5 * np.asarray(plain), rtol=1e-5)


def test_simple_guides_are_block_means_grown_or_shrunk(variant):
    rng = np.random.default_rng(2)
    mask = (rng.random((37, 45)) > 0.4).astype(np.float32)
    for grow, morph in ((0, None), (1, scipy.ndimage.grey_dilation), (-2, scipy.ndimage.grey_erosion)):
        guides = variant(lambda m: layer_guides(m, ("relu1_1", "relu2_1", "relu3_1"), mode="simple", grow=grow), mask)
        for name, stride in (("relu1_1", 1), ("relu2_1", 2), ("relu3_1", 4)):
            h, w = 37 // stride, 45 // stride
            expected = mask[: h * stride, : w * stride].reshape(h, stride, w, stride).mean(axis=(1, 3))
            if morph is not None:
                expected = morph(expected, size=(2 * abs(grow) + 1,) * 2, mode="nearest")
            np.testing.assert_allclose(guides[name], expected, atol=1e-6, err_msg=f"{name} grow {grow}")


def _positive_network(params):
    """VGG19 with positive kernels and biases: every activation is positive and every weight
    nonzero, so an input tangent reaches exactly the positions whose receptive field it touches."""
    keys = iter(jax.random.split(jax.random.PRNGKey(3), 64))
    out = {}
    for name, layer in params.items():
        fan_in = layer["kernel"].shape[0] * layer["kernel"].shape[1] * layer["kernel"].shape[2]
        kernel = jax.random.uniform(next(keys), layer["kernel"].shape, minval=0.5, maxval=1.5) / fan_in
        out[name] = {"kernel": kernel, "bias": jnp.full_like(layer["bias"], 3.0)}
    return out


def _touched(params, image, tangent):
    """Per layer, (h, w) booleans: the positions whose activations move when the pixels under
    `tangent` (H, W) move (the network probed by a forward derivative)."""
    def run(x):
        return vgg19_features(params, x[None], PROBE_LAYERS, pooling="avg")

    @jax.jit
    def forward_derivative(x, t):
        # J t as the transpose of the (linear) vector-Jacobian product: the network's
        # convolutions define their own VJP, so forward mode is not available
        outputs, pullback = jax.vjp(run, x)
        _, push = jax.vjp(lambda cotangent: pullback(cotangent)[0], jax.tree_util.tree_map(jnp.zeros_like, outputs))
        return push(t)[0]

    moved = forward_derivative(image, jnp.broadcast_to(jnp.asarray(tangent, image.dtype)[..., None], image.shape))
    return {name: np.asarray(jnp.any(value[0] != 0, axis=-1)) for name, value in moved.items()}


def test_inside_and_all_guides_are_the_receptive_fields_probed(random_params):
    params = _positive_network(random_params)
    image = jnp.full((53, 61, 3), 0.8, jnp.float32)
    mask = np.zeros((53, 61), np.float32)
    mask[3:46, 2:40] = 1.0
    mask[46:53, 30:61] = 1.0  # touching the border, where the padding is no pixel
    inside = layer_guides(mask, PROBE_LAYERS, mode="inside")
    touching = layer_guides(mask, PROBE_LAYERS, mode="all")
    from_region = _touched(params, image, mask)
    from_outside = _touched(params, image, 1.0 - mask)
    for name in PROBE_LAYERS:
        assert inside[name].shape == from_region[name].shape, name
        np.testing.assert_array_equal(np.asarray(touching[name]) > 0, from_region[name], err_msg=f"all, {name}")
        np.testing.assert_array_equal(np.asarray(inside[name]) > 0, ~from_outside[name], err_msg=f"inside, {name}")
        assert 0 < np.sum(inside[name] > 0) < np.sum(touching[name] > 0), name


def test_inside_guides_give_zero_gradient_outside_the_region(random_params):
    layers = ("relu1_1", "relu2_1", "relu3_1")
    rng = np.random.default_rng(4)
    x = rng.random((48, 64, 3)).astype(np.float32)
    style = rng.random((40, 40, 3)).astype(np.float32)
    mask = np.zeros((48, 64), np.float32)
    mask[:, :36] = 1.0
    style_features = vgg19_features(random_params, style[None], layers)
    targets = {name: guided_gram_matrix(style_features[name][0], jnp.ones(style_features[name].shape[1:3]))[None]
               for name in layers}
    weights = {name: 1.0 / 3 for name in layers}

    def gradient(mode):
        guides = {name: g[None] for name, g in layer_guides(mask, layers, mode=mode).items()}

        def loss(pixels):
            features = vgg19_features(random_params, pixels[None], layers)
            return guided_style_losses(features, guides, targets, weights, jnp.ones(1))[0]

        return np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(x)))

    inside = gradient("inside")
    assert np.all(inside[:, 36:] == 0.0)
    assert np.abs(inside[:, :36]).max() > 0
    assert np.abs(gradient("simple")[:, 36:]).max() > 0  # resized guides leak across the edge


def test_two_regions_take_their_own_styles(random_params):
    from jaxmosaic.guides import Region
    from jaxmosaic.techniques.style import StyleConfig, StyleInputs, style_transfer

    content = flat_color((0.5, 0.5, 0.5), 0)
    red, blue = flat_color((0.85, 0.25, 0.2), 1), flat_color((0.15, 0.35, 0.85), 2)
    left = np.zeros((32, 32), np.float32)
    left[:, :16] = 1.0
    regions = [Region(left, name="left.png"), Region(1.0 - left, name="right.png")]
    config = StyleConfig(size=32, steps=(40,), content_weight=1e-3, style_weight=1e3,
                         content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
    result = style_transfer(config, StyleInputs(content, [red, blue], regions=regions), random_params)
    image = result.images[0]
    for half, own, other in ((image[:, :14], red, blue), (image[:, 18:], blue, red)):
        mean = half.reshape(-1, 3).mean(0)
        # nearer its own style's colour than the other's, by far (one blended style would give
        # both halves the same colour, midway)
        assert np.linalg.norm(mean - own.reshape(-1, 3).mean(0)) < 0.3 * np.linalg.norm(mean - other.reshape(-1, 3).mean(0))


def test_region_specs_and_one_line_errors(tmp_path, random_params):
    from helpers import one_line_error, run_cli
    from PIL import Image

    from jaxmosaic.config import ConfigError
    from jaxmosaic.guides import RegionSpec, load_regions, parse_region

    assert parse_region("m.png=s.png:sm.png@0.3") == RegionSpec("m.png", None, "s.png", "sm.png", 0.3)
    assert parse_region("labels.png#FF0000") == RegionSpec("labels.png", "ff0000", None, None, None)
    with pytest.raises(ConfigError, match="region: .*six hex digits"):
        parse_region("labels.png#f00")
    labels = np.zeros((16, 24, 3), np.uint8)
    labels[:, 8:] = (0, 0, 255)
    labels[10:, :] = (255, 0, 0)
    Image.fromarray(labels).save(tmp_path / "labels.png")
    masks = load_regions([f"{tmp_path / 'labels.png'}#*"])
    assert [region.name[-7:] for region in masks] == ["#000000", "#0000ff", "#ff0000"]
    np.testing.assert_array_equal(sum(region.mask for region in masks), np.ones((16, 24)))
    np.testing.assert_array_equal(masks[2].mask, np.all(labels == (255, 0, 0), axis=-1))

    def save(name, array):
        Image.fromarray(np.asarray(array, np.uint8)).save(tmp_path / name)
        return tmp_path / name

    content = save("content.png", np.full((32, 32, 3), 128))
    style = save("style.png", np.full((32, 32, 3), 60))
    half = np.zeros((32, 32), np.uint8)
    half[:, :16] = 255
    good, wrong, empty = save("good.png", half), save("wrong.png", half[:, :20]), save("empty.png", half * 0)
    out = tmp_path / "out.png"
    base = ["style", content, style, "-o", out, "--weights", "random", "--size", "32", "--steps", "2"]
    one_line_error(run_cli(*base, "--region", wrong), "wrong.png", "20x32", "aspect ratio")
    one_line_error(run_cli(*base, "--region", empty), "empty.png", "empty")
    one_line_error(run_cli(*base, "--region", good, "--region", good), "good.png", "more regions")
    one_line_error(run_cli(*base, "--region", f"{good}=missing.png"), "missing.png")
    # with --batch every region naming its own style would make every output the same
    one_line_error(run_cli(*base, "--region", f"{good}={style}", "--batch"), "--batch", "good.png")
    # a style mask's errors name the style mask's file, not the region's
    one_line_error(run_cli(*base, "--region", f"{good}={style}:{wrong}"), "wrong.png", "20x32", "its style image")
    one_line_error(run_cli(*base, "--region", f"{good}={style}:{empty}"), "empty.png", "empty")
    assert load_regions([f"{good}={style}:{wrong}"])[0].style_mask_name == str(wrong)
    assert not out.exists()
    regions = ["--region", f"{good}@2", "--region", f"{tmp_path / 'good.png'}={style}", "--guides", "inside"]
    # at 32 px --guides inside erodes the half to nothing by relu4_1 (a default style layer)
    one_line_error(run_cli(*base, *regions), "good.png", "vanishes at relu4_1", "--guides inside")
    assert not out.exists()
    result = run_cli(*base, *regions, "--style-layers", "relu1_1,relu2_1,relu3_1")
    assert result.exit_code == 0, result.output
    assert out.exists()

    from jaxmosaic.guides import Region
    from jaxmosaic.techniques.style import StyleConfig, StyleInputs, style_problem

    flat = np.full((128, 128, 3), 0.5, np.float32)

    # a region that --guides inside erodes to nothing at a deeper layer: one error naming the file, the layer, --guides
    from jaxmosaic.errors import ImageError
    from jaxmosaic.resources import activation_bytes
    from jaxmosaic.techniques.style import style_memory

    square = np.zeros((32, 32), np.float32)
    square[10:22, 10:22] = 1.0
    layers = ("relu1_1", "relu2_1", "relu3_1")
    guides = layer_guides(square, layers, mode="inside")
    assert float(guides["relu2_1"].max()) > 0 and float(guides["relu3_1"].max()) == 0  # vanishes at relu3_1 only
    small = flat[:32, :32]
    config = StyleConfig(size=32, steps=(1,), style_layers=layers, content_layers=("relu2_1",), guides="inside")
    params = random_params
    for region, named in ((Region(square, name="centre.png"), "centre.png"),
                          (Region(half / 255.0, style_mask=square, name="left.png", style_mask_name="smask.png"), "smask.png")):
        with pytest.raises(ImageError, match=f"^{named}: the region vanishes at relu3_1 .*--guides inside"):
            style_problem(config, StyleInputs(small, [small], regions=[region]), params).stages[0]()
    simple = StyleConfig(size=32, steps=(1,), style_layers=layers, content_layers=("relu2_1",))
    style_problem(simple, StyleInputs(small, [small], regions=[Region(square, name="centre.png")]), params).stages[0]()

    # the memory estimate counts R guide-weighted copies of the style layers' features (twice, for the backward pass):
    # XLA's scratch for the loss and gradient at 128 px measured 44 MiB without regions, 157 MiB with 8, 286 MiB with 16
    # (each region with a style image of its own, 64x128, whose features are taken too)
    big = StyleConfig(size=128, steps=(1,))
    wide = np.zeros((64, 128, 3), np.float32)
    bytes_of = [style_memory(big, StyleInputs(flat, [flat], regions=[Region(np.ones((128, 128), np.float32), style=wide)] * count))
                for count in (0, 1, 8, 16)]
    per_region = sum((128 // s) ** 2 * c for s, c in ((1, 64), (2, 128), (4, 256), (8, 512), (16, 512))) * 4 * 2
    per_region += activation_bytes(64, 128, big.style_layers)
    np.testing.assert_array_equal(np.diff(bytes_of), [per_region, 7 * per_region, 8 * per_region])
    assert bytes_of[3] >= 286 * 2**20
    layered = StyleInputs(flat, [flat], layer_styles={"relu1_1": np.zeros((64, 64, 3), np.float32)})
    assert style_memory(big, layered) - bytes_of[0] == activation_bytes(128, 128, big.style_layers)


def test_style_layers_from_takes_those_layers_targets_from_the_named_image(random_params):
    from jaxmosaic.losses import gram_targets
    from jaxmosaic.techniques.style import StyleConfig, StyleInputs, style_problem

    coarse, fine = flat_color((0.8, 0.3, 0.2), 3), flat_color((0.2, 0.3, 0.8), 4, (24, 40))
    content = flat_color((0.5, 0.5, 0.5), 5)
    layers = ("relu1_1", "relu2_1", "relu3_1")
    config = StyleConfig(size=32, steps=(1,), style_layers=layers, content_layers=("relu2_1",),
                         style_layers_from="relu1_1, relu2_1=fine.png")
    inputs = StyleInputs(content, [coarse], layer_styles={"relu1_1": fine, "relu2_1": fine})
    stage = style_problem(config, inputs, random_params).stages[0]()
    grams = stage.data[0].grams
    from jaxmosaic.image import fit_shape, resize

    fine_scaled = resize(fine, *fit_shape(24, 40, 32))
    from_fine = gram_targets(random_params, fine_scaled, ("relu1_1", "relu2_1"), size=(32, 32))
    from_coarse = gram_targets(random_params, coarse, ("relu3_1",), size=(32, 32))
    for name, expected in (*from_fine.items(), *from_coarse.items()):
        np.testing.assert_allclose(grams[name], expected, rtol=1e-5, err_msg=name)
    assert np.abs(np.asarray(grams["relu1_1"]) - np.asarray(gram_targets(random_params, coarse, ("relu1_1",))["relu1_1"])).max() > 1.0
    from jaxmosaic.config import ConfigError

    with pytest.raises(ConfigError, match="style_layers_from: relu4_1 is not one of the style layers"):
        StyleConfig(style_layers=layers, style_layers_from="relu4_1=x.png")


def test_texture_mask_matches_the_region_statistics(random_params, tmp_path):
    from helpers import one_line_error, run_cli
    from PIL import Image

    from jaxmosaic import gram_targets
    from jaxmosaic.guides import masked_gram_targets
    from jaxmosaic.io.images import load_image

    exemplar = np.concatenate([flat_color((0.85, 0.25, 0.2), 6, (32, 16)), flat_color((0.15, 0.35, 0.85), 7, (32, 16))], axis=1)
    mask = np.zeros((32, 32), np.float32)
    mask[:, :16] = 1.0
    layers = ("relu1_1", "pool1", "pool2")
    ones = masked_gram_targets(random_params, exemplar, np.ones((32, 32), np.float32), layers, size=(24, 40))
    plain = gram_targets(random_params, exemplar, layers, size=(24, 40))
    masked = masked_gram_targets(random_params, exemplar, mask, layers, size=(24, 40))
    features = vgg19_features(random_params, exemplar[None], layers)
    for name, stride in (("relu1_1", 1), ("pool1", 2), ("pool2", 4)):
        np.testing.assert_allclose(ones[name], plain[name], rtol=1e-5)
        inside = np.asarray(features[name][0])[:, : 16 // stride].reshape(-1, features[name].shape[-1]).astype(np.float64)
        expected = inside.T @ inside / len(inside) * (24 // stride) * (40 // stride)
        np.testing.assert_allclose(masked[name], expected, rtol=1e-4)

    Image.fromarray(np.round(exemplar * 255).astype(np.uint8)).save(tmp_path / "exemplar.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    Image.fromarray((mask[:, :20] * 255).astype(np.uint8)).save(tmp_path / "narrow.png")
    out = tmp_path / "out.png"
    base = ["texture", tmp_path / "exemplar.png", "-o", out, "--weights", "random", "--size", "32", "--steps", "30",
            "--layers", ",".join(layers)]
    one_line_error(run_cli(*base, "--mask", tmp_path / "narrow.png"), "narrow.png", "aspect ratio")
    one_line_error(run_cli(*base, "--mask", tmp_path / "mask.png", "--spectrum-weight", "1"), "--spectrum-weight", "--mask")
    corner = np.zeros((32, 32), np.uint8)
    corner[:2, :2] = 255  # a quarter of pool2's first 4x4 block: no position there for the distribution targets
    Image.fromarray(corner).save(tmp_path / "corner.png")
    one_line_error(run_cli(*base, "--mask", tmp_path / "corner.png", "--loss", "sw"), "corner.png", "pool2", "--loss sw")
    assert not out.exists()
    result = run_cli(*base, "--mask", tmp_path / "mask.png")
    assert result.exit_code == 0, result.output
    assert "--spectrum-weight auto is 0" in result.output
    mean = load_image(out).reshape(-1, 3).mean(0)
    red, blue = exemplar[:, :16].reshape(-1, 3).mean(0), exemplar[:, 16:].reshape(-1, 3).mean(0)
    # the whole exemplar's spectrum (its mean colour) pulled this to 0.30 from red; the region's statistics alone reach 0.08
    assert np.linalg.norm(mean - red) < 0.12 and np.linalg.norm(mean - red) < 0.15 * np.linalg.norm(mean - blue), (mean, red, blue)

    # sw, hist and gram+hist under the mask: the targets of the region's positions alone (a crop of the features)
    from jaxmosaic import layer_stride
    from jaxmosaic.distribution_losses import distribution_targets
    from jaxmosaic.techniques.texture import texture_targets

    positions = {name: (24 // stride) * (40 // stride) for name, stride in (("relu1_1", 1), ("pool1", 2), ("pool2", 4))}
    crop = {name: np.asarray(features[name][0])[:, : 16 // layer_stride(name)] for name in layers}
    for loss in ("sw", "hist", "gram+hist"):
        got = texture_targets(random_params, exemplar, size=(24, 40), layers=layers, pooling="max", loss=loss, seeds=(3,),
                              mask=mask).statistics
        want = distribution_targets(crop, positions, loss=loss, key=jax.random.PRNGKey(3))
        whole = distribution_targets({name: np.asarray(features[name][0]) for name in layers}, positions, loss=loss,
                                     key=jax.random.PRNGKey(3))
        differs = False
        for got_part, want_part, whole_part in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(whole)):
            np.testing.assert_allclose(np.asarray(got_part).reshape(np.shape(want_part)), want_part, rtol=1e-5, atol=1e-6,
                                       err_msg=loss)
            differs = differs or not np.allclose(want_part, whole_part, rtol=1e-3)
        assert differs, loss  # the region's statistics are not the whole exemplar's
