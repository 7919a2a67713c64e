"""Fixtures for the codec's unit tests (tests/unit): streams from the tiny model, two more tiny
models that must be refused (another name; same name, other weights), the shipped model for the
few checks that need trained weights, and a guard that restores torch's thread count."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from shared.clean_first import FITTED_RULE, CleanFirst
from shared.codec import Codec
from shared.tools import SAMPLES
from tests.conftest import make_tiny_model_file

# Half-size Kodak image (384x256): the smallest natural image the shipped model is checked on.
KODIM = SAMPLES / "kodim23_half.png"
OTHER_TINY_MODEL = "lw-tiny-other"
ALWAYS = replace(FITTED_RULE, quality_at_ref=2.0, per_grey_level=0.0)  # clean first: every quality codes the reconstruction


def with_rule(codec: Codec, rule: CleanFirst | None) -> Codec:
    """``codec``'s model and weights under another clean-first rule (None: none)."""
    return Codec(codec.model, codec.name, codec.weights, clean_first=rule)


@pytest.fixture(scope="session")
def tiny_stream(tiny_codec, sample_rgb):
    """The 97x71 crop coded at quality 0.5 by the tiny model (about 200 bytes)."""
    return tiny_codec.encode(sample_rgb, quality=0.5)


@pytest.fixture(scope="session")
def other_tiny_codec(tmp_path_factory):
    """A tiny model with another name and other weights (seed 1)."""
    from shared.codec import Codec

    models_dir = tmp_path_factory.mktemp("other-models")
    make_tiny_model_file(models_dir, name=OTHER_TINY_MODEL, seed=1)
    return Codec.load(OTHER_TINY_MODEL, models_dir)


@pytest.fixture(scope="session")
def retrained_tiny_codec(tmp_path_factory, tiny_codec):
    """The tiny model's name with other weights (seed 1): what a retrained checkpoint looks like."""
    from shared.codec import Codec

    models_dir = tmp_path_factory.mktemp("retrained-models")
    make_tiny_model_file(models_dir, name=tiny_codec.name, seed=1)
    return Codec.load(tiny_codec.name, models_dir)


@pytest.fixture(scope="session")
def shipped_codec():
    """The checkpoint in models/. Its weights change when it is retrained: pin no bytes or hash."""
    from shared.codec import Codec

    return Codec.load()


@pytest.fixture(scope="session")
def kodim_rgb() -> np.ndarray:
    from shared.images import load_image

    return load_image(KODIM).rgb  # (256, 384, 3)


@pytest.fixture(scope="session")
def kodim_crop(kodim_rgb) -> np.ndarray:
    """A 128x192 crop: big enough that convolutions split work across threads, small enough for CPU."""
    return np.ascontiguousarray(kodim_rgb[64:192, 96:288])


@pytest.fixture
def restore_threads():
    """Tests that change torch's thread count get it back afterwards."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)
