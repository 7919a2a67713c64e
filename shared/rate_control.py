"""Rate control: the best stream within a byte budget, found by searching quality on real coded sizes.

    enc = fit_budget(rgb.shape, [(code, 0.0, 1.0)], max_bytes)   # what ``Codec.encode(max_bytes=N)`` runs

``code`` maps a quality in [0, 1] to an ``Encoded`` whose size grows with it (the codec's coder for
one picture). The search is a root search on quality that ends, like 12 halvings of [0, 1] would,
with the highest fitting quality bracketed to 1/4096, far below the step at which the coded size
changes by more than a few bytes. It is ITP (interpolate, truncate, project: Oliveira and
Takahashi, 2020) on log bytes, which is nearly straight in quality, so it usually codes about half
as many qualities as bisection, and never more than 12 + ``RATE_SEARCH_SLACK``.

``tolerance`` > 0 trades the last bytes for time: the search stops at the first stream that fits
within that fraction of the budget (``QUICK_TOLERANCE`` for ``Codec.encode(search="quick")``, which
the sender's quality=auto uses: its budget is an estimate of the link anyway, and every probe is a
full entropy coding).

A budget may be searched over several *segments*, (code, q_min, q_max) in order of preference:
clean first (shared/clean_first.py) prefers the upload's streams above its quality limit and falls
back to the clean reconstruction's. Reduced sizes for budgets the full size cannot meet well are
shared/resolution.py's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from shared.errors import BudgetTooSmall, QualityOutOfRange

if TYPE_CHECKING:
    from shared.codec import Encoded

    Coder = Callable[[float], Encoded]

RATE_SEARCH_STEPS = 12
RATE_SEARCH_SLACK = 1
RATE_SEARCH_TRUNCATION = 0.2  # ITP's kappa_1, with kappa_2 = 2
QUICK_TOLERANCE = 0.05  # search="quick": any stream from 95 % of the budget up to it will do


def fit_budget(shape: tuple, segments: list[tuple[Coder, float, float]], max_bytes: int,
               tolerance: float = 0.0) -> Encoded:
    """The best stream whose *real* container size is <= max_bytes. ``segments``: (code, q_min,
    q_max) in order of preference; the first segment whose q_min fits is searched for its highest
    quality that fits (``highest_fitting``; ``tolerance``: the module docstring). ``shape`` (of the
    picture) names the image in errors."""
    if max_bytes <= 0:
        raise QualityOutOfRange(f"max_bytes must be positive, got {max_bytes}")
    smallest = None
    for code, lo, hi in segments:
        lowest = code(lo)
        if lowest.nbytes <= max_bytes:
            break
        smallest = lowest if smallest is None or lowest.nbytes < smallest.nbytes else smallest
    else:
        raise BudgetTooSmall(
            f"even the lowest rate needs {smallest.nbytes} bytes for this {shape[1]}x{shape[0]} "
            f"image; raise max_bytes to at least {smallest.nbytes} or downscale the image",
            min_bytes=smallest.nbytes,
        )
    highest = code(hi)
    if highest.nbytes <= max_bytes:
        return highest
    return highest_fitting(code, (lo, lowest), (hi, highest), max_bytes, tolerance)


def highest_fitting(code: Coder, fits: tuple[float, Encoded], over: tuple[float, Encoded], max_bytes: int,
                    tolerance: float = 0.0) -> Encoded:
    """The stream of the highest quality found to fit, between ``fits`` (a quality and its stream,
    within ``max_bytes``) and ``over`` (one over it). Qualities are probed on the grid that
    RATE_SEARCH_STEPS halvings of that interval reach, until the two are neighbours there, so where
    size grows with quality the answer is the bisection's. Each probe is ITP's: the secant of log
    bytes, nudged toward the middle (truncation) and kept within a shrinking distance of it
    (projection), then rounded onto the grid. Where sizes dip as quality rises (rare, a few bytes)
    the stream found may differ, and it still fits. With ``tolerance`` > 0 the first stream that
    fits within that fraction of ``max_bytes`` ends the search."""
    (q_fits, best), (q_over, above) = fits, over
    good_enough = max_bytes * (1.0 - tolerance) if tolerance > 0 else math.inf
    cells = 2**RATE_SEARCH_STEPS
    a, b = 0, cells  # the bracket, in grid cells from q_fits: a fits, b does not
    target = math.log(max_bytes + 0.5)
    ya, yb = math.log(best.nbytes) - target, math.log(above.nbytes) - target  # ya < 0 < yb
    most = RATE_SEARCH_STEPS + RATE_SEARCH_SLACK
    j = 0
    while b - a > 1 and best.nbytes < good_enough:
        middle = (a + b) / 2
        secant = (yb * a - ya * b) / (yb - ya)
        toward = 1.0 if middle >= secant else -1.0
        nudge = RATE_SEARCH_TRUNCATION * (b - a) ** 2 / cells  # kappa_1 * (width in quality)^2, in cells
        x = secant + toward * nudge if nudge <= abs(middle - secant) else middle
        radius = max(2.0 ** (most - j - 1) - (b - a) / 2, 0.0)
        if abs(x - middle) > radius:
            x = middle - toward * radius
        k = min(max(round(x), a + 1), b - 1)
        enc = code(q_fits + (q_over - q_fits) * k / cells)
        y = math.log(enc.nbytes) - target
        if enc.nbytes <= max_bytes:
            best, a, ya = enc, k, y
        else:
            b, yb = k, y
        j += 1
    return best
