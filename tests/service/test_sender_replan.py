"""Re-plans (sender/replan.py, the rule in sender/link.py): queued quality=auto frames are coded
again at budgets the link can still carry by their targets.

Sizes of the tiny model's streams for the 96x80 test picture: 159-163 bytes at quality 1, 81 at
the smallest reduced size (the codec's minimum)."""

from __future__ import annotations

import time

import httpx
import pytest

from sender.link import REPLAN_KEEP, QueuedFrame, replan
from shared.wire import unpack_frames
from tests.service.conftest import SENDER_SECRET, wait_status
from tests.service.test_sender_link import client_for, smooth_png, upload


def frame(id_: str, created_at: float, nbytes: int, target_s: float | None = 10.0, resizable: bool = True,
          pixels: int = 8000) -> QueuedFrame:
    return QueuedFrame(id_, created_at, nbytes, pixels, target_s, resizable)


# ---- the rule -------------------------------------------------------------------------------------
def test_a_queue_that_meets_its_targets_is_left_alone():
    """1 kB/s, 10 s targets, uploaded at t = 0 and 1, looked at t = 2: 8 s and 9 s left carry
    8 kB and 9 kB; 3 + 4 kB fit."""
    queue = [frame("a", 0.0, 3000), frame("b", 1.0, 4000)]
    assert replan(queue, 1000, now=2.0, in_flight_bytes=0, min_bpp=0.1) == {}


def test_after_a_drop_the_resizable_frames_share_the_room_at_one_scale():
    """Planned at 40 kB/s, now 1 kB/s: frames of 20 kB and 30 kB uploaded at t = 0 with 10 s targets,
    looked at t = 2 with 1 kB still in flight. Room for the first: 1 kB/s * 8 s - 1 kB = 7 kB over its
    20 kB (0.35); for both: 7 kB over 50 kB (0.14), the tighter. A frame that cannot be coded again
    (a quality upload, or one that may be stored) keeps its bytes and takes its room first."""
    queue = [frame("a", 0.0, 20_000), frame("b", 0.0, 30_000)]
    assert replan(queue, 1000, now=2.0, in_flight_bytes=1000, min_bpp=0.1) == {"a": 2800, "b": 4200}
    fixed = [frame("q", 0.0, 2000, target_s=None, resizable=False), *queue]
    assert replan(fixed, 1000, now=2.0, in_flight_bytes=1000, min_bpp=0.1) == {"a": 2000, "b": 3000}


def test_a_frame_past_its_deadline_shrinks_only_for_the_frames_behind_it():
    """At t = 12 the frame uploaded at t = 0 is late whatever it weighs: alone, it keeps its bytes.
    With a frame behind it uploaded at t = 11, whose deadline leaves 1 kB/s * 9 s = 9 kB for both,
    both shrink to 9 / 17 of their bytes."""
    old = frame("old", 0.0, 5000)
    assert replan([old], 1000, now=12.0, in_flight_bytes=0, min_bpp=0.1) == {}
    queue = [old, frame("new", 11.0, 12_000)]
    assert replan(queue, 1000, now=12.0, in_flight_bytes=0, min_bpp=0.1) == {"old": 2647, "new": 6352}


def test_small_cuts_and_unresizable_frames_are_not_coded_again():
    """A frame needing only 10 % less is left as it is (REPLAN_KEEP); a frame that is not resizable
    is never in the answer, though its bytes take room; the floor bounds a cut."""
    assert replan([frame("a", 0.0, 10_000)], 1000, now=1.0, in_flight_bytes=0, min_bpp=0.1) == {}
    fixed_first = [frame("x", 0.0, 5000, resizable=False), frame("y", 0.0, 5000)]
    assert replan(fixed_first, 1000, now=4.0, in_flight_bytes=0, min_bpp=0.1) == {"y": 1000}
    assert replan(fixed_first, 1000, now=6.0, in_flight_bytes=0, min_bpp=0.1) == {"y": 100}  # the floor
    tiny = [frame("a", 0.0, 20_000, pixels=800_000)]  # floor 10 kB at 0.1 bpp
    assert replan(tiny, 1000, now=9.0, in_flight_bytes=0, min_bpp=0.1) == {"a": 10_000}


# ---- the service ------------------------------------------------------------------------------------
class HeldReceiver:
    """Answers 503 (``retry_after`` s) until ``up``, then stores; the frames it stored, by id."""

    def __init__(self, retry_after: int = 1) -> None:
        self.retry_after = retry_after
        self.up = False
        self.stored: dict[str, int] = {}  # id -> bytes of the stream it got

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            return httpx.Response(503, headers={"Retry-After": str(self.retry_after)}, json={"error": "Busy", "message": "held"})
        frames = unpack_frames(request.content, SENDER_SECRET.encode())
        for f in frames:
            self.stored[f.id] = len(f.stream.to_bytes())
        return httpx.Response(200, json={"results": [{"id": f.id, "status": "stored"} for f in frames]})


@pytest.mark.slow
def test_queued_auto_frames_past_their_target_are_coded_again_and_delivered_small(tmp_path, tiny_models_dir):
    """Pinned at 8 kbit/s with a 3 s target, three auto uploads fit as quality 1 (about 160 bytes
    each, with a 159-byte quality upload: 0.65 of the 3 kB). The receiver answers 503 (not
    stored), so they stay queued until the time left no longer carries them: before their
    deadline the re-planner codes each again smaller (once, or again as the time runs out). The
    records say so, the previews follow, and the receiver gets the small streams once it is up.
    The quality upload keeps its stream."""
    receiver = HeldReceiver()
    with client_for(tmp_path, tiny_models_dir, httpx.MockTransport(receiver), link_kbps=8,
                    latency_target_s=3) as client:
        auto = upload(client, smooth_png(seed=1), smooth_png(seed=2), smooth_png(seed=3), quality="auto")
        (fixed,) = upload(client, smooth_png(seed=4), quality=1)
        png_before = client.get(auto[0]["reconstruction_url"]).content
        deadline = time.monotonic() + 15
        while True:
            records = [client.get(f"/v1/images/{a['id']}").json() for a in auto]
            if all(r["budget"]["reason"] == "replan" for r in records) and time.monotonic() > deadline - 11:
                break  # every one re-planned, and their deadlines (3 s) passed: no more re-plans
            assert time.monotonic() < deadline, records
            time.sleep(0.1)
        png_after = client.get(auto[0]["reconstruction_url"]).content
        metrics = client.get("/metrics").text
        receiver.up = True
        for image in (*auto, fixed):
            wait_status(client, image["id"], "delivered", timeout_s=10)
    assert [(a["budget"]["reason"], a["quality"], a["budget"]["late"]) for a in auto] == [("ceiling", 1.0, False)] * 3
    for r in records:
        assert r["status"] == "queued" and r["budget"]["reason"] == "replan"
        assert r["bytes"] < REPLAN_KEEP * r["budget"]["replanned_from"] <= REPLAN_KEEP * 163
        assert 81 <= r["budget"]["bytes"] and r["bytes"] <= max(81, r["budget"]["bytes"])
        assert (r["budget"]["link_source"], r["budget"]["target_s"]) == ("pinned", 3)
    assert png_after != png_before
    replans = float(metrics.split("\nlatentwire_sender_replans_total ")[1].split()[0])
    assert 3 <= replans <= 6  # once or twice each
    saved = sum(a["bytes"] - r["bytes"] for a, r in zip(auto, records))  # however many steps it took
    assert f"latentwire_sender_replan_saved_bytes_total {saved:.1f}" in metrics
    assert receiver.stored == {**{r["id"]: r["bytes"] for r in records}, fixed["id"]: fixed["bytes"]}


def test_a_frame_on_its_way_or_without_its_upload_is_not_replaced(tmp_path, tiny_models_dir):
    """replace_stream refuses a frame that a POST carries, and a quality upload (no kept file). The
    receiver's 503 (Retry-After 60) keeps both queued; the auto frame's 503 says it was not stored,
    so it stays resizable, and it goes after the quality upload (its next attempt is 60 s away)."""
    from sender.outbox import NewStream

    with client_for(tmp_path, tiny_models_dir, httpx.MockTransport(HeldReceiver(retry_after=60)), link_kbps=8,
                    latency_target_s=60) as client:
        svc = client.app.state.services
        (auto,) = upload(client, smooth_png(seed=1), quality="auto")
        (fixed,) = upload(client, smooth_png(seed=2), quality=0.5)
        new = NewStream(stream=b"x", nbytes=1, bpp=0.001, psnr=None, quality=0.0, jpeg=None, noise=None,
                        cleaned=False, coded_size=None, budget={"reason": "replan"}, max_bytes=1)
        outbox = svc.outbox
        with outbox._in_flight_lock:
            outbox._in_flight.add(auto["id"])
        try:
            on_its_way = client.portal.call(outbox.replace_stream, auto["id"], new)
        finally:
            outbox.release([auto["id"]])
        no_upload = client.portal.call(outbox.replace_stream, fixed["id"], new)
        order = client.portal.call(outbox.queue_order)
        assert client.get(f"/v1/images/{auto['id']}").json()["bytes"] == auto["bytes"]
    assert (on_its_way, no_upload) == (False, False)
    assert [(row[0], row[4], row[5]) for row in order] == [(fixed["id"], None, False), (auto["id"], 60.0, True)]


def test_a_kept_upload_that_cannot_be_coded_again_is_forgotten_and_the_frame_goes_as_it_is(tmp_path, tiny_models_dir):
    """A kept file that no longer loads (here overwritten with junk): the re-plan logs it, drops the
    file and leaves the frame as it was; the next look does not try again."""
    with client_for(tmp_path, tiny_models_dir, httpx.MockTransport(HeldReceiver(retry_after=60)), link_kbps=8,
                    latency_target_s=60) as client:
        svc, replanner = client.app.state.services, client.app.state.replanner
        (auto,) = upload(client, smooth_png(seed=1), quality="auto")
        client.portal.call(svc.outbox._run, lambda: svc.outbox.conn.execute(
            "UPDATE frames SET source = ? WHERE id = ?", (b"not an image", auto["id"])))
        just_before = auto["created_at"] + 60 - 0.05  # 50 bytes of room left: it would be cut
        first = client.portal.call(replanner.check, just_before)
        again = client.portal.call(replanner.check, just_before)
        order = client.portal.call(svc.outbox.queue_order)
        record = client.get(f"/v1/images/{auto['id']}").json()
    assert (first, again) == (0, 0)
    assert [(row[0], row[5]) for row in order] == [(auto["id"], False)]  # no longer resizable
    assert (record["bytes"], record["budget"]["reason"]) == (auto["bytes"], auto["budget"]["reason"])
