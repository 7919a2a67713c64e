"""Image input and output: any file Pillow reads becomes an 8-bit RGB array, by these rules.

Checks, in order, before any pixel is decoded:
  1. zero bytes or an unidentifiable format -> ``NotAnImage``;
  2. declared width or height over ``max_side`` (default 4096), or under 1 -> ``ImageTooLarge``
     (the header is all Pillow has read; a 40 000 x 40 000 PNG of 50 KB never gets allocated);
  3. more than one frame (animated GIF/PNG/WebP, multi-page TIFF) -> ``UnsupportedImage``: the
     codec sends single images, and silently dropping frames would lose data the user sent.
Then the pixels are decoded (a short or corrupt file -> ``TruncatedImage``), EXIF orientation is
applied, and the mode is converted to RGB:

  ========== =========================================================================
  RGB        as is
  L, 1       grey replicated to R, G and B
  I;16, I    16/32-bit grey: 0..65535 scaled to 0..255 (x / 257), then as L
  F          float grey: clipped to 0..255, then as L
  RGBA, LA   alpha composited over white (what a browser shows on a white page)
  P, PA      palette expanded (with its transparency, if any), then as RGBA or RGB
  CMYK       Pillow's naive CMYK -> RGB conversion (no ICC colour management)
  YCbCr, LAB, HSV and others Pillow converts: Pillow's ``convert("RGB")``
  ========== =========================================================================
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import ImageTooLarge, NotAnImage, TruncatedImage, UnsupportedImage

DEFAULT_MAX_SIDE = 4096

# Our own size check runs first; Pillow's bomb guard would otherwise warn or raise with a
# message that does not say which limit applies here.
Image.MAX_IMAGE_PIXELS = None
# What Pillow's plugins raise on malformed files: its own Image.open treats SyntaxError,
# IndexError, TypeError and struct.error as "not this format"; the TIFF plugin also raises
# KeyError and the AVIF plugin RuntimeError (all found by tests/unit/test_fuzz.py).
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError,
                  RuntimeError, struct.error)


@dataclass(frozen=True)
class LoadedImage:
    rgb: np.ndarray  # (H, W, 3) uint8
    source_format: str  # Pillow's format name, e.g. "PNG"
    source_mode: str  # the mode before conversion

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def load_image(data: bytes | Path | str, max_side: int = DEFAULT_MAX_SIDE) -> LoadedImage:
    """Decode ``data`` (bytes or a path) to RGB following the module's rules."""
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if not data:
        raise NotAnImage("the upload is empty (0 bytes): send the image file's contents")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise NotAnImage(
            "not an image Pillow can read: send PNG, JPEG, WebP, AVIF, GIF, BMP or TIFF"
        ) from exc
    except _PILLOW_ERRORS as exc:
        raise NotAnImage(f"the image header is unreadable ({exc}): re-export the file") from exc
    with im:
        width, height = im.size
        if width < 1 or height < 1:
            raise NotAnImage(f"the image declares an empty size {width}x{height}")
        if width > max_side or height > max_side:
            raise ImageTooLarge(
                f"the image declares {width}x{height} pixels; this service accepts at most "
                f"{max_side}x{max_side}: downscale it first"
            )
        fmt, mode = im.format or "unknown", im.mode
        try:
            n_frames = getattr(im, "n_frames", 1)  # reads every frame header: may hit bad data
        except _PILLOW_ERRORS as exc:
            raise TruncatedImage(
                f"the {fmt} frame data is truncated or corrupt ({exc}): upload the complete file"
            ) from exc
        if n_frames > 1:
            raise UnsupportedImage(
                f"animated or multi-frame {im.format} images ({n_frames} frames) are not "
                "supported: send each frame as its own image"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "Truncated File Read": the error below says it
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = to_rgb(im)
        except _PILLOW_ERRORS as exc:
            raise TruncatedImage(
                f"the {fmt} data is truncated or corrupt ({exc}): upload the complete file"
            ) from exc
    return LoadedImage(rgb=rgb, source_format=fmt, source_mode=mode)


def to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image to (H, W, 3) uint8 by the module's rules."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        if mode == "I" and arr.max(initial=0) <= 255:
            grey = arr  # 32-bit container holding 8-bit data (e.g. some PNG decoders)
        else:
            grey = arr / 257.0
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    elif mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless PNG at zlib level 1: on reconstructions several times faster than Pillow's default
    level 6 for files of about its size, and both services write one per image."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of the same shape (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
