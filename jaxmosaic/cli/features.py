"""`jaxmosaic features`: VGG19 activations of an image, saved as .npz, with a picture of them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from jaxmosaic.cli._common import echo, guarded, vgg_params


@guarded
def features(
    image: Annotated[Path, typer.Argument(help="Input image.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npz of the activations (NHWC, float32).")],
    layers: Annotated[str, typer.Option(help="Comma-separated VGG19 layer names.")] = "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1",
    weights: Annotated[
        str | None, typer.Option(help="Weights folder or .pth, or 'random' (default: $JAXMOSAIC_WEIGHTS, then the cache).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for --weights random.")] = 0,
    size: Annotated[int, typer.Option(help="Resize so the longest side is this many pixels (0 keeps the size).")] = 256,
    pooling: Annotated[str, typer.Option(help="max or avg.")] = "max",
    preview: Annotated[Path | None, typer.Option(help="Also write a PNG showing the strongest channels of each layer.")] = None,
    metrics: Annotated[Path | None, typer.Option(help="Write a JSON summary here.")] = None,
) -> None:
    """Extract VGG19 features of an image (the building block of style, texture and mosaic)."""
    import jax
    import numpy as np

    from jaxmosaic.features_preview import feature_montage
    from jaxmosaic.files import atomic_path, check_outputs, write_json
    from jaxmosaic.image import fit_shape, load_image, resize, save_image
    from jaxmosaic.vgg import vgg19_features

    names = tuple(name.strip() for name in layers.split(",") if name.strip())
    if pooling not in ("max", "avg"):
        raise ValueError(f"--pooling must be max or avg, got {pooling!r}")
    if out.suffix != ".npz":
        raise ValueError(f"--out {out}: expected a .npz file name")
    check_outputs([out, preview, metrics], [image])
    pixels = load_image(image)
    height, width = fit_shape(*pixels.shape[:2], size)
    pixels = resize(pixels, height, width)
    params = vgg_params(weights, seed)
    extract = jax.jit(vgg19_features, static_argnames=("layers", "pooling"))
    start = time.perf_counter()
    result = jax.block_until_ready(extract(params, pixels[None], layers=names, pooling=pooling))
    seconds = time.perf_counter() - start
    arrays = {name: np.asarray(value[0]) for name, value in result.items()}
    with atomic_path(out, inputs=[image]) as tmp:
        with open(tmp, "wb") as file:
            np.savez(file, **arrays)
    outputs = [str(out)]
    if preview:
        save_image(preview, feature_montage(arrays), inputs=[image])
        outputs.append(str(preview))
    for name, value in arrays.items():
        echo(f"{name:>8}: {value.shape[0]}x{value.shape[1]}x{value.shape[2]}  mean {value.mean():.4g}")
    echo(f"wrote {', '.join(outputs)}")
    if metrics:
        summary = {
            "technique": "features",
            "settings": {"layers": list(names), "size": [height, width], "pooling": pooling, "weights": weights or "lookup"},
            "seconds": seconds,
            "features": {name: {"shape": list(value.shape), "mean": float(value.mean())} for name, value in arrays.items()},
            "outputs": outputs,
        }
        write_json(metrics, summary, inputs=[image])
