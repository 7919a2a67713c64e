"""Rate-distortion curves and Bjontegaard deltas (BD-rate, BD-PSNR).

    curve = Curve("ours", bpp=[...], psnr=[...])
    bd_rate(anchor, test)    # % rate change of test vs anchor at equal PSNR; -20.0 = 20 % fewer bits
    psnr_at_rate(curve, 0.4) # best PSNR the curve reaches with at most 0.4 bpp (None below its range)

BD-rate (Bjontegaard, VCEG-M33): fit log(rate) as a function of PSNR for each curve, integrate both
over the PSNR interval where they overlap, and turn the mean log-rate difference into a percentage,
``100 * (exp(mean(log R_test - log R_anchor)) - 1)``. ``method="pchip"`` interpolates piecewise
cubic (monotone, as in the JVET common-test-conditions spreadsheet); ``method="cubic"`` is
Bjontegaard's original single cubic polynomial (degree lowered when a curve has under 4 points).
Curves that do not overlap in PSNR have no BD-rate (``None``).

BD-rate assumes PSNR keeps rising with rate. A denoiser's curve flattens (past some rate only the
noise is left to spend bits on), so denoising is compared point by point instead: at each rate
the anchor spends, ``psnr_at_rate`` gives the best PSNR the test curve reaches with no more bits
(its upper envelope, interpolated linearly in log-rate).

``load_curves`` reads CompressAI-layout result files ({"name", "results": {"bpp", "psnr-rgb", ...}}).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Reference curves drawn by default from a folder of CompressAI results: MSE-trained models on
# CPU (their _cuda twins have the same RD points) and the classical codecs people compare with.
DEFAULT_REFERENCE_PATTERNS = (
    "compressai-*_mse_cpu.json", "bpg*.json", "vtm.json", "av1.json",
)


@dataclass
class Curve:
    name: str
    bpp: list[float]
    psnr: list[float]
    ms_ssim: list[float] = field(default_factory=list)
    description: str = ""

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """(bpp, psnr) sorted by PSNR, without non-finite or non-positive-rate points."""
        r = np.asarray(self.bpp, dtype=np.float64)
        d = np.asarray(self.psnr, dtype=np.float64)
        ok = np.isfinite(r) & np.isfinite(d) & (r > 0)
        r, d = r[ok], d[ok]
        order = np.argsort(d, kind="stable")
        return r[order], d[order]


def bd_rate(anchor: Curve, test: Curve, method: str = "pchip") -> float | None:
    """Average rate difference of ``test`` against ``anchor`` at equal PSNR, in percent."""
    ra, da = anchor.points()
    rt, dt = test.points()
    lo, hi = max(da.min(initial=np.inf), dt.min(initial=np.inf)), min(da.max(initial=-np.inf), dt.max(initial=-np.inf))
    if len(da) < 2 or len(dt) < 2 or not hi > lo:
        return None
    ia = _integral(da, np.log(ra), lo, hi, method)
    it = _integral(dt, np.log(rt), lo, hi, method)
    return float(100.0 * (math.exp((it - ia) / (hi - lo)) - 1.0))


def bd_psnr(anchor: Curve, test: Curve, method: str = "pchip") -> float | None:
    """Average PSNR difference (dB) of ``test`` against ``anchor`` at equal log-rate."""
    ra, da = anchor.points()
    rt, dt = test.points()
    la, lt = np.log(ra), np.log(rt)
    if len(la) < 2 or len(lt) < 2:
        return None
    oa, ot = np.argsort(la), np.argsort(lt)
    lo, hi = max(la.min(), lt.min()), min(la.max(), lt.max())
    if not hi > lo:
        return None
    ia = _integral(la[oa], da[oa], lo, hi, method)
    it = _integral(lt[ot], dt[ot], lo, hi, method)
    return float((it - ia) / (hi - lo))


def psnr_at_rate(curve: Curve, bpp: float) -> float | None:
    """Best PSNR of ``curve`` at a rate of at most ``bpp``: the running maximum of its points sorted
    by rate, interpolated linearly in log(bpp); None below its lowest rate."""
    r, d = curve.points()
    order = np.argsort(r, kind="stable")
    r, d = r[order], np.maximum.accumulate(d[order])
    if len(r) == 0 or not bpp >= r[0]:
        return None
    if bpp >= r[-1]:
        return float(d[-1])
    k = int(np.searchsorted(r, bpp, side="right"))  # r[k-1] <= bpp < r[k]
    t = (math.log(bpp) - math.log(r[k - 1])) / (math.log(r[k]) - math.log(r[k - 1]))
    return float(d[k - 1] + t * (d[k] - d[k - 1]))


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Integral over [lo, hi] of y(x) interpolated through the points (x ascending)."""
    x, keep = np.unique(x, return_index=True)  # equal PSNRs (e.g. saturated settings) would break pchip
    y = y[keep]
    if method == "pchip":
        from scipy.interpolate import PchipInterpolator

        if len(x) < 2:
            raise ValueError("need two distinct points")
        return float(PchipInterpolator(x, y).integrate(lo, hi))
    if method == "cubic":
        poly = np.polyint(np.polyfit(x, y, min(3, len(x) - 1)))
        return float(np.polyval(poly, hi) - np.polyval(poly, lo))
    raise ValueError(f"method must be 'pchip' or 'cubic', got {method!r}")


def curve_from_results(entry: dict) -> Curve:
    """A CompressAI-layout entry ({"name", "description", "results": {...}}) -> Curve."""
    r = entry.get("results", {})
    return Curve(
        name=str(entry.get("name", "?")),
        bpp=[float(v) for v in r.get("bpp", [])],
        psnr=[float(v) if v is not None else math.nan for v in r.get("psnr-rgb", [])],
        ms_ssim=[float(v) if v is not None else math.nan for v in r.get("ms-ssim-rgb", [])],
        description=str(entry.get("description", "")),
    )


def load_curves(folder: Path, patterns: tuple[str, ...] = DEFAULT_REFERENCE_PATTERNS) -> list[Curve]:
    """PSNR curves from the CompressAI result files in ``folder`` whose names match ``patterns``
    (every result file there when none matches). Files without bpp + psnr-rgb are skipped."""
    files = sorted(Path(folder).glob("*.json"))
    chosen = [f for f in files if any(fnmatch.fnmatch(f.name, p) for p in patterns)] or files
    curves = []
    for f in chosen:
        try:
            entry = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(entry, dict):
            continue
        c = curve_from_results(entry)
        if len(c.bpp) >= 2 and len(c.bpp) == len(c.psnr):
            if any(other.name == c.name for other in curves):
                c.name = f"{c.name} ({f.stem})"
            curves.append(c)
    return curves
