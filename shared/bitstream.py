"""The codec's bitstream container: what a ``.lw`` file holds and what the sender transmits.

Format version 1 is one msgpack map (bin for bytes, str for text, ints, one float64), with the
keys in this order, so every stream begins with the same bytes (``\\x8a\\xa5magic\\xc4\\x04LWIC``)::

    magic     bin   b"LWIC"                       identifies a latentwire image code
    version   int   1                              format version; readers refuse others
    model     str   e.g. "lw-vr-hyperprior"        model name (checkpoint name without hash)
    weights   str   16 hex digits                  SHA-256 prefix of the model's weights
    size      [int, int]   [height, width]         the original image size, 1..max_side each
    quality   float64 in [0, 1]                    the rate the stream was coded at
    y_shape   [int, int, int]  [M, H/16, W/16]     latent shape after padding to 64
    z_shape   [int, int, int]  [N, H/64, W/64]     hyper-latent shape
    strings   [bin, bin]                           rANS-coded y then z (CompressAI's coder)
    crc32     [int, int]                           zlib.crc32 of each string

Decoding checks, in order, before any tensor is allocated: total length, msgpack structure and
types, magic, version, model and weights (``ModelMismatch`` names both), size and shapes against
each other and the decoder's limits, then each string's CRC. Only then is the entropy decoder
run. A golden stream (``tests/data/golden.lw``) pins this layout.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import msgpack

from shared.errors import (
    CorruptBitstream,
    DimensionsTooLarge,
    ModelMismatch,
    NotABitstream,
    UnsupportedVersion,
)

MAGIC = b"LWIC"
VERSION = 1
# Largest possible stream: 4096x4096 at the top rate is well under 8 MB; anything bigger is not ours.
MAX_STREAM_BYTES = 64 << 20
_KEYS = ("magic", "version", "model", "weights", "size", "quality", "y_shape", "z_shape", "strings", "crc32")


@dataclass(frozen=True)
class Bitstream:
    model: str
    weights: str
    height: int
    width: int
    quality: float
    y_shape: tuple[int, int, int]
    z_shape: tuple[int, int, int]
    strings: tuple[bytes, bytes]  # (y, z)

    def to_dict(self) -> dict:
        return {
            "magic": MAGIC,
            "version": VERSION,
            "model": self.model,
            "weights": self.weights,
            "size": [self.height, self.width],
            "quality": float(self.quality),
            "y_shape": list(self.y_shape),
            "z_shape": list(self.z_shape),
            "strings": [bytes(s) for s in self.strings],
            "crc32": [zlib.crc32(s) for s in self.strings],
        }

    def to_bytes(self) -> bytes:
        return msgpack.packb(self.to_dict(), use_bin_type=True)

    @property
    def payload_bytes(self) -> int:
        """Bytes of entropy-coded data alone (the container adds a fixed ~100)."""
        return sum(len(s) for s in self.strings)


def unpack(data: bytes, max_bytes: int = MAX_STREAM_BYTES) -> dict:
    """msgpack -> dict, with size limits applied by the parser itself."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NotABitstream("a bitstream must be bytes")
    if len(data) > max_bytes:
        raise NotABitstream(f"{len(data)} bytes is more than any latentwire stream ({max_bytes})")
    if len(data) == 0:
        raise NotABitstream("empty bitstream: nothing to decode")
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_bin_len=max_bytes, max_str_len=4096,
            max_array_len=64, max_map_len=64, max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        raise NotABitstream("trailing bytes after the bitstream: the file was concatenated or damaged") from exc
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise CorruptBitstream(f"not a readable msgpack bitstream ({exc.__class__.__name__}): "
                               "the stream is truncated or not a .lw file") from exc
    if not isinstance(obj, dict):
        raise NotABitstream("a bitstream is a msgpack map; this is a " + type(obj).__name__)
    return obj


def parse(obj: dict) -> Bitstream:
    """Validate an unpacked map (from a file or a wire frame) into a ``Bitstream``.

    Checks structure, magic, version and internal consistency; not the model (see ``check_model``).
    """
    if not isinstance(obj, dict):
        raise NotABitstream("a bitstream is a msgpack map")
    if obj.get("magic") != MAGIC:
        raise NotABitstream("wrong magic bytes: this is not a latentwire image code (.lw)")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise NotABitstream("the bitstream's version field is missing or not an integer")
    if version != VERSION:
        raise UnsupportedVersion(
            f"bitstream format version {version}; this build reads version {VERSION}: "
            "upgrade latentwire (newer) or re-encode the image (older)"
        )
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        raise NotABitstream(f"bitstream lacks field(s): {', '.join(missing)}")
    model, weights = obj["model"], obj["weights"]
    if not isinstance(model, str) or not isinstance(weights, str):
        raise NotABitstream("model and weights must be strings")
    height, width = _int_list(obj["size"], 2, "size")
    y_shape = _int_list(obj["y_shape"], 3, "y_shape")
    z_shape = _int_list(obj["z_shape"], 3, "z_shape")
    quality = obj["quality"]
    if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not (0.0 <= quality <= 1.0) or math.isnan(quality):
        raise NotABitstream("quality must be a number in [0, 1]")
    strings, crcs = obj["strings"], obj["crc32"]
    if (not isinstance(strings, list) or len(strings) != 2
            or not all(isinstance(s, bytes) for s in strings)):
        raise NotABitstream("strings must be a list of two byte strings (y, z)")
    if not isinstance(crcs, list) or len(crcs) != 2 or not all(isinstance(c, int) and not isinstance(c, bool) for c in crcs):
        raise NotABitstream("crc32 must be a list of two integers")
    if height < 1 or width < 1:
        raise NotABitstream(f"declared size {height}x{width} is empty")
    pad_h, pad_w = -(-height // 64) * 64, -(-width // 64) * 64
    if y_shape[1:] != [pad_h // 16, pad_w // 16] or z_shape[1:] != [pad_h // 64, pad_w // 64]:
        raise NotABitstream(
            f"latent shapes y={y_shape} z={z_shape} do not match the declared size {height}x{width}"
        )
    for name, s, c in zip(("y", "z"), strings, crcs):
        if zlib.crc32(s) != c:
            raise CorruptBitstream(
                f"CRC mismatch in the {name} string: the stream was damaged in transit or storage; "
                "ask the sender to send it again"
            )
    return Bitstream(model=model, weights=weights, height=height, width=width, quality=float(quality),
                     y_shape=tuple(y_shape), z_shape=tuple(z_shape), strings=(strings[0], strings[1]))


def check_model(bs: Bitstream, model: str, weights: str, latent_channels: tuple[int, int],
                max_side: int) -> None:
    """Refuse a stream this decoder cannot decode: other model, other weights, too large."""
    if bs.model != model or bs.weights != weights:
        raise ModelMismatch(
            f"stream made by model {bs.model}@{bs.weights}, this decoder serves {model}@{weights}: "
            "decode it with the matching checkpoint or re-encode with this one"
        )
    if bs.height > max_side or bs.width > max_side:
        raise DimensionsTooLarge(
            f"stream declares {bs.height}x{bs.width} pixels; this decoder accepts at most {max_side}x{max_side}"
        )
    if (bs.y_shape[0], bs.z_shape[0]) != latent_channels:
        raise NotABitstream(
            f"latent channels {bs.y_shape[0]}/{bs.z_shape[0]} do not match the model's {latent_channels}"
        )


def loads(data: bytes, max_bytes: int = MAX_STREAM_BYTES) -> Bitstream:
    return parse(unpack(data, max_bytes))


def _int_list(value, n: int, name: str) -> list[int]:
    if (not isinstance(value, list) or len(value) != n
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise NotABitstream(f"{name} must be a list of {n} integers")
    if any(v < 0 or v > 1 << 20 for v in value):
        raise NotABitstream(f"{name}={value} is out of range")
    return list(value)
