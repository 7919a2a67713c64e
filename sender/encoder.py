"""The encoder worker: every torch call of the sender runs here, on one thread, fed by a bounded queue.

Why one thread: ``Codec`` serialises model use with a lock, so a second thread would only wait on
that lock, and torch already spreads one call over the CPU cores (intra-op threads) or the GPU.
Why a bounded queue (``encode_queue_size``): each waiting job holds decoded pixels; past the bound
an upload gets 503 + Retry-After (``EncoderBusy``) instead of growing memory and latency.

Each job names its codec (the standard or the denoising model, by upload mode).

Batching (CUDA only, where one g_a pass over several images costs about as much as one): the
worker takes a job, then waits at most ``batch_wait_ms`` for more jobs with the *same codec and
quality*, up to ``batch_max``, and codes them with ``Codec.encode_batch``. Byte-budget jobs run alone (each
needs its own rate search); jobs of another quality keep their place for the next round.

Each job returns the stream and, unless the upload asked for ``preview=false``, what the receiver
will see: the worker decodes the stream it just made and measures the PSNR against the upload.
That decode costs as much as the receiver's own, so bulk clients that need neither the number nor
the preview skip it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from shared.background import BackgroundTask
from sender.errors import EncoderBusy
from shared.codec import Codec, Encoded
from shared.images import psnr

log = logging.getLogger("latentwire.sender.encoder")


@dataclass(frozen=True)
class EncodeResult:
    encoded: Encoded
    reconstruction: np.ndarray | None  # (H, W, 3) uint8: the receiver's decode of ``encoded``
    psnr: float | None  # dB, inf when the reconstruction is exact; None when not measured
    encode_s: float  # seconds of encoding (a batch's time split evenly over its images)
    batch_size: int = 1  # images encoded in the same call as this one (> 1 only on CUDA)


@dataclass
class _Job:
    codec: Codec
    rgb: np.ndarray
    quality: float | None
    max_bytes: int | None
    measure: bool  # decode the stream and measure its PSNR
    future: asyncio.Future
    search: str = "exact"  # how a byte budget is searched (Codec.encode)


class Encoder(BackgroundTask):
    task_name = "latentwire-encoder"

    def __init__(self, queue_size: int, batch_max: int = 1, batch_wait_s: float = 0.0) -> None:
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentwire-encode")
        self.batches = 0  # encode calls made (a batch counts once): lets tests see batching happen

    @property
    def waiting(self) -> int:
        """Jobs queued for the encoder thread, not yet taken."""
        return self._queue.qsize()

    async def stop(self) -> None:
        await super().stop()
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.cancel()
        # A job already on the thread finishes by itself; nothing waits for it.
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def encode_many(self, items: list[tuple[Codec, np.ndarray, float | None, int | None]],
                          measure: bool = True, search: str = "exact") -> list[EncodeResult | BaseException]:
        """Encode every (codec, rgb, quality, max_bytes); each entry is a result or that image's error.
        ``measure``: also decode each stream (the reconstruction and its PSNR); ``search``: how
        byte budgets are searched (``Codec.encode``).
        All are queued or none (``EncoderBusy``), so a multi-file upload is never half-taken."""
        free = self._queue.maxsize - self._queue.qsize()
        if len(items) > free:
            raise EncoderBusy(
                f"the encoder has {self._queue.qsize()} images waiting (limit {self._queue.maxsize}); "
                f"this request adds {len(items)}: retry in a moment"
                + ("" if len(items) <= self._queue.maxsize else ", with fewer files per request")
            )
        loop = asyncio.get_running_loop()
        jobs = [_Job(c, rgb, q, b, measure, loop.create_future(), search) for c, rgb, q, b in items]
        for job in jobs:
            self._queue.put_nowait(job)
        return list(await asyncio.gather(*(j.future for j in jobs), return_exceptions=True))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        held: deque[_Job] = deque()  # taken while filling a batch, but of another quality
        while True:
            job = held.popleft() if held else await self._queue.get()
            if job.future.done():  # the client went away
                continue
            batch = [job]
            if self.batch_max > 1 and job.quality is not None:
                await self._fill(batch, held, loop.time() + self.batch_wait_s)
            try:
                outcomes = await loop.run_in_executor(self._executor, self._work, batch)
            except Exception as exc:  # the executor itself failed: every job learns why
                outcomes = [exc] * len(batch)
            for j, outcome in zip(batch, outcomes):
                if j.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    j.future.set_exception(outcome)
                else:
                    j.future.set_result(outcome)

    async def _fill(self, batch: list[_Job], held: deque[_Job], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        codec, quality = batch[0].codec, batch[0].quality
        while len(batch) < self.batch_max:
            try:
                nxt = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    return
            if nxt.future.done():
                continue
            if nxt.codec is codec and nxt.quality == quality and nxt.max_bytes is None:
                batch.append(nxt)
            else:
                held.append(nxt)

    # ---- on the encoder thread ------------------------------------------------------------
    def _work(self, batch: list[_Job]) -> list[EncodeResult | BaseException]:
        self.batches += 1
        codec = batch[0].codec
        t0 = time.perf_counter()
        encoded: list[Encoded | BaseException]
        if len(batch) > 1:
            try:
                encoded = list(codec.encode_batch([j.rgb for j in batch], batch[0].quality))
            except Exception:  # find out which image it was: code them one by one
                log.warning("batch of %d failed; encoding its images one at a time", len(batch), exc_info=True)
                encoded = [self._encode_one(j) for j in batch]
        else:
            encoded = [self._encode_one(batch[0])]
        encode_s = (time.perf_counter() - t0) / len(batch)
        out: list[EncodeResult | BaseException] = []
        for job, enc in zip(batch, encoded):
            if isinstance(enc, BaseException):
                out.append(enc)
                continue
            if not job.measure:
                out.append(EncodeResult(encoded=enc, reconstruction=None, psnr=None, encode_s=encode_s,
                                        batch_size=len(batch)))
                continue
            try:
                rgb_hat = job.codec.decode(enc.data)
            except Exception as exc:
                out.append(exc)
                continue
            out.append(EncodeResult(encoded=enc, reconstruction=rgb_hat, psnr=psnr(job.rgb, rgb_hat),
                                    encode_s=encode_s, batch_size=len(batch)))
        return out

    def _encode_one(self, job: _Job) -> Encoded | BaseException:
        try:
            if job.max_bytes is None:
                return job.codec.encode(job.rgb, quality=job.quality)
            return job.codec.encode(job.rgb, max_bytes=job.max_bytes, search=job.search)
        except Exception as exc:
            return exc
