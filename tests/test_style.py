"""Neural style transfer: losses against PyTorch, convergence, resume, batches, original colours."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SAMPLES
from jaxmosaic.checkpoint import load_checkpoint, save_checkpoint
from jaxmosaic.color import rgb_to_yiq
from jaxmosaic.image import load_image, resize
from jaxmosaic.losses import content_loss, gram_matrix, style_layer_loss, tv_loss
from jaxmosaic.optimize import make_optimizer
from jaxmosaic.techniques.style import (
    STYLE_LAYERS,
    Resume,
    keep_colors,
    style_targets,
    style_transfer,
    style_transfer_loss,
)
from jaxmosaic.vgg import VGG19_LAYERS

# shallow layers keep the tests that check the driver's bookkeeping fast
SHALLOW = {"content_layers": ("relu2_2",), "style_layers": ("relu1_1", "relu2_1")}


def sample(name, height, width):
    return np.asarray(resize(load_image(SAMPLES / name), height, width))


def torch_gatys(model, x, content, style, *, alpha, beta, tv_weight):
    """The paper's losses written in PyTorch (float64), on the same VGG19: terms and d total / d x."""
    import torch

    model = copy.deepcopy(model).double()
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    wanted = {"relu4_2", *STYLE_LAYERS}

    def features(image):
        h = (image.permute(2, 0, 1)[None] - mean) / std
        out = {}
        for name, module in zip(VGG19_LAYERS, model.features):
            h = torch.relu(h) if isinstance(module, torch.nn.ReLU) else module(h)
            if name in wanted:
                out[name] = h[0]
            if len(out) == len(wanted):
                break
        return out

    def gram(f):
        flat = f.reshape(f.shape[0], -1)
        return flat @ flat.T, f.shape[0], flat.shape[1]

    pixels = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    with torch.no_grad():
        p = features(torch.from_numpy(content.astype(np.float64)))["relu4_2"]
        a = {name: gram(f)[0] for name, f in features(torch.from_numpy(style.astype(np.float64))).items() if name in STYLE_LAYERS}
    f = features(pixels)
    l_content = 0.5 * ((f["relu4_2"] - p) ** 2).sum()
    l_style = 0
    for name in STYLE_LAYERS:
        g, c, m = gram(f[name])
        l_style = l_style + 0.2 * ((g - a[name]) ** 2).sum() / (4 * c**2 * m**2)
    tv = ((pixels[1:] - pixels[:-1]) ** 2).sum() + ((pixels[:, 1:] - pixels[:, :-1]) ** 2).sum()
    total = alpha * l_content + beta * l_style + tv_weight * tv
    total.backward()
    terms = {"content": l_content.item(), "style": l_style.item(), "tv": tv.item(), "total": total.item()}
    return terms, pixels.grad.numpy()


def test_losses_and_gradients_match_pytorch(torch_model, torch_params):
    x = np.random.default_rng(0).random((48, 40, 3)).astype(np.float32)
    content, style = sample("chelsea.png", 48, 40), sample("brick.png", 48, 40)
    settings = {"alpha": 1.0, "beta": 1e3, "tv_weight": 0.5}
    expected, expected_grad = torch_gatys(torch_model, x, content, style, **settings)
    targets = style_targets(torch_params, content, [style])
    weights = {name: 0.2 for name in STYLE_LAYERS}

    def total(pixels):
        return style_transfer_loss(pixels, targets, torch_params, style_weights=weights, **settings)

    (value, terms), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(x)
    ours = {"total": float(value), **{k: float(v) for k, v in terms.items()}}
    for name in ("content", "style", "tv", "total"):
        assert ours[name] == pytest.approx(expected[name], rel=1e-4), name
    grad = np.asarray(grad)
    assert np.abs(grad - expected_grad).max() <= 1e-4 * np.abs(expected_grad).max()


def test_loss_functions_under_jit_and_vmap():
    rng = np.random.default_rng(1)
    f = rng.random((3, 5, 4, 6)).astype(np.float32)
    flat = f.reshape(3, 20, 6)
    np.testing.assert_allclose(np.asarray(gram_matrix(f)), np.einsum("bmc,bmd->bcd", flat, flat), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.vmap(gram_matrix)(f)), np.asarray(gram_matrix(f)), rtol=1e-6)
    target = rng.random((6, 6)).astype(np.float32)
    expected = np.sum((flat[0].T @ flat[0] - target) ** 2) / (4 * 36 * 20**2)
    assert float(jax.jit(style_layer_loss)(f[0], target)) == pytest.approx(expected, rel=1e-5)
    assert float(content_loss(f[0], f[1])) == pytest.approx(0.5 * np.sum((f[0] - f[1]) ** 2), rel=1e-5)
    image = rng.random((7, 9, 3)).astype(np.float32)
    expected_tv = np.sum(np.diff(image, axis=0) ** 2) + np.sum(np.diff(image, axis=1) ** 2)
    assert float(tv_loss(image)) == pytest.approx(expected_tv, rel=1e-5)


def test_content_reconstruction_from_noise(random_params):
    content = sample("chelsea.png", 64, 64)
    result = style_transfer(random_params, content, [content], sizes=(64,), steps=200, alpha=1.0, beta=0.0,
                            style_layers=("relu1_1",), chunk=200)
    start, end = float(result.history[0][0]), result.loss[0]["content"]
    assert start / end >= 100, (start, end)


def test_style_synthesis_from_noise(random_params):
    style = sample("brick.png", 64, 64)
    result = style_transfer(random_params, style, [style], sizes=(64,), steps=200, alpha=0.0, beta=1.0,
                            content_layers=("relu1_1",), chunk=200)
    start, end = float(result.history[0][0]), result.loss[0]["style"]
    assert start / end >= 100, (start, end)


def test_default_run_lowers_the_loss_in_every_accepted_step(random_params):
    content, style = sample("astronaut.png", 64, 64), sample("brick.png", 64, 64)
    result = style_transfer(random_params, content, [style], sizes=(64,), steps=30, chunk=30)
    history = result.history[0]
    assert np.all(np.diff(history) <= 1e-6 * history[0]), history
    assert history[-1] < 0.5 * history[0]


def test_resume_reproduces_the_uninterrupted_run(random_params, tmp_path):
    content, style = sample("astronaut.png", 64, 64), sample("coffee.png", 64, 64)
    settings = dict(sizes=(64,), chunk=25, **SHALLOW)
    full = style_transfer(random_params, content, [style], steps=100, **settings)
    stopped = {}

    def at_fifty(progress):
        if progress.step == 50:
            save_checkpoint(tmp_path / "ck", {"images": progress.images, "opt_state": progress.opt_state}, {"step": 50})
            stopped["yes"] = True
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        style_transfer(random_params, content, [style], steps=100, callback=at_fifty, **settings)
    like = {"images": np.zeros((1, 64, 64, 3), np.float32), "opt_state": make_optimizer("lbfgs").init(np.zeros((64, 64, 3), np.float32))}
    state, meta = load_checkpoint(tmp_path / "ck", like)
    resumed = style_transfer(random_params, content, [style], steps=100,
                             resume=Resume(0, meta["step"], state["images"], state["opt_state"]), **settings)
    assert resumed.steps == 50
    assert np.abs(resumed.images - full.images).max() <= 1e-5


@pytest.mark.parametrize("optimizer, steps", [("lbfgs", 2)])
def test_batch_of_styles_equals_separate_runs(random_params, optimizer, steps):
    # Long runs are not compared pixel by pixel: a last-bit difference between a batched and a
    # single convolution can send L-BFGS's line search down the other branch, and Adam's first
    # steps move every pixel by the learning rate whatever the sign of a near-zero gradient.
    content = sample("astronaut.png", 48, 48)
    styles = [sample("brick.png", 48, 48), sample("coffee.png", 40, 56)]
    settings = dict(sizes=(48,), steps=steps, chunk=steps, optimizer=optimizer,
                    learning_rate=0.02 if optimizer == "adam" else None, **SHALLOW)
    batch = style_transfer(random_params, content, styles, batch=True, **settings)
    assert batch.images.shape == (2, 48, 48, 3)
    for i, style in enumerate(styles):
        alone = style_transfer(random_params, content, [style], **settings)
        assert np.abs(batch.images[i] - alone.images[0]).max() <= 1e-4
        assert batch.loss[i]["total"] == pytest.approx(alone.loss[0]["total"], rel=1e-4)
    assert np.abs(batch.images[0] - batch.images[1]).max() > 0.01  # two styles, two images


def test_blending_two_styles_blends_their_grams(random_params):
    content = sample("astronaut.png", 32, 32)
    a, b = sample("brick.png", 32, 32), sample("coffee.png", 32, 32)
    ta = style_targets(random_params, content, [a])
    tb = style_targets(random_params, content, [b])
    blended = style_targets(random_params, content, [a, b], blend=[3, 1])
    for name in STYLE_LAYERS:
        np.testing.assert_allclose(np.asarray(blended.grams[name]), 0.75 * np.asarray(ta.grams[name]) + 0.25 * np.asarray(tb.grams[name]), rtol=1e-5, atol=1e-3)
    # a style image twice the size gives Gram matrices per position of the same scale
    big = style_targets(random_params, content, [np.asarray(resize(a, 64, 64))])
    ratio = float(jnp.trace(big.grams["relu1_1"]) / jnp.trace(ta.grams["relu1_1"]))
    assert 0.8 < ratio < 1.25


def test_original_colors_keep_the_content_chroma(random_params):
    content, style = sample("chelsea.png", 48, 48), sample("rocket.jpg", 48, 48)
    result = style_transfer(random_params, content, [style], sizes=(48,), steps=10, original_colors=True, **SHALLOW)
    ours = np.asarray(rgb_to_yiq(result.images[0]))[..., 1:]
    expected = np.asarray(rgb_to_yiq(content))[..., 1:]
    assert np.abs(ours - expected).max() <= 1e-3
    assert result.images.min() >= -1e-6 and result.images.max() <= 1 + 1e-6
    plain = np.asarray(keep_colors(content, content))
    np.testing.assert_allclose(plain, content, atol=1e-5)


def test_multiscale_upsamples_the_previous_scale(random_params):
    content, style = sample("astronaut.png", 64, 64), sample("brick.png", 64, 64)
    result = style_transfer(random_params, content, [style], sizes=(32, 64), steps=(20, 5), **SHALLOW)
    assert result.images.shape == (1, 64, 64, 3)
    assert [len(h) for h in result.history] == [20, 5]
    fresh = style_transfer(random_params, content, [style], sizes=(64,), steps=5, **SHALLOW)
    assert result.history[1][0] < fresh.history[0][0]


def test_bad_settings_raise():
    params = None
    content = np.zeros((32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="valid names: conv1_1"):
        style_transfer(params, content, [content], style_layers=("relu9_9",))
    with pytest.raises(ValueError, match="2 weights for 1 style"):
        style_transfer(params, content, [content], blend=[1, 2])
