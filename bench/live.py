"""The live view's cost to a run: the same small style run, each in a fresh Python, without
`--web`, with `--web` and no page open, and with `--web` and a client attached (a thread that reads
/events and fetches /image after every message, as the page does).

The figure is the run's own optimisation time, `seconds` in its `--metrics` (compilation apart),
min and median over --repeats runs of each kind, taken in turn so that a drift of the machine
falls on all three; the ratio is the client's median over the no-page median.

    python bench/live.py [--size 128] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
KINDS = ("no --web", "--web, no client", "--web, client attached")


def attach(url: str, counts: dict) -> None:
    """Read /events to its end, fetching /image after every message that brings a new one."""
    shown = None
    with urllib.request.urlopen(url + "events", timeout=120) as events:
        for raw in events:
            if not raw.startswith(b"data: "):
                continue
            message = json.loads(raw[len(b"data: "):])
            counts["events"] += 1
            if message["image"] is not None and message["image"] != shown:
                shown = message["image"]
                with urllib.request.urlopen(f"{url}image?seq={shown}", timeout=60) as image:
                    counts["image bytes"] += len(image.read())
                counts["images"] += 1
            if message["status"] != "running":
                return


def run(kind: str, args: argparse.Namespace, folder: Path) -> dict:
    """One style run of `kind`: its metrics' seconds and, with a client, what the client read."""
    metrics = folder / "metrics.json"
    command = [sys.executable, "-m", "jaxmosaic.cli", "style", str(SAMPLES / "astronaut.png"), str(SAMPLES / "rocket.jpg"),
               "-o", str(folder / "styled.png"), "--weights", "random", "--size", str(args.size), "--steps", str(args.steps),
               "--gif", "--metrics", str(metrics)]
    if kind != KINDS[0]:
        command += ["--web", "127.0.0.1:0"]
    process = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    counts = {"events": 0, "images": 0, "image bytes": 0}
    client = None
    for line in process.stderr:
        found = re.match(r"live view: (http://127\.0\.0\.1:\d+/)", line)
        if found and kind == KINDS[2]:
            client = threading.Thread(target=attach, args=(found.group(1), counts), daemon=True)
            client.start()
    if process.wait() != 0:
        raise SystemExit(f"the {kind} run failed (exit {process.returncode})")
    if client is not None:
        client.join(timeout=60)
    return {"seconds": json.loads(metrics.read_text())["seconds"], **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"style, {args.size} px, {args.steps} steps, --gif (a message every {max(1, args.steps // 40)} steps), "
          f"random VGG19 weights, {args.repeats} run(s) of each kind in turn")
    seconds = {kind: [] for kind in KINDS}
    client = {}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for kind in KINDS:
                result = run(kind, args, Path(scratch))
                seconds[kind].append(result["seconds"])
                if kind == KINDS[2]:
                    client = {name: result[name] for name in ("events", "images", "image bytes")}
                print(f"  run {repeat + 1}, {kind}: {result['seconds']:.3f} s", flush=True)
    baseline = statistics.median(seconds[KINDS[1]])
    rows = [{"run": kind, "min s": min(times), "median s": statistics.median(times),
             "median / --web, no client": statistics.median(times) / baseline} for kind, times in seconds.items()]
    path = write_results("live", {"size": args.size, "steps": args.steps, "repeats": args.repeats, "rows": rows,
                                  "client": client, "seconds": seconds})
    print(markdown_table(rows, ["run", "min s", "median s", "median / --web, no client"]))
    print(f"\nthe client read {client.get('events')} messages and {client.get('images')} images "
          f"({client.get('image bytes', 0) / 1024:.0f} KiB) in its last run; wrote {path}")


if __name__ == "__main__":
    main()
