"""Image loading, saving and array helpers against Pillow, numpy and known values."""

from __future__ import annotations

import io
import os
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from helpers import SAMPLES
from jaxmosaic import ImageError, ImageWarning, center_crop, linear_to_srgb, load_image, resize, save_image, srgb_to_linear
from jaxmosaic.io.files import atomic_path


def gradient_rgb(height=20, width=30) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256], axis=-1).astype(np.uint8)


def assert_image_error(path, fragment):
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and fragment in message
    assert "\n" not in message


def test_rgb_png_loads_exactly(tmp_path):
    pixels = gradient_rgb()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.dtype == np.float32 and loaded.shape == (20, 30, 3)
    np.testing.assert_array_equal(loaded, pixels.astype(np.float32) / 255)


def test_missing_file(tmp_path):
    assert_image_error(tmp_path / "nope.png", "no such file")


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert_image_error(tmp_path / "empty.png", "empty")


def test_directory(tmp_path):
    assert_image_error(tmp_path, "directory")


def test_text_renamed_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture\n" * 20)
    assert_image_error(tmp_path / "notes.jpg", "not an image")


def test_truncated_png(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert_image_error(tmp_path / "cut.png", "truncated")


def test_corrupt_jpeg_body(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(gradient_rgb(64, 64)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    data[200:] = b"\x00" * (len(data) - 200)
    (tmp_path / "bad.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_huge_header_refused_before_decoding(tmp_path):
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + png_chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(data)
    assert_image_error(tmp_path / "bomb.png", "refusing to decode")


def test_pixel_limit_is_configurable(tmp_path):
    Image.fromarray(gradient_rgb()).save(tmp_path / "a.png")
    with pytest.raises(ImageError, match="30x20 = 600 pixels"):
        load_image(tmp_path / "a.png", max_pixels=500)


def test_animated_gif_first_frame_with_warning(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    with pytest.warns(ImageWarning, match="2 frames"):
        loaded = load_image(tmp_path / "anim.gif")
    np.testing.assert_allclose(loaded[0, 0], [1.0, 0.0, 0.0], atol=2 / 255)


def test_16bit_grayscale_png(tmp_path):
    values = np.array([[0, 1000, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    loaded = load_image(tmp_path / "deep.png")
    assert loaded.shape == (1, 4, 3)
    np.testing.assert_allclose(loaded[..., 0], values / 65535.0, rtol=1e-6)
    np.testing.assert_array_equal(loaded[..., 0], loaded[..., 2])


def test_cmyk_jpeg(tmp_path):
    rgb = Image.fromarray(gradient_rgb(32, 32))
    cmyk = rgb.convert("CMYK")
    cmyk.save(tmp_path / "print.jpg", quality=100)
    loaded = load_image(tmp_path / "print.jpg")
    expected = np.asarray(Image.open(tmp_path / "print.jpg").convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_array_equal(loaded, expected)
    assert np.abs(loaded - np.asarray(rgb, dtype=np.float32) / 255).mean() < 0.05


def test_rgba_composited_on_white_or_given_colour(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    rgba[0, 1] = (0, 0, 0, 0)
    rgba[1, 0] = (0, 0, 255, 128)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    loaded = load_image(tmp_path / "alpha.png")
    np.testing.assert_allclose(loaded[0, 0], [1, 0, 0])
    np.testing.assert_allclose(loaded[0, 1], [1, 1, 1])
    a = 128 / 255
    np.testing.assert_allclose(loaded[1, 0], [1 - a, 1 - a, 1], atol=1e-6)
    on_black = load_image(tmp_path / "alpha.png", background=(0, 0, 0))
    np.testing.assert_allclose(on_black[0, 1], [0, 0, 0])


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1
    image.save(tmp_path / "pal.png", transparency=1)
    loaded = load_image(tmp_path / "pal.png")
    np.testing.assert_allclose(loaded[0], [[1, 0, 0], [1, 1, 1]])


def test_grayscale_becomes_three_equal_channels():
    brick = load_image(SAMPLES / "brick.png")
    assert brick.shape == (256, 256, 3)
    np.testing.assert_array_equal(brick[..., 0], brick[..., 1])
    np.testing.assert_array_equal(np.asarray(Image.open(SAMPLES / "brick.png"), np.float32) / 255, brick[..., 0])


def test_exif_rotated_jpeg(tmp_path):
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, :5] = 255  # white band on the left, stored landscape
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    loaded = load_image(tmp_path / "phone.jpg")
    assert loaded.shape == (20, 10, 3)
    assert loaded[:5].mean() > 0.9 and loaded[6:].mean() < 0.1  # the band is now on top


def test_save_roundtrip_and_atomicity(tmp_path):
    image = np.random.default_rng(1).random((9, 7, 3)).astype(np.float32)
    save_image(tmp_path / "out.png", image)
    np.testing.assert_allclose(load_image(tmp_path / "out.png"), np.round(image * 255) / 255, atol=1e-7)
    assert sorted(os.listdir(tmp_path)) == ["out.png"]
    with pytest.raises(ImageError, match="NaN"):
        save_image(tmp_path / "nan.png", np.full((2, 2, 3), np.nan))
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "half.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("stop")
    assert os.listdir(tmp_path) == []


def test_never_overwrites_an_input(tmp_path):
    Image.fromarray(gradient_rgb()).save(tmp_path / "in.png")
    before = (tmp_path / "in.png").read_bytes()
    with pytest.raises(Exception, match="refusing to overwrite an input"):
        save_image(tmp_path / "in.png", np.zeros((2, 2, 3)), inputs=[tmp_path / "in.png"])
    assert (tmp_path / "in.png").read_bytes() == before


def test_unknown_extension(tmp_path):
    with pytest.raises(ImageError, match="unknown image extension"):
        save_image(tmp_path / "out.xyz", np.zeros((2, 2, 3)))


def test_srgb_curves_match_numpy(variant):
    x = np.linspace(0, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(variant(srgb_to_linear, x), x.astype(np.float64) ** 2.2, rtol=1e-5, atol=1e-7)
    exact = np.where(x <= 0.04045, x / 12.92, ((x.astype(np.float64) + 0.055) / 1.055) ** 2.4)
    np.testing.assert_allclose(variant(lambda v: srgb_to_linear(v, curve="srgb"), x), exact, rtol=1e-5, atol=1e-7)
    inverse = np.where(x <= 0.0031308, x * 12.92, 1.055 * x.astype(np.float64) ** (1 / 2.4) - 0.055)
    np.testing.assert_allclose(variant(lambda v: linear_to_srgb(v, curve="srgb"), x), inverse, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variant(lambda v: linear_to_srgb(srgb_to_linear(v)), x), x, atol=1e-5)
    grad = jax.grad(lambda v: srgb_to_linear(v, curve="srgb").sum())(jnp.asarray(x))
    assert np.all(np.isfinite(grad))


def test_resize_and_crop_batch_jit_vmap():
    images = np.random.default_rng(2).random((2, 16, 12, 3)).astype(np.float32)
    down = resize(images, 8, 6, method="linear")
    assert down.shape == (2, 8, 6, 3)
    np.testing.assert_allclose(down.mean(), images.mean(), atol=0.01)
    np.testing.assert_allclose(jax.vmap(lambda im: resize(im, 8, 6, method="linear"))(images), down, atol=1e-6)
    np.testing.assert_allclose(jax.jit(resize, static_argnums=(1, 2))(images, 8, 6), resize(images, 8, 6), atol=1e-6)
    crop = center_crop(images, 10, 4)
    np.testing.assert_array_equal(crop, images[:, 3:13, 4:8])
    with pytest.raises(ValueError, match="larger"):
        center_crop(images, 20, 4)


def test_saved_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        save_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))
    finally:
        os.umask(umask)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o644
