"""A thin link on loopback, for tests and benchmarks: an asyncio TCP proxy with a rate, a delay and outages.

    client ──> 127.0.0.1:<port> ──[token bucket, kbit/s]──[one-way delay]──> target host:port
           <──                  <──[token bucket, kbit/s]──[one-way delay]──

    emulator = LinkEmulator("127.0.0.1", 8001, kbps=64, delay_s=0.05)
    await emulator.start()                    # emulator.port: where clients connect instead
    emulator.kbps = 1024                      # takes effect within one chunk, mid-transfer too
    emulator.outage(20, start_in_s=30)        # link down from 30 s to 50 s from now
    ...
    await emulator.stop()

    with LinkEmulator(...).running() as emulator:   # the same on a thread of its own, for sync code
        ...                                          # (setters and outage() are safe from any thread)

The model is one shared link, not one per connection: each direction has one token bucket that all
connections draw from, so two uploads at once share the rate as they would on a real radio. A
byte leaves the bucket, then arrives ``delay_s`` later; delayed bytes are pipelined (the delay adds
latency, not a stop-and-wait), so throughput stays at the rate while every round trip gains
2 * ``delay_s``. The bucket holds at most ``BURST_S`` of the rate (at least one chunk), so no
transfer ever sees much more than the set rate.

Outages (``outage(duration_s, start_in_s, kind)``) are time windows:

    stall    the link carries nothing: bytes already inside wait, new connections are accepted
             but carry nothing either; at the end everything moves on (a radio fade)
    refuse   every open connection through the emulator is reset, and new ones are reset as soon
             as they are accepted (the nearest a user-space proxy comes to "connection refused"
             while keeping its port); at the end new connections work again

Only the standard library: no FastAPI, no httpx. Importing this module starts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Literal

OutageKind = Literal["stall", "refuse"]
CHUNK_BYTES = 4096  # most bytes moved per bucket draw; smaller at low rates (see _chunk)
BURST_S = 0.05  # the bucket holds this much of the rate: bursts stay near the set rate
POLL_S = 0.05  # longest wait before the rate or an outage is looked at again


@dataclass(frozen=True)
class Outage:
    start: float  # time.monotonic()
    end: float
    kind: OutageKind


class _Bucket:
    """Tokens in bytes, refilled at the emulator's current rate (read at every draw, so a rate
    change applies to the next chunk)."""

    def __init__(self, link: "LinkEmulator") -> None:
        self.link = link
        self.tokens = 0.0
        self.at = time.monotonic()

    async def take(self, n: int) -> None:
        while True:
            now = time.monotonic()
            rate = self.link.bytes_per_s
            self.tokens = min(self.tokens + (now - self.at) * rate, max(n, rate * BURST_S))
            self.at = now
            if self.link.down(now) is not None:
                self.tokens = 0.0  # no credit builds up while the link is down
                await asyncio.sleep(POLL_S)
                continue
            if self.tokens >= n:
                self.tokens -= n
                return
            await asyncio.sleep(min((n - self.tokens) / rate, POLL_S))


class LinkEmulator:
    """See the module docstring. ``kbps``: kilobits (1000 bits) per second in each direction;
    ``delay_s``: added one-way delay. Both are plain attributes, settable at any time."""

    def __init__(self, target_host: str, target_port: int, kbps: float, delay_s: float = 0.0,
                 listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        if kbps <= 0:
            raise ValueError(f"kbps must be > 0, got {kbps}")
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        self.target = (target_host, target_port)
        self.listen = (listen_host, listen_port)
        self.kbps = float(kbps)
        self.delay_s = float(delay_s)
        self.port = listen_port  # the bound port once started
        self.bytes_up = 0  # client -> target, bytes delivered
        self.bytes_down = 0  # target -> client
        self.connections = 0  # accepted, refused ones included
        self.refused = 0
        self._outages: tuple[Outage, ...] = ()  # replaced whole, never mutated: safe to read from any thread
        self._server: asyncio.base_events.Server | None = None
        self._up = _Bucket(self)
        self._down = _Bucket(self)
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def bytes_per_s(self) -> float:
        return self.kbps * 1000 / 8

    @property
    def url(self) -> str:
        return f"http://{self.listen[0]}:{self.port}"

    # ---- outages --------------------------------------------------------------------------
    def outage(self, duration_s: float, start_in_s: float = 0.0, kind: OutageKind = "stall") -> Outage:
        """Take the link down for ``duration_s``, ``start_in_s`` from now."""
        if duration_s <= 0 or start_in_s < 0:
            raise ValueError("an outage needs duration_s > 0 and start_in_s >= 0")
        if kind not in ("stall", "refuse"):
            raise ValueError(f"outage kind is stall or refuse, got {kind!r}")
        start = time.monotonic() + start_in_s
        window = Outage(start, start + duration_s, kind)
        self._outages = tuple(o for o in self._outages if o.end > time.monotonic()) + (window,)
        return window

    def down(self, now: float | None = None) -> Outage | None:
        """The outage in force at ``now`` (monotonic), if any."""
        now = time.monotonic() if now is None else now
        return next((o for o in self._outages if o.start <= now < o.end), None)

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._accept, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server = None

    @contextlib.contextmanager
    def running(self) -> Iterator["LinkEmulator"]:
        """Run on an event loop of its own on a daemon thread while the block runs."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="latentwire-link-emulator", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(10)
            yield self
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    # ---- connections --------------------------------------------------------------------
    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        try:
            outage = self.down()
            if outage is not None and outage.kind == "refuse":
                self.refused += 1
                _reset(client_w)
                return
            try:
                target_r, target_w = await asyncio.open_connection(*self.target)
            except OSError:  # the far end is down: the client sees its connection reset
                _reset(client_w)
                return
            self._writers.update((client_w, target_w))
            pumps = {asyncio.create_task(self._pump(client_r, target_w, self._up, "bytes_up")),
                     asyncio.create_task(self._pump(target_r, client_w, self._down, "bytes_down"))}
            watch = asyncio.create_task(self._watch())
            clean = True
            try:
                # A clean EOF in one direction waits for the other (half-close); a reset, an error
                # or a refuse outage ends both.
                pending = set(pumps)
                while pending and clean:
                    done, pending = await asyncio.wait(pending | {watch}, return_when=asyncio.FIRST_COMPLETED)
                    clean = watch not in done and all(t.result() for t in done)
                    pending.discard(watch)
            finally:
                for t in (*pumps, watch):
                    t.cancel()
                await asyncio.gather(*pumps, watch, return_exceptions=True)
                for writer in (client_w, target_w):
                    self._writers.discard(writer)
                    if clean:
                        writer.close()  # both directions ended with EOF: nothing is left to send
                    else:
                        _reset(writer)
        except asyncio.CancelledError:
            pass  # stop(): this task is the connection's root, so its end is the cancel's end (asyncio
            # would otherwise log the cancellation as an error of the server's callback)
        finally:
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bucket: _Bucket,
                    counter: str) -> bool:
        """Read, pay the bucket, hold for the delay, write; a second task writes, so the delay
        pipelines. True at a clean EOF (passed on once the bytes before it are through), False at a
        reset or a refuse outage."""
        lane: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        delivering = asyncio.create_task(self._deliver(lane, writer, counter))
        try:
            while True:
                data = await reader.read(self._chunk())
                if not data:
                    break
                await bucket.take(len(data))
                if _refusing(self):
                    return False
                lane.put_nowait((time.monotonic() + self.delay_s, data))
            lane.put_nowait((0.0, b""))
            await delivering
            return True
        except (ConnectionError, OSError):
            return False
        finally:
            delivering.cancel()
            await asyncio.gather(delivering, return_exceptions=True)

    async def _deliver(self, lane: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter,
                       counter: str) -> None:
        while True:
            at, data = await lane.get()
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            while True:  # due, and the link is up
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(min(wait, POLL_S))
                elif self.down() is not None:
                    await asyncio.sleep(POLL_S)
                else:
                    break
            writer.write(data)
            await writer.drain()
            setattr(self, counter, getattr(self, counter) + len(data))

    async def _watch(self) -> None:
        """Returns when a refuse outage begins: it resets every open connection."""
        while not _refusing(self):
            await asyncio.sleep(POLL_S / 2)

    def _chunk(self) -> int:
        return max(1, min(CHUNK_BYTES, int(self.bytes_per_s * BURST_S)))


def _refusing(link: LinkEmulator) -> bool:
    outage = link.down()
    return outage is not None and outage.kind == "refuse"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN, so the client sees a reset, not a clean empty reply."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
