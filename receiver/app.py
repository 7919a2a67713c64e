"""The receiver service: ``create_app(settings)`` builds it, ``lifespan`` owns everything with a lifetime.

    uvicorn --factory receiver.app:create_app        (settings from the environment)
    latentwire receiver --port 8001

The lifespan loads the codecs (main, and denoise when its model is installed), opens the store,
starts the decoder and the live-event hub and, in cluster mode, the JetStream worker; handlers get
them as ``Services`` (receiver/dependencies.py). Endpoints are in ``receiver.routes``. Errors become
answers as on the sender (shared/service/handlers.py: ``{"error", "message"}`` with the error's
status, ``Retry-After`` from its retry_after_s: DecoderBusy 1 s, StoreError 5 s, StoreFull 60 s);
every error answered is counted in ``latentwire_receiver_errors_total``, and an upload POSTed here
is told to go to the sender.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from shared.codec import Codec, load_optional
from shared.jetstream import Broker, redact
from shared.service.docs import install_docs
from shared.service.handlers import install_error_handlers
from receiver.decoder import Decoder
from receiver.dependencies import Services
from receiver.events import EventHub
from receiver.metrics import Metrics
from receiver.routes import router
from receiver.settings import Settings, get_settings
from receiver.store import Store
from receiver.worker import FrameWorker, subscribe_events

log = logging.getLogger("latentwire.receiver")
HERE = Path(__file__).resolve().parent


def create_app(settings: Settings | None = None) -> FastAPI:
    """The receiver app (settings from the environment when none are given)."""
    settings = settings or get_settings()
    metrics = Metrics()  # before the lifespan: the error handlers count into it from the first request
    app = FastAPI(title="latentwire receiver", version="1", lifespan=lifespan,
                  description="Receives signed latent-code frames, decodes, stores and shows them live.",
                  docs_url=None,  # FastAPI's load their files from a CDN: install_docs serves /docs offline
                  redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.templates = Jinja2Templates(directory=HERE / "templates")
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    install_docs(app, favicon=HERE / "static" / "favicon.ico")
    install_error_handlers(app, "receiver", on_error=lambda request, code: metrics.errors.labels(code=code).inc(),
                           hints=_HINTS)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    if settings.insecure_demo:
        log.warning("!!! INSECURE DEMO MODE: %s; anyone who knows it can store images here. "
                    "Never expose this receiver beyond a trusted machine. !!!",
                    settings.weak_secret() or "the secret is strong but demo mode is on")
    async with AsyncExitStack() as stack:
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
        stack.callback(store.close)
        hub = EventHub(settings.sse_client_queue, on_count=metrics.sse_clients.set)
        decoder = Decoder(codecs, store, hub, metrics, settings.secret_bytes(),
                          max_frame_bytes=settings.max_frame_bytes, max_batch=settings.max_batch,
                          queue_size=settings.decode_queue_size)
        broker = worker = None
        if settings.broker_url:  # cluster mode: one worker of the JetStream consumer (receiver/worker.py)
            broker = Broker(settings.broker_url, "latentwire-receiver", on_connect=lambda nc: subscribe_events(nc, hub))
            broker.start()
            stack.push_async_callback(broker.close)  # closes after the decoder: its last frame is acknowledged
        stack.push_async_callback(asyncio.to_thread, decoder.shutdown)
        if broker is not None:
            worker = FrameWorker(broker, decoder, hub, settings, metrics)
            worker.start()
            stack.push_async_callback(worker.stop)  # no new frame is fetched; the one decoding finishes
        stack.callback(hub.close)  # first: live pages are told the receiver is going
        app.state.services = Services(settings=settings, codecs=codecs, store=store, hub=hub, decoder=decoder,
                                      metrics=metrics, broker=broker, worker=worker)
        log.info("receiver ready: models %s on %s, store %s%s", ", ".join(f"{c.name}@{c.weights}" for c in codecs),
                 codec.device, f"{redact(settings.database_url)} + {settings.blob_url}" if settings.cluster_store
                 else settings.store_dir,
                 f", worker of NATS JetStream at {broker.where}" if broker else "")
        yield


# Requests that cannot work on a receiver, answered with where to go instead of a bare 404/405.
_HINTS = {("POST", "/v1/images"): "the receiver takes no image uploads: POST images to the sender's /v1/images, "
                                  "which encodes them and delivers them here as signed frames (POST /v1/frames)"}

