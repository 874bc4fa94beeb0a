"""Video style transfer: seconds per frame of the sequential method and of the batched multi-pass,
the temporal error of each against the frame-by-frame baseline, and jit vs eager for one frame.

A synthetic clip (a smooth random texture panning 2 px a frame to the right under a grey square
moving 1 px a frame down), the brick sample as the style, random VGG19 weights; the flows (DIS) and
masks are computed once and shared by every run. Rows:

- per-frame: every frame from the same noise, no temporal loss (`--init noise --temporal-weight 0`),
  the flickering baseline;
- sequential: the reference's single-pass method (`--init prev-warped`, the temporal loss);
- multi-pass, --batch-frames 1, 4, 8: the same number of passes and steps per pass each; with 1 it
  is the reference's multi-pass algorithm, with more the frames of a window are one batch.

Seconds per frame = wall time of the run / frames (every pass included; compilation included, as a
user meets it, with XLA's compilation cache on as the command line has it). Temporal error: the
mean over consecutive pairs of the masked squared difference between a frame and the one before it
warped (`jaxmosaic.video.temporal.temporal_error`); "vs per-frame" divides it by the baseline's. The reference's per-frame times are quoted, not measured.

    python bench/video.py [--frames 8] [--size 64] [--steps 10] [--passes 2] [--repeats 2] [--strip PATH]
                          [--strip-steps 60] [--strip-only]

The strip in docs/images/video-strip.jpg is the sequential method with --strip-steps per frame
(made with --strip-only --frames 6 --strip-steps 30).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import jit_and_eager_seconds, markdown_table, write_results  # noqa: E402

from jaxmosaic import load_image, save_image  # noqa: E402
from jaxmosaic.config import replace  # noqa: E402
from jaxmosaic.losses import gram_targets  # noqa: E402
from jaxmosaic.techniques.style import StyleTargets  # noqa: E402
from jaxmosaic.vgg import vgg19_features  # noqa: E402
from jaxmosaic.video.run import frame_strip  # noqa: E402
from jaxmosaic.video.stylize import VideoConfig, stylize_video, video_flows, video_losses  # noqa: E402
from jaxmosaic.video.temporal import temporal_error  # noqa: E402
from jaxmosaic.weights import random_vgg19  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
STRIP = Path(__file__).resolve().parents[1] / "docs" / "images" / "video-strip.jpg"

# Quoted, not measured: what the reference (manuelruder/artistic-videos, Torch7 + L-BFGS) is
# reported to take per frame.
REFERENCE = [
    {"source": "Ruder, Dosovitskiy and Brox 2016, as quoted in issue 24", "method": "sequential",
     "resolution": "1024x436", "device": "Nvidia Titan X", "seconds per frame": "480-600 (8-10 min)"},
    {"source": "users of the reference, issue 24: 20 h for a 10 s clip (240-300 frames at 24-30 fps)",
     "method": "sequential", "resolution": "not stated", "device": "one GPU", "seconds per frame": "240-300"},
]


def synthetic_clip(count: int, size: int) -> np.ndarray:
    """float32 (count, size, size, 3): a smooth texture panning 2 px a frame right, a grey square moving 1 px a frame down."""
    rng = np.random.default_rng(0)
    texture = ndimage.gaussian_filter(rng.random((size, size + 2 * count, 3)), sigma=(3, 3, 0))
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    frames = np.stack([texture[:, 2 * (count - i): 2 * (count - i) + size] for i in range(count)]).astype(np.float32)
    side = size // 4
    for i in range(count):
        frames[i, size // 4 + i: size // 4 + i + side, size // 2: size // 2 + side] = 0.5
    return frames


def loss_and_gradient(config: VideoConfig, frames: np.ndarray, style: np.ndarray, params, flows, repeats: int) -> dict:
    """jit vs eager for one frame's total loss (content, style, temporal against the previous frame) and its gradient."""
    content, x = frames[1:2], frames[0:1]
    layers = tuple(config.layer_weight_map)
    features = vgg19_features(params, content, config.content_layers, pooling=config.pooling)
    targets = StyleTargets({name: features[name] for name in config.content_layers},
                           gram_targets(params, style, layers, size=content.shape[1:3], pooling=config.pooling))
    warped = np.asarray(frames[0])[None, None]
    masks = np.asarray(flows.masks[(1, 0)])[None, None]
    settings = {"layer_weights": config.layer_weight_map, "alpha": config.content_weight, "beta": config.style_weight,
                "tv_weight": config.tv_weight, "pooling": config.pooling, "temporal_weight": config.temporal_weight}

    def total(pixels, targets, temporal, params):
        return video_losses(pixels, targets, temporal, params, **settings)[0].sum()

    return jit_and_eager_seconds(jax.value_and_grad(total), (x, targets, (warped, masks), params), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--strip", type=lambda text: Path(text) if text else None, default=STRIP,
                        help="Where the docs' frame strip goes ('' for none).")
    parser.add_argument("--strip-steps", type=int, default=60, help="Steps per frame of the sequential run the strip shows.")
    parser.add_argument("--strip-only", action="store_true", help="Only make the strip.")
    args = parser.parse_args()
    # a run optimises window after window of the same shapes: as the command line does, keep XLA's
    # compiled programs (in a fresh folder, so the first window of each shape still compiles)
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jaxmosaic-video-bench-"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    frames = synthetic_clip(args.frames, args.size)
    style = load_image(SAMPLES / "brick.png")
    params = random_vgg19(jax.random.PRNGKey(0))
    base = VideoConfig(size=args.size, steps=(args.steps,))
    start = time.perf_counter()
    flows = video_flows(frames, base)
    flow_seconds = time.perf_counter() - start
    if args.strip is not None:
        strip = stylize_video(replace(base, steps=(args.strip_steps,)), frames, [style], params, flows=flows).frames
        save_image(args.strip, frame_strip(strip, frames), quality=85)
        print(f"wrote {args.strip} ({args.strip.stat().st_size / 1024:.0f} kB)", flush=True)
        if args.strip_only:
            return
    pairs = range(1, args.frames)
    pair_flows = np.stack([flows.flows[(i, i - 1)] for i in pairs])
    pair_masks = np.stack([flows.masks[(i, i - 1)] for i in pairs])
    runs = {
        "per-frame (noise, no temporal loss)": replace(base, init="noise", temporal_weight=0.0),
        "sequential": base,
        **{f"multi-pass x{args.passes}, batch-frames {b}": replace(base, passes=args.passes, batch_frames=b)
           for b in (1, 4, 8) if b <= args.frames},
    }
    rows = []
    for name, config in runs.items():
        start = time.perf_counter()
        result = stylize_video(config, frames, [style], params, flows=flows)
        seconds = time.perf_counter() - start
        error = float(np.mean(temporal_error(result.frames, pair_flows, pair_masks)))
        rows.append({"run": name, "passes": config.passes, "batch frames": config.batch_frames,
                     "steps per frame and pass": args.steps, "s/frame": seconds / args.frames, "temporal error": error})
        print(f"{name}: {seconds:.1f} s", flush=True)
    baseline = rows[0]
    for row in rows:
        row["vs per-frame"] = row["temporal error"] / baseline["temporal error"]
        row["s/frame vs sequential"] = row["s/frame"] / rows[1]["s/frame"]
    input_error = float(np.mean(temporal_error(frames, pair_flows, pair_masks)))
    step = loss_and_gradient(base, frames, style, params, flows, args.repeats)
    path = write_results("video", {"config": {**vars(args), "strip": str(args.strip)}, "rows": rows,
                                   "input temporal error": input_error, "flow seconds": flow_seconds,
                                   "one frame loss and gradient": step, "reference (quoted, not measured)": REFERENCE})
    print(f"video style transfer, {args.frames} frames of {args.size}x{args.size}, {args.steps} L-BFGS steps per frame "
          f"and pass, random VGG19 weights; flows (DIS) {flow_seconds:.2f} s for the clip; input temporal error "
          f"{input_error:.4g}")
    print(markdown_table(rows, ["run", "s/frame", "s/frame vs sequential", "temporal error", "vs per-frame"]))
    print("\none frame's loss and gradient (content, style, temporal)")
    print(markdown_table([step], list(step)))
    print("\nthe reference, quoted (not measured here)")
    print(markdown_table(REFERENCE, list(REFERENCE[0])))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
