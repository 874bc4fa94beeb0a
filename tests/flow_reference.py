"""References for the video flow tests: line-by-line numpy transcriptions of manuelruder/artistic-videos'
consistencyChecker.cpp (with Thomas Brox's CFilter.h that it calls: CDerivative(3), CSmooth(0.8, 2)
and NFilter::filter's mirrored rims) and of artistic_video.lua's "closestFirst" long-term weights;
analytic scenes with known flows."""

from __future__ import annotations

import math

import numpy as np

MOTION_BOUNDARIE_VALUE = 0.0
SMOOTH_STRENGH = 0.8


def nfilter_x(matrix: np.ndarray, taps: np.ndarray, delta: int) -> np.ndarray:
    """NFilter::filter(aMatrix, aResult, aFilter, 1): result(x) = sum_i f[i] m[x + i], i in [A, B),
    rims mirrored: x + i < 0 reads -1 - x - i, x + i >= N reads 2N - 1 - x - i."""
    height, width = matrix.shape
    out = np.zeros_like(matrix)
    for y in range(height):
        for x in range(width):
            total = np.float32(0)
            for k, tap in enumerate(taps):
                i = k - delta
                if x + i < 0:
                    src = -1 - x - i
                elif x + i >= width:
                    src = 2 * width - 1 - x - i
                else:
                    src = x + i
                total = np.float32(total + np.float32(tap) * matrix[y, src])
            out[y, x] = total
    return out


def nfilter_y(matrix: np.ndarray, taps: np.ndarray, delta: int) -> np.ndarray:
    return nfilter_x(matrix.T.copy(), taps, delta).T.copy()


def cderivative3() -> tuple[np.ndarray, int]:
    return np.array([-0.5, 0.0, 0.5], np.float32), 1


def csmooth(sigma: float, precision: float) -> tuple[np.ndarray, int]:
    radius = math.ceil(precision * sigma)
    taps = np.zeros(2 * radius + 1, np.float32)
    for i in range(radius + 1):
        value = math.exp(i * i / (-2.0 * sigma * sigma)) / (sigma * math.sqrt(2.0 * math.pi))
        taps[radius + i] = taps[radius - i] = value
    return (taps * np.float32(1.0 / np.abs(taps).sum())).astype(np.float32), radius


def consistency_checker(flow1: np.ndarray, flow2: np.ndarray) -> np.ndarray:
    """consistencyChecker's `reliable` image after checkConsistency, the smoothing and the clip,
    divided by 255. flow1, flow2: (H, W, 2) float32 with [..., 0] = x."""
    flow1 = flow1.astype(np.float32)
    flow2 = flow2.astype(np.float32)
    height, width = flow1.shape[:2]
    taps, delta = cderivative3()
    dx = np.stack([nfilter_x(flow1[..., c], taps, delta) for c in range(2)], -1)
    dy = np.stack([nfilter_y(flow1[..., c], taps, delta) for c in range(2)], -1)
    motion_edge = np.zeros((height, width), np.float32)
    for c in range(2):
        motion_edge += dx[..., c] * dx[..., c]
    for c in range(2):
        motion_edge += dy[..., c] * dy[..., c]

    reliable = np.full((height, width), 255.0, np.float32)
    f32 = np.float32
    for ay in range(height):
        for ax in range(width):
            bx = f32(ax + flow1[ay, ax, 0])
            by = f32(ay + flow1[ay, ax, 1])
            x1, y1 = math.floor(bx), math.floor(by)
            x2, y2 = x1 + 1, y1 + 1
            if x1 < 0 or x2 >= width or y1 < 0 or y2 >= height:
                reliable[ay, ax] = 0.0
                continue
            alpha_x, alpha_y = f32(bx - x1), f32(by - y1)
            a = f32((1.0 - alpha_x) * flow2[y1, x1, 0] + alpha_x * flow2[y1, x2, 0])
            b = f32((1.0 - alpha_x) * flow2[y2, x1, 0] + alpha_x * flow2[y2, x2, 0])
            u = f32((1.0 - alpha_y) * a + alpha_y * b)
            a = f32((1.0 - alpha_x) * flow2[y1, x1, 1] + alpha_x * flow2[y1, x2, 1])
            b = f32((1.0 - alpha_x) * flow2[y2, x1, 1] + alpha_x * flow2[y2, x2, 1])
            v = f32((1.0 - alpha_y) * a + alpha_y * b)
            cx, cy = f32(bx + u), f32(by + v)
            u2, v2 = flow1[ay, ax, 0], flow1[ay, ax, 1]
            if f32((cx - ax) * (cx - ax) + (cy - ay) * (cy - ay)) >= 0.01 * (u2 * u2 + v2 * v2 + u * u + v * v) + 0.5:
                reliable[ay, ax] = -255.0
                continue
            if motion_edge[ay, ax] > 0.01 * (u2 * u2 + v2 * v2) + 0.002:
                reliable[ay, ax] = MOTION_BOUNDARIE_VALUE
                continue
    smooth, radius = csmooth(SMOOTH_STRENGH, 2.0)
    reliable = nfilter_y(nfilter_x(reliable, smooth, radius), smooth, radius)
    return np.clip(reliable, 0.0, 255.0) / 255.0


def in_frame(flow: np.ndarray) -> np.ndarray:
    """x + flow(x) in [0, W - 1] x [0, H - 1]."""
    height, width = flow.shape[:2]
    yy, xx = np.mgrid[:height, :width]
    px, py = xx + flow[..., 0], yy + flow[..., 1]
    return (px >= 0) & (px <= width - 1) & (py >= 0) & (py <= height - 1)


def closest_first(weights: np.ndarray) -> np.ndarray:
    """artistic_video.lua's processFlowWeights(..., 'closestFirst'): in place, for j = 2 .. J,
    subtract every closer (already processed) weight, then clip at 0."""
    tabl = [w.astype(np.float64).copy() for w in weights]
    for j in range(1, len(tabl)):
        for k in range(1, j + 1):
            tabl[j] -= tabl[j - k]
        tabl[j] = np.maximum(tabl[j], 0)
    return np.stack(tabl)


def sines(height: int, width: int, shift=(0.0, 0.0), *, seed: int = 0, waves: int = 24, top: float = 0.2) -> np.ndarray:
    """A smooth RGB texture in [0, 1], a sum of plane waves (frequencies up to `top` cycles per
    px), sampled at (x - dx, y - dy): the texture moved by `shift` = (dx, dy) px, exactly (it is
    defined everywhere)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    xx, yy = xx - shift[0], yy - shift[1]
    image = np.zeros((height, width, 3))
    for _ in range(waves):
        frequency, angle, phase = rng.uniform(top / 5, top), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        colour = rng.uniform(0.2, 1.0, 3)
        image += colour * np.sin(2 * np.pi * frequency * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)[..., None]
    scale = np.abs(image).max(axis=(0, 1)) * 2
    return (0.5 + image / scale).astype(np.float32)


def occluder_scene(size: int, background, occluder, corner, side):
    """Frame j and frame i = j + 1 of a background translating by `background` = (dx, dy) px and a
    square of `side` px at `corner` = (row, col) in frame i moving by `occluder`.

    Returns (flow i -> j, flow j -> i, square in frame i, trail, touched): the trail is the
    background of frame i that the square covered in frame j (the disocclusion); `touched` adds
    the pixels whose source only partly lay under the square."""
    t = np.asarray(background, np.float32)
    s = np.asarray(occluder, np.float32)
    rows, cols = np.mgrid[:size, :size]
    r0, c0 = corner
    square_i = (rows >= r0) & (rows < r0 + side) & (cols >= c0) & (cols < c0 + side)
    r0j, c0j = r0 - s[1], c0 - s[0]
    square_j = (rows >= r0j) & (rows < r0j + side) & (cols >= c0j) & (cols < c0j + side)
    flow_ij = np.broadcast_to(-t, (size, size, 2)).copy()
    flow_ij[square_i] = -s
    flow_ji = np.broadcast_to(t, (size, size, 2)).copy()
    flow_ji[square_j] = s
    # background pixels of frame i whose source x - t lay in the square of frame j (all bilinear
    # neighbours in it), and those with at least one neighbour in it
    src_r, src_c = rows - t[1], cols - t[0]
    trail = (~square_i) & (src_r >= r0j) & (src_r <= r0j + side - 1) & (src_c >= c0j) & (src_c <= c0j + side - 1)
    touched = (~square_i) & (src_r > r0j - 1) & (src_r < r0j + side) & (src_c > c0j - 1) & (src_c < c0j + side)
    return flow_ij, flow_ji, square_i, trail, touched
