"""What every command shares: one-line errors, the compilation cache, weights, progress bars."""

from __future__ import annotations

import contextlib
import functools
import os
import traceback
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from jaxmosaic.errors import JaxmosaicError

err_console = Console(stderr=True)
state = {"debug": False}


def error_line(message: str) -> None:
    err_console.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)


def guarded(command):
    """Turn the errors a user can cause into one line and a non-zero exit (tracebacks with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            error_line("interrupted")
            raise typer.Exit(130) from None
        except (JaxmosaicError, ValueError, OSError) as err:
            if state["debug"]:
                traceback.print_exc()
            error_line(str(err).splitlines()[0] if str(err) else type(err).__name__)
            raise typer.Exit(1) from None
        except Exception as err:
            if state["debug"]:
                traceback.print_exc()
            first = str(err).splitlines()[0] if str(err) else ""
            error_line(f"unexpected {type(err).__name__}: {first} (run with --debug for the traceback)")
            raise typer.Exit(1) from None

    return wrapper


def enable_compilation_cache() -> None:
    """Keep XLA's compiled programs under the cache dir, so a second run does not recompile."""
    if os.environ.get("JAXMOSAIC_NO_COMPILATION_CACHE"):
        return
    import jax

    from jaxmosaic.weights import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


@contextlib.contextmanager
def download_progress() -> Iterator:
    """A rich progress bar for a download, shown from the first byte; yields `progress(done, total)`."""
    columns = (TextColumn("downloading VGG19"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    bar = Progress(*columns, console=err_console)
    task = None

    def update(done: int, total: int | None) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("download", total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        bar.stop()


def vgg_params(weights: str | None, seed: int = 0):
    """VGG19 params for a `--weights` value: "random" (seeded), a path, or None for the lookup."""
    if weights == "random":
        import jax

        from jaxmosaic.weights import random_vgg19

        return random_vgg19(jax.random.PRNGKey(seed))
    from jaxmosaic.weights import load_vgg19

    with download_progress() as progress:
        return load_vgg19(weights, progress=progress)


def echo(message: str) -> None:
    """A line for the user on stderr, so stdout stays clean for data."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def loss_progress(total: int, label: str) -> Iterator:
    """A rich progress bar over optimisation steps; yields `update(step, text)` for the loss column."""
    from rich.progress import MofNCompleteColumn, TimeElapsedColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[loss]}"))
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(label, total=total, loss="compiling...")

        def update(step: int, text: str) -> None:
            bar.update(task, completed=step, loss=text)

        yield update


def output_name(out, tag: str, suffix: str | None = None):
    """OUT.png -> OUT-tag.png (or with another suffix)."""
    out = Path(out)
    return out.with_name(f"{out.stem}-{tag}{suffix if suffix is not None else out.suffix}")


class FrameRecorder:
    """What an optimisation leaves to look at: GIF frames (the current images side by side, kept
    in memory) and PNG frames written into a folder every `save_every` steps."""

    def __init__(self, gif_path, frames_dir, save_every: int, tags, inputs):
        self.gif_path, self.frames_dir, self.save_every = gif_path, frames_dir, save_every
        self.tags, self.inputs = list(tags), list(inputs)  # tags: a file-name suffix per image
        self.frames: list = []
        if frames_dir:
            Path(frames_dir).mkdir(exist_ok=True)

    def record(self, step: int, images, prefix: str = "") -> None:
        """After a chunk: `images` (N, H, W, C) in [0, 1] at `step`."""
        import numpy as np

        from jaxmosaic.image import save_image

        if self.gif_path:
            self.frames.append(np.concatenate(list(images), axis=1))
        if self.frames_dir and step % self.save_every == 0:
            for tag, image in zip(self.tags, images):
                save_image(Path(self.frames_dir) / f"{prefix}step{step:05d}{tag}.png", image, inputs=self.inputs)

    def write_gif(self) -> list[str]:
        """Write the GIF (when asked for and there are frames); the paths written."""
        from jaxmosaic.image import save_gif

        if not (self.gif_path and self.frames):
            return []
        save_gif(self.gif_path, self.frames, inputs=self.inputs)
        return [str(self.gif_path)]
