"""Every sender endpoint. Handlers are thin: the work lives in intake, outbox, transmit.

    GET  /                                   upload page (templates/index.html, static/)
    POST /v1/images?quality=|max_bytes=&mode=&supersede=
                                             multipart ``file`` (repeatable) or a raw image body
                                             -> 202 {"images": [ImageOut, ...], "superseded": [id, ...]},
                                             each queued on disk; quality=auto: budgets from the link
                                             (sender/link.py); supersede=<key>: older queued frames of
                                             the key are dropped (sender/outbox.py)
    GET  /v1/images?status=&limit=           newest first + counts per status
    GET  /v1/images/{id}                     one image: numbers, status, attempts, last_error
    GET  /v1/images/{id}/reconstruction.png  what the receiver will show (kept for the newest images)
    GET  /v1/images/{id}/jpeg.jpg            Pillow JPEG at the same byte count
    GET  /v1/models                          {"models": [one per mode], default_quality, modes,
                                             default_mode}; entries alike on both services
    GET  /v1/link                            goodput, round trip, queued bytes, latency target
    GET  /healthz                            the process answers
    GET  /readyz                             {"status": ready|unavailable, "reasons", "checks"}: model
                                             loaded, outbox writable, workers running (503 if not)
    GET  /metrics                            Prometheus text (sender/metrics.py lists the names)
    GET  /openapi.json                       OpenAPI; GET /docs shows it (Swagger UI, no CDN) and
                                             /favicon.ico is the icon: both shared/service/docs.py
Errors are {"error": code, "message": what to do}: shared/service/handlers.py maps them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from sender.dependencies import ServicesDep
from sender.errors import ImageNotFound
from sender.intake import MODES, accept, parse_rate, parse_stream_key
from sender.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sender.schemas import ErrorBody, ImageList, ImageOut, LinkOut, ModelInfo, ModelsOut, Readiness, UploadResponse
from sender.uploads import read_uploads
from shared.wire import check_image_id

router = APIRouter()
HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
_ERRORS = {code: {"model": ErrorBody} for code in (400, 413, 415, 422, 503)}
_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}},
        }},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request, svc: ServicesDep) -> HTMLResponse:
    s = svc.settings
    return templates.TemplateResponse(request, "index.html", {
        "link": await link(svc),  # the page's first view of it; sender.js then polls GET /v1/link
        "default_quality": s.default_quality, "max_upload_mib": s.max_upload_bytes / (1 << 20),
        "max_files": s.max_files, "previews_keep": s.previews_keep,
        "models": [(m, f"{c.name}@{c.weights}") for m, c in svc.codecs.items()], "modes": list(svc.codecs),
        "default_mode": s.default_mode if s.default_mode in svc.codecs else "standard",
        "receiver_url": s.destination,
    })


@router.post("/v1/images", status_code=202, response_model=UploadResponse, responses=_ERRORS,
             openapi_extra={"requestBody": _UPLOAD_BODY})
async def upload_images(
    request: Request,
    svc: ServicesDep,
    quality: Annotated[float | Literal["auto"] | None, Query(
        description="0 (fewest bytes) .. 1 (best), or auto: the byte budget that reaches the receiver within "
                    "LATENTWIRE_SENDER_LATENCY_TARGET_S at the link's rate (GET /v1/link); default: auto when "
                    "that target is set, else the default quality")] = None,
    max_bytes: Annotated[int | None, Query(description="the best stream that fits this many bytes; below what the "
                                                    "full size needs, coded at a reduced size and shown at the full "
                                                    "size (coded_width / coded_height in the answer)")] = None,
    mode: Annotated[str | None, Query(description=f"one of: {', '.join(MODES)}; default from settings. denoise: "
                                      "the model trained to drop noise (fewer bytes, cleaner image)")] = None,
    preview: Annotated[bool, Query(description="false: skip the sender's own decode (psnr null), the JPEG "
                                   "comparison and the preview images; the lean path for bulk uploads")] = True,
    supersede: Annotated[str | None, Query(description="a stream key (1-64 of letters, digits, . _ : / -), e.g. a "
                                           "camera's name: older frames with this key that are still queued and "
                                           "not on their way become superseded and are never sent, so the newest "
                                           "picture does not wait behind stale ones")] = None,
) -> UploadResponse:
    """Encode each image, queue its frame durably, answer 202; delivery to the receiver follows."""
    rate = parse_rate(quality, max_bytes, mode or svc.settings.default_mode, svc.settings.default_quality,
                      tuple(svc.codecs), svc.settings.latency_target_s)
    stream_key = parse_stream_key(supersede)
    uploads = await read_uploads(request, svc.settings.max_upload_bytes, svc.settings.max_files)
    records, superseded = await accept(uploads, rate, svc, preview, stream_key)
    return UploadResponse(images=[ImageOut.from_record(r) for r in records], superseded=superseded)


@router.get("/v1/images", response_model=ImageList)
async def list_images(
    svc: ServicesDep,
    status: Literal["queued", "delivered", "failed", "superseded"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ImageList:
    records = await svc.outbox.list(status, limit)
    return ImageList(images=[ImageOut.from_record(r) for r in records], counts=await svc.outbox.counts())


@router.get("/v1/images/{image_id}", response_model=ImageOut, responses={400: {"model": ErrorBody},
                                                                          404: {"model": ErrorBody}})
async def get_image(image_id: str, svc: ServicesDep) -> ImageOut:
    record = await svc.outbox.get(check_image_id(image_id))
    if record is None:
        raise ImageNotFound(f"no image {image_id} in this sender's outbox")
    return ImageOut.from_record(record)


@router.get("/v1/images/{image_id}/reconstruction.png", response_class=FileResponse,
            responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}})
async def reconstruction(image_id: str, svc: ServicesDep) -> FileResponse:
    return _preview(svc, check_image_id(image_id), "png", "image/png")


@router.get("/v1/images/{image_id}/jpeg.jpg", response_class=FileResponse,
            responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}})
async def jpeg(image_id: str, svc: ServicesDep) -> FileResponse:
    return _preview(svc, check_image_id(image_id), "jpg", "image/jpeg")


@router.get("/v1/models", response_model=ModelsOut)
async def models(svc: ServicesDep) -> ModelsOut:
    return ModelsOut(models=[ModelInfo(mode=m, **c.info()) for m, c in svc.codecs.items()],
                     default_quality=svc.settings.default_quality, modes=list(svc.codecs),
                     default_mode=svc.settings.default_mode)


@router.get("/v1/link", response_model=LinkOut)
async def link(svc: ServicesDep) -> LinkOut:
    state = svc.deliverer.link.state()
    queued_bytes, queued_frames = await svc.outbox.queued_bytes(), await svc.outbox.pending()
    rate = state.goodput_bytes_per_s
    return LinkOut(goodput_kbps=_kbps(rate), measured_kbps=_kbps(state.measured_bytes_per_s),
                   rtt_s=None if state.rtt_s is None else round(state.rtt_s, 4), source=state.source,
                   samples=state.samples, queued_bytes=queued_bytes, queued_frames=queued_frames,
                   drain_s=None if rate is None else round(queued_bytes / rate, 3),
                   latency_target_s=svc.settings.latency_target_s, start_kbps=svc.settings.link_start_kbps)


def _kbps(bytes_per_s: float | None) -> float | None:
    return None if bytes_per_s is None else round(bytes_per_s * 8 / 1000, 3)


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request) -> JSONResponse:
    """200 when the model is loaded, the outbox can be written and the encoder and delivery workers
    run; else 503, each failed check with a reason saying what to do."""
    svc = getattr(request.app.state, "services", None)
    checks = {"model": svc is not None and svc.codec is not None, "outbox": False,
              "encoder": svc is not None and svc.encoder.alive, "delivery": svc is not None and svc.deliverer.alive}
    if svc is not None:
        try:
            await svc.outbox.check_writable()
            checks["outbox"] = True
        except Exception:  # any failure is "not ready"; the reason below names no path
            checks["outbox"] = False
    reasons = [reason for name, reason in _NOT_READY.items() if not checks[name]]
    body = Readiness.of(checks, reasons)
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


# What each failed /readyz check means and what to do; with no services at all the sender has not
# finished starting (or its start failed), so every check fails and the first reason says so.
_NOT_READY = {
    "model": "the model is not loaded: the sender is still starting, or its start failed (its log says why)",
    "outbox": "the outbox database cannot be written: check that the data dir (LATENTWIRE_SENDER_DATA_DIR) is "
              "on a writable disk with free space and that no other process holds outbox.sqlite3",
    "encoder": "the encoder thread is not running: restart the sender (its log has the error that stopped it)",
    "delivery": "the delivery worker is not running: restart the sender (its log has the error that stopped it)",
}


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}})
async def metrics(svc: ServicesDep) -> Response:
    svc.metrics.outbox_depth.set(await svc.outbox.pending())
    svc.metrics.outbox_queued_bytes.set(await svc.outbox.queued_bytes())
    state = svc.deliverer.link.state()
    svc.metrics.link_goodput.set(state.goodput_bytes_per_s or 0.0)
    svc.metrics.link_measured.set(state.measured_bytes_per_s or 0.0)
    svc.metrics.link_rtt.set(state.rtt_s or 0.0)
    svc.metrics.link_pinned.set(1.0 if state.source == "pinned" else 0.0)
    return Response(svc.metrics.render(), media_type=METRICS_CONTENT_TYPE)


def _preview(svc: ServicesDep, image_id: str, kind: str, media_type: str) -> FileResponse:
    path = svc.previews.path(image_id, kind)
    if not path.is_file():
        raise ImageNotFound(f"no preview for {image_id}: this sender keeps previews of its newest "
                            f"{svc.settings.previews_keep} images only (GET /v1/images/{image_id} has its numbers)")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})
