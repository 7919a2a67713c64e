"""Image loading rules (shared/images.py): every mode becomes (H, W, 3) uint8 by a stated rule,
and every unusable upload becomes a specific ImageError before pixels are decoded."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.errors import ImageTooLarge, NotAnImage, TruncatedImage, UnsupportedImage
from shared.images import encode_png, load_image, psnr

DATA = Path(__file__).resolve().parents[1] / "data"
WHITE = [255, 255, 255]


def _save(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def _noise_png(height: int, width: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring width x height, with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b""))


# ---- modes ---------------------------------------------------------------------------------

def test_rgb_is_kept_exactly():
    rgb = np.random.default_rng(1).integers(0, 256, (5, 9, 3), dtype=np.uint8)

    loaded = load_image(encode_png(rgb))

    assert loaded.rgb.shape == (5, 9, 3)
    assert loaded.rgb.dtype == np.uint8
    np.testing.assert_array_equal(loaded.rgb, rgb)
    assert (loaded.source_format, loaded.source_mode) == ("PNG", "RGB")
    assert (loaded.height, loaded.width) == (5, 9)


def test_rgba_is_composited_over_white():
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128], [200, 100, 50, 255]]],
                    dtype=np.uint8)

    loaded = load_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"))

    assert loaded.source_mode == "RGBA"
    assert loaded.rgb.shape == (1, 4, 3)
    assert loaded.rgb[0, 0].tolist() == WHITE  # fully transparent -> the white page
    assert loaded.rgb[0, 1].tolist() == [10, 20, 30]
    assert loaded.rgb[0, 3].tolist() == [200, 100, 50]
    # Half-transparent black over white: 255 * (1 - 128/255) = 127, within rounding.
    assert all(abs(v - 127) <= 1 for v in loaded.rgb[0, 2].tolist())


def test_grey_is_replicated_to_three_channels():
    grey = np.array([[0, 77, 255]], dtype=np.uint8)

    loaded = load_image(_save(Image.fromarray(grey, "L"), "PNG"))

    assert loaded.source_mode == "L"
    assert loaded.rgb.tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]


def test_grey_with_alpha_is_composited_over_white():
    la = np.array([[[50, 0], [50, 255]]], dtype=np.uint8)

    loaded = load_image(_save(Image.fromarray(la, "LA"), "PNG"))

    assert loaded.source_mode == "LA"
    assert loaded.rgb.tolist() == [[WHITE, [50, 50, 50]]]


def _palette_image() -> Image.Image:
    im = Image.new("P", (3, 1))
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (253 * 3))
    im.putdata([0, 1, 2])
    return im


def test_palette_is_expanded():
    loaded = load_image(_save(_palette_image(), "PNG"))

    assert loaded.source_mode == "P"
    assert loaded.rgb.tolist() == [[[0, 0, 0], [255, 0, 0], [0, 0, 255]]]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt):
    loaded = load_image(_save(_palette_image(), fmt, transparency=0))

    assert loaded.source_mode == "P"
    assert loaded.rgb.tolist() == [[WHITE, [255, 0, 0], [0, 0, 255]]]


def test_sixteen_bit_grey_is_scaled_by_257():
    k = np.array([0, 1, 2, 100, 128, 254, 255], dtype=np.uint16)
    grey16 = np.array([list(k * 257) + [65535, 128]], dtype=np.uint16)

    loaded = load_image(_save(Image.fromarray(grey16), "PNG"))

    assert loaded.source_mode == "I;16"
    assert loaded.rgb.shape == (1, 9, 3)
    # 257*k -> k exactly; 65535 -> 255; 128/257 rounds to 0 (not 128: the data is 16-bit).
    assert loaded.rgb[0, :, 0].tolist() == [0, 1, 2, 100, 128, 254, 255, 255, 0]
    assert (loaded.rgb == loaded.rgb[:, :, :1]).all()


def test_cmyk_uses_the_naive_conversion():
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [0, 255, 255, 0]]],
                    dtype=np.uint8)

    loaded = load_image(_save(Image.fromarray(cmyk, "CMYK"), "TIFF"))

    assert loaded.source_mode == "CMYK"
    assert loaded.rgb.tolist() == [[WHITE, [0, 255, 255], [0, 0, 0], [255, 0, 0]]]


def test_one_bit_becomes_black_and_white():
    im = Image.new("1", (2, 1))
    im.putdata([0, 1])

    loaded = load_image(_save(im, "PNG"))

    assert loaded.source_mode == "1"
    assert loaded.rgb.tolist() == [[[0, 0, 0], WHITE]]


def _exif_jpeg(orientation: int) -> bytes:
    """40 wide x 20 high, left half red, right half blue, with an EXIF Orientation tag."""
    rgb = np.zeros((20, 40, 3), dtype=np.uint8)
    rgb[:, :20] = (255, 0, 0)
    rgb[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(rgb), "JPEG", exif=exif, quality=95)


def test_exif_orientation_1_keeps_the_stored_layout():
    assert load_image(_exif_jpeg(1)).rgb.shape == (20, 40, 3)


def test_exif_orientation_6_is_applied():
    rgb = load_image(_exif_jpeg(6)).rgb.astype(int)

    assert rgb.shape == (40, 20, 3)  # transposed
    # Orientation 6 means "rotate 90 degrees clockwise to display": the stored left (red) half
    # ends up on top, the right (blue) half at the bottom.
    top, bottom = rgb[:18].mean(axis=(0, 1)), rgb[22:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


# ---- refusals ------------------------------------------------------------------------------

def test_animated_gif_is_unsupported():
    frames = [Image.new("RGB", (4, 4), color) for color in ("red", "blue")]
    gif = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)

    with pytest.raises(UnsupportedImage, match="2 frames") as info:
        load_image(gif)
    assert info.value.status == 422


def test_animated_png_is_unsupported():
    frames = [Image.new("RGB", (4, 4), color) for color in ("red", "blue")]
    apng = _save(frames[0], "PNG", save_all=True, append_images=frames[1:])

    with pytest.raises(UnsupportedImage):
        load_image(apng)


def test_single_frame_gif_loads():
    assert load_image(_save(Image.new("P", (4, 3), 0), "GIF")).rgb.shape == (3, 4, 3)


@pytest.mark.parametrize(
    "data",
    [b"", np.random.default_rng(2).bytes(1000), b"hello, this is text\n" * 10],
    ids=["empty", "random", "text"],
)
def test_non_images_are_not_images(data):
    with pytest.raises(NotAnImage) as info:
        load_image(data)
    assert info.value.status == 400


def test_truncated_png_is_truncated_or_not_an_image_where_the_header_is_cut():
    png = _noise_png(16, 16)
    idat = png.index(b"IDAT") - 4  # the IDAT chunk's length field
    (idat_len,) = struct.unpack(">I", png[idat : idat + 4])
    pixels_from, pixels_to = idat + 8, idat + 8 + idat_len

    cut_in_header = {_outcome(png[:n]) for n in range(pixels_from)}
    cut_in_pixels = {_outcome(png[:n]) for n in range(pixels_from, pixels_to - 4)}

    assert cut_in_header == {"NotAnImage"}
    assert cut_in_pixels == {"TruncatedImage"}


def test_truncated_jpeg_is_truncated_or_not_an_image_where_the_header_is_cut():
    rgb = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    jpeg = _save(Image.fromarray(rgb), "JPEG", quality=90)
    sos = jpeg.index(b"\xff\xda")  # start of scan: the entropy-coded pixels follow its header
    (sos_len,) = struct.unpack(">H", jpeg[sos + 2 : sos + 4])
    pixels_from = sos + 2 + sos_len

    cut_in_header = {_outcome(jpeg[:n]) for n in range(pixels_from)}
    cut_in_pixels = {_outcome(jpeg[:n]) for n in range(pixels_from, len(jpeg))}

    assert cut_in_header == {"NotAnImage", "TruncatedImage"}  # TruncatedImage: cut between markers
    assert cut_in_pixels == {"TruncatedImage"}


def _two_frames(fmt: str) -> bytes:
    rgb = np.random.default_rng(4).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:])


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow warns on the cut TIFF tags
@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_every_cut_of_a_two_frame_file_is_an_image_error(fmt):
    # Counting frames reads every frame header before any pixel: a cut there used to escape as
    # IndexError / struct.error / TypeError from Pillow (a 500 in the services).
    data = _two_frames(fmt)

    outcomes = {_outcome(data[:n]) for n in range(len(data))}

    # "loaded": a cut exactly between frames leaves a valid one-frame file.
    assert outcomes <= {"NotAnImage", "TruncatedImage", "UnsupportedImage", "loaded"}
    assert {"NotAnImage", "TruncatedImage", "UnsupportedImage"} <= outcomes


def test_every_cut_or_zeroed_byte_of_an_avif_is_an_image_error():
    rgb = np.random.default_rng(5).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    avif = _save(Image.fromarray(rgb), "AVIF")
    damaged = [avif[:n] for n in range(len(avif))]
    damaged += [avif[:i] + b"\x00" + avif[i + 1 :] for i in range(len(avif))]

    outcomes = {_outcome(data) for data in damaged}

    assert load_image(avif).rgb.shape == (10, 12, 3)
    # The AVIF plugin raises RuntimeError for some damage ("Decoding of color planes failed").
    assert outcomes <= {"NotAnImage", "TruncatedImage", "loaded"}
    assert {"NotAnImage", "TruncatedImage"} <= outcomes


def test_huge_declared_size_is_refused_from_the_header_alone():
    png = _png_header_only(40_000, 40_000)

    assert len(png) < 100
    # The file holds no pixel data, so decoding would fail with TruncatedImage (and allocating
    # 4.8 GB first): ImageTooLarge shows the size check ran on the header alone.
    with pytest.raises(ImageTooLarge, match="40000x40000") as info:
        load_image(png)
    assert info.value.status == 413


def test_max_side_is_configurable():
    crop = DATA / "crop_97x71.png"  # 97 wide, 71 high

    assert load_image(crop, max_side=97).rgb.shape == (71, 97, 3)
    with pytest.raises(ImageTooLarge, match="at most 96x96"):
        load_image(crop, max_side=96)
    with pytest.raises(ImageTooLarge):
        load_image(_noise_png(71, 20), max_side=70)


def test_paths_and_bytes_load_the_same():
    crop = DATA / "crop_97x71.png"

    np.testing.assert_array_equal(load_image(crop).rgb, load_image(crop.read_bytes()).rgb)
    np.testing.assert_array_equal(load_image(str(crop)).rgb, load_image(crop).rgb)


def test_psnr_in_db():
    a = np.full((4, 4, 3), 100, dtype=np.uint8)

    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 1) == pytest.approx(20 * np.log10(255), abs=1e-9)  # MSE 1: 48.13 dB
    assert psnr(a, a + 16) == pytest.approx(20 * np.log10(255 / 16), abs=1e-9)


def _outcome(data: bytes) -> str:
    """"loaded", or the name of the exception ``load_image(data)`` raised (a set of these
    names makes a readable assertion message)."""
    try:
        load_image(data)
    except Exception as exc:  # noqa: BLE001 - the caller asserts on its type
        return type(exc).__name__
    return "loaded"
