"""Command line: `jaxmosaic COMMAND ...` (see `jaxmosaic --help`)."""

from __future__ import annotations

from jaxmosaic.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app(prog_name="jaxmosaic")
