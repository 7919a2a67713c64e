"""Errors only the receiver raises. They hang off ``shared.errors.LatentwireError`` so the one
exception handler of both services (``shared/service/handlers.py``) maps them like every other
error::

    LatentwireError
    ├── (InvalidImageId 400, ImageNotFound 404: shared.errors)
    └── DecoderBusy          503 the decode queue is full; retry after ``retry_after_s``

A request that fails validation (a query parameter of the wrong type) is 422 ``InvalidRequest``
(shared/service/handlers.py), the name the sender gives its own bad requests too.
"""

from __future__ import annotations

from shared.errors import ImageNotFound, InvalidImageId, LatentwireError  # noqa: F401 (re-exported)


class DecoderBusy(LatentwireError):
    status = 503
    retry_after_s = 1
