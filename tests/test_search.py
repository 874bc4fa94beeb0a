"""SVD compression and blocked top-k matching against numpy brute force."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmosaic.search import Compressed, compress_queries, l2_normalize, match_memory_bytes, match_tiles, svd_compress


def unit_rows(rng, n, t):
    x = rng.standard_normal((n, t)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(queries, dictionary, top_k, absolute=False):
    scores = queries.astype(np.float64) @ dictionary.T.astype(np.float64)
    if absolute:
        scores = np.abs(scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("top_k", [1, 5])
@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("n", [300, 1000, 1037])
def test_match_tiles_equals_brute_force(top_k, absolute, n):
    rng = np.random.default_rng(n + top_k)
    queries, dictionary = unit_rows(rng, 150, 24), unit_rows(rng, n, 24)
    # small blocks so several query and tile blocks are used, and the last tile block overlaps
    match = jax.jit(functools.partial(match_tiles, top_k=top_k, absolute=absolute, query_block=64, tile_block=256))
    scores, indices = match(queries, dictionary)
    ref_scores, ref_indices = brute_force(queries, dictionary, top_k, absolute)
    assert scores.shape == indices.shape == (150, top_k)
    np.testing.assert_array_equal(np.asarray(indices), ref_indices)
    np.testing.assert_allclose(np.asarray(scores), ref_scores, atol=2e-6)


def test_match_tiles_eager_and_vmap():
    rng = np.random.default_rng(3)
    dictionary = unit_rows(rng, 500, 16)
    batches = np.stack([unit_rows(rng, 40, 16) for _ in range(3)])
    eager = [match_tiles(q, dictionary, top_k=3, tile_block=128) for q in batches]
    mapped = jax.vmap(lambda q: match_tiles(q, dictionary, top_k=3, tile_block=128))(batches)
    for i, (scores, indices) in enumerate(eager):
        np.testing.assert_array_equal(np.asarray(mapped[1][i]), np.asarray(indices))
        np.testing.assert_array_equal(np.asarray(indices), brute_force(batches[i], dictionary, 3)[1])


def test_match_tiles_rejects_bad_shapes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="features"):
        match_tiles(unit_rows(rng, 4, 8), unit_rows(rng, 10, 9))
    with pytest.raises(ValueError, match="top_k"):
        match_tiles(unit_rows(rng, 4, 8), unit_rows(rng, 10, 8), top_k=11)


def test_svd_compress_exact_matches_numpy():
    rng = np.random.default_rng(1)
    dictionary = unit_rows(rng, 400, 40)
    compressed = svd_compress(dictionary, 12)
    _, s, vt = np.linalg.svd(dictionary.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(np.asarray(compressed.singular_values), s[:12], rtol=1e-4)
    # the same subspace: projections onto it agree, whatever the signs of the vectors
    ours = np.asarray(compressed.basis) @ np.asarray(compressed.basis).T
    np.testing.assert_allclose(ours, vt[:12].T @ vt[:12], atol=1e-4)
    np.testing.assert_allclose(float(compressed.energy), np.sum(s[:12] ** 2) / np.sum(s**2), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(compressed.dictionary), axis=1), 1.0, rtol=1e-5)
    # compressed matching equals brute force in the compressed space
    queries = unit_rows(rng, 90, 40)
    projected = np.asarray(compress_queries(queries, compressed))
    _, indices = match_tiles(projected, compressed.dictionary, top_k=4, tile_block=128)
    np.testing.assert_array_equal(np.asarray(indices), brute_force(projected, np.asarray(compressed.dictionary), 4)[1])


def test_svd_compress_randomized_finds_the_leading_subspace():
    rng = np.random.default_rng(2)
    low_rank = rng.standard_normal((600, 8)) @ rng.standard_normal((8, 64)) * 3
    dictionary = (low_rank + 0.01 * rng.standard_normal((600, 64))).astype(np.float32)
    exact = svd_compress(dictionary, 8)
    fast = svd_compress(dictionary, 8, method="randomized", key=jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(fast.singular_values), np.asarray(exact.singular_values), rtol=1e-3)
    np.testing.assert_allclose(np.asarray(fast.basis @ fast.basis.T), np.asarray(exact.basis @ exact.basis.T), atol=1e-3)
    assert float(fast.energy) > 0.999


def test_compressed_scores_are_cosines_in_the_subspace():
    """Re-normalised rows rank a tile by its direction in the subspace, not by how much of it the
    subspace keeps: B points exactly along the query there but keeps only 75% of its length."""
    basis = jnp.eye(3, 2)
    dictionary = l2_normalize(jnp.asarray([[0.8, 0.6, 0.0], [0.9, 0.0, 0.8]]))
    query = jnp.asarray([[1.0, 0.0, 0.0]])
    compressed = Compressed(basis, l2_normalize(dictionary @ basis), jnp.ones(2), jnp.asarray(1.0))
    scores, indices = match_tiles(compress_queries(query, compressed), compressed.dictionary, top_k=2)
    np.testing.assert_allclose(np.asarray(scores), [[1.0, 0.8]], atol=1e-6)
    assert np.asarray(indices).tolist() == [[1, 0]]
    plain = query @ basis @ (dictionary @ basis).T
    assert float(plain[0, 0]) > float(plain[0, 1])


def test_svd_compress_rejects_bad_k():
    with pytest.raises(ValueError, match="between 1 and"):
        svd_compress(np.ones((5, 3), np.float32), 4)


def test_matching_memory_stays_bounded():
    """10,000 queries x 100,000 tiles x 512 features: the compiled program's temporaries < 1 GB."""
    queries = jax.ShapeDtypeStruct((10_000, 512), jnp.float32)
    dictionary = jax.ShapeDtypeStruct((100_000, 512), jnp.float32)
    for top_k in (1, 16):
        compiled = jax.jit(functools.partial(match_tiles, top_k=top_k)).lower(queries, dictionary).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        assert temp < 2**30, f"top_k={top_k}: {temp / 2**20:.0f} MiB of temporaries"
        # the score matrix alone would be 4 GB
        assert temp < 10_000 * 100_000 * 4 / 16
    assert match_memory_bytes(10_000, 512) < 2**30
