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
    GET  /docs                 -> Swagger UI of /openapi.json, its files served by this app (the
                                  fastapi-offline package, mounted at /docs/assets): no CDN. No ReDoc:
                                  it always loads its logo from the web
    GET  /favicon.ico          -> the icon
Errors are {"error": code, "message": what to do}; the status map is in receiver/app.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from shared.codec import Codec
from shared.errors import FrameTooLarge, StoreError, WireError
from shared.wire import CONTENT_TYPE as MSGPACK, WIRE_VERSION
from receiver.decoder import Decoder, tables_ready
from receiver.errors import ImageNotFound, InvalidImageId
from receiver.events import EventHub
from receiver.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from receiver.schemas import (ErrorBody, FramesResponse, Health, ImageMeta, ImagePage, ModelInfo, ReceiverModels,
                              ReceiverReadiness)
from receiver.settings import Settings
from receiver.store import Store, as_json, check_id


def _state(name: str):
    def dependency(request: Request):
        return getattr(request.app.state, name)
    dependency.__name__ = f"get_{name}"
    return Depends(dependency)


SettingsDep = Annotated[Settings, _state("settings")]
MetricsDep = Annotated[Metrics, _state("metrics")]
CodecDep = Annotated[Codec, _state("codec")]
StoreDep = Annotated[Store, _state("store")]
DecoderDep = Annotated[Decoder, _state("decoder")]
HubDep = Annotated[EventHub, _state("hub")]

router = APIRouter()
_STATIC = Path(__file__).resolve().parent / "static"
# No framing, plugins, <base> or form posts. Scripts are not restricted further: a strict
# script-src also forbids eval, which browser automation (Playwright's wait_for_function) needs,
# and the page has no inline code to protect anyway (values go in with textContent).
_GALLERY_CSP = "frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'"
_errors = {s: {"model": ErrorBody} for s in (400, 401, 409, 413, 503, 507)}


@router.post("/v1/frames", response_model=FramesResponse, responses=_errors, openapi_extra={
    "requestBody": {"required": True, "content": {MSGPACK: {"schema": {"type": "string", "format": "binary"}}}}})
async def post_frames(request: Request, decoder: DecoderDep, settings: SettingsDep) -> dict:
    """Store a signed batch of frames (see shared/wire.py). All frames are validated before any
    is decoded; an id already stored answers "duplicate" and is not stored twice."""
    with decoder.counting_rejections():
        decoder.check_capacity()  # before reading up to max_frame_bytes we would only refuse
        body = await _read_body(request, settings.max_frame_bytes)
        return {"results": await decoder.receive(body)}


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
async def list_images(store: StoreDep, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                      before: Annotated[float | None, Query(description="cursor: `next` of the previous page")] = None
                      ) -> dict:
    items, next_cursor = await run_in_threadpool(store.page, limit, before)
    return {"items": [as_json(row) for row in items], "next": next_cursor}


# The .png route comes first: "{image_id}" alone would also match "<id>.png".
@router.get("/v1/images/{image_id}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 400: {"model": ErrorBody}, 404: {"model": ErrorBody}})
async def image_png(image_id: str, store: StoreDep) -> Response:
    png = await run_in_threadpool(store.read_png, check_id(image_id))  # from disk, or S3 in cluster mode
    if png is None:
        raise ImageNotFound(f"no stored image {image_id}: list stored images at /v1/images")
    # An id names one reconstruction forever, so browsers may cache it for good.
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=31536000, immutable"})


@router.get("/v1/images/{image_id}", response_model=ImageMeta,
            responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}})
async def image_meta(image_id: str, store: StoreDep) -> dict:
    row = await run_in_threadpool(store.get, check_id(image_id))
    if row is None:
        raise ImageNotFound(f"no stored image {image_id}: list stored images at /v1/images")
    return as_json(row)


@router.get("/v1/images/{rest:path}", include_in_schema=False)
async def image_bad_path(rest: str) -> None:
    """Anything else under /v1/images/ (e.g. "../x" or "a/b") is a malformed id, never a path."""
    raise InvalidImageId("image ids are 32 lowercase hex digits (the sender's frame id)")


@router.get("/v1/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(hub: HubDep, settings: SettingsDep) -> StreamingResponse:
    """Server-Sent Events: one `image` event (metadata JSON) per newly stored image."""
    subscriber = hub.subscribe()  # before the response starts, so no event is missed after it
    return StreamingResponse(hub.stream(subscriber, settings.sse_heartbeat_s), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/v1/models", response_model=ReceiverModels)
async def models(request: Request, decoder: DecoderDep, settings: SettingsDep) -> ReceiverModels:
    """Every model it decodes (main, then denoise), each with the sender's mode it serves."""
    return ReceiverModels(
        models=[ModelInfo(mode=decoder.modes[c.name], **c.info()) for c in request.app.state.codecs],
        insecure_demo=settings.insecure_demo, wire_version=WIRE_VERSION, max_frame_bytes=settings.max_frame_bytes,
        max_batch=settings.max_batch)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def gallery(request: Request, store: StoreDep, codec: CodecDep, settings: SettingsDep) -> HTMLResponse:
    items, next_cursor = await run_in_threadpool(store.page, 50, None)
    return request.app.state.templates.TemplateResponse(request, "gallery.html", {
        "items": [as_json(row) for row in items], "next": next_cursor,
        "model": ", ".join(f"{c.name}@{c.weights}" for c in request.app.state.codecs), "device": str(codec.device),
        "insecure_demo": settings.insecure_demo}, headers={"Content-Security-Policy": _GALLERY_CSP})


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    return {"status": "ok"}


_STARTING = "the receiver is still starting, or its start failed (its log says why)"


@router.get("/readyz", response_model=ReceiverReadiness, responses={503: {"model": ReceiverReadiness}})
async def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    state = request.app.state
    codec: Codec | None = getattr(state, "codec", None)
    store: Store | None = getattr(state, "store", None)
    checks, reasons = {"model": codec is not None}, []
    if codec is None:
        reasons.append(f"the model is not loaded: {_STARTING}")
    elif not all(tables_ready(c) for c in getattr(state, "codecs", [codec])):
        checks["model"] = False
        reasons.append("the model's entropy-coder tables are missing: re-export it with `latentwire export`")
    broker = getattr(state, "broker", None)
    if broker is not None:  # cluster mode only
        checks["broker"] = broker.connected
        if not broker.connected:
            reasons.append(broker.unavailable_reason())
    checks["store"] = store is not None
    if store is None:
        reasons.append(f"the store is not open: {_STARTING}")
    else:
        try:
            await run_in_threadpool(store.probe)
        except StoreError as exc:
            checks["store"] = False
            reasons.append(str(exc))
    body = ReceiverReadiness.of(checks, reasons, model=f"{codec.name}@{codec.weights}" if codec else None,
                                insecure_demo=settings.insecure_demo)
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}})
async def metrics(metrics: MetricsDep, decoder: DecoderDep) -> Response:
    metrics.decode_queue_depth.set(decoder.pending)
    return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI with its script and style served by this app, so it works with no internet.
    validatorUrl off: served from any host but localhost, Swagger UI would load a badge from an
    online validator and hand it the schema's URL."""
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(openapi_url=root + request.app.openapi_url, title=f"{request.app.title} API",
                               swagger_js_url=request.url_for("docs-assets", path="swagger-ui-bundle.js").path,
                               swagger_css_url=request.url_for("docs-assets", path="swagger-ui.css").path,
                               swagger_favicon_url=request.url_for("favicon").path,
                               swagger_ui_parameters={"validatorUrl": None})


@router.get("/favicon.ico", response_class=FileResponse, include_in_schema=False)
async def favicon() -> FileResponse:
    return FileResponse(_STATIC / "favicon.ico", media_type="image/x-icon",
                        headers={"Cache-Control": "public, max-age=86400"})
