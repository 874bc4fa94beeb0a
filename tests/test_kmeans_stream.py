"""Streaming k-means: out-of-core Lloyd against scikit-learn's KMeans and in-memory Lloyd,
mini-batch against scikit-learn's MiniBatchKMeans.partial_fit, faiss's sample and split rule,
resuming, and 4 and 8 forced host devices against one (one subprocess).

Precision: the data are float32 in [0, 1) (as patches are) and scikit-learn runs on the same float32
array, so both sides sum in float32; 1e-5 on the centres is then ~100 float32 ulps at 1 and holds
as long as no point lies within rounding of a boundary between two centres, which for a few
thousand uniform points and a handful of iterations it does not (the labels of both agree exactly).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest
from scipy import stats
from sklearn.cluster import KMeans, MiniBatchKMeans

from jaxmosaic.clustering import kmeans
from jaxmosaic.kmeans_stream import (
    KMeansInterrupted,
    faiss_sample_size,
    lloyd_finalize,
    lloyd_init,
    lloyd_update,
    minibatch_init,
    minibatch_update,
    reservoir_init,
    reservoir_merge,
    reservoir_sample,
    reservoir_update,
    split_empty,
    stream_kmeans,
)

KEY = jax.random.PRNGKey(0)


def uniform(n=3000, d=6, seed=0):
    return np.random.default_rng(seed).random((n, d)).astype(np.float32)


def chunked(data, size):
    """A re-iterable stream of `data` in chunks of `size` rows (the last one ragged), from chunk `start` on."""
    return lambda start: (data[i : i + size] for i in range(start * size, len(data), size))


def test_exact_stream_equals_scikit_learn_lloyd_and_in_memory_lloyd():
    data = uniform()
    initial = data[:12].copy()
    reference = KMeans(12, init=initial, n_init=1, max_iter=6, algorithm="lloyd", tol=0.0).fit(data)
    assert reference.n_iter_ == 6
    in_memory = kmeans(KEY, data, 12, init=initial, max_iter=6, tol=0.0)
    np.testing.assert_allclose(np.asarray(in_memory.centers), reference.cluster_centers_, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(in_memory.labels), reference.labels_)
    streamed = stream_kmeans(chunked(data, 700), 12, key=KEY, method="exact", init=initial, max_iter=6)
    np.testing.assert_allclose(streamed.centers, reference.cluster_centers_, atol=1e-5)
    np.testing.assert_allclose(streamed.centers, np.asarray(in_memory.centers), atol=1e-6)
    # each pass's inertia is scikit-learn's of the centres it started from
    centres = initial
    for inertia in streamed.history:
        distances = ((data[:, None, :].astype(np.float64) - centres[None]) ** 2).sum(-1)
        assert inertia == pytest.approx(distances.min(1).sum(), rel=1e-5)
        labels = distances.argmin(1)
        centres = np.stack([data[labels == j].mean(0) for j in range(12)])
    assert streamed.iterations == 6 and streamed.reseeded == [0] * 6 and streamed.points == len(data)
    np.testing.assert_array_equal(streamed.counts, np.bincount(labels, minlength=12))  # the last pass's assignment


def test_padding_with_zero_weight_changes_nothing():
    data = uniform(500)
    centres = data[:5]
    plain = lloyd_update(lloyd_init(centres), data)
    padded = lloyd_update(lloyd_init(centres), np.concatenate([data, np.full((37, 6), 9.0, np.float32)]),
                          weights=np.r_[np.ones(500), np.zeros(37)])
    for ours, theirs in zip(plain, padded):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6)


def test_minibatch_equals_scikit_learn_partial_fit_chunk_by_chunk_and_nears_lloyd_on_blobs():
    rng = np.random.default_rng(1)
    means = rng.random((8, 4)) * 10
    data = (means[rng.integers(0, 8, 4000)] + rng.normal(0, 0.3, (4000, 4))).astype(np.float32)
    initial = data[rng.choice(4000, 8, replace=False)]
    reference = MiniBatchKMeans(8, init=initial, n_init=1, reassignment_ratio=0.0)
    state = minibatch_init(initial)
    for chunk in chunked(data, 512)(0):
        reference.partial_fit(chunk)
        state = minibatch_update(state, chunk)
    np.testing.assert_allclose(np.asarray(state.centers), reference.cluster_centers_, atol=1e-5)
    assert float(state.counts.sum()) == len(data)  # every point absorbed once; the rates 1 / count are checked by the centres

    seeded = np.asarray(means[:, :] + 0.5, np.float32)  # near each blob: both find the 8 blobs
    lloyd = KMeans(8, init=seeded, n_init=1, algorithm="lloyd").fit(data)
    batch = stream_kmeans(chunked(data, 256), 8, key=KEY, method="batch", init=seeded, max_iter=3)
    distances = ((data[:, None, :] - batch.centers[None]) ** 2).sum(-1).min(1).sum()
    assert distances == pytest.approx(lloyd.inertia_, rel=0.03)


def test_reservoir_keeps_exactly_256_k_uniformly_whatever_the_chunks():
    k, data = 4, uniform(2000, 3)
    size = faiss_sample_size(len(data), k)
    assert size == 1024 and faiss_sample_size(100, k) == 100

    def sample(chunk, seed=7):
        state = reservoir_init(size, 3)
        for part in chunked(data, chunk)(0):
            state = reservoir_update(state, part, seed=seed)
        return state

    whole = sample(2000)
    drawn = reservoir_sample(whole)
    assert drawn.shape == (1024, 3) and int(whole.seen) == 2000
    np.testing.assert_array_equal(reservoir_sample(sample(129)), drawn)  # chunking does not matter
    assert len(np.unique(drawn, axis=0)) == 1024 and np.isin(drawn[:, 0], data[:, 0]).all()
    # two processes' reservoirs (distinct ids) merge into the reservoir of the whole stream
    halves = [reservoir_update(reservoir_init(size, 3), data[:900], seed=7),
              reservoir_update(reservoir_init(size, 3), data[900:], seed=7, ids=np.arange(900, 2000))]
    np.testing.assert_array_equal(reservoir_sample(reservoir_merge(halves)), drawn)
    # uniform: over 400 seeds, every position of a 60-point stream is kept ~ 400 * 15 / 60 times
    small = np.arange(60, dtype=np.float32)[:, None]
    kept = np.zeros(60)
    for seed in range(400):
        kept[reservoir_sample(reservoir_update(reservoir_init(15, 1), small, seed=seed))[:, 0].astype(int)] += 1
    assert kept.sum() == 400 * 15
    assert stats.chisquare(kept).pvalue > 1e-3

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = stream_kmeans(chunked(data, 500), 64, key=KEY, method="sample", init="random", max_iter=3)
    assert result.samples == 2000 and any("at least 2496 training points" in str(w.message) for w in caught)
    result = stream_kmeans(chunked(data, 500), k, key=KEY, method="sample", init="random", max_iter=3)
    assert result.samples == 1024 and result.points == 2000


def test_empty_clusters_are_split_as_faiss_does():
    centers = np.arange(1, 13, dtype=np.float32).reshape(4, 3)
    counts = np.array([10.0, 0.0, 1.0, 1.0], np.float32)
    new, new_counts, splits = split_empty(KEY, centers, counts)
    new, new_counts = np.asarray(new), np.asarray(new_counts)
    assert int(splits) == 1
    np.testing.assert_array_equal(new_counts, [5.0, 5.0, 1.0, 1.0])  # only cluster 0 has count - 1 > 0: it is split
    sign = np.array([1, -1, 1], np.float32) / 1024
    np.testing.assert_allclose(new[1], centers[0] * (1 + sign), rtol=1e-6)
    np.testing.assert_allclose(new[0], centers[0] * (1 - sign), rtol=1e-6)
    np.testing.assert_array_equal(new[2:], centers[2:])
    # several empty clusters, in order, each from a cluster with count - 1 > 0 at its turn
    counts = np.array([30.0, 0.0, 0.0, 0.0], np.float32)
    new, new_counts, splits = split_empty(KEY, centers, counts)
    assert int(splits) == 3 and np.asarray(new_counts).sum() == 30 and (np.asarray(new_counts) > 0).all()
    assert len(np.unique(np.asarray(new), axis=0)) == 4
    # in a pass: a centre far from every point is re-seeded, and reported
    data = uniform(400, 3)
    initial = np.concatenate([data[:3], np.full((1, 3), 50.0, np.float32)])
    state = lloyd_update(lloyd_init(initial), data)
    moved, reseeded = lloyd_finalize(KEY, state)
    assert int(reseeded) == 1 and np.abs(np.asarray(moved)).max() < 1.01
    result = stream_kmeans(chunked(data, 100), 4, key=KEY, init=initial, max_iter=2)
    assert result.reseeded == [1, 0]


@pytest.mark.parametrize("method", ["exact", "batch", "sample"])
def test_a_run_stopped_and_resumed_equals_an_uninterrupted_one(method):
    data = uniform(1200, 4)
    run = {"key": KEY, "method": method, "init": "k-means++", "max_iter": 4, "sample_size": 600}
    whole = stream_kmeans(chunked(data, 250), 5, **run)
    saved = []

    def killed_after_pass_two(state):
        saved.append(state)
        if state["pass"] == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        stream_kmeans(chunked(data, 250), 5, on_pass=killed_after_pass_two, **run)
    resumed = stream_kmeans(chunked(data, 250), 5, state=saved[-1], **run)
    np.testing.assert_array_equal(resumed.centers, whole.centers)
    assert resumed.history == whole.history

    offered = []

    def ctrl_c_in_pass_three(count):
        offered.append(count)
        if len(offered) == 5 + 2 * per_pass + within:  # the sampling pass, two passes, a chunk or two of the third
            raise KeyboardInterrupt

    per_pass, within = (1, 1) if method == "sample" else (5, 2)  # Lloyd on the 600 sampled points takes them at once
    with pytest.raises(KMeansInterrupted) as stopped:
        stream_kmeans(chunked(data, 250), 5, on_chunk=ctrl_c_in_pass_three, **run)
    assert stopped.value.state["stage"] == 3 and stopped.value.state["chunk"] == within
    resumed = stream_kmeans(chunked(data, 250), 5, state=stopped.value.state, **run)
    np.testing.assert_allclose(resumed.centers, whole.centers, atol=1e-6)


DEVICES = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=8"  # every side runs it
import jax, numpy as np
from jaxmosaic.kmeans_stream import lloyd_init, lloyd_update, minibatch_init, minibatch_update, stream_kmeans
from jaxmosaic.sharding import device_mesh
assert jax.device_count() == 8
mesh = device_mesh(4)
data = np.random.default_rng(0).random((1001, 5)).astype(np.float32)
chunks = lambda start: (data[i : i + 333] for i in range(start * 333, len(data), 333))
out = {}
for name, m in (("one", None), ("four", mesh), ("eight", device_mesh(8))):
    lloyd = lloyd_update(lloyd_init(data[:7]), data[:333], mesh=m)
    batch = minibatch_update(minibatch_init(data[:7]), data[:333], mesh=m)
    run = stream_kmeans(chunks, 7, key=jax.random.PRNGKey(0), method="exact", init="random", max_iter=3, mesh=m)
    out[name] = [np.asarray(lloyd.sums), np.asarray(lloyd.counts), np.asarray(batch.centers), run.centers,
                 np.asarray(run.history)]
from jaxmosaic.techniques.vq_stream import nearest_codes
np.testing.assert_array_equal(nearest_codes(data[:333], data[:7], mesh=mesh), nearest_codes(data[:333], data[:7]))
sharding = lloyd_update(lloyd_init(data[:7]), data[:333], mesh=mesh).sums.sharding
assert sharding.is_fully_replicated, sharding
for one, four, eight in zip(out["one"], out["four"], out["eight"]):
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-5)
print("equal")
"""


def test_four_and_eight_forced_host_devices_equal_one():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(DEVICES)], check=False, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "equal", done.stderr[-3000:]


def test_vq_train_streams_a_folder_skips_unreadable_files_and_resumes_after_ctrl_c(tmp_path, monkeypatch):
    import contextlib
    import json

    from helpers import run_cli
    from PIL import Image

    import jaxmosaic.cli.vq
    from jaxmosaic.techniques.vq import extract_patches, load_codebook

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for index in range(3):
        Image.fromarray((rng.random((24 + 4 * index, 28, 3)) * 255).astype(np.uint8)).save(folder / f"{index}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    # a JPEG whose header passes the scan but whose data stop three quarters of the way: it fails in the first pass,
    # its 35 patches (between 1.png's and 2.png's) stay in the stream with weight 0
    Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(folder / "1t.jpg", quality=95)
    jpeg = (folder / "1t.jpg").read_bytes()
    (folder / "1t.jpg").write_bytes(jpeg[: len(jpeg) * 3 // 4])
    broken = f"{folder / 'broken.png'} (unreadable: not an image file, or a format Pillow cannot read)"
    truncated = f"{folder / '1t.jpg'} (unreadable: truncated image data)"
    options = ["--k", 4, "--exact", "--stride", 4]
    # chunks of 32 patches (several per pass, one straddling the truncated file): the resumed run
    # below must take them from its checkpoint, not from the memory it finds free
    monkeypatch.setattr(jaxmosaic.cli.vq, "plan_chunk", lambda *args, **kwargs: 32)
    whole = run_cli("vq", "train", folder, "-o", tmp_path / "whole.npz", "--iterations", 3, "--metrics", tmp_path / "m.json",
                    *options)
    assert whole.exit_code == 0, whole.output
    assert f"skipped {truncated}; its patches were left out" in whole.output
    metrics = json.loads((tmp_path / "m.json").read_text())["stream"]
    patches = np.concatenate([np.asarray(extract_patches(np.asarray(Image.open(folder / f"{i}.png"), np.float32) / 255, 8, 4))
                              .reshape(-1, 64) for i in range(3)])
    assert metrics["patches"] == len(patches) and metrics["chunk"] == 32
    assert metrics["skipped"] == [broken, truncated] and metrics["failed"] == [truncated]
    from jaxmosaic.techniques.vq import VQConfig
    from jaxmosaic.techniques.vq_stream import PatchStream

    pngs = [*(folder / f"{i}.png" for i in range(3)), folder / "broken.png"]
    stream = PatchStream(pngs, VQConfig(stride=4), band_bytes=3 * 28 * 8 * 8 * 3 * 4)  # bands of 3 rows
    stream.chunk = 50
    streamed = list(stream(0))
    assert [len(c) for c in streamed] == [50, 50, 8] and stream.skipped == [broken]
    np.testing.assert_allclose(np.concatenate(streamed), patches, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(list(stream(1))), patches[50:], atol=1e-6)
    assert [p["pass"] for p in metrics["passes"]] == [1, 2, 3]
    history = [p["inertia"] for p in metrics["passes"]]
    assert history == sorted(history, reverse=True)  # Lloyd never raises the inertia
    centres = load_codebook(tmp_path / "whole.npz").centers
    # the codebook is one more Lloyd step from the last pass's inertia: its own inertia is below it
    distances = ((patches[:, None, :].astype(np.float64) - centres[None]) ** 2).sum(-1).min(1).sum()
    assert distances <= history[-1] * (1 + 1e-6)

    calls = []

    @contextlib.contextmanager
    def ctrl_c_in_the_second_pass(*args, **kwargs):
        def update(done, total):  # 5 chunks a pass: the sampling pass, pass 1, then the 3rd chunk of pass 2
            calls.append(done)
            if len(calls) == 13:
                raise KeyboardInterrupt
        yield update

    monkeypatch.setattr(jaxmosaic.cli.vq, "rate_progress", ctrl_c_in_the_second_pass)
    checkpoint = tmp_path / "run"
    stopped = run_cli("vq", "train", folder, "-o", tmp_path / "resumed.npz", "--iterations", 3, "--checkpoint", checkpoint,
                      *options)
    assert stopped.exit_code == 130 and "interrupted; saved in" in stopped.output, stopped.output
    assert not (tmp_path / "resumed.npz").exists() and len(calls) == 13
    monkeypatch.undo()  # plan_chunk now picks its own chunk (a power of two above the 143 positions)
    resumed = run_cli("vq", "train", folder, "-o", tmp_path / "resumed.npz", "--iterations", 3, "--checkpoint", checkpoint,
                      "--resume", *options)
    assert resumed.exit_code == 0, resumed.output
    np.testing.assert_allclose(load_codebook(tmp_path / "resumed.npz").centers, centres, atol=1e-6)
    other = run_cli("vq", "train", folder, "-o", tmp_path / "other.npz", "--iterations", 3, "--checkpoint", checkpoint,
                    "--resume", "--k", 5, "--exact")
    assert other.exit_code != 0 and "holds a run with other settings" in other.output


def test_two_processes_equal_one(tmp_path):
    from helpers import ROOT, UNOPTIMISED, cli_command, free_port
    from PIL import Image

    from jaxmosaic.io.images import image_files
    from jaxmosaic.techniques.vq import VQConfig, load_codebook
    from jaxmosaic.techniques.vq_stream import PatchStream, train_codebook_stream

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for index in range(5):
        Image.fromarray((rng.random((24, 20 + 4 * index, 3)) * 255).astype(np.uint8)).save(folder / f"{index}.png")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("SLURM_", "OMPI_", "TPU_", "KUBERNETES_", "JAX_COORDINATOR"))}
    # XLA's unoptimised CPU code (half the compile time): it differs in the last bits, far below the bar
    env.update(JAXMOSAIC_NO_COMPILATION_CACHE="1", PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS=" ".join([UNOPTIMISED, env.get("XLA_FLAGS", "")]).strip())
    # exact Lloyd: each process streams its share and the passes' sums are added across the two;
    # the sample they start from is the one process's (their reservoirs merge, tested above)
    port = free_port()
    common = ["vq", "train", folder, "--k", 3, "--iterations", 3, "--stride", 4, "--exact", "--init", "random",
              "-o", tmp_path / "two.npz"]
    workers = [subprocess.Popen(cli_command(*common, "--coordinator", f"127.0.0.1:{port}", "--num-processes", 2,
                                            "--process-id", i, "--timeout", 60, module=True),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [worker.communicate(timeout=240) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs
    assert "process 1: done" in "".join(outputs[1])
    config = VQConfig(k=3, iterations=3, stride=4, init="random")
    one, _ = train_codebook_stream(config, PatchStream(image_files([folder]), config), "exact")
    np.testing.assert_allclose(load_codebook(tmp_path / "two.npz").centers, one.centers, atol=1e-5)


def test_sparse_code_histograms_equal_the_dense_ones_and_scipy_s_cosine_distances(tmp_path):
    from PIL import Image
    from scipy.spatial.distance import cdist

    from jaxmosaic.techniques.vq import Codebook, image_histograms
    from jaxmosaic.techniques.vq_stream import (
        sparse_cosine_distances,
        stream_histograms,
    )

    rng = np.random.default_rng(2)
    files, images = [], []
    for index in range(4):
        pixels = (rng.random((20 + 4 * index, 24, 3)) * 255).astype(np.uint8)
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(pixels).save(files[-1])
        images.append(pixels.astype(np.float32) / 255)
    (tmp_path / "small.png").write_bytes((tmp_path / "0.png").read_bytes())
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "small.png")
    book = Codebook(rng.random((16, 64)).astype(np.float32), 8, 4, "gray", {})
    histograms, kept, skipped = stream_histograms(book, [*files, tmp_path / "small.png"])
    assert kept == files and skipped == [f"{tmp_path / 'small.png'} (smaller than a 8-pixel patch)"]
    dense = image_histograms(book, images)
    np.testing.assert_array_equal(histograms.toarray(), dense)
    assert histograms.nnz == np.count_nonzero(dense)  # only the codes used are stored
    np.testing.assert_allclose(sparse_cosine_distances(histograms), cdist(dense, dense, "cosine"), atol=1e-6)


def test_given_initial_centres_are_checked_as_kmeans_checks_them():
    data = uniform(200, 3)
    for init in (data[:7], data[:5, :2]):
        with pytest.raises(ValueError) as streamed:
            stream_kmeans(chunked(data, 64), 5, key=KEY, init=init, max_iter=1)
        with pytest.raises(ValueError) as in_memory:
            kmeans(KEY, data, 5, init=init, max_iter=1)
        assert str(streamed.value) == str(in_memory.value)


def test_reservoir_update_leaves_the_state_it_was_given_whole():
    data = uniform(600, 4)
    before = reservoir_update(reservoir_init(100, 4), data[:300], seed=3)
    keys, rows = before.keys.copy(), before.rows.copy()
    after = reservoir_update(before, data[300:], seed=3)
    np.testing.assert_array_equal(before.keys, keys)
    np.testing.assert_array_equal(before.rows, rows)  # Ctrl-C between the two finds a whole reservoir
    assert not np.array_equal(after.rows, rows) and int(after.seen) == 600


def test_stream_memory_counts_merging_the_samples_of_several_processes():
    from jaxmosaic.kmeans_stream import stream_memory

    one = stream_memory(4096, 64, 65536, method="sample")
    # every process's sample (rows and keys) gathered, then joined: twice P x m x (4 d + 8) bytes
    assert stream_memory(4096, 64, 65536, method="sample", processes=2) - one == 2 * 2 * 256 * 4096 * (64 * 4 + 8)


def test_a_file_that_fails_mid_pass_weighs_nothing_and_a_huge_one_is_skipped_by_the_scan(tmp_path):
    from PIL import Image

    from jaxmosaic.errors import JaxmosaicError
    from jaxmosaic.techniques.vq import VQConfig, extract_patches
    from jaxmosaic.techniques.vq_stream import PatchStream

    rng = np.random.default_rng(4)
    pictures = [(rng.random((16, 20 + 4 * i, 3)) * 255).astype(np.uint8) for i in range(3)]
    files = [tmp_path / f"{i}.png" for i in range(3)]
    for path, picture in zip(files, pictures):
        Image.fromarray(picture).save(path)
    Image.fromarray((rng.random((16, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / "cut.jpg", quality=95)
    jpeg = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 3 // 4])
    Image.new("1", (10_000, 9_001)).save(tmp_path / "huge.png")  # 90,010,000 pixels: over load_image's limit
    config = VQConfig(stride=4)
    stream = PatchStream([files[0], tmp_path / "cut.jpg", *files[1:], tmp_path / "huge.png"], config)
    assert stream.files == [files[0], tmp_path / "cut.jpg", *files[1:]] and len(stream.skipped) == 1
    assert stream.skipped[0].startswith(f"{tmp_path / 'huge.png'} (unreadable: image is 10000x9001 = 90010000 pixels")
    stream.chunk = 16
    chunks = list(stream(0))
    weights = np.concatenate([c[1] if isinstance(c, tuple) else np.ones(len(c)) for c in chunks])
    starts = stream.starts
    np.testing.assert_array_equal(np.flatnonzero(weights == 0), np.arange(starts[1], starts[2]))  # cut.jpg's 15 patches
    assert stream.failed == [f"{tmp_path / 'cut.jpg'} (unreadable: truncated image data)"] and stream.skipped[1:] == stream.failed
    good = np.concatenate([np.asarray(extract_patches(p.astype(np.float32) / 255, 8, 4)).reshape(-1, 64) for p in pictures])
    initial = good[::9][:4]
    result = stream_kmeans(stream, 4, key=KEY, init=initial, max_iter=3)
    reference = KMeans(4, init=initial, n_init=1, max_iter=3, tol=0.0, algorithm="lloyd").fit(good)
    np.testing.assert_allclose(result.centers, reference.cluster_centers_, atol=1e-5)
    assert result.points == len(good) == 3 * 4 + 3 * 5 + 3 * 6
    # faiss's sample of the same stream holds only the good patches
    with pytest.warns(UserWarning, match="clustering 45 points to 4 centroids"):
        sampled = stream_kmeans(stream, 4, key=KEY, method="sample", init="random", max_iter=1)
    assert sampled.samples == len(good)
    with pytest.raises(JaxmosaicError, match="--num-processes: 5 processes share 4 image"):
        PatchStream([files[0], tmp_path / "cut.jpg", *files[1:]], config, processes=5, process=4)


@pytest.mark.parametrize("case", ["sample", "both", "batch", "resume", "memory", "k", "checkpoint", "devices"])
def test_streaming_refusals_are_one_line_and_write_nothing(tmp_path, case):
    from helpers import one_line_error, run_cli
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "a-file").write_text("")
    args = {"sample": ["--sample", "all"], "both": ["--sample", "faiss", "--exact"],
            "batch": ["--exact", "--batch-size", 8], "resume": ["--exact", "--resume"],
            "memory": ["--exact", "--k", 4, "--max-memory", 0.01], "k": ["--exact", "--k", 50],
            "checkpoint": ["--k", 4, "--checkpoint", tmp_path / "a-file"],
            "devices": ["--k", 4, "--devices", jax.local_device_count() + 1]}[case]
    expected = {"sample": "--sample: the only sampling rule is 'faiss'", "both": "--exact: --exact and --sample faiss",
                "batch": "--batch-size: --batch-size and --exact are two ways",
                "resume": "--resume: needs --checkpoint DIR", "memory": "--max-memory: k = 4 centres of 64 features need",
                "k": "--k: 50 is larger than the number of patches (9)",
                "checkpoint": f"--checkpoint: {tmp_path / 'a-file'} is a file",
                "devices": f"--devices {jax.local_device_count() + 1}: devices must be between 1 and the"}[case]
    one_line_error(run_cli("vq", "train", tmp_path / "small.png", "-o", tmp_path / "book.npz", *args), expected)
    assert not (tmp_path / "book.npz").exists() and not (tmp_path / "book-grid.png").exists()
