"""`jaxmosaic vq train / compress / cluster`: patch vector quantisation."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from jaxmosaic.cli._common import MetricsOption, OverwriteOption, WaitOption, WebOption, guarded, output_name, write_metrics
from jaxmosaic.cli.console import echo
from jaxmosaic.cli._options import command
from jaxmosaic.config import MAX_INT, settings_dict
from jaxmosaic.io.files import atomic_path
from jaxmosaic.io.folders import OutputFolder
from jaxmosaic.io.outputs import check_outputs
from jaxmosaic.io.images import image_files, load_image, save_image
from jaxmosaic.live import live_view
from jaxmosaic.pictures import codebook_grid, dendrogram_image, montage, side_by_side
from jaxmosaic.resources import check_memory
from jaxmosaic.techniques.vq import VQConfig, compress_image, group_images, load_codebook, save_codebook, train_codebook
from jaxmosaic.techniques.vq import encode_memory, train_memory

app = typer.Typer(help="Patch vector quantisation: a k-means shape inventory, VQ compression, image clustering.",
                  no_args_is_help=True, rich_markup_mode="rich")
CodebookOption = Annotated[Path, typer.Option(help="A codebook from `jaxmosaic vq train`.")]


@app.command("train")
@guarded
@command(config=VQConfig)
def train(
    images: Annotated[list[Path], typer.Argument(help="Training images, or folders of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The codebook (.npz); a picture of it goes to OUT-grid.png.")],
    config: VQConfig,
    metrics: MetricsOption = None,
    overwrite: OverwriteOption = False,
    wait: WaitOption = False,
    web: WebOption = None,
) -> None:
    """Learn a codebook of patch shapes from IMAGES with k-means."""
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
        used = int(len(np.unique(np.asarray(result.labels))))
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


@app.command("compress")
@guarded
def compress(
    image: Annotated[Path, typer.Argument(help="The image to compress.")],
    codebook: CodebookOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="The reconstruction; OUT-side.png shows it next to the image.")],
    stride: Annotated[int | None, typer.Option(help="Step between patches (default: the patch size, no overlap; smaller averages overlaps).",
                                               min=1, max=4096)] = None,
    metrics: Annotated[Path | None, typer.Option(help="Write a JSON summary here (PSNR, bits per pixel, codes used).")] = None,
    overwrite: OverwriteOption = False,
    wait: WaitOption = False,
) -> None:
    """Replace every patch of IMAGE by its nearest codebook entry."""
    side = output_name(out, "side")
    inputs = [image, codebook]
    check_outputs([], inputs, images=[out, side], files=[(metrics, "metrics")], overwrite=overwrite, wait=wait, say=echo)
    book = load_codebook(codebook)
    start = time.perf_counter()
    picture = load_image(image)
    check_memory(encode_memory(book, picture.shape, stride=stride), f"the patches of {image}", hint="a larger --stride")
    result = compress_image(book, picture, stride)
    seconds = time.perf_counter() - start
    save_image(out, result.image, inputs=inputs)
    save_image(side, side_by_side([result.original, result.image]), inputs=inputs)
    height, width = result.image.shape[:2]
    codes = int(len(np.unique(result.codes)))
    echo(f"wrote {out} ({width}x{height}) and {side}: PSNR {result.psnr:.2f} dB, {codes} distinct codes, "
         f"{result.bits_per_pixel:.3f} bits per pixel (codes only)")
    settings = {"patch": book.size, "stride": stride or book.size, "normalize": str(book.normalize)}
    write_metrics(metrics, "vq-compress", settings, inputs, [out, side], seconds=seconds, loss={"total": result.mse, "mse": result.mse},
                  compression={"size": [width, height], "psnr": result.psnr, "bits_per_pixel": result.bits_per_pixel,
                               "patches": int(result.codes.size), "distinct_codes": codes})


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
    pictures = [load_image(path) for path in files]
    largest = max(range(len(pictures)), key=lambda i: encode_memory(book, pictures[i].shape))
    check_memory(encode_memory(book, pictures[largest].shape), f"the patches of {files[largest]} (the largest image)",
                 hint="smaller images, or fewer at once")
    start = time.perf_counter()
    groups, tree = group_images(book, pictures, clusters, names=[str(path) for path in files])
    seconds = time.perf_counter() - start
    folder = OutputFolder(out, "clusters", say=echo)
    table = io.StringIO()
    csv.writer(table).writerows([("image", "cluster"), *((str(path), int(group)) for path, group in zip(files, groups))])
    with atomic_path(folder.file("clusters.csv"), inputs) as tmp:
        tmp.write_text(table.getvalue())
    written = [out / "clusters.csv"]
    for group in sorted(set(groups.tolist())):
        members = montage([pictures[i] for i in np.flatnonzero(groups == group)])
        written.append(save_image(folder.file(f"cluster-{group}.png"), members, inputs=inputs))
    written.append(save_image(folder.file("dendrogram.png"), dendrogram_image(tree, [path.stem for path in files]), inputs=inputs))
    folder.finish()
    sizes = {int(g): int(np.sum(groups == g)) for g in sorted(set(groups.tolist()))}
    echo(f"{len(files)} images in {len(sizes)} clusters (sizes {', '.join(map(str, sizes.values()))}); wrote {out}")
    write_metrics(metrics, "vq-cluster", {"clusters": clusters, "patch": book.size, "stride": book.stride}, inputs, written,
                  seconds=seconds, clusters={"sizes": sizes, "assignments": {str(p): int(g) for p, g in zip(files, groups)}})
