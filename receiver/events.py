"""Live fan-out of newly stored images to ``GET /v1/events`` clients (Server-Sent Events).

Each client gets a bounded queue. ``publish`` never waits: a client whose queue is full is
dropped (its stream ends; browsers reconnect by themselves and the gallery refetches the list),
so a slow reader can never hold up the decoder. Everything here runs on the event loop;
worker threads hand events over with ``loop.call_soon_threadsafe(hub.publish, item)``.

Wire format, one event per stored image, heartbeats as comments::

    retry: 2000

    event: image
    id: <image id>
    data: {...image metadata JSON...}

    : heartbeat
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

_CLOSE = object()


class Subscriber:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=maxsize)
        self.dropped = False

    def close(self) -> None:
        """End this stream now: make room and enqueue the end marker."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_CLOSE)


class EventHub:
    def __init__(self, client_queue: int, on_count: Callable[[int], None] = lambda n: None) -> None:
        self._client_queue = client_queue
        self._subscribers: set[Subscriber] = set()
        self._on_count = on_count
        self.closed = False

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self._client_queue)
        if self.closed:
            sub.close()
        else:
            self._subscribers.add(sub)
            self._on_count(len(self._subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
        self._on_count(len(self._subscribers))

    def publish(self, item: dict) -> None:
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:
                sub.dropped = True
                sub.close()
                self.unsubscribe(sub)

    def close(self) -> None:
        """End every stream (at shutdown, so open connections do not hold the server up)."""
        self.closed = True
        for sub in list(self._subscribers):
            sub.close()
            self.unsubscribe(sub)

    async def stream(self, sub: Subscriber, heartbeat_s: float) -> AsyncIterator[str]:
        """The text/event-stream body for one subscriber; unsubscribes however it ends."""
        try:
            yield "retry: 2000\n: connected\n\n"
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), timeout=heartbeat_s)
                except TimeoutError:
                    yield ": heartbeat\n\n"
                    continue
                if item is _CLOSE:
                    return
                yield f"event: image\nid: {item['id']}\ndata: {json.dumps(item, separators=(',', ':'))}\n\n"
        finally:
            self.unsubscribe(sub)
