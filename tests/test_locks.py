"""One owner per output: a run refuses, in one line, an output another run is writing, or waits for
it with --wait; a lock left by a killed run is taken over; two runs started at once never leave
mixed results. Every other run here is a real process: a holder that locks outputs through
`jaxmosaic.io.locks`, or the command line itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, SAMPLES, STYLE, cli_command, hashes, one_line_error, run_cli
from test_safety_pth import alexnet_checkpoint, stored

from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.locks import (
    OutputInUse,
    lock_file,
    lock_output,
    release_all,
    release_output,
)

GRID = "1,1,2,2"  # 4 Gabor bank tiles: two chunks of 2
# the budget named: builds run at once beside other tests; AlexNet's avgpool mean-pooled (256 values,
# not 9216: no eigenvectors of a 9216 x 9216 matrix, seconds of CPU a build, to find)
BUILD = ["library", "build", "gabor-bank", "--bank-grid", GRID, "--stream", "--chunk", 2, "--features", "alexnet",
         "--pool", "mean", "--weights", "random", "--max-memory", 4]
HOLDER = """
import sys
from jaxmosaic.io.locks import lock_output, release_output
for path in sys.argv[1:]:
    lock_output(path)
print("held", flush=True)
for line in sys.stdin:
    release_output(line.strip())
"""


def _env() -> dict:
    return {**os.environ, "JAXMOSAIC_NO_COMPILATION_CACHE": "1", "PYTHONPATH": str(ROOT)}


@contextlib.contextmanager
def holder(*paths: Path):
    """Another process holding the locks of `paths`; a line on its stdin releases one; it is
    killed (SIGKILL) at the end, leaving the lock files of what it still holds."""
    with subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, paths)], env=_env(), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout.readline().strip() == "held"
            yield process
        finally:
            process.kill()


def in_use(path, pid: int) -> str:
    """The refusal of `path` held by `pid` on this machine, as a pattern."""
    return (rf"{re.escape(str(path))}: in use by another jaxmosaic run \(pid {pid} on {re.escape(socket.gethostname())} "
            rf"since (\d{{4}}-\d\d-\d\d )?\d\d:\d\d:\d\d\)")


def lines(stderr: str) -> list[str]:
    """The lines a run printed on stderr, blank ones left out."""
    return [line for line in stderr.splitlines() if line.strip()]


def not_a_lock(path: Path) -> str:
    """The refusal of `path` whose lock file's name holds something else."""
    return f"{path}: {lock_file(path)} is not a jaxmosaic lock file; remove it or choose another output"


def holding(process: subprocess.Popen, output: Path, timeout: float = 300) -> None:
    """Wait until `process` holds the lock of `output` and its lock file names it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):  # not there yet, or its record not written yet
            if json.loads(lock_file(output).read_text())["pid"] == process.pid:
                return
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.05)
    raise AssertionError(f"{output} was not locked within {timeout} s")


def test_a_held_output_is_refused_waited_for_and_taken_over_from_a_killed_holder(tmp_path):
    mine, theirs, dead = tmp_path / "mine.png", tmp_path / "theirs.png", tmp_path / "dead"
    (tmp_path / "link").symlink_to(tmp_path)
    assert lock_output(mine) and not lock_output(tmp_path / "link" / "mine.png"), "one lock per output, however spelt"
    assert lock_file(mine) == tmp_path / ".mine.png.jaxmosaic-lock" and lock_file(mine).is_file()
    release_output(mine)
    assert not lock_file(mine).exists()
    with holder(theirs, dead) as other:
        with pytest.raises(OutputInUse) as refused:
            lock_output(theirs)
        assert re.fullmatch(in_use(theirs, other.pid) + "; wait for it, or pass --wait", str(refused.value))
        said, taken = [], threading.Event()
        waiter = threading.Thread(target=lambda: taken.set() if lock_output(theirs, wait=True, say=said.append) else None)
        waiter.start()
        deadline = time.monotonic() + 30
        while not said and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(said) == 1 and re.fullmatch("waiting for " + in_use(theirs, other.pid), said[0]), said
        assert not taken.wait(0.5), "it waits while the other run holds the output"
        other.stdin.write(f"{theirs}\n")
        other.stdin.flush()
        waiter.join(30)
        assert taken.is_set() and json.loads(lock_file(theirs).read_text())["pid"] == os.getpid()
        other.kill()  # SIGKILL: its lock file stays, its lock goes with it
        other.wait()
        assert lock_file(dead).is_file()
        assert lock_output(dead) and json.loads(lock_file(dead).read_text())["pid"] == os.getpid()
    release_all()
    assert not lock_file(theirs).exists() and not lock_file(dead).exists()


def test_a_link_or_a_foreign_file_at_a_lock_file_name_is_refused_and_left_as_it_is(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    linked, foreign, folder, fifo = (tmp_path / f"{name}.png" for name in ("linked", "foreign", "folder", "fifo"))
    lock_file(linked).symlink_to(victim)
    lock_file(foreign).write_text("someone else's notes")
    lock_file(folder).mkdir()
    os.mkfifo(lock_file(fifo))
    for output in (linked, foreign, folder, fifo):
        for wait in (False, True):
            with pytest.raises(JaxmosaicError) as refused:
                lock_output(output, wait=wait)
            assert str(refused.value) == not_a_lock(output)
    release_all()
    assert victim.read_text() == "keep me" and lock_file(linked).readlink() == victim
    assert lock_file(foreign).read_text() == "someone else's notes"
    assert lock_file(folder).is_dir() and lock_file(fifo).is_fifo()


def test_an_empty_lock_file_or_one_this_run_cannot_write_is_taken(tmp_path, monkeypatch):
    """An empty lock file is taken and rewritten; one left by another user, which this run may
    only read, is locked read-only (flock needs no write access)."""
    empty, theirs = tmp_path / "empty.png", tmp_path / "theirs.png"
    lock_file(empty).touch()
    assert lock_output(empty) and json.loads(lock_file(empty).read_text())["pid"] == os.getpid()
    lock_file(theirs).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0.0}))
    lock_file(theirs).chmod(0o444)
    real_open = os.open

    def as_another_user(file, flags, *args, **kwargs):  # root may write any file: refuse as its mode says
        if file == lock_file(theirs) and os.path.exists(file) and flags & (os.O_WRONLY | os.O_RDWR) and not flags & os.O_EXCL:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", as_another_user)
    assert lock_output(theirs)
    probe = real_open(lock_file(theirs), os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)
    release_all()
    assert not lock_file(empty).exists() and not lock_file(theirs).exists()


def test_a_file_system_without_flock_leaves_the_output_unlocked_and_no_new_lock_file(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    new, old = tmp_path / "new.png", tmp_path / "old.png"
    lock_file(old).touch()  # left by an earlier run: not this call's to remove
    assert not lock_output(new) and not lock_output(old)
    assert [p.name for p in tmp_path.iterdir()] == [lock_file(old).name]


def test_a_lock_that_fails_names_the_output_and_its_lock_file(tmp_path, monkeypatch):
    def broken(fd, operation):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fcntl, "flock", broken)
    out = tmp_path / "out.png"
    with pytest.raises(JaxmosaicError) as failed:
        lock_output(out)
    assert str(failed.value) == f"{out}: cannot lock its lock file {lock_file(out)} ({os.strerror(errno.EIO)})"


def test_two_threads_locking_one_output_at_once_take_one_lock(tmp_path, monkeypatch):
    out, real_flock = tmp_path / "shared.png", fcntl.flock

    def slow_flock(fd, operation):
        time.sleep(0.2)  # both threads would be past the check of what this process holds
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", slow_flock)
    start, taken, failed = threading.Barrier(2), [], []

    def take():
        start.wait(60)
        try:
            taken.append(lock_output(out))
        except JaxmosaicError as err:
            failed.append(str(err))

    threads = [threading.Thread(target=take) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    release_all()
    assert not failed and sorted(taken) == [False, True], (failed, taken)
    assert not lock_file(out).exists()


def test_every_command_refuses_an_output_another_run_holds_in_one_line(tmp_path, monkeypatch):
    """Before any work: nothing is written, and the command's own locks end with it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dl").mkdir()
    tiles, library, weights, clusters, styled = Path("g"), Path("lib.npz"), Path("dl") / "wA", Path("clusters"), Path("out.png")
    runs = {tiles: ["tiles", "gabor", tiles, "--size", 8],
            library: [*BUILD, "-o", library],
            weights: ["weights", "download", "--arch", "alexnet", "--url", "http://127.0.0.1:9/srcA/model.pth", "-o", weights],
            clusters: ["vq", "cluster", SAMPLES / "coffee.png", SAMPLES / "chelsea.png", "--codebook", "book.npz", "-o", clusters],
            styled: ["style", SAMPLES / "coffee.png", SAMPLES / "chelsea.png", "-o", styled, *STYLE]}
    with holder(*runs) as other:
        before = sorted(p.name for p in tmp_path.rglob("*"))
        for output, args in runs.items():
            line = one_line_error(run_cli(*args), code=1)
            assert re.fullmatch("error: " + in_use(output, other.pid) + "; wait for it, or pass --wait", line), line
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, "a refused run writes nothing"
    assert lock_file(tiles).is_file(), "the killed holder's lock file is left"
    result = run_cli("tiles", "gabor", tiles, "--size", 8, "--no-sheet")
    assert result.exit_code == 0, result.output
    assert len(list(tiles.glob("gabor-*.png"))) == 384 and not lock_file(tiles).exists()


def test_wait_waits_for_the_run_that_holds_the_output(tmp_path):
    tiles = tmp_path / "g"
    args = ["tiles", "gabor", tiles, "--size", 8, "--no-sheet"]
    assert lock_output(tiles)
    try:
        refused = subprocess.run(cli_command(*args, module=True), env=_env(), capture_output=True, text=True, timeout=300,
                                 check=False)
        assert refused.returncode == 1 and len(lines(refused.stderr)) == 1, refused.stderr
        assert re.fullmatch("error: " + in_use(tiles, os.getpid()) + "; wait for it, or pass --wait", lines(refused.stderr)[0])
        assert not tiles.exists()
        waiting = subprocess.Popen(cli_command(*args, "--wait", module=True), env=_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        line = waiting.stderr.readline()
        assert re.fullmatch("waiting for " + in_use(tiles, os.getpid()), line.strip()), line
        assert waiting.poll() is None and not tiles.exists()
    finally:
        release_output(tiles)
    _, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    assert len(list(tiles.glob("gabor-*.png"))) == 384 and not lock_file(tiles).exists()


def test_two_streaming_builds_into_one_library_never_share_its_build_folder(tmp_path):
    """Seed 1 started into OUT while seed 0's build holds it (stopped there, so the two overlap
    however loaded the machine is) refuses; the library is a clean build of seed 0, and no build
    folder is left."""
    from jaxmosaic.techniques.mosaic import load_library

    out, clean = tmp_path / "lib.npz", tmp_path / "clean.npz"
    first = subprocess.Popen(cli_command(*BUILD, "-o", out, "--seed", 0, module=True), env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        holding(first, out)
        os.kill(first.pid, signal.SIGSTOP)  # a stopped process keeps its locks
        try:
            second = subprocess.run(cli_command(*BUILD, "-o", out, "--seed", 1, module=True), env=_env(), capture_output=True,
                                    text=True, timeout=600, check=False)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        refusal = lines(second.stderr)
        assert second.returncode == 1 and len(refusal) == 1, second.stderr[-2000:]
        assert re.fullmatch("error: " + in_use(out, first.pid) + "; wait for it, or pass --wait", refusal[0]), refusal
        result = run_cli(*BUILD, "-o", clean, "--seed", 0)  # the clean build, while the first run goes on
        assert result.exit_code == 0, result.output
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    built, reference = load_library(out), load_library(clean)
    assert built.settings == reference.settings, "the header names the winner's weights"
    signs = np.sign(np.sum(built.features * reference.features, axis=0))  # each direction is found up to its sign
    np.testing.assert_allclose(built.features * signs, reference.features, atol=1e-4 * np.abs(reference.features).max())
    np.testing.assert_allclose(built.svd["basis"] * signs, reference.svd["basis"], atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.npz", "lib.npz"]


class GatedServer:
    """Serves files over HTTP on 127.0.0.1, honouring Range requests; the answer for `gated` from
    its first byte pauses after `cut` bytes until `gate` is set."""

    def __init__(self, files: dict[str, bytes], *, gated: str, cut: int):
        self.gate = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name, asked = self.path.lstrip("/"), self.headers.get("Range")
                if name not in files:
                    self.send_error(404)
                    return
                start = int(asked.split("=")[1].split("-")[0]) if asked else 0
                body = files[name][start:]
                self.send_response(206 if asked else 200)
                if asked:
                    self.send_header("Content-Range", f"bytes {start}-{len(files[name]) - 1}/{len(files[name])}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                pause = cut if name == gated and start == 0 else 0
                self.wfile.write(body[:pause])
                self.wfile.flush()
                if pause:
                    server.gate.wait(600)
                self.wfile.write(body[pause:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _partial(folder: Path, size: int) -> bool:
    """Whether a partial download of at least `size` bytes lies in `folder`."""
    for path in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):  # a file the run made and removed meanwhile
            if "jaxmosaic-download" in path.name and path.stat().st_size >= size:
                return True
    return False


def test_downloads_into_two_folders_never_share_a_partial_file(tmp_path):
    """wA's download is stopped half way (its partial file on disk) while wB's, of another file
    under the same name, runs from start to end: each folder records its own file's SHA-256."""
    from jaxmosaic.weights import weights_info

    sources = {name: alexnet_checkpoint(tmp_path / f"{name}.pth", stored(bytes(size)))[0].read_bytes()
               for name, size in (("srcA", 4), ("srcB", 8))}  # other first bytes: the classifier's size is in data.pkl
    assert sources["srcA"][:4096] != sources["srcB"][:4096]
    cut = 4 * 2**20  # the client writes whole MiB blocks: exactly this much of srcA is on disk while it is paused
    server = GatedServer({f"{name}/model.pth": data for name, data in sources.items()}, gated="srcA/model.pth", cut=cut)
    folder = tmp_path / "dl"
    folder.mkdir()

    def download(name: str, out: str) -> subprocess.Popen:
        args = ["weights", "download", "--arch", "alexnet", "--url", f"{server.base}/{name}/model.pth", "-o", folder / out]
        return subprocess.Popen(cli_command(*args, module=True), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    try:
        first = download("srcA", "wA")
        deadline = time.monotonic() + 300
        while not _partial(folder, cut):
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the first download never reached its pause"
            time.sleep(0.05)
        second = download("srcB", "wB")
        _, err = second.communicate(timeout=600)
        assert second.returncode == 0, err[-2000:]
        server.gate.set()
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err[-2000:]
    finally:
        server.close()
    for name, out in (("srcA", "wA"), ("srcB", "wB")):
        info = weights_info(folder / out, "alexnet")
        assert info["sha256"] == hashlib.sha256(sources[name]).hexdigest() and info["source"].endswith(f"/{name}/model.pth")
    assert sorted(p.name for p in folder.iterdir()) == ["wA", "wB"], "no partial download or lock file is left"


def test_two_tile_sets_written_into_one_folder_at_once_are_never_mixed(tmp_path):
    """One grey set and one of two tints started at once: each run writes its whole set, or
    refuses; the folder is a clean run's set, and its marker lists exactly its files."""
    tiles = tmp_path / "g"
    settings = [["--colors", 1], ["--colors", 2]]
    runs = [subprocess.Popen(cli_command("tiles", "gabor", tiles, "--size", 32, *colors, module=True), env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for colors in settings]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, outputs):
        assert run.returncode == 0 or (run.returncode == 1 and len(lines(err)) == 1 and " in use by another jaxmosaic run " in err), err
    assert 0 in [run.returncode for run in runs]
    listed = json.loads((tiles / ".jaxmosaic").read_text())["files"]
    assert sorted(p.name for p in tiles.iterdir() if p.name != ".jaxmosaic") == sorted(listed)
    colors = 2 if any("-c1" in name for name in listed) else 1
    clean = tmp_path / "clean"
    assert run_cli("tiles", "gabor", clean, "--size", 32, "--colors", colors).exit_code == 0
    assert {Path(k).name: v for k, v in hashes(tiles).items()} == {Path(k).name: v for k, v in hashes(clean).items()}



def test_a_library_the_cache_keeps_is_made_by_one_run_while_another_waits_for_it(tile_folder, tmp_path):
    """Two mosaics needing one cached library (a folder's, or the bank's): the second waits for the
    lock on the cached file, then makes or reads it, instead of building it beside the first."""
    from jaxmosaic.techniques.mosaic import (
        ColorMode,
        FeatureConfig,
        LibraryConfig,
        obtain_library,
    )

    cache, said = tmp_path / "cache", []
    cache.mkdir()

    def obtain():
        return obtain_library(str(tile_folder), LibraryConfig(svd_k=0), FeatureConfig.color("none"), ColorMode.none,
                              cache=cache, say=said.append)

    assert len(obtain()) == 60
    [cached] = cache.glob("*.npz")
    cached.unlink()  # as if the first run had not made it yet
    result = []
    with holder(cached) as other:
        worker = threading.Thread(target=lambda: result.append(obtain()))
        worker.start()
        deadline = time.monotonic() + 60
        while not any(line.startswith(f"waiting for {cached}") for line in list(said)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert said and said[-1].startswith(f"waiting for {cached}: in use by another jaxmosaic run (pid {other.pid}"), said
        assert worker.is_alive() and not cached.exists(), "nothing is made while another run holds the cached file"
        other.stdin.write(f"{cached}\n")
        other.stdin.flush()
        worker.join(120)
    assert len(result) == 1 and len(result[0]) == 60 and cached.is_file()
    assert not lock_file(cached).exists(), "the lock is released once the library is there"
