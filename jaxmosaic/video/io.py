"""Video files and folders of frames: reading and writing, with PyAV (FFmpeg's codecs in the wheel).

Frames are numpy uint8 arrays (N, H, W, 3), RGB; `write_video` and `write_frames` also take
float frames in [0, 1]. Frame rates are `fractions.Fraction`s (30000/1001 stays exact).

- Reading: any container FFmpeg reads (.mp4, .mov, .webm, .gif, .mkv, .avi, ...), or a folder of
  numbered images (`FRAME_SUFFIXES`, sorted by the numbers in their names, read as `load_image`
  reads an image: EXIF orientation applied, alpha composited on white). A video's display
  rotation (phones) is applied. `frames=(A, B)` and `every` are applied while decoding, which
  stops after frame B; only the kept frames are converted.
- Writing: .mp4, .mov, .mkv and .avi are H.264 (libx264, yuv420p, BT.709, `crf`), .webm is VP9
  (libvpx-vp9, `crf`), .gif is Pillow's (an adaptive palette per frame; GIF stores frame times in
  hundredths of a second, so each frame's time is rounded such that the total stays exact). A
  file is written to a temporary name beside it and renamed when complete (`atomic_path`).
- Audio is copied packet by packet (no re-encoding) from `audio_from` when the output's
  container takes its codec, cut to `audio_range` at the nearest audio packet (about 20 ms for
  AAC); otherwise, and for GIFs and folders, it is dropped with one notice.
- Failures are one `ImageError` line naming the file (a damaged or truncated video is refused,
  naming the first frame that could not be read) and `ConfigError` for a bad setting.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
from PIL import Image

from jaxmosaic.errors import ConfigError, ImageError, JaxmosaicError
from jaxmosaic.io.files import atomic_path, first_line
from jaxmosaic.io.folders import OutputFolder
from jaxmosaic.io.images import SOFTWARE, image_size, load_image, save_image
from jaxmosaic.resources import format_bytes, host_available_bytes

__all__ = [
    "FOLDER_FPS",
    "FRAME_SUFFIXES",
    "VIDEO_SUFFIXES",
    "VideoInfo",
    "crf_limit",
    "is_video_file",
    "parse_frames",
    "probe_video",
    "read_video",
    "video_software",
    "write_frames",
    "write_output",
    "write_video",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".gif", ".mkv", ".avi")
"""The suffixes taken for video files (anything else is a folder of frames)."""

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""The image files a folder of frames is made of."""

FOLDER_FPS = Fraction(24)
"""The frame rate of a folder of frames unless one is given."""

# suffix -> (FFmpeg muxer, encoder, the largest crf the encoder takes)
_CONTAINERS = {
    ".mp4": ("mp4", "libx264", 51),
    ".mov": ("mov", "libx264", 51),
    ".mkv": ("matroska", "libx264", 51),
    ".avi": ("avi", "libx264", 51),
    ".webm": ("webm", "libvpx-vp9", 63),
}
_GIF_TICK = Fraction(1, 100)  # GIF frame times are whole hundredths of a second
_FRAME_NAME = "frame_{:06d}.png"
_FRAMES_KIND = "video-frames"


def _quiet(line: str) -> None:
    """The default `say`: tell nothing."""


class VideoInfo(NamedTuple):
    """What a video file or a folder of frames holds (or, from `read_video`, what was read)."""

    count: int  # frames
    fps: Fraction  # frames per second
    width: int  # pixels, after the display rotation
    height: int
    audio: bool  # the file has an audio stream (never for a folder)
    path: Path
    folder: bool  # a folder of frames rather than a video file


def is_video_file(path: str | os.PathLike) -> bool:
    """Whether `path` names a video file (by its suffix, `VIDEO_SUFFIXES`) rather than a folder of frames."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def crf_limit(path: str | os.PathLike) -> int | None:
    """The largest `crf` `write_video` takes for `path` (by its suffix: 51 for H.264, 63 for VP9);
    None where it plays no part (a GIF, a folder of frames, an unknown suffix)."""
    return _CONTAINERS.get(Path(path).suffix.lower(), (None, None, None))[2]


def parse_frames(text: str) -> tuple[int, int | None]:
    """The range "A:B" of frames: 0-based, B excluded, either side may be left out ("10:", ":50",
    ":"); (A, B) with B None for "to the end". Raises ConfigError("frames", ...) for other text."""
    match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if match is None:
        raise ConfigError("frames", f"{text!r}: expected A:B with whole numbers, 0-based, B excluded (e.g. 0:48, 10:, :50)")
    start = int(match[1]) if match[1] else 0
    end = int(match[2]) if match[2] else None
    if end is not None and end <= start:
        raise ConfigError("frames", f"{text!r}: the end {end} must be after the start {start}")
    return start, end


def _check_range(frames: tuple[int, int | None], every: int) -> tuple[int, int | None]:
    start, end = frames
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError("every", f"{every!r}: expected a whole number of at least 1")
    if not isinstance(start, int) or start < 0 or (end is not None and (not isinstance(end, int) or end <= start)):
        raise ConfigError("frames", f"{frames!r}: expected (A, B) with 0 <= A < B, or B None")
    return start, end


def _as_rate(fps, field: str = "fps") -> Fraction:
    """`fps` (int, float, text or Fraction) as a positive Fraction; a float as the closest
    fraction with a denominator of at most 1001 (29.97 -> 2997/100)."""
    try:
        rate = Fraction(fps).limit_denominator(1001) if isinstance(fps, float) else Fraction(fps)
    except (TypeError, ValueError, ZeroDivisionError):
        raise ConfigError(field, f"{fps!r}: expected a frame rate such as 24, 29.97 or 30000/1001") from None
    if not 0 < rate <= 1000:
        raise ConfigError(field, f"{fps!r}: expected a frame rate above 0 and at most 1000")
    return rate


# --- reading ------------------------------------------------------------------------------------


def _natural_key(path: Path) -> list:
    """Sort key: the numbers in a name compare as numbers (frame_2 before frame_10)."""
    return [int(part) if index % 2 else part.lower() for index, part in enumerate(re.split(r"(\d+)", path.name))]


def _frame_files(folder: Path) -> list[Path]:
    files = [entry for entry in folder.iterdir() if not entry.name.startswith(".") and entry.is_file()
             and entry.suffix.lower() in FRAME_SUFFIXES]
    if not files:
        raise ImageError(f"{folder}: holds no frames (no {', '.join(FRAME_SUFFIXES)} files)")
    return sorted(files, key=_natural_key)


def _probe_folder(folder: Path, fps: Fraction) -> tuple[VideoInfo, list[Path]]:
    files = _frame_files(folder)
    width, height = image_size(files[0])
    for file in files[1:]:
        size = image_size(file)
        if size != (width, height):
            raise ImageError(f"{file}: is {size[0]}x{size[1]}, but the frames before it in {folder} are {width}x{height}")
    info = VideoInfo(count=len(files), fps=fps, width=width, height=height, audio=False, path=folder, folder=True)
    return info, files


def _reason(error: BaseException) -> str:
    """FFmpeg's words for an error, without PyAV's errno and file name around them."""
    return getattr(error, "strerror", None) or first_line(error)


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty")
    try:
        container = av.open(str(path), metadata_errors="replace")
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except (av.FFmpegError, OSError) as error:
        raise ImageError(f"{path}: not a video FFmpeg can read ({_reason(error)})") from None
    if not container.streams.video:
        container.close()
        raise ImageError(f"{path}: holds no video stream")
    return container


def _rotated(pixels: np.ndarray, rotation: int) -> np.ndarray:
    """A decoded frame as it is shown: `rotation` degrees counter-clockwise (a display matrix's)."""
    return np.rot90(pixels, k=round(rotation / 90) % 4) if rotation else pixels


def _probe_file(path: Path, fps: Fraction | None) -> VideoInfo:
    with _open(path) as container:
        stream = container.streams.video[0]
        count, ticks = stream.frames, 0
        gif = stream.codec_context.name == "gif"
        try:
            if count <= 0 or gif:  # the container does not say (Matroska, WebM), or frame times vary (GIF)
                count = 0
                for packet in container.demux(stream):
                    if packet.size:
                        count += 1
                        ticks += packet.duration or 0
                container.seek(0)
            first = next(container.decode(stream), None)
        except (av.FFmpegError, OSError) as error:
            raise ImageError(f"{path}: cannot read the video ({_reason(error)})") from None
        if first is None or count <= 0:
            raise ImageError(f"{path}: holds no video frames")
        height, width = _rotated(np.empty((first.height, first.width)), first.rotation).shape
        if fps is None:
            if gif and ticks:
                fps = (Fraction(count) / (ticks * stream.time_base)).limit_denominator(1001)
            else:
                fps = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not fps:
                raise ImageError(f"{path}: the video gives no frame rate; give one")
        return VideoInfo(count=count, fps=Fraction(fps), width=width, height=height, audio=bool(container.streams.audio),
                         path=path, folder=False)


def probe_video(path: str | os.PathLike, *, fps: Fraction | float | None = None) -> VideoInfo:
    """What a video file or a folder of frames holds, from the headers (a file whose container
    does not count its frames, and a GIF, are demuxed without decoding; one frame is decoded).

    Args:
      path: a video file, or a folder of numbered frames.
      fps: the frame rate to report instead of the file's (a folder's is `FOLDER_FPS` unless given).

    Returns:
      A `VideoInfo`.

    Raises:
      ImageError: the file is missing, empty, no video, holds no video stream or no frames; a
        folder holds no frames, or a frame of another size than those before it (named).
    """
    path = Path(path)
    rate = None if fps is None else _as_rate(fps)
    if path.is_dir():
        return _probe_folder(path, rate or FOLDER_FPS)[0]
    return _probe_file(path, rate)


def _check_memory(info: VideoInfo, count: int) -> None:
    needed = count * info.width * info.height * 3
    free = host_available_bytes()
    if free is not None and needed > free:
        raise ImageError(f"{info.path}: {count} frames of {info.width}x{info.height} need about {format_bytes(needed)} "
                         f"but only {format_bytes(free)} of memory is free; read fewer (frames A:B, every N)")


def _selected(info: VideoInfo, start: int, end: int | None, every: int) -> range:
    stop = info.count if end is None else min(end, info.count)
    if start >= stop:
        raise ImageError(f"{info.path}: the frames {start}:{'' if end is None else end} select none of its {info.count} frames")
    return range(start, stop, every)


def _decode(path: Path, info: VideoInfo, keep: range) -> np.ndarray:
    out = np.empty((len(keep), info.height, info.width, 3), np.uint8)
    index, kept = -1, 0
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index >= keep.stop:
                    break
                if index < keep.start or (index - keep.start) % keep.step:
                    continue
                pixels = _rotated(frame.to_ndarray(format="rgb24"), frame.rotation)
                if pixels.shape != out.shape[1:]:
                    raise ImageError(f"{path}: frame {index} is {pixels.shape[1]}x{pixels.shape[0]}, but the video is "
                                     f"{info.width}x{info.height}")
                out[kept] = pixels
                kept += 1
        except (av.FFmpegError, OSError) as error:
            raise ImageError(f"{path}: cannot decode frame {index + 1} (0-based) ({_reason(error)})") from None
    if kept < len(keep):
        raise ImageError(f"{path}: truncated or damaged: only {index + 1} of its {info.count} frames could be read")
    return out


def read_video(path: str | os.PathLike, *, frames: tuple[int, int | None] = (0, None), every: int = 1,
               fps: Fraction | float | None = None) -> tuple[np.ndarray, VideoInfo]:
    """Read a video file or a folder of frames.

    Args:
      path: a video file (any container FFmpeg reads) or a folder of numbered frames.
      frames: (A, B): the frames A (0-based) up to B (excluded; None: to the end), as `parse_frames` gives.
      every: keep every Nth frame of the range (A, A + N, ...).
      fps: the source's frame rate instead of the file's (a folder's is `FOLDER_FPS` unless given).

    Returns:
      (frames, info): uint8 (N, H, W, 3) RGB (alpha dropped, palettes converted, the display
      rotation applied), and the `VideoInfo` of what was read (count N, fps the source's / every).

    Raises:
      ImageError: as `probe_video`; a range that selects no frame; a frame that cannot be decoded
        or a file that ends before its last frame (refused, naming the frame); more frames than
        the free memory holds (refused before decoding).
      ConfigError: a malformed range, `every` or `fps`.
    """
    path = Path(path)
    start, end = _check_range(frames, every)
    rate = None if fps is None else _as_rate(fps)
    if path.is_dir():
        info, files = _probe_folder(path, rate or FOLDER_FPS)
        keep = _selected(info, start, end, every)
        _check_memory(info, len(keep))
        pixels = np.stack([np.round(load_image(files[index]) * 255.0).astype(np.uint8) for index in keep])
    else:
        info = _probe_file(path, rate)
        keep = _selected(info, start, end, every)
        _check_memory(info, len(keep))
        pixels = _decode(path, info, keep)
    return pixels, info._replace(count=len(pixels), fps=info.fps / every)


# --- writing ------------------------------------------------------------------------------------


def _as_frames(frames, path: Path) -> np.ndarray:
    """(N, H, W, 3) uint8 from uint8 frames or float frames in [0, 1] (clipped, rounded)."""
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise ImageError(f"{path}: expected frames of shape (N, H, W, 3) with N, H, W >= 1, got {array.shape}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ImageError(f"{path}: expected uint8 frames or float frames in [0, 1], got {array.dtype}")
    if not np.isfinite(array).all():
        raise ImageError(f"{path}: the frames hold NaN or infinite values")
    return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def _gif_times(count: int, fps: Fraction) -> list[int]:
    """Milliseconds of each GIF frame: whole hundredths of a second whose running total stays
    within half a hundredth of the exact one, so the clip's length and mean rate are kept."""
    ends = [round((index + 1) / (fps * _GIF_TICK)) for index in range(count)]
    return [10 * max(end - begin, 1) for begin, end in zip([0, *ends[:-1]], ends, strict=True)]


def _write_gif(tmp: Path, frames: np.ndarray, fps: Fraction, path: Path, say: Callable[[str], None]) -> None:
    if fps > 50:
        say(f"{path}: GIF players show at most 50 frames per second; {float(fps):g} frames per second will play slower")
    pictures = [Image.fromarray(frame).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
                for frame in frames]
    pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], loop=0, disposal=1,
                     duration=_gif_times(len(frames), fps), optimize=False, comment=SOFTWARE.encode())


class _Audio(NamedTuple):
    """An input's audio stream, to be copied into an output."""

    container: av.container.InputContainer
    stream: av.audio.stream.AudioStream
    start: Fraction | None  # seconds on the input's timeline, or None for the whole track
    end: Fraction | None


def _audio_source(path: Path, source: Path, audio_range: tuple[float, float] | None,
                  say: Callable[[str], None]) -> _Audio | None:
    """The audio stream of `source` to copy into `path`; None when it has none, or with one
    notice when it cannot be read."""
    try:
        container = av.open(str(source), metadata_errors="replace")
    except (av.FFmpegError, OSError) as error:
        say(f"{path}: no sound: cannot read the audio of {source} ({_reason(error)})")
        return None
    if not container.streams.audio:
        container.close()
        return None
    start, end = (None, None) if audio_range is None else (Fraction(audio_range[0]), Fraction(audio_range[1]))
    return _Audio(container=container, stream=container.streams.audio[0], start=start, end=end)


def _takes(muxer: str, codec: str) -> bool:
    """Whether FFmpeg's `muxer` writes streams of `codec`."""
    with av.open(os.devnull, "w", format=muxer) as container:
        return codec in container.supported_codecs


def _has_audio(source: Path) -> bool:
    """Whether `source` is a file FFmpeg reads that has an audio stream."""
    try:
        with av.open(str(source), metadata_errors="replace") as container:
            return bool(container.streams.audio)
    except (av.FFmpegError, OSError):
        return False


def _audio_packets(audio: _Audio) -> Iterator[tuple[Fraction, av.Packet]]:
    """(output time in seconds, packet) of the packets to copy, shifted so the range starts at 0."""
    base = audio.stream.time_base
    shift = 0 if audio.start is None else round(audio.start / base)
    for packet in audio.container.demux(audio.stream):
        if packet.dts is None or packet.pts is None:
            continue
        begin = packet.pts * base
        if audio.start is not None and (begin + (packet.duration or 0) * base <= audio.start or begin >= audio.end):
            continue
        packet.pts -= shift
        packet.dts -= shift
        yield (packet.pts * base, packet)


@contextlib.contextmanager
def _copied_audio(path: Path, source: Path | None, audio_range: tuple[float, float] | None, muxer: str,
                  say: Callable[[str], None]) -> Iterator[tuple[av.audio.stream.AudioStream, Iterator] | None]:
    """The audio of `source` to copy into `path` (written by `muxer`): its stream and its (time,
    packet) pairs, the input kept open meanwhile; None, with one notice, when there is none to copy."""
    audio = None if source is None else _audio_source(path, source, audio_range, say)
    if audio is None:
        yield None
        return
    try:
        codec = audio.stream.codec_context.name
        packets = _audio_packets(audio)
        fits = _takes(muxer, codec)
        first = next(packets, None) if fits else None
        if not fits:
            say(f"{path}: no sound: the {codec} audio of {source} does not fit a {path.suffix} file")
        elif first is None:
            span = "" if audio.start is None else f" from {float(audio.start):g} to {float(audio.end):g} s"
            say(f"{path}: no sound: the audio of {source} holds no packet{span}")
        yield None if first is None else (audio.stream, itertools.chain([first], packets))
    finally:
        audio.container.close()


def _encode(tmp: Path, frames: np.ndarray, fps: Fraction, crf: int, muxer: str, encoder: str,
            audio: tuple[av.audio.stream.AudioStream, Iterator[tuple[Fraction, av.Packet]]] | None) -> None:
    """Encode `frames` into the file `tmp` with `muxer` and `encoder`, copying in the packets of
    `audio` (the input's stream, and the (time, packet) pairs `_audio_packets` gives)."""
    height, width = frames.shape[1:3]
    with av.open(str(tmp), "w", format=muxer) as container:
        container.metadata["comment"] = SOFTWARE
        options = {"crf": str(crf)}
        if encoder == "libvpx-vp9":
            options |= {"b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"}
        if muxer in ("mp4", "mov"):
            container.options["movflags"] = "+faststart"
        stream = container.add_stream(encoder, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        context = stream.codec_context
        context.colorspace = context.color_primaries = context.color_trc = 1  # BT.709
        output = None if audio is None else container.add_stream_from_template(audio[0])
        container.start_encoding()
        pending = None if audio is None else audio[1]
        waiting = None if pending is None else next(pending, None)
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p", dst_colorspace="itu709")
            frame.pts = index
            container.mux(stream.encode(frame))
            while waiting is not None and waiting[0] <= index / fps:  # interleaved: the muxer holds little
                waiting[1].stream = output
                container.mux(waiting[1])
                waiting = next(pending, None)
        container.mux(stream.encode())
        while waiting is not None:
            waiting[1].stream = output
            container.mux(waiting[1])
            waiting = next(pending, None)


def _even(frames: np.ndarray, path: Path, say: Callable[[str], None]) -> np.ndarray:
    """H.264 in yuv420p takes even sizes only: an odd side grows by one pixel, its edge repeated."""
    height, width = frames.shape[1:3]
    if height % 2 == 0 and width % 2 == 0:
        return frames
    say(f"{path}: H.264 needs even sizes; {width}x{height} padded to {width + width % 2}x{height + height % 2} "
        "by repeating the last column or row")
    return np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def write_video(path: str | os.PathLike, frames, *, fps: Fraction | float, crf: int = 18,
                audio_from: str | os.PathLike | None = None, audio_range: tuple[float, float] | None = None,
                say: Callable[[str], None] = _quiet) -> None:
    """Write frames as a video file, atomically: the container by the suffix (see the module doc).

    Args:
      path: the file to write (.mp4, .mov, .mkv, .avi: H.264; .webm: VP9; .gif).
      frames: uint8 (N, H, W, 3), or float in [0, 1].
      fps: frames per second (a Fraction keeps 30000/1001 exact).
      crf: the encoder's constant rate factor (0 = lossless for H.264; 0 to 51, VP9 0 to 63); not used for GIF.
      audio_from: a video whose audio stream is copied in when the container takes its codec.
      audio_range: (start, end) seconds of that audio to keep (at the nearest audio packet).
      say: gets one line for each notice (padding to even sizes, sound dropped).

    Raises:
      ImageError: an unknown suffix, frames of a wrong shape or type, or an encoder's failure (one
        line naming the file; nothing is left at `path` or beside it). `path` is never `audio_from`.
      ConfigError: `fps` or `crf` out of range.
      DiskFullError: the disk filled (the file that was at `path` is unchanged).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ImageError(f"{path}: unknown video extension {path.suffix!r} (use {', '.join(VIDEO_SUFFIXES)})")
    pixels = _as_frames(frames, path)
    rate = _as_rate(fps)
    muxer, encoder, most = _CONTAINERS.get(suffix, (None, None, 0))
    if encoder is not None and (isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= most):
        raise ConfigError("crf", f"{crf!r}: expected a whole number from 0 to {most} for {encoder}")
    source = None if audio_from is None else Path(audio_from)
    if audio_range is not None and not 0 <= audio_range[0] < audio_range[1]:
        raise ConfigError("audio_range", f"{audio_range!r}: expected (start, end) seconds with 0 <= start < end")
    inputs = [] if source is None else [source]
    try:
        with atomic_path(path, inputs) as tmp:
            if encoder is None:
                if source is not None:
                    say(f"{path}: no sound: a GIF holds no audio (the audio of {source} is dropped)")
                _write_gif(tmp, pixels, rate, path, say)
                return
            if encoder == "libx264":
                pixels = _even(pixels, path, say)
            with _copied_audio(path, source, audio_range, muxer, say) as copied:
                _encode(tmp, pixels, rate, crf, muxer, encoder, copied)
    except JaxmosaicError:  # a refusal, or a full disk (`DiskFullError`): one line already
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        raise ImageError(f"{path}: cannot write the video{' with ' + encoder if encoder else ''} ({_reason(error)})") from None


def video_software(path: str | os.PathLike) -> str:
    """The software a video file says wrote it ("" when it does not say or is no video FFmpeg
    reads): `write_video` writes "jaxmosaic VERSION" into the container's comment."""
    try:
        with av.open(str(path), metadata_errors="replace") as container:
            return next((value for key, value in container.metadata.items() if key.lower() == "comment"), "")
    except (av.FFmpegError, OSError):
        return ""


def write_frames(folder: str | os.PathLike, frames, *, start: int = 0, say: Callable[[str], None] = _quiet) -> list[Path]:
    """Write frames as numbered PNGs (`frame_000001.png`, ... 1-based) into a folder jaxmosaic owns.

    The folder carries jaxmosaic's marker (`OutputFolder`); an existing folder without it is
    refused. With `start` 0 the folder ends up holding exactly these frames (the frames an earlier
    run wrote there and this one did not are removed); with `start` > 0 the frames are added as
    numbers start + 1, ... and nothing is removed.

    Args:
      folder: the folder (created if missing).
      frames: uint8 (N, H, W, 3), or float in [0, 1].
      start: the 0-based index of the first frame.
      say: gets one line for each notice.

    Returns:
      The paths written, in order.
    """
    folder = Path(folder)
    pixels = _as_frames(frames, folder)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigError("start", f"{start!r}: expected a whole number of at least 0")
    output = OutputFolder(folder, _FRAMES_KIND, say=say)
    names = [_FRAME_NAME.format(start + index + 1) for index in range(len(pixels))]
    output.expect(names)
    written = [save_image(output.file(name), frame.astype(np.float32) / 255.0) for name, frame in zip(names, pixels, strict=True)]
    if start == 0:
        output.finish()
    return written


def write_output(path: str | os.PathLike, frames, *, fps: Fraction | float, crf: int = 18,
                 audio_from: str | os.PathLike | None = None, audio_range: tuple[float, float] | None = None,
                 say: Callable[[str], None] = _quiet) -> list[Path]:
    """Write frames as a video file when `path` has a video suffix (`write_video`), else as a folder
    of numbered frames (`write_frames`, where `fps` and `crf` play no part and audio is dropped
    with a notice). Returns the paths written: [path], or the frames."""
    path = Path(path)
    if is_video_file(path):
        write_video(path, frames, fps=fps, crf=crf, audio_from=audio_from, audio_range=audio_range, say=say)
        return [path]
    if audio_from is not None and _has_audio(Path(audio_from)):
        say(f"{path}: no sound: a folder of frames holds no audio (the audio of {audio_from} is dropped)")
    return write_frames(path, frames, say=say)
