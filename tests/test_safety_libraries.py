"""Tile libraries, codebooks and stream builds read back from disk: their headers and metadata
never decide work (no walk, no build, no download), every field is checked by the kind's schema,
and the identity of the network that embedded a library is compared before it is matched.

Every refusal is one line naming the file and the field, exit 1, with nothing written, walked or
built: the SHA-256 of every file around is unchanged and the cache gained nothing."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers import SAMPLES, hashes, noise_tiles, one_line_error, run_cli

MOSAIC = ["--cols", 4, "--patch", 8]
LIBRARY = "tile-library"
CODEBOOK = "vq-codebook"


def cache_files() -> list[Path]:
    cache = Path(os.environ["JAXMOSAIC_CACHE_DIR"])
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def read(path: Path, kind: str = LIBRARY) -> tuple[dict, dict]:
    """The header (without its format line) and the arrays of an artefact, to craft a copy."""
    from jaxmosaic.io.artifacts import load_artifact

    header, arrays = load_artifact(path, kind)
    header = dict(header)
    header.pop("format")
    return header, arrays


def write(path: Path, header: dict, arrays: dict, kind: str = LIBRARY) -> Path:
    from jaxmosaic.io.artifacts import save_artifact

    return save_artifact(path, kind, header, arrays)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working folder: a target picture, 4 noise tiles (tiles/) and their colour library (lib.npz)."""
    folder = tmp_path / "work"
    folder.mkdir()
    shutil.copy(SAMPLES / "coffee.png", folder / "target.png")
    noise_tiles(folder / "tiles", 4, (12, 12), np.random.default_rng(0))
    monkeypatch.chdir(folder)
    result = run_cli("library", "build", "tiles", "-o", "lib.npz", "--svd-k", 0)
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def tripwires(monkeypatch):
    """Records every folder walked and every streamed build started; a build of more than 4 tiles
    (the bank libraries here have 4) is stopped before it starts."""
    from jaxmosaic.techniques.mosaic import stream

    seen = {"walked": [], "built": []}
    walk, build = os.walk, stream.stream_library

    def walked(top, *args, **kwargs):
        seen["walked"].append(Path(top).resolve())
        return walk(top, *args, **kwargs)

    def built(source, *args, **kwargs):
        seen["built"].append(source.count)
        if source.count > 4:
            raise RuntimeError(f"a build of {source.count} tiles started")
        return build(source, *args, **kwargs)

    monkeypatch.setattr(os, "walk", walked)
    monkeypatch.setattr(stream, "stream_library", built)
    return seen


def refused(args, *fragments, around: Path, seconds: float = 10.0) -> str:
    """The command fails in one line holding `fragments`, exit 1, quickly, changing no file under
    `around` and adding nothing to the cache."""
    before = hashes(around)
    start = time.perf_counter()
    result = run_cli(*args)
    elapsed = time.perf_counter() - start
    line = one_line_error(result, *fragments, code=1)
    assert elapsed < seconds, (elapsed, line)
    assert hashes(around) == before, line
    assert cache_files() == [], line
    return line


# --- 1. reading never starts work ----------------------------------------------------------------

def test_a_library_naming_a_big_folder_as_its_source_never_walks_it(work, tripwires):
    """The header's source is a folder holding far more than the library (here the whole working
    folder, as "/" was): other features are refused in one line naming the command to run, and
    the library's own features are used without walking the folder."""
    header, arrays = read(work / "lib.npz")
    shutil.copytree(work / "tiles", work / "elsewhere" / "more")
    header["source"] = str(work)
    write(work / "crafted.npz", header, arrays)
    line = refused(["mosaic", "target.png", "--tiles", "crafted.npz", "-o", "m.png", "--color", "transfer", *MOSAIC],
                   "crafted.npz", "jaxmosaic library build", around=work)
    assert "--color transfer" in line
    assert tripwires["walked"] == [] and tripwires["built"] == []
    result = run_cli("mosaic", "target.png", "--tiles", "crafted.npz", "-o", "m.png", *MOSAIC)
    assert tripwires["walked"] == [] and tripwires["built"] == [] and cache_files() == []
    one_line_error(result, "0.png", code=1)  # its entries are not in that folder: looked up by name, never searched for


def test_a_library_naming_the_gabor_bank_as_its_source_builds_nothing(work, tripwires):
    header, arrays = read(work / "lib.npz")
    header["source"] = "gabor-bank"
    write(work / "crafted.npz", header, arrays)
    refused(["mosaic", "target.png", "--tiles", "crafted.npz", "-o", "m.png", "--color", "transfer", *MOSAIC],
            "crafted.npz", "source", around=work)
    header.update(kind="bank", source="gabor-bank", entries=[], bank=[50, 10, 25, 25])
    write(work / "bank.npz", header, arrays)
    refused(["mosaic", "target.png", "--tiles", "bank.npz", "-o", "m.png", *MOSAIC], "bank.npz", "bank", around=work)
    assert tripwires["built"] == [] and tripwires["walked"] == []


def test_a_small_bank_library_is_reindexed_from_its_own_grid(work, tripwires):
    result = run_cli("library", "build", "gabor-bank", "--bank-grid", "1,1,2,2", "-o", "bank.npz")
    assert result.exit_code == 0, result.output
    tripwires["built"].clear()
    before = hashes(work)
    result = run_cli("mosaic", "target.png", "--tiles", "bank.npz", "-o", "m.png", "--color", "none", *MOSAIC)
    assert result.exit_code == 0, result.output
    assert tripwires["built"] == [4] and tripwires["walked"] == []
    assert "4 tiles" in result.output
    from jaxmosaic.techniques.mosaic import load_library

    cached = cache_files()
    assert len(cached) == 1 and len(load_library(cached[0])) == 4
    assert {k: v for k, v in hashes(work).items() if not k.endswith("m.png")} == before


def test_a_library_naming_itself_as_its_source_is_one_line(work, tripwires):
    header, arrays = read(work / "lib.npz")
    header["source"] = str(work / "self.npz")
    write(work / "self.npz", header, arrays)
    refused(["mosaic", "target.png", "--tiles", "self.npz", "-o", "m.png", "--color", "transfer", *MOSAIC],
            "self.npz", "jaxmosaic library build", around=work)
    assert tripwires["walked"] == [] and tripwires["built"] == []


def test_a_library_naming_a_network_downloads_nothing(work, monkeypatch):
    """A header that names VGG19 features does not fetch VGG19: without --weights or --features
    the weights must already be here."""
    import jaxmosaic.weights

    def download(*args, **kwargs):
        raise AssertionError("a download started")

    monkeypatch.setattr(jaxmosaic.weights, "download", download)
    header, _ = read(work / "lib.npz")
    header["settings"].update(kind="vgg", size=64, weights="0123456789abcdef")
    features = np.random.default_rng(0).random((4, 512), np.float32)
    write(work / "vgg.npz", header, {"features": features / np.linalg.norm(features, axis=1, keepdims=True)})
    refused(["mosaic", "target.png", "--tiles", "vgg.npz", "-o", "m.png", *MOSAIC], "no VGG19 weights", around=work)


def test_library_info_walks_nothing_unless_given_the_folder(work, tripwires):
    header, arrays = read(work / "lib.npz")
    header["source"] = str(work)
    write(work / "crafted.npz", header, arrays)
    result = run_cli("library", "info", "crafted.npz")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["current"] is None and tripwires["walked"] == []
    result = run_cli("library", "info", "lib.npz", "--tiles", "tiles")
    assert result.exit_code == 0 and json.loads(result.stdout)["current"] is True
    assert tripwires["walked"] == [(work / "tiles").resolve()]
    one_line_error(run_cli("library", "info", "crafted.npz", "--tiles", "tiles"), "crafted.npz", "tiles", code=1)


# --- 2. every field and member is checked before it is used ---------------------------------------

@pytest.mark.parametrize("field, value", [
    (("svd",), {"k": "4", "energy": 1.0, "projected": False}),
    (("svd",), {"k": 4, "energy": [1], "projected": False}),
    (("bank",), ["1", 1, 2, 2]),
    (("settings", "grid"), "4"),
    (("entries",), [1, 2, 3, 4]),
    (("skipped",), {"a": 1}),
])
def test_wrong_types_in_library_fields_are_one_line(work, field, value):
    header, arrays = read(work / "lib.npz")
    target = header
    for part in field[:-1]:
        target = target[part]
    target[field[-1]] = value
    write(work / "crafted.npz", header, arrays)
    refused(["mosaic", "target.png", "--tiles", "crafted.npz", "-o", "m.png", *MOSAIC], "crafted.npz", field[0], around=work)


def _replace_member(path: Path, name: str, data: bytes, *, deflated: bool = False) -> None:
    """Replace (or add) the zip member `name` of the archive `path`."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist() if info.filename != name}
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in members.items():
            archive.writestr(member, content)
        archive.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED)


def test_a_member_claiming_a_huge_shape_is_refused_before_reading(work):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_2_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 1_000_000)})
    shutil.copy(work / "lib.npz", work / "huge.npz")
    _replace_member(work / "huge.npz", "features.npy", buffer.getvalue() + bytes(64))
    refused(["mosaic", "target.png", "--tiles", "huge.npz", "-o", "m.png", *MOSAIC], "huge.npz", "features", around=work)
    refused(["library", "info", "huge.npz"], "huge.npz", "features", around=work)


def test_an_unexpected_member_is_refused_without_decompressing_it(work):
    from jaxmosaic.techniques.vq import Codebook, Normalization, save_codebook

    info = {"images": ["target.png"], "samples": 200, "k": 4, "init": "k-means++", "iterations": 2, "batch_size": None,
            "inertia": 1.0, "seed": 0}
    centers = np.random.default_rng(0).random((4, 16), np.float32)
    save_codebook(work / "book.npz", Codebook(centers, 4, 4, Normalization.gray, info))
    small = noise_tiles(work / "small", 1, (16, 16), np.random.default_rng(2)) / "0.png"
    with (zipfile.ZipFile(work / "book.npz", "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
          archive.open("unused.npy", "w", force_zip64=True) as member):
        for _ in range(16):  # 256 MiB of zeros, about 1 MB deflated
            member.write(bytes(1 << 24))
    assert (work / "book.npz").stat().st_size < 4 << 20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(["vq", "compress", small, "--codebook", "book.npz", "-o", "c.png"], "book.npz", "unused", around=work)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 << 10  # KiB: nothing near 256 MiB was read


def test_features_of_the_wrong_width_are_refused_on_reading(work):
    header, arrays = read(work / "lib.npz")
    write(work / "narrow.npz", header, {**arrays, "features": np.ascontiguousarray(arrays["features"][:, :60])})
    refused(["mosaic", "target.png", "--tiles", "narrow.npz", "-o", "m.png", *MOSAIC], "narrow.npz", "features", "64",
            around=work)


# --- 3. a stream build's chunks are checked when a build resumes --------------------------------

def _damage(chunk: Path, how: str) -> None:
    data = chunk.read_bytes()
    if how == "truncated":
        chunk.write_bytes(data[: len(data) // 2])
        return
    with np.load(chunk) as held:
        arrays = {name: held[name] for name in held.files}
    if how == "range":
        arrays["indices"] = arrays["indices"] + 1000
    elif how == "nan":
        arrays["features"] = np.full_like(arrays["features"], np.nan)
    elif how == "width":
        arrays["features"] = np.ascontiguousarray(arrays["features"][:, :3])
    with open(chunk, "wb") as file:
        np.savez(file, **arrays)


@pytest.mark.parametrize("how", ["truncated", "range", "nan", "width", "plan"])
def test_damaged_build_chunks_are_one_line_on_resume(work, how):
    build = ["library", "build", "tiles", "-o", "streamed.npz", "--stream", "--chunk", 2, "--svd-k", 2]
    result = run_cli(*build, "--keep-features")
    assert result.exit_code == 0, result.output
    folder = work / "streamed.npz.build"
    if how == "plan":
        plan = json.loads((folder / "plan.json").read_text())
        plan["count"] = "4"
        (folder / "plan.json").write_text(json.dumps(plan))
        name = "plan.json"
    else:
        _damage(folder / "chunk-000000.npz", how)
        name = "chunk-000000.npz"
    line = refused([*build, "--resume"], name, around=work)
    assert "without --resume" in line


# --- 4. a library is never matched against patches of another network ----------------------------

def _weights(folder: Path, seed: int) -> Path:
    """A VGG19 weights folder of seeded normal noise (quick to make: no rescaling pass)."""
    from jaxmosaic.weights import ARCHS, save_params

    rng = np.random.default_rng(seed)
    params = {name: {"kernel": rng.normal(0, 0.1, (h, w, i, o)).astype(np.float32), "bias": np.zeros(o, np.float32)}
              for name, (o, i, h, w) in ARCHS["vgg19"].shapes.items()}
    save_params(params, folder, {"arch": "vgg19", "source": "random", "seed": seed})
    return folder


def test_a_library_of_other_weights_is_never_matched(work):
    one, other = _weights(work / "w1", 1), _weights(work / "w2", 2)
    vgg = ["--layer", "relu1_1", *MOSAIC]
    result = run_cli("library", "build", "tiles", "-o", "vgg.npz", "--svd-k", 0, "--features", "vgg", "--layer", "relu1_1",
                     "--weights", one)
    assert result.exit_code == 0, result.output
    line = refused(["mosaic", "target.png", "--tiles", "vgg.npz", "-o", "m.png", "--weights", other, *MOSAIC], "vgg.npz",
                   "other vgg19 weights", "jaxmosaic library build", around=work)
    assert f"build {(work / 'tiles').resolve()} --features vgg --layer relu1_1" in line and f"--weights {other}" in line
    result = run_cli("mosaic", "target.png", "--tiles", "vgg.npz", "-o", "m.png", "--weights", one, *MOSAIC)
    assert result.exit_code == 0 and cache_files() == [], result.output
    # the folder the user names is indexed again for the other weights, into the cache
    result = run_cli("mosaic", "target.png", "--tiles", "tiles", "-o", "m.png", "--features", "vgg", "--weights", other, *vgg)
    assert result.exit_code == 0 and len(cache_files()) == 1, result.output


# --- 5. symlinks in a tile folder ----------------------------------------------------------------

def test_symlinks_in_a_tile_folder_are_skipped_and_listed(work):
    noise_tiles(work / "outside", 1, (12, 12), np.random.default_rng(1), name="far.png")
    os.symlink(work / "outside" / "far.png", work / "tiles" / "link.png")
    result = run_cli("library", "build", "tiles", "-o", "linked.npz", "--svd-k", 0)
    assert result.exit_code == 0, result.output
    assert "indexed 4 tiles" in result.output and "link.png" in result.output
    info = json.loads(run_cli("library", "info", "linked.npz", "--tiles", "tiles").stdout)
    assert info["skipped"] == ["link.png"] and info["current"] is True
    assert "up to date" in run_cli("library", "build", "tiles", "-o", "linked.npz", "--svd-k", 0).output
    for tiles in ("linked.npz", "tiles"):
        result = run_cli("mosaic", "target.png", "--tiles", tiles, "-o", "m.png", *MOSAIC)
        assert result.exit_code == 0, result.output


# --- schema fuzz: every header field of every wrong JSON type ------------------------------------

WRONG = {"str": "x", "int": 7, "float": 0.5, "bool": True, "null": None, "list": [1], "dict": {"a": 1},
         "huge": 10**30, "-huge": -(10**30), "max-float": 1e308, "-max-float": -1e308}

LIBRARY_FIELDS = [("kind",), ("source",), ("entries",), ("settings",), ("color",), ("fingerprint",), ("skipped",), ("svd",),
                  ("bank",), ("build",), ("settings", "kind"), ("settings", "view"), ("settings", "grid"),
                  ("settings", "size"), ("settings", "layer"), ("settings", "pool"), ("settings", "weights"),
                  ("svd", "k"), ("svd", "energy"), ("svd", "projected"), ("build", "tiles_per_second"),
                  ("build", "seconds"), ("build", "processes"), ("build", "devices"), ("build", "chunk")]
CODEBOOK_FIELDS = [("size",), ("stride",), ("normalize",), ("info",), ("info", "images"), ("info", "samples"), ("info", "k"),
                   ("info", "init"), ("info", "iterations"), ("info", "batch_size"), ("info", "inertia"), ("info", "seed")]
# values of the right type and in range: these are no damage
VALID = {("build",): ["null"], ("settings", "size"): ["int"], ("svd", "energy"): ["float"], ("svd", "projected"): ["bool"],
         **{("build", name): ["int", "float"] for name in ("tiles_per_second", "seconds")},
         **{("build", name): ["int"] for name in ("processes", "devices", "chunk")},
         ("stride",): ["int"], ("info", "samples"): ["int"], ("info", "iterations"): ["int"], ("info", "seed"): ["int"],
         ("info", "batch_size"): ["int", "null"], ("info", "inertia"): ["int", "float"]}


def _cases(fields):
    return [(field, name) for field in fields for name in WRONG if name not in VALID.get(field, [])]


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """A 4-tile bank library (every header field filled: SVD, grid, build) and a VQ codebook."""
    from helpers import sample_image
    from jaxmosaic.techniques.mosaic import ColorMode, FeatureConfig
    from jaxmosaic.techniques.mosaic.bank import BankGrid
    from jaxmosaic.techniques.mosaic.stream import BankSource, stream_library
    from jaxmosaic.techniques.vq import VQConfig, save_codebook, train_codebook

    folder = tmp_path_factory.mktemp("artefacts")
    stream_library(BankSource(BankGrid(1, 1, 2, 2)), FeatureConfig.color("multiply"), ColorMode.multiply, folder / "bank.npz", k=2)
    book, _ = train_codebook(VQConfig(patch=4, k=4, samples=200, iterations=2), [sample_image("coffee.png", 32, 32)],
                             names=["coffee.png"])
    save_codebook(folder / "book.npz", book)
    return folder


def _fuzzed(source: Path, out: Path, kind: str, field: tuple, value) -> Path:
    header, arrays = read(source, kind)
    target = header
    for part in field[:-1]:
        target = target[part]
    target[field[-1]] = value
    return write(out, header, arrays, kind)


def test_schema_fuzz_library_and_codebook_headers(artefacts, tmp_path, monkeypatch, record_property):
    """Each case runs the command line in this process with typer's CliRunner; the app's command
    is built once rather than on every call, which keeps hundreds of runs fast."""
    import typer.testing

    from jaxmosaic.cli import app

    built = typer.testing._get_command(app)
    monkeypatch.setattr(typer.testing, "_get_command", lambda _: built)

    library_cases, codebook_cases = _cases(LIBRARY_FIELDS), _cases(CODEBOOK_FIELDS)
    assert run_cli("library", "info", artefacts / "bank.npz").exit_code == 0
    image = noise_tiles(tmp_path / "image", 1, (16, 16), np.random.default_rng(2)) / "0.png"
    assert run_cli("vq", "compress", image, "--codebook", artefacts / "book.npz", "-o", tmp_path / "ok.png").exit_code == 0
    for field, name in library_cases:
        path = _fuzzed(artefacts / "bank.npz", tmp_path / "lib.npz", LIBRARY, field, WRONG[name])
        line = one_line_error(run_cli("library", "info", path), "lib.npz", code=1)
        assert len(line) < 400 and field[0] in line, (field, name, line)
    for field, name in codebook_cases:
        path = _fuzzed(artefacts / "book.npz", tmp_path / "book.npz", CODEBOOK, field, WRONG[name])
        line = one_line_error(run_cli("vq", "compress", image, "--codebook", path, "-o", tmp_path / "c.png"), "book.npz", code=1)
        assert len(line) < 400 and field[0] in line, (field, name, line)
    assert not (tmp_path / "c.png").exists()
    record_property("cases", len(library_cases) + len(codebook_cases))
    print(f"\nschema fuzz: {len(library_cases)} library and {len(codebook_cases)} codebook header cases")
