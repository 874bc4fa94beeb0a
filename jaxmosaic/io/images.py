"""Image files: reading any picture as float32 RGB, writing images and GIFs atomically (Pillow).

Images are float32 arrays with values in [0, 1], channels last: HWC for one image.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from jaxmosaic._version import __version__
from jaxmosaic.errors import ImageError, JaxmosaicError
from jaxmosaic.io.files import DiskFullError, atomic_path, first_line

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "ImageWarning", "load_image", "image_size", "save_image", "save_gif",
           "check_image_name", "image_software", "written_by_jaxmosaic", "scan_folder", "image_files"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
"""The file suffixes taken for images when a folder is scanned."""

DEFAULT_MAX_PIXELS = 90_000_000
"""Images whose header claims more pixels than this are refused before decoding."""

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

_PIXELS_PER_BYTE = {"raw": 8, "zip": 8 * 1032}
"""The most pixels one byte of a file can hold, for the Pillow decoders whose data has a known
bound, at the least one bit a pixel: "raw" stores the bits as they are, "zip" (deflate, as in PNG)
expands one byte into at most 1032 (a 258-byte match coded in two bits). Other decoders (JPEG,
WebP, GIF, ...) have no such bound and are not checked."""


def _pillow_open(path: Path) -> Image.Image:
    """Pillow's lazy open (the header only), without the warning Pillow gives under its own bomb
    limit: jaxmosaic enforces its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


class ImageWarning(UserWarning):
    """Something about an input image that the user should know but that does not stop the work."""


def _open(path: Path, max_pixels: int) -> Image.Image:
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(f"{path}: file is empty")
    try:
        image = _pillow_open(path)
    except Image.DecompressionBombError:  # over twice Pillow's own limit, whatever max_pixels allows
        limit = min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)
        raise ImageError(f"{path}: header claims more than {limit} pixels; refusing to decode") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file, or a format Pillow cannot read") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot read the image ({err})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageError(
            f"{path}: image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels}; refusing to decode"
        )
    if width == 0 or height == 0:
        image.close()
        raise ImageError(f"{path}: image has no pixels ({width}x{height})")
    per_byte = max((_PIXELS_PER_BYTE.get(tile[0], math.inf) for tile in image.tile), default=math.inf)
    if width * height > size * per_byte:
        image.close()
        raise ImageError(f"{path}: header claims {width}x{height} pixels, more than its {size} bytes can hold; "
                         f"refusing to decode")
    return image


def _to_rgb_float(path: Path, image: Image.Image, background: Sequence[float]) -> np.ndarray:
    """Convert any Pillow mode to RGB float32 in [0, 1], compositing alpha over `background`; a
    float image holding NaN or infinity is refused (clipping would hide it or pass it on)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        gray = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if image.mode.startswith("I;16") or gray.max() > 255 else 255.0
        gray = np.clip(gray / scale, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode == "F":
        gray = np.asarray(image, dtype=np.float32)
        if not np.isfinite(gray).all():
            raise ImageError(f"{path}: holds non-finite pixel values (NaN or infinity)")
        gray = np.clip(gray, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        back = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        return rgba[..., :3] * alpha + back * (1.0 - alpha)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def load_image(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Read an image file as RGB float32 HWC in [0, 1].

    EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images are converted to RGB;
    transparent images are composited over `background` (RGB in [0, 1], white by default). An
    animated image yields its first frame, with an `ImageWarning`.

    Args:
      path: the image file.
      max_pixels: images whose header claims more pixels are refused before decoding.
      background: colour under transparent pixels.

    Returns:
      A numpy float32 array of shape (H, W, 3).

    Raises:
      ImageError: the file is missing, empty, truncated, corrupt, not an image, too large (for the
        pixel limit, for the file's size, or for the memory there is), or holds pixel values that
        are not numbers; the message names the file and the reason.
    """
    path = Path(path)
    image = _open(path, max_pixels)
    width, height = image.size
    with image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            warnings.warn(f"{path}: animated image with {frames} frames; using the first", ImageWarning, stacklevel=2)
        try:
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            return np.ascontiguousarray(_to_rgb_float(path, image, background), dtype=np.float32)
        except MemoryError:
            raise ImageError(f"{path}: out of memory decoding {width}x{height} pixels") from None
        except ImageError:
            raise
        except (OSError, SyntaxError, ValueError) as err:
            reason = "truncated image data" if "truncated" in str(err) else f"corrupt image data ({err})"
            raise ImageError(f"{path}: {reason}") from None


_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height (`ImageOps.exif_transpose`)


def image_size(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of the image `load_image` returns (its EXIF orientation applied), from the
    file's header and EXIF, without converting the pixels; the same checks and one-line errors as
    `load_image`."""
    path = Path(path)
    with _open(path, max_pixels) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(0x0112, 1)
        except (OSError, ValueError, SyntaxError) as err:
            raise ImageError(f"{path}: cannot read the image ({first_line(err)[:200]})") from None
    return (height, width) if orientation in _TRANSPOSED else (width, height)


def _to_uint8(image) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"cannot save an array of shape {array.shape}: expected HW, HWC or 1HWC")
    if not np.all(np.isfinite(array)):
        raise ImageError("cannot save an image that holds NaN or infinite values")
    return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


SOFTWARE = f"jaxmosaic {__version__}"
_SOFTWARE_TAG = 0x0131  # EXIF and TIFF "Software"


def _signed(fmt: str) -> dict:
    """Pillow save options that record jaxmosaic as the file's software, where the format has a
    place for it (a PNG text chunk, EXIF, a TIFF tag, a GIF comment)."""
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", SOFTWARE)
        return {"pnginfo": info}
    if fmt in ("JPEG", "WEBP"):
        exif = Image.Exif()
        exif[_SOFTWARE_TAG] = SOFTWARE
        return {"exif": exif.tobytes()}
    if fmt == "TIFF":
        return {"tiffinfo": {_SOFTWARE_TAG: SOFTWARE}}
    if fmt == "GIF":
        return {"comment": SOFTWARE.encode()}
    return {}


def image_software(path: str | os.PathLike) -> str:
    """The software an image file says wrote it ("" when it does not say), from the header alone."""
    with _pillow_open(Path(path)) as picture:
        software = picture.info.get("Software") or picture.info.get("comment") or ""
        # Pillow decodes a whole PNG to reach EXIF stored after its pixels; ours say it in a text chunk
        if not software and picture.format != "PNG":
            software = picture.getexif().get(_SOFTWARE_TAG) or ""
    return software.decode(errors="replace") if isinstance(software, bytes) else str(software)


def written_by_jaxmosaic(path: str | os.PathLike) -> bool:
    """Whether an image file carries the signature `save_image` and `save_gif` write; False for
    a file that is no image Pillow reads."""
    try:
        return image_software(path).startswith("jaxmosaic")
    except Exception:  # whatever Pillow raises for a file that is not an image: not one of ours
        return False


def check_image_name(path: str | os.PathLike) -> str:
    """The format Pillow writes for the path's suffix, or an ImageError naming the file."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ImageError(f"{path}: unknown image extension {path.suffix!r} (use .png, .jpg, .webp, ...)")
    return fmt


def save_image(path: str | os.PathLike, image, *, inputs: Iterable[str | os.PathLike] = (), quality: int = 95) -> Path:
    """Write a float image in [0, 1] (HW, HWC or 1HWC) atomically; the format follows the suffix.

    Values are clipped to [0, 1] and rounded to 8 bits. `inputs` are files that must never be
    overwritten: naming one of them as `path` raises ImageError.
    """
    path = Path(path)
    pixels = _to_uint8(image)
    fmt = check_image_name(path)
    picture = Image.fromarray(pixels)
    if fmt == "JPEG" and picture.mode == "RGBA":
        picture = picture.convert("RGB")
    try:
        with atomic_path(path, inputs) as tmp:
            picture.save(tmp, format=fmt, **_signed(fmt), **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    except (ImageError, DiskFullError):
        raise
    except Exception as err:  # the message must name the output file whatever went wrong
        raise ImageError(f"{path}: cannot write the image ({err})") from None
    return path


def save_gif(
    path: str | os.PathLike,
    frames: Sequence,
    *,
    duration_ms: int = 80,
    inputs: Iterable[str | os.PathLike] = (),
    max_side: int | None = 512,
) -> Path:
    """Write frames (each HWC float in [0, 1]) as a looping animated GIF, atomically.

    Frames larger than `max_side` are downscaled so the GIF stays small; the last frame is held
    for a second.
    """
    path = Path(path)
    if len(frames) == 0:
        raise ImageError(f"{path}: no frames to write")
    pictures = []
    for frame in frames:
        picture = Image.fromarray(_to_uint8(frame))
        if max_side and max(picture.size) > max_side:
            picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        pictures.append(picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=256))
    durations = [duration_ms] * (len(pictures) - 1) + [1000]
    with atomic_path(path, inputs) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], loop=0, duration=durations,
                         **_signed("GIF"))
    return path


def scan_folder(root: str | os.PathLike) -> list[Path]:
    """Image files under `root` (recursive, by suffix, hidden names skipped, links to folders not
    followed), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise JaxmosaicError(f"{root}: not a folder")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                files.append(Path(dirpath) / name)
    return sorted(files)


def image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded to the image files under them (`scan_folder`); at least one."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(scan_folder(path) if path.is_dir() else [path])
    if not files:
        raise JaxmosaicError("no images given (the list is empty, or its folders hold no image files)")
    return files
