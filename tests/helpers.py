"""Helpers shared by the tests: the sample images, the command line run in this process or in a
fresh Python, the one-line error every refusal must be, folders of tile images, and a local HTTP
file server that honours Range requests.

conftest.py imports this module, so the package is imported only inside the helpers that use it:
a module that fails to import fails its own tests, not every test's collection.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib
import os
import shutil
import socket
import sys
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"

# shallow layers keep the tests that check a style run's bookkeeping fast
SHALLOW_LAYERS = {"content_layers": ("relu2_2",), "style_layers": ("relu1_1", "relu2_1")}


# --- sample images -------------------------------------------------------------------------------

def sample_image(name: str, height: int | None = None, width: int | None = None) -> np.ndarray:
    """The sample `name` as float32 HWC in [0, 1], resized to height x width when they are given."""
    from jaxmosaic.image import resize
    from jaxmosaic.io.images import load_image

    image = load_image(SAMPLES / name)
    return image if height is None else np.asarray(resize(image, height, width))


def flat_color(color, seed: int, shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    """A flat-ish colour image (H, W, 3) float32: `color` with a little seeded texture."""
    noise = np.random.default_rng(seed).normal(0.0, 0.06, (*shape, 3))
    return np.clip(np.asarray(color) + noise, 0.0, 1.0).astype(np.float32)


def sample_cells(name: str, patch: int = 16, side: int = 160) -> np.ndarray:
    """The top-left side x side pixels of a sample cut into (side // patch)^2 cells of patch x patch, NHWC."""
    from jaxmosaic.techniques.mosaic import split_cells

    image = sample_image(name)[:side, :side]
    return np.asarray(split_cells(image, side // patch, side // patch))


# --- the command line ----------------------------------------------------------------------------

RANDOM_WEIGHTS: dict = {}  # the latest few random networks drawn by in-process runs, by how they were asked for
SEED_ZERO: dict = {}  # random_vgg19(PRNGKey(0)), kept for the whole test process
ZERO_KEY = np.zeros(2, np.uint32).tobytes()  # the bytes of jax.random.PRNGKey(0)


def random_vgg19_seed_zero() -> dict:
    """`random_vgg19(jax.random.PRNGKey(0))`, drawn once per test process (about 16 s of CPU): the
    `random_params` fixture, in-process `--weights random` runs of seed 0 and the forced-device
    subprocess (from a file) all use these very (immutable) arrays."""
    if not SEED_ZERO:
        import jax

        from jaxmosaic.weights import random_vgg19

        SEED_ZERO["params"] = random_vgg19(jax.random.PRNGKey(0))
    return SEED_ZERO["params"]


def remembered(key, draw):
    """The random network `draw()` gives, drawn once for `key` in this test process (see `run_cli`)."""
    if key in (("--weights random", 0, "vgg19"), ("weights random", ZERO_KEY, ())):
        return random_vgg19_seed_zero()
    if key not in RANDOM_WEIGHTS:
        while len(RANDOM_WEIGHTS) >= 3:
            RANDOM_WEIGHTS.pop(next(iter(RANDOM_WEIGHTS)))
        RANDOM_WEIGHTS[key] = draw()
    return RANDOM_WEIGHTS[key]


def run_cli(*args):
    """`jaxmosaic ARGS...` in this process with typer's CliRunner; every argument is passed as a string.

    A seeded random VGG19 or AlexNet (`--weights random`, `weights random`, and a `library build`'s
    network: AlexNet's takes about 8 s of CPU) takes seconds to draw and rescale,
    and many runs draw the same seeds: each is drawn once per test process by the command's own
    code, and the next runs get those very (immutable) arrays. Weights read from a path or looked
    up are read anew every time."""
    from typer.testing import CliRunner

    from jaxmosaic.cli import app

    commands = [importlib.import_module(f"jaxmosaic.cli.{name}") for name in ("features", "style", "texture")]
    weights_command = importlib.import_module("jaxmosaic.cli.weights")
    originals = [command.vgg_params for command in commands]
    original_random = weights_command.random_vgg19

    def remembered_params(vgg_params):
        def params(weights, seed=0, arch="vgg19"):
            if weights != "random":
                return vgg_params(weights, seed, arch=arch)
            return remembered(("--weights random", seed, arch), lambda: vgg_params(weights, seed, arch=arch))
        return params

    def remembered_random(key, **settings):
        return remembered(("weights random", np.asarray(key).tobytes(), tuple(sorted(settings.items()))),
                          lambda: original_random(key, **settings))

    library_command = importlib.import_module("jaxmosaic.cli.library")  # a library build's network
    original_network = library_command.network_params

    def remembered_network(kind, weights, seed):
        if weights != "random" or not kind.network:
            return original_network(kind, weights, seed)
        return remembered(("--weights random", seed, kind.network), lambda: original_network(kind, weights, seed))

    for command, original in zip(commands, originals):
        command.vgg_params = remembered_params(original)
    weights_command.random_vgg19 = remembered_random
    library_command.network_params = remembered_network
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        for command, original in zip(commands, originals):
            command.vgg_params = original
        weights_command.random_vgg19 = original_random
        library_command.network_params = original_network


# XLA's unoptimised CPU code: about half the compile time (a 32 px texture run: 22.7 -> 13.3 s of
# CPU); results differ from optimised code in the last bits only (measured: 5e-7 after 5 steps)
UNOPTIMISED = "--xla_backend_optimization_level=0"


def unoptimised_env(**variables: str) -> dict:
    """This process's environment with `variables` and XLA's unoptimised CPU code (`UNOPTIMISED`
    before any XLA_FLAGS given), for a subprocess whose numbers are checked against its own (one
    device against a mesh), at bars far above the last bits, or not at all (a run killed or
    interrupted for its files)."""
    return {**os.environ, **variables, "XLA_FLAGS": " ".join([UNOPTIMISED, variables.get("XLA_FLAGS", "")]).strip()}


def cli_command(*args, module: bool = False) -> list[str]:
    """The argv of `jaxmosaic ARGS...` in a fresh Python: the checkout's cli.py, or `python -m
    jaxmosaic.cli` with `module=True`."""
    entry = ["-m", "jaxmosaic.cli"] if module else [str(ROOT / "cli.py")]
    return [sys.executable, *entry, *(str(a) for a in args)]


def one_line_error(result, *fragments, code=None) -> str:
    """The run failed with exactly one line, `error: ...`, holding every fragment; no traceback.
    `code`, when given, is the exit code it must have. Returns the line."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "unexpected" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- folders of tiles ----------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a coordinator or a server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def noise_tiles(folder: Path, count: int, shape: tuple[int, int], rng: np.random.Generator, *,
                name: str = "{}.png") -> Path:
    """`count` tiles of uniform 8-bit RGB noise, height x width = `shape`, drawn from `rng` and saved
    in `folder` (created) as `name.format(i)`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(folder / name.format(i))
    return folder


def sample_tiles(folder: Path, count: int, sample: str = "coffee.png") -> Path:
    """`count` copies of a sample in `folder` (created), named 0.png, 1.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shutil.copy(SAMPLES / sample, folder / f"{i}.png")
    return folder


def cut_sample_tiles(root: Path) -> Path:
    """60 tiles of 32 px cut from three samples, 20 per sample in a subfolder of its own
    (chelsea/00.png, ...), and two files that are not images: broken.jpg and notes.txt."""
    from PIL import Image

    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        sub = root / name.split(".")[0]
        sub.mkdir(parents=True)
        for i, cell in enumerate(sample_cells(name, 32)[:20]):
            Image.fromarray(np.round(cell * 255).astype(np.uint8)).save(sub / f"{i:02d}.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("ignored: not an image suffix")
    return root


# --- a local download server ---------------------------------------------------------------------

class FileServer:
    """Serves files from memory over HTTP on 127.0.0.1, honouring Range requests.

    `files` maps a name to its bytes; `url(name)` is where it is served, `base` the server's root.
    A GET with `Range: bytes=START-` is answered 206 with the bytes from START, one without 200
    with them all; an unknown name is a 404. Every GET is recorded: `counts[path]` and, in order,
    `requests` (the Range header, None when absent). `fail_after`: the first answer is cut after
    that many bytes and its connection shut, as a dropped download.
    """

    def __init__(self, files: dict[str, bytes], *, fail_after: int | None = None):
        self.counts: dict[str, int] = {}
        self.requests: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                asked = self.headers.get("Range")
                server.counts[self.path] = server.counts.get(self.path, 0) + 1
                server.requests.append(asked)
                data = files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                start = int(asked.split("=")[1].split("-")[0]) if asked else 0
                body = data[start:]
                self.send_response(206 if asked else 200)
                if asked:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fail_after is not None and len(server.requests) == 1:
                    self.wfile.write(body[:fail_after])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# small settings of each command, for tests that run many of them
STYLE = ["--weights", "random", "--size", 32, "--steps", 2, "--content-layers", "relu1_1", "--style-layers", "relu1_1"]
TEXTURE = ["--weights", "random", "--size", 32, "--steps", 2, "--layers", "relu1_1,pool1"]
HYBRID = ["--size", 32, "--steps", 2]
MOSAIC = ["--cols", 6, "--patch", 8]
VQ = ["--k", 4, "--samples", 200, "--iterations", 2, "--patch", 4]


def hashes(*roots: Path) -> dict:
    """SHA-256 of every file under the roots (a file root counts as itself)."""
    found = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found
