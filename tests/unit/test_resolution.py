"""Reduced sizes (shared/resolution.py): coding a picture at a reduced size (format version 3 streams,
decoded at the full size) and byte budgets the full size cannot meet or meets only at a low quality."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.errors import BudgetTooSmall, QualityOutOfRange
from shared.resolution import RESIZE_BELOW_QUALITY, RESIZE_SCALES, coded_size, resize_rgb
from tests.unit.conftest import ALWAYS, with_rule

SIZES = (1.0,) + RESIZE_SCALES  # every size a byte budget may be coded at


def squared_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(np.square(a.astype(np.float64) - b.astype(np.float64))))


def test_scale_codes_the_resized_picture_and_decodes_at_the_full_size(tiny_codec, sample_rgb):
    enc = tiny_codec.encode(sample_rgb, quality=0.6, scale=0.5)
    small = resize_rgb(sample_rgb, (36, 48))
    own = tiny_codec.encode(small, quality=0.6)  # the 36x48 picture coded as an image of its own

    assert (enc.stream.version, enc.stream.coded_size) == (3, (36, 48))
    assert (enc.stream.height, enc.stream.width) == (71, 97)
    assert enc.stream.strings == own.stream.strings
    assert enc.nbytes == own.nbytes + 2  # the two coded-size integers
    assert enc.bpp == pytest.approx(enc.nbytes * 8 / (71 * 97))
    out = tiny_codec.decode(enc.data)
    assert out.shape == (71, 97, 3)
    assert np.array_equal(out, resize_rgb(tiny_codec.decode(own.data), (71, 97)))


@pytest.mark.parametrize("scale", [1.0, 0.995])
def test_a_scale_that_rounds_to_the_full_size_is_an_ordinary_stream(tiny_codec, sample_rgb, scale):
    enc = tiny_codec.encode(sample_rgb, quality=0.6, scale=scale)
    assert enc.stream.version == 2 and enc.data == tiny_codec.encode(sample_rgb, quality=0.6).data


@pytest.mark.parametrize("scale", [0, -0.5, 1.01, math.nan, "half"])
def test_a_scale_outside_0_1_is_out_of_range(tiny_codec, sample_rgb, scale):
    with pytest.raises(QualityOutOfRange, match="scale") as info:
        tiny_codec.encode(sample_rgb, quality=0.5, scale=scale)
    assert info.value.status == 422


def test_coded_sizes_round_and_keep_a_pixel():
    assert coded_size((71, 97, 3), 0.5) == (36, 48)
    assert coded_size((71, 97, 3), 0.001) == (1, 1)
    assert coded_size((71, 97, 3), 1.0) is None and coded_size((4, 4, 3), 0.9) is None


def test_a_budget_the_full_size_meets_well_stays_at_the_full_size(tiny_codec, kodim_crop):
    budget = tiny_codec.encode(kodim_crop, quality=0.5).nbytes
    enc = tiny_codec.encode(kodim_crop, max_bytes=budget)
    assert enc.stream.version == 2 and enc.quality >= 0.5 > RESIZE_BELOW_QUALITY


def test_a_budget_below_the_full_sizes_lowest_rate_is_met_at_a_reduced_size(tiny_codec, kodim_crop):
    lowest = tiny_codec.encode(kodim_crop, quality=0.0).nbytes
    enc = tiny_codec.encode(kodim_crop, max_bytes=lowest - 1)

    assert enc.nbytes <= lowest - 1 and enc.stream.version == 3
    scale, = [s for s in RESIZE_SCALES if coded_size(kodim_crop.shape, s) == enc.stream.coded_size]
    assert enc.data == tiny_codec.encode(kodim_crop, quality=enc.quality, scale=scale).data
    assert tiny_codec.decode(enc.data).shape == kodim_crop.shape


def test_a_quick_search_tries_reduced_sizes_only_when_the_full_size_cannot_meet_the_budget(tiny_codec, kodim_crop,
                                                                                            monkeypatch):
    import shared.resolution

    monkeypatch.setattr(shared.resolution, "RESIZE_BELOW_QUALITY", 1.01)  # exact: every size competes
    lowest = tiny_codec.encode(kodim_crop, quality=0.0).nbytes
    quick = tiny_codec.encode(kodim_crop, max_bytes=lowest + 30, search="quick")
    assert quick.stream.coded_size is None and quick.nbytes <= lowest + 30  # the full size meets it: no other
    monkeypatch.setattr(tiny_codec, "_decode_stream", lambda stream: pytest.fail("a quick search decoded a candidate"))
    below = tiny_codec.encode(kodim_crop, max_bytes=lowest - 1, search="quick")
    assert below.stream.version == 3 and below.nbytes <= lowest - 1  # it cannot: a reduced size does
    fitting = [s for s in RESIZE_SCALES if tiny_codec.encode(kodim_crop, quality=0.0, scale=s).nbytes <= lowest - 1]
    assert below.stream.coded_size == coded_size(kodim_crop.shape, fitting[0])  # the largest size that fits


@pytest.mark.slow
@pytest.mark.parametrize("above_lowest", [0, 5, 30])
def test_a_tight_budget_goes_to_the_size_that_decodes_closest(tiny_codec, kodim_crop, above_lowest, monkeypatch):
    """When the full size fits only below RESIZE_BELOW_QUALITY, every size is tried at the highest
    quality that fits, and the one whose decoded picture is closest to the upload is sent. (The
    tiny model's rate hardly moves at low qualities, so its full size would always fit above the
    threshold: the threshold is lifted here to make every size compete.)"""
    import shared.resolution

    monkeypatch.setattr(shared.resolution, "RESIZE_BELOW_QUALITY", 1.01)
    budget = tiny_codec.encode(kodim_crop, quality=0.0).nbytes + above_lowest
    fits = []
    for s in SIZES:
        try:
            fits.append(tiny_codec.encode(kodim_crop, max_bytes=budget, scale=s))
        except BudgetTooSmall:
            continue
    errors = [squared_error(tiny_codec.decode(e.data), kodim_crop) for e in fits]
    assert len(fits) >= 3

    enc = tiny_codec.encode(kodim_crop, max_bytes=budget)
    assert enc.data == fits[int(np.argmin(errors))].data
    assert squared_error(tiny_codec.decode(enc.data), kodim_crop) == min(errors)


@pytest.mark.slow
def test_a_budget_below_every_size_says_what_would_fit(tiny_codec, kodim_crop):
    smallest = min(tiny_codec.encode(kodim_crop, quality=0.0, scale=s).nbytes for s in SIZES)

    with pytest.raises(BudgetTooSmall) as info:
        tiny_codec.encode(kodim_crop, max_bytes=smallest - 1)
    assert info.value.min_bytes == smallest and info.value.status == 422
    assert f"at least {smallest}" in str(info.value) and "coded at 0.25 of the size" in str(info.value)
    assert tiny_codec.encode(kodim_crop, max_bytes=smallest).nbytes <= smallest


def test_a_picture_too_small_to_reduce_keeps_the_full_sizes_refusal(tiny_codec):
    tiny = np.full((1, 1, 3), 128, np.uint8)  # every reduced size rounds back to 1x1
    lowest = tiny_codec.encode(tiny, quality=0.0).nbytes
    with pytest.raises(BudgetTooSmall, match=f"at least {lowest} or downscale") as info:
        tiny_codec.encode(tiny, max_bytes=lowest - 1)
    assert info.value.min_bytes == lowest


@pytest.mark.slow
def test_a_denoising_codec_codes_its_resized_reconstruction(tiny_codec, kodim_crop):
    """Clean first at a reduced size: the reconstruction is made at the full size, then resized."""
    always = with_rule(tiny_codec, ALWAYS)
    cleaned = tiny_codec.decode(tiny_codec.encode(kodim_crop, quality=1.0).data)
    enc = always.encode(kodim_crop, quality=0.3, scale=0.5)

    assert enc.cleaned is True and enc.stream.coded_size == (64, 96)
    assert enc.stream.strings == tiny_codec.encode(resize_rgb(cleaned, (64, 96)), quality=0.3).stream.strings
    budget = always.encode(kodim_crop, quality=0.0).nbytes - 1
    small = always.encode(kodim_crop, max_bytes=budget)
    assert small.cleaned is True and small.stream.version == 3 and small.nbytes <= budget
