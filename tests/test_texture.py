"""Texture synthesis: the spectrum projection, the Gram loss against PyTorch, convergence on the brick
sample, variations, tileable output, histogram matching."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import sample_image
from jaxmosaic.config import ConfigError
from jaxmosaic.spectrum import (
    periodic_component,
    radial_power_spectrum,
    spectrum_distance,
    spectrum_loss,
    spectrum_projection,
    spectrum_target,
)
from jaxmosaic.techniques.texture import (
    TEXTURE_LAYERS,
    TextureConfig,
    TextureInputs,
    match_histograms,
    synthesize_texture,
    texture_loss,
    texture_losses,
    texture_memory,
    texture_targets,
)

WEIGHTS = {name: 1 / len(TEXTURE_LAYERS) for name in TEXTURE_LAYERS}


def synthesize(params, exemplar, *, start=None, chunk=None, **settings):
    return synthesize_texture(TextureConfig(**settings), TextureInputs(exemplar, start), params, chunk=chunk)


def brick(size):
    return sample_image("brick.png", size, size)[..., :1]


def modulus(image):
    return np.abs(np.fft.fft2(np.asarray(image, np.float64), axes=(0, 1)))


@pytest.mark.parametrize("channels", [1, 3])
def test_spectrum_projection_properties(variant, channels):
    rng = np.random.default_rng(channels)
    u = rng.random((24, 20, channels)).astype(np.float32)
    x = rng.random((24, 20, channels)).astype(np.float32)
    projected = np.asarray(variant(spectrum_projection, x, u))
    again = np.asarray(variant(spectrum_projection, projected, u))
    fixed = np.asarray(variant(spectrum_projection, u, u))
    target_modulus = modulus(u)
    assert np.max(np.abs(modulus(projected) - target_modulus)) <= 1e-4 * target_modulus.max()
    np.testing.assert_allclose(again, projected, atol=1e-5)
    np.testing.assert_allclose(fixed, u, atol=1e-5)
    assert np.max(np.abs(projected - x)) > 0.1  # it did move x
    if channels == 1:  # |u^| e^{i arg x^}
        x_hat = np.fft.fft2(x[..., 0].astype(np.float64))
        expected = np.real(np.fft.ifft2(np.abs(np.fft.fft2(u[..., 0].astype(np.float64))) * np.exp(1j * np.angle(x_hat))))
        np.testing.assert_allclose(projected[..., 0], expected, atol=1e-5)
    else:  # the phase is shared: phi = sum_c x^_c conj(u^_c)
        x_hat, u_hat = np.fft.fft2(x, axes=(0, 1)), np.fft.fft2(u, axes=(0, 1))
        phi = np.sum(x_hat * np.conj(u_hat), axis=-1, keepdims=True)
        expected = np.real(np.fft.ifft2(phi / np.abs(phi) * u_hat, axes=(0, 1)))
        np.testing.assert_allclose(projected, expected, atol=1e-5)


def test_spectrum_gradient_is_x_minus_projection():
    rng = np.random.default_rng(1)
    u, x = rng.random((16, 18, 3)), rng.random((16, 18, 3))
    beta = 3.0
    residual = x - np.asarray(spectrum_projection(x, u))
    through_projection = jax.grad(lambda y: beta * 0.5 * jnp.sum(jnp.square(y - spectrum_projection(y, u))))(x)
    loss_gradient = jax.grad(lambda y: beta * spectrum_loss(y, u))(x)
    scale = np.max(np.abs(residual)) * beta
    assert np.max(np.abs(through_projection - beta * residual)) <= 1e-4 * scale
    assert np.max(np.abs(loss_gradient - beta * residual)) <= 1e-4 * scale
    assert float(spectrum_loss(x, u)) == pytest.approx(0.5 * np.sum(residual**2), rel=1e-4)


def test_spectrum_projection_is_safe_where_phi_is_zero():
    u = np.random.default_rng(2).random((8, 8, 3)).astype(np.float32)
    x = np.full((8, 8, 3), 0.5, np.float32)  # no energy away from the mean: phi = 0 there
    projected = spectrum_projection(x, u)
    grad = jax.grad(lambda y: 0.5 * jnp.sum(jnp.square(y - spectrum_projection(y, u))))(x)
    assert np.all(np.isfinite(projected)) and np.all(np.isfinite(grad))
    assert np.max(np.abs(modulus(projected) - modulus(u))) <= 1e-4 * modulus(u).max()


def test_periodic_component_has_the_inside_laplacian():
    u = np.random.default_rng(3).random((12, 17, 2))
    p = np.asarray(periodic_component(u))
    periodic_laplacian = sum(np.roll(p, shift, axis) for shift in (1, -1) for axis in (0, 1)) - 4 * p
    inside_laplacian = np.zeros_like(u)  # neighbours outside the image are left out
    inside_laplacian[1:] += u[:-1] - u[1:]
    inside_laplacian[:-1] += u[1:] - u[:-1]
    inside_laplacian[:, 1:] += u[:, :-1] - u[:, 1:]
    inside_laplacian[:, :-1] += u[:, 1:] - u[:, :-1]
    np.testing.assert_allclose(periodic_laplacian, inside_laplacian, atol=1e-5)
    np.testing.assert_allclose(p.mean(axis=(0, 1)), u.mean(axis=(0, 1)), atol=1e-6)
    # the jump between opposite borders, which makes the spectrum's cross, goes: a ramp has one
    ramp = np.linspace(0, 1, 32)[:, None, None] * np.ones((32, 32, 1)) + 0.02 * np.random.default_rng(0).random((32, 32, 1))
    p = np.asarray(periodic_component(ramp))
    assert np.abs(p[0] - p[-1]).mean() < 0.1 * np.abs(ramp[0] - ramp[-1]).mean()


def test_spectrum_target_at_other_sizes():
    u = np.random.default_rng(4).random((16, 16, 3))
    np.testing.assert_allclose(spectrum_target(u, 16, 16), periodic_component(u), atol=1e-6)
    larger = np.asarray(spectrum_target(u, 32, 48))
    p = np.asarray(periodic_component(u))
    assert larger.shape == (32, 48, 3)
    np.testing.assert_allclose(larger.mean(axis=(0, 1)), u.mean(axis=(0, 1)), atol=3e-5)
    np.testing.assert_allclose(larger.var(axis=(0, 1)), p.var(axis=(0, 1)), rtol=1e-5)  # variance per pixel kept
    scale = np.sqrt(32 * 48 / 256)
    np.testing.assert_allclose(larger[8:24, 16:32] - u.mean(axis=(0, 1)), scale * (p - p.mean(axis=(0, 1))), atol=1e-5)
    assert np.asarray(spectrum_target(u, 8, 40)).shape == (8, 40, 3)


def test_texture_loss_matches_pytorch(torch_model, torch_params):
    rng = np.random.default_rng(5)
    exemplar, x = rng.random((32, 32, 3)), rng.random((32, 32, 3))
    beta = 0.01
    ours = jnp.asarray(x, jnp.float32)
    # the plain exemplar as the spectrum target, as the PyTorch reference takes it; compiled whole
    # (op by op the network and its gradient cost five times the CPU)
    targets = jax.jit(lambda image: texture_targets(torch_params, image))(exemplar.astype(np.float32))
    targets = targets._replace(spectrum=jnp.asarray(exemplar, jnp.float32))
    loss = jax.value_and_grad(lambda y: texture_loss(y, targets, torch_params, layer_weights=WEIGHTS, spectrum_weight=beta), has_aux=True)
    (total, terms), grad = jax.jit(loss)(ours)
    from torch_reference import texture

    gram_ref, total_ref, grad_ref = texture(torch_model, x, exemplar, beta=beta, weights=WEIGHTS)
    assert float(terms["gram"]) == pytest.approx(gram_ref, rel=1e-4)
    assert float(total) == pytest.approx(total_ref, rel=1e-4)
    assert beta * float(terms["spectrum"]) > 0.1 * float(total)  # both terms count in the comparison
    assert np.max(np.abs(np.asarray(grad) - grad_ref)) <= 1e-4 * np.max(np.abs(grad_ref))


@pytest.fixture(scope="module")
def brick_runs(random_params):
    """The brick sample at 80x80, 20 L-BFGS iterations with the spectrum term on and off (the bars
    below held at 60 too: gram 1.4e-5 and 4.2e-6 of the start, distance 0.014, error 0.25 times)."""
    exemplar = brick(80)
    on = synthesize(random_params, exemplar, steps=20, chunk=20)
    off = synthesize(random_params, exemplar, steps=20, spectrum_weight=0.0, chunk=20)
    return exemplar, on, off


def test_brick_synthesis_with_and_without_the_spectrum_term(random_params, brick_runs):
    exemplar, on, off = brick_runs
    targets = texture_targets(random_params, exemplar)
    noise = jax.random.uniform(jax.random.PRNGKey(0), exemplar.shape)  # the seed-0 start of both runs
    start = float(texture_loss(noise, targets, random_params, layer_weights=WEIGHTS)[1]["gram"])
    assert on.facts["spectrum_weight"] > 0 and off.facts["spectrum_weight"] == 0
    for run in (on, off):  # measured: 5.7e-5 and 5.0e-5 of the start
        assert run.images.shape == (1, 80, 80, 1)
        assert run.loss[0]["gram"] <= 0.01 * start, (run.loss[0]["gram"] / start)
    distance_on = float(spectrum_distance(on.images[0], targets.spectrum))
    distance_off = float(spectrum_distance(off.images[0], targets.spectrum))
    assert distance_on < distance_off  # measured: 0.039 times
    reference = np.asarray(radial_power_spectrum(exemplar))
    error_on = np.mean(np.abs(np.asarray(radial_power_spectrum(on.images[0])) - reference))
    error_off = np.mean(np.abs(np.asarray(radial_power_spectrum(off.images[0])) - reference))
    assert error_on < error_off  # measured: 0.18 times
    history = on.history[0][:, 0]
    assert np.all(np.diff(history) <= 1e-6 * history[0])  # L-BFGS steps never raise the loss


@pytest.mark.parametrize("optimizer, steps", [("adam", 30), ("lbfgs", 30)])
def test_variations_equal_separate_runs(random_params, optimizer, steps):
    exemplar = brick(32)
    settings = {"layers": ("relu1_1", "pool1", "pool2"), "steps": steps, "optimizer": optimizer,
                "lr": 0.02 if optimizer == "adam" else None}
    together = synthesize(random_params, exemplar, variations=2, seed=3, **settings)
    alone = [synthesize(random_params, exemplar, seed=seed, **settings) for seed in (3, 4)]
    # L-BFGS drives the loss to 1e-6 here, where a last-bit difference would grow into another image
    # (grey seen in three channels by a concatenation, not a broadcast: see texture._rgb); measured bitwise equal
    for i, single in enumerate(alone):
        np.testing.assert_allclose(together.images[i], single.images[0], atol=1e-5)
        assert together.loss[i]["total"] == pytest.approx(single.loss[0]["total"], rel=1e-4)
        if optimizer == "lbfgs":
            assert together.evaluations[i] <= 1.5 * steps
    assert np.mean(np.abs(together.images[0] - together.images[1])) > 0.02  # two seeds, two textures (measured 0.049)
    assert together.facts["spectrum_weight"] == alone[0].facts["spectrum_weight"]


def seam_and_rows(image, stride):
    """Mean absolute difference across the wrap seam, and across each interior row and column
    boundary in the same place of the pooling grid (every `stride`-th), as (seam, boundaries)."""
    seam = (np.mean(np.abs(image[0] - image[-1])) + np.mean(np.abs(image[:, 0] - image[:, -1]))) / 2
    dy = np.abs(np.diff(image, axis=0)).mean(axis=(1, 2))[stride - 1 :: stride]
    dx = np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))[stride - 1 :: stride]
    return seam, np.concatenate([dy, dx])


def test_tileable_output_wraps_seamlessly(random_params):
    exemplar = sample_image("coffee.png", 64, 64)
    layers = ("relu1_1", "pool1", "pool2", "pool3")
    weights = {name: 0.25 for name in layers}
    # with circular padding the loss cannot tell where the image starts: the seam is not special
    targets = jax.jit(lambda image: texture_targets(random_params, image, layers=layers))(exemplar)
    x = jax.random.uniform(jax.random.PRNGKey(1), (64, 64, 3))
    both = jnp.stack([x, jnp.roll(x, (24, 40), axis=(0, 1))])  # an image and the image shifted, through the network at once
    losses = jax.jit(lambda y, padding: texture_losses(y, targets, random_params, layer_weights=weights, spectrum_weight=1e-3,
                                                       padding=padding)[0], static_argnums=1)
    for padding, equal in (("circular", True), ("zeros", False)):
        a, b = (float(value) for value in losses(both, padding))
        assert (abs(a - b) <= 1e-5 * a) == equal, (padding, a, b)
    settings = {"layers": layers, "steps": 50}
    seam, rows = seam_and_rows(synthesize(random_params, exemplar, tileable=True, **settings).images[0], 8)
    assert seam <= rows.max() and seam <= 1.25 * rows.mean()  # measured: 0.82 and 1.04 times
    plain_seam, plain_rows = seam_and_rows(synthesize(random_params, exemplar, **settings).images[0], 8)
    assert plain_seam > 1.5 * plain_rows.mean()  # zero padding leaves borders that do not meet (measured: 2.03 times)


def test_continue_from_a_result_lowers_the_loss(random_params):
    exemplar = brick(32)
    settings = {"layers": ("relu1_1", "pool1", "pool2"), "spectrum_weight": 0.0}
    first = synthesize(random_params, exemplar, steps=10, **settings)
    more = synthesize(random_params, exemplar, steps=10, start=first.images[0], **settings)
    assert more.history[0][0, 0] == pytest.approx(first.loss[0]["total"], rel=1e-5)
    assert more.loss[0]["total"] < 0.9 * first.loss[0]["total"]


def test_histogram_matching():
    rng = np.random.default_rng(6)
    image, reference = rng.random((20, 20, 3)) ** 2, rng.random((20, 20, 3))
    matched = np.asarray(match_histograms(image, reference))
    for c in range(3):
        np.testing.assert_allclose(np.sort(matched[..., c].ravel()), np.sort(reference[..., c].ravel()), atol=1e-6)
        order = np.argsort(image[..., c].ravel())  # ranks are kept
        assert np.all(np.diff(matched[..., c].ravel()[order]) >= 0)
    small = np.asarray(match_histograms(image, reference[:10]))  # other sizes: quantiles
    np.testing.assert_allclose(np.median(small, axis=(0, 1)), np.median(reference[:10], axis=(0, 1)), atol=0.05)


def test_bad_settings_are_refused(random_params):
    with pytest.raises(ValueError, match="tiny.png is 40x12; the layers up to pool4 need at least 16x16"):
        texture_memory(TextureConfig(), TextureInputs(np.zeros((12, 40, 3), np.float32), name="tiny.png"))
    with pytest.raises(ConfigError, match="layers: unknown VGG19 layer"):
        TextureConfig(layers=("pool9",))
    with pytest.raises(ConfigError, match="size: 64x8 is too small"):
        texture_memory(TextureConfig(size=(8, 64)), TextureInputs(np.zeros((32, 32, 3), np.float32)))
    for field, value in (("spectrum_weight", -1.0), ("spectrum_weight", float("nan")), ("steps", 0), ("variations", 0)):
        with pytest.raises(ConfigError, match=f"^{field}: "):
            TextureConfig(**{field: value})


def test_memory_of_a_cpu_batch_counts_the_images_in_the_network_at_once():
    # at 512 px a CPU runs one variation at a time through the network: a batch of 4 adds three
    # images' optimiser buffers, not their activations
    from jaxmosaic.resources import activation_bytes

    exemplar = TextureInputs(np.zeros((512, 512, 3), np.float32))
    one, four = (texture_memory(TextureConfig(variations=n, tile=None), exemplar) for n in (1, 4))
    assert four - one == 3 * 30 * 512 * 512 * 3 * 4
    small = TextureInputs(np.zeros((64, 64, 3), np.float32))  # 64 px: 16 images per call, all 4 at once
    one, four = (texture_memory(TextureConfig(variations=n, tile=None), small) for n in (1, 4))
    assert four - one == 3 * (2 * activation_bytes(64, 64, TextureConfig().layers) + 30 * 64 * 64 * 3 * 4)
