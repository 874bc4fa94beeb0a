"""What the environment does to a run: a disk that fills, a damaged checkpoint, a read-only cache,
settings that would not fit the memory, a streaming build stopped by Ctrl-C. Each ends in one line
naming the output or the setting, and what was written before survives.

A full disk is a small tmpfs the test mounts itself (root only; skipped with the reason otherwise),
filled with a file of zeros; a read-only cache is a read-only tmpfs, or a path under a plain file
where mounting is not permitted.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    STYLE,
    VQ,
    hashes,
    one_line_error,
    run_cli,
    sample_image,
    sample_tiles,
)


def _mount(path: Path, *options: str) -> None:
    """Mount a tmpfs at `path` with `options`, or skip the test saying why not."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system at tmp_path/disk, unmounted afterwards."""
    disk = tmp_path / "disk"
    _mount(disk, "size=1m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, *, leave: int = 0) -> Path:
    """Fill the file system at `disk` with zeros, then give back `leave` bytes; the filler file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as file:
        for block in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    file.write(b"\0" * block)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def with_steps(args: list, steps: int) -> list:
    """`args` with the value after --steps replaced by `steps`."""
    at = args.index("--steps") + 1
    return [*args[:at], steps, *args[at + 1:]]


def console(result, capfd) -> str:
    """Everything the run showed: the CLI's output and whatever reached the process's stdout and stderr."""
    captured = capfd.readouterr()
    return result.output + captured.out + captured.err


# --- a full disk -----------------------------------------------------------------------------

def test_a_disk_that_fills_during_a_checkpoint_keeps_the_last_one_and_says_one_line(work, small_disk, capfd):
    from jaxmosaic.io.checkpoints import load_tree, read_checkpoint_meta
    from jaxmosaic.io.folders import current_version
    from jaxmosaic.io.images import load_image

    out, checkpoint = small_disk / "out.png", small_disk / "ck"
    args = ["style", "p/content.png", "p/style.png", "-o", out, *STYLE, "--checkpoint", checkpoint, "--checkpoint-every", 1]
    first = run_cli(*args)
    assert first.exit_code == 0, first.output
    assert read_checkpoint_meta(checkpoint)["step"] == 2
    kept = hashes(checkpoint)
    fill(small_disk, leave=48 << 10)  # room for an image, not for another checkpoint version
    capfd.readouterr()
    result = run_cli(*with_steps(args, 4), "--resume")
    shown = console(result, capfd)
    assert result.exit_code == 1 and "Traceback" not in shown and "absl" not in shown and "RESOURCE_EXHAUSTED" not in shown, shown
    errors = [line for line in shown.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == result.output.splitlines()[-1], shown
    for fragment in (f"{checkpoint}: no space left on the device for a new checkpoint version (needs about", "free in",
                     "the current checkpoint there is kept", "stopped at step 3", f"wrote {out}"):
        assert fragment in errors[0], errors[0]
    assert hashes(checkpoint) == kept and load_image(out).shape == (32, 32, 3)
    assert read_checkpoint_meta(checkpoint)["step"] == 2  # the step-2 checkpoint, whole: a run can go on from it
    assert np.shape(load_tree(current_version(checkpoint, "checkpoint"), "state", what="checkpoint")["params"]) == (1, 32, 32, 3)


def test_a_full_disk_names_the_output_and_keeps_the_previous_file(work, small_disk):
    tiles = sample_tiles(work / "tiles", 3)
    library = small_disk / "lib.npz"
    assert run_cli("library", "build", tiles, "-o", library, "--svd-k", 0).exit_code == 0
    before = hashes(library)
    fill(small_disk)
    result = run_cli("library", "build", tiles, "-o", library, "--svd-k", 2, "--force")
    one_line_error(result, f"{library}: no space left on the device", "free in", "the file there is unchanged")
    assert hashes(library) == before
    assert [p.name for p in small_disk.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_disk_and_memory_figures_never_round_to_zero(work, small_disk):
    from jaxmosaic.errors import JaxmosaicError
    from jaxmosaic.resources import check_memory, format_bytes

    assert [format_bytes(n) for n in (0, 512, 1536, 10 * 2**20 + 2**19, 79.2 * 2**30, 3 * 2**40)] == [
        "0 B", "512 B", "1.50 KiB", "10.5 MiB", "79.2 GiB", "3.00 TiB"]
    with pytest.raises(JaxmosaicError, match=r"needs about 3\.00 MiB but only 1\.00 MiB is allowed"):
        check_memory(3 * 2**20, "this run", budget=2**20)
    tiles = sample_tiles(work / "tiles", 3)
    fill(small_disk, leave=1024)
    result = run_cli("library", "build", tiles, "--stream", "-o", small_disk / "lib.npz", "--svd-k", 2)
    line = one_line_error(result, "on disk beside the library but only")
    assert "0.0 GiB" not in line and re.search(r"need about \d+(\.\d+)? (B|KiB) on disk", line), line


# --- a damaged checkpoint ------------------------------------------------------------------------

def test_a_damaged_checkpoint_is_one_line_without_the_checkpoint_librarys_tracebacks(work, capfd):
    args = ["style", "p/content.png", "p/style.png", "-o", "out.png", *STYLE, "--checkpoint", "ck"]
    assert run_cli(*args).exit_code == 0
    manifests = list((work / "ck").glob("v*/state/**/manifest.ocdbt"))
    assert manifests
    for manifest in manifests:
        manifest.write_bytes(np.random.default_rng(0).bytes(20))
    capfd.readouterr()
    shown = ""
    for _ in range(2):  # the library's threads report late and not every time
        result = run_cli(*[a if a != 2 else 4 for a in args], "--resume")
        one_line_error(result, "cannot restore the checkpoint")
        assert "tensorstore_spec" not in result.output
        time.sleep(0.5)
        shown += console(result, capfd)
    assert "Traceback" not in shown and "Event loop is closed" not in shown, shown


# --- a read-only cache ---------------------------------------------------------------------------

def _read_only_folder(path: Path) -> bool:
    """Mount a read-only tmpfs at `path`; whether that was permitted."""
    path.mkdir()
    if os.geteuid() != 0:
        return False
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True, check=False)
    return mounted.returncode == 0


@pytest.fixture
def unwritable_cache(tmp_path, monkeypatch):
    """JAXMOSAIC_CACHE_DIR inside a read-only tmpfs (or, where mounting is not permitted, under a
    plain file, where no folder can be made), with the compilation cache turned on."""
    read_only = tmp_path / "ro"
    if _read_only_folder(read_only):
        cache = read_only / "cache"
    else:
        (tmp_path / "blocker").write_text("a file, not a folder")
        cache = tmp_path / "blocker" / "cache"
    monkeypatch.setenv("JAXMOSAIC_CACHE_DIR", str(cache))
    monkeypatch.delenv("JAXMOSAIC_NO_COMPILATION_CACHE")
    saved = jax.config.jax_compilation_cache_dir
    yield cache
    jax.config.update("jax_compilation_cache_dir", saved)
    subprocess.run(["umount", "-l", str(read_only)], check=False, capture_output=True)


def test_a_read_only_cache_is_skipped_unless_the_command_needs_it(work, unwritable_cache, tile_folder):
    compilation_cache = jax.config.jax_compilation_cache_dir
    result = run_cli("mosaic", "p/content.png", "--tiles", tile_folder, "-o", "m.png", "--cols", 4, "--patch", 8)
    assert result.exit_code == 0, result.output
    assert (work / "m.png").is_file() and "Read-only" not in result.output
    assert jax.config.jax_compilation_cache_dir == compilation_cache  # XLA is never pointed at the unwritable cache
    for args in (["weights", "download"], ["weights", "convert", "p/content.png"],
                 ["mosaic", "p/content.png", "--tiles", "gabor-bank", "-o", "b.png", "--cols", 4, "--patch", 8]):
        one_line_error(run_cli(*args), "JAXMOSAIC_CACHE_DIR", str(unwritable_cache))
    assert not (work / "b.png").exists()


# --- memory settings -----------------------------------------------------------------------------

def _xla_bytes(function, *args) -> int:
    """XLA's own account of what the compiled `function` holds: arguments, outputs and temporaries."""
    analysis = jax.jit(function).lower(*args).compile().memory_analysis()
    return analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes


def test_a_bank_chunk_is_weighed_with_its_rendered_tiles(work):
    from jaxmosaic.techniques.mosaic.bank import BankGrid
    from jaxmosaic.techniques.mosaic.features import FeatureConfig
    from jaxmosaic.techniques.mosaic.stream import BankSource, stream_memory

    settings, source = FeatureConfig.color("none"), BankSource(BankGrid())
    measured = [_xla_bytes(source.program(settings), None, jax.ShapeDtypeStruct((m, 4), jnp.float32)) for m in (64, 128)]
    estimated = [stream_memory(settings, m, 1, 1, render=source.render) for m in (64, 128)]
    assert estimated[1] - estimated[0] >= measured[1] - measured[0]  # per tile, at least what XLA asks for
    result = run_cli("library", "build", "gabor-bank", "-o", "bank.npz", "--chunk", 65536, "--max-memory", 16)
    one_line_error(result, "--chunk", "65536", "needs about", "GiB but only 16.0 GiB is allowed")
    assert not (work / "bank.npz").exists() and not (work / "bank.npz.build").exists()


def test_k_means_and_vq_codes_are_weighed_before_they_start(work, monkeypatch):
    from jaxmosaic.clustering import kmeans
    from jaxmosaic.techniques.vq import VQConfig, train_memory

    config = VQConfig(patch=1, stride=1, k=16384, samples=20000, normalize="rgb")
    data = jax.ShapeDtypeStruct((20000, 3), jnp.float32)
    measured = _xla_bytes(lambda x: kmeans(jax.random.PRNGKey(0), x, config.k, max_iter=2), data)
    assert train_memory(config, [np.zeros((160, 160, 3), np.float32)]) >= measured
    assert run_cli("vq", "train", "p/style.png", "-o", "book.npz", *VQ).exit_code == 0
    monkeypatch.setattr("jaxmosaic.resources.available_bytes", lambda: 50 * 2**20)
    result = run_cli("vq", "compress", "p/content.png", "--codebook", "book.npz", "-o", "c.png", "--stride", 1)
    one_line_error(result, "p/content.png", "needs about", "but only 50.0 MiB is free", "--stride")
    assert not (work / "c.png").exists()
    result = run_cli("vq", "train", "p/style.png", "-o", "big.npz", "--patch", 1, "--stride", 1, "--samples", 2**20,
                     "--k", 16384, "--iterations", 2)
    one_line_error(result, "k-means", "--samples", "--stride", "--k")


def test_tile_auto_picks_a_tile_larger_than_the_overlap_or_refuses(work):
    from jaxmosaic.techniques.style import (
        StyleConfig,
        StyleInputs,
        style_memory,
        style_tiles,
    )

    result = run_cli("style", "p/content.png", "p/style.png", "-o", "s.png", "--weights", "random", "--size", 96,
                     "--steps", 2, "--tile", "auto", "--max-memory", 0.2)
    one_line_error(result, "--max-memory", "--overlap 64", "192 px")
    assert not (work / "s.png").exists()
    inputs = StyleInputs(sample_image("astronaut.png", 512, 512), [sample_image("brick.png", 256, 256)])
    config = StyleConfig(scales=(512,), tile="auto", max_memory=2.0)
    (plan,) = style_tiles(config, inputs)
    assert plan.tile is not None and plan.tile > 2 * config.overlap
    assert style_memory(config, inputs) <= 2 * 2**30  # the tile it picked passes the run's own memory check


# --- an interrupted streaming build --------------------------------------------------------------

def test_an_interrupted_stream_build_says_how_to_continue_and_a_rerun_says_what_it_discards(work, tile_folder, monkeypatch):
    from jaxmosaic.techniques.mosaic.stream import FolderSource

    build = ["library", "build", tile_folder, "-o", "lib.npz", "--stream", "--chunk", 8, "--svd-k", 4]
    read = FolderSource.inputs
    calls = []

    def stopped_at_the_third(self, start, stop):
        calls.append(start)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return read(self, start, stop)

    monkeypatch.setattr(FolderSource, "inputs", stopped_at_the_third)
    result = run_cli(*build)
    total = -(-FolderSource(tile_folder, 16).count // 8)
    one_line_error(result, f"interrupted after 2 of {total} chunks", "kept in lib.npz.build;",
                   "rerun with --resume to continue", code=130)
    monkeypatch.setattr(FolderSource, "inputs", read)
    again = run_cli(*build)
    assert again.exit_code == 0, again.output
    assert ("starting over: discarding the 2 finished chunk(s) kept in lib.npz.build (--resume would continue from "
            "them)") in again.output, again.output
