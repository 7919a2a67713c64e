"""Cluster mode on the receiver: one worker of the shared JetStream consumer, and live events for
every replica (``LATENTWIRE_RECEIVER_BROKER_URL``; the names are in shared/jetstream.py).

Each receiver process pulls one message at a time from the durable consumer ``latentwire-receivers``,
so the stream's frames are shared among however many workers run, on however many machines:

    fetch ──> verify (HMAC, wire format, model, limits: Decoder.validate)
                 │ refused (4xx) ───────────────> dead letter: LATENTWIRE_DEAD, subject
                 │                                latentwire.dead.<error code>, headers say why; ack
              decode + store (Decoder.decode: the same thread and store as POST /v1/frames)
                 │ stored, or "duplicate" ──────> ack (after the store has committed)
                 │ StoreError (PostgreSQL/S3 down) nak: redelivered later; this worker stops
                 │                                fetching until the store answers its probe
                 │ anything else ───────────────> dead letter (reason DecodeFailed), ack
    a frame delivered more than broker_max_deliveries times (it keeps killing workers, or the
    store was down that often) is dead-lettered before it is looked at (TooManyDeliveries).

Nothing is lost: a message is acked only once its image is stored (or dead-lettered). A worker
killed while holding one never acks it; JetStream hands it to another worker after
``broker_ack_wait_s`` (the decoding worker says "still working" meanwhile, so a slow decode is not
redelivered). Storing is idempotent on the frame id, so a redelivered frame whose image was
stored just before the kill answers "duplicate" and is acked.

``POST /v1/frames`` keeps working in cluster mode: it decodes and stores directly into the same
shared store (no hop through the broker), and its images are announced like the workers'.

Live events: a stored image's JSON is published on ``latentwire.events.stored`` (core NATS, not
kept) instead of to the local hub; every replica subscribes and feeds its own hub, so the SSE
stream and gallery of each replica show every image, whichever replica stored it. While NATS is
unreachable an image is announced on the local page only; pages refetch the list on reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from starlette.concurrency import run_in_threadpool

from receiver.decoder import Decoder
from receiver.events import EventHub
from receiver.metrics import Metrics
from receiver.settings import Settings
from shared.background import BackgroundTask
from shared.errors import LatentwireError, StoreError
from shared.jetstream import (DEAD_STREAM, EVENTS_SUBJECT, FRAMES_STREAM, FRAMES_SUBJECTS, WORKERS, Broker,
                              dead_subject)

log = logging.getLogger("latentwire.receiver.worker")

FETCH_WAIT_S = 2.0  # one pull request's wait when the stream is empty
STORE_PROBE_S = 1.0  # how often a paused worker asks whether the store is back
NAK_DELAY_S = 2.0  # a frame the store could not take comes back after this, to any worker


async def subscribe_events(nc: Client, hub: EventHub) -> None:
    """The broker's ``on_connect``: every replica's stored images go to this replica's live page."""
    async def forward(msg: Msg) -> None:
        try:
            hub.publish(json.loads(msg.data))
        except (ValueError, TypeError, KeyError):
            log.warning("ignored an unreadable event on %s", EVENTS_SUBJECT)

    await nc.subscribe(EVENTS_SUBJECT, cb=forward)


class FrameWorker(BackgroundTask):
    task_name = "latentwire-frame-worker"

    def __init__(self, broker: Broker, decoder: Decoder, hub: EventHub, settings: Settings, metrics: Metrics) -> None:
        self.broker = broker
        self.decoder = decoder
        self.hub = hub
        self.settings = settings
        self.metrics = metrics
        self.store_down: str | None = None  # the StoreError that paused fetching, until a probe passes
        self._announcing: set[asyncio.Task] = set()

    # ---- lifecycle (stop() and alive: BackgroundTask) ---------------------------------------
    def start(self) -> None:
        self.decoder.announce = self.announce
        super().start()

    # ---- live events ----------------------------------------------------------------------
    def announce(self, item: dict) -> None:
        """Decoder's ``announce`` in cluster mode (on the event loop): to every replica via NATS."""
        if not self.broker.connected:
            self.hub.publish(item)  # at least this replica's page shows it
            return
        task = asyncio.create_task(self._publish_event(item))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _publish_event(self, item: dict) -> None:
        try:
            await self.broker.client().publish(EVENTS_SUBJECT, json.dumps(item, separators=(",", ":")).encode())
        except Exception as exc:  # lost between the check and now: show it here at least
            log.info("could not announce %s through NATS (%s); shown on this replica only", item.get("id"), exc)
            self.hub.publish(item)

    # ---- the loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        config = ConsumerConfig(durable_name=WORKERS, ack_policy=AckPolicy.EXPLICIT,
                                ack_wait=self.settings.broker_ack_wait_s, max_deliver=-1,
                                filter_subject=FRAMES_SUBJECTS)
        while True:
            try:
                await self.broker.wait_connected()
                sub = await self.broker.jetstream().pull_subscribe(FRAMES_SUBJECTS, durable=WORKERS,
                                                                   stream=FRAMES_STREAM, config=config)
                log.info("worker of %s on %s", WORKERS, self.broker.where)
                while True:
                    if self.store_down:
                        await self._wait_for_store()
                    try:
                        messages = await sub.fetch(batch=1, timeout=FETCH_WAIT_S)
                    except nats.errors.TimeoutError:
                        continue
                    for msg in messages:
                        await self._handle(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection dropped mid-fetch, the server restarted, ...
                log.warning("frame worker: %s: %s; subscribing again", type(exc).__name__, exc)
                await asyncio.sleep(1.0)

    async def _wait_for_store(self) -> None:
        while True:
            try:
                await run_in_threadpool(self.decoder.store.probe)
            except StoreError as exc:
                self.store_down = str(exc)
                await asyncio.sleep(STORE_PROBE_S)
                continue
            log.info("the store is back; fetching frames again")
            self.store_down = None
            return

    async def _handle(self, msg: Msg) -> None:
        deliveries = msg.metadata.num_delivered
        if deliveries > self.settings.broker_max_deliveries:
            await self._dead_letter(msg, "TooManyDeliveries", (
                f"delivered {deliveries} times without being stored (limit broker_max_deliveries = "
                f"{self.settings.broker_max_deliveries}): it may crash workers; see their logs"))
            return
        try:
            frames = await run_in_threadpool(self.decoder.validate, msg.data)
        except LatentwireError as exc:  # unsigned, malformed, another model, too large: never better
            await self._dead_letter(msg, exc.code, str(exc))
            return
        keep_alive = asyncio.create_task(self._in_progress(msg))
        try:
            results = await self.decoder.decode(frames)
        except StoreError as exc:
            self.store_down = str(exc)
            log.warning("store failed; frame returned to the stream and fetching paused: %s", exc)
            await self._settle(msg.nak(delay=NAK_DELAY_S), "nak")
            return
        except LatentwireError as exc:  # e.g. a corrupt entropy-coded string found while decoding
            await self._dead_letter(msg, exc.code, str(exc))
            return
        except Exception as exc:
            log.exception("decoding a frame from %s failed", msg.subject)
            await self._dead_letter(msg, "DecodeFailed", f"{type(exc).__name__}: {exc}")
            return
        finally:
            keep_alive.cancel()
        await self._settle(msg.ack_sync(timeout=5.0), "ack")
        log.debug("acked %s", ", ".join(f"{r['id']} {r['status']}" for r in results))

    async def _in_progress(self, msg: Msg) -> None:
        """Tell JetStream the frame is still being worked on, so a slow decode is not redelivered."""
        try:
            while True:
                await asyncio.sleep(self.settings.broker_ack_wait_s / 3)
                await msg.in_progress()
        except asyncio.CancelledError:
            raise
        except Exception:  # a lost connection: the frame is redelivered and deduplicated
            pass

    async def _dead_letter(self, msg: Msg, reason: str, message: str) -> None:
        """Keep a frame that can never be stored, with why, and take it off the work queue."""
        meta = msg.metadata
        headers = {"Latentwire-Reason": reason, "Latentwire-Message": " ".join(message.split())[:1000],
                   "Latentwire-Subject": msg.subject, "Latentwire-Deliveries": str(meta.num_delivered),
                   "Nats-Msg-Id": f"{FRAMES_STREAM}-{meta.sequence.stream}"}
        try:
            await self.broker.jetstream().publish(dead_subject(reason), msg.data, stream=DEAD_STREAM,
                                                  headers=headers, timeout=5.0)
        except Exception as exc:  # cannot keep it: leave it on the work queue for later
            log.warning("could not dead-letter a %s frame (%s); it will be delivered again", reason, exc)
            await self._settle(msg.nak(delay=NAK_DELAY_S), "nak")
            return
        self.metrics.frames.labels(result="dead_letter").inc()
        self.metrics.dead_letters.labels(reason=reason).inc()
        log.warning("dead-lettered a frame from %s (%s): %s", msg.subject, reason, message)
        await self._settle(msg.ack_sync(timeout=5.0), "ack")

    @staticmethod
    async def _settle(call, what: str) -> None:
        try:
            await call
        except Exception as exc:  # lost on the way: JetStream redelivers after ack_wait, the store dedupes
            log.info("could not %s a message (%s: %s); it will be delivered again", what, type(exc).__name__, exc)
