"""`jaxmosaic texture`: texture synthesis from an exemplar (VGG19 Gram matrices plus the spectrum constraint)."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from jaxmosaic.cli._common import FrameRecorder, echo, error_line, guarded, loss_progress, output_name, vgg_params
from jaxmosaic.cli.style import Optimizer, Pooling, names, parse_list


def parse_size(text: str | None, exemplar_shape) -> tuple[int, int]:
    """--size: N (longest side, the exemplar's aspect) or WxH; None keeps the exemplar's size."""
    from jaxmosaic.image import fit_shape

    if text is None:
        return tuple(exemplar_shape[:2])
    try:
        if "x" in text.lower():
            width, height = (int(v) for v in text.lower().split("x"))
            return height, width
        return fit_shape(*exemplar_shape[:2], int(text))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected a whole number (longest side) or WxH, e.g. 512 or 640x480") from None


class Color(str, Enum):
    auto = "auto"
    gray = "gray"
    rgb = "rgb"


@guarded
def texture(
    exemplar: Annotated[Path, typer.Argument(help="The texture exemplar (grey or colour).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output image; with --variations N, OUT-1.png ... OUT-N.png.")],
    size: Annotated[str | None, typer.Option(help="Output size: the longest side (e.g. 512) or WxH (default: the exemplar's).")] = None,
    steps: Annotated[int, typer.Option(help="Iterations.")] = 300,
    layers: Annotated[str, typer.Option(help="Comma-separated VGG19 layers for the Gram matrices.")] = "relu1_1,pool1,pool2,pool3,pool4",
    layer_weights: Annotated[str | None, typer.Option(help="w_l per layer (default: equal, summing to 1).")] = None,
    spectrum_weight: Annotated[str, typer.Option(help="beta of the spectrum term: 'auto' (10% of the loss on noise at the start) or a number; 0 gives plain Gatys synthesis.")] = "auto",
    variations: Annotated[int, typer.Option(help="Synthesise N textures from seeds SEED ... SEED+N-1 in one compiled call.")] = 1,
    tileable: Annotated[bool, typer.Option("--tileable", help="Circular padding: the texture wraps around seamlessly (also writes OUT-tiled.png, 2x2).")] = False,
    match_histogram: Annotated[bool, typer.Option("--match-histogram", help="Match each channel's histogram to the exemplar's at the end.")] = False,
    color: Annotated[Color, typer.Option(help="auto: grey when the exemplar's channels are equal.")] = Color.auto,
    pooling: Annotated[Pooling, typer.Option(help="VGG19 pooling (avg is better for synthesis).")] = Pooling.avg,
    optimizer: Annotated[Optimizer, typer.Option(help="lbfgs (as in the paper) or adam.")] = Optimizer.lbfgs,
    lr: Annotated[float | None, typer.Option(help="Learning rate (adam: e.g. 0.02; lbfgs: scales its step).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the starting noise (and of --weights random).")] = 0,
    continue_from: Annotated[Path | None, typer.Option("--continue", help="Continue optimising this earlier result (e.g. the OUT of a previous run) instead of starting from noise.")] = None,
    weights: Annotated[str | None, typer.Option(help="Weights folder or .pth, or 'random' (default: $JAXMOSAIC_WEIGHTS, then the cache).")] = None,
    save_every: Annotated[int, typer.Option(help="Write a frame every N steps into OUT-frames/ (0: none).")] = 0,
    gif: Annotated[bool, typer.Option("--gif", help="Also write OUT.gif, an animation of the optimisation.")] = False,
    metrics: Annotated[Path | None, typer.Option(help="Write a JSON summary here.")] = None,
) -> None:
    """Synthesise a new texture like EXEMPLAR (Gatys et al. with the spectrum constraint of Liu et al.)."""
    import numpy as np

    from jaxmosaic.files import check_outputs, write_json
    from jaxmosaic.image import load_image, resize, save_image, side_by_side
    from jaxmosaic.resources import check_memory
    from jaxmosaic.techniques.style import memory_estimate
    from jaxmosaic.techniques.texture import check_texture_settings, is_gray, synthesize_texture

    if spectrum_weight != "auto":
        try:
            beta = float(spectrum_weight)
        except ValueError:
            raise ValueError(f"--spectrum-weight {spectrum_weight!r}: expected 'auto' or a number") from None
        if not np.isfinite(beta) or beta < 0:
            raise ValueError("--spectrum-weight must be 'auto' or a non-negative number")
    else:
        beta = "auto"
    if save_every < 0 or (lr is not None and lr <= 0):
        raise ValueError("--save-every must not be negative and --lr must be positive")
    if optimizer == Optimizer.adam and lr is None:
        lr = 0.02
    w_layers = parse_list(layer_weights, "--layer-weights") if layer_weights else None
    outputs = [out] if variations == 1 else [output_name(out, str(i + 1)) for i in range(max(variations, 1))]
    side = output_name(out, "side")
    tiled = output_name(out, "tiled") if tileable else None
    gif_path = out.with_suffix(".gif") if gif else None
    frames_dir = output_name(out, "frames", "") if save_every else None
    inputs = [exemplar, *([continue_from] if continue_from else [])]
    check_outputs([*outputs, side, tiled, gif_path, metrics, frames_dir], inputs)

    image = load_image(exemplar)
    gray = color == Color.gray or (color == Color.auto and is_gray(image))
    image = np.mean(image, axis=-1, keepdims=True) if gray else image
    shape = parse_size(size, image.shape)
    layer_names = names(layers)
    check_texture_settings(image.shape, shape, layer_names, w_layers, steps, variations)
    start_image = load_image(continue_from) if continue_from else None
    check_memory(memory_estimate(*shape, layer_names, variations), f"texture synthesis at {shape[1]}x{shape[0]}"
                 + (f" for {variations} variations" if variations > 1 else ""))
    params = vgg_params(weights, seed)

    last: dict = {}
    chunk = min([20, *([save_every] if save_every else [])])
    recorder = FrameRecorder(gif_path, frames_dir, save_every, [f"-{i + 1}" if variations > 1 else "" for i in range(variations)], inputs)

    def write_all(images) -> list[str]:
        for path, picture in zip(outputs, images):
            save_image(path, picture, inputs=inputs)
        return [str(p) for p in outputs]

    start = time.perf_counter()
    try:
        with loss_progress(steps, "texture") as update:
            def on_chunk(progress) -> None:
                last["progress"] = progress
                losses = np.asarray(progress.losses)
                update(progress.step, f"loss {float(losses.reshape(len(losses), -1)[-1, 0]):.5g}")
                recorder.record(progress.step, np.clip(np.asarray(progress.images), 0, 1))

            result = synthesize_texture(
                params, image, size=shape, layers=layer_names, layer_weights=w_layers, spectrum_weight=beta,
                pooling=pooling.value, tileable=tileable, steps=steps, variations=variations, seed=seed,
                init=start_image, histogram=match_histogram, optimizer=optimizer.value, learning_rate=lr,
                chunk=chunk, callback=on_chunk,
            )
    except KeyboardInterrupt:
        progress = last.get("progress")
        if progress is None:
            raise
        written = write_all(np.clip(np.asarray(progress.images), 0, 1))
        error_line(f"interrupted at step {progress.step}; wrote {', '.join(written)} (continue with --continue {outputs[0]})")
        raise typer.Exit(130) from None
    written = write_all(result.images)
    height = result.images.shape[1]
    shown = np.asarray(resize(image, height, max(1, round(image.shape[1] * height / image.shape[0]))))
    save_image(side, side_by_side([shown, *result.images]), inputs=inputs)
    written.append(str(side))
    if tiled:
        save_image(tiled, np.tile(result.images[0], (2, 2, 1)), inputs=inputs)
        written.append(str(tiled))
    written += recorder.write_gif()
    if frames_dir:
        written.append(str(frames_dir))
    for path, loss in zip(outputs, result.loss):
        echo(f"wrote {path}: loss {loss['total']:.5g} (gram {loss['gram']:.4g}, spectrum {loss['spectrum']:.4g})")
    if metrics:
        settings = {"exemplar": str(exemplar), "size": [shape[1], shape[0]], "layers": layer_names, "layer_weights": w_layers,
                    "spectrum_weight": result.spectrum_weight, "spectrum_weight_option": spectrum_weight, "variations": variations,
                    "tileable": tileable, "match_histogram": match_histogram, "gray": gray, "pooling": pooling.value,
                    "optimizer": optimizer.value, "lr": lr, "seed": seed, "continue": str(continue_from) if continue_from else None,
                    "weights": weights or "lookup"}
        loss = result.loss[0] if variations == 1 else {str(i + 1): value for i, value in enumerate(result.loss)}
        summary = {"technique": "texture", "settings": settings, "iterations": result.steps, "seconds": result.seconds,
                   "compile_seconds": result.compile_seconds, "wall_seconds": time.perf_counter() - start, "loss": loss,
                   "outputs": written}
        write_json(metrics, summary, inputs=inputs)
