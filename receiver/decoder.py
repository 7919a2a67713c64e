"""Frame batches in, stored reconstructions out: validation, the bounded decode queue, storage.

    POST body --validate()--> [Frame, ...] --receive()--> decode queue --1 thread--> decode,
      (thread pool: HMAC,        all frames checked          (bounded:       PNG, Store.put,
       msgpack, codec.parse)     before any decoding)         503 when full)  SSE event

Validation is all-or-nothing: every frame's signature, structure, model and size is checked
before the first one is decoded. Storage is per frame: if the store fails on frame k, frames
before k stay stored and a resend reports them as "duplicate".

One worker thread decodes. The codec serialises model use with a lock anyway (and torch already
spreads one decode over the CPU's cores), so more threads would only hold more frames in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from contextlib import contextmanager

from starlette.concurrency import run_in_threadpool

from shared import bitstream as bs
from shared.codec import Codec
from shared.errors import LatentwireError, ModelMismatch
from shared.images import encode_png
from shared.wire import Frame, unpack_frames
from receiver.errors import DecoderBusy
from receiver.events import EventHub
from receiver.metrics import Metrics
from receiver.store import Store, as_json

log = logging.getLogger("latentwire.receiver")


class Decoder:
    def __init__(self, codecs: list[Codec], store: Store, hub: EventHub, metrics: Metrics, secret: bytes, *,
                 max_frame_bytes: int, max_batch: int, queue_size: int) -> None:
        self.codecs = {c.name: c for c in codecs}  # each frame names its model (standard or denoise) ...
        self._by_weights = {c.weights: c for c in codecs}  # ... by name and weights, or (versions 6, 7) weights
        # The sender's mode of each model, for the gallery: the app passes the main model first,
        # then the denoising one (settings.denoise_model) when it is installed.
        self.modes = {c.name: "denoise" if k else "standard" for k, c in enumerate(codecs)}
        self.store, self.hub, self.metrics = store, hub, metrics
        # Called on the event loop with each stored image's JSON: the local live page by default;
        # cluster mode sends it to every replica instead (receiver/worker.py).
        self.announce: Callable[[dict], None] = hub.publish
        self._secret = secret
        self._max_frame_bytes = max_frame_bytes
        self._max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lw-decode")
        self._capacity = queue_size + 1  # waiting + the one decoding
        self._pending = 0  # touched on the event loop only

    @property
    def pending(self) -> int:
        return self._pending

    def check_capacity(self) -> None:
        if self._pending >= self._capacity:
            raise DecoderBusy(f"the decode queue is full ({self._pending} requests): retry in "
                              f"{DecoderBusy.retry_after_s} s; the frames are not stored yet")

    @contextmanager
    def counting_rejections(self):
        """Count a request rejected with a LatentwireError under its code in frames_total."""
        try:
            yield
        except LatentwireError as exc:
            self.metrics.frames.labels(result=exc.code).inc()
            raise

    def validate(self, body: bytes) -> list[Frame]:
        """Signature, structure, model and sizes of every frame; no pixels (blocking, CPU only)."""
        frames = unpack_frames(body, self._secret, self._max_frame_bytes, self._max_batch)
        for frame in frames:
            self.codec_for(frame.stream).parse(frame.stream)
        return frames

    def codec_for(self, stream) -> Codec:
        """The loaded codec the stream names (by name, or by weights alone for a version 6 or 7 stream);
        ModelMismatch (409) naming both sides otherwise."""
        codec = self.codecs.get(stream.model) if stream.model else self._by_weights.get(stream.weights)
        if codec is None:
            served = ", ".join(f"{c.name}@{c.weights}" for c in self.codecs.values())
            raise ModelMismatch(f"frame made by {bs.describe(stream)}, this receiver serves "
                                f"{served}: install that model in the receiver's models folder, or send with "
                                "a model it serves")
        return codec

    async def receive(self, body: bytes) -> list[dict]:
        """Validate a request body, then decode and store its frames: [{"id", "status"}, ...]."""
        self.metrics.received_bytes.inc(len(body))
        self.check_capacity()
        frames = await run_in_threadpool(self.validate, body)
        self.check_capacity()  # others may have filled the queue while this body was checked
        return await self.decode(frames)

    async def decode(self, frames: list[Frame]) -> list[dict]:
        """Decode and store validated frames on the decode thread (cluster workers call this
        directly: they hold one message at a time, so they need no capacity check)."""
        loop = asyncio.get_running_loop()
        self._pending += 1
        self.metrics.decode_queue_depth.set(self._pending)
        future = self._executor.submit(self._decode_batch, frames, loop)
        future.add_done_callback(lambda _: _call_soon(loop, self._release))
        # If the client goes away the job still finishes (or is cancelled while still queued);
        # the slot is released by the callback, not here, so the bound stays exact.
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        self._pending -= 1
        self.metrics.decode_queue_depth.set(self._pending)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ---- worker thread -------------------------------------------------------------------
    def _decode_batch(self, frames: list[Frame], loop: asyncio.AbstractEventLoop) -> list[dict]:
        return [{"id": f.id, "status": self._decode_one(f, loop)} for f in frames]

    def _decode_one(self, frame: Frame, loop: asyncio.AbstractEventLoop) -> str:
        if self.store.contains(frame.id):
            self.metrics.frames.labels(result="duplicate").inc()
            return "duplicate"
        stream = frame.stream
        codec = self.codec_for(stream)
        t0 = time.perf_counter()
        rgb = codec.decode(stream)  # (H, W, 3) uint8
        decode_s = time.perf_counter() - t0
        png = encode_png(rgb)
        code = stream.to_bytes()
        stream_bytes = len(code)
        meta = {
            "id": frame.id, "width": stream.width, "height": stream.height,
            "stream_bytes": stream_bytes, "bpp": stream_bytes * 8 / (stream.width * stream.height),
            "quality": stream.quality, "model": codec.name, "weights": stream.weights,
            "sent_at": frame.sent_at, "decode_ms": round(decode_s * 1000.0, 3), "mode": self.modes[codec.name],
            "coded_height": stream.coded_size[0] if stream.coded_size else None,
            "coded_width": stream.coded_size[1] if stream.coded_size else None,
        }
        row = self.store.put(meta, png, code=code)
        if row is None:  # stored by a concurrent request between the check and now
            self.metrics.frames.labels(result="duplicate").inc()
            return "duplicate"
        self.metrics.frames.labels(result="stored").inc()
        self.metrics.decode_seconds.observe(decode_s)
        self.metrics.bpp.observe(meta["bpp"])
        log.info("stored %s: %dx%d, %d bytes, %.3f bpp, decode %.1f ms", frame.id, stream.width,
                 stream.height, stream_bytes, meta["bpp"], decode_s * 1000.0)
        _call_soon(loop, self.announce, as_json(row))
        return "stored"


def tables_ready(codec: Codec) -> bool:
    """Whether the entropy coders have their CDF tables (exported models ship them)."""
    m = codec.model
    return all(getattr(c, "_quantized_cdf", None) is not None and c._quantized_cdf.numel() > 0
               for c in (m.entropy_bottleneck, m.gaussian_conditional))


def _call_soon(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop has closed (shutdown); nothing is listening any more
        pass
