"""Several processes on 127.0.0.1 (`jax.distributed`, CPU collectives) that cannot, or must not,
work together. A join that cannot finish ends within --timeout with one line naming what did not
arrive; processes given different settings are refused before any work; a process whose own
outputs, or whose share of the work, fail stops every process with one line naming it; no build
folder is left. Every run is a real subprocess with a bounded wait, building the smallest library
(4 Gabor tiles, colour features)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, cli_command, free_port

from jaxmosaic.io.folders import MARKER

BUILD = ["library", "build", "gabor-bank", "--bank-grid", "1,1,2,2", "--features", "color", "--chunk", "1", "--svd-k", "2"]
WAIT = 90  # seconds a run may take before the test fails (it would otherwise wait for JAX's own deadline)
CLUSTER = ("SLURM_", "OMPI_", "TPU_", "KUBERNETES_", "JAX_COORDINATOR")  # what --coordinator auto reads


def _outside_a_cluster() -> dict:
    """This environment without what --coordinator auto reads, for a fresh Python running this checkout."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(CLUSTER)}
    env.update(JAXMOSAIC_NO_COMPILATION_CACHE="1", PYTHONPATH=str(ROOT))
    return env


@pytest.fixture
def start():
    """Start `jaxmosaic ARGS...` in a fresh Python, outside any cluster; a run still going when the
    test ends is killed."""
    env = _outside_a_cluster()
    started = []

    def run(*args, script: str | None = None) -> subprocess.Popen:
        argv = [sys.executable, "-c", script, *map(str, args)] if script else cli_command(*args, module=True)
        started.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return started[-1]

    yield run
    for worker in started:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()


def _job(start, out: Path, port: int, *options_per_process: list[str]) -> list[subprocess.Popen]:
    """One build of `out` by len(options_per_process) processes on 127.0.0.1:`port`, each with its own extra options."""
    count = len(options_per_process)
    return [start(*BUILD, "-o", out, "--coordinator", f"127.0.0.1:{port}", "--num-processes", count, "--process-id", i,
                   "--timeout", 30, *options) for i, options in enumerate(options_per_process)]


def _failed(worker: subprocess.Popen, *fragments: str, joining: str) -> str:
    """The run ended with status 1, having printed the line `joining` starts and one error line
    holding every fragment, and nothing else on stderr. Returns the error line."""
    _, err = worker.communicate(timeout=WAIT)
    lines = [line for line in err.splitlines() if line.strip()]
    assert worker.returncode == 1 and len(lines) == 2, err
    assert lines[0].startswith(joining) and lines[1].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[1], lines[1]
    return lines[1]


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


AFTER_PORT = """
import runpy, socket, sys, time
import jaxmosaic.cli  # imported while the other process starts: once its port answers, this run only joins
port, deadline = int(sys.argv[1]), time.monotonic() + 90
while time.monotonic() < deadline:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            break
    time.sleep(0.05)
sys.argv = ["jaxmosaic", *sys.argv[2:]]
runpy.run_module("jaxmosaic.cli", run_name="__main__")
"""


def test_a_join_that_cannot_finish_ends_within_the_timeout_naming_what_did_not_arrive(tmp_path, start):
    """No coordinator, a peer that never starts, two processes 0, and --coordinator auto outside a
    cluster: each ends with one line (JAX alone would wait 5 minutes, or abort with a stack trace).
    The second process 0 starts with the others and joins as soon as the first one's port answers,
    so the first one's --timeout need only cover that join, not a Python start."""
    port = free_port()
    started = time.monotonic()
    alone = start(*BUILD, "-o", tmp_path / "alone.npz", "--coordinator", f"127.0.0.1:{port}", "--num-processes", 2,
                   "--process-id", 0, "--timeout", 8)
    twin = start(port, *BUILD, "-o", tmp_path / "twin.npz", "--coordinator", f"127.0.0.1:{port}", "--num-processes", 2,
                  "--process-id", 0, "--timeout", 4, script=AFTER_PORT)
    nobody = start(*BUILD, "-o", tmp_path / "nobody.npz", "--coordinator", "127.0.0.1:1", "--num-processes", 2,
                    "--process-id", 1, "--timeout", 4)
    auto = start(*BUILD, "-o", tmp_path / "auto.npz", "--coordinator", "auto", "--timeout", 4)
    while not _answers(port):
        assert alone.poll() is None and time.monotonic() - started < WAIT, alone.communicate()
        time.sleep(0.2)

    _failed(nobody, "--coordinator 127.0.0.1:1: nothing answers there after 4 s", "connection refused",
            joining="process 1 of 2: joining the coordinator 127.0.0.1:1")
    _failed(auto, "--coordinator auto: no cluster found", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST",
            joining="joining the processes this cluster's environment names")
    _failed(twin, f"port {port} cannot be served on this machine", "another process may already be --process-id 0",
            joining=f"process 0 of 2: joining the coordinator 127.0.0.1:{port}")
    _failed(alone, "--timeout 8: not every one of the 2 processes joined", "(this is process 0)",
            joining=f"process 0 of 2: joining the coordinator 127.0.0.1:{port}")
    assert time.monotonic() - started < WAIT
    assert not list(tmp_path.iterdir()), "no run wrote anything"


def test_processes_given_different_settings_are_refused_before_work(tmp_path, start):
    out = tmp_path / "seeds.npz"
    workers = _job(start, out, free_port(), ["--seed", "0"], ["--seed", "1"])
    lines = [_failed(worker, "process 1: its settings differ from process 0's (--seed)", "no process started",
                     joining=f"process {i} of 2") for i, worker in enumerate(workers)]
    assert lines[0] == lines[1]
    assert not list(tmp_path.iterdir()), "no library and no build folder"


def test_a_process_whose_own_output_fails_its_check_stops_every_process_before_work(tmp_path, start):
    """Process 1's build folder is in the way (a folder jaxmosaic did not write): it is refused
    before any process starts, rather than when process 1 writes (process 0 then failed 30 s later
    in a collective, leaving its build folder)."""
    out = tmp_path / "out.npz"
    theirs = tmp_path / "out.npz.build-1-of-2"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("not jaxmosaic's")
    zero, one = _job(start, out, free_port(), [], [])
    reason = f"{theirs}: a folder jaxmosaic did not write"
    _failed(zero, f"process 1: {reason}", "no process started", joining="process 0 of 2")
    line = _failed(one, reason, joining="process 1 of 2")
    assert "process 1:" not in line, "the process that failed says its own reason"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz.build-1-of-2"]
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]


def test_a_failure_in_one_process_s_share_stops_every_process_and_leaves_no_build_folder(tmp_path, start):
    """Process 1 cannot write its second chunk (a folder in the way, which is not jaxmosaic's):
    both processes stop with one line naming it, before the collectives that would wait for it,
    and each removes what it wrote in its build folder."""
    out = tmp_path / "out.npz"
    ones = tmp_path / "out.npz.build-1-of-2"
    (ones / "chunk-000003.npz").mkdir(parents=True)  # chunks 2 and 3 of 0..3 are process 1's
    (ones / MARKER).write_text('{"jaxmosaic": "library-build", "version": 1, "files": []}')
    zero, one = _job(start, out, free_port(), [], [])
    reason = "chunk-000003.npz: is a folder, expected a file name"
    _failed(zero, "process 1: ", reason, "every process stopped", joining="process 0 of 2")
    _failed(one, reason, joining="process 1 of 2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz.build-1-of-2"]
    assert [p.name for p in ones.iterdir()] == ["chunk-000003.npz"], "only what jaxmosaic did not write is left"


FAILING_SAVE = """
import runpy, sys
import jaxmosaic.techniques.mosaic.stream as stream

def full_disk(out, *args, **kwargs):
    raise OSError(28, "No space left on device", str(out))

stream.save_library = full_disk  # process 0's write of the library fails, as on a full disk
sys.argv = ["jaxmosaic", *sys.argv[1:]]
runpy.run_module("jaxmosaic.cli", run_name="__main__")
"""


def test_a_failed_write_of_the_library_fails_every_process_and_keeps_their_chunks(tmp_path, start):
    """Process 0 cannot write the library: the other processes wait for it, end with status 1
    naming it (never 0 with no library), and every build folder keeps its chunks for --resume."""
    out, port = tmp_path / "out.npz", free_port()
    env = _outside_a_cluster()
    distributed = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", 2, "--timeout", 30]
    argv = [str(a) for a in [*BUILD, "-o", out, *distributed]]
    with subprocess.Popen([sys.executable, "-c", FAILING_SAVE, *argv, "--process-id", "0"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as zero:
        one = start(*argv, "--process-id", 1)
        _, err = zero.communicate(timeout=WAIT)
        assert zero.returncode == 1 and f"{out}: no space left" in err.splitlines()[-1], err
    _, err = one.communicate(timeout=WAIT)
    last = err.strip().splitlines()[-1]
    assert one.returncode == 1 and [line for line in err.splitlines() if line.startswith("error: ")] == [last], err
    assert last.startswith(f"error: process 0: {out}: no space left on the device"), last
    assert last.endswith("the library was not written; every process keeps its chunks: rerun with --resume"), last
    assert not out.exists()
    for process in (0, 1):
        kept = sorted(p.name for p in (tmp_path / f"out.npz.build-{process}-of-2").glob("chunk-*.npz"))
        assert kept == [f"chunk-00000{2 * process + i}.npz" for i in range(2)], (process, kept)
