"""The `jaxmosaic` Typer application: global options and the command registry."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from jaxmosaic._version import __version__
from jaxmosaic.cli import features, hybrid, library, mosaic, style, texture, video, vq, weights
from jaxmosaic.cli._common import enable_compilation_cache, state
from jaxmosaic.cli.console import error_line

class _OneLineErrors(TyperGroup):
    """The command group: a usage error (a missing argument, a value of the wrong type) is one
    line naming the option, like every other error, with exit status 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as err:  # click's usage errors and bad parameters derive from it
            if not standalone_mode:
                raise
            where = f" (see {err.ctx.command_path} --help)" if getattr(err, "ctx", None) is not None else ""
            error_line(f"{err.format_message()}{where}")
            sys.exit(err.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            error_line("aborted")
            sys.exit(1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="jaxmosaic",
    help="Photomosaics, hybrid images, texture synthesis, patch VQ and neural style transfer in JAX.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"jaxmosaic {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    state["debug"] = debug
    enable_compilation_cache()


def register() -> None:
    app.command(name="mosaic")(mosaic.mosaic)
    app.add_typer(mosaic.tiles_app, name="tiles")
    app.add_typer(library.library_app, name="library")
    app.command(name="hybrid")(hybrid.hybrid)
    app.command(name="style")(style.style)
    app.command(name="texture")(texture.texture)
    app.command(name="video")(video.video)
    app.add_typer(vq.app, name="vq")
    app.command(name="features")(features.features)
    app.add_typer(weights.app, name="weights")


register()
