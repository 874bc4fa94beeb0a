"""Every benchmark in one command: each script in a process of its own, then a summary table.

    python bench/run.py                       # all, at their own settings: results in bench/results/
    python bench/run.py --quick               # all at tiny settings (a smoke run): bench/results/quick/
    python bench/run.py --only style,vgg      # some of them
    python bench/run.py --tag h100            # results named NAME-BACKEND-h100.json

A result is named after the benchmark and JAX's backend (style-cpu.json, style-gpu.json), so a GPU
run never replaces the CPU results; --tag adds a suffix to tell two machines of one backend apart.
--quick writes to bench/results/quick/ (git-ignored) unless --out says otherwise, so a smoke run
never replaces a measured result. A script that fails is reported in the table and the command
exits 1 once all have run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, RESULTS_ENV, TAG_ENV, markdown_table  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

# script name -> (the name its results are written under, its arguments under --quick)
BENCHMARKS = {
    "style": ("style", ["--sizes", "64", "--repeats", "1", "--converge", "64", "--steps", "4"]),
    "texture": ("texture", ["--sizes", "64", "--repeats", "1", "--steps", "2"]),
    "hybrid": ("hybrid", ["--size", "64", "--steps", "5", "--eager-steps", "2"]),
    "vgg": ("vgg", ["--sizes", "64", "--repeats", "2"]),
    "vq": ("vq", ["--samples", "2000", "--k", "16", "--iterations", "3", "--repeats", "1"]),
    "mosaic": ("mosaic", ["--queries", "500", "--tiles", "5000", "--features", "64", "--k", "16", "--repeats", "1"]),
    "assign": ("assign", ["--sizes", "500x5000,1000x20000", "--caps", "1,3"]),
    # 128 asked gives a 112-tile subset, the fewest above the k = 100 it keeps; the quick run still
    # matches against the full 312,500-tile bank and solves the 9216-dimensional eigen step
    "library": ("library", ["--subset", "128", "--chunk", "32", "--processes", "1"]),
    "batch": ("batch", ["--sizes", "32", "--counts", "1,2", "--steps", "2", "--lbfgs-steps", "2", "--repeats", "1",
                        "--no-vmap"]),
    "print": ("print", ["--sizes", "256", "--tile", "192", "--steps", "1"]),
    "spectrum_share": ("spectrum-share", ["--size", "32", "--steps", "3", "--shares", "0,0.1"]),
    "live": ("live", ["--size", "64", "--steps", "40", "--repeats", "1"]),
    "losses": ("losses", ["--sizes", "64", "--repeats", "1", "--quality-size", "64", "--steps", "3"]),
}
TAKES_NO_TORCH = ("style", "texture", "hybrid", "vgg")


def run(name: str, args: list[str], env: dict, folder: Path) -> dict:
    """Runs bench/NAME.py with `args`, its output shown as it comes: {benchmark, status, seconds, result}."""
    command = [sys.executable, str(BENCH / f"{name}.py"), *args]
    print(f"\n## {name}: {' '.join(command[1:])}", flush=True)
    started = time.time()
    code = subprocess.run(command, cwd=ROOT, env=env).returncode
    seconds = time.time() - started
    result_name = BENCHMARKS[name][0]
    written = sorted(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
                     for path in folder.glob(f"{result_name}-*.json") if path.stat().st_mtime >= started)
    return {"benchmark": name, "status": "ok" if code == 0 else f"failed ({code})", "seconds": seconds,
            "result": ", ".join(written) or "-"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of every script in a few minutes")
    parser.add_argument("--only", help=f"comma-separated benchmarks to run, of: {','.join(BENCHMARKS)}")
    parser.add_argument("--tag", help="suffix of the result names: NAME-BACKEND-TAG.json")
    parser.add_argument("--out", type=Path, help="folder of the results (default bench/results, bench/results/quick with --quick)")
    parser.add_argument("--no-torch", action="store_true", help=f"skip the PyTorch columns ({', '.join(TAKES_NO_TORCH)})")
    args = parser.parse_args()
    names = list(BENCHMARKS) if not args.only else [name.strip() for name in args.only.split(",")]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"--only: unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    folder = (args.out or (RESULTS / "quick" if args.quick else RESULTS)).resolve()
    env = {**os.environ, RESULTS_ENV: str(folder)}
    if args.tag:
        env[TAG_ENV] = args.tag
    rows = []
    for name in names:
        script_args = list(BENCHMARKS[name][1]) if args.quick else []
        if args.no_torch and name in TAKES_NO_TORCH:
            script_args.append("--no-torch")
        rows.append(run(name, script_args, env, folder))
    print(f"\n# benchmarks{' (quick settings)' if args.quick else ''}, results in {folder}\n")
    print(markdown_table(rows, ["benchmark", "status", "seconds", "result"]))
    if any(row["status"] != "ok" for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
