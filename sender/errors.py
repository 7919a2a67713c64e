"""Errors only the sender raises. They hang off ``shared.errors.LatentwireError`` so the one
exception handler of both services (``shared/service/handlers.py``) maps them like every other
error (``ImageError``, ``RateError`` ... from ``shared.errors`` cover the image itself)::

    LatentwireError
    ├── UploadError                  400 the request, not the image, is unusable
    │   ├── UploadTooLarge           413 body over max_upload_bytes, more than max_files images, or
    │   │                                more decoded pixels than 4 images of max_side x max_side
    │   ├── UnsupportedMediaType     415 Content-Type is not multipart/form-data, image/* or octet-stream
    │   ├── MissingFile              422 a multipart request with no ``file`` field
    │   └── InvalidRequest           422 quality and max_bytes together, an unknown mode, a malformed
    │                                    supersede key, a query parameter of the wrong type (the same
    │                                    name as the receiver's 422 for a bad request)
    ├── (InvalidImageId 400, ImageNotFound 404: shared.errors)
    ├── OutboxFull                   503 outbox_max_pending frames wait for the receiver; retry later
    ├── EncoderBusy                  503 encode_queue_size images wait for the encoder; retry later
    └── OutboxError                  503 the outbox database cannot be written (disk full, locked)

``retry_after_s`` on the 503s becomes a ``Retry-After`` header. An error about one file of a
multi-file upload gets ``file`` (its name) set before it reaches the handler, which puts it in
the JSON body and the message, so the client knows which file to fix.
"""

from __future__ import annotations

from shared.errors import ImageNotFound, InvalidImageId, LatentwireError  # noqa: F401 (re-exported)


class UploadError(LatentwireError):
    status = 400


class UploadTooLarge(UploadError):
    status = 413


class UnsupportedMediaType(UploadError):
    status = 415


class MissingFile(UploadError):
    status = 422


class InvalidRequest(UploadError):
    status = 422


class OutboxFull(LatentwireError):
    status = 503

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EncoderBusy(LatentwireError):
    status = 503
    retry_after_s = 1


class OutboxError(LatentwireError):
    status = 503
    retry_after_s = 5
