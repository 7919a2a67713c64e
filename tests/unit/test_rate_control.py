"""Rate control with the tiny model: ``encode(max_bytes=N)`` fits N, spends it, and is monotone;
impossible requests are RateErrors that say what would work."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from shared.codec import check_quality
from shared.errors import BudgetTooSmall, QualityOutOfRange
from shared.rate_control import (ESTIMATE_TRIES, GUIDED_PROBES, QUICK_TOLERANCE, RATE_SEARCH_SLACK, RATE_SEARCH_STEPS,
                                  RateCurve, fit_budget, highest_fitting)

QUALITY_STEP = 2.0**-RATE_SEARCH_STEPS  # the resolution of the search


@pytest.fixture(scope="module")
def rate_range(tiny_codec, kodim_crop) -> tuple[int, int]:
    """(bytes at quality 0, bytes at quality 1) for the 128x192 crop."""
    lowest = tiny_codec.encode(kodim_crop, quality=0.0).nbytes
    highest = tiny_codec.encode(kodim_crop, quality=1.0).nbytes
    assert lowest < highest
    return lowest, highest


@pytest.fixture(scope="module")
def fitted(tiny_codec, kodim_crop, rate_range) -> list[tuple[int, object]]:
    """(budget, Encoded) for five budgets from the lowest to the highest rate."""
    budgets = [int(n) for n in np.linspace(*rate_range, 5)]
    return [(n, tiny_codec.encode(kodim_crop, max_bytes=n)) for n in budgets]


def test_every_budget_is_met(fitted):
    assert [enc.nbytes <= budget for budget, enc in fitted] == [True] * len(fitted)
    assert all(enc.nbytes == len(enc.data) for _, enc in fitted)


def test_a_larger_budget_never_gives_a_lower_quality(fitted):
    qualities = [enc.quality for _, enc in fitted]

    assert qualities == sorted(qualities)
    assert qualities[0] < qualities[-1]


def test_the_budget_is_spent_to_the_search_resolution(tiny_codec, kodim_crop, fitted):
    # One quality step above the chosen one would no longer fit: nothing is left on the table.
    for budget, enc in fitted[:-1]:
        above = tiny_codec.encode(kodim_crop, quality=min(1.0, enc.quality + QUALITY_STEP))
        assert above.nbytes > budget, f"budget {budget}: quality {enc.quality} left room"


def _bisection(code, max_bytes: int):
    """The search rate control used before ITP: 12 halvings of [0, 1], keeping the best fit."""
    lo, hi, best = 0.0, 1.0, code(0.0)
    for _ in range(RATE_SEARCH_STEPS):
        mid = (lo + hi) / 2
        enc = code(mid)
        if enc.nbytes <= max_bytes:
            best, lo = enc, mid
        else:
            hi = mid
    return best


@pytest.mark.slow
def test_the_codec_finds_the_bisection_stream(tiny_codec, kodim_crop, fitted):
    for budget, enc in fitted[:-1]:
        reference = _bisection(lambda q: tiny_codec.encode(kodim_crop, quality=q), budget)
        assert (enc.quality, enc.data) == (reference.quality, reference.data)


def _search(size, max_bytes: int, tolerance: float = 0.0) -> tuple[float, int]:
    """(the quality highest_fitting finds for a ``size(quality)`` curve, how many it coded)."""
    calls = []

    def code(q: float):
        calls.append(q)
        return SimpleNamespace(nbytes=size(q), quality=q)

    found = highest_fitting(code, (0.0, code(0.0)), (1.0, code(1.0)), max_bytes, tolerance)
    return found.quality, len(calls) - 2


SIZE_CURVES = {  # quality -> bytes: a learned codec's near-exponential curve, and harder shapes
    "exponential": lambda q: int(900 * math.exp(4.2 * q)),
    "steps of 1/20": lambda q: int(900 * math.exp(4.2 * round(q * 20) / 20)),
    "one jump": lambda q: 900 + int(q * 40) + (50_000 if q > 0.61803 else 0),
    "flat then steep": lambda q: int(900 * (1 + 40 * q**8)),
}


@pytest.mark.parametrize("curve", SIZE_CURVES, ids=list(SIZE_CURVES))
def test_the_search_lands_where_bisection_does_within_one_extra_coding(curve):
    size = SIZE_CURVES[curve]
    budgets = np.linspace(size(0.0), size(1.0) - 1, 60).astype(int)
    found = [_search(size, int(n)) for n in budgets]
    reference = [_bisection(lambda q: SimpleNamespace(nbytes=size(q), quality=q), int(n)).quality for n in budgets]

    assert [q for q, _ in found] == reference
    assert max(calls for _, calls in found) <= RATE_SEARCH_STEPS + RATE_SEARCH_SLACK


def test_the_search_codes_about_half_as_often_as_bisection_on_a_codec_curve():
    size = SIZE_CURVES["exponential"]
    calls = [_search(size, int(n))[1] for n in np.linspace(size(0.0), size(1.0) - 1, 60)]

    assert np.mean(calls) <= RATE_SEARCH_STEPS / 2
    assert max(calls) <= 7


@pytest.mark.parametrize("curve", SIZE_CURVES, ids=list(SIZE_CURVES))
def test_a_quick_search_stops_within_its_tolerance_in_fewer_codings(curve):
    size = SIZE_CURVES[curve]
    budgets = np.linspace(size(0.0), size(1.0) - 1, 60).astype(int)
    exact = [_search(size, int(n)) for n in budgets]
    quick = [_search(size, int(n), QUICK_TOLERANCE) for n in budgets]

    for n, (q_exact, _), (q_quick, _) in zip(budgets, exact, quick):
        assert size(q_quick) <= n  # it fits
        assert size(q_quick) >= (1 - QUICK_TOLERANCE) * n or q_quick == q_exact  # near the budget, or the answer
    assert sum(c for _, c in quick) < sum(c for _, c in exact)
    assert all(cq <= ce for (_, cq), (_, ce) in zip(quick, exact))


def test_a_quick_encode_fits_within_the_tolerance(tiny_codec, kodim_crop, fitted):
    for budget, exact in fitted[1:-1]:
        quick = tiny_codec.encode(kodim_crop, max_bytes=budget, search="quick")
        assert quick.nbytes <= budget and quick.quality <= exact.quality
        assert quick.nbytes >= (1 - QUICK_TOLERANCE) * budget or quick.data == exact.data
    with pytest.raises(ValueError, match="search must be one of exact, quick"):
        tiny_codec.encode(kodim_crop, max_bytes=fitted[1][0], search="fast")


def test_sizes_that_dip_still_give_a_stream_that_fits():
    def size(q: float) -> int:  # grows overall, with dips of up to 30 bytes
        return int(2000 * math.exp(3 * q)) - (30 if int(q * 512) % 2 else 0)

    for budget in range(2100, 40_000, 997):
        q, calls = _search(size, budget)
        assert size(q) <= budget
        assert size(min(q + 2 * QUALITY_STEP, 1.0)) > budget - 30
        assert calls <= RATE_SEARCH_STEPS + RATE_SEARCH_SLACK


def test_the_highest_rate_budget_gives_quality_1(tiny_codec, kodim_crop, fitted, rate_range):
    budget, enc = fitted[-1]

    assert budget == rate_range[1]
    assert enc.quality == 1.0
    assert enc.data == tiny_codec.encode(kodim_crop, quality=1.0).data


def test_the_lowest_rate_budget_fits_exactly(fitted, rate_range):
    budget, enc = fitted[0]

    assert budget == rate_range[0]
    assert enc.nbytes == rate_range[0]


@pytest.mark.parametrize("shortfall", [1, 50])
def test_a_budget_below_the_lowest_rate_at_a_fixed_size_says_what_would_fit(tiny_codec, kodim_crop, rate_range,
                                                                           shortfall):
    lowest = rate_range[0]  # (reduced sizes, which go lower, are test_resolution.py's)

    with pytest.raises(BudgetTooSmall) as info:
        tiny_codec.encode(kodim_crop, max_bytes=lowest - shortfall, scale=1.0)

    assert info.value.min_bytes == lowest
    assert f"at least {lowest}" in str(info.value)
    assert info.value.status == 422


@pytest.mark.parametrize("max_bytes", [0, -1])
def test_a_budget_that_is_not_positive_is_out_of_range(tiny_codec, sample_rgb, max_bytes):
    with pytest.raises(QualityOutOfRange, match="positive"):
        tiny_codec.encode(sample_rgb, max_bytes=max_bytes)


@pytest.mark.parametrize("quality", [-0.01, 1.01, -math.inf, math.inf, math.nan, "high", None],
                         ids=["below-0", "above-1", "-inf", "inf", "nan", "text", "none"])
def test_quality_outside_0_1_is_out_of_range(quality):
    with pytest.raises(QualityOutOfRange) as info:
        check_quality(quality)
    assert info.value.status == 422


@pytest.mark.parametrize("quality", [-0.01, 1.01, math.nan])
def test_encode_refuses_quality_outside_0_1(tiny_codec, sample_rgb, quality):
    with pytest.raises(QualityOutOfRange):
        tiny_codec.encode(sample_rgb, quality=quality)
    with pytest.raises(QualityOutOfRange):
        tiny_codec.encode_batch([sample_rgb], quality=quality)


@pytest.mark.parametrize("quality", [0, 0.0, 1, 1.0, np.float32(0.5)])
def test_quality_bounds_are_inclusive(quality):
    assert check_quality(quality) == float(quality)
    assert type(check_quality(quality)) is float


def test_both_quality_and_budget_is_out_of_range(tiny_codec, sample_rgb):
    with pytest.raises(QualityOutOfRange, match="exactly one"):
        tiny_codec.encode(sample_rgb, quality=0.5, max_bytes=10_000)


def test_neither_quality_nor_budget_is_out_of_range(tiny_codec, sample_rgb):
    with pytest.raises(QualityOutOfRange, match="exactly one"):
        tiny_codec.encode(sample_rgb)


# ---- the guided quick search (a model's rate curve places the codings) --------------------------
PIXELS = 100_000
CURVE = RateCurve.measure(lambda q: [900 * math.exp(4.2 * q) * 8 / PIXELS])  # the exponential curve, in bpp


def _guided(size, max_bytes: int) -> tuple[object, int]:
    """(the stream a guided quick search returns for a ``size(quality)`` picture, how many it coded)."""
    calls = []

    def code(q: float):
        calls.append(q)
        return SimpleNamespace(nbytes=size(q), quality=q)

    found = fit_budget((300, 333, 3), [(code, 0.0, 1.0)], max_bytes, QUICK_TOLERANCE, CURVE, PIXELS)
    return found, len(calls)


PICTURES = {  # pictures off the curve: larger by a factor, steeper, flatter, with a kink
    "twice as large": lambda q: int(1800 * math.exp(4.2 * q)),
    "a third as large": lambda q: int(300 * math.exp(4.2 * q)),
    "steeper": lambda q: int(500 * math.exp(5.5 * q)),
    "flatter": lambda q: int(2000 * math.exp(2.5 * q)),
    "kinked": lambda q: int(900 * math.exp(4.2 * q + (1.5 * (q - 0.5) if q > 0.5 else 0.0))),
}


@pytest.mark.parametrize("picture", PICTURES, ids=list(PICTURES))
def test_a_guided_search_fits_within_the_tolerance_in_a_few_codings(picture):
    size = PICTURES[picture]
    budgets = np.geomspace(size(0.0) + 1, size(1.0) - 1, 40).astype(int)
    runs = [_guided(size, int(n)) for n in budgets]
    unguided = [_search(size, int(n), QUICK_TOLERANCE)[1] + 2 for n in budgets]  # + its two ends

    for n, (found, _) in zip(budgets, runs):
        assert (1 - QUICK_TOLERANCE) * n <= found.nbytes <= n
    calls = [c for _, c in runs]
    assert np.mean(calls) <= 3.5 and max(calls) <= GUIDED_PROBES + RATE_SEARCH_STEPS + RATE_SEARCH_SLACK
    assert np.mean(calls) < np.mean(unguided)


class _Estimated:
    """A picture whose coder also predicts its sizes, ``bias`` times too small (and, with
    ``wobble``, off by up to that fraction more, varying with quality)."""

    def __init__(self, size, bias: float, wobble: float = 0.0) -> None:
        self.size, self.bias, self.wobble, self.coded = size, bias, wobble, []

    def __call__(self, q: float):
        self.coded.append(q)
        return SimpleNamespace(nbytes=self.size(q), quality=q)

    def predict(self, q: float) -> float:
        return self.size(q) / self.bias * (1 + self.wobble * math.sin(40 * q))


@pytest.mark.parametrize("picture", PICTURES, ids=list(PICTURES))
@pytest.mark.parametrize("bias,wobble", [(1.02, 0.0), (1.04, 0.01), (1.3, 0.0), (0.8, 0.03)])
def test_a_search_on_estimates_codes_once_or_twice_and_fits(picture, bias, wobble):
    """Estimates about as far off as the entropy model's (1-4 % under the real stream) cost one
    real coding, mostly, and three at most; far worse ones cost a few more, and still fit."""
    size = PICTURES[picture]
    codings = []
    for n in np.geomspace(size(0.0) + 1, size(1.0) - 1, 30).astype(int):
        coder = _Estimated(size, bias, wobble)
        found = fit_budget((300, 333, 3), [(coder, 0.0, 1.0)], int(n), QUICK_TOLERANCE, CURVE, PIXELS)
        assert (1 - QUICK_TOLERANCE) * n <= found.nbytes <= n
        codings.append(len(coder.coded))
    if bias < 1.05 and wobble <= 0.01:
        assert np.mean(codings) <= 1.4 and max(codings) <= ESTIMATE_TRIES + 1
    else:
        assert np.mean(codings) <= ESTIMATE_TRIES + 2


def test_a_search_on_estimates_knows_when_even_the_lowest_rate_is_too_big():
    size = PICTURES["twice as large"]
    coder = _Estimated(size, 1.02)
    with pytest.raises(BudgetTooSmall, match=f"at least {size(0.0)}"):
        fit_budget((300, 333, 3), [(coder, 0.0, 1.0)], size(0.0) - 1, QUICK_TOLERANCE, CURVE, PIXELS)
    assert coder.coded == [0.0]  # one real coding says so


def test_a_guided_search_ends_at_the_ends_of_the_range():
    size = PICTURES["twice as large"]
    top, calls = _guided(size, size(1.0) + 5000)
    assert (top.quality, calls) == (1.0, 1)  # the curve puts the budget past the top at once
    small = PICTURES["a third as large"]
    top, calls = _guided(small, int(small(1.0) * 1.2))
    assert (top.quality, calls) == (1.0, 2)  # first placed lower, then past the top
    with pytest.raises(BudgetTooSmall, match=f"at least {size(0.0)}") as raised:
        _guided(size, size(0.0) - 1)
    assert raised.value.min_bytes == size(0.0)


def test_a_rate_curve_must_grow_with_quality():
    assert RateCurve.from_meta(None) is None
    assert RateCurve.from_meta(CURVE.to_meta()) == CURVE
    for qualities, bpp in [((0.0, 1.0), (0.5, 0.4)), ((0.0,), (0.1,)), ((1.0, 0.0), (0.1, 0.2)), ((0.0, 1.0), (0.0, 1.0))]:
        with pytest.raises(ValueError, match="ascending"):
            RateCurve(qualities, bpp)
    assert CURVE.quality_for(CURVE.log_bpp(0.37)) == pytest.approx(0.37)
    assert (CURVE.quality_for(-50.0), CURVE.quality_for(50.0)) == (0.0, 1.0)


def test_a_quick_encode_with_a_rate_curve_codes_fewer_qualities(tiny_codec, kodim_crop, fitted, monkeypatch):
    """The tiny codec given a curve measured on the crop itself, where its sizes grow (an untrained
    model's are flat below quality 0.9): each budget is met as the unguided quick search meets it,
    with fewer codings."""
    assert RateCurve.measure(lambda q: [tiny_codec.encode(kodim_crop, quality=q).bpp]) is None  # flat
    curve = RateCurve.measure(lambda q: [tiny_codec.encode(kodim_crop, quality=q).bpp], (0.9, 0.95, 1.0))
    counts = {}
    for name, rate_curve in (("guided", curve), ("unguided", None)):
        monkeypatch.setattr(tiny_codec, "rate_curve", rate_curve)
        coded = []
        original = tiny_codec._code
        monkeypatch.setattr(tiny_codec, "_code", lambda *a, **k: coded.append(a[3]) or original(*a, **k))
        for budget, exact in fitted[1:-1]:
            quick = tiny_codec.encode(kodim_crop, max_bytes=budget, search="quick")
            assert quick.nbytes <= budget
            assert quick.nbytes >= (1 - QUICK_TOLERANCE) * budget or quick.data == exact.data
        counts[name] = len(coded)
        monkeypatch.setattr(tiny_codec, "_code", original)
    assert counts["guided"] < counts["unguided"]
