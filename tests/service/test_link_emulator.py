"""shared/tools/link_emulator.py with real sockets on loopback: the rate it lets through (and a change of
rate mid-transfer), the delay it adds, and both kinds of outage. Each test runs a few seconds at most.

(The emulator is a shared-library tool, but it needs no model and runs real sockets, so its tests sit
with the service tier rather than tests/unit.)"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from shared.tools.link_emulator import LinkEmulator


class Sink:
    """A TCP server that reads everything and notes when each byte arrived (cumulative)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, int]] = []
        self.total = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            self.total += len(data)
            self.arrivals.append((time.monotonic(), self.total))
        writer.close()

    def time_at(self, nbytes: int) -> float:
        return next(t for t, total in self.arrivals if total >= nbytes)

    async def wait_for(self, nbytes: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.total < nbytes:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.total} of {nbytes} bytes arrived in {timeout_s} s")
            await asyncio.sleep(0.005)


async def echo_server() -> tuple[asyncio.base_events.Server, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def run(coro, timeout_s: float = 10.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


@pytest.mark.slow
def test_throughput_follows_the_rate_and_a_change_of_rate_mid_run():
    async def main():
        sink = Sink()
        link = LinkEmulator("127.0.0.1", await sink.start(), kbps=512)
        await link.start()
        _, writer = await asyncio.open_connection("127.0.0.1", link.port)
        first = 64_000  # 1 s at 512 kbit/s
        writer.write(bytes(first))
        await sink.wait_for(first, 5)
        link.kbps = 128  # the change applies to the bytes still to come
        writer.write(bytes(32_000))  # 2 s at 128 kbit/s
        await sink.wait_for(first + 32_000, 5)
        writer.close()
        await link.stop()
        t0, head = sink.arrivals[0]
        fast = (first - head) * 8 / 1000 / (sink.time_at(first) - t0)
        slow = 32_000 * 8 / 1000 / (sink.time_at(first + 32_000) - sink.time_at(first))
        return fast, slow, link.bytes_up

    fast, slow, bytes_up = run(main())
    assert fast == pytest.approx(512, rel=0.2)
    assert slow == pytest.approx(128, rel=0.2)
    assert bytes_up == 96_000


async def _round_trip(port: int, message: bytes = b"ping" * 4) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(message)
    assert await reader.readexactly(len(message)) == message
    elapsed = time.monotonic() - t0
    writer.close()
    return elapsed


def test_delay_is_added_each_way_and_does_not_cut_throughput():
    async def main():
        server, port = await echo_server()
        link = LinkEmulator("127.0.0.1", port, kbps=10_000, delay_s=0.1)
        await link.start()
        rtt = await _round_trip(link.port)
        link.delay_s = 0.0
        rtt_without = await _round_trip(link.port)
        # 100 kB at 2000 kbit/s is 0.4 s: with a 0.1 s one-way delay a stop-and-wait link would
        # take far longer; a pipelined one adds the delay once.
        link.kbps, link.delay_s = 2000, 0.1
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        t0 = time.monotonic()
        writer.write(bytes(100_000))
        await reader.readexactly(100_000)
        bulk_s = time.monotonic() - t0
        writer.close()
        await link.stop()
        server.close()
        return rtt, rtt_without, bulk_s

    rtt, rtt_without, bulk_s = run(main())
    assert 0.2 <= rtt < 0.3
    assert rtt_without < 0.05
    # The rate's time plus one delay each way (less a burst of BURST_S the idle bucket had saved).
    assert 0.4 + 0.2 - 0.1 <= bulk_s < 0.4 * 1.2 + 0.2 + 0.15


def test_stall_outage_holds_the_bytes_then_delivers_them_all():
    async def main():
        sink = Sink()
        link = LinkEmulator("127.0.0.1", await sink.start(), kbps=1000)
        await link.start()
        _, writer = await asyncio.open_connection("127.0.0.1", link.port)
        link.outage(0.6, kind="stall")
        t0 = time.monotonic()
        writer.write(bytes(2000))
        await asyncio.sleep(0.45)
        during = sink.total
        await sink.wait_for(2000, 3)
        arrived_s = sink.time_at(2000) - t0
        writer.close()
        await link.stop()
        return during, arrived_s

    during, arrived_s = run(main())
    assert during == 0
    assert 0.6 <= arrived_s < 1.0


def test_refuse_outage_resets_open_and_new_connections_then_recovers():
    async def main():
        server, port = await echo_server()
        link = LinkEmulator("127.0.0.1", port, kbps=5000)
        await link.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"  # an open connection, idle now
        link.outage(0.5, kind="refuse")
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 1)  # reset, not left hanging
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            r2, w2 = await asyncio.open_connection("127.0.0.1", link.port)
            w2.write(b"x")
            await asyncio.wait_for(r2.readexactly(1), 1)
        await asyncio.sleep(0.5)
        rtt_after = await _round_trip(link.port)  # the link is back
        await link.stop()
        server.close()
        return rtt_after, link.refused

    rtt_after, refused = run(main())
    assert rtt_after < 0.1
    assert refused == 1


def test_running_on_a_thread_serves_sync_code():
    loop = asyncio.new_event_loop()  # the echo server's own, as a real target would be elsewhere
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server, port = asyncio.run_coroutine_threadsafe(echo_server(), loop).result(5)
    try:
        with LinkEmulator("127.0.0.1", port, kbps=1000, delay_s=0.05).running() as link:
            with socket.create_connection(("127.0.0.1", link.port), timeout=2) as sock:
                t0 = time.monotonic()
                sock.sendall(b"abc")
                assert sock.recv(3) == b"abc"
                assert 0.1 <= time.monotonic() - t0 < 1.0  # 50 ms each way; the upper bound only rules out a stall
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kbps"):
        LinkEmulator("127.0.0.1", 1, kbps=0)
    link = LinkEmulator("127.0.0.1", 1, kbps=8)
    with pytest.raises(ValueError, match="stall or refuse"):
        link.outage(1, kind="flap")  # type: ignore[arg-type]
