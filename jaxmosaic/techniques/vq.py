"""Patch vector quantisation: a k-means inventory of small patch shapes, VQ compression, histograms
of codes as image descriptors, and clustering of images by those histograms.

The original article's configuration: 8x8 patches at stride 4, channels averaged to grey,
70,000 patches, k = 1024; compression replaces each non-overlapping patch by its centre; an
image's descriptor is its histogram of codes; images are compared by cosine distance and grouped
by average-linkage hierarchical clustering (SciPy, on the condensed distance matrix) into N
clusters.

Images are float32 in [0, 1], HWC (or NHWC). Patches are (size, size, C) with C = 1 after "gray",
"center" and "contrast", 3 after "rgb".
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from typing import Annotated, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from jaxmosaic.clustering import KMeansInit, KMeansResult, kmeans, kmeans_memory, nearest_centers, nearest_memory
from jaxmosaic.config import ConfigError, MAX_INT, choice, setting, whole
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.artifacts import ArraySpec, load_artifact, save_artifact
from jaxmosaic.search import match_memory_bytes

__all__ = [
    "Normalization",
    "VQConfig",
    "patch_positions",
    "extract_patches",
    "VQCodes",
    "vq_encode",
    "vq_decode",
    "code_histograms",
    "cosine_distances",
    "cluster_images",
    "sample_patches",
    "Codebook",
    "save_codebook",
    "load_codebook",
    "train_memory",
    "train_codebook",
    "encode_memory",
    "Compression",
    "compress_image",
    "image_histograms",
    "group_images",
]


class Normalization(enum.StrEnum):
    """What a patch is before it is compared: grey (channels averaged, the original article's),
    rgb (as it is), center (grey minus its mean), contrast (centred and divided by its std)."""

    gray = "gray"
    rgb = "rgb"
    center = "center"
    contrast = "contrast"


CONTRAST_FLOOR = 0.1
"""The smallest patch standard deviation "contrast" divides by (flat patches are not blown up)."""


@dataclasses.dataclass(frozen=True)
class VQConfig:
    """Settings of a codebook's training; the defaults are the original article's."""

    patch: int = setting(8, "Patch side in pixels.")
    stride: int = setting(4, "Step between patches.")
    k: int = setting(1024, "Codebook size (clusters).")
    samples: int = setting(70000, "Patches drawn from all the images' patches for k-means.")
    normalize: Normalization = setting(Normalization.gray, "gray (channels averaged), rgb, center (mean removed), contrast (and divided by the std).")
    iterations: int = setting(100, "Lloyd iterations (or mini-batch steps with --batch-size; streaming: passes).", resume=False)
    init: KMeansInit = setting(KMeansInit.plusplus, "Seeding.")
    batch_size: int | None = setting(None, "Mini-batch k-means with this batch size (default: full Lloyd).")
    seed: int = setting(0, "Seed of the sampling and the seeding.")

    def __post_init__(self):
        whole("patch", self.patch, minimum=1, maximum=256)
        whole("stride", self.stride, minimum=1, maximum=4096)
        whole("k", self.k, minimum=1, maximum=2**20)
        whole("samples", self.samples, minimum=1, maximum=2**27)
        object.__setattr__(self, "normalize", choice("normalize", self.normalize, Normalization))
        whole("iterations", self.iterations, minimum=1, maximum=10**6)
        object.__setattr__(self, "init", choice("init", self.init, KMeansInit))
        if self.batch_size is not None:
            whole("batch_size", self.batch_size, minimum=1, maximum=2**27)
        whole("seed", self.seed, minimum=0, maximum=MAX_INT)

    @property
    def channels(self) -> int:
        return 3 if self.normalize == Normalization.rgb else 1


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
      normalize: "gray" (channels averaged, the original's), "rgb" (as they are), "center" (grey minus
        the patch's mean) or "contrast" (centred and divided by the patch's standard deviation,
        at least `CONTRAST_FLOOR`).

    Returns:
      (rows, cols, size, size, C) for HWC, (N, rows, cols, size, size, C) for NHWC, with the
      patch at (i, j) starting at pixel (i * stride, j * stride).
    """
    return _extract(images, size, stride, normalize)[0]


def _extract(images, size, stride, normalize):
    if normalize not in tuple(Normalization):
        raise ValueError(f"normalize must be one of {', '.join(Normalization)}, got {normalize!r}")
    if size < 1 or stride < 1:
        raise ValueError(f"patch size and stride must be positive, got {size} and {stride}")
    images = jnp.asarray(images)
    rows = patch_positions(images.shape[-3], size, stride)[:, None] + np.arange(size)  # (rows, size)
    cols = patch_positions(images.shape[-2], size, stride)[:, None] + np.arange(size)
    patches = jnp.take(jnp.take(images, rows, axis=-3), cols, axis=-2)  # (..., rows, size, cols, size, C)
    patches = jnp.moveaxis(patches, -4, -3)  # (..., rows, cols, size, size, C)
    return _normalize(patches, normalize)


class VQCodes(NamedTuple):
    """An image's patches as codebook entries, with what `vq_decode` needs to put them back."""

    codes: jax.Array  # (rows, cols) int32: each patch's codebook entry
    mean: jax.Array  # (rows, cols, 1, 1, 1) the patch means taken out by "center"/"contrast" (else 0)
    scale: jax.Array  # (rows, cols, 1, 1, 1) the patch scales divided out by "contrast" (else 1)


def vq_encode(image: jax.Array, codebook: jax.Array, size: int, stride: int | None = None, *,
              normalize: str = "gray") -> VQCodes:
    """The nearest codebook entry of every patch of an HWC image (stride defaults to size: the
    non-overlapping tiling of the original article's compression). `codebook` is (k, size * size * C)."""
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


class Codebook(NamedTuple):
    """A VQ codebook: its centres and the patches they describe (size, stride, normalisation)."""

    centers: np.ndarray  # (k, size * size * C) float32
    size: int  # patch side
    stride: int  # the stride the patches were sampled at
    normalize: Normalization
    info: dict  # how it was made: images, samples, inertia, iterations, seed, ...


_KIND = "vq-codebook"


class CodebookInfo(BaseModel):
    """How a codebook was made (`train_codebook`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    images: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=2**20)]
    samples: int = Field(ge=1, le=2**27)
    k: int = Field(ge=1, le=2**20)  # the centres' count
    init: Literal[tuple(member.value for member in KMeansInit)]
    iterations: int = Field(ge=0, le=10**6)
    batch_size: int | None = Field(ge=1, le=2**27)
    inertia: float = Field(ge=0.0, le=1e20, allow_inf_nan=False)  # a sum of squared distances of patches in [0, 1]
    seed: int = Field(ge=0, le=MAX_INT)


class CodebookHeader(BaseModel):
    """A codebook's JSON header; validated with `context={"arrays": {name: Layout}}`, it checks the
    centres' shape against it. The ranges of size and stride are `VQConfig`'s."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    size: int
    stride: int
    normalize: Literal[tuple(member.value for member in Normalization)]
    info: CodebookInfo

    @model_validator(mode="after")
    def _matches_its_centres(self, info: ValidationInfo) -> CodebookHeader:
        centers = (info.context or {}).get("arrays", {}).get("centers")
        try:
            config = VQConfig(patch=self.size, stride=self.stride, k=self.info.k, normalize=self.normalize)
        except ConfigError as err:
            raise ValueError(f"{'size' if err.field == 'patch' else err.field}: {err.reason}") from None
        if centers is None:
            return self
        width = self.size * self.size * config.channels
        if centers.shape[0] < 1 or centers.shape[1] != width:
            raise ValueError(f"size: {self.size}x{self.size} {self.normalize} patches need centres of shape (k >= 1, {width}), "
                             f"the file's are {centers.shape}")
        if self.info.k != centers.shape[0]:
            raise ValueError(f"info.k: {self.info.k} for {centers.shape[0]} centres")
        return self


_CODEBOOK_ARRAYS = {"centers": ArraySpec(kinds="f", ndim=2)}


def save_codebook(path, codebook: Codebook, *, inputs=()) -> None:
    """A codebook as a jaxmosaic artefact (.npz: the centres and a JSON header), written atomically."""
    header = {"size": codebook.size, "stride": codebook.stride, "normalize": str(codebook.normalize), "info": codebook.info}
    save_artifact(path, _KIND, header, {"centers": np.asarray(codebook.centers, np.float32)}, inputs=inputs)


def load_codebook(path) -> Codebook:
    """Read and check a codebook written by `save_codebook`: its header against `CodebookHeader`
    and the centres' shape before they are read, then finite values; a one-line error names the
    file and the field."""
    header, arrays = load_artifact(path, _KIND, arrays=_CODEBOOK_ARRAYS, schema=CodebookHeader)
    centers = arrays["centers"]
    if not np.all(np.isfinite(centers)):
        raise JaxmosaicError(f"{path}: centers: not all finite numbers; damaged VQ codebook")
    return Codebook(centers.astype(np.float32), header.size, header.stride, Normalization(header.normalize),
                    header.info.model_dump())


def _patch_count(images: Sequence[np.ndarray], size: int, stride: int) -> int:
    return sum(len(patch_positions(image.shape[0], size, stride)) * len(patch_positions(image.shape[1], size, stride))
               for image in images)


def _check_fits(images: Sequence[np.ndarray], size: int, names: Sequence[str]) -> None:
    if not len(images):
        raise ValueError("no images given")
    for index, image in enumerate(images):
        height, width = image.shape[:2]
        if min(height, width) < size:
            name = names[index] if index < len(names) else f"image {index + 1}"
            raise ConfigError("patch", f"{size} is larger than {name} ({width}x{height})")


def train_memory(config: VQConfig, images: Sequence[np.ndarray], *, names: Sequence[str] = ()) -> int:
    """Check the images against the settings (before any work) and estimate the bytes training
    needs at its peak (a generous estimate): every patch of the images at the stride, which the
    samples are drawn from (`sample_patches`), or k-means on the samples (`kmeans_memory`: the
    seeding, the nearest-centre search over every sample, a mini-batch)."""
    _check_fits(images, config.patch, names)
    patches = _patch_count(images, config.patch, config.stride)
    drawn = min(config.samples, patches)
    if config.k > drawn:
        raise ConfigError("k", f"{config.k} is larger than the number of patches ({drawn}); use a smaller k or more images")
    features = config.patch * config.patch * config.channels
    widest = max(_patch_count([image], config.patch, config.stride) for image in images)
    pool = patches * features * 4 * 2 + widest * config.patch * config.patch * 3 * 4 * 3  # an image's RGB patches, cut and moved
    clustering = drawn * features * 4 * 3 + match_memory_bytes(drawn, features + 1) + kmeans_memory(
        drawn, features, config.k, init=config.init, batch_size=config.batch_size)
    return max(pool, clustering)


def train_codebook(config: VQConfig, images: Sequence[np.ndarray], *, names: Sequence[str] = ()) -> tuple[Codebook, KMeansResult]:
    """Draw `config.samples` patches from the images and cluster them into `config.k` centres.

    Returns:
      (the codebook, the k-means result: labels, inertia, iterations of the sampled patches).
    """
    train_memory(config, images, names=names)
    key = jax.random.PRNGKey(config.seed)
    data = sample_patches(key, images, config.patch, config.stride, config.samples, normalize=config.normalize)
    result = jax.block_until_ready(kmeans(jax.random.fold_in(key, 1), data, config.k, init=config.init,
                                          max_iter=config.iterations, batch_size=config.batch_size))
    info = {"images": list(names), "samples": int(len(data)), "k": config.k, "init": str(config.init),
            "iterations": int(result.iterations), "batch_size": config.batch_size, "inertia": float(result.inertia),
            "seed": config.seed}
    return Codebook(np.asarray(result.centers), config.patch, config.stride, config.normalize, info), result


def encode_memory(codebook: Codebook, shape: Sequence[int], *, stride: int | None = None) -> int:
    """Bytes `vq_encode` and `vq_decode` of an image of `shape` (height, width, ...) at `stride`
    (default: the patch size) hold at their peak: its patches (RGB, cut, moved, normalised), the
    nearest-centre search among the codebook's centres (`nearest_memory`), the centres put back
    and the image they rebuild. 0 for an image smaller than a patch (which they refuse)."""
    size, step = codebook.size, stride or codebook.size
    height, width = shape[:2]
    if min(height, width) < size:
        return 0
    count = len(patch_positions(height, size, step)) * len(patch_positions(width, size, step))
    k, features = codebook.centers.shape
    return (count * size * size * 3 * 4 * 3 + count * features * 4 * 3 + nearest_memory(count, features, k)
            + height * width * 3 * 4 * 3)


class Compression(NamedTuple):
    """What `compress_image` returns."""

    image: np.ndarray  # the reconstruction of the covered region, HWC (one channel for grey codebooks)
    original: np.ndarray  # the covered region of the input, RGB
    mse: float  # against the original as the codebook sees it (grey for grey codebooks)
    psnr: float  # dB, for values in [0, 1]
    bits_per_pixel: float  # log2(k) bits per patch, over the pixels a patch advances
    codes: np.ndarray  # (rows, cols) each patch's code


def compress_image(codebook: Codebook, image: np.ndarray, stride: int | None = None, *, mesh=None) -> Compression:
    """Replace every patch of an HWC image by its nearest codebook entry (stride defaults to the
    patch size: no overlap; a smaller stride averages the overlaps). The covered region is the
    largest one whole patches reach; PSNR is measured there. With `mesh` (one axis, "devices"),
    the nearest-centre search shards the patches over its devices (`nearest_codes`)."""
    size = codebook.size
    step = whole("stride", stride, minimum=1, maximum=4096) if stride is not None else size
    height, width = image.shape[:2]
    if min(height, width) < size:
        raise ValueError(f"the image ({width}x{height}) is smaller than the codebook's {size}x{size} patches")
    if mesh is None:
        encoded = vq_encode(image, codebook.centers, size, step, normalize=codebook.normalize)
    else:
        from jaxmosaic.techniques.vq_stream import nearest_codes

        patches, mean, scale = _extract(image, size, step, codebook.normalize)
        rows, cols = patches.shape[:2]
        codes = nearest_codes(np.asarray(patches).reshape(rows * cols, -1), codebook.centers, mesh=mesh)
        encoded = VQCodes(jnp.asarray(codes.reshape(rows, cols)), mean, scale)
    rebuilt = np.asarray(vq_decode(encoded, codebook.centers, (height, width), size, step)).clip(0, 1)
    covered_h = (height - size) // step * step + size
    covered_w = (width - size) // step * step + size
    rebuilt, original = rebuilt[:covered_h, :covered_w], np.asarray(image)[:covered_h, :covered_w]
    reference = original.mean(axis=-1, keepdims=True) if rebuilt.shape[-1] == 1 else original
    mse = float(np.mean((rebuilt - reference) ** 2))
    bits = math.log2(len(codebook.centers)) / (step * step)
    return Compression(rebuilt, original, mse, 10 * math.log10(1.0 / max(mse, 1e-12)), bits, np.asarray(encoded.codes))


def image_histograms(codebook: Codebook, images: Sequence[np.ndarray], *, names: Sequence[str] = ()) -> np.ndarray:
    """Each image's histogram of codes over all its patches at the codebook's stride: (n, k)."""
    _check_fits(images, codebook.size, names)
    histograms = []
    for image in images:
        patches = extract_patches(image, codebook.size, codebook.stride, normalize=codebook.normalize)
        labels, _ = nearest_centers(patches.reshape(-1, codebook.centers.shape[1]), codebook.centers)
        histograms.append(np.asarray(code_histograms(labels, len(codebook.centers))))
    return np.stack(histograms)


def group_images(codebook: Codebook, images: Sequence[np.ndarray], clusters: int, *,
                 names: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Images grouped by their histograms of codes (cosine distance, average linkage): (a label in
    1..clusters per image, the SciPy linkage matrix for a dendrogram)."""
    whole("clusters", clusters, minimum=1)
    if len(images) < 2:
        raise ValueError("clustering needs at least two images")
    distances = np.asarray(cosine_distances(image_histograms(codebook, images, names=names)))
    return cluster_images(distances, clusters)
