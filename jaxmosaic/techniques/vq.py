"""Patch vector quantisation: a k-means inventory of small patch shapes, VQ compression, histograms
of codes as image descriptors, and clustering of images by those histograms.

The seed's configuration: 8x8 patches at stride 4, channels averaged to grey, 70,000 patches,
k = 1024; compression replaces each non-overlapping patch by its centre; an image's descriptor is
its histogram of codes; images are compared by cosine distance and grouped by average-linkage
hierarchical clustering (SciPy, on the condensed distance matrix) into N clusters.

Images are float32 in [0, 1], HWC (or NHWC). Patches are (size, size, C) with C = 1 after "gray",
"center" and "contrast", 3 after "rgb".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmosaic.kmeans import nearest_centers

__all__ = [
    "NORMALIZATIONS",
    "patch_positions",
    "extract_patches",
    "VQCodes",
    "vq_encode",
    "vq_decode",
    "code_histograms",
    "cosine_distances",
    "cluster_images",
    "sample_patches",
    "codebook_grid",
    "Codebook",
    "save_codebook",
    "load_codebook",
    "montage",
    "dendrogram_image",
]

NORMALIZATIONS = ("gray", "rgb", "center", "contrast")
CONTRAST_FLOOR = 0.1
"""The smallest patch standard deviation "contrast" divides by (flat patches are not blown up)."""


def patch_positions(length: int, size: int, stride: int) -> np.ndarray:
    """Start offsets 0, stride, 2 stride, ... up to and including length - size."""
    if size > length:
        raise ValueError(f"a {size}-pixel patch does not fit in {length} pixels")
    return np.arange(0, length - size + 1, stride)


def _normalize(patches: jax.Array, normalize: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(patches, mean, scale): normalised patches and what `vq_decode` needs to undo it."""
    if normalize == "rgb":
        zero = jnp.zeros(patches.shape[:-3] + (1, 1, 1), patches.dtype)
        return patches, zero, zero + 1
    gray = jnp.mean(patches, axis=-1, keepdims=True)
    if normalize == "gray":
        zero = jnp.zeros(gray.shape[:-3] + (1, 1, 1), gray.dtype)
        return gray, zero, zero + 1
    mean = jnp.mean(gray, axis=(-3, -2, -1), keepdims=True)
    if normalize == "center":
        return gray - mean, mean, jnp.ones_like(mean)
    scale = jnp.maximum(jnp.std(gray, axis=(-3, -2, -1), keepdims=True), CONTRAST_FLOOR)
    return (gray - mean) / scale, mean, scale


def extract_patches(images: jax.Array, size: int, stride: int, *, normalize: str = "gray") -> jax.Array:
    """All size x size patches at the given stride, the last row and column of positions included.

    Args:
      images: HWC or NHWC.
      size, stride: patch side and step in pixels (static).
      normalize: "gray" (channels averaged, the seed's), "rgb" (as they are), "center" (grey minus
        the patch's mean) or "contrast" (centred and divided by the patch's standard deviation,
        at least `CONTRAST_FLOOR`).

    Returns:
      (rows, cols, size, size, C) for HWC, (N, rows, cols, size, size, C) for NHWC, with the
      patch at (i, j) starting at pixel (i * stride, j * stride).
    """
    return _extract(images, size, stride, normalize)[0]


def _extract(images, size, stride, normalize):
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    if size < 1 or stride < 1:
        raise ValueError(f"patch size and stride must be positive, got {size} and {stride}")
    images = jnp.asarray(images)
    rows = patch_positions(images.shape[-3], size, stride)[:, None] + np.arange(size)  # (rows, size)
    cols = patch_positions(images.shape[-2], size, stride)[:, None] + np.arange(size)
    patches = jnp.take(jnp.take(images, rows, axis=-3), cols, axis=-2)  # (..., rows, size, cols, size, C)
    patches = jnp.moveaxis(patches, -4, -3)  # (..., rows, cols, size, size, C)
    return _normalize(patches, normalize)


class VQCodes(NamedTuple):
    codes: jax.Array  # (rows, cols) int32: each patch's codebook entry
    mean: jax.Array  # (rows, cols, 1, 1, 1) the patch means taken out by "center"/"contrast" (else 0)
    scale: jax.Array  # (rows, cols, 1, 1, 1) the patch scales divided out by "contrast" (else 1)


def vq_encode(image: jax.Array, codebook: jax.Array, size: int, stride: int | None = None, *,
              normalize: str = "gray") -> VQCodes:
    """The nearest codebook entry of every patch of an HWC image (stride defaults to size: the
    non-overlapping tiling of the seed's compression). `codebook` is (k, size * size * C)."""
    stride = stride or size
    patches, mean, scale = _extract(image, size, stride, normalize)
    rows, cols = patches.shape[:2]
    labels, _ = nearest_centers(patches.reshape(rows * cols, -1), jnp.asarray(codebook))
    return VQCodes(labels.reshape(rows, cols), mean, scale)


def vq_decode(encoded: VQCodes, codebook: jax.Array, shape: tuple[int, int], size: int, stride: int | None = None) -> jax.Array:
    """The image rebuilt from codes: each patch replaced by its centre (times the patch's scale,
    plus its mean). With stride < size, overlapping patches are averaged (overlap-add divided by
    the coverage). Pixels no patch covers (a border narrower than a stride) are 0.

    Returns:
      (height, width, C) for `shape` = (height, width).
    """
    stride = stride or size
    codebook = jnp.asarray(codebook)
    rows, cols = encoded.codes.shape
    channels = codebook.shape[1] // (size * size)
    patches = codebook[encoded.codes].reshape(rows, cols, size, size, channels) * encoded.scale + encoded.mean
    height, width = shape
    ys = patch_positions(height, size, stride)[:, None, None, None] + np.arange(size)[None, None, :, None]
    xs = patch_positions(width, size, stride)[None, :, None, None] + np.arange(size)[None, None, None, :]
    ys, xs = np.broadcast_arrays(ys, xs)
    total = jnp.zeros((height, width, channels), patches.dtype).at[ys, xs].add(patches)
    coverage = np.zeros((height, width), np.float32)
    np.add.at(coverage, (ys, xs), 1.0)
    return total / np.maximum(coverage, 1.0)[..., None]


def code_histograms(codes: jax.Array, k: int) -> jax.Array:
    """Counts of each of the k codes: codes (..., n) -> (..., k) float."""
    codes = jnp.asarray(codes)
    return jnp.sum(jax.nn.one_hot(codes, k, dtype=jnp.float32), axis=-2)


def cosine_distances(vectors: jax.Array) -> jax.Array:
    """1 - cos between every pair of rows of (n, d): (n, n), as scipy's cdist(..., "cosine")
    (a zero row has distance 1 to everything but itself... and scipy's NaN is avoided)."""
    vectors = jnp.asarray(vectors)
    norms = jnp.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / jnp.where(norms > 0, norms, 1.0)
    distances = jnp.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    return distances * (1.0 - jnp.eye(vectors.shape[0], dtype=vectors.dtype))


def cluster_images(distances: np.ndarray, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Average-linkage hierarchical clustering of a square distance matrix into at most `clusters`
    groups: (labels 1..clusters per image, the SciPy linkage matrix for a dendrogram).

    The matrix goes to `linkage` in condensed form (`squareform`): given the square matrix,
    SciPy would read its rows as observations and cluster distances between rows of distances.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    distances = np.asarray(distances, np.float64)
    if distances.shape[0] < 2:
        raise ValueError("clustering needs at least two images")
    symmetric = (distances + distances.T) / 2
    np.fill_diagonal(symmetric, 0.0)
    tree = linkage(squareform(symmetric, checks=False), method="average")
    return fcluster(tree, clusters, criterion="maxclust"), tree


def sample_patches(key: jax.Array, images: Sequence[np.ndarray], size: int, stride: int, count: int, *,
                   normalize: str = "gray") -> np.ndarray:
    """`count` patches drawn without replacement from all the patches of all the images (fewer when
    there are fewer): (count, size * size * C) float32. Deterministic for a key."""
    pools = [np.asarray(extract_patches(image, size, stride, normalize=normalize)) for image in images]
    flat = np.concatenate([p.reshape(-1, size * size * p.shape[-1]) for p in pools])
    if count >= len(flat):
        return flat
    return flat[np.sort(np.asarray(jax.random.choice(key, len(flat), (count,), replace=False)))]


def codebook_grid(codebook: np.ndarray, size: int, *, columns: int = 32, scale: int = 4, gap: int = 1) -> np.ndarray:
    """The codebook as one picture: each centre a size x size tile enlarged `scale` times,
    `columns` per row, on a white grid; values shown as they are (clipped to [0, 1]), centred
    codebooks shifted by 0.5. Returns HWC float32."""
    codebook = np.asarray(codebook, np.float32)
    k = codebook.shape[0]
    channels = codebook.shape[1] // (size * size)
    tiles = codebook.reshape(k, size, size, channels)
    if tiles.min() < -1e-6:
        tiles = tiles / max(2 * float(np.abs(tiles).max()), 1e-6) + 0.5
    tiles = np.clip(tiles, 0, 1).repeat(scale, axis=1).repeat(scale, axis=2)
    side = size * scale
    rows = -(-k // columns)
    grid = np.ones((rows * (side + gap) + gap, columns * (side + gap) + gap, channels), np.float32)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, columns)
        grid[gap + r * (side + gap): gap + r * (side + gap) + side, gap + c * (side + gap): gap + c * (side + gap) + side] = tile
    return grid


_FORMAT = "jaxmosaic-vq-codebook/1"


class Codebook(NamedTuple):
    centers: np.ndarray  # (k, size * size * C) float32
    size: int  # patch side
    stride: int  # the stride the patches were sampled at
    normalize: str  # one of NORMALIZATIONS
    info: dict  # how it was made: images, samples, inertia, iterations, seed, ...


def save_codebook(path, codebook: Codebook, *, inputs=()) -> None:
    """A codebook as .npz: the centres and a JSON header (no pickles), written atomically."""
    import io
    import json

    from jaxmosaic.files import atomic_path

    header = {"format": _FORMAT, "size": codebook.size, "stride": codebook.stride, "normalize": codebook.normalize,
              "info": codebook.info}
    buffer = io.BytesIO()
    np.savez(buffer, centers=np.asarray(codebook.centers, np.float32), header=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with atomic_path(path, inputs) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_codebook(path) -> Codebook:
    """Read a codebook written by `save_codebook`; a one-line error names the file otherwise."""
    import json
    from pathlib import Path

    from jaxmosaic.errors import JaxmosaicError

    path = Path(path)
    if not path.is_file():
        raise JaxmosaicError(f"{path}: no such codebook file")
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            centers = np.asarray(data["centers"], np.float32)
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as err:
        raise JaxmosaicError(f"{path}: not a jaxmosaic VQ codebook ({err})") from None
    if header.get("format") != _FORMAT:
        raise JaxmosaicError(f"{path}: not a jaxmosaic VQ codebook (format {header.get('format')!r})")
    return Codebook(centers, int(header["size"]), int(header["stride"]), header["normalize"], header.get("info", {}))


def montage(images: Sequence[np.ndarray], *, side: int = 96, columns: int = 6, gap: int = 4) -> np.ndarray:
    """Thumbnails (longest side `side`, centred in square cells) in a grid on white: HWC float32."""
    from jaxmosaic.image import fit_shape, resize

    rows = max(1, -(-len(images) // columns))
    columns = min(columns, max(1, len(images)))
    grid = np.ones((rows * (side + gap) + gap, columns * (side + gap) + gap, 3), np.float32)
    for index, image in enumerate(images):
        image = np.asarray(image, np.float32)
        image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
        h, w = fit_shape(*image.shape[:2], side)
        thumb = np.asarray(resize(image, h, w)).clip(0, 1)
        r, c = divmod(index, columns)
        y, x = gap + r * (side + gap) + (side - h) // 2, gap + c * (side + gap) + (side - w) // 2
        grid[y : y + h, x : x + w] = thumb
    return grid


def dendrogram_image(tree: np.ndarray, labels: Sequence[str], *, width: int = 900, height: int = 420) -> np.ndarray:
    """The average-linkage tree drawn as a dendrogram (SciPy's layout, drawn with Pillow), leaves
    labelled by `labels` and coloured by nothing but black: HWC float32 in [0, 1]."""
    from PIL import Image, ImageDraw
    from scipy.cluster.hierarchy import dendrogram

    layout = dendrogram(tree, no_plot=True, labels=list(labels))
    icoord, dcoord = np.asarray(layout["icoord"]), np.asarray(layout["dcoord"])
    margin_left, margin_bottom, margin_top = 50, 140, 20
    x_max = 10.0 * len(labels)
    y_max = max(float(dcoord.max()), 1e-9)
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)

    def point(x, y):
        return (margin_left + x / x_max * (width - margin_left - 10),
                margin_top + (1 - y / y_max) * (height - margin_top - margin_bottom))

    for xs, ys in zip(icoord, dcoord):
        draw.line([point(x, y) for x, y in zip(xs, ys)], fill="black", width=2)
    for tick in np.linspace(0, y_max, 5):
        x, y = point(0, tick)
        draw.line([(x - 6, y), (x - 2, y)], fill="black")
        draw.text((4, y - 6), f"{tick:.2f}", fill="black")
    for index, name in enumerate(layout["ivl"]):
        x, y = point(5.0 + 10.0 * index, 0)
        text = Image.new("RGB", (margin_bottom - 10, 12), "white")
        ImageDraw.Draw(text).text((0, 0), str(name)[:22], fill="black")
        rotated = text.rotate(90, expand=True)
        picture.paste(rotated, (int(x) - 6, int(y) + 6))
    return np.asarray(picture, np.float32) / 255.0
