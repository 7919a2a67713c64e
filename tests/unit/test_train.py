"""``latentwire train`` on a tiny network and a folder of generated images: checkpoints, held-out
validation, resuming, time budgets, and the denoising inputs (noise level and its loss weight)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from PIL import Image

import shared.tools.train
from shared.tools.train import TrainConfig, corrupt, noise_weight, split_holdout, train
from tests.conftest import TINY_NETWORK


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("train-images")
    rng = np.random.default_rng(0)
    for i in range(26):  # 25 train + every 25th held out: 2 validation images (0 and 25)
        yy, xx = np.mgrid[0:72, 0:80]
        rgb = np.stack([xx * 3 + i, yy * 3, np.full_like(xx, 7 * i)], -1) + rng.normal(0, 6, (72, 80, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(d / f"img{i:02d}.png")
    return d


def _config(data, out, **overrides) -> TrainConfig:
    values = dict(data=str(data), out=str(out), steps=4, batch_size=2, crop=64, warmup_steps=1, val_every=2,
                  bf16=False, device="cpu", network=dict(TINY_NETWORK))
    values.update(overrides)
    return TrainConfig(**values)


def test_noise_weight_is_one_at_sigma_25_and_falls_with_noise():
    w = noise_weight(torch.tensor([0.0, 10.0, 25.0, 50.0]))
    assert w[2].item() == pytest.approx(1.0)
    assert all(a > b for a, b in zip(w.tolist(), w[1:].tolist()))
    assert w[0].item() == pytest.approx(3.73, abs=0.01) and w[3].item() == pytest.approx(0.513, abs=0.01)


def test_corrupt_adds_the_noise_it_reports():
    x = torch.full((4, 3, 64, 64), 0.5)
    gen = torch.Generator().manual_seed(0)
    noisy, sigma = corrupt(x, 50.0, 0.0, gen)
    assert noisy.shape == x.shape and sigma.shape == (4,)
    assert ((0 <= sigma) & (sigma <= 50)).all()
    measured = ((noisy - x) * 255).flatten(1).std(1)
    assert torch.allclose(measured, sigma, rtol=0.05, atol=0.5)
    fixed, sigma = corrupt(x, 50.0, 0.0, gen, fixed_sigma=25.0)
    assert sigma.tolist() == [25.0] * 4
    assert ((fixed - x) * 255).std().item() == pytest.approx(25.0, rel=0.05)


def test_corrupt_jpeg_round_trip_is_seeded_and_mild():
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(3, 3, 8, 8), size=(64, 64), mode="bilinear")

    a, sigma = corrupt(x, 0.0, 1.0, torch.Generator().manual_seed(7))
    b, _ = corrupt(x, 0.0, 1.0, torch.Generator().manual_seed(7))

    assert sigma.tolist() == [0.0] * 3 and torch.equal(a, b)  # same seed, same JPEG qualities
    mse = ((a - x) ** 2).flatten(1).mean(1)
    assert (mse > 0).all()  # every image went through JPEG (probability 1)
    assert (10 * torch.log10(1 / mse) > 25).all()  # at quality 30-90: artefacts (29-32 dB here), not damage


def test_holdout_is_every_25th_file(image_dir):
    files = sorted(image_dir.iterdir())
    train_files, val_files = split_holdout(files)
    assert [f.name for f in val_files] == ["img00.png", "img25.png"]
    assert len(train_files) == 24 and not set(train_files) & set(val_files)
    _, every_7th = split_holdout(files, 7)  # a carried subset keeps its held-out images this way
    assert [f.name for f in every_7th] == ["img00.png", "img07.png", "img14.png", "img21.png"]


@pytest.mark.slow
def test_train_writes_checkpoints_and_resumes_a_new_segment(image_dir, tmp_path):
    out = tmp_path / "run"
    best = train(_config(image_dir, out, noise_sigma_max=50.0), log=lambda *a: None)

    assert best == out / "best.pt" and best.is_file() and (out / "last.pt").is_file()
    vals = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    assert [v["step"] for v in vals] == [2, 4]
    assert set(vals[0]["per_quality"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["train_config"]["noise_sigma_max"] == 50.0
    assert {"optimizer", "aux_optimizer", "sampler_rng", "noise_rng"} <= set(ckpt)

    # The segment is finished: resuming starts a new one from its weights and counts on.
    train(_config(image_dir, out, steps=2, noise_sigma_max=50.0), resume=out / "last.pt", log=lambda *a: None)
    again = torch.load(out / "last.pt", weights_only=True)
    assert again["step"] == 6 and again["run_start"] == 4
    assert any(not torch.equal(again["state_dict"][k], ckpt["state_dict"][k]) for k in ckpt["state_dict"])


def _fake_clock(monkeypatch, seconds_of_step) -> dict:
    """A clock that moves only as batches are drawn, by ``seconds_of_step(step)`` for step 1, 2, ...
    (``clock["t"]``), with the segment sized on steps 5..25 instead of 50..250."""
    clock = {"t": 0.0, "steps": 0}
    real_sample = shared.tools.train.CropSampler.sample

    def timed_sample(self, batch_size):
        clock["steps"] += 1
        clock["t"] += seconds_of_step(clock["steps"])
        return real_sample(self, batch_size)

    monkeypatch.setattr(shared.tools.train.CropSampler, "sample", timed_sample)
    monkeypatch.setattr(shared.tools.train, "time", types.SimpleNamespace(monotonic=lambda: clock["t"]))
    monkeypatch.setattr(shared.tools.train, "SIZE_FROM", 5)
    monkeypatch.setattr(shared.tools.train, "SIZE_AT", 25)
    return clock


@pytest.mark.slow
@pytest.mark.parametrize("slow_from, slow_dt", [(26, 0.3), (30, 2.0)])
def test_a_time_budget_holds_when_the_steps_slow_down_after_sizing(image_dir, tmp_path, monkeypatch,
                                                                    slow_from, slow_dt):
    # A fake clock that moves only as batches are drawn: 0.1 s per step, then slower (as when a
    # second run sharing the GPU finishes compiling). Sizing at step 25 plans 38 steps for 4 s; kept,
    # that plan would take 2.6 + 12 x 0.3 = 6.2 s, or 3 + 8 x 2 = 19 s.
    clock = _fake_clock(monkeypatch, lambda step: 0.1 if step <= slow_from else slow_dt)
    lines = []
    out = tmp_path / "run"
    train(_config(image_dir, out, steps=10**9, time_budget_s=4.0, val_every=5), log=lines.append)

    ckpt = torch.load(out / "last.pt", weights_only=True)
    planned = [line for line in lines if "steps in 4 s" in line]
    assert len(planned) == 1 and "-> 38 steps" in planned[0]
    assert clock["t"] <= 4.0 + slow_dt + 1e-9  # over by at most the one step that crossed the deadline
    assert 29 <= ckpt["step"] < 38  # shortened, yet the time was used rather than given up early
    assert ckpt["train_config"]["steps"] == ckpt["step"]  # the segment is finished: resuming starts anew
    vals = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    assert vals[-1]["step"] == ckpt["step"]  # the shortened segment still ends validated


@pytest.mark.slow
def test_a_time_budget_is_used_when_the_steps_speed_up_after_sizing(image_dir, tmp_path, monkeypatch):
    # 0.3 s per step while sizing (beside a job that then ends), 0.1 s after: sizing at step 25 plans
    # 32 steps for 10 s; at the check of step 30 the rest of the budget fits 19 more, so the segment
    # grows to 49 steps and ends within its 10 s instead of giving up the last 2.
    clock = _fake_clock(monkeypatch, lambda step: 0.3 if step <= 25 else 0.1)
    lines = []
    out = tmp_path / "run"
    train(_config(image_dir, out, steps=10**9, time_budget_s=10.0, val_every=5), log=lines.append)

    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert any("-> 32 steps in 10 s" in line for line in lines), lines
    assert any("faster than planned" in line and "-> 49 steps" in line for line in lines), lines
    assert ckpt["step"] == 49 and ckpt["train_config"]["steps"] == 49
    assert clock["t"] <= 10.0 + 1e-9


@pytest.mark.slow
def test_training_resumes_from_a_half_size_pack_for_the_device(image_dir, tiny_models_dir, sample_rgb, tmp_path):
    """shared/tools/device/pack_for_device.py: large float tensors as float16, coder tables left out; training
    resumes from it in float32, and its export codes again."""
    from shared.checkpoint import export_model, find_model
    from shared.codec import Codec
    from shared.tools.device.pack_for_device import LARGE, pack

    original = find_model("lw-tiny", tiny_models_dir)
    packed = pack(original, tmp_path / "carry")
    full = torch.load(original, weights_only=True)
    small = torch.load(packed, weights_only=True)["state_dict"]

    assert packed.name == "lw-tiny.pt" and small.keys() == full["state_dict"].keys()
    halved = [k for k, v in small.items() if v.dtype == torch.float16]
    assert len(halved) >= 4 and all(full["state_dict"][k].numel() > LARGE for k in halved)
    for k in halved:  # rounded to float16, nothing else
        torch.testing.assert_close(small[k].float(), full["state_dict"][k], rtol=2**-10, atol=1e-7)
    assert [k for k, v in small.items() if v.numel() == 0] == [
        k for k in small if k.rsplit(".", 1)[-1] in ("_quantized_cdf", "_offset", "_cdf_length")]
    assert packed.stat().st_size < 0.5 * original.stat().st_size  # the tiny model's bytes are mostly CDF tables

    out = tmp_path / "run"
    train(_config(image_dir, out, steps=2), resume=packed, log=lambda *a: None)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == int(full["step"]) + 2
    assert {v.dtype for v in ckpt["state_dict"].values() if v.is_floating_point()} == {torch.float32}

    codec = Codec.load(export_model(out / "last.pt", "lw-tiny", tmp_path / "models"))
    enc = codec.encode(sample_rgb, quality=0.5)
    assert enc.nbytes > 0 and codec.decode(enc.data).shape == sample_rgb.shape


@pytest.mark.slow
def test_a_new_objective_does_not_inherit_the_old_best_loss(image_dir, tmp_path):
    clean = tmp_path / "clean"
    train(_config(image_dir, clean, steps=2), log=lambda *a: None)
    ckpt = torch.load(clean / "last.pt", weights_only=True)
    ckpt["best_val"] = 0.0  # unbeatable: were it inherited, the denoising run would never save best.pt
    torch.save(ckpt, clean / "last.pt")

    noisy = tmp_path / "noisy"
    train(_config(image_dir, noisy, steps=2, noise_sigma_max=50.0), resume=clean / "last.pt", log=lambda *a: None)
    vals = [json.loads(line)["loss"] for line in (noisy / "val.jsonl").read_text().splitlines()]
    assert torch.load(noisy / "best.pt", weights_only=True)["best_val"] == pytest.approx(min(vals))

    # The same objective keeps it: a clean segment resumed from the clean run saves no best.pt.
    again = tmp_path / "again"
    train(_config(image_dir, again, steps=2), resume=clean / "last.pt", log=lambda *a: None)
    assert not (again / "best.pt").exists() and (again / "last.pt").is_file()


def test_bd_weights_are_one_at_mid_quality_and_the_inverse_of_the_reference_rate():
    from shared.tools.train import at_quality, rate_weight

    ref = [0.1, 0.2, 0.4, 0.8, 1.6]  # log-linear in quality: every quarter doubles the rate
    w = rate_weight(torch.tensor([0.0, 0.125, 0.5, 0.75, 1.0]), ref)
    assert w.tolist() == pytest.approx([4.0, 4.0 / 2**0.5, 1.0, 0.5, 0.25], rel=1e-5)
    assert at_quality(torch.tensor([0.375]), ref).item() == pytest.approx(0.2 * 2**0.5, rel=1e-5)


def test_the_bd_objective_prices_a_crops_log_error_at_its_qualitys_trade_off():
    """Each crop: (lambda * D_ref(q) * ln MSE + bpp) / R_ref(q) * R_ref(0.5). At MSE = D_ref its
    gradient in MSE is plain training's (lambda), at 4 x D_ref a quarter of it."""
    from shared.tools.train import rd_loss

    model = types.SimpleNamespace(lmbda=lambda q: torch.full_like(q, 1e-3))
    reference = {"bpp": [0.1, 0.2, 0.4, 0.8, 1.6], "mse": [1e-2] * 5}
    x = torch.full((2, 3, 8, 8), 0.5)
    err = torch.tensor([0.1, 0.2]).view(2, 1, 1, 1).requires_grad_()  # MSE 0.01 = D_ref, then 0.04
    out = {"x_hat": x + err, "likelihoods": {"y": torch.full((2, 1, 4, 4), 0.5)}}  # 16 bits: 0.25 bpp
    quality = torch.tensor([0.5, 0.5])
    lam = 1e-3 * 255**2
    loss = rd_loss(model, out, x, quality, reference=reference)["loss"]
    assert loss.item() == pytest.approx(np.mean([lam * 1e-2 * np.log(m) + 0.25 for m in (0.01, 0.04)]), rel=1e-5)
    loss.backward()
    d_loss_d_mse = err.grad.flatten() / (2 * err.detach().flatten()) * 2  # d mse / d err = 2 err; loss is a mean
    assert d_loss_d_mse.tolist() == pytest.approx([lam, lam / 4], rel=1e-4)
    plain = rd_loss(model, out, x, torch.tensor([0.0, 1.0]))["loss"].item()
    assert plain == pytest.approx(np.mean([lam * 0.01 + 0.25, lam * 0.04 + 0.25]), rel=1e-5)
    low_high = rd_loss(model, out, x, torch.tensor([0.0, 1.0]), reference=reference)["loss"].item()
    assert low_high == pytest.approx(np.mean([(lam * 1e-2 * np.log(0.01) + 0.25) * 4,
                                              (lam * 1e-2 * np.log(0.04) + 0.25) / 4]), rel=1e-5)


@pytest.mark.slow
def test_bd_objective_training_measures_its_references_once_and_keeps_them(image_dir, tiny_models_dir, tmp_path):
    from shared.checkpoint import find_model

    original = find_model("lw-tiny", tiny_models_dir)
    out = tmp_path / "bd"
    train(_config(image_dir, out, steps=2, bd_objective=True), resume=original, log=lambda *a: None)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    ref = ckpt["train_config"]["reference"]
    assert len(ref["bpp"]) == len(ref["mse"]) == 5 and ref["bpp"][0] < ref["bpp"][-1]  # the rates rise
    vals = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    assert all(v["per_quality"]["0.0"]["mse"] > 0 for v in vals)
    assert torch.load(out / "best.pt", weights_only=True)["best_val"] == pytest.approx(min(v["loss"] for v in vals))

    # A new --bd-objective segment keeps the first segment's references, so its best loss stays comparable.
    train(_config(image_dir, out, steps=2, bd_objective=True), resume=out / "last.pt", log=lambda *a: None)
    assert torch.load(out / "last.pt", weights_only=True)["train_config"]["reference"] == ref

    with pytest.raises(ValueError, match="needs --resume"):
        train(_config(image_dir, tmp_path / "none", bd_objective=True), log=lambda *a: None)


@pytest.mark.slow
def test_decoder_only_training_moves_g_s_alone_and_leaves_the_streams_bit_identical(
        image_dir, tiny_models_dir, sample_rgb, tmp_path):
    """--decoder-only: g_s changes, nothing else does, so the exported codec writes the same bytes and
    draws other pixels from them; best.pt is chosen by the mean held-out PSNR."""
    from shared.checkpoint import export_model, find_model
    from shared.codec import Codec

    original = find_model("lw-tiny", tiny_models_dir)
    before = torch.load(original, weights_only=True)["state_dict"]
    out = tmp_path / "dec"
    train(_config(image_dir, out, steps=4, lr=1e-3, decoder_only=True), resume=original, log=lambda *a: None)
    after = torch.load(out / "last.pt", weights_only=True)["state_dict"]

    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved and all(k.startswith("g_s.") for k in moved)
    assert len(moved) >= 6  # the four layers' weights and biases, the inverse GDNs' beta and gamma
    vals = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    assert [v["step"] for v in vals] == [2, 4]
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["best_val"] == pytest.approx(-max(v["psnr"] for v in vals))
    assert best["train_config"]["decoder_only"] is True

    old, new = Codec.load(original), Codec.load(export_model(out / "last.pt", "lw-tiny", tmp_path / "models"))
    for q in (0.0, 0.5, 1.0):
        a, b = old.encode(sample_rgb, quality=q), new.encode(sample_rgb, quality=q)
        assert a.stream.strings == b.stream.strings  # the same code on the wire
        assert np.abs(old.decode(a.data).astype(int) - new.decode(b.data).astype(int)).max() > 0

    # Full training resumed from it starts Adam afresh (its state covers g_s only) and trains all again.
    full = tmp_path / "full"
    train(_config(image_dir, full, steps=2), resume=out / "last.pt", log=lambda *a: None)
    again = torch.load(full / "last.pt", weights_only=True)["state_dict"]
    assert not torch.equal(again["g_a.0.weight"], after["g_a.0.weight"])


@pytest.mark.parametrize("crop", [0, 96, 160])
def test_a_crop_that_is_not_a_multiple_of_64_is_refused_before_training(image_dir, tmp_path, crop):
    with pytest.raises(ValueError, match="multiple of 64"):
        train(_config(image_dir, tmp_path / "run", crop=crop), log=lambda *a: None)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_cli_train_refuses_a_crop_that_is_not_a_multiple_of_64(image_dir, tmp_path, capsys):
    from shared.tools.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", str(image_dir), "--out", str(tmp_path / "run"), "--crop", "160"])
    assert exc.value.code == 2
    assert "160 is not a positive multiple of 64" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(image_dir, tmp_path):
    # --compile swaps only the training forward for torch.compile's: the same model, the same
    # steps and seeds, so its validation losses must match the eager run's up to float reordering.
    from torch._dynamo.utils import counters

    counters.clear()
    runs = {}
    for compiled in (False, True):
        out = tmp_path / f"compile-{compiled}"
        train(_config(image_dir, out, steps=4, compile=compiled), log=lambda *a: None)
        runs[compiled] = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
        assert torch.load(out / "last.pt", weights_only=True)["train_config"]["compile"] is compiled
    assert counters["frames"]["ok"] > 0  # dynamo did compile the forward
    assert [v["step"] for v in runs[True]] == [v["step"] for v in runs[False]] == [2, 4]
    for eager, compiled in zip(runs[False], runs[True]):
        assert np.isfinite(compiled["loss"])
        assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-3)


@pytest.mark.slow
def test_a_compiler_failure_falls_back_to_eager_training(image_dir, tmp_path, monkeypatch):
    def broken_compile(model):
        def fail(*args, **kwargs):
            raise RuntimeError("no compiler for this device")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    lines = []
    train(_config(image_dir, tmp_path / "fallback", steps=2, compile=True), log=lines.append)
    train(_config(image_dir, tmp_path / "eager", steps=2), log=lambda *a: None)

    assert any("torch.compile failed (RuntimeError: no compiler for this device)" in line for line in lines)
    fallback, eager = ((tmp_path / run / "val.jsonl").read_text() for run in ("fallback", "eager"))
    assert [json.loads(v)["loss"] for v in fallback.splitlines()] == [json.loads(v)["loss"] for v in eager.splitlines()]


def test_bench_train_prints_the_step_time_of_the_real_training_step(capsys):
    from shared.tools.cli import main

    assert main(["bench", "train", "--crop", "64", "--batch-size", "2", "--steps", "5", "--no-compile",
                 "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "batch 2 x 64x64, bf16 transforms, device cpu, torch threads 1" in lines[0]
    mode, compile_s, med, p90, per_hour, speed_up = next(line for line in lines if line.startswith("eager")).split()
    assert float(compile_s) == 0.0 and 0 < float(med) <= float(p90)
    assert int(per_hour) == pytest.approx(3600 / float(med), rel=0.01) and speed_up == "1.00x"
    assert not any(line.startswith("compiled") for line in lines)


@pytest.mark.parametrize("args", [["--crop", "100"], ["--steps", "3"]])
def test_bench_train_refuses_bad_arguments(args, capsys):
    from shared.tools.cli import main

    assert main(["bench", "train", *args]) == 2
    assert "--steps must be at least 5 and --crop a multiple of 64" in capsys.readouterr().err


@pytest.mark.slow
def test_synthesis_blocks_grow_the_decoder_of_a_resumed_model_and_the_streams_stay_the_same(
        image_dir, tiny_models_dir, sample_rgb, tmp_path):
    """--decoder-only --synthesis-blocks 1 from a plain model: g_s gains a residual block per stage,
    which trains (it starts as the identity); the encoder side, and so every stream, is unchanged."""
    from shared.checkpoint import export_model, find_model
    from shared.codec import Codec

    original = find_model("lw-tiny", tiny_models_dir)
    before = torch.load(original, weights_only=True)["state_dict"]
    out = tmp_path / "grown"
    train(_config(image_dir, out, steps=4, lr=1e-3, decoder_only=True, synthesis_blocks=1), resume=original,
          log=lambda *a: None)
    ckpt = torch.load(out / "last.pt", weights_only=True)

    assert ckpt["network"]["synthesis_blocks"] == 1
    after = ckpt["state_dict"]
    new = set(after) - set(before)
    assert {k.split(".")[1] for k in new} == {"r1", "r3"} and len(new) == 8  # 2 blocks x 2 convs x (w, b)
    assert float(after["g_s.r1.0.conv2.weight"].abs().max()) > 0  # left the identity
    assert all(k.startswith("g_s.") for k in before if not torch.equal(after[k], before[k]))

    old, grown = Codec.load(original), Codec.load(export_model(out / "last.pt", "lw-tiny", tmp_path / "models"))
    assert grown.model.config.synthesis_blocks == 1
    for q in (0.0, 1.0):
        a, b = old.encode(sample_rgb, quality=q), grown.encode(sample_rgb, quality=q)
        assert a.stream.strings == b.stream.strings
        assert grown.decode(b.data).shape == sample_rgb.shape

    # Resuming keeps the grown shape (and Adam's state, which fits it); shrinking is refused.
    train(_config(image_dir, tmp_path / "more", steps=2, decoder_only=True), resume=out / "last.pt",
          log=lambda *a: None)
    assert torch.load(tmp_path / "more" / "last.pt", weights_only=True)["network"]["synthesis_blocks"] == 1
    with pytest.raises(ValueError, match="must be larger"):
        train(_config(image_dir, tmp_path / "shrink", decoder_only=True, synthesis_blocks=0),
              resume=out / "last.pt", log=lambda *a: None)
    with pytest.raises(ValueError, match="0 or more"):
        train(_config(image_dir, tmp_path / "negative", synthesis_blocks=-1), log=lambda *a: None)
    assert not (tmp_path / "negative").exists()


def test_the_weight_average_moves_by_its_decay_and_swaps_in_and_back():
    from shared.tools.train import WeightAverage

    layer = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(layer.weight, 1.0)
    torch.nn.init.constant_(layer.bias, 0.0)
    average = WeightAverage(layer, 0.75)
    with torch.no_grad():
        layer.weight.fill_(5.0)
        layer.bias.fill_(-4.0)
    average.update()
    assert torch.allclose(average.shadow[average.names.index("weight")], torch.full((2, 3), 2.0))  # 0.75·1 + 0.25·5
    assert torch.allclose(average.shadow[average.names.index("bias")], torch.full((2,), -1.0))
    with average.applied():
        assert torch.allclose(layer.weight, torch.full((2, 3), 2.0))
    assert torch.allclose(layer.weight, torch.full((2, 3), 5.0)) and torch.allclose(layer.bias, torch.full((2,), -4.0))
    assert average.restore({"weight": torch.zeros(2, 3), "bias": torch.ones(2)})
    assert not average.restore({"weight": torch.zeros(2, 3)})  # another parameter set: left as it was
    assert torch.equal(average.shadow[average.names.index("bias")], torch.ones(2))
    for decay in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="decay"):
            WeightAverage(layer, decay)


def test_with_a_weight_average_best_pt_keeps_the_average_and_last_pt_both(image_dir, tiny_models_dir, tmp_path):
    """--ema: the held-out figures and best.pt are the average's; last.pt has the raw weights (to go
    on from) and the average, which an interrupted segment continues."""
    from shared.checkpoint import find_model

    original = find_model("lw-tiny", tiny_models_dir)
    start = torch.load(original, weights_only=True)["state_dict"]
    out = tmp_path / "avg"
    train(_config(image_dir, out, steps=2, lr=1e-2, decoder_only=True, ema_decay=0.5), resume=original,
          log=lambda *a: None)
    last = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    average = last["weight_average"]
    assert average and all(k.startswith("g_s.") for k in average)  # only what trains is averaged
    assert "weight_average" not in best
    key = "g_s.0.weight" if "g_s.0.weight" in average else sorted(average)[0]
    assert torch.equal(best["state_dict"][key], average[key])  # one validation, at the end: the average kept
    raw, first = last["state_dict"][key], start[key].float()
    assert not torch.equal(raw, average[key])
    # decay 0.5 over two steps: the average lies strictly between the start and the raw weights
    assert 0 < (average[key] - first).norm() < (raw - first).norm()
    g_a = best["state_dict"]["g_a.0.weight"]
    assert torch.equal(g_a, start["g_a.0.weight"].to(g_a.dtype))  # what does not train is not averaged
