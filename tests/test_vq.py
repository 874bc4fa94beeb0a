"""Patch VQ: patches against a numpy loop, k-means against scikit-learn, VQ round trips, histograms,
cosine distances against SciPy, and clustering that recovers two groups of images."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmosaic.clustering
from helpers import sample_image
from jaxmosaic.clustering import kmeans, kmeans_plusplus, nearest_centers
from jaxmosaic.image import resize
from jaxmosaic.techniques.vq import (
    cluster_images,
    code_histograms,
    cosine_distances,
    extract_patches,
    sample_patches,
    vq_decode,
    vq_encode,
)
from references import squared_distances


def numpy_patches(image, size, stride, normalize):
    """The original article's double loop, with the last positions included (range up to h - size inclusive)."""
    h, w = image.shape[:2]
    rows = []
    for y in range(0, h - size + 1, stride):
        row = []
        for x in range(0, w - size + 1, stride):
            p = image[y : y + size, x : x + size].astype(np.float64)
            if normalize != "rgb":
                p = p.mean(axis=2, keepdims=True)
            if normalize in ("center", "contrast"):
                p = p - p.mean()
            if normalize == "contrast":
                p = p / max(p.std(), 0.1)
            row.append(p)
        rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("normalize", ["gray", "rgb", "center", "contrast"])
def test_extract_patches_equals_a_numpy_loop(normalize, variant):
    images = np.random.default_rng(0).random((2, 13, 17, 3)).astype(np.float32)
    images[1, :6] = 0.5  # flat patches: "contrast" must not divide by ~0
    expected = np.stack([numpy_patches(image, 4, 3, normalize) for image in images])
    assert expected.shape[1:3] == (4, 5)  # y in 0, 3, 6, 9 = 13 - 4: the last row of positions is in
    ours = variant(lambda x: extract_patches(x, 4, 3, normalize=normalize), images)  # NHWC: a batch inside
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def blobs(n=600, d=5, centers=6, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 4, (centers, d))
    return (means[rng.integers(0, centers, n)] + rng.normal(0, 1, (n, d))).astype(np.float32)


def test_lloyd_never_raises_the_inertia_and_matches_scikit_learn():
    from sklearn.cluster import KMeans

    data = blobs(2000, 8, 20)
    result = kmeans(jax.random.PRNGKey(0), data, 20, max_iter=50, tol=0.0)
    history = np.asarray(result.history)[: int(result.iterations)]
    assert 3 <= len(history) <= 50  # with tol = 0 it stops only when no centre moves
    assert np.all(np.isnan(np.asarray(result.history)[len(history):]))
    assert np.all(np.diff(history) <= 1e-6 * history[0])
    assert float(result.inertia) <= history[-1] * (1 + 1e-6)
    labels, distances = nearest_centers(data, result.centers)
    np.testing.assert_array_equal(result.labels, labels)
    brute = squared_distances(data, np.asarray(result.centers))
    np.testing.assert_array_equal(result.labels, brute.argmin(1))
    assert float(result.inertia) == pytest.approx(brute.min(1).sum(), rel=1e-5)
    reference = KMeans(20, n_init=1, random_state=0).fit(data).inertia_
    assert float(result.inertia) <= 1.02 * reference
    again = kmeans(jax.random.PRNGKey(0), data, 20, max_iter=50, tol=0.0)
    np.testing.assert_array_equal(again.centers, result.centers)  # deterministic for a key


def test_tolerance_stops_early_and_mini_batch_comes_close():
    data = blobs()
    full = kmeans(jax.random.PRNGKey(1), data, 6, max_iter=100, tol=1e-4)
    assert int(full.iterations) < 100
    mini = kmeans(jax.random.PRNGKey(1), data, 6, max_iter=200, batch_size=64)
    assert float(mini.inertia) <= 1.1 * float(full.inertia)
    assert int(mini.iterations) == 200


def test_empty_clusters_are_reseeded():
    rng = np.random.default_rng(2)
    data = np.concatenate([np.zeros((300, 3)), rng.normal(0, 1, (30, 3))]).astype(np.float32)
    # random seeding picks several copies of the same point: all but one of those clusters empty out
    result = kmeans(jax.random.PRNGKey(0), data, 8, init="random", max_iter=20, tol=0.0)
    counts = np.bincount(np.asarray(result.labels), minlength=8)
    assert np.all(counts > 0)
    assert len(np.unique(np.asarray(result.centers), axis=0)) == 8


def test_kmeans_plusplus_spreads_the_seeds():
    data = blobs(600, 2, 6, seed=3)
    seeds = np.asarray(kmeans_plusplus(jax.random.PRNGKey(0), data, 6))
    assert all(any(np.all(seed == row) for row in data) for seed in seeds)  # seeds are data points
    truth = kmeans(jax.random.PRNGKey(0), data, 6, max_iter=100).centers
    nearest = np.sqrt(((seeds[:, None] - np.asarray(truth)[None]) ** 2).sum(-1)).argmin(0)
    assert len(set(nearest.tolist())) >= 5  # (nearly) one seed per blob


def test_kmeans_refuses_bad_settings():
    with pytest.raises(ValueError, match="k = 11 clusters need at least k points; there are 10"):
        kmeans(jax.random.PRNGKey(0), np.zeros((10, 2), np.float32), 11)
    with pytest.raises(ValueError, match="init"):
        kmeans(jax.random.PRNGKey(0), np.zeros((10, 2), np.float32), 2, init="farthest")


@pytest.mark.parametrize("normalize", ["gray", "rgb", "contrast"])
def test_vq_round_trip_with_the_exact_patches_as_codebook(normalize):
    image = np.random.default_rng(4).random((16, 24, 3)).astype(np.float32)
    patches = np.asarray(extract_patches(image, 4, 4, normalize=normalize))
    codebook = patches.reshape(-1, patches[0, 0].size)[::-1]  # every patch is an entry
    encoded = vq_encode(image, codebook, 4, normalize=normalize)
    np.testing.assert_array_equal(np.asarray(encoded.codes).ravel(), np.arange(len(codebook))[::-1])
    rebuilt = np.asarray(vq_decode(encoded, codebook, (16, 24), 4))
    expected = image if normalize == "rgb" else image.mean(axis=2, keepdims=True)
    np.testing.assert_allclose(rebuilt, expected, atol=1e-5)


def test_vq_decode_averages_overlaps():
    rng = np.random.default_rng(5)
    codebook = rng.random((5, 16)).astype(np.float32)
    codes = rng.integers(0, 5, (3, 4))
    from jaxmosaic.techniques.vq import VQCodes

    zero = np.zeros((3, 4, 1, 1, 1), np.float32)
    rebuilt = np.asarray(vq_decode(VQCodes(jnp.asarray(codes), zero, zero + 1), codebook, (8, 11), 4, 2))
    total, count = np.zeros((8, 11)), np.zeros((8, 11))
    for i in range(3):
        for j in range(4):
            total[2 * i : 2 * i + 4, 2 * j : 2 * j + 4] += codebook[codes[i, j]].reshape(4, 4)
            count[2 * i : 2 * i + 4, 2 * j : 2 * j + 4] += 1
    np.testing.assert_allclose(rebuilt[..., 0], total / np.maximum(count, 1), atol=1e-6)
    assert np.all(rebuilt[:, 10] == 0)  # the last column is narrower than a stride: uncovered


def test_histograms_and_cosine_distances_match_numpy_and_scipy():
    from scipy.spatial.distance import cdist

    codes = np.random.default_rng(6).integers(0, 7, (4, 50))
    histograms = np.asarray(code_histograms(codes, 7))
    np.testing.assert_array_equal(histograms, np.stack([np.bincount(c, minlength=7) for c in codes]))
    np.testing.assert_allclose(cosine_distances(histograms), cdist(histograms, histograms, "cosine"), atol=1e-6)


def test_clustering_recovers_two_groups_of_crops():
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    brick, astronaut = sample_image("brick.png"), sample_image("astronaut.png")
    # crops large enough to hold a fair share of their image: brick walls against a portrait
    crops = [np.asarray(resize(source[y : y + 160, x : x + 160], 80, 80))
             for source in (brick, astronaut) for y, x in ((0, 0), (0, 96), (96, 0), (96, 96), (48, 48))]
    data = sample_patches(jax.random.PRNGKey(0), crops, 8, 4, 3000)
    codebook = kmeans(jax.random.PRNGKey(1), data, 64, max_iter=30).centers
    histograms = []
    for crop in crops:
        labels, _ = nearest_centers(np.asarray(extract_patches(crop, 8, 4)).reshape(-1, 64), codebook)
        histograms.append(np.asarray(code_histograms(labels, 64)))
    distances = np.asarray(cosine_distances(np.stack(histograms)))
    groups, tree = cluster_images(distances, 2)
    assert set(groups[:5].tolist()) != set(groups[5:].tolist())
    assert len(set(groups[:5].tolist())) == 1 and len(set(groups[5:].tolist())) == 1
    np.testing.assert_allclose(tree, linkage(squareform(distances, checks=False), "average"), atol=1e-6)


@pytest.mark.parametrize("direct", [True, False])
def test_nearest_centers_equals_brute_force(direct):
    km = jaxmosaic.clustering
    rng = np.random.default_rng(7)
    data, centers = rng.normal(size=(1000, 9)).astype(np.float32), rng.normal(size=(256, 9)).astype(np.float32)
    # direct=16: the match_tiles path of large codebooks
    labels, distances = km.nearest_centers(data, centers, block=300, direct=km.DIRECT_CENTERS if direct else 16)
    brute = squared_distances(data, centers)
    np.testing.assert_array_equal(labels, brute.argmin(1))
    np.testing.assert_allclose(distances, brute.min(1), rtol=1e-5, atol=1e-5)
