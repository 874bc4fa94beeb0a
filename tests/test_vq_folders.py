"""`vq compress` on folders, the streaming k-means' exact counts and codes in use, and `vq train
--sample faiss / --batch-size` against the Python functions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from helpers import one_line_error, run_cli
from PIL import Image

from jaxmosaic.io.folders import MARKER
from jaxmosaic.io.images import load_image
from jaxmosaic.kmeans_stream import (
    lloyd_init,
    lloyd_totals,
    lloyd_update,
    minibatch_init,
    minibatch_update,
    stream_kmeans,
)
from jaxmosaic.live import LiveView
from jaxmosaic.techniques.vq import Codebook, Normalization, VQConfig, save_codebook
from jaxmosaic.techniques.vq_stream import (
    PatchStream,
    plan_chunk,
    train_codebook_stream,
)

KEY = jax.random.PRNGKey(0)
SIZES = {"a.png": (24, 20), "b.png": (16, 16), "sub/c.png": (20, 28)}  # (height, width); c is one folder down


@pytest.fixture
def folder(tmp_path):
    """Three tiny RGB images (one in a subfolder), an unreadable file and an image smaller than a patch."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for name, (height, width) in SIZES.items():
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(root / name)
    (root / "broken.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(root / "tiny.png")
    return root


@pytest.fixture
def codebook(tmp_path):
    """16 random grey 4x4 centres."""
    centers = np.random.default_rng(6).random((16, 16)).astype(np.float32)
    info = {"images": [], "samples": 16, "k": 16, "init": "random", "iterations": 0, "batch_size": None, "inertia": 0.0, "seed": 0}
    path = tmp_path / "book.npz"
    save_codebook(path, Codebook(centers, 4, 4, Normalization.gray, info))
    return path, centers


def reference_compression(image: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, float]:
    """numpy, float64: each 4x4 grey patch (no overlap) replaced by its nearest centre; (the
    covered reconstruction, its mse against the grey image)."""
    grey = image.astype(np.float64).mean(-1)
    rows, cols = grey.shape[0] // 4, grey.shape[1] // 4
    grey = grey[: rows * 4, : cols * 4]
    patches = grey.reshape(rows, 4, cols, 4).transpose(0, 2, 1, 3).reshape(-1, 16)
    labels = ((patches[:, None] - centers[None].astype(np.float64)) ** 2).sum(-1).argmin(1)
    rebuilt = centers[labels].astype(np.float64).reshape(rows, cols, 4, 4).transpose(0, 2, 1, 3).reshape(rows * 4, cols * 4)
    return rebuilt, float(np.mean((rebuilt - grey) ** 2))


def test_compressing_a_folder_equals_compressing_each_image_alone(tmp_path, folder, codebook):
    book, centers = codebook
    out, metrics = tmp_path / "out", tmp_path / "m.json"
    done = run_cli("vq", "compress", folder, "--codebook", book, "-o", out, "--metrics", metrics)
    assert done.exit_code == 0, done.output
    assert f"skipped {folder / 'broken.png'} (unreadable:" in done.output
    assert f"skipped {folder / 'tiny.png'} (smaller than a 4-pixel patch)" in done.output
    names = {"a.png": "a", "b.png": "b", "sub/c.png": "sub__c"}
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, *(f"{n}.{kind}.png" for n in names.values() for kind in ("vq", "side"))])
    summary = json.loads(metrics.read_text())
    per_image = {item["image"]: item for item in summary["compression"]["per_image"]}
    assert min(summary["compression"]["skipped"]).startswith(str(folder / "broken.png"))
    errors, values = [], []
    for name, stem in names.items():
        alone = tmp_path / f"{stem}-alone.png"
        single = run_cli("vq", "compress", folder / name, "--codebook", book, "-o", alone, "--metrics", tmp_path / f"{stem}.json")
        assert single.exit_code == 0, single.output
        for kind, theirs in (("vq", alone), ("side", tmp_path / f"{stem}-alone-side.png")):
            np.testing.assert_array_equal(np.asarray(Image.open(out / f"{stem}.{kind}.png")), np.asarray(Image.open(theirs)))
        expected, mse = reference_compression(load_image(folder / name), centers)
        np.testing.assert_allclose(load_image(out / f"{stem}.vq.png")[..., 0], expected, atol=0.5 / 255 + 1e-6)
        alone_psnr = json.loads((tmp_path / f"{stem}.json").read_text())["compression"]["psnr"]
        assert per_image[str(folder / name)]["psnr"] == alone_psnr
        assert per_image[str(folder / name)]["psnr"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-4)
        errors.append(mse * expected.size)
        values.append(expected.size)
    pooled = sum(errors) / sum(values)
    assert summary["compression"]["images"] == 3
    assert summary["compression"]["psnr"] == pytest.approx(10 * np.log10(1 / pooled), abs=1e-4)
    assert summary["compression"]["bits_per_pixel"] == pytest.approx(np.log2(16) / 16)
    # again into the same folder: replaced, not refused
    assert run_cli("vq", "compress", folder, "--codebook", book, "-o", out).exit_code == 0


def test_compressing_a_folder_refuses_bad_inputs_in_one_line(tmp_path, folder, codebook):
    book, _ = codebook
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    one_line_error(run_cli("vq", "compress", folder, "--codebook", book, "-o", foreign), str(foreign))
    assert (foreign / "notes.txt").read_text() == "keep me" and not (foreign / MARKER).exists()
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"not an image")
    one_line_error(run_cli("vq", "compress", empty, "--codebook", book, "-o", tmp_path / "out"), str(empty), "no image with a 4x4 patch")
    assert not (tmp_path / "out").exists()
    one_line_error(run_cli("vq", "compress", folder, "--codebook", book, "-o", folder / "out"), "out")
    one_line_error(run_cli("vq", "compress", folder, "--codebook", book, "-o", tmp_path / "o", "--devices", 64), "--devices")


DEVICES = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=4"  # quick to compile; both sides run it
import jax, numpy as np
from pathlib import Path
from jaxmosaic.sharding import device_mesh
from jaxmosaic.techniques.vq import load_codebook
from jaxmosaic.techniques.vq_stream import stream_compress
assert jax.device_count() == 4
book = load_codebook(sys.argv[2])
files = sorted(Path(sys.argv[1]).rglob("*.png"))
one = list(stream_compress(book, files, stride=2))
four = list(stream_compress(book, files, stride=2, mesh=device_mesh(4)))
assert sum(not isinstance(result, str) for _, result in one) == 3
for (path, a), (same, b) in zip(one, four, strict=True):
    assert path == same
    if isinstance(a, str):
        assert a == b
        continue
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.psnr == b.psnr
print("equal")
"""


def test_four_forced_host_devices_compress_a_folder_as_one(folder, codebook):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(DEVICES), str(folder), str(codebook[0])], check=False, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "equal", done.stderr[-3000:]


def test_counts_and_sums_stay_exact_past_two_to_the_24():
    # one point of weight 2^24 at 1.0, then 64 chunks of one point at 3.0: float32 totals would stop
    # counting at 2^24 (2^24 + 1 rounds back to 2^24) and drift in the sums
    heavy, light = np.float32(2**24), 64
    chunks = [(np.ones((1, 1), np.float32), np.array([heavy]))] + [(np.full((1, 1), 3.0, np.float32), np.ones(1))] * light
    naive_count, naive_sum = np.float32(0), np.float32(0)
    for points, weights in chunks:
        naive_count += np.float32(weights[0])
        naive_sum += np.float32(weights[0]) * points[0, 0]
    count, total = 2**24 + light, 2**24 + 3.0 * light
    assert naive_count != count and naive_sum != total  # the case float32 totals get wrong
    state = lloyd_init(np.zeros((1, 1), np.float32))
    batch = minibatch_init(np.zeros((1, 1), np.float32))
    for points, weights in chunks:
        state = lloyd_update(state, points, weights=weights)
        batch = minibatch_update(batch, points, weights=weights)
    sums, counts, inertia = lloyd_totals(state)
    assert counts[0] == count and sums[0, 0] == total
    assert inertia == pytest.approx(2**24 * 1.0 + light * 9.0, rel=1e-12)
    assert float(batch.counts[0]) + float(batch.counts_low[0]) == count
    result = stream_kmeans(lambda start: iter(chunks[start:]), 1, key=KEY, init=np.zeros((1, 1), np.float32), max_iter=1)
    assert result.counts[0] == count
    assert result.centers[0, 0] == pytest.approx(total / count, rel=2.5e-7)  # naive: 1 + 2^-16, exact: about 1 + 2^-17
    assert abs(result.centers[0, 0] - naive_sum / naive_count) > 5e-6


def test_codes_in_use_are_counted_after_the_split_of_empty_clusters_and_passes_go_to_the_live_view(tmp_path, monkeypatch):
    data = np.random.default_rng(2).random((300, 2)).astype(np.float32)
    initial = np.concatenate([data[:3], [[50.0, 50.0]]]).astype(np.float32)  # nothing is nearest the 4th centre
    run = stream_kmeans(lambda start: (data[i : i + 100] for i in range(start * 100, 300, 100)), 4, key=KEY, init=initial, max_iter=1)
    labels = ((data[:, None].astype(np.float64) - initial[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(run.counts, np.bincount(labels, minlength=4))  # the pass's own counts: one is empty
    assert run.reseeded == [1] and run.used == 4 and np.count_nonzero(run.counts) == 3

    # the CLI: a flat image's patches are all equal, so "random" seeding draws 4 equal centres and
    # the first takes every patch; the 3 others are split from it and are in use
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(flat / "grey.png")
    metrics = tmp_path / "m.json"
    published = []
    monkeypatch.setattr(LiveView, "publish", lambda view, update, image=None: published.append((dict(update), image)))
    done = run_cli("vq", "train", flat, "-o", tmp_path / "book.npz", "--k", 4, "--patch", 4, "--stride", 4, "--init", "random",
                   "--exact", "--iterations", 2, "--metrics", metrics, "--web", 0)
    assert done.exit_code == 0, done.output
    summary = json.loads(metrics.read_text())
    assert summary["stream"]["reseeded"][0] == 3 and summary["codebook"]["codes_used"] == 4
    # the live view: the sampling pass, then each pass's inertia (as in --metrics) and the codebook's picture
    assert [update["step"] for update, _ in published] == [0, 1, 2]
    assert [update["loss"]["total"] for update, _ in published[1:]] == [p["inertia"] for p in summary["stream"]["passes"]]
    assert all(image is not None and image.ndim == 3 for _, image in published)


@pytest.mark.parametrize("options", [("--sample", "faiss"), ("--batch-size", 48)])
def test_vq_train_sample_and_batch_size_equal_the_python_function(tmp_path, folder, options):
    out = tmp_path / "book.npz"
    with pytest.warns(UserWarning, match="please provide at least") if options[0] == "--sample" else _nothing():
        done = run_cli("vq", "train", folder, "-o", out, "--k", 6, "--patch", 4, "--stride", 4, "--iterations", 3, *options)
    assert done.exit_code == 0, done.output
    from jaxmosaic.techniques.vq import load_codebook

    config = VQConfig(k=6, patch=4, stride=4, iterations=3, batch_size=48 if options[0] == "--batch-size" else None)
    method = "sample" if options[0] == "--sample" else "batch"
    stream = PatchStream(sorted(p for p in folder.rglob("*.png")), config)
    stream.chunk = plan_chunk(stream, config, method, None, 1)
    if method == "sample":
        with pytest.warns(UserWarning, match="please provide at least"):
            expected, result = train_codebook_stream(config, stream, method)
    else:
        expected, result = train_codebook_stream(config, stream, method)
    np.testing.assert_array_equal(load_codebook(out).centers, expected.centers)
    assert result.samples == (stream.total if method == "sample" else stream.points) == 6 * 5 + 4 * 4 + 5 * 7


def _nothing():
    import contextlib

    return contextlib.nullcontext()
