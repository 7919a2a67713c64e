"""Sender API in process: uploads (multipart, raw), what reaches the receiver, every bad-upload
class, previews, page, metrics. The receiver is an ``httpx.MockTransport`` that checks signatures
with ``shared.wire.unpack_frames`` and answers like the real one."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sender.app import create_app
from shared.images import load_image, psnr
from shared.wire import Frame, unpack_frames
from tests.conftest import TINY_MODEL
from tests.service.conftest import SENDER_SECRET as SECRET
from tests.service.conftest import sender_settings as make_settings
from tests.service.conftest import wait_status

def png(width: int = 48, height: int = 40, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A smooth image with a little texture (compressible, unlike noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) * 2 % 256], axis=-1)
    rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


class Receiver:
    """A receiver that verifies, dedupes by id and stores; ``frames`` keeps every frame received."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.stored: dict[str, Frame] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/frames"
        assert request.headers["content-type"] == "application/msgpack"
        frames = unpack_frames(request.content, SECRET.encode())
        self.frames.extend(frames)
        results = []
        for f in frames:
            results.append({"id": f.id, "status": "duplicate" if f.id in self.stored else "stored"})
            self.stored.setdefault(f.id, f)
        return httpx.Response(200, json={"results": results})


@pytest.fixture(scope="module")
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_models_dir, receiver):
    """One app for the module (the bad-upload tests also prove the app keeps working after each)."""
    settings = make_settings(tmp_path_factory.mktemp("sender"), tiny_models_dir, max_upload_bytes=300_000)
    with TestClient(create_app(settings, transport=httpx.MockTransport(receiver))) as c:
        yield c


# ---- good uploads ---------------------------------------------------------------------------

def check_image(image: dict, data: bytes, width: int, height: int) -> None:
    assert image["status"] in ("queued", "delivered")
    assert (image["width"], image["height"]) == (width, height)
    assert image["original_bytes"] == len(data)
    assert image["bytes"] > 0
    assert image["bpp"] == pytest.approx(image["bytes"] * 8 / (width * height), rel=1e-3)
    assert image["ratio"] == pytest.approx(len(data) / image["bytes"], rel=1e-3)
    assert len(image["id"]) == 32 and int(image["id"], 16) >= 0
    jpeg = image["jpeg_same_bytes"]
    assert set(jpeg) == {"bytes", "psnr", "quality", "fits"}
    assert 1 <= jpeg["quality"] <= 95
    assert jpeg["bytes"] <= image["bytes"] or not jpeg["fits"]


def test_multipart_upload_reaches_receiver_with_the_psnr_it_will_see(client, receiver, tiny_codec):
    data = png(48, 40, seed=1)
    r = client.post("/v1/images", params={"quality": 0.7}, files=[("file", ("one.png", data, "image/png"))])
    assert r.status_code == 202, r.text
    (image,) = r.json()["images"]
    check_image(image, data, 48, 40)
    assert image["quality"] == 0.7 and image["filename"] == "one.png" and image["mode"] == "standard"

    done = wait_status(client, image["id"], "delivered")
    assert done["attempts"] == 1 and done["receiver_status"] == "stored" and done["last_error"] is None
    assert done["delivered_at"] >= done["created_at"]
    for key in ("bytes", "bpp", "psnr", "quality", "ratio", "jpeg_same_bytes", "width", "height"):
        assert done[key] == image[key]

    frame = receiver.stored[image["id"]]
    assert frame.sent_at == pytest.approx(image["created_at"])
    assert len(frame.stream.to_bytes()) == image["bytes"]
    decoded = tiny_codec.decode(frame.stream.to_bytes())
    expected = psnr(load_image(data).rgb, decoded)
    assert image["psnr"] == pytest.approx(expected, abs=0.01)


def test_two_files_in_one_request(client, receiver):
    a, b = png(48, 40, seed=2), png(33, 65, seed=3)
    r = client.post("/v1/images", files=[("file", ("a.png", a, "image/png")), ("file", ("b.png", b, "image/png"))])
    assert r.status_code == 202, r.text
    first, second = r.json()["images"]
    check_image(first, a, 48, 40)
    check_image(second, b, 33, 65)
    assert first["id"] != second["id"] and first["quality"] == 0.5  # the default quality
    for image in (first, second):
        wait_status(client, image["id"], "delivered")
        assert receiver.stored[image["id"]].stream.width == image["width"]


def test_raw_body_upload(client, receiver):
    data = png(40, 30, seed=4, fmt="JPEG")
    r = client.post("/v1/images", content=data, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 202, r.text
    (image,) = r.json()["images"]
    check_image(image, data, 40, 30)
    assert image["filename"] == "upload"
    wait_status(client, image["id"], "delivered")
    r = client.post("/v1/images", content=data, headers={"Content-Type": "application/octet-stream",
                                                          "Content-Disposition": 'inline; filename="cam.jpg"'})
    assert r.status_code == 202 and r.json()["images"][0]["filename"] == "cam.jpg"


def test_byte_budget_is_met(client):
    data = png(64, 64, seed=5)
    top = client.post("/v1/images", params={"quality": 1.0}, files={"file": ("x.png", data)}).json()["images"][0]
    low = client.post("/v1/images", params={"quality": 0.0}, files={"file": ("x.png", data)}).json()["images"][0]
    budget = (top["bytes"] + low["bytes"]) // 2
    r = client.post("/v1/images", params={"max_bytes": budget}, files={"file": ("x.png", data)})
    assert r.status_code == 202, r.text
    image = r.json()["images"][0]
    assert low["bytes"] <= image["bytes"] <= budget
    assert 0.0 <= image["quality"] < 1.0


def test_previews_are_served_and_match_the_numbers(client):
    data = png(48, 40, seed=6)
    image = client.post("/v1/images", files={"file": ("p.png", data)}).json()["images"][0]
    rec = client.get(image["reconstruction_url"])
    assert rec.status_code == 200 and rec.headers["content-type"] == "image/png"
    decoded = np.asarray(Image.open(io.BytesIO(rec.content)).convert("RGB"))
    assert psnr(load_image(data).rgb, decoded) == pytest.approx(image["psnr"], abs=0.01)
    jpg = client.get(image["jpeg_url"])
    assert jpg.status_code == 200 and jpg.headers["content-type"] == "image/jpeg"
    assert len(jpg.content) == image["jpeg_same_bytes"]["bytes"]


def test_listing_and_unknown_ids(client):
    r = client.get("/v1/images", params={"status": "delivered", "limit": 2})
    assert r.status_code == 200
    body = r.json()
    assert len(body["images"]) <= 2 and all(i["status"] == "delivered" for i in body["images"])
    assert set(body["counts"]) == {"queued", "delivered", "failed", "superseded"}
    unknown = client.get("/v1/images/" + "0" * 32)
    assert unknown.status_code == 404 and unknown.json()["error"] == "ImageNotFound"
    assert client.get("/v1/images/" + "0" * 32 + "/jpeg.jpg").status_code == 404
    for bad in ("nothex", "A" * 32, "0" * 31):
        r = client.get(f"/v1/images/{bad}")
        assert r.status_code == 400 and r.json()["error"] == "InvalidImageId", bad


# ---- bad uploads --------------------------------------------------------------------------

def _gif_animated() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def _wide() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (5000, 1)).save(buf, format="PNG")  # 5000 px wide: over max_side 4096
    return buf.getvalue()


BAD_FILES = {
    "not an image": (b"hello, I am text", 400, "NotAnImage"),
    "zero bytes": (b"", 400, "NotAnImage"),
    "truncated": (png(48, 40, seed=7)[:300], 400, "TruncatedImage"),
    "too many pixels": (_wide(), 413, "ImageTooLarge"),
    "animated": (_gif_animated(), 422, "UnsupportedImage"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_refused_with_json_and_the_next_upload_works(client, case):
    data, status, error = BAD_FILES[case]
    r = client.post("/v1/images", files={"file": ("bad.bin", data)})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error and body["file"] == "bad.bin" and "bad.bin" in body["message"]
    raw = client.post("/v1/images", content=data, headers={"Content-Type": "application/octet-stream"})
    assert raw.status_code == status and raw.json()["error"] == error
    assert client.post("/v1/images", files={"file": ("ok.png", png(seed=8))}).status_code == 202


@pytest.mark.parametrize("params, status, error, words", [
    ({"quality": 1.5}, 422, "QualityOutOfRange", "[0, 1]"),
    ({"quality": "abc"}, 422, "InvalidRequest", "quality"),
    ({"quality": 0.5, "max_bytes": 1000}, 422, "InvalidRequest", "not both"),
    ({"max_bytes": 0}, 422, "QualityOutOfRange", "positive"),
    ({"mode": "denoise"}, 422, "InvalidRequest", "is off on this sender"),
    ({"mode": "blur"}, 422, "InvalidRequest", "modes: standard, denoise"),
])
def test_bad_parameters(client, params, status, error, words):
    r = client.post("/v1/images", params=params, files={"file": ("a.png", png(seed=9))})
    assert r.status_code == status, r.text
    assert r.json()["error"] == error and words in r.json()["message"]


def test_a_budget_below_the_full_sizes_lowest_rate_is_coded_smaller_and_shown_full_size(client):
    data = png(192, 128, seed=5)  # (a 64x64 picture has no smaller latents: they pad to 64)
    low = client.post("/v1/images", params={"quality": 0.0}, files={"file": ("x.png", data)}).json()["images"][0]
    assert (low["coded_width"], low["coded_height"]) == (192, 128)
    r = client.post("/v1/images", params={"max_bytes": low["bytes"] - 1}, files={"file": ("x.png", data)})
    assert r.status_code == 202, r.text
    image = r.json()["images"][0]
    assert image["bytes"] <= low["bytes"] - 1
    assert (image["width"], image["height"]) == (192, 128)
    assert image["coded_width"] < 192 and image["coded_height"] < 128  # one of the reduced sizes
    rec = client.get(image["reconstruction_url"])
    assert Image.open(io.BytesIO(rec.content)).size == (192, 128)
    done = wait_status(client, image["id"], "delivered")
    assert (done["coded_width"], done["coded_height"]) == (image["coded_width"], image["coded_height"])


def test_budget_too_small_names_the_minimum(client):
    r = client.post("/v1/images", params={"max_bytes": 10}, files={"file": ("a.png", png(seed=10))})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "BudgetTooSmall" and body["min_bytes"] > 10
    assert str(body["min_bytes"]) in body["message"]


def test_request_level_errors(client):
    r = client.post("/v1/images", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and r.json()["error"] == "UnsupportedMediaType"
    r = client.post("/v1/images", content=png(), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/v1/images", files={"image": ("a.png", png())})
    assert r.status_code == 422 and r.json()["error"] == "MissingFile" and "'image'" in r.json()["message"]
    r = client.post("/v1/images", data={"file": "a.png"}, files={"other": ("a.png", png())})
    assert r.status_code == 422 and r.json()["error"] == "MissingFile"


def test_body_over_the_limit_is_cut_off_while_streaming(client):
    big = b"\0" * 400_000  # the module's app allows 300 000 bytes
    r = client.post("/v1/images", content=big, headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and r.json()["error"] == "UploadTooLarge"

    sent = []

    def chunks():  # no Content-Length: the limit must hold while counting
        for _ in range(100):
            sent.append(1)
            yield b"\0" * 10_000

    r = client.post("/v1/images", content=chunks(), headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and r.json()["error"] == "UploadTooLarge"
    r = client.post("/v1/images", files={"file": ("big.png", big)})
    assert r.status_code == 413
    assert client.post("/v1/images", files={"file": ("ok.png", png(seed=11))}).status_code == 202


def test_request_limits_on_files_and_decoded_pixels(tmp_path, tiny_models_dir, receiver):
    settings = make_settings(tmp_path, tiny_models_dir, max_files=5, max_side=64)
    with TestClient(create_app(settings, transport=httpx.MockTransport(receiver))) as c:
        six = [("file", (f"{i}.png", png(64, 64, seed=i))) for i in range(6)]
        r = c.post("/v1/images", files=six)
        assert r.status_code == 413 and "more than 5 files" in r.json()["message"]
        r = c.post("/v1/images", files=six[:5])  # 5 x 64 x 64 px > 4 full-size (64 x 64) images
        assert r.status_code == 413 and "megapixels" in r.json()["message"]
        assert c.post("/v1/images", files=six[:4]).status_code == 202


def test_one_bad_file_rejects_the_whole_request(client):
    before = client.get("/v1/images").json()["counts"]
    files = [("file", ("good.png", png(seed=12))), ("file", ("broken.png", b"\x89PNG broken")),
             ("file", ("good2.png", png(seed=13)))]
    r = client.post("/v1/images", files=files)
    assert r.status_code == 400 and r.json()["file"] == "broken.png" and "nothing was queued" in r.json()["message"]
    after = client.get("/v1/images").json()["counts"]
    assert sum(after.values()) == sum(before.values())


# ---- page, metrics, health --------------------------------------------------------------------

def test_page_has_the_form_and_local_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert '<form id="upload-form"' in html and 'name="file"' in html and 'type="range"' in html
    assert "max-bytes" in html and "200 images" in html
    assert 'src="/static/sender.js"' in html and "https://" not in html  # no CDN
    assert client.get("/static/sender.js").status_code == 200
    assert client.get("/static/sender.css").status_code == 200


def test_metrics_health_models_and_docs(client):
    text = client.get("/metrics").text
    for name in ("latentwire_sender_encode_seconds_bucket", "latentwire_sender_transmit_seconds_bucket",
                 "latentwire_sender_wire_bytes_total", "latentwire_sender_bpp_bucket",
                 "latentwire_sender_outbox_depth", "latentwire_sender_delivery_attempts_total",
                 "latentwire_sender_upload_errors_total", "latentwire_sender_encode_batch_size_bucket"):
        assert name in text, name
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["reasons"] == []
    models = client.get("/v1/models").json()
    assert models["models"][0]["name"] == TINY_MODEL and models["modes"] == ["standard"]
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/v1/images"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200
    assert SECRET not in client.get("/openapi.json").text and SECRET not in text
