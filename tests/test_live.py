"""The live view (`--web`): a hybrid run in a fresh Python serves its state, its image and its
events while it runs, a headless Chromium draws the page, Ctrl-C ends the page with "failed:
interrupted", and a run that ends says "done"; bad addresses are one line before any work; a
reader that never reads costs the run nothing; the library build and `vq train` publish their
progress.

Every request goes to 127.0.0.1, with a timeout, a bounded number of times.
"""

from __future__ import annotations

import http.client
import importlib
import inspect
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import SAMPLES, STYLE, VQ, cli_command, noise_tiles, one_line_error, run_cli

# the fields docs/commands.md documents for every message
FIELDS = {"seq", "command", "status", "message", "step", "steps", "stage", "stages", "label", "tile", "tiles", "pass",
          "frame", "frames", "done", "total", "unit", "rate", "seconds_left", "loss", "memory", "image", "elapsed", "time"}
ADDRESS = re.compile(r"^live view: (http://127\.0\.0\.1:\d+/)$")
ENDLESS = 100_000  # steps of the run the tests look at and then stop with Ctrl-C


def get(url: str, *, timeout: float = 10) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:"), url
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def state(url: str) -> dict:
    return json.loads(get(url + "state.json")[1])


class LiveRun:
    """`jaxmosaic hybrid ... --web 127.0.0.1:0` in a fresh Python: its stderr lines as they come,
    the view's address, and every message /events sends from the start to the last."""

    def __init__(self, folder: Path, *, steps: int):
        self.out = folder / "hybrid.png"
        command = cli_command("hybrid", SAMPLES / "chelsea.png", SAMPLES / "coffee.png", "-o", self.out, "--size", 64,
                              "--steps", steps, "--web", "127.0.0.1:0", module=True)
        env = {**os.environ, "JAXMOSAIC_CACHE_DIR": str(folder / "cache"), "JAXMOSAIC_NO_COMPILATION_CACHE": "1"}
        self.process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self.lines: list[str] = []
        self.events: list[dict] = []
        self.url: str | None = None
        self.addressed = threading.Event()
        self.readers = [threading.Thread(target=self._read_output, daemon=True)]
        self.readers[0].start()
        assert self.addressed.wait(timeout=120) and self.url, f"no address printed: {self.lines}"

    def _read_output(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            found = ADDRESS.match(self.lines[-1])
            if found and self.url is None:
                self.url = found.group(1)
                self.readers.append(threading.Thread(target=self._read_events, daemon=True))
                self.readers[-1].start()
                self.addressed.set()
        self.addressed.set()

    def _read_events(self) -> None:
        with urllib.request.urlopen(self.url + "events", timeout=60) as response:  # a comment comes every 10 s
            for raw in response:
                if raw.startswith(b"data: "):
                    self.events.append(json.loads(raw[len(b"data: "):]))
                    if self.events[-1]["status"] != "running" or len(self.events) > 20000:
                        break

    def wait_for(self, condition, *, seconds: float = 120) -> dict:
        """The first /state.json that meets `condition`, polled every 50 ms while the run lasts."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.process.poll() is None:
            latest = state(self.url)
            if condition(latest):
                return latest
            time.sleep(0.05)
        raise AssertionError(f"no such state before the run ended or {seconds} s passed; output: {self.lines}")

    def finish(self, *, seconds: float = 120) -> int:
        """The exit code, once the output and the events are read to their end."""
        code = self.process.wait(timeout=seconds)
        for reader in self.readers:
            reader.join(timeout=30)
            assert not reader.is_alive()
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self.process.stderr.close()


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    run = LiveRun(tmp_path_factory.mktemp("live"), steps=ENDLESS)
    try:
        yield run
    finally:
        run.close()


def check_messages(events: list[dict]) -> None:
    """Messages in order, each with the documented fields, running until the last."""
    seqs = [event["seq"] for event in events]
    assert len(events) >= 3 and seqs == sorted(set(seqs)) and seqs[0] >= 1
    assert all(set(event) == FIELDS for event in events), [sorted(set(event) ^ FIELDS) for event in events][:3]
    running = events[:-1]
    assert all(event["status"] == "running" and event["command"] == "hybrid" and event["unit"] == "steps"
               and set(event["loss"]) == {"total", "precise", "blurred"} for event in running)
    steps = [event["step"] for event in running]
    assert steps == sorted(steps) and all(event["done"] == event["step"] for event in running)
    assert all(event["rate"] > 0 and event["seconds_left"] >= 0 for event in running[1:])
    assert all(event["memory"] is None or set(event["memory"]) == {"bytes_in_use", "peak_bytes_in_use", "bytes_limit"}
               for event in events)


def test_the_address_is_one_line_on_loopback(live_run):
    assert live_run.lines[0] == f"live view: {live_run.url}"
    assert not any("anyone" in line for line in live_run.lines)


def test_the_page_needs_nothing_from_the_network(live_run):
    status, page = get(live_run.url)
    assert status == 200 and b"<script" in page and b"<style" in page
    assert not re.search(rb"(src|href)\s*=\s*[\"']?(https?:)?//", page), "the page loads something from elsewhere"


def test_state_advances_and_the_image_decodes(live_run):
    first = live_run.wait_for(lambda s: s["seq"] >= 1 and s["image"] is not None)
    later = live_run.wait_for(lambda s: s["seq"] > first["seq"])
    assert later["step"] > first["step"] and later["done"] > first["done"]
    assert first["status"] == "running" and first["total"] == ENDLESS and set(first) == FIELDS
    status, png = get(live_run.url + f"image?seq={later['image']}")
    with Image.open(io.BytesIO(png)) as image:
        assert status == 200 and image.format == "PNG" and max(image.size) == 64  # --size 64
        assert np.asarray(image).std() > 5
        live_run.served = image.size


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browse(url: str, *flags: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", *flags, url], check=False, capture_output=True, timeout=90)


@pytest.mark.skipif(chromium() is None, reason="no chromium binary on PATH (apt-get install chromium: .ci/run does when root)")
def test_headless_chromium_shows_the_step_the_image_and_the_plot(live_run, tmp_path):
    live_run.wait_for(lambda s: s["seq"] >= 2 and s["image"] is not None)
    dom = browse(live_run.url, "--dump-dom", profile=tmp_path / "profile").stdout.decode()
    step = re.search(r'<span id="step">(\d+)</span> / <span id="steps">(\d+)</span>', dom)
    assert step and 1 <= int(step.group(1)) < ENDLESS and int(step.group(2)) == ENDLESS, dom[-2000:]
    assert 'id="status" class="running">running<' in dom
    shot = tmp_path / "live.png"
    browse(live_run.url, "--window-size=1100,720", f"--screenshot={shot}", profile=tmp_path / "profile")
    with Image.open(shot) as screenshot:
        pixels = np.asarray(screenshot.convert("RGB")).astype(np.int16)
    assert pixels.shape == (720, 1100, 3)
    picture = pixels[150:420, 60:460]  # the image fills the left column's width (64x42: y 130 to 440)
    assert picture.std() > 20, "no image on the page"
    plot = pixels[280:560, 600:1070]  # the plot is the right column's lower half: its lines are coloured
    coloured = (plot.max(axis=2) - plot.min(axis=2)) > 80
    assert coloured.sum() > 100, "no loss curve on the page"


def test_ctrl_c_ends_the_page_with_interrupted(live_run):
    live_run.wait_for(lambda s: s["seq"] >= 3)
    live_run.process.send_signal(signal.SIGINT)
    assert live_run.finish() == 130, live_run.lines
    check_messages(live_run.events)
    last = live_run.events[-1]
    assert last["status"] == "failed" and last["message"] == "interrupted" and last["step"] < ENDLESS
    with Image.open(live_run.out) as written:  # the images so far
        assert written.size == getattr(live_run, "served", written.size)
    with pytest.raises(urllib.error.URLError):  # the server stopped with the command
        state(live_run.url)


def test_events_arrive_in_order_and_the_last_says_done(tmp_path):
    run = LiveRun(tmp_path, steps=400)
    try:
        assert run.finish() == 0, run.lines
    finally:
        run.close()
    check_messages(run.events)
    last = run.events[-1]  # a reader that falls behind skips to the newest message: only the last is certain
    assert last["status"] == "done" and last["step"] == last["done"] == last["total"] == 400 and last["seconds_left"] == 0
    with pytest.raises(urllib.error.URLError):
        state(run.url)


# --- in this process ---------------------------------------------------------------------------

@pytest.fixture
def busy_port():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


@pytest.mark.parametrize("value, reason", [
    ("eighty", "expected [HOST:]PORT"),
    ("70000", "from 0 to 65535"),
    ("no-such-host.invalid:0", "cannot resolve"),
    ("busy", "cannot listen on 127.0.0.1"),
])
def test_a_bad_web_value_is_one_line_before_any_work(tmp_path, busy_port, value, reason):
    value = f"127.0.0.1:{busy_port}" if value == "busy" else value
    out = tmp_path / "out.png"
    one_line_error(run_cli("style", SAMPLES / "astronaut.png", SAMPLES / "rocket.jpg", "-o", out, *STYLE, "--web", value),
                   "--web", reason, code=1)
    one_line_error(run_cli("vq", "train", SAMPLES / "coffee.png", "-o", tmp_path / "book.npz", *VQ, "--web", value),
                   "--web", reason, code=1)
    one_line_error(run_cli("library", "build", "gabor", "-o", tmp_path / "lib.npz", "--web", value), "--web", reason, code=1)
    assert not [path for path in ("out.png", "out.gif", "book.npz", "book-grid.png", "lib.npz") if (tmp_path / path).exists()]


def test_another_host_is_announced():
    from jaxmosaic.live import LiveView

    said = []
    try:
        view = LiveView(address="0.0.0.0:0", command="style", say=said.append)
    except Exception as error:  # noqa: BLE001 - a sandbox that forbids listening beyond loopback
        pytest.skip(f"cannot listen on 0.0.0.0 here: {error}")
    view.close()
    assert said == [f"live view: http://0.0.0.0:{view.port}/",
                    "live view: listening on 0.0.0.0, not on loopback: anyone who can reach this address sees the images"]
    with LiveView(address="localhost:0", say=said.append) as loopback:
        assert loopback.loopback and said[-1] == f"live view: http://localhost:{loopback.port}/"


def test_a_reader_that_never_reads_costs_the_run_nothing():
    """A stalled /events reader (a small receive buffer, never read; 10 MB of messages are more
    than any socket holds): publishing stays a store under a lock, the state stays current, and
    the view closes within its one-second linger."""
    from jaxmosaic.live import LiveView

    image = np.random.default_rng(0).random((512, 512, 3), dtype=np.float32)
    note = "x" * 2000
    with LiveView(say=lambda line: None) as view:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        stalled.settimeout(5)
        stalled.connect(("127.0.0.1", view.port))
        stalled.sendall(b"GET /events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        start = time.perf_counter()
        for step in range(5000):
            view.publish({"message": note, "step": step, "steps": 5000, "done": step, "total": 5000, "unit": "steps",
                          "loss": {"total": 1.0 / (step + 1)}}, image=image)
        seconds = time.perf_counter() - start
        assert state(view.url)["step"] == 4999
        with Image.open(io.BytesIO(get(view.url + "image")[1])) as served:
            assert served.size == (512, 512)
        closing = time.perf_counter()
    closed = time.perf_counter() - closing
    stalled.close()
    assert closed < 3, f"closing took {closed:.2f} s"
    assert seconds < 5, f"5000 updates took {seconds:.2f} s"


@pytest.mark.parametrize("note", ["</script><script>alert(1)</script>", "<!--<script", "a & b -> c"])
def test_the_page_keeps_a_message_inside_its_script(note):
    """A message that holds "</script>" (a file name, an error) cannot end the page's state block,
    nor "<!--<script" put the HTML parser in a state that swallows the rest of the page."""
    from jaxmosaic.live import LiveView

    with LiveView(say=lambda line: None) as view:
        view.publish({"message": note})
        page = get(view.url)[1].decode()
    assert page.count("</script>") == 2 and "<!--" not in page  # the state block's and the page script's own
    block = re.search(r'<script id="initial" type="application/json">(.*?)</script>', page, re.DOTALL).group(1)
    assert not set(block) & set("<>&") and json.loads(block)["state"]["message"] == note


def status(port: int, host: str) -> int:
    """The status of GET /state.json from 127.0.0.1:`port` with `Host: host`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/state.json", headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


def test_on_loopback_only_requests_to_the_view_are_answered(monkeypatch):
    """Another site's name pointed at 127.0.0.1 is refused; localhost, a loopback address and the
    host the view was given (Debian resolves the machine's name to 127.0.1.1) are answered."""
    from jaxmosaic.live import LiveView

    with LiveView(say=lambda line: None) as view:
        port = view.port
        answers = {host: status(port, host) for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example",
                                                         "myhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}")}
    assert answers == {"evil.example": 403, f"evil.example:{port}": 403, "localhost.evil.example": 403, "myhost": 403,
                       f"localhost:{port}": 200, f"127.0.0.1:{port}": 200, f"[::1]:{port}": 200}
    resolve = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, *args, **kwargs: resolve("127.0.0.1" if host == "myhost" else host, *args, **kwargs))
    said = []
    with LiveView(address="myhost:0", say=said.append) as view:
        port = view.port
        answers = [status(port, f"myhost:{port}"), status(port, f"MyHost:{port}"), status(port, "evil.example")]
    assert view.loopback and said == [f"live view: http://myhost:{port}/"] and answers == [200, 200, 403]


def test_a_failing_request_prints_nothing(capfd):
    """An image PIL cannot encode answers 500 with one line, and a client that resets the
    connection before its request is read costs nothing: no traceback in the progress bar."""
    from jaxmosaic.live import LiveView

    with LiveView(say=lambda line: None) as view:
        view.publish({"step": 1}, image=np.zeros((4, 4, 5), np.float32))  # five channels: no PNG mode
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(view.url + "image")
        assert refused.value.code == 500
        body = refused.value.read().decode()
        assert body.startswith("cannot encode the image: ") and body.count("\n") == 1, body
        before = set(threading.enumerate())
        with socket.create_connection(("127.0.0.1", view.port), timeout=5) as reset:
            reset.sendall(b"GET / HTTP/1.1\r\n")
            time.sleep(0.1)
            reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        assert state(view.url)["step"] == 1  # accepted after the reset one: its handler has started
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and [thread for thread in threading.enumerate()
                                               if thread not in before and "process_request" in thread.name]:
            time.sleep(0.01)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_options_are_keyword_only():
    from jaxmosaic.live import LiveView

    for function in (LiveView.__init__, LiveView.counter):
        options = [p for p in inspect.signature(function).parameters.values() if p.default is not inspect.Parameter.empty]
        assert options and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in options), function


def published(monkeypatch) -> list[dict]:
    """Every message a LiveView makes in this test, its final one included."""
    from jaxmosaic.live import LiveView

    messages = []
    for name in ("publish", "finish"):
        original = getattr(LiveView, name)

        def record(self, *args, original=original, **kwargs):
            original(self, *args, **kwargs)
            messages.append(self.latest())

        monkeypatch.setattr(LiveView, name, record)
    return messages


def test_library_build_and_vq_train_publish_their_progress(tmp_path, monkeypatch):
    messages = published(monkeypatch)
    tiles = noise_tiles(tmp_path / "tiles", 24, (8, 8), np.random.default_rng(0))
    result = run_cli("library", "build", tiles, "-o", tmp_path / "lib.npz", "--stream", "--chunk", 8, "--web", "127.0.0.1:0")
    assert result.exit_code == 0, result.output
    assert re.search(r"^live view: http://127\.0\.0\.1:\d+/$", result.output, re.MULTILINE)
    counts = [(m["done"], m["total"]) for m in messages if m["status"] == "running"]
    assert counts == [(8, 24), (16, 24), (24, 24)] and messages[-1]["status"] == "done"
    assert messages[-1]["step"] == messages[-1]["done"] == 24  # the final message carries the last count
    assert {m["unit"] for m in messages} == {"tiles"} and messages[-1]["command"] == "library build"

    messages.clear()
    result = run_cli("vq", "train", SAMPLES / "coffee.png", "-o", tmp_path / "book.npz", *VQ, "--web", "127.0.0.1:0")
    assert result.exit_code == 0, result.output
    start, end, final = messages
    assert start["step"] == 0 and start["unit"] == "iterations" and start["image"] is None
    assert end["loss"]["inertia"] > 0 and end["image"] == end["seq"] and final["status"] == "done"
    assert not [thread for thread in threading.enumerate() if thread.name == "jaxmosaic-live"]


@pytest.mark.parametrize("process", [0, 1])
def test_only_process_0_of_a_distributed_build_serves_the_page(tmp_path, monkeypatch, process):
    """The processes of one machine would all bind the same port: the others say so and go on."""
    from jaxmosaic.errors import JaxmosaicError

    def stopped(config, *, say):
        raise JaxmosaicError("stopped before joining")

    monkeypatch.setattr(importlib.import_module("jaxmosaic.cli.library"), "start_distributed", stopped)
    result = run_cli("library", "build", "gabor", "-o", tmp_path / "lib.npz", "--coordinator", "127.0.0.1:1",
                     "--num-processes", 2, "--process-id", process, "--web", "127.0.0.1:0")
    lines = result.output.splitlines()
    assert result.exit_code == 1 and lines[-1] == "error: stopped before joining", result.output
    if process == 0:
        assert len(lines) == 2 and re.match(r"^live view: http://127\.0\.0\.1:\d+/$", lines[0]), result.output
    else:
        assert lines == ["--web: process 0 serves the live view; process 1 does not", lines[-1]]


def test_a_failed_run_says_so(tmp_path, monkeypatch):
    messages = published(monkeypatch)
    content = tmp_path / "content.png"
    shutil.copy(SAMPLES / "astronaut.png", content)
    result = run_cli("style", content, SAMPLES / "rocket.jpg", "-o", content, *STYLE, "--web", "127.0.0.1:0")
    assert result.exit_code == 1
    assert messages[-1]["status"] == "failed" and "content.png" in messages[-1]["message"]
    assert "\n" not in messages[-1]["message"]


def test_show_puts_the_page_in_a_notebook_frame(monkeypatch):
    import sys
    import types

    from jaxmosaic.errors import JaxmosaicError
    from jaxmosaic.live import LiveView, show

    monkeypatch.setitem(sys.modules, "IPython", None)
    with pytest.raises(JaxmosaicError, match="needs IPython"):
        show(8000)
    shown = []
    display = types.ModuleType("IPython.display")
    display.IFrame = lambda url, width, height: (url, width, height)
    display.display = shown.append
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    show(8000)
    show("[::1]:8001", height=300)
    with LiveView(say=lambda line: None) as view:
        show(view)
    assert shown == [("http://127.0.0.1:8000/", "100%", 720), ("http://[::1]:8001/", "100%", 300), (view.url, "100%", 720)]
