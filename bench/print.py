"""Print-size style transfer: seconds per full pass over the tiles and peak resident memory.

For outputs of 1024, 2048 and 4096 px (square, the astronaut sample upsampled as content, the
brick sample as style at the output's size, random VGG19 weights, the paper's layers), each run
in a process of its own so that its peak resident memory is its own:

- tiled: tiles of 512 px with 64 px overlap, one pass of 2 L-BFGS steps per tile;
- untiled: the same 2 L-BFGS steps on the whole image, where the memory estimate lets it run
  within 12 GiB (it refuses the others before starting, as the command line does).

Reported: tiles, seconds of the pass (compilation apart), compile seconds, wall seconds of the
whole run (the style Gram matrices and the final loss, both taken tile by tile, included), peak
resident memory (ru_maxrss), the memory estimate, and the largest output that ran.

    python bench/print.py [--sizes 1024,2048,4096] [--tile 512] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 12 * 2**30  # the memory a run may use here: what a 16 GB laptop leaves free


def child(size: int, tile: int | None, steps: int) -> dict:
    """One run, in this process: its figures as a dict."""
    import jax
    import numpy as np

    from jaxmosaic.errors import JaxmosaicError
    from jaxmosaic.image import resize
    from jaxmosaic.io.images import load_image
    from jaxmosaic.resources import check_memory
    from jaxmosaic.techniques.style import StyleConfig, StyleInputs, style_memory, style_tiles, style_transfer
    from jaxmosaic.weights import random_vgg19

    start = time.perf_counter()
    content = np.asarray(resize(load_image(ROOT / "samples" / "astronaut.png"), size, size))
    style = np.asarray(resize(load_image(ROOT / "samples" / "brick.png"), 512, 512))
    config = StyleConfig(size=size, steps=(steps,), tile=tile, overlap=64, tile_steps=steps)
    inputs = StyleInputs(content, [style])
    estimate = style_memory(config, inputs)
    row = {"size": size, "mode": "tiled" if tile else "untiled", "estimate GiB": round(estimate / 2**30, 2)}
    try:
        check_memory(estimate, "this style run", budget=BUDGET, hint="--tile auto" if tile is None else "")
    except JaxmosaicError as err:
        return {**row, "refused": str(err)}
    plan = style_tiles(config, inputs)[-1]
    params = random_vgg19(jax.random.PRNGKey(0))
    solution = style_transfer(config, inputs, params)
    return {**row, "tiles": len(plan.grid) if plan.tile else 1, "pass s": round(solution.seconds, 1),
            "compile s": round(solution.compile_seconds, 1), "wall s": round(time.perf_counter() - start, 1),
            "peak GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "loss": round(solution.loss[0]["total"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,2048,4096")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, tile, steps = (int(value) for value in args.child)
        print(json.dumps(child(size, tile or None, steps)))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for tile in (0, args.tile):
            done = subprocess.run([sys.executable, __file__, "--child", str(size), str(tile), str(args.steps)],
                                  capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                rows.append({"size": size, "mode": "tiled" if tile else "untiled", "refused": done.stderr.strip().splitlines()[-1]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    reached = max((row["size"] for row in rows if "refused" not in row), default=None)
    columns = ["size", "mode", "tiles", "pass s", "compile s", "wall s", "peak GiB", "estimate GiB", "loss", "refused"]
    for row in rows:
        for column in columns:
            row.setdefault(column, "")
    print(markdown_table(rows, columns))
    print(f"largest output reached: {reached} px")
    write_results("print", {"config": {"tile": args.tile, "overlap": 64, "steps": args.steps, "optimizer": "lbfgs"},
                            "rows": rows, "largest": reached})


if __name__ == "__main__":
    main()
