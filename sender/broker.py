"""Cluster mode's delivery worker: frames go to NATS JetStream instead of a receiver's HTTP API.

``LATENTWIRE_SENDER_BROKER_URL=nats://host:4222`` replaces ``Deliverer``'s POST with one publish per
frame to the stream ``LATENTWIRE_FRAMES`` (subject ``latentwire.frames.<model>``: the model's name, or
its weights for a stream of a model this sender no longer serves, since version 6 and 7 streams leave
the name out; header
``Nats-Msg-Id`` = frame id; shared/jetstream.py). The body of each message is the signed frame
exactly as ``POST /v1/frames`` would carry it. Everything else is ``Deliverer``'s: the outbox,
batches, backoff, pausing, the link model (each acknowledged publish is a sample), superseding.

    publish acknowledged by the stream            delivered, receiver_status "published"
    acknowledged as a duplicate (same id within   delivered, receiver_status "duplicate" (an earlier try
    the stream's duplicate window)                had reached the stream)
    no connection, no ack within the request      transient: the frame stays queued; retry with backoff
    timeout, no stream answering
    frame larger than the server's max_payload    permanent: failed, FrameTooLarge (raise max_payload)

A frame is marked delivered only on the stream's acknowledgement, which JetStream gives once the
message is stored (on disk, with file storage). Frames acknowledged before a failure in the same
batch stay delivered; the rest wait.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sender.metrics import Metrics
from sender.outbox import Outbox, PendingFrame
from sender.settings import Settings
from sender.transmit import Deliverer
from shared import bitstream as bs
from shared.errors import BrokerUnavailable
from shared.jetstream import FRAMES_STREAM, Broker, frames_subject
from shared.wire import Frame, pack_frames

log = logging.getLogger("latentwire.sender.broker")


class BrokerDeliverer(Deliverer):
    task_name = "latentwire-broker-delivery"

    def __init__(self, outbox: Outbox, broker: Broker, settings: Settings, metrics: Metrics,
                 names: dict[str, str] | None = None) -> None:
        super().__init__(outbox, None, settings, metrics)
        self.broker = broker
        self._names = dict(names or {})  # weights -> model name, of the codecs this sender serves

    async def _send(self, frames: list[PendingFrame]) -> None:
        bodies = await asyncio.to_thread(self._pack_each, frames)
        results: dict[str, str] = {}
        position = 0
        try:
            for position, (frame, model, body) in enumerate(bodies):
                nc = self.broker.client()
                if len(body) > nc.max_payload:
                    await self._too_large(frame, len(body), nc.max_payload)
                    continue
                t0 = time.perf_counter()
                ack = await self.broker.jetstream().publish(
                    frames_subject(model), body, timeout=self.settings.request_timeout_s, stream=FRAMES_STREAM,
                    headers={"Nats-Msg-Id": frame.id})
                elapsed = time.perf_counter() - t0
                self.metrics.transmit_seconds.labels("published").observe(elapsed)
                self.metrics.wire_bytes.inc(len(body))
                self.link.observe(len(body), elapsed)
                results[frame.id] = "duplicate" if ack.duplicate else "published"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # BrokerUnavailable, nats timeouts, no responders, a closed connection
            await self._settle(results)
            rest = [f.id for f, _, _ in bodies[position:]]
            kind = "connect" if isinstance(exc, BrokerUnavailable) else "broker"
            reason = str(exc) if isinstance(exc, BrokerUnavailable) else (
                f"the NATS server at {self.broker.where} did not acknowledge the publish "
                f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})")
            await self._transient(rest, kind, reason)
            return
        await self._settle(results)

    def _pack_each(self, frames: list[PendingFrame]) -> list[tuple[PendingFrame, str, bytes]]:
        out = []
        for f in frames:
            stream = bs.loads(f.stream)
            body = pack_frames([Frame(id=f.id, sent_at=f.created_at, stream=stream)], self._secret)
            out.append((f, stream.model or self._names.get(stream.weights, stream.weights), body))
        return out

    async def _too_large(self, frame: PendingFrame, size: int, limit: int) -> None:
        error = {"error": "FrameTooLarge", "message": (
            f"the frame is {size} bytes and the NATS server at {self.broker.where} takes at most {limit} per "
            "message: raise max_payload in the server's configuration (e.g. 8MB), or send smaller images")}
        log.warning("frame %s refused: %s", frame.id, error["message"])
        await self.outbox.mark_failed([frame.id], error)
        self.metrics.delivery_errors.labels("too_large").inc()
        self.metrics.frames.labels("failed").inc()
