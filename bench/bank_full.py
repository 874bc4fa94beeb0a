"""The original article's bank built in full, recorded: the 312,500-tile Gabor bank embedded by
AlexNet (`library build gabor-bank --features alexnet`), run by bench/bank_full.sh in a folder DIR,
resumed there after any interruption (each run a segment DIR/runN/).

    python bench/bank_full.py DIR [--weights random] [--sample samples/astronaut.png]

reads the segments (wall and CPU time from /usr/bin/time -v, the folder's size every 30 s), the
finished library (tiles, k, the energy kept) and makes a mosaic of a bundled sample from it
(timed, its picture in docs/images/mosaic-bank.jpg). Results: bench/results/bank-full-cpu.json.
A segment stopped from outside (the machine's session ended) has no /usr/bin/time report: its
wall time comes from its start and its last disk sample, its CPU time and peak memory are unknown.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from common import markdown_table, write_results
from PIL import Image

from jaxmosaic.techniques.mosaic.library import load_library

ROOT = Path(__file__).resolve().parents[1]
PICTURE = ROOT / "docs" / "images" / "mosaic-bank.jpg"


def _time_report(text: str) -> dict:
    """The fields of a /usr/bin/time -v report, or {} where there is none."""
    fields = {}
    for name, pattern in (("user_seconds", r"User time \(seconds\): ([\d.]+)"),
                          ("system_seconds", r"System time \(seconds\): ([\d.]+)"),
                          ("peak_rss_kib", r"Maximum resident set size \(kbytes\): (\d+)"),
                          ("exit_status", r"Exit status: (\d+)")):
        found = re.search(pattern, text)
        if found:
            fields[name] = float(found.group(1))
    return fields


def segment(folder: Path) -> dict:
    """One run of bench/bank_full.sh: its times, peak memory, chunks made and the folder's largest size."""
    start = int((folder / "start").read_text())
    samples = [line.split() for line in (folder / "disk.log").read_text().splitlines() if len(line.split()) == 2]
    end = int((folder / "end").read_text()) if (folder / "end").exists() else int(samples[-1][0])
    report = _time_report((folder / "build.err").read_text(errors="replace")) if (folder / "build.err").exists() else {}
    rc = (folder / "rc").read_text().strip() if (folder / "rc").exists() else "killed"
    return {"segment": folder.name, "wall_seconds": end - start, "rc": rc,
            "cpu_seconds": report["user_seconds"] + report["system_seconds"] if "user_seconds" in report else None,
            "peak_rss_gib": report["peak_rss_kib"] / 2**20 if "peak_rss_kib" in report else None,
            "largest_folder_gib": max(int(size) for _, size in samples) / 2**30}


def mosaic(library: Path, sample: Path, weights: str | None, out: Path) -> dict:
    """A mosaic of `sample` from the bank (100 columns, |score| as the article): seconds and its metrics."""
    metrics = out.with_suffix(".json")
    command = [sys.executable, str(ROOT / "cli.py"), "mosaic", str(sample), "-o", str(out), "--tiles", str(library),
               "--features", "alexnet", "--score", "abs", "--cols", "100", "--render", "24", "--metrics", str(metrics),
               "--overwrite"]
    if weights:
        command += ["--weights", weights]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "metrics": json.loads(metrics.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--weights", default=None, help="the build's --weights (random where none can be downloaded)")
    parser.add_argument("--sample", type=Path, default=ROOT / "samples" / "astronaut.png")
    args = parser.parse_args()
    runs = [path for path in args.folder.glob("run*") if path.is_dir() and path.name[3:].isdigit()]
    segments = [segment(path) for path in sorted(runs, key=lambda path: int(path.name[3:]))]
    library = load_library(args.folder / "bank.npz")
    out = args.folder / "mosaic-bank.png"
    made = mosaic(args.folder / "bank.npz", args.sample, args.weights, out)
    picture = Image.open(out).convert("RGB")
    picture.thumbnail((720, 720))
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    picture.save(PICTURE, quality=75)
    known_cpu = [s["cpu_seconds"] for s in segments if s["cpu_seconds"] is not None]
    known_rss = [s["peak_rss_gib"] for s in segments if s["peak_rss_gib"] is not None]
    payload = {
        "weights": args.weights or "downloaded",
        "tiles": len(library), "dimension": library.dimension, "k": library.svd["k"],
        "energy_kept": float(library.svd["energy"]), "library_gib": (args.folder / "bank.npz").stat().st_size / 2**30,
        "build": library.build,
        # a library built before the build record had "resumed" divided every tile by the last segment's seconds
        "build_rate_counts_resumed_tiles": "resumed" not in (library.build or {}),
        "segments": segments,
        "wall_hours": sum(s["wall_seconds"] for s in segments) / 3600,
        "cpu_hours_known": sum(known_cpu) / 3600, "segments_without_cpu": sum(s["cpu_seconds"] is None for s in segments),
        "peak_rss_gib": max(known_rss) if known_rss else None,
        "largest_folder_gib": max(s["largest_folder_gib"] for s in segments),
        "mosaic": {"sample": args.sample.name, "seconds": made["seconds"], "picture": str(PICTURE.relative_to(ROOT)),
                   "metrics": made["metrics"]},
    }
    path = write_results("bank-full", payload)
    rows = [{"what": s["segment"], "value": f"{s['wall_seconds'] / 3600:.2f} h wall, "
             + (f"{s['cpu_seconds'] / 3600:.2f} h CPU, peak {s['peak_rss_gib']:.2f} GiB" if s["cpu_seconds"] is not None
                else "stopped from outside: CPU and peak memory not recorded")
             + f", folder up to {s['largest_folder_gib']:.1f} GiB"} for s in segments]
    rows += [{"what": "tiles, features, k", "value": f"{len(library):,} x {library.dimension} -> k = {library.svd['k']}"},
             {"what": "energy kept at k", "value": f"{payload['energy_kept']:.4f}"},
             {"what": "library file", "value": f"{payload['library_gib']:.2f} GiB"},
             {"what": f"mosaic of {args.sample.name}, 100 columns", "value": f"{made['seconds']:.1f} s"}]
    print(markdown_table(rows, ["what", "value"]))
    print(f"\nwritten {path} and {PICTURE}")


if __name__ == "__main__":
    main()
