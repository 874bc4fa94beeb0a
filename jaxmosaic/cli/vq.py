"""`jaxmosaic vq train / compress / cluster`: patch vector quantisation."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Annotated

import jax
import numpy as np
import typer

from jaxmosaic.cli._common import (
    MetricsOption,
    OverwriteOption,
    WaitOption,
    guarded,
    output_name,
    write_metrics,
)
from jaxmosaic.cli._libraries import local_mesh
from jaxmosaic.cli._options import command
from jaxmosaic.cli.console import echo, error_line, rate_progress
from jaxmosaic.config import MAX_INT, ConfigError, settings_dict
from jaxmosaic.distributed import DistributedConfig, agree, start_distributed
from jaxmosaic.errors import ImageError, JaxmosaicError
from jaxmosaic.io.checkpoints import (
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from jaxmosaic.io.files import atomic_path
from jaxmosaic.io.folders import OutputFolder
from jaxmosaic.io.images import image_files, image_size, load_image, save_image
from jaxmosaic.io.outputs import check_outputs
from jaxmosaic.kmeans_stream import KMeansInterrupted
from jaxmosaic.live import live_view
from jaxmosaic.pictures import codebook_grid, dendrogram_image, montage, side_by_side
from jaxmosaic.resources import check_memory, format_bytes, memory_budget
from jaxmosaic.techniques.vq import (
    VQConfig,
    cluster_images,
    compress_image,
    encode_memory,
    load_codebook,
    save_codebook,
    train_codebook,
    train_memory,
)
from jaxmosaic.techniques.vq_stream import (
    PatchStream,
    VQStreamConfig,
    check_stream_k,
    compressed_names,
    compression_summary,
    plan_chunk,
    scan_images,
    sparse_cosine_distances,
    stream_compress,
    stream_histograms,
    stream_training_bytes,
    train_codebook_stream,
)

app = typer.Typer(help="Patch vector quantisation: a k-means shape inventory, VQ compression, image clustering.",
                  no_args_is_help=True, rich_markup_mode="rich")
CodebookOption = Annotated[Path, typer.Option(help="A codebook from `jaxmosaic vq train`.")]


@app.command("train")
@guarded
@command(config=VQConfig, stream=VQStreamConfig, distributed=DistributedConfig)
def train(
    images: Annotated[list[Path], typer.Argument(help="Training images, or folders of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The codebook (.npz); a picture of it goes to OUT-grid.png.")],
    config: VQConfig,
    stream: VQStreamConfig,
    distributed: DistributedConfig,
    metrics: MetricsOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Learn a codebook of patch shapes from IMAGES with k-means.

    --sample faiss, --exact or --batch-size stream the images a chunk of patches at a time (memory
    bounded by --max-memory), shard each chunk over the local devices and, with --coordinator,
    --num-processes and --process-id, share the files among processes; --checkpoint/--resume
    continue a stopped run.
    """
    method = stream.method(config)
    if method is not None or distributed.active:
        _train_streaming(images, out, config, stream, distributed, metrics, overwrite=overwrite)
        return
    web, wait = stream.web, stream.wait
    with live_view(web, command="vq train", say=echo) as live:
        files = image_files(images)
        grid = output_name(out, "grid", ".png")
        check_outputs([], [*files, *images], images=[grid], files=[(out, "vq-codebook"), (metrics, "metrics")], overwrite=overwrite,
                      wait=wait, say=echo)
        pictures = [load_image(path) for path in files]
        check_memory(train_memory(config, pictures, names=[str(path) for path in files]), "k-means on these patches",
                     hint="fewer --samples, a larger --stride or a smaller --k")
        if live is not None:  # k-means runs as one compiled program: its start and its end
            live.publish({"message": f"k-means: up to {config.samples} patches into {config.k} codes", "step": 0,
                          "steps": config.iterations, "unit": "iterations"})
        start = time.perf_counter()
        codebook, result = train_codebook(config, pictures, names=[str(path) for path in files])
        seconds = time.perf_counter() - start
        save_codebook(out, codebook, inputs=files)
        picture = codebook_grid(codebook.centers, config.patch)
        save_image(grid, picture, inputs=files)
        used = len(np.unique(np.asarray(result.labels)))
        samples = codebook.info["samples"]
        if live is not None:
            iterations = codebook.info["iterations"]
            live.publish({"message": f"k-means: {samples} patches, {used} of {config.k} codes in use", "step": iterations,
                          "steps": config.iterations, "done": iterations, "total": iterations, "unit": "iterations",
                          "loss": {"inertia": codebook.info["inertia"], "per_patch": codebook.info["inertia"] / samples}},
                         image=picture)
        echo(f"k-means: {samples} patches of {config.patch}x{config.patch}x{config.channels}, k = {config.k}")
        echo(f"wrote {out} and {grid}: inertia {codebook.info['inertia']:.6g} after {codebook.info['iterations']} iterations, "
             f"{used} of {config.k} codes in use, {seconds:.1f} s")
        write_metrics(metrics, "vq-train", settings_dict(config), files, [out, grid], steps=codebook.info["iterations"],
                      seconds=seconds, loss={"total": codebook.info["inertia"], "per_patch": codebook.info["inertia"] / samples},
                      codebook={**codebook.info, "codes_used": used})


def _train_streaming(images: list[Path], out: Path, config: VQConfig, stream: VQStreamConfig, distributed: DistributedConfig,
                     metrics: Path | None, *, overwrite: bool) -> None:
    """`vq train` over a stream of patches: sampled, exact or mini-batch, over devices and processes."""
    start_distributed(distributed, say=echo)
    processes, process = jax.process_count(), jax.process_index()
    method = stream.method(config) or "exact"
    if method == "batch" and processes > 1:
        raise JaxmosaicError("--batch-size: mini-batch k-means runs in one process; use --exact or --sample faiss "
                             "over several processes")
    grid = output_name(out, "grid", ".png")
    with agree(on_failure="no process started") as shared:
        files = image_files(images)
        written = [grid] if process == 0 else []
        check_outputs([], [*files, *images], images=written, files=[(out, "vq-codebook"), (metrics, "metrics")] if process == 0 else [],
                      overwrite=overwrite, wait=stream.wait, say=echo)
        if stream.checkpoint is not None and Path(stream.checkpoint).exists() and not Path(stream.checkpoint).is_dir():
            raise ConfigError("checkpoint", f"{stream.checkpoint} is a file; give a folder (new, or a run's to --resume)")
        patches = PatchStream(files, config, processes=processes, process=process)
        check_stream_k(patches, config)
        mesh = local_mesh(stream.devices)
        devices = 1 if mesh is None else mesh.size
        budget = memory_budget(stream.max_memory)
        checkpoint = None if stream.checkpoint is None else (
            Path(stream.checkpoint) if processes == 1 else Path(stream.checkpoint) / f"process-{process}")
        resume_state = None
        if stream.resume:  # the saved run's chunks are kept: chunk c must be the same patches
            resume_state, patches.chunk = _resumed(checkpoint, patches, config, method)
        else:
            patches.chunk = plan_chunk(patches, config, method, budget, devices, processes=processes)
        needed = stream_training_bytes(patches, config, method, chunk=patches.chunk, devices=devices, processes=processes)
        check_memory(needed, f"streaming k-means in chunks of {patches.chunk} patches" + (" (the saved run's)" if stream.resume else ""),
                     budget=budget, hint="a smaller --k" if not stream.resume else "a larger --max-memory")
        shared.update({"settings": settings_dict(config), "method": method, "IMAGES": patches.fingerprint()})
        if stream.resume:  # every process must continue from the same pass (chunks within it are each one's own)
            shared["pass"] = int(resume_state.get("stage", 0))
    for line in patches.skipped[:5]:
        echo(f"skipped {line}")
    if len(patches.skipped) > 5:
        echo(f"skipped {len(patches.skipped) - 5} more file(s)")
    echo(f"streaming {patches.total} patches of {config.patch}x{config.patch}x{config.channels} from {len(patches.all_files)} "
         f"image(s) in chunks of {patches.chunk} ({method}; {devices} device(s), {processes} process(es); about "
         f"{format_bytes(needed)})")
    passes: list[dict] = []
    meta = {"settings": settings_dict(config, resumable_only=True), "method": method, "images": patches.fingerprint(), "chunk": patches.chunk}

    marks = [time.perf_counter()]

    def on_pass(state: dict) -> None:
        marks.append(time.perf_counter())
        if state["pass"]:
            passes.append({"pass": state["pass"], "inertia": state["inertia"], "reseeded": state["reseeded_now"],
                           "seconds": marks[-1] - marks[-2]})
            echo(f"pass {state['pass']}: inertia {state['inertia']:.6g}, {state['reseeded_now']} cluster(s) re-seeded")
        if live is not None:  # one message a pass: its inertia, and the codebook it ends with
            _publish_pass(live, state, config)
        if checkpoint is not None:
            _save_run(checkpoint, state, meta)

    start = marks[0] = time.perf_counter()
    with live_view(stream.web if process == 0 else None, command="vq train", say=echo) as live:
        try:
            with rate_progress(f"k-means ({method})", unit="patches") as progress:
                done = [0]

                def on_chunk(count: int) -> None:
                    done[0] += count
                    progress(done[0] % max(1, patches.points) or patches.points, patches.points)

                codebook, result = train_codebook_stream(config, patches, method, mesh=mesh, state=resume_state,
                                                         on_pass=on_pass, on_chunk=on_chunk)
        except KMeansInterrupted as stopped:
            _report_failed(patches)
            if checkpoint is not None:
                _save_run(checkpoint, stopped.state, meta)
                error_line(f"interrupted; saved in {checkpoint}; rerun with --resume to continue")
            else:
                error_line("interrupted; nothing saved (no --checkpoint)")
            raise typer.Exit(130) from None
    seconds = time.perf_counter() - start
    _report_failed(patches)
    if process != 0:
        echo(f"process {process}: done; process 0 wrote {out}")
        return
    codebook.info["images"] = codebook.info["images"][:2**20]
    save_codebook(out, codebook, inputs=files)
    save_image(grid, codebook_grid(codebook.centers, config.patch), inputs=files)
    used = result.used  # after the last split of empty clusters: the codebook's codes that hold points
    echo(f"wrote {out} and {grid}: inertia {result.inertia:.6g} over {result.samples} patches after {result.iterations} "
         f"passes, {used} of {config.k} codes in use, {seconds:.1f} s")
    write_metrics(metrics, "vq-train", {**settings_dict(config), **settings_dict(stream), "method": method}, files, [out, grid],
                  steps=result.iterations, seconds=seconds,
                  loss={"total": result.inertia, "per_patch": result.inertia / max(1, result.samples)},
                  codebook={**codebook.info, "codes_used": used},
                  stream={"method": method, "patches": result.points, "samples": result.samples, "chunk": patches.chunk,
                          "devices": devices, "processes": processes, "passes": passes, "reseeded": result.reseeded,
                          "skipped": patches.skipped, "failed": patches.failed})


def _publish_pass(live, state: dict, config: VQConfig) -> None:
    """A streaming pass on the live view: its number and inertia, and the codebook's picture."""
    step = int(state["pass"])
    update = {"step": step, "steps": config.iterations, "done": step, "total": config.iterations, "unit": "iterations"}
    if not step:
        live.publish({**update, "message": "sampling pass done; k-means starts from the seeds shown"},
                     image=codebook_grid(np.asarray(state["centers"]), config.patch))
        return
    live.publish({**update, "message": f"pass {step}: inertia {state['inertia']:.6g}, {state['reseeded_now']} cluster(s) re-seeded",
                  "loss": {"total": state["inertia"]}}, image=codebook_grid(np.asarray(state["centers"]), config.patch))


def _report_failed(patches: PatchStream) -> None:
    """A line for each file that failed to decode during the passes (its patches were left out)."""
    for line in patches.failed:
        echo(f"skipped {line}; its patches were left out of the passes")


def _shape(path: Path) -> tuple[int, int]:
    """(height, width) of an image as `load_image` returns it, from its header; (0, 0) when it
    cannot be read (it is skipped later)."""
    try:
        width, height = image_size(path)
    except (ImageError, OSError):
        return 0, 0
    return height, width


def _save_run(checkpoint: Path, state: dict, meta: dict) -> None:
    """A run's state as a checkpoint: its arrays (Orbax) and the rest (numbers, lists) with `meta`."""
    arrays = {name: np.asarray(value) for name, value in state.items() if hasattr(value, "shape")}
    plain = {name: value for name, value in state.items() if not hasattr(value, "shape")}
    save_checkpoint(checkpoint, arrays, {**meta, "run": plain})


def _resumed(checkpoint: Path, patches: PatchStream, config: VQConfig, method: str) -> tuple[dict, int]:
    """(the state saved in `checkpoint`, its chunk size), after checking it is this run's
    (settings, method, images); the chunk size is the saved run's, whatever the memory now free."""
    meta = read_checkpoint_meta(checkpoint)
    for name, wanted in (("settings", settings_dict(config, resumable_only=True)), ("method", method), ("images", patches.fingerprint())):
        if meta.get(name) != wanted:
            raise JaxmosaicError(f"--resume: {checkpoint} holds a run with other {name} than this one; "
                                 "give the same images and options, or another --checkpoint")
    chunk = meta.get("chunk")
    if not isinstance(chunk, int) or chunk < 1:
        raise JaxmosaicError(f"--resume: {checkpoint} does not say its chunk size; start the run again")
    arrays, _ = load_checkpoint(checkpoint, None)
    return {**{name: np.asarray(value) for name, value in arrays.items()}, **meta["run"]}, chunk


DevicesOption = Annotated[int | None, typer.Option(help="Local devices to shard each image's patches over (default: all).",
                                                   min=1, max=MAX_INT)]


@app.command("compress")
@guarded
def compress(
    image: Annotated[Path, typer.Argument(help="The image to compress, or a folder of images (compressed one at a time).")],
    codebook: CodebookOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="The reconstruction; OUT-side.png shows it next to the image. "
                                                          "For a folder: the output folder (NAME.vq.png and NAME.side.png per image).")],
    stride: Annotated[int | None, typer.Option(help="Step between patches (default: the patch size, no overlap; smaller averages overlaps).",
                                               min=1, max=4096)] = None,
    devices: DevicesOption = None,
    metrics: Annotated[Path | None, typer.Option(help="Write a JSON summary here (PSNR, bits per pixel, codes used).")] = None,
    overwrite: OverwriteOption = False,
    wait: WaitOption = False,
) -> None:
    """Replace every patch of IMAGE (or of every image of a folder) by its nearest codebook entry."""
    if image.is_dir():
        _compress_folder(image, codebook, out, stride, local_mesh(devices), metrics, overwrite=overwrite, wait=wait)
        return
    side = output_name(out, "side")
    inputs = [image, codebook]
    check_outputs([], inputs, images=[out, side], files=[(metrics, "metrics")], overwrite=overwrite, wait=wait, say=echo)
    book = load_codebook(codebook)
    start = time.perf_counter()
    picture = load_image(image)
    check_memory(encode_memory(book, picture.shape, stride=stride), f"the patches of {image}", hint="a larger --stride")
    result = compress_image(book, picture, stride, mesh=local_mesh(devices))
    seconds = time.perf_counter() - start
    save_image(out, result.image, inputs=inputs)
    save_image(side, side_by_side([result.original, result.image]), inputs=inputs)
    height, width = result.image.shape[:2]
    codes = len(np.unique(result.codes))
    echo(f"wrote {out} ({width}x{height}) and {side}: PSNR {result.psnr:.2f} dB, {codes} distinct codes, "
         f"{result.bits_per_pixel:.3f} bits per pixel (codes only)")
    settings = {"patch": book.size, "stride": stride or book.size, "normalize": str(book.normalize)}
    write_metrics(metrics, "vq-compress", settings, inputs, [out, side], seconds=seconds, loss={"total": result.mse, "mse": result.mse},
                  compression={"size": [width, height], "psnr": result.psnr, "bits_per_pixel": result.bits_per_pixel,
                               "patches": int(result.codes.size), "distinct_codes": codes})


def _compress_folder(folder: Path, codebook: Path, out: Path, stride: int | None, mesh, metrics: Path | None, *,
                     overwrite: bool, wait: bool) -> None:
    """`vq compress FOLDER`: every image compressed alone, one in memory at a time, into the
    output folder OUT; unreadable files and images smaller than a patch are skipped and listed."""
    files = image_files([folder])
    inputs = [*files, codebook]
    check_outputs([], [*inputs, folder], files=[(metrics, "metrics")], folders=[(out, "vq-compressed")], overwrite=overwrite,
                  wait=wait, say=echo)
    book = load_codebook(codebook)
    kept, sizes, skipped = scan_images(files, book.size)
    if not kept:
        raise JaxmosaicError(f"{folder}: no image with a {book.size}x{book.size} patch among its {len(files)} file(s)")
    shape, largest = max(zip(sizes, kept), key=lambda item: item[0][0] * item[0][1])
    check_memory(encode_memory(book, shape, stride=stride), f"the patches of {largest} (the largest image)", hint="a larger --stride")
    names = dict(zip(kept, compressed_names(kept, root=folder)))
    target = OutputFolder(out, "vq-compressed", say=echo)
    target.expect(name for pair in names.values() for name in pair)  # one marker write, whatever the number of images
    per_image, written = [], []
    start = time.perf_counter()
    with rate_progress("vq compress", unit="images") as progress:
        for path, result in stream_compress(book, kept, stride=stride, mesh=mesh):
            if isinstance(result, str):
                skipped.append(f"{path} ({result})")
            else:
                rebuilt, side = names[path]
                written.append(save_image(target.file(rebuilt), result.image, inputs=inputs))
                written.append(save_image(target.file(side), side_by_side([result.original, result.image]), inputs=inputs))
                height, width = result.image.shape[:2]
                per_image.append({"image": str(path), "output": str(written[-2]), "size": [width, height], "psnr": result.psnr,
                                  "mse": result.mse, "bits_per_pixel": result.bits_per_pixel, "patches": int(result.codes.size),
                                  "distinct_codes": len(np.unique(result.codes)), "values": int(result.image.size),
                                  "pixels": int(result.codes.size) * (stride or book.size) ** 2,
                                  "bits": result.bits_per_pixel * int(result.codes.size) * (stride or book.size) ** 2})
            progress(len(per_image) + len(skipped), len(files))
    seconds = time.perf_counter() - start
    target.finish()
    for line in skipped[:5]:
        echo(f"skipped {line}")
    if len(skipped) > 5:
        echo(f"skipped {len(skipped) - 5} more file(s)")
    if not per_image:
        raise JaxmosaicError(f"{folder}: none of its {len(files)} file(s) could be compressed")
    summary = compression_summary(per_image)
    echo(f"wrote {len(per_image)} images to {out}: PSNR {summary['psnr']:.2f} dB over them all, "
         f"{summary['bits_per_pixel']:.3f} bits per pixel (codes only), {seconds:.1f} s")
    settings = {"patch": book.size, "stride": stride or book.size, "normalize": str(book.normalize),
                "devices": 1 if mesh is None else mesh.size}
    write_metrics(metrics, "vq-compress", settings, inputs, written, seconds=seconds,
                  loss={"total": summary["mse"], "mse": summary["mse"]},
                  compression={**summary, "per_image": [{key: value for key, value in item.items() if key not in ("values", "pixels", "bits")}
                                                        for item in per_image], "skipped": skipped})


@app.command("cluster")
@guarded
def cluster(
    images: Annotated[list[Path], typer.Argument(help="Images to group, or folders of them.")],
    codebook: CodebookOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: clusters.csv, cluster-N.png montages, dendrogram.png.")],
    clusters: Annotated[int, typer.Option(help="Number of groups (at most).", min=1, max=MAX_INT)] = 6,
    metrics: MetricsOption = None,
    overwrite: OverwriteOption = False,
    wait: WaitOption = False,
) -> None:
    """Group IMAGES by their histograms of patch codes (cosine distance, average linkage)."""
    files = image_files(images)
    inputs = [*files, codebook]
    check_outputs([], [*inputs, *images], files=[(metrics, "metrics")], folders=[(out, "clusters")], overwrite=overwrite,
                  wait=wait, say=echo)
    book = load_codebook(codebook)
    shape, largest = max(((_shape(path), path) for path in files), key=lambda item: item[0][0] * item[0][1])
    # the distances: scipy's float64 product, its dense copy, 1 - it, the clip, the float32 copy, the
    # symmetrised and condensed copies of the linkage: about 28 n^2 bytes at the peak (measured 26)
    check_memory(encode_memory(book, shape, stride=book.stride) + len(files) ** 2 * 28, f"the patches of {largest} (the largest "
                 f"image) and the {len(files)} x {len(files)} distances", hint="smaller images, or fewer at once")
    mesh = local_mesh(None)
    start = time.perf_counter()
    with rate_progress("code histograms", unit="images") as progress:
        histograms, kept, skipped = stream_histograms(book, files, mesh=mesh, on_image=lambda done: progress(done, len(files)))
    for line in skipped:
        echo(f"skipped {line}")
    if len(kept) < 2:
        raise JaxmosaicError(f"clustering needs at least two images with a {book.size}x{book.size} patch; {len(kept)} given")
    files = kept
    groups, tree = cluster_images(sparse_cosine_distances(histograms), clusters)
    seconds = time.perf_counter() - start
    folder = OutputFolder(out, "clusters", say=echo)
    table = io.StringIO()
    csv.writer(table).writerows([("image", "cluster"), *((str(path), int(group)) for path, group in zip(files, groups))])
    with atomic_path(folder.file("clusters.csv"), inputs) as tmp:
        tmp.write_text(table.getvalue())
    written = [out / "clusters.csv"]
    for group in sorted(set(groups.tolist())):
        members = montage([load_image(files[i]) for i in np.flatnonzero(groups == group)])
        written.append(save_image(folder.file(f"cluster-{group}.png"), members, inputs=inputs))
    written.append(save_image(folder.file("dendrogram.png"), dendrogram_image(tree, [path.stem for path in files]), inputs=inputs))
    folder.finish()
    sizes = {int(g): int(np.sum(groups == g)) for g in sorted(set(groups.tolist()))}
    echo(f"{len(files)} images in {len(sizes)} clusters (sizes {', '.join(map(str, sizes.values()))}); wrote {out}")
    write_metrics(metrics, "vq-cluster", {"clusters": clusters, "patch": book.size, "stride": book.stride}, inputs, written,
                  seconds=seconds, clusters={"sizes": sizes, "assignments": {str(p): int(g) for p, g in zip(files, groups)}})
