"""The shipped checkpoint (models/lw-vr-hyperprior-*.pt) on one half-size Kodak image (384x256).

The file is replaced whenever the model is retrained, so nothing here pins its hash or byte
counts: only that it loads verified, that rate and PSNR rise with quality, and a PSNR floor at
the middle quality, about 2 dB under what the shipped models have given there (model card).
"""

from __future__ import annotations

import re
import pytest

from shared.checkpoint import find_model
from shared.images import psnr

pytestmark = pytest.mark.slow  # every test codes Kodak-sized images with the full-size shipped model

QUALITIES = [0.0, 0.25, 0.5, 0.75, 1.0]
MIN_PSNR_AT_HALF_QUALITY_DB = 30.0


@pytest.fixture(scope="module")
def ladder(shipped_codec, kodim_rgb) -> list[tuple[float, int, float]]:
    """(quality, bytes, PSNR in dB) at each of QUALITIES."""
    rows = []
    for q in QUALITIES:
        enc = shipped_codec.encode(kodim_rgb, quality=q)
        rgb_hat = shipped_codec.decode(enc.data)
        assert rgb_hat.shape == kodim_rgb.shape == (256, 384, 3)
        rows.append((q, enc.nbytes, psnr(kodim_rgb, rgb_hat)))
    return rows


def test_shipped_model_file_is_named_by_its_weights_hash(shipped_codec):
    path = find_model(shipped_codec.name)

    assert shipped_codec.name == "lw-vr-hyperprior"
    assert re.fullmatch(r"[0-9a-f]{16}", shipped_codec.weights)
    assert path.name == f"lw-vr-hyperprior-{shipped_codec.weights[:8]}.pt"


def test_bytes_strictly_increase_with_quality(ladder):
    sizes = [nbytes for _, nbytes, _ in ladder]

    assert all(a < b for a, b in zip(sizes, sizes[1:])), f"bytes per quality {QUALITIES}: {sizes}"


def test_psnr_increases_with_quality(ladder):
    psnrs = [round(db, 2) for _, _, db in ladder]

    assert all(a < b for a, b in zip(psnrs, psnrs[1:])), f"PSNR per quality {QUALITIES}: {psnrs}"


def test_psnr_band_at_half_quality(ladder):
    (_, nbytes, db), = [row for row in ladder if row[0] == 0.5]
    bpp = nbytes * 8 / (256 * 384)

    assert MIN_PSNR_AT_HALF_QUALITY_DB < db < 50.0, f"{db:.2f} dB at {bpp:.3f} bpp"
    assert 0.05 < bpp < 4.0


def test_padding_costs_few_bytes_and_no_picture(shipped_codec, kodim_rgb):
    """A 100x150 picture is coded padded to 128x192 (27 % of y's positions padding). Coding the
    padding's latents as their means, as the encoder does, saves bytes against coding them, and the
    picture loses less than a tenth of what those bytes would buy."""
    import torch

    from shared.codec import _to_rgb

    rgb = kodim_rgb[40:140, 100:250].copy()
    model = shipped_codec.model
    for q in (0.25, 0.75):
        enc = shipped_codec.encode(rgb, quality=q)
        with torch.inference_mode():
            y, z = shipped_codec._analysis(rgb)
            padded = model.compress_joint(y, z, enc.stream.quality)[0]  # the padding coded too
            y_hat = model.decode_joint([padded], enc.stream.z_shape[1:], enc.stream.quality)
            rgb_padded = _to_rgb(shipped_codec._pixels(y_hat), 100, 150)

        assert len(enc.stream.strings[0]) < 0.95 * len(padded)
        assert psnr(rgb, shipped_codec.decode(enc.data)) > psnr(rgb, rgb_padded) - 0.15


def test_half_the_lowest_rates_bytes_still_give_a_picture(shipped_codec, kodim_rgb, monkeypatch):
    """Reduced sizes (shared/resolution.py): half of quality 0's bytes is met at a reduced size and
    still gives a picture (the floor is about 1 dB under what shipped models gave); at exactly
    quality 0's bytes the full size and reduced ones compete, and the one that decodes closest is sent."""
    import shared.codec

    lowest = shipped_codec.encode(kodim_rgb, quality=0.0).nbytes
    half = shipped_codec.encode(kodim_rgb, max_bytes=lowest // 2)
    assert half.nbytes <= lowest // 2 and half.stream.coded_size is not None
    assert psnr(kodim_rgb, shipped_codec.decode(half.data)) > 22.5

    scored = []  # (coded size, PSNR of its decode) of every candidate the codec compared

    def fit_any_size(shape, segments, segments_at, closeness, *args, **kwargs):
        def recorded(enc):
            scored.append((enc.stream.coded_size, closeness(enc)))
            return scored[-1][1]
        return resolution_fit(shape, segments, segments_at, recorded, *args, **kwargs)

    resolution_fit = shared.codec.fit_any_size
    monkeypatch.setattr(shared.codec, "fit_any_size", fit_any_size)
    chosen = shipped_codec.encode(kodim_rgb, max_bytes=lowest)
    assert chosen.nbytes <= lowest
    assert None in [size for size, _ in scored] and len(scored) >= 3  # the full size and two reduced ones
    assert psnr(kodim_rgb, shipped_codec.decode(chosen.data)) == max(score for _, score in scored)


# ---- the shipped denoising checkpoint (models/lw-vr-denoise-*.pt) ----
NOISE_SIGMA = 25.0


@pytest.fixture(scope="module")
def noisy_pair(shipped_codec, kodim_rgb):
    """kodim23 (half size) with sigma-25 noise, coded at quality 0.5 by both shipped models:
    {mode: (bytes, PSNR against the CLEAN image)}."""
    from shared.codec import DEFAULT_DENOISE_MODEL, Codec
    from shared.tools.evaluate import add_noise

    denoiser = Codec.load(DEFAULT_DENOISE_MODEL)
    noisy = add_noise(kodim_rgb, NOISE_SIGMA, "kodim23_half.png")
    out = {"noisy input": (None, psnr(kodim_rgb, noisy))}
    for mode, codec in (("standard", shipped_codec), ("denoise", denoiser)):
        enc = codec.encode(noisy, quality=0.5)
        out[mode] = (enc.nbytes, psnr(kodim_rgb, codec.decode(enc.data)))
    return out


def test_denoise_model_sends_fewer_bytes_and_a_cleaner_picture(noisy_pair):
    (std_bytes, std_db), (dn_bytes, dn_db) = noisy_pair["standard"], noisy_pair["denoise"]
    _, noisy_db = noisy_pair["noisy input"]

    assert 19.5 < noisy_db < 21.0  # sigma 25 on the 0-255 scale
    assert dn_bytes < 0.8 * std_bytes, noisy_pair  # the noise is not worth its bits
    assert dn_db > std_db + 1.5, noisy_pair  # and dropping it is closer to the clean image
    assert dn_db > noisy_db + 5.0, noisy_pair


@pytest.fixture(scope="module")
def denoisers():
    """The shipped denoiser as the sender loads it (with its CleanFirst rule), and without the rule."""
    from shared.codec import DEFAULT_DENOISE_MODEL, Codec

    return Codec.load(DEFAULT_DENOISE_MODEL), Codec.load(DEFAULT_DENOISE_MODEL, clean_first=None)


def test_the_shipped_denoiser_carries_its_clean_first_rule_in_its_file(denoisers):
    """The rule's parameters are metadata beside the weights: the file keeps its hash-prefixed name."""
    from dataclasses import asdict
    from pathlib import Path

    from shared.checkpoint import load_model
    from shared.codec import DEFAULT_DENOISE_MODEL

    rule, _ = denoisers
    _, meta = load_model(DEFAULT_DENOISE_MODEL)
    assert meta["clean_first"] is not None and meta["clean_first"] == asdict(rule.clean_first)
    assert Path(meta["path"]).name == f"{DEFAULT_DENOISE_MODEL}-{meta['weights'][:8]}.pt"


@pytest.mark.parametrize("sigma, quality, min_gain_db", [(25.0, 0.4, 0.2), (50.0, 0.6, 0.3)])
def test_clean_first_beats_one_pass_at_the_same_bytes(denoisers, kodim_rgb, sigma, quality, min_gain_db):
    """Clean first against the best single pass that fits the same bytes: closer to the clean image."""
    from shared.tools.evaluate import add_noise

    rule, one_pass = denoisers
    noisy = add_noise(kodim_rgb, sigma, "kodim23_half.png")
    enc = rule.encode(noisy, quality=quality)
    base = one_pass.encode(noisy, max_bytes=enc.nbytes)  # the best one pass that fits the same bytes

    assert enc.cleaned is True
    assert 0.85 * sigma < enc.noise < 1.05 * sigma  # the estimate reads a little low (clipping at 0 and 255)
    assert base.nbytes <= enc.nbytes
    gain = psnr(kodim_rgb, rule.decode(enc.data)) - psnr(kodim_rgb, one_pass.decode(base.data))
    assert gain > min_gain_db, f"{gain:.2f} dB"


def test_clean_first_leaves_clean_and_lightly_noisy_photos_alone(denoisers, kodim_rgb):
    from shared.tools.evaluate import add_noise

    rule, one_pass = denoisers
    clean = rule.encode(kodim_rgb, quality=0.0)  # the lowest quality is the first to clean
    assert clean.cleaned is False and clean.noise < 8.0  # measured 4.66
    assert clean.data == one_pass.encode(kodim_rgb, quality=0.0).data
    light = rule.encode(add_noise(kodim_rgb, 10.0, "kodim23_half.png"), quality=0.0)
    assert light.cleaned is False and 8.0 < light.noise < 12.0


@pytest.fixture(scope="module")
def noisy_at_limit(denoisers, kodim_rgb):
    """(kodim23 half with the eval's sigma-25 noise, the clean-first limit the sender finds for it)."""
    from shared.tools.evaluate import add_noise

    rule, _ = denoisers
    noisy = add_noise(kodim_rgb, 25.0, "kodim23_half.png")
    return noisy, rule.clean_first.max_quality(rule.encode(noisy, quality=0.0).noise)


def test_a_budget_between_the_limits_streams_is_used_for_a_cleaner_picture(denoisers, kodim_rgb, noisy_at_limit):
    """At sigma 25 the reconstruction's stream at the limit and the upload's just past it differ
    twofold in size here; a budget halfway between (geometric mean) is filled with the
    reconstruction's stream past the limit: nearly all of the budget used, and closer to the
    clean image than the stream at the limit."""
    import numpy as np

    rule, one_pass = denoisers
    noisy, limit = noisy_at_limit
    at_limit = rule.encode(noisy, quality=limit)
    past = one_pass.encode(noisy, quality=float(np.nextafter(np.float32(limit), np.float32(2.0))))
    budget = int(np.sqrt(at_limit.nbytes * past.nbytes))
    enc = rule.encode(noisy, max_bytes=budget)

    assert at_limit.cleaned and not past.cleaned and past.nbytes > 1.5 * at_limit.nbytes
    assert enc.cleaned is True and enc.quality > limit
    assert 0.95 * budget < enc.nbytes <= budget
    gain = psnr(kodim_rgb, rule.decode(enc.data)) - psnr(kodim_rgb, rule.decode(at_limit.data))
    assert gain > 0.1, f"{gain:.2f} dB"


def test_qualities_across_the_limit_rise_in_rate_without_a_step(denoisers, kodim_rgb, noisy_at_limit):
    """Qualities past the limit spread over the rates between the reconstruction's stream at the
    limit and the upload's at quality 1, where the upload's stream just past the limit used to be
    twice as big (kodim23 half, sigma 25): the bytes grow by less than 1.4 times from one quality to
    the next, and the PSNR against the clean image rises each time."""
    import numpy as np

    rule, _ = denoisers
    noisy, limit = noisy_at_limit
    qualities = [limit - 0.1, limit - 0.05, limit] + list(np.linspace(limit, 1.0, 8)[1:])
    streams = [rule.encode(noisy, quality=float(q)) for q in qualities]
    sizes = [enc.nbytes for enc in streams]
    steps = [b / a for a, b in zip(sizes, sizes[1:])]
    gains = [psnr(kodim_rgb, rule.decode(b.data)) - psnr(kodim_rgb, rule.decode(a.data))
             for a, b in zip(streams, streams[1:])]

    assert min(steps) > 1.0 and max(steps) < 1.4, sizes
    assert min(gains) > 0.0, gains
    assert streams[3].cleaned and not streams[-1].cleaned
