"""The sender's model of its link to the receiver, and the byte budgets ``quality=auto`` takes from it.

The link model. The delivery worker sends one POST at a time, so the time of a POST that the
receiver answered 200 is time the link spent on those bytes: each such POST is a sample (body bytes,
seconds from sending the request to reading the reply). Goodput is the ratio of the smoothed
bytes to the smoothed seconds (two exponential averages, weight ``SMOOTHING`` on the newest), so a
long slow POST after a rate drop weighs by its time, and the estimate falls within a POST or two.
It includes each POST's round trip and the receiver's time, which is right: it is the rate at which
the outbox really drains. ``rtt_s`` is the same average of the POST times. A POST that timed out
is a sample too, as a bound (the link moved less than its body in that time), so a link that
slows below the batches it is sent pulls the estimate down; other failed POSTs are no sample (an
outage leaves the last estimate in place). A POST still on its way bounds the rate too: its body
has not got through in the time it has taken so far, so budgets planned meanwhile take at most
body / elapsed (``budget_rate``); after a rate drop the next uploads shrink before the first slow
POST ends. ``LATENTWIRE_SENDER_LINK_KBPS`` pins the rate (source
"pinned"; the measurement goes on and is shown beside it). The same rate caps each POST's batch
at what it moves in half the request timeout (``Deliverer._batch_bytes``).

The budget (``quality=auto``, on when ``LATENTWIRE_SENDER_LATENCY_TARGET_S`` is set). A frame
waits for the bytes queued ahead of it, then for its own, so it reaches the receiver within the
target when (queued + its bytes) / rate <= target. For an upload of several images every image
must be through by the same deadline, so the bytes left, rate * target - queued, are shared among
them in proportion to their pixels:

    rate     = measured goodput | LINK_KBPS (pinned) | LINK_START_KBPS before the first sample
    queued   = the outbox's stream bytes + the budgets of auto uploads still being encoded
    left     = rate * target_s - queued
             = the pace, when that is less             reason "pace"
    pace     = PACE_SHARE * rate * interval - max(0, queued - rate * interval) * interval / target_s
    share    = left * pixels / pixels of the whole upload
    budget   = share                                  reason "target" (or "pace")
             = floor = AUTO_MIN_BPP * pixels / 8       reason "floor", when share is below it
    then     the stream came out at quality 1          reason "ceiling" (the share was not needed)
             the codec's smallest stream > budget      reason "codec_minimum" (sent at that size)
    late     = (queued + this upload's streams up to this one) / rate > target_s

A late frame is still queued and sent; its record says it will be late.

The pace: ``interval`` is the smoothed time between quality=auto uploads (as goodput, weight
``SMOOTHING`` on the newest). The target alone lets each upload fill whatever the queue leaves,
so uploads that come faster than the link drains them keep the queue near rate * target and every
frame near the target's edge, past it as soon as encoding lags; rate * interval is what the link
carries between two uploads. Budgets of exactly that leave the link no spare time: a slow encode
or a stream a little over its share starts a queue that nothing drains until it reaches the
target. So the pace is a share of it (``PACE_SHARE``), less this interval's part of any queue
beyond one interval's bytes spread over the target: a queue that forms drains within about one
target, and frames arrive a few intervals after their upload rather than near the target. A
burst of uploads is paced like a fast feed: each gets what the link carries between them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal

SMOOTHING = 0.5  # weight of the newest POST: a rate step shows within 1-2 POSTs, one odd POST is halved
PACE_SHARE = 0.9  # of what the link carries between two uploads, the pace budget's share
BudgetReason = Literal["target", "pace", "floor", "ceiling", "codec_minimum"]
RateSource = Literal["measured", "pinned", "start"]


@dataclass(frozen=True)
class LinkState:
    """What GET /v1/link shows (with the outbox's queued bytes)."""

    goodput_bytes_per_s: float | None  # the rate budgets use; None: not measured yet and not pinned
    measured_bytes_per_s: float | None
    rtt_s: float | None
    source: Literal["measured", "pinned", "none"]
    samples: int


class LinkModel:
    def __init__(self, pinned_kbps: float | None = None) -> None:
        self.pinned_bytes_per_s = None if pinned_kbps is None else pinned_kbps * 1000 / 8
        self._bytes: float | None = None  # smoothed body bytes per acknowledged POST
        self._seconds: float | None = None  # smoothed seconds per acknowledged POST
        self.samples = 0
        self._last_upload_at: float | None = None
        self.interval_s: float | None = None  # smoothed seconds between quality=auto uploads
        # Budgets of quality=auto uploads planned but not yet in the outbox (still encoding): they
        # go ahead of the next upload as surely as queued frames do (``reserve``).
        self.encoding_bytes = 0
        self._in_flight: tuple[int, float] | None = None  # (body bytes, monotonic start) of the POST on its way

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Count ``nbytes`` as queued ahead of later uploads while an upload encodes; its frames
        then count in the outbox instead (or, refused, nowhere)."""
        self.encoding_bytes += nbytes
        try:
            yield
        finally:
            self.encoding_bytes -= nbytes

    def arrived(self, now: float) -> float | None:
        """A quality=auto upload at ``now``: the smoothed interval between such uploads so far
        (None for the first)."""
        if self._last_upload_at is not None and now > self._last_upload_at:
            gap = now - self._last_upload_at
            self.interval_s = gap if self.interval_s is None else self.interval_s + SMOOTHING * (gap - self.interval_s)
        self._last_upload_at = now
        return self.interval_s

    @contextmanager
    def sending(self, nbytes: int, started: float) -> Iterator[None]:
        """A POST of ``nbytes`` on its way since ``started`` (time.monotonic()): a bound on the
        rate until it ends (``budget_rate``)."""
        self._in_flight = (nbytes, started)
        try:
            yield
        finally:
            self._in_flight = None

    def observe(self, nbytes: int, seconds: float) -> None:
        """One POST the receiver answered 200: ``nbytes`` of body in ``seconds``."""
        if nbytes <= 0 or not seconds > 0:
            return
        if self._bytes is None or self._seconds is None:
            self._bytes, self._seconds = float(nbytes), float(seconds)
        else:
            self._bytes += SMOOTHING * (nbytes - self._bytes)
            self._seconds += SMOOTHING * (seconds - self._seconds)
        self.samples += 1

    def state(self) -> LinkState:
        measured = None if not self._bytes or not self._seconds else self._bytes / self._seconds
        if self.pinned_bytes_per_s is not None:
            rate, source = self.pinned_bytes_per_s, "pinned"
        else:
            rate, source = measured, "measured" if measured is not None else "none"
        return LinkState(goodput_bytes_per_s=rate, measured_bytes_per_s=measured, rtt_s=self._seconds,
                         source=source, samples=self.samples)  # type: ignore[arg-type]

    def budget_rate(self, start_kbps: float, now: float | None = None) -> tuple[float, RateSource]:
        """Bytes per second for budgets, and where the number comes from; unless pinned, at most
        what the POST on its way has moved so far could be (``now``: time.monotonic())."""
        state = self.state()
        if state.goodput_bytes_per_s is None:
            rate, source = start_kbps * 1000 / 8, "start"
        else:
            rate, source = state.goodput_bytes_per_s, state.source
        if source != "pinned" and self._in_flight is not None:
            nbytes, started = self._in_flight
            elapsed = (time.monotonic() if now is None else now) - started
            if elapsed > 0:
                rate = min(rate, nbytes / elapsed)
        return rate, source  # type: ignore[return-value]


@dataclass(frozen=True)
class Budget:
    """How ``quality=auto`` chose one image's ``max_bytes``; kept in the outbox with the frame."""

    bytes: int  # the max_bytes the image was encoded with
    reason: BudgetReason
    late: bool  # even so, the frame is expected to reach the receiver after target_s
    expected_latency_s: float  # (queued ahead + this upload's streams through this one) / rate
    target_s: float
    link_kbps: float  # the rate the budget was computed from
    link_source: RateSource
    queued_bytes: int  # stream bytes ahead of this upload when it was planned (outbox + still encoding)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """The budgets of one upload, before encoding (``settle`` finishes each one after)."""

    rate_bytes_per_s: float
    source: RateSource
    target_s: float
    queued_bytes: int
    budgets: tuple[tuple[int, BudgetReason], ...]  # (max_bytes, reason) per image


def plan(pixels: list[int], rate_bytes_per_s: float, source: RateSource, target_s: float, queued_bytes: int,
         min_bpp: float, max_bytes: int, interval_s: float | None = None) -> Plan:
    """Each image's budget (see the module docstring); ``max_bytes`` caps any one budget;
    ``interval_s``: the pace of uploads (``LinkModel.arrived``), None before there is one."""
    left, why = rate_bytes_per_s * target_s - queued_bytes, "target"
    if interval_s is not None:
        between = rate_bytes_per_s * interval_s  # what the link carries between two uploads
        pace = PACE_SHARE * between - max(0.0, queued_bytes - between) * interval_s / target_s
        if pace < left:
            left, why = pace, "pace"
    total = sum(pixels)
    budgets = []
    for px in pixels:
        share = left * px / total
        floor = max(1, math.ceil(min_bpp * px / 8))
        budgets.append((floor, "floor") if share < floor else (min(int(share), max_bytes), why))
    return Plan(rate_bytes_per_s, source, target_s, queued_bytes, tuple(budgets))  # type: ignore[arg-type]


def settle(p: Plan, index: int, budget_bytes: int, reason: BudgetReason, quality: float,
           bytes_through: int) -> Budget:
    """The record of image ``index`` once encoded. ``budget_bytes`` / ``reason``: what it was
    encoded with (the codec's minimum when the plan's budget was below it); ``quality``: what the
    stream came out at; ``bytes_through``: this upload's stream bytes up to and including it."""
    if reason in ("target", "pace") and quality >= 1.0:
        reason = "ceiling"
    expected = (p.queued_bytes + bytes_through) / p.rate_bytes_per_s
    return Budget(bytes=budget_bytes, reason=reason, late=expected > p.target_s,
                  expected_latency_s=round(expected, 3), target_s=p.target_s,
                  link_kbps=round(p.rate_bytes_per_s * 8 / 1000, 3), link_source=p.source,
                  queued_bytes=p.queued_bytes)
