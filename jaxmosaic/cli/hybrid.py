"""`jaxmosaic hybrid`: one image seen up close, another from afar."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from jaxmosaic.cli._common import FrameRecorder, echo, error_line, guarded, loss_progress, output_name


class Method(str, Enum):
    optimize = "optimize"
    fourier = "fourier"


class Optimizer(str, Enum):
    sgd = "sgd"
    adam = "adam"
    lbfgs = "lbfgs"


class Init(str, Enum):
    grey = "grey"
    near = "near"
    fourier = "fourier"


class Padding(str, Enum):
    zeros = "zeros"
    reflect = "reflect"
    wrap = "wrap"


def parse_ratios(text: str) -> list[float]:
    try:
        ratios = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--ratio {text!r}: expected comma-separated numbers, e.g. 0.1,0.3,1.0") from None
    if not ratios or any(not (r >= 0) for r in ratios):
        raise ValueError(f"--ratio {text!r}: ratios must be non-negative numbers")
    return ratios


@guarded
def hybrid(
    near: Annotated[Path, typer.Argument(help="The image seen up close (kept sharp).")],
    far: Annotated[Path, typer.Argument(help="The image seen from afar (matched after blurring).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output image; with several ratios, OUT-ratioR.png each.")],
    method: Annotated[Method, typer.Option(help="optimize pixels (the seed's way) or the fourier filter construction.")] = Method.optimize,
    ratio: Annotated[str, typer.Option(help="m_precise / m_blurred; several, comma-separated, run together in one compiled call.")] = "0.1",
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 200,
    kernel: Annotated[int, typer.Option(help="Gaussian kernel size (taps).")] = 15,
    sigma: Annotated[float, typer.Option(help="Gaussian sigma in pixels (fourier: the far image's low-pass).")] = 3.0,
    sigma_high: Annotated[float | None, typer.Option(help="fourier: sigma of the low-pass removed from the near image (default: --sigma).")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate (sgd, adam; scales lbfgs's step).")] = 0.3,
    optimizer: Annotated[Optimizer, typer.Option(help="sgd (plain gradient descent), adam or lbfgs.")] = Optimizer.sgd,
    init: Annotated[Init, typer.Option(help="Start from grey, the near image, or the fourier result.")] = Init.grey,
    padding: Annotated[Padding, typer.Option(help="Blur edge handling.")] = Padding.zeros,
    gamma: Annotated[float, typer.Option(help="sRGB <-> linear light power.")] = 2.2,
    size: Annotated[int, typer.Option(help="Resize the near image so its longest side is this (0 keeps it).")] = 512,
    crop: Annotated[bool, typer.Option("--crop", help="Centre-crop the far image to the near one's aspect before resizing.")] = False,
    preview: Annotated[bool, typer.Option("--preview", help="Also write OUT-preview.png: full, 1/2, 1/4, 1/8 size side by side.")] = False,
    gif: Annotated[bool, typer.Option("--gif", help="Also write OUT.gif, an animation of the optimisation.")] = False,
    save_every: Annotated[int, typer.Option(help="Write a frame every N steps into OUT-frames/ (0: none).")] = 0,
    metrics: Annotated[Path | None, typer.Option(help="Write a JSON summary here.")] = None,
) -> None:
    """Make a hybrid image: NEAR when seen up close, FAR from a distance."""
    import numpy as np

    from jaxmosaic.files import check_outputs, write_json
    from jaxmosaic.image import center_crop, fit_shape, load_image, resize, save_image
    from jaxmosaic.resources import check_memory
    from jaxmosaic.filters import gaussian_kernel1d
    from jaxmosaic.techniques.hybrid import distance_preview, hybrid_fourier, hybrid_loss, hybrid_optimize

    ratios = parse_ratios(ratio)
    if steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {steps}")
    if not sigma > 0 or (sigma_high is not None and not sigma_high > 0):
        raise ValueError(f"--sigma must be positive, got {sigma if not sigma > 0 else sigma_high}")
    if kernel < 1:
        raise ValueError(f"--kernel must be a positive integer, got {kernel}")
    if size < 0 or save_every < 0:
        raise ValueError("--size and --save-every must not be negative")
    if method == Method.fourier:
        ratios = ratios[:1]
    outputs = [out] if len(ratios) == 1 else [output_name(out, f"ratio{r:g}") for r in ratios]
    previews = [output_name(path, "preview", ".png") for path in outputs] if preview else []
    gif_path = out.with_suffix(".gif") if gif and method == Method.optimize else None
    frames_dir = output_name(out, "frames", "") if save_every and method == Method.optimize else None
    inputs = [near, far]
    check_outputs([*outputs, *previews, gif_path, metrics, frames_dir], inputs)

    near_image = load_image(near)
    far_image = load_image(far)
    for path, image in ((near, near_image), (far, far_image)):
        if min(image.shape[:2]) < 2:
            raise ValueError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, too small for a hybrid")
    height, width = fit_shape(*near_image.shape[:2], size)
    near_image = np.asarray(resize(near_image, height, width))
    far_note = f"far image {far_image.shape[1]}x{far_image.shape[0]}"
    if crop:
        fh, fw = far_image.shape[:2]
        scale = min(fh / height, fw / width)
        far_image = center_crop(far_image, max(1, round(height * scale)), max(1, round(width * scale)))
        far_note += f" centre-cropped to {far_image.shape[1]}x{far_image.shape[0]} and"
    far_image = np.asarray(resize(far_image, height, width))
    if kernel > min(height, width):
        raise ValueError(f"--kernel {kernel} is larger than the image ({width}x{height})")
    echo(f"near image at {width}x{height}; {far_note} resized to {width}x{height}")
    # a generous bound on the image-sized float32 buffers one step keeps alive per ratio
    check_memory(len(ratios) * height * width * 3 * 4 * 48, "this hybrid")

    settings = {
        "near": str(near), "far": str(far), "method": method.value, "ratios": ratios, "steps": steps,
        "kernel": kernel, "sigma": sigma, "lr": lr, "optimizer": optimizer.value, "init": init.value,
        "padding": padding.value, "gamma": gamma, "size": [height, width], "crop": crop,
    }
    written: list[str] = []
    if method == Method.fourier:
        start = time.perf_counter()
        image = np.asarray(hybrid_fourier(near_image, far_image, sigma_low=sigma, sigma_high=sigma_high or sigma, linear_light=True, gamma=gamma))
        seconds = time.perf_counter() - start
        # the optimisation's loss terms, so the two methods can be compared on the same scale
        total, terms = hybrid_loss(image, near_image, far_image, m_precise=ratios[0], m_blurred=1.0,
                                   kernel=gaussian_kernel1d(kernel, sigma), gamma=gamma, padding=padding.value)
        loss = {"total": float(total), **{name: float(value) for name, value in terms.items()}}
        images, summary = [image], {"steps": 0, "seconds": seconds, "compile_seconds": 0.0, "loss": loss}
        settings["sigma_high"] = sigma_high or sigma
    else:
        chunk = save_every or (max(1, steps // 40) if gif else max(1, min(20, steps // 10)))
        recorder = FrameRecorder(gif_path, frames_dir, save_every, [f"-ratio{r:g}" if len(ratios) > 1 else "" for r in ratios], inputs)

        with loss_progress(steps, "hybrid") as update:

            def on_chunk(progress) -> None:
                first = progress.loss[0]
                update(progress.step, f"loss {first['total']:.5g} (precise {first['precise']:.4g}, blurred {first['blurred']:.4g})")
                recorder.record(progress.step, np.asarray(progress.images))

            result = hybrid_optimize(
                near_image, far_image, ratios=ratios, steps=steps, kernel_size=kernel, sigma=sigma, learning_rate=lr,
                optimizer=optimizer.value, init=init.value, padding=padding.value, gamma=gamma, chunk=chunk, callback=on_chunk,
            )
        images = list(result.images)
        loss = result.loss[0] if len(ratios) == 1 else {f"ratio{r:g}": l for r, l in zip(ratios, result.loss)}
        summary = {"steps": result.steps, "seconds": result.seconds, "compile_seconds": result.compile_seconds, "loss": loss}
        written += recorder.write_gif()
    for path, image in zip(outputs, images):
        save_image(path, image, inputs=inputs)
        written.append(str(path))
    if method == Method.optimize and result.diverged_at is not None:
        step = int(np.max(result.diverged_at))
        error_line(f"the optimisation diverged at step {step} (loss not finite); wrote the last finite image(s); try a smaller --lr")
        raise typer.Exit(1)
    for path, image in zip(previews, images):
        save_image(path, distance_preview(image), inputs=inputs)
        written.append(str(path))
    if frames_dir:
        written.append(str(frames_dir))
    for r, path in zip(ratios, outputs):
        echo(f"wrote {path}" + (f" (ratio {r:g})" if len(ratios) > 1 else ""))
    if metrics:
        write_json(metrics, {"technique": "hybrid", "settings": settings, **summary, "outputs": written}, inputs=inputs)
