"""The original photomosaic at its scale: the Gabor bank, the streaming library build (against an
in-memory build, killed and resumed, over 4 forced devices and over 2 processes), matching with
|score|, and the CLI from bank to mosaic."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from helpers import ROOT, SAMPLES, cli_command, free_port, noise_tiles, remembered, run_cli, unoptimised_env
from jaxmosaic.search import svd_compress
from jaxmosaic.techniques.mosaic import ColorMode, FeatureConfig, batched_features, feature_function, load_library
from jaxmosaic.techniques.mosaic.bank import BankGrid, bank_axes, bank_parameters, parse_bank_grid, render_bank
from jaxmosaic.techniques.mosaic.stream import BankSource, build_folder, stream_library, top_eigen
from jaxmosaic.weights import random_alexnet
from references import opencv_gabor

SUBSET = BankGrid(4, 5, 5, 5)  # 500 tiles
K = 50  # the subset's dimensions kept (at 100, the randomized eigenvectors of its 9216 x 9216 G took 39 s of CPU, at 50 26 s)
SMALL = BankGrid(2, 3, 4, 2)  # 48 tiles


def test_bank_grid_order_and_renderer_equal_opencv():
    grid = BankGrid()
    assert grid.size == 312_500 and str(grid) == "50,10,25,25" and parse_bank_grid("2,2,3,3").size == 36
    sigma, theta, lambd, gamma = bank_axes(grid)
    np.testing.assert_allclose(bank_parameters(grid, [0, 1, 25, 625, 6250, 312_499]),
                               [[sigma[0], theta[0], lambd[0], gamma[0]], [sigma[0], theta[0], lambd[0], gamma[1]],
                                [sigma[0], theta[0], lambd[1], gamma[0]], [sigma[0], theta[1], lambd[0], gamma[0]],
                                [sigma[1], theta[0], lambd[0], gamma[0]], [75, np.pi, 100, 1.0]], rtol=1e-6)
    indices = np.random.default_rng(0).choice(grid.size, 24, replace=False)
    tiles = render_bank(grid, indices)
    assert tiles.shape == (24, 224, 224, 3)
    for tile, row in zip(tiles, bank_parameters(grid, indices).astype(np.float64)):
        kernel = opencv_gabor(224, *row, math.pi / 2)[:-1, :-1]
        expected = (kernel - kernel.min()) / (kernel.max() - kernel.min())
        assert np.abs(tile[..., 0] - expected).max() < 1e-5
    with pytest.raises(Exception, match="four whole numbers"):
        parse_bank_grid("50,10,25")
    try:
        import cv2
    except ImportError:
        return
    row = bank_parameters(grid, [123_456])[0].astype(np.float64)
    kernel = cv2.getGaborKernel((224, 224), *row, math.pi / 2)
    np.testing.assert_allclose(opencv_gabor(224, *row, math.pi / 2), kernel, atol=1e-12)


@pytest.fixture(scope="session")
def alexnet64():
    # the very arrays in-process `--weights random` library builds of seed 0 get (drawn once: 8 s of CPU)
    params = remembered(("--weights random", 0, "alexnet"), lambda: random_alexnet(jax.random.PRNGKey(0)))
    return params, FeatureConfig.alexnet(ColorMode.multiply, size=64, weights="random-0")


@pytest.fixture(scope="session")
def streamed(alexnet64, tmp_path_factory):
    """The 500-tile subset built in chunks of 64, and its features computed in memory."""
    params, settings = alexnet64
    out = tmp_path_factory.mktemp("stream") / "bank.npz"
    library = stream_library(BankSource(SUBSET), settings, ColorMode.multiply, out, params=params, weights=settings.weights,
                             k=K, chunk=64)
    features = batched_features(feature_function(settings, params), render_bank(SUBSET, np.arange(SUBSET.size), 64), 250)
    return out, library, features


def _same_library(a_basis, a_rows, b_basis, b_rows, tolerance=1e-4):
    angle = scipy.linalg.subspace_angles(np.asarray(a_basis, np.float64), np.asarray(b_basis, np.float64)).max()
    signs = np.sign(np.sum(np.asarray(a_rows) * np.asarray(b_rows), axis=0))
    return angle, float(np.abs(np.asarray(a_rows) * signs - b_rows).max())


def test_streaming_build_equals_an_in_memory_build(streamed):
    out, library, features = streamed
    assert library.features.shape == (500, K) and library.projected and library.svd["basis"].shape == (9216, K)
    assert not build_folder(out).exists(), "the build folder is removed once the library is written"
    compressed = svd_compress(jnp.asarray(features), K, renormalize=False)
    angle, rows = _same_library(compressed.basis, np.asarray(compressed.dictionary), library.svd["basis"], library.features)
    # measured at K = 50: angle 4.0e-5, rows 5.9e-6, singular values 1.2e-6, energy 1.8e-7 (at 100: 3.9e-4, 1.1e-5)
    assert angle < 1e-3 and rows < 1e-4, (angle, rows)
    np.testing.assert_allclose(library.svd["singular_values"], compressed.singular_values, rtol=1e-4)
    assert abs(library.svd["energy"] - float(compressed.energy)) < 1e-5
    loaded = load_library(out)
    np.testing.assert_array_equal(loaded.features, library.features)
    assert loaded.bank == tuple(SUBSET) and loaded.projected and len(loaded) == 500
    np.testing.assert_allclose(loaded.render([0, 499], 32), render_bank(SUBSET, [0, 499], 32))


def test_top_eigen_randomized_equals_exact():
    """Above 2048 dimensions: randomized subspace iteration, on a spectrum falling as features' do.
    The exact eigenpairs are the construction's own: 0.95^i along the orthonormal columns of `basis`
    (LAPACK's eigh of the 2500 x 2500 matrix agrees with them to 1e-15, and took 18 s of CPU)."""
    basis, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((2500, 300)))
    gram = np.asfortranarray((basis * 0.95 ** np.arange(300)) @ basis.T)
    values, vectors = top_eigen(gram, 20)
    np.testing.assert_allclose(values, 0.95 ** np.arange(20), rtol=1e-9)
    assert scipy.linalg.subspace_angles(vectors, basis[:, :20]).max() < 1e-6


def test_killed_build_resumes_from_its_last_chunk(alexnet64, streamed, tmp_path):
    params, settings = alexnet64
    out = tmp_path / "bank.npz"
    calls = []

    def stop_after_three(done, total):
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stream_library(BankSource(SUBSET), settings, ColorMode.multiply, out, params=params, weights=settings.weights, k=K,
                       chunk=64, progress=stop_after_three)
    work = build_folder(out)
    assert sorted(p.name for p in work.glob("chunk-*.npz")) == [f"chunk-00000{i}.npz" for i in range(3)] and not out.exists()
    seen = []
    original = BankSource.inputs

    def counted(self, start, stop):
        seen.append(start)
        return original(self, start, stop)

    BankSource.inputs = counted
    try:
        library = stream_library(BankSource(SUBSET), settings, ColorMode.multiply, out, params=params, weights=settings.weights,
                                 k=K, chunk=64, resume=True)
    finally:
        BankSource.inputs = original
    assert seen == [192, 256, 320, 384, 448], "only the chunks not finished are embedded again"
    assert library.build["resumed"] == 192 and streamed[1].build["resumed"] == 0  # the rate counts only embedded tiles
    np.testing.assert_array_equal(library.features, streamed[1].features)
    np.testing.assert_array_equal(library.svd["basis"], streamed[1].svd["basis"])


BUILD = ["library", "build", "gabor-bank", "--bank-grid", str(SMALL), "--features", "alexnet", "--weights", "random",
         "--svd-k", "20", "--chunk", "8", "--max-memory", "4"]  # the budget named: three builds run at once beside other tests


def _env(devices: int = 1) -> dict:
    # unoptimised XLA (about half the compile time): the libraries are compared at bars far above
    # the last bits in which its code and this process's differ
    return unoptimised_env(JAXMOSAIC_NO_COMPILATION_CACHE="1", PYTHONPATH=str(ROOT),
                           XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def test_devices_and_processes_give_the_library_of_one_process(tmp_path):
    """One process on one device (here), one process over 4 forced host devices, and 2 processes
    (jax.distributed on 127.0.0.1, CPU collectives) build the same 48-tile AlexNet library. Its
    avgpool is mean-pooled (256 values, the exact eigen path): the 9216 flat values would spend
    most of each process's time on the eigenvectors of a 9216 x 9216 matrix, which the streaming
    build above checks once."""
    one = tmp_path / "one.npz"
    pooled = [*BUILD, "--pool", "mean"]
    result = run_cli(*pooled, "-o", one, "--devices", "1")
    assert result.exit_code == 0, result.output
    four, two = tmp_path / "four.npz", tmp_path / "two.npz"
    port = free_port()
    runs = [(cli_command(*pooled, "-o", four, module=True), _env(4))]  # the three processes run at once
    runs += [(cli_command(*pooled, "-o", two, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
                          i, module=True), _env(1)) for i in range(2)]
    workers = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args, env in runs]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [err[-2000:] for _, err in outputs]
    assert "over 4 device(s)" in outputs[0][1]
    assert "2 process(es)" in outputs[1][1] and "process 0 wrote" in outputs[2][1]
    reference = load_library(one)
    for path in (four, two):
        other = load_library(path)
        angle, rows = _same_library(reference.svd["basis"], reference.features, other.svd["basis"], other.features)
        assert angle < 1e-3 and rows < 1e-4, (path.name, angle, rows)
        assert abs(other.svd["energy"] - reference.svd["energy"]) < 1e-6
    assert not any(p.name.startswith("two.npz.build") for p in tmp_path.iterdir())


SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
    import jax, numpy as np
    from jax.sharding import Mesh
    from jaxmosaic.search import l2_normalize, match_sharded, match_tiles, shard_dictionary
    rng = np.random.default_rng(0)
    mesh = Mesh(np.asarray(jax.devices()), ("devices",))
    queries = np.asarray(l2_normalize(rng.normal(size=(50, 16)).astype(np.float32)))
    tiles = np.asarray(l2_normalize(rng.normal(size=(1001, 16)).astype(np.float32)))
    for k in (1, 5):
        for absolute in (False, True):
            s1, i1 = match_tiles(queries, tiles, top_k=k, absolute=absolute)
            s4, i4 = jax.jit(match_sharded, static_argnames=("mesh", "tiles", "top_k", "absolute"))(
                queries, shard_dictionary(tiles, mesh), mesh=mesh, tiles=1001, top_k=k, absolute=absolute)
            assert np.array_equal(np.asarray(i1), np.asarray(i4)), (k, absolute)
            assert np.allclose(np.asarray(s1), np.asarray(s4), atol=1e-6)
    print("sharded matching equals one device")
""")


def test_sharded_matching_equals_one_device():
    done = subprocess.run([sys.executable, "-c", SHARDED], env=_env(4), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "equals one device" in done.stdout


def test_bank_mosaic_with_abs_scores_from_the_cli(tmp_path):
    library = tmp_path / "bank.npz"
    result = run_cli("library", "build", "gabor-bank", "--bank-grid", "2,2,3,3", "--features", "alexnet", "--weights",
                     "random", "--svd-k", "12", "--chunk", "16", "-o", library)
    assert result.exit_code == 0, result.output
    out, metrics = tmp_path / "mosaic.png", tmp_path / "metrics.json"
    result = run_cli("mosaic", SAMPLES / "astronaut.png", "-o", out, "--tiles", library, "--score", "abs",
                     "--weights", "random", "--cols", "6", "--render", "16", "--metrics", metrics)
    assert result.exit_code == 0, result.output
    summary = json.loads(metrics.read_text())
    assert summary["library"]["tiles"] == 36 and summary["library"]["k"] == 12 and summary["library"]["features"] == 9216
    assert 0.9 < summary["library"]["energy_kept"] <= 1.0 and summary["library"]["match_seconds"] > 0
    assert summary["settings"]["score"] == "abs" and summary["mosaic"]["patches"] == 36
    scores = summary["mosaic"]["mean_score"]
    assert 0 < scores <= 1.0
    # the memory and option checks refuse before starting, in one line
    refused = run_cli(*BUILD, "-o", tmp_path / "x.npz", "--max-memory", "0.05")
    assert refused.exit_code == 1 and "needs about" in refused.output and "--chunk" in refused.output
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "x.npz.build").exists()
    bad = run_cli(*BUILD, "-o", tmp_path / "y.npz", "--coordinator", "127.0.0.1:1")
    assert bad.exit_code == 1 and "go together" in bad.output
    bad = run_cli(*BUILD[:3], "--bank-grid", "1,2", "-o", tmp_path / "z.npz")
    assert bad.exit_code == 1 and "--bank-grid" in bad.output


def test_streaming_a_folder_equals_its_in_memory_library(tmp_path):
    """A folder with an unreadable file, colour features (d = 64: the exact eigen path), chunks of 5."""
    from jaxmosaic.techniques.mosaic import build_library
    from jaxmosaic.techniques.mosaic.stream import FolderSource

    folder = noise_tiles(tmp_path / "tiles", 23, (20, 24), np.random.default_rng(2), name="t{:02d}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    settings = FeatureConfig.color(ColorMode.none)
    library = stream_library(FolderSource(folder, settings.size), settings, ColorMode.none, tmp_path / "lib.npz", k=8, chunk=5)
    memory = build_library(str(folder), settings, ColorMode.none)
    assert library.entries == memory.entries and library.skipped == memory.skipped == ["broken.png"]
    compressed = svd_compress(jnp.asarray(memory.features), 8, renormalize=False)
    angle, rows = _same_library(compressed.basis, np.asarray(compressed.dictionary), library.svd["basis"], library.features)
    assert angle < 1e-4 and rows < 1e-5, (angle, rows)
    assert load_library(tmp_path / "lib.npz").tile_path(3).name == "t03.png"
