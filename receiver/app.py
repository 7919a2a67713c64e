"""The receiver app: ``create_app(settings)``; the lifespan owns the codecs, store, decoder and
live-event hub. Endpoints are in ``receiver.routes``; this file also holds the one place where
errors become HTTP answers:

    LatentwireError (shared.errors, receiver.errors)  -> exc.status, {"error": exc.code, "message": str(exc)}
                                                          (+ Retry-After from the error's retry_after_s:
                                                          DecoderBusy 1 s, StoreError 5 s, StoreFull 60 s)
    request validation (bad query parameter)          -> 422, {"error": "InvalidRequest", ...}
    HTTP errors from routing (unknown path, method)   -> their status, {"error": "NotFound"|..., ...}
                                                          (an upload, POST /v1/images, is told to go to the sender)
    anything else                                     -> 500, {"error": "InternalError", ...}, logged
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.codec import Codec, load_optional
from shared.errors import LatentwireError
from receiver.decoder import Decoder
from receiver.events import EventHub
from receiver.metrics import Metrics
from receiver.routes import router
from receiver.settings import Settings
from receiver.store import Store
from receiver.worker import FrameWorker, subscribe_events
from shared.jetstream import Broker, redact

log = logging.getLogger("latentwire.receiver")
HERE = Path(__file__).resolve().parent


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.insecure_demo:
            log.warning("!!! INSECURE DEMO MODE: %s; anyone who knows it can store images here. "
                        "Never expose this receiver beyond a trusted machine. !!!",
                        settings.weak_secret() or "the secret is strong but demo mode is on")
        codec = await asyncio.to_thread(Codec.load, settings.model, settings.models_dir,
                                        settings.device, settings.max_side, settings.precision)
        codecs = [codec]
        denoiser = await asyncio.to_thread(load_optional, settings.denoise_model, settings.models_dir,
                                           settings.device, settings.max_side, settings.precision)
        if denoiser is not None:
            codecs.append(denoiser)
        elif settings.denoise_model:
            log.warning("no model %r in %s: frames from a sender's mode=denoise will be refused (409)",
                        settings.denoise_model, settings.models_dir)
        if settings.cluster_store:  # imported here: the embedded default needs neither psycopg nor boto3
            from receiver.cluster_store import ClusterStore

            store = ClusterStore(settings.database_url, settings.blob_url, endpoint_url=settings.blob_endpoint_url)
        else:
            store = Store(settings.store_dir)
        store = await asyncio.to_thread(store.open)
        hub = EventHub(settings.sse_client_queue, on_count=metrics.sse_clients.set)
        decoder = Decoder(codecs, store, hub, metrics, settings.secret_bytes(),
                          max_frame_bytes=settings.max_frame_bytes, max_batch=settings.max_batch,
                          queue_size=settings.decode_queue_size)
        broker = worker = None
        if settings.broker_url:  # cluster mode: one worker of the JetStream consumer (receiver/worker.py)
            broker = Broker(settings.broker_url, "latentwire-receiver", on_connect=lambda nc: subscribe_events(nc, hub))
            worker = FrameWorker(broker, decoder, hub, settings, metrics)
            broker.start()
            worker.start()
        app.state.codec, app.state.codecs = codec, codecs
        app.state.store, app.state.hub, app.state.decoder = store, hub, decoder
        app.state.broker, app.state.worker = broker, worker
        log.info("receiver ready: models %s on %s, store %s%s", ", ".join(f"{c.name}@{c.weights}" for c in codecs),
                 codec.device, f"{redact(settings.database_url)} + {settings.blob_url}" if settings.cluster_store
                 else settings.store_dir,
                 f", worker of NATS JetStream at {broker.where}" if broker else "")
        try:
            yield
        finally:
            hub.close()
            if worker is not None:
                await worker.stop()  # no new frame is fetched; the one decoding finishes below
            await asyncio.to_thread(decoder.shutdown)
            if broker is not None:
                await broker.close()
            store.close()

    # FastAPI's own /docs and /redoc load their scripts from a CDN: routes.py serves /docs from the
    # files mounted at /docs/assets instead; ReDoc stays off (it always fetches its logo from the web).
    app = FastAPI(title="latentwire receiver", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Receives signed latent-code frames, decodes, stores and shows them live.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.templates = Jinja2Templates(directory=HERE / "templates")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.mount("/docs/assets", StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")
    _add_error_handlers(app, metrics)
    app.include_router(router)
    return app


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(LatentwireError)
    async def latentwire_error(request: Request, exc: LatentwireError) -> JSONResponse:
        metrics.errors.labels(code=exc.code).inc()
        if exc.status >= 500:
            log.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc,
                        exc_info=exc.__cause__ is not None)
        retry_after = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return _error(exc.status, exc.code, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels(code="InvalidRequest").inc()
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                             for e in exc.errors())
        return _error(422, "InvalidRequest", f"fix the request parameters ({problems})")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        try:
            code = HTTPStatus(exc.status_code).phrase.replace(" ", "")  # e.g. NotFound, MethodNotAllowed
        except ValueError:
            code = "HTTPError"
        metrics.errors.labels(code=code).inc()
        message = exc.detail if isinstance(exc.detail, str) else code
        if exc.status_code == 404:
            message = f"no such endpoint {request.url.path}: see /docs for the receiver's API"
        elif exc.status_code == 405 and request.method == "POST" and request.url.path.rstrip("/") == "/v1/images":
            message = ("the receiver takes no image uploads: POST images to the sender's /v1/images, which "
                       "encodes them and delivers them here as signed frames (POST /v1/frames)")
        return _error(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        metrics.errors.labels(code="InternalError").inc()
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "InternalError", "the receiver hit an unexpected error; the operator can "
                      "find it in the receiver's log. Retrying may help.")
