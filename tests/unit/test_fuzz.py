"""Bounded fuzzing: whatever bytes arrive, the parsers answer with a result or with one of our
errors (the family each module's docstring promises), never with a foreign exception that a
service would turn into a 500.

Each property runs 300 examples. No example database is written: a failure prints the
reproducing input and ``@reproduce_failure`` line instead.
"""

from __future__ import annotations

import dataclasses
import io

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from shared import bitstream as bs
from shared import wire
from shared.errors import BitstreamError, ImageError, LatentwireError
from shared.images import LoadedImage, load_image

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SECRET = b"fuzz-secret"
# Version 1 streams are a map with these keys; version 2 streams an array of bs.FIELDS_V2.
STREAM_KEYS_V1 = ["magic", "version", "model", "weights", "size", "quality", "y_shape", "z_shape",
                  "strings", "crc32"]
FUZZ_MAX_SIDE = 256  # a mutated header may declare a large image; keep decodes quick

# Any value msgpack can carry: what a hostile or broken peer can put in any field.
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.integers(-2, 300)
    | st.floats() | st.text(max_size=16) | st.binary(max_size=64),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@st.composite
def mutations(draw, original: bytes) -> bytes:
    """``original`` with 1..4 edits: bit flips, byte overwrites, insertions, deletions, cuts."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "cut":
            del data[i:]
    return bytes(data)


def _save(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


@pytest.fixture(scope="module")
def valid_images() -> dict[str, bytes]:
    """One small file per format the service accepts, single-frame and animated."""
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.arange(120, dtype=np.uint8).reshape(10, 12)])
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    animated = {"save_all": True, "append_images": frames[1:]}
    return {
        "png": _save(frames[0], "PNG"),
        "png-rgba": _save(Image.fromarray(rgba, "RGBA"), "PNG"),
        "png-animated": _save(frames[0], "PNG", **animated),
        "jpeg": _save(frames[0], "JPEG", quality=80),
        "gif": _save(frames[0].convert("P"), "GIF"),
        "gif-animated": _save(frames[0], "GIF", **animated),
        "webp": _save(frames[0], "WEBP"),
        "avif": _save(frames[0], "AVIF"),
        "bmp": _save(frames[0], "BMP"),
        "tiff": _save(frames[0], "TIFF"),
        "tiff-multipage": _save(frames[0], "TIFF", **animated),
    }


def _check_loaded(loaded: LoadedImage) -> None:
    assert loaded.rgb.dtype == np.uint8
    assert loaded.rgb.ndim == 3 and loaded.rgb.shape[2] == 3
    assert 1 <= loaded.height <= FUZZ_MAX_SIDE and 1 <= loaded.width <= FUZZ_MAX_SIDE


def _check_frames(frames: list) -> None:
    assert 1 <= len(frames) <= wire.DEFAULT_MAX_BATCH
    assert all(isinstance(f.stream, bs.Bitstream) for f in frames)


@pytest.fixture(scope="module")
def containers(tiny_stream) -> dict[int, bytes]:
    """The tiny stream in each container version this build reads (same strings)."""
    return {v: dataclasses.replace(tiny_stream.stream, version=v).to_bytes() for v in (1, 2)}


def _replace_field(obj: list | dict, field, value, delete: bool) -> list | dict:
    """A copy of a stream's object with one field (v2: a position; v1: a key) replaced or deleted."""
    obj = obj.copy()
    if delete:
        del obj[field]
    else:
        obj[field] = value
    return obj


@st.composite
def stream_fields(draw, stream: bs.Bitstream) -> list | dict:
    """The stream's object in either version, with one field replaced or deleted."""
    version = draw(st.sampled_from([1, 2]))
    obj = dataclasses.replace(stream, version=version).to_obj()
    field = draw(st.integers(0, len(bs.FIELDS_V2) - 1) if version == 2 else st.sampled_from(STREAM_KEYS_V1))
    return _replace_field(obj, field, draw(msgpack_values), draw(st.booleans()))


# ---- bitstream -----------------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=512))
def test_loads_on_arbitrary_bytes(data):
    try:
        assert isinstance(bs.loads(data), bs.Bitstream)
    except BitstreamError:
        pass


@FUZZ
@given(data=st.data())
def test_loads_on_mutated_streams(containers, data):
    stream_bytes = data.draw(mutations(containers[data.draw(st.sampled_from([1, 2]))]))
    try:
        assert isinstance(bs.loads(stream_bytes), bs.Bitstream)
    except BitstreamError:
        pass


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_loads_on_streams_with_one_field_replaced(tiny_stream, data):
    obj = data.draw(stream_fields(tiny_stream.stream))
    try:
        assert isinstance(bs.loads(msgpack.packb(obj, use_bin_type=True)), bs.Bitstream)
    except BitstreamError:
        pass


@FUZZ
@given(data=st.data())
def test_decode_on_mutated_streams_gives_pixels_of_the_declared_size_or_a_bitstream_error(
        tiny_codec, containers, data):
    stream_bytes = data.draw(mutations(containers[data.draw(st.sampled_from([1, 2]))]))
    try:
        rgb_hat = tiny_codec.decode(stream_bytes)
    except BitstreamError:
        return
    # Only fields outside the CRCs can change and still decode (e.g. quality, or a size in the
    # same 64-pixel block): the output must still be an image of the size the stream declares.
    declared = bs.loads(stream_bytes)
    assert rgb_hat.shape == (declared.height, declared.width, 3)
    assert rgb_hat.dtype == np.uint8


# ---- images --------------------------------------------------------------------------------
# Pillow warns about malformed metadata it skips (e.g. "Corrupt EXIF data"); a warning is not a
# failure to load, so these tests let Pillow's warnings pass instead of turning them into errors.

@pytest.mark.filterwarnings("ignore::UserWarning:PIL")
@FUZZ
@given(data=st.binary(max_size=1024))
def test_load_image_on_arbitrary_bytes(data):
    try:
        _check_loaded(load_image(data, max_side=FUZZ_MAX_SIDE))
    except ImageError:
        pass


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")
@FUZZ
@given(data=st.data())
def test_load_image_on_mutated_images(valid_images, data):
    kind = data.draw(st.sampled_from(sorted(valid_images)))
    image_bytes = data.draw(mutations(valid_images[kind]))
    try:
        _check_loaded(load_image(image_bytes, max_side=FUZZ_MAX_SIDE))
    except ImageError:
        pass


# ---- wire ----------------------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=1024))
def test_unpack_frames_on_arbitrary_bytes(data):
    try:
        _check_frames(wire.unpack_frames(data, SECRET))
    except LatentwireError:
        pass


@FUZZ
@given(data=st.data())
def test_unpack_frames_on_mutated_bodies(containers, data):
    body = wire.pack_stream_frame("0" * 32, 1.5, containers[data.draw(st.sampled_from([1, 2]))], SECRET)
    try:
        _check_frames(wire.unpack_frames(data.draw(mutations(body)), SECRET))
    except LatentwireError:
        pass


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_unpack_frames_on_correctly_signed_garbage(tiny_stream, containers, data):
    # The signature only proves who sent a body, not that it is well formed: a sender with a
    # bug (or a stolen secret) must still get a LatentwireError, not a crash. Wire version 2
    # frames carry the container's bytes, version 1 frames (old senders) the version 1 map.
    wire_version = data.draw(st.sampled_from([1, 2]))
    v1 = dataclasses.replace(tiny_stream.stream, version=1).to_obj()
    valid = {"id": "0" * 32, "sent_at": 1.5, "stream": containers[2] if wire_version == 2 else v1}
    damaged_stream = (
        mutations(containers[2]) | stream_fields(tiny_stream.stream).map(
            lambda obj: msgpack.packb(obj, use_bin_type=True))
        if wire_version == 2 else
        st.tuples(st.sampled_from(STREAM_KEYS_V1), msgpack_values, st.booleans()).map(
            lambda kvd: _replace_field(v1, *kvd))
    )
    frame_like = st.one_of(
        msgpack_values,
        st.tuples(st.sampled_from(["id", "sent_at", "stream"]), msgpack_values).map(
            lambda kv: valid | {kv[0]: kv[1]}),
        damaged_stream.map(lambda stream: valid | {"stream": stream}),
    )
    frames = data.draw(st.lists(frame_like, max_size=3))
    body = msgpack.packb({"wire": wire_version, "frames": frames}, use_bin_type=True)
    signed = msgpack.packb({"wire": wire_version, "frames": frames, "sig": wire.sign(body, SECRET)},
                           use_bin_type=True)
    try:
        _check_frames(wire.unpack_frames(signed, SECRET))
    except LatentwireError:
        pass
