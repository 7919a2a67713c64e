"""The sender's model of its link to the receiver, and the byte budgets ``quality=auto`` takes from it.

The link model. Each POST that the receiver answered 200 is a sample: its body bytes, and the
busy time it ends. The delivery worker keeps up to ``delivery_concurrency`` POSTs on their way (the
next batch travels while the receiver decodes the last), so the busy time is counted once: a
sample's seconds run from the later of its POST's start and the previous sample's end, and a
stretch with no POST on its way counts for none (``busy_seconds``). Goodput is the ratio of the
smoothed bytes to the smoothed seconds (two exponential averages, weight ``SMOOTHING`` on the
newest), so a long slow POST after a rate drop weighs by its time, and the estimate falls within a
POST or two. It includes the round trips and whatever of the receiver's time no other POST
overlapped, which is right: it is the rate at which the outbox really drains. ``rtt_s`` is the
same average of whole POST times, request sent to reply read. A POST that timed out is a sample
too, as a bound (the link moved less than its body in that time), so a link that slows below the
batches it is sent pulls the estimate down; other failed POSTs are no sample (an outage leaves the
last estimate in place). The POSTs still on their way bound the rate too: their bodies have not got
through in the time since the first of them started, so budgets planned meanwhile take at most
their bytes / that time (``budget_rate``); after a rate drop the next uploads shrink before the
first slow POST ends. ``LATENTWIRE_SENDER_LINK_KBPS`` pins the rate (source
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
             = rate * START_PROBE_S, when that is less and nothing was measured yet   reason "start"
    pace     = PACE_SHARE * rate * interval - max(0, queued - rate * interval) * interval / target_s
    share    = left * pixels / pixels of the whole upload
    budget   = share                                  reason "target" (or "pace")
             = floor = AUTO_MIN_BPP * pixels / 8       reason "floor", when share is below it
    then     the stream came out at quality 1          reason "ceiling" (the share was not needed)
             the codec's smallest stream > budget      reason "codec_minimum" (sent at that size)
    late     = (queued + this upload's streams up to this one) / rate > target_s

A late frame is still queued and sent; its record says it will be late.

The re-plan (``replan``, run by sender/replan.py). A budget is only as good as the rate it was
planned on: after a drop the frames already queued hold the link for longer than the target, and
every frame behind them is late too. So the sender keeps each quality=auto upload's file while
its frame is queued, and whenever the rate budgets take falls, it checks the queue against the
targets: frame i, in delivery order, is through when the bytes in flight and the bytes of frames
up to i are, which must be before created_at + target_s. The frames it may still code again
(quality=auto, never possibly stored by the receiver) share the room those deadlines leave in
proportion to their bytes, at one scale. A frame already past its deadline sets no bound of its
own (it is late whatever it weighs), but its bytes count against every frame behind it, so it
shrinks when they need the room, and not otherwise:

    room_i   = rate * (created_at_i + target_s - now) - in flight - fixed bytes up to i
    scale    = min over frames with room_i > 0 of room_i / their resizable bytes up to i
    budget   = max(floor, scale * bytes)          when below REPLAN_KEEP * bytes    reason "replan"

The start. Until a POST has been measured the rate is only the start rate, a guess: a first upload
that filled rate * target at a guess twice the link would hold the link for two targets, and every
frame behind it would be late. So an upload planned on the start rate takes at most what that rate
carries in ``START_PROBE_S``; the first POST, a second or so later, measures the link.

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

import itertools
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal

SMOOTHING = 0.5  # weight of the newest POST: a rate step shows within 1-2 POSTs, one odd POST is halved
PACE_SHARE = 0.9  # of what the link carries between two uploads, the pace budget's share
START_PROBE_S = 1.0  # before any POST was measured, an upload takes what the start rate carries in this
REPLAN_KEEP = 0.8  # a queued frame is coded again only when its new budget is below this share of its bytes
BudgetReason = Literal["target", "pace", "start", "floor", "ceiling", "codec_minimum", "replan"]
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
        self._seconds: float | None = None  # smoothed busy seconds per acknowledged POST
        self._rtt: float | None = None  # smoothed seconds of a whole POST
        self.samples = 0
        self._last_upload_at: float | None = None
        self.interval_s: float | None = None  # smoothed seconds between quality=auto uploads
        # Budgets of quality=auto uploads planned but not yet in the outbox (still encoding): they
        # go ahead of the next upload as surely as queued frames do (``reserve``).
        self.encoding_bytes = 0
        self._in_flight: dict[int, tuple[int, float]] = {}  # (body bytes, monotonic start) of each POST on its way
        self._keys = itertools.count()
        self._busy_from = 0.0  # busy time before this is in samples already (``busy_seconds``)

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
        rate until it ends (``budget_rate``), and busy time for ``busy_seconds``."""
        if not self._in_flight:
            self._busy_from = started  # the link was idle until now: that time is no one's
        key = next(self._keys)
        self._in_flight[key] = (nbytes, started)
        try:
            yield
        finally:
            del self._in_flight[key]

    def busy_seconds(self, ended: float) -> float:
        """Seconds of link time for the POST ending at ``ended`` (time.monotonic(), inside its
        ``sending``): the busy time since the previous POST ended or, if later, since the link
        last went from idle to busy. Each busy second is counted by exactly one POST."""
        seconds = ended - self._busy_from
        self._busy_from = max(self._busy_from, ended)
        return seconds

    def observe(self, nbytes: int, seconds: float, rtt_s: float | None = None) -> None:
        """One POST the receiver answered 200: ``nbytes`` of body in ``seconds`` of busy link
        time (``busy_seconds``; with one POST at a time, its whole time); ``rtt_s``: the POST's
        whole time, when that differs."""
        if nbytes <= 0 or not seconds > 0:
            return
        rtt = seconds if rtt_s is None else rtt_s
        if self._bytes is None or self._seconds is None or self._rtt is None:
            self._bytes, self._seconds, self._rtt = float(nbytes), float(seconds), float(rtt)
        else:
            self._bytes += SMOOTHING * (nbytes - self._bytes)
            self._seconds += SMOOTHING * (seconds - self._seconds)
            self._rtt += SMOOTHING * (rtt - self._rtt)
        self.samples += 1

    def state(self) -> LinkState:
        measured = None if not self._bytes or not self._seconds else self._bytes / self._seconds
        if self.pinned_bytes_per_s is not None:
            rate, source = self.pinned_bytes_per_s, "pinned"
        else:
            rate, source = measured, "measured" if measured is not None else "none"
        return LinkState(goodput_bytes_per_s=rate, measured_bytes_per_s=measured, rtt_s=self._rtt,
                         source=source, samples=self.samples)  # type: ignore[arg-type]

    def _in_flight_since(self, now: float | None) -> tuple[int, float]:
        """Body bytes of the POSTs on their way, and seconds since the first of them started
        (``now``: time.monotonic()); (0, 0.0) when none is."""
        if not self._in_flight:
            return 0, 0.0
        elapsed = (time.monotonic() if now is None else now) - min(t for _, t in self._in_flight.values())
        return sum(b for b, _ in self._in_flight.values()), elapsed

    def in_flight_bytes(self, rate_bytes_per_s: float, now: float | None = None) -> float:
        """Bytes of the POSTs on their way not yet through at ``rate_bytes_per_s``, as far as the
        time since the first of them started tells (``now``: time.monotonic())."""
        nbytes, elapsed = self._in_flight_since(now)
        return max(0.0, nbytes - rate_bytes_per_s * max(0.0, elapsed))

    def budget_rate(self, start_kbps: float, now: float | None = None) -> tuple[float, RateSource]:
        """Bytes per second for budgets, and where the number comes from; unless pinned, at most
        what the POSTs on their way have moved so far could be (``now``: time.monotonic())."""
        state = self.state()
        if state.goodput_bytes_per_s is None:
            rate, source = start_kbps * 1000 / 8, "start"
        else:
            rate, source = state.goodput_bytes_per_s, state.source
        if source != "pinned":
            nbytes, elapsed = self._in_flight_since(now)
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
    replanned_from: int | None = None  # reason "replan": the bytes of the stream it replaced

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
    if source == "start" and rate_bytes_per_s * START_PROBE_S < left:
        left, why = rate_bytes_per_s * START_PROBE_S, "start"
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
    if reason in ("target", "pace", "start") and quality >= 1.0:
        reason = "ceiling"
    expected = (p.queued_bytes + bytes_through) / p.rate_bytes_per_s
    return Budget(bytes=budget_bytes, reason=reason, late=expected > p.target_s,
                  expected_latency_s=round(expected, 3), target_s=p.target_s,
                  link_kbps=round(p.rate_bytes_per_s * 8 / 1000, 3), link_source=p.source,
                  queued_bytes=p.queued_bytes)


@dataclass(frozen=True)
class QueuedFrame:
    """A queued frame as ``replan`` sees it, in delivery order."""

    id: str
    created_at: float  # UNIX s
    nbytes: int
    pixels: int
    target_s: float | None  # quality=auto's latency target; None: no deadline (a quality or max_bytes upload)
    resizable: bool  # its upload is kept and no POST may have stored it: it can be coded again


def replan(frames: list[QueuedFrame], rate_bytes_per_s: float, now: float, in_flight_bytes: float,
           min_bpp: float) -> dict[str, int]:
    """New budgets for the queued frames that the link can no longer carry by their deadlines
    (the module docstring): frame id -> max_bytes, only for frames that shrink below
    ``REPLAN_KEEP`` of their bytes. Empty when every deadline that can still be met holds."""
    fixed = resizable = 0.0
    scale = 1.0
    for f in frames:
        if f.resizable:
            resizable += f.nbytes
        else:
            fixed += f.nbytes
        if f.target_s is None:
            continue
        room = rate_bytes_per_s * (f.created_at + f.target_s - now) - in_flight_bytes
        if room > 0 and resizable > 0:
            scale = min(scale, max(0.0, (room - fixed) / resizable))
    budgets = {}
    for f in frames:
        budget = max(1, math.ceil(min_bpp * f.pixels / 8), int(scale * f.nbytes))
        if f.resizable and budget < REPLAN_KEEP * f.nbytes:
            budgets[f.id] = budget
    return budgets
