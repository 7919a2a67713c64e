"""The codec's bitstream container: what a ``.lw`` file holds and what the sender transmits.

Every stream is one msgpack object (bin for bytes, str for text) that begins with the magic
bytes ``LWIC`` and then the format version, so a reader of any version can tell which layout
follows. For a model with a context model (``shared/context.py``) this build writes version 7;
for one without, version 2, and version 3 for a picture coded at a reduced resolution. It reads
versions 1 to 7; any other version is refused with ``UnsupportedVersion``.

Version 2 is one msgpack array of 13 items, by position (71-74 bytes besides the two strings for
a 768x512 image and the shipped model, where version 1 took 156-159), so every stream begins with
the same bytes (``\\x9d\\xc4\\x04LWIC\\x02``)::

     0  magic     bin 4     b"LWIC"                     identifies a latentwire image code
     1  version   int       2                            format version
     2  model     str       e.g. "lw-vr-hyperprior"      model name (checkpoint name without hash)
     3  weights   bin 8     SHA-256 prefix of the model's weights (16 hex digits in APIs and errors)
     4  height    int       1..max_side                  the original image size
     5  width     int       1..max_side
     6  quality   float32   in [0, 1]                    the rate the stream was coded at: the
                                                         encoder rounds the requested quality to
                                                         float32 *before* coding, and both sides
                                                         compute the gains from this exact value
     7  y_shape   [int, int, int]  [M, H/16, W/16]       latent shape after padding to 64
     8  z_shape   [int, int, int]  [N, H/64, W/64]       hyper-latent shape
     9  y         bin       rANS-coded y (CompressAI's coder)
    10  z         bin       rANS-coded z
    11  y_crc32   int       zlib.crc32 of y
    12  z_crc32   int       zlib.crc32 of z

Integers use msgpack's smallest encoding (as every msgpack writer does); the only float is the
quality, packed as float32.

Version 3 is version 2 plus two items, for a picture coded at a reduced resolution (a byte
budget too small for the full one: shared/resolution.py). It begins
``\x9f\xc4\x04LWIC\x03``::

    13  coded_height  int   1..height                the size the picture was coded at; y_shape
    14  coded_width   int   1..width                 and z_shape follow it, not height x width

at least one of them smaller than height / width (a stream at full resolution is version 2, so
every reader of version 2 still reads it). The decoder synthesises coded_height x coded_width
pixels and resizes them to height x width with Pillow's Lanczos filter on 8-bit RGB, which is
integer arithmetic and gives the same pixels on every machine.

Version 4 has the layout of version 2 (13 items) or, for a reduced resolution, of version 3
(15 items), and begins ``\x9d\xc4\x04LWIC\x04`` or ``\x9f\xc4\x04LWIC\x04``. What differs is
the y string: the model's context model coded it group by group, each group's checkerboard
anchors before its other half, every step's tables computed from what was decoded before it, in
one rANS string. A decoder must therefore know the model has a context model, and a model with
one codes nothing else: ``check_model`` refuses (``UnsupportedVersion``) a version 4 stream for
a model without a context model and a version 1-3 stream for a model with one. Receivers older than version 4 refuse
these streams with ``UnsupportedVersion`` (a 4xx naming the versions they read).

Version 5 codes what version 4 does (the same symbols, so the same pixels) in fewer bytes: z's
symbols and then y's, in the context model's order, go into *one* rANS string (one coder state
and tail instead of two), with one CRC, and the latent shapes are left out (they follow the size
and the model). One msgpack array of 9 items, or 11 for a reduced resolution, beginning
``\x99\xc4\x04LWIC\x05`` or ``\x9b\xc4\x04LWIC\x05``::

     0-6  magic, version (5), model, weights, height, width, quality    as in version 2
     7    data           bin   rANS-coded z, then y
     8    crc32          int   zlib.crc32 of data
     9-10 coded_height, coded_width                                     as in version 3, when reduced

``Bitstream.y_shape`` and ``z_shape`` of a parsed version 5 stream hold None for the channels.

Version 6 is version 5 without the model's name: the weights field already names one model
exactly, so a decoder finds its model by the weights (a receiver among those it serves, the CLI
among its models folder). 8 items, or 10 for a reduced resolution, beginning
``\x98\xc4\x04LWIC\x06`` or ``\x9a\xc4\x04LWIC\x06``::

     0-1  magic, version (6)
     2    weights        bin 8
     3-5  height, width, quality
     6    data           bin   rANS-coded z, then y
     7    crc32          int
     8-9  coded_height, coded_width, when reduced

A parsed version 6 stream's ``Bitstream.model`` is "" (the stream does not say it).

Version 7 has version 6's fields (beginning ``\x98\xc4\x04LWIC\x07`` or ``\x9a\xc4\x04LWIC\x07``);
its y leaves out the latent positions past the picture. A picture whose sides are not multiples of
64 is coded padded to them; y's rows and columns past ``latent_extent(coded_height, coded_width)``
(one position per 16 pixels, rounded up) hold padding alone, which the receiver crops. Versions 4
to 6 code those positions too (this build's encoder sets them to their means: symbol 0, a few bits
each); version 7 codes nothing there and the decoder takes the means, so its pixels are those of
the same code in version 6.

A model with a context model writes version 7 and still reads versions 4 to 6; a receiver older
than version 7 refuses these streams with ``UnsupportedVersion`` (a 4xx naming the versions it reads).

Version 1 (written until the compact layout; still read, e.g. ``tests/data/golden.lw`` and
streams in old outboxes) is one msgpack map with these keys in this order, beginning with
``\\x8a\\xa5magic\\xc4\\x04LWIC``::

    magic     bin   b"LWIC"
    version   int   1
    model     str
    weights   str   16 hex digits
    size      [int, int]   [height, width]
    quality   float64 in [0, 1]     (coded with exactly this value)
    y_shape   [int, int, int]
    z_shape   [int, int, int]
    strings   [bin, bin]            y then z
    crc32     [int, int]            zlib.crc32 of each string

A parsed stream remembers its version: ``Bitstream.to_bytes()`` writes it back in that layout,
byte for byte, so a version 1 stream forwarded by a sender still decodes to the same pixels.

Both strings come from CompressAI's 64-bit rANS coder, which writes 32-bit little-endian words
back to front and finishes with its 8-byte state in front of them (where the decoder starts);
so a string that can decode at all is a multiple of 4 bytes, at least 8, whose first 8 bytes
(little-endian) hold a state in [2**31, 2**63).
Anything else is refused as ``CorruptBitstream`` even when its CRC matches (an empty string
with a valid CRC would otherwise make the rANS decoder read past the end of its buffer).

Checks, in order, before any tensor is allocated. ``loads``/``parse``: total length, msgpack
structure (with parser limits), magic, version, field types, size and latent shapes against each
other (version 3: the coded size within the declared one, the latents following the coded size),
each string's CRC, then each string's rANS framing. ``check_model`` (which ``Codec.parse``
and ``Codec.decode`` apply next): model and weights (``ModelMismatch`` names both), size against
the decoder's limit, latent channels. Only then is the entropy decoder run. Golden streams
(``tests/data/golden.lw``, version 1, and ``golden-v2.lw`` to ``golden-v7.lw``) pin the layouts.
"""

from __future__ import annotations

import math
import re
import struct
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
VERSION = 2  # what this build writes for a picture coded at its own size
RESAMPLED_VERSION = 3  # ... and for one coded at a reduced resolution
CONTEXT_VERSION = 7  # ... and for a model with a context model, at either size
CONTEXT_VERSIONS = (4, 5, 6, 7)  # the versions a model with a context model codes (it writes 7, reads all)
JOINT_VERSIONS = (5, 6, 7)  # z and y in one string, the latent shapes left out
UNNAMED_VERSIONS = (6, 7)  # the weights alone name the model
CROPPED_VERSIONS = (7,)  # y leaves out the latent positions past the picture
READ_VERSIONS = (1, 2, 3, 4, 5, 6, 7)
# Largest possible stream: 4096x4096 at the top rate is well under 8 MB; anything bigger is not ours.
MAX_STREAM_BYTES = 64 << 20
WEIGHTS_BYTES = 8  # 16 hex digits, as shared.checkpoint.weights_hash writes them
_KEYS_V1 = ("magic", "version", "model", "weights", "size", "quality", "y_shape", "z_shape", "strings", "crc32")
FIELDS_V2 = ("magic", "version", "model", "weights", "height", "width", "quality", "y_shape", "z_shape",
             "y", "z", "y_crc32", "z_crc32")
FIELDS_V3 = FIELDS_V2 + ("coded_height", "coded_width")
FIELDS_V5 = ("magic", "version", "model", "weights", "height", "width", "quality", "data", "crc32")
FIELDS_V5_RESIZED = FIELDS_V5 + ("coded_height", "coded_width")
FIELDS_V6 = tuple(f for f in FIELDS_V5 if f != "model")
FIELDS_V6_RESIZED = FIELDS_V6 + ("coded_height", "coded_width")
_LAYOUTS = {1: "map", 2: "array", 3: "array", 4: "array", 5: "array", 6: "array", 7: "array"}
_HEX_WEIGHTS = re.compile(r"^[0-9a-f]{%d}$" % (2 * WEIGHTS_BYTES))
# rANS framing (CompressAI's Rans64: 32-bit words, 8-byte final state in [RANS64_L, RANS64_L << 32)).
RANS_WORD_BYTES = 4
RANS_MIN_BYTES = 8
_RANS64_L = 1 << 31


def coded_quality(quality: float) -> float:
    """``quality`` rounded to the nearest float32: the value a version 2 stream stores and the
    encoder codes with, so that the decoder, which only sees the stored value, computes the same
    gains bit for bit."""
    return struct.unpack("<f", struct.pack("<f", float(quality)))[0]


@dataclass(frozen=True)
class Bitstream:
    model: str  # "" for versions 6 and 7, which leave the name out (their weights name the model)
    weights: str  # 16 lowercase hex digits
    height: int
    width: int
    quality: float  # exactly the value the strings were coded with
    # [M, H/16, W/16] and [N, H/64, W/64]; a version 5 stream leaves the channels out (None): the
    # weights name the model, which knows them.
    y_shape: tuple
    z_shape: tuple
    strings: tuple[bytes, ...]  # (y, z); versions 5 to 7: (z and y in one rANS string,)
    version: int = VERSION  # the layout ``to_bytes`` writes: the one it was parsed from, or VERSION
    # Version 3: (coded_height, coded_width), the reduced size the latents are for. None: height x width.
    coded_size: tuple[int, int] | None = None

    @property
    def coded_height(self) -> int:
        return self.height if self.coded_size is None else self.coded_size[0]

    @property
    def coded_width(self) -> int:
        return self.width if self.coded_size is None else self.coded_size[1]

    def to_obj(self) -> list | dict:
        """The msgpack object of this stream's version (a list from version 2 on, a map for 1)."""
        if self.version == 1:
            y, z = (bytes(s) for s in self.strings)
            return {
                "magic": MAGIC, "version": 1, "model": self.model, "weights": self.weights,
                "size": [self.height, self.width], "quality": float(self.quality),
                "y_shape": list(self.y_shape), "z_shape": list(self.z_shape),
                "strings": [y, z], "crc32": [zlib.crc32(y), zlib.crc32(z)],
            }
        if self.version not in (2, 3, *CONTEXT_VERSIONS):
            raise ValueError(f"cannot write bitstream format version {self.version}")
        if self.version not in CONTEXT_VERSIONS and (self.version == 3) != (self.coded_size is not None):
            raise ValueError("version 3 is for, and only for, a stream with a coded_size")
        if not _HEX_WEIGHTS.match(self.weights):
            raise ValueError(f"weights must be {2 * WEIGHTS_BYTES} lowercase hex digits, got {self.weights!r}")
        if coded_quality(self.quality) != self.quality:
            raise ValueError(f"quality {self.quality!r} is not a float32: code with coded_quality(q)")
        if (len(self.strings) == 1) != (self.version in JOINT_VERSIONS):
            raise ValueError("a version 5 to 7 stream holds one string (z and y), any other version two (y, z)")
        if self.version in JOINT_VERSIONS:
            data = bytes(self.strings[0])
            named = [] if self.version in UNNAMED_VERSIONS else [self.model]
            fields = [MAGIC, self.version, *named, bytes.fromhex(self.weights), self.height, self.width,
                      float(self.quality), data, zlib.crc32(data)]
            return fields if self.coded_size is None else fields + list(self.coded_size)
        y, z = (bytes(s) for s in self.strings)
        fields = [MAGIC, self.version, self.model, bytes.fromhex(self.weights), self.height, self.width,
                  float(self.quality), list(self.y_shape), list(self.z_shape), y, z,
                  zlib.crc32(y), zlib.crc32(z)]
        return fields if self.coded_size is None else fields + list(self.coded_size)

    def to_bytes(self) -> bytes:
        # Version 2 holds one float, the quality, which is float32; version 1's is float64.
        return msgpack.packb(self.to_obj(), use_bin_type=True, use_single_float=self.version >= 2)

    @property
    def payload_bytes(self) -> int:
        """Bytes of entropy-coded data alone; the container adds the rest (module docstring)."""
        return sum(len(s) for s in self.strings)


_NOT_LW = ("not a latentwire bitstream: a .lw file starts with the LWIC magic; give a file made by "
           "`latentwire encode` or a sender")


def unpack(data: bytes, max_bytes: int = MAX_STREAM_BYTES) -> dict | list:
    """msgpack -> the stream's object (list or map), with size limits applied by the parser itself."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NotABitstream("a bitstream must be bytes")
    if len(data) > max_bytes:
        raise NotABitstream(f"{len(data)} bytes is more than any latentwire stream ({max_bytes})")
    if len(data) == 0:
        raise NotABitstream("empty bitstream: nothing to decode")
    # Every version names itself within its first 16 bytes; shorter data is a truncated stream
    # (CorruptBitstream below) or nothing at all.
    named = MAGIC in bytes(data[:16])
    if len(data) >= 16 and not named:
        raise NotABitstream(_NOT_LW)
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_bin_len=max_bytes, max_str_len=4096,
            max_array_len=64, max_map_len=64, max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        raise NotABitstream("trailing bytes after the bitstream: the file was concatenated or damaged"
                            if named else _NOT_LW) from exc
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise CorruptBitstream(f"not a readable msgpack bitstream ({exc.__class__.__name__}): "
                               "the stream is truncated or not a .lw file") from exc
    if not isinstance(obj, (dict, list)):
        raise NotABitstream("a bitstream is a msgpack array (or a map, version 1); this is a "
                            + type(obj).__name__)
    return obj


def parse(obj: dict | list) -> Bitstream:
    """Validate an unpacked stream (a version 2 list or a version 1 map) into a ``Bitstream``.

    Checks structure, magic, version and internal consistency; not the model (see ``check_model``).
    """
    if isinstance(obj, list):
        magic, version = (obj + [None, None])[:2]
        layout = "array"
    elif isinstance(obj, dict):
        magic, version = obj.get("magic"), obj.get("version")
        layout = "map"
    else:
        raise NotABitstream("a bitstream is a msgpack array (or a map, version 1)")
    if magic != MAGIC:
        raise NotABitstream("wrong magic bytes: this is not a latentwire image code (.lw)")
    if not isinstance(version, int) or isinstance(version, bool):
        raise NotABitstream("the bitstream's version field is missing or not an integer")
    if version not in READ_VERSIONS:
        raise UnsupportedVersion(
            f"bitstream format version {version}; this build reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}: upgrade latentwire (newer) or re-encode the image (older)"
        )
    if _LAYOUTS[version] != layout:
        raise NotABitstream(f"a version {version} bitstream is a msgpack {_LAYOUTS[version]}; "
                            f"this one is a msgpack {layout}")
    if version == 1:
        fields = _fields_v1(obj)
    elif version in JOINT_VERSIONS:
        fields = _fields_joint(obj, version)
    elif version == 4:
        fields = _fields_v2(obj, FIELDS_V3 if len(obj) == len(FIELDS_V3) else FIELDS_V2)
    else:
        fields = _fields_v2(obj, FIELDS_V2 if version == 2 else FIELDS_V3)
    return _check(version=version, **fields)


def _fields_v1(obj: dict) -> dict:
    missing = [k for k in _KEYS_V1 if k not in obj]
    if missing:
        raise NotABitstream(f"bitstream lacks field(s): {', '.join(missing)}")
    height, width = _int_list(obj["size"], 2, "size")
    strings, crcs = obj["strings"], obj["crc32"]
    if (not isinstance(strings, list) or len(strings) != 2
            or not all(isinstance(s, bytes) for s in strings)):
        raise NotABitstream("strings must be a list of two byte strings (y, z)")
    if not isinstance(crcs, list) or len(crcs) != 2 or not all(_is_int(c) for c in crcs):
        raise NotABitstream("crc32 must be a list of two integers")
    if not isinstance(obj["weights"], str):
        raise NotABitstream("weights must be a string")
    return dict(model=obj["model"], weights=obj["weights"], height=height, width=width,
                quality=obj["quality"], y_shape=obj["y_shape"], z_shape=obj["z_shape"],
                strings=strings, crcs=crcs)


def _fields_v2(obj: list, names: tuple[str, ...]) -> dict:
    """Version 2's fields, or version 3's (``names``: FIELDS_V3)."""
    if len(obj) != len(names):
        raise NotABitstream(f"a version {obj[1]} bitstream has {len(names)} fields, this one {len(obj)}")
    f = dict(zip(names, obj))
    strings, crcs = [f["y"], f["z"]], [f["y_crc32"], f["z_crc32"]]
    if not all(isinstance(s, bytes) for s in strings):
        raise NotABitstream("y and z must be byte strings")
    if not all(_is_int(c) for c in crcs):
        raise NotABitstream("y_crc32 and z_crc32 must be integers")
    return dict(_header(f), y_shape=f["y_shape"], z_shape=f["z_shape"], strings=strings, crcs=crcs)


def _fields_joint(obj: list, version: int) -> dict:
    """Version 5's, 6's or 7's fields: one string (z, then y) and its CRC; the latent shapes follow
    the size; versions 6 and 7 name no model ("")."""
    full, resized = (FIELDS_V5, FIELDS_V5_RESIZED) if version == 5 else (FIELDS_V6, FIELDS_V6_RESIZED)
    if len(obj) not in (len(full), len(resized)):
        raise NotABitstream(f"a version {version} bitstream has {len(full)} fields ({len(resized)} "
                            f"coded at a reduced size), this one {len(obj)}")
    f = dict(zip(resized, obj))
    f.setdefault("model", "")
    if not isinstance(f["data"], bytes):
        raise NotABitstream("data must be a byte string")
    if not _is_int(f["crc32"]):
        raise NotABitstream("crc32 must be an integer")
    header = _header(f)
    coded_h, coded_w = header["coded_size"] or (header["height"], header["width"])
    pad_h, pad_w = -(-coded_h // 64) * 64, -(-coded_w // 64) * 64
    return dict(header, y_shape=[None, pad_h // 16, pad_w // 16], z_shape=[None, pad_h // 64, pad_w // 64],
                strings=[f["data"]], crcs=[f["crc32"]])


def _header(f: dict) -> dict:
    """The fields versions 2 to 7 share (model, weights, size, quality, coded size), by name."""
    weights = f["weights"]
    if not isinstance(weights, bytes) or len(weights) != WEIGHTS_BYTES:
        raise NotABitstream(f"weights must be {WEIGHTS_BYTES} bytes")
    height, width = _int_list([f["height"], f["width"]], 2, "height/width")
    quality = f["quality"]
    if _is_number(quality) and not math.isnan(quality) and not _is_float32(quality):
        raise NotABitstream("quality must be a float32")
    coded_size = None
    if "coded_height" in f:
        coded_size = tuple(_int_list([f["coded_height"], f["coded_width"]], 2, "coded_height/coded_width"))
    return dict(model=f["model"], weights=weights.hex(), height=height, width=width, quality=quality,
                coded_size=coded_size)


def _check(version: int, model, weights: str, height: int, width: int, quality, y_shape, z_shape,
           strings: list[bytes], crcs: list[int], coded_size: tuple[int, int] | None = None) -> Bitstream:
    """The checks both versions share, in the order the module docstring gives."""
    if not isinstance(model, str):
        raise NotABitstream("model must be a string")
    stated = version not in JOINT_VERSIONS  # versions 5 to 7 leave the channels out; the shapes follow the size
    y_shape = _int_list(y_shape, 3, "y_shape") if stated else list(y_shape)
    z_shape = _int_list(z_shape, 3, "z_shape") if stated else list(z_shape)
    if not _is_number(quality) or math.isnan(quality) or not (0.0 <= quality <= 1.0):
        raise NotABitstream("quality must be a number in [0, 1]")
    if height < 1 or width < 1:
        raise NotABitstream(f"declared size {height}x{width} is empty")
    coded_h, coded_w = (height, width) if coded_size is None else coded_size
    if coded_size is not None and not (1 <= coded_h <= height and 1 <= coded_w <= width
                                       and coded_size != (height, width)):
        raise NotABitstream(f"coded size {coded_h}x{coded_w} must be within the declared {height}x{width} "
                            "and smaller in at least one side (a full-size stream leaves it out)")
    pad_h, pad_w = -(-coded_h // 64) * 64, -(-coded_w // 64) * 64
    if y_shape[1:] != [pad_h // 16, pad_w // 16] or z_shape[1:] != [pad_h // 64, pad_w // 64]:
        raise NotABitstream(
            f"latent shapes y={y_shape} z={z_shape} do not match the "
            + (f"declared size {height}x{width}" if coded_size is None else f"coded size {coded_h}x{coded_w}")
        )
    names = ("y", "z") if stated else ("data",)
    for name, s, c in zip(names, strings, crcs):
        if zlib.crc32(s) != c:
            raise CorruptBitstream(
                f"CRC mismatch in the {name} string: the stream was damaged in transit or storage; "
                "ask the sender to send it again"
            )
    for name, s in zip(names, strings):
        _check_rans_framing(name, s)
    return Bitstream(model=model, weights=weights, height=height, width=width, quality=float(quality),
                     y_shape=tuple(y_shape), z_shape=tuple(z_shape), strings=tuple(strings),
                     version=version, coded_size=coded_size)


def _check_rans_framing(name: str, s: bytes) -> None:
    """Refuse a string CompressAI's rANS coder cannot have written (see the module docstring)."""
    if len(s) < RANS_MIN_BYTES or len(s) % RANS_WORD_BYTES:
        raise CorruptBitstream(
            f"the {name} string has {len(s)} bytes; an rANS string is a multiple of "
            f"{RANS_WORD_BYTES} bytes and at least {RANS_MIN_BYTES}: the encoder that wrote it is broken"
        )
    state = int.from_bytes(s[:8], "little")
    if not _RANS64_L <= state < _RANS64_L << 32:
        raise CorruptBitstream(
            f"the {name} string does not begin with a valid rANS state: the encoder that wrote it is broken"
        )


def check_model(bs: Bitstream, model: str, weights: str, latent_channels: tuple[int, int],
                max_side: int, context: bool = False) -> None:
    """Refuse a stream this decoder cannot decode: other model, other weights, a format the model
    does not code (``context``: the model has a context model, so its streams are version 4 to
    7), too large. A version 6 or 7 stream names no model: its weights alone must match."""
    if (bs.model and bs.model != model) or bs.weights != weights:
        raise ModelMismatch(
            f"stream made by {describe(bs)}, this decoder serves {model}@{weights}: "
            "decode it with the matching checkpoint or re-encode with this one"
        )
    if (bs.version in CONTEXT_VERSIONS) != context:
        raise UnsupportedVersion(
            f"a version {bs.version} stream for {model}@{weights}, which codes only version "
            f"{'4-7' if context else '1-3'} streams: the stream was not made by this model's encoder"
        )
    if bs.height > max_side or bs.width > max_side:
        raise DimensionsTooLarge(
            f"stream declares {bs.height}x{bs.width} pixels; this decoder accepts at most {max_side}x{max_side}"
        )
    if bs.version not in JOINT_VERSIONS and (bs.y_shape[0], bs.z_shape[0]) != latent_channels:
        raise NotABitstream(
            f"latent channels {bs.y_shape[0]}/{bs.z_shape[0]} do not match the model's {latent_channels}"
        )


def describe(bs: Bitstream) -> str:
    """How errors name the model a stream was made by: name@weights, or the weights alone for a
    version 6 or 7 stream (which leaves the name out)."""
    return f"model {bs.model}@{bs.weights}" if bs.model else f"the model with weights {bs.weights}"


def loads(data: bytes, max_bytes: int = MAX_STREAM_BYTES) -> Bitstream:
    return parse(unpack(data, max_bytes))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_float32(value: float) -> bool:
    """Whether ``value`` is exactly a float32; a finite number beyond float32's range is not."""
    try:
        return coded_quality(value) == value
    except OverflowError:
        return False


def _int_list(value, n: int, name: str) -> list[int]:
    if not isinstance(value, list) or len(value) != n or not all(_is_int(v) for v in value):
        raise NotABitstream(f"{name} must be a list of {n} integers")
    if any(v < 0 or v > 1 << 20 for v in value):
        raise NotABitstream(f"{name}={value} is out of range")
    return list(value)
