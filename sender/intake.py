"""From uploaded files to durably queued frames: the work behind POST /v1/images.

    uploads ─ load_image (threads) ─ [quality=auto: byte budgets from the link, sender/link.py]
            ─ Encoder (torch thread: encode, decode, PSNR)
            ─ JPEG at the same bytes + reconstruction PNG (threads)
            ─ Outbox.add (one fsync'd transaction; supersede=<key>: older queued frames of the key
              become superseded in it) ─ previews on disk ─ wake the deliverer ─ 202

A request is all or nothing: every file is checked and encoded before any is queued, and the
first bad file fails the whole request with its name attached (``exc.file``). Nothing is
answered 202 before its frame is on disk.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import anyio

from sender.comparison import JpegComparison, finite, preview_pixels
from sender.dependencies import Services
from sender.errors import InvalidRequest, OutboxFull, UploadTooLarge
from sender.link import Plan, plan, settle
from sender.outbox import FrameRecord, NewFrame
from sender.uploads import Upload
from shared.codec import check_quality
from shared.errors import BudgetTooSmall, LatentwireError, QualityOutOfRange
from shared.images import LoadedImage, load_image

log = logging.getLogger("latentwire.sender.intake")
# standard: the codec as trained on clean photos. denoise: the model trained on noisy inputs with
# clean targets (settings.denoise_model); it drops the noise, which is what costs the most bits.
MODES = ("standard", "denoise")
MAX_REQUEST_FULL_IMAGES = 4  # decoded pixels per request: this many max_side x max_side images
MAX_BYTES_LIMIT = 1 << 62  # any budget this large never binds; above it SQLite's INTEGER overflows
STREAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")  # supersede=: a camera name, a URL-ish path


@dataclass(frozen=True)
class Rate:
    quality: float | None
    max_bytes: int | None
    mode: str
    auto: bool = False  # quality=auto: each image's max_bytes comes from the link (sender/link.py)


def parse_rate(quality: float | str | None, max_bytes: int | None, mode: str, default_quality: float,
               available: tuple[str, ...] = MODES, latency_target_s: float | None = None) -> Rate:
    """The query's rate request, checked (422s): exactly one of quality / max_bytes, or neither,
    and a mode this sender has a model for. ``quality="auto"`` needs a latency target, and is
    what neither means when one is set."""
    if mode not in MODES:
        raise InvalidRequest(f"mode {mode!r} does not exist; modes: {', '.join(MODES)}")
    if mode not in available:
        raise InvalidRequest(f"mode {mode!r} is off on this sender: it has no model for it (set "
                             f"LATENTWIRE_SENDER_{mode.upper()}_MODEL); available: {', '.join(available)}")
    if quality is not None and max_bytes is not None:
        raise InvalidRequest("give quality (0..1) or max_bytes, not both")
    if max_bytes is not None:
        if max_bytes < 1 or max_bytes > MAX_BYTES_LIMIT:
            raise QualityOutOfRange(f"max_bytes must be a positive number of bytes up to {MAX_BYTES_LIMIT}, got "
                                    f"{max_bytes}; budget_binding in the answer says whether it limited the stream")
        return Rate(None, max_bytes, mode)
    if quality == "auto" or (quality is None and latency_target_s is not None):
        if latency_target_s is None:
            raise InvalidRequest("quality=auto sizes each image to the link and needs a latency target: set "
                                 "LATENTWIRE_SENDER_LATENCY_TARGET_S (seconds from upload to the receiver) on "
                                 "the sender, or give quality (0..1) or max_bytes")
        return Rate(None, None, mode, auto=True)
    if isinstance(quality, str):  # the route's type admits only "auto"; a library caller may not
        raise InvalidRequest(f"quality is a number from 0 to 1 or auto, got {quality!r}")
    return Rate(check_quality(default_quality if quality is None else quality), None, mode)


def parse_stream_key(key: str | None) -> str | None:
    """``supersede=``'s key, checked (422): 1 to 64 of letters, digits and . _ : / -, starting
    with a letter or digit."""
    if key is None:
        return None
    if not STREAM_KEY.fullmatch(key):
        shown = key if len(key) <= 80 else key[:80] + "..."
        raise InvalidRequest(f"supersede={shown!r} is not a stream key: use 1 to 64 characters of letters, "
                             "digits and . _ : / -, starting with a letter or digit (e.g. camera-3)")
    return key


@dataclass(frozen=True)
class _Accepted:
    frame: NewFrame
    png: bytes | None  # None: preview=false
    jpeg: JpegComparison | None


async def accept(uploads: list[Upload], rate: Rate, svc: Services, preview: bool = True,
                 stream_key: str | None = None) -> tuple[list[FrameRecord], list[str]]:
    """Encode and queue every upload (see the module docstring); returns their records and the
    ids of the older frames they superseded (``stream_key``: sender/outbox.py). Without
    ``preview`` the sender neither decodes its stream (no PSNR) nor makes the JPEG comparison and
    preview images: the lean path for bulk clients."""
    s = svc.settings
    pending = await svc.outbox.pending()
    # A cheap early refusal; add() checks again, after superseding, which may make the room.
    if pending + len(uploads) > s.outbox_max_pending and stream_key is None:
        retry = svc.deliverer.retry_after_s()
        raise OutboxFull(f"{pending} images are waiting for the receiver (limit {s.outbox_max_pending}); "
                         f"retry in {retry} s, once the receiver has caught up", retry_after_s=retry)

    images: list[LoadedImage] = []
    # A 50 KB PNG can decode to 48 MiB of pixels: bound what one request may hold decoded at once.
    max_pixels, pixels = MAX_REQUEST_FULL_IMAGES * s.max_side**2, 0
    for up in uploads:
        with _naming(up):
            im = await anyio.to_thread.run_sync(load_image, up.data, s.max_side, limiter=svc.pixel_limiter)
            pixels += im.width * im.height
            if pixels > max_pixels:
                raise UploadTooLarge(f"the images of this request hold over {max_pixels / 1e6:.0f} megapixels "
                                     "together: send them in several requests")
            images.append(im)

    link = svc.deliverer.link
    budget_plan, budgets = None, [(rate.max_bytes, None)] * len(images)
    if rate.auto:
        link_rate, source = link.budget_rate(s.link_start_kbps)
        interval = link.arrived(time.time())
        queued = await svc.outbox.queued_bytes() + link.encoding_bytes
        budget_plan = plan([im.width * im.height for im in images], link_rate, source, s.latency_target_s,
                           queued, s.auto_min_bpp, s.delivery_batch_max_bytes, interval)
        budgets = list(budget_plan.budgets)
    with link.reserve(sum(b for b, _ in budgets) if rate.auto else 0):
        return await _encode_and_queue(uploads, images, rate, budget_plan, budgets, svc, preview, stream_key)


async def _encode_and_queue(uploads: list[Upload], images: list[LoadedImage], rate: Rate, budget_plan: Plan | None,
                            budgets: list[tuple], svc: Services, preview: bool,
                            stream_key: str | None) -> tuple[list[FrameRecord], list[str]]:
    """``accept`` once the budgets are planned: encode, then queue (``budgets``: (max_bytes, reason)
    per image; reason None unless quality=auto)."""
    s = svc.settings
    codec = svc.codecs[rate.mode]
    # quality=auto's budgets are estimates of the link, and a feed must not outrun the encoder:
    # the quick search (shared/rate_control.py) codes a fraction of the exact one's streams.
    search = "quick" if rate.auto else "exact"
    results = await svc.encoder.encode_many([(codec, im.rgb, rate.quality, b) for im, (b, _) in zip(images, budgets)],
                                            measure=preview, search=search)
    if rate.auto:  # below the codec's smallest stream: send that (late, most likely), never refuse
        small = [i for i, r in enumerate(results) if isinstance(r, BudgetTooSmall) and r.min_bytes]
        again = await svc.encoder.encode_many([(codec, images[i].rgb, None, results[i].min_bytes) for i in small],
                                              measure=preview, search=search) if small else []
        for i, result in zip(small, again):
            budgets[i] = (results[i].min_bytes, "codec_minimum")
            results[i] = result
    for up, result in zip(uploads, results):
        if isinstance(result, BaseException):
            with _naming(up):
                raise result

    created_at = time.time()
    accepted = []
    through = 0  # this upload's stream bytes so far: they go ahead of the next image
    for index, (up, im, result) in enumerate(zip(uploads, images, results)):
        enc = result.encoded
        through += enc.nbytes
        budget = None
        if budget_plan is not None:
            budget = settle(budget_plan, index, *budgets[index], enc.quality, through).to_dict()
        max_bytes = budgets[index][0]  # max_bytes= of the upload, or quality=auto's budget; None: quality
        jpeg, png = None, None
        if preview:
            jpeg, png = await anyio.to_thread.run_sync(preview_pixels, im.rgb, result.reconstruction, enc.nbytes,
                                                       limiter=svc.pixel_limiter)
        frame = NewFrame(
            id=uuid.uuid4().hex, created_at=created_at, stream=enc.data, filename=up.filename[:255],
            mode=rate.mode, width=im.width, height=im.height, original_bytes=len(up.data), nbytes=enc.nbytes,
            bpp=enc.bpp, psnr=None if result.psnr is None else finite(result.psnr), quality=enc.quality,
            jpeg=jpeg.summary() if jpeg else None, noise=enc.noise, cleaned=enc.cleaned,
            coded_size=enc.stream.coded_size, budget=budget, max_bytes=max_bytes, stream_key=stream_key,
            source=up.data if rate.auto else None,  # a re-plan may code it again (sender/replan.py)
        )
        accepted.append(_Accepted(frame, png, jpeg))
        svc.metrics.encode_seconds.observe(result.encode_s)
        svc.metrics.encode_batch_size.observe(result.batch_size)

    superseded = await svc.outbox.add([a.frame for a in accepted], s.outbox_max_pending,
                                      svc.deliverer.retry_after_s())
    svc.deliverer.notify()
    if superseded:
        svc.metrics.superseded.inc(len(superseded))
        log.info("%d queued frame(s) of stream %r superseded by upload %s", len(superseded), stream_key,
                 accepted[-1].frame.id)
    for a in accepted:
        svc.metrics.images.inc()
        svc.metrics.stream_bytes.inc(a.frame.nbytes)
        svc.metrics.bpp.observe(a.frame.bpp)
        if a.frame.budget:
            svc.metrics.auto_budgets.labels(a.frame.budget["reason"]).inc()
            svc.metrics.auto_budget_bytes.observe(a.frame.budget["bytes"])
            if a.frame.budget["late"]:
                svc.metrics.auto_late.inc()
        if a.png is None:
            continue
        try:
            await anyio.to_thread.run_sync(svc.previews.save, a.frame.id, a.png, a.jpeg.data)
        except OSError as exc:  # the frame is queued: a lost preview must not turn that into a 500
            log.warning("preview of %s not saved: %s", a.frame.id, exc)
    return [_record(a.frame) for a in accepted], superseded


@contextmanager
def _naming(upload: Upload):
    """Attach the file's name to an error about it, so a multi-file upload says which file (in the
    answer's ``file`` and at the head of its message)."""
    try:
        yield
    except LatentwireError as exc:
        exc.file = upload.filename
        exc.args = (f"{upload.filename}: {exc} (the whole request was rejected; nothing was queued)",)
        raise


def _record(f: NewFrame) -> FrameRecord:
    return FrameRecord(
        id=f.id, created_at=f.created_at, status="queued", filename=f.filename, mode=f.mode, width=f.width,
        height=f.height, original_bytes=f.original_bytes, nbytes=f.nbytes, bpp=f.bpp, psnr=f.psnr,
        quality=f.quality, jpeg=f.jpeg, noise=f.noise, cleaned=f.cleaned, coded_size=f.coded_size,
        budget=f.budget, attempts=0, max_bytes=f.max_bytes, stream_key=f.stream_key,
        next_attempt_at=f.created_at, last_error=None, delivered_at=None, receiver_status=None,
    )

