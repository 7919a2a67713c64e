"""The re-planner: after the link slows, queued quality=auto frames are coded again at budgets the
link can still carry by their targets (the rule: ``sender.link.replan``).

A quality=auto budget is planned on the rate measured when its image was uploaded. When the link
then drops (1 Mbit/s to 64 kbit/s, say), the frames already queued were sized for the old rate
and hold the link for many targets: every frame behind them is late as well. The upload's file is
kept with each quality=auto frame while it is queued (the outbox's ``source``), so this task can
code it again smaller.

One asyncio task (started by the lifespan when a latency target is set) looks at the queue every
``CHECK_EVERY_S``: with a measured or pinned rate, it takes the budgets ``replan`` gives and codes
those frames again, oldest first, on the encoder thread, and only while no upload waits for it:
new uploads come first, and a sender whose encoder is its bottleneck would only fall further
behind by coding frames twice (a full or busy encoder waits for the next look). A new stream replaces
the old one only if it is smaller and the frame is still queued, on no POST's way and not possibly
stored by the receiver (``Outbox.replace_stream``); otherwise it is dropped and the frame goes as
it was. The record's budget then has reason ``replan`` and ``replanned_from`` (the bytes it had),
and the preview and same-bytes JPEG are made again when the upload asked for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import anyio

from sender.comparison import finite, preview_pixels
from sender.errors import EncoderBusy
from sender.link import Budget, QueuedFrame, replan
from sender.outbox import NewStream
from shared.background import BackgroundTask
from shared.errors import BudgetTooSmall, LatentwireError
from shared.images import load_image

if TYPE_CHECKING:
    from sender.dependencies import Services

log = logging.getLogger("latentwire.sender.replan")
CHECK_EVERY_S = 1.0  # a slow POST lowers the rate bound while it goes: look again this often


class Replanner(BackgroundTask):
    task_name = "latentwire-replan"

    def __init__(self, services: Services) -> None:
        self.svc = services

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad kept file, the disk: the frames still go as they are
                log.exception("re-plan failed; the queued frames go as they are")

    async def check(self, now: float | None = None) -> int:
        """Look at the queue once and code again what ``replan`` says; returns the frames replaced."""
        svc = self.svc
        link = svc.deliverer.link
        rate, source = link.budget_rate(svc.settings.link_start_kbps)
        if source == "start":  # no measurement yet: nothing says the link slowed
            return 0
        queue = [QueuedFrame(*row) for row in await svc.outbox.queue_order()]
        if not any(f.resizable for f in queue):
            return 0
        now = time.time() if now is None else now
        in_flight = link.in_flight_bytes(rate)
        budgets = replan(queue, rate, now, in_flight, svc.settings.auto_min_bpp)
        replaced, ahead = 0, in_flight
        for f in queue:
            if f.id in budgets:
                if svc.encoder.waiting:  # uploads first: the next look goes on
                    break
                saved = await self._code_again(f, budgets[f.id], rate, source, now, ahead)
                if saved is None:  # the encoder is busy: the next look goes on
                    break
                replaced += saved > 0
                ahead += f.nbytes - saved
            else:
                ahead += f.nbytes
        return replaced

    async def _code_again(self, f: QueuedFrame, budget: int, rate: float, source: str, now: float,
                          ahead: float) -> int | None:
        """Code frame ``f`` again within ``budget`` bytes and replace its stream; the bytes saved
        (0: not replaced), None when the encoder had no room."""
        svc = self.svc
        kept = await svc.outbox.source(f.id)
        if kept is None or kept[1] not in svc.codecs:
            return 0
        data, mode, preview = kept
        codec = svc.codecs[mode]
        try:
            im = await anyio.to_thread.run_sync(load_image, data, svc.settings.max_side, limiter=svc.pixel_limiter)
            (result,) = await svc.encoder.encode_many([(codec, im.rgb, None, budget)], measure=preview, search="quick")
            if isinstance(result, BudgetTooSmall) and result.min_bytes:
                budget = result.min_bytes
                (result,) = await svc.encoder.encode_many([(codec, im.rgb, None, budget)], measure=preview,
                                                          search="quick")
            if isinstance(result, BaseException):
                raise result
        except EncoderBusy:
            return None
        except (LatentwireError, ValueError, RuntimeError, OSError) as exc:  # never again for this frame
            log.warning("re-plan of %s failed (%s); it goes as it was", f.id, exc)
            await svc.outbox.forget_source(f.id)
            return 0
        enc = result.encoded
        if enc.nbytes >= f.nbytes:
            return 0
        expected = now - f.created_at + (ahead + enc.nbytes) / rate
        record = Budget(bytes=budget, reason="replan", late=f.target_s is not None and expected > f.target_s,
                        expected_latency_s=round(expected, 3), target_s=f.target_s or 0.0,
                        link_kbps=round(rate * 8 / 1000, 3), link_source=source,  # type: ignore[arg-type]
                        queued_bytes=int(ahead), replanned_from=f.nbytes)
        jpeg, png = None, None
        if preview:
            jpeg, png = await anyio.to_thread.run_sync(preview_pixels, im.rgb, result.reconstruction, enc.nbytes,
                                                       limiter=svc.pixel_limiter)
        new = NewStream(stream=enc.data, nbytes=enc.nbytes, bpp=enc.bpp,
                        psnr=None if result.psnr is None else finite(result.psnr), quality=enc.quality,
                        jpeg=jpeg.summary() if jpeg else None, noise=enc.noise, cleaned=enc.cleaned,
                        coded_size=enc.stream.coded_size, budget=record.to_dict(), max_bytes=budget)
        if not await svc.outbox.replace_stream(f.id, new):
            return 0
        saved = f.nbytes - enc.nbytes
        svc.metrics.replans.inc()
        svc.metrics.replan_saved_bytes.inc(saved)
        log.info("re-planned %s at %.1f kbit/s: %d -> %d bytes", f.id, rate * 8 / 1000, f.nbytes, enc.nbytes)
        if png is not None:
            try:
                await anyio.to_thread.run_sync(svc.previews.save, f.id, png, jpeg.data)
            except OSError as exc:
                log.warning("preview of %s not saved: %s", f.id, exc)
        return saved
