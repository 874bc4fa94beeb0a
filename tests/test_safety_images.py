"""Images and names that cannot be trusted: pixels that are not numbers, headers that claim more
pixels than their file can hold, and file names that look like markup. Each is refused with one
line naming the file, before any work, and printed literally."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import SAMPLES, one_line_error, run_cli, sample_tiles
from jaxmosaic import ImageError, load_image

TESTS = Path(__file__).resolve().parent


def float_tiff(path: Path, value: float, side: int = 64) -> Path:
    """A 32-bit float grayscale TIFF (Pillow mode "F") of a gradient with `value` in one pixel."""
    pixels = np.linspace(0.0, 1.0, side * side, dtype=np.float32).reshape(side, side)
    pixels[side // 2, side // 3] = value
    Image.fromarray(pixels).save(path)
    with Image.open(path) as written:
        assert written.mode == "F"
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def rgb_png(path: Path, width: int, height: int, zlib_stream: bytes) -> Path:
    """An 8-bit RGB PNG with a valid header for width x height and `zlib_stream` as its pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib_stream) + png_chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


# --- pixels that are not numbers -----------------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_load_image_refuses_a_float_tiff_with_non_finite_pixels(tmp_path, value):
    path = float_tiff(tmp_path / "bad.tif", value)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(info.value) == f"{path}: holds non-finite pixel values (NaN or infinity)"


def test_a_finite_float_tiff_still_loads_clipped(tmp_path):
    pixels = np.array([[-0.5, 0.0], [0.25, 2.0]], np.float32)
    Image.fromarray(pixels).save(tmp_path / "ok.tif")
    loaded = load_image(tmp_path / "ok.tif")
    np.testing.assert_array_equal(loaded[..., 0], [[0.0, 0.0], [0.25, 1.0]])
    np.testing.assert_array_equal(loaded[..., 0], loaded[..., 2])


@pytest.fixture
def nan_tiff(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return float_tiff(tmp_path / "nan.tif", np.nan).relative_to(tmp_path)


@pytest.mark.parametrize("args", [
    ["hybrid", "NAN", SAMPLES / "coffee.png", "-o", "out.png", "--method", "fourier", "--size", 32],
    ["hybrid", SAMPLES / "coffee.png", "NAN", "-o", "out.png", "--method", "fourier", "--size", 32],
    ["features", "NAN", "-o", "out.npz", "--weights", "random", "--layers", "relu1_1", "--size", 32],
    ["vq", "train", "NAN", "-o", "out.npz", "--k", 4, "--samples", 200, "--iterations", 2, "--patch", 4],
    ["texture", "NAN", "-o", "out.png", "--weights", "random", "--size", 32, "--steps", 2, "--layers", "relu1_1,pool1"],
], ids=["hybrid-near", "hybrid-far", "features", "vq-train", "texture"])
def test_every_command_refuses_a_nan_tiff_before_writing(nan_tiff, tmp_path, args):
    result = run_cli(*(nan_tiff if a == "NAN" else a for a in args))
    one_line_error(result, f"{nan_tiff}: holds non-finite pixel values", code=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.tif"]


def test_a_nan_tiff_in_a_tile_folder_is_skipped_and_listed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiles = sample_tiles(tmp_path / "tiles", 3)
    float_tiff(tiles / "nan.tif", np.nan)
    result = run_cli("library", "build", "tiles", "-o", "lib.npz", "--svd-k", 0)
    assert result.exit_code == 0, result.output
    assert "indexed 3 tiles" in result.output and "skipped 1 file(s) (unreadable, or symbolic links): nan.tif" in result.output
    info = run_cli("library", "info", "lib.npz")
    assert info.exit_code == 0 and "nan.tif" in info.output


# --- headers that claim more than the file holds -----------------------------------------------

BOMB_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    from helpers import one_line_error, run_cli
    from jaxmosaic import ImageError, load_image

    run_cli("--help")  # the command line's modules, imported before memory is capped
    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    # 256 MiB more than is mapped now: decoding any of these images would need more
    resource.setrlimit(resource.RLIMIT_AS, (mapped + 2**28, resource.getrlimit(resource.RLIMIT_AS)[1]))
    found = {}
    for name in sys.argv[2:]:
        start = time.perf_counter()
        try:
            load_image(name)
            found[name] = ["loaded", time.perf_counter() - start]
        except ImageError as err:
            found[name] = [str(err), time.perf_counter() - start]
    start = time.perf_counter()
    line = one_line_error(run_cli("features", sys.argv[2], "-o", "x.npz", "--weights", "random"))
    found["features"] = [line, time.perf_counter() - start]
    print(json.dumps(found))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="caps the address space through /proc and RLIMIT_AS")
def test_headers_claiming_more_than_the_file_holds_are_refused_without_decoding(tmp_path):
    # 69 bytes claiming 1 x 90,000,000 pixels: exactly the default limit, so only the file's size
    # shows that the pixels are not there
    tall = rgb_png(tmp_path / "tall.png", 1, 90_000_000, zlib.compress(b"\0" * 100))
    assert tall.stat().st_size == 69
    # a valid image, 90,000,000 x 1, whose single row is too long for Pillow to decode
    packer = zlib.compressobj(9)
    row = b"".join([packer.compress(b"\0")] + [packer.compress(bytes(2**20)) for _ in range(257)]
                   + [packer.compress(bytes(3 * 90_000_000 - 257 * 2**20)), packer.flush()])
    wide = rgb_png(tmp_path / "wide.png", 90_000_000, 1, row)
    ppm = tmp_path / "tall.ppm"
    ppm.write_bytes(b"P6 1 90000000 255\n" + bytes(30))
    run = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(TESTS), str(tall), str(wide), str(ppm)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    for path in (tall, ppm):
        assert found[str(path)][0] == (f"{path}: header claims 1x90000000 pixels, more than its "
                                       f"{path.stat().st_size} bytes can hold; refusing to decode")
    assert found[str(wide)][0] == f"{wide}: out of memory decoding 90000000x1 pixels"
    assert found["features"][0] == f"error: {found[str(tall)][0]}"
    assert all(seconds < 1.0 for _, seconds in found.values()), found
    assert not (tmp_path / "x.npz").exists()


def test_over_pillows_own_bomb_limit_names_the_limit_that_refused(tmp_path):
    bomb = rgb_png(tmp_path / "bomb.png", 20_000, 20_000, zlib.compress(b"\0" * 100))
    with pytest.raises(ImageError) as info:
        load_image(bomb, max_pixels=10**12)
    limit = 2 * Image.MAX_IMAGE_PIXELS
    assert str(info.value) == f"{bomb}: header claims more than {limit} pixels; refusing to decode"


def test_an_existing_output_over_pillows_warning_limit_is_examined_without_a_warning(tmp_path):
    from jaxmosaic.io.images import image_software

    big = rgb_png(tmp_path / "out.png", 10_000, 10_000, zlib.compress(b"\0" * 100))  # between Pillow's warning and error
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert image_software(big) == ""
    assert [str(w.message) for w in caught] == []


# --- names printed literally -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a:smile:b.png", "[bold]x[/bold].png", "a{0}b.png"])
def test_a_file_name_that_looks_like_markup_is_printed_literally(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(run_cli("features", name, "-o", "x.npz"), code=1)
    assert line == f"error: {name}: no such file"


def test_a_coordinator_that_looks_like_an_emoji_code_is_printed_literally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sample_tiles(tmp_path / "tiles", 2)
    line = one_line_error(run_cli("library", "build", "tiles", "-o", "lib.npz", "--coordinator", "127.0.0.1:abc:",
                                  "--num-processes", 2, "--process-id", 0), code=1)
    assert "'127.0.0.1:abc:'" in line


@pytest.mark.parametrize("label", ["indexing a:smile:b", "indexing [red]tiles[/red]", "indexing {task.total} {0}"])
def test_progress_labels_are_printed_literally(label, monkeypatch):
    from rich.console import Console

    from jaxmosaic.cli import console as messages

    console = Console(record=True, width=200, force_terminal=False, emoji=True)
    monkeypatch.setattr(messages, "err_console", console)
    for progress in (messages.rate_progress, messages.count_progress):
        with progress(label, transient=False) as update:
            update(1, 2)
    with messages.download_progress(label) as update:
        update(1, 2)
    shown = console.export_text()
    assert shown.count(label) == 3, shown
