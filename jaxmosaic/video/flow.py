"""Optical flow between video frames (OpenCV) and Middlebury .flo files.

A flow is float32 (H, W, 2), channel 0 = dx (columns), channel 1 = dy (rows). The flow from frame a
to frame b says a(x) ~ b(x + flow(x)), OpenCV's and Middlebury's convention. Frames are RGB,
uint8 or float in [0, 1]; the flow is computed on their grey levels.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from jaxmosaic.errors import ConfigError, ImageError
from jaxmosaic.io.files import atomic_path

__all__ = ["FLOW_METHODS", "FLO_MAGIC", "load_flow_dir", "optical_flow", "pair_flows", "read_flo", "write_flo"]

FLOW_METHODS = ("dis", "farneback")
FLO_MAGIC = 202021.25  # "PIEH" read as a little-endian float32
_MAX_SIDE = 1 << 16
_DIS_MIN_SIDE = 16  # OpenCV's DIS fails on some frames with a side below this
_FLO_NAME = re.compile(r"(forward|backward)_(\d+)_(\d+)\.flo")


def _grey(frame) -> np.ndarray:
    """8-bit grey levels (ITU-R 601, OpenCV's RGB2GRAY) of an RGB or grey frame."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.round(np.clip(frame.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    if frame.ndim == 2:
        return np.ascontiguousarray(frame)
    raise ImageError(f"optical flow: a frame must be (H, W, 3) RGB or (H, W) grey, got shape {frame.shape}")


def _check_method(method: str) -> None:
    if method not in FLOW_METHODS:
        raise ConfigError("flow", f"unknown optical flow method {method!r}; one of {', '.join(FLOW_METHODS)}")


def _grey_flow(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    height, width = a.shape
    if method == "dis" and min(height, width) < _DIS_MIN_SIDE:
        # DIS refuses frames this small: compute on the edges repeated, keep the frame's part
        bottom, right = max(0, _DIS_MIN_SIDE - height), max(0, _DIS_MIN_SIDE - width)
        a, b = (cv2.copyMakeBorder(f, 0, bottom, 0, right, cv2.BORDER_REPLICATE) for f in (a, b))
        return _grey_flow(a, b, method)[:height, :width]
    if method == "dis":
        # MEDIUM's patches and variational refinement, down to the finest scale: 0.013 px mean
        # endpoint error on the tests' textured sub-pixel shift, where MEDIUM's default (finest
        # scale 1) gives 0.11 px and FAST 1.2 px, for about 4x MEDIUM's time.
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        dis.setFinestScale(0)
        flow = dis.calc(a, b, None)
    else:
        # OpenCV's reference settings: pyramid scale 0.5, 3 levels, 15 px window, 3 iterations,
        # polynomial expansion over 5 px with sigma 1.2.
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return np.asarray(flow, dtype=np.float32)


def optical_flow(a, b, *, method: str = "dis") -> np.ndarray:
    """The optical flow from frame `a` to frame `b`: a(x) ~ b(x + flow(x)).

    "dis": OpenCV's dense inverse search (Kroeger et al. 2016), preset MEDIUM refined down to the
    finest scale. "farneback": OpenCV's polynomial expansion (Farneback 2003) with its reference
    settings. Both run on the frames' grey levels. Frames with a side below 16 px, which DIS
    refuses, are extended by repeating their edges and the flow cut back to their size.

    Args:
      a: (H, W, 3) RGB frame, uint8 or float in [0, 1] (or (H, W) grey).
      b: the next frame, same shape.
      method: one of `FLOW_METHODS`.

    Returns:
      float32 (H, W, 2) flow, dx then dy, in pixels.
    """
    _check_method(method)
    a, b = _grey(a), _grey(b)
    if a.shape != b.shape:
        raise ImageError(f"optical flow: the frames differ in size ({a.shape[1]}x{a.shape[0]} and {b.shape[1]}x{b.shape[0]})")
    return _grey_flow(a, b, method)


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Read a Middlebury .flo file: float32 magic 202021.25, int32 width, int32 height, then
    width * height (dx, dy) float32 pairs row by row, all little-endian.

    Returns:
      float32 (H, W, 2). A file that does not fit (missing, wrong magic, sizes out of range,
      truncated or too long, non-finite values) raises ImageError, one line naming the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not a .flo file") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot read the flow ({err.strerror or err})") from None
    if len(data) < 12:
        raise ImageError(f"{path}: {len(data)} bytes, too short for a .flo header (12 bytes)")
    magic = float(np.frombuffer(data, "<f4", count=1)[0])
    if magic != FLO_MAGIC:
        raise ImageError(f"{path}: not a Middlebury .flo file (magic {magic!r}, expected {FLO_MAGIC})")
    width, height = (int(v) for v in np.frombuffer(data, "<i4", count=2, offset=4))
    if not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        raise ImageError(f"{path}: header claims a {width}x{height} flow; sizes must lie in 1..{_MAX_SIDE}")
    needed = 12 + 8 * width * height
    if len(data) != needed:
        how = "truncated" if len(data) < needed else "too long"
        raise ImageError(f"{path}: {how}: a {width}x{height} flow takes {needed} bytes, the file has {len(data)}")
    flow = np.frombuffer(data, "<f4", offset=12).reshape(height, width, 2).astype(np.float32)
    if not np.isfinite(flow).all():
        raise ImageError(f"{path}: holds non-finite flow values (NaN or infinity)")
    return flow


def write_flo(path: str | os.PathLike, flow) -> None:
    """Write a flow (H, W, 2), dx then dy, as a Middlebury .flo file (see `read_flo`), atomically
    (a temporary file beside `path`, renamed when complete)."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[0] == 0 or flow.shape[1] == 0:
        raise ImageError(f"{path}: a flow must be (H, W, 2), got shape {flow.shape}")
    height, width = flow.shape[:2]
    header = np.array([FLO_MAGIC], "<f4").tobytes() + np.array([width, height], "<i4").tobytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(header + np.ascontiguousarray(flow, dtype="<f4").tobytes())


def _needed_pairs(count: int, offsets: Iterable[int]) -> list[tuple[int, int]]:
    """(i, j) for every frame i and offset d with j = i - d >= 0, ordered by i then d."""
    offsets = sorted({int(d) for d in offsets})
    if not offsets or offsets[0] < 1:
        raise ConfigError("long_term", f"frame offsets must be positive integers, got {list(offsets)}")
    return [(i, i - d) for i in range(count) for d in offsets if i - d >= 0]


def pair_flows(frames, offsets: Iterable[int], *, method: str = "dis",
               say: Callable[[str], None] | None = None) -> dict[tuple[int, int], np.ndarray]:
    """Every flow the temporal losses need: for each frame i and offset d with j = i - d >= 0, the
    flow i -> j and the flow j -> i.

    Args:
      frames: (N, H, W, 3) RGB frames, uint8 or float in [0, 1].
      offsets: the earlier frames each frame is compared with (1 = the previous one).
      method: one of `FLOW_METHODS`.
      say: gets one line at the start and one about every tenth of the way.

    Returns:
      A dict mapping (a, b) to the float32 (H, W, 2) flow from frame a to frame b.
    """
    _check_method(method)
    pairs = _needed_pairs(len(frames), offsets)
    grey = [_grey(frame) for frame in frames]
    total = 2 * len(pairs)
    if say is not None and total:
        say(f"optical flow ({method}): {total} flows between {len(frames)} frames")
    step = max(1, len(pairs) // 10)
    flows: dict[tuple[int, int], np.ndarray] = {}
    for done, (i, j) in enumerate(pairs, 1):
        flows[(i, j)] = _grey_flow(grey[i], grey[j], method)
        flows[(j, i)] = _grey_flow(grey[j], grey[i], method)
        if say is not None and done % step == 0 and done < len(pairs):
            say(f"optical flow: {2 * done}/{total}")
    return flows


def load_flow_dir(folder: str | os.PathLike, count: int, offsets: Iterable[int], shape: tuple[int, ...], *,
                  start: int = 0, step: int = 1, total: int | None = None) -> dict:
    """The flows of a video from a folder of Middlebury .flo files, as manuelruder/artistic-videos'
    makeOptFlow.sh names them (frames numbered from 1): ``forward_J_I.flo`` is the flow from frame
    J to frame I = J + d, ``backward_I_J.flo`` the flow from I back to J, for every offset d.

    Args:
      folder: the folder.
      count: the number of frames read.
      offsets: the offsets d needed (`pair_flows`'s), in frames read.
      shape: the frames' (H, W) (more trailing entries are ignored).
      start: the input's 0-based index of the first frame read (`--frames A:B`'s A).
      step: input frames from one frame read to the next (`--every`); the files are numbered as
        the input's frames: frame k read is number start + k * step + 1.
      total: the input's frame count, the highest number a file may carry (default: that of
        the last frame read).

    Returns:
      The dict `pair_flows` returns (0-based keys, in frames read). A missing folder or file, a
      flow of another size, or files for frames beyond `total` raise one line naming the folder or file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError("flow_dir", f"{folder}: no such folder")
    height, width = int(shape[0]), int(shape[1])
    last = start + (count - 1) * step + 1 if total is None else total
    numbers = [max(int(m[2]), int(m[3])) for m in (_FLO_NAME.fullmatch(p.name) for p in folder.iterdir()) if m]
    if numbers and max(numbers) > last:
        raise ConfigError("flow_dir", f"{folder}: holds flows for frame {max(numbers)}, the video has {last} frames "
                          "(frames are numbered from 1)")
    flows: dict[tuple[int, int], np.ndarray] = {}
    for i, j in _needed_pairs(count, offsets):
        a, b = start + j * step + 1, start + i * step + 1  # the file numbers of frames j and i
        for name, key, (source, target) in ((f"forward_{a}_{b}.flo", (j, i), (a, b)),
                                            (f"backward_{b}_{a}.flo", (i, j), (b, a))):
            path = folder / name
            if not path.is_file():
                raise ImageError(f"{path}: no such file (the flow from frame {source} to frame {target})")
            flow = read_flo(path)
            if flow.shape[:2] != (height, width):
                raise ImageError(f"{path}: the flow is {flow.shape[1]}x{flow.shape[0]}, the frames are {width}x{height}")
            flows[key] = flow
    return flows
