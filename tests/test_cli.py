"""The command line: help, version, a real job, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, SAMPLES, cli_command, noise_tiles, one_line_error, run_cli, sample_image
from references import squared_distances


def test_help_and_version():
    result = run_cli("--help")
    assert result.exit_code == 0 and "weights" in result.output and "features" in result.output
    result = run_cli("--version")
    assert result.exit_code == 0 and result.output.strip().startswith("jaxmosaic 0.")


def test_features_with_random_weights(tmp_path):
    out, preview, metrics = tmp_path / "f.npz", tmp_path / "f.png", tmp_path / "m.json"
    result = run_cli("features", SAMPLES / "coffee.png", "-o", out, "--weights", "random", "--size", "64",
                 "--layers", "relu1_1,pool2", "--preview", preview, "--metrics", metrics)
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        assert data["relu1_1"].shape == (43, 64, 64) and data["pool2"].shape == (10, 16, 128)
    summary = json.loads(metrics.read_text())
    assert summary["technique"] == "features" and summary["outputs"] == [str(out), str(preview)]
    assert summary["features"]["pool2"]["shape"] == [10, 16, 128]
    assert preview.stat().st_size > 0


def test_missing_image_is_one_line(tmp_path):
    result = run_cli("features", tmp_path / "none.png", "-o", tmp_path / "f.npz", "--weights", "random")
    one_line_error(result, "none.png", "no such file")
    assert not (tmp_path / "f.npz").exists()


def test_bad_layer_is_one_line(tmp_path):
    result = run_cli("features", SAMPLES / "coffee.png", "-o", tmp_path / "f.npz", "--weights", "random", "--layers", "relu9_9")
    one_line_error(result, "relu9_9")


def test_missing_weights_is_one_line_with_the_way_out(tmp_path):
    result = run_cli("features", SAMPLES / "coffee.png", "-o", tmp_path / "f.npz", "--size", "32")
    one_line_error(result, "jaxmosaic weights download", "--weights random")
    result = run_cli("features", SAMPLES / "coffee.png", "-o", tmp_path / "f.npz", "--weights", tmp_path / "nothing")
    one_line_error(result, "--weights", "nothing", "no such file")


def test_output_never_overwrites_input_and_writes_nothing(tmp_path):
    image = tmp_path / "in.png"
    image.write_bytes((SAMPLES / "coffee.png").read_bytes())
    before = image.read_bytes()
    result = run_cli("features", image, "-o", tmp_path / "f.npz", "--weights", "random", "--size", "32", "--preview", image)
    one_line_error(result, "in.png", "refusing to overwrite an input file")
    assert image.read_bytes() == before and not (tmp_path / "f.npz").exists()


def test_weights_convert_info_and_unsafe(torch_checkpoint, tmp_path):
    result = run_cli("weights", "convert", torch_checkpoint, "-o", tmp_path / "w")
    assert result.exit_code == 0, result.output
    result = run_cli("weights", "info", "--weights", tmp_path / "w")
    info = json.loads(result.output)
    assert info["found"] and info["file"] == torch_checkpoint.name and len(info["sha256"]) == 64
    (tmp_path / "evil.pth").write_bytes(b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    result = run_cli("weights", "convert", tmp_path / "evil.pth", "-o", tmp_path / "w2")
    one_line_error(result, "evil.pth", "posix.system")
    assert not (tmp_path / "w2").exists()


def test_weights_random_writes_a_loadable_folder(tmp_path):
    from jaxmosaic import load_vgg19, random_vgg19
    import jax

    result = run_cli("weights", "random", "-o", tmp_path / "r", "--seed", "3")
    assert result.exit_code == 0, result.output
    loaded = load_vgg19(tmp_path / "r")
    np.testing.assert_array_equal(loaded["conv5_4"]["kernel"], random_vgg19(jax.random.PRNGKey(3))["conv5_4"]["kernel"])


def test_usage_error_exits_2_from_the_console_script():
    result = subprocess.run(cli_command("features"), capture_output=True, text=True)
    assert result.returncode == 2 and "Missing argument" in result.stderr and "Traceback" not in result.stderr


AUDIT = r"""
import sys
events = []
harmless = (".py", ".pyc", ".so", ".pth", ".typed", "METADATA", "PKG-INFO", "entry_points.txt", "__path_hook__")
def hook(event, args):
    if event == "open":
        name = str(args[0])
        # JAX probes /sys for accelerators; importlib reads package metadata: neither is our data
        if not (name.endswith(harmless) or name.endswith("/") or name in sys.path or name.startswith(("/sys/", "/proc/"))):
            events.append(name)
    elif event.startswith("socket."):
        events.append(event)
sys.addaudithook(hook)
import jaxmosaic
print(repr(events))
"""


def test_import_reads_no_data_file_and_opens_no_socket():
    result = subprocess.run([sys.executable, "-c", AUDIT], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_mosaic_with_gabor_tiles(tmp_path):
    out, metrics = tmp_path / "m.png", tmp_path / "m.json"
    result = run_cli("mosaic", SAMPLES / "coffee.png", "-o", out, "--cols", 12, "--patch", 8, "--render", 10, "--preview",
                 "--max-reuse", 4, "--min-distance", 2, "--metrics", metrics)
    assert result.exit_code == 0, result.output
    summary = json.loads(metrics.read_text())
    stats = summary["mosaic"]
    assert summary["technique"] == "mosaic" and stats["patches"] == 12 * 8 and stats["tiles"] == 384
    assert stats["max_uses"] <= 4 and 1 <= stats["k"] < stats["features"]
    assert 0 < stats["energy_kept"] <= 1 and stats["mean_score"] <= stats["unconstrained_mean_score"]
    assert summary["outputs"] == [str(out), str(tmp_path / "m-preview.png")]
    from jaxmosaic.io.images import load_image

    assert load_image(out).shape == (8 * 10, 12 * 10, 3)


def test_library_build_is_reused_until_the_folder_changes(tmp_path):
    rng = np.random.default_rng(0)
    folder = noise_tiles(tmp_path / "tiles", 12, (20, 30), rng)
    lib = tmp_path / "lib.npz"
    result = run_cli("library", "build", folder, "-o", lib, "--svd-k", 4)
    assert result.exit_code == 0, result.output
    assert "indexed 12 tiles" in result.output and "k=4" in result.output
    result = run_cli("library", "build", folder, "-o", lib, "--svd-k", 4)
    assert result.exit_code == 0 and "up to date" in result.output
    info = json.loads(run_cli("library", "info", lib, "--tiles", folder).stdout)
    assert info["tiles"] == 12 and info["svd"]["k"] == 4 and info["current"] is True
    noise_tiles(folder, 1, (20, 30), rng, name="new.png")
    result = run_cli("library", "build", folder, "-o", lib, "--svd-k", 4)
    assert "indexed 13 tiles" in result.output
    out = tmp_path / "m.png"
    result = run_cli("mosaic", SAMPLES / "chelsea.png", "-o", out, "--tiles", lib, "--patch", 32, "--svd-k", 4)
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_tiles_gabor_writes_pngs(tmp_path):
    result = run_cli("tiles", "gabor", tmp_path / "g", "--size", 9)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "g").glob("gabor-*.png"))) == 384
    assert (tmp_path / "g" / "contact-sheet.png").exists()


@pytest.mark.parametrize("case", ["empty", "non-images", "patch", "k"])
def test_mosaic_errors_are_one_line_and_write_nothing(tmp_path, case):
    folder = tmp_path / "tiles"
    folder.mkdir()
    args = ["--tiles", folder]
    if case == "non-images":
        for i in range(3):
            (folder / f"{i}.jpg").write_bytes(b"\x00not an image")
    if case in ("patch", "k"):
        args = ["--tiles", "gabor"]
    if case == "patch":
        args += ["--patch", 300]
    if case == "k":
        args += ["--svd-k", 65]
    out = tmp_path / "out.png"
    result = run_cli("mosaic", SAMPLES / "coffee.png", "-o", out, "--metrics", tmp_path / "m.json", *args)
    expected = {"empty": "no image files", "non-images": "none of the 3 image files", "patch": "larger than the target",
                "k": "--svd-k: 65 is larger than"}[case]
    one_line_error(result, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"]


STYLE_FAST = ["--weights", "random", "--size", 48, "--content-layers", "relu2_2", "--style-layers", "relu1_1,relu2_1"]


def test_style_checkpoint_resume_matches_one_run(tmp_path):
    from jaxmosaic.io.images import load_image

    content, style = SAMPLES / "astronaut.png", SAMPLES / "brick.png"
    whole = run_cli("style", content, style, "-o", tmp_path / "whole.png", "--steps", 40, *STYLE_FAST)
    assert whole.exit_code == 0, whole.output
    first = run_cli("style", content, style, "-o", tmp_path / "part.png", "--steps", 20, "--checkpoint", tmp_path / "ck",
                "--checkpoint-every", 10, *STYLE_FAST)
    assert first.exit_code == 0, first.output
    metrics = tmp_path / "m.json"
    second = run_cli("style", content, style, "-o", tmp_path / "resumed.png", "--steps", 40, "--checkpoint", tmp_path / "ck",
                 "--resume", "--metrics", metrics, *STYLE_FAST)
    assert second.exit_code == 0, second.output
    assert "resuming" in second.output
    a, b = load_image(tmp_path / "whole.png"), load_image(tmp_path / "resumed.png")
    assert np.abs(a - b).max() <= 1 / 255 + 1e-6
    summary = json.loads(metrics.read_text())
    assert summary["technique"] == "style" and summary["steps"] == 20
    assert set(summary["loss"]) == {"total", "content", "style", "tv"}
    changed = run_cli("style", content, style, "-o", tmp_path / "other.png", "--steps", 40, "--checkpoint", tmp_path / "ck",
                  "--resume", "--tv-weight", 1, *STYLE_FAST)
    one_line_error(changed, "other settings", "tv_weight")


def test_style_batch_writes_one_output_per_style_with_the_content_colours(tmp_path):
    from jaxmosaic.color import rgb_to_yiq
    from jaxmosaic.io.images import load_image

    out = tmp_path / "b.png"
    result = run_cli("style", SAMPLES / "astronaut.png", SAMPLES / "brick.png", SAMPLES / "coffee.png", "-o", out,
                 "--batch", "--steps", 5, "--original-colors", *STYLE_FAST)
    assert result.exit_code == 0, result.output
    assert not out.exists()
    content_chroma = np.asarray(rgb_to_yiq(sample_image("astronaut.png", 48, 48)))[..., 1:]
    outputs = [load_image(tmp_path / f"b-style{i}.png") for i in (1, 2)]
    for image in outputs:  # the content's I and Q, up to the 8-bit rounding of the saved file
        assert np.abs(np.asarray(rgb_to_yiq(image))[..., 1:] - content_chroma).max() <= 4 / 255
    assert np.abs(outputs[0] - outputs[1]).mean() > 0.01


@pytest.mark.parametrize("case", ["missing", "blend", "layer", "memory"])
def test_style_errors_are_one_line_and_write_nothing(tmp_path, case):
    args = [SAMPLES / "astronaut.png", SAMPLES / "brick.png"]
    extra = {"missing": [], "blend": ["--style-blend", "1,2,3"], "layer": ["--style-layers", "relu1_1,relu9_1"],
             "memory": ["--size", 60000]}[case]
    if case == "missing":
        args = [SAMPLES / "astronaut.png", tmp_path / "nowhere.png"]
    result = run_cli("style", *args, "-o", tmp_path / "out.png", "--weights", "random", "--metrics", tmp_path / "m.json", *extra)
    expected = {"missing": "nowhere.png: no such file", "blend": "3 weights for 1 style", "layer": "valid names: conv1_1",
                "memory": "TiB but only"}[case]
    one_line_error(result, expected)
    assert list(tmp_path.iterdir()) == []


TEXTURE_FAST = ["--weights", "random", "--size", 48, "--layers", "relu1_1,pool1,pool2"]


def test_texture_writes_grey_variations_side_by_side_and_metrics(tmp_path):
    from PIL import Image

    out, metrics = tmp_path / "t.png", tmp_path / "m.json"
    result = run_cli("texture", SAMPLES / "brick.png", "-o", out, "--steps", 8, "--variations", 2, "--tileable",
                 "--gif", "--metrics", metrics, *TEXTURE_FAST)
    assert result.exit_code == 0, result.output
    for name in ("t-1.png", "t-2.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.size == (48, 48) and picture.mode == "L"  # a grey exemplar gives grey textures
    with Image.open(tmp_path / "t-side.png") as side:
        assert side.size == (48 + 2 * (8 + 48), 48)
    with Image.open(tmp_path / "t-tiled.png") as tiled:
        assert tiled.size == (96, 96)
    assert (tmp_path / "t.gif").exists() and not out.exists()
    summary = json.loads(metrics.read_text())
    assert summary["technique"] == "texture" and summary["steps"] == 8 and summary["seconds"] > 0
    assert summary["outputs"][:2] == [str(tmp_path / "t-1.png"), str(tmp_path / "t-2.png")]
    assert len(summary["loss"]) == 2 and summary["texture"]["gray"] is True
    for loss in summary["loss"]:
        assert set(loss) == {"gram", "spectrum", "total"}
        assert loss["total"] == pytest.approx(loss["gram"] + summary["texture"]["spectrum_weight"] * loss["spectrum"], rel=1e-4)


def test_texture_continue_from_an_earlier_result(tmp_path):
    from jaxmosaic.io.images import load_image

    first, metrics = tmp_path / "a.png", tmp_path / "m.json"
    args = ["--spectrum-weight", 0, *TEXTURE_FAST]
    assert run_cli("texture", SAMPLES / "coffee.png", "-o", first, "--steps", 10, "--metrics", metrics, *args).exit_code == 0
    before = json.loads(metrics.read_text())["loss"]["total"]
    metrics.unlink()
    result = run_cli("texture", SAMPLES / "coffee.png", "-o", tmp_path / "b.png", "--steps", 10, "--continue", first,
                 "--metrics", metrics, *args)
    assert result.exit_code == 0, result.output
    assert json.loads(metrics.read_text())["loss"]["total"] < before
    assert load_image(tmp_path / "b.png").shape == (32, 48, 3)  # coffee is 256x171: longest side 48
    refused = run_cli("texture", SAMPLES / "coffee.png", "-o", first, "--steps", 1, "--continue", first, *args)
    one_line_error(refused, "a.png")


@pytest.mark.parametrize("case", ["small", "not-image", "layer", "size", "beta"])
def test_texture_errors_are_one_line_and_write_nothing(tmp_path, case):
    from jaxmosaic.io.images import save_image

    exemplar = SAMPLES / "brick.png"
    extra = {"layer": ["--layers", "relu1_1,pool7"], "size": ["--size", "big"], "beta": ["--spectrum-weight", "-1"]}.get(case, [])
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    if case == "small":
        exemplar = save_image(inputs / "tiny.png", np.zeros((12, 30, 3)))
    if case == "not-image":
        exemplar = inputs / "notes.png"
        exemplar.write_text("not a picture")
    outdir = tmp_path / "out"
    outdir.mkdir()
    result = run_cli("texture", exemplar, "-o", outdir / "t.png", "--weights", "random", "--metrics", outdir / "m.json", *extra)
    expected = {"small": "at least 16x16 pixels", "not-image": "notes.png: not an image", "layer": "pool7",
                "size": "--size: 'big': expected 512 or 640x480", "beta": "--spectrum-weight"}[case]
    one_line_error(result, expected)
    assert list(outdir.iterdir()) == []


def numpy_codes(codebook, image, size, stride):
    """Each grey patch's nearest centre by brute force in numpy (float64)."""
    grey = image.mean(axis=-1).astype(np.float64)
    rows = range(0, grey.shape[0] - size + 1, stride)
    cols = range(0, grey.shape[1] - size + 1, stride)
    patches = np.array([grey[y : y + size, x : x + size].ravel() for y in rows for x in cols])
    distances = squared_distances(patches, codebook.astype(np.float64))
    return distances.argmin(1), len(rows), len(cols)


def test_vq_train_compress_and_cluster(tmp_path):
    import csv

    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    from jaxmosaic.io.images import load_image
    from jaxmosaic.techniques.vq import load_codebook

    codebook, m_train = tmp_path / "book.npz", tmp_path / "train.json"
    images = [SAMPLES / name for name in ("brick.png", "astronaut.png", "coffee.png")]
    result = run_cli("vq", "train", *images, "-o", codebook, "--k", 32, "--samples", 3000, "--iterations", 10, "--metrics", m_train)
    assert result.exit_code == 0, result.output
    summary = json.loads(m_train.read_text())
    book = summary["codebook"]
    assert book["samples"] == 3000 and book["k"] == 32 and book["codes_used"] == 32 and summary["loss"]["total"] > 0
    assert summary["steps"] == book["iterations"] <= 10 and (tmp_path / "book-grid.png").exists()
    centers = load_codebook(codebook).centers

    out, m_compress = tmp_path / "vq.png", tmp_path / "compress.json"
    result = run_cli("vq", "compress", SAMPLES / "coffee.png", "--codebook", codebook, "-o", out, "--metrics", m_compress)
    assert result.exit_code == 0, result.output
    compressed = json.loads(m_compress.read_text())["compression"]
    assert compressed["size"] == [256, 168] and compressed["bits_per_pixel"] == pytest.approx(5 / 64)
    coffee = sample_image("coffee.png")
    codes, rows, cols = numpy_codes(centers, coffee, 8, 8)
    rebuilt = centers[codes].reshape(rows, cols, 8, 8).transpose(0, 2, 1, 3).reshape(rows * 8, cols * 8).clip(0, 1)
    expected_psnr = 10 * np.log10(1 / np.mean((rebuilt - coffee[: rows * 8, : cols * 8].mean(axis=-1)) ** 2))
    assert compressed["psnr"] == pytest.approx(expected_psnr, abs=0.01)
    np.testing.assert_allclose(load_image(out)[..., 0], rebuilt, atol=0.5 / 255 + 1e-6)
    assert (tmp_path / "vq-side.png").exists()

    outdir = tmp_path / "groups"
    all_images = [*images, SAMPLES / "chelsea.png"]
    result = run_cli("vq", "cluster", *all_images, "--codebook", codebook, "--clusters", 2, "-o", outdir)
    assert result.exit_code == 0, result.output
    with open(outdir / "clusters.csv") as handle:
        rows_read = list(csv.DictReader(handle))
    assert [Path(r["image"]).name for r in rows_read] == ["brick.png", "astronaut.png", "coffee.png", "chelsea.png"]
    # the same partition as SciPy's average linkage on numpy histograms of brute-force codes
    histograms = np.stack([np.bincount(numpy_codes(centers, load_image(path), 8, 4)[0], minlength=32) for path in all_images])
    expected = fcluster(linkage(pdist(histograms, "cosine"), "average"), 2, "maxclust")
    ours = np.array([int(r["cluster"]) for r in rows_read])
    assert len(set(ours)) == 2
    assert all((ours[i] == ours[j]) == (expected[i] == expected[j]) for i in range(4) for j in range(4))
    assert (outdir / "dendrogram.png").exists() and (outdir / "cluster-1.png").exists()


@pytest.mark.parametrize("case", ["k", "patch", "empty"])
def test_vq_errors_are_one_line(tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {"k": [SAMPLES / "brick.png", "--k", 5000, "--samples", 4000],
            "patch": [SAMPLES / "coffee.png", "--patch", 200],
            "empty": [empty]}[case]
    result = run_cli("vq", "train", *args, "-o", tmp_path / "book.npz")
    expected = {"k": "--k: 5000 is larger than the number of patches (3969)", "patch": "--patch: 200 is larger than",
                "empty": "no images given"}[case]
    one_line_error(result, expected)
    assert not (tmp_path / "book.npz").exists()
