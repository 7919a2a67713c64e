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
