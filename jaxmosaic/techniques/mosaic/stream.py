"""A tile library built chunk by chunk: bounded memory whatever the number of tiles, resumable,
spread over local devices and over processes.

Pass 1 renders or reads each chunk of tiles, embeds it (sharded over the local devices) and adds
its rows' statistics to G = D^T D and the column sums; each chunk's feature rows are kept in
the build folder, so a killed build resumes from its last finished chunk. With several processes
(`jax.distributed`) each owns a contiguous share of the chunks, and G, the sums and the row
counts are summed across processes by a collective; a failure in one process's share stops every
process before the collectives (`jaxmosaic.distributed.agree`), each removing its build folder
unless the build was resumed. The leading k eigenvectors of G are D's
leading right singular vectors V_k (randomized subspace iteration for large d, exact otherwise);
pass 2 reads the kept rows back and writes D_k = D V_k. Only (chunk x d) rows, G and D_k
(n x k) are ever held, never the n x d matrix D. Process 0 writes the library; the build folders
are removed once it is written.

What a resumed build reads back is checked before it is used: the plan (`BuildPlan`, a schema)
must be this build's, and every finished chunk must hold (rows, d) finite features of the tiles
of its own range; any other chunk is one line naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.linalg.blas
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jaxmosaic.config import number, setting, whole
from jaxmosaic.distributed import agree
from jaxmosaic.errors import ImageError, JaxmosaicError
from jaxmosaic.image import resize
from jaxmosaic.io.artifacts import ArraySpec, ArtifactError, read_arrays
from jaxmosaic.io.files import atomic_path
from jaxmosaic.io.folders import OutputFolder, folder_kind
from jaxmosaic.io.images import IMAGE_SUFFIXES
from jaxmosaic.io.locks import wait_setting
from jaxmosaic.io.schemas import schema_message
from jaxmosaic.live import web_setting
from jaxmosaic.techniques.mosaic.bank import BANK, BANK_SIZE, BankGrid, bank_parameters, bank_tiles
from jaxmosaic.techniques.mosaic.features import ColorMode, FeatureConfig, feature_program
from jaxmosaic.techniques.mosaic.library import AUTO_SVD_CAP, TileLibrary, folder_fingerprint, load_tile, save_library
from jaxmosaic.techniques.mosaic.library import spectrum_svd_k, tile_files
from jaxmosaic.techniques.mosaic.schema import MAX_TILES, FeatureSettings, Name, Token

__all__ = ["DEFAULT_CHUNK", "LibraryBuildConfig", "BuildPlan", "BankSource", "FolderSource", "tile_source", "top_eigen",
           "stream_svd_k", "stream_memory", "stream_disk", "accumulate_gram", "stream_library", "build_folder", "kept_chunks"]

DEFAULT_CHUNK = 256
"""Tiles a streaming build embeds together unless told otherwise."""

_WORK_KIND = "library-build"
_EXACT_BELOW = 2048  # feature dimensions up to which the eigenvectors of G are computed exactly


@dataclasses.dataclass(frozen=True)
class LibraryBuildConfig:
    """How a library is built: in memory, or chunk by chunk (streamed) over the local devices."""

    stream: bool = setting(False, "Build chunk by chunk in bounded memory (always for gabor-bank): the library then holds D_k = D V_k, not D.")
    chunk: int = setting(DEFAULT_CHUNK, "Streaming: tiles embedded together.")
    resume: bool = setting(False, "Streaming: continue a stopped build from its last finished chunk (OUT.build).")
    keep_features: bool = setting(False, "Streaming: keep the build folder with every tile's full feature row.")
    devices: int | None = setting(None, "Local devices to share the work over (default: all).")
    max_memory: float | None = setting(None, "Streaming: GiB the build may use (default: what is free).")
    wait: bool = wait_setting()
    web: str | None = web_setting()

    def __post_init__(self):
        whole("chunk", self.chunk, minimum=1, maximum=65536)
        if self.devices is not None:
            whole("devices", self.devices, minimum=1)
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", number("max_memory", self.max_memory, above=0.0))

    def streams(self, tiles: str) -> bool:
        """Whether the library of `tiles` is built chunk by chunk: always for the Gabor bank, else
        when streaming, resuming or keeping the feature rows is asked for."""
        return tiles == BANK or self.stream or self.resume or self.keep_features


class BankSource:
    """The Gabor bank of `grid`: a chunk's input is its (m, 4) parameters; tiles are rendered
    inside the compiled embedding."""

    kind = "bank"
    render = BANK_SIZE  # the side of the tiles the embedding renders from a chunk's parameters

    def __init__(self, grid: BankGrid):
        self.grid = grid
        self.count = grid.size
        self.fingerprint = f"gabor-bank {grid}"
        self.excluded: list[str] = []

    def inputs(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(inputs for the embedding, the tile indices they are, files skipped)."""
        indices = np.arange(start, stop, dtype=np.int64)
        return bank_parameters(self.grid, indices), indices, []

    def program(self, settings: FeatureConfig) -> Callable:
        features = feature_program(settings)
        size = settings.size

        def embed(params, parameters):
            grey = bank_tiles(parameters, BANK_SIZE)
            tiles = jnp.repeat(grey[..., None], 3, axis=-1)
            if size != BANK_SIZE:
                tiles = jnp.clip(resize(tiles, size, size), 0.0, 1.0)
            return features(params, tiles)

        return embed

    def pad_row(self, settings: FeatureConfig) -> np.ndarray:
        return bank_parameters(self.grid, [0])[0]


class FolderSource:
    """A folder of images (searched recursively, in a sorted order); unreadable files and symbolic
    links are skipped and listed."""

    kind = "folder"
    render = 0  # a chunk's inputs are the tiles themselves

    def __init__(self, root: str | os.PathLike, size: int):
        self.root = Path(root).resolve()
        self.files, links = tile_files(self.root)
        if not self.files:
            found = f" ({len(links)} symbolic link(s) skipped)" if links else ""
            raise JaxmosaicError(f"{root}: no image files in the folder{found} (looked for {', '.join(IMAGE_SUFFIXES)})")
        self.count = len(self.files)
        self.size = size
        self.fingerprint = folder_fingerprint(self.root, self.files, links=links)
        self.excluded = [path.relative_to(self.root).as_posix() for path in links]

    def inputs(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        images, kept, skipped = [], [], []
        for index in range(start, stop):
            path = self.files[index]
            try:
                images.append(load_tile(path, self.size))
                kept.append(index)
            except (ImageError, OSError):
                skipped.append(path.relative_to(self.root).as_posix())
        stacked = np.stack(images) if images else np.zeros((0, self.size, self.size, 3), np.float32)
        return stacked, np.asarray(kept, np.int64), skipped

    def program(self, settings: FeatureConfig) -> Callable:
        return feature_program(settings)

    def pad_row(self, settings: FeatureConfig) -> np.ndarray:
        return np.zeros((self.size, self.size, 3), np.float32)

    def entry(self, index: int) -> str:
        return self.files[index].relative_to(self.root).as_posix()


def tile_source(tiles: str, settings: FeatureConfig, grid: BankGrid = BankGrid()):
    """The streaming source for "gabor-bank" or a folder."""
    if tiles == BANK:
        return BankSource(grid)
    if Path(tiles).is_dir():
        return FolderSource(tiles, settings.size)
    raise JaxmosaicError(f"{tiles}: a streaming build takes {BANK} or a folder of images")


class BuildPlan(BaseModel):
    """What a build computes, kept in its build folder as `plan.json`; a resumed build must have
    the same plan."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    source: Name  # "gabor-bank" or the folder
    fingerprint: Token  # of the source
    settings: FeatureSettings  # FeatureConfig.as_dict()
    weights: Token  # fingerprint of the network's weights ("" for colour features)
    count: int = Field(ge=1, le=MAX_TILES)  # tiles in the source
    dimension: int = Field(ge=1, le=2**31 - 1)  # the length of a feature row
    chunk: int = Field(ge=1, le=65536)  # tiles per chunk
    processes: int = Field(ge=1, le=2**16)

    @property
    def chunks(self) -> int:
        return -(-self.count // self.chunk)

    def share(self, process: int) -> range:
        """The contiguous chunks process `process` owns."""
        return range(process * self.chunks // self.processes, (process + 1) * self.chunks // self.processes)

    def tiles(self, chunk: int) -> range:
        """The tiles of chunk `chunk`."""
        return range(chunk * self.chunk, min(self.count, (chunk + 1) * self.chunk))

    def key(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:20]


_CHUNK_ARRAYS = {"features": ArraySpec(kinds="f", ndim=2), "indices": ArraySpec(kinds="iu", ndim=1),
                 "skipped": ArraySpec(kinds="U", ndim=1)}
"""A chunk file: its tiles' feature rows (rows, d), their tile indices (rows,), the files skipped."""


def _chunk_name(chunk: int) -> str:
    return f"chunk-{chunk:06d}.npz"


def _bad_chunk(path: Path, reason: str) -> JaxmosaicError:
    return JaxmosaicError(f"{path}: {reason}; build without --resume to start again")


def _chunk_arrays(path: Path, plan: BuildPlan, chunk: int, *, layouts_only: bool = False) -> dict:
    """A finished chunk's arrays (or only their `Layout`s), of the kinds and shapes the plan says:
    (rows, d) features, (rows,) indices and the skipped files, together the chunk's tiles."""
    try:
        held = read_arrays(path, _CHUNK_ARRAYS, "library build chunk", layouts_only=layouts_only)
    except ArtifactError as err:
        raise _bad_chunk(path, str(err).removeprefix(f"{path}: ")) from None
    tiles, kept, lost = plan.tiles(chunk), held["indices"].shape[0], held["skipped"].shape[0]
    if held["features"].shape != (kept, plan.dimension):
        raise _bad_chunk(path, f"features: shape {held['features'].shape}, expected ({kept}, {plan.dimension})")
    if kept + lost != len(tiles):
        raise _bad_chunk(path, f"indices: {kept} tiles and {lost} skipped for the {len(tiles)} of the chunk")
    return held


def _read_chunk(path: Path, plan: BuildPlan, chunk: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(feature rows, tile indices, skipped files) of a finished chunk (`_chunk_arrays`), the rows
    finite, the indices distinct tiles of the chunk's own range, in order."""
    held = _chunk_arrays(path, plan, chunk)
    rows, indices, skipped = held["features"], held["indices"], held["skipped"]
    tiles = plan.tiles(chunk)
    if len(indices) and (indices[0] < tiles.start or indices[-1] >= tiles.stop or np.any(np.diff(indices) <= 0)):
        raise _bad_chunk(path, f"indices: not the tiles {tiles.start}..{tiles.stop - 1} of the chunk in order")
    if not np.all(np.isfinite(rows)):
        raise _bad_chunk(path, "features: not all finite")
    return rows.astype(np.float32), indices.astype(np.int64), [str(name) for name in skipped]


def top_eigen(gram: np.ndarray, k: int, *, seed: int = 0, iterations: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenvalues (descending) and their eigenvectors (d, k) of a symmetric PSD
    float64 matrix of which only the upper triangle is read. Exact (LAPACK, the k wanted only) up
    to `_EXACT_BELOW` dimensions; above, randomized subspace iteration (Halko, Martinsson and
    Tropp 2011) with 2k + 20 columns and `iterations` QR-stabilised products, then the exact
    eigenvectors of the projected matrix. Each vector's sign is chosen so its largest component
    is positive."""
    d = gram.shape[0]
    if not 1 <= k <= d:
        raise ValueError(f"k must be between 1 and {d}, got {k}")
    if d <= _EXACT_BELOW:
        values, vectors = scipy.linalg.eigh(gram, lower=False, subset_by_index=[d - k, d - 1])
    else:
        width = min(d, 2 * k + 20)

        def times(q):
            return scipy.linalg.blas.dsymm(1.0, gram, q, side=0, lower=0)

        q, _ = np.linalg.qr(times(np.random.default_rng(seed).standard_normal((d, width))))
        for _ in range(iterations):
            q, _ = np.linalg.qr(times(q))
        small_values, small_vectors = np.linalg.eigh(q.T @ times(q))
        values, vectors = small_values[-k:], q @ small_vectors[:, -k:]
    values, vectors = values[::-1], vectors[:, ::-1]
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(k)])
    return np.clip(values, 0, None), vectors * np.where(signs == 0, 1, signs)


def stream_svd_k(svd_k: int | str) -> int | str:
    """The dimensions a streamed library keeps for `svd_k`: it always holds projections, so 0
    (exact matching) keeps the most "auto" would."""
    return AUTO_SVD_CAP if svd_k == 0 else svd_k


_RENDER_COPIES = 6
"""float32 copies of a rendered tile a chunk holds at once: the Gabor kernel's terms, the grey tile
and its three channels (XLA asks for 6 x 224^2 x 4 bytes a tile for a chunk of 65536 bank tiles)."""


def stream_memory(settings: FeatureConfig, chunk: int, tiles: int, k: int | str, *, render: int = 0) -> int:
    """Bytes a streaming build of `tiles` tiles keeping k dimensions ("auto": at most
    `AUTO_SVD_CAP`) holds at its peak: one chunk's inputs (`render`: the side of the tiles the
    embedding renders itself, the bank's 224 px; 0 when it is given the tiles), its images at
    the features' size and the network's activations, G and its eigen workspace, D_k."""
    dimension = settings.dimension
    k = AUTO_SVD_CAP if k == "auto" else int(k)
    size = settings.size
    per_image = size * size * 3 * 4 * 4 + render * render * 4 * _RENDER_COPIES
    if settings.kind.network:
        per_image += size * size * 4 * (64 * 6 if settings.kind == "vgg" else 5)  # the widest activations, a few copies
    width = min(dimension, 2 * k + 20)
    return chunk * per_image + dimension * dimension * 8 * 3 + dimension * width * 8 * 4 + tiles * k * 4 * 2


def stream_disk(settings: FeatureConfig, tiles: int) -> int:
    """Bytes of the feature rows a streaming build of `tiles` tiles keeps in its build folders."""
    return tiles * settings.dimension * 4


def accumulate_gram(gram: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """gram + rows^T rows in float64, the upper triangle only (BLAS syrk, in place for a
    Fortran-ordered gram)."""
    return scipy.linalg.blas.dsyrk(1.0, np.asarray(rows, np.float64), beta=1.0, c=gram, trans=1, lower=0, overwrite_c=1)


def _sum_across_processes(array: np.ndarray) -> np.ndarray:
    """The float64 sum of `array` over all processes, near float64-exact (each process's float32
    high part and remainder are gathered), in row blocks so the gathered copies stay small."""
    if jax.process_count() == 1:
        return array
    from jax.experimental import multihost_utils

    flat = np.asarray(array, np.float64).reshape(-1)
    out = np.empty_like(flat)
    block = 1 << 22
    for start in range(0, flat.size, block):
        part = flat[start : start + block]
        high = part.astype(np.float32)
        low = (part - high).astype(np.float32)
        both = np.asarray(multihost_utils.process_allgather(np.stack([high, low])), np.float64)
        out[start : start + block] = both[:, 0].sum(0) + both[:, 1].sum(0)
    return out.reshape(np.shape(array))


def _gather_rows(rows: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every process's (rows, tile indices), concatenated in process order (padded for the gather)."""
    if jax.process_count() == 1:
        return rows, indices
    from jax.experimental import multihost_utils

    counts = np.asarray(multihost_utils.process_allgather(np.asarray([len(rows)], np.int32))).reshape(-1)
    most = int(counts.max())
    pad = most - len(rows)
    padded_rows = np.concatenate([rows, np.zeros((pad, rows.shape[1]), rows.dtype)]) if pad else rows
    padded_indices = np.concatenate([indices, np.zeros(pad, np.int64)]) if pad else indices
    all_rows = np.asarray(multihost_utils.process_allgather(padded_rows.astype(np.float32)))
    all_indices = np.asarray(multihost_utils.process_allgather(padded_indices.astype(np.int32)))
    return (np.concatenate([all_rows[p, : counts[p]] for p in range(len(counts))]),
            np.concatenate([all_indices[p, : counts[p]] for p in range(len(counts))]).astype(np.int64))


def build_folder(out: Path, processes: int = 1, process: int = 0) -> Path:
    """The build folder beside the library `out` (one per process when there are several).

    It is named after `out` so that --resume finds it. The command line locks it with `out`
    (`check_outputs`, before the build starts, for the whole build; each process its own), so two
    builds into one `out` never share it."""
    suffix = ".build" if processes == 1 else f".build-{process}-of-{processes}"
    return out.with_name(out.name + suffix)


def _held_plan(path: Path) -> BuildPlan | None:
    """The plan a build folder holds; None when it holds no readable one."""
    try:
        return BuildPlan.model_validate_json((path / "plan.json").read_bytes())
    except (OSError, ValidationError):
        return None


def kept_chunks(out: Path, *, processes: int = 1, process: int = 0) -> tuple[int, int] | None:
    """(finished chunks, chunks in all) of process `process`'s share that its build folder beside
    the library `out` keeps for --resume; None when there is no such folder with a readable plan."""
    path = build_folder(out, processes, process)
    plan = _held_plan(path)
    if plan is None:
        return None
    share = plan.share(process) if process < plan.processes else range(0)
    return sum((path / _chunk_name(c)).is_file() for c in share), len(share)


def _say_discarded(folder: OutputFolder, plan: BuildPlan, say: Callable[[str], None]) -> None:
    """Tell how many finished chunks of an earlier build starting over discards, and whether
    --resume would have continued from them."""
    chunks = [name for name in folder.previous if name.startswith("chunk-") and folder.ours(name)]
    if chunks:
        why = ("--resume would continue from them" if _held_plan(folder.path) == plan else
               "they are of a build with other settings or another source")
        say(f"starting over: discarding the {len(chunks)} finished chunk(s) kept in {folder.path} ({why})")


def _open_work(path: Path, plan: BuildPlan, resume: bool, *, say: Callable[[str], None] = lambda line: None,
               ) -> tuple[OutputFolder, set[int]]:
    """The build folder (one jaxmosaic marked as a library build, or a new one), with the chunks
    it finished when resuming (each file's arrays and shapes checked before anything is written;
    its values when it is read), else emptied of the files it lists, after `say` tells how many
    finished chunks that discards."""
    folder = OutputFolder(path, _WORK_KIND)
    plan_file = path / "plan.json"
    finished: set[int] = set()
    if resume and plan_file.is_file():
        try:
            held = BuildPlan.model_validate_json(plan_file.read_bytes())
        except ValidationError as err:
            raise JaxmosaicError(f"{schema_message(plan_file, err)}; build without --resume to start again") from None
        except OSError as err:
            raise JaxmosaicError(f"{plan_file}: cannot read it ({err.strerror}); build without --resume to start again") from None
        if held != plan:
            raise JaxmosaicError(f"--resume: {path} holds a build of other settings or another source; "
                                 f"build without --resume to start again")
        finished = {chunk for chunk in range(plan.chunks) if _chunk_name(chunk) in folder.previous}
        for chunk in sorted(finished):
            _chunk_arrays(path / _chunk_name(chunk), plan, chunk, layouts_only=True)
    else:
        _say_discarded(folder, plan, say)
        folder.clear()
    with atomic_path(folder.file("plan.json")) as tmp:
        tmp.write_text(plan.model_dump_json())
    return folder, finished


def _remove_work(path: Path) -> None:
    """Remove the build folder `path` if it is one (the files it lists, then the folder if empty)."""
    if folder_kind(path) == _WORK_KIND:
        OutputFolder(path, _WORK_KIND).remove()


def stream_library(source, settings: FeatureConfig, color: ColorMode, out: str | os.PathLike, *, params=None,
                   weights: str = "", k: int | str = AUTO_SVD_CAP, chunk: int = DEFAULT_CHUNK, resume: bool = False,
                   mesh: Mesh | None = None, progress: Callable[[int, int], None] | None = None, keep_work: bool = False,
                   say: Callable[[str], None] = lambda line: None) -> TileLibrary | None:
    """Build the library of `source` (`BankSource`, `FolderSource`) chunk by chunk and write it
    to `out` (process 0; the others return None).

    Args:
      settings: the features; `params` the network's weights they need (`weights` their fingerprint).
      k: the dimensions kept (at most min(tiles, d)), or "auto": one for the mean direction plus
        the fewest principal directions keeping `AUTO_SVD_ENERGY` (99.8%) of the spread around
        it, at most `AUTO_SVD_CAP` (see `spectrum_svd_k`).
      chunk: tiles embedded together.
      resume: reuse the chunks a killed build with the same plan finished.
      mesh: local devices to shard each chunk over (a one-axis mesh; None: one device).
      progress: receives (tiles done by this process, tiles this process owns) after each chunk.
      keep_work: keep the build folder (the feature rows) after writing the library.
    """
    out = Path(out)
    processes, process = jax.process_count(), jax.process_index()
    dimension = settings.dimension
    chunk = max(1, min(chunk, source.count))  # a chunk is padded to its size: no larger than the tiles there are
    plan = BuildPlan(source=BANK if source.kind == "bank" else str(source.root), fingerprint=source.fingerprint,
                     settings=settings.as_dict(), weights=weights, count=source.count, dimension=dimension, chunk=chunk,
                     processes=processes)
    path = build_folder(out, processes, process)
    opened = False

    def cleanup() -> None:
        """After a failure of any process: this run's chunks go, unless resumed (they stay for --resume) or the
        folder was never opened (its chunks are an earlier run's)."""
        if opened and not resume:
            _remove_work(path)

    devices = 1 if mesh is None else mesh.devices.size
    padded = -(-chunk // devices) * devices
    program = source.program(settings)
    if mesh is None:
        embed = jax.jit(program)
    else:
        rows, replicated = NamedSharding(mesh, PartitionSpec("devices")), NamedSharding(mesh, PartitionSpec())
        params = jax.device_put(params, replicated) if params is not None else None
        embed = jax.jit(program, in_shardings=(replicated, rows), out_shardings=rows)
    share = plan.share(process)
    owned = sum(len(plan.tiles(c)) for c in share)
    gram, sums = np.zeros((dimension, dimension), np.float64, order="F"), np.zeros(dimension, np.float64)
    count, done, embedded = 0, 0, 0  # embedded: tiles this run computed (not read back from finished chunks)
    with agree(cleanup=cleanup, say=say):  # one process's failure stops them all before the collectives below
        work, finished = _open_work(path, plan, resume, say=say)
        opened = True
        started = time.perf_counter()
        for c in share:
            tiles = plan.tiles(c)
            if c in finished:
                rows_c, kept, _ = _read_chunk(work.path / _chunk_name(c), plan, c)
            else:
                inputs, kept, lost = source.inputs(tiles.start, tiles.stop)
                embedded += len(tiles)
                if len(kept):
                    batch = np.concatenate([inputs, np.repeat(source.pad_row(settings)[None], padded - len(kept), axis=0)])
                    rows_c = np.asarray(embed(params, jnp.asarray(batch)))[: len(kept)]
                else:
                    rows_c = np.zeros((0, dimension), np.float32)
                if rows_c.shape[1] != dimension:
                    raise JaxmosaicError(f"tiles {tiles.start}..{tiles.stop - 1}: {rows_c.shape[1]} features each, expected {dimension}")
                if not np.all(np.isfinite(rows_c)):
                    raise JaxmosaicError(f"tiles {tiles.start}..{tiles.stop - 1}: their features are not finite; check the weights")
                with atomic_path(work.file(_chunk_name(c))) as tmp, open(tmp, "wb") as file:
                    np.savez(file, features=rows_c.astype(np.float32), indices=kept, skipped=np.asarray(lost, dtype=str))
            if len(kept):
                gram = accumulate_gram(gram, rows_c)
                sums += rows_c.sum(axis=0, dtype=np.float64)
                count += len(kept)
            done += len(tiles)
            if progress:
                progress(done, owned)
    seconds = time.perf_counter() - started
    gram = np.asfortranarray(_sum_across_processes(gram))
    sums = _sum_across_processes(sums)
    count = int(round(float(_sum_across_processes(np.asarray([count], np.float64))[0])))
    if count == 0:
        raise JaxmosaicError(f"{plan.source}: none of the {plan.count} tiles could be read")
    if k == "auto":
        mean = sums / count
        centred = np.asfortranarray(gram - count * np.outer(mean, mean))
        values, _ = top_eigen(centred, min(AUTO_SVD_CAP, dimension, count))
        total = float(np.trace(centred))
        del centred
        k = max(1, min(spectrum_svd_k(values, total), count, dimension))
    k = int(k)
    if not 1 <= k <= min(count, dimension):
        raise JaxmosaicError(f"--svd-k {k}: the library has {count} tiles of {dimension} features; use at most "
                             f"{min(count, dimension)}")
    values, basis = top_eigen(gram, k)
    energy = float(values.sum() / max(float(np.trace(gram)), 1e-30))
    projected, indices = [], []
    with agree(cleanup=cleanup, say=say):
        for c in share:
            rows_c, kept, _ = _read_chunk(work.path / _chunk_name(c), plan, c)
            if len(kept):
                projected.append((rows_c.astype(np.float64) @ basis).astype(np.float32))
                indices.append(kept)
    rows_k = np.concatenate(projected) if projected else np.zeros((0, k), np.float32)
    indices_all = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    rows_k, indices_all = _gather_rows(rows_k, indices_all)
    if processes > 1:
        say(f"process {process}: embedded {owned} tiles in {seconds:.1f} s")
    library = None
    # every process waits for process 0's write: a failure there leaves every process's chunks, and no exit 0
    with agree(on_failure="the library was not written; every process keeps its chunks: rerun with --resume", say=say):
        if process == 0:
            library = _write_library(out, source, settings, color, rows_k, indices_all, k, basis, values, energy,
                                     {"tiles_per_second": embedded / max(seconds, 1e-9), "seconds": seconds, "resumed": owned - embedded,
                                      "processes": processes, "devices": devices, "chunk": chunk})
    if not keep_work:
        work.remove()
    return library


def _write_library(out: Path, source, settings: FeatureConfig, color: ColorMode, rows_k: np.ndarray, indices_all: np.ndarray,
                   k: int, basis: np.ndarray, values: np.ndarray, energy: float, build: dict) -> TileLibrary:
    """Process 0's part of `stream_library`: the library of the projected rows, written to `out`."""
    svd = {"k": k, "basis": basis.astype(np.float32), "singular_values": np.sqrt(values).astype(np.float32), "energy": energy,
           "projected": True}
    if source.kind == "bank":
        library = TileLibrary("bank", BANK, [], None, None, rows_k, settings, color, source.fingerprint, [], svd,
                              bank=tuple(source.grid))
    else:
        entries = [source.entry(int(i)) for i in indices_all]
        lost = sorted(set(range(source.count)) - {int(i) for i in indices_all})
        library = TileLibrary("folder", str(source.root), entries, None, None, rows_k, settings, color, source.fingerprint,
                              sorted([*source.excluded, *(source.entry(i) for i in lost)]), svd)
    library.build = build
    save_library(out, library, inputs=[] if source.kind == "bank" else [source.root])
    return library
