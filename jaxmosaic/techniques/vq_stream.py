"""A VQ codebook trained from a stream of patches: images read a chunk of patches at a time, so
memory is bounded by `--max-memory` whatever the number of images (`jaxmosaic.kmeans_stream`).

The files are scanned once (their sizes, from the headers, with `load_image`'s checks and pixel
limit): unreadable files and images smaller than a patch are skipped and listed. A file that
passes the scan but fails to decode during a pass (truncated data) is skipped from then on: its
patches keep their places in the stream with weight 0, and it joins the list. The patches of all the files, in file order, at the config's
stride, form one stream cut into chunks of a fixed number of patches; chunk c is the same patches
on every pass, so a run resumes at a chunk. With several processes each streams a contiguous share
of the files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
from jax.sharding import NamedSharding, PartitionSpec

from jaxmosaic.clustering import nearest_centers
from jaxmosaic.config import ConfigError, number, setting, whole
from jaxmosaic.errors import JaxmosaicError
from jaxmosaic.io.files import first_line
from jaxmosaic.io.locks import wait_setting
from jaxmosaic.kmeans_stream import (
    StreamKMeansResult,
    chunk_for_memory,
    faiss_sample_size,
    stream_kmeans,
    stream_memory,
)
from jaxmosaic.live import web_setting
from jaxmosaic.techniques.vq import (
    Codebook,
    Compression,
    VQConfig,
    compress_image,
    extract_patches,
    patch_positions,
)

BAND_BYTES = 32 * 2**20
"""An image's RGB patches are cut a band of about this many bytes at a time (`PatchStream`)."""

__all__ = [
    "BAND_BYTES",
    "PatchStream",
    "VQStreamConfig",
    "check_stream_k",
    "compressed_names",
    "compression_summary",
    "nearest_codes",
    "plan_chunk",
    "scan_images",
    "sparse_cosine_distances",
    "stream_compress",
    "stream_histograms",
    "stream_image_bytes",
    "stream_training_bytes",
    "train_codebook_stream",
]


@dataclasses.dataclass(frozen=True)
class VQStreamConfig:
    """How `vq train` streams: the method (faiss's sample, exact Lloyd, or mini-batch with
    --batch-size), the memory budget, the devices and the checkpoint."""

    sample: str | None = setting(None, "Stream, and train on faiss's sample of min(N, 256 k) patches: 'faiss'.")
    exact: bool = setting(False, "Stream, and run out-of-core Lloyd over every patch (--iterations passes).")
    max_memory: float | None = setting(None, "Streaming: GiB training may use (default: what is free); sets the chunk size.")
    devices: int | None = setting(None, "Streaming: local devices to shard each chunk's patches over (default: all).")
    checkpoint: str | None = setting(None, "Streaming: save the run here after every pass (and on Ctrl-C).")
    resume: bool = setting(False, "Streaming: continue the run saved in --checkpoint.")
    wait: bool = wait_setting()
    web: str | None = web_setting()

    def __post_init__(self):
        if self.sample is not None and self.sample != "faiss":
            raise ConfigError("sample", f"the only sampling rule is 'faiss', got {self.sample!r}")
        if self.sample is not None and self.exact:
            raise ConfigError("exact", "--exact and --sample faiss are two ways to train; give one")
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", number("max_memory", self.max_memory, above=0.0))
        if self.devices is not None:
            whole("devices", self.devices, minimum=1)
        if self.resume and self.checkpoint is None:
            raise ConfigError("resume", "needs --checkpoint DIR (the run to continue)")

    def method(self, config: VQConfig) -> str | None:
        """"sample", "exact" or "batch" (with --batch-size), or None: the in-memory training.
        --max-memory, --checkpoint or --devices alone stream too, with exact Lloyd."""
        if config.batch_size is not None and (self.exact or self.sample is not None):
            raise ConfigError("batch_size", f"--batch-size and {'--exact' if self.exact else '--sample faiss'} are two "
                                            "ways to train; give one")
        if self.sample is not None:
            return "sample"
        if config.batch_size is not None:
            return "batch"
        if self.exact or self.max_memory is not None or self.checkpoint is not None or self.devices is not None:
            return "exact"
        return None


def _image_size(path: Path) -> tuple[int, int] | str:
    """(height, width) of the image `load_image` would return, from the file's header (its checks
    and pixel limit), or why it cannot be read."""
    from jaxmosaic.errors import ImageError
    from jaxmosaic.io.images import image_size

    try:
        width, height = image_size(path)
    except ImageError as err:
        return str(err).removeprefix(f"{path}: ")
    return height, width


class PatchStream:
    """The patches of `files` (this process's share) as a stream of chunks of `chunk` patches.

    A chunk's patches are cut from the rows of patches they lie on, a band of about `band_bytes`
    (RGB, float32) at a time; only the last image read is kept.

    A file that fails to decode during a pass (or no longer has the size the scan found) yields
    its patches as zeros with weight 0 (the chunk then comes as (patches, weights)), from then on
    without being read again, and is added to `skipped` and `failed`.

    Attributes:
      files: the files streamed; skipped: "path (why)" for those left out; counts: patches per file;
      offset: the position of the share's first patch in the stream of every process's files;
      failed: "path (why)" for the files of this share that failed during a pass.

    Raises:
      JaxmosaicError: no file has a patch, or, with several processes, this one's share is empty.
    """

    def __init__(self, files: Sequence[Path], config: VQConfig, *, processes: int = 1, process: int = 0,
                 band_bytes: int = BAND_BYTES):
        self.config = config
        self.band_bytes = band_bytes
        kept, counts, sizes, skipped = [], [], [], []
        for path in files:
            size = _image_size(path)
            if isinstance(size, str):
                skipped.append(f"{path} (unreadable: {size})")
            elif min(size) < config.patch:
                skipped.append(f"{path} (smaller than a {config.patch}-pixel patch)")
            else:
                kept.append(Path(path))
                sizes.append(size)
                counts.append(len(patch_positions(size[0], config.patch, config.stride))
                              * len(patch_positions(size[1], config.patch, config.stride)))
        if not kept:
            raise JaxmosaicError(f"no image with a {config.patch}x{config.patch} patch among the {len(files)} file(s) given")
        if len(kept) < processes:
            raise JaxmosaicError(f"--num-processes: {processes} processes share {len(kept)} image(s) with a patch; "
                                 f"process {len(kept)} on would have none to stream; use at most {len(kept)} processes")
        self.skipped = skipped
        self.failed: list[str] = []
        self.all_files = kept
        self.total = int(sum(counts))
        share = slice(len(kept) * process // processes, len(kept) * (process + 1) // processes)
        self.files, self.counts = kept[share], np.asarray(counts[share], np.int64)
        self.sizes = sizes[share]
        self._broken: set[int] = set()  # files of the share that failed during a pass
        self.offset = int(sum(counts[: share.start]))  # the stream position of this share's first patch
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])
        self.points = int(self.starts[-1])
        self.chunk = 1
        self._cached: tuple[int, np.ndarray] | None = None  # the last image read

    @property
    def dimension(self) -> int:
        """Features of a patch."""
        return self.config.patch * self.config.patch * self.config.channels

    def fingerprint(self) -> str:
        """A digest of the files (paths, sizes, times) and the patch settings, checked on resume."""
        digest = hashlib.sha256()
        for path in self.all_files:
            status = os.stat(path)
            digest.update(f"{path}|{status.st_size}|{status.st_mtime_ns}\n".encode())
        digest.update(f"{self.config.patch}|{self.config.stride}|{self.config.normalize}".encode())
        return digest.hexdigest()[:20]

    def _load(self, index: int) -> np.ndarray | None:
        """File `index`'s pixels (the last image read is kept), or None when it fails to decode or
        no longer has the size the scan found (it is then listed and never read again)."""
        if index in self._broken:
            return None
        if self._cached is None or self._cached[0] != index:
            from jaxmosaic.errors import ImageError
            from jaxmosaic.io.images import load_image

            path = self.files[index]
            try:
                image = load_image(path)
                reason = None if image.shape[:2] == tuple(self.sizes[index]) else (
                    f"now {image.shape[1]}x{image.shape[0]} pixels, not the {self.sizes[index][1]}x{self.sizes[index][0]} "
                    "of the scan")
            except (ImageError, OSError) as err:
                reason = first_line(err).removeprefix(f"{path}: ")[:200]
            if reason is not None:
                self._broken.add(index)
                self.failed.append(f"{path} (unreadable: {reason})")
                self.skipped.append(self.failed[-1])
                return None
            self._cached = (index, image)
        return self._cached[1]

    def _patches(self, index: int, begin: int, end: int) -> np.ndarray | None:
        """Patches `begin` to `end` (in row-major order of positions) of file `index`, (end - begin,
        d) float32, or None when the file cannot be read: only the rows of patches they lie on are
        cut, a band of about `band_bytes` at a time (the last image read is kept)."""
        image = self._load(index)
        if image is None:
            return None
        size, step = self.config.patch, self.config.stride
        cols = len(patch_positions(image.shape[1], size, step))
        band = max(1, self.band_bytes // (cols * size * size * 3 * 4))  # rows of patches cut at once
        top, bottom = begin // cols, (end - 1) // cols + 1
        parts = []
        for first in range(top, bottom, band):
            last = min(bottom, first + band)
            pixels = image[first * step : (last - 1) * step + size]
            parts.append(np.asarray(extract_patches(pixels, size, step, normalize=self.config.normalize),
                                    np.float32).reshape(-1, self.dimension))
        return np.concatenate(parts)[begin - top * cols : end - top * cols]

    def __call__(self, start: int = 0) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]:
        """Chunks of `self.chunk` patches (the last one ragged) from chunk `start` on; a chunk
        holding patches of a file that failed comes as (patches, weights), those patches zeros
        of weight 0."""
        for first in range(start * self.chunk, self.points, self.chunk):
            last = min(first + self.chunk, self.points)
            parts, weights = [], []
            index = int(np.searchsorted(self.starts, first, side="right") - 1)
            while first < last:
                begin = first - int(self.starts[index])
                end = min(last, int(self.starts[index + 1])) - int(self.starts[index])
                patches = self._patches(index, begin, end)
                good = patches is not None
                parts.append(patches if good else np.zeros((end - begin, self.dimension), np.float32))
                weights.append(np.full((end - begin,), float(good), np.float32))
                first += end - begin
                index += 1
            chunk, weights = np.concatenate(parts), np.concatenate(weights)
            yield chunk if weights.all() else (chunk, weights)


def stream_image_bytes(stream: PatchStream) -> int:
    """Bytes the reading of `stream`'s images holds beside `stream_memory`: the largest image
    (decoded, and converted) and a few bands of its patches."""
    return 4 * stream.band_bytes + _largest_pixels(stream) * 3 * 4 * 2


def stream_training_bytes(stream: PatchStream, config: VQConfig, method: str, *, chunk: int, devices: int = 1,
                          processes: int = 1) -> int:
    """Bytes streaming k-means on `stream` holds at its peak in chunks of `chunk` patches:
    `stream_memory` with faiss's sample (`faiss_sample_size`), and the reading of the images
    beside it (`stream_image_bytes`)."""
    return stream_memory(config.k, stream.dimension, chunk, method=method, sample_size=faiss_sample_size(stream.total, config.k),
                         devices=devices, processes=processes) + stream_image_bytes(stream)


def check_stream_k(stream: PatchStream, config: VQConfig) -> None:
    """Refuse a codebook of more codes than `stream` has patches.

    Raises:
      ConfigError: naming `k`.
    """
    if stream.total < config.k:
        raise ConfigError("k", f"{config.k} is larger than the number of patches ({stream.total}); use a smaller k or more images")


def _largest_pixels(stream: PatchStream) -> int:
    """Pixels of the largest image of the share (from the scan)."""
    return max((height * width for height, width in stream.sizes), default=0)


def plan_chunk(stream: PatchStream, config: VQConfig, method: str, budget: int | None, devices: int, *,
               processes: int = 1) -> int:
    """The chunk size (patches) for the budget: mini-batch chunks are --batch-size; else the
    largest power of two whose `stream_memory` fits beside the largest image's patches."""
    if method == "batch" and config.batch_size is not None:
        return config.batch_size
    image_bytes = stream_image_bytes(stream)
    most = 1 << max(8, int(stream.points - 1).bit_length())  # no chunk beyond the stream's patches (a power of two)
    if budget is None:
        return min(65536, most)
    chunk = chunk_for_memory(budget - image_bytes, config.k, stream.dimension, method=method,
                             sample_size=faiss_sample_size(stream.total, config.k), devices=devices, processes=processes,
                             most=min(most, 2**20))
    if chunk is None:
        need = stream_training_bytes(stream, config, method, chunk=256, devices=devices, processes=processes)
        raise JaxmosaicError(f"--max-memory: k = {config.k} centres of {stream.dimension} features need about "
                             f"{need / 2**30:.2f} GiB even in chunks of 256 patches; raise --max-memory or lower --k")
    return chunk


def train_codebook_stream(config: VQConfig, stream: PatchStream, method: str, *, mesh=None, state: dict | None = None,
                          on_pass=None, on_chunk=None) -> tuple[Codebook, StreamKMeansResult]:
    """Train a codebook on `stream` with `jaxmosaic.kmeans_stream.stream_kmeans` ("sample",
    "exact" or "batch"); `config.iterations` are Lloyd iterations (passes for "exact", passes
    over the stream for "batch"). Returns (the codebook, the run's result)."""
    check_stream_k(stream, config)
    key = jax.random.PRNGKey(config.seed)
    result = stream_kmeans(stream, config.k, key=key, method=method, init=str(config.init), max_iter=config.iterations,
                           sample_size=faiss_sample_size(stream.total, config.k), mesh=mesh, state=state,
                           on_pass=on_pass, on_chunk=on_chunk)
    info = {"images": [str(path) for path in stream.all_files], "samples": int(result.samples), "k": config.k,
            "init": str(config.init), "iterations": int(result.iterations), "batch_size": config.batch_size,
            "inertia": float(result.inertia), "seed": config.seed}
    return Codebook(np.asarray(result.centers, np.float32), config.patch, config.stride, config.normalize, info), result


@functools.partial(jax.jit, static_argnums=(2,))
def _nearest_labels(points, centers, block):
    return nearest_centers(points, centers, block=block)[0]


def nearest_codes(points: np.ndarray, centers: np.ndarray, *, mesh=None) -> np.ndarray:
    """Each point's nearest centre (`nearest_centers`), the points sharded over `mesh`'s devices
    (the centres replicated): (n,) int32. The points are padded to a power of two (and a multiple
    of the devices), so images of many sizes share a few compiled programs."""
    points = np.asarray(points, np.float32)
    count = len(points)
    padded = 1 << max(0, count - 1).bit_length()
    if mesh is not None:
        padded += -padded % mesh.size
    points = np.pad(points, ((0, padded - count), (0, 0)))
    if mesh is not None:
        points = jax.device_put(points, NamedSharding(mesh, PartitionSpec("devices")))
        centers = jax.device_put(np.asarray(centers, np.float32), NamedSharding(mesh, PartitionSpec()))
    block = max(1, min(1024, points.shape[0] // (1 if mesh is None else mesh.size)))
    return np.asarray(_nearest_labels(points, jnp.asarray(centers), block))[:count]


def stream_histograms(codebook: Codebook, files: Sequence[Path], *, mesh=None,
                      on_image=None) -> tuple[scipy.sparse.csr_matrix, list[Path], list[str]]:
    """Each image's histogram of codes over its patches at the codebook's stride, one image at a
    time, as sparse counts (only the codes an image uses are stored: a million images of a few
    hundred distinct codes each fit in memory).

    Returns:
      (the (n, k) float32 CSR histograms of the images kept, those images, "path (why)" for the
      files skipped: unreadable, or smaller than a patch).
    """
    from jaxmosaic.errors import ImageError
    from jaxmosaic.io.images import load_image

    k = len(codebook.centers)
    indptr, indices, values, kept, skipped = [0], [], [], [], []
    for path in files:
        try:
            image = load_image(path)
        except (ImageError, OSError) as err:
            skipped.append(f"{path} (unreadable: {first_line(err)[:200]})")
            continue
        if min(image.shape[:2]) < codebook.size:
            skipped.append(f"{path} (smaller than a {codebook.size}-pixel patch)")
            continue
        patches = np.asarray(extract_patches(image, codebook.size, codebook.stride, normalize=codebook.normalize))
        codes = nearest_codes(patches.reshape(-1, codebook.centers.shape[1]), codebook.centers, mesh=mesh)
        used, counts = np.unique(codes, return_counts=True)
        indices.append(used.astype(np.int32))
        values.append(counts.astype(np.float32))
        indptr.append(indptr[-1] + len(used))
        kept.append(Path(path))
        if on_image is not None:
            on_image(len(kept))
    histograms = scipy.sparse.csr_matrix(
        (np.concatenate(values) if values else np.zeros(0, np.float32), np.concatenate(indices) if indices else np.zeros(0, np.int32),
         np.asarray(indptr, np.int64)), shape=(len(kept), k))
    return histograms, kept, skipped


def sparse_cosine_distances(histograms: scipy.sparse.spmatrix) -> np.ndarray:
    """1 - cos between every pair of rows of a sparse (n, k) matrix, as `cosine_distances` of
    the dense rows (a zero row: 1 to every other row, 0 to itself): (n, n) float32."""
    rows = scipy.sparse.csr_matrix(histograms, dtype=np.float64)
    norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1))).ravel()
    unit = scipy.sparse.diags(np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)) @ rows
    distances = np.clip(1.0 - (unit @ unit.T).toarray(), 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    return distances.astype(np.float32)


# --- compressing a folder, one image at a time ----------------------------------------------------

def scan_images(files: Sequence[Path], patch: int) -> tuple[list[Path], list[tuple[int, int]], list[str]]:
    """The files' sizes from their headers (`load_image`'s checks and pixel limit), nothing decoded.

    Returns:
      (the files with a patch-sized image, their (height, width), "path (why)" for the others:
      unreadable, or smaller than a `patch`-pixel patch).
    """
    kept, sizes, skipped = [], [], []
    for path in files:
        size = _image_size(Path(path))
        if isinstance(size, str):
            skipped.append(f"{path} (unreadable: {size})")
        elif min(size) < patch:
            skipped.append(f"{path} (smaller than a {patch}-pixel patch)")
        else:
            kept.append(Path(path))
            sizes.append(size)
    return kept, sizes, skipped


def compressed_names(files: Sequence[Path], *, root: Path | None = None) -> list[tuple[str, str]]:
    """The (reconstruction, side by side) names `vq compress` writes into its folder for each
    file: NAME.vq.png and NAME.side.png, NAME the file's path under `root` without its suffix
    (folders joined by "__", characters other than letters, digits, ".", "_" and "-" as "_"),
    numbered -2, -3, ... where two files would share one."""
    taken, names = set(), []
    for path in files:
        relative = Path(path).relative_to(root) if root is not None and Path(path).is_relative_to(root) else Path(Path(path).name)
        stem = re.sub(r"[^\w.-]", "_", "__".join(relative.with_suffix("").parts), flags=re.ASCII)[:200] or "image"
        name, number = stem, 1
        while name.lower() in taken:
            number += 1
            name = f"{stem}-{number}"
        taken.add(name.lower())
        names.append((f"{name}.vq.png", f"{name}.side.png"))
    return names


def stream_compress(codebook: Codebook, files: Iterable[Path], *, stride: int | None = None,
                    mesh=None) -> Iterator[tuple[Path, Compression | str]]:
    """Each file compressed (`compress_image`, the nearest-centre search sharded over `mesh`'s
    devices), one image in memory at a time: (path, its `Compression`), or (path, why it was
    skipped: unreadable, or smaller than a patch)."""
    from jaxmosaic.errors import ImageError
    from jaxmosaic.io.images import load_image

    for path in files:
        try:
            image = load_image(path)
        except (ImageError, OSError) as err:
            yield Path(path), f"unreadable: {first_line(err).removeprefix(f'{path}: ')[:200]}"
            continue
        if min(image.shape[:2]) < codebook.size:
            yield Path(path), f"smaller than a {codebook.size}-pixel patch"
            continue
        yield Path(path), compress_image(codebook, image, stride, mesh=mesh)


def compression_summary(results: Sequence[dict]) -> dict:
    """The figures of a folder's compression from each image's ({"mse", "values", "pixels",
    "bits"}: squared error per value, values compared, pixels the patches advance over, code
    bits): the pooled mse, its PSNR (dB, values in [0, 1]) and the bits per pixel of all the images."""
    values = sum(item["values"] for item in results)
    pixels = sum(item["pixels"] for item in results)
    mse = sum(item["mse"] * item["values"] for item in results) / max(values, 1)
    return {"images": len(results), "mse": mse, "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
            "bits_per_pixel": sum(item["bits"] for item in results) / max(pixels, 1)}
