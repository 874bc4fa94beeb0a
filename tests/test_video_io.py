"""Video files and folders of frames (jaxmosaic.video.io), every clip made here from numpy.

References: OpenCV's own FFmpeg build (cv2.VideoCapture) decodes what we write and what we read,
Pillow reads the PNG frames and the GIF frame times, PyAV's demuxer gives the audio packets of
the source the copy must hold byte for byte, numpy slicing gives the frames a range selects.

Measured here (12 frames of 48x32, a smooth moving gradient): H.264 at crf 0 reads back at
40.1 dB PSNR (the loss is yuv420p's chroma subsampling alone; crf 18: 39.8 dB), VP9 at crf 10
39.5 dB, the GIF (an adaptive palette per frame) 38.5 dB, a 47x33 clip padded to 48x34 40.3 dB.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from jaxmosaic import (
    ConfigError,
    ImageError,
    JaxmosaicError,
    VideoInfo,
    probe_video,
    read_video,
    write_frames,
    write_video,
)
from jaxmosaic.io.folders import FolderError
from jaxmosaic.video.io import is_video_file, parse_frames, video_software, write_output

COUNT, HEIGHT, WIDTH = 12, 32, 48


def moving_gradient(count: int = COUNT, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """uint8 (count, height, width, 3): smooth gradients that move a few levels a frame."""
    rows, cols = np.mgrid[0:height, 0:width]
    frames = [np.stack([cols * 4 + 3 * t, rows * 6 + t, 128 + 0 * cols + 5 * t], axis=-1) for t in range(count)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse)) if mse else float("inf")


def opencv_frames(path) -> tuple[np.ndarray, float, int]:
    """(RGB frames, fps, the frame count the header gives) as OpenCV's FFmpeg decodes the file."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    fps, header_count = capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    capture.release()
    return np.stack(frames), fps, header_count


def sine_video(path, *, seconds: float = 2.0, rate: int = 44100) -> None:
    """A clip with 12 fps video and `seconds` of a 440 Hz AAC sine, written with PyAV directly."""
    frames = moving_gradient(count=int(12 * seconds))
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=12)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
        for pixels in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(video.encode())


def audio_payloads(path) -> tuple[list[bytes], float]:
    """The audio packets' bytes and the decoded audio's length in seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        payloads = [bytes(packet) for packet in container.demux(stream) if packet.size]
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return payloads, samples / stream.rate


def one_line(error: pytest.ExceptionInfo, *fragments: str) -> str:
    text = str(error.value)
    assert "\n" not in text.strip(), text
    for fragment in fragments:
        assert fragment in text, text
    return text


@pytest.mark.parametrize("fps", [Fraction(12), Fraction(30000, 1001)], ids=["12", "29.97"])
def test_mp4_round_trip_keeps_count_rate_and_pixels(tmp_path, fps):
    frames = moving_gradient()
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=fps, crf=0)
    read, info = read_video(path)
    assert info == VideoInfo(count=COUNT, fps=fps, width=WIDTH, height=HEIGHT, audio=False, path=path, folder=False)
    assert probe_video(path) == info
    assert psnr(read, frames) > 39.5  # measured 40.1 dB: yuv420p's chroma subsampling, crf 0 adds nothing
    reference, cv_fps, cv_count = opencv_frames(path)
    assert cv_count == COUNT and cv_fps == pytest.approx(float(fps), rel=1e-6)
    np.testing.assert_array_equal(read, reference)
    assert video_software(path).startswith("jaxmosaic")
    write_video(path, frames, fps=fps)  # crf 18 (the default), replacing the file
    assert psnr(read_video(path)[0], frames) > 38.0  # measured 39.8 dB


def test_webm_and_gif_round_trips(tmp_path):
    frames = moving_gradient()
    webm = tmp_path / "clip.webm"
    write_video(webm, frames, fps=Fraction(30000, 1001), crf=10)
    read, info = read_video(webm)
    assert (info.count, info.fps) == (COUNT, Fraction(30000, 1001))
    assert psnr(read, frames) > 38.0  # measured 39.5 dB
    np.testing.assert_array_equal(read, opencv_frames(webm)[0])
    with av.open(str(webm)) as container:
        assert container.streams.video[0].codec_context.name == "vp9"

    gif = tmp_path / "clip.gif"
    write_video(gif, frames, fps=12)
    read, info = read_video(gif)
    assert (info.count, info.fps, info.width, info.height) == (COUNT, Fraction(12), WIDTH, HEIGHT)
    assert psnr(read, frames) > 37.0  # measured 38.5 dB
    with Image.open(gif) as picture:  # Pillow's own reading of the frame times: 1 s in all, 12 frames
        times = []
        for index in range(picture.n_frames):
            picture.seek(index)
            times.append(picture.info["duration"])
    assert len(times) == COUNT and sum(times) == 1000 and set(times) <= {80, 90}
    write_video(gif, frames, fps=Fraction(30000, 1001))
    assert read_video(gif)[1].fps == 30  # GIF frame times are hundredths: 12 frames in 0.40 s


def test_frames_folder_round_trip_is_exact(tmp_path):
    frames = moving_gradient()
    folder = tmp_path / "frames"
    written = write_frames(folder, frames)
    assert [path.name for path in written] == [f"frame_{index:06d}.png" for index in range(1, COUNT + 1)]
    for path, frame in zip(written, frames, strict=True):
        with Image.open(path) as picture:
            np.testing.assert_array_equal(np.asarray(picture.convert("RGB")), frame)
    read, info = read_video(folder, fps=Fraction(25))
    np.testing.assert_array_equal(read, frames)
    assert info == VideoInfo(count=COUNT, fps=Fraction(25), width=WIDTH, height=HEIGHT, audio=False, path=folder, folder=True)
    assert probe_video(folder).fps == 24
    # written again with fewer frames, the folder holds exactly those (the stale ones removed)
    write_frames(folder, frames[:5])
    assert sorted(path.name for path in folder.glob("*.png")) == [f"frame_{index:06d}.png" for index in range(1, 6)]
    write_frames(folder, frames[5:7], start=5)  # added, nothing removed
    np.testing.assert_array_equal(read_video(folder)[0], frames[:7])
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(FolderError) as error:
        write_frames(stranger, frames[:2])
    one_line(error, str(stranger), "did not write")
    assert sorted(os.listdir(stranger)) == ["notes.txt"]


def test_a_folder_is_sorted_by_the_numbers_in_its_names(tmp_path):
    frames = moving_gradient(count=11)
    folder = tmp_path / "shots"
    folder.mkdir()
    for index, frame in enumerate(frames):  # shot1, shot2, ..., shot10, shot11: no zero padding
        Image.fromarray(frame).save(folder / f"shot{index + 1}.png")
    (folder / "readme.txt").write_text("not a frame")
    np.testing.assert_array_equal(read_video(folder)[0], frames)


@pytest.mark.parametrize("frames, every", [((0, None), 1), ((2, 9), 3), ((5, None), 2), ((0, 4), 1), ((10, 50), 1)])
def test_ranges_and_every_select_what_numpy_slicing_selects(tmp_path, frames, every):
    clip = moving_gradient()
    video, folder = tmp_path / "clip.mp4", tmp_path / "frames"
    write_video(video, clip, fps=12)
    write_frames(folder, clip)
    full = opencv_frames(video)[0]
    start, end = frames
    read, info = read_video(video, frames=frames, every=every)
    np.testing.assert_array_equal(read, full[start:end:every])
    assert (info.count, info.fps) == (len(full[start:end:every]), Fraction(12, every))
    read, info = read_video(folder, frames=frames, every=every)
    np.testing.assert_array_equal(read, clip[start:end:every])
    assert info.fps == Fraction(24, every)


def test_parse_frames():
    assert parse_frames("10:") == (10, None)
    assert parse_frames(":50") == (0, 50)
    assert parse_frames("3:7") == (3, 7)
    assert parse_frames(":") == (0, None)
    for bad in ("a:b", "5", "7:3", "-1:4", "4:4", ""):
        with pytest.raises(ConfigError) as error:
            parse_frames(bad)
        assert error.value.field == "frames"
    assert is_video_file("x/clip.MP4") and is_video_file("a.gif") and not is_video_file("frames") and not is_video_file("a.png")


def test_odd_sizes_are_padded_for_h264_with_a_notice(tmp_path):
    frames = moving_gradient(count=3, height=33, width=47)
    path, notices = tmp_path / "odd.mp4", []
    write_video(path, frames, fps=12, crf=0, say=notices.append)
    assert len(notices) == 1 and "47x33 padded to 48x34" in notices[0]
    read, info = read_video(path)
    assert (info.width, info.height) == (48, 34)
    expected = np.pad(frames, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")  # the edge repeated
    assert psnr(read, expected) > 39.0  # measured 40.3 dB
    np.testing.assert_array_equal(read, opencv_frames(path)[0])


def test_a_display_rotation_is_applied_as_opencv_applies_it(tmp_path):
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    frame[:8, :8] = 255  # top left
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.set_display_rotation(90)  # shown turned a quarter counter-clockwise
        container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    read, info = read_video(path)
    assert (info.width, info.height) == (HEIGHT, WIDTH) and read.shape == (1, WIDTH, HEIGHT, 3)
    np.testing.assert_array_equal(read, opencv_frames(path)[0])
    assert read[0, -8:, :8].min() > 200 and read[0, :-10].max() < 30  # the corner is now bottom left


def test_audio_is_copied_and_cut_or_dropped_with_a_notice(tmp_path):
    source = tmp_path / "sine.mp4"
    sine_video(source, seconds=2.0)
    assert probe_video(source).audio
    frames, _ = read_video(source)
    packets, seconds = audio_payloads(source)
    assert seconds == pytest.approx(2.0, abs=0.05)

    for suffix in (".mp4", ".mkv"):
        out, notices = tmp_path / f"out{suffix}", []
        write_video(out, frames, fps=12, audio_from=source, say=notices.append)
        copied, copied_seconds = audio_payloads(out)
        assert notices == [] and copied == packets  # remuxed, not re-encoded
        assert copied_seconds == pytest.approx(seconds, abs=0.03)
        assert read_video(out)[1].count == len(frames)

    cut = tmp_path / "cut.mp4"
    write_video(cut, frames[6:18], fps=12, audio_from=source, audio_range=(0.5, 1.5))
    copied, copied_seconds = audio_payloads(cut)
    assert copied_seconds == pytest.approx(1.0, abs=0.05)  # to the nearest packet (1024 samples, 23 ms)
    assert all(packet in packets for packet in copied)

    beyond, notices = tmp_path / "beyond.mp4", []
    write_video(beyond, frames[:4], fps=12, audio_from=source, audio_range=(5.0, 6.0), say=notices.append)
    assert len(notices) == 1 and "holds no packet from 5 to 6 s" in notices[0], notices
    assert not probe_video(beyond).audio

    for name, words in (("out.gif", "GIF holds no audio"), ("out.webm", "aac audio"), ("frames", "folder of frames")):
        notices = []
        write_output(tmp_path / name, frames[:4], fps=12, audio_from=source, say=notices.append)
        assert len(notices) == 1 and "no sound" in notices[0] and words in notices[0], notices
        if name != "frames":
            assert not probe_video(tmp_path / name).audio


def test_unreadable_inputs_are_one_line_naming_the_file(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(ImageError) as error:
        read_video(text)
    one_line(error, str(text), "not a video")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError) as error:
        probe_video(empty)
    one_line(error, str(empty), "no frames")

    silent_only = tmp_path / "sound.mp4"
    with av.open(str(silent_only), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(ImageError) as error:
        probe_video(silent_only)
    one_line(error, str(silent_only), "no video stream")

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for index, (height, width) in enumerate([(32, 48), (32, 48), (30, 48), (32, 40)]):
        Image.new("RGB", (width, height)).save(mixed / f"f{index}.png")
    with pytest.raises(ImageError) as error:
        read_video(mixed)
    one_line(error, str(mixed / "f2.png"), "is 48x30", "are 48x32")

    clip = tmp_path / "clip.mp4"
    write_video(clip, moving_gradient(count=24), fps=12, crf=0)
    truncated = tmp_path / "truncated.mp4"
    data = clip.read_bytes()
    truncated.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(ImageError) as error:
        read_video(truncated)
    line = one_line(error, str(truncated), "truncated or damaged", "of its 24 frames could be read")
    assert 0 < int(line.split("only ")[1].split()[0]) < 24
    with pytest.raises(ImageError) as error:
        read_video(clip, frames=(30, None))
    one_line(error, str(clip), "select none of its 24 frames")
    with pytest.raises(ConfigError):
        read_video(clip, every=0)


def test_memory_for_the_frames_is_checked_before_decoding(tmp_path, monkeypatch):
    clip = tmp_path / "clip.mp4"
    write_video(clip, moving_gradient(), fps=12)
    monkeypatch.setattr("jaxmosaic.video.io.host_available_bytes", lambda: 8192)  # 8 KiB free, the clip needs 54 KiB
    with pytest.raises(ImageError) as error:
        read_video(clip)
    one_line(error, str(clip), "12 frames of 48x32", "memory")
    assert read_video(clip, frames=(0, 1))[0].shape == (1, HEIGHT, WIDTH, 3)  # 4.5 KiB fits


def test_a_failing_write_leaves_nothing(tmp_path):
    before = tmp_path / "kept.mp4"
    write_video(before, moving_gradient(count=2), fps=12)
    kept = before.read_bytes()
    wide = np.zeros((2, 2, 17000, 3), np.uint8)  # wider than libx264 encodes
    for path in (tmp_path / "new.mp4", before):
        with pytest.raises(ImageError) as error:
            write_video(path, wide, fps=12)
        one_line(error, str(path), "cannot write the video")
    assert sorted(os.listdir(tmp_path)) == ["kept.mp4"]
    assert before.read_bytes() == kept
    with pytest.raises(ConfigError) as error:
        write_video(tmp_path / "bad.mp4", wide, fps=12, crf=52)
    assert error.value.field == "crf"
    with pytest.raises(ImageError) as error:
        write_video(tmp_path / "nan.mp4", np.full((1, 8, 8, 3), np.nan, np.float32), fps=12)
    one_line(error, "nan.mp4", "NaN")
    with pytest.raises(ImageError):
        write_video(tmp_path / "clip.png", moving_gradient(count=2), fps=12)
    assert sorted(os.listdir(tmp_path)) == ["kept.mp4"]


def test_write_never_replaces_the_audio_source(tmp_path):
    source = tmp_path / "sine.mp4"
    sine_video(source, seconds=1.0)
    data = source.read_bytes()
    with pytest.raises(JaxmosaicError) as error:
        write_video(source, moving_gradient(count=2), fps=12, audio_from=source)
    one_line(error, str(source), "input")
    assert source.read_bytes() == data
