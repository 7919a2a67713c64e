"""``latentwire train-entropy``: the context model trained on cached latents of a frozen g_a."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared import bitstream as bs
from shared.tools import SAMPLES
from shared.tools.entropy_training import EntropyTrainConfig, train_entropy


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models_dir):
    from tests.conftest import TINY_MODEL

    out = tmp_path_factory.mktemp("ctx-run")
    (model_file,) = [p for p in tiny_models_dir.glob(f"{TINY_MODEL}-*.pt") if len(p.stem) == len(TINY_MODEL) + 9]
    cfg = EntropyTrainConfig(model=str(model_file), data=str(SAMPLES), out=str(out / "run"),
                             cache=str(out / "latents.pt"), context_groups=(8, 8, 8), context_width=8,
                             steps=6, batch_size=2, latent_crop=8, val_every=3, warmup_steps=2)
    lines: list[str] = []
    best = train_entropy(cfg, log=lines.append)
    return cfg, best, lines


def test_a_run_caches_latents_validates_and_saves(run):
    cfg, best, lines = run
    cache = torch.load(cfg.cache, weights_only=True)
    val_cache = torch.load(Path(cfg.cache).with_name("latents-val.pt"), weights_only=True)

    # 5 samples: the first held out, 4 trained on, each with its mirror image.
    assert len(cache["latents"]) == 8 and len(val_cache["latents"]) == 1
    assert cache["latents"][0].shape == (24, 16, 24)  # M x 256/16 x 384/16
    assert best.is_file() and (best.parent / "last.pt").is_file()
    checks = [line for line in lines if line.startswith("step ")]
    assert [c.split()[1] for c in checks] == ["3/6", "6/6"]
    assert all("held-out bits vs start" in c for c in checks)


def test_a_second_run_reuses_the_cache_and_resumes(run, tmp_path):
    cfg, best, _ = run
    lines: list[str] = []
    longer = EntropyTrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "more"), "steps": 6})

    train_entropy(longer, resume=best.parent / "last.pt", log=lines.append)

    assert not any(line.startswith("cache:") for line in lines)  # the latents were not recomputed
    assert not any(line.startswith("step ") for line in lines)  # last.pt had finished its 6 steps


def test_the_trained_checkpoint_exports_to_a_version_4_codec(run, tmp_path, sample_rgb):
    from shared.checkpoint import export_model
    from shared.codec import Codec

    _, best, _ = run
    path = export_model(best, "lw-tiny-ctx-trained", tmp_path)
    codec = Codec.load("lw-tiny-ctx-trained", tmp_path)

    enc = codec.encode(sample_rgb, quality=0.5)
    assert path.stem.startswith("lw-tiny-ctx-trained-")
    assert codec.model.config.context_groups == (8, 8, 8)
    assert enc.stream.version == bs.CONTEXT_VERSION
    assert codec.decode(enc.data).shape == (71, 97, 3)


def test_groups_that_do_not_cover_the_latent_are_refused(run, tmp_path):
    cfg = EntropyTrainConfig(model=run[0].model, data=str(SAMPLES), out=str(tmp_path), context_groups=(8, 8))
    with pytest.raises(ValueError, match="sum to M = 24"):
        train_entropy(cfg, log=lambda _: None)


def test_noisy_views_are_whole_grey_levels_seeded_by_their_key():
    from shared.tools.entropy_training import noisy_view

    x = torch.full((1, 3, 32, 32), 0.5)
    a, again, other = noisy_view(x, 50.0, "a.png/0"), noisy_view(x, 50.0, "a.png/0"), noisy_view(x, 50.0, "a.png/1")

    assert torch.equal(a, again) and not torch.equal(a, other)
    levels = a * 255
    assert torch.equal(levels, levels.round()) and float(levels.min()) >= 0 and float(levels.max()) <= 255
    spread = [float((v * 255 - 127.5).std()) for v in (a, other)]
    assert all(0 < s < 52 for s in spread)  # sigma <= 50, plus the rounding
    assert torch.equal(noisy_view(x, 0.0, "a.png/0"), (x * 255).round() / 255)


def test_a_denoising_model_trains_on_latents_of_noisy_inputs(tiny_models_dir, tmp_path):
    from shared.checkpoint import export_model, load_model
    from shared.tools.train import list_images, load_rgb, split_holdout
    from tests.conftest import TINY_DENOISE_MODEL

    (model_file,) = [p for p in tiny_models_dir.glob(f"{TINY_DENOISE_MODEL}-*.pt")]
    cfg = EntropyTrainConfig(model=str(model_file), data=str(SAMPLES), out=str(tmp_path / "run"),
                             cache=str(tmp_path / "latents.pt"), context_groups=(8, 8, 8), context_width=8,
                             steps=2, batch_size=2, latent_crop=8, val_every=2, warmup_steps=1)
    lines: list[str] = []
    best = train_entropy(cfg, log=lines.append)

    cache = torch.load(cfg.cache, weights_only=True)
    assert cache["noise_sigma_max"] == 50.0  # the model's own training noise
    assert "noisy inputs: sigma ~ U[0, 50] per cached view" in lines
    model, meta = load_model(model_file)
    first = split_holdout(list_images(SAMPLES))[0][0]
    x = load_rgb(first)[None].float() / 255.0
    with torch.inference_mode():
        clean = model.g_a(x[..., : x.shape[-2] // 64 * 64, : x.shape[-1] // 64 * 64])[0]
    assert cache["latents"][0].shape == clean.shape
    assert float((cache["latents"][0].float() - clean).abs().mean()) > 1e-3  # not the clean image's latent

    exported = export_model(best, "lw-tiny-denoise-ctx", tmp_path)
    _, new_meta = load_model(exported)
    assert new_meta["clean_first"] == meta["clean_first"]
    assert new_meta["train_config"]["noise_sigma_max"] == 50.0
    assert new_meta["train_config"]["entropy"]["noise_sigma_max"] == 50.0


def test_a_cache_of_other_noise_is_rebuilt(run, tmp_path):
    import shutil

    cfg, _, _ = run
    cache = tmp_path / "latents.pt"
    shutil.copy(cfg.cache, cache)  # the clean run's cache (the other tests read the original)
    lines: list[str] = []
    noisy = EntropyTrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "noisy"), "cache": str(cache), "steps": 1,
                                  "val_every": 1, "noise_sigma_max": 15.0})
    train_entropy(noisy, log=lines.append)

    assert any(line.startswith("cache:") for line in lines)
    assert torch.load(cache, weights_only=True)["noise_sigma_max"] == 15.0
