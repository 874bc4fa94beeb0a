"""VGG19 against a PyTorch VGG19 with the same (random) weights, at all 37 named layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmosaic import VGG19_LAYERS, layer_channels, layer_stride, vgg19_features


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_all_37_layers_match_pytorch(torch_model, torch_params, pooling):
    import torch
    from torch_reference import features, nhwc

    images = np.random.default_rng(3).random((2, 64, 80, 3)).astype(np.float32)
    expected = {name: nhwc(value) for name, value in
                features(torch_model, images, VGG19_LAYERS, pooling=pooling, dtype=torch.float32).items()}
    ours = jax.jit(vgg19_features, static_argnames=("layers", "pooling"))(
        torch_params, images, layers=VGG19_LAYERS, pooling=pooling
    )
    assert sorted(ours) == sorted(VGG19_LAYERS) and len(ours) == 37
    worst = 0.0
    for name in VGG19_LAYERS:
        assert ours[name].shape == expected[name].shape, name
        scale = np.abs(expected[name]).max()
        assert scale > 0, name
        error = np.abs(np.asarray(ours[name]) - expected[name]).max() / scale
        worst = max(worst, error)
        assert error <= 1e-4, f"{name}: relative error {error:.2e}"
    print(f"worst relative error over 37 layers ({pooling}): {worst:.2e}")


def test_layer_shapes_and_helpers(random_params):
    images = jnp.zeros((1, 64, 80, 3))
    features = vgg19_features(random_params, images, layers=("conv1_1", "pool1", "relu3_4", "pool5"))
    assert features["conv1_1"].shape == (1, 64, 80, 64)
    assert features["pool1"].shape == (1, 32, 40, 64)
    assert features["relu3_4"].shape == (1, 16, 20, 256)
    assert features["pool5"].shape == (1, 2, 2, 512)
    assert layer_channels("relu4_2") == 512 and layer_stride("relu4_2") == 8 and layer_stride("pool5") == 32


def test_nothing_past_the_deepest_layer_is_computed(random_params):
    """Parameters of deeper layers are not even needed: their absence is no error."""
    shallow = {name: random_params[name] for name in ("conv1_1", "conv1_2", "conv2_1")}
    images = jnp.ones((1, 16, 16, 3)) * 0.5
    out = vgg19_features(shallow, images, layers=("relu1_1", "relu2_1"))
    full = vgg19_features(random_params, images, layers=("relu1_1", "relu2_1"))
    np.testing.assert_allclose(out["relu2_1"], full["relu2_1"])
    with pytest.raises(ValueError, match="no conv2_2"):
        vgg19_features(shallow, images, layers=("relu2_2",))
    jaxpr = jax.make_jaxpr(lambda x: vgg19_features(random_params, x, layers=("relu1_1",)))(images)
    assert str(jaxpr).count("conv_general_dilated") == 1


def test_jit_grad_vmap_agree(random_params):
    images = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32, 3))

    def loss(batch):
        return vgg19_features(random_params, batch, layers=("relu3_1",))["relu3_1"].mean()

    plain = vgg19_features(random_params, images, layers=("relu2_1",))["relu2_1"]
    single = jax.vmap(lambda im: vgg19_features(random_params, im, layers=("relu2_1",))["relu2_1"])(images)
    np.testing.assert_allclose(single, plain, rtol=1e-5, atol=1e-5)
    grad = jax.grad(loss)(images)
    jit_grad = jax.jit(jax.grad(loss))(images)
    assert grad.shape == images.shape and float(jnp.abs(grad).max()) > 0
    np.testing.assert_allclose(jit_grad, grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_input_gradient_matches_pytorch(torch_model, torch_params, pooling):
    """d mean(relu5_1 ** 2) / d image, as a style loss takes it, against torch autograd in float64.

    The reference is float64 because PyTorch's own float32 CPU backward drifts by up to ~1e-2
    (relative to the largest gradient) from it at relu5_1, while ours stays within ~1e-6.
    """
    import torch
    from torch_reference import features

    images = np.random.default_rng(5).random((2, 48, 40, 3))
    pixels = torch.from_numpy(images).requires_grad_(True)
    (features(torch_model, pixels, ("relu5_1",), pooling=pooling)["relu5_1"] ** 2).mean().backward()
    expected = pixels.grad.numpy()

    def loss(batch):
        return jnp.mean(vgg19_features(torch_params, batch, layers=("relu5_1",), pooling=pooling)["relu5_1"] ** 2)

    ours = np.asarray(jax.jit(jax.grad(loss))(images.astype(np.float32)))
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()


def test_bad_layer_names_and_options(random_params):
    images = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="unknown VGG19 layer"):
        vgg19_features(random_params, images, layers=("relu6_1",))
    with pytest.raises(ValueError, match="pooling"):
        vgg19_features(random_params, images, layers=("pool1",), pooling="median")
    with pytest.raises(ValueError, match="3 channels"):
        vgg19_features(random_params, jnp.zeros((1, 8, 8, 4)), layers=("pool1",))


def test_circular_padding_wraps(random_params):
    images = jax.random.uniform(jax.random.PRNGKey(4), (1, 32, 32, 3))
    shifted = jnp.roll(images, (8, 16), axis=(1, 2))
    feat = vgg19_features(random_params, images, layers=("relu2_1",), padding="circular")["relu2_1"]
    feat_shifted = vgg19_features(random_params, shifted, layers=("relu2_1",), padding="circular")["relu2_1"]
    np.testing.assert_allclose(jnp.roll(feat, (4, 8), axis=(1, 2)), feat_shifted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["plain", "jit", "vmap", "scan"])
def test_conv3x3_gradients_equal_autodiff_of_lax_conv(mode):
    from jaxmosaic.vgg import conv3x3

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 11, 5))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 5, 7))
    cotangent = jax.random.normal(jax.random.PRNGKey(2), (2, 7, 9, 7))

    def reference(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def grads(conv, x, k):
        out, vjp = jax.vjp(conv, x, k)
        return (out, *vjp(cotangent[: out.shape[0]]))

    if mode == "vmap":
        ours = jax.vmap(lambda xi: grads(conv3x3, xi[None], kernel))(x)
        theirs = jax.vmap(lambda xi: grads(reference, xi[None], kernel))(x)
    elif mode == "scan":  # inside a loop body, where the custom gradient matters for speed
        def loop(conv):
            return jax.lax.scan(lambda c, _: (c, grads(conv, x, kernel)), 0.0, None, length=2)[1]
        ours, theirs = jax.jit(lambda: loop(conv3x3))(), jax.jit(lambda: loop(reference))()
    else:
        wrap = jax.jit if mode == "jit" else (lambda f: f)
        ours = wrap(lambda x, k: grads(conv3x3, x, k))(x, kernel)
        theirs = wrap(lambda x, k: grads(reference, x, k))(x, kernel)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    assert float(jnp.max(jnp.abs(ours[1]))) > 1.0  # a real input gradient was compared


def test_circular_padding_matches_pytorch(torch_model, torch_params):
    import torch
    from torch_reference import features, nhwc

    images = np.random.default_rng(3).random((1, 20, 24, 3)).astype(np.float32)
    ours = vgg19_features(torch_params, images, layers=("relu2_1",), padding="circular")["relu2_1"]
    expected = nhwc(features(torch_model, images, ("relu2_1",), padding="circular", dtype=torch.float32)["relu2_1"])
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    zeros = vgg19_features(torch_params, images, layers=("relu2_1",))["relu2_1"]
    assert np.abs(np.asarray(zeros) - expected).max() > 1e-2  # the padding made a difference


def test_features_under_plain_jit_and_vmap_match_pytorch(torch_model, torch_params, variant):
    import torch
    from torch_reference import features

    image = np.random.default_rng(8).random((20, 28, 3)).astype(np.float32)
    expected = features(torch_model, image, ("relu2_1", "pool2"), dtype=torch.float32)
    ours = variant(lambda x: vgg19_features(torch_params, x, ("relu2_1", "pool2")), image)
    for name in ("relu2_1", "pool2"):
        reference = expected[name].permute(1, 2, 0).numpy()
        assert ours[name].shape == reference.shape
        np.testing.assert_allclose(np.asarray(ours[name]), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
