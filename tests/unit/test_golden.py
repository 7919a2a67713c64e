"""Golden streams: pin both .lw layouts and the coder end to end.

tests/data/golden-v2.lw is the tiny model (tests/conftest.py, seed 0) coding
tests/data/crop_97x71.png at quality 0.7 in the current container (format version 2; 0.7 is not
a float32, so the file also pins that the encoder codes with the float32 it stores);
tests/data/golden-v2.png is what it decodes to. tests/data/golden.lw is the same crop at quality
0.5 in format version 1, as the encoder wrote it before version 2, with tests/data/golden.png:
it must keep decoding to those pixels. tests/data/golden-v3.lw is the same crop coded at half its
size (36x48, ``scale=0.5``) at quality 0.7, a format version 3 stream, with the 71x97 pixels it
decodes to (synthesis at 36x48, then Lanczos) in tests/data/golden-v3.png.
tests/data/golden-v4.lw is the same crop at quality 0.7 coded by the tiny context model
(``lw-tiny-context``: the tiny network with a context model, tests/conftest.py), a format
version 4 stream (y and z in two rANS strings, as that model's encoder wrote it until version 5),
with its pixels in tests/data/golden-v4.png. tests/data/golden-v5.lw is the same code in format
version 5 (z and y in one rANS string in a shorter container, as that encoder wrote it until
version 6), decoding to the same pixels (tests/data/golden-v5.png). tests/data/golden-v6.lw is
version 5's fields without the model's name, the same pixels (tests/data/golden-v6.png). Past 5 x 7
of the crop's 8 x 8 latent positions is padding, whose elements the encoder sets to their means:
versions 4 to 6 code them as zeros. tests/data/golden-v7.lw is what the tiny context model's
encoder writes now: version 6's container, the padding left out of the string, the same pixels
(tests/data/golden-v7.png). Any change to a container, the entropy coder, the rate path or the
synthesis shows up here as changed bytes or pixels.

The files are made and checked in float32 (``precision="fp32"``), the arithmetic every CPU has;
the bf16 path that ``precision="auto"`` picks on CPUs with native bf16 must stay within a grey
level of them.

If such a change is intended, regenerate the fourteen files and commit them:

    LATENTWIRE_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_golden.py

The version 1 file is rewritten by the version 1 writer that ``Bitstream.to_bytes`` keeps for
parsed version 1 streams (byte-identical to the old encoder's output: see
``test_the_version_1_writer_reproduces_golden_lw``). Regenerating writes the files and then
fails, so it can never happen silently.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from shared import bitstream as bs
from shared.images import encode_png, load_image

DATA = Path(__file__).resolve().parents[1] / "data"
# version -> (stream file, decoded pixels, quality asked of the encoder)
GOLDEN = {
    1: (DATA / "golden.lw", DATA / "golden.png", 0.5),
    2: (DATA / "golden-v2.lw", DATA / "golden-v2.png", 0.7),
    3: (DATA / "golden-v3.lw", DATA / "golden-v3.png", 0.7),
    4: (DATA / "golden-v4.lw", DATA / "golden-v4.png", 0.7),
    5: (DATA / "golden-v5.lw", DATA / "golden-v5.png", 0.7),
    6: (DATA / "golden-v6.lw", DATA / "golden-v6.png", 0.7),
    7: (DATA / "golden-v7.lw", DATA / "golden-v7.png", 0.7),
}
VERSIONS = sorted(GOLDEN)
GOLDEN_V3_SCALE = 0.5
REGEN_HINT = "regenerate with LATENTWIRE_REGEN_GOLDEN=1 (see tests/unit/test_golden.py) and commit the files"


def _model(version: int) -> str:
    """The tiny model that made a golden version: the context model's for versions 4 to 7."""
    from tests.conftest import TINY_CONTEXT_MODEL, TINY_MODEL

    return TINY_CONTEXT_MODEL if version in bs.CONTEXT_VERSIONS else TINY_MODEL


def _fp32(tiny_models_dir, version: int):
    from shared.codec import Codec

    return Codec.load(_model(version), tiny_models_dir, precision="fp32")


@pytest.fixture(scope="module")
def fp32_codec(tiny_models_dir):
    return _fp32(tiny_models_dir, 2)


@pytest.fixture(scope="module")
def fp32_context_codec(tiny_models_dir):
    return _fp32(tiny_models_dir, bs.CONTEXT_VERSION)


def _encode_as(tiny_codec, sample_rgb, version: int) -> bytes:
    if version == bs.CONTEXT_VERSION:  # the context model writes version 7 by itself
        return tiny_codec.encode(sample_rgb, quality=GOLDEN[version][2]).data
    if version in (5, 6):  # the padding's zeros coded, as those versions' encoders did
        from tests.conftest import joint_stream

        return joint_stream(tiny_codec, sample_rgb, GOLDEN[version][2], version).to_bytes()
    if version == 4:  # y and z coded apart (compress_latents), as the version 4 encoder did
        return _version_4(tiny_codec, sample_rgb, GOLDEN[4][2]).to_bytes()
    if version == 3:
        return tiny_codec.encode(sample_rgb, quality=GOLDEN[3][2], scale=GOLDEN_V3_SCALE).data
    stream = tiny_codec.encode(sample_rgb, quality=GOLDEN[version][2]).stream
    return dataclasses.replace(stream, version=version).to_bytes()


def _version_4(codec, rgb: np.ndarray, quality: float) -> bs.Bitstream:
    import torch

    from shared.network import latent_extent

    with torch.inference_mode():
        y, z = codec._analysis(rgb)
        out = codec.model.compress_latents(y, z, bs.coded_quality(quality), latent_extent(*rgb.shape[:2]))
    return bs.Bitstream(model=codec.name, weights=codec.weights, height=rgb.shape[0], width=rgb.shape[1],
                        quality=bs.coded_quality(quality), y_shape=tuple(y.shape[1:]), z_shape=tuple(z.shape[1:]),
                        strings=(out["strings"][0][0], out["strings"][1][0]), version=4)


@pytest.fixture(scope="module")
def golden(tiny_models_dir, sample_rgb) -> dict[int, tuple[bytes, np.ndarray]]:
    """version -> (.lw bytes, decoded pixels); writes the files first when regeneration is asked for."""
    if os.environ.get("LATENTWIRE_REGEN_GOLDEN") == "1":
        written = []
        for version, (lw, png, _) in GOLDEN.items():
            codec = _fp32(tiny_models_dir, version)
            data = _encode_as(codec, sample_rgb, version)
            lw.write_bytes(data)
            png.write_bytes(encode_png(codec.decode(data)))
            written += [f"{lw.name} ({len(data)} bytes)", png.name]
        pytest.fail(f"wrote {', '.join(written)} in {DATA}: review and commit them, "
                    "then run the tests again without LATENTWIRE_REGEN_GOLDEN")
    missing = [p.name for lw, png, _ in GOLDEN.values() for p in (lw, png) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: {REGEN_HINT}")
    return {v: (lw.read_bytes(), load_image(png).rgb) for v, (lw, png, _) in GOLDEN.items()}


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_stream_was_made_by_the_tiny_model(golden, tiny_models_dir, version):
    stream = bs.loads(golden[version][0])
    codec = _fp32(tiny_models_dir, version)

    name = "" if version in bs.UNNAMED_VERSIONS else codec.name
    assert (stream.model, stream.weights) == (name, codec.weights), (
        "the tiny test model's weights changed (torch's RNG or the network): " + REGEN_HINT
    )
    assert stream.version == version
    assert (stream.height, stream.width) == (71, 97)
    assert stream.coded_size == ((36, 48) if version == 3 else None)
    assert stream.quality == bs.coded_quality(GOLDEN[version][2])


def test_encoding_reproduces_golden_v2_byte_for_byte(golden, fp32_codec, sample_rgb):
    data = fp32_codec.encode(sample_rgb, quality=GOLDEN[2][2]).data

    assert len(data) == len(golden[2][0])
    assert data == golden[2][0], f"the encoder's output changed: if intended, {REGEN_HINT}"


def test_context_model_encoding_reproduces_golden_v7_byte_for_byte(golden, fp32_context_codec, sample_rgb):
    data = fp32_context_codec.encode(sample_rgb, quality=GOLDEN[7][2]).data

    assert data.startswith(b"\x98\xc4\x04LWIC\x07")  # an array of 8 fields
    assert data == golden[7][0], f"the encoder's output changed: if intended, {REGEN_HINT}"
    for version in (5, 6):  # the older layouts, still written
        assert _encode_as(fp32_context_codec, sample_rgb, version) == golden[version][0]


def test_version_7_is_version_6_without_the_paddings_zeros(golden):
    v6, v7 = bs.loads(golden[6][0]), bs.loads(golden[7][0])

    assert (v7.weights, v7.quality, v7.model) == (v6.weights, v6.quality, v6.model)
    assert np.array_equal(golden[6][1], golden[7][1])  # the same pixels
    assert len(golden[6][0]) - len(golden[7][0]) == v6.payload_bytes - v7.payload_bytes > 0


def test_version_6_is_version_5_without_the_models_name(golden, fp32_context_codec):
    v5, v6 = bs.loads(golden[5][0]), bs.loads(golden[6][0])

    assert v6.strings == v5.strings and v6.quality == v5.quality and v6.weights == v5.weights
    assert np.array_equal(golden[5][1], golden[6][1])  # the same pixels
    name = fp32_context_codec.name
    assert len(golden[5][0]) - len(golden[6][0]) == 1 + len(name)  # a msgpack fixstr: one byte + the name


def test_version_5_is_version_4s_code_in_fewer_bytes(golden, fp32_context_codec, sample_rgb):
    v4, v5 = golden[4][0], golden[5][0]

    assert _version_4(fp32_context_codec, sample_rgb, GOLDEN[4][2]).to_bytes() == v4  # the old layout, still written
    assert np.array_equal(golden[4][1], golden[5][1])  # the same pixels
    # One CRC (5 bytes) and one coder state (8) fewer, besides the shapes and a string's padding.
    assert len(v4) - len(v5) >= 5 + 8
    assert bs.loads(v5).payload_bytes < bs.loads(v4).payload_bytes


def test_encoding_at_half_size_reproduces_golden_v3_byte_for_byte(golden, fp32_codec, sample_rgb):
    data = fp32_codec.encode(sample_rgb, quality=GOLDEN[3][2], scale=GOLDEN_V3_SCALE).data

    assert data == golden[3][0], f"the encoder's output changed: if intended, {REGEN_HINT}"


@pytest.mark.parametrize("version", VERSIONS)
def test_decoding_golden_reproduces_its_png(golden, tiny_models_dir, version):
    data, pixels = golden[version]

    rgb_hat = _fp32(tiny_models_dir, version).decode(data)

    assert rgb_hat.shape == pixels.shape == (71, 97, 3)
    mismatched = int(np.count_nonzero(rgb_hat != pixels))
    assert mismatched == 0, f"{mismatched} decoded values changed: if intended, {REGEN_HINT}"


@pytest.mark.parametrize("version", VERSIONS)
def test_bf16_decoding_of_golden_stays_within_a_grey_level(golden, tiny_models_dir, version):
    from shared.codec import Codec

    data, pixels = golden[version]
    bf16 = Codec.load(_model(version), tiny_models_dir, precision="bf16")

    rgb_hat = bf16.decode(data)

    diff = np.abs(rgb_hat.astype(np.int16) - pixels.astype(np.int16))
    assert rgb_hat.shape == (71, 97, 3)
    # Version 3's Lanczos resize can turn a grey level at 36x48 into two (its kernel overshoots).
    assert int(diff.max()) <= (2 if version == 3 else 1)
    # measured: 209 of 20661 values (1.0 %) in versions 1 and 2, 352 (1.7 %) in version 3
    assert np.count_nonzero(diff) / diff.size < 0.03


def test_golden_v1_survives_loads_and_to_bytes_byte_for_byte(golden):
    # What a sender does when it forwards a version 1 stream from an old outbox.
    assert bs.loads(golden[1][0]).to_bytes() == golden[1][0]


def test_the_version_1_writer_reproduces_golden_lw(golden, fp32_codec, sample_rgb):
    # Quality 0.5 is a float32, so the version 2 encoder codes exactly what the version 1 one
    # did; only the container differs.
    v1 = bs.loads(golden[1][0])

    assert fp32_codec.encode(sample_rgb, quality=0.5).stream.strings == v1.strings
    assert _encode_as(fp32_codec, sample_rgb, 1) == golden[1][0]
