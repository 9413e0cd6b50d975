"""Tests for captioner/images.py: safe decoding, EXIF orientation and every PIL mode -> RGB.

All images are made in memory or under tmp_path; nothing is downloaded. The bomb files are
hand-crafted PNG headers (correct CRCs) that declare far more pixels than they contain.
"""
from __future__ import annotations

import io
import resource
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from captioner.images import MAX_ASPECT_RATIO, MAX_PIXELS, ImageError, load_image, to_rgb


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def noise(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG that declares width x height RGB pixels but holds one empty row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def pixel(image: Image.Image, x: int = 0, y: int = 0) -> tuple[int, int, int]:
    return tuple(int(v) for v in image.getpixel((x, y)))


def assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 1) -> None:
    assert max(abs(a - e) for a, e in zip(actual, expected)) <= tolerance, (actual, expected)


# ----------------------------------------------------------------------------- modes -> RGB


def palette_image(transparent_index: int | None) -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


MODE_CASES = [  # (id, image, {(x, y): expected RGB})
    ("1", Image.frombytes("1", (8, 1), bytes([0b10000000])), {(0, 0): (255, 255, 255), (1, 0): (0, 0, 0)}),
    ("L", Image.new("L", (1, 1), 100), {(0, 0): (100, 100, 100)}),
    ("LA half black", Image.new("LA", (1, 1), (0, 128)), {(0, 0): (127, 127, 127)}),
    ("LA clear", Image.new("LA", (1, 1), (0, 0)), {(0, 0): (255, 255, 255)}),
    ("P", palette_image(None), {(0, 0): (255, 0, 0), (1, 0): (0, 0, 255)}),
    ("P transparency", palette_image(0), {(0, 0): (255, 255, 255), (1, 0): (0, 0, 255)}),
    ("PA", Image.new("PA", (1, 1), (0, 0)), {(0, 0): (255, 255, 255)}),
    ("RGB", Image.new("RGB", (1, 1), (10, 20, 30)), {(0, 0): (10, 20, 30)}),
    ("RGBA half blue", Image.new("RGBA", (1, 1), (0, 0, 255, 128)), {(0, 0): (127, 127, 255)}),
    ("RGBA opaque", Image.new("RGBA", (1, 1), (200, 100, 50, 255)), {(0, 0): (200, 100, 50)}),
    ("RGBA clear", Image.new("RGBA", (1, 1), (200, 100, 50, 0)), {(0, 0): (255, 255, 255)}),
    ("RGBa half red", Image.new("RGBa", (1, 1), (64, 0, 0, 128)), {(0, 0): (191, 127, 127)}),
    ("La half black", Image.new("La", (1, 1), (0, 128)), {(0, 0): (127, 127, 127)}),
    ("CMYK", Image.new("CMYK", (1, 1), (0, 255, 255, 0)), {(0, 0): (255, 0, 0)}),
    ("CMYK white", Image.new("CMYK", (1, 1), (0, 0, 0, 0)), {(0, 0): (255, 255, 255)}),
    (
        "I;16 full range",
        Image.fromarray(np.array([[0, 300, 128 * 257, 65535]], dtype=np.uint16)),
        {(0, 0): (0, 0, 0), (1, 0): (1, 1, 1), (2, 0): (128, 128, 128), (3, 0): (255, 255, 255)},
    ),
    (
        "I;16B",
        Image.frombytes("I;16B", (2, 1), struct.pack(">HH", 257 * 10, 65535)),
        {(0, 0): (10, 10, 10), (1, 0): (255, 255, 255)},
    ),
    (
        "I 16-bit range",
        Image.fromarray(np.array([[0, 257 * 200, 65535]], dtype=np.int32)),
        {(0, 0): (0, 0, 0), (1, 0): (200, 200, 200), (2, 0): (255, 255, 255)},
    ),
    (
        "I min-max",
        Image.fromarray(np.array([[-1000, 49500, 100000]], dtype=np.int32)),
        {(0, 0): (0, 0, 0), (1, 0): (128, 128, 128), (2, 0): (255, 255, 255)},
    ),
    (
        "F unit range",
        Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)),
        {(0, 0): (0, 0, 0), (1, 0): (128, 128, 128), (2, 0): (255, 255, 255)},
    ),
    (
        "F min-max",
        Image.fromarray(np.array([[-1.0, 0.0, 3.0]], dtype=np.float32)),
        {(0, 0): (0, 0, 0), (1, 0): (64, 64, 64), (2, 0): (255, 255, 255)},
    ),
]


@pytest.mark.parametrize("source, expected", [case[1:] for case in MODE_CASES], ids=[case[0] for case in MODE_CASES])
def test_every_mode_becomes_the_right_rgb(source: Image.Image, expected: dict) -> None:
    image = load_image(source)
    assert image.mode == "RGB" and image.size == source.size
    for (x, y), rgb in expected.items():
        assert_close(pixel(image, x, y), rgb)


def test_high_bit_depths_are_rescaled_not_clipped() -> None:
    ramp = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)  # 0, 257, ..., 65535
    image = load_image(Image.fromarray(ramp))
    assert np.array_equal(np.asarray(image)[..., 0].ravel(), np.arange(256))  # every grey level, none saturated early


def test_float_image_with_nan_is_refused() -> None:
    with pytest.raises(ImageError, match="NaN"):
        load_image(Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)), name="depth.tif")


def test_to_rgb_returns_a_new_image() -> None:
    source = Image.new("RGB", (2, 2), (1, 2, 3))
    converted = to_rgb(source)
    converted.putpixel((0, 0), (9, 9, 9))
    assert source.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("mode, value", [("LA", (0, 128)), ("RGBA", (0, 0, 0, 128)), ("I;16", 65535)])
def test_modes_survive_a_png_file(tmp_path: Path, mode: str, value) -> None:
    path = tmp_path / "picture.png"
    Image.new(mode, (3, 3), value).save(path)
    expected = (255, 255, 255) if mode == "I;16" else (127, 127, 127)
    assert_close(pixel(load_image(path)), expected)


# ----------------------------------------------------------------------------- EXIF orientation


def asymmetric_pixels() -> np.ndarray:
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)  # (H, W, 3), a landscape image
    pixels[0, 0] = (255, 0, 0)  # red top-left
    pixels[1, 2] = (0, 0, 255)  # blue bottom-right
    pixels[0, 2] = (0, 255, 0)  # green top-right
    return pixels


@pytest.mark.parametrize("orientation, quarter_turns", [(6, 1), (8, -1), (3, 2)])
def test_exif_orientation_gives_the_upright_pixels(orientation: int, quarter_turns: int) -> None:
    # EXIF 6: stored image must be turned 90° clockwise to view, so it was stored turned 90° counter-clockwise.
    upright = asymmetric_pixels()
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, quarter_turns)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = load_image(encode(stored, "PNG", exif=exif))
    assert np.array_equal(np.asarray(image), upright)


def test_exif_orientation_in_jpeg() -> None:
    upright = np.kron(asymmetric_pixels(), np.ones((16, 16, 1), dtype=np.uint8))  # (32, 48, 3) blocks
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_image(encode(stored, "JPEG", exif=exif, quality=95))
    assert image.size == (48, 32)
    assert np.abs(np.asarray(image).astype(int) - upright).mean() < 8


# ----------------------------------------------------------------------------- decompression bombs


def test_bomb_header_is_refused_before_decoding(monkeypatch) -> None:
    def never_decode(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never_decode)
    data = png_header_only(5000, 5000)  # 25 M pixels: under PIL's own limit, over ours below
    assert len(data) < 100
    with pytest.raises(ImageError, match=r"5000x5000"):
        load_image(data, name="upload.png", max_pixels=1_000_000)


def test_huge_bomb_is_refused_fast_with_little_memory() -> None:
    data = png_header_only(100_000, 100_000)  # 10^10 pixels = 30 GB as RGB
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ImageError, match="possible decompression bomb") as error:
        load_image(data, name="upload.png")
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB on Linux
    assert str(error.value).startswith("upload.png: ")


def test_pil_bomb_warning_is_an_error_even_with_a_high_cap() -> None:
    data = png_header_only(10_000, 10_000)  # 10^8 pixels: PIL warns (over 89 M, under 2x)
    with pytest.raises(ImageError, match="possible decompression bomb"):
        load_image(data, name="upload.png", max_pixels=10**9)


def test_default_limits_are_exported() -> None:
    assert 10_000_000 <= MAX_PIXELS <= 100_000_000
    assert 10 <= MAX_ASPECT_RATIO <= 50


# ----------------------------------------------------------------------------- broken input


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_truncated_image_is_refused_even_if_pil_was_told_to_pad(monkeypatch, format: str) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone else switched padding on
    data = encode(noise(), format)
    with pytest.raises(ImageError, match="truncated or corrupt") as error:
        load_image(data[: len(data) // 2], name=f"cut.{format.lower()}")
    assert str(error.value).startswith(f"cut.{format.lower()}: ")


def test_zero_bytes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="empty"):
        load_image(b"", name="upload.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="^empty.jpg: .*empty"):
        load_image(tmp_path / "empty.jpg")


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n" * 10)
    with pytest.raises(ImageError, match="not a supported image"):
        load_image(path)


def test_format_outside_the_allowlist_is_refused() -> None:
    with pytest.raises(ImageError, match="not a supported image"):
        load_image(encode(noise(8, 8), "PPM"), name="x.ppm")
    opened_elsewhere = Image.open(io.BytesIO(encode(noise(8, 8), "PPM")))
    with pytest.raises(ImageError, match="PPM images are not accepted"):
        load_image(opened_elsewhere, name="x.ppm")


def test_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="^gone.png: file not found$"):
        load_image(tmp_path / "gone.png")


def test_wrong_argument_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="path, bytes or a PIL image"):
        load_image(42)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- sizes and frames


def test_one_pixel_image_loads() -> None:
    image = load_image(encode(Image.new("RGB", (1, 1), (5, 6, 7)), "PNG"))
    assert image.size == (1, 1) and pixel(image) == (5, 6, 7)


@pytest.mark.parametrize("size", [(1, 10_000), (10_000, 1), (21, 1)])
def test_extreme_aspect_ratio_is_refused(size: tuple[int, int]) -> None:
    with pytest.raises(ImageError, match="aspect ratio"):
        load_image(encode(Image.new("L", size), "PNG"), name="strip.png")


def test_aspect_ratio_at_the_limit_loads() -> None:
    assert load_image(encode(Image.new("L", (20, 1)), "PNG")).size == (20, 1)


def test_animated_gif_gives_the_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert_close(pixel(load_image(data)), (255, 0, 0))


def test_format_is_detected_from_content_not_the_name(tmp_path: Path) -> None:
    path = tmp_path / "really_a_png.gif"
    path.write_bytes(encode(Image.new("RGB", (4, 4), (1, 2, 3)), "PNG"))
    assert pixel(load_image(path)) == (1, 2, 3)


@pytest.mark.parametrize("format", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"])
def test_every_allowed_format_loads(format: str) -> None:
    source = Image.new("RGB", (16, 16), (200, 40, 40))
    image = load_image(encode(source, format))
    assert image.mode == "RGB" and image.size == (16, 16)
    assert_close(pixel(image, 8, 8), (200, 40, 40), tolerance=12)  # lossy JPEG/WEBP, GIF palette


# ----------------------------------------------------------------------------- sources and names


def test_path_str_and_bytes_sources_agree(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    noise().save(path)
    from_path = np.asarray(load_image(path))
    assert np.array_equal(np.asarray(load_image(str(path))), from_path)
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), from_path)
    assert np.array_equal(from_path, np.asarray(noise()))


def test_result_is_fully_decoded_and_detached_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    noise().save(path)
    image = load_image(path)
    path.unlink()
    assert pixel(image, 5, 5) == pixel(noise(), 5, 5)


def test_messages_name_the_image_without_its_directory(tmp_path: Path) -> None:
    secret_dir = tmp_path / "server_secret_dir"
    secret_dir.mkdir()
    path = secret_dir / "broken.png"
    path.write_bytes(b"garbage" * 20)
    with pytest.raises(ImageError) as default_name:
        load_image(path)
    with pytest.raises(ImageError) as given_name:
        load_image(path, name="my holiday.png")
    for error, shown in [(default_name, "broken.png"), (given_name, "my holiday.png")]:
        message = str(error.value)
        assert message.startswith(f"{shown}: ")
        assert "server_secret_dir" not in message and str(tmp_path) not in message
        assert "\n" not in message and "Traceback" not in message


def test_multiline_display_name_is_flattened() -> None:
    with pytest.raises(ImageError) as error:
        load_image(b"nope", name="evil\nname.png")
    assert "\n" not in str(error.value) and str(error.value).startswith("evil name.png: ")
