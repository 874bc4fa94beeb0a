"""Hybrid images against a PyTorch implementation of the original article's formula."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import SAMPLES, one_line_error, run_cli, sample_image
from jaxmosaic import load_image
from jaxmosaic.filters import fft_gaussian_blur, gaussian_kernel1d
from jaxmosaic.techniques.hybrid import HybridConfig, HybridInputs, hybrid_fourier, hybrid_loss, hybrid_optimize


def optimize(near, far, **settings):
    """`hybrid_optimize` on images already of one size (size 0 keeps them)."""
    return hybrid_optimize(HybridConfig(size=0, **settings), HybridInputs(near, far))


@pytest.fixture(scope="module")
def pair():
    near = sample_image("astronaut.png", 128, 128)
    far = sample_image("coffee.png", 128, 128)
    return near, far


def test_loss_and_gradient_match_pytorch(pair):
    from torch_reference import hybrid_loss as torch_hybrid_loss
    from torch_reference import nchw

    near, far = pair
    x = np.random.default_rng(0).uniform(0.05, 0.95, near.shape).astype(np.float32)
    kernel = gaussian_kernel1d(15, 3.0)
    (total, terms), grad = jax.value_and_grad(
        lambda v: hybrid_loss(v, near, far, m_precise=0.3, m_blurred=1.0, kernel=kernel), has_aux=True)(jnp.asarray(x))
    tx = nchw(x).requires_grad_(True)
    t_total, t_precise, t_blurred = torch_hybrid_loss(nchw(near), nchw(far), kernel)(tx, 0.3, 1.0)
    t_total.backward()
    assert float(total) == pytest.approx(t_total.item(), rel=1e-5)
    assert float(terms["precise"]) == pytest.approx(t_precise.item(), rel=1e-5)
    assert float(terms["blurred"]) == pytest.approx(t_blurred.item(), rel=1e-5)
    t_grad = tx.grad[0].numpy().transpose(1, 2, 0)
    assert np.abs(np.asarray(grad) - t_grad).max() <= 1e-5 * np.abs(t_grad).max()


def test_article_run_matches_pytorch_after_200_steps(pair):
    import torch
    from torch_reference import hybrid_loss as torch_hybrid_loss
    from torch_reference import nchw

    near, far = pair
    kernel = gaussian_kernel1d(15, 3.0)
    result = optimize(near, far)  # the article's run
    article = torch_hybrid_loss(nchw(near), nchw(far), kernel)
    theta = torch.zeros(1, 3, 128, 128, requires_grad=True)
    for _ in range(200):
        loss = article(torch.sigmoid(theta), 0.1, 1.0)[0]
        (grad,) = torch.autograd.grad(loss, theta)
        with torch.no_grad():
            theta -= 0.3 * grad
    expected = article(torch.sigmoid(theta), 0.1, 1.0)[0].item()
    assert result.steps == 200 and result.history[0].shape == (200, 1)
    assert result.loss[0]["total"] == pytest.approx(expected, rel=5e-3)
    assert result.images.min() >= 0.0 and result.images.max() <= 1.0
    assert result.loss[0]["total"] < 0.2 * result.history[0][0, 0]
    torch_image = torch.sigmoid(theta)[0].detach().numpy().transpose(1, 2, 0)
    assert np.abs(result.images[0] - torch_image).mean() < 1e-3


@pytest.mark.parametrize("optimizer,lr,tolerance", [("sgd", 0.3, 1e-5), ("lbfgs", 1.0, 1e-3)])
def test_batch_of_ratios_equals_separate_runs(pair, optimizer, lr, tolerance):
    """Batched and single runs sum in different orders inside the blur's matrix products; L-BFGS's
    line search amplifies that round-off over 30 steps to ~2e-4 at a few pixels, hence its looser
    image tolerance (its losses still agree to 1e-4)."""
    near, far = pair[0][:48, :48], pair[1][:48, :48]
    ratios = (0.1, 0.3, 1.0)
    together = optimize(near, far, ratios=ratios, steps=30, optimizer=optimizer, lr=lr)
    for i, ratio in enumerate(ratios):
        alone = optimize(near, far, ratios=(ratio,), steps=30, optimizer=optimizer, lr=lr)
        np.testing.assert_allclose(together.images[i], alone.images[0], atol=tolerance)
        assert together.loss[i]["total"] == pytest.approx(alone.loss[0]["total"], rel=1e-4)
    assert np.abs(together.images[0] - together.images[2]).mean() > 1e-3


def test_adam_and_inits_lower_the_loss(pair):
    near, far = pair[0][:64, :64], pair[1][:64, :64]
    for init in ("grey", "near", "fourier"):
        result = optimize(near, far, steps=40, optimizer="adam", lr=0.05, init=init)
        assert result.loss[0]["total"] < result.history[0][0, 0]
    grey = optimize(near, far, steps=1, init="grey")
    assert grey.history[0][0, 0] > optimize(near, far, steps=1, init="fourier").history[0][0, 0]


def test_fourier_hybrid_takes_low_frequencies_from_far(pair):
    near, far = pair
    image = np.asarray(hybrid_fourier(near, far, sigma_low=3.0, sigma_high=3.0))
    assert image.min() >= 0 and image.max() <= 1
    low = lambda im: np.asarray(fft_gaussian_blur(im, 8.0))  # noqa: E731
    high = lambda im: im - np.asarray(fft_gaussian_blur(im, 1.0))  # noqa: E731
    assert np.abs(low(image) - low(far)).mean() < 0.5 * np.abs(low(image) - low(near)).mean()
    assert np.abs(high(image) - high(near)).mean() < 0.5 * np.abs(high(image) - high(far)).mean()


def test_cli_hybrid_ratios_preview_gif_metrics(tmp_path):
    out = tmp_path / "h.png"
    result = run_cli("hybrid", SAMPLES / "astronaut.png", SAMPLES / "rocket.jpg", "-o", out,
                     "--size", "48", "--steps", "20", "--ratio", "0.1,1", "--preview", "--gif",
                     "--save-every", "10", "--metrics", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["technique"] == "hybrid" and metrics["steps"] == 20
    assert metrics["outputs"][:2] == [str(tmp_path / "h-ratio0.1.png"), str(tmp_path / "h-ratio1.png")]
    assert [set(loss) for loss in metrics["loss"]] == [{"total", "precise", "blurred"}] * 2
    first, second = metrics["loss"]
    assert second["precise"] < first["precise"] and second["blurred"] > first["blurred"]  # ratio 1 weighs the near image more
    for name in ("h-ratio0.1.png", "h-ratio1.png", "h-ratio0.1-preview.png", "h.gif"):
        assert (tmp_path / name).is_file(), name
    assert sorted(p.name for p in (tmp_path / "h-frames").iterdir()) == [
        ".jaxmosaic", "step00010-ratio0.1.png", "step00010-ratio1.png", "step00020-ratio0.1.png", "step00020-ratio1.png"]
    image = load_image(tmp_path / "h-ratio1.png")
    assert image.shape == (48, 48, 3)
    preview = load_image(tmp_path / "h-ratio1-preview.png")
    assert preview.shape == (48, 48 + 24 + 12 + 6 + 3 * 8, 3)
    assert second["total"] == pytest.approx(second["precise"] + second["blurred"], rel=1e-5)
    assert first["total"] == pytest.approx(0.1 * first["precise"] + first["blurred"], rel=1e-5)


def test_cli_fourier_method(tmp_path):
    result = run_cli("hybrid", SAMPLES / "astronaut.png", SAMPLES / "coffee.png", "-o",
                     tmp_path / "f.png", "--method", "fourier", "--size", "64", "--crop",
                     "--metrics", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert "centre-cropped" in result.output
    loss = json.loads((tmp_path / "m.json").read_text())["loss"]
    assert loss["total"] == pytest.approx(0.1 * loss["precise"] + loss["blurred"], rel=1e-5) and loss["blurred"] > 0
    assert load_image(tmp_path / "f.png").shape == (64, 64, 3)


@pytest.mark.parametrize("case", ["missing", "corrupt", "tiny", "kernel", "sigma", "steps", "ratio"])
def test_cli_bad_inputs_are_one_line(tmp_path, case):
    near, far = str(SAMPLES / "astronaut.png"), str(SAMPLES / "coffee.png")
    extra = ["--size", "32", "--steps", "2"]
    if case == "missing":
        near = str(tmp_path / "missing.png")
    elif case == "corrupt":
        (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        far = str(tmp_path / "corrupt.png")
    elif case == "tiny":
        from PIL import Image

        Image.new("RGB", (1, 1)).save(tmp_path / "tiny.png")
        far = str(tmp_path / "tiny.png")
    elif case == "kernel":
        extra += ["--kernel", "41"]
    elif case == "sigma":
        extra += ["--sigma", "-1"]
    elif case == "steps":
        extra = ["--size", "32", "--steps", "0"]
    else:
        extra += ["--ratio", "0.1,x"]
    result = run_cli("hybrid", near, far, "-o", tmp_path / "out.png", *extra)
    one_line_error(result)
    assert not (tmp_path / "out.png").exists()
