"""Tests for diptych.images: one test (at least) per documented loading, mask, instruction and save rule."""

from __future__ import annotations

import io
import os
import pathlib
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from diptych import images
from diptych.errors import DiptychError, InputError
from diptych.images import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    image_from_bytes,
    load_image,
    load_mask,
    save_image_atomic,
    sniff_format,
    validate_instruction,
)

# --------------------------------------------------------------------------------------------------
# helpers


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    """Random RGB pixels, so that compressed data is long and a cut lands inside the pixel data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def blank_png(width: int, height: int, *, bit_depth: int = 1) -> bytes:
    """A valid all-black greyscale PNG of any size, built without ever holding its pixels in memory."""
    row = b"\x00" * (1 + (width * bit_depth + 7) // 8)  # filter byte + packed zero pixels
    compressor = zlib.compressobj(9)
    parts = []
    rows_per_block = max(1, 1_000_000 // len(row))
    done = 0
    while done < height:
        count = min(rows_per_block, height - done)
        parts.append(compressor.compress(row * count))
        done += count
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def pixel(image: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    value = image.getpixel(xy)
    return value if isinstance(value, tuple) else (value,)


@pytest.fixture
def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any pixel decoding fail loudly, to prove a guard fires before it."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded before the size guard")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# --------------------------------------------------------------------------------------------------
# public constants and sources


def test_constants() -> None:
    assert frozenset({"PNG", "JPEG", "WEBP", "BMP", "TIFF"}) == ALLOWED_FORMATS
    assert DEFAULT_MAX_PIXELS == 40_000_000
    assert issubclass(InputError, DiptychError)


def test_rgb_from_path_bytes_and_pil_are_identical(tmp_path: pathlib.Path) -> None:
    source = noise()
    data = encode(source, "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    expected = np.asarray(source)
    for src in (str(path), path, data, bytearray(data), memoryview(data), source):
        out = load_image(src)
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), expected)
    assert image_from_bytes(data).tobytes() == source.tobytes()


def test_pil_input_returns_a_new_object_and_is_not_modified() -> None:
    rgb = Image.new("RGB", (2, 2), (9, 9, 9))
    out = load_image(rgb)
    assert out is not rgb
    out.putpixel((0, 0), (1, 2, 3))
    assert rgb.getpixel((0, 0)) == (9, 9, 9)

    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    load_image(rgba)
    assert rgba.mode == "RGBA"
    assert rgba.getpixel((0, 0)) == (0, 0, 0, 0)


def test_file_is_closed_after_loading(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encode(noise(), "PNG"))
    fd_dir = pathlib.Path("/proc/self/fd")
    if not fd_dir.exists():
        pytest.skip("needs /proc to count open files")
    before = len(list(fd_dir.iterdir()))
    load_image(path)
    load_mask(path)
    assert len(list(fd_dir.iterdir())) == before


def test_missing_path_is_named(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope" / "missing.png"
    with pytest.raises(InputError, match="not found") as info:
        load_image(missing)
    assert str(missing) in str(info.value)


def test_directory_and_empty_path_are_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InputError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(InputError, match="empty"):
        load_image("")


def test_unsupported_source_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="path, bytes or a PIL image"):
        load_image(12345)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        image_from_bytes("not bytes")  # type: ignore[arg-type]


def test_what_is_used_in_messages(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InputError, match=r"^image #3: "):
        load_image(b"garbage", what="image #3")
    with pytest.raises(InputError, match=r"^mask: "):
        load_mask(tmp_path / "missing.png")


# --------------------------------------------------------------------------------------------------
# formats: sniffed content, allowed list, corrupt and truncated data


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("JPEG", {"quality": 100}), ("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {})],
)
def test_allowed_formats_load(fmt: str, options: dict[str, object]) -> None:
    source = noise((16, 12))
    data = encode(source, fmt, **options)
    assert sniff_format(data) == fmt
    out = load_image(data)
    assert out.size == (16, 12)
    if fmt != "JPEG":  # lossless formats round-trip exactly
        assert out.tobytes() == source.tobytes()


def test_content_is_sniffed_not_the_suffix(tmp_path: pathlib.Path) -> None:
    png_named_gif = tmp_path / "really_a_png.gif"
    png_named_gif.write_bytes(encode(noise(), "PNG"))
    assert load_image(png_named_gif).size == (64, 48)

    gif_named_png = tmp_path / "really_a_gif.png"
    gif_named_png.write_bytes(encode(Image.new("P", (4, 4)), "GIF"))
    with pytest.raises(InputError, match="GIF"):
        load_image(gif_named_png)


@pytest.mark.parametrize(
    ("fmt", "image"),
    [("GIF", Image.new("P", (4, 4))), ("ICO", Image.new("RGB", (16, 16))), ("PPM", Image.new("RGB", (4, 4)))],
)
def test_disallowed_format_is_refused_by_name(fmt: str, image: Image.Image) -> None:
    data = encode(image, fmt)
    with pytest.raises(InputError) as info:
        load_image(data)
    message = str(info.value)
    assert fmt in message
    for allowed in ALLOWED_FORMATS:
        assert allowed in message


def test_opened_pil_image_of_disallowed_format_is_refused() -> None:
    opened = Image.open(io.BytesIO(encode(Image.new("P", (4, 4)), "GIF")))
    with pytest.raises(InputError, match="GIF"):
        load_image(opened)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, I am a text file",
        os.urandom(2000),
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
        b"\xff\xd8\xff",
    ],
)
def test_corrupt_data_is_refused(data: bytes) -> None:
    with pytest.raises(InputError, match="not an image or corrupt"):
        load_image(data)


def test_corrupt_file_message_names_the_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x13" * 300)
    with pytest.raises(InputError, match="not an image or corrupt") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_damaged_png_pixel_data_is_refused() -> None:
    data = bytearray(encode(noise(), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 40 : idat + 400] = bytes(360)  # wreck the zlib stream, keep the chunk structure
    with pytest.raises(InputError, match="not an image or corrupt"):
        load_image(bytes(data))


TRUNCATABLE = [
    ("PNG", {}),
    ("JPEG", {"quality": 90}),
    ("JPEG", {"quality": 90, "progressive": True}),
    ("WEBP", {"lossless": True}),
    ("BMP", {}),
    ("TIFF", {}),
    ("TIFF", {"compression": "tiff_deflate"}),
]


@pytest.mark.parametrize("load_truncated", [False, True], ids=["pil-default", "LOAD_TRUNCATED_IMAGES"])
@pytest.mark.parametrize(("fmt", "options"), TRUNCATABLE)
def test_truncated_files_are_refused(
    monkeypatch: pytest.MonkeyPatch, fmt: str, options: dict[str, object], load_truncated: bool
) -> None:
    # With LOAD_TRUNCATED_IMAGES set (by some other part of an app), PIL itself would fill the rest
    # with grey; the structural checks must refuse the file anyway.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    data = encode(noise((96, 64)), fmt, **options)
    for cut in (len(data) // 2, len(data) - 3):
        with pytest.raises(InputError, match="not an image or corrupt"):
            load_image(data[:cut])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated  # never changed by the loader


def test_jpeg_structure_walk_accepts_valid_variants() -> None:
    source = noise((40, 30))
    exif = Image.Exif()
    exif[0x010E] = "x" * 3000  # ImageDescription: a long APP1 segment before the scan
    variants = [
        encode(source, "JPEG", quality=90) + b"trailing junk after EOI \xff\xd9",
        encode(source, "JPEG", quality=90, progressive=True, optimize=True),
        encode(source, "JPEG", quality=90, exif=exif.tobytes()),
        encode(Image.new("L", (33, 17), 9), "JPEG"),
        encode(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG"),
    ]
    for data in variants:
        assert images._jpeg_problem(data) is None
        assert load_image(data).mode == "RGB"


def test_png_cut_before_iend_is_refused_even_if_pixels_are_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = encode(noise((8, 8)), "PNG")
    assert data.endswith(png_chunk(b"IEND", b""))
    with pytest.raises(InputError, match="truncated"):
        load_image(data[:-12])


# --------------------------------------------------------------------------------------------------
# size guards


def test_decompression_bomb_png_is_refused_without_decoding(forbid_decoding: None) -> None:
    bomb = blank_png(20000, 20000)  # 400 million pixels in about 60 kB
    assert len(bomb) < 1_000_000
    with pytest.raises(InputError, match=r"too large|more than the limit"):
        load_image(bomb)


def test_size_guard_fires_before_decoding(forbid_decoding: None) -> None:
    big = blank_png(8000, 8000)  # 64 M pixels: under PIL's own limit, over ours
    with pytest.raises(InputError) as info:
        load_image(big)
    message = str(info.value)
    assert "8000x8000" in message
    assert "64,000,000" in message
    assert "40,000,000" in message
    assert "downscale" in message
    assert "max_pixels" in message


def test_max_pixels_boundary() -> None:
    data = encode(Image.new("L", (100, 100), 5), "PNG")
    assert load_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(InputError, match="10,000 pixels, more than the limit of 9,999"):
        load_image(data, max_pixels=9_999)
    with pytest.raises(InputError, match="more than the limit"):
        load_image(Image.new("L", (101, 100)), max_pixels=10_000)
    with pytest.raises(InputError, match="more than the limit"):
        load_mask(data, max_pixels=9_999)
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(data, max_pixels=0)


def test_pil_bomb_warning_and_error_become_input_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    # PIL warns above MAX_IMAGE_PIXELS and refuses above twice that; both must surface as InputError
    # even when the caller's own max_pixels would allow the image.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warns = encode(Image.new("L", (40, 40)), "PNG")  # 1600 pixels: PIL warns
    errors = encode(Image.new("L", (50, 50)), "PNG")  # 2500 pixels: PIL raises
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        for data in (warns, errors):
            with pytest.raises(InputError, match="decompression bomb"):
                load_image(data, max_pixels=10_000_000)
    assert not [w for w in leaked if issubclass(w.category, Image.DecompressionBombWarning)]


def test_zero_size_is_refused() -> None:
    with pytest.raises(InputError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(InputError, match="zero size"):
        load_mask(Image.new("L", (5, 0)))
    header = struct.pack(">IIBBBBB", 0, 10, 8, 0, 0, 0, 0)
    zero_width_png = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(InputError):
        load_image(zero_width_png)


# --------------------------------------------------------------------------------------------------
# EXIF orientation


def _oriented_jpeg() -> bytes:
    """A 40x20 stored image, blue with a red top-left corner, tagged orientation 6 (rotate 90° CW)."""
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_is_applied() -> None:
    out = load_image(_oriented_jpeg())
    assert out.size == (20, 40)  # width and height swapped
    # Rotating 90° clockwise moves the stored top-left corner to the top-right.
    red_corner = pixel(out, (17, 2))
    assert red_corner[0] > 200 and red_corner[2] < 60
    other_corner = pixel(out, (2, 2))
    assert other_corner[2] > 200 and other_corner[0] < 60


def test_exif_orientation_applies_to_masks_and_pil_inputs() -> None:
    data = _oriented_jpeg()
    mask = load_mask(data)
    assert mask.size == (20, 40)
    assert pixel(mask, (17, 2))[0] != pixel(mask, (2, 2))[0]
    opened = Image.open(io.BytesIO(data))
    assert load_image(opened).size == (20, 40)


# --------------------------------------------------------------------------------------------------
# mode conversions (exact pixel values, checked by hand)


def _palette_image(indices: list[int], palette: list[int]) -> Image.Image:
    image = Image.new("P", (len(indices), 1))
    image.putpalette(palette)
    image.putdata(indices)
    return image


def _png_roundtrip(image: Image.Image, **options: object) -> Image.Image:
    return Image.open(io.BytesIO(encode(image, "PNG", **options)))


MODE_CASES = [
    # RGBA over white: round((c*a + 255*(255-a)) / 255)
    ("RGBA black at alpha 51", Image.new("RGBA", (1, 1), (0, 0, 0, 51)), (204, 204, 204)),
    ("RGBA red at alpha 128", Image.new("RGBA", (1, 1), (255, 0, 0, 128)), (255, 127, 127)),
    ("RGBA opaque", Image.new("RGBA", (1, 1), (200, 100, 50, 255)), (200, 100, 50)),
    ("RGBA transparent", Image.new("RGBA", (1, 1), (10, 20, 30, 0)), (255, 255, 255)),
    ("LA grey 0 at alpha 102", Image.new("LA", (1, 1), (0, 102)), (153, 153, 153)),
    ("LA opaque", Image.new("LA", (1, 1), (100, 255)), (100, 100, 100)),
    ("PA transparent", Image.new("PA", (1, 1), (0, 0)), (255, 255, 255)),
    ("P via palette", _palette_image([2], [0, 0, 0, 1, 1, 1, 12, 34, 56]), (12, 34, 56)),
    (
        "P with transparent index",
        _png_roundtrip(_palette_image([1], [255, 0, 0, 0, 255, 0]), transparency=1),
        (255, 255, 255),
    ),
    (
        "P other index",
        _png_roundtrip(_palette_image([0], [255, 0, 0, 0, 255, 0]), transparency=1),
        (255, 0, 0),
    ),
    ("L with tRNS, keyed value", _png_roundtrip(Image.new("L", (1, 1), 7), transparency=7), (255, 255, 255)),
    ("L with tRNS, other value", _png_roundtrip(Image.new("L", (1, 1), 8), transparency=7), (8, 8, 8)),
    (
        "RGB with tRNS colour key",
        _png_roundtrip(Image.new("RGB", (1, 1), (1, 2, 3)), transparency=(1, 2, 3)),
        (255, 255, 255),
    ),
    ("L", Image.new("L", (1, 1), 77), (77, 77, 77)),
    ("1 white", Image.new("1", (1, 1), 1), (255, 255, 255)),
    ("1 black", Image.new("1", (1, 1), 0), (0, 0, 0)),
    ("CMYK magenta", Image.new("CMYK", (1, 1), (0, 255, 0, 0)), (255, 0, 255)),
    ("CMYK 20% cyan", Image.new("CMYK", (1, 1), (51, 0, 0, 0)), (204, 255, 255)),
    ("CMYK black", Image.new("CMYK", (1, 1), (0, 0, 0, 255)), (0, 0, 0)),
    ("YCbCr grey", Image.new("YCbCr", (1, 1), (128, 128, 128)), (128, 128, 128)),
    # R = 76 + 1.402*127 = 254.05, G = 76 + 0.344*43 - 0.714*127 = 0.1, B = 76 - 1.772*43 < 0
    ("YCbCr red", Image.new("YCbCr", (1, 1), (76, 85, 255)), (254, 0, 0)),
    # L* = 128/255*100 = 50.2 -> Y = 0.1858 -> sRGB 0.468 -> 119
    ("LAB mid grey", Image.new("LAB", (1, 1), (128, 128, 128)), (119, 119, 119)),
    ("HSV red", Image.new("HSV", (1, 1), (0, 255, 255)), (255, 0, 0)),
    # V = 200, S = 128/255 -> min = 200 * (1 - 0.502) = 99.6
    ("HSV pink", Image.new("HSV", (1, 1), (0, 128, 200)), (200, 100, 100)),
    ("I;16 4660", Image.frombytes("I;16", (1, 1), struct.pack("<H", 4660)), (18, 18, 18)),
    ("I;16B 4660", Image.frombytes("I;16B", (1, 1), struct.pack(">H", 4660)), (18, 18, 18)),
    ("I;16 128 rounds down", Image.frombytes("I;16", (1, 1), struct.pack("<H", 128)), (0, 0, 0)),
    ("I;16 129 rounds up", Image.frombytes("I;16", (1, 1), struct.pack("<H", 129)), (1, 1, 1)),
    ("I 1000", Image.new("I", (1, 1), 1000), (4, 4, 4)),
    ("I negative clips to 0", Image.new("I", (1, 1), -5), (0, 0, 0)),
    ("I above 16 bits clips to 255", Image.new("I", (1, 1), 70000), (255, 255, 255)),
]


@pytest.mark.parametrize(("name", "image", "expected"), MODE_CASES, ids=[case[0] for case in MODE_CASES])
def test_mode_conversion(name: str, image: Image.Image, expected: tuple[int, int, int]) -> None:
    out = load_image(image)
    assert out.mode == "RGB"
    assert pixel(out) == expected


def test_sixteen_bit_png_ramp_spans_full_range() -> None:
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")  # really a 16-bit file
    out = np.asarray(load_image(data))[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert set(np.unique(out).tolist()) == set(range(256))
    expected = np.floor(ramp / 257 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 128] == 0 and out[0, 129] == 1  # v=128 -> 0.498, v=129 -> 0.502
    assert out.reshape(-1)[128 * 257] == 128


def test_thirty_two_bit_tiff_is_clipped_then_scaled() -> None:
    values = np.array([[-5, 0, 257, 65535, 70000]], dtype=np.int32)
    out = load_image(encode(Image.fromarray(values), "TIFF"))
    assert np.asarray(out)[0, :, 0].tolist() == [0, 0, 1, 255, 255]


def test_float_images_are_refused_with_a_fix() -> None:
    with pytest.raises(InputError, match=r"floating-point.*convert"):
        load_image(Image.new("F", (2, 2), 0.5))
    with pytest.raises(InputError, match="floating-point"):
        load_image(encode(Image.new("F", (2, 2), 0.5), "TIFF"))
    with pytest.raises(InputError, match="floating-point"):
        load_mask(Image.new("F", (2, 2), 0.5))


def test_multi_frame_tiff_gives_first_frame() -> None:
    first, second = Image.new("RGB", (4, 4), (10, 20, 30)), Image.new("RGB", (4, 4), (40, 50, 60))
    data = encode(first, "TIFF", save_all=True, append_images=[second])
    assert pixel(load_image(data)) == (10, 20, 30)


# --------------------------------------------------------------------------------------------------
# masks


def test_mask_size_mismatch_names_both_sizes_and_the_fix() -> None:
    with pytest.raises(InputError) as info:
        load_mask(Image.new("L", (30, 20)), size=(64, 48))
    message = str(info.value)
    assert "30x20" in message and "64x48" in message
    assert "same size" in message
    assert load_mask(Image.new("L", (64, 48)), size=(64, 48)).size == (64, 48)


def test_mask_from_rgba_alpha() -> None:
    painted = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    painted.putpixel((1, 0), (0, 0, 0, 255))  # black, opaque paint: still "may change"
    painted.putpixel((2, 0), (255, 255, 255, 128))
    mask = load_mask(encode(painted, "PNG"))
    assert mask.mode == "L"
    assert list(mask.getdata()) == [0, 255, 128]


def test_opaque_rgba_mask_uses_luminance() -> None:
    opaque = Image.new("RGBA", (3, 1), (255, 255, 255, 255))
    opaque.putpixel((1, 0), (0, 0, 0, 255))
    opaque.putpixel((2, 0), (255, 0, 0, 255))  # 0.299 * 255 = 76.2
    assert list(load_mask(opaque).getdata()) == [255, 0, 76]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("L", (1, 1), 99), 99),
        (Image.new("1", (1, 1), 1), 255),
        (Image.new("RGB", (1, 1), (0, 255, 0)), 150),  # 0.587 * 255 = 149.7
        (Image.frombytes("I;16", (1, 1), struct.pack("<H", 32896)), 128),
        (Image.new("LA", (1, 1), (10, 64)), 64),
        (_palette_image([1], [0, 0, 0, 255, 255, 255]), 255),
    ],
    ids=["L", "1", "RGB", "I;16", "LA-alpha", "P"],
)
def test_mask_modes(image: Image.Image, expected: int) -> None:
    mask = load_mask(image)
    assert mask.mode == "L"
    assert pixel(mask) == (expected,)


def test_mask_grey_values_are_kept_not_thresholded() -> None:
    ramp = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    np.testing.assert_array_equal(np.asarray(load_mask(encode(ramp, "PNG"))), np.asarray(ramp))


def test_mask_refuses_what_images_refuse() -> None:
    with pytest.raises(InputError, match="GIF"):
        load_mask(encode(Image.new("P", (4, 4)), "GIF"))
    with pytest.raises(InputError, match="not an image or corrupt"):
        load_mask(encode(noise(), "PNG")[:500])


# --------------------------------------------------------------------------------------------------
# sniffing


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "PNG"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "JPEG"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"BM" + b"\x00" * 12 + struct.pack("<I", 40) + b"\x00" * 8, "BMP"),
        (b"II*\x00\x08\x00\x00\x00", "TIFF"),
        (b"MM\x00*\x00\x00\x00\x08", "TIFF"),
        (b"GIF89a\x01\x00", "GIF"),
        (b"\x00\x00\x01\x00\x01\x00", "ICO"),
        (b"8BPS\x00\x01", "PSD"),
        (b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00avifmif1", "AVIF"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isomiso2", None),  # an MP4 video
        (b"%PDF-1.7", "PDF"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"BMW is a car maker and this is a text file", None),
        (b"", None),
        (b"just text", None),
    ],
)
def test_sniff_format(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


# --------------------------------------------------------------------------------------------------
# instructions


def test_instruction_is_stripped() -> None:
    assert validate_instruction("  make the sky purple \n") == "make the sky purple"
    assert validate_instruction("line one\n\tline two") == "line one\n\tline two"
    assert validate_instruction("a\r\nb\rc") == "a\nb\nc"
    assert validate_instruction("make it 🌈 naïve") == "make it 🌈 naïve"


@pytest.mark.parametrize("text", ["", "   ", "\n\t \r\n"])
def test_empty_instruction_is_refused(text: str) -> None:
    with pytest.raises(InputError, match="empty instruction"):
        validate_instruction(text)


def test_instruction_length_limit() -> None:
    assert validate_instruction("x" * 1000) == "x" * 1000
    assert validate_instruction("  " + "x" * 10 + "  ", max_chars=10) == "x" * 10
    with pytest.raises(InputError, match=r"1001 characters.*limit of 1000"):
        validate_instruction("x" * 1001)
    with pytest.raises(InputError, match=r"11 characters.*limit of 10"):
        validate_instruction("x" * 11, max_chars=10)
    with pytest.raises(ValueError, match="max_chars"):
        validate_instruction("x", max_chars=0)


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\x0b", "\x0c"])
def test_control_characters_are_refused(char: str) -> None:
    with pytest.raises(InputError, match=f"U\\+{ord(char):04X}"):
        validate_instruction(f"make{char}it red")


def test_non_text_instruction_is_refused() -> None:
    with pytest.raises(InputError, match="must be text"):
        validate_instruction(42)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="surrogate"):
        validate_instruction("bad \ud800 text")


# --------------------------------------------------------------------------------------------------
# atomic saving


def _leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".webp", ".PNG", ".bmp", ".tif", ".tiff"])
def test_save_round_trip_by_suffix(tmp_path: pathlib.Path, suffix: str) -> None:
    source = noise((24, 16))
    target = save_image_atomic(source, tmp_path / f"out{suffix}")
    assert target == tmp_path / f"out{suffix}"
    expected_format = images._SAVE_SUFFIXES[suffix.lower()]
    assert sniff_format(target.read_bytes()) == expected_format
    loaded = load_image(target)
    assert loaded.size == (24, 16)
    if expected_format in ("PNG", "BMP", "TIFF"):
        assert loaded.tobytes() == source.tobytes()
    assert _leftovers(tmp_path) == []


def test_save_creates_parents_and_replaces(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "a" / "b" / "c.png"
    save_image_atomic(Image.new("RGB", (4, 4), (1, 2, 3)), target)
    save_image_atomic(Image.new("RGB", (4, 4), (9, 9, 9)), target)
    assert pixel(load_image(target)) == (9, 9, 9)
    assert _leftovers(target.parent) == []


def test_save_uses_normal_file_permissions(tmp_path: pathlib.Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    target = save_image_atomic(Image.new("RGB", (2, 2)), tmp_path / "p.png")
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_format_argument_and_flattening(tmp_path: pathlib.Path) -> None:
    target = save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "data.bin", format="png")
    assert sniff_format(target.read_bytes()) == "PNG"
    jpeg = save_image_atomic(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), tmp_path / "flat.jpg")
    assert pixel(load_image(jpeg)) == (255, 255, 255)  # transparency flattened over white
    with pytest.raises(InputError, match="GIF"):
        save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "x.gif", format="GIF")


def test_save_unknown_suffix_or_directory_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InputError, match=r"'\.gif'"):
        save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "x.gif")
    with pytest.raises(InputError, match="suffix"):
        save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "noext")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(InputError, match="directory"):
        save_image_atomic(Image.new("RGB", (4, 4)), folder)
    with pytest.raises(TypeError):
        save_image_atomic(np.zeros((4, 4, 3), np.uint8), tmp_path / "x.png")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png"]


def _failing_save(self: Image.Image, fp: object, format: str | None = None, **kw: object) -> None:
    fp.write(b"\x89PNG\r\n\x1a\n partial data")  # type: ignore[attr-defined]
    raise OSError("disk full (simulated)")


def test_failed_save_leaves_no_partial_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image.Image, "save", _failing_save)
    with pytest.raises(OSError, match="simulated"):
        save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "new.png")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_old_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = save_image_atomic(Image.new("RGB", (4, 4), (5, 6, 7)), tmp_path / "keep.png")
    old = target.read_bytes()
    monkeypatch.setattr(Image.Image, "save", _failing_save)
    with pytest.raises(OSError, match="simulated"):
        save_image_atomic(Image.new("RGB", (4, 4), (0, 0, 0)), target)
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_interrupted_save_cleans_up(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: Image.Image, fp: object, format: str | None = None, **kw: object) -> None:
        fp.write(b"half")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "x.webp")
    assert list(tmp_path.iterdir()) == []
