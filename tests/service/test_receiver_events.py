"""Live events: GET /v1/events delivers one `image` event per newly stored frame, sends
heartbeats, and drops a client that cannot keep up instead of blocking the decoder."""

from __future__ import annotations

import asyncio
import json
import time

from tests.service.conftest import receiver_post


def _events(lines, until: float):
    """(event, data) pairs and comments from an SSE line iterator, until the deadline."""
    event, data = None, []
    for line in lines:
        if time.monotonic() > until:
            return
        if line.startswith(":"):
            yield ("comment", line[1:].strip())
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and event:
            yield (event, "\n".join(data))
            event, data = None, []


def test_event_stream_delivers_new_images_and_heartbeats(receiver_client, receiver_frames):
    deadline = time.monotonic() + 15
    with receiver_client.stream("GET", "/v1/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        body, (image_id,) = receiver_frames.body()
        assert receiver_post(receiver_client, body).status_code == 200
        image, heartbeats = None, 0
        for kind, value in _events(stream.iter_lines(), deadline):
            if kind == "image":
                image = json.loads(value)
            elif kind == "comment" and value == "heartbeat":
                heartbeats += 1
            if image and heartbeats:  # the heartbeat interval is 0.2 s in these tests
                break
        assert image is not None, "no image event within 15 s"
        assert heartbeats >= 1
        assert image == receiver_client.get(f"/v1/images/{image_id}").json()
        assert "latentwire_receiver_sse_clients 1.0" in receiver_client.get("/metrics").text
    # Once the client has gone its subscription is removed.
    deadline = time.monotonic() + 5
    while "latentwire_receiver_sse_clients 0.0" not in receiver_client.get("/metrics").text:
        assert time.monotonic() < deadline, "the closed stream was not cleaned up"
        time.sleep(0.05)


def test_duplicates_send_no_event(receiver_client, receiver_frames):
    body, (image_id,) = receiver_frames.body()
    receiver_post(receiver_client, body)
    deadline = time.monotonic() + 15
    with receiver_client.stream("GET", "/v1/events") as stream:
        assert receiver_post(receiver_client, body).json()["results"][0]["status"] == "duplicate"
        newer, (new_id,) = receiver_frames.body()
        receiver_post(receiver_client, newer)
        ids = []
        for kind, value in _events(stream.iter_lines(), deadline):
            if kind == "image":
                ids.append(json.loads(value)["id"])
                break
        assert ids == [new_id]


def test_slow_client_is_dropped_without_blocking_publish():
    from receiver.events import EventHub

    async def scenario():
        counts = []
        hub = EventHub(client_queue=2, on_count=counts.append)
        slow, fast = hub.subscribe(), hub.subscribe()
        fast_stream = hub.stream(fast, heartbeat_s=10)
        assert (await anext(fast_stream)).startswith("retry:")
        for i in range(3):  # publish never waits, whatever the subscribers do
            hub.publish({"id": f"{i:032x}"})
            assert "image" in await anext(fast_stream)
        assert slow.dropped and not fast.dropped and len(hub) == 1
        slow_stream = hub.stream(slow, heartbeat_s=10)
        assert (await anext(slow_stream)).startswith("retry:")
        assert [chunk async for chunk in slow_stream] == []  # the dropped stream ends
        hub.close()
        assert [chunk async for chunk in fast_stream] == []  # shutdown ends every stream
        assert len(hub) == 0 and counts[-1] == 0

    asyncio.run(asyncio.wait_for(scenario(), 10))
