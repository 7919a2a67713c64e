"""The sender's link model and quality=auto (sender/link.py): settings, GET /v1/link, /metrics, and
the byte budgets uploads get. The receiver is an ``httpx.MockTransport``; one that sleeps
len(body) / rate before answering stands in for a link of that rate.

Sizes of the tiny model's streams for the 96x80 test picture: 111 bytes at quality 0, 163 at
quality 1, 81 at the smallest reduced size (the codec's minimum)."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from sender.app import create_app
from sender.link import LinkModel, plan, settle
from shared.wire import unpack_frames
from tests.service.conftest import SENDER_SECRET
from tests.service.conftest import sender_settings as make_settings
from tests.service.conftest import storing_receiver, wait_status


def smooth_png(width: int = 96, height: int = 80, seed: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / (width - 1), yy * 255 / (height - 1), np.full_like(xx, 111)], axis=2)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def down() -> httpx.MockTransport:
    """A receiver that cannot be reached: frames stay queued, so their bytes are "queued ahead"."""
    return httpx.MockTransport(lambda request: (_ for _ in ()).throw(httpx.ConnectError("receiver down")))


class Link:
    """A receiver behind a link of ``bytes_per_s``: each POST takes len(body) / rate, then is stored."""

    def __init__(self, bytes_per_s: float) -> None:
        self.bytes_per_s = bytes_per_s
        self.bodies: list[int] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(len(request.content) / self.bytes_per_s)
        self.bodies.append(len(request.content))
        frames = unpack_frames(request.content, SENDER_SECRET.encode())
        return httpx.Response(200, json={"results": [{"id": f.id, "status": "stored"} for f in frames]})


def client_for(tmp_path, models_dir, transport: httpx.MockTransport | Link, **settings) -> TestClient:
    if isinstance(transport, Link):
        transport = httpx.MockTransport(transport)
    return TestClient(create_app(make_settings(tmp_path, models_dir, **settings), transport=transport))


def upload(client: TestClient, *files: bytes, **params) -> list[dict]:
    r = client.post("/v1/images", params=params, files=[("file", (f"f{i}.png", d)) for i, d in enumerate(files)])
    assert r.status_code == 202, r.text
    return r.json()["images"]


# ---- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, value, says", [
    ("link_kbps", 0, "leave LATENTWIRE_SENDER_LINK_KBPS unset"),
    ("link_kbps", -64, "must be > 0"),
    ("latency_target_s", 0, "latency_target_s must be > 0 seconds"),
    ("latency_target_s", -10, "LATENTWIRE_SENDER_LATENCY_TARGET_S unset"),
    ("link_start_kbps", 0, "link_start_kbps"),
])
def test_bad_link_settings_are_refused_with_what_to_do(tmp_path, tiny_models_dir, name, value, says):
    with pytest.raises(ValidationError, match=says):
        make_settings(tmp_path, tiny_models_dir, **{name: value})


def test_link_settings_come_from_the_environment(monkeypatch):
    from sender.settings import Settings

    for key in [k for k in __import__("os").environ if k.startswith("LATENTWIRE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LATENTWIRE_SENDER_RECEIVER_URL", "http://receiver.test")
    monkeypatch.setenv("LATENTWIRE_SECRET", SENDER_SECRET)
    monkeypatch.setenv("LATENTWIRE_SENDER_LINK_KBPS", "64")
    monkeypatch.setenv("LATENTWIRE_SENDER_LATENCY_TARGET_S", "10")
    s = Settings()
    assert (s.link_kbps, s.latency_target_s, s.link_start_kbps, s.auto_min_bpp) == (64, 10, 64, 0.02)
    monkeypatch.setenv("LATENTWIRE_SENDER_LINK_KBPS", "0")
    with pytest.raises(ValidationError, match="link_kbps is the link's rate in kbit/s and must be > 0"):
        Settings()


# ---- the link model -----------------------------------------------------------------------------
def test_goodput_is_smoothed_bytes_over_smoothed_seconds():
    link = LinkModel()
    assert link.state().source == "none" and link.budget_rate(64) == (8000, "start")
    link.observe(10_000, 0.1)  # 100 kB/s
    assert link.state().goodput_bytes_per_s == pytest.approx(100_000)
    link.observe(10_000, 1.9)  # a slow POST after a rate drop: weighs by its time
    state = link.state()
    assert state.goodput_bytes_per_s == pytest.approx(10_000 / 1.0)
    assert (state.rtt_s, state.samples, state.source) == (pytest.approx(1.0), 2, "measured")
    pinned = LinkModel(pinned_kbps=32)
    pinned.observe(10_000, 0.1)
    assert pinned.budget_rate(64) == (4000, "pinned") and pinned.state().measured_bytes_per_s == 100_000


def test_plan_shares_the_bytes_left_by_pixels_and_keeps_the_floor():
    p = plan([100, 300], rate_bytes_per_s=1000, source="pinned", target_s=2, queued_bytes=400, min_bpp=8,
             max_bytes=10_000)
    assert p.budgets == ((400, "target"), (1200, "target"))
    p = plan([100], 1000, "pinned", 1, 990, min_bpp=8, max_bytes=10_000)
    assert p.budgets == ((100, "floor"),)  # 10 bytes left, below the 1-byte-per-pixel floor
    b = settle(p, 0, 100, "floor", 0.1, bytes_through=95)
    assert (b.late, b.expected_latency_s) == (True, 1.085)
    p = plan([100], 1000, "measured", 1, 0, min_bpp=8, max_bytes=500)
    assert p.budgets == ((500, "target"),)  # capped
    assert settle(p, 0, 500, "target", 1.0, 300).reason == "ceiling"



def test_an_upload_planned_on_the_start_rate_takes_one_second_of_it():
    """Before any POST was measured the start rate is a guess: 8 kB/s and a 10 s target would give
    80 kB, two targets' worth on a 32 kbit/s link; the upload takes one second of it instead.
    A measured or pinned rate keeps the whole target."""
    assert plan([100, 300], 8000, "start", 10, 0, min_bpp=8, max_bytes=10**6).budgets == (
        (2000, "start"), (6000, "start"))
    assert plan([100], 8000, "start", 0.5, 0, min_bpp=8, max_bytes=10**6).budgets == ((4000, "target"),)
    for source in ("measured", "pinned"):
        assert plan([100], 8000, source, 10, 0, min_bpp=8, max_bytes=10**6).budgets == ((80_000, "target"),)
    p = plan([100], 8000, "start", 10, 0, min_bpp=8, max_bytes=10**6)
    assert settle(p, 0, 8000, "start", 1.0, 5000).reason == "ceiling"


def test_uploads_faster_than_the_link_get_its_pace_not_the_whole_target():
    """1 kB/s and a 10 s target leave 10 kB to the first upload; at one upload a second the link
    carries 1 kB between two, so from the second on the budget is 90 % of that (PACE_SHARE), less
    a tenth (interval / target) of any queue beyond one interval's bytes, and the queue drains."""
    link = LinkModel(pinned_kbps=8)
    rate, source = link.budget_rate(64)
    assert link.arrived(100.0) is None
    first = plan([100], rate, source, target_s=10, queued_bytes=0, min_bpp=8, max_bytes=10**6)
    interval = link.arrived(101.0)
    second = plan([100], rate, source, 10, queued_bytes=900, min_bpp=8, max_bytes=10**6, interval_s=interval)
    assert link.arrived(103.0) == pytest.approx(1.5)  # smoothed: 1 s, then 2 s at weight 0.5
    slow = plan([100, 300], rate, source, 10, queued_bytes=9500, min_bpp=1, max_bytes=10**6, interval_s=5.0)
    assert first.budgets == ((10_000, "target"),)
    assert second.budgets == ((900, "pace"),)  # 900 queued: within one interval's bytes
    queue = plan([100], rate, source, 10, queued_bytes=1600, min_bpp=8, max_bytes=10**6, interval_s=interval)
    assert queue.budgets == ((840, "pace"),)  # 900 less a tenth of the 600 bytes beyond one interval's
    long_queue = plan([100], rate, source, 10, queued_bytes=3000, min_bpp=8, max_bytes=10**6, interval_s=interval)
    assert long_queue.budgets == ((700, "pace"),)
    assert slow.budgets == ((125, "target"), (375, "target"))  # 500 left of the target: less than the pace
    assert settle(second, 0, 900, "pace", 1.0, 300).reason == "ceiling"

# ---- GET /v1/link and /metrics --------------------------------------------------------------------
def test_link_is_measured_from_acknowledged_posts(tmp_path, tiny_models_dir):
    link = Link(bytes_per_s=4000)
    with client_for(tmp_path, tiny_models_dir, link) as client:
        before = client.get("/v1/link").json()
        assert before == {"goodput_kbps": None, "measured_kbps": None, "rtt_s": None, "source": "none",
                          "samples": 0, "queued_bytes": 0, "queued_frames": 0, "drain_s": None,
                          "latency_target_s": None, "start_kbps": 64.0}
        (image,) = upload(client, smooth_png(), quality=1)
        wait_status(client, image["id"], "delivered")
        after = client.get("/v1/link").json()
        metrics = client.get("/metrics").text
    (body,) = link.bodies
    assert after["source"] == "measured" and after["samples"] == 1
    assert after["rtt_s"] == pytest.approx(body / 4000, rel=0.5)  # the sleep, plus the app's own time
    assert after["goodput_kbps"] == after["measured_kbps"] == pytest.approx(32, rel=0.35)
    assert (after["queued_bytes"], after["queued_frames"], after["drain_s"]) == (0, 0, 0.0)
    assert 'latentwire_sender_link_pinned 0.0' in metrics
    (goodput,) = [float(line.split()[1]) for line in metrics.splitlines()
                  if line.startswith("latentwire_sender_link_goodput_bytes_per_second ")]
    assert goodput == pytest.approx(after["goodput_kbps"] * 125, rel=0.01)


def test_a_pinned_rate_is_shown_with_the_backlog(tmp_path, tiny_models_dir):
    with client_for(tmp_path, tiny_models_dir, down(), link_kbps=8, latency_target_s=5) as client:
        (image,) = upload(client, smooth_png(), quality=0.5)
        link = client.get("/v1/link").json()
        metrics = client.get("/metrics").text
    assert (link["goodput_kbps"], link["source"], link["latency_target_s"]) == (8.0, "pinned", 5.0)
    assert (link["queued_bytes"], link["queued_frames"]) == (image["bytes"], 1)
    assert link["drain_s"] == pytest.approx(image["bytes"] / 1000)
    assert "latentwire_sender_link_goodput_bytes_per_second 1000.0" in metrics
    assert "latentwire_sender_link_pinned 1.0" in metrics
    assert f"latentwire_sender_outbox_queued_bytes {float(image['bytes'])}" in metrics


# ---- quality=auto -------------------------------------------------------------------------------
def test_auto_without_a_target_is_a_422_that_says_what_to_set(tmp_path, tiny_models_dir):
    with client_for(tmp_path, tiny_models_dir, storing_receiver()) as client:
        r = client.post("/v1/images", params={"quality": "auto"}, files={"file": ("a.png", smooth_png())})
        assert r.status_code == 422
        assert r.json()["error"] == "InvalidRequest"
        assert "set LATENTWIRE_SENDER_LATENCY_TARGET_S" in r.json()["message"]
        both = client.post("/v1/images", params={"quality": "auto", "max_bytes": 200},
                           files={"file": ("a.png", smooth_png())})
        assert both.status_code == 422 and "not both" in both.json()["message"]
        word = client.post("/v1/images", params={"quality": "best"}, files={"file": ("a.png", smooth_png())})
        assert word.status_code == 422 and word.json()["error"] == "InvalidRequest"
        (plain,) = upload(client, smooth_png())
        assert plain["budget"] is None and plain["quality"] == 0.5  # no target: the default quality


def test_auto_before_any_measurement_uses_the_start_rate(tmp_path, tiny_models_dir):
    # 64 kbit/s is 8000 B/s; 0.0175 s of it is 140 bytes, between quality 0 (111) and 1 (163).
    with client_for(tmp_path, tiny_models_dir, down(), latency_target_s=0.0175) as client:
        (image,) = upload(client, smooth_png())  # auto is the default once a target is set
        (explicit,) = upload(client, smooth_png(), quality=0.5)
    budget = image["budget"]
    assert (budget["link_source"], budget["link_kbps"], budget["bytes"], budget["reason"]) == ("start", 64.0, 140,
                                                                                                "target")
    assert 111 <= image["bytes"] <= 140 and budget["late"] is False and budget["queued_bytes"] == 0
    assert budget["expected_latency_s"] == pytest.approx(image["bytes"] / 8000, abs=1e-3)
    assert explicit["budget"] is None


def test_auto_budgets_shrink_with_the_bytes_queued_ahead(tmp_path, tiny_models_dir):
    """Pinned at 8 kbit/s (1000 B/s) with a 0.3 s target: 300 bytes in all, while the receiver is
    down and the frames wait. Each upload gets what the ones before it left. They come 0.6 s
    apart, so the pace (what the link carries between two uploads, 600 bytes) does not bind."""
    with client_for(tmp_path, tiny_models_dir, down(), link_kbps=8, latency_target_s=0.3) as client:
        (first,) = upload(client, smooth_png(), quality="auto")
        time.sleep(0.6)
        (second,) = upload(client, smooth_png(seed=4), quality="auto")
        time.sleep(0.6)
        (third,) = upload(client, smooth_png(seed=5), quality="auto")
        record = client.get(f"/v1/images/{third['id']}").json()
        metrics = client.get("/metrics").text
    assert (first["budget"]["bytes"], first["budget"]["reason"], first["quality"]) == (300, "ceiling", 1.0)
    assert first["bytes"] == 163 and first["budget"]["late"] is False
    assert second["budget"]["queued_bytes"] == 163
    assert (second["budget"]["bytes"], second["budget"]["reason"]) == (137, "target")
    assert second["bytes"] <= 137 and second["budget"]["late"] is False
    # Nothing useful is left for the third: the codec's smallest stream (81 bytes, at a reduced
    # size) is sent all the same, and said to be late.
    assert third["budget"]["queued_bytes"] == 163 + second["bytes"]
    assert third["budget"]["reason"] == "codec_minimum" and third["budget"]["late"] is True
    assert third["bytes"] == third["budget"]["bytes"] == 81
    assert (third["coded_width"], third["coded_height"]) < (96, 80)
    assert third["budget"]["expected_latency_s"] == pytest.approx((163 + second["bytes"] + 81) / 1000, abs=1e-3)
    assert record["budget"] == third["budget"]  # the image record says the same
    for reason in ("ceiling", "target", "codec_minimum"):
        assert f'latentwire_sender_auto_budgets_total{{reason="{reason}"}} 1.0' in metrics
    assert "latentwire_sender_auto_late_total 1.0" in metrics


@pytest.mark.slow
def test_an_upload_still_encoding_counts_as_queued_ahead(tmp_path, tiny_models_dir, monkeypatch):
    """Two quality=auto uploads at once: the second is planned while the first is still on the
    encoder, before its frame is in the outbox. Its budget (500 bytes at 1000 B/s and 0.5 s) counts
    as queued ahead all the same, so the second gets nothing useful (the codec's minimum, late),
    not a second 500 bytes; once both are queued, nothing is left reserved."""
    with client_for(tmp_path, tiny_models_dir, down(), link_kbps=8, latency_target_s=0.5) as client:
        svc = client.app.state.services
        entered, release = threading.Event(), threading.Event()
        real = svc.codec.encode

        def held(*args, **kwargs):
            entered.set()
            release.wait(30)
            return real(*args, **kwargs)

        monkeypatch.setattr(svc.codec, "encode", held)
        answers: dict[str, list[dict]] = {}
        threads = {name: threading.Thread(target=lambda name=name, seed=seed: answers.setdefault(
            name, upload(client, smooth_png(seed=seed), quality="auto"))) for name, seed in (("first", 3), ("second", 4))}
        threads["first"].start()
        try:
            assert entered.wait(10)
            assert svc.deliverer.link.encoding_bytes == 500  # the first's budget, reserved
            threads["second"].start()
            deadline = time.monotonic() + 10
            while svc.deliverer.link.encoding_bytes <= 500:  # until the second is planned too
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            release.set()
            for thread in threads.values():
                thread.join(30)
        ((first_image,), (second,)) = answers["first"], answers["second"]
        assert svc.deliverer.link.encoding_bytes == 0
    assert first_image["budget"]["queued_bytes"] == 0 and first_image["budget"]["bytes"] == 500
    assert second["budget"]["queued_bytes"] == 500
    assert (second["budget"]["reason"], second["budget"]["late"]) == ("codec_minimum", True)
    assert second["bytes"] == 81


def test_auto_floor_and_ceiling(tmp_path, tiny_models_dir):
    # Floor 0.1 bpp = 96 bytes at 96x80, above the codec's minimum: with nothing left it is used.
    with client_for(tmp_path, tiny_models_dir, down(), link_kbps=8, latency_target_s=0.15, auto_min_bpp=0.1) as c:
        (big,) = upload(c, smooth_png(), quality=1)  # 163 bytes ahead: more than 0.15 s of link
        (floored,) = upload(c, smooth_png(seed=4), quality="auto")
    assert floored["budget"]["reason"] == "floor" and floored["budget"]["bytes"] == 96
    assert floored["bytes"] <= 96 and floored["budget"]["late"] is True
    assert floored["budget"]["queued_bytes"] == big["bytes"]
    # 0.7 s at 1000 B/s shared by pixels: 140 and 560 bytes; quality 1 of the larger needs less.
    with client_for(tmp_path / "b", tiny_models_dir, down(), link_kbps=8, latency_target_s=0.7) as c:
        small, large = upload(c, smooth_png(96, 80), smooth_png(192, 160), quality="auto")
    assert (small["budget"]["bytes"], small["budget"]["reason"]) == (140, "target")
    assert (large["budget"]["bytes"], large["budget"]["reason"], large["quality"]) == (560, "ceiling", 1.0)
    assert large["budget"]["expected_latency_s"] == pytest.approx((small["bytes"] + large["bytes"]) / 1000,
                                                                  abs=1e-3)


def test_auto_budgets_follow_a_rate_step(tmp_path, tiny_models_dir):
    """Measured, not pinned: a link of 12 kB/s, then 1.5 kB/s. The upload after the slow POST gets a
    much smaller budget than the one before the step."""
    link = Link(bytes_per_s=12_000)
    with client_for(tmp_path, tiny_models_dir, link, latency_target_s=0.03) as client:
        warm = upload(client, smooth_png(), quality=1)[0]
        wait_status(client, warm["id"], "delivered")
        (fast,) = upload(client, smooth_png(seed=4))
        wait_status(client, fast["id"], "delivered")
        link.bytes_per_s = 1500
        (slow,) = upload(client, smooth_png(seed=5), quality=1)  # this POST measures the new rate
        wait_status(client, slow["id"], "delivered")
        (after,) = upload(client, smooth_png(seed=6))
        rate_after = client.get("/v1/link").json()["measured_kbps"]
    assert fast["budget"]["link_source"] == after["budget"]["link_source"] == "measured"
    assert fast["budget"]["link_kbps"] > 60 and rate_after < 40
    assert after["budget"]["bytes"] < 0.6 * fast["budget"]["bytes"]
    assert after["bytes"] < fast["bytes"]


@pytest.mark.slow
def test_a_thin_links_backlog_goes_in_batches_that_fit_the_timeout(tmp_path, tiny_models_dir):
    """At 200 B/s with a 2 s request timeout a POST may carry about 200 bytes of streams: a backlog
    of six frames goes a frame or two at a time and every POST succeeds (one batch of all of them
    would outlast the timeout, and be retried whole, forever)."""
    link = Link(bytes_per_s=200)
    with client_for(tmp_path, tiny_models_dir, link, link_kbps=1.6, request_timeout_s=2.0,
                    retry_base_s=0.05, retry_max_s=0.2) as client:
        images = upload(client, *(smooth_png(seed=s) for s in range(6)), quality=0.3)
        for image in images:
            wait_status(client, image["id"], "delivered", timeout_s=30.0)
        metrics = client.get("/metrics").text
    assert sum(image["bytes"] for image in images) / 200 > 2.0  # one batch: past the timeout
    assert len(link.bodies) >= 3
    assert all(body / 200 < 2.0 for body in link.bodies), link.bodies  # each POST within it
    assert 'latentwire_sender_transmit_seconds_count{outcome="timeout"}' not in metrics


def test_overlapping_posts_count_each_busy_second_once_and_idle_time_not_at_all():
    """Two POSTs on their way together (the next batch travels while the receiver decodes the
    last): the link was busy from the first start to the last end, and that time is shared
    between their samples; the gap before a later POST is no one's. The round trip stays each
    POST's whole time."""
    link = LinkModel()
    with link.sending(4000, started=10.0):
        with link.sending(4000, started=10.5):
            first = link.busy_seconds(11.0)  # the first ends at 11.0 ...
            link.observe(4000, first, rtt_s=1.0)
        second = link.busy_seconds(12.0)  # ... the second at 12.0 (it began at 10.5)
        link.observe(4000, second, rtt_s=1.5)
    assert (first, second) == (1.0, 1.0)
    assert link.state().goodput_bytes_per_s == pytest.approx(4000)  # 8 kB in 2 busy seconds
    assert link.state().rtt_s == pytest.approx(1.25)
    with link.sending(4000, started=30.0):  # 18 idle seconds before it
        assert link.busy_seconds(31.0) == 1.0
    # Both on their way: together 8 kB not through in the 4 s since the first began, so at most 2 kB/s.
    with link.sending(6000, started=40.0), link.sending(2000, started=43.0):
        assert link.budget_rate(64, now=41.0) == (4000, "measured")  # 6 kB/s so far: no news
        assert link.budget_rate(64, now=44.0) == (2000, "measured")


def test_a_post_still_on_its_way_bounds_the_rate_budgets_take():
    """Measured at 8 kB/s, a 40 kB POST still going after 10 s says the link now moves at most
    4 kB/s: budgets planned meanwhile take that, before the POST ends; a pinned rate stays."""
    link, pinned = LinkModel(), LinkModel(pinned_kbps=64)
    for model in (link, pinned):
        model.observe(8000, 1.0)
    with link.sending(40_000, started=100.0), pinned.sending(40_000, started=100.0):
        assert link.budget_rate(64, now=102.0) == (8000, "measured")  # 20 kB/s so far: no news
        assert link.budget_rate(64, now=110.0) == (4000, "measured")
        assert pinned.budget_rate(64, now=110.0) == (8000, "pinned")
    assert link.budget_rate(64, now=110.0) == (8000, "measured")  # it ended: the estimate again
    fresh = LinkModel()
    with fresh.sending(1000, started=0.0):
        assert fresh.budget_rate(64, now=1.0) == (1000, "start")  # the start rate is bounded alike
