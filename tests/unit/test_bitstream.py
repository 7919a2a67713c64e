"""Damaged, truncated and foreign streams: each is refused with a specific BitstreamError before
any pixel is decoded, never with another exception and never with pixels. Every check runs on
the current container (format version 2), on version 3 (a picture coded at a reduced size) and on
the version 1 container this build still reads."""

from __future__ import annotations

import dataclasses
import math
import types
import zlib

import msgpack
import numpy as np
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

VERSIONS = [2, 1, 3]
# How each container spells "this is version N" right after the magic.
VERSION_MARK = {2: b"LWIC\x02", 1: b"\xa7version\x01", 3: b"LWIC\x03"}


def _as_version(stream: bs.Bitstream, version: int) -> bs.Bitstream:
    """The stream in ``version``'s layout. For version 3 the 71x97 crop says it was coded at 70x97,
    which pads to the same 128x128 latents: a valid version 3 stream of the same strings."""
    if version == 3:
        return dataclasses.replace(stream, version=3, coded_size=(stream.height - 1, stream.width))
    return dataclasses.replace(stream, version=version, coded_size=None)


def _size_fields(version: int, height: int, width: int) -> dict:
    """Fields declaring a height x width picture (coded one row smaller in version 3)."""
    if version == 1:
        return {"size": [height, width]}
    fields = {"height": height, "width": width}
    return fields if version == 2 else {**fields, "coded_height": height - 1, "coded_width": width}


def _container(stream: bs.Bitstream, version: int) -> bytes:
    return _as_version(stream, version).to_bytes()


def _repack(stream: bs.Bitstream, layout: int = 2, **fields) -> bytes:
    """The stream's container in version ``layout`` with some fields replaced (CRCs still those
    of its strings). Field names are version 2's or 3's (``bs.FIELDS_V3``) or version 1's map keys."""
    obj = _as_version(stream, layout).to_obj()
    for name, value in fields.items():
        if layout in (2, 3):
            obj[bs.FIELDS_V3.index(name)] = value
        else:
            obj[name] = value
    return msgpack.packb(obj, use_bin_type=True)  # floats as float64: a float32 value stays exact


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


@pytest.fixture(params=VERSIONS, ids=lambda v: f"v{v}")
def version(request) -> int:
    return request.param


@pytest.fixture
def data(tiny_stream, version) -> bytes:
    """The tiny stream's container in ``version``'s layout (same strings, quality 0.5)."""
    return _container(tiny_stream.stream, version)


def test_both_layouts_hold_the_same_stream(tiny_stream):
    v1, v2 = (bs.loads(_container(tiny_stream.stream, v)) for v in (1, 2))

    assert v2 == tiny_stream.stream
    assert dataclasses.replace(v1, version=2) == v2
    assert len(_container(tiny_stream.stream, 2)) == len(_container(tiny_stream.stream, 1)) - 85


# ---- truncation ----------------------------------------------------------------------------

def test_every_truncation_is_a_bitstream_error(tiny_codec, data):
    outcomes = {n: _error_of(tiny_codec.decode, data[:n]) for n in range(len(data))}

    assert outcomes[0] is NotABitstream  # empty
    assert {outcomes[n] for n in range(1, len(data))} == {CorruptBitstream}


def test_every_truncation_is_refused_by_the_parser_alone(data):
    assert {_error_of(bs.loads, data[:n]) for n in range(1, len(data))} == {CorruptBitstream}


def test_trailing_bytes_are_refused(tiny_codec, data):
    with pytest.raises(NotABitstream, match="trailing bytes"):
        tiny_codec.decode(data + b"\x00")


# ---- damaged strings -----------------------------------------------------------------------

@pytest.mark.parametrize("which", [0, 1], ids=["y", "z"])
def test_any_flipped_byte_in_a_string_fails_its_crc(tiny_codec, tiny_stream, data, which):
    span = _string_span(data, tiny_stream.stream.strings[which])
    name = "yz"[which]

    for i in span:
        damaged = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        with pytest.raises(CorruptBitstream, match=f"CRC mismatch in the {name} string"):
            tiny_codec.decode(damaged)
    assert len(span) >= 8


@pytest.mark.parametrize("which", [0, 1], ids=["y", "z"])
@pytest.mark.parametrize(
    ("string", "problem"),
    [
        (b"", "0 bytes"),
        (b"\x00\x00\x00\x80", "4 bytes"),  # one word: less than the coder's final state
        (b"\x00\x00\x00\x80\x00\x00\x00\x00\x00", "9 bytes"),  # not whole 32-bit words
        (b"\x00" * 8, "valid rANS state"),  # state 0 < 2**31
        (b"\xff\xff\xff\x7f\x00\x00\x00\x00", "valid rANS state"),  # 2**31 - 1
        (b"\x00\x00\x00\x00\x00\x00\x00\x80", "valid rANS state"),  # 2**63
    ],
    ids=["empty", "one-word", "odd-length", "state-0", "state-below", "state-above"],
)
def test_crc_valid_strings_no_rans_coder_writes_are_corrupt(tiny_codec, tiny_stream, version, which,
                                                            string, problem):
    strings = list(tiny_stream.stream.strings)
    strings[which] = string
    damaged = _container(dataclasses.replace(tiny_stream.stream, strings=tuple(strings)), version)

    with pytest.raises(CorruptBitstream, match=f"the {'yz'[which]} string .*{problem}"):
        bs.loads(damaged)
    assert _error_of(tiny_codec.decode, damaged) is CorruptBitstream


def test_the_smallest_valid_rans_strings_parse(tiny_stream, version):
    # 8 bytes is a real stream (the tiny model's y at quality 0.5 is one); both state bounds too.
    for state in (b"\x00\x00\x00\x80\x00\x00\x00\x00", b"\xff" * 7 + b"\x7f"):
        stream = dataclasses.replace(tiny_stream.stream, strings=(state, state + b"\x00" * 4))
        assert bs.loads(_container(stream, version)).strings == stream.strings


# ---- header fields -------------------------------------------------------------------------

def test_wrong_magic_is_not_a_bitstream(tiny_codec, data):
    damaged = data.replace(b"LWIC", b"LWIX", 1)

    with pytest.raises(NotABitstream, match="magic") as info:
        tiny_codec.decode(damaged)
    assert info.value.status == 400


@pytest.mark.parametrize("other", [0, 8, 127])  # 4 to 7 are read, and refused by models without a context model
def test_other_format_versions_are_unsupported(tiny_codec, data, version, other):
    mark = VERSION_MARK[version]
    damaged = data.replace(mark, mark[:-1] + bytes([other]), 1)
    assert damaged != data

    with pytest.raises(UnsupportedVersion, match=f"version {other}; this build reads versions 1, 2, 3, 4, 5, 6, 7"):
        tiny_codec.decode(damaged)


def test_a_version_in_the_other_versions_layout_is_not_a_bitstream(tiny_stream):
    v2_as_map = _container(tiny_stream.stream, 1).replace(b"\xa7version\x01", b"\xa7version\x02", 1)
    v1_as_array = _container(tiny_stream.stream, 2).replace(b"LWIC\x02", b"LWIC\x01", 1)

    with pytest.raises(NotABitstream, match="version 2 bitstream is a msgpack array; this one is a msgpack map"):
        bs.loads(v2_as_map)
    with pytest.raises(NotABitstream, match="version 1 bitstream is a msgpack map; this one is a msgpack array"):
        bs.loads(v1_as_array)


def test_a_version_that_is_not_an_integer_is_not_a_bitstream(tiny_stream, version):
    with pytest.raises(NotABitstream, match="version"):
        bs.loads(_repack(tiny_stream.stream, version, version=str(version)))


def test_a_stream_from_another_model_names_both_models(tiny_codec, other_tiny_codec, sample_rgb, version):
    data = _container(other_tiny_codec.encode(sample_rgb, quality=0.5).stream, version)

    with pytest.raises(ModelMismatch) as info:
        tiny_codec.decode(data)

    assert f"lw-tiny-other@{other_tiny_codec.weights}" in str(info.value)
    assert f"lw-tiny@{tiny_codec.weights}" in str(info.value)
    assert info.value.status == 409


def test_a_stream_from_retrained_weights_names_both_hashes(tiny_codec, retrained_tiny_codec, sample_rgb,
                                                           version):
    assert retrained_tiny_codec.name == tiny_codec.name
    assert retrained_tiny_codec.weights != tiny_codec.weights
    data = _container(retrained_tiny_codec.encode(sample_rgb, quality=0.5).stream, version)

    with pytest.raises(ModelMismatch) as info:
        tiny_codec.decode(data)

    assert f"lw-tiny@{retrained_tiny_codec.weights}" in str(info.value)
    assert f"lw-tiny@{tiny_codec.weights}" in str(info.value)


def test_version_2_stores_the_weights_hash_as_8_raw_bytes(tiny_codec, tiny_stream):
    raw = bytes.fromhex(tiny_codec.weights)

    assert len(raw) == 8 and raw in tiny_stream.data
    assert tiny_codec.weights.encode() not in tiny_stream.data
    assert bs.loads(tiny_stream.data).weights == tiny_codec.weights  # 16 hex digits again


def test_declared_size_over_the_decoders_limit(tiny_codec, tiny_models_dir, data):
    small_decoder = Codec.load(tiny_codec.name, tiny_models_dir, max_side=64)

    with pytest.raises(DimensionsTooLarge, match="71x97") as info:
        small_decoder.decode(data)
    assert info.value.status == 413


def test_declared_size_over_4096_is_refused_before_decoding(tiny_codec, tiny_stream, version):
    # 5000x5000 with consistent latent shapes and valid CRCs: only the size limit can refuse it.
    size = _size_fields(version, 5000, 5000)
    data = _repack(tiny_stream.stream, version, y_shape=[24, 316, 316], z_shape=[16, 79, 79], **size)

    assert bs.loads(data).height == 5000
    with pytest.raises(DimensionsTooLarge, match="5000x5000"):
        tiny_codec.decode(data)


INCONSISTENT_V2 = [
    {"width": 200},  # latents are for 128x128
    {"height": 200},
    {"y_shape": [24, 8, 9]},
    {"z_shape": [16, 2, 3]},
    {"y_shape": [25, 8, 8]},  # channels the model does not have
    {"z_shape": [15, 2, 2]},
    {"height": 0},
    {"y_shape": [24, -8, 8]},
    {"y_shape": [24, 8]},
]
# In version 3 the latents follow the coded size, so a larger declared size alone is consistent.
INCONSISTENT_IN_V3 = [f for f in INCONSISTENT_V2 if f not in ({"width": 200}, {"height": 200})]
INCONSISTENT_V1 = [
    {"size": [71, 200]},
    {"size": [200, 97]},
    {"y_shape": [24, 8, 9]},
    {"z_shape": [16, 2, 3]},
    {"y_shape": [25, 8, 8]},
    {"z_shape": [15, 2, 2]},
    {"size": [0, 97]},
    {"size": [71, 97, 1]},
    {"y_shape": [24, -8, 8]},
]


def _ids(fields: dict) -> str:
    return "-".join(f"{k}={v!r}" for k, v in fields.items())


@pytest.mark.parametrize(("version", "fields"), [(2, f) for f in INCONSISTENT_V2] + [(1, f) for f in INCONSISTENT_V1]
                         + [(3, f) for f in INCONSISTENT_IN_V3],
                         ids=[f"v2-{_ids(f)}" for f in INCONSISTENT_V2] + [f"v1-{_ids(f)}" for f in INCONSISTENT_V1]
                         + [f"v3-{_ids(f)}" for f in INCONSISTENT_IN_V3])
def test_shapes_inconsistent_with_the_size_are_not_a_bitstream(tiny_codec, tiny_stream, version, fields):
    with pytest.raises(NotABitstream):
        tiny_codec.decode(_repack(tiny_stream.stream, version, **fields))


WRONG_V2 = [
    {"quality": 1.5},
    {"quality": -0.1},
    {"quality": math.nan},
    {"quality": 0.7},  # a float64 that is not a float32: the writer never stores one
    {"quality": 3.4028235677973366e38},  # beyond float32's range (rounding it overflowed: the fuzzer's find)
    {"quality": "0.5"},
    {"quality": True},
    {"model": 7},
    {"weights": None},
    {"weights": b"\x00" * 4},  # shorter than the hash
    {"weights": "00" * 8},  # hex text is version 1's spelling
    {"height": 71.0},
    {"width": None},
    {"y": "y"},
    {"z": None},
    {"y_crc32": True},
    {"z_crc32": "1"},
]
WRONG_V1 = [
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
]


@pytest.mark.parametrize(("version", "fields"), [(2, f) for f in WRONG_V2] + [(1, f) for f in WRONG_V1]
                         + [(3, f) for f in WRONG_V2],
                         ids=[f"v2-{_ids(f)}" for f in WRONG_V2] + [f"v1-{_ids(f)}" for f in WRONG_V1]
                         + [f"v3-{_ids(f)}" for f in WRONG_V2])
def test_wrongly_typed_fields_are_not_a_bitstream(tiny_stream, version, fields):
    with pytest.raises(NotABitstream):
        bs.loads(_repack(tiny_stream.stream, version, **fields))


def test_a_missing_field_is_named_in_version_1(tiny_stream):
    obj = _as_version(tiny_stream.stream, 1).to_obj()
    del obj["z_shape"]

    with pytest.raises(NotABitstream, match="z_shape"):
        bs.loads(msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize("count", [2, 12, 14])
def test_a_version_2_array_of_another_length_is_not_a_bitstream(tiny_stream, count):
    obj = tiny_stream.stream.to_obj()
    obj = (obj + [0])[:count]

    with pytest.raises(NotABitstream, match=f"13 fields, this one {count}"):
        bs.loads(msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", NotABitstream),
        (b"\x00", NotABitstream),  # the msgpack integer 0
        (msgpack.packb([1, 2, 3]), NotABitstream),
        (msgpack.packb([]), NotABitstream),
        (msgpack.packb([b"LWIC"]), NotABitstream),  # no version
        (msgpack.packb({}), NotABitstream),
        (msgpack.packb("LWIC"), NotABitstream),
        (b"not msgpack", NotABitstream),  # an integer (b"n") followed by trailing bytes
        (b"\xc1", CorruptBitstream),  # a byte msgpack never uses
        (b"\x9d", CorruptBitstream),  # an array header and nothing else
        (b"\x8a", CorruptBitstream),  # a map header and nothing else
    ],
    ids=["empty", "integer", "array", "empty-array", "magic-only", "empty-map", "string", "text",
         "reserved-byte", "array-header", "map-header"],
)
def test_things_that_are_not_streams(data, error):
    assert _error_of(bs.loads, data) is error


def test_oversized_input_is_refused_before_parsing():
    with pytest.raises(NotABitstream, match="more than any latentwire stream"):
        bs.loads(b"\x00" * 101, max_bytes=100)


def test_the_writer_refuses_what_version_2_cannot_hold(tiny_stream):
    with pytest.raises(ValueError, match="float32"):
        dataclasses.replace(tiny_stream.stream, quality=0.7).to_bytes()
    with pytest.raises(ValueError, match="hex digits"):
        dataclasses.replace(tiny_stream.stream, weights="xyz").to_bytes()
    with pytest.raises(ValueError, match="format version 8"):
        dataclasses.replace(tiny_stream.stream, version=8).to_bytes()
    for joint in (5, 6, 7):
        with pytest.raises(ValueError, match="version 5 to 7 stream holds one string"):
            dataclasses.replace(tiny_stream.stream, version=joint).to_bytes()
    # Version 3 carries a coded size and only version 3 does: one layout per kind of stream.
    with pytest.raises(ValueError, match="version 3 is for, and only for, a stream with a coded_size"):
        dataclasses.replace(tiny_stream.stream, version=3).to_bytes()
    with pytest.raises(ValueError, match="version 3 is for, and only for, a stream with a coded_size"):
        dataclasses.replace(tiny_stream.stream, coded_size=(70, 97)).to_bytes()


def test_version_3_is_version_2_plus_the_coded_size(tiny_stream):
    v2, v3 = tiny_stream.stream.to_obj(), _as_version(tiny_stream.stream, 3).to_obj()
    assert v3[:1] + v3[2:13] == v2[:1] + v2[2:] and (v2[1], v3[1]) == (2, 3)
    assert v3[13:] == [70, 97]
    data = _container(tiny_stream.stream, 3)
    assert data.startswith(b"\x9f\xc4\x04LWIC\x03") and len(data) == len(tiny_stream.data) + 2
    parsed = bs.loads(data)
    assert (parsed.version, parsed.coded_size, parsed.coded_height, parsed.coded_width) == (3, (70, 97), 70, 97)
    assert (parsed.height, parsed.width) == (71, 97) and parsed.to_bytes() == data


def test_a_version_3_stream_decodes_at_its_declared_size(tiny_codec, tiny_stream):
    assert tiny_codec.decode(_container(tiny_stream.stream, 3)).shape == (71, 97, 3)


@pytest.mark.parametrize("count", [13, 14, 16])
def test_a_version_3_array_of_another_length_is_not_a_bitstream(tiny_stream, count):
    obj = _as_version(tiny_stream.stream, 3).to_obj()
    obj = (obj + [0])[:count]

    with pytest.raises(NotABitstream, match=f"version 3 bitstream has 15 fields, this one {count}"):
        bs.loads(msgpack.packb(obj, use_bin_type=True))


INCONSISTENT_V3 = [
    {"coded_height": 72},  # larger than the declared 71
    {"coded_width": 98},
    {"coded_height": 71},  # the declared size itself: that is a version 2 stream
    {"coded_height": 0},
    {"coded_width": 0},
    {"coded_height": 30},  # pads to 64 rows: the latents are for 128
    {"coded_width": 200, "width": 200},  # consistent with each other, not with the latents
    {"coded_height": 70.0},
    {"coded_width": None},
    {"coded_height": -1},
]


@pytest.mark.parametrize("fields", INCONSISTENT_V3, ids=[_ids(f) for f in INCONSISTENT_V3])
def test_a_coded_size_the_latents_or_the_declared_size_contradict_is_not_a_bitstream(tiny_codec, tiny_stream,
                                                                                  fields):
    data = _repack(tiny_stream.stream, 3, **fields)
    assert _error_of(bs.loads, data) is NotABitstream
    assert _error_of(tiny_codec.decode, data) is NotABitstream


def test_parse_accepts_the_unpacked_object_and_the_bitstream(tiny_codec, tiny_stream, version):
    stream = _as_version(tiny_stream.stream, version)

    assert tiny_codec.parse(stream.to_obj()) == stream
    assert tiny_codec.parse(stream) == stream
    assert tiny_codec.decode(stream.to_obj()).shape == (71, 97, 3)


def test_a_text_file_is_named_as_not_a_bitstream():
    """Not "trailing bytes" (msgpack reads the first letter as an integer): the file is no .lw at all."""
    for text in (b"hello world\n", b"hello world, this is a text file, not a code\n"):
        with pytest.raises(NotABitstream, match="not a latentwire bitstream: a .lw file starts with the LWIC magic"):
            bs.loads(text)


def _with_bytes(stream: bs.Bitstream) -> types.SimpleNamespace:
    return types.SimpleNamespace(stream=stream, data=stream.to_bytes(), nbytes=len(stream.to_bytes()))


@pytest.fixture(scope="module")
def v7_stream(tiny_context_codec, sample_rgb):
    return tiny_context_codec.encode(sample_rgb, quality=0.6)


@pytest.fixture(scope="module")
def v6_stream(tiny_context_codec, sample_rgb):
    """The same picture in version 6's layout, the padding's zeros coded, as the encoder wrote it until version 7."""
    from tests.conftest import joint_stream

    return _with_bytes(joint_stream(tiny_context_codec, sample_rgb, 0.6, 6))


@pytest.fixture(scope="module")
def v5_stream(tiny_context_codec, v6_stream):
    """The same code in version 5's layout (with the model's name), as the encoder wrote it until version 6."""
    return _with_bytes(dataclasses.replace(v6_stream.stream, version=5, model=tiny_context_codec.name))


@pytest.mark.parametrize("damage, error, message", [
    (lambda o: o[:8], NotABitstream, "version 5 bitstream has 9 fields"),
    (lambda o: o + [1], NotABitstream, "9 fields \\(11 coded at a reduced size\\), this one 10"),
    (lambda o: o[:7] + ["data", o[8]], NotABitstream, "data must be a byte string"),
    (lambda o: o[:8] + [str(o[8])], NotABitstream, "crc32 must be an integer"),
    (lambda o: o[:8] + [o[8] ^ 1], CorruptBitstream, "CRC mismatch in the data string"),
    (lambda o: o[:7] + [o[7][:-4], zlib.crc32(o[7][:-4])], None, None),  # a shorter string still frames
    (lambda o: o[:7] + [o[7][:6], zlib.crc32(o[7][:6])], CorruptBitstream, "the data string has 6 bytes"),
    (lambda o: o[:3] + [o[3][:4]] + o[4:], NotABitstream, "weights must be 8 bytes"),
    (lambda o: o + [80, 97], NotABitstream, "coded size 80x97 must be within"),
])
def test_version_5_fields_are_checked(v5_stream, damage, error, message):
    obj = damage(msgpack.unpackb(v5_stream.data, raw=False))
    data = msgpack.packb(obj, use_bin_type=True, use_single_float=True)
    if error is None:
        assert bs.loads(data).version == 5
        return
    with pytest.raises(error, match=message):
        bs.loads(data)


def test_version_5_parses_to_shapes_from_the_size(v5_stream):
    stream = bs.loads(v5_stream.data)

    assert stream == v5_stream.stream and stream.to_bytes() == v5_stream.data
    assert (stream.y_shape, stream.z_shape) == ((None, 8, 8), (None, 2, 2))  # 71x97 pads to 128x128
    assert len(stream.strings) == 1 and stream.payload_bytes == len(stream.strings[0])
    # array, magic, version, name, weights, 71, 97, float32, bin16 header, uint32 CRC: 34 bytes and the name
    assert v5_stream.nbytes - stream.payload_bytes == 34 + len(stream.model)


@pytest.mark.parametrize("damage, error, message", [
    (lambda o: o[:7], NotABitstream, "version 6 bitstream has 8 fields"),
    (lambda o: o + [1], NotABitstream, "8 fields \\(10 coded at a reduced size\\), this one 9"),
    (lambda o: o[:6] + ["data", o[7]], NotABitstream, "data must be a byte string"),
    (lambda o: o[:7] + [o[7] ^ 1], CorruptBitstream, "CRC mismatch in the data string"),
    (lambda o: o[:2] + ["lw-tiny-context"] + o[2:], NotABitstream, "version 6 bitstream has 8 fields"),
    (lambda o: o[:2] + [o[2][:4]] + o[3:], NotABitstream, "weights must be 8 bytes"),
    (lambda o: o + [80, 97], NotABitstream, "coded size 80x97 must be within"),
])
def test_version_6_fields_are_checked(v6_stream, damage, error, message):
    obj = damage(msgpack.unpackb(v6_stream.data, raw=False))
    with pytest.raises(error, match=message):
        bs.loads(msgpack.packb(obj, use_bin_type=True, use_single_float=True))


def test_version_6_names_its_model_by_the_weights_alone(tiny_context_codec, tiny_codec, v5_stream, v6_stream):
    stream = bs.loads(v6_stream.data)

    assert stream.version == 6 and stream.model == "" and stream == v6_stream.stream
    assert stream.to_bytes() == v6_stream.data and v6_stream.data.startswith(b"\x98\xc4\x04LWIC\x06")
    # array, magic, version, weights, 71, 97, float32, bin16 header, uint32 CRC: 34 bytes less the name's header
    assert v6_stream.nbytes - stream.payload_bytes == 33
    assert v5_stream.nbytes - v6_stream.nbytes == 1 + len(tiny_context_codec.name)
    assert np.array_equal(tiny_context_codec.decode(v6_stream.data), tiny_context_codec.decode(v5_stream.data))
    with pytest.raises(ModelMismatch, match=f"the model with weights {stream.weights}, this decoder serves "
                                            f"{tiny_codec.name}@{tiny_codec.weights}") as info:
        tiny_codec.decode(v6_stream.data)
    assert info.value.status == 409


def test_version_7_leaves_the_padding_out(tiny_context_codec, tiny_codec, v6_stream, v7_stream):
    """The 71x97 crop's y is 8x8 positions, the picture in 5x7 of them: version 7 codes those alone,
    in version 6's container, and decodes to version 6's pixels."""
    stream = bs.loads(v7_stream.data)

    assert stream.version == bs.CONTEXT_VERSION == 7 and stream.model == "" and stream == v7_stream.stream
    assert stream.to_bytes() == v7_stream.data and v7_stream.data.startswith(b"\x98\xc4\x04LWIC\x07")
    assert v7_stream.nbytes - stream.payload_bytes == v6_stream.nbytes - v6_stream.stream.payload_bytes == 33
    assert stream.payload_bytes < v6_stream.stream.payload_bytes
    assert np.array_equal(tiny_context_codec.decode(v7_stream.data), tiny_context_codec.decode(v6_stream.data))
    with pytest.raises(ModelMismatch, match=f"the model with weights {stream.weights}"):
        tiny_codec.decode(v7_stream.data)


def test_a_reader_of_versions_up_to_6_refuses_version_7_naming_what_it_reads(v7_stream, monkeypatch):
    """What a receiver from before version 7 answers (its build reads 1 to 6): a 4xx saying to upgrade."""
    monkeypatch.setattr(bs, "READ_VERSIONS", (1, 2, 3, 4, 5, 6))

    with pytest.raises(UnsupportedVersion, match="version 7; this build reads versions 1, 2, 3, 4, 5, 6: "
                                                 "upgrade latentwire") as info:
        bs.loads(v7_stream.data)
    assert info.value.status == 400
