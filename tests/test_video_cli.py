"""`jaxmosaic video`: files in and out (MP4, frames folders), resume after an interruption, the
metrics, and bad input refused in one line with nothing written.

The clips are made here with PyAV and Pillow (6 frames of 32x32: a smooth texture panning one
pixel a frame under a still grey square); the network is a seeded random VGG19 drawn once per test
process, with shallow layers and few steps, so each run takes seconds.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLES, one_line_error, remembered, run_cli
from PIL import Image
from scipy import ndimage

# --max-memory: the runs need under 1 GiB, however little of the machine's memory is free of its page cache
FAST = ["--weights", "random", "--size", 32, "--steps", 3, "--content-layers", "relu2_2", "--style-layers", "relu1_1,relu2_1",
        "--max-memory", 2]
FRAMES, SIDE, FPS = 6, 32, Fraction(12)


@pytest.fixture(autouse=True)
def one_random_network(monkeypatch):
    """Every run of this module gets the same seeded random VGG19, drawn once."""
    import jaxmosaic.video.run as video_run

    draw = video_run.vgg_params
    monkeypatch.setattr(video_run, "vgg_params", lambda weights, seed=0, arch="vgg19": remembered(
        ("video", weights, seed), lambda: draw(weights, seed, arch)))


def clip(count: int = FRAMES, side: int = SIDE) -> np.ndarray:
    """uint8 (count, side, side, 3): a smooth random texture panning 1 px right a frame, and a still grey square."""
    rng = np.random.default_rng(3)
    texture = ndimage.gaussian_filter(rng.random((side, side + count, 3)), sigma=(2, 2, 0))
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    frames = np.stack([texture[:, count - i: count - i + side] for i in range(count)])
    frames[:, 10:18, 12:20] = 0.5
    return (frames * 255 + 0.5).astype(np.uint8)


def write_mp4(path: Path, frames: np.ndarray, fps: Fraction = FPS) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_mp4(path: Path) -> tuple[np.ndarray, Fraction]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return frames, Fraction(stream.average_rate)


def write_folder(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"f{i + 1:03d}.png")
    return folder


def read_folder(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.glob("frame_*.png"))])


def reference_error(frames: np.ndarray, flows: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """The temporal error by scipy: mean over pairs of mean(mask * (f_i - f_{i-1}(x + flow))^2),
    bilinear samples outside the frame 0."""
    frames = frames.astype(np.float64) / 255 if frames.dtype == np.uint8 else frames.astype(np.float64)
    rows, cols = np.mgrid[0:frames.shape[1], 0:frames.shape[2]].astype(np.float64)
    errors = []
    for i in range(1, len(frames)):
        flow = flows[i - 1]
        coords = [rows + flow[..., 1], cols + flow[..., 0]]
        warped = np.stack([ndimage.map_coordinates(frames[i - 1][..., c], coords, order=1, mode="constant", cval=0.0)
                           for c in range(3)], -1)
        errors.append(np.mean(masks[i - 1][..., None] * (frames[i] - warped) ** 2))
    return float(np.mean(errors))


def counting(monkeypatch) -> dict:
    """Count the frames optimised in "optimised" (and raise Ctrl-C's KeyboardInterrupt once there
    are "stop_after" of them, when that is set)."""
    import jaxmosaic.video.run as video_run

    seen: dict = {"optimised": [], "stop_after": None}
    stylize = video_run.stylize_video

    def counted(*args, callback=None, **kwargs):
        def on_frame(progress):
            if progress.image is not None:
                seen["optimised"].append(progress.frame)
            callback(progress)
            if seen["stop_after"] is not None and len(seen["optimised"]) >= seen["stop_after"]:
                raise KeyboardInterrupt

        return stylize(*args, callback=on_frame, **kwargs)

    monkeypatch.setattr(video_run, "stylize_video", counted)
    return seen


def test_an_mp4_gives_an_mp4_of_the_same_count_and_rate_with_metrics_and_previews(tmp_path):
    from jaxmosaic.video.flow import write_flo
    from jaxmosaic.video.temporal import consistency_mask

    frames = clip()
    source = write_mp4(tmp_path / "in.mp4", frames)
    decoded, _ = read_mp4(source)
    # the exact motion as .flo files: the background moves 1 px right a frame (frame i at x is frame i-1 at x - 1)
    flows = tmp_path / "flows"
    flows.mkdir()
    back, forward = np.zeros((SIDE, SIDE, 2), np.float32), np.zeros((SIDE, SIDE, 2), np.float32)
    back[..., 0], forward[..., 0] = -1.0, 1.0
    for i in range(1, FRAMES):
        write_flo(flows / f"backward_{i + 1}_{i}.flo", back)
        write_flo(flows / f"forward_{i}_{i + 1}.flo", forward)
    out, metrics = tmp_path / "out.mp4", tmp_path / "m.json"
    result = run_cli("video", source, SAMPLES / "brick.png", "-o", out, "--flow-dir", flows, "--metrics", metrics,
                     "--preview", *FAST)
    assert result.exit_code == 0, result.output
    written, rate = read_mp4(out)
    assert written.shape == (FRAMES, SIDE, SIDE, 3) and rate == FPS
    summary = json.loads(metrics.read_text())
    assert summary["technique"] == "video" and summary["video"]["frames"] == FRAMES
    assert summary["video"]["frames_computed"] == FRAMES and summary["video"]["seconds_per_frame"] > 0
    mask = np.asarray(consistency_mask(back, forward))
    expected_input = reference_error(decoded, [back] * (FRAMES - 1), [mask] * (FRAMES - 1))
    assert summary["temporal_error"]["input"] == pytest.approx(expected_input, rel=1e-4)
    assert 0 < summary["temporal_error"]["input"] < 2e-3  # the exact flow explains the input up to the codec's noise
    assert summary["temporal_error"]["output"] > 0 and len(summary["temporal_error"]["output_per_pair"]) == FRAMES - 1
    strip = np.asarray(Image.open(tmp_path / "out-strip.png"))
    assert strip.shape == (2 * SIDE + 3 * 4, FRAMES * SIDE + (FRAMES + 1) * 4, 3)  # 4 px apart and around
    np.testing.assert_array_equal(strip[8 + SIDE:8 + 2 * SIDE, 4:4 + SIDE], decoded[0])  # inputs under outputs
    picture = np.asarray(Image.open(tmp_path / "out-flow.png"))
    assert picture.shape == (SIDE + 8, 4 * SIDE + 5 * 4, 3)
    np.testing.assert_allclose(picture[4:-4, 4 + 3 * (SIDE + 4):-4, 0] / 255, mask, atol=0.5 / 255)


def test_a_frames_folder_resumes_after_an_interruption_without_recomputing_a_frame(tmp_path, monkeypatch):
    source = write_folder(tmp_path / "in", clip())
    style, check = SAMPLES / "brick.png", tmp_path / "ck"
    whole = run_cli("video", source, style, "-o", tmp_path / "whole", "--preview", *FAST)
    assert whole.exit_code == 0, whole.output
    expected = read_folder(tmp_path / "whole")
    assert expected.shape == (FRAMES, SIDE, SIDE, 3)
    strip = np.asarray(Image.open(tmp_path / "whole-strip.png"))
    for k in range(FRAMES):  # every frame of a short clip, each output over its input
        left = 4 + k * (SIDE + 4)
        np.testing.assert_array_equal(strip[4:4 + SIDE, left:left + SIDE], expected[k])
        np.testing.assert_array_equal(strip[8 + SIDE:8 + 2 * SIDE, left:left + SIDE], clip()[k])

    seen = counting(monkeypatch)
    seen["stop_after"] = 2
    stopped = run_cli("video", source, style, "-o", tmp_path / "part", "--checkpoint", check, *FAST)
    assert stopped.exit_code == 130 and "Traceback" not in stopped.output
    last = stopped.output.strip().splitlines()[-1]
    assert last.startswith("error: interrupted after 2 frame(s)") and "part" in last and "--resume" in last
    assert seen["optimised"] == [0, 1]
    np.testing.assert_array_equal(read_folder(tmp_path / "part"), expected[:2])  # the finished frames are written

    seen.update(optimised=[], stop_after=None)
    metrics = tmp_path / "m.json"
    resumed = run_cli("video", source, style, "-o", tmp_path / "part", "--checkpoint", check, "--resume", "--metrics",
                      metrics, *FAST)
    assert resumed.exit_code == 0, resumed.output
    assert seen["optimised"] == [2, 3, 4, 5]  # no finished frame is optimised again
    summary = json.loads(metrics.read_text())["video"]
    assert summary["frames_computed"] == 4 and summary["frames_resumed"] == 2
    np.testing.assert_array_equal(read_folder(tmp_path / "part"), expected)

    changed = run_cli("video", source, style, "-o", tmp_path / "other", "--checkpoint", check, "--resume",
                      "--content-weight", 2, *FAST)
    one_line_error(changed, "--resume", "other settings", "content_weight")


def _mixed_folder(tmp_path: Path) -> list:
    folder = write_folder(tmp_path / "mixed", clip(3))
    Image.fromarray(np.zeros((20, SIDE, 3), np.uint8)).save(folder / "f004.png")
    return [folder, "-o", tmp_path / "out.mp4"]


def _flows(tmp_path: Path, *, size: int, skip: str | None = None) -> list:
    from jaxmosaic.video.flow import write_flo

    flows = tmp_path / "flows"
    flows.mkdir()
    for i in range(1, FRAMES):
        for name in (f"backward_{i + 1}_{i}.flo", f"forward_{i}_{i + 1}.flo"):
            if name != skip:
                write_flo(flows / name, np.zeros((size, size, 2), np.float32))
    return [write_mp4(tmp_path / "in.mp4", clip()), "-o", tmp_path / "out.mp4", "--flow-dir", flows]


BAD = {
    "unreadable": (lambda tmp: [(tmp / "in.mp4").write_text("not a video") and tmp / "in.mp4", "-o", tmp / "out.mp4"],
                   "in.mp4"),
    "flo size": (lambda tmp: _flows(tmp, size=SIDE - 2), "the flow is 30x30, the frames are 32x32"),
    "flo missing": (lambda tmp: _flows(tmp, size=SIDE, skip="forward_3_4.flo"), "forward_3_4.flo: no such file"),
    "mixed sizes": (_mixed_folder, "f004.png"),
    "output is input": (lambda tmp: [write_mp4(tmp / "in.mp4", clip()), "-o", tmp / "in.mp4"], "refusing to overwrite an input"),
    "frames out of order": (lambda tmp: [write_mp4(tmp / "in.mp4", clip()), "-o", tmp / "out.mp4", "--frames", "5:2"],
                            "--frames: '5:2': the end 2 must be after the start 5"),
    "frames beyond the clip": (lambda tmp: [write_mp4(tmp / "in.mp4", clip()), "-o", tmp / "out.mp4", "--frames", "100:200"],
                               "--frames: 100:200 holds none of the 6 frames"),
    "crf beyond h264's": (lambda tmp: [write_mp4(tmp / "in.mp4", clip()), "-o", tmp / "out.mp4", "--crf", 55],
                          "--crf: 55: a .mp4 output takes 0 to 51"),
    "style not an image": (lambda tmp: [write_mp4(tmp / "in.mp4", clip()), (tmp / "notes.png").write_text("notes") and
                                        tmp / "notes.png", "-o", tmp / "out.mp4"], "notes.png: not an image"),
    "resume from nothing": (lambda tmp: [write_mp4(tmp / "in.mp4", clip()), "-o", tmp / "out.mp4", "--resume"],
                            "--resume: ", "holds no video checkpoint"),
    # the files are numbered as the input's frames: frames 1 and 3 read need the flows between 2 and 4
    "flo numbered as the input": (lambda tmp: [*_flows(tmp, size=SIDE), "--frames", "1:5", "--every", 2],
                                  "forward_2_4.flo: no such file (the flow from frame 2 to frame 4)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    make, *fragments = BAD[case]
    work = tmp_path / "work"
    work.mkdir()
    args = make(work)
    before = sorted(path.relative_to(work) for path in work.rglob("*"))
    result = run_cli("video", args[0], SAMPLES / "brick.png", *args[1:], "--metrics", work / "m.json", "--checkpoint",
                     work / "ck", *FAST)
    one_line_error(result, *fragments)
    assert sorted(path.relative_to(work) for path in work.rglob("*")) == before


def test_flo_files_at_the_input_size_are_fitted_to_a_smaller_size(tmp_path):
    """.flo files are at the input's size: a 64 px clip at --size 32 halves their vectors (the cached flows show it)."""
    from jaxmosaic.video.flow import write_flo

    flows = tmp_path / "flows"
    flows.mkdir()
    back, forward = np.zeros((2 * SIDE, 2 * SIDE, 2), np.float32), np.zeros((2 * SIDE, 2 * SIDE, 2), np.float32)
    back[..., 0], forward[..., 0] = -1.0, 1.0
    write_flo(flows / "backward_2_1.flo", back)
    write_flo(flows / "forward_1_2.flo", forward)
    source, out, check = write_mp4(tmp_path / "in.mp4", clip(side=2 * SIDE)), tmp_path / "out.mp4", tmp_path / "ck"
    result = run_cli("video", source, SAMPLES / "brick.png", "-o", out, "--flow-dir", flows, "--frames", "0:2",
                     "--checkpoint", check, *FAST)
    assert result.exit_code == 0, result.output
    assert read_mp4(out)[0].shape == (2, SIDE, SIDE, 3)
    (cached,) = check.glob("flows-*.npz")
    with np.load(cached) as data:
        np.testing.assert_allclose(data["flow_1_0"][..., 0], -0.5, atol=1e-6)
        np.testing.assert_allclose(data["flow_0_1"][..., 0], 0.5, atol=1e-6)
        np.testing.assert_allclose(data["flow_1_0"][..., 1], 0.0, atol=1e-6)
    # the .flo files changed since: a resume uses them as they are now, not the cached flows
    back[..., 0], forward[..., 0] = -2.0, 2.0
    write_flo(flows / "backward_2_1.flo", back)
    write_flo(flows / "forward_1_2.flo", forward)
    result = run_cli("video", source, SAMPLES / "brick.png", "-o", out, "--flow-dir", flows, "--frames", "0:2",
                     "--checkpoint", check, "--resume", *FAST)
    assert result.exit_code == 0, result.output
    assert "the .flo files of --flow-dir" in result.output
    (changed,) = set(check.glob("flows-*.npz")) - {cached}
    with np.load(changed) as data:
        np.testing.assert_allclose(data["flow_1_0"][..., 0], -1.0, atol=1e-6)


def test_the_audio_under_the_frames_kept_is_copied(tmp_path):
    """--frames 6:18 --every 2 of a 12 fps clip with 2 s of sound: 6 frames at 6 fps, and the sound
    from 0.5 s to 1.5 s (to the nearest AAC packet of 1024 samples)."""
    import av

    source, rate = tmp_path / "in.mp4", 44100
    with av.open(str(source), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = SIDE, SIDE, "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
        for pixels in clip(24):
            container.mux(video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(video.encode())
    out = tmp_path / "out.mp4"
    result = run_cli("video", source, SAMPLES / "brick.png", "-o", out, "--frames", "6:18", "--every", 2, *FAST)
    assert result.exit_code == 0, result.output
    frames, fps = read_mp4(out)
    assert len(frames) == 6 and fps == FPS / 2
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        seconds = sum(frame.samples for frame in container.decode(stream)) / stream.rate
    assert seconds == pytest.approx(1.0, abs=0.05)


def test_flow_colors_follow_the_hsv_colour_wheel():
    """Hue the direction (+x red, then yellow, green, cyan at -x, ...), saturation the length, value 1
    (no motion is white): colorsys's HSV to RGB on every pixel."""
    import colorsys

    from jaxmosaic.video.run import flow_colors

    flow = np.random.default_rng(0).normal(size=(6, 7, 2)).astype(np.float32)
    flow[0, 0] = 0.0
    longest = float(np.hypot(flow[..., 0], flow[..., 1]).max())
    colours = flow_colors(flow)
    for y in range(6):
        for x in range(7):
            dx, dy = (float(v) for v in flow[y, x])
            hue = (np.arctan2(-dy, -dx) / np.pi + 1.0) / 2.0
            expected = colorsys.hsv_to_rgb(hue % 1.0, np.hypot(dx, dy) / longest, 1.0)
            np.testing.assert_allclose(colours[y, x], expected, atol=1e-5)
    np.testing.assert_array_equal(colours[0, 0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(flow_colors(np.asarray([[[1.0, 0.0], [-1.0, 0.0]]], np.float32))[0],
                               [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], atol=1e-6)
