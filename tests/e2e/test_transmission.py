"""Both services as real uvicorn processes on loopback: upload -> only codes cross -> stored."""

from __future__ import annotations

import hashlib
import io

import httpx
import numpy as np
from PIL import Image

from shared.codec import Codec
from shared.images import load_image
from tests.conftest import TINY_MODEL
from tests.e2e.conftest import png_bytes, receiver_ids, wait_until


def _stored(client: httpx.Client, image_id: str):
    r = client.get(f"/v1/images/{image_id}")
    return r.json() if r.status_code == 200 else None


def test_upload_arrives_at_receiver_with_original_size(module_services):
    upload = png_bytes(75, 41, seed=3)
    with httpx.Client(base_url=module_services.sender.url, timeout=60) as sender, \
            httpx.Client(base_url=module_services.receiver.url, timeout=60) as receiver:
        r = sender.post("/v1/images", params={"quality": 0.7},
                        files={"file": ("gradient.png", upload, "image/png")})
        assert r.status_code == 202, r.text
        (img,) = r.json()["images"]
        assert (img["width"], img["height"]) == (75, 41)
        assert 0 < img["bytes"] < len(upload)

        meta = wait_until(lambda: _stored(receiver, img["id"]), 30, what="the frame to be stored")
        assert (meta["width"], meta["height"]) == (75, 41)
        assert img["id"] in receiver_ids(receiver)
        png = receiver.get(f"/v1/images/{img['id']}.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (75, 41)
        status = wait_until(lambda: sender.get(f"/v1/images/{img['id']}").json()["status"] == "delivered",
                            30, what="the sender to record delivery")
        assert status


def test_receiver_pixels_equal_a_local_decode_of_the_same_stream(module_services, tiny_models_dir):
    """What the receiver stores is exactly what this codec decodes: determinism end to end."""
    upload = png_bytes(64, 48, seed=11)
    codec = Codec.load(TINY_MODEL, tiny_models_dir)
    expected = codec.decode(codec.encode(load_image(upload).rgb, quality=0.4).data)
    with httpx.Client(base_url=module_services.sender.url, timeout=60) as sender, \
            httpx.Client(base_url=module_services.receiver.url, timeout=60) as receiver:
        (img,) = sender.post("/v1/images", params={"quality": 0.4}, content=upload,
                             headers={"content-type": "image/png"}).json()["images"]
        wait_until(lambda: _stored(receiver, img["id"]), 30, what="the frame to be stored")
        got = np.asarray(Image.open(io.BytesIO(receiver.get(f"/v1/images/{img['id']}.png").content)).convert("RGB"))
    assert hashlib.sha256(got.tobytes()).hexdigest() == hashlib.sha256(expected.tobytes()).hexdigest()


def test_a_budget_below_the_full_sizes_lowest_rate_arrives_full_size(module_services, tiny_models_dir):
    """A byte budget the full size cannot meet crosses as a reduced-size (format version 3) stream,
    and the receiver stores exactly what this codec decodes from it, at the upload's size."""
    upload = png_bytes(192, 128, seed=12)
    codec = Codec.load(TINY_MODEL, tiny_models_dir)
    rgb = load_image(upload).rgb
    budget = codec.encode(rgb, quality=0.0).nbytes - 1
    enc = codec.encode(rgb, max_bytes=budget)
    assert enc.stream.version == 3
    with httpx.Client(base_url=module_services.sender.url, timeout=60) as sender, \
            httpx.Client(base_url=module_services.receiver.url, timeout=60) as receiver:
        (img,) = sender.post("/v1/images", params={"max_bytes": budget}, content=upload,
                             headers={"content-type": "image/png"}).json()["images"]
        assert img["bytes"] == enc.nbytes <= budget
        assert (img["coded_height"], img["coded_width"]) == enc.stream.coded_size
        meta = wait_until(lambda: _stored(receiver, img["id"]), 30, what="the frame to be stored")
        assert (meta["width"], meta["height"]) == (192, 128) and meta["stream_bytes"] == enc.nbytes
        got = np.asarray(Image.open(io.BytesIO(receiver.get(f"/v1/images/{img['id']}.png").content)).convert("RGB"))
    assert np.array_equal(got, codec.decode(enc.data))


def test_denoise_mode_frames_decode_with_the_denoising_model(module_services, tiny_models_dir):
    """mode=denoise through real processes: the frame names the second model and the receiver,
    configured with it, stores exactly that model's decode."""
    from tests.conftest import TINY_DENOISE_MODEL

    pair = module_services
    upload = png_bytes(64, 48, seed=12)
    denoiser = Codec.load(TINY_DENOISE_MODEL, tiny_models_dir)
    expected = denoiser.decode(denoiser.encode(load_image(upload).rgb, quality=0.6).data)
    with httpx.Client(base_url=pair.sender.url, timeout=60) as sender, \
            httpx.Client(base_url=pair.receiver.url, timeout=60) as receiver:
        r = sender.post("/v1/images", params={"quality": 0.6, "mode": "denoise"}, content=upload,
                        headers={"content-type": "image/png"})
        assert r.status_code == 202, r.text
        (img,) = r.json()["images"]
        assert img["mode"] == "denoise"
        meta = wait_until(lambda: _stored(receiver, img["id"]), 30, what="the frame to be stored")
        assert meta["model"] == TINY_DENOISE_MODEL
        got = np.asarray(Image.open(io.BytesIO(receiver.get(f"/v1/images/{img['id']}.png").content)).convert("RGB"))
    assert np.array_equal(got, expected)
