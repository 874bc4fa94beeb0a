"""A picture of VGG19 activations: for each layer, its strongest channels side by side."""

from __future__ import annotations

import numpy as np

from jaxmosaic.image import resize

__all__ = ["feature_montage"]


def feature_montage(features: dict[str, np.ndarray], *, channels: int = 8, cell: int = 96) -> np.ndarray:
    """One row per layer, `channels` cells per row: the channels with the highest mean activation.

    Each cell is normalised to its own [0, 1] range and shown in grey. Returns HWC float32.
    """
    rows = []
    for value in features.values():
        strongest = np.argsort(value.mean(axis=(0, 1)))[::-1][:channels]
        cells = []
        for index in strongest:
            plane = value[..., index]
            low, high = plane.min(), plane.max()
            plane = (plane - low) / (high - low) if high > low else np.zeros_like(plane)
            cells.append(np.asarray(resize(np.repeat(plane[..., None], 3, axis=-1), cell, cell, method="nearest")))
        while len(cells) < channels:
            cells.append(np.zeros((cell, cell, 3), np.float32))
        rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=1.0) for c in cells], axis=1))
    return np.concatenate(rows, axis=0)
