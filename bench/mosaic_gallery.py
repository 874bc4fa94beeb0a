"""The docs picture of mosaics/mosaic.md: one sample as a mosaic with greedy assignment, with optimal
assignment under the same reuse cap, and with subdivided cells, side by side and labelled.

The tiles are cut from the other bundled samples (a library small enough that the cap binds: most
tiles are used as often as the cap allows), described by the weight-free colour features and drawn
uncoloured, so that a poor match shows as a wrong colour. The totals come from the same figures
`--metrics` writes (`mosaic.assignment.cost` and `greedy_cost`).

    python bench/mosaic_gallery.py            # writes docs/images/mosaic-assign.jpg and bench/results/mosaic-gallery-cpu.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import write_results
from PIL import Image, ImageDraw, ImageFont

from jaxmosaic import MosaicConfig, build_library, load_image, make_mosaic, resize
from jaxmosaic.pictures import side_by_side
from jaxmosaic.techniques.mosaic import (
    ColorMode,
    FeatureConfig,
    mosaic_grid,
    split_cells,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


def cut_tiles(folder: Path, samples: list[str], side: int) -> int:
    """Every whole side x side cell of each sample saved as a PNG tile in `folder`; their number."""
    count = 0
    for name in samples:
        image = load_image(SAMPLES / name)
        rows, cols = image.shape[0] // side, image.shape[1] // side
        for index, cell in enumerate(np.asarray(split_cells(image[: rows * side, : cols * side], rows, cols))):
            Image.fromarray(np.round(cell * 255).astype(np.uint8)).save(folder / f"{Path(name).stem}-{index:03d}.png")
            count += 1
    return count


def labelled(image: np.ndarray, lines: list[str], *, band: int = 40) -> np.ndarray:
    """`image` under a white band holding `lines` of text."""
    picture = Image.new("RGB", (image.shape[1], image.shape[0] + band), "white")
    picture.paste(Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)), (0, band))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=14)
    for row, line in enumerate(lines):
        draw.text((4, 3 + 17 * row), line, fill="black", font=font)
    return np.asarray(picture, np.float32) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="astronaut.png")
    parser.add_argument("--tiles-from", default="chelsea.png,coffee.png,rocket.jpg")
    parser.add_argument("--tile-side", type=int, default=24, help="side of the cells cut from the samples as tiles")
    parser.add_argument("--cols", type=int, default=14)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--render", type=int, default=24)
    parser.add_argument("--max-reuse", type=int, default=1)
    parser.add_argument("--subdivide", default="0.2,0.25")
    parser.add_argument("--subdivided-reuse", type=int, default=4, help="the cap of the subdivided panel (it has more cells)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "mosaic-assign.jpg")
    args = parser.parse_args()
    thresholds = tuple(float(t) for t in args.subdivide.split(","))

    start = time.perf_counter()
    target = load_image(SAMPLES / args.target)
    with tempfile.TemporaryDirectory() as folder:
        count = cut_tiles(Path(folder), args.tiles_from.split(","), args.tile_side)
        library = build_library(folder, FeatureConfig.color("none"), ColorMode.none)
        common = {"patch": args.patch, "render": args.render, "cols": args.cols}
        configs = {
            "greedy": MosaicConfig(**common, max_reuse=args.max_reuse, assign="greedy"),
            "optimal": MosaicConfig(**common, max_reuse=args.max_reuse, assign="optimal"),
            "subdivided": MosaicConfig(**common, max_reuse=args.subdivided_reuse, assign="optimal", subdivide=thresholds),
        }
        results = {name: make_mosaic(config, target, library) for name, config in configs.items()}
    seconds = time.perf_counter() - start

    rows, cols, height, width = mosaic_grid(*target.shape[:2], args.patch, cols=args.cols)
    side = results["greedy"].image.shape[0]
    figures = {name: result.stats.get("assignment", {}) for name, result in results.items()}
    greedy_total = -figures["optimal"]["greedy_cost"]
    optimal_total = -figures["optimal"]["cost"]
    counts = results["subdivided"].stats["cells_per_size"]
    panels = [
        labelled(np.asarray(resize(target, side, round(side * width / height))), [f"{args.target}", f"{count} tiles cut from {len(args.tiles_from.split(','))} samples"]),
        labelled(results["greedy"].image, [f"greedy, each tile <= {args.max_reuse}x",
                                           f"total {greedy_total:.2f}, worst cell {results['greedy'].scores.min():.3f}"]),
        labelled(results["optimal"].image, [f"optimal, each tile <= {args.max_reuse}x",
                                            f"total {optimal_total:.2f}, worst cell {results['optimal'].scores.min():.3f}"]),
        labelled(results["subdivided"].image, [f"subdivided {args.subdivide}, optimal <= {args.subdivided_reuse}x",
                                               " + ".join(f"{n} x {size} px" for size, n in counts.items())]),
    ]
    picture = side_by_side(panels, gap=6)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(picture * 255).astype(np.uint8)).save(args.out, quality=88, optimize=True)

    table = {
        name: {"cells": result.stats["patches"], "cells_per_size": result.stats["cells_per_size"],
               "max_reuse": configs[name].max_reuse, "assign": str(configs[name].assign),
               "total_score": float(np.sum(result.scores, dtype=np.float64)), "mean_score": result.stats["mean_score"],
               "worst_score": float(result.scores.min()),
               "greedy_total_score": -figures[name]["greedy_cost"] if figures[name] else None,
               "distinct_tiles": result.stats["distinct_tiles"]}
        for name, result in results.items()
    }
    config = {"target": args.target, "tiles": count, "tile_side": args.tile_side, "cols": cols, "rows": rows,
              "patch": args.patch, "render": args.render, "subdivide": list(thresholds)}
    path = write_results("mosaic-gallery", {"config": config, "runs": table, "seconds": seconds,
                                            "optimal_over_greedy": optimal_total / greedy_total,
                                            "picture": args.out.name, "picture_bytes": args.out.stat().st_size})
    print(f"{args.target}: {cols} x {rows} cells of {args.patch} px, {count} tiles; {seconds:.1f} s in all")
    print("| panel | cells | cap | assignment | total score | greedy total on the same cells | worst cell | tiles used |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in table.items():
        sizes = ", ".join(f"{n} x {size} px" for size, n in row["cells_per_size"].items())
        greedy = "" if row["greedy_total_score"] is None else f"{row['greedy_total_score']:.2f}"
        print(f"| {name} | {row['cells']} ({sizes}) | {row['max_reuse']} | {row['assign']} | {row['total_score']:.2f} | {greedy} | {row['worst_score']:.3f} | "
              f"{row['distinct_tiles']} |")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) and {path}")


if __name__ == "__main__":
    main()
