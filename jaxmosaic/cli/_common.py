"""What every command shares: one-line errors, the compilation cache, weights, output names, metrics."""

from __future__ import annotations

import functools
import os
import traceback
from pathlib import Path
from typing import Annotated

import jax
import typer

from jaxmosaic.cli.console import download_progress, echo, error_line
from jaxmosaic.errors import ConfigError, JaxmosaicError
from jaxmosaic.io.files import first_line, write_json
from jaxmosaic.io.locks import WAIT_HELP, release_all
from jaxmosaic.live import WEB_HELP
from jaxmosaic.weights import cache_folder, load_weights, random_alexnet, random_vgg19

state = {"debug": False}

WeightsOption = Annotated[
    str | None, typer.Option(help="Weights folder or .pth, or 'random' (default: $JAXMOSAIC_WEIGHTS, then the cache).")]
MetricsOption = Annotated[Path | None, typer.Option(help="Write a JSON summary here.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace output files that exist although jaxmosaic did not write them.")]
WaitOption = Annotated[bool, typer.Option("--wait", help=WAIT_HELP)]
WebOption = Annotated[str | None, typer.Option("--web", help=WEB_HELP)]  # a command without a settings class to hold web_setting()


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
        except ConfigError as err:  # a setting named in Python terms: name its flag
            error_line(f"--{err.field.replace('_', '-')}: {err.reason}")
            raise typer.Exit(1) from None
        except (JaxmosaicError, ValueError, OSError) as err:
            if state["debug"]:
                traceback.print_exc()
            error_line(first_line(err))
            raise typer.Exit(1) from None
        except Exception as err:
            if state["debug"]:
                traceback.print_exc()
            first = str(err).splitlines()[0] if str(err) else ""
            error_line(f"unexpected {type(err).__name__}: {first} (run with --debug for the traceback)")
            raise typer.Exit(1) from None
        finally:  # the outputs' locks last one command (a process may run several, as the tests do)
            release_all()

    return wrapper


def enable_compilation_cache() -> None:
    """Keep XLA's compiled programs under the cache dir, so a second run does not recompile;
    skipped, silently, where the cache cannot be written (it only saves time)."""
    if os.environ.get("JAXMOSAIC_NO_COMPILATION_CACHE"):
        return
    folder = cache_folder("xla")
    if folder is None:
        return
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def vgg_params(weights: str | None, seed: int = 0, arch: str = "vgg19"):
    """VGG19 (or AlexNet) params for a `--weights` value: "random" (seeded), a path, or None for the lookup."""
    if weights == "random":
        return (random_vgg19 if arch == "vgg19" else random_alexnet)(jax.random.PRNGKey(seed))
    with download_progress("VGG19" if arch == "vgg19" else "AlexNet") as progress:
        return load_weights(weights, arch=arch, progress=progress, say=echo)


def output_name(out, tag: str, suffix: str | None = None) -> Path:
    """OUT.png -> OUT-tag.png (or with another suffix)."""
    out = Path(out)
    return out.with_name(f"{out.stem}-{tag}{suffix if suffix is not None else out.suffix}")


def write_metrics(path: Path | None, technique: str, settings: dict, inputs, outputs, **figures) -> None:
    """Write the one `--metrics` JSON object every command writes (when a path is given):
    technique, settings, inputs, steps, seconds and compile_seconds (0 unless given), then the
    other `figures` given (wall_seconds and loss, left out when None; the command's own figures
    under keys of their own), and the outputs written."""
    if path is None:
        return
    summary = {"technique": technique, "settings": settings, "inputs": [str(p) for p in inputs], "steps": 0,
               "seconds": 0.0, "compile_seconds": 0.0, **figures}
    for optional in ("wall_seconds", "loss"):
        if optional in summary and summary[optional] is None:
            del summary[optional]
    summary["outputs"] = [str(p) for p in outputs]
    write_json(path, summary, inputs=inputs)

