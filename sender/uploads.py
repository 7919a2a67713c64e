"""Reading an upload request into named byte strings, with every limit applied while it streams in.

Accepted bodies (anything else is ``UnsupportedMediaType``, 415, before a byte is read):

    multipart/form-data           one or more parts named ``file`` (curl -F file=@a.png -F file=@b.jpg);
                                  other fields are ignored
    image/* , application/octet-stream   the raw image file as the whole body (curl --data-binary @a.png
                                  -H 'Content-Type: image/png'); its name comes from a
                                  Content-Disposition filename, else "upload"

The body limit (``max_upload_bytes``) is checked against Content-Length first and then counted
chunk by chunk, so a client that lies or streams without a length is cut off at the limit rather
than after the whole body sits in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from sender.errors import MissingFile, UnsupportedMediaType, UploadError, UploadTooLarge

RAW_TYPES = ("application/octet-stream",)
FIELD = "file"


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


async def read_uploads(request: Request, max_bytes: int, max_files: int) -> list[Upload]:
    headers = request.headers
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "multipart/form-data" and not media_type.startswith("image/") and media_type not in RAW_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {media_type or '(none)'!r} is not an upload this service reads: send "
            "multipart/form-data with a 'file' field, or the image itself as image/* or "
            "application/octet-stream"
        )
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes, f"Content-Length says {int(declared)} bytes")
    async with aclosing(_limited(request.stream(), max_bytes)) as stream:
        if media_type == "multipart/form-data":
            return await _multipart(headers, stream, max_files)
        data = b"".join([chunk async for chunk in stream])
    return [Upload(filename=_disposition_filename(headers) or "upload", data=data)]


async def _limited(stream: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    total = 0
    async with aclosing(stream):
        async for chunk in stream:
            total += len(chunk)
            if total > max_bytes:
                raise _too_large(max_bytes, "the body kept coming")
            yield chunk


def _too_large(max_bytes: int, why: str) -> UploadTooLarge:
    return UploadTooLarge(f"the request body is larger than this sender's limit of {max_bytes} bytes "
                          f"({max_bytes / (1 << 20):.0f} MiB; {why}): send fewer or smaller images per request")


async def _multipart(headers: Headers, stream: AsyncIterator[bytes], max_files: int) -> list[Upload]:
    # Non-file fields are tiny here (we read none of them); 64 KiB bounds what a client can park.
    parser = MultiPartParser(headers, stream, max_files=max_files, max_fields=100, max_part_size=64 << 10)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise UploadTooLarge(f"more than {max_files} files in one request: split the upload") from exc
        raise UploadError(f"the multipart body cannot be parsed ({exc.message}): let your HTTP client build "
                          "it, e.g. curl -F file=@photo.jpg") from exc
    try:
        parts = form.getlist(FIELD)
        if not parts:
            present = sorted(set(form.keys()))
            raise MissingFile(
                f"the multipart body has no field named {FIELD!r}"
                + (f" (it has {', '.join(map(repr, present))})" if present else "")
                + f": send each image as {FIELD}=@photo.jpg"
            )
        uploads = []
        for i, part in enumerate(parts):
            if not isinstance(part, UploadFile):
                raise MissingFile(f"field {FIELD!r} #{i + 1} is text, not a file: send {FIELD}=@photo.jpg "
                                  "(with the @) so the file's contents are uploaded")
            uploads.append(Upload(filename=part.filename or f"file{i + 1}", data=await part.read()))
        return uploads
    finally:
        await form.close()


def _disposition_filename(headers: Headers) -> str | None:
    value = headers.get("content-disposition", "")
    for item in value.split(";"):
        key, _, v = item.strip().partition("=")
        if key.lower() == "filename" and v:
            return v.strip('"')[:255]
    return None
