"""Every receiver endpoint. Handlers stay thin: the work is in decoder.py, store.py, events.py.

    POST /v1/frames            application/msgpack body (shared.wire) -> {"results": [{"id", "status"}]}
    GET  /v1/images            ?limit=1..200 (50) &before=<cursor> -> {"items": [meta, ...], "next": cursor|null}
    GET  /v1/images/{id}       -> meta                       (400 malformed id, 404 unknown)
    GET  /v1/images/{id}.png   -> image/png                  (400 malformed id, 404 unknown)
    GET  /v1/events            -> text/event-stream, "image" events with meta as data
    GET  /v1/models            -> {"models": [name, weights, device, precision, network, max_side, mode,
                                  clean_first per model], insecure_demo, wire_version, frame limits};
                                  entries alike on both services (shared/schemas.py)
    GET  /                     -> live gallery page
    GET  /healthz              -> {"status": "ok"} while the process serves requests
    GET  /readyz               -> {"status": ready|unavailable, "reasons", "checks", "model", "insecure_demo"}:
                                  200 ready / 503 with reasons (model + entropy tables, store writable;
                                  cluster mode: NATS reachable, PostgreSQL and S3 answering, each named)
    GET  /metrics              -> Prometheus text
    GET  /openapi.json         -> OpenAPI; GET /docs shows it (Swagger UI, no CDN) and /favicon.ico is the
                                  icon: both shared/service/docs.py
Errors are {"error": code, "message": what to do}: shared/service/handlers.py maps them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from shared.errors import FrameTooLarge, StoreError, WireError
from shared.wire import CONTENT_TYPE as MSGPACK, WIRE_VERSION, check_image_id
from receiver.decoder import tables_ready
from receiver.dependencies import Services, ServicesDep
from receiver.errors import ImageNotFound
from receiver.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from receiver.schemas import (ErrorBody, FramesResponse, Health, ImageMeta, ImagePage, ModelInfo, ReceiverModels,
                              ReceiverReadiness)
from receiver.store import as_json

router = APIRouter()
# No framing, plugins, <base> or form posts. Scripts are not restricted further: a strict
# script-src also forbids eval, which browser automation (Playwright's wait_for_function) needs,
# and the page has no inline code to protect anyway (values go in with textContent).
_GALLERY_CSP = "frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'"
_errors = {s: {"model": ErrorBody} for s in (400, 401, 409, 413, 503, 507)}


@router.post("/v1/frames", response_model=FramesResponse, responses=_errors, openapi_extra={
    "requestBody": {"required": True, "content": {MSGPACK: {"schema": {"type": "string", "format": "binary"}}}}})
async def post_frames(request: Request, svc: ServicesDep) -> dict:
    """Store a signed batch of frames (see shared/wire.py). All frames are validated before any
    is decoded; an id already stored answers "duplicate" and is not stored twice."""
    with svc.decoder.counting_rejections():
        svc.decoder.check_capacity()  # before reading up to max_frame_bytes we would only refuse
        body = await _read_body(request, svc.settings.max_frame_bytes)
        return {"results": await svc.decoder.receive(body)}


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with FrameTooLarge as soon as it is known to exceed ``limit``."""
    too_large = FrameTooLarge(f"the request body exceeds the receiver's limit of {limit} bytes; "
                              "send fewer frames per request")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WireError("Content-Length must be a byte count")
        if int(declared) > limit:
            raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
    except ClientDisconnect as exc:
        raise WireError("the client disconnected before the body was complete; send it again") from exc
    return bytes(body)


@router.get("/v1/images", response_model=ImagePage)
async def list_images(svc: ServicesDep, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                      before: Annotated[float | None, Query(description="cursor: `next` of the previous page")] = None
                      ) -> dict:
    items, next_cursor = await run_in_threadpool(svc.store.page, limit, before)
    return {"items": [as_json(row) for row in items], "next": next_cursor}


# The .png route comes first: "{image_id}" alone would also match "<id>.png".
@router.get("/v1/images/{image_id}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 400: {"model": ErrorBody}, 404: {"model": ErrorBody}})
async def image_png(image_id: str, svc: ServicesDep) -> Response:
    png = await run_in_threadpool(svc.store.read_png, check_image_id(image_id))  # from disk, or S3 in cluster mode
    if png is None:
        raise ImageNotFound(f"no stored image {image_id}: list stored images at /v1/images")
    # An id names one reconstruction forever, so browsers may cache it for good.
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=31536000, immutable"})


@router.get("/v1/images/{image_id}", response_model=ImageMeta,
            responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}})
async def image_meta(image_id: str, svc: ServicesDep) -> dict:
    row = await run_in_threadpool(svc.store.get, check_image_id(image_id))
    if row is None:
        raise ImageNotFound(f"no stored image {image_id}: list stored images at /v1/images")
    return as_json(row)


@router.get("/v1/images/{rest:path}", include_in_schema=False)
async def image_bad_path(rest: str) -> None:
    """Anything else under /v1/images/ (e.g. "../x" or "a/b") is a malformed id, never a path."""
    check_image_id(rest)  # raises InvalidImageId: the routes above took every "/"-free rest


@router.get("/v1/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(svc: ServicesDep) -> StreamingResponse:
    """Server-Sent Events: one `image` event (metadata JSON) per newly stored image."""
    subscriber = svc.hub.subscribe()  # before the response starts, so no event is missed after it
    return StreamingResponse(svc.hub.stream(subscriber, svc.settings.sse_heartbeat_s), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/v1/models", response_model=ReceiverModels)
async def models(svc: ServicesDep) -> ReceiverModels:
    """Every model it decodes (main, then denoise), each with the sender's mode it serves."""
    s = svc.settings
    return ReceiverModels(
        models=[ModelInfo(mode=svc.decoder.modes[c.name], **c.info()) for c in svc.codecs],
        insecure_demo=s.insecure_demo, wire_version=WIRE_VERSION, max_frame_bytes=s.max_frame_bytes,
        max_batch=s.max_batch)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def gallery(request: Request, svc: ServicesDep) -> HTMLResponse:
    items, next_cursor = await run_in_threadpool(svc.store.page, 50, None)
    return request.app.state.templates.TemplateResponse(request, "gallery.html", {
        "items": [as_json(row) for row in items], "next": next_cursor,
        "model": ", ".join(f"{c.name}@{c.weights}" for c in svc.codecs), "device": str(svc.codec.device),
        "insecure_demo": svc.settings.insecure_demo}, headers={"Content-Security-Policy": _GALLERY_CSP})


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    return {"status": "ok"}


_STARTING = "the receiver is still starting, or its start failed (its log says why)"


@router.get("/readyz", response_model=ReceiverReadiness, responses={503: {"model": ReceiverReadiness}})
async def readyz(request: Request) -> JSONResponse:
    """200 when the models (with their entropy-coder tables) are loaded and the store answers, and
    in cluster mode NATS is reachable; else 503, each failed check with a reason saying what to do."""
    svc: Services | None = getattr(request.app.state, "services", None)
    checks, reasons = {"model": svc is not None}, []
    if svc is None:
        reasons.append(f"the model is not loaded: {_STARTING}")
    elif not all(tables_ready(c) for c in svc.codecs):
        checks["model"] = False
        reasons.append("the model's entropy-coder tables are missing: re-export it with `latentwire export`")
    if svc is not None and svc.broker is not None:  # cluster mode only
        checks["broker"] = svc.broker.connected
        if not svc.broker.connected:
            reasons.append(svc.broker.unavailable_reason())
    checks["store"] = svc is not None
    if svc is None:
        reasons.append(f"the store is not open: {_STARTING}")
    else:
        try:
            await run_in_threadpool(svc.store.probe)
        except StoreError as exc:
            checks["store"] = False
            reasons.append(str(exc))
    codec = svc.codec if svc is not None else None
    body = ReceiverReadiness.of(checks, reasons, model=f"{codec.name}@{codec.weights}" if codec else None,
                                insecure_demo=request.app.state.settings.insecure_demo)
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}})
async def metrics(svc: ServicesDep) -> Response:
    svc.metrics.decode_queue_depth.set(svc.decoder.pending)
    return Response(svc.metrics.render(), media_type=METRICS_CONTENT_TYPE)

