"""`jaxmosaic style`: neural style transfer (Gatys et al.), with checkpoints and batches of styles."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from jaxmosaic.cli._common import FrameRecorder, echo, error_line, guarded, loss_progress, output_name, vgg_params


class Optimizer(str, Enum):
    lbfgs = "lbfgs"
    adam = "adam"


class Pooling(str, Enum):
    max = "max"
    avg = "avg"


def parse_list(text: str, option: str, kind=float) -> list:
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated {'whole numbers' if kind is int else 'numbers'}") from None
    if not values:
        raise ValueError(f"{option}: no values given")
    return values


def names(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


@guarded
def style(
    content: Annotated[Path, typer.Argument(help="The content image.")],
    styles: Annotated[list[Path], typer.Argument(help="One or more style images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output image; with --batch, OUT-style1.png, OUT-style2.png, ...")],
    size: Annotated[int, typer.Option(help="Longest side of the output.")] = 512,
    scales: Annotated[str | None, typer.Option(help="Coarse to fine, e.g. 256,512: each scale starts from the previous result upsampled (overrides --size).")] = None,
    steps: Annotated[str, typer.Option(help="Iterations: one count, or one per scale (e.g. 300,100).")] = "500",
    style_blend: Annotated[str | None, typer.Option(help="Blend weights of the style images, e.g. 2,1 (default: equal).")] = None,
    batch: Annotated[bool, typer.Option("--batch", help="One output per style image, optimised together in one compiled call.")] = False,
    content_layers: Annotated[str, typer.Option(help="Comma-separated VGG19 layers for content.")] = "relu4_2",
    style_layers: Annotated[str, typer.Option(help="Comma-separated VGG19 layers for style.")] = "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1",
    layer_weights: Annotated[str | None, typer.Option(help="w_l per style layer (default: equal, summing to 1).")] = None,
    content_weight: Annotated[float, typer.Option(help="alpha.")] = 1.0,
    style_weight: Annotated[float, typer.Option(help="beta (alpha / beta = 1e-3 in the paper).")] = 1e3,
    tv_weight: Annotated[float, typer.Option(help="Weight of the squared total variation (smoothness).")] = 0.0,
    pooling: Annotated[Pooling, typer.Option(help="VGG19 pooling.")] = Pooling.max,
    optimizer: Annotated[Optimizer, typer.Option(help="lbfgs (as in the paper) or adam.")] = Optimizer.lbfgs,
    lr: Annotated[float | None, typer.Option(help="Learning rate (adam: on the [0, 1] pixel scale, e.g. 0.02; lbfgs: scales its step).")] = None,
    init: Annotated[str, typer.Option(help="noise (seeded), content, style, or an image path.")] = "noise",
    seed: Annotated[int, typer.Option(help="Seed of the noise (and of --weights random).")] = 0,
    style_scale: Annotated[float, typer.Option(help="Style image size relative to the output's.")] = 1.0,
    original_colors: Annotated[bool, typer.Option("--original-colors", help="Keep the content's colours (transfer luminance only, YIQ).")] = False,
    weights: Annotated[str | None, typer.Option(help="Weights folder or .pth, or 'random' (default: $JAXMOSAIC_WEIGHTS, then the cache).")] = None,
    save_every: Annotated[int, typer.Option(help="Write a frame every N steps into OUT-frames/ (0: none).")] = 0,
    gif: Annotated[bool, typer.Option("--gif", help="Also write OUT.gif, an animation of the optimisation.")] = False,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint folder (pixels, optimiser state, step), saved every --checkpoint-every steps and on Ctrl-C.")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 50,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --checkpoint (--steps may be raised to run longer).")] = False,
    metrics: Annotated[Path | None, typer.Option(help="Write a JSON summary here.")] = None,
) -> None:
    """Paint CONTENT in the style of STYLE (Gatys, Ecker and Bethge)."""
    import jax
    import numpy as np

    from jaxmosaic.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
    from jaxmosaic.files import check_outputs, write_json
    from jaxmosaic.image import fit_shape, load_image, save_image
    from jaxmosaic.optimize import make_optimizer
    from jaxmosaic.resources import check_memory
    from jaxmosaic.techniques.style import INITS, Resume, check_settings, memory_estimate, style_transfer

    sizes = parse_list(scales, "--scales", int) if scales else [size]
    blend = parse_list(style_blend, "--style-blend") if style_blend else None
    if batch and blend is not None:
        raise ValueError("--style-blend and --batch do not go together: --batch makes one output per style")
    w_layers = parse_list(layer_weights, "--layer-weights") if layer_weights else None
    c_layers, style_weights, step_counts = check_settings(
        len(styles), blend=blend, content_layers=names(content_layers), style_layers=names(style_layers),
        layer_weights=w_layers, sizes=sizes, steps=parse_list(steps, "--steps", int))
    s_layers = tuple(style_weights)
    if style_scale <= 0 or save_every < 0 or checkpoint_every < 1:
        raise ValueError("--style-scale must be positive, --save-every not negative, --checkpoint-every at least 1")
    if optimizer == Optimizer.adam and lr is None:
        lr = 0.02
    if resume and checkpoint is None:
        raise ValueError("--resume needs --checkpoint DIR")

    count = len(styles) if batch else 1
    outputs = [out] if not batch else [output_name(out, f"style{i + 1}") for i in range(count)]
    gif_path = out.with_suffix(".gif") if gif else None
    frames_dir = output_name(out, "frames", "") if save_every else None
    init_path = None if init in INITS else Path(init)
    inputs = [content, *styles, *([init_path] if init_path else [])]
    check_outputs([*outputs, gif_path, metrics, frames_dir, checkpoint], inputs)

    content_image = load_image(content)
    style_images = [load_image(path) for path in styles]
    init_value = load_image(init_path) if init_path else init
    height, width = fit_shape(*content_image.shape[:2], sizes[-1])
    check_memory(memory_estimate(height, width, (*c_layers, *s_layers), count), f"style transfer at {width}x{height}" + (f" for {count} styles" if count > 1 else ""))

    settings = {
        "content": str(content), "styles": [str(p) for p in styles], "sizes": sizes, "style_blend": blend, "batch": batch,
        "content_layers": list(c_layers), "style_layers": list(s_layers), "layer_weights": w_layers,
        "alpha": content_weight, "beta": style_weight, "tv_weight": tv_weight, "pooling": pooling.value,
        "optimizer": optimizer.value, "lr": lr, "init": init, "seed": seed, "style_scale": style_scale,
        "original_colors": original_colors, "weights": weights or "lookup",
    }
    params = vgg_params(weights, seed)

    resume_from = None
    if resume:
        meta = read_checkpoint_meta(checkpoint)
        changed = sorted(k for k in settings if meta.get("settings", {}).get(k) != settings[k])
        if changed:
            raise ValueError(f"--checkpoint {checkpoint} was made with other settings ({', '.join(changed)}); start a new one")
        scale = meta["scale"]
        h, w = fit_shape(*content_image.shape[:2], sizes[scale])
        transform = make_optimizer(optimizer.value, lr)
        like_x = np.zeros((count, h, w, 3), np.float32)
        like_state = jax.vmap(transform.init)(like_x) if batch else transform.init(like_x[0])
        state, meta = load_checkpoint(checkpoint, {"images": like_x, "opt_state": like_state})
        resume_from = Resume(scale, meta["step"], state["images"], state["opt_state"])
        echo(f"resuming from {checkpoint}: scale {sizes[scale]}, step {meta['step']}")

    last: dict = {}
    # the callback runs after each chunk: often enough for every frame, checkpoint and GIF frame asked for
    chunk = min([20, *([save_every] if save_every else []), *([checkpoint_every] if checkpoint else [])])
    recorder = FrameRecorder(gif_path, frames_dir, save_every, [f"-style{i + 1}" if batch else "" for i in range(count)], inputs)

    def save_state(progress) -> None:
        save_checkpoint(checkpoint, {"images": progress.images, "opt_state": progress.opt_state},
                        {"settings": settings, "scale": progress.scale, "step": progress.step})

    start = time.perf_counter()
    try:
        with loss_progress(sum(step_counts), "style") as update:
            done_before = {i: sum(step_counts[:i]) for i in range(len(sizes))}

            def on_chunk(progress) -> None:
                last["progress"] = progress
                losses = np.asarray(progress.losses)
                current = float(losses.reshape(len(losses), -1)[-1, 0])
                update(done_before[progress.scale] + progress.step, f"{progress.size[1]}x{progress.size[0]} loss {current:.5g}")
                recorder.record(progress.step, np.clip(np.asarray(progress.images), 0, 1), prefix=f"scale{progress.scale}-")
                if checkpoint and progress.step % checkpoint_every == 0:
                    save_state(progress)

            result = style_transfer(
                params, content_image, style_images, blend=blend, batch=batch, content_layers=c_layers, style_layers=s_layers,
                layer_weights=w_layers, alpha=content_weight, beta=style_weight, tv_weight=tv_weight, pooling=pooling.value,
                optimizer=optimizer.value, learning_rate=lr, sizes=sizes, steps=step_counts, style_scale=style_scale,
                init=init_value, seed=seed, original_colors=original_colors, chunk=chunk, callback=on_chunk, resume=resume_from,
            )
    except KeyboardInterrupt:
        progress = last.get("progress")
        if progress is None:
            raise
        for path, image in zip(outputs, np.clip(np.asarray(progress.images), 0, 1)):
            save_image(path, image, inputs=inputs)
        if checkpoint:
            save_state(progress)
        where = f"step {progress.step} of scale {sizes[progress.scale]}"
        error_line(f"interrupted at {where}; wrote {', '.join(map(str, outputs))}" + (f" and checkpoint {checkpoint} (continue with --resume)" if checkpoint else ""))
        raise typer.Exit(130) from None
    except FloatingPointError as err:
        progress = last.get("progress")
        if progress is not None:
            for path, image in zip(outputs, np.clip(np.asarray(progress.images), 0, 1)):
                if np.all(np.isfinite(image)):
                    save_image(path, image, inputs=inputs)
        raise ValueError(str(err)) from None
    written = []
    for path, image in zip(outputs, result.images):
        save_image(path, image, inputs=inputs)
        written.append(str(path))
    written += recorder.write_gif()
    if frames_dir:
        written.append(str(frames_dir))
    if checkpoint and last.get("progress") is not None:
        save_state(last["progress"])
    for path, loss in zip(outputs, result.loss):
        echo(f"wrote {path}: loss {loss['total']:.5g} (content {loss['content']:.4g}, style {loss['style']:.4g}, tv {loss['tv']:.4g})")
    if metrics:
        loss = result.loss[0] if not batch else {f"style{i + 1}": l for i, l in enumerate(result.loss)}
        summary = {"technique": "style", "settings": settings, "steps": result.steps, "seconds": result.seconds,
                   "compile_seconds": result.compile_seconds, "wall_seconds": time.perf_counter() - start, "loss": loss, "outputs": written}
        write_json(metrics, summary, inputs=inputs)
