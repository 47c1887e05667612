"""Image, mask and instruction input/output for the editor, the CLI and the HTTP server.

Every image that enters diptych goes through `load_image` (or `load_mask`), so the rules below are the
one documented conversion rule of the project. Anything that breaks a rule raises
`diptych.errors.InputError` with a message that names the problem and the fix.

Sources
    A path (``str`` / ``os.PathLike``), raw bytes (``bytes`` / ``bytearray`` / ``memoryview``; bytes are
    always image data, never a path) or a ``PIL.Image.Image``. A missing path, a directory or an unreadable
    file is an error naming the path. A PIL image is validated and converted like a file and the result is
    always a new object; the caller's image is left untouched.

Formats
    The format is sniffed from the content (magic bytes), never from the file suffix. Only
    `ALLOWED_FORMATS` (PNG, JPEG, WEBP, BMP, TIFF) are decoded, and only PIL's decoder for the sniffed
    format ever sees the data, so a file cannot reach other (less hardened) PIL plugins. A recognised
    format outside the list (GIF, ICO, PSD, HEIF, ...) is refused by name; content that is no known
    image is "not an image or corrupt". An opened PIL image whose ``format`` is outside the list is
    refused too (images built in memory have no format and are accepted). Multi-frame files (TIFF
    pages, animated WEBP/PNG) give their first frame.

Corrupt and truncated data
    Any decoder failure is "not an image or corrupt". Truncation (a PNG or JPEG cut short, ...) is
    detected by walking the file's own structure (PNG chunks up to IEND, JPEG segments and scans up to
    the end-of-image marker, the WEBP RIFF length, the BMP pixel-array length, TIFF strip/tile extents)
    before decoding, and decoder errors from ``Image.load`` are caught as well. This does not depend on
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` (which is never changed here): even when another part of an
    application sets it, a cut-off file is refused instead of coming back half grey. For an already
    opened, not yet loaded PIL image only PIL's own checks apply; pass the path or the bytes to get all.

Size
    ``width * height`` is checked against ``max_pixels`` (default `DEFAULT_MAX_PIXELS`, 40 million)
    from the header, before any pixel is decoded; larger images are refused with the size, the limit
    and the fix (downscale first, or raise ``max_pixels``). PIL's own decompression-bomb guard
    (``PIL.Image.MAX_IMAGE_PIXELS``) also applies and its warning is treated as an error, so the
    stricter of the two limits wins; an application that needs huge images must raise both. Images with
    a zero width or height are refused.

Orientation
    The EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``), so a photo is returned the
    way a viewer shows it, and masks are rotated the same way as the photos they were drawn on. EXIF
    data too damaged to parse is ignored (the image is used as stored).

Modes (`load_image` always returns 8-bit RGB)
    - RGB is kept.
    - Anything with transparency (RGBA, LA, PA, premultiplied RGBa/La, P with a transparent palette
      entry, L or RGB with a PNG ``tRNS`` colour key) is composited over WHITE:
      ``out = round((c * a + 255 * (255 - a)) / 255)``. Editing models take opaque RGB, and white is the
      usual neutral background for the cut-outs, product shots and stickers that carry transparency;
      black would turn soft edges into dark halos.
    - P is expanded through its palette; L and 1 become grey RGB (the value replicated, 1 -> 0 or 255).
    - CMYK, YCbCr, LAB, HSV and RGBX use PIL's conversion to RGB (no ICC colour management).
    - 16-bit greyscale (I;16, I;16L, I;16B, and the I mode of 16-bit PNGs) is scaled to 8 bits as
      ``round(v / 257)``, which maps 0..65535 exactly onto 0..255; 32-bit integer I images are first
      clipped to 0..65535 and then scaled the same way. (16-bit RGB files are reduced to 8 bits per
      channel by PIL's decoder itself.)
    - F (32-bit float) is refused: its range (0..1? 0..255? HDR?) is ambiguous, so the caller must
      convert it to 8- or 16-bit first.

Masks (`load_mask` returns mode L; white = may change, black = keep, grey values are kept as given)
    The same sources, format, size and orientation rules apply. A mask with transparency uses its
    alpha channel (opaque paint = may change) when the alpha is not fully opaque; otherwise, and for
    every other mode, its luminance (ITU-R 601-2, PIL's RGB -> L) is used. 16-bit masks are scaled as
    above, 1-bit masks give 0 or 255. If ``size`` is given, a mask of a different size is refused.

Instructions
    `validate_instruction` strips surrounding whitespace, turns Windows/old-Mac line ends (CR LF, CR)
    into LF, and refuses empty text, text longer than ``max_chars`` characters and any other control
    character (tab and newline are fine).

Saving
    `save_image_atomic` writes to a temporary file in the target folder and moves it into place with
    ``os.replace``, so readers see either the old file or the complete new one, never a partial file;
    the temporary file is removed if anything fails. The format comes from the suffix.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
import struct
import unicodedata
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from diptych.errors import InputError
from diptych.files import atomic_file

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "image_from_bytes",
    "load_image",
    "load_mask",
    "save_image_atomic",
    "sniff_format",
    "validate_instruction",
]

ALLOWED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "BMP", "TIFF"})
"""Formats `load_image` decodes (PIL format names)."""

DEFAULT_MAX_PIXELS: int = 40_000_000
"""Default ceiling on ``width * height``; larger sources are refused before decoding."""

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image

_ALLOWED_TEXT = ", ".join(sorted(ALLOWED_FORMATS))

# PIL names a JPEG with extra frames (phone cameras) "MPO"; it is still a JPEG to us.
_FORMAT_ALIASES = {"MPO": "JPEG"}

# What PIL's plugins raise on malformed input; anything else is a real bug and should surface.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

_SAVE_SUFFIXES = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}

# High quality by default: edited images are often edited again, and each lossy pass adds artefacts.
_SAVE_DEFAULTS: dict[str, dict[str, Any]] = {
    "JPEG": {"quality": 95},
    "WEBP": {"quality": 95},
}

# Modes each writer accepts as they are; other modes are flattened to RGB (see _to_rgb) before saving.
_SAVE_MODES = {
    "PNG": frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}),
    "JPEG": frozenset({"L", "RGB", "CMYK"}),
    "WEBP": frozenset({"RGB", "RGBA"}),
    "BMP": frozenset({"1", "L", "P", "RGB"}),
    "TIFF": frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"}),
}

_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

# Inside a JPEG scan, 0xFF is followed by 0x00 (byte stuffing) or RST0..7; anything else is a marker.
_JPEG_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")


# --------------------------------------------------------------------------------------------------
# Format sniffing


def sniff_format(data: bytes) -> str | None:
    """Return the image format of ``data`` from its magic bytes, or None if it is not recognised.

    Names follow PIL ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "ICO", ...). Formats outside
    `ALLOWED_FORMATS` are recognised too, so that a refusal can say what the file actually is.
    """
    head = bytes(data[:64])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if head[:4] == b"\x00\x00\x02\x00":
        return "CUR"
    if head[:4] == b"8BPS":
        return "PSD"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG2000"
    if head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n") or head[:2] == b"\xff\x0a":
        return "JPEGXL"
    if head[4:8] == b"ftyp":
        brands = head[8:12] + head[16:32]
        if b"avif" in brands or b"avis" in brands:
            return "AVIF"
        if head[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIF"
        return None
    if head[:4] == b"qoif":
        return "QOI"
    if head[:4] == b"icns":
        return "ICNS"
    if head[:4] == b"DDS ":
        return "DDS"
    if head[:4] == b"%PDF":
        return "PDF"
    if head[:4] == b"%!PS" or head[:4] == b"\xc5\xd0\xd3\xc6":
        return "EPS"
    if head[:4] == b"\x59\xa6\x6a\x95":
        return "SUN"
    if head[:2] == b"\x01\xda":
        return "SGI"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567" and head[2:3].isspace():
        return "PPM"
    if head[:9] == b"SIMPLE  =":
        return "FITS"
    text_head = bytes(data[:1024]).lstrip().lower()
    if text_head.startswith((b"<svg", b"<?xml")) and b"<svg" in text_head:
        return "SVG"
    return None


# --------------------------------------------------------------------------------------------------
# Truncation checks (independent of PIL.ImageFile.LOAD_TRUNCATED_IMAGES)


def _png_problem(data: bytes) -> str | None:
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunk_type = data[pos + 4 : pos + 8]
        end = pos + 12 + length  # length field, type, data, CRC
        if end > n:
            return f"the {chunk_type.decode('latin-1')!r} chunk is cut off"
        if chunk_type == b"IEND":
            return None
        pos = end
    return "the file ends before the IEND chunk"


def _jpeg_problem(data: bytes) -> str | None:
    cut = "the file ends before the end-of-image marker"
    pos, n = 2, len(data)
    while True:
        # libjpeg skips stray bytes between segments (with a warning), so search rather than insist.
        pos = data.find(b"\xff", pos)
        if pos < 0:
            return cut
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return cut
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            return None
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD8:  # markers without a length field
            continue
        if pos + 2 > n:
            return cut
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            return f"segment 0xFF{marker:02X} has an invalid length"
        pos += length
        if pos > n:
            return cut
        if marker == 0xDA:  # SOS: entropy-coded data follows, up to the next real marker
            found = _JPEG_MARKER_IN_SCAN.search(data, pos)
            if found is None:
                return cut
            pos = found.start()


def _webp_problem(data: bytes) -> str | None:
    if len(data) < 12:
        return "the RIFF header is cut off"
    expected = 8 + int.from_bytes(data[4:8], "little")
    if len(data) < expected:
        return f"the RIFF header promises {expected} bytes but there are only {len(data)}"
    return None


def _bmp_problem(data: bytes) -> str | None:
    if len(data) < 26:
        return "the header is cut off"
    offset = int.from_bytes(data[10:14], "little")
    header_size = int.from_bytes(data[14:18], "little")
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width = int.from_bytes(data[18:20], "little")
        height = int.from_bytes(data[20:22], "little")
        bits = int.from_bytes(data[24:26], "little")
        compression = 0
    else:
        if len(data) < 34:
            return "the header is cut off"
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = abs(int.from_bytes(data[22:26], "little", signed=True))  # negative = top-down rows
        bits = int.from_bytes(data[28:30], "little")
        compression = int.from_bytes(data[30:34], "little")
    # Only uncompressed / bit-field layouts have a computable length; RLE data is left to PIL.
    if compression not in (0, 3, 6) or width <= 0 or bits == 0:
        return None
    stride = (width * bits + 31) // 32 * 4
    expected = offset + stride * height
    if len(data) < expected:
        return f"the pixel data needs {expected} bytes but there are only {len(data)}"
    return None


def _tiff_problem(data: bytes, image: Image.Image) -> str | None:
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    for offsets_tag, counts_tag in ((273, 279), (324, 325)):  # strips, tiles
        offsets, counts = tags.get(offsets_tag), tags.get(counts_tag)
        if offsets is None or counts is None:
            continue
        offsets = offsets if isinstance(offsets, tuple) else (offsets,)
        counts = counts if isinstance(counts, tuple) else (counts,)
        for offset, count in zip(offsets, counts, strict=False):
            if offset + count > len(data):
                return f"image data up to byte {offset + count} is missing (the file has {len(data)})"
    return None


def _truncation_problem(data: bytes, fmt: str, image: Image.Image) -> str | None:
    if fmt == "PNG":
        return _png_problem(data)
    if fmt == "JPEG":
        return _jpeg_problem(data)
    if fmt == "WEBP":
        return _webp_problem(data)
    if fmt == "BMP":
        return _bmp_problem(data)
    if fmt == "TIFF":
        return _tiff_problem(data, image)
    return None


# --------------------------------------------------------------------------------------------------
# Reading and validation


def _check_max_pixels(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")


def _read_source(src: ImageSource, what: str) -> tuple[bytes | None, Image.Image | None, str]:
    """Return (data, image, label): exactly one of data/image is set; label names the source."""
    if isinstance(src, Image.Image):
        return None, src, "the given PIL image"
    if isinstance(src, bytes | bytearray | memoryview):
        data = bytes(src)
        return data, None, f"<{len(data)} bytes>"
    if isinstance(src, str | os.PathLike):
        raw_path = os.fsdecode(os.fspath(src))
        if not raw_path:
            raise InputError(f"{what}: the path is empty; give the path of an image file")
        path = pathlib.Path(raw_path)
        if not path.exists():
            raise InputError(f"{what}: file not found: {path}; check the path")
        if path.is_dir():
            raise InputError(f"{what}: {path} is a directory, not an image file; give the path of a file")
        try:
            return path.read_bytes(), None, str(path)
        except OSError as exc:
            raise InputError(f"{what}: cannot read {path}: {exc.strerror or exc}; check its permissions") from exc
    raise TypeError(f"{what} must be a file path, bytes or a PIL image, got {type(src).__name__}")


def _refuse_format(fmt: str, label: str, what: str) -> InputError:
    return InputError(
        f"{what}: {fmt} images are not accepted: {label}; allowed formats are {_ALLOWED_TEXT} (convert it to PNG first)"
    )


def _corrupt(label: str, what: str, reason: str) -> InputError:
    return InputError(f"{what}: not an image or corrupt: {label} ({reason}); give a complete {_ALLOWED_TEXT} file")


def _check_size(size: tuple[int, int], max_pixels: int, label: str, what: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"{what}: {label} has zero size ({width}x{height}); give a non-empty image")
    if width * height > max_pixels:
        raise InputError(
            f"{what}: {label} is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}; downscale it first (or raise max_pixels if you really need it)"
        )


def _open_bytes(data: bytes, label: str, what: str, max_pixels: int) -> Image.Image:
    """Sniff, open with the matching decoder only, check size and completeness, then decode."""
    fmt = sniff_format(data)
    if fmt is None:
        raise _corrupt(label, what, "unrecognised content")
    if fmt not in ALLOWED_FORMATS:
        raise _refuse_format(fmt, label, what)
    try:
        # PIL's bomb guard warns before it refuses; as an error it cannot slip past a caller who ignores
        # warnings. (catch_warnings is process-global; if two threads race here the worst outcome is that
        # the "error" filter stays installed, which is this module's policy anyway.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"{what}: {label} is too large, PIL refuses it as a possible decompression bomb ({exc}); downscale it first"
        ) from exc
    except UnidentifiedImageError as exc:
        raise _corrupt(label, what, f"PIL's {fmt} decoder cannot read it") from exc
    except _DECODE_ERRORS as exc:
        raise _corrupt(label, what, str(exc) or type(exc).__name__) from exc
    try:
        _check_size(image.size, max_pixels, label, what)
        problem = _truncation_problem(data, fmt, image)
        if problem is not None:
            raise _corrupt(label, what, f"truncated: {problem}")
        _load(image, label, what)
    except BaseException:
        image.close()
        raise
    return image


def _load(image: Image.Image, label: str, what: str) -> None:
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise _corrupt(label, what, f"truncated or damaged data: {exc}") from exc


def _open_validated(src: ImageSource, max_pixels: int, what: str) -> tuple[Image.Image, str]:
    """Return a fully decoded, EXIF-oriented image in its original mode (a new object) and its label."""
    _check_max_pixels(max_pixels)
    data, given, label = _read_source(src, what)
    if given is not None:
        fmt = _FORMAT_ALIASES.get(given.format or "", given.format)
        if fmt is not None and fmt not in ALLOWED_FORMATS:
            raise _refuse_format(fmt, label, what)
        _check_size(given.size, max_pixels, label, what)
        _load(given, label, what)
        return _oriented(given), label
    assert data is not None
    opened = _open_bytes(data, label, what, max_pixels)
    try:
        return _oriented(opened), label
    finally:
        opened.close()


def _oriented(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS:
        # Unparseable EXIF leaves the orientation unknown; the pixels themselves are fine.
        return image.copy()


# --------------------------------------------------------------------------------------------------
# Mode normalisation


def _has_transparency(image: Image.Image) -> bool:
    if image.mode in _ALPHA_MODES:
        return True
    if image.info.get("transparency") is not None:
        return True
    palette = image.palette if image.mode == "P" else None
    return palette is not None and palette.mode == "RGBA"


def _as_rgba(image: Image.Image) -> Image.Image:
    if image.mode == "La":  # PIL cannot go from La to RGBA directly
        image = image.convert("LA")
    return image.convert("RGBA")


def _refuse_float(image: Image.Image, label: str, what: str) -> None:
    if image.mode.startswith("F"):
        raise InputError(
            f"{what}: {label} has floating-point pixels (mode {image.mode}), whose range is ambiguous; "
            "convert it to an 8- or 16-bit image first (e.g. scale to 0..255 and save as PNG)"
        )


def _integer_to_l(image: Image.Image) -> Image.Image:
    """16-bit (or clipped 32-bit) integer greyscale -> 8-bit L by round(v / 257)."""
    values = np.asarray(image)
    if values.dtype.kind not in "iu":
        values = np.asarray(image.convert("I"))
    values = np.clip(values.astype(np.int32), 0, 65535)
    # (v + 128) // 257 == round(v / 257): v / 257 is never exactly k + 0.5 for an integer v.
    return Image.fromarray(((values + 128) // 257).astype(np.uint8))


def _convert(image: Image.Image, mode: str, label: str, what: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError as exc:
        raise InputError(
            f"{what}: {label} has pixel mode {image.mode}, which cannot be converted to {mode} ({exc}); "
            "save it as an 8-bit RGB PNG first"
        ) from exc


def _to_rgb(image: Image.Image, label: str, what: str) -> Image.Image:
    _refuse_float(image, label, what)
    if image.mode == "I" or image.mode.startswith("I;"):
        return _integer_to_l(image).convert("RGB")
    if _has_transparency(image):
        rgba = _as_rgba(image)
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        return Image.composite(rgba.convert("RGB"), white, rgba.getchannel("A"))
    if image.mode == "RGB":
        return image.copy()
    return _convert(image, "RGB", label, what)


def _to_mask(image: Image.Image, label: str, what: str) -> Image.Image:
    _refuse_float(image, label, what)
    if image.mode == "I" or image.mode.startswith("I;"):
        return _integer_to_l(image)
    if _has_transparency(image):
        rgba = _as_rgba(image)
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
        return rgba.convert("RGB").convert("L")
    if image.mode == "L":
        return image.copy()
    if image.mode in ("1", "RGB"):
        return image.convert("L")
    return _convert(_convert(image, "RGB", label, what), "L", label, what)


# --------------------------------------------------------------------------------------------------
# Public API


def load_image(src: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> Image.Image:
    """Open, validate and normalise an image to 8-bit RGB (fully loaded, no file left open).

    Args:
        src: a file path, the file's bytes, or a PIL image (which is copied, never modified).
        max_pixels: refuse images with more than this many pixels, checked before decoding.
        what: how to name the image in error messages ("image", "mask", "image #3", ...).

    Returns:
        A new mode "RGB" image, EXIF orientation applied, transparency composited over white.

    Raises:
        InputError: missing/unreadable file, format outside `ALLOWED_FORMATS`, corrupt or truncated
            data, zero size, too many pixels, or floating-point pixels. See the module docstring.
        TypeError: ``src`` is of an unsupported type.
    """
    image, label = _open_validated(src, max_pixels, what)
    return _to_rgb(image, label, what)


def image_from_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> Image.Image:
    """`load_image` for the raw bytes of an image file (an upload, for example)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} data must be bytes, got {type(data).__name__}")
    return load_image(bytes(data), max_pixels=max_pixels, what=what)


#: The one text value a mask may take instead of an image: the region the editor's locator predicts
#: (`Editor.edit(mask=AUTO_MASK)`, `diptych edit --mask auto`, the API's `mask=auto`).
AUTO_MASK = "auto"


def load_mask(
    src: ImageSource,
    *,
    size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    what: str = "mask",
) -> Image.Image:
    """Load an edit mask as mode "L" (255 = may change, 0 = keep; soft values are kept).

    Args:
        src: a file path, the file's bytes, or a PIL image.
        size: the (width, height) of the image the mask belongs to; a mask of another size is refused.
        max_pixels: refuse masks with more than this many pixels, checked before decoding.
        what: how to name the mask in error messages.

    A mask with transparency uses its alpha channel if that is not fully opaque, else its luminance;
    other masks use their luminance. The format, size and orientation rules of `load_image` apply.

    Raises:
        InputError: the reasons of `load_image`, or a size mismatch with ``size``.
    """
    image, label = _open_validated(src, max_pixels, what)
    mask = _to_mask(image, label, what)
    if size is not None:
        width, height = (int(v) for v in size)
        if mask.size != (width, height):
            raise InputError(
                f"{what} is {mask.width}x{mask.height} but the image is {width}x{height}; make the mask "
                f"the same size as the image ({width}x{height} pixels)"
            )
    return mask


def save_image_atomic(
    image: Image.Image,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    fsync: bool = True,
    **options: Any,
) -> pathlib.Path:
    """Write ``image`` to ``path`` atomically and return the path.

    The image is written to a temporary file in the same folder and moved into place with ``os.replace``;
    on any error the temporary file is removed and an existing file at ``path`` is left as it was.
    Parent folders are created.

    Args:
        image: the image to write. Modes the format cannot store are flattened to RGB first (for
            example RGBA to JPEG is composited over white, as on loading).
        path: the target file.
        format: one of `ALLOWED_FORMATS`; by default taken from the suffix (.png, .jpg, .jpeg, .webp,
            .bmp, .tif, .tiff).
        fsync: flush to disk before the rename (``diptych.files.atomic_file``); off for bulk exports.
        options: passed to ``PIL.Image.Image.save``; JPEG and WEBP default to quality 95.

    Raises:
        InputError: unknown suffix or format, or ``path`` is a directory.
        TypeError: ``image`` is not a PIL image.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, got {type(image).__name__}")
    target = pathlib.Path(os.fsdecode(os.fspath(path)))
    if format is None:
        fmt = _SAVE_SUFFIXES.get(target.suffix.lower())
        if fmt is None:
            raise InputError(
                f"cannot tell the image format from the suffix {target.suffix!r} of {target}; use one of "
                f"{', '.join(_SAVE_SUFFIXES)} or pass format="
            )
    else:
        fmt = _FORMAT_ALIASES.get(format.upper(), format.upper())
        if fmt not in ALLOWED_FORMATS:
            raise InputError(f"cannot save as {format!r}; allowed formats are {_ALLOWED_TEXT}")
    if target.is_dir():
        raise InputError(f"cannot save the image to {target}: it is a directory; give a file name")
    if image.mode not in _SAVE_MODES[fmt]:
        image = _to_rgb(image, "the image to save", "image")
    save_options = {**_SAVE_DEFAULTS.get(fmt, {}), **options}

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target, fsync=fsync) as handle:
        image.save(handle, format=fmt, **save_options)
    return target


def validate_instruction(text: str, *, max_chars: int = 1000) -> str:
    """Check an edit instruction and return it stripped (CR LF and CR line ends become LF).

    Raises:
        InputError: not text, empty or whitespace only, longer than ``max_chars`` characters (after
            stripping), or containing control characters other than newline and tab.
        ValueError: ``max_chars`` is not a positive integer.
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars <= 0:
        raise ValueError(f"max_chars must be a positive integer, got {max_chars!r}")
    if not isinstance(text, str):
        raise InputError(f"the instruction must be text, got {type(text).__name__}")
    cleaned = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not cleaned:
        raise InputError("empty instruction: say what to change, for example 'make the sky purple'")
    if len(cleaned) > max_chars:
        raise InputError(
            f"the instruction is {len(cleaned)} characters long, more than the limit of {max_chars}; shorten it"
        )
    for index, char in enumerate(cleaned):
        if char in "\n\t":
            continue
        category = unicodedata.category(char)
        if category == "Cc":
            raise InputError(
                f"the instruction contains the control character U+{ord(char):04X} at position {index}; "
                "remove it (only newlines and tabs are allowed)"
            )
        if category == "Cs":
            raise InputError(
                f"the instruction contains a lone surrogate U+{ord(char):04X} at position {index} "
                "(broken text encoding); send valid UTF-8 text"
            )
    return cleaned
