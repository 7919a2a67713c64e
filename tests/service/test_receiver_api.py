"""Receiver in process (TestClient, lifespan running, tiny model): POST /v1/frames and the read
API, with every refusal's status and error code."""

from __future__ import annotations

import io
import os
import sqlite3
import threading
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from receiver.app import create_app
from shared.wire import Frame, pack_frames
from tests.conftest import make_tiny_model_file
from tests.service.conftest import RECEIVER_SECRET, TestClient, receiver_post, receiver_rgb


def _png(client, image_id: str) -> np.ndarray:
    r = client.get(f"/v1/images/{image_id}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


def test_stored_frame_is_decoded_listed_and_described(receiver_client, receiver_frames, receiver_settings):
    enc = receiver_frames.encoded[0]
    body, (image_id,) = receiver_frames.body(encoded=enc)
    t0 = time.time()
    r = receiver_post(receiver_client, body)
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [{"id": image_id, "status": "stored"}]}

    pixels = _png(receiver_client, image_id)
    assert pixels.shape == (30, 40, 3)
    assert np.array_equal(pixels, receiver_frames.codec.decode(enc.data))  # exactly the codec's decode

    page = receiver_client.get("/v1/images").json()
    assert [item["id"] for item in page["items"]] == [image_id] and page["next"] is None
    meta = receiver_client.get(f"/v1/images/{image_id}").json()
    assert meta == page["items"][0]
    assert (meta["width"], meta["height"]) == (40, 30)
    assert meta["stream_bytes"] == enc.nbytes
    assert meta["bpp"] == round(enc.bpp, 4)
    assert meta["quality"] == pytest.approx(0.3)
    assert (meta["model"], meta["weights"]) == (receiver_frames.codec.name, receiver_frames.codec.weights)
    assert meta["mode"] == "standard" and (meta["coded_width"], meta["coded_height"]) == (40, 30)
    assert meta["decode_ms"] > 0 and "psnr" not in meta  # the receiver never sees the original
    assert t0 - 1 < meta["sent_at"] <= meta["received_at"] < time.time() + 1
    assert meta["latency_ms"] == pytest.approx((meta["received_at"] - meta["sent_at"]) * 1000, abs=0.01)
    assert meta["png_url"] == f"/v1/images/{image_id}.png"

    store = receiver_settings.store_dir
    assert sorted(os.listdir(store / "images")) == [f"{image_id}.png"]
    with sqlite3.connect(store / "index.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT id, width, height FROM images").fetchall() == [(image_id, 40, 30)]


def test_a_stream_coded_at_a_reduced_size_is_stored_at_its_declared_size(receiver_client, receiver_frames):
    from tests.service.conftest import receiver_rgb

    rgb = receiver_rgb(192, 128, seed=4)
    enc = receiver_frames.codec.encode(rgb, quality=0.4, scale=0.5)  # format version 3, coded at 96x64
    assert enc.stream.version == 3 and enc.stream.coded_size == (64, 96)
    body, (image_id,) = receiver_frames.body(encoded=enc)
    r = receiver_post(receiver_client, body)
    assert r.status_code == 200, r.text

    pixels = _png(receiver_client, image_id)
    assert pixels.shape == (128, 192, 3)
    assert np.array_equal(pixels, receiver_frames.codec.decode(enc.data))
    meta = receiver_client.get(f"/v1/images/{image_id}").json()
    assert (meta["width"], meta["height"]) == (192, 128)
    assert (meta["coded_width"], meta["coded_height"]) == (96, 64)
    assert meta["bpp"] == round(enc.nbytes * 8 / (192 * 128), 4)
    html = receiver_client.get("/").text  # the gallery card says so; it is hidden for full-size ones
    assert '<dd data-field="coded">96×64</dd>' in html and '<dd data-field="mode">standard</dd>' in html


def test_a_frame_of_the_denoising_model_is_listed_as_mode_denoise(receiver_settings_factory, receiver_frames,
                                                                 tiny_models_dir):
    from shared.codec import Codec
    from tests.conftest import TINY_DENOISE_MODEL

    denoiser = Codec.load(TINY_DENOISE_MODEL, tiny_models_dir)
    settings = receiver_settings_factory(denoise_model=TINY_DENOISE_MODEL)
    with TestClient(create_app(settings)) as client:
        standard, (standard_id,) = receiver_frames.body()
        noisy, (noisy_id,) = receiver_frames.body(encoded=denoiser.encode(receiver_rgb(seed=2), quality=0.5))
        assert receiver_post(client, standard).status_code == 200
        assert receiver_post(client, noisy).status_code == 200
        modes = {item["id"]: (item["mode"], item["model"]) for item in client.get("/v1/images").json()["items"]}
    assert modes == {standard_id: ("standard", receiver_frames.codec.name),
                     noisy_id: ("denoise", TINY_DENOISE_MODEL)}


def test_unnamed_streams_are_routed_by_their_weights(receiver_settings_factory, receiver_frames, tiny_models_dir):
    """Versions 6 and 7 leave the model's name out: the receiver finds the model among those it
    serves by the weights, stores the name, and answers 409 naming the weights when none has them."""
    import dataclasses

    from shared.codec import Codec
    from tests.conftest import TINY_CONTEXT_MODEL, joint_stream

    context = Codec.load(TINY_CONTEXT_MODEL, tiny_models_dir)
    encoded = context.encode(receiver_rgb(seed=3), quality=0.5)
    v6 = joint_stream(context, receiver_rgb(seed=4), 0.5, 6)
    assert (encoded.stream.version, encoded.stream.model, v6.version, v6.model) == (7, "", 6, "")
    settings = receiver_settings_factory(model=TINY_CONTEXT_MODEL)
    with TestClient(create_app(settings)) as client:
        body, (image_id,) = receiver_frames.body(encoded=encoded)
        assert receiver_post(client, body).json()["results"] == [{"id": image_id, "status": "stored"}]
        item = client.get(f"/v1/images/{image_id}").json()
        assert (item["model"], item["weights"], item["mode"]) == (TINY_CONTEXT_MODEL, context.weights, "standard")
        old_id = uuid.uuid4().hex
        body = pack_frames([Frame(old_id, time.time(), v6)], RECEIVER_SECRET.encode())
        assert receiver_post(client, body).json()["results"] == [{"id": old_id, "status": "stored"}]
        assert client.get(f"/v1/images/{old_id}").json()["model"] == TINY_CONTEXT_MODEL

        unknown = dataclasses.replace(encoded.stream, weights="0123456789abcdef")
        body = pack_frames([Frame(uuid.uuid4().hex, time.time(), unknown)], RECEIVER_SECRET.encode())
        err = _assert_error(receiver_post(client, body), 409, "ModelMismatch")
        assert "the model with weights 0123456789abcdef" in err["message"]
        assert f"{TINY_CONTEXT_MODEL}@{context.weights}" in err["message"]


def test_duplicate_id_is_not_stored_twice(receiver_client, receiver_frames, receiver_settings):
    body, (image_id,) = receiver_frames.body()
    assert receiver_post(receiver_client, body).json()["results"][0]["status"] == "stored"
    first = (receiver_settings.store_dir / "images" / f"{image_id}.png").stat().st_mtime_ns

    again, _ = receiver_frames.body(ids=[image_id], encoded=receiver_frames.encoded[1])  # other content
    r = receiver_post(receiver_client, again)
    assert r.status_code == 200
    assert r.json() == {"results": [{"id": image_id, "status": "duplicate"}]}
    # The same id twice in one batch: the first is stored, the second is a duplicate.
    body, ids = receiver_frames.body(n=1)
    twice, _ = receiver_frames.body(ids=[ids[0], ids[0]])
    assert [x["status"] for x in receiver_post(receiver_client, twice).json()["results"]] == ["stored", "duplicate"]

    assert (receiver_settings.store_dir / "images" / f"{image_id}.png").stat().st_mtime_ns == first
    assert len(os.listdir(receiver_settings.store_dir / "images")) == 2
    assert len(receiver_client.get("/v1/images").json()["items"]) == 2


def test_batch_is_stored_in_order(receiver_client, receiver_frames):
    body, ids = receiver_frames.body(n=5)
    r = receiver_post(receiver_client, body)
    assert [x["id"] for x in r.json()["results"]] == ids
    assert {x["status"] for x in r.json()["results"]} == {"stored"}
    listed = [item["id"] for item in receiver_client.get("/v1/images").json()["items"]]
    assert listed == ids[::-1]  # newest first


def _assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == code and body["message"], body
    return body


def test_bad_signature_is_401(receiver_client, receiver_frames):
    body, _ = receiver_frames.body(secret="another-secret-of-enough-length")
    _assert_error(receiver_post(receiver_client, body), 401, "BadSignature")
    assert receiver_client.get("/v1/images").json()["items"] == []


@pytest.mark.parametrize("body", [np.random.default_rng(7).bytes(300), b"", b"\x81\xa4wire\x01"],
                         ids=["random", "empty", "incomplete-map"])
def test_unreadable_body_is_400(receiver_client, body):
    _assert_error(receiver_post(receiver_client, body), 400, "WireError")


def test_other_model_is_409_naming_both_and_batch_stores_nothing(receiver_client, receiver_frames, tmp_path):
    from shared.codec import Codec

    make_tiny_model_file(tmp_path, name="lw-other", seed=1)
    other = Codec.load("lw-other", tmp_path)
    foreign = other.encode(receiver_rgb(), quality=0.5)
    # A valid frame first: validation is all-or-nothing, so it must not be stored either.
    good, bad = uuid.uuid4().hex, uuid.uuid4().hex
    body = pack_frames([Frame(good, time.time(), receiver_frames.encoded[0].stream),
                        Frame(bad, time.time(), foreign.stream)], RECEIVER_SECRET.encode())
    err = _assert_error(receiver_post(receiver_client, body), 409, "ModelMismatch")
    codec = receiver_frames.codec
    assert f"lw-other@{other.weights}" in err["message"]
    assert f"{codec.name}@{codec.weights}" in err["message"]
    assert receiver_client.get("/v1/images").json()["items"] == []
    assert receiver_client.get(f"/v1/images/{good}").status_code == 404


def test_oversize_body_is_413_with_or_without_content_length(receiver_settings_factory, receiver_frames):
    settings = receiver_settings_factory(max_frame_bytes=2048)
    with TestClient(create_app(settings)) as client:
        big = b"\x00" * 4096
        _assert_error(receiver_post(client, big), 413, "FrameTooLarge")

        def chunks():  # no Content-Length: the limit is enforced while counting the stream
            for _ in range(8):
                yield b"\x00" * 1024

        r = client.post("/v1/frames", content=chunks(), headers={"Content-Type": "application/msgpack"})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        _assert_error(r, 413, "FrameTooLarge")
        body, _ = receiver_frames.body()  # a small frame still goes through
        assert receiver_post(client, body).status_code == 200


def test_image_larger_than_max_side_is_413(receiver_settings_factory, receiver_frames):
    big = receiver_frames.codec.encode(receiver_rgb(100, 70), quality=0.2)
    with TestClient(create_app(receiver_settings_factory(max_side=64))) as client:
        body, _ = receiver_frames.body(encoded=big)
        _assert_error(receiver_post(client, body), 413, "DimensionsTooLarge")


def test_unknown_id_is_404_and_malformed_ids_are_400(receiver_client):
    unknown = "0" * 32
    _assert_error(receiver_client.get(f"/v1/images/{unknown}"), 404, "ImageNotFound")
    _assert_error(receiver_client.get(f"/v1/images/{unknown}.png"), 404, "ImageNotFound")
    for bad in ("..%2F..%2Fetc%2Fpasswd", "..%2F..%2Fetc%2Fpasswd.png", "a" * 31, "a" * 31 + ".png",
                "A" * 32, "g" * 32 + ".png", "a" * 33, "%2E%2E", "x/..%2F..%2Findex.sqlite3"):
        _assert_error(receiver_client.get(f"/v1/images/{bad}"), 400, "InvalidImageId")


def test_wrong_query_and_unknown_route_answer_json(receiver_client):
    _assert_error(receiver_client.get("/v1/images", params={"limit": 0}), 422, "InvalidRequest")
    _assert_error(receiver_client.get("/v1/nothing"), 404, "NotFound")
    _assert_error(receiver_client.get("/v1/frames"), 405, "MethodNotAllowed")


@pytest.mark.parametrize("path", ["/v1/images", "/v1/images/"])
def test_an_upload_sent_to_the_receiver_names_the_senders_endpoint(receiver_client, path):
    r = receiver_client.post(path, files={"file": ("a.png", receiver_rgb().tobytes(), "image/png")})
    body = _assert_error(r, 405, "MethodNotAllowed")
    assert "sender's /v1/images" in body["message"] and "POST /v1/frames" in body["message"]
    assert r.headers["allow"] == "GET"
    assert receiver_client.get("/v1/images").json()["items"] == []


def test_unexpected_error_is_500_without_internals(receiver_settings, monkeypatch):
    from receiver.store import Store

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail /very/secret/path")

    monkeypatch.setattr(Store, "page", broken)
    with TestClient(create_app(receiver_settings), raise_server_exceptions=False) as client:
        r = client.get("/v1/images")
        _assert_error(r, 500, "InternalError")
        assert "secret" not in r.text and "RuntimeError" not in r.text
        assert client.get("/healthz").json() == {"status": "ok"}  # and it keeps serving


def test_full_decode_queue_is_503_with_retry_after(receiver_settings_factory, receiver_frames, monkeypatch):
    """One request decoding, queue size 0: the next request is refused, not queued unbounded."""
    from shared.codec import Codec

    entered, release = threading.Event(), threading.Event()
    real_decode = Codec.decode

    def slow_decode(self, data):
        entered.set()
        release.wait(10)
        return real_decode(self, data)

    monkeypatch.setattr(Codec, "decode", slow_decode)
    with TestClient(create_app(receiver_settings_factory(decode_queue_size=0))) as client:
        first, _ = receiver_frames.body()
        results = {}
        worker = threading.Thread(target=lambda: results.setdefault("r", receiver_post(client, first)))
        worker.start()
        try:
            assert entered.wait(10)
            second, _ = receiver_frames.body()
            r = receiver_post(client, second)
            _assert_error(r, 503, "DecoderBusy")
            assert r.headers["retry-after"] == "1"
            assert 'latentwire_receiver_decode_queue_depth 1.0' in client.get("/metrics").text
        finally:
            release.set()
            worker.join(10)
        assert results["r"].status_code == 200
        assert receiver_post(client, second).json()["results"][0]["status"] == "stored"  # the retry works


def test_pagination_follows_received_at_cursor(receiver_client, receiver_frames):
    body, ids = receiver_frames.body(n=5)
    assert receiver_post(receiver_client, body).status_code == 200
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2} | ({"before": cursor} if cursor is not None else {})
        page = receiver_client.get("/v1/images", params=params).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert pages == 3 and seen == ids[::-1]
    times = [receiver_client.get(f"/v1/images/{i}").json()["received_at"] for i in seen]
    assert times == sorted(times, reverse=True) and len(set(times)) == len(times)


def test_models_health_ready_and_no_secret_anywhere(receiver_client, receiver_frames):
    codec = receiver_frames.codec
    models = receiver_client.get("/v1/models").json()
    (main,) = models["models"]
    assert {"name", "weights", "device", "network"} <= set(main) and "name" not in models
    assert (main["name"], main["weights"], main["device"], main["mode"]) == (codec.name, codec.weights, "cpu",
                                                                             "standard")
    assert models["insecure_demo"] is False
    assert receiver_client.get("/healthz").json() == {"status": "ok"}
    ready = receiver_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready" and ready.json()["insecure_demo"] is False
    assert receiver_client.get("/openapi.json").json()["paths"]["/v1/frames"]["post"]
    for path in ("/v1/models", "/readyz", "/metrics", "/", "/openapi.json"):
        assert RECEIVER_SECRET not in receiver_client.get(path).text


def test_metrics_count_results_bytes_and_errors(receiver_client, receiver_frames):
    body, _ = receiver_frames.body()
    receiver_post(receiver_client, body)
    receiver_post(receiver_client, body)
    bad, _ = receiver_frames.body(secret="another-secret-of-enough-length")
    receiver_post(receiver_client, bad)
    text = receiver_client.get("/metrics").text
    assert receiver_client.get("/metrics").headers["content-type"].startswith("text/plain")
    for line in ('latentwire_receiver_frames_total{result="stored"} 1.0',
                 'latentwire_receiver_frames_total{result="duplicate"} 1.0',
                 'latentwire_receiver_frames_total{result="BadSignature"} 1.0',
                 'latentwire_receiver_errors_total{code="BadSignature"} 1.0',
                 f"latentwire_receiver_received_bytes_total {float(2 * len(body) + len(bad))}",
                 "latentwire_receiver_decode_seconds_count 1.0",
                 "latentwire_receiver_bpp_count 1.0",
                 "latentwire_receiver_decode_queue_depth 0.0",
                 "latentwire_receiver_sse_clients 0.0"):
        assert line in text, line


def test_two_apps_in_one_process_have_separate_metrics(receiver_settings_factory, receiver_frames, tmp_path):
    a = create_app(receiver_settings_factory(store_dir=tmp_path / "a"))
    b = create_app(receiver_settings_factory(store_dir=tmp_path / "b"))
    with TestClient(a) as ca, TestClient(b) as cb:
        body, _ = receiver_frames.body()
        receiver_post(ca, body)
        assert 'frames_total{result="stored"} 1.0' in ca.get("/metrics").text
        assert 'frames_total{result="stored"} 0.0' in cb.get("/metrics").text


def test_gallery_page_shows_stored_images_with_local_assets(receiver_client, receiver_frames):
    body, (image_id,) = receiver_frames.body()
    receiver_post(receiver_client, body)
    r = receiver_client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'id="gallery"' in html and f'data-id="{image_id}"' in html
    assert f'src="/v1/images/{image_id}.png"' in html
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    for asset in ("/static/gallery.js", "/static/gallery.css"):
        assert asset in html
        got = receiver_client.get(asset)
        assert got.status_code == 200
        assert "http://" not in got.text and "https://" not in got.text  # no CDN, no web fonts
    assert "https://" not in html and "http://" not in html
