"""Reduced sizes for byte budgets (format version 3 streams): ``Codec.encode(max_bytes=N)`` below
the full size's lowest rate, and ``Codec.encode(..., scale=s)``.

A learned codec's lowest rate has a floor, quality 0 at the full size (a few hundredths of a bit
per pixel), and near it the hyper-latent and the entropy model's overheads weigh most.
Pillow-downscaling the picture, coding that and resizing the decode back up spends the same bytes
better there, and goes lower. So a byte budget first fits the full size (shared/rate_control.py);
when that fails, or fits only below ``RESIZE_BELOW_QUALITY``, ``fit_any_size`` also fits each of
``RESIZE_SCALES`` (the same rate search on the Lanczos-resized picture) and the codec sends
whichever candidate decodes closest, in squared error, to the reference: the upload, or for a
denoising codec that cleans this image its clean reconstruction (shared/clean_first.py).

A reduced size's stream is format version 3 (shared/bitstream.py): version 2 plus the coded size;
the decoder synthesises that size and resizes to the declared one with ``resize_rgb``, Pillow's
Lanczos filter on 8-bit RGB (integer arithmetic: the same pixels everywhere). Qualities are never
resized: a quality means the full size. On Kodak, budgets below what almost any image meets at the
full size were met by all of them, and budgets just above it gained PSNR on the images the full
size could meet, losing none (figures in models/TRAINING.md, "Byte budgets below the lowest rate").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from shared.errors import BudgetTooSmall
from shared.rate_control import RateCurve, fit_budget

if TYPE_CHECKING:
    from shared.codec import Encoded

# The reduced sizes a byte budget may be coded at, and the full size's fitted quality below which
# they are tried.
RESIZE_SCALES = (0.75, 0.5, 0.375, 0.25)
RESIZE_BELOW_QUALITY = 0.25


def fit_any_size(shape: tuple, segments: list, segments_at: Callable[[tuple[int, int]], list],
                 closeness: Callable[[Encoded], float], max_bytes: int, below_quality: float | None = None,
                 tolerance: float = 0.0, curve: RateCurve | None = None, first_fit: bool = False) -> Encoded:
    """The full size's best fit (``segments``, as ``fit_budget`` takes them, with its
    ``tolerance`` and ``curve``), or a reduced size's (``segments_at(coded size)``) when the budget
    is too small for the full size or holds it only below ``below_quality`` (None:
    ``RESIZE_BELOW_QUALITY``; 0: only when it is too small): whichever candidate scores highest on
    ``closeness`` (the codec: its decode's PSNR against the reference), the full size first among
    equals. ``first_fit``: the first candidate that fits, the largest size first, without
    decoding any (a quick search's)."""
    candidates: list[Encoded] = []
    too_small: list[BudgetTooSmall] = []
    try:
        candidates.append(fit_budget(shape, segments, max_bytes, tolerance, curve, shape[0] * shape[1]))
        if candidates[0].quality >= (RESIZE_BELOW_QUALITY if below_quality is None else below_quality):
            return candidates[0]
    except BudgetTooSmall as exc:
        too_small.append(exc)
    for s in RESIZE_SCALES:
        coded = coded_size(shape, s)
        if coded is None:
            continue
        try:
            candidates.append(fit_budget(shape, segments_at(coded), max_bytes, tolerance, curve, coded[0] * coded[1]))
        except BudgetTooSmall as exc:
            too_small.append(exc)
            continue
        if first_fit:
            return candidates[0]
    if not candidates:
        smallest = min(too_small, key=lambda exc: exc.min_bytes)
        if len(too_small) == 1:  # no reduced size differs from the full one (a few pixels wide)
            raise smallest
        raise BudgetTooSmall(
            f"even the lowest rate, coded at {min(RESIZE_SCALES):g} of the size, needs {smallest.min_bytes} "
            f"bytes for this {shape[1]}x{shape[0]} image; raise max_bytes to at least "
            f"{smallest.min_bytes}", min_bytes=smallest.min_bytes,
        )
    return max(candidates, key=closeness)


def coded_size(shape: tuple, scale: float) -> tuple[int, int] | None:
    """The (height, width) a picture of ``shape`` is coded at for ``scale``; None when that is its own."""
    H, W = shape[:2]
    size = (max(1, round(H * scale)), max(1, round(W * scale)))
    return None if size == (H, W) else size


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8 with Pillow's Lanczos filter (8-bit integer
    arithmetic: the same pixels on every machine, which the decoder of a version 3 stream needs)."""
    from PIL import Image

    return np.array(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.LANCZOS))
