"""The baseline every upload is shown against: Pillow JPEG at the same byte count as our stream.

"Same byte count" means the largest JPEG quality (1..95, Pillow's sensible range) whose file is no
larger than our ``.lw`` stream, found by bisection (JPEG size grows with quality almost
everywhere; where it does not, bisection still returns a fitting quality). Files are written with
``optimize=True`` (Huffman tables fitted to the image), the fairest cheap setting. When even
quality 1 is larger (tiny images: JPEG's headers alone are ~600 bytes) the result says
``fits=False`` and describes quality 1.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from shared.images import encode_png, psnr

JPEG_QUALITY_MIN, JPEG_QUALITY_MAX = 1, 95


@dataclass(frozen=True)
class JpegComparison:
    data: bytes
    quality: int
    psnr: float  # dB against the upload, inf when exact
    fits: bool  # False: even quality 1 is larger than the budget

    def summary(self) -> dict:
        """The JSON the API and the page show (PSNR None when infinite)."""
        return {"bytes": len(self.data), "psnr": finite(self.psnr), "quality": self.quality, "fits": self.fits}


def preview_pixels(rgb: np.ndarray, reconstruction: np.ndarray, nbytes: int) -> tuple[JpegComparison, bytes]:
    """What the upload page shows of a stream of ``nbytes``: the same-bytes JPEG and the
    reconstruction as PNG (blocking: call it from a worker thread)."""
    return jpeg_same_bytes(rgb, nbytes), encode_png(reconstruction)


def jpeg_same_bytes(rgb: np.ndarray, max_bytes: int) -> JpegComparison:
    """Largest-quality JPEG of ``rgb`` whose size is <= ``max_bytes`` (see the module docstring)."""
    image = Image.fromarray(rgb)
    sizes: dict[int, bytes] = {}

    def encode(quality: int) -> bytes:
        if quality not in sizes:
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=quality, optimize=True)
            sizes[quality] = buf.getvalue()
        return sizes[quality]

    lo, hi = JPEG_QUALITY_MIN, JPEG_QUALITY_MAX
    if len(encode(lo)) > max_bytes:
        return _compare(rgb, encode(lo), lo, fits=False)
    if len(encode(hi)) <= max_bytes:
        return _compare(rgb, encode(hi), hi, fits=True)
    while hi - lo > 1:  # invariant: encode(lo) fits, encode(hi) does not
        mid = (lo + hi) // 2
        if len(encode(mid)) <= max_bytes:
            lo = mid
        else:
            hi = mid
    return _compare(rgb, encode(lo), lo, fits=True)


def _compare(rgb: np.ndarray, data: bytes, quality: int, fits: bool) -> JpegComparison:
    with Image.open(io.BytesIO(data)) as im:
        decoded = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return JpegComparison(data=data, quality=quality, psnr=psnr(rgb, decoded), fits=fits)


def finite(value: float) -> float | None:
    """JSON has no infinity: an exact reconstruction's PSNR is reported as null."""
    return None if value == float("inf") else round(float(value), 3)
