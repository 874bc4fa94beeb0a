"""Pictures for people to look at: images side by side, grids, montages, codebooks, dendrograms.

Every function takes and returns float32 numpy images in [0, 1], HWC, and writes no file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jaxmosaic.image import fit_shape, resize

__all__ = [
    "side_by_side",
    "beside",
    "grid",
    "contact_sheet",
    "montage",
    "codebook_grid",
    "distance_preview",
    "feature_montage",
    "dendrogram_image",
    "tile_map",
]


def _rgb(image) -> np.ndarray:
    image = np.asarray(image, np.float32)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def side_by_side(images: Sequence, *, gap: int = 8, align: str = "top") -> np.ndarray:
    """Images in a row, `gap` white columns apart, on white where heights differ ("top" or
    "bottom" aligned). Grey (one channel) images are shown in three channels when the row mixes
    grey and colour."""
    images = [np.asarray(image, np.float32) for image in images]
    channels = max(image.shape[-1] for image in images)
    images = [np.repeat(image, channels, axis=-1) if image.shape[-1] < channels else image for image in images]
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
    canvas = np.ones((height, width, channels), np.float32)
    left = 0
    for image in images:
        top = 0 if align == "top" else height - image.shape[0]
        canvas[top : top + image.shape[0], left : left + image.shape[1]] = image
        left += image.shape[1] + gap
    return canvas


def beside(reference, images: Sequence) -> np.ndarray:
    """A reference image scaled to the images' height (keeping its aspect), then the images, in a row."""
    height = np.shape(images[0])[0]
    reference = np.asarray(reference, np.float32)
    width = max(1, round(reference.shape[1] * height / reference.shape[0]))
    return side_by_side([np.asarray(resize(reference, height, width)), *images])


def grid(cells: Sequence, columns: int, *, gap: int = 0, background: float = 1.0) -> np.ndarray:
    """Equal-sized HWC cells in a grid of `columns`, row-major, `gap` pixels apart and around."""
    cells = [np.asarray(cell, np.float32) for cell in cells]
    height, width, channels = cells[0].shape
    rows = max(1, -(-len(cells) // columns))
    canvas = np.full((rows * (height + gap) + gap, columns * (width + gap) + gap, channels), background, np.float32)
    for index, cell in enumerate(cells):
        r, c = divmod(index, columns)
        y, x = gap + r * (height + gap), gap + c * (width + gap)
        canvas[y : y + height, x : x + width] = cell
    return canvas


def contact_sheet(images: np.ndarray, *, thumb: int = 48) -> np.ndarray:
    """Every image of an NHWC batch as a `thumb` px square, in a near-square grid without gaps."""
    small = np.asarray(resize(np.asarray(images, np.float32), thumb, thumb))
    return grid(list(small), int(np.ceil(np.sqrt(len(small)))))


def montage(images: Sequence[np.ndarray], *, side: int = 96, columns: int = 6, gap: int = 4) -> np.ndarray:
    """Thumbnails (longest side `side`, centred in square cells) in a grid on white."""
    cells = []
    for image in images:
        image = _rgb(image)
        h, w = fit_shape(*image.shape[:2], side)
        cell = np.ones((side, side, 3), np.float32)
        top, left = (side - h) // 2, (side - w) // 2
        cell[top : top + h, left : left + w] = np.asarray(resize(image, h, w)).clip(0, 1)
        cells.append(cell)
    return grid(cells, min(columns, max(1, len(cells))), gap=gap)


def codebook_grid(codebook: np.ndarray, size: int, *, columns: int = 32, scale: int = 4, gap: int = 1) -> np.ndarray:
    """A codebook (k, size * size * C) as one picture: each centre a size x size tile enlarged
    `scale` times, `columns` per row, on a white grid; values shown as they are (clipped to
    [0, 1]), centred codebooks (negative values) shifted around 0.5."""
    codebook = np.asarray(codebook, np.float32)
    channels = codebook.shape[1] // (size * size)
    tiles = codebook.reshape(-1, size, size, channels)
    if tiles.min() < -1e-6:
        tiles = tiles / max(2 * float(np.abs(tiles).max()), 1e-6) + 0.5
    tiles = np.clip(tiles, 0, 1).repeat(scale, axis=1).repeat(scale, axis=2)
    return grid(list(tiles), columns, gap=gap)


def distance_preview(image, *, gap: int = 8) -> np.ndarray:
    """An image at full, 1/2, 1/4 and 1/8 size side by side, bottom-aligned on white.

    For hybrid images, shrinking stands in for stepping back: the far image takes over as the
    copies get smaller.
    """
    image = np.asarray(image, np.float32)
    height, width = image.shape[:2]
    copies = [image] + [np.asarray(resize(image, max(1, height // f), max(1, width // f), method="linear")) for f in (2, 4, 8)]
    return side_by_side(copies, gap=gap, align="bottom")


def feature_montage(features: Mapping[str, np.ndarray], *, channels: int = 8, cell: int = 96) -> np.ndarray:
    """Network activations (HWC per layer): one row per layer, `channels` cells per row showing
    the channels with the highest mean activation, each normalised to its own [0, 1] range."""
    rows = []
    for value in features.values():
        strongest = np.argsort(value.mean(axis=(0, 1)))[::-1][:channels]
        cells = []
        for index in strongest:
            plane = value[..., index]
            low, high = plane.min(), plane.max()
            plane = (plane - low) / (high - low) if high > low else np.zeros_like(plane)
            cells.append(np.asarray(resize(np.repeat(plane[..., None], 3, axis=-1), cell, cell, method="nearest")))
        cells += [np.zeros((cell, cell, 3), np.float32)] * (channels - len(cells))
        rows.append(grid(cells, channels, gap=2))
    return np.concatenate(rows, axis=0)


def dendrogram_image(tree: np.ndarray, labels: Sequence[str], *, width: int = 900, height: int = 420) -> np.ndarray:
    """A SciPy linkage matrix drawn as a dendrogram (SciPy's layout, drawn with Pillow), leaves
    labelled by `labels` (cut at 22 characters)."""
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
        picture.paste(text.rotate(90, expand=True), (int(x) - 6, int(y) + 6))
    return np.asarray(picture, np.float32) / 255.0


def tile_map(image, grid: Sequence[tuple[int, int]], shape: tuple[int, int], *, overlap: int = 0, side: int = 1024) -> np.ndarray:
    """A thumbnail of `image` (at most `side` px) with the tiles it was refined in drawn over it:
    each tile's outline in a colour of its own, and its overlaps with its neighbours tinted."""
    image = _rgb(image)
    height, width = image.shape[:2]
    scale = min(1.0, side / max(height, width))
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    picture = np.asarray(resize(image, out_h, out_w), np.float32).copy() if scale < 1 else image.copy()
    cover = np.zeros((out_h, out_w), np.int32)
    boxes = []
    for top, left in grid:
        y0, x0 = round(top * scale), round(left * scale)
        y1, x1 = min(out_h, round((top + shape[0]) * scale)), min(out_w, round((left + shape[1]) * scale))
        cover[y0:y1, x0:x1] += 1
        boxes.append((y0, x0, y1, x1))
    overlapping = cover > 1
    picture[overlapping] = 0.7 * picture[overlapping] + 0.3 * np.array([1.0, 1.0, 1.0], np.float32)
    hues = np.linspace(0.0, 1.0, len(boxes), endpoint=False)
    for (y0, x0, y1, x1), hue in zip(boxes, hues):
        colour = np.clip(np.abs(((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6) - 3) - 1, 0, 1).astype(np.float32)
        line = max(1, round(2 * max(out_h, out_w) / 1024))
        picture[y0:y0 + line, x0:x1] = colour
        picture[max(y0, y1 - line):y1, x0:x1] = colour
        picture[y0:y1, x0:x0 + line] = colour
        picture[y0:y1, max(x0, x1 - line):x1] = colour
    return picture
