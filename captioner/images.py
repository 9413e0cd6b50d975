"""The one image loader: file, bytes or PIL image in, fully decoded RGB `PIL.Image` out.

Training, evaluation and the demo all call `load_image`, so every image reaches the encoder
through the same decode path (STYLE habit 8: a train/inference preprocessing mismatch is the
commonest cause of "the same caption for every image"). The demo feeds it untrusted uploads, so
decoding is defensive, in this order:

0. Only a regular file is read: a FIFO, a pipe (`/dev/stdin` fed by `cat`), a device or a folder is
   refused by what it is, never waited on or read without end.
1. Only JPEG, PNG, GIF, BMP, WEBP and TIFF are tried (`Image.open(formats=...)`); the format comes
   from the bytes, never from the file extension.
2. Width x height is read from the header and checked against `max_pixels` and `max_aspect_ratio`
   BEFORE any pixel data is decoded, so a tiny file that declares 100000 x 100000 pixels is refused
   without allocating. PIL's own `DecompressionBombError`/`Warning` are refused the same way. Images
   above `LARGE_IMAGE_PIXELS` are decoded one at a time per process, and alpha is composited in
   strips, so memory stays bounded however many large uploads arrive together.
3. Only the first frame is decoded (animated GIF/PNG, multi-page TIFF), with
   `ImageFile.LOAD_TRUNCATED_IMAGES` forced off: a truncated file is an error, never grey-padded.
4. The EXIF orientation tag is applied (`ImageOps.exif_transpose`); malformed EXIF is ignored.
5. Every PIL mode becomes 8-bit RGB (`to_rgb`):
   - alpha (LA, RGBA, PA, P with transparency) is composited on WHITE:
     out = (c·a + 255·(255 − a)) / 255; premultiplied alpha (La, RGBa): out = c_p + 255 − a;
   - I;16* (unsigned 16-bit): out = v / 257, i.e. 0..65535 -> 0..255;
   - I (signed 32-bit): v / 257 when all values lie in 0..65535 (16-bit PNG/TIFF data), else min-max;
   - F (32-bit float): v · 255 when all values lie in 0..1, else min-max;
     a constant image outside those ranges becomes black; NaN or infinity is refused;
   - everything else (1, L, P, CMYK, YCbCr, ...) through PIL's own `convert("RGB")`.
   High bit depths are rescaled, never clipped.

Every failure is an `ImageError`: one line, "<name>: <what is wrong>", where name is the caller's
display name (default: the file name without directories), so no server path reaches a user.
"""
from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
import warnings
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps

MAX_PIXELS = 40_000_000  # width x height above this is refused (a 40 MP photo still loads)
MAX_ASPECT_RATIO = 20.0  # long side / short side above this is refused (e.g. 1 x 10000 strips)
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")  # PIL format names that are decoded
LARGE_IMAGE_PIXELS = 8_000_000  # images above this are decoded one at a time (a 40 MP RGBA decode is ~330 MB)
_LARGE_DECODES = threading.Lock()
ROWS_PER_STRIP = 256  # alpha is composited this many rows at a time (bounded temporaries)
ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 = as stored; 2..8 = mirrored and/or turned
_JPEG_VARIANTS = ("MPO",)  # camera JPEGs with extra frames; PIL's JPEG plugin reports them as MPO

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image]


class ImageError(ValueError):
    """An image cannot be used. The message is one line, names the image, and holds no server path."""


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
) -> Image.Image:
    """Decode `source` (a path, encoded bytes or a PIL image) into a new, fully loaded RGB image.

    `name` is what error messages call the image; pass the upload's file name in the demo.
    A PIL image is not modified, except that a multi-frame one is seeked back to frame 0.
    """
    display_name = _display_name(source, name)
    with warnings.catch_warnings():
        # PIL warns (rather than raises) between 1x and 2x its own limit; treat that as a refusal too.
        # catch_warnings is process-global; a racing thread can at worst leave this same filter on.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if isinstance(source, Image.Image):
            return _decode(source, display_name, max_pixels, max_aspect_ratio)
        with _open_stream(source, display_name) as stream:
            image = _open_header(stream, display_name)
            return _decode(image, display_name, max_pixels, max_aspect_ratio)


def _display_name(source: object, name: str | None) -> str:
    """The caller's name, else the file name without directories; always a single line."""
    if name is None:
        if isinstance(source, (str, os.PathLike)):
            name = os.path.basename(os.fspath(source)) or "image"
        else:
            name = "image"
    return " ".join(str(name).split()) or "image"


def _open_stream(source: object, name: str) -> BinaryIO:
    """A binary stream over the encoded bytes; empty or unreadable input is an ImageError."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(f"{name}: the image is empty (0 bytes)")
        return io.BytesIO(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_image expects a path, bytes or a PIL image, got {type(source).__name__}")
    try:  # O_NONBLOCK: a FIFO opens at once (and is refused below) instead of waiting for a writer
        descriptor = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except OSError as error:  # no permission, ...; the OS message would name the path
        raise ImageError(f"{name}: cannot read the file ({type(error).__name__})") from None
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):  # a pipe (/dev/stdin), a device, a folder: no size, maybe no end
        os.close(descriptor)
        raise ImageError(f"{name}: not a regular file ({_file_kind(status.st_mode)}); only image files are read")
    if status.st_size == 0:
        os.close(descriptor)
        raise ImageError(f"{name}: the image is empty (0 bytes)")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a pipe or FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a plain file")


def read_size(source: str | os.PathLike[str], *, name: str | None = None) -> tuple[int, int]:
    """(width, height) as the file's header declares them, read the way `load_image` reads it, with no
    pixel decoded: what a caller with a pixel budget checks before it decodes."""
    display_name = _display_name(source, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with _open_stream(source, display_name) as stream:
            return _open_header(stream, display_name).size


def _open_header(stream: BinaryIO, name: str) -> Image.Image:
    """Identify the format and read the header only (PIL decodes pixels lazily, on `load`)."""
    try:
        return Image.open(stream, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(name, None) from None
    except Image.UnidentifiedImageError:  # its message contains the stream's repr, i.e. the path
        raise ImageError(f"{name}: not a supported image (expected {_format_list()})") from None
    except Exception as error:  # header parsers raise assorted types on hostile input
        raise ImageError(f"{name}: corrupt image header ({type(error).__name__})") from None


def _decode(image: Image.Image, name: str, max_pixels: int, max_aspect_ratio: float) -> Image.Image:
    """Check format and size, decode the first frame, apply EXIF orientation, convert to RGB.
    Images above LARGE_IMAGE_PIXELS are decoded one at a time (per process), so that a burst of
    huge uploads needs the memory of one decode at a time, not of all of them at once."""
    if image.format is not None and image.format not in ALLOWED_FORMATS + _JPEG_VARIANTS:
        raise ImageError(f"{name}: {image.format} images are not accepted (expected {_format_list()})")
    _check_size(image.size, name, max_pixels, max_aspect_ratio)
    large = image.size[0] * image.size[1] > LARGE_IMAGE_PIXELS
    with _LARGE_DECODES if large else contextlib.nullcontext():
        frame = _load_first_frame(image, name)
        upright = _apply_exif_orientation(frame)
        try:
            return to_rgb(upright)
        except ValueError as error:
            raise ImageError(f"{name}: {error}") from None


def _check_size(size: tuple[int, int], name: str, max_pixels: int, max_aspect_ratio: float) -> None:
    """Refuse from the declared size alone, before a single pixel is decoded."""
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise _too_many_pixels(name, size, max_pixels)
    aspect_ratio = max(width, height) / min(width, height)
    if aspect_ratio > max_aspect_ratio:
        raise ImageError(
            f"{name}: aspect ratio {aspect_ratio:.1f}:1 ({width}x{height}) is more extreme than "
            f"{max_aspect_ratio:g}:1"
        )


def _too_many_pixels(name: str, size: tuple[int, int] | None, max_pixels: int | None = None) -> ImageError:
    declared = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
    limit = f"; the limit is {max_pixels:,}" if max_pixels else ""
    return ImageError(f"{name}: the image declares {declared}{limit} (refused as a possible decompression bomb)")


def _load_first_frame(image: Image.Image, name: str) -> Image.Image:
    """Decode frame 0 completely; truncated or corrupt pixel data is an error, never padded."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # module global: someone else may have switched it on
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(name, image.size) from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode the image") from None
    except Exception as error:  # OSError "image file is truncated", SyntaxError "broken PNG", ...
        raise ImageError(f"{name}: truncated or corrupt image data ({type(error).__name__})") from None
    return image


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF Orientation tag says; a malformed EXIF block leaves pixels as stored.
    Without a turn to make, `image` itself comes back: exif_transpose would copy it (a 40 MP RGBA
    upload is 160 MB), and `to_rgb` makes the new image anyway."""
    try:
        if image.getexif().get(ORIENTATION_TAG, 1) == 1:
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # camera firmware writes odd EXIF; the pixels themselves are fine
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image from any PIL mode: alpha on white, high bit depths rescaled, not clipped."""
    mode = image.mode
    if mode in ("LA", "RGBA", "PA") or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image if mode == "RGBA" else image.convert("RGBA")  # convert() would copy an RGBA image too
        return _composite_on_white(rgba, premultiplied=False)
    if mode in ("La", "RGBa"):
        return _composite_on_white(image, premultiplied=True)
    if mode.startswith("I") or mode.startswith("F"):
        return _gray_to_rgb(_rescale_to_bytes(image))
    try:
        return image.convert("RGB")
    except ValueError:
        raise ValueError(f"pixel mode {mode!r} cannot be converted to RGB") from None


def _composite_on_white(image: Image.Image, premultiplied: bool) -> Image.Image:
    """Blend colour bands over a white background using the last band as alpha, one strip of rows at a
    time in uint16 (c·a + 255·(255 − a) + 127 <= 65152 fits): a 40-megapixel upload needs the output and
    one strip beside its pixels, not full-size int32 copies (about 2 GB)."""
    width, height = image.size
    output = Image.new("RGB", image.size)
    for top in range(0, height, ROWS_PER_STRIP):
        strip = np.asarray(image.crop((0, top, width, min(top + ROWS_PER_STRIP, height)))).astype(np.uint16)
        color, alpha = strip[..., :-1], strip[..., -1:]  # (h, W, C), (h, W, 1)
        if premultiplied:
            blended = np.minimum(color + 255 - alpha, 255)  # out = c_p + 255 − a  (c_p = c·a/255 already)
        else:
            blended = (color * alpha + 255 * (255 - alpha) + 127) // 255  # out = (c·a + 255·(255 − a)) / 255
        if blended.shape[-1] == 1:  # La: grey -> RGB
            blended = np.repeat(blended, 3, axis=-1)  # (h, W, 3)
        output.paste(Image.fromarray(blended.astype(np.uint8)), (0, top))
    return output


def _rescale_to_bytes(image: Image.Image) -> np.ndarray:
    """One band of 16/32-bit int or float pixels mapped onto 0..255 (see the module docstring)."""
    values = np.asarray(image).astype(np.float64)  # (H, W)
    if image.mode.startswith("F") and not np.isfinite(values).all():
        raise ValueError("float image contains NaN or infinite pixel values")
    low, high = float(values.min()), float(values.max())
    if image.mode.startswith("I;16") or (image.mode.startswith("I") and low >= 0 and high <= 65535):
        scaled = values / 257.0  # 0..65535 -> 0..255 (65535 / 257 = 255 exactly)
    elif image.mode.startswith("F") and low >= 0 and high <= 1:
        scaled = values * 255.0  # 0..1 -> 0..255
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))  # min-max: low -> 0, high -> 255
    else:
        scaled = np.zeros_like(values)  # constant image outside the known ranges: black
    return np.rint(scaled).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))  # (H, W) -> (H, W, 3)


def _format_list() -> str:
    return ", ".join(ALLOWED_FORMATS[:-1]) + " or " + ALLOWED_FORMATS[-1]
