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
full entropy coding). A quick search of a codec whose model carries a ``RateCurve`` (its typical size
per quality) starts where that curve puts the budget, moved by how far each coded size fell from it
(``guided_fit``), which needs fewer codings than the search from both ends of [0, 1]. Where the
coder can also predict its sizes (``Codec``'s: the entropy model's float32 likelihoods, cheaper
than coding), that search runs on the predictions and only its answer is coded
(``estimated_fit``).

A budget may be searched over several *segments*, (code, q_min, q_max) in order of preference:
clean first (shared/clean_first.py) prefers the upload's streams above its quality limit and falls
back to the clean reconstruction's. Reduced sizes for budgets the full size cannot meet well are
shared/resolution.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from shared.errors import BudgetTooSmall, QualityOutOfRange

if TYPE_CHECKING:
    from shared.codec import Encoded

    Coder = Callable[[float], Encoded]

RATE_SEARCH_STEPS = 12
RATE_SEARCH_SLACK = 1
RATE_SEARCH_TRUNCATION = 0.2  # ITP's kappa_1, with kappa_2 = 2
QUICK_TOLERANCE = 0.05  # search="quick": any stream from 95 % of the budget up to it will do
GUIDED_PROBES = 4  # codings placed by the rate curve before the search goes on from a bracket
ESTIMATE_TRIES = 2  # real codings placed by the estimates before the guided search codes for real
ESTIMATE_OVERHEAD = 1.02  # the first guess of a real stream's size over the entropy model's estimate
CURVE_QUALITIES = tuple(np.round(np.linspace(0.0, 1.0, 11), 2).tolist())


@dataclass(frozen=True)
class RateCurve:
    """A model's typical coded size per quality: ``bpp[i]`` bits per pixel at ``qualities[i]``, the
    geometric mean over a few photos (``measure``). Exported models carry it as their ``rate_curve``
    metadata. A picture's sizes differ from the curve by a factor that changes slowly with
    quality, so one coded size places the picture on it. Between the measured qualities log bpp is
    interpolated linearly."""

    qualities: tuple[float, ...]
    bpp: tuple[float, ...]

    def __post_init__(self) -> None:
        q, b = np.asarray(self.qualities, float), np.asarray(self.bpp, float)
        if len(q) < 2 or len(q) != len(b) or np.any(np.diff(q) <= 0) or np.any(b <= 0) or np.any(np.diff(b) <= 0):
            raise ValueError("a rate curve needs two or more ascending qualities with ascending positive sizes")

    @classmethod
    def from_meta(cls, value: dict | None) -> RateCurve | None:
        """The curve of a model file's ``rate_curve`` metadata; None for a file without one."""
        if not value:
            return None
        return cls(tuple(value["qualities"]), tuple(value["bpp"]))

    def to_meta(self) -> dict:
        return {"qualities": list(self.qualities), "bpp": list(self.bpp)}

    @classmethod
    def measure(cls, sizes: Callable[[float], list[float]],
                qualities: tuple[float, ...] = CURVE_QUALITIES) -> RateCurve | None:
        """``sizes(q)``: the bits per pixel of each sample picture coded at ``q``. None when the mean
        sizes do not grow with quality (an untrained model's): no curve to place codings by."""
        bpp = tuple(float(np.exp(np.mean(np.log(sizes(q))))) for q in qualities)
        return cls(tuple(qualities), bpp) if all(b > a for a, b in zip(bpp, bpp[1:])) else None

    def log_bpp(self, quality):
        """log bpp at ``quality`` (a number, or an array of them)."""
        return np.interp(quality, self.qualities, np.log(self.bpp))

    def quality_for(self, log_bpp: float) -> float:
        """The quality at which the curve reaches ``log_bpp`` (its end qualities beyond them)."""
        return float(np.interp(log_bpp, np.log(self.bpp), self.qualities))


def fit_budget(shape: tuple, segments: list[tuple[Coder, float, float]], max_bytes: int,
               tolerance: float = 0.0, curve: RateCurve | None = None, pixels: int = 0) -> Encoded:
    """The best stream whose *real* container size is <= max_bytes. ``segments``: (code, q_min,
    q_max) in order of preference; the first segment whose q_min fits is searched for its highest
    quality that fits (``highest_fitting``; ``tolerance``: the module docstring). ``shape`` (of the
    picture) names the image in errors. With ``tolerance`` > 0, a ``curve`` and a single segment,
    ``estimated_fit`` (a coder with ``predict``) or ``guided_fit`` searches it (``pixels``: how many
    the segment codes)."""
    if max_bytes <= 0:
        raise QualityOutOfRange(f"max_bytes must be positive, got {max_bytes}")
    if curve is not None and tolerance > 0 and len(segments) == 1:
        code, lo, hi = segments[0]
        if hasattr(code, "predict"):
            return estimated_fit(shape, code, lo, hi, max_bytes, tolerance, curve, pixels)
        return guided_fit(shape, code, lo, hi, max_bytes, tolerance, curve, pixels)
    smallest = None
    for code, lo, hi in segments:
        lowest = code(lo)
        if lowest.nbytes <= max_bytes:
            break
        smallest = lowest if smallest is None or lowest.nbytes < smallest.nbytes else smallest
    else:
        raise _too_small(shape, smallest.nbytes)
    highest = code(hi)
    if highest.nbytes <= max_bytes:
        return highest
    return highest_fitting(code, (lo, lowest), (hi, highest), max_bytes, tolerance)


def _too_small(shape: tuple, min_bytes: int) -> BudgetTooSmall:
    return BudgetTooSmall(
        f"even the lowest rate needs {min_bytes} bytes for this {shape[1]}x{shape[0]} "
        f"image; raise max_bytes to at least {min_bytes} or downscale the image",
        min_bytes=min_bytes,
    )


def guided_fit(shape: tuple, code: Coder, lo: float, hi: float, max_bytes: int, tolerance: float,
               curve: RateCurve, pixels: int) -> Encoded:
    """A stream within ``tolerance`` of ``max_bytes`` (as ``highest_fitting`` with it), the qualities
    to code placed by ``curve``. Each coding aims at the middle of the tolerated sizes: where the
    curve, shifted to the picture's coded sizes so far, reaches it (one size shifts it by a constant;
    two or more tilt the shift linearly between the two nearest the budget, so the picture's own
    slope corrects the curve's). Up to GUIDED_PROBES codings, stopping at one that fits within the
    tolerance (or at ``hi``; at ``lo`` over the budget: ``BudgetTooSmall``); otherwise the search
    goes on from the bracket they leave (its missing end coded), as the unguided one does."""
    aim = math.log(max_bytes * (1.0 - tolerance / 2))
    good_enough = max_bytes * (1.0 - tolerance)
    fits: tuple[float, Encoded] | None = None
    over: tuple[float, Encoded] | None = None
    shifts: dict[float, float] = {}  # coded quality -> log bytes minus the curve's log bpp there
    for _ in range(GUIDED_PROBES):
        q = _aimed_quality(curve, shifts, aim, math.log(max(pixels, 1) / 8), fits, over, lo, hi)
        if q is None:
            break
        enc = code(q)
        if enc.nbytes <= max_bytes:
            if enc.nbytes >= good_enough or q >= hi:
                return enc
            fits = (q, enc)
        else:
            if q <= lo:
                raise _too_small(shape, enc.nbytes)
            over = (q, enc)
        shifts[q] = math.log(enc.nbytes) - curve.log_bpp(q)
    if over is None:
        over = (hi, code(hi))
        if over[1].nbytes <= max_bytes:
            return over[1]
    if fits is None:
        fits = (lo, code(lo))
        if fits[1].nbytes > max_bytes:
            raise _too_small(shape, fits[1].nbytes)
    return highest_fitting(code, fits, over, max_bytes, tolerance)


@dataclass(frozen=True)
class _Estimate:
    quality: float
    nbytes: int


def estimated_fit(shape: tuple, code: Coder, lo: float, hi: float, max_bytes: int, tolerance: float,
                  curve: RateCurve, pixels: int) -> Encoded:
    """``guided_fit`` run on the entropy model's estimates of the sizes (``code.predict(q)``: bytes,
    a fraction of a coding's time), coding for real only the quality each such search ends on.
    The estimates run under the real streams (the coder's and the container's overhead): they
    are scaled by ESTIMATE_OVERHEAD, then by what the last real coding showed.
    Up to ESTIMATE_TRIES real codings; if none fits within the tolerance, the search goes on
    from the bracket they leave (``highest_fitting``), or, with none, codes for real
    (``guided_fit``)."""
    good_enough = max_bytes * (1.0 - tolerance)
    predicted: dict[float, float] = {}
    scale = ESTIMATE_OVERHEAD

    def predict(q: float) -> float:
        if q not in predicted:
            predicted[q] = max(code.predict(q), 1.0)
        return predicted[q]

    def estimate(q: float) -> _Estimate:
        return _Estimate(q, math.ceil(scale * predict(q)))

    fits: tuple[float, Encoded] | None = None
    over: tuple[float, Encoded] | None = None
    for _ in range(ESTIMATE_TRIES):
        try:
            q = guided_fit(shape, estimate, lo, hi, max_bytes, tolerance, curve, pixels).quality
        except BudgetTooSmall:
            q = lo
        enc = code(q)
        if enc.nbytes <= max_bytes:
            if enc.nbytes >= good_enough or q >= hi:
                return enc
            fits = max(fits or (q, enc), (q, enc), key=lambda f: f[0])
        else:
            if q <= lo:
                raise _too_small(shape, enc.nbytes)
            over = min(over or (q, enc), (q, enc), key=lambda o: o[0])
        scale = enc.nbytes / predict(q)
    if fits is not None and over is not None and fits[0] < over[0]:
        return highest_fitting(code, fits, over, max_bytes, tolerance)
    return guided_fit(shape, code, lo, hi, max_bytes, tolerance, curve, pixels)


def _aimed_quality(curve: RateCurve, shifts: dict[float, float], aim: float, start_shift: float,
                   fits: tuple | None, over: tuple | None, lo: float, hi: float) -> float | None:
    """``guided_fit``'s next quality: the highest on a fine grid of [lo, hi] where the shifted curve
    stays within ``aim`` (log bytes), kept strictly inside the bracket coded so far; None when the
    grid has no quality left there."""
    grid = np.linspace(lo, hi, 2**RATE_SEARCH_STEPS + 1)
    if fits is not None:
        grid = grid[grid > fits[0]]
    if over is not None:
        grid = grid[grid < over[0]]
    if grid.size == 0:
        return None
    if not shifts:
        shift = np.full(grid.shape, start_shift)
    elif len(shifts) == 1:
        shift = np.full(grid.shape, next(iter(shifts.values())))
    else:
        # The two coded qualities around the budget when there are both, else the two nearest it.
        ends = [e[0] for e in (fits, over) if e is not None]
        if len(ends) < 2:
            ends = sorted(shifts, key=lambda q: abs(shifts[q] + curve.log_bpp(q) - aim))[:2]
        (q0, s0), (q1, s1) = sorted((q, shifts[q]) for q in ends)
        shift = s0 + (s1 - s0) * (grid - q0) / (q1 - q0)
    predicted = curve.log_bpp(grid) + shift
    within = np.nonzero(predicted <= aim)[0]
    return float(grid[within[-1]] if within.size else grid[0])


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
