"""Warping, the flow consistency mask, long-term weights and the temporal loss of video style transfer.

Pure JAX functions, jittable, that `jax.vmap` over frames. Images are float (H, W, C) arrays
(values in [0, 1] in jaxmosaic); a flow is float (H, W, 2), channel 0 = dx (columns), channel 1 =
dy (rows), the Middlebury convention. The flow from frame a to frame b says a(x) ~ b(x + flow(x)).

For the temporal loss of frame i against an earlier frame j, the stylised frame j is warped with
the flow from i to j, ``warp(stylised_j, flow_ij)``, and weighted by
``consistency_mask(flow_ij, flow_ji)``. Reference: Ruder, Dosovitskiy and Brox, "Artistic style
transfer for videos" (GCPR 2016), code manuelruder/artistic-videos.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["consistency_mask", "inside", "long_term_weights", "temporal_error", "temporal_loss", "warp"]

# consistencyChecker's "reliable" image: 255 for a reliable pixel, -255 for a disocclusion (so that
# the smoothing reaches outwards from it before values below 0 are clipped), 0 at motion boundaries
# and where the flow leaves the frame. Here the same values divided by 255.
_RELIABLE, _DISOCCLUDED, _MOTION_BOUNDARY, _OUTSIDE = 1.0, -1.0, 0.0, 0.0
_SMOOTH_SIGMA = 0.8  # SMOOTH_STRENGH; CSmooth(0.8, 2.0): 2 * ceil(2.0 * 0.8) + 1 = 5 taps
_SMOOTH_RADIUS = 2


def _grid(flow: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The points x + flow(x): column and row coordinates, each (H, W)."""
    height, width = flow.shape[0], flow.shape[1]
    rows = jnp.arange(height, dtype=flow.dtype)[:, None]
    cols = jnp.arange(width, dtype=flow.dtype)[None, :]
    return cols + flow[..., 0], rows + flow[..., 1]


def _in_frame(px: jax.Array, py: jax.Array, height: int, width: int) -> jax.Array:
    """True where (px, py) lies in [0, W - 1] x [0, H - 1]: every bilinear neighbour with a
    non-zero weight is a pixel of the frame."""
    return (px >= 0) & (px <= width - 1) & (py >= 0) & (py <= height - 1)


def _bilinear(image: jax.Array, px: jax.Array, py: jax.Array) -> jax.Array:
    """Bilinear samples of `image` (H, W, ...) at (px, py), neighbours clamped to the frame."""
    height, width = image.shape[0], image.shape[1]
    x0, y0 = jnp.floor(px), jnp.floor(py)
    ax, ay = px - x0, py - y0
    x0 = jnp.clip(x0, 0, width - 1).astype(jnp.int32)
    y0 = jnp.clip(y0, 0, height - 1).astype(jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, width - 1), jnp.minimum(y0 + 1, height - 1)
    extra = (None,) * (image.ndim - 2)
    ax, ay = ax[(...,) + extra], ay[(...,) + extra]
    top = (1 - ax) * image[y0, x0] + ax * image[y0, x1]
    bottom = (1 - ax) * image[y1, x0] + ax * image[y1, x1]
    return (1 - ay) * top + ay * bottom


@jax.jit
def inside(flow: jax.Array) -> jax.Array:
    """Where a frame's flow stays in the frame.

    Args:
      flow: (H, W, 2) flow, dx then dy.

    Returns:
      (H, W) in the flow's dtype: 1 where x + flow(x) lies in [0, W - 1] x [0, H - 1] (every
      bilinear neighbour that carries weight is a pixel of the frame; `warp` samples there), else 0.
    """
    px, py = _grid(flow)
    return _in_frame(px, py, flow.shape[0], flow.shape[1]).astype(flow.dtype)


@jax.jit
def warp(image: jax.Array, flow: jax.Array) -> jax.Array:
    """Bilinear backward warp: out(x) = image(x + flow(x)), 0 where x + flow(x) leaves the frame.

    Matches ``scipy.ndimage.map_coordinates(image[..., c], [y + dy, x + dx], order=1,
    mode="constant", cval=0)`` per channel, and Torch7's ``image.warp(img, flow, "bilinear",
    true, "pad")`` that the reference uses (it pads with the mean pixel instead of 0; the
    consistency mask is 0 there either way).

    Args:
      image: (H, W, C) or (H, W) float image.
      flow: (H, W, 2) flow from the output frame to `image`'s frame, dx then dy (cast to the
        image's dtype).

    Returns:
      An array of `image`'s shape and dtype.
    """
    if not jnp.issubdtype(image.dtype, jnp.floating):
        raise TypeError(f"warp: the image must be a float array (values in [0, 1]), got {image.dtype}")
    px, py = _grid(flow.astype(image.dtype))
    valid = _in_frame(px, py, image.shape[0], image.shape[1])
    sampled = _bilinear(image, px, py)
    return jnp.where(valid[(...,) + (None,) * (image.ndim - 2)], sampled, jnp.zeros((), image.dtype))


def _pad_symmetric(array: jax.Array, axis: int, width: int) -> jax.Array:
    pad = [(0, 0)] * array.ndim
    pad[axis] = (width, width)
    return jnp.pad(array, pad, mode="symmetric")


def _correlate(array: jax.Array, taps: Sequence[float], axis: int) -> jax.Array:
    """out[x] = sum_i taps[i] * array[x + i - r] along `axis`, mirrored at the edges (NFilter's
    boundary: index -1 reads 0, index N reads N - 1; scipy.ndimage's mode "reflect")."""
    radius = (len(taps) - 1) // 2
    padded = _pad_symmetric(array, axis, radius)
    length = array.shape[axis]
    out = jnp.zeros_like(array)
    for i, tap in enumerate(taps):
        if tap != 0.0:
            out = out + jnp.asarray(tap, array.dtype) * jax.lax.slice_in_dim(padded, i, i + length, axis=axis)
    return out


def _smooth_taps() -> tuple[float, ...]:
    """CSmooth(0.8, 2.0): exp(-i^2 / (2 sigma^2)) for |i| <= 2, normalised to sum 1."""
    taps = np.exp(-(np.arange(-_SMOOTH_RADIUS, _SMOOTH_RADIUS + 1) ** 2) / (2 * _SMOOTH_SIGMA**2))
    return tuple(float(t) for t in taps / taps.sum())


@jax.jit
def consistency_mask(flow: jax.Array, reverse: jax.Array) -> jax.Array:
    """The reliability of a flow, checked against the flow back: consistencyChecker of
    manuelruder/artistic-videos.

    With w = `flow` (this frame to the other) and w2 = `reverse` (the other frame back to this
    one) sampled bilinearly at x + w, a pixel is
      - 0 where x + w leaves the frame (the reference's rule: floor(x + w) and floor(x + w) + 1
        must both be pixels);
      - disoccluded, -1, where |w + w2|^2 >= 0.01 (|w|^2 + |w2|^2) + 0.5;
      - a motion boundary, 0, where |grad u|^2 + |grad v|^2 > 0.01 |w|^2 + 0.002, the gradients
        by the central difference (-1/2, 0, 1/2) with mirrored edges (CDerivative(3));
      - 1 elsewhere.
    That image is smoothed by the reference's 5-tap Gaussian of sigma 0.8 (CSmooth(0.8, 2), a
    direct separable convolution, rows then columns, mirrored edges), so disocclusions reach
    out over their neighbours, then clipped to [0, 1]. One step is added: pixels whose x + w lies
    outside the frame are set to 0 after the smoothing too (the reference's smoothing spills up
    to about 0.4 onto the two nearest of them, which would pull them towards the warp's padding).

    Args:
      flow: (H, W, 2) this frame's flow to the other frame (for frame i against an earlier frame
        j, the flow i -> j, the reference's "backward_j_i").
      reverse: (H, W, 2) the other frame's flow back (j -> i, "forward_i_j").

    Returns:
      (H, W) weights in [0, 1], in the flow's dtype.
    """
    dtype = flow.dtype
    reverse = reverse.astype(dtype)
    height, width = flow.shape[0], flow.shape[1]
    derivative = (-0.5, 0.0, 0.5)
    dx = _correlate(flow, derivative, axis=1)
    dy = _correlate(flow, derivative, axis=0)
    motion_edge = jnp.sum(dx * dx + dy * dy, axis=-1)

    px, py = _grid(flow)
    x1, y1 = jnp.floor(px), jnp.floor(py)
    outside = (x1 < 0) | (x1 + 1 >= width) | (y1 < 0) | (y1 + 1 >= height)
    back = _bilinear(reverse, px, py)
    cols = jnp.arange(width, dtype=dtype)[None, :]
    rows = jnp.arange(height, dtype=dtype)[:, None]
    ex, ey = (px + back[..., 0]) - cols, (py + back[..., 1]) - rows
    w_norm = flow[..., 0] ** 2 + flow[..., 1] ** 2
    disoccluded = ex * ex + ey * ey >= 0.01 * (w_norm + back[..., 0] ** 2 + back[..., 1] ** 2) + 0.5
    boundary = motion_edge > 0.01 * w_norm + 0.002

    # the checker's order: leaving the frame, then disocclusion, then motion boundary
    values = [jnp.asarray(v, dtype) for v in (_OUTSIDE, _DISOCCLUDED, _MOTION_BOUNDARY)]
    reliable = jnp.select([outside, disoccluded, boundary], values, jnp.asarray(_RELIABLE, dtype))
    taps = _smooth_taps()
    smoothed = _correlate(_correlate(reliable, taps, axis=1), taps, axis=0)
    mask = jnp.clip(smoothed, 0, 1)
    return jnp.where(_in_frame(px, py, height, width), mask, jnp.zeros((), dtype))


@jax.jit
def long_term_weights(masks: jax.Array) -> jax.Array:
    """Long-term consistency weights, the reference's "closestFirst" rule.

    Each older frame gets what the closer frames left unclaimed: the reference subtracts, for
    j = 2, 3, ..., the already reduced weights of all closer frames and clips at 0,
    c'_j = max(c_j - sum_{k<j} c'_k, 0). Since sum_{k<=j} c'_k = max_{k<=j} c_k, this equals
    c'_j = max(c_j - max_{k<j} c_k, 0), the form computed here; the weights of a pixel sum to
    max_k c_k <= 1.

    Args:
      masks: (J, H, W) consistency masks (values in [0, 1]) of the earlier frames, closest first.

    Returns:
      (J, H, W) weights.
    """
    claimed = jax.lax.cummax(masks, axis=0)
    before = jnp.concatenate([jnp.zeros_like(masks[:1]), claimed[:-1]], axis=0)
    return jnp.maximum(masks - before, jnp.zeros((), masks.dtype))


@jax.jit
def temporal_loss(x: jax.Array, warped: jax.Array, mask: jax.Array) -> jax.Array:
    """The temporal loss (1/D) sum_k c_k (x_k - w_k)^2, D = H * W * C.

    The reference's weighted MSECriterion (sqrt(c) x against sqrt(c) w, mean over elements). For
    several earlier frames the caller sums the losses, each with its `long_term_weights`.

    Args:
      x: (H, W, C) the frame being optimised.
      warped: (H, W, C) the earlier stylised frame warped to this one (`warp`).
      mask: (H, W) weights c, broadcast over channels.

    Returns:
      A scalar.
    """
    difference = x - warped
    return jnp.mean(mask[..., None].astype(x.dtype) * difference * difference)


@jax.jit
def _pair_error(previous: jax.Array, current: jax.Array, flow: jax.Array, mask: jax.Array) -> jax.Array:
    return temporal_loss(current, warp(previous, flow), mask)


def _as_float(frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / np.float32(255.0)
    return frame.astype(np.float32, copy=False)


def _pairs(values, count: int, what: str) -> list:
    """Row i - 1 is the value of pair (i, i - 1), from a stacked array or a mapping keyed (i, i - 1)."""
    if isinstance(values, Mapping):
        return [values[(i, i - 1)] for i in range(1, count)]
    if len(values) != count - 1:
        raise ValueError(f"temporal_error: {count} frames need {count - 1} {what}, got {len(values)}")
    return list(values)


def temporal_error(frames, flows, masks) -> np.ndarray:
    """The temporal error of a video, per consecutive pair of frames.

    For i = 1 .. N - 1: the mean over pixels and channels of
    mask_i * (frame_i - warp(frame_{i-1}, flow_{i -> i-1}))^2, the `temporal_loss` of each frame
    against its warped predecessor. Use the input video's flows and masks for both the input and
    the stylised video, so the two numbers compare.

    Args:
      frames: (N, H, W, C) frames, float in [0, 1] or uint8 (divided by 255).
      flows: (N - 1, H, W, 2) flows, row i - 1 from frame i to frame i - 1, or a mapping keyed
        (i, i - 1) (as `pair_flows` returns).
      masks: (N - 1, H, W) the matching consistency masks, or a mapping keyed (i, i - 1).

    Returns:
      A float64 array of N - 1 errors.
    """
    count = len(frames)
    flows, masks = _pairs(flows, count, "flows"), _pairs(masks, count, "masks")
    errors = [_pair_error(_as_float(frames[i - 1]), _as_float(frames[i]), jnp.asarray(flows[i - 1], jnp.float32),
                          jnp.asarray(masks[i - 1], jnp.float32)) for i in range(1, count)]
    return np.asarray([float(e) for e in errors], dtype=np.float64)
