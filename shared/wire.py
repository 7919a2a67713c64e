"""What goes over the wire from sender to receiver: signed msgpack frames carrying codec bitstreams.

A request body to ``POST /v1/frames`` (content type ``application/msgpack``) is one msgpack map::

    wire      int   2                                  wire format version
    frames    [frame, ...]                             1..max_batch frames
    sig       bin   32 bytes                           HMAC-SHA256(secret, body_without_sig)

where ``body_without_sig`` is ``msgpack.packb({"wire": 2, "frames": [...]})`` (same key order),
i.e. the signature covers every byte that carries meaning. Each frame is a map::

    id        str   32 lowercase hex digits            frame id = image id on both services
    sent_at   float64                                  sender's UNIX time when it was first queued
    stream    bin                                      the codec bitstream, the ``.lw`` container
                                                       byte for byte (``shared.bitstream``: format
                                                       version 2, 3 for a picture coded at a reduced
                                                       size, or 1 for streams encoded before 2)

Wire version 1 (senders before the compact container) differs only in ``"wire": 1`` and in
``stream``, which is the version 1 bitstream's map itself rather than its bytes. Receivers of
this build accept both wire versions; a receiver that only speaks version 1 answers a version 2
body with ``UnsupportedVersion`` (400) naming both versions, so upgrade the receiver first.

Receiver checks, in order, before allocating anything large: body size (``FrameTooLarge``, 413),
msgpack structure with parser limits, wire version, signature (``BadSignature``, 401, compared in
constant time), then per frame: id format, bitstream structure, version, internal consistency and
CRCs (``shared.bitstream.parse``); the receiver then checks model and weights (``ModelMismatch``,
409) and declared sizes against its limits. Only then is any tensor made.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from dataclasses import dataclass

import msgpack

from shared import bitstream as bs
from shared.errors import BadSignature, FrameTooLarge, InvalidImageId, NotABitstream, UnsupportedVersion, WireError

WIRE_VERSION = 2  # what this build sends
READ_WIRE_VERSIONS = (1, 2)
CONTENT_TYPE = "application/msgpack"
DEFAULT_MAX_FRAME_BYTES = 16 << 20
DEFAULT_MAX_BATCH = 64
_ID = re.compile(r"[0-9a-f]{32}")  # a frame's id, which is its image's id on both services


def check_image_id(image_id: str) -> str:
    """``image_id`` when it is an id (32 lowercase hex digits), else ``InvalidImageId``; both services
    check an id with this before it becomes a path or a query."""
    if not isinstance(image_id, str) or not _ID.fullmatch(image_id):
        raise InvalidImageId("image ids are 32 lowercase hex digits: the id the sender's POST /v1/images "
                             "answered with (a frame's id)")
    return image_id


@dataclass(frozen=True)
class Frame:
    id: str
    sent_at: float
    stream: bs.Bitstream

    def to_dict(self) -> dict:
        return {"id": self.id, "sent_at": float(self.sent_at), "stream": self.stream.to_bytes()}


def _body(frames: list[dict], wire_version: int = WIRE_VERSION) -> bytes:
    return msgpack.packb({"wire": wire_version, "frames": frames}, use_bin_type=True)


def sign(body: bytes, secret: bytes) -> bytes:
    return hmac.new(secret, body, hashlib.sha256).digest()


def pack_frames(frames: list[Frame], secret: bytes) -> bytes:
    """Frames -> one signed request body."""
    if not secret:
        raise ValueError("an empty secret cannot sign frames")
    dicts = [f.to_dict() for f in frames]
    body = _body(dicts)
    return msgpack.packb({"wire": WIRE_VERSION, "frames": dicts, "sig": sign(body, secret)}, use_bin_type=True)


def pack_stream_frame(frame_id: str, sent_at: float, stream_bytes: bytes, secret: bytes) -> bytes:
    """One frame from an already-encoded ``.lw`` container (what the sender's outbox stores)."""
    stream = bs.loads(stream_bytes)
    return pack_frames([Frame(id=frame_id, sent_at=sent_at, stream=stream)], secret)


def unpack_frames(data: bytes, secret: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                  max_batch: int = DEFAULT_MAX_BATCH) -> list[Frame]:
    """Verify and parse a request body. Raises a ``WireError``/``BitstreamError`` subclass."""
    if len(data) > max_frame_bytes:
        raise FrameTooLarge(f"body of {len(data)} bytes exceeds the receiver's limit of {max_frame_bytes}; "
                            "send fewer frames per request")
    if not data:
        raise WireError("empty body: POST a msgpack frame batch (see shared/wire.py)")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_frame_bytes,
                              max_str_len=4096, max_array_len=max(max_batch, 64), max_map_len=64,
                              max_ext_len=0)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise WireError(f"body is not a readable msgpack frame batch ({exc.__class__.__name__}); "
                        f"send {CONTENT_TYPE} as written by shared.wire.pack_frames") from exc
    if not isinstance(obj, dict) or set(obj) != {"wire", "frames", "sig"}:
        raise WireError("a frame batch is a map with exactly the keys wire, frames, sig")
    wire_version = obj["wire"]
    if not isinstance(wire_version, int) or isinstance(wire_version, bool) or wire_version not in READ_WIRE_VERSIONS:
        raise UnsupportedVersion(f"wire version {wire_version!r}; this receiver speaks versions "
                                 f"{', '.join(map(str, READ_WIRE_VERSIONS))}: upgrade the receiver")
    frames, sig = obj["frames"], obj["sig"]
    if not isinstance(sig, bytes) or len(sig) != 32:
        raise BadSignature("missing or malformed signature: frames must be signed with the shared LATENTWIRE_SECRET")
    if not isinstance(frames, list):
        raise WireError("frames must be a list")
    expected = sign(_body(frames, wire_version), secret)
    if not hmac.compare_digest(expected, sig):
        raise BadSignature("signature does not match: sender and receiver must share the same LATENTWIRE_SECRET")
    if not 1 <= len(frames) <= max_batch:
        raise WireError(f"a batch holds 1..{max_batch} frames, got {len(frames)}")
    out = []
    for f in frames:
        if not isinstance(f, dict) or set(f) != {"id", "sent_at", "stream"}:
            raise WireError("each frame is a map with exactly the keys id, sent_at, stream")
        if not isinstance(f["id"], str) or not _ID.fullmatch(f["id"]):
            raise WireError("frame id must be 32 lowercase hex digits")
        sent_at = f["sent_at"]
        if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)) or not math.isfinite(sent_at):
            raise WireError("sent_at must be a finite number (UNIX seconds)")
        out.append(Frame(id=f["id"], sent_at=float(sent_at), stream=_stream(f["stream"], wire_version)))
    return out


def _stream(value, wire_version: int) -> bs.Bitstream:
    """A frame's ``stream`` field -> Bitstream: bytes since wire version 2, the map in version 1."""
    if wire_version == 1:
        if not isinstance(value, dict):
            raise NotABitstream("a wire version 1 frame's stream must be a bitstream map")
        return bs.parse(value)
    if not isinstance(value, bytes):
        raise NotABitstream("a frame's stream must be the .lw container's bytes (msgpack bin)")
    return bs.loads(value)


# ---- the shared secret's policy (both services apply it at start-up) -------------------------
MIN_SECRET_CHARS = 16
# Public on purpose: it only lets a sender and a receiver both in insecure demo mode talk without
# configuring anything. Both services substitute this same string for an empty secret.
INSECURE_DEMO_SECRET = "latentwire-insecure-demo-secret"
_PLACEHOLDERS = {"secret", "password", "changeme", "default", "example", "test", "demo", "placeholder",
                 "yoursecret", "yoursecrethere", "mysecret", "sharedsecret", "latentwiresecret"}
_PLACEHOLDER_PREFIXES = ("changeme", "replaceme", "setme", "yoursecret", "todo", "fixme", "xxx")


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` is not fit to sign frames (empty, short, a placeholder), or None when it is."""
    if not secret:
        return "LATENTWIRE_SECRET is empty"
    if len(secret) < MIN_SECRET_CHARS:
        return f"LATENTWIRE_SECRET has {len(secret)} characters; use at least {MIN_SECRET_CHARS}"
    folded = re.sub(r"[^a-z0-9]", "", secret.lower())
    if (folded in _PLACEHOLDERS or folded.startswith(_PLACEHOLDER_PREFIXES) or "placeholder" in folded
            or len(set(secret)) < 4):
        return "LATENTWIRE_SECRET is a placeholder"
    return None


class SecretSettings:
    """The secret methods both services' settings share (each declares its own ``secret: SecretStr``
    and ``insecure_demo: bool`` fields, with its own env var aliases)."""

    def weak_secret(self) -> str | None:
        """Why the configured secret is weak (only non-None in insecure demo mode)."""
        return secret_problem(self.secret.get_secret_value())

    def secret_bytes(self) -> bytes:
        """The HMAC key: the configured secret, or the public demo key when demo mode has none."""
        return signing_key(self.secret.get_secret_value(), self.insecure_demo)


def check_secret(secret: str, insecure_demo: bool) -> None:
    """Refuse a weak secret at start-up unless insecure demo mode was asked for (ValueError)."""
    problem = secret_problem(secret)
    if problem and not insecure_demo:
        raise ValueError(
            f"{problem}. Set the same random LATENTWIRE_SECRET on sender and receiver "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
            "or run a local demo with LATENTWIRE_INSECURE_DEMO=1 / --insecure-demo"
        )


def signing_key(secret: str, insecure_demo: bool) -> bytes:
    """The HMAC key: the configured secret, or the public demo key when demo mode has none."""
    return (secret or (INSECURE_DEMO_SECRET if insecure_demo else "")).encode()
