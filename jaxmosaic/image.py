"""Loading, saving and reshaping images.

Images are float32 arrays with values in [0, 1], channels last: HWC for one image, NHWC for a
batch. Loading and saving work on numpy arrays; the array helpers (`resize`, `center_crop`,
`srgb_to_linear`, `linear_to_srgb`) are pure JAX functions that accept one image or a batch and
work under `jit` and `vmap`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jaxmosaic.errors import ImageError
from jaxmosaic.files import atomic_path

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageWarning",
    "load_image",
    "image_size",
    "side_by_side",
    "save_image",
    "save_gif",
    "resize",
    "center_crop",
    "fit_shape",
    "srgb_to_linear",
    "linear_to_srgb",
]

DEFAULT_MAX_PIXELS = 90_000_000
"""Images whose header claims more pixels than this are refused before decoding."""

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class ImageWarning(UserWarning):
    """Something about an input image that the user should know but that does not stop the work."""


def _open(path: Path, max_pixels: int) -> Image.Image:
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: header claims more than {max_pixels} pixels; refusing to decode") from None
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
        raise ImageError(f"{path}: image has no pixels ({width}x{height})")
    return image


def _to_rgb_float(image: Image.Image, background: Sequence[float]) -> np.ndarray:
    """Convert any Pillow mode to RGB float32 in [0, 1], compositing alpha over `background`."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        gray = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if image.mode.startswith("I;16") or gray.max() > 255 else 255.0
        gray = np.clip(gray / scale, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode == "F":
        gray = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
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
      ImageError: the file is missing, empty, truncated, corrupt, not an image, or too large; the
        message names the file and the reason.
    """
    path = Path(path)
    image = _open(path, max_pixels)
    with image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            warnings.warn(f"{path}: animated image with {frames} frames; using the first", ImageWarning, stacklevel=2)
        try:
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            array = _to_rgb_float(image, background)
        except (OSError, SyntaxError, ValueError) as err:
            reason = "truncated image data" if "truncated" in str(err) else f"corrupt image data ({err})"
            raise ImageError(f"{path}: {reason}") from None
    return np.ascontiguousarray(array, dtype=np.float32)


def image_size(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels; the same checks and
    one-line errors as `load_image`."""
    with _open(Path(path), max_pixels) as image:
        return image.size


def side_by_side(images, *, gap: int = 8) -> np.ndarray:
    """Images of the same height in a row, `gap` white columns apart. Grey (one channel) images
    are shown in three channels when the row mixes grey and colour. HWC float32."""
    images = [np.asarray(image, np.float32) for image in images]
    channels = max(image.shape[-1] for image in images)
    images = [np.repeat(image, channels, axis=-1) if image.shape[-1] < channels else image for image in images]
    pieces = []
    for image in images:
        if pieces:
            pieces.append(np.ones((image.shape[0], gap, channels), np.float32))
        pieces.append(image)
    return np.concatenate(pieces, axis=1)


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


def save_image(path: str | os.PathLike, image, *, inputs: Iterable[str | os.PathLike] = (), quality: int = 95) -> Path:
    """Write a float image in [0, 1] (HW, HWC or 1HWC) atomically; the format follows the suffix.

    Values are clipped to [0, 1] and rounded to 8 bits. `inputs` are files that must never be
    overwritten: naming one of them as `path` raises ImageError.
    """
    path = Path(path)
    pixels = _to_uint8(image)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown image extension {path.suffix!r} (use .png, .jpg, .webp, ...)")
    picture = Image.fromarray(pixels)
    if fmt == "JPEG" and picture.mode == "RGBA":
        picture = picture.convert("RGB")
    try:
        with atomic_path(path, inputs) as tmp:
            picture.save(tmp, format=fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    except ImageError:
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
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], loop=0, duration=durations)
    return path


def fit_shape(height: int, width: int, longest: int | None) -> tuple[int, int]:
    """The (height, width) with the longest side equal to `longest`, keeping the aspect ratio.

    `None` or 0 keeps the size.
    """
    if not longest:
        return height, width
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(images: jax.Array, height: int, width: int, *, method: str = "lanczos3") -> jax.Array:
    """Resize HWC or NHWC images to (height, width), antialiased when shrinking.

    Uses `jax.image.resize`; values may overshoot [0, 1] slightly with lanczos and are clipped.
    `height` and `width` are static.
    """
    images = jnp.asarray(images)
    shape = (*images.shape[:-3], height, width, images.shape[-1])
    if shape == images.shape:
        return images
    return jnp.clip(jax.image.resize(images, shape, method=method, antialias=True), 0.0, 1.0)


def center_crop(images: jax.Array, height: int, width: int) -> jax.Array:
    """The central (height, width) window of HWC or NHWC images (static sizes)."""
    h, w = images.shape[-3], images.shape[-2]
    if height > h or width > w:
        raise ValueError(f"crop {height}x{width} is larger than the image {h}x{w}")
    top, left = (h - height) // 2, (w - width) // 2
    return images[..., top : top + height, left : left + width, :]


def srgb_to_linear(images: jax.Array, *, gamma: float = 2.2, curve: str = "power") -> jax.Array:
    """sRGB-encoded values in [0, 1] to linear light.

    `curve="power"` is x ** gamma (gamma 2.2 by default, as in the hybrid-image seed);
    `curve="srgb"` is the exact piecewise IEC 61966-2-1 curve (gamma is then ignored).
    """
    images = jnp.asarray(images)
    if curve == "power":
        return images**gamma
    if curve == "srgb":
        return jnp.where(images <= 0.04045, images / 12.92, ((jnp.maximum(images, 0.04045) + 0.055) / 1.055) ** 2.4)
    raise ValueError(f"curve must be 'power' or 'srgb', got {curve!r}")


def linear_to_srgb(images: jax.Array, *, gamma: float = 2.2, curve: str = "power") -> jax.Array:
    """Linear light in [0, 1] to sRGB-encoded values; the inverse of `srgb_to_linear`."""
    images = jnp.asarray(images)
    if curve == "power":
        return images ** (1.0 / gamma)
    if curve == "srgb":
        safe = jnp.maximum(images, 0.0031308)
        return jnp.where(images <= 0.0031308, images * 12.92, 1.055 * safe ** (1.0 / 2.4) - 0.055)
    raise ValueError(f"curve must be 'power' or 'srgb', got {curve!r}")
