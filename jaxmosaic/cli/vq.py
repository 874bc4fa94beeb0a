"""`jaxmosaic vq train / compress / cluster`: patch vector quantisation."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from jaxmosaic.cli._common import echo, guarded, output_name

app = typer.Typer(help="Patch vector quantisation: a k-means shape inventory, VQ compression, image clustering.",
                  no_args_is_help=True, rich_markup_mode="rich")


class Normalize(str, Enum):
    gray = "gray"
    rgb = "rgb"
    center = "center"
    contrast = "contrast"


class Init(str, Enum):
    plusplus = "k-means++"
    random = "random"


def image_files(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded to the images under them; at least one image."""
    from jaxmosaic.tile_library import scan_folder

    files: list[Path] = []
    for path in paths:
        files.extend(scan_folder(path) if path.is_dir() else [path])
    if not files:
        raise ValueError("no images given (IMAGES is empty, or its folders hold no image files)")
    return files


def check_patch_fits(files: list[Path], size: int) -> None:
    """Every image is at least one patch wide and high (headers only, before any decoding)."""
    from jaxmosaic.image import image_size

    for path in files:
        width, height = image_size(path)
        if min(width, height) < size:
            raise ValueError(f"--patch {size} is larger than {path} ({width}x{height})")


@app.command("train")
@guarded
def train(
    images: Annotated[list[Path], typer.Argument(help="Training images, or folders of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The codebook (.npz); a picture of it goes to OUT-grid.png.")],
    patch: Annotated[int, typer.Option(help="Patch side in pixels.")] = 8,
    stride: Annotated[int, typer.Option(help="Step between patches.")] = 4,
    k: Annotated[int, typer.Option(help="Codebook size (clusters).")] = 1024,
    samples: Annotated[int, typer.Option(help="Patches drawn from all the images' patches for k-means.")] = 70000,
    normalize: Annotated[Normalize, typer.Option(help="gray (channels averaged), rgb, center (mean removed), contrast (and divided by the std).")] = Normalize.gray,
    iterations: Annotated[int, typer.Option(help="Lloyd iterations (or mini-batch steps with --batch-size).")] = 100,
    init: Annotated[Init, typer.Option(help="Seeding.")] = Init.plusplus,
    batch_size: Annotated[int | None, typer.Option(help="Mini-batch k-means with this batch size (default: full Lloyd).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampling and the seeding.")] = 0,
    metrics: Annotated[Path | None, typer.Option(help="Write a JSON summary here.")] = None,
) -> None:
    """Learn a codebook of patch shapes from IMAGES with k-means."""
    import jax
    import numpy as np

    from jaxmosaic.files import check_outputs, write_json
    from jaxmosaic.image import load_image, save_image
    from jaxmosaic.kmeans import kmeans
    from jaxmosaic.resources import check_memory
    from jaxmosaic.search import match_memory_bytes
    from jaxmosaic.techniques.vq import Codebook, codebook_grid, sample_patches, save_codebook

    if patch < 1 or stride < 1 or k < 1 or samples < 1 or iterations < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError("--patch, --stride, --k, --samples, --iterations and --batch-size must be positive")
    files = image_files(images)
    grid = output_name(out, "grid", ".png")
    check_outputs([out, grid, metrics], files)
    check_patch_fits(files, patch)
    channels = 3 if normalize == Normalize.rgb else 1
    check_memory(samples * patch * patch * channels * 4 * 4 + match_memory_bytes(samples, patch * patch * channels + 1),
                 f"k-means on {samples} patches")
    start = time.perf_counter()
    key = jax.random.PRNGKey(seed)
    data = sample_patches(key, [load_image(path) for path in files], patch, stride, samples, normalize=normalize.value)
    if k > len(data):
        raise ValueError(f"--k {k} is larger than the number of patches ({len(data)}); use a smaller --k or more images")
    echo(f"k-means: {len(data)} patches of {patch}x{patch}x{channels}, k = {k}")
    fit_start = time.perf_counter()
    result = jax.block_until_ready(kmeans(jax.random.fold_in(key, 1), data, k, init=init.value, max_iter=iterations,
                                          batch_size=batch_size))
    fit_seconds = time.perf_counter() - fit_start
    info = {"images": [str(p) for p in files], "samples": int(len(data)), "k": k, "init": init.value, "iterations": int(result.iterations),
            "batch_size": batch_size, "inertia": float(result.inertia), "seed": seed}
    save_codebook(out, Codebook(np.asarray(result.centers), patch, stride, normalize.value, info), inputs=files)
    save_image(grid, codebook_grid(np.asarray(result.centers), patch), inputs=files)
    used = int(len(np.unique(np.asarray(result.labels))))
    echo(f"wrote {out} and {grid}: inertia {float(result.inertia):.6g} after {int(result.iterations)} iterations, "
         f"{used} of {k} codes in use, {fit_seconds:.1f} s")
    if metrics:
        write_json(metrics, {"technique": "vq-train", **info, "codes_used": used, "seconds": fit_seconds,
                             "wall_seconds": time.perf_counter() - start,
                             "inertia_per_patch": float(result.inertia) / len(data),
                             "outputs": [str(out), str(grid)]}, inputs=files)


@app.command("compress")
@guarded
def compress(
    image: Annotated[Path, typer.Argument(help="The image to compress.")],
    codebook: Annotated[Path, typer.Option(help="A codebook from `jaxmosaic vq train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The reconstruction; OUT-side.png shows it next to the image.")],
    stride: Annotated[int | None, typer.Option(help="Step between patches (default: the patch size, no overlap; smaller averages overlaps).")] = None,
    metrics: Annotated[Path | None, typer.Option(help="Write a JSON summary here (PSNR, bits per pixel, codes used).")] = None,
) -> None:
    """Replace every patch of IMAGE by its nearest codebook entry."""
    import math

    import numpy as np

    from jaxmosaic.files import check_outputs, write_json
    from jaxmosaic.image import load_image, save_image, side_by_side
    from jaxmosaic.techniques.vq import load_codebook, vq_decode, vq_encode

    side = output_name(out, "side")
    check_outputs([out, side, metrics], [image, codebook])
    book = load_codebook(codebook)
    step = stride or book.size
    if step < 1:
        raise ValueError("--stride must be positive")
    picture = load_image(image)
    height, width = picture.shape[:2]
    if min(height, width) < book.size:
        raise ValueError(f"{image} ({width}x{height}) is smaller than the codebook's {book.size}x{book.size} patches")
    encoded = vq_encode(picture, book.centers, book.size, step, normalize=book.normalize)
    rebuilt = np.asarray(vq_decode(encoded, book.centers, (height, width), book.size, step)).clip(0, 1)
    covered_h = (height - book.size) // step * step + book.size
    covered_w = (width - book.size) // step * step + book.size
    rebuilt, original = rebuilt[:covered_h, :covered_w], picture[:covered_h, :covered_w]
    reference = original.mean(axis=-1, keepdims=True) if rebuilt.shape[-1] == 1 else original
    mse = float(np.mean((rebuilt - reference) ** 2))
    psnr = 10 * math.log10(1.0 / max(mse, 1e-12))
    save_image(out, rebuilt, inputs=[image, codebook])
    save_image(side, side_by_side([original, rebuilt]), inputs=[image, codebook])
    codes = np.asarray(encoded.codes)
    bits = math.log2(len(book.centers)) / (step * step)
    echo(f"wrote {out} ({covered_w}x{covered_h}) and {side}: PSNR {psnr:.2f} dB, {len(np.unique(codes))} distinct codes, "
         f"{bits:.3f} bits per pixel (codes only)")
    if metrics:
        write_json(metrics, {"technique": "vq-compress", "image": str(image), "codebook": str(codebook), "patch": book.size,
                             "stride": step, "normalize": book.normalize, "size": [covered_w, covered_h], "psnr": psnr, "mse": mse,
                             "bits_per_pixel": bits, "patches": int(codes.size), "distinct_codes": int(len(np.unique(codes))),
                             "outputs": [str(out), str(side)]}, inputs=[image, codebook])


@app.command("cluster")
@guarded
def cluster(
    images: Annotated[list[Path], typer.Argument(help="Images to group, or folders of them.")],
    codebook: Annotated[Path, typer.Option(help="A codebook from `jaxmosaic vq train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: clusters.csv, cluster-N.png montages, dendrogram.png.")],
    clusters: Annotated[int, typer.Option(help="Number of groups (at most).")] = 6,
    metrics: Annotated[Path | None, typer.Option(help="Write a JSON summary here.")] = None,
) -> None:
    """Group IMAGES by their histograms of patch codes (cosine distance, average linkage)."""
    import csv
    import io

    import numpy as np

    from jaxmosaic.files import atomic_path, check_outputs, write_json
    from jaxmosaic.image import load_image, save_image
    from jaxmosaic.techniques.vq import (
        cluster_images,
        code_histograms,
        cosine_distances,
        dendrogram_image,
        extract_patches,
        load_codebook,
        montage,
    )
    from jaxmosaic.kmeans import nearest_centers

    files = image_files(images)
    if len(files) < 2 or clusters < 1:
        raise ValueError("clustering needs at least two images and --clusters of at least 1")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    check_outputs([out, metrics], [*files, codebook])
    book = load_codebook(codebook)
    check_patch_fits(files, book.size)
    histograms, thumbnails = [], []
    for path in files:
        picture = load_image(path)
        patches = extract_patches(picture, book.size, book.stride, normalize=book.normalize)
        labels, _ = nearest_centers(patches.reshape(-1, book.centers.shape[1]), book.centers)
        histograms.append(np.asarray(code_histograms(labels, len(book.centers))))
        thumbnails.append(picture)
    distances = np.asarray(cosine_distances(np.stack(histograms)))
    groups, tree = cluster_images(distances, clusters)
    out.mkdir(exist_ok=True)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["image", "cluster"])
    writer.writerows((str(path), int(group)) for path, group in zip(files, groups))
    with atomic_path(out / "clusters.csv", files) as tmp:
        tmp.write_text(table.getvalue())
    written = [str(out / "clusters.csv")]
    for group in sorted(set(groups.tolist())):
        members = [thumbnails[i] for i in np.nonzero(groups == group)[0]]
        save_image(out / f"cluster-{group}.png", montage(members), inputs=files)
        written.append(str(out / f"cluster-{group}.png"))
    save_image(out / "dendrogram.png", dendrogram_image(tree, [p.stem for p in files]), inputs=files)
    written.append(str(out / "dendrogram.png"))
    sizes = {int(g): int(np.sum(groups == g)) for g in sorted(set(groups.tolist()))}
    echo(f"{len(files)} images in {len(sizes)} clusters (sizes {', '.join(map(str, sizes.values()))}); wrote {out}")
    if metrics:
        write_json(metrics, {"technique": "vq-cluster", "codebook": str(codebook), "clusters": clusters, "images": len(files),
                             "cluster_sizes": sizes, "assignments": {str(p): int(g) for p, g in zip(files, groups)},
                             "outputs": written}, inputs=[*files, codebook])
