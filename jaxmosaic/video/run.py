"""`jaxmosaic video` from its settings to its files: a video (or a folder of frames) in, the same
frames in the style of one or more images out (Ruder, Dosovitskiy and Brox 2016).

Before any work: the outputs are checked (none is an input or a style, a frames folder carries
jaxmosaic's marker, the checkpoint folder too) and the memory the run needs (the frames, the
flows and masks, `video_memory`'s optimisation) is estimated from the input's header and refused
when it does not fit. Then the frames are read, fitted to `--size`, the flows and consistency
masks computed once (or read from `--flow-dir`) and, with `--checkpoint`, cached there under a key
of the frames, their size and the flow method, so a resume with other settings never reuses them.

A checkpoint folder (kind "video-checkpoint") holds `meta.json` (the settings a resumed run must
keep and the SHA-256 of every input, as `style`'s checkpoints do, and the --steps, which may
change), the flows, and the finished frames as float32 `passP-frameNNNNNN.npy`, written as the
frame finishes (a frame's file of pass P - 2 is removed once its pass P is written: a resume needs
only the latest pass and the one before, reads only those and removes any older): `--resume` reads them and never computes a finished
frame again; a resume with other --steps keeps the finished frames and says so. Ctrl-C stops after the frame being optimised, writes what is
finished (into the checkpoint and, for a frames-folder output, those frames) and exits with 130;
a loss that stops being finite is one line. With several processes (`--coordinator`,
`--num-processes`, `--process-id`), each optimises its contiguous segment of the frames and
process 0 writes the outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import jax
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from jaxmosaic.cli._common import output_name, vgg_params, write_metrics
from jaxmosaic.cli.console import echo, err_console, error_line
from jaxmosaic.config import ConfigError, settings_dict
from jaxmosaic.distributed import DistributedConfig, agree, start_distributed
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.image import fit_shape, resize
from jaxmosaic.io.files import atomic_path
from jaxmosaic.io.folders import OutputFolder
from jaxmosaic.io.images import load_image, save_image
from jaxmosaic.io.outputs import check_outputs
from jaxmosaic.io.schemas import InputFile, read_model
from jaxmosaic.pictures import grid
from jaxmosaic.resources import check_memory, memory_budget
from jaxmosaic.sharding import device_mesh
from jaxmosaic.stages import Diverged
from jaxmosaic.video.flow import load_flow_dir
from jaxmosaic.video.io import (
    VIDEO_SUFFIXES,
    VideoInfo,
    crf_limit,
    is_video_file,
    probe_video,
    read_video,
    video_software,
    write_frames,
    write_output,
)
from jaxmosaic.video.stylize import (
    VideoConfig,
    VideoFlows,
    VideoProgress,
    stylize_video,
    video_flows,
    video_memory,
)
from jaxmosaic.video.temporal import temporal_error
from jaxmosaic.weights import sha256_file

if TYPE_CHECKING:
    from jaxmosaic.cli.video import VideoRunConfig

__all__ = ["flow_colors", "flow_picture", "frame_strip"]  # and, for the command line, VideoJob and run_video

CHECKPOINT_KIND = "video-checkpoint"
FRAMES_KIND = "video-frames"  # the folder `write_frames` writes
VIDEO_CHECKPOINT_FORMAT = "jaxmosaic-video-checkpoint/1"
STRIP_FRAMES = 6  # frames an OUT-strip.png shows at most


class VideoJob(NamedTuple):
    """A `jaxmosaic video` run, as `run_video` takes it."""

    input: Path  # a video file or a folder of numbered frames
    styles: Sequence[Path]  # the style images
    out: Path  # a video file (by its suffix) or a frames folder
    config: VideoConfig  # the stylisation's settings
    weights: str | None = None  # the --weights given ("random", a path, or None for the lookup)


class _Meta(BaseModel):
    """`meta.json` of a video checkpoint: what the run was; the frames themselves are the files."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["jaxmosaic-video-checkpoint/1"]
    technique: Literal["video"]
    settings: dict[str, Any] = Field(max_length=1000)
    inputs: list[InputFile] = Field(max_length=100_000)
    count: int = Field(ge=1, le=10_000_000)
    shape: list[int] = Field(min_length=2, max_length=2)
    steps: list[int] | None = Field(default=None, min_length=1, max_length=100)  # --steps of the run that wrote it


# --- what a run is, for its checkpoint -----------------------------------------------------------

def _input_files(path: Path) -> list[Path]:
    """The files an input stands for: itself, or a frames folder's visible files."""
    if path.is_dir():
        return sorted(entry for entry in path.iterdir() if entry.is_file() and not entry.name.startswith("."))
    return [path]


def _input_record(path: Path) -> InputFile:
    """A file with its SHA-256; a folder with one digest over its files' names and digests."""
    if not path.is_dir():
        return InputFile(path=str(path), sha256=sha256_file(path))
    digest = hashlib.sha256()
    for entry in _input_files(path):
        digest.update(f"{entry.name}\0{sha256_file(entry)}\n".encode())
    return InputFile(path=str(path), sha256=digest.hexdigest())


def _settings(job: VideoJob, run: VideoRunConfig, shape: tuple[int, int], count: int) -> dict:
    """The settings a resumed run must keep: the stylisation's, the frames read and how the flows are made."""
    return {**settings_dict(job.config, resumable_only=True), "weights": job.weights or "lookup",
            "frames": None if run.frames is None else list(run.frames), "every": run.every,
            "fps": None if run.fps is None else str(run.fps),
            "flow_dir": None if run.flow_dir is None else str(Path(run.flow_dir).resolve()), "size": list(shape),
            "count": count}


class _Checkpoint:
    """A video checkpoint folder (see the module doc): meta, cached flows, finished frames."""

    def __init__(self, path: Path, meta: _Meta, *, resume: bool):
        self.path = Path(path)
        self.meta = meta
        self.held: _Meta | None = None  # the meta a resume found
        if resume:  # before the folder is claimed: a resume from nothing leaves nothing behind
            if not (self.path / "meta.json").is_file():
                raise ConfigError("resume", f"{self.path}: holds no video checkpoint (no meta.json); run once "
                                            "without --resume to start one")
            self.held = read_model(_Meta, self.path / "meta.json")
            self._check_same_run(self.held)
        self.folder = OutputFolder(self.path, CHECKPOINT_KIND, say=echo)
        if resume:
            self.folder.written = set(self.folder.listed)
        else:
            self.folder.clear()
        with atomic_path(self.folder.file("meta.json")) as tmp:
            tmp.write_text(meta.model_dump_json(indent=2) + "\n")

    def _check_same_run(self, held: _Meta) -> None:
        changed = sorted(name for name in {**held.settings, **self.meta.settings}
                         if held.settings.get(name) != self.meta.settings.get(name))
        if [item.path for item in held.inputs] != [item.path for item in self.meta.inputs]:
            changed.append("inputs")
        if changed:
            raise ConfigError("resume", f"the checkpoint {self.path} was made with other settings ({', '.join(changed)}); "
                                        "start a new one")
        for then, now in zip(held.inputs, self.meta.inputs):
            if then.sha256 != now.sha256:
                raise ConfigError("resume", f"{now.path} changed since the checkpoint {self.path} was made (other content "
                                            "under the same name); start a new checkpoint")

    def _write(self, name: str, save: Callable[[Any], None]) -> None:
        with atomic_path(self.folder.file(name)) as tmp, open(tmp, "wb") as handle:
            save(handle)

    def save_frame(self, pass_index: int, frame: int, image: np.ndarray) -> None:
        """Keep a finished frame (float32, exactly as the next frames and a resume use it), then
        drop its file of two passes before: a resume needs only the latest pass and the one before
        it (where that pass's other frames start from)."""
        self._write(f"pass{pass_index}-frame{frame:06d}.npy", lambda handle: np.save(handle, np.asarray(image, np.float32)))
        if pass_index >= 2:
            self._drop(f"pass{pass_index - 2}-frame{frame:06d}.npy")

    def _drop(self, name: str) -> None:
        """Remove a file this folder lists as jaxmosaic's (`OutputFolder.ours`: its name's form, a
        regular file); it is no longer one this run wrote, so `close` leaves it off the marker."""
        if name in self.folder.listed and self.folder.ours(name):
            (self.path / name).unlink()
        self.folder.written.discard(name)

    def _frame_files(self) -> dict[str, tuple[int, int]]:
        """{name: (pass, frame)} of the finished frames' files kept."""
        found = {}
        for name in sorted(self.folder.listed):
            if name.endswith(".npy") and self.folder.ours(name):
                pass_text, frame_text = name.removesuffix(".npy").split("-frame")
                found[name] = (int(pass_text.removeprefix("pass")), int(frame_text))
        return found

    def latest_pass(self) -> int | None:
        """The latest pass the checkpoint holds a finished frame of, or None."""
        return max((pass_index for pass_index, _ in self._frame_files().values()), default=None)

    def drop_before(self, pass_index: int) -> None:
        """Remove the finished frames of the passes before `pass_index` (those a checkpoint written
        before the two latest passes were the only ones kept still holds)."""
        for name, (held, _) in self._frame_files().items():
            if held < pass_index:
                self._drop(name)

    def frames(self, passes: Sequence[int]) -> dict[int, dict[int, np.ndarray]]:
        """{pass: {frame: image}} of the finished frames kept of these passes (only these are
        read), checked against the run's shape."""
        found: dict[int, dict[int, np.ndarray]] = {}
        for name, (pass_index, frame) in self._frame_files().items():
            if pass_index not in passes:
                continue
            try:
                image = np.load(self.path / name, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise JaxmosaicError(f"{self.path / name}: cannot read the finished frame ({type(err).__name__})") from None
            if image.dtype != np.float32 or image.shape[:2] != tuple(self.meta.shape) or not 0 <= frame < self.meta.count:
                raise JaxmosaicError(f"{self.path / name}: a frame of {image.shape} {image.dtype}, not one of this run's "
                                     f"{self.meta.count} frames of {self.meta.shape[1]}x{self.meta.shape[0]} float32")
            found.setdefault(pass_index, {})[frame] = image
        return found

    def flows(self, key: str) -> VideoFlows | None:
        """The flows and masks cached under `key`, or None."""
        name = f"flows-{key}.npz"
        if name not in self.folder.listed or not self.folder.ours(name):
            return None
        try:
            with np.load(self.path / name, allow_pickle=False) as data:
                arrays = {entry: data[entry] for entry in data.files}
        except (OSError, ValueError) as err:
            raise JaxmosaicError(f"{self.path / name}: cannot read the cached flows ({type(err).__name__})") from None
        parts: dict[str, dict] = {"flow": {}, "mask": {}}
        for entry, array in arrays.items():
            kind, a, b = entry.split("_")
            parts[kind][(int(a), int(b))] = array
        return VideoFlows(flows=parts["flow"], masks=parts["mask"])

    def save_flows(self, key: str, flows: VideoFlows) -> None:
        """Cache the flows and masks under `key` (only this key's file is kept)."""
        arrays = {f"flow_{a}_{b}": np.asarray(flow, np.float32) for (a, b), flow in flows.flows.items()}
        arrays.update({f"mask_{a}_{b}": np.asarray(mask, np.float32) for (a, b), mask in flows.masks.items()})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        self._write(f"flows-{key}.npz", lambda handle: handle.write(buffer.getvalue()))

    def close(self) -> None:
        """Drop the files of earlier runs this run no longer needs."""
        self.folder.finish()


# --- reading ------------------------------------------------------------------------------------

def _range(run: VideoRunConfig, count: int) -> tuple[int, int]:
    start, end = run.frames or (0, None)
    stop = count if end is None else min(end, count)
    if start >= stop:
        raise ConfigError("frames", f"{start}:{'' if end is None else end} holds none of the {count} frames of the input "
                                    f"(0-based: 0:{count} is all of them)")
    return start, stop


def _output_shape(info: VideoInfo, config: VideoConfig) -> tuple[int, int]:
    """The frames' (height, width) once fitted to the longest side of the last scale."""
    return fit_shape(info.height, info.width, config.sizes[-1])


def _fitted(frames: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 NHWC frames as float32 in [0, 1] at `shape`."""
    images = frames.astype(np.float32) / 255.0
    if images.shape[1:3] == tuple(shape):
        return images
    return np.stack([np.clip(np.asarray(resize(image, *shape)), 0.0, 1.0) for image in images])


def _memory(job: VideoJob, shape: tuple[int, int], count: int) -> int:
    """Bytes the run holds at its peak: the optimisation, plus the frames (read, fitted, stylised)
    and the flows and masks of every pair."""
    height, width = shape
    pairs = 2 * count * len(job.config.long_term) + 2 * count
    return video_memory(job.config, shape, count) + count * height * width * 3 * (1 + 4 + 4) + pairs * height * width * 3 * 4


def _flows_digest(flows: dict) -> str:
    """A digest of a user's flows (--flow-dir), so that the cache of a resume holds the flows of
    the .flo files as they are now."""
    digest = hashlib.sha256()
    for key in sorted(flows):
        digest.update(repr(key).encode())
        digest.update(np.ascontiguousarray(flows[key], np.float32).tobytes())
    return digest.hexdigest()[:16]


def _flows_key(record: dict, shape: tuple[int, int], method: str) -> str:
    text = json.dumps({"input": record["input"], "frames": record["frames"], "every": record["every"], "shape": list(shape),
                       "method": method, "long_term": record["long_term"], "passes": record["passes"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- pictures -----------------------------------------------------------------------------------

def flow_colors(flow: np.ndarray, *, largest: float | None = None) -> np.ndarray:
    """A flow (H, W, 2; dx, dy) as the usual colour-wheel picture: the hue is the direction, the
    saturation the length (`largest` or the longest vector of this flow is full colour; no motion
    is white). Float32 (H, W, 3) in [0, 1]."""
    dx, dy = np.asarray(flow[..., 0], np.float64), np.asarray(flow[..., 1], np.float64)
    length = np.hypot(dx, dy)
    scale = largest if largest is not None else max(float(length.max()), 1e-9)
    hue = (np.arctan2(-dy, -dx) / np.pi + 1.0) / 2.0  # 0..1 around the wheel
    saturation = np.clip(length / scale, 0.0, 1.0)
    sector = np.floor(hue * 6.0) % 6
    fraction = hue * 6.0 - np.floor(hue * 6.0)
    rise, fall = fraction, 1.0 - fraction
    one, zero = np.ones_like(hue), np.zeros_like(hue)
    wheel = np.select([sector[..., None] == k for k in range(6)],
                      [np.stack(channels, -1) for channels in ((one, rise, zero), (fall, one, zero), (zero, one, rise),
                                                               (zero, fall, one), (rise, zero, one), (one, zero, fall))])
    return (1.0 - saturation[..., None] * (1.0 - wheel)).astype(np.float32)


def frame_strip(outputs: np.ndarray, inputs: np.ndarray, *, count: int = STRIP_FRAMES, gap: int = 4) -> np.ndarray:
    """Up to `count` evenly spaced frames (first and last included): each output frame above its
    input frame. Float32 HWC in [0, 1] on white."""
    chosen = np.unique(np.linspace(0, len(outputs) - 1, min(count, len(outputs))).round().astype(int))
    cells = [outputs[i] for i in chosen] + [inputs[i] for i in chosen]
    return grid(cells, len(chosen), gap=gap)


def flow_picture(first: np.ndarray, second: np.ndarray, flow: np.ndarray, mask: np.ndarray, *, gap: int = 4) -> np.ndarray:
    """One pair of frames: the two frames, the flow from the second to the first as colours, and
    its consistency mask (white: used by the temporal loss). Float32 HWC in [0, 1] on white."""
    masked = np.repeat(np.clip(np.asarray(mask, np.float32), 0.0, 1.0)[..., None], 3, axis=-1)
    return grid([first, second, flow_colors(flow), masked], 4, gap=gap)


# --- the run ------------------------------------------------------------------------------------

class _Bar:
    """A rich progress bar per pass: frames done of the pass's total, the loss, the time left."""

    def __init__(self, bar):
        self.bar, self.tasks = bar, {}

    def update(self, progress: VideoProgress) -> None:
        per_pass = progress.frames_total // progress.passes
        if progress.pass_index not in self.tasks:
            label = f"pass {progress.pass_index + 1}/{progress.passes}" if progress.passes > 1 else "frames"
            self.tasks[progress.pass_index] = self.bar.add_task(label, total=per_pass, loss="")
        loss = progress.losses.get("total") if progress.losses else None
        shown = f"frame {progress.frame + 1}: loss {loss:.5g}" if loss is not None else f"frame {progress.frame + 1}"
        self.bar.update(self.tasks[progress.pass_index], completed=progress.frames_done - progress.pass_index * per_pass,
                        loss=shown)


@contextlib.contextmanager
def _progress_bar() -> Iterator[_Bar]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[loss]}", markup=False))
    with Progress(*columns, console=err_console) as bar:
        yield _Bar(bar)


@contextlib.contextmanager
def _stop_on_ctrl_c() -> Iterator[dict]:
    """A first Ctrl-C asks the run to stop after the frame in hand; a second stops at once."""
    asked = {"stop": False}

    def ask(signum, frame):
        asked["stop"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, ask) if main else None
    try:
        yield asked
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


class _Plan(NamedTuple):
    """What `run_video` settles before it reads a frame."""

    info: VideoInfo  # the input's header
    start: int  # the first frame read
    stop: int  # one past the last
    count: int  # frames kept (every --every)
    shape: tuple[int, int]  # (height, width) the frames are stylised at
    folder_out: bool  # the output is a frames folder
    strip: Path | None  # OUT-strip.png with --preview
    flow: Path | None  # OUT-flow.png with --preview


def _plan(job: VideoJob, run: VideoRunConfig, writer: bool) -> _Plan:
    """Check the outputs (on the process that writes them) and the memory, from the input's header."""
    info = probe_video(job.input, **({"fps": run.fps} if run.fps is not None else {}))
    start, stop = _range(run, info.count)
    count = len(range(start, stop, run.every))
    shape = _output_shape(info, job.config)
    folder_out = not is_video_file(job.out)
    strip = output_name(job.out, "strip", ".png") if run.preview else None
    flow = output_name(job.out, "flow", ".png") if run.preview else None
    if folder_out and job.out.suffix:
        raise JaxmosaicError(f"{job.out}: not a video file name ({', '.join(VIDEO_SUFFIXES)}) nor a folder name "
                             "(a frames folder's name has no suffix)")
    most = crf_limit(job.out)
    if most is not None and run.crf > most:
        raise ConfigError("crf", f"{run.crf}: a {job.out.suffix} output takes 0 to {most}")
    weights = [Path(job.weights)] if job.weights not in (None, "random") else []
    inputs = [job.input, *job.styles, *weights, *([run.flow_dir] if run.flow_dir else [])]
    if writer:
        if not folder_out:  # a video jaxmosaic wrote (its comment says so) is replaced like its images
            ours = job.out.is_file() and video_software(job.out).startswith("jaxmosaic")
            check_outputs([job.out], inputs, overwrite=run.overwrite or ours, wait=run.wait, say=echo)
        check_outputs([], [*inputs, *([] if folder_out else [job.out])], images=[strip, flow],
                      files=[(run.metrics, "metrics")],
                      folders=[(run.checkpoint, CHECKPOINT_KIND), *([(job.out, FRAMES_KIND)] if folder_out else [])],
                      overwrite=run.overwrite, wait=run.wait, say=echo)
    budget = memory_budget(job.config.max_memory) if job.config.max_memory is not None else None
    check_memory(_memory(job, shape, count), f"styling {count} frames of {shape[1]}x{shape[0]}", budget=budget,
                 hint="fewer frames (--frames, --every), a smaller --size or a smaller --batch-frames")
    return _Plan(info, start, stop, count, shape, folder_out, strip, flow)


def _audio(job: VideoJob, run: VideoRunConfig, plan: _Plan) -> tuple[Path | None, tuple[float, float] | None]:
    """The input whose audio the output takes and the seconds of it to keep: all of it when every
    frame is kept, else the span of the frames read (with --every the output's rate is divided by
    N, so the output lasts as long as that span and the sound stays in step)."""
    if not plan.info.audio or plan.folder_out:
        return None, None
    if plan.start == 0 and plan.stop == plan.info.count and run.every == 1:
        return job.input, None
    fps = plan.info.fps
    return job.input, (float(plan.start / fps), float((plan.start + plan.count * run.every) / fps))


def _flows(job: VideoJob, frames: np.ndarray, given: dict | None, checkpoint: _Checkpoint | None, key: str) -> VideoFlows:
    """The flows and masks: from the checkpoint's cache, else from `given` (--flow-dir) or computed, then cached."""
    cached = checkpoint.flows(key) if checkpoint is not None else None
    if cached is not None:
        echo(f"flows: the ones cached in {checkpoint.path}")
        return cached
    echo(f"flows: computing {job.config.flow} optical flow between the frames" if given is None
         else "flows: the .flo files of --flow-dir, and their consistency masks")
    made = video_flows(frames, job.config, flows=given)
    if checkpoint is not None:
        checkpoint.save_flows(key, made)
    return made


def _pairs(frames: np.ndarray, made: VideoFlows) -> tuple[np.ndarray, np.ndarray]:
    """The flow of every frame to the one before it, and its mask, stacked (N-1, H, W, 2), (N-1, H, W)."""
    missing = [i for i in range(1, len(frames)) if (i, i - 1) not in made.flows or (i, i - 1) not in made.masks]
    if missing:
        raise JaxmosaicError(f"the flows do not hold frame {missing[0] + 1} to frame {missing[0]} (--long-term needs 1 for "
                             "--metrics and --preview)")
    flows = np.stack([np.asarray(made.flows[(i, i - 1)], np.float32) for i in range(1, len(frames))])
    masks = np.stack([np.asarray(made.masks[(i, i - 1)], np.float32) for i in range(1, len(frames))])
    return flows, masks


def _steps_text(steps: Sequence[int]) -> str:
    return ",".join(str(count) for count in steps)


def _done(checkpoint: _Checkpoint | None, passes: int) -> dict[tuple[int, int], np.ndarray] | None:
    """The finished frames a resume starts from, keyed (pass, frame): those of the latest pass the
    checkpoint holds and of the pass before it (where that pass's other frames start from). Steps
    do not block a resume: when the checkpoint's run had other --steps, one line says the finished
    frames are kept and the rest use this run's."""
    if checkpoint is None:
        return None
    latest = checkpoint.latest_pass()
    if latest is None:
        return None
    if latest >= passes:
        raise ConfigError("resume", f"the checkpoint {checkpoint.path} holds pass {latest + 1}, this run makes {passes}")
    kept = checkpoint.frames((latest - 1, latest))  # only these: what the memory check counted
    checkpoint.drop_before(latest - 1)  # a checkpoint from before the pruning holds every pass
    echo(f"resuming from {checkpoint.path}: {len(kept[latest])} frame(s) of pass {latest + 1} of {passes} done")
    then, now = checkpoint.held.steps if checkpoint.held is not None else None, checkpoint.meta.steps
    if then is not None and then != now:
        echo(f"frames finished with --steps {_steps_text(then)} are kept; the rest use {_steps_text(now)}")
    return {(pass_index, frame): image for pass_index in (latest - 1, latest) for frame, image in kept.get(pass_index, {}).items()}


def _write_folder_frames(job: VideoJob, frames: dict[int, np.ndarray], plan: _Plan) -> list[str]:
    """On Ctrl-C: the finished frames of a frames-folder output (final ones only)."""
    if not plan.folder_out or not frames:
        return []
    written = []
    for index in sorted(frames):
        written += write_frames(job.out, _to_uint8(frames[index][None]), start=index, say=echo)
    return [str(job.out)] if written else []


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def run_video(job: VideoJob, run: VideoRunConfig, *, distributed: DistributedConfig | None = None) -> dict:
    """Style a video from its settings to its files (see the module doc); the metrics summary
    (also written to `run.metrics` when given). Raises `JaxmosaicError`/`ConfigError` (one line)
    on bad input before anything is written, `KeyboardInterrupt` after writing what is finished."""
    distributed = distributed or DistributedConfig()
    start_distributed(distributed, say=echo)
    processes, writer = jax.process_count(), jax.process_index() == 0
    if processes > 1 and run.checkpoint is not None:
        raise ConfigError("checkpoint", "is kept by one process; several processes run without one")
    if processes > 1 and job.config.passes == 1:
        raise ConfigError("passes", f"the sequential method chains every frame to the one before and cannot be split over "
                                    f"{processes} processes: use --passes 2 or more")
    with agree(on_failure="no process started") as shared:
        plan = _plan(job, run, writer)
        shared.update({"INPUT": str(job.input), "--out": str(job.out), "frames": [plan.start, plan.stop, run.every]})
    config = job.config
    record = {"input": _input_record(job.input).sha256 if run.checkpoint else "", "frames": [plan.start, plan.stop],
              "every": run.every, "long_term": list(config.long_term), "passes": config.passes}
    styles = [load_image(path) for path in job.styles]  # a style that is no image is refused before any work
    raw, info = read_video(job.input, frames=(plan.start, plan.stop), every=run.every,
                           **({"fps": run.fps} if run.fps is not None else {}))
    frames = _fitted(raw, plan.shape)
    # a user's .flo files are at the input's size and numbered as its frames (video_flows fits them to --size)
    given = None if run.flow_dir is None else load_flow_dir(
        run.flow_dir, len(frames), sorted({1, *config.long_term}), raw.shape[1:3], start=plan.start, step=run.every,
        total=plan.info.count)
    checkpoint = None
    if run.checkpoint is not None:
        meta = _Meta(format=VIDEO_CHECKPOINT_FORMAT, technique="video", settings=_settings(job, run, plan.shape, plan.count),
                     inputs=[_input_record(path) for path in (job.input, *job.styles)], count=plan.count, shape=list(plan.shape),
                     steps=list(config.steps))
        checkpoint = _Checkpoint(run.checkpoint, meta, resume=run.resume)
    method = config.flow if given is None else f"flow-dir:{_flows_digest(given)}"  # other .flo contents: other flows
    made = _flows(job, frames, given, checkpoint, _flows_key(record, plan.shape, method))
    done = _done(checkpoint, config.passes)
    params = vgg_params(job.weights, config.seed)
    mesh = device_mesh(run.devices, local=processes > 1)
    finished = {frame: image for (pass_index, frame), image in (done or {}).items() if pass_index == config.passes - 1}
    computed = {"frames": 0}
    started = time.perf_counter()
    try:
        with _stop_on_ctrl_c() as asked, _progress_bar() as bar:
            def on_frame(progress: VideoProgress) -> None:
                if progress.image is not None:
                    computed["frames"] += 1
                    if checkpoint is not None:
                        checkpoint.save_frame(progress.pass_index, progress.frame, progress.image)
                    if progress.pass_index == config.passes - 1:
                        finished[progress.frame] = np.asarray(progress.image)
                bar.update(progress)
                if asked["stop"]:
                    raise KeyboardInterrupt

            result = stylize_video(config, frames, styles, params, flows=made, done=done, callback=on_frame, mesh=mesh)
    except KeyboardInterrupt:
        written = _write_folder_frames(job, finished, plan) if writer else []
        saved = f"; checkpoint {run.checkpoint} (continue with --resume)" if checkpoint is not None else ""
        error_line(f"interrupted after {computed['frames']} frame(s) were optimised; wrote "
                   f"{', '.join(written) or 'no output'}{saved}")
        raise
    except Diverged as err:
        raise JaxmosaicError(f"{err}; try a smaller --lr or smaller loss weights") from None
    seconds = time.perf_counter() - started
    images = np.asarray(result.frames, np.float32)
    if not np.all(np.isfinite(images)):
        bad = int(np.argmax(~np.isfinite(images).reshape(len(images), -1).all(axis=1)))
        raise JaxmosaicError(f"the optimisation diverged at frame {bad + 1} (loss not finite); nothing written; "
                             "try a smaller --lr or smaller loss weights")
    resumed = [frame for (pass_index, frame) in done or {} if pass_index == max(key[0] for key in done)]
    summary = _summary(job, run, plan, frames, images, made, computed["frames"], seconds, len(resumed))
    if not writer:
        echo(f"process {jax.process_index()}: done; process 0 writes {job.out}")
        return summary
    written = _write_outputs(job, run, plan, frames, images, made, info)
    if checkpoint is not None:
        checkpoint.close()
    summary["outputs"] = written
    echo(f"wrote {job.out}: {len(images)} frame{'s' if len(images) != 1 else ''} of {plan.shape[1]}x{plan.shape[0]} at {info.fps} fps"
         + (f"; temporal error {summary['temporal_error']['output']:.4g} (input {summary['temporal_error']['input']:.4g})"
            if summary.get("temporal_error") else ""))
    write_metrics(run.metrics, "video", summary["settings"], [job.input, *job.styles], written,
                  steps=int(sum(config.step_counts)) * computed["frames"], seconds=seconds, wall_seconds=seconds,
                  loss=result.losses, video=summary["video"], temporal_error=summary.get("temporal_error"))
    return summary


def _summary(job: VideoJob, run: VideoRunConfig, plan: _Plan, frames: np.ndarray, images: np.ndarray, made: VideoFlows,
             computed: int, seconds: float, resumed: int) -> dict:
    settings = {**settings_dict(job.config), "weights": job.weights or "lookup",
                "frames": [plan.start, plan.stop], "every": run.every, "crf": run.crf,
                "flow_dir": None if run.flow_dir is None else str(run.flow_dir)}
    figures = {"frames": len(images), "frames_computed": computed, "frames_resumed": resumed,
               "seconds_per_frame": seconds / computed if computed else 0.0,
               "size": [plan.shape[1], plan.shape[0]], "processes": jax.process_count()}
    summary = {"settings": settings, "video": figures}
    if run.metrics is not None and len(images) > 1:
        flows, masks = _pairs(frames, made)
        output_error = np.asarray(temporal_error(images, flows, masks), np.float64)
        input_error = np.asarray(temporal_error(frames, flows, masks), np.float64)
        summary["temporal_error"] = {"output": float(output_error.mean()), "input": float(input_error.mean()),
                                     "output_per_pair": [float(v) for v in output_error],
                                     "input_per_pair": [float(v) for v in input_error]}
    return summary


def _write_outputs(job: VideoJob, run: VideoRunConfig, plan: _Plan, frames: np.ndarray, images: np.ndarray,
                   made: VideoFlows, info: VideoInfo) -> list[str]:
    audio_from, audio_range = _audio(job, run, plan)
    write_output(job.out, _to_uint8(images), fps=info.fps, crf=run.crf, audio_from=audio_from, audio_range=audio_range,
                 say=echo)
    written = [str(job.out)]
    if plan.strip is not None:
        save_image(plan.strip, frame_strip(images, frames), inputs=[job.input, *job.styles])
        written.append(str(plan.strip))
    if plan.flow is not None and len(frames) > 1:
        pair = len(frames) // 2
        save_image(plan.flow, flow_picture(frames[pair - 1], frames[pair], made.flows[(pair, pair - 1)],
                                           made.masks[(pair, pair - 1)]), inputs=[job.input, *job.styles])
        written.append(str(plan.flow))
    elif plan.flow is not None:
        echo(f"{plan.flow}: not written: one frame has no flow to show")
    return written

