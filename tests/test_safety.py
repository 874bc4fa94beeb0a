"""Never lose a user's file, never crash: every case asserts the exit code, the one-line message,
and that no file that existed before changed (hashes before and after)."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import (HYBRID, MOSAIC, SAMPLES, STYLE, TEXTURE, VQ, FileServer, cli_command, hashes, one_line_error, run_cli,
                     sample_tiles, unoptimised_env)
from jaxmosaic.io.checkpoints import load_checkpoint, read_checkpoint_meta, save_checkpoint



# --- replace only what is ours; outputs never touch inputs -----------------------------------

def test_checkpoint_into_a_folder_of_inputs_is_refused(work):
    before = hashes(work)
    for folder in ("p", "."):
        result = run_cli("style", "p/content.png", "p/style.png", "-o", "out.png", "--checkpoint", folder, *STYLE)
        one_line_error(result, folder)
    assert hashes(work) == before and not (work / "out.png").exists()


def test_weights_never_replace_a_folder_or_file_they_did_not_write(work, torch_checkpoint):
    shutil.copy(torch_checkpoint, work / "p" / "vgg19.pth")
    (work / "existing.png").write_bytes((SAMPLES / "coffee.png").read_bytes())
    before = hashes(work)
    one_line_error(run_cli("weights", "random", "-o", "p"), "p", "did not write")
    one_line_error(run_cli("weights", "convert", "p/vgg19.pth", "-o", "p"), "p")
    one_line_error(run_cli("weights", "convert", "p/vgg19.pth", "-o", "p/vgg19.pth"), "vgg19.pth")
    one_line_error(run_cli("weights", "random", "-o", "existing.png"), "existing.png", "not a folder")
    one_line_error(run_cli("weights", "download", "-o", "existing.png"), "existing.png")
    assert hashes(work) == before
    assert run_cli("weights", "random", "-o", "w", "--seed", 1).exit_code == 0
    assert run_cli("weights", "random", "-o", "w", "--seed", 2).exit_code == 0  # its own folder: replaced
    assert [p.name for p in (work / "w").iterdir() if not p.name.startswith(".")] != []


def test_mosaic_output_inside_its_tile_folder_is_refused(work):
    tiles = sample_tiles(work / "tiles", 4)
    before = hashes(work)
    one_line_error(run_cli("mosaic", "p/content.png", "--tiles", tiles, "-o", tiles / "brick.png", *MOSAIC), "inside the input folder")
    one_line_error(run_cli("mosaic", "p/content.png", "--tiles", tiles, "-o", tiles / "0.png", *MOSAIC), "0.png")
    assert hashes(work) == before


def test_an_existing_file_is_replaced_only_when_jaxmosaic_wrote_it(work):
    foreign = work / "mine.png"
    foreign.write_bytes((SAMPLES / "coffee.png").read_bytes())
    before = hashes(foreign)
    one_line_error(run_cli("hybrid", "p/content.png", "p/style.png", "-o", foreign, *HYBRID), "not written by jaxmosaic", "--overwrite")
    assert hashes(foreign) == before
    assert run_cli("hybrid", "p/content.png", "p/style.png", "-o", "ours.png", *HYBRID).exit_code == 0
    assert run_cli("hybrid", "p/content.png", "p/style.png", "-o", "ours.png", *HYBRID).exit_code == 0  # ours: replaced
    assert run_cli("hybrid", "p/content.png", "p/style.png", "-o", foreign, "--overwrite", *HYBRID).exit_code == 0
    assert hashes(foreign) != before
    (work / "notes.json").write_text('{"mine": true}')
    one_line_error(run_cli("hybrid", "p/content.png", "p/style.png", "-o", "h2.png", "--metrics", "notes.json", *HYBRID), "notes.json")
    assert json.loads((work / "notes.json").read_text()) == {"mine": True}


def test_bad_extension_or_read_only_folder_is_found_before_any_work(work):
    started = time.perf_counter()
    one_line_error(run_cli("style", "p/content.png", "p/style.png", "-o", "out.xyz", *STYLE), "out.xyz", "unknown image extension")
    one_line_error(run_cli("style", "p/content.png", "p/style.png", "-o", "/proc/out.png", *STYLE), "/proc", "cannot write")
    assert time.perf_counter() - started < 5  # refused before the network is even built


def test_tiles_folder_rerun_after_an_interruption_and_with_fewer_files(work, monkeypatch):
    import jaxmosaic.cli.mosaic as mosaic_cli

    (work / "not-ours").mkdir()
    (work / "not-ours" / "keep.txt").write_text("mine")
    one_line_error(run_cli("tiles", "gabor", "not-ours", "--size", 8), "not-ours", "did not write")
    assert (work / "not-ours" / "keep.txt").read_text() == "mine"
    calls = {"n": 0}
    original = mosaic_cli.save_image

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 100:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(mosaic_cli, "save_image", interrupted)
    assert run_cli("tiles", "gabor", "g", "--size", 8, "--colors", 2).exit_code == 130
    monkeypatch.setattr(mosaic_cli, "save_image", original)
    assert run_cli("tiles", "gabor", "g", "--size", 8, "--colors", 2).exit_code == 0
    assert len([p for p in (work / "g").glob("gabor-*.png")]) == 768
    assert run_cli("tiles", "gabor", "g", "--size", 8).exit_code == 0  # fewer tiles: the tinted ones go
    names = sorted(p.name for p in (work / "g").iterdir())
    assert len(names) == 384 + 2 and ".jaxmosaic" in names and "contact-sheet.png" in names
    assert not any("-c1" in name for name in names)


def test_cluster_folder_loses_its_stale_montages_only(work):
    assert run_cli("vq", "train", "p/content.png", "p/style.png", "-o", "book.npz", *VQ).exit_code == 0
    images = [SAMPLES / name for name in ("brick.png", "astronaut.png", "coffee.png", "chelsea.png")]
    assert run_cli("vq", "cluster", *images, "--codebook", "book.npz", "--clusters", 3, "-o", "g").exit_code == 0
    assert (work / "g" / "cluster-3.png").exists()
    (work / "g" / "my-notes.txt").write_text("mine")
    assert run_cli("vq", "cluster", *images, "--codebook", "book.npz", "--clusters", 2, "-o", "g").exit_code == 0
    names = sorted(p.name for p in (work / "g").iterdir())
    assert names == [".jaxmosaic", "cluster-1.png", "cluster-2.png", "clusters.csv", "dendrogram.png", "my-notes.txt"]


def test_a_built_library_is_used_without_indexing_again(work):
    assert run_cli("library", "build", "gabor", "-o", "lib.npz").exit_code == 0
    result = run_cli("mosaic", "p/content.png", "--tiles", "lib.npz", "-o", "m.png", *MOSAIC)
    assert result.exit_code == 0, result.output
    assert "indexing" not in result.output and "again" not in result.output


# --- crafted checkpoints, sizes that would crash, paths that lead out ------------------------

class _Storage:
    def __init__(self, numel):
        self.numel = numel


class _CraftedTensor:
    """Pickles as torch.save's tensor record with whatever offset, size and stride it is given."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        import torch._utils

        return torch._utils._rebuild_tensor_v2, self.args


def crafted_pth(path: Path, *, offset=0, size=(4, 4), stride=(4, 1), numel=16, stored=16) -> Path:
    """A zip state dict {"features.0.weight": ...} whose one tensor record says what it is told."""
    import torch

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", torch.FloatStorage, "0", "cpu", obj.numel)
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(collections.OrderedDict({"features.0.weight": _CraftedTensor(_Storage(numel), offset, size, stride)}))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", np.arange(stored, dtype=np.float32).tobytes())
        archive.writestr("archive/version", "3")
    return path


@pytest.mark.parametrize("record, fragment", [
    ({"stride": (-100_000_000, 1)}, "stride"),
    ({"offset": -5}, "storage offset"),
    ({"size": (400, 400)}, "reaching element"),
    ({"numel": 16, "stored": 8}, "holds 32 bytes"),
    ({"size": (4, 4, 1, 1, 1, 1, 1, 1, 1), "stride": (4, 1, 1, 1, 1, 1, 1, 1, 1)}, "rank 9"),
])
def test_crafted_tensor_records_are_refused_in_one_line(work, record, fragment):
    from jaxmosaic import UnsafeCheckpointError
    from jaxmosaic.weights import read_state_dict

    path = crafted_pth(work / "crafted.pth", **record)
    with pytest.raises(UnsafeCheckpointError, match=fragment):
        read_state_dict(path)
    before = hashes(work)
    one_line_error(run_cli("weights", "convert", path, "-o", "w"), "crafted.pth", "refusing to load")
    one_line_error(run_cli("features", "p/content.png", "-o", "f.npz", "--weights", path, "--size", 32), "crafted.pth")
    assert hashes(work) == before and not (work / "w").exists()


def test_an_honest_record_still_reads(work):
    from jaxmosaic.weights import read_state_dict

    state = read_state_dict(crafted_pth(work / "fine.pth", offset=2, size=(3, 2), stride=(4, 1)))
    np.testing.assert_array_equal(state["features.0.weight"], np.arange(16, dtype=np.float32)[2:].reshape(-1)[
        np.add.outer(np.arange(3) * 4, np.arange(2))])


@pytest.mark.parametrize("args, fragment", [
    (["hybrid", "p/content.png", "p/style.png", "-o", "h.png", "--size", 100000], "--size"),
    (["hybrid", "p/content.png", "p/style.png", "-o", "h.png", "--size", 60000], "TiB but only"),
    (["tiles", "gabor", "g", "--size", 100000], "--size"),
    (["tiles", "gabor", "g", "--size", 4096, "--colors", 64], "TiB but only"),
    (["tiles", "gabor", "g", "--size", 8, "--colors", 100000], "--colors"),
    (["style", "p/content.png", "p/style.png", "-o", "s.png", "--style-scale", 1e6, *STYLE], "--style-scale"),
    (["style", "p/content.png", "p/style.png", "-o", "s.png", "--size", 60000, "--weights", "random"], "TiB but only"),
    (["features", "p/content.png", "-o", "f.npz", "--size", 100000, "--weights", "random"], "--size"),
    (["features", "p/content.png", "-o", "f.npz", "--size", 60000, "--weights", "random"], "TiB but only"),
    (["texture", "p/style.png", "-o", "t.png", "--size", 60000, "--weights", "random"], "TiB but only"),
    (["mosaic", "p/content.png", "-o", "m.png", "--cols", 4000, "--render", 4000], "TiB but only"),
])
def test_sizes_that_would_exhaust_memory_are_refused_before_any_allocation(work, args, fragment):
    before = hashes(work)
    one_line_error(run_cli(*args), fragment)
    assert hashes(work) == before and not (work / "g").exists()


def test_a_library_entry_cannot_lead_outside_its_folder(work):
    from jaxmosaic.io.artifacts import load_artifact, save_artifact

    tiles = sample_tiles(work / "tiles", 3)
    assert run_cli("library", "build", tiles, "-o", "lib.npz", "--svd-k", 0).exit_code == 0
    header, arrays = load_artifact(work / "lib.npz", "tile-library")
    header.pop("format")
    header["entries"][0] = "../../../../../../etc/passwd"
    save_artifact(work / "evil.npz", "tile-library", header, arrays)
    one_line_error(run_cli("mosaic", "p/content.png", "--tiles", "evil.npz", "-o", "m.png", *MOSAIC), "outside its folder")
    assert not (work / "m.png").exists()


def test_a_symlink_loop_in_a_tile_folder_is_skipped(work):
    tiles = sample_tiles(work / "tiles", 3)
    os.symlink("loop.png", tiles / "loop.png")
    result = run_cli("library", "build", tiles, "-o", "lib.npz", "--svd-k", 0)
    assert result.exit_code == 0, result.output
    assert "indexed 3 tiles" in result.output and "skipped 1" in result.output


# --- corrupt artefacts: one line naming the file and what is wrong -------------------------

def corrupt_files(folder: Path, good: Path) -> dict[str, Path]:
    from jaxmosaic.io.artifacts import load_artifact, save_artifact

    kind = "vq-codebook" if "book" in good.name else "tile-library"
    header, arrays = load_artifact(good, kind)
    header.pop("format")
    name = arrays.popitem
    files = {}
    data = good.read_bytes()
    (folder / "truncated.npz").write_bytes(data[: len(data) // 2])
    files["truncated"] = folder / "truncated.npz"
    (folder / "empty.npz").write_bytes(b"")
    files["empty"] = folder / "empty.npz"
    (folder / "text.npz").write_text("hello, not an archive")
    files["text"] = folder / "text.npz"
    np.save(folder / "array.npy", np.zeros(3))
    files["npy"] = folder / "array.npy"
    key = "centers" if kind == "vq-codebook" else "features"
    missing = dict(arrays)
    missing.pop(key)
    files["missing"] = save_artifact(folder / "missing.npz", kind, header, missing)
    files["shape"] = save_artifact(folder / "shape.npz", kind, header, {**arrays, key: arrays[key][..., :3]})
    files["nan"] = save_artifact(folder / "nan.npz", kind, header, {**arrays, key: np.full_like(arrays[key], np.nan)})
    files["zero"] = save_artifact(folder / "zero.npz", kind, header, {**arrays, key: arrays[key][:0]})
    del name
    return files


def test_corrupt_codebooks_are_one_line(work):
    assert run_cli("vq", "train", "p/content.png", "p/style.png", "-o", "book.npz", *VQ).exit_code == 0
    bad = work / "bad"
    bad.mkdir()
    for case, path in corrupt_files(bad, work / "book.npz").items():
        before = hashes(work)
        one_line_error(run_cli("vq", "compress", "p/content.png", "--codebook", path, "-o", "c.png"), path.name)
        one_line_error(run_cli("vq", "cluster", "p/content.png", "p/style.png", "--codebook", path, "-o", "g"), path.name)
        assert hashes(work) == before, case


def test_corrupt_libraries_are_one_line(work):
    assert run_cli("library", "build", "gabor", "-o", "lib.npz").exit_code == 0
    bad = work / "bad"
    bad.mkdir()
    for case, path in corrupt_files(bad, work / "lib.npz").items():
        before = hashes(work)
        one_line_error(run_cli("mosaic", "p/content.png", "--tiles", path, "-o", "m.png", *MOSAIC), path.name)
        one_line_error(run_cli("library", "info", path), path.name)
        assert hashes(work) == before, case


def test_weights_info_on_a_folder_that_holds_no_weights(work):
    one_line_error(run_cli("weights", "info", "--weights", "p"), "p", "not a jaxmosaic weights folder")


# --- kills and interruptions: the previous state survives, leftovers are cleaned -------------

KILLER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import jaxmosaic.io.checkpoints as checkpoints
    import jaxmosaic.io.files as files
    import jaxmosaic.io.folders as folders

    point, target = sys.argv[1], sys.argv[2]
    point, _, nth = point.partition(":")
    seen = [0]

    def patch(module, name, matches):
        original = getattr(module, name)
        def wrapper(*args, **kwargs):
            if matches(*args):
                seen[0] += 1
                if seen[0] == int(nth or 1):
                    os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        setattr(module, name, wrapper)

    if point == "writing":
        patch(checkpoints.json, "dumps", lambda *a: True)
    elif point == "renaming":
        patch(folders.os, "rename", lambda *a: True)
    elif point == "pointing":
        patch(files.os, "replace", lambda src, dst: str(dst).endswith("current"))
    elif point == "cleaning":
        patch(folders.shutil, "rmtree", lambda *a: True)
    if sys.argv[3:]:
        from jaxmosaic.cli import main
        sys.argv = ["jaxmosaic", *sys.argv[3:]]
        main()
    else:
        checkpoints.save_checkpoint(target, {"params": np.full(3, 2.0, np.float32)}, {"step": 2})
""")


@pytest.mark.parametrize("point", ["writing", "renaming", "pointing", "cleaning"])
def test_a_kill_during_a_checkpoint_save_leaves_a_loadable_checkpoint(tmp_path, point):
    target = tmp_path / "ck"
    save_checkpoint(target, {"params": np.full(3, 1.0, np.float32)}, {"step": 1})
    killed = subprocess.run([sys.executable, "-c", KILLER, point, str(target)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state, meta = load_checkpoint(target, {"params": np.zeros(3, np.float32)})
    assert meta["step"] in (1, 2) and float(state["params"][0]) == meta["step"]  # old or new, never a mix
    assert meta["step"] == (2 if point == "cleaning" else 1)
    save_checkpoint(target, {"params": np.full(3, 3.0, np.float32)}, {"step": 3})
    assert read_checkpoint_meta(target)["step"] == 3
    entries = sorted(p.name for p in target.iterdir())
    assert len(entries) == 3 and entries[:2] == [".jaxmosaic", "current"]  # the debris of the killed save is gone


@pytest.fixture(scope="module")
def seed_zero_folder(random_params, tmp_path_factory) -> Path:
    """The random VGG19 of seed 0 as a weights folder: a subprocess reads it in 0.5 s of CPU where
    drawing it takes 7.5 s."""
    from jaxmosaic.weights import save_params

    source = {"arch": "vgg19", "source": "random", "seed": 0, "format": "He-normal, per-layer mean activation 1"}
    return save_params(random_params, tmp_path_factory.mktemp("weights") / "seed0", source)


def test_resume_after_a_style_run_killed_while_saving(work, seed_zero_folder):
    args = ["style", "p/content.png", "p/style.png", "-o", "out.png", "--checkpoint", "ck", "--checkpoint-every", 2, *STYLE]
    args[args.index("--steps") + 1] = 4
    args[args.index("--weights") + 1] = seed_zero_folder
    killed = subprocess.run([sys.executable, "-c", KILLER, "pointing:2", "ck", *map(str, args)], capture_output=True,
                            text=True, cwd=work, env=unoptimised_env())
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert read_checkpoint_meta(work / "ck")["step"] == 2  # the second save was killed; the first stands
    args[args.index("--steps") + 1] = 6
    result = run_cli(*args, "--resume", "--metrics", "m.json")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and json.loads((work / "m.json").read_text())["steps"] == 4


def test_ctrl_c_writes_the_images_and_a_checkpoint_that_resumes(work, seed_zero_folder):
    args = ["style", "p/content.png", "p/style.png", "-o", "out.png", "--checkpoint", "ck", "--checkpoint-every", 1, *STYLE]
    args[args.index("--steps") + 1] = 100000
    args[args.index("--weights") + 1] = seed_zero_folder
    process = subprocess.Popen(cli_command(*args), cwd=work, env=unoptimised_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (work / "ck" / "current").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "interrupted at step" in lines[0] and "continue with --resume" in lines[0]
    assert (work / "out.png").exists()
    step = read_checkpoint_meta(work / "ck")["step"]
    args[args.index("--steps") + 1] = step + 2
    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.output


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_killed_writes_are_cleaned_by_the_next_run(work):
    pid = dead_pid()
    leftover = work / f".out.png.jaxmosaic-{pid}-0a1b2c3d.tmp"
    leftover.write_bytes(b"half an image")
    other = work / f".other.png.jaxmosaic-{pid}-0a1b2c3d.tmp"
    other.write_bytes(b"another output's")
    mine = work / ".out.png.backup"
    mine.write_bytes(b"the user's")
    assert run_cli("hybrid", "p/content.png", "p/style.png", "-o", "out.png", *HYBRID).exit_code == 0
    assert not leftover.exists() and other.exists() and mine.exists()


def test_an_interrupted_download_continues_and_leaves_nothing(torch_checkpoint, tmp_path, monkeypatch):
    from jaxmosaic import WeightsError
    from jaxmosaic.weights import default_weights_dir, download, is_weights_folder

    data = torch_checkpoint.read_bytes()
    name = f"vgg19-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server = FileServer({name: data}, fail_after=len(data) // 3)
    try:
        monkeypatch.setenv("JAXMOSAIC_VGG19_URL", server.url(name))
        with pytest.raises(WeightsError, match="run it again to continue"):
            download()
        partial = [p for p in default_weights_dir().parent.iterdir() if "download" in p.name]
        assert len(partial) == 1 and partial[0].stat().st_size == len(data) // 3
        download()
        assert server.requests == [None, f"bytes={len(data) // 3}-"]  # the second request continued the first
        assert is_weights_folder(default_weights_dir())
        assert not any("download" in p.name or p.suffix == ".pth" for p in default_weights_dir().parent.iterdir())
    finally:
        server.close()


# --- wrong or unhelpful answers: one line naming the option, before any work ------------------

@pytest.mark.parametrize("args, fragment", [
    (["style", "p/content.png", "p/style.png", "-o", "o.png", "--seed", 2**64, *STYLE], "--seed"),
    (["texture", "p/style.png", "-o", "o.png", "--seed", 2**64, *TEXTURE], "--seed"),
    (["mosaic", "p/content.png", "-o", "o.png", "--seed", 2**64], "--seed"),
    (["vq", "train", "p/style.png", "-o", "b.npz", "--seed", 2**64], "--seed"),
    (["weights", "random", "-o", "w", "--seed", 2**64], "--seed"),
    (["features", "p/content.png", "-o", "f.npz", "--seed", 2**64], "--seed"),
    (["hybrid", "p/content.png", "p/style.png", "-o", "o.png", "--gamma", 0], "--gamma"),
    (["hybrid", "p/content.png", "p/style.png", "-o", "o.png", "--gamma", "nan"], "--gamma"),
    (["hybrid", "p/content.png", "p/style.png", "-o", "o.png", "--ratio", "inf"], "--ratio"),
    (["hybrid", "p/content.png", "p/style.png", "-o", "o.png", "--lr", "nan"], "--lr"),
    (["hybrid", "p/content.png", "p/style.png", "-o", "o.png", "--lr", -1], "--lr"),
    (["hybrid", "p/content.png", "p/style.png", "-o", "o.png", "--kernel", 4], "--kernel: must be odd"),
    (["hybrid", "p/content.png", "p/style.png", "-o", "o.png", "--sigma", "inf"], "--sigma"),
    (["tiles", "gabor", "g", "--colors", 0], "--colors"),
    (["tiles", "gabor", "g", "--colors", -2], "--colors"),
    (["mosaic", "p/content.png", "-o", "o.png", "--min-distance", "inf"], "--min-distance"),
    (["style", "p/content.png", "p/style.png", "-o", "o.png", "--style-scale", "inf", *STYLE], "--style-scale"),
    (["style", "p/content.png", "p/style.png", "-o", "o.png", "--content-weight", "nan", *STYLE], "--content-weight"),
    (["style", "p/content.png", "p/style.png", "-o", "o.png", "--content-weight", -1, *STYLE], "--content-weight"),
    (["style", "p/content.png", "p/style.png", "-o", "o.png", "--tv-weight", "inf", *STYLE], "--tv-weight"),
    (["style", "p/content.png", "p/style.png", "-o", "o.png", "--style-blend", "nan", *STYLE], "--style-blend"),
    (["style", "p/content.png", "p/style.png", "-o", "o.png", "--layer-weights", "nan", *STYLE], "--layer-weights"),
    (["texture", "p/style.png", "-o", "o.png", "--lr", "nan", *TEXTURE], "--lr"),
    (["features", "p/content.png", "-o", "f.npz", "--size", -5], "--size"),
    (["style", "p/content.png", "thin.png", "-o", "o.png", *STYLE[:-4]], "thin.png"),
    (["features", "thin.png", "-o", "f.npz", "--size", 0, "--weights", "random"], "thin.png"),
    (["features"], "Missing argument"),
    (["style", "p/content.png", "p/style.png", "-o", "o.png", "--steps", "1e9"], "--steps"),
])
def test_bad_settings_are_one_line_naming_the_option_before_any_work(work, args, fragment):
    Image.fromarray(np.zeros((1, 5000, 3), np.uint8)).save(work / "thin.png")
    before = hashes(work)
    started = time.perf_counter()
    one_line_error(run_cli(*args), fragment)
    assert time.perf_counter() - started < 10
    assert hashes(work) == before and not (work / "g").exists()


def test_a_diverging_run_writes_its_last_finite_images_and_says_so(work):
    for args in (["style", "p/content.png", "p/style.png", *STYLE], ["texture", "p/style.png", *TEXTURE]):
        result = run_cli(*args, "-o", "d.png", "--optimizer", "adam", "--lr", 1e30)
        errors = [line for line in result.output.splitlines() if line.startswith("error: ")]  # after the progress bar
        assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
        assert "diverged" in errors[0] and "wrote the last finite images (d.png)" in errors[0]
        assert (work / "d.png").exists()
        (work / "d.png").unlink()


SWEEP_VALUES = ("0", "-1", "nan", "inf", "1e9", str(2**64))
SWEEP = {
    "style": (["style", "p/content.png", "p/style.png", "-o", "o.png", *STYLE],
              ["--size", "--scales", "--steps", "--style-blend", "--layer-weights", "--content-weight", "--style-weight",
               "--tv-weight", "--lr", "--seed", "--style-scale", "--save-every", "--checkpoint-every"]),
    "texture": (["texture", "p/style.png", "-o", "o.png", *TEXTURE],
                ["--size", "--steps", "--layer-weights", "--spectrum-weight", "--variations", "--lr", "--seed", "--save-every"]),
    "hybrid": (["hybrid", "p/content.png", "p/style.png", "-o", "o.png", *HYBRID],
               ["--ratio", "--steps", "--kernel", "--sigma", "--sigma-high", "--lr", "--gamma", "--size", "--save-every"]),
    "mosaic": (["mosaic", "p/content.png", "-o", "o.png", *MOSAIC],
               ["--patch", "--render", "--cols", "--alpha", "--max-reuse", "--min-distance", "--top-k", "--svd-k",
                "--gabor-colors", "--seed"]),
    "vq": (["vq", "train", "p/content.png", "p/style.png", "-o", "b.npz", *VQ],
           ["--patch", "--stride", "--k", "--samples", "--iterations", "--batch-size", "--seed"]),
    "other": ([], []),
}
OTHER = [
    (["features", "p/content.png", "-o", "f.npz", "--weights", "random", "--layers", "relu1_1"], ["--size", "--seed"]),
    (["tiles", "gabor", "g"], ["--size", "--colors"]),
    (["vq", "compress", "p/content.png", "--codebook", "book.npz", "-o", "c.png"], ["--stride"]),
    (["vq", "cluster", "p/content.png", "p/style.png", "--codebook", "book.npz", "-o", "groups"], ["--clusters"]),
    (["library", "build", "gabor", "-o", "l.npz"], ["--svd-k", "--gabor-colors", "--seed"]),
]


def replaced(args: list, option: str, value: str) -> list:
    """`args` with `option` set to `value` (replacing the value it has there, if any)."""
    args = [str(a) for a in args]
    if option in args:
        args[args.index(option) + 1] = value
        return args
    return [*args, option, value]


# Runs `jaxmosaic` in-process (helpers.run_cli) for each argv of a JSON list, under the tests'
# strict JAX settings and warnings as errors, with the random VGG19 of seed 0 read from a pickle;
# writes [[exit code, output], ...] as JSON.
SWEEP_RUNNER = textwrap.dedent("""
    import json, pickle, sys, warnings
    sys.path.insert(0, sys.argv[1])
    import jax
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_disable_most_optimizations", True)
    warnings.simplefilter("error")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="(orbax|flax|jax|torch)")
    import helpers
    with open(sys.argv[2], "rb") as file:
        helpers.SEED_ZERO["params"] = pickle.load(file)
    with open(sys.argv[3]) as file:
        cases = json.load(file)
    results = []
    for args in cases:
        result = helpers.run_cli(*args)
        results.append([result.exit_code, result.output])
    with open(sys.argv[4], "w") as file:
        json.dump(results, file)
""")

# the commands whose accepted values compile an optimisation each (the weights are constants of the
# compiled steps): their cases run in one subprocess of XLA's unoptimised code (style: 14 programs,
# 3.0 -> 1.6 s of CPU each), where only exit codes and messages are checked
COMPILING = ("style", "texture")


def sweep_results(work: Path, cases: list[list[str]], random_params) -> list[tuple[int, str]]:
    """(exit code, output) of `jaxmosaic ARGS` in `work` for each ARGS of `cases`, all in one
    subprocess of XLA's unoptimised code that is given `random_params` as seed 0's network."""
    scratch = work.parent / "sweep"
    scratch.mkdir()
    with open(scratch / "params.pkl", "wb") as file:
        pickle.dump(jax.tree_util.tree_map(np.asarray, random_params), file, protocol=pickle.HIGHEST_PROTOCOL)
    (scratch / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run([sys.executable, "-c", SWEEP_RUNNER, str(Path(__file__).parent), str(scratch / "params.pkl"),
                           str(scratch / "cases.json"), str(scratch / "results.json")], cwd=work, env=unoptimised_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return [tuple(pair) for pair in json.loads((scratch / "results.json").read_text())]


@pytest.mark.parametrize("command", list(SWEEP))
def test_every_numeric_option_over_the_usual_mistakes(work, command, request):
    """0, -1, nan, inf, 1e9, 2**64 for every numeric option: a correct run or a one-line refusal,
    never a traceback, an "unexpected" error, a signal or a changed input."""
    assert run_cli("vq", "train", "p/content.png", "p/style.png", "-o", "book.npz", *VQ).exit_code == 0
    cases = [SWEEP[command]] if command != "other" else OTHER
    before = hashes(work / "p", work / "book.npz")
    outcomes = collections.Counter()
    labels = [f"{option} {value}" for _, options in cases for option in options for value in SWEEP_VALUES]
    argvs = [replaced(base, option, value) for base, options in cases for option in options for value in SWEEP_VALUES]
    if command in COMPILING:
        results = sweep_results(work, argvs, request.getfixturevalue("random_params"))
    else:
        results = [(result.exit_code, result.output) for result in (run_cli(*args) for args in argvs)]
    assert len(results) == len(argvs)
    for label, (exit_code, output) in zip(labels, results):
        assert "Traceback" not in output and "unexpected" not in output, (label, output)
        if exit_code == 0:
            outcomes["ran"] += 1
            continue
        lines = [line for line in output.splitlines() if line.strip()]
        assert exit_code in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "), (label, output)
        outcomes["refused"] += 1
    assert hashes(work / "p", work / "book.npz") == before
    print(f"\n{command}: {dict(outcomes)}")
