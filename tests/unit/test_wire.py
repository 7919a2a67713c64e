"""Signed frame batches (shared/wire.py): round trips, and the receiver-side refusals that happen
before any tensor is made."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from shared import wire
from shared.errors import (
    BadSignature,
    CorruptBitstream,
    FrameTooLarge,
    NotABitstream,
    UnsupportedVersion,
    WireError,
)
from shared.wire import Frame, pack_frames, pack_stream_frame, unpack_frames

SECRET = b"unit-test-secret-0123456789abcdef"
SENT_AT = 1_700_000_000.25


def _frame(stream, n: int = 0) -> Frame:
    return Frame(id=f"{n:032x}", sent_at=SENT_AT + n, stream=stream)


def _signed(frames: list, wire_version: int = wire.WIRE_VERSION, secret: bytes = SECRET) -> bytes:
    """A body built from the module docstring's description, not from pack_frames."""
    body = msgpack.packb({"wire": wire_version, "frames": frames}, use_bin_type=True)
    return msgpack.packb({"wire": wire_version, "frames": frames, "sig": wire.sign(body, secret)},
                         use_bin_type=True)


@pytest.fixture(scope="module")
def streams(tiny_codec, sample_rgb, kodim_crop):
    """Three different streams: two qualities of the crop and the 128x192 Kodak crop."""
    return [tiny_codec.encode(sample_rgb, quality=0.5).stream,
            tiny_codec.encode(sample_rgb, quality=1.0).stream,
            tiny_codec.encode(kodim_crop, quality=0.5).stream]


def test_one_frame_round_trips(tiny_stream):
    frame = _frame(tiny_stream.stream)

    assert unpack_frames(pack_frames([frame], SECRET), SECRET) == [frame]


def test_several_frames_round_trip_in_order(streams):
    frames = [_frame(s, n) for n, s in enumerate(streams)]

    got = unpack_frames(pack_frames(frames, SECRET), SECRET)

    assert got == frames
    assert [f.id for f in got] == [f"{n:032x}" for n in range(3)]
    assert [(f.stream.height, f.stream.width) for f in got] == [(71, 97), (71, 97), (128, 192)]


def test_a_stream_frame_carries_the_lw_container_byte_for_byte(tiny_stream):
    body = pack_stream_frame("ab" * 16, SENT_AT, tiny_stream.data, SECRET)

    (frame,) = unpack_frames(body, SECRET)

    assert frame.stream.to_bytes() == tiny_stream.data
    assert (frame.id, frame.sent_at) == ("ab" * 16, SENT_AT)


def test_pack_frames_matches_the_documented_layout(tiny_stream):
    frame = _frame(tiny_stream.stream)
    documented = {"id": frame.id, "sent_at": SENT_AT, "stream": tiny_stream.data}

    assert frame.to_dict() == documented
    assert pack_frames([frame], SECRET) == _signed([documented])


def test_the_frame_adds_little_to_the_container(tiny_stream):
    body = pack_frames([_frame(tiny_stream.stream)], SECRET)

    assert tiny_stream.data in body  # the .lw bytes, verbatim
    # map + "wire" 2 + "frames" + [frame map, "id" + 32 hex, "sent_at" + float64, "stream" + bin8
    # header] + "sig" + 32 bytes
    assert len(body) - len(tiny_stream.data) == 1 + 6 + 7 + 1 + 1 + 3 + 34 + 8 + 9 + 7 + 2 + 4 + 34


def test_a_version_1_stream_travels_byte_for_byte(tiny_stream):
    # A stream encoded before format version 2 (still in an old sender's outbox).
    v1_data = dataclasses.replace(tiny_stream.stream, version=1).to_bytes()

    (frame,) = unpack_frames(pack_stream_frame("cd" * 16, SENT_AT, v1_data, SECRET), SECRET)

    assert frame.stream.version == 1
    assert frame.stream.to_bytes() == v1_data


def test_a_wire_version_1_body_from_an_old_sender_is_accepted(tiny_codec, tiny_stream):
    # Old senders put the version 1 bitstream's map itself in the frame, under "wire": 1.
    v1 = dataclasses.replace(tiny_stream.stream, version=1)
    old_frame = {"id": "ef" * 16, "sent_at": SENT_AT, "stream": v1.to_obj()}

    (frame,) = unpack_frames(_signed([old_frame], wire_version=1), SECRET)

    assert frame == Frame(id="ef" * 16, sent_at=SENT_AT, stream=v1)
    assert (tiny_codec.decode(frame.stream) == tiny_codec.decode(tiny_stream.data)).all()


def test_a_replayed_body_still_parses(tiny_stream):
    # Deduplicating by frame id is the receiver store's job, not the wire format's.
    body = pack_frames([_frame(tiny_stream.stream)], SECRET)

    assert unpack_frames(body, SECRET) == unpack_frames(body, SECRET)


def test_a_wrong_secret_is_a_bad_signature(tiny_stream):
    body = pack_frames([_frame(tiny_stream.stream)], SECRET)

    with pytest.raises(BadSignature, match="LATENTWIRE_SECRET") as info:
        unpack_frames(body, b"another-secret")
    assert info.value.status == 401


def test_a_changed_frame_under_the_old_signature_is_a_bad_signature(tiny_stream):
    frame = _frame(tiny_stream.stream)
    obj = msgpack.unpackb(pack_frames([frame], SECRET), raw=False)
    obj["frames"][0]["sent_at"] += 1.0

    with pytest.raises(BadSignature):
        unpack_frames(msgpack.packb(obj, use_bin_type=True), SECRET)


@pytest.mark.parametrize("sig", [b"", b"\x00" * 31, "not bytes", None])
def test_a_missing_or_malformed_signature_is_a_bad_signature(tiny_stream, sig):
    obj = {"wire": wire.WIRE_VERSION, "frames": [_frame(tiny_stream.stream).to_dict()], "sig": sig}

    with pytest.raises(BadSignature):
        unpack_frames(msgpack.packb(obj, use_bin_type=True), SECRET)


def test_a_body_over_max_frame_bytes_is_too_large(tiny_stream):
    body = pack_frames([_frame(tiny_stream.stream)], SECRET)

    assert len(unpack_frames(body, SECRET, max_frame_bytes=len(body))) == 1
    with pytest.raises(FrameTooLarge, match=f"{len(body)} bytes") as info:
        unpack_frames(body, SECRET, max_frame_bytes=len(body) - 1)
    assert info.value.status == 413


def test_a_batch_over_max_batch_is_refused(streams):
    body = pack_frames([_frame(s, n) for n, s in enumerate(streams)], SECRET)

    assert len(unpack_frames(body, SECRET, max_batch=3)) == 3
    with pytest.raises(WireError, match="1..2 frames"):
        unpack_frames(body, SECRET, max_batch=2)


def test_an_empty_batch_is_refused():
    with pytest.raises(WireError, match="got 0"):
        unpack_frames(_signed([]), SECRET)


def test_an_empty_body_is_refused():
    with pytest.raises(WireError, match="empty body"):
        unpack_frames(b"", SECRET)


@pytest.mark.parametrize("version", [0, 3, 1.0, True, "2"])
def test_another_wire_version_is_unsupported(tiny_stream, version):
    with pytest.raises(UnsupportedVersion, match=f"wire version {version!r}; this receiver speaks versions 1, 2"):
        unpack_frames(_signed([_frame(tiny_stream.stream).to_dict()], wire_version=version), SECRET)


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", "A" * 32), ("id", "ab"), ("id", 7), ("sent_at", "now"), ("sent_at", True)],
)
def test_bad_frame_fields_are_refused(tiny_stream, field, value):
    frame = _frame(tiny_stream.stream).to_dict()
    frame[field] = value

    with pytest.raises(WireError):
        unpack_frames(_signed([frame]), SECRET)


def test_a_frame_with_extra_keys_is_refused(tiny_stream):
    frame = _frame(tiny_stream.stream).to_dict() | {"note": "hi"}

    with pytest.raises(WireError, match="exactly the keys"):
        unpack_frames(_signed([frame]), SECRET)


def test_a_signed_frame_with_a_damaged_stream_is_corrupt(tiny_stream):
    frame = _frame(tiny_stream.stream).to_dict()
    i = frame["stream"].index(tiny_stream.stream.strings[1])  # the z string
    frame["stream"] = frame["stream"][:i] + bytes([frame["stream"][i] ^ 1]) + frame["stream"][i + 1 :]

    with pytest.raises(CorruptBitstream, match="CRC mismatch in the z string"):
        unpack_frames(_signed([frame]), SECRET)


def test_a_signed_wire_version_1_frame_with_a_damaged_stream_is_corrupt(tiny_stream):
    stream = dataclasses.replace(tiny_stream.stream, version=1).to_obj()
    stream["crc32"][0] ^= 1
    frame = {"id": "0" * 32, "sent_at": SENT_AT, "stream": stream}

    with pytest.raises(CorruptBitstream, match="CRC mismatch in the y string"):
        unpack_frames(_signed([frame], wire_version=1), SECRET)


@pytest.mark.parametrize("form", ["map", "array"])
def test_a_signed_frame_whose_stream_is_not_the_containers_bytes(tiny_stream, form):
    frame = _frame(tiny_stream.stream).to_dict()
    stream = tiny_stream.stream if form == "array" else dataclasses.replace(tiny_stream.stream, version=1)
    frame["stream"] = stream.to_obj()  # the unpacked object, as wire version 1 sent it

    with pytest.raises(NotABitstream, match="container's bytes"):
        unpack_frames(_signed([frame]), SECRET)


def test_a_signed_wire_version_1_frame_whose_stream_is_bytes(tiny_stream):
    frame = _frame(tiny_stream.stream).to_dict()  # stream: the container's bytes

    with pytest.raises(NotABitstream, match="wire version 1 frame's stream must be a bitstream map"):
        unpack_frames(_signed([frame], wire_version=1), SECRET)


def test_a_signed_frame_with_a_crc_valid_empty_string_is_corrupt(tiny_stream):
    empty_y = dataclasses.replace(tiny_stream.stream, strings=(b"", tiny_stream.stream.strings[1]))

    with pytest.raises(CorruptBitstream, match="the y string has 0 bytes"):
        unpack_frames(pack_frames([_frame(empty_y)], SECRET), SECRET)


def test_an_empty_secret_cannot_sign(tiny_stream):
    with pytest.raises(ValueError, match="empty secret"):
        pack_frames([_frame(tiny_stream.stream)], b"")
