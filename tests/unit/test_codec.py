"""Codec round trips with the tiny model: output sizes, the .lw container's header, input checks."""

from __future__ import annotations

import re
import zlib

import msgpack
import numpy as np
import pytest

from shared import bitstream as bs
from shared.codec import Codec
from shared.errors import ImageTooLarge

# Begins every stream: msgpack map of 10 entries, key "magic", 4-byte bin "LWIC".
CONTAINER_PREFIX = b"\x8a\xa5magic\xc4\x04LWIC"
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
    (model_file,) = tiny_models_dir.glob(f"{tiny_codec.name}-*.pt")

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


def test_container_is_one_msgpack_map_in_documented_key_order(tiny_stream):
    obj = msgpack.unpackb(tiny_stream.data, raw=False)

    assert list(obj) == ["magic", "version", "model", "weights", "size", "quality",
                         "y_shape", "z_shape", "strings", "crc32"]
    assert obj["version"] == 1
    assert obj["size"] == [71, 97]
    assert obj["strings"] == list(tiny_stream.stream.strings)
    assert obj["crc32"] == [zlib.crc32(s) for s in obj["strings"]]
    assert tiny_stream.stream.payload_bytes == sum(len(s) for s in obj["strings"])


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
