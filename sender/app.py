"""The sender service: ``create_app(settings)`` builds it, ``lifespan`` owns everything with a lifetime.

    uvicorn --factory sender.app:create_app          (settings from the environment)
    latentwire sender --receiver-url http://127.0.0.1:8001

The lifespan loads the codecs (standard, and denoise when its model is installed), opens the outbox,
starts the encoder thread, the delivery task and (with a latency target) the re-planner, and opens
the app's one ``httpx.AsyncClient`` (to the receiver). Tests pass ``transport=`` (an
``httpx.MockTransport`` or ``httpx.ASGITransport`` around a receiver app) to talk to a receiver in
process. Errors become answers as on the receiver
(shared/service/handlers.py: ``{"error", "message"}`` with the error's status, plus ``file`` and
``min_bytes`` where they apply, ``Retry-After`` on 503s); rejected uploads are counted in
``latentwire_sender_upload_errors_total``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from sender import routes
from sender.broker import BrokerDeliverer
from sender.dependencies import Services
from sender.encoder import Encoder
from sender.errors import OutboxError
from sender.metrics import Metrics
from sender.outbox import Outbox
from sender.previews import PreviewStore
from sender.replan import Replanner
from sender.settings import Settings, get_settings
from sender.transmit import Deliverer
from shared.codec import Codec, load_optional
from shared.errors import CheckpointNotFound
from shared.jetstream import Broker
from shared.service.docs import install_docs
from shared.service.handlers import install_error_handlers

log = logging.getLogger("latentwire.sender")
HERE = Path(__file__).resolve().parent
VERSION = "0.1.0"


def create_app(settings: Settings | None = None, *, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The sender app. ``transport`` replaces the network under the receiver client (tests)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="latentwire sender",
        version=VERSION,
        summary="Encodes uploaded images into latent bitstreams and delivers them to the receiver",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's load their files from a CDN: install_docs serves /docs offline
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.transport = transport
    app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    install_docs(app, favicon=HERE / "static" / "favicon.ico")
    install_error_handlers(app, "sender", on_error=_count_upload_error, hints=_HINTS)
    return app


# Requests that cannot work on a sender, answered with where to go instead of a bare 404/405.
_HINTS = {("POST", "/v1/frames"): "the sender takes no frames: frames go to the receiver's POST /v1/frames; "
                                  "upload images here with POST /v1/images, which encodes and delivers them"}


def _count_upload_error(request: Request, code: str) -> None:
    services = getattr(request.app.state, "services", None)
    if services is not None and request.url.path == "/v1/images" and request.method == "POST":
        services.metrics.upload_errors.labels(code).inc()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    weak = settings.weak_secret()
    if weak:
        log.warning("!!! INSECURE DEMO MODE: %s. Frames are signed with a weak or public key that anyone "
                    "can forge: never run like this outside a local demo. !!!", weak)
    async with AsyncExitStack() as stack:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        stack.enter_context(_exclusive(settings.data_dir / "sender.lock"))
        codec = await asyncio.to_thread(Codec.load, settings.model, settings.models_dir,
                                        device=settings.device, max_side=settings.max_side,
                                        precision=settings.precision)
        codecs = {"standard": codec}
        denoiser = await asyncio.to_thread(load_optional, settings.denoise_model, settings.models_dir,
                                           settings.device, settings.max_side, settings.precision)
        if denoiser is not None:
            codecs["denoise"] = denoiser
        elif settings.default_mode == "denoise":
            raise CheckpointNotFound(f"default_mode is denoise but no model {settings.denoise_model!r} is in "
                                     f"{settings.models_dir}")
        elif settings.denoise_model:
            log.warning("mode=denoise is off: no model %r in %s", settings.denoise_model, settings.models_dir)
        outbox = Outbox(settings.data_dir / "outbox.sqlite3")
        stack.push_async_callback(outbox.close)
        await outbox.open()
        # trust_env=False: the receiver URL is configured explicitly; a stray HTTP(S)_PROXY in the
        # environment must not reroute signed frames.
        client = httpx.AsyncClient(transport=app.state.transport, trust_env=False,
                                   timeout=httpx.Timeout(settings.request_timeout_s),
                                   headers={"User-Agent": f"latentwire-sender/{VERSION}"})
        stack.push_async_callback(client.aclose)
        metrics = Metrics()
        # Batching pays only where one g_a pass over several images costs about as much as one.
        batch_max = settings.batch_max if codec.device.type == "cuda" else 1
        encoder = Encoder(settings.encode_queue_size, batch_max, settings.batch_wait_ms / 1000)
        encoder.start()
        stack.push_async_callback(encoder.stop)
        if settings.broker_url:  # cluster mode: frames go to NATS JetStream (sender/broker.py)
            broker = Broker(settings.broker_url, "latentwire-sender")
            broker.start()
            stack.push_async_callback(broker.close)
            deliverer = BrokerDeliverer(outbox, broker, settings, metrics,
                                        names={c.weights: c.name for c in codecs.values()})
        else:
            deliverer = Deliverer(outbox, client, settings, metrics)
        await outbox.retry_now(time.time())
        deliverer.start()
        stack.push_async_callback(deliverer.stop)  # stops first: nothing sends once shutdown begins
        app.state.services = Services(
            settings=settings, codecs=codecs, outbox=outbox, encoder=encoder, deliverer=deliverer,
            previews=PreviewStore(settings.data_dir / "previews", settings.previews_keep), client=client,
            metrics=metrics, pixel_limiter=anyio.CapacityLimiter(2),
        )
        app.state.replanner = None
        if settings.latency_target_s is not None:  # quality=auto's frames are re-planned when the link slows
            app.state.replanner = Replanner(app.state.services)
            app.state.replanner.start()
            stack.push_async_callback(app.state.replanner.stop)  # stops first of all
        log.info("sender ready: models %s on %s, batch_max %d, delivering to %s, outbox %s (%d queued)",
                 ", ".join(f"{m}={c.name}@{c.weights}" for m, c in codecs.items()), codec.device, batch_max,
                 settings.destination, outbox.path, await outbox.pending())
        yield


class _exclusive:
    """An flock on ``data_dir/sender.lock``: two senders on one outbox would both deliver it.
    The kernel drops the lock when the process dies, so a SIGKILL never leaves it stale."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self.fd)
            raise OutboxError(f"another sender is running on {self.path.parent}; stop it or give this one "
                              "its own --data-dir") from exc

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
