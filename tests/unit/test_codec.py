"""Codec round trips with the tiny model: output sizes, the .lw container's header, input checks."""

from __future__ import annotations

import math
import re
import zlib

import msgpack
import numpy as np
import pytest
import torch

from shared import bitstream as bs
from shared.codec import Codec
from shared.errors import ImageTooLarge
from shared.network import latent_extent

# Begins every stream: msgpack array of 13 items, 4-byte bin "LWIC", version 2.
CONTAINER_PREFIX = b"\x9d\xc4\x04LWIC\x02"
TINY_M, TINY_N = 24, 16  # latent channels of tests/conftest.py's TINY_NETWORK


def _noise(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(height * 1000 + width)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _padded(side: int) -> int:
    return -(-side // 64) * 64


@pytest.mark.parametrize(
    ("height", "width"),
    [(1, 1), (1, 7), (7, 1), (63, 65), (64, 64), (130, 257)],
)
def test_round_trip_returns_the_input_size(tiny_codec, height, width):
    rgb = _noise(height, width)

    enc = tiny_codec.encode(rgb, quality=0.5)
    rgb_hat = tiny_codec.decode(enc.data)

    assert rgb_hat.shape == (height, width, 3)
    assert rgb_hat.dtype == np.uint8
    assert enc.data.startswith(CONTAINER_PREFIX)
    assert (enc.stream.height, enc.stream.width) == (height, width)
    assert enc.stream.y_shape == (TINY_M, _padded(height) // 16, _padded(width) // 16)
    assert enc.stream.z_shape == (TINY_N, _padded(height) // 64, _padded(width) // 64)


def test_round_trip_of_the_97x71_crop(tiny_codec, sample_rgb):
    assert sample_rgb.shape == (71, 97, 3)

    rgb_hat = tiny_codec.decode(tiny_codec.encode(sample_rgb, quality=0.5).data)

    assert rgb_hat.shape == (71, 97, 3)
    assert rgb_hat.dtype == np.uint8


def test_container_header_fields(tiny_codec, tiny_models_dir, tiny_stream):
    stream = bs.loads(tiny_stream.data)
    # lw-tiny-<hash8>.pt (the folder also holds lw-tiny-denoise-<hash8>.pt)
    (model_file,) = (p for p in tiny_models_dir.glob(f"{tiny_codec.name}-*.pt")
                     if re.fullmatch(rf"{tiny_codec.name}-[0-9a-f]{{8}}", p.stem))

    assert tiny_stream.data.startswith(CONTAINER_PREFIX)
    assert stream.model == "lw-tiny"
    assert re.fullmatch(r"[0-9a-f]{16}", stream.weights)
    assert stream.weights == tiny_codec.weights
    assert model_file.stem == f"lw-tiny-{stream.weights[:8]}"
    assert (stream.height, stream.width) == (71, 97)
    assert stream.quality == 0.5
    assert stream.y_shape == (TINY_M, 8, 8)  # 71x97 pads to 128x128
    assert stream.z_shape == (TINY_N, 2, 2)
    assert stream == tiny_stream.stream


def test_container_is_one_msgpack_array_in_documented_order(tiny_codec, tiny_stream):
    obj = msgpack.unpackb(tiny_stream.data, raw=False)
    y, z = tiny_stream.stream.strings

    assert obj == [b"LWIC", 2, "lw-tiny", bytes.fromhex(tiny_codec.weights), 71, 97, 0.5,
                   [TINY_M, 8, 8], [TINY_N, 2, 2], y, z, zlib.crc32(y), zlib.crc32(z)]
    assert len(bs.FIELDS_V2) == len(obj)
    assert tiny_stream.stream.payload_bytes == len(y) + len(z)


def test_container_header_is_compact(tiny_stream):
    # 55 bytes for the 7-character model name; the shipped model's 16-character name adds 9.
    header = tiny_stream.nbytes - tiny_stream.stream.payload_bytes

    assert header == 55


def test_quality_is_stored_as_float32_and_coded_with_the_stored_value(tiny_codec, sample_rgb):
    enc = tiny_codec.encode(sample_rgb, quality=0.7)
    stored = bs.loads(enc.data).quality

    assert enc.quality == 0.7  # what was asked for
    assert stored == enc.stream.quality == float(np.float32(0.7)) != 0.7
    assert b"\xca" + np.float32(0.7).tobytes()[::-1] in enc.data  # msgpack float32, big-endian
    with torch.inference_mode():
        y, z = tiny_codec._analysis(sample_rgb)
        out = tiny_codec.model.compress_latents(y, z, stored, latent_extent(71, 97))
    assert (out["strings"][0][0], out["strings"][1][0]) == enc.stream.strings


def test_encoded_reports_its_size_and_bits_per_pixel(tiny_stream):
    assert tiny_stream.nbytes == len(tiny_stream.data)
    assert tiny_stream.bpp == pytest.approx(len(tiny_stream.data) * 8 / (71 * 97))


def test_stream_survives_to_bytes_and_loads_unchanged(tiny_stream):
    assert bs.loads(tiny_stream.stream.to_bytes()).to_bytes() == tiny_stream.data


def test_batch_encoding_matches_one_by_one(tiny_codec, sample_rgb, kodim_crop):
    images = [sample_rgb, kodim_crop, np.ascontiguousarray(sample_rgb[::-1]), _noise(1, 7)]

    batch = tiny_codec.encode_batch(images, quality=0.5)

    assert [e.data for e in batch] == [tiny_codec.encode(im, quality=0.5).data for im in images]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8, 3), dtype=np.float32),
        np.zeros((8, 8), dtype=np.uint8),
        np.zeros((8, 8, 4), dtype=np.uint8),
        [[[0, 0, 0]]],
    ],
    ids=["float32", "grey", "rgba", "list"],
)
def test_encode_refuses_anything_but_hw3_uint8(tiny_codec, bad):
    with pytest.raises(TypeError, match="uint8"):
        tiny_codec.encode(bad, quality=0.5)


def test_encode_refuses_an_image_over_max_side(tiny_codec, tiny_models_dir):
    codec = Codec.load(tiny_codec.name, tiny_models_dir, max_side=64)

    assert codec.decode(codec.encode(_noise(64, 64), quality=0.5).data).shape == (64, 64, 3)
    with pytest.raises(ImageTooLarge) as info:
        codec.encode(_noise(64, 65), quality=0.5)
    assert info.value.status == 413


def test_info_names_the_model_and_its_weights(tiny_codec):
    info = tiny_codec.info()

    assert info["name"] == "lw-tiny"
    assert info["weights"] == tiny_codec.weights
    assert info["network"]["M"] == TINY_M
    assert info["network"]["N"] == TINY_N
    assert info["max_side"] == 4096


def test_scale_indexes_are_compressais_build_indexes_bit_for_bit(tiny_codec):
    """The coder's table choice (network.scale_indexes) must equal CompressAI's own loop exactly,
    at the table's entries, between them, beyond both ends and below the lower bound."""
    from shared.network import scale_indexes

    gc = tiny_codec.model.gaussian_conditional
    table = gc.scale_table.to(torch.float64)
    g = torch.Generator().manual_seed(0)
    scales = torch.cat([
        table, torch.nextafter(table, torch.full_like(table, math.inf)),
        torch.nextafter(table, torch.full_like(table, -math.inf)),
        torch.exp(torch.empty(4000, dtype=torch.float64).uniform_(-6, 5, generator=g)),
        torch.tensor([0.0, 1e-9, 1e9], dtype=torch.float64),
    ]).reshape(1, -1, 1, 1)

    ours = scale_indexes(gc, scales)
    assert ours.dtype == torch.int32
    assert torch.equal(ours, gc.build_indexes(scales))
    assert int(ours.min()) == 0 and int(ours.max()) == len(table) - 1


@pytest.mark.parametrize("fixture", ["tiny_codec", "tiny_context_codec"])
def test_padding_past_the_picture_is_coded_as_its_means(request, fixture, sample_rgb):
    """Past the picture's latent extent (its replicate padding) every element is coded as its mean,
    symbol 0: fewer bits, and the decoder, told nothing, gets what the encoder predicts."""
    model = request.getfixturevalue(fixture).model
    codec = request.getfixturevalue(fixture)
    extent = latent_extent(71, 97)
    past = torch.ones(8, 8, dtype=torch.bool)
    past[:5, :7] = False
    with torch.inference_mode():
        y, z = codec._analysis(sample_rgb)  # 71x97, padded to 128x128: y is 8x8
        y = y * 8  # so that the padding's elements do not round to their means by themselves
        _, means, _, _, y_hat = model._hat_latents(y, z, 1.0, extent)
        _, means_all, _, _, y_hat_all = model._hat_latents(y, z, 1.0)
        bits, bits_all = model.estimate_bits(y, z, 1.0, extent), model.estimate_bits(y, z, 1.0)
        out = model.compress_latents(y, z, 1.0, extent)
        decoded = model.decode_latents(out["strings"], out["shape"], 1.0)
        expected = model.quantize_latents(y, z, 1.0, extent)

    assert extent == (5, 7) and y.shape[-2:] == (8, 8)
    assert torch.equal(y_hat[..., past], means[..., past])
    assert not torch.equal(y_hat_all[..., past], means_all[..., past])
    assert bits < bits_all - 80  # at least 10 bytes fewer
    assert torch.equal(decoded, expected)
    if model.context is None:  # without a context model the picture's own elements do not change
        assert torch.equal(y_hat[..., ~past], y_hat_all[..., ~past])
    else:
        with torch.inference_mode():
            cropped = model.compress_joint(y, z, 1.0, extent)  # version 7: the padding left out
            zeros = model.compress_joint(y, z, 1.0, extent, omit_past=False)  # version 6: its zeros coded
            assert torch.equal(model.decode_joint(cropped, out["shape"], 1.0, extent), expected)
            assert torch.equal(model.decode_joint(zeros, out["shape"], 1.0), expected)
            assert len(cropped[0]) < len(zeros[0]) < len(model.compress_joint(y, z, 1.0)[0])
