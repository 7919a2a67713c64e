"""Clean first (shared/clean_first.py): a denoising codec codes its own quality-1
reconstruction instead of the upload at qualities up to ``CleanFirst.max_quality(noise)``, by
parameters its checkpoint carries."""

from dataclasses import asdict, replace

import numpy as np
import pytest

from shared.clean_first import FITTED_RULE, CleanFirst
from shared.codec import Codec
from shared.errors import BudgetTooSmall, CheckpointError
from tests.conftest import TINY_DENOISE_MODEL, TINY_MODEL
from tests.unit.conftest import ALWAYS, with_rule

NEVER = replace(FITTED_RULE, quality_at_ref=-1.0, per_grey_level=0.0)  # none does


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a.astype(np.float64) - b.astype(np.float64)))))


@pytest.fixture(scope="module")
def plain(tiny_codec):
    return tiny_codec  # lw-tiny: trained on clean inputs, so no rule


def limited_at(quality: float, noise: float) -> CleanFirst:
    """A rule that cleans up to ``quality`` whatever the noise (placed at ``noise``)."""
    return replace(FITTED_RULE, noise_ref=noise, quality_at_ref=quality, per_grey_level=0.0)


def test_the_fitted_rule_is_a_line_through_the_held_out_crossovers():
    rule = FITTED_RULE
    assert rule.max_quality(24.0) == pytest.approx(0.65)  # sigma 25
    assert rule.max_quality(15.0) == pytest.approx(0.02)  # sigma 15: hardly ever
    assert rule.max_quality(5.0) < 0  # a clean photo: never
    assert rule.max_quality(29.0) == pytest.approx(1.0)  # from about sigma 30: always
    assert rule.max_quality(44.0) > 1.0  # sigma 50


def test_load_gives_the_rule_to_models_trained_on_noise_only(tiny_models_dir):
    assert Codec.load(TINY_MODEL, tiny_models_dir).clean_first is None
    denoiser = Codec.load(TINY_DENOISE_MODEL, tiny_models_dir)
    assert denoiser.clean_first == FITTED_RULE  # written at export, read back from the file
    assert denoiser.info()["clean_first"] == {"noise_ref": 24.0, "quality_at_ref": 0.65, "per_grey_level": 0.07,
                                              "gap_ratio": 1.1}
    assert Codec.load(TINY_DENOISE_MODEL, tiny_models_dir, clean_first=None).clean_first is None


def _training_checkpoint(path, noise_sigma_max: float):
    """A tiny training checkpoint, as ``latentwire train`` writes one, for a run with that noise."""
    import torch

    from shared.network import NetworkConfig, VariableRateHyperprior
    from tests.conftest import TINY_NETWORK

    torch.manual_seed(3)
    model = VariableRateHyperprior(NetworkConfig(**TINY_NETWORK))
    torch.save({"network": model.config.to_dict(), "state_dict": model.state_dict(), "step": 7,
                "train_config": {"noise_sigma_max": noise_sigma_max}}, path)
    return path


def _edit_metadata(path, **changes):
    """Change an exported file's metadata in place, as one would by hand (the weights stay)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, path)


def test_latentwire_export_writes_the_rule_into_a_denoising_run_and_keeps_it_on_reexport(tmp_path):
    from shared.checkpoint import load_model
    from shared.tools.cli import main

    denoise_run = _training_checkpoint(tmp_path / "denoise.pt", noise_sigma_max=50.0)
    plain_run = _training_checkpoint(tmp_path / "plain.pt", noise_sigma_max=0.0)
    assert main(["export", str(denoise_run), "--name", "lw-tiny-dn", "--models-dir", str(tmp_path / "m")]) == 0
    assert main(["export", str(plain_run), "--name", "lw-tiny-plain", "--models-dir", str(tmp_path / "m")]) == 0

    assert load_model("lw-tiny-dn", tmp_path / "m")[1]["clean_first"] == asdict(FITTED_RULE)
    assert load_model("lw-tiny-plain", tmp_path / "m")[1]["clean_first"] is None
    assert Codec.load("lw-tiny-plain", tmp_path / "m").clean_first is None

    # An exported model's own parameters (a sweep fitted for it) survive exporting it again.
    exported = load_model("lw-tiny-dn", tmp_path / "m")[1]["path"]
    own = replace(FITTED_RULE, quality_at_ref=0.4)
    _edit_metadata(exported, clean_first=asdict(own))
    assert main(["export", exported, "--name", "lw-tiny-dn", "--models-dir", str(tmp_path / "again")]) == 0
    _, meta = load_model("lw-tiny-dn", tmp_path / "again")
    assert meta["clean_first"] == asdict(own) and Codec.load("lw-tiny-dn", tmp_path / "again").clean_first == own


def test_the_codec_codes_by_the_parameters_in_its_file(tiny_models_dir, tmp_path, kodim_crop):
    """The rule is read from the checkpoint, not from code: editing one parameter in the file's
    metadata moves the limit, and the file still loads (the weights hash covers the state dict only)."""
    import shutil

    from shared.checkpoint import find_model, load_model

    path = shutil.copy(find_model(TINY_DENOISE_MODEL, tiny_models_dir), tmp_path)
    weights = load_model(path)[1]["weights"]
    always = Codec.load(path)  # random weights: the reconstruction is far off, the limit above 1
    enc = always.encode(kodim_crop, quality=0.5)
    assert enc.cleaned is True and always.clean_first.max_quality(enc.noise) > 1.0

    _edit_metadata(path, clean_first=asdict(replace(FITTED_RULE, quality_at_ref=-100.0)))
    never = Codec.load(path)
    assert never.weights == weights and never.clean_first.quality_at_ref == -100.0
    assert never.clean_first.max_quality(enc.noise) < 0.0
    assert never.encode(kodim_crop, quality=0.5).cleaned is False

    _edit_metadata(path, clean_first={"quality_at_ref": 0.5})  # not the rule's parameters
    with pytest.raises(CheckpointError, match="clean_first"):
        Codec.load(path)


def test_a_file_without_parameters_codes_every_upload_as_it_is(tiny_models_dir, tmp_path, kodim_crop):
    """A file exported before the parameters travelled in it: no rule, whatever its training."""
    import shutil

    import torch

    from shared.checkpoint import find_model

    path = shutil.copy(find_model(TINY_DENOISE_MODEL, tiny_models_dir), tmp_path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    del ckpt["clean_first"]
    torch.save(ckpt, path)
    assert Codec.load(path).clean_first is None


def test_below_the_limit_the_stream_codes_the_reconstruction(plain, kodim_crop):
    cleaned = plain.decode(plain.encode(kodim_crop, quality=1.0).data)
    enc = with_rule(plain, ALWAYS).encode(kodim_crop, quality=0.4)

    assert enc.cleaned is True
    assert enc.noise == pytest.approx(rms(kodim_crop, cleaned), rel=1e-5)
    assert enc.data == plain.encode(cleaned, quality=0.4).data  # an ordinary stream of the model
    assert enc.quality == 0.4 and enc.stream.quality == pytest.approx(0.4)


def test_above_the_limit_the_stream_codes_the_upload(plain, kodim_crop):
    enc = with_rule(plain, NEVER).encode(kodim_crop, quality=0.4)

    assert enc.cleaned is False
    assert enc.noise is not None and enc.noise > 0
    assert enc.data == plain.encode(kodim_crop, quality=0.4).data


def test_the_limit_splits_the_quality_range(plain, kodim_crop):
    cleaned = plain.decode(plain.encode(kodim_crop, quality=1.0).data)
    noise = rms(kodim_crop, cleaned)
    codec = with_rule(plain, limited_at(0.5, noise))
    for q, expect_cleaned in ((0.0, True), (0.5, True), (0.51, False), (1.0, False)):
        enc = codec.encode(kodim_crop, quality=q)
        assert enc.cleaned is expect_cleaned, q
        source = cleaned if expect_cleaned else kodim_crop
        assert enc.data == plain.encode(source, quality=q).data, q


def _split_at_half(plain: Codec, rgb: np.ndarray) -> Codec:
    cleaned = plain.decode(plain.encode(rgb, quality=1.0).data)
    return with_rule(plain, limited_at(0.5, rms(rgb, cleaned)))


def test_a_byte_budget_searches_across_the_limit(plain, kodim_crop):
    codec = _split_at_half(plain, kodim_crop)
    low, high = codec.encode(kodim_crop, quality=0.0), codec.encode(kodim_crop, quality=1.0)
    budget = codec.encode(kodim_crop, quality=0.8).nbytes
    enc = codec.encode(kodim_crop, max_bytes=budget)

    assert enc.nbytes <= budget < high.nbytes
    assert 0.79 < enc.quality < 1.0 and enc.cleaned is False  # the upload's streams, above the limit
    assert enc.data == codec.encode(kodim_crop, quality=enc.quality).data
    assert codec.encode(kodim_crop, max_bytes=high.nbytes).data == high.data
    with pytest.raises(BudgetTooSmall) as err:
        codec.encode(kodim_crop, max_bytes=low.nbytes - 1, scale=1.0)
    assert err.value.min_bytes == low.nbytes
    assert low.cleaned is True


@pytest.fixture(scope="module")
def gap(plain, kodim_crop):
    """(noisy crop, its clean reconstruction, a codec limited at 0.9): sigma-50 noise opens a gap
    between the reconstruction's stream at the limit and the upload's just past it."""
    from shared.tools.evaluate import add_noise

    noisy = add_noise(kodim_crop, 50.0, "kodim_crop")
    cleaned = plain.decode(plain.encode(noisy, quality=1.0).data)
    return noisy, cleaned, with_rule(plain, limited_at(0.9, rms(noisy, cleaned)))


def test_a_budget_below_the_uploads_streams_is_filled_with_the_reconstructions(plain, gap):
    """Between the reconstruction's stream at the limit and the upload's just past it, the budget
    goes to the reconstruction's streams past the limit (the rule alone would stop at the limit).
    Sigma-50 noise and a limit of 0.9 open that gap even for the tiny model, whose reconstructions
    cost the same at every quality (so how much of the budget is used is measured on the shipped
    denoiser, in test_shipped_model.py)."""
    noisy, cleaned, codec = gap
    at_limit = codec.encode(noisy, quality=0.9)
    past = plain.encode(noisy, quality=0.9 + 2**-20)  # the upload's stream just past the limit
    assert at_limit.cleaned
    assert past.nbytes > at_limit.nbytes + 32, (at_limit.nbytes, past.nbytes)

    budget = (at_limit.nbytes + past.nbytes) // 2
    enc = codec.encode(noisy, max_bytes=budget)
    assert enc.cleaned is True and 0.9 < enc.quality <= 1.0
    assert enc.nbytes <= budget
    assert enc.data == plain.encode(cleaned, quality=enc.quality).data  # an ordinary stream of C
    # Budgets from the stream at the limit up to the upload's past it never get fewer bytes.
    sizes = [codec.encode(noisy, max_bytes=b).nbytes for b in range(at_limit.nbytes, past.nbytes + 1, 8)]
    assert sizes == sorted(sizes) and sizes[0] == at_limit.nbytes
    upload = codec.encode(noisy, max_bytes=past.nbytes)  # the upload's, as the quality past the limit gives
    assert upload.cleaned is False and upload.quality > 0.9 and upload.nbytes == past.nbytes


@pytest.mark.slow
def test_qualities_past_the_limit_spread_over_rates_up_to_the_uploads_best(plain, gap):
    noisy, cleaned, codec = gap
    at_limit, past = codec.encode(noisy, quality=0.9), plain.encode(noisy, quality=0.9 + 2**-20)
    assert past.nbytes > codec.clean_first.gap_ratio * at_limit.nbytes  # the gap is there

    qualities = [0.9 + 2**-20, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0]
    streams = [codec.encode(noisy, quality=q) for q in qualities]
    sizes = [at_limit.nbytes] + [enc.nbytes for enc in streams]
    assert sizes == sorted(sizes)
    assert abs(streams[0].nbytes - at_limit.nbytes) <= 8  # no step at the limit
    assert streams[0].cleaned is True and streams[-1].cleaned is False
    assert streams[-1].data == plain.encode(noisy, quality=1.0).data  # quality 1: the upload's best, as before
    assert [enc.quality for enc in streams] == qualities  # the quality asked; the stream stores what was coded
    # Each is an ordinary stream of the model, of C or of the upload, as a byte budget would pick.
    for enc in streams[:-1]:
        source = cleaned if enc.cleaned else noisy
        assert enc.data == plain.encode(source, quality=float(enc.stream.quality)).data
        assert enc.data == codec.encode(noisy, max_bytes=enc.nbytes).data


def test_without_a_gap_past_the_limit_the_upload_is_coded_at_the_quality(plain, gap):
    noisy, cleaned, codec = gap
    no_gap = with_rule(plain, replace(codec.clean_first, gap_ratio=1e6))
    for q in (0.92, 0.97):
        enc = no_gap.encode(noisy, quality=q)
        assert enc.cleaned is False and enc.data == plain.encode(noisy, quality=q).data


def test_a_budget_fits_the_reconstruction_at_every_quality_when_the_upload_never_fits(plain, kodim_crop):
    codec = with_rule(plain, ALWAYS)
    top = codec.encode(kodim_crop, quality=1.0)
    assert top.cleaned and codec.encode(kodim_crop, max_bytes=top.nbytes).data == top.data
    never = with_rule(plain, NEVER)
    assert never.encode(kodim_crop, max_bytes=top.nbytes).cleaned is False


def test_a_batch_decides_image_by_image(plain, kodim_crop):
    codec = with_rule(plain, ALWAYS)
    other = np.ascontiguousarray(kodim_crop[::-1])
    batch = codec.encode_batch([kodim_crop, other], quality=0.3)
    assert [e.data for e in batch] == [codec.encode(im, quality=0.3).data for im in (kodim_crop, other)]
    assert all(e.cleaned for e in batch)


def test_receivers_decode_clean_first_streams_without_the_rule(plain, kodim_crop):
    enc = with_rule(plain, ALWAYS).encode(kodim_crop, quality=0.6)
    out = plain.decode(enc.data)
    assert out.shape == kodim_crop.shape and out.dtype == np.uint8


@pytest.mark.parametrize("quality", [0.0, 0.37, 1.0])
def test_quantize_latents_is_the_decoders_y_hat_bit_for_bit(tiny_codec, kodim_crop, quality):
    import torch

    from shared import bitstream as bs

    model = tiny_codec.model
    with torch.inference_mode():
        y, z = tiny_codec._analysis(kodim_crop)
        q = bs.coded_quality(quality)
        out = model.compress_latents(y, z, q)
        decoded = model.decode_latents(out["strings"], out["shape"], q)
        direct = model.quantize_latents(y, z, q)
    assert direct.dtype == decoded.dtype == torch.float64
    assert torch.equal(direct, decoded)
