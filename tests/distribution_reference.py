"""NumPy references of the distribution losses, written from the papers' definitions: the sliced
Wasserstein loss as the authors' `slicing_loss` computes one layer (project, sort, mean square),
with unequal sizes compared at quantiles, and Risser et al.'s histogram loss (numpy's histogram,
histogram matching by rank)."""

from __future__ import annotations

import numpy as np


def sliced_wasserstein_numpy(features, target, directions) -> float:
    """mean_(i,p) (sort(F v_p)_i - Q_p((i + 1/2) / M))^2 in float64, Q_p the target's sorted
    projections interpolated at levels (j + 1/2) / M'."""
    features = np.asarray(features, np.float64).reshape(-1, np.shape(features)[-1])
    target = np.asarray(target, np.float64).reshape(-1, np.shape(target)[-1])
    directions = np.asarray(directions, np.float64)
    mine = np.sort(features @ directions, axis=0)
    theirs = np.sort(target @ directions, axis=0)
    m, m_target = mine.shape[0], theirs.shape[0]
    levels = (np.arange(m) + 0.5) / m
    grid = (np.arange(m_target) + 0.5) / m_target
    resampled = np.stack([np.interp(levels, grid, theirs[:, p]) for p in range(theirs.shape[1])], axis=1)
    return float(np.mean((mine - resampled) ** 2))


def histogram_remap_numpy(features, target, bins: int) -> np.ndarray:
    """Each channel of `features` matched to `target`'s `bins`-bin histogram (numpy.histogram over
    the channel's range): value -> inverse piecewise-linear CDF at (rank + 1/2) / M."""
    features = np.asarray(features, np.float64)
    target = np.asarray(target, np.float64)
    out = np.empty_like(features)
    m = features.shape[0]
    for c in range(features.shape[1]):
        counts, edges = np.histogram(target[:, c], bins=bins, range=(target[:, c].min(), target[:, c].max()))
        cdf = np.concatenate([[0.0], np.cumsum(counts) / target.shape[0]])
        ranks = np.empty(m, np.int64)
        ranks[np.argsort(features[:, c], kind="stable")] = np.arange(m)
        out[:, c] = np.interp((ranks + 0.5) / m, cdf, edges)
    return out


def histogram_loss_numpy(features, target, bins: int) -> tuple[float, np.ndarray]:
    """(1/(M N)) ||F - R(F)||^2 and its gradient 2/(M N) (F - R(F)) with R held constant."""
    features = np.asarray(features, np.float64)
    residual = features - histogram_remap_numpy(features, target, bins)
    return float(np.mean(residual**2)), 2.0 * residual / residual.size
