"""Upload options end to end in process (a real receiver app behind the sender's transport).

preview=false: the sender skips its own decode, the JPEG comparison and the previews; the frame
still travels and the receiver stores the same reconstruction.

mode=denoise: the sender encodes with its denoising model, the frame names
that model, and a receiver that holds it stores the reconstruction; one that does not refuses it
(409 naming both) and the sender keeps the frame. ``lw-tiny-denoise`` is a second random tiny
model standing in for the denoising checkpoint: these tests are about routing, not denoising."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from sender.app import create_app as create_sender
from shared.codec import Codec
from shared.errors import CheckpointNotFound
from tests.conftest import TINY_DENOISE_MODEL, TINY_MODEL
from tests.service.conftest import SENDER_SECRET, forward_to, receiver_post, sender_settings, wait_status


def noisy_png(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    clean = np.stack([xx * 5.0, yy * 6.0, np.full_like(xx, 90.0)], axis=-1)
    rgb = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def receiver_app(tmp_path, tiny_models_dir, monkeypatch):
    """A real receiver app in process that decodes both tiny models."""
    from receiver.app import create_app
    from receiver.settings import Settings

    for key in [k for k in os.environ if k.startswith("LATENTWIRE_")]:
        monkeypatch.delenv(key)
    settings = Settings(secret=SENDER_SECRET, store_dir=tmp_path / "store", model=TINY_MODEL,
                        denoise_model=TINY_DENOISE_MODEL, models_dir=tiny_models_dir, device="cpu")
    with TestClient(create_app(settings)) as rc:
        yield rc


def test_denoise_uploads_travel_with_the_denoising_model(tmp_path, tiny_models_dir, receiver_app):
    settings = sender_settings(tmp_path / "sender", tiny_models_dir, denoise_model=TINY_DENOISE_MODEL)
    with TestClient(create_sender(settings, transport=forward_to(receiver_app))) as client:
        models = client.get("/v1/models").json()
        assert models["modes"] == ["standard", "denoise"] and models["default_mode"] == "standard"
        assert [(m["mode"], m["name"]) for m in models["models"]] == [("standard", TINY_MODEL),
                                                                       ("denoise", TINY_DENOISE_MODEL)]
        # The denoising model codes clean first (shared/clean_first.py); the standard one never does.
        assert [m["clean_first"] for m in models["models"]] == [
            None, {"noise_ref": 24.0, "quality_at_ref": 0.65, "per_grey_level": 0.07, "gap_ratio": 1.1}]
        page = client.get("/")
        assert page.status_code == 200 and 'value="denoise"' in page.text

        ids = {}
        for mode in ("denoise", "standard"):
            r = client.post(f"/v1/images?mode={mode}&quality=0.5", files=[("file", ("n.png", noisy_png(seed=3)))])
            assert r.status_code == 202, r.text
            image = r.json()["images"][0]
            assert image["mode"] == mode
            ids[mode] = image["id"]
            if mode == "denoise":  # the random tiny denoiser's estimate is far above any limit: coded clean
                assert image["noise"] > 50 and image["cleaned"] is True
            else:
                assert image["noise"] is None and image["cleaned"] is False
            kept = client.get(f"/v1/images/{image['id']}").json()  # as the outbox keeps it
            assert (kept["noise"], kept["cleaned"]) == (image["noise"], image["cleaned"])
        for mode, image_id in ids.items():
            assert wait_status(client, image_id, "delivered")["receiver_status"] == "stored"
            meta = receiver_app.get(f"/v1/images/{image_id}").json()
            assert meta["model"] == (TINY_DENOISE_MODEL if mode == "denoise" else TINY_MODEL)
            # What the receiver stored is the sender's own decode of the stream, pixel for pixel.
            stored = receiver_app.get(f"/v1/images/{image_id}.png").content
            preview = client.get(f"/v1/images/{image_id}/reconstruction.png").content
            with Image.open(io.BytesIO(stored)) as a, Image.open(io.BytesIO(preview)) as b:
                assert a.size == (48, 40) and np.array_equal(np.asarray(a), np.asarray(b))
        # Both services list the same two models, mode for mode, with the same fields (shared.schemas.ModelInfo).
        assert receiver_app.get("/v1/models").json()["models"] == models["models"]


def test_default_mode_denoise_applies_to_uploads_that_name_none(tmp_path, tiny_models_dir):
    settings = sender_settings(tmp_path, tiny_models_dir, denoise_model=TINY_DENOISE_MODEL, default_mode="denoise",
                               receiver_url="http://127.0.0.1:9")  # nothing listens: frames stay queued
    with TestClient(create_sender(settings)) as client:
        r = client.post("/v1/images", files=[("file", ("n.png", noisy_png()))])
        assert r.status_code == 202, r.text
        assert r.json()["images"][0]["mode"] == "denoise"


def test_denoise_is_refused_with_422_when_the_sender_has_no_denoising_model(tmp_path, tiny_models_dir):
    # The default denoise model name (lw-vr-denoise) is not in the tiny models folder: mode off.
    settings = sender_settings(tmp_path, tiny_models_dir, receiver_url="http://127.0.0.1:9")
    with TestClient(create_sender(settings)) as client:
        assert client.get("/v1/models").json()["modes"] == ["standard"]
        r = client.post("/v1/images?mode=denoise", files=[("file", ("n.png", noisy_png()))])
        assert r.status_code == 422
        assert r.json()["error"] == "InvalidRequest" and "mode 'denoise' is off" in r.json()["message"]
        r = client.post("/v1/images?mode=sharpen", files=[("file", ("n.png", noisy_png()))])
        assert r.status_code == 422 and "does not exist" in r.json()["message"]
        assert client.get("/v1/images").json()["counts"].get("queued", 0) == 0  # nothing half-accepted


def test_default_mode_denoise_without_its_model_refuses_to_start(tmp_path, tiny_models_dir):
    with pytest.raises(ValidationError, match="denoise_model is empty"):
        sender_settings(tmp_path, tiny_models_dir, denoise_model="", default_mode="denoise")
    settings = sender_settings(tmp_path, tiny_models_dir, denoise_model="lw-missing", default_mode="denoise")
    with pytest.raises(CheckpointNotFound, match="lw-missing"):
        with TestClient(create_sender(settings)):
            pass


def test_receiver_without_the_denoising_model_answers_409_naming_both(receiver_client, tiny_models_dir,
                                                                     receiver_frames):
    from tests.service.conftest import receiver_rgb

    denoiser = Codec.load(TINY_DENOISE_MODEL, tiny_models_dir)
    body, ids = receiver_frames.body(encoded=denoiser.encode(receiver_rgb(), quality=0.5))
    r = receiver_post(receiver_client, body)
    assert r.status_code == 409
    message = r.json()["message"]
    assert TINY_DENOISE_MODEL in message and f"{TINY_MODEL}@" in message
    assert receiver_client.get(f"/v1/images/{ids[0]}").status_code == 404  # nothing stored


def test_preview_false_skips_the_senders_decode_but_not_the_delivery(tmp_path, tiny_models_dir, receiver_app):
    settings = sender_settings(tmp_path / "sender", tiny_models_dir)
    data = noisy_png(seed=5)
    with TestClient(create_sender(settings, transport=forward_to(receiver_app))) as client:
        lean = client.post("/v1/images?quality=0.4&preview=false", files=[("file", ("a.png", data))])
        full = client.post("/v1/images?quality=0.4", files=[("file", ("a.png", data))])
        assert lean.status_code == full.status_code == 202
        a, b = lean.json()["images"][0], full.json()["images"][0]
        assert (a["preview"], a["psnr"], a["jpeg_same_bytes"], a["reconstruction_url"]) == (False, None, None, None)
        assert b["preview"] is True and 5.0 < b["psnr"] < 60.0 and b["jpeg_same_bytes"]["bytes"] > 0
        assert a["bytes"] == b["bytes"]  # same image, same quality: the same stream
        assert client.get(f"/v1/images/{a['id']}/reconstruction.png").status_code == 404
        for image in (a, b):
            assert wait_status(client, image["id"], "delivered")["receiver_status"] == "stored"
        pixels = []
        for image in (a, b):
            with Image.open(io.BytesIO(receiver_app.get(f"/v1/images/{image['id']}.png").content)) as im:
                pixels.append(np.asarray(im))
        assert pixels[0].shape == (40, 48, 3) and np.array_equal(pixels[0], pixels[1])
