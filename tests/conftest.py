"""Shared fixtures. Tiers are marked by folder: tests/unit -> unit, tests/service -> service,
tests/e2e -> e2e, tests/cluster -> cluster. ``tiny_models_dir`` holds a randomly initialised small model exported exactly
like a shipped one, so every code path (hashing, tables, container) is the real one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
TINY_MODEL = "lw-tiny"
TINY_DENOISE_MODEL = "lw-tiny-denoise"  # another seed: stands in for a denoising checkpoint
TINY_NETWORK = {"N": 16, "M": 24, "levels": 4, "lmbda_min": 0.001, "lmbda_max": 0.1}
TINY_CONTEXT_MODEL = "lw-tiny-context"  # the tiny network with a context model (shared/context.py)
TINY_CONTEXT = {"context_groups": (4, 4, 8, 8), "context_width": 16}


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in ("unit", "service", "e2e", "cluster"):
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


def tiny_context_model(seed: int = 2):
    """The tiny network with a context model whose last layers are random rather than zero, so
    the context really changes each step's tables (a zero head codes as the hyperprior alone)."""
    from shared.network import NetworkConfig, VariableRateHyperprior

    torch.manual_seed(seed)
    model = VariableRateHyperprior(NetworkConfig(**TINY_NETWORK, **TINY_CONTEXT))
    for step in model.context.steps:
        torch.nn.init.normal_(step.head.weight, std=0.5)
        torch.nn.init.normal_(step.head.bias, std=0.5)
    return model


def make_tiny_model_file(models_dir: Path, name: str = TINY_MODEL, seed: int = 0, model=None,
                         train_config: dict | None = None) -> Path:
    """Export a seeded random tiny model (or ``model``) into ``models_dir`` (deterministic: same
    seed, same hash). ``train_config``: what the file says it was trained with."""
    from shared.checkpoint import export_model
    from shared.network import NetworkConfig, VariableRateHyperprior

    if model is None:
        torch.manual_seed(seed)
        model = VariableRateHyperprior(NetworkConfig(**TINY_NETWORK))
    src = models_dir / f"{name}-train.ckpt"
    torch.save({"network": model.config.to_dict(), "state_dict": model.state_dict(),
                "train_config": train_config or {"note": "random init, for tests"}}, src)
    path = export_model(src, name, models_dir)
    src.unlink()
    return path


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    make_tiny_model_file(d)
    # Says it was trained on noisy inputs, so export gives it the clean-first rule and it codes the
    # way denoising models do (shared/clean_first.py): random weights reconstruct far from the
    # upload, so always its reconstruction.
    make_tiny_model_file(d, TINY_DENOISE_MODEL, seed=1,
                         train_config={"note": "random init, for tests", "noise_sigma_max": 50.0})
    make_tiny_model_file(d, TINY_CONTEXT_MODEL, model=tiny_context_model())
    return d


@pytest.fixture(scope="session")
def tiny_codec(tiny_models_dir):
    from shared.codec import Codec

    return Codec.load(TINY_MODEL, tiny_models_dir)


@pytest.fixture(scope="session")
def tiny_context_codec(tiny_models_dir):
    from shared.codec import Codec

    return Codec.load(TINY_CONTEXT_MODEL, tiny_models_dir)


@pytest.fixture(scope="session")
def sample_rgb():
    from shared.images import load_image

    return load_image(DATA / "crop_97x71.png").rgb


@pytest.fixture(scope="session")
def tiny_refined_codec(tmp_path_factory):
    """The tiny model grown to one residual refinement block per g_s stage, with those blocks
    randomised (a freshly grown block is the identity and would test nothing)."""
    from shared.codec import Codec
    from shared.network import NetworkConfig, VariableRateHyperprior, grow_synthesis

    torch.manual_seed(2)
    model = grow_synthesis(VariableRateHyperprior(NetworkConfig(**TINY_NETWORK)), 1)
    with torch.no_grad():
        for name, p in model.g_s.named_parameters():
            if name.startswith(("r1.", "r3.")) and ".conv2." in name:
                p.normal_(0, 0.05)
    d = tmp_path_factory.mktemp("refined-models")
    return Codec.load(make_tiny_model_file(d, "lw-tiny-refined", model=model))


def joint_stream(codec, rgb, quality: float, version: int):
    """``rgb`` coded by a context model's codec in format version 5's, 6's or 7's layout (a
    ``Bitstream``): versions 5 and 6 code the padding's elements as zeros, as their encoders did;
    version 7 leaves them out, as the codec writes it."""
    from shared import bitstream as bs
    from shared.network import latent_extent

    q = bs.coded_quality(quality)
    with torch.inference_mode():
        y, z = codec._analysis(rgb)
        strings = codec.model.compress_joint(y, z, q, latent_extent(*rgb.shape[:2]), omit_past=version == 7)
    return bs.Bitstream(model=codec.name if version == 5 else "", weights=codec.weights, height=rgb.shape[0],
                        width=rgb.shape[1], quality=q, y_shape=(None, *y.shape[2:]), z_shape=(None, *z.shape[2:]),
                        strings=(strings[0],), version=version)
