"""Cluster mode's transport: the NATS JetStream names both services use, and one connection each.

    sender ──publish, Nats-Msg-Id = frame id──> stream LATENTWIRE_FRAMES   (subjects latentwire.frames.<model>,
                                                 │                           work-queue retention: a message
                                                 │                           leaves the stream when acked)
                             durable pull consumer latentwire-receivers
                      ┌──────────────────────────┼──────────────────────────┐
                 receiver worker A          receiver worker B          receiver worker C
                 (fetch, verify, decode, store in PostgreSQL + S3, then ack; a bad frame goes
                  to LATENTWIRE_DEAD, subject latentwire.dead.<reason>, and is acked)
                      └──── core NATS subject latentwire.events.stored ──── every replica's live page

A message is one signed frame body exactly as ``POST /v1/frames`` takes it (``shared.wire``, one
frame), so verification, limits and errors are the receiver's usual ones. The broker drops a second
publish of the same frame id within ``DUPLICATE_WINDOW_S``; past it (a sender that was offline
longer), the store's unique frame id makes storing idempotent anyway.

``Broker`` holds one connection and keeps it: the first connect is retried in the background until
it succeeds, after which nats-py reconnects by itself. Nothing here reads the environment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from shared.errors import BrokerUnavailable

FRAMES_STREAM = "LATENTWIRE_FRAMES"
FRAMES_SUBJECTS = "latentwire.frames.>"
DEAD_STREAM = "LATENTWIRE_DEAD"
DEAD_SUBJECTS = "latentwire.dead.>"
EVENTS_SUBJECT = "latentwire.events.stored"
WORKERS = "latentwire-receivers"  # the one durable consumer every receiver worker pulls from
DUPLICATE_WINDOW_S = 600.0
DEAD_MAX_AGE_S = 30 * 86_400.0  # dead letters are kept a month for an operator to inspect

log = logging.getLogger("latentwire.jetstream")


def frames_subject(model: str) -> str:
    return f"latentwire.frames.{model}"


def dead_subject(reason: str) -> str:
    return f"latentwire.dead.{reason}"


def redact(url: str) -> str:
    """``nats://user:pass@host:4222`` -> ``nats://host:4222``: URLs go into logs and /readyz."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


async def ensure_streams(js: JetStreamContext) -> None:
    """Create the frames and dead-letter streams unless they exist (several processes may race)."""
    configs = (
        StreamConfig(name=FRAMES_STREAM, subjects=[FRAMES_SUBJECTS], retention=RetentionPolicy.WORK_QUEUE,
                     storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S),
        StreamConfig(name=DEAD_STREAM, subjects=[DEAD_SUBJECTS], retention=RetentionPolicy.LIMITS,
                     storage=StorageType.FILE, max_age=DEAD_MAX_AGE_S),
    )
    for config in configs:
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError:  # created by another process in between
                await js.stream_info(config.name)


class Broker:
    """One NATS connection for a service, established in the background and kept.

    ``on_connect`` runs after the first connection (e.g. to subscribe; nats-py re-subscribes by
    itself after a reconnect)."""

    def __init__(self, url: str, name: str, on_connect: Callable[[Client], Awaitable[None]] | None = None,
                 connect_timeout_s: float = 2.0) -> None:
        self.url = url
        self.name = name
        self._on_connect = on_connect
        self._connect_timeout_s = connect_timeout_s
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._task: asyncio.Task | None = None
        self.last_error: str | None = None

    @property
    def where(self) -> str:
        return redact(self.url)

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect_loop(), name=f"{self.name}-connect")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._nc is not None:
            try:
                await self._nc.close()
            except Exception:  # closing a dead connection: nothing left to release
                pass

    def client(self) -> Client:
        if not self.connected:
            raise BrokerUnavailable(self.unavailable_reason())
        return self._nc

    def jetstream(self) -> JetStreamContext:
        self.client()
        return self._js

    def unavailable_reason(self) -> str:
        detail = f" ({self.last_error})" if self.last_error else ""
        return (f"the NATS server at {self.where} is unreachable{detail}: start it or fix the broker URL; "
                "work waits and resumes when it is back")

    async def wait_connected(self, poll_s: float = 0.2) -> Client:
        while not self.connected:
            await asyncio.sleep(poll_s)
        return self._nc

    async def _connect_loop(self) -> None:
        delay = 0.2
        while True:
            try:
                nc = await nats.connect(
                    self.url, name=self.name, connect_timeout=self._connect_timeout_s, allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=0.5, ping_interval=5, max_outstanding_pings=2,
                    error_cb=self._on_error, disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect)
            except Exception as exc:  # refused, timeout, no servers: retry until it comes up
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            break
        js = nc.jetstream()
        while True:  # the server may still be starting JetStream: retry creating the streams
            try:
                await ensure_streams(js)
                break
            except Exception as exc:
                self.last_error = f"JetStream not ready: {type(exc).__name__}: {exc}"
                await asyncio.sleep(0.5)
        self._nc, self._js = nc, js
        self.last_error = None
        log.info("%s connected to NATS at %s", self.name, self.where)
        if self._on_connect is not None:
            await self._on_connect(nc)

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def _on_disconnect(self) -> None:
        log.warning("%s lost its NATS connection to %s; reconnecting", self.name, self.where)

    async def _on_reconnect(self) -> None:
        self.last_error = None
        log.info("%s reconnected to NATS at %s", self.name, self.where)
        try:  # a restarted server with a fresh store has lost the streams
            await ensure_streams(self._js)
        except Exception as exc:
            log.warning("could not check the JetStream streams after reconnecting: %s", exc)
