"""`jaxmosaic weights ...`: download, convert, randomise and inspect VGG19 and AlexNet weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import jax
import typer

from jaxmosaic.cli._common import WaitOption, guarded
from jaxmosaic.cli.console import download_progress, echo
from jaxmosaic.weights import Arch, convert as convert_weights
from jaxmosaic.config import MAX_INT
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.outputs import check_outputs
from jaxmosaic.io.schemas import WeightsSource
from jaxmosaic.weights import ARCHS, cache_folder, default_weights_dir, random_alexnet, random_vgg19, save_params
from jaxmosaic.weights import weights_arch, weights_info
from jaxmosaic.weights import download as download_weights

app = typer.Typer(help="Get, convert and inspect VGG19 and AlexNet weights.", no_args_is_help=True, rich_markup_mode="rich")

ArchOption = Annotated[str, typer.Option("--arch", help="The network: vgg19 or alexnet.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace weights of the other network in the folder.")]


def _spec(arch: str):
    if arch not in ARCHS:
        raise JaxmosaicError(f"--arch {arch}: unknown network; choose one of {', '.join(ARCHS)}")
    return ARCHS[arch]


def _check_out(out: Path, spec: Arch, inputs=(), *, overwrite: bool, wait: bool) -> None:
    """`check_outputs` for a weights folder (locked from here on); and weights of another network
    there are replaced only with --overwrite."""
    check_outputs([], inputs, folders=[(out, "weights")], wait=wait, say=echo)
    held = weights_arch(out)
    if held not in (None, spec.name) and not overwrite:
        raise JaxmosaicError(f"{out}: holds {ARCHS[held].label} weights; refusing to replace them with {spec.label} "
                             "weights (choose another folder, or --overwrite)")


OutDir = Annotated[
    Path | None, typer.Option("--out", "-o", help="Weights folder to write (default: the cache).", show_default=False)
]


@app.command()
@guarded
def convert(
    pth: Annotated[Path, typer.Argument(help="torchvision's state dict (.pth), e.g. vgg19-dcbb9e9d.pth or alexnet-owt-7be5be79.pth.")],
    out: OutDir = None,
    arch: ArchOption = "vgg19",
    overwrite: OverwriteOption = False,
    wait: WaitOption = False,
) -> None:
    """Convert a torchvision VGG19 or AlexNet checkpoint (read safely, without torch) to a jaxmosaic weights folder."""
    spec = _spec(arch)
    _check_out(out or cache_folder(spec.name, required=True), spec, [pth], overwrite=overwrite, wait=wait)
    folder = convert_weights(pth, out, arch=spec.name)
    echo(f"converted {pth} -> {folder}")


@app.command()
@guarded
def download(
    out: OutDir = None,
    url: Annotated[str | None, typer.Option(help="Checkpoint URL (default: torchvision's, or $JAXMOSAIC_VGG19_URL / $JAXMOSAIC_ALEXNET_URL).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if weights are cached.")] = False,
    arch: ArchOption = "vgg19",
    overwrite: OverwriteOption = False,
    wait: WaitOption = False,
) -> None:
    """Download torchvision's VGG19 (or AlexNet) checkpoint, check its SHA-256, convert and cache it."""
    spec = _spec(arch)
    target = out or default_weights_dir(spec.name)
    if weights_arch(target) != spec.name or force:
        if out is None:
            cache_folder(spec.name, required=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        _check_out(target, spec, overwrite=overwrite, wait=wait)
    if weights_arch(target) == spec.name and not force:  # also when a run this one waited for fetched them
        echo(f"weights already in {target} (use --force to fetch again)")
        return
    replace = force or weights_arch(target) is not None  # weights of another network, replaced with --overwrite
    with download_progress(spec.label) as progress:
        folder = download_weights(url, out, progress=progress, force=replace, arch=spec.name)
    echo(f"{spec.label} weights ready in {folder}")


@app.command()
@guarded
def random(
    out: Annotated[Path, typer.Option("--out", "-o", help="Weights folder to write.")],
    seed: Annotated[int, typer.Option(help="Random seed.", min=0, max=MAX_INT)] = 0,
    arch: ArchOption = "vgg19",
    overwrite: OverwriteOption = False,
    wait: WaitOption = False,
) -> None:
    """Write seeded random VGG19 (or AlexNet) weights (He-normal, each layer rescaled to mean activation 1).

    Random filters give plausible textures and styles but not the semantics of trained weights.
    """
    spec = _spec(arch)
    _check_out(out, spec, overwrite=overwrite, wait=wait)
    params = (random_vgg19 if spec.name == "vgg19" else random_alexnet)(jax.random.PRNGKey(seed))
    source = WeightsSource(arch=spec.name, source="random", seed=seed, format="He-normal, per-layer mean activation 1")
    echo(f"random weights (seed {seed}) -> {save_params(params, out, source)}")


@app.command()
@guarded
def info(
    weights: Annotated[str | None, typer.Option(help="A weights folder or .pth (default: the lookup order).")] = None,
    arch: ArchOption = "vgg19",
) -> None:
    """Where the weights in use are, their source and checksum (JSON on stdout)."""
    typer.echo(json.dumps(weights_info(weights, _spec(arch).name), indent=2))
