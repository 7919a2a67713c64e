"""The delivery worker: moves queued frames from the outbox to the receiver, at least once each.

One asyncio task (started by the lifespan) loops: take the due frames (queued, next_attempt_at
<= now, not on their way; at most ``delivery_batch_max`` and ``delivery_batch_max_bytes``), POST
them as one signed body (``shared.wire.pack_frames``) to ``{receiver_url}/v1/frames`` through the
app's one ``httpx.AsyncClient``, and settle each frame by the answer. Up to
``delivery_concurrency`` such POSTs are on their way at once, each in its own task: the receiver
answers only once it has decoded and stored a batch, and meanwhile the next batch uses the link.

    200 {"results": [{"id", "status": "stored"|"duplicate"}]}   delivered (a duplicate was
                                                                  stored by an earlier try)
    429 / 503 / 507, any other 5xx, other non-4xx, timeout,      transient: attempts+1, retry after
    connection error, a 200 whose body does not list a frame     Retry-After if the receiver sent
                                                                  one, else exponential backoff
                                                                  (retry_base_s * 2^(n-1), at most
                                                                  retry_max_s, jittered to 50-100 %)
    other 4xx (400 401 409 413 ...)                              permanent: failed, the receiver's
                                                                  {"error","message"} kept; a batch
                                                                  is first split and each frame
                                                                  sent alone, so one bad frame does
                                                                  not fail its neighbours

A transient failure is the receiver's, not the frame's: the worker then pauses *all* sending
until the retry time (backoff counts consecutive failures), so a receiver that is down gets one
request per backoff period, not one per queued batch. POSTs that were already on their way when a
failure was counted and then fail too are the same outage: their frames wait for the same pause,
and the backoff does not grow again. After a failure one POST at a time probes the receiver; the
other slots open again with its first delivery. With no frame due (or every POST slot taken),
the worker sleeps until the next one is, or until ``notify()`` (an upload was queued) or a POST
that ends wakes it.

Every POST the receiver answers 200 is a sample of the link (its body bytes and busy seconds) for
``self.link`` (sender/link.py): the goodput and round trip that GET /v1/link shows and that
``quality=auto`` budgets from.

The batches being sent are in flight for the outbox (``due`` marks them, ``release`` ends them): an
upload with ``supersede=<key>`` never supersedes a frame that is on its way, and no frame is on
its way twice.

The receiver dedupes by frame id, so resending after a crash or a lost reply is safe: delivery is
at-least-once on the wire and exactly-once in the receiver's store.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time

import httpx

from shared.background import BackgroundTask
from sender.link import LinkModel
from sender.metrics import Metrics
from sender.outbox import Outbox, PendingFrame
from sender.settings import Settings
from shared import bitstream as bs
from shared.wire import CONTENT_TYPE, Frame, pack_frames

log = logging.getLogger("latentwire.sender.transmit")

TRANSIENT_STATUSES = (429, 503, 507)
# A Retry-After longer than this is taken as a misconfiguration, not an instruction.
MAX_RETRY_AFTER_S = 3600.0
DELIVERED = ("stored", "duplicate")


class Deliverer(BackgroundTask):
    """Cancelling ``stop()`` may cut a POST short: that frame is still queued and goes again next
    start (the receiver dedupes)."""

    task_name = "latentwire-delivery"

    def __init__(self, outbox: Outbox, client: httpx.AsyncClient, settings: Settings, metrics: Metrics) -> None:
        self.outbox = outbox
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self._secret = settings.secret_bytes()
        self._wake = asyncio.Event()
        self._failures = 0  # consecutive transient failures
        self._failed_at = -math.inf  # time.monotonic() when the last one was counted
        self._pause_until = 0.0
        self._posts: set[asyncio.Task] = set()  # the POSTs on their way (at most delivery_concurrency)
        self.link = LinkModel(settings.link_kbps)

    # ---- lifecycle ------------------------------------------------------------------------
    def notify(self) -> None:
        """A frame was queued: look at the outbox now (unless paused for a failing receiver)."""
        self._wake.set()

    def retry_after_s(self) -> int:
        """When an upload refused for a full outbox should come back, in whole seconds."""
        return max(1, int(self._pause_until - time.time() + 0.999), round(self.settings.retry_base_s))

    # ---- the loop -----------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while True:
                try:
                    await self._step()
                except asyncio.CancelledError:
                    raise
                except Exception:  # e.g. the outbox disk is full: keep the worker alive, try later
                    log.exception("delivery step failed; trying again in %.1f s", self.settings.retry_max_s)
                    await asyncio.sleep(self.settings.retry_max_s)
        finally:  # stop(): the POSTs on their way are cut short too (their frames stay queued)
            for task in list(self._posts):
                task.cancel()
            await asyncio.gather(*self._posts, return_exceptions=True)

    async def _step(self) -> None:
        pause = self._pause_until - time.time()
        if pause > 0:
            await asyncio.sleep(pause)  # new uploads do not cut a receiver's backoff short
            return
        self._wake.clear()  # before looking, so an upload queued (or a POST ended) meanwhile still wakes us
        timeout = None
        slots = 1 if self._failures else self.settings.delivery_concurrency  # a failing receiver: one probe
        if len(self._posts) < slots:
            frames = await self.outbox.due(time.time(), self.settings.delivery_batch_max, self._batch_bytes())
            if frames:
                task = asyncio.create_task(self._post(frames), name="latentwire-delivery-post")
                self._posts.add(task)
                return
            next_at = await self.outbox.next_due_at()
            timeout = None if next_at is None else max(0.0, next_at - time.time())
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _post(self, frames: list[PendingFrame]) -> None:
        """One POST slot: send and settle ``frames``, then free the slot and wake the loop."""
        try:
            await self._send(frames)
        except asyncio.CancelledError:
            raise
        except Exception:  # the frames stay queued; sending pauses as for a failing receiver
            log.exception("delivery of %d frame(s) failed; trying again in %.1f s", len(frames),
                          self.settings.retry_max_s)
            self._pause_until = max(self._pause_until, time.time() + self.settings.retry_max_s)
        finally:  # settled (or abandoned): the outbox may supersede what is still queued of it
            self.outbox.release([f.id for f in frames])
            self._posts.discard(asyncio.current_task())
            self._wake.set()

    def _batch_bytes(self) -> int:
        """Stream bytes one POST may carry: at most its share (one of ``delivery_concurrency``) of
        what the link moves in half the request timeout (its measured or pinned rate, else the
        start rate). On a thin link a whole backlog as one batch would time out, be retried whole,
        and time out again: nothing would ever arrive. The outbox still sends one frame alone when
        even that is more."""
        rate, _ = self.link.budget_rate(self.settings.link_start_kbps)
        share = rate * self.settings.request_timeout_s / 2 / self.settings.delivery_concurrency
        return max(1, min(self.settings.delivery_batch_max_bytes, int(share)))

    async def _send(self, frames: list[PendingFrame]) -> None:
        body = await asyncio.to_thread(self._pack, frames)  # msgpack + HMAC over up to 8 MiB
        ids = [f.id for f in frames]
        t0 = time.monotonic()
        busy = 0.0  # link time this POST accounts for (LinkModel.busy_seconds)
        try:
            with self.link.sending(len(body), t0):
                try:
                    response = await self.client.post(self.settings.frames_url, content=body,
                                                      headers={"Content-Type": CONTENT_TYPE})
                finally:
                    busy = self.link.busy_seconds(time.monotonic())
        except httpx.TimeoutException as exc:
            elapsed = time.monotonic() - t0
            self.metrics.transmit_seconds.labels("timeout").observe(elapsed)
            # Not delivered, but a bound: the link moved less than the body in that time. Counting
            # it pulls the rate (and so batches and auto budgets) down when a link slows.
            self.link.observe(len(body), busy, rtt_s=elapsed)
            await self._transient(ids, t0, "timeout", f"no answer within {self.settings.request_timeout_s} s "
                                  f"({type(exc).__name__})")
            return
        except httpx.TransportError as exc:  # refused, reset, DNS, TLS ...
            self.metrics.transmit_seconds.labels("connect").observe(time.monotonic() - t0)
            await self._transient(ids, t0, "connect", f"cannot reach {self.settings.frames_url} "
                                  f"({type(exc).__name__}: {exc})")
            return
        elapsed = time.monotonic() - t0
        self.metrics.transmit_seconds.labels(str(response.status_code)).observe(elapsed)
        self.metrics.wire_bytes.inc(len(body))
        status = response.status_code
        if status == 200:
            self.link.observe(len(body), busy, rtt_s=elapsed)
            await self._delivered(ids, response, t0)
        elif 400 <= status < 500 and status not in TRANSIENT_STATUSES:
            await self._permanent(frames, response)
        else:
            kind = f"http_{status}" if status in TRANSIENT_STATUSES else ("http_5xx" if status >= 500 else "bad_reply")
            await self._transient(ids, t0, kind, _error_from(response)["message"], error=_error_from(response),
                                  retry_after=_retry_after_s(response.headers.get("retry-after")))

    def _pack(self, frames: list[PendingFrame]) -> bytes:
        return pack_frames([Frame(id=f.id, sent_at=f.created_at, stream=bs.loads(f.stream)) for f in frames],
                           self._secret)

    # ---- settling -------------------------------------------------------------------------
    async def _delivered(self, ids: list[str], response: httpx.Response, started: float) -> None:
        results: dict[str, str] = {}
        try:
            for item in response.json()["results"]:
                if item["id"] in ids and item["status"] in DELIVERED:
                    results[item["id"]] = item["status"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("receiver answered 200 with an unreadable body (%s)", exc)
        await self._settle(results)
        missing = [i for i in ids if i not in results]
        if missing:
            await self._transient(missing, started, "bad_reply",
                                  "the receiver answered 200 but did not report these frames as stored")

    async def _settle(self, results: dict[str, str]) -> None:
        """Mark frames delivered: ``results`` maps frame id -> what the far side said."""
        if results:
            await self.outbox.mark_delivered(results, time.time())
            self.metrics.delivery_attempts.labels("delivered").inc()
            for result in results.values():
                self.metrics.frames.labels(result).inc()
            self._failures = 0

    async def _permanent(self, frames: list[PendingFrame], response: httpx.Response) -> None:
        self.metrics.delivery_errors.labels("http_4xx").inc()
        if len(frames) > 1:  # which frame was it? ask about each one alone, right away
            self.metrics.delivery_attempts.labels("split").inc()
            await self.outbox.schedule_retry([f.id for f in frames], _error_from(response), time.time())
            for frame in frames:
                await self._send([frame])
            return
        error = _error_from(response)
        log.warning("receiver refused frame %s: %s %s", frames[0].id, error["error"], error["message"])
        await self.outbox.mark_failed([frames[0].id], error)
        self.metrics.delivery_attempts.labels("failed").inc()
        self.metrics.frames.labels("failed").inc()

    async def _transient(self, ids: list[str], started: float, kind: str, message: str, error: dict | None = None,
                         retry_after: float | None = None) -> None:
        """``started``: time.monotonic() when the failed POST was sent."""
        now = time.time()
        if started >= self._failed_at:  # sent after the last counted failure: the receiver failed again
            self._failures += 1
            self._failed_at = time.monotonic()
            backoff = min(self.settings.retry_max_s, self.settings.retry_base_s * 2 ** (self._failures - 1))
            delay = backoff * random.uniform(0.5, 1.0)  # jitter: many senders do not retry in step
        else:  # on its way when that failure was counted: the same outage, the same pause
            delay = max(0.0, self._pause_until - now)
        if retry_after is not None and retry_after > 0:
            delay = min(retry_after, MAX_RETRY_AFTER_S)
        self._pause_until = now + delay
        error = dict(error or {"error": kind, "message": message})
        await self.outbox.schedule_retry(ids, error, now + delay)
        self.metrics.delivery_errors.labels(kind).inc()
        self.metrics.delivery_attempts.labels("retry").inc()
        log.info("delivery of %d frame(s) failed (%s: %s); retry in %.2f s", len(ids), kind, message, delay)


def _error_from(response: httpx.Response) -> dict:
    """The receiver's {"error", "message"} (its JSON error shape), or a description of the reply."""
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return {"error": body["error"], "message": str(body.get("message", "")),
                    "http_status": response.status_code}
    except ValueError:
        pass
    return {"error": f"HTTP {response.status_code}", "message": response.text[:500] or response.reason_phrase,
            "http_status": response.status_code}


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
