"""Damaged, truncated and foreign streams: each is refused with a specific BitstreamError before
any pixel is decoded, never with another exception and never with pixels."""

from __future__ import annotations

import math

import msgpack
import pytest

from shared import bitstream as bs
from shared.codec import Codec
from shared.errors import (
    BitstreamError,
    CorruptBitstream,
    DimensionsTooLarge,
    ModelMismatch,
    NotABitstream,
    UnsupportedVersion,
)


def _repack(stream: bs.Bitstream, **fields) -> bytes:
    """The stream's container with some fields replaced (CRCs still those of its strings)."""
    obj = stream.to_dict()
    obj.update(fields)
    return msgpack.packb(obj, use_bin_type=True)


def _error_of(call, data) -> type[BitstreamError] | None:
    """The BitstreamError subclass ``call(data)`` raised, or None if it returned; anything else
    fails the test, naming the input length."""
    try:
        call(data)
    except BitstreamError as exc:
        return type(exc)
    except Exception as exc:
        raise AssertionError(f"{len(data)}-byte input raised {exc!r}, not a BitstreamError") from exc
    return None


def _string_span(data: bytes, string: bytes) -> range:
    start = data.index(string)
    assert data.count(string) == 1
    return range(start, start + len(string))


# ---- truncation ----------------------------------------------------------------------------

def test_every_truncation_is_a_bitstream_error(tiny_codec, tiny_stream):
    data = tiny_stream.data

    outcomes = {n: _error_of(tiny_codec.decode, data[:n]) for n in range(len(data))}

    assert outcomes[0] is NotABitstream  # empty
    assert {outcomes[n] for n in range(1, len(data))} == {CorruptBitstream}


def test_every_truncation_is_refused_by_the_parser_alone(tiny_stream):
    data = tiny_stream.data

    assert {_error_of(bs.loads, data[:n]) for n in range(1, len(data))} == {CorruptBitstream}


def test_trailing_bytes_are_refused(tiny_codec, tiny_stream):
    with pytest.raises(NotABitstream, match="trailing bytes"):
        tiny_codec.decode(tiny_stream.data + b"\x00")


# ---- damaged strings -----------------------------------------------------------------------

@pytest.mark.parametrize("which", [0, 1], ids=["y", "z"])
def test_any_flipped_byte_in_a_string_fails_its_crc(tiny_codec, tiny_stream, which):
    data = tiny_stream.data
    span = _string_span(data, tiny_stream.stream.strings[which])
    name = "yz"[which]

    for i in span:
        damaged = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        with pytest.raises(CorruptBitstream, match=f"CRC mismatch in the {name} string"):
            tiny_codec.decode(damaged)
    assert len(span) >= 8


# ---- header fields -------------------------------------------------------------------------

def test_wrong_magic_is_not_a_bitstream(tiny_codec, tiny_stream):
    data = tiny_stream.data.replace(b"LWIC", b"LWIX", 1)

    with pytest.raises(NotABitstream, match="magic") as info:
        tiny_codec.decode(data)
    assert info.value.status == 400


@pytest.mark.parametrize("version", [0, 2, 127])
def test_other_format_versions_are_unsupported(tiny_codec, tiny_stream, version):
    data = tiny_stream.data.replace(b"\xa7version\x01", b"\xa7version" + bytes([version]), 1)
    assert data != tiny_stream.data

    with pytest.raises(UnsupportedVersion, match=f"version {version}"):
        tiny_codec.decode(data)


def test_a_version_that_is_not_an_integer_is_not_a_bitstream(tiny_stream):
    with pytest.raises(NotABitstream, match="version"):
        bs.loads(_repack(tiny_stream.stream, version="1"))


def test_a_stream_from_another_model_names_both_models(tiny_codec, other_tiny_codec, sample_rgb):
    data = other_tiny_codec.encode(sample_rgb, quality=0.5).data

    with pytest.raises(ModelMismatch) as info:
        tiny_codec.decode(data)

    assert f"lw-tiny-other@{other_tiny_codec.weights}" in str(info.value)
    assert f"lw-tiny@{tiny_codec.weights}" in str(info.value)
    assert info.value.status == 409


def test_a_stream_from_retrained_weights_names_both_hashes(tiny_codec, retrained_tiny_codec, sample_rgb):
    assert retrained_tiny_codec.name == tiny_codec.name
    assert retrained_tiny_codec.weights != tiny_codec.weights
    data = retrained_tiny_codec.encode(sample_rgb, quality=0.5).data

    with pytest.raises(ModelMismatch) as info:
        tiny_codec.decode(data)

    assert f"lw-tiny@{retrained_tiny_codec.weights}" in str(info.value)
    assert f"lw-tiny@{tiny_codec.weights}" in str(info.value)


def test_declared_size_over_the_decoders_limit(tiny_codec, tiny_models_dir, tiny_stream):
    small_decoder = Codec.load(tiny_codec.name, tiny_models_dir, max_side=64)

    with pytest.raises(DimensionsTooLarge, match="71x97") as info:
        small_decoder.decode(tiny_stream.data)
    assert info.value.status == 413


def test_declared_size_over_4096_is_refused_before_decoding(tiny_codec, tiny_stream):
    # 5000x5000 with consistent latent shapes and valid CRCs: only the size limit can refuse it.
    data = _repack(tiny_stream.stream, size=[5000, 5000], y_shape=[24, 316, 316], z_shape=[16, 79, 79])

    assert bs.loads(data).height == 5000
    with pytest.raises(DimensionsTooLarge, match="5000x5000"):
        tiny_codec.decode(data)


@pytest.mark.parametrize(
    "fields",
    [
        {"size": [71, 200]},  # latents are for 128x128
        {"size": [200, 97]},
        {"y_shape": [24, 8, 9]},
        {"z_shape": [16, 2, 3]},
        {"y_shape": [25, 8, 8]},  # channels the model does not have
        {"z_shape": [15, 2, 2]},
        {"size": [0, 97]},
        {"size": [71, 97, 1]},
        {"y_shape": [24, -8, 8]},
    ],
    ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()),
)
def test_shapes_inconsistent_with_the_size_are_not_a_bitstream(tiny_codec, tiny_stream, fields):
    with pytest.raises(NotABitstream):
        tiny_codec.decode(_repack(tiny_stream.stream, **fields))


@pytest.mark.parametrize(
    "fields",
    [
        {"quality": 1.5},
        {"quality": -0.1},
        {"quality": math.nan},
        {"quality": "0.5"},
        {"quality": True},
        {"model": 7},
        {"weights": None},
        {"size": [71.0, 97.0]},
        {"strings": [b"\x00" * 8]},
        {"strings": ["y", "z"]},
        {"crc32": [1]},
        {"crc32": [True, False]},
    ],
    ids=lambda f: "-".join(f"{k}={v!r}" for k, v in f.items()),
)
def test_wrongly_typed_fields_are_not_a_bitstream(tiny_stream, fields):
    with pytest.raises(NotABitstream):
        bs.loads(_repack(tiny_stream.stream, **fields))


def test_a_missing_field_is_named(tiny_stream):
    obj = tiny_stream.stream.to_dict()
    del obj["z_shape"]

    with pytest.raises(NotABitstream, match="z_shape"):
        bs.loads(msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", NotABitstream),
        (b"\x00", NotABitstream),  # the msgpack integer 0
        (msgpack.packb([1, 2, 3]), NotABitstream),
        (msgpack.packb("LWIC"), NotABitstream),
        (b"not msgpack", NotABitstream),  # an integer (b"n") followed by trailing bytes
        (b"\xc1", CorruptBitstream),  # a byte msgpack never uses
        (b"\x8a", CorruptBitstream),  # a map header and nothing else
    ],
    ids=["empty", "integer", "array", "string", "text", "reserved-byte", "map-header"],
)
def test_things_that_are_not_streams(data, error):
    assert _error_of(bs.loads, data) is error


def test_oversized_input_is_refused_before_parsing():
    with pytest.raises(NotABitstream, match="more than any latentwire stream"):
        bs.loads(b"\x00" * 101, max_bytes=100)


def test_parse_accepts_the_unpacked_map_a_wire_frame_carries(tiny_codec, tiny_stream):
    assert tiny_codec.parse(tiny_stream.stream.to_dict()) == tiny_stream.stream
    assert tiny_codec.decode(tiny_stream.stream.to_dict()).shape == (71, 97, 3)
