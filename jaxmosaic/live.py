"""A live page for a long run: the current image, the progress, the loss terms and their curve.

`LiveView` serves one page from the standard library's `http.server.ThreadingHTTPServer` on a
daemon thread. No dependency and no web framework: the server answers a handful of GET routes
for one page, on the loopback interface unless asked otherwise, and the page (`live_page.html`,
one file with its script and style) needs nothing from the network.

Routes:

- `/`: the page.
- `/image`: the latest image as PNG (a batch side by side; at most `MAX_SIDE` px a side, a larger
  one scaled down), encoded when asked, from the array `publish` was given; 204 before the first
  one. The page asks for `/image?seq=N`; the query only defeats caches.
- `/events`: Server-Sent Events, one `data:` line of JSON per message (its `id:` the `seq`); a
  reader that falls behind gets the newest message, never a backlog.
- `/state.json`: the latest message.
- `/history.json`: `[{"seq", "done", "loss"}, ...]`, the loss terms of the run so far (thinned to
  at most `HISTORY` points), so that a page opened late draws the whole curve.

A message holds these fields (null when they do not apply):

- `seq`: 1, 2, ... in the order of publication (0: nothing published yet).
- `command`: the command running ("style", "library build", ...).
- `status`: "running", then "done" or "failed" in the last message.
- `message`: one line: a note, or the error that ended the run.
- `step`, `steps`: steps done and asked for in the current stage (a library build counts tiles,
  `vq train` k-means iterations).
- `stage`, `stages`, `label`: the stage (from 1), how many, and what it is ("256x256").
- `tile`, `tiles`, `pass`: in a stage refined tile by tile, the tile just refined (from 1), how
  many, and the pass (from 1).
- `frame`, `frames`: the frame of a video (from 1) and how many.
- `done`, `total`, `unit`: work done and asked for over the whole run, in `unit`s ("steps",
  "tiles", "iterations").
- `rate`: units per second over the last updates (compilation before the first one left out);
  `seconds_left`: the rest of `total` at that rate.
- `loss`: {term: value}, "total" among them; a value that is not finite is null.
- `memory`: {"bytes_in_use", "peak_bytes_in_use", "bytes_limit"} of the first local device, as its
  backend reports them; null where it reports nothing (the CPU).
- `image`: the `seq` of the message that brought the latest image (fetch `/image`), or null.
- `elapsed`: seconds since the view started; `time`: Unix time.

The run never waits for a browser: `publish` (from the run's thread) replaces the latest message
and the reference to the latest image under a lock and wakes the readers; each `/events` reader
sends the newest message it has not sent, so a slow reader skips stale ones and an absent one
costs nothing; images are encoded in the reader's thread, once per image.
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import importlib.resources
import io
import ipaddress
import json
import math
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from jaxmosaic.config import setting
from jaxmosaic.errors import ConfigError, JaxmosaicError

if TYPE_CHECKING:
    from jaxmosaic.stages import Progress

__all__ = ["HISTORY", "MAX_SIDE", "WEB_HELP", "LiveView", "live_view", "progress_update", "show", "web_setting"]

WEB_HELP = ("Serve a live page of the run at [HOST:]PORT (port 0 picks a free one; host 127.0.0.1 unless named: "
            "anyone who can reach another host's address sees the images).")
MAX_SIDE = 2048
"""The longest side of the image `/image` serves: a print-size output is scaled down for the page."""
HISTORY = 4096
"""The most loss points `/history.json` keeps: past it, every other point is dropped."""

_UPDATE_FIELDS = ("message", "step", "steps", "stage", "stages", "label", "tile", "tiles", "pass", "frame", "frames",
                  "done", "total", "unit", "loss")
_RATE_WINDOW = 8  # updates the rate is measured over
_KEEPALIVE_SECONDS = 10.0  # an idle /events stream sends a comment this often (a closed tab is noticed)
_LINGER_SECONDS = 1.0  # at the end, how long the readers get to send the final message


def web_setting() -> Any:
    """The `web` field of a command's settings: `--web [HOST:]PORT`, off by default."""
    return setting(None, WEB_HELP, resume=False)


def progress_update(progress: Progress, *, stages: int | None = None, loss: Mapping[str, Any] | None = None) -> dict:
    """The message fields of a `solve` callback's `Progress` (stages, tiles and passes counted from
    1), for `LiveView.publish`.

    Args:
      progress: what the callback was given.
      stages: how many stages the problem has.
      loss: the loss terms to show (default: the chunk's last loss of the first image, as "total").
    """
    tile, tiles, pass_index = progress.tile if progress.tile is not None else (None, None, None)
    if loss is None:
        loss = {"total": np.asarray(progress.losses).reshape(len(progress.losses), -1)[-1, 0]}
    return {"step": progress.step, "steps": progress.steps, "stage": progress.stage + 1, "stages": stages,
            "label": progress.label, "tile": None if tile is None else tile + 1, "tiles": tiles,
            "pass": None if pass_index is None else pass_index + 1, "done": progress.done, "total": progress.total,
            "unit": "steps", "loss": loss}


def _parse_address(text: str) -> tuple[str, int]:
    """"PORT", "HOST:PORT" or "[IPv6]:PORT" -> (host, port); the host defaults to 127.0.0.1."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError("web", f"{text!r}: write an IPv6 host in brackets, e.g. [::1]:8000")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("web", f"{text!r}: expected [HOST:]PORT with PORT a whole number from 0 to 65535")
    if sep and not host:
        raise ConfigError("web", f"{text!r}: no host before the ':' (give PORT alone for 127.0.0.1)")
    return host, int(port)


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address.split("%")[0]).is_loopback


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _device_memory() -> dict | None:
    """Bytes in use, the peak and the limit on the first local device, or None where the backend
    reports nothing (the CPU)."""
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - a backend without memory statistics: nothing to show
        return None
    if not stats:
        return None
    return {key: int(stats[key]) if key in stats else None for key in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")}


def _png(image) -> bytes:
    """A float image (HW, HWC or a batch NHWC, side by side) in [0, 1] as PNG bytes, at most
    MAX_SIDE px a side."""
    from PIL import Image

    pixels = np.asarray(image, np.float32)
    if pixels.ndim == 4:
        pixels = np.concatenate(list(pixels), axis=1)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    picture = Image.fromarray(np.round(np.clip(np.nan_to_num(pixels), 0.0, 1.0) * 255.0).astype(np.uint8))
    if max(picture.size) > MAX_SIDE:
        picture.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


_INITIAL = b'{"state": null, "history": []}'  # the page's placeholder for the state it is served with


def _page() -> bytes:
    page = importlib.resources.files("jaxmosaic").joinpath("live_page.html").read_bytes()
    assert page.count(_INITIAL) == 1, "live_page.html holds one placeholder for its initial state"
    return page


class LiveView:
    """A live page of a run, served from a daemon thread until `close` (see the module doc).

    Args:
      address: "[HOST:]PORT"; the host defaults to 127.0.0.1 and port 0 picks a free port. On a
        loopback address, the page answers requests addressed to this host, to "localhost" or to
        a loopback address, and refuses others (403).
      command: what is running, shown on the page.
      say: prints the address (and, for a host other than loopback, that anyone who can reach it
        sees the images).

    Raises:
      ConfigError (field "web"): a malformed address, a host that does not resolve, a port that
        cannot be listened on.
    """

    def __init__(self, *, address: str = "127.0.0.1:0", command: str = "", say: Callable[[str], None] = print):
        host, port = _parse_address(address)
        try:
            family, _, _, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except (socket.gaierror, UnicodeError) as error:
            raise ConfigError("web", f"{host!r}: cannot resolve this host ({getattr(error, 'strerror', None) or error})") from None
        self.loopback = _is_loopback(where[0])
        self._page = _page()
        server_class = type("Server", (http.server.ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True,
                                                                           "handle_error": _quiet})
        try:
            self._server = server_class(where[:2], _handler(self))
        except OSError as error:
            raise ConfigError("web", f"cannot listen on {_url_host(host)}:{port}: {error.strerror or error}") from None
        self.host, self.port = host, self._server.server_address[1]
        self.url = f"http://{_url_host(host)}:{self.port}/"
        self.command = command
        self._condition = threading.Condition()
        self._started = time.monotonic()
        self._image = None
        self._image_seq: int | None = None
        self._encoded: tuple[int, bytes] | None = None  # (image seq, PNG): one encoding per image
        self._rate_points: collections.deque = collections.deque(maxlen=_RATE_WINDOW)
        self._history: list[dict] = []
        self._history_stride = 1
        self._history_seen = 0
        self._readers: dict[int, int] = {}  # reader id -> seq it last sent
        self._closed = False
        self._message = self._stamp({"seq": 0, "status": "running"})
        self._body = json.dumps(self._message).encode()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="jaxmosaic-live", daemon=True)
        self._thread.start()
        say(f"live view: {self.url}")
        if not self.loopback:
            say(f"live view: listening on {host}, not on loopback: anyone who can reach this address sees the images")

    # --- the run's side -------------------------------------------------------------------------

    def publish(self, update: Mapping[str, Any], *, image=None) -> None:
        """Make `update` (fields of the module doc's message: step, steps, loss, ...) the latest
        message, and `image` (HWC, or a batch NHWC, float in [0, 1]; held by reference, so not
        changed in place afterwards) the latest image when given. Never waits for a reader."""
        unknown = sorted(set(update) - set(_UPDATE_FIELDS))
        if unknown:
            raise ValueError(f"publish: unknown fields {', '.join(unknown)}; known: {', '.join(_UPDATE_FIELDS)}")
        fields = dict(update)
        if fields.get("loss") is not None:
            fields["loss"] = {str(term): _finite(value) for term, value in fields["loss"].items()}
        memory = _device_memory()
        with self._condition:
            seq = self._message["seq"] + 1
            if image is not None:
                self._image, self._image_seq = image, seq
            message = self._stamp({"seq": seq, "status": "running", **fields, "memory": memory})
            self._remember(message)
            self._replace(message)

    def counter(self, *, update: Callable[[int, int], None] | None = None, unit: str = "steps") -> Callable[[int, int], None]:
        """A `progress(done, total)` callback for work counted in units (a library build's tiles)
        that publishes the count, after calling `update` (a progress bar's) when given."""

        def count(done: int, total: int) -> None:
            if update is not None:
                update(done, total)
            self.publish({"step": done, "steps": total, "done": done, "total": total, "unit": unit})

        return count

    def finish(self, *, error: str | None = None) -> None:
        """Publish the final message: the latest one with status "done", or "failed" and `error`."""
        memory = _device_memory()
        with self._condition:
            last = self._message
            message = self._stamp({**last, "seq": last["seq"] + 1, "status": "failed" if error else "done",
                                   "message": error or last["message"], "memory": memory,
                                   "seconds_left": None if error else 0.0})
            self._replace(message)

    def close(self) -> None:
        """Give the readers a moment to send the final message, then stop the server."""
        with self._condition:
            deadline = time.monotonic() + _LINGER_SECONDS
            while any(sent < self._message["seq"] for sent in self._readers.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            self._closed = True
            self._condition.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def latest(self) -> dict:
        """The latest message (a copy)."""
        with self._condition:
            return dict(self._message)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.finish(error=None if error is None else _failure(error))
        self.close()

    def _stamp(self, message: dict) -> dict:
        """Every field of a message, with the rate, the time left and the clock filled in."""
        full = {"seq": 0, "command": self.command, "status": "running", "message": "",
                **{name: None for name in _UPDATE_FIELDS if name != "message"}, "rate": None, "seconds_left": None,
                "memory": None, "image": None, **message}
        if full["done"] is not None and full["status"] == "running":
            now = time.monotonic()
            if self._rate_points and full["done"] < self._rate_points[-1][1]:
                self._rate_points.clear()  # a new count (another stage of a library build, a resume)
            self._rate_points.append((now, full["done"]))
            (then, before), (_, after) = self._rate_points[0], self._rate_points[-1]
            if after > before and now > then:
                full["rate"] = (after - before) / (now - then)
                if full["total"] is not None:
                    full["seconds_left"] = max(0.0, full["total"] - full["done"]) / full["rate"]
        full["image"] = self._image_seq
        full["elapsed"] = time.monotonic() - self._started
        full["time"] = time.time()
        return full

    def _remember(self, message: dict) -> None:
        """Keep the message's loss terms for /history.json: every `stride`-th update, the stride
        doubled whenever HISTORY points are reached."""
        if not message["loss"]:
            return
        self._history_seen += 1
        if (self._history_seen - 1) % self._history_stride:
            return
        self._history.append({"seq": message["seq"], "done": message["done"], "loss": message["loss"]})
        if len(self._history) >= HISTORY:
            self._history = self._history[::2]
            self._history_stride *= 2

    def _replace(self, message: dict) -> None:
        self._message = message
        self._body = json.dumps(message).encode()
        self._condition.notify_all()

    # --- the readers' side ----------------------------------------------------------------------

    def _image_png(self) -> bytes | None:
        with self._condition:
            image, seq, encoded = self._image, self._image_seq, self._encoded
        if image is None:
            return None
        if encoded is None or encoded[0] != seq:
            encoded = (seq, _png(image))
            with self._condition:
                if self._encoded is None or self._encoded[0] < seq:
                    self._encoded = encoded
        return encoded[1]

    def _served_page(self) -> bytes:
        """The page with the latest message and the history in it, so that it shows them at once."""
        with self._condition:
            initial = json.dumps({"state": self._message, "history": self._history})
        # no "</script>" can end the block early, nor "<!--<script" make the parser swallow the page
        initial = initial.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()
        return self._page.replace(_INITIAL, initial)

    def _history_body(self) -> bytes:
        with self._condition:
            return json.dumps(self._history).encode()

    def _stream(self, write: Callable[[bytes], None]) -> None:
        """Send every newest message as an event until the view closes; a reader behind skips
        to the newest."""
        reader = threading.get_ident()
        sent = 0
        write(b"retry: 1000\n\n")
        try:
            while True:
                with self._condition:
                    self._readers[reader] = sent
                    self._condition.notify_all()
                    fresh = self._condition.wait_for(lambda sent=sent: self._message["seq"] > sent or self._closed,
                                                     timeout=_KEEPALIVE_SECONDS)
                    if self._closed and self._message["seq"] <= sent:
                        return
                    seq, body = self._message["seq"], self._body
                if not fresh:
                    write(b": keep-alive\n\n")
                    continue
                write(b"id: %d\ndata: %s\n\n" % (seq, body))
                sent = seq
        finally:
            with self._condition:
                self._readers.pop(reader, None)
                self._condition.notify_all()

    def _allowed(self, host_header: str | None) -> bool:
        """On loopback, only requests addressed to a loopback name or to the host the view was
        given (one that resolves to 127.0.1.1, say): another site's page cannot read the images
        by pointing its own name at 127.0.0.1."""
        if not self.loopback:
            return True
        name = urllib.parse.urlsplit(f"//{host_header or ''}").hostname or ""
        if name == "localhost" or name.endswith(".localhost") or name == self.host.lower():
            return True
        try:
            return _is_loopback(name)
        except ValueError:
            return False


def _failure(error: BaseException) -> str:
    """The one line a failed run's page shows."""
    code = getattr(error, "exit_code", None)
    if isinstance(error, KeyboardInterrupt) or code == 130:
        return "interrupted"
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    return f"exit status {code}" if code is not None else type(error).__name__


def _quiet(self, request, client_address) -> None:
    """The server's `handle_error`: silent, where the default prints a traceback in the middle of
    the run's progress bar (a client that resets the connection before its request is read)."""


def _handler(view: LiveView) -> type:
    """The request handler class of `view`'s server."""

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 30  # a client that stops reading frees its thread

        def do_GET(self):
            if not view._allowed(self.headers.get("Host")):
                self._reply(403, "text/plain; charset=utf-8",
                            b"forbidden: this view answers on its own host name or a loopback name only\n")
                return
            route = urllib.parse.urlsplit(self.path).path
            try:
                if route in ("/", "/index.html"):
                    self._reply(200, "text/html; charset=utf-8", view._served_page())
                elif route == "/state.json":
                    self._reply(200, "application/json", view._body)
                elif route == "/history.json":
                    self._reply(200, "application/json", view._history_body())
                elif route == "/image":
                    try:
                        png = view._image_png()
                    except Exception as error:  # noqa: BLE001 - an image PIL cannot encode: the page shows no image
                        self._reply(500, "text/plain; charset=utf-8", f"cannot encode the image: {_failure(error)}\n".encode())
                        return
                    if png is None:
                        self._reply(204, "image/png", b"")
                    else:
                        self._reply(200, "image/png", png)
                elif route == "/events":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    view._stream(self._send)
                else:
                    self._reply(404, "text/plain; charset=utf-8", b"not found\n")
            except OSError:  # the client went away (a closed tab, a reset, a timeout)
                self.close_connection = True

        def _send(self, data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()

        def _reply(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # the terminal shows the run's progress, not requests
            pass

    return Handler


@contextlib.contextmanager
def live_view(address: str | None, *, command: str, say: Callable[[str], None] = print) -> Iterator[LiveView | None]:
    """A `LiveView` at `address` for the block (None when `address` is None): its last message
    says "done", or "failed" and the error's first line, and the server stops when the block ends."""
    if address is None:
        yield None
        return
    with LiveView(address=address, command=command, say=say) as view:
        yield view


def show(address_or_view: LiveView | str | int, *, height: int = 720) -> None:
    """Display a live view in a Jupyter notebook (an IFrame of its page).

    Args:
      address_or_view: a `LiveView`, its URL, "[HOST:]PORT" or a port (a run started with
        `--web`).
      height: the frame's height in pixels.
    """
    try:
        from IPython.display import IFrame, display
    except ImportError:
        raise JaxmosaicError("jaxmosaic.live.show needs IPython (run it in a notebook); open the view's URL in a browser instead") from None
    if isinstance(address_or_view, LiveView):
        url = address_or_view.url
    elif str(address_or_view).startswith(("http://", "https://")):
        url = str(address_or_view)
    else:
        host, port = _parse_address(str(address_or_view))
        url = f"http://{_url_host(host)}:{port}/"
    display(IFrame(url, width="100%", height=height))
