"""Files jaxmosaic reads back (folder markers, checkpoint metadata, weights' source.json) decide
what is deleted, resumed and replaced: each is checked against its schema first, and deleting,
resuming and replacing check what they act on. Every refusal is one line and exit code 1, and
no file that existed before changes (hashes before and after)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import HYBRID, SAMPLES, VQ, hashes, one_line_error, run_cli

MARKER = ".jaxmosaic"
HUGE_PID = "9" * 20


@pytest.fixture
def workdir(work):  # noqa: F811
    """test_safety's working folder (copies of two samples in p/), the current folder."""
    return work


def tile_folder_with(workdir: Path, marker) -> Path:
    """A folder marked with `marker` (any JSON value) holding the user's files a, b and holiday.jpg."""
    folder = workdir / "g"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / name).write_text(f"the user's {name}")
    shutil.copy(SAMPLES / "rocket.jpg", folder / "holiday.jpg")
    (folder / MARKER).write_text(json.dumps(marker))
    return folder


# --- 1. markers decide deletions -----------------------------------------------------------

@pytest.mark.parametrize("files", ["abc", 5, [1, None, ["x"]], ["../p/content.png"]])
def test_a_marker_whose_files_are_not_a_list_of_names_deletes_nothing(workdir, files):
    folder = tile_folder_with(workdir, {"jaxmosaic": "tiles", "version": 1, "files": files})
    before = hashes(workdir)
    one_line_error(run_cli("tiles", "gabor", folder, "--size", 8), f"{MARKER}: files", code=1)
    assert hashes(workdir) == before and sorted(p.name for p in folder.iterdir()) == [MARKER, "a", "b", "holiday.jpg"]


def test_a_marker_listing_the_users_files_deletes_only_jaxmosaics(workdir):
    from jaxmosaic.io.images import save_image

    ours = "gabor-9998-old.png"  # a tile name this run does not write again: stale
    listed = ["holiday.jpg", "a", "gabor-9999-mine.png", "cluster-1.png", ours]
    folder = tile_folder_with(workdir, {"jaxmosaic": "tiles", "version": 1, "files": listed})
    shutil.copy(SAMPLES / "coffee.png", folder / "gabor-9999-mine.png")  # named like a tile, not signed
    save_image(folder / "cluster-1.png", np.zeros((4, 4, 3), np.float32))  # signed, but not a tile's name
    save_image(folder / ours, np.zeros((4, 4, 3), np.float32))
    kept = {name: digest for name, digest in hashes(folder).items() if not name.endswith((MARKER, ours))}
    result = run_cli("tiles", "gabor", folder, "--size", 8)
    assert result.exit_code == 0, result.output
    left = [line for line in result.output.splitlines() if line.startswith("left ")]
    assert len(left) == 1 and "not a file jaxmosaic wrote" in left[0], result.output
    for name in ("holiday.jpg", "a", "gabor-9999-mine.png", "cluster-1.png"):
        assert name in left[0]
    assert {name: digest for name, digest in hashes(folder).items() if name in kept} == kept
    assert not (folder / ours).exists() and (folder / "b").exists()
    marker = json.loads((folder / MARKER).read_text())
    assert "holiday.jpg" not in marker["files"] and len(marker["files"]) == 384 + 1


@pytest.mark.parametrize("pointer", [{"version": "../../p"}, {"version": 5}, [], "{"])
def test_a_damaged_pointer_of_a_versioned_folder_is_one_line_before_any_work(workdir, pointer):
    resume = hybrid_checkpoint(workdir)
    (workdir / "ck" / "current").write_text(pointer if isinstance(pointer, str) else json.dumps(pointer))
    before = hashes(workdir)
    for args in (resume, resume[:-1]):  # resuming it, and saving a new checkpoint into it
        one_line_error(run_cli(*args), "current", code=1)
    assert hashes(workdir) == before


# --- 2. checkpoint metadata ------------------------------------------------------------------

def hybrid_checkpoint(workdir: Path) -> list:
    """Run a hybrid image with a checkpoint in workdir/ck; the arguments that resume it."""
    args = ["hybrid", "p/content.png", "p/style.png", "-o", "out.png", "--checkpoint", "ck", *HYBRID]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return [*args, "--resume"]


def meta_file(workdir: Path) -> Path:
    from jaxmosaic.io.checkpoints import checkpoint_meta_file

    return checkpoint_meta_file(workdir / "ck")


@pytest.mark.parametrize("field, value, fragment", [
    ("step", -5, "step"),
    ("step", 3, "step"),  # past the run's 2 steps
    ("stage", 99, "stage"),
    ("stage", "x", "stage"),
    ("settings", [1, 2], "settings"),
    ("shape", [10**5, 10**5, 10**5], "shape"),
    ("shape", [2, 32, 32, 3], "shape"),  # not the run's one image
    ("technique", "style", "technique"),
])
def test_crafted_checkpoint_metadata_is_one_line_naming_the_field(workdir, field, value, fragment):
    resume = hybrid_checkpoint(workdir)
    meta = meta_file(workdir)
    meta.write_text(json.dumps({**json.loads(meta.read_text()), field: value}))
    before = hashes(workdir)
    line = one_line_error(run_cli(*resume), fragment, code=1)
    assert "meta.json" in line or "--resume" in line
    assert hashes(workdir) == before


def test_an_honest_checkpoint_still_resumes(workdir):
    resume = hybrid_checkpoint(workdir)
    resume[resume.index("--steps") + 1] = 3
    result = run_cli(*resume)
    assert result.exit_code == 0 and "resuming" in result.output, result.output


# --- 3. process ids beyond any process ------------------------------------------------------

def test_debris_named_with_a_huge_pid_is_nobodys(workdir):
    from jaxmosaic.io.files import process_alive

    assert not process_alive(int(HUGE_PID)) and not process_alive(-1) and not process_alive(0)
    leftover = workdir / f".out.png.jaxmosaic-{HUGE_PID}-0a1b2c3d.tmp"
    leftover.write_bytes(b"half an image")
    (workdir / "ck").mkdir()
    (workdir / "ck" / MARKER).write_text(json.dumps({"jaxmosaic": "checkpoint", "version": 1, "files": []}))
    partial = workdir / "ck" / f".partial-{HUGE_PID}-0a1b2c3d"
    partial.mkdir()
    (partial / "meta.json").write_text("{}")
    for _ in range(2):  # the first run, and every later write of the same outputs
        result = run_cli("hybrid", "p/content.png", "p/style.png", "-o", "out.png", "--checkpoint", "ck", *HYBRID)
        assert result.exit_code == 0, result.output
    assert not leftover.exists() and not partial.exists()


# --- 4. a resume checks its inputs' contents -------------------------------------------------

def test_a_resume_after_an_input_was_replaced_is_refused(workdir):
    resume = hybrid_checkpoint(workdir)
    shutil.copy(SAMPLES / "coffee.png", workdir / "p" / "style.png")  # same path, other content
    before = hashes(workdir)
    one_line_error(run_cli(*resume), "p/style.png", "changed", code=1)
    assert hashes(workdir) == before


# --- 5. outputs checked against each other before any workdir ----------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["-o", "out.png", "--metrics", "out.png"], "out.png"),
    (["-o", "x.gif", "--gif"], "x.gif"),
    (["-o", "out.png", "--checkpoint", "out.png"], "out.png"),
])
def test_two_outputs_of_one_run_on_the_same_path_are_refused(workdir, args, fragment):
    before = hashes(workdir)
    one_line_error(run_cli("hybrid", "p/content.png", "p/style.png", *args, *HYBRID), fragment, "twice", code=1)
    assert hashes(workdir) == before and sorted(p.name for p in workdir.iterdir()) == ["p"]


# --- 6. a jaxmosaic file of another kind is replaced only with --overwrite ------------------

def test_an_artefact_of_another_kind_is_replaced_only_with_overwrite(workdir):
    from jaxmosaic.io.artifacts import save_artifact

    save_artifact(workdir / "lib.npz", "tile-library", {}, {"features": np.zeros((2, 3), np.float32)})
    before = hashes(workdir)
    train = ["vq", "train", "p/content.png", "-o", "lib.npz", *VQ]
    one_line_error(run_cli(*train), "lib.npz", "tile-library", "--overwrite", code=1)
    one_line_error(run_cli("hybrid", "p/content.png", "p/style.png", "-o", "h.png", "--metrics", "lib.npz", *HYBRID),
                   "lib.npz", "--overwrite", code=1)
    assert hashes(workdir) == before
    assert run_cli(*train, "--overwrite").exit_code == 0
    assert run_cli(*train).exit_code == 0  # now a codebook: its own kind, replaced


def test_weights_of_another_network_are_replaced_only_with_overwrite(workdir):
    assert run_cli("weights", "random", "-o", "w").exit_code == 0
    before = hashes(workdir)
    one_line_error(run_cli("weights", "random", "--arch", "alexnet", "-o", "w"), "w", "VGG19", "--overwrite", code=1)
    assert hashes(workdir) == before
    assert run_cli("weights", "random", "--seed", 1, "-o", "w").exit_code == 0  # the same network: replaced
    result = run_cli("weights", "random", "--arch", "alexnet", "-o", "w", "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads(run_cli("weights", "info", "--arch", "alexnet", "--weights", "w").stdout)["arch"] == "alexnet"


def test_a_converted_folder_of_another_network_needs_overwrite(workdir, torch_checkpoint):
    assert run_cli("weights", "random", "--arch", "alexnet", "-o", "w").exit_code == 0
    before = hashes(workdir)
    one_line_error(run_cli("weights", "convert", torch_checkpoint, "-o", "w"), "w", "AlexNet", "--overwrite", code=1)
    assert hashes(workdir) == before


# --- the schemas against every wrong JSON type and extreme numbers ---------------------------

WRONG = {"string": "x", "int": 7, "float": 0.5, "bool": True, "null": None, "list": [1, None, ["x"]], "dict": {"a": 1}}
EXTREME = {"-1": -1, "2**63": 2**63, "1e308": 1e308, "huge string": "x" * 5000}


def cases(document: dict, accepts: dict[str, set[str]], huge_list) -> list:
    """(label, document) with each field replaced by a value of every JSON type it does not accept,
    by each extreme value, by a list longer than allowed, or removed; and documents that are not objects."""
    found = []
    for field, kinds in accepts.items():
        # the mixed list is wrong for every field, a list field's included
        values = {**{kind: value for kind, value in WRONG.items() if kind not in kinds or kind == "list"}, **EXTREME,
                  "huge list": huge_list}
        for label, value in values.items():
            if label in kinds:  # e.g. a string field's long text
                continue
            found.append((f"{field}={label}", {**document, field: value}))
        if "optional" not in kinds:
            found.append((f"{field} missing", {key: value for key, value in document.items() if key != field}))
    found += [(f"document={kind}", value) for kind, value in WRONG.items() if kind != "dict"]
    return found


def fuzz(path: Path, document: dict, accepts: dict, huge_list, command: list, root: Path) -> int:
    """Write each case to `path`, run `command`: one line naming `path`, exit 1, no file changed."""
    original = path.read_bytes()
    all_cases = cases(document, accepts, huge_list) + [("not json", "{"), ("deep", "[" * 100_000)]
    for label, value in all_cases:
        path.write_text(value if isinstance(value, str) and label in ("not json", "deep") else json.dumps(value))
        before = hashes(root)
        line = one_line_error(run_cli(*command), path.name, code=1)
        assert len(line) < 400, (label, line)
        assert hashes(root) == before, label
    path.write_bytes(original)
    return len(all_cases)


def test_fuzz_the_schemas_of_markers_checkpoints_and_weights(workdir):
    from jaxmosaic.io.schemas import MAX_MARKER_FILES

    count = 0
    folder = tile_folder_with(workdir, {})
    marker = {"jaxmosaic": "tiles", "version": 1, "files": ["a"]}
    accepts = {"jaxmosaic": {"string"}, "version": {"int"}, "files": {"list"}}
    count += fuzz(folder / MARKER, marker, accepts, ["n"] * (MAX_MARKER_FILES + 1), ["tiles", "gabor", folder, "--size", 8], workdir)

    resume = hybrid_checkpoint(workdir)
    meta = meta_file(workdir)
    accepts = {"format": {"string"}, "technique": {"string"}, "settings": {"dict"}, "inputs": {"list"}, "stage": {"int"},
               "step": {"int"}, "shape": {"list"}, "tiled": {"bool"}}
    count += fuzz(meta, json.loads(meta.read_text()), accepts, [1] * 20_000, resume, workdir)

    assert run_cli("weights", "random", "--arch", "alexnet", "-o", "w").exit_code == 0  # AlexNet: fewer bytes to hash
    source = next((workdir / "w").glob("v*/source.json"))
    accepts = {"arch": {"string", "optional"}, "source": {"string"}, "format": {"string", "optional"},
               "file": {"string", "null", "optional"}, "sha256": {"string", "null", "optional"},
               "seed": {"int", "null", "optional"}, "converted": {"string", "null", "optional"},
               "jaxmosaic": {"string", "null", "optional"}}
    document = {**json.loads(source.read_text()), "file": "x.pth", "sha256": "0" * 64, "converted": "now", "jaxmosaic": "0.1"}
    count += fuzz(source, document, accepts, ["x"] * 10, ["weights", "info", "--arch", "alexnet", "--weights", "w"], workdir)
    print(f"{count} schema cases")
    assert count > 150


def test_a_library_or_features_file_never_silently_replaces_another_kind(work):
    codebook = run_cli("vq", "train", "p", "-o", "book.npz", *VQ)
    assert codebook.exit_code == 0, codebook.output
    features = run_cli("features", "p/content.png", "-o", "feats.npz", "--weights", "random", "--layers", "relu1_1",
                       "--size", 32)
    assert features.exit_code == 0, features.output
    before = hashes(work)
    one_line_error(run_cli("library", "build", "gabor", "-o", "book.npz"), "book.npz", code=1)
    one_line_error(run_cli("features", "p/content.png", "-o", "book.npz", "--weights", "random", "--layers", "relu1_1",
                           "--size", 32), "book.npz", code=1)
    one_line_error(run_cli("vq", "train", "p", "-o", "feats.npz", *VQ), "feats.npz", code=1)
    assert hashes(work) == before
    replaced = run_cli("library", "build", "gabor", "-o", "book.npz", "--overwrite")
    assert replaced.exit_code == 0, replaced.output


def test_converting_a_weights_folder_says_what_it_is(work):
    made = run_cli("weights", "random", "-o", "w")
    assert made.exit_code == 0, made.output
    before = hashes(work)
    line = one_line_error(run_cli("weights", "convert", "w", "-o", "w2"), "w", code=1)
    assert "no such file" not in line and "folder" in line
    assert hashes(work) == before and not (work / "w2").exists()
