"""Optical flow, warping, the consistency mask, long-term weights and the temporal loss of video style
transfer, against scipy.ndimage, numpy transcriptions of manuelruder/artistic-videos
(flow_reference.py) and analytic flows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from flow_reference import (
    closest_first,
    consistency_checker,
    in_frame,
    occluder_scene,
    sines,
)

from jaxmosaic import (
    ConfigError,
    ImageError,
    consistency_mask,
    long_term_weights,
    optical_flow,
    read_flo,
    temporal_error,
    temporal_loss,
    warp,
    write_flo,
)
from jaxmosaic.video.flow import FLO_MAGIC, FLOW_METHODS, load_flow_dir, pair_flows
from jaxmosaic.video.temporal import inside

SHIFT = (1.3, -0.7)  # the sub-pixel translation of the warp test
DIS_SHIFT = (2.6, -1.4)  # the DIS test pair's translation
BORDER = 8


def _map_coordinates(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]].astype(np.float64)
    coords = [yy + flow[..., 1], xx + flow[..., 0]]
    return np.stack([ndi.map_coordinates(image[..., c].astype(np.float64), coords, order=1, mode="constant", cval=0.0)
                     for c in range(image.shape[2])], -1)


def _psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b)[where] ** 2)))


# -- warp ---------------------------------------------------------------------------------------------


def test_warp_equals_map_coordinates(variant):
    rng = np.random.default_rng(1)
    image = rng.random((23, 31, 3)).astype(np.float32)
    flow = (rng.standard_normal((23, 31, 2)) * 4).astype(np.float32)
    flow[0, 0] = (30.0, 22.0)  # exactly the last pixel: sampled, not padding
    flow[0, 1] = (30.0, 0.0)  # one column beyond the frame: 0
    out = np.asarray(variant(warp, image, flow))
    expected = _map_coordinates(image, flow)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(out[0, 0], image[22, 30], atol=1e-6)
    np.testing.assert_array_equal(out[0, 1], 0.0)
    np.testing.assert_array_equal(np.asarray(variant(inside, flow)), in_frame(flow).astype(np.float32))
    assert 0.2 < in_frame(flow).mean() < 0.95  # both cases present
    with pytest.raises(TypeError, match="float"):
        warp((image * 255).astype(np.uint8), flow)


def test_warp_reproduces_a_subpixel_translation():
    # frame b is frame a moved by SHIFT: b(x) = a(x - SHIFT), so the flow b -> a is -SHIFT everywhere
    a, b = sines(48, 48, top=0.06), sines(48, 48, SHIFT, top=0.06)
    flow_ba = np.broadcast_to(-np.asarray(SHIFT, np.float32), (48, 48, 2))
    warped = np.asarray(warp(jnp.asarray(a), jnp.asarray(flow_ba)))
    mask = np.asarray(consistency_mask(jnp.asarray(flow_ba), jnp.asarray(-flow_ba))) > 0.5
    assert mask.mean() > 0.8
    assert _psnr(warped, b, mask) > 40
    assert _psnr(a, b, mask) < 30  # the frames themselves differ (28 dB)


# -- consistency mask ------------------------------------------------------------------------------


@pytest.mark.parametrize("background,occluder", [((2.0, 1.0), (-3.0, 2.0)), ((1.3, -0.7), (-3.0, 2.0))])
def test_consistency_mask_masks_the_trail_and_keeps_the_rest(background, occluder):
    size = 40
    flow_ij, flow_ji, square, trail, touched = occluder_scene(size, background, occluder, corner=(14, 16), side=10)
    mask = np.asarray(consistency_mask(jnp.asarray(flow_ij), jnp.asarray(flow_ji)))

    expected = consistency_checker(flow_ij, flow_ji) * in_frame(flow_ij)
    np.testing.assert_allclose(mask, expected, atol=1e-5)

    assert trail.sum() >= 10 and mask[trail].max() < 0.1
    outside = ~in_frame(flow_ij)
    assert outside.sum() > 0 and np.all(mask[outside] == 0)
    edges = ndi.binary_dilation(square, iterations=2) & ~ndi.binary_erosion(square, iterations=2)
    features = touched | edges | outside
    far = ~ndi.binary_dilation(features, iterations=3)
    assert far.sum() > 0.5 * size * size
    assert mask[far].min() > 0.9
    assert mask[ndi.binary_erosion(square, iterations=3)].min() > 0.9  # the occluder itself is tracked


def test_consistency_mask_equals_the_checker_on_a_smooth_flow(variant):
    # a rotation-like smooth flow with a noisy reverse: every branch of the checker is taken
    size = 32
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    flow = np.stack([0.08 * (yy - 16) + 1.5, -0.06 * (xx - 16)], -1).astype(np.float32)
    reverse = -flow + np.random.default_rng(2).normal(0, 0.4, flow.shape).astype(np.float32)
    reverse[5:12, 20:27] += 3.0
    raw = consistency_checker(flow, reverse)
    mask = np.asarray(variant(consistency_mask, flow, reverse))
    np.testing.assert_allclose(mask, raw * in_frame(flow), atol=1e-5)
    assert (mask == 0).mean() > 0.05 and (mask > 0.9).mean() > 0.3
    # the only departure from the checker: the smoothing's spill onto pixels that sample outside
    spill = raw * ~in_frame(flow)
    assert 0.2 < spill.max() < 0.4  # measured 0.375


def test_consistency_mask_zero_flow_is_the_reference_border():
    flow = np.zeros((12, 14, 2), np.float32)
    mask = np.asarray(consistency_mask(jnp.asarray(flow), jnp.asarray(flow)))
    np.testing.assert_allclose(mask, consistency_checker(flow, flow), atol=1e-6)
    assert mask[:-3, :-3].min() == pytest.approx(1.0, abs=1e-6)
    # the checker needs floor(x) + 1 inside the frame: the last row and column start at 0 and
    # get only what the 5-tap Gaussian of sigma 0.8 (mirrored edges) spreads onto them
    taps = np.exp(-np.arange(-2, 3) ** 2 / (2 * 0.8**2))
    taps /= taps.sum()
    assert mask[5, -1] == pytest.approx(taps[0] + taps[1] + taps[4], abs=1e-6)
    assert mask[5, -2] == pytest.approx(1 - taps[3] - taps[4], abs=1e-6)
    assert mask[5, -3] == pytest.approx(1 - taps[4], abs=1e-6)


# -- long-term weights and the temporal loss -------------------------------------------------------------


def test_long_term_weights_closest_first(variant):
    rng = np.random.default_rng(3)
    masks = rng.random((4, 9, 11)).astype(np.float32)
    masks[1, :3] = 1.0
    masks[0, :, :2] = 0.0
    weights = np.asarray(variant(long_term_weights, masks))
    np.testing.assert_allclose(weights, closest_first(masks), atol=1e-6)
    np.testing.assert_array_equal(weights[0], masks[0])
    assert weights.min() >= 0 and weights.sum(0).max() <= 1 + 1e-6
    np.testing.assert_allclose(weights.sum(0), masks.max(0), atol=1e-6)


def test_temporal_loss_and_gradient(variant):
    rng = np.random.default_rng(4)
    x, warped = rng.random((2, 10, 12, 3)).astype(np.float32)
    mask = rng.random((10, 12)).astype(np.float32)
    expected = (mask[..., None].astype(np.float64) * (x - warped.astype(np.float64)) ** 2).sum() / x.size
    assert float(variant(temporal_loss, x, warped, mask)) == pytest.approx(expected, rel=1e-5)
    grad = np.asarray(variant(jax.grad(temporal_loss), x, warped, mask))
    np.testing.assert_allclose(grad, 2 * mask[..., None] * (x - warped) / x.size, rtol=1e-5, atol=1e-9)


def test_temporal_error_per_pair():
    rng = np.random.default_rng(5)
    frames = rng.random((4, 16, 18, 3)).astype(np.float32)
    flows = (rng.standard_normal((3, 16, 18, 2)) * 2).astype(np.float32)
    masks = rng.random((3, 16, 18)).astype(np.float32)
    expected = [np.mean(masks[i - 1][..., None] * (frames[i] - _map_coordinates(frames[i - 1], flows[i - 1])) ** 2)
                for i in range(1, 4)]
    np.testing.assert_allclose(temporal_error(frames, flows, masks), expected, rtol=1e-5)
    keyed = temporal_error((frames * 255).round().astype(np.uint8), {(i, i - 1): flows[i - 1] for i in range(1, 4)},
                           {(i, i - 1): masks[i - 1] for i in range(1, 4)})
    np.testing.assert_allclose(keyed, expected, rtol=0.05)


# -- optical flow --------------------------------------------------------------------------------------


def _endpoint_error(flow: np.ndarray, truth) -> float:
    inner = flow[BORDER:-BORDER, BORDER:-BORDER]
    return float(np.hypot(inner[..., 0] - truth[0], inner[..., 1] - truth[1]).mean())


@pytest.mark.parametrize("method,bound", [("dis", 0.3), ("farneback", 0.05)])
def test_optical_flow_on_a_subpixel_translation(method, bound):
    # b is a moved by DIS_SHIFT, so a(x) = b(x + DIS_SHIFT): the flow a -> b is DIS_SHIFT
    a = (sines(96, 96) * 255).round().astype(np.uint8)
    b = (sines(96, 96, DIS_SHIFT) * 255).round().astype(np.uint8)
    flow = optical_flow(a, b, method=method)
    assert flow.dtype == np.float32 and flow.shape == (96, 96, 2)
    assert _endpoint_error(flow, DIS_SHIFT) < bound  # measured: dis 0.0125 px, farneback 0.0132 px
    back = optical_flow(b.astype(np.float32) / 255, a.astype(np.float32) / 255, method=method)
    assert _endpoint_error(back, (-DIS_SHIFT[0], -DIS_SHIFT[1])) < bound
    with pytest.raises(ConfigError, match="flow"):
        optical_flow(a, b, method="deepflow")
    # frames smaller than DIS takes: the edges repeated, the frame's part kept
    small = optical_flow(a[40:50, 30:39], b[40:50, 30:39], method=method)
    assert small.shape == (10, 9, 2) and np.isfinite(small).all()


def test_pair_flows_keys_and_directions():
    shift = np.array([1.5, 0.5])
    frames = np.stack([(sines(48, 48, tuple(k * shift)) * 255).round().astype(np.uint8) for k in range(4)])
    lines = []
    flows = pair_flows(frames, (1, 2), method="dis", say=lines.append)
    assert set(flows) == {(1, 0), (0, 1), (2, 1), (1, 2), (3, 2), (2, 3), (2, 0), (0, 2), (3, 1), (1, 3)}
    assert lines and "10 flows" in lines[0]
    for (a, b), flow in flows.items():
        assert _endpoint_error(flow, (b - a) * shift) < 0.3, (a, b)
    assert FLOW_METHODS == ("dis", "farneback")


# -- .flo files ------------------------------------------------------------------------------------------


def test_flo_round_trip_and_middlebury_layout(tmp_path):
    rng = np.random.default_rng(6)
    flow = rng.standard_normal((7, 5, 2)).astype(np.float32) * 10
    write_flo(tmp_path / "a.flo", flow)
    np.testing.assert_array_equal(read_flo(tmp_path / "a.flo"), flow)
    data = (tmp_path / "a.flo").read_bytes()
    assert len(data) == 12 + 7 * 5 * 8 and data[:4] == b"PIEH"
    # written by hand in the Middlebury layout: width, height, then (u, v) interleaved row by row
    with open(tmp_path / "b.flo", "wb") as handle:
        np.array([202021.25], "<f4").tofile(handle)
        np.array([5, 7], "<i4").tofile(handle)
        for y in range(7):
            for x in range(5):
                np.array([flow[y, x, 0], flow[y, x, 1]], "<f4").tofile(handle)
    np.testing.assert_array_equal(read_flo(tmp_path / "b.flo"), flow)
    assert FLO_MAGIC == 202021.25


def _flo(path, header, body=b""):
    path.write_bytes(np.array([header[0]], "<f4").tobytes() + np.array(header[1:], "<i4").tobytes() + body)
    return path


@pytest.mark.parametrize("case,fragment", [
    ("magic", "not a Middlebury .flo file"), ("truncated", "truncated"), ("long", "too long"),
    ("size", "sizes must lie"), ("short", "too short"), ("nan", "non-finite"), ("missing", "no such file"),
])
def test_bad_flo_files_are_one_line(tmp_path, case, fragment):
    body = np.zeros((3, 4, 2), "<f4")
    path = tmp_path / f"{case}.flo"
    if case == "magic":
        _flo(path, (1.0, 4, 3), body.tobytes())
    elif case == "truncated":
        _flo(path, (FLO_MAGIC, 4, 3), body.tobytes()[:-4])
    elif case == "long":
        _flo(path, (FLO_MAGIC, 4, 3), body.tobytes() + b"\0" * 8)
    elif case == "size":
        _flo(path, (FLO_MAGIC, -4, 3), body.tobytes())
    elif case == "short":
        path.write_bytes(b"PIEH")
    elif case == "nan":
        body[1, 2, 0] = np.nan
        _flo(path, (FLO_MAGIC, 4, 3), body.tobytes())
    with pytest.raises(ImageError) as info:
        read_flo(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and fragment in message


def test_load_flow_dir(tmp_path):
    rng = np.random.default_rng(7)
    truth = {}
    for i in range(1, 3):  # frames 0..2, offset 1; files numbered from 1
        forward = rng.standard_normal((6, 8, 2)).astype(np.float32)
        backward = rng.standard_normal((6, 8, 2)).astype(np.float32)
        write_flo(tmp_path / f"forward_{i}_{i + 1}.flo", forward)
        write_flo(tmp_path / f"backward_{i + 1}_{i}.flo", backward)
        truth[(i - 1, i)], truth[(i, i - 1)] = forward, backward
    flows = load_flow_dir(tmp_path, 3, (1,), (6, 8, 3))
    assert set(flows) == set(truth)
    for key, flow in truth.items():
        np.testing.assert_array_equal(flows[key], flow)

    with pytest.raises(ImageError, match=r"forward_1_3\.flo: no such file"):
        load_flow_dir(tmp_path, 3, (1, 2), (6, 8))
    with pytest.raises(ConfigError, match="holds flows for frame 3, the video has 2 frames"):
        load_flow_dir(tmp_path, 2, (1,), (6, 8))
    write_flo(tmp_path / "backward_3_2.flo", np.zeros((6, 9, 2), np.float32))
    with pytest.raises(ImageError, match=r"backward_3_2\.flo: the flow is 9x6, the frames are 8x6"):
        load_flow_dir(tmp_path, 3, (1,), (6, 8))
    with pytest.raises(ConfigError, match="no such folder"):
        load_flow_dir(tmp_path / "nowhere", 3, (1,), (6, 8))
