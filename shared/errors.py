"""Every error latentwire raises on purpose, and the HTTP status each service maps it to.

    LatentwireError                      500 unless a subclass says otherwise
    ├── ImageError                       400 the uploaded bytes are not a usable image
    │   ├── NotAnImage                   400 not a format Pillow can identify, or zero bytes
    │   ├── TruncatedImage               400 the file ends early or its data is corrupt
    │   ├── UnsupportedImage             422 animated, or a mode with no conversion rule
    │   └── ImageTooLarge                413 declared size over the limit (checked before decoding)
    ├── RateError                        422 the request cannot be met at any rate
    │   ├── QualityOutOfRange            422 quality outside [0, 1] / max_bytes not positive
    │   └── BudgetTooSmall               422 even the lowest rate needs more than max_bytes
    ├── BitstreamError                   400 a codec bitstream that cannot be decoded
    │   ├── NotABitstream                400 not msgpack, wrong magic, wrong field types or shapes
    │   ├── UnsupportedVersion           400 a format version this build does not read
    │   ├── CorruptBitstream             400 CRC mismatch or truncated entropy-coded strings
    │   ├── DimensionsTooLarge           413 declared image size over this decoder's limit
    │   └── ModelMismatch                409 made by another model or other weights (names both)
    ├── WireError                        400 a transmission frame that cannot be accepted
    │   ├── FrameTooLarge                413 over the receiver's frame size limit
    │   └── BadSignature                 401 HMAC missing or wrong
    ├── InvalidImageId                   400 an image id that is not 32 lowercase hex digits
    ├── ImageNotFound                    404 no image with that id (either service)
    ├── CheckpointError                  500 a model file that cannot be served
    │   ├── CheckpointNotFound           500 no such file / no model of that name
    │   └── CheckpointHashMismatch       500 weights do not hash to what the file claims
    ├── StoreError                       503 the receiver cannot persist right now (Retry-After: 5)
    │   └── StoreFull                    507 the store's disk is full (Retry-After: 60)
    └── BrokerUnavailable                503 cluster mode: the NATS server cannot be reached (Retry-After: 2)

Each service adds its own leaves (``sender/errors.py``, ``receiver/errors.py``); one exception
handler, the same on both services (``shared/service/handlers.py``), answers ``status`` with
``body()`` and turns ``retry_after_s``, where an error has one, into a ``Retry-After`` header (a
sender keeps the frame and waits that long before sending again).
Messages say what to do next. Foreign exceptions (Pillow, msgpack, torch.load, sqlite, httpx) are
translated where they cross into our code, with ``raise ... from exc``.
"""

from __future__ import annotations


class LatentwireError(Exception):
    """Base class. ``status`` is the HTTP status a service answers with; ``code`` a stable name."""

    status = 500
    file: str | None = None  # the file of a multi-file upload the error is about (set by the sender)

    @property
    def code(self) -> str:
        return type(self).__name__

    def body(self) -> dict:
        """The JSON answer of either service: ``error`` and ``message``, plus ``file`` when set and
        whatever a subclass adds (``BudgetTooSmall``: ``min_bytes``)."""
        body = {"error": self.code, "message": str(self)}
        if self.file is not None:
            body["file"] = self.file
        return body


class ImageError(LatentwireError):
    status = 400


class NotAnImage(ImageError):
    status = 400


class TruncatedImage(ImageError):
    status = 400


class UnsupportedImage(ImageError):
    status = 422


class ImageTooLarge(ImageError):
    status = 413


class RateError(LatentwireError):
    status = 422


class QualityOutOfRange(RateError):
    status = 422


class BudgetTooSmall(RateError):
    status = 422

    def __init__(self, message: str, min_bytes: int) -> None:
        super().__init__(message)
        self.min_bytes = min_bytes

    def body(self) -> dict:
        return {**super().body(), "min_bytes": self.min_bytes}


class BitstreamError(LatentwireError):
    status = 400


class NotABitstream(BitstreamError):
    status = 400


class UnsupportedVersion(BitstreamError):
    status = 400


class CorruptBitstream(BitstreamError):
    status = 400


class DimensionsTooLarge(BitstreamError):
    status = 413


class ModelMismatch(BitstreamError):
    status = 409


class WireError(LatentwireError):
    status = 400


class FrameTooLarge(WireError):
    status = 413


class BadSignature(WireError):
    status = 401


class InvalidImageId(LatentwireError):
    status = 400


class ImageNotFound(LatentwireError):
    status = 404


class CheckpointError(LatentwireError):
    status = 500


class CheckpointNotFound(CheckpointError):
    status = 500


class CheckpointHashMismatch(CheckpointError):
    status = 500


class StoreError(LatentwireError):
    status = 503
    # A read-only or locked store needs an operator or a passing lock: a waiting sender asks again
    # every 5 s, one request each time, rather than every backoff step.
    retry_after_s = 5


class StoreFull(StoreError):
    status = 507
    retry_after_s = 60  # freeing disk space takes a person; the sender keeps the frames meanwhile


class BrokerUnavailable(LatentwireError):
    """Cluster mode (shared/jetstream.py): NATS cannot be reached yet; the work waits for it."""

    status = 503
    retry_after_s = 2
