"""`jaxmosaic features`: VGG19 activations of an image, saved as .npz, with a picture of them."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated

import jax
import numpy as np
import typer

from jaxmosaic.cli._common import MetricsOption, OverwriteOption, WaitOption, WeightsOption, guarded, vgg_params, write_metrics
from jaxmosaic.cli.console import echo
from jaxmosaic.cli._options import command
from jaxmosaic.config import choice, names, setting, settings_dict, whole
from jaxmosaic.image import fit_shape, resize
from jaxmosaic.io.artifacts import save_artifact
from jaxmosaic.io.outputs import check_outputs
from jaxmosaic.io.images import load_image, save_image
from jaxmosaic.pictures import feature_montage
from jaxmosaic.resources import activation_bytes, check_memory
from jaxmosaic.vgg import Pooling, check_layers, smallest_side, vgg19_features


@dataclasses.dataclass(frozen=True)
class FeaturesConfig:
    layers: tuple[str, ...] = setting(("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), "Comma-separated VGG19 layer names.")
    size: int = setting(256, "Resize so the longest side is this many pixels (0 keeps the size).")
    pooling: Pooling = setting(Pooling.max, "max or avg.")
    seed: int = setting(0, "Seed for --weights random.")

    def __post_init__(self):
        object.__setattr__(self, "layers", check_layers(names("layers", self.layers), "layers"))
        whole("size", self.size, minimum=0, maximum=2**16)
        object.__setattr__(self, "pooling", choice("pooling", self.pooling, Pooling))
        whole("seed", self.seed, minimum=0)


@guarded
@command(config=FeaturesConfig)
def features(
    image: Annotated[Path, typer.Argument(help="Input image.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npz of the activations (HWC per layer, float32).")],
    config: FeaturesConfig,
    weights: WeightsOption = None,
    preview: Annotated[Path | None, typer.Option(help="Also write a PNG showing the strongest channels of each layer.")] = None,
    metrics: MetricsOption = None,
    overwrite: OverwriteOption = False,
    wait: WaitOption = False,
) -> None:
    """Extract VGG19 features of an image (the building block of style, texture and mosaic)."""
    if out.suffix != ".npz":
        raise ValueError(f"--out {out}: expected a .npz file name")
    check_outputs([], [image, *([Path(weights)] if weights not in (None, "random") else [])], images=[preview],
                  files=[(out, "features"), (metrics, "metrics")], overwrite=overwrite, wait=wait, say=echo)
    pixels = load_image(image)
    height, width = fit_shape(*pixels.shape[:2], config.size)
    if min(height, width) < smallest_side(config.layers):
        raise ValueError(f"{image} at {width}x{height} is too small for the layers asked for: they need "
                         f"{smallest_side(config.layers)} pixels a side (a larger --size, or a less elongated image)")
    check_memory(activation_bytes(height, width, config.layers) * 2, f"the features of {image} at {width}x{height}")
    params = vgg_params(weights, config.seed)
    extract = jax.jit(vgg19_features, static_argnames=("layers", "pooling"))
    start = time.perf_counter()
    result = jax.block_until_ready(extract(params, resize(pixels, height, width)[None], layers=config.layers, pooling=config.pooling))
    seconds = time.perf_counter() - start
    arrays = {name: np.asarray(value[0]) for name, value in result.items()}
    save_artifact(out, "features", {"layers": list(config.layers), "size": [height, width]}, arrays, inputs=[image])
    written = [out]
    if preview:
        written.append(save_image(preview, feature_montage(arrays), inputs=[image]))
    for name, value in arrays.items():
        echo(f"{name:>8}: {value.shape[0]}x{value.shape[1]}x{value.shape[2]}  mean {value.mean():.4g}")
    echo(f"wrote {', '.join(map(str, written))}")
    shapes = {name: {"shape": list(value.shape), "mean": float(value.mean())} for name, value in arrays.items()}
    write_metrics(metrics, "features", {**settings_dict(config), "weights": weights or "lookup"}, [image], written,
                  seconds=seconds, features=shapes)
