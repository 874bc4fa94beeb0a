"""`jaxmosaic weights ...`: download, convert, randomise and inspect VGG19 weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import jax
import typer

from jaxmosaic.cli._common import download_progress, echo, guarded
from jaxmosaic.weights import convert as convert_weights
from jaxmosaic.config import MAX_INT
from jaxmosaic.io.outputs import check_outputs
from jaxmosaic.weights import default_weights_dir, is_weights_folder, random_vgg19, save_params, weights_info
from jaxmosaic.weights import download as download_weights

app = typer.Typer(help="Get, convert and inspect VGG19 weights.", no_args_is_help=True, rich_markup_mode="rich")

OutDir = Annotated[
    Path | None, typer.Option("--out", "-o", help="Weights folder to write (default: the cache).", show_default=False)
]


@app.command()
@guarded
def convert(
    pth: Annotated[Path, typer.Argument(help="torchvision's vgg19 state dict (.pth), e.g. vgg19-dcbb9e9d.pth.")],
    out: OutDir = None,
) -> None:
    """Convert a torchvision VGG19 checkpoint (read safely, without torch) to a jaxmosaic weights folder."""
    check_outputs([], [pth], folders=[(out or default_weights_dir(), "weights")])
    folder = convert_weights(pth, out)
    echo(f"converted {pth} -> {folder}")


@app.command()
@guarded
def download(
    out: OutDir = None,
    url: Annotated[str | None, typer.Option(help="Checkpoint URL (default: torchvision's, or $JAXMOSAIC_VGG19_URL).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if weights are cached.")] = False,
) -> None:
    """Download torchvision's VGG19 checkpoint, check its SHA-256, convert and cache it."""
    target = out or default_weights_dir()
    if is_weights_folder(target) and not force:
        echo(f"weights already in {target} (use --force to fetch again)")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    check_outputs([], [], folders=[(target, "weights")])
    with download_progress() as progress:
        folder = download_weights(url, out, progress=progress, force=force)
    echo(f"VGG19 weights ready in {folder}")


@app.command()
@guarded
def random(
    out: Annotated[Path, typer.Option("--out", "-o", help="Weights folder to write.")],
    seed: Annotated[int, typer.Option(help="Random seed.", min=0, max=MAX_INT)] = 0,
) -> None:
    """Write seeded random VGG19 weights (He-normal, each layer rescaled to mean activation 1).

    Random filters give plausible textures and styles but not the semantics of trained weights.
    """
    check_outputs([], [], folders=[(out, "weights")])
    params = random_vgg19(jax.random.PRNGKey(seed))
    source = {"source": "random", "seed": seed, "format": "He-normal, per-layer mean activation 1"}
    echo(f"random weights (seed {seed}) -> {save_params(params, out, source)}")


@app.command()
@guarded
def info(
    weights: Annotated[str | None, typer.Option(help="A weights folder or .pth (default: the lookup order).")] = None,
) -> None:
    """Where the weights in use are, their source and checksum (JSON on stdout)."""
    typer.echo(json.dumps(weights_info(weights), indent=2))
