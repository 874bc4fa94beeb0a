"""One runner for every command that optimises pixels (style, texture, hybrid).

A command describes its job (settings, files, how to read the inputs and build the technique's
`Problem`) and `optimise` does the rest: checks the outputs and the memory before any work, a
progress bar with the loss terms, frames and a GIF, checkpoints and resume (a checkpoint records
the settings and the SHA-256 of every input; a resume refuses a checkpoint of another run, or
inputs whose content changed), Ctrl-C (the images so far and a checkpoint are written), a disk
too full for a checkpoint (the run stops, the images so far are written where they fit, the
previous checkpoint is kept, one error line), divergence (the last finite images are written,
then one error line), the final loss report and `--metrics`.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import typer

from jaxmosaic.config import ConfigError, setting, settings_dict, whole
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.checkpoints import checkpoint_meta_file, load_checkpoint, read_checkpoint_meta, save_checkpoint
from jaxmosaic.io.files import DiskFullError
from jaxmosaic.io.folders import OutputFolder
from jaxmosaic.io.outputs import check_outputs
from jaxmosaic.io.locks import wait_setting
from jaxmosaic.io.images import save_gif, save_image
from jaxmosaic.io.schemas import CHECKPOINT_FORMAT, CheckpointMeta, InputFile, SchemaError
from jaxmosaic.image import resize
from jaxmosaic.live import LiveView, live_view, progress_update, web_setting
from jaxmosaic.optimize import state_like
from jaxmosaic.refine import tiled_state
from jaxmosaic.resources import check_memory, memory_budget
from jaxmosaic.sharding import device_mesh
from jaxmosaic.stages import Diverged, Problem, Progress, Resume, solve
from jaxmosaic.techniques.common import SynthesisConfig
from jaxmosaic.weights import sha256_file
from jaxmosaic.cli._common import output_name, write_metrics
from jaxmosaic.cli.console import echo, err_console, error_line

__all__ = ["RunConfig", "Job", "optimise"]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What a run leaves behind besides its images."""

    save_every: int = setting(0, "Write a frame every N steps into OUT-frames/ (0: none).")
    gif: bool = setting(False, "Also write OUT.gif, an animation of the optimisation.")
    checkpoint: Path | None = setting(None, "Checkpoint folder (pixels, optimiser state, step), saved every --checkpoint-every steps and on Ctrl-C.")
    checkpoint_every: int = setting(50, "Steps between checkpoints.")
    resume: bool = setting(False, "Continue from --checkpoint (--steps may be raised to run longer).")
    metrics: Path | None = setting(None, "Write a JSON summary here.")
    overwrite: bool = setting(False, "Replace output files that exist although jaxmosaic did not write them.")
    wait: bool = wait_setting()
    devices: int | None = setting(None, "Devices to share the batch over (default: all); 1 for one.")
    split_image: bool = setting(False, "Split one image's height over the devices (for an output too large for one).")
    web: str | None = web_setting()

    def __post_init__(self):
        whole("save_every", self.save_every, minimum=0)
        if self.devices is not None:
            whole("devices", self.devices, minimum=1, maximum=len(jax.devices()))
        whole("checkpoint_every", self.checkpoint_every, minimum=1)
        if self.resume and self.checkpoint is None:
            raise ConfigError("resume", "needs a checkpoint folder")


class Job(NamedTuple):
    """A command's optimisation, as the runner takes it."""

    technique: str  # "style", "texture", "hybrid"
    config: Any  # the technique's settings (a frozen dataclass)
    out: Path  # the -o path: GIF, frames and numbered outputs are named after it
    outputs: Sequence[Path]  # one image file per image the problem makes
    inputs: Sequence[Path]  # files read: never overwritten, and recorded
    load: Callable[[], Any]  # reads the inputs
    memory: Callable[[Any], int]  # inputs -> bytes needed (checks the inputs against the settings)
    problem: Callable[[Any], Problem]  # inputs -> the problem (loads weights when it needs them)
    pictures: Sequence[tuple[Path, Callable[[Any, np.ndarray], np.ndarray]]] = ()  # (path, (inputs, images) -> picture)
    weights: str | None = None  # the --weights given, for the record


class _Interrupted(Exception):
    """The run stops at `progress`: Ctrl-C, or a checkpoint the disk had no room for (`failure`)."""

    def __init__(self, progress: Progress, failure: DiskFullError | None = None):
        self.progress, self.failure = progress, failure


class _Frames:
    """GIF frames (the images side by side, kept in memory) and PNG frames every `every` steps in
    a frames folder of jaxmosaic's own."""

    def __init__(self, gif: Path | None, folder: Path | None, every: int, tags: Sequence[str], inputs, multistage: bool):
        self.gif, self.every, self.tags, self.inputs = gif, every, list(tags), list(inputs)
        self.multistage, self.frames = multistage, []
        self.folder = OutputFolder(folder, "frames", say=echo) if folder else None

    def record(self, progress: Progress, images: np.ndarray) -> None:
        if self.gif:
            self.frames.append(np.concatenate([_thumbnail(image) for image in images], axis=1))
        if self.folder and progress.step % self.every == 0:
            prefix = f"scale{progress.stage}-" if self.multistage else ""
            for tag, image in zip(self.tags, images):
                save_image(self.folder.file(f"{prefix}step{progress.step:05d}{tag}.png"), image, inputs=self.inputs)

    def write(self) -> list[str]:
        written = []
        if self.gif and self.frames:
            save_gif(self.gif, self.frames, inputs=self.inputs)
            written.append(str(self.gif))
        if self.folder:
            self.folder.finish()
            written.append(str(self.folder.path))
        return written


def _thumbnail(image: np.ndarray, side: int = 512) -> np.ndarray:
    """A GIF frame of an image: at most `side` px a side (a print-size output is not kept whole
    for every frame)."""
    height, width = image.shape[:2]
    if max(height, width) <= side:
        return image
    scale = side / max(height, width)
    return np.asarray(resize(image, max(1, round(height * scale)), max(1, round(width * scale))))


def _describe(loss: dict) -> str:
    terms = ", ".join(f"{name} {value:.4g}" for name, value in loss.items() if name != "total")
    return f"loss {loss['total']:.5g}" + (f" ({terms})" if terms else "")


def _record(job: Job) -> dict:
    """What defines a run, as its checkpoints record it: the technique, the settings a resumed run
    must keep (the technique's and the weights) and the input files with the SHA-256 of their content."""
    return {"technique": job.technique,
            "settings": {**settings_dict(job.config, resumable_only=True), "weights": job.weights or "lookup"},
            "inputs": [InputFile(path=str(path), sha256=sha256_file(path)) for path in job.inputs]}


def _check_same_run(run: RunConfig, held: CheckpointMeta, record: dict) -> None:
    """Refuse to resume a checkpoint of another technique, other settings or other inputs, or one
    whose input files now hold other content."""
    if held.technique != record["technique"]:
        raise SchemaError(f"{checkpoint_meta_file(run.checkpoint)}: technique: a {held.technique} checkpoint, "
                          f"not a {record['technique']} one")
    settings = record["settings"]
    changed = sorted(name for name in settings if held.settings.get(name) != settings[name])
    if [item.path for item in held.inputs] != [item.path for item in record["inputs"]]:
        changed.append("inputs")
    if changed:
        raise ConfigError("resume", f"the checkpoint {run.checkpoint} was made with other settings ({', '.join(changed)}); start a new one")
    for then, now in zip(held.inputs, record["inputs"]):
        if then.sha256 != now.sha256:
            raise ConfigError("resume", f"{now.path} changed since the checkpoint {run.checkpoint} was made (other content "
                                        "under the same name); start a new checkpoint")


def _resume(job: Job, run: RunConfig, problem: Problem, held: CheckpointMeta) -> Resume:
    """The state to continue from, once the checkpoint's stage, step and pixels fit this run."""
    meta = checkpoint_meta_file(run.checkpoint)
    stages = len(problem.stages)
    if held.stage >= stages:
        raise SchemaError(f"{meta}: stage: {held.stage}, but this run's stages are 0 to {stages - 1}")
    steps = problem.steps[held.stage]
    if held.step > steps:
        raise SchemaError(f"{meta}: step: {held.step} is past the {steps} steps of stage {held.stage + 1} of this run "
                          "(raise --steps to continue it)")
    if held.shape[0] != problem.count:
        raise SchemaError(f"{meta}: shape: {held.shape[0]} images, this run makes {problem.count}")
    budget = memory_budget()
    if budget is not None and 4 * math.prod(held.shape) > budget:
        raise SchemaError(f"{meta}: shape: {held.shape} needs more memory than is free")
    like = np.zeros(held.shape, np.float32)
    state = tiled_state(like.shape[0]) if held.tiled else state_like(problem.optimizer, problem.learning_rate, like)
    restored, _ = load_checkpoint(run.checkpoint, {"params": like, "opt_state": state})
    echo(f"resuming from {run.checkpoint}: stage {held.stage + 1} of {stages}, step {held.step}")
    return Resume(held.stage, held.step, restored["params"], restored["opt_state"])


def _save_checkpoint(run: RunConfig, record: dict, progress: Progress) -> None:
    meta = CheckpointMeta(format=CHECKPOINT_FORMAT, **record, stage=int(progress.stage), step=int(progress.step),
                          shape=[int(n) for n in np.shape(progress.params)], tiled=progress.tile is not None)
    try:
        save_checkpoint(run.checkpoint, {"params": progress.params, "opt_state": progress.opt_state}, meta)
    except DiskFullError as err:
        raise _Interrupted(progress, err) from None


def _figures(job: Job, problem: Problem, solution) -> dict:
    """The technique's own figures for the metrics: derived settings, L-BFGS evaluations per step."""
    figures = dict(problem.facts)
    if solution.evaluations is not None and solution.steps:
        figures["evaluations_per_step"] = [round(float(n) / solution.steps, 4) for n in solution.evaluations]
    return {job.technique: figures} if figures else {}


def _chunk(run: RunConfig, total: int) -> int:
    """Steps between visits: often enough for every frame, checkpoint and GIF frame asked for."""
    every = [20]
    if run.save_every:
        every.append(run.save_every)
    if run.checkpoint:
        every.append(run.checkpoint_every)
    if run.gif:
        every.append(max(1, total // 40))
    return max(1, min(every))


def _write_images(job: Job, images: np.ndarray) -> list[str]:
    written = []
    for path, image in zip(job.outputs, images):
        if np.all(np.isfinite(image)):
            save_image(path, image, inputs=job.inputs)
            written.append(str(path))
    return written


def _write_what_fits(job: Job, images: np.ndarray, frames: _Frames) -> str:
    """Write the images so far and the frames on a disk that filled; what was written, for the error line."""
    written = []
    try:
        written += _write_images(job, images)
        written += frames.write()
    except DiskFullError:
        return f"wrote {', '.join(written) + ' but not the rest' if written else 'nothing'}: the disk is full"
    return f"wrote {', '.join(written) or 'nothing'}"


def optimise(job: Job, run: RunConfig) -> None:
    """Run a command's optimisation from its settings to its files (see the module doc), shown
    live with --web."""
    with live_view(run.web, command=job.technique, say=echo) as live:
        _optimise(job, run, live)


def _optimise(job: Job, run: RunConfig, live: LiveView | None) -> None:
    numbered = list(job.outputs) != [job.out]
    gif = job.out.with_suffix(".gif") if run.gif else None
    folder = output_name(job.out, "frames", "") if run.save_every else None
    pictures = [path for path, _ in job.pictures]
    weights = [Path(job.weights)] if job.weights not in (None, "random") else []
    check_outputs([], [*job.inputs, *weights], images=[*job.outputs, *pictures, gif], files=[(run.metrics, "metrics")],
                  folders=[(folder, "frames"), (run.checkpoint, "checkpoint")], overwrite=run.overwrite, wait=run.wait, say=echo)
    held = read_checkpoint_meta(run.checkpoint, model=CheckpointMeta) if run.resume else None
    inputs = job.load()
    record = _record(job) if run.checkpoint else None
    if held is not None:
        _check_same_run(run, held, record)
    mesh = device_mesh(run.devices)
    devices = 1 if mesh is None else mesh.size
    tiling = isinstance(job.config, SynthesisConfig)
    if tiling and job.config.tiles and run.split_image:
        raise ConfigError("split_image", "splits one image over several devices; --tile refines it tile by tile on one: choose one")
    budget = memory_budget(job.config.max_memory) if tiling and job.config.max_memory is not None else None
    check_memory(job.memory(inputs), f"this {job.technique} run", devices=devices, budget=budget,
                 hint="--tile auto" if tiling and not job.config.tiles else "")
    problem = job.problem(inputs)._replace(split=run.split_image and mesh is not None)
    if run.split_image and problem.count > 1:
        raise ConfigError("split_image", f"splits one image over the devices, not a batch of {problem.count}; "
                                         "the devices share a batch by themselves")
    resume = _resume(job, run, problem, held) if held is not None else None
    for note in problem.notes:
        echo(note)
    start = time.perf_counter()
    tags = [Path(path).stem.removeprefix(job.out.stem) for path in job.outputs]
    frames = _Frames(gif, folder, run.save_every, tags, job.inputs, len(problem.stages) > 1)
    try:
        solution = _solve(job, run, problem, resume, frames, mesh, record, live)
    except _Interrupted as stop:
        images = np.asarray(problem.finish(problem.view(stop.progress.params)))
        where = f" of scale {stop.progress.label}" if len(problem.stages) > 1 else ""
        if stop.failure is not None:
            raise JaxmosaicError(f"{stop.failure}; stopped at step {stop.progress.step}{where}; "
                                 f"{_write_what_fits(job, images, frames)}") from None
        written = _write_images(job, images) + frames.write()
        saved = f" and checkpoint {run.checkpoint} (continue with --resume)" if run.checkpoint else ""
        error_line(f"interrupted at step {stop.progress.step}{where}; wrote {', '.join(written) or 'nothing'}{saved}")
        raise typer.Exit(130) from None
    except Diverged as err:
        written = _write_images(job, err.solution.images)
        raise ValueError(f"{err}; wrote the last finite images ({', '.join(written) or 'none'}); "
                         "try a smaller --lr or smaller loss weights") from None
    written = _write_images(job, solution.images)
    for path, draw in job.pictures:
        save_image(path, draw(inputs, solution.images), inputs=job.inputs)
        written.append(str(path))
    written += frames.write()
    for path, loss in zip(job.outputs, solution.loss):
        echo(f"wrote {path}: {_describe(loss)}")
    write_metrics(run.metrics, job.technique, {**settings_dict(job.config), "weights": job.weights or "lookup"}, job.inputs,
                  written, steps=solution.steps, seconds=solution.seconds, compile_seconds=solution.compile_seconds,
                  wall_seconds=time.perf_counter() - start, loss=solution.loss if numbered else solution.loss[0],
                  **_figures(job, problem, solution))


def _solve(job: Job, run: RunConfig, problem: Problem, resume: Resume | None, frames: _Frames, mesh, record: dict | None,
           live: LiveView | None):
    """`solve` with the progress bar, the live view, frames, checkpoints and a Ctrl-C that stops after the chunk."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

    stop = {"asked": False}
    last: dict = {}

    def ask_to_stop(signum, frame):
        stop["asked"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    columns = (TextColumn(job.technique), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[loss]}"))
    main = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = signal.signal(signal.SIGINT, ask_to_stop) if main else None
    try:
        with Bar(*columns, console=err_console) as bar:
            task = bar.add_task(job.technique, total=sum(problem.steps), loss="compiling...")

            def on_chunk(progress: Progress) -> None:
                last["progress"] = progress
                images = np.asarray(problem.view(progress.params))
                where = f"{progress.label} " if len(problem.stages) > 1 else ""
                if progress.tile is None:
                    terms = problem.terms(images)[0]
                    loss = _describe(terms)
                else:  # the whole image's terms would cost a pass over every tile: the tile's loss
                    tile, tiles, pass_index = progress.tile
                    losses = np.asarray(progress.losses).reshape(len(progress.losses), -1)[:, 0]
                    terms = {"total": losses[-1]}
                    loss = f"pass {pass_index + 1}, tile {tile + 1}/{tiles}: loss {losses[-1]:.5g}"
                bar.update(task, completed=progress.done, loss=where + loss)
                if live is not None:
                    live.publish(progress_update(progress, stages=len(problem.stages), loss=terms), image=images)
                frames.record(progress, images)
                if run.checkpoint and (progress.step % run.checkpoint_every == 0 or stop["asked"]):
                    _save_checkpoint(run, record, progress)
                if stop["asked"]:
                    raise _Interrupted(progress)

            solution = solve(problem, callback=on_chunk, resume=resume, chunk=_chunk(run, sum(problem.steps)), mesh=mesh)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    if run.checkpoint and "progress" in last:
        _save_checkpoint(run, record, last["progress"])
    return solution
