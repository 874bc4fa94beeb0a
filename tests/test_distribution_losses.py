"""Sliced Wasserstein and histogram losses: against NumPy transcriptions, their defining
properties (zero for a permutation, positive where the Gram loss is blind), gradients, the
`--loss` option of texture and style from Python and from the command line."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from distribution_reference import (
    histogram_loss_numpy,
    histogram_remap_numpy,
    sliced_wasserstein_numpy,
)
from helpers import SAMPLES, one_line_error, run_cli, sample_image

from jaxmosaic import (
    ConfigError,
    histogram_loss,
    histogram_target,
    random_directions,
    sliced_wasserstein_loss,
    sorted_projections,
    vgg19_features,
)
from jaxmosaic.distribution_losses import distribution_targets
from jaxmosaic.losses import style_layer_loss
from jaxmosaic.techniques.style import StyleConfig, StyleInputs, style_transfer
from jaxmosaic.techniques.texture import (
    TextureConfig,
    TextureInputs,
    synthesize_texture,
    texture_loss,
    texture_targets,
)

LAYERS = {"layers": ("relu1_1", "pool1")}


def skewed(rng, m, n):
    """Features with a skewed marginal (exponential, a ReLU's zeros in some of them)."""
    values = rng.exponential(1.0, (m, n)) - 0.3
    return np.maximum(values, 0.0).astype(np.float32)


def test_random_directions_are_unit_columns():
    directions = np.asarray(random_directions(jax.random.PRNGKey(3), 7, 40), np.float64)
    assert directions.shape == (7, 40)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=0), 1.0, atol=1e-6)
    assert abs(np.mean(directions)) < 0.1 and np.std(directions) > 0.25  # spread over the sphere, not one axis


def test_sliced_wasserstein_is_zero_for_a_permutation_of_the_positions(variant):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 6)).astype(np.float32)
    shuffled = features[rng.permutation(60)]
    directions = random_directions(jax.random.PRNGKey(0), 6, 6)
    assert float(variant(sliced_wasserstein_loss, shuffled, features, directions)) <= 1e-12
    other = rng.normal(size=(60, 6)).astype(np.float32)
    assert float(variant(sliced_wasserstein_loss, other, features, directions)) > 1e-3


def test_sliced_wasserstein_sees_marginals_the_gram_loss_does_not():
    rng = np.random.default_rng(1)
    m, n = 64, 5
    target = skewed(rng, m, n).astype(np.float64)
    rotation, _ = np.linalg.qr(rng.normal(size=(m, m)))  # mixes positions: U^T U = 1 keeps F^T F
    mixed = rotation @ target
    np.testing.assert_allclose(mixed.T @ mixed, target.T @ target, rtol=1e-10, atol=1e-10)
    gram = float(style_layer_loss(jnp.asarray(mixed, jnp.float32).reshape(8, 8, n), (target.T @ target).astype(np.float32)))
    directions = random_directions(jax.random.PRNGKey(1), n, n)
    sw = float(sliced_wasserstein_loss(mixed.astype(np.float32), target.astype(np.float32), directions))
    scale = float(np.mean(target**2))
    assert gram <= 1e-9 * scale**2
    assert sw >= 0.02 * scale
    np.testing.assert_allclose(sw, sliced_wasserstein_numpy(mixed, target, directions), rtol=1e-4)


@pytest.mark.parametrize("sizes", [(48, 48), (48, 75)])
def test_sliced_wasserstein_against_numpy(variant, sizes):
    rng = np.random.default_rng(sizes[1])
    features, target = skewed(rng, sizes[0], 8), rng.normal(1.0, 2.0, (sizes[1], 8)).astype(np.float32)
    directions = random_directions(jax.random.PRNGKey(sizes[1]), 8, 12)
    expected = sliced_wasserstein_numpy(features, target, directions)
    np.testing.assert_allclose(float(variant(sliced_wasserstein_loss, features, target, directions)), expected, rtol=2e-5)
    projections = sorted_projections(target, directions)  # precomputed target: the same value
    precomputed = jax.jit(sliced_wasserstein_loss)(features, projections, directions)
    np.testing.assert_allclose(float(precomputed), expected, rtol=2e-5)


def test_sliced_wasserstein_gradient_against_numpy():
    """d/dF mean (sort(F v) - q)^2 = 2/(M P) sum_p (F v_p - q_p[rank]) v_p^T, with ties (ReLU zeros)."""
    rng = np.random.default_rng(4)
    features, target = skewed(rng, 40, 4), skewed(rng, 40, 4)
    directions = np.asarray(random_directions(jax.random.PRNGKey(4), 4, 6), np.float64)
    gradient = np.asarray(jax.grad(sliced_wasserstein_loss)(features, target, directions))
    assert np.all(np.isfinite(gradient))
    projected = features.astype(np.float64) @ directions
    theirs = np.sort(target.astype(np.float64) @ directions, axis=0)
    expected = np.zeros_like(projected)
    for p in range(directions.shape[1]):
        order = np.argsort(projected[:, p], kind="stable")
        expected[order, p] = projected[order, p] - theirs[:, p]
    expected = 2.0 * expected @ directions.T / projected.size
    np.testing.assert_allclose(gradient, expected, atol=1e-6)


@pytest.mark.parametrize("bins", [16])
def test_histogram_loss_against_numpy(variant, bins):
    rng = np.random.default_rng(bins)
    features, target = rng.normal(size=(70, 5)).astype(np.float32), skewed(rng, 90, 5)
    value, gradient = histogram_loss_numpy(features, target, bins)
    np.testing.assert_allclose(float(variant(lambda f, t: histogram_loss(f, t, bins), features, target)), value, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(jax.grad(histogram_loss)(features, target, bins)), gradient, atol=1e-6)
    precomputed = histogram_target(target, bins)
    np.testing.assert_allclose(float(jax.jit(histogram_loss, static_argnums=2)(features, precomputed, bins)), value, rtol=1e-4)
    with pytest.raises(ValueError, match="bins"):
        histogram_loss(features, precomputed, bins + 1)


def test_histogram_remap_of_the_target_itself_is_nearly_the_identity():
    rng = np.random.default_rng(9)
    target = rng.normal(size=(400, 3))
    remapped = histogram_remap_numpy(target, target, 256)
    assert np.max(np.abs(remapped - target)) < 0.1  # within a bin or two: a check of the reference itself
    loss = float(histogram_loss(target.astype(np.float32), target.astype(np.float32), 256))
    assert loss < 1e-3 and loss > 0.0


def test_texture_terms_equal_the_pure_functions(random_params):
    """The "sw" and "hist" terms of texture_loss are sum_l w_l of the pure functions on the
    network's features, with the fixed directions the targets hold (output smaller than the
    exemplar: quantiles)."""
    exemplar = sample_image("brick.png", 40, 40)
    x = jnp.asarray(np.random.default_rng(0).random((32, 32, 3)), jnp.float32)
    weights = {"relu1_1": 0.25, "pool1": 0.75}
    features = vgg19_features(random_params, x[None], tuple(weights), pooling="avg")
    ex_features = vgg19_features(random_params, jnp.asarray(exemplar)[None], tuple(weights), pooling="avg")
    for loss in ("sw", "hist"):
        targets = texture_targets(random_params, exemplar, size=(32, 32), layers=tuple(weights), loss=loss)
        _, terms = jax.jit(lambda x, t, loss=loss: texture_loss(x, t, random_params, layer_weights=weights, loss=loss))(x, targets)
        if loss == "sw":
            expected = sum(w * sliced_wasserstein_numpy(features[n][0], ex_features[n][0], targets.statistics.directions[n][0])
                           for n, w in weights.items())
        else:
            expected = sum(w * histogram_loss_numpy(features[n][0].reshape(-1, features[n].shape[-1]),
                                                    ex_features[n][0].reshape(-1, features[n].shape[-1]), 256)[0]
                           for n, w in weights.items())
        np.testing.assert_allclose(float(terms[loss]), expected, rtol=1e-4)
        assert "gram" not in terms


def test_sw_texture_lowers_its_loss_and_variations_equal_separate_runs(random_params):
    exemplar = sample_image("brick.png", 32, 32)
    settings = dict(steps=6, size=32, loss="sw", spectrum_weight=0.0, **LAYERS)
    batch = synthesize_texture(TextureConfig(variations=2, **settings), TextureInputs(exemplar), random_params)
    history = batch.history[0]
    assert np.all(history[-1] < 0.5 * history[0])
    alone = synthesize_texture(TextureConfig(seed=1, **settings), TextureInputs(exemplar), random_params)
    np.testing.assert_allclose(batch.images[1], alone.images[0], atol=1e-5)
    np.testing.assert_allclose(batch.loss[1]["sw"], alone.loss[0]["sw"], rtol=1e-4)


def test_random_directions_with_adam(random_params):
    exemplar = sample_image("brick.png", 32, 32)
    result = synthesize_texture(TextureConfig(steps=8, size=32, loss="sw", directions="random", optimizer="adam", lr=0.05,
                                              spectrum_weight=0.0, **LAYERS), TextureInputs(exemplar), random_params)
    history = result.history[0][:, 0]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]


def test_style_hist_batch_of_styles(random_params):
    content = sample_image("astronaut.png", 32, 32)
    styles = [sample_image("brick.png", 32, 32), sample_image("coffee.png", 24, 32)]
    config = StyleConfig(size=32, steps=(4,), loss="hist", batch=True, content_layers=("relu2_1",),
                         style_layers=("relu1_1", "relu2_1"))
    result = style_transfer(config, StyleInputs(content, styles), random_params)
    assert result.images.shape == (2, 32, 32, 3)
    history = result.history[0]
    assert np.all(np.isfinite(history)) and np.all(history[-1] < history[0])


@pytest.mark.parametrize(("settings", "field"), [
    ({"loss": "wasserstein"}, "loss"),
    ({"loss": "sw", "directions": "random"}, "directions"),
    ({"loss": "sw", "directions": "sometimes", "optimizer": "adam"}, "directions"),
])
def test_bad_settings_are_refused(settings, field):
    for kind in (TextureConfig, StyleConfig):
        with pytest.raises(ConfigError) as caught:
            kind(**settings)
        assert caught.value.field == field
    with pytest.raises(ConfigError, match="does not blend"):
        style_transfer(StyleConfig(loss="sw", size=32, steps=(1,)), StyleInputs(np.zeros((32, 32, 3)), [np.zeros((32, 32, 3))] * 2),
                       None)


def test_cli_texture_sw_and_style_hist(tmp_path):
    texture_out, style_out = tmp_path / "t.png", tmp_path / "s.png"
    result = run_cli("texture", SAMPLES / "brick.png", "-o", texture_out, "--size", 32, "--steps", 3, "--loss", "sw",
                     "--layers", "relu1_1,pool1", "--weights", "random", "--metrics", tmp_path / "t.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "t.json").read_text())
    assert metrics["settings"]["loss"] == "sw" and metrics["settings"]["directions"] == "fixed"
    assert set(metrics["loss"]) == {"total", "sw", "spectrum"} and metrics["loss"]["sw"] > 0
    assert texture_out.exists()
    result = run_cli("style", SAMPLES / "astronaut.png", SAMPLES / "brick.png", "-o", style_out, "--size", 32, "--steps", 3,
                     "--loss", "hist", "--style-layers", "relu1_1,relu2_1", "--content-layers", "relu2_1", "--weights", "random",
                     "--metrics", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "s.json").read_text())
    assert metrics["settings"]["loss"] == "hist" and metrics["loss"]["style"] > 0
    assert style_out.exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--loss", "moments"], "--loss"),
    (["--loss", "sw", "--directions", "random"], "--directions"),
])
def test_cli_refuses_bad_values_in_one_line(tmp_path, args, expected):
    outdir = tmp_path / "out"
    outdir.mkdir()
    result = run_cli("texture", SAMPLES / "brick.png", "-o", outdir / "t.png", "--weights", "random", *args)
    one_line_error(result, expected)
    assert list(outdir.iterdir()) == []


def test_masked_targets_are_those_of_the_region_positions():
    rng = np.random.default_rng(5)
    features = {"a": skewed(rng, 48, 4).reshape(6, 8, 4)}
    guide = np.zeros((6, 8), np.float32)
    guide[1:4, 2:7] = 1.0
    guide[5, 0] = 0.4  # a soft edge below 1/2 stays out
    key = jax.random.PRNGKey(2)
    masked = distribution_targets(features, {"a": 30}, loss="sw", key=key, masks={"a": guide})
    region = features["a"][1:4, 2:7].reshape(-1, 4)
    alone = distribution_targets({"a": region}, {"a": 30}, loss="sw", key=key)
    np.testing.assert_array_equal(np.asarray(masked.sorted["a"].values), np.asarray(alone.sorted["a"].values))
    hist = distribution_targets(features, {"a": 30}, loss="hist", masks={"a": guide})
    np.testing.assert_allclose(np.asarray(hist.histograms["a"].edges[0]), region.min(axis=0))
    np.testing.assert_allclose(np.asarray(hist.histograms["a"].edges[-1]), region.max(axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="no position"):
        distribution_targets(features, {"a": 30}, loss="hist", masks={"a": np.zeros((6, 8))})
