"""Golden stream: pins the .lw format and the coder end to end.

tests/data/golden.lw is the tiny model (tests/conftest.py, seed 0) coding tests/data/crop_97x71.png
at quality 0.5; tests/data/golden.png is what it decodes to. Any change to the container, the
entropy coder, the rate path or the synthesis shows up here as changed bytes or pixels.

If such a change is intended, regenerate both files and commit them:

    LATENTWIRE_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_golden.py

Regenerating writes the files and then fails, so it can never happen silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from shared import bitstream as bs
from shared.images import encode_png, load_image

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN_LW = DATA / "golden.lw"
GOLDEN_PNG = DATA / "golden.png"
QUALITY = 0.5
REGEN_HINT = "regenerate with LATENTWIRE_REGEN_GOLDEN=1 (see tests/unit/test_golden.py) and commit both files"


@pytest.fixture(scope="module")
def golden(tiny_codec, sample_rgb) -> tuple[bytes, np.ndarray]:
    """(golden.lw bytes, golden.png pixels); writes them first when regeneration is asked for."""
    if os.environ.get("LATENTWIRE_REGEN_GOLDEN") == "1":
        data = tiny_codec.encode(sample_rgb, quality=QUALITY).data
        GOLDEN_LW.write_bytes(data)
        GOLDEN_PNG.write_bytes(encode_png(tiny_codec.decode(data)))
        pytest.fail(f"wrote {GOLDEN_LW} ({len(data)} bytes) and {GOLDEN_PNG}: review and commit them, "
                    "then run the tests again without LATENTWIRE_REGEN_GOLDEN")
    if not (GOLDEN_LW.is_file() and GOLDEN_PNG.is_file()):
        pytest.fail(f"{GOLDEN_LW.name} or {GOLDEN_PNG.name} is missing: {REGEN_HINT}")
    return GOLDEN_LW.read_bytes(), load_image(GOLDEN_PNG).rgb


def test_golden_stream_was_made_by_the_tiny_model(golden, tiny_codec):
    stream = bs.loads(golden[0])

    assert (stream.model, stream.weights) == (tiny_codec.name, tiny_codec.weights), (
        "the tiny test model's weights changed (torch's RNG or the network): " + REGEN_HINT
    )
    assert (stream.height, stream.width, stream.quality) == (71, 97, QUALITY)


def test_encoding_reproduces_golden_lw_byte_for_byte(golden, tiny_codec, sample_rgb):
    data = tiny_codec.encode(sample_rgb, quality=QUALITY).data

    assert len(data) == len(golden[0])
    assert data == golden[0], f"the encoder's output changed: if intended, {REGEN_HINT}"


def test_decoding_golden_lw_reproduces_golden_png(golden, tiny_codec):
    rgb_hat = tiny_codec.decode(golden[0])

    assert rgb_hat.shape == golden[1].shape == (71, 97, 3)
    mismatched = int(np.count_nonzero(rgb_hat != golden[1]))
    assert mismatched == 0, f"{mismatched} decoded values changed: if intended, {REGEN_HINT}"
