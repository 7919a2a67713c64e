"""Headless Chromium: the receiver's live page shows a new reconstruction without a reload; the
sender's page shows its comparison; both services' /docs render with no request leaving the
machine."""

from __future__ import annotations

import shutil
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.e2e.conftest import png_bytes

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_live_gallery_updates_without_reload(services, browser):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(services.receiver.url + "/")
    page.wait_for_selector("#gallery", state="attached", timeout=15_000)
    # Mark this document: a reload would create a new one without the marker.
    page.evaluate("window.__latentwire_marker = 42")
    before = page.locator("#gallery [data-id]").count()

    with httpx.Client(base_url=services.sender.url, timeout=60) as sender:
        r = sender.post("/v1/images", params={"quality": 0.5},
                        files={"file": ("live.png", png_bytes(96, 64, seed=5), "image/png")})
    assert r.status_code == 202, r.text
    image_id = r.json()["images"][0]["id"]

    page.wait_for_selector(f'#gallery [data-id="{image_id}"]', timeout=30_000)
    assert page.evaluate("window.__latentwire_marker") == 42
    assert page.locator("#gallery [data-id]").count() == before + 1
    img = page.locator(f'#gallery [data-id="{image_id}"] img')
    img.wait_for(timeout=10_000)
    page.wait_for_function(
        "el => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=10_000)
    assert img.evaluate("el => [el.naturalWidth, el.naturalHeight]") == [96, 64]
    assert errors == []
    page.close()


def test_sender_upload_page_shows_comparison(services, browser, tmp_path):
    """The upload page posts a file and shows original, reconstruction and same-size JPEG."""
    page = browser.new_page()
    page.goto(services.sender.url + "/")
    path = tmp_path / "upload.png"
    path.write_bytes(png_bytes(80, 60, seed=9))
    page.set_input_files("input[type=file]", str(path))
    page.locator("form [type=submit], form button").first.click()
    # Three images per result: original, reconstruction, JPEG at the same byte count.
    page.wait_for_function("document.querySelectorAll('[data-id] img').length >= 3", timeout=30_000)
    text = page.locator("[data-id]").first.inner_text()
    assert "PSNR" in text or "dB" in text
    page.close()


def test_denoise_uploads_show_the_noise_estimate(tmp_path, tiny_models_dir, browser):
    """mode=denoise on the upload page: the card says what clean first decided (the random tiny
    denoiser's estimate is far above any limit, so it codes its reconstruction)."""
    import secrets

    from shared.launcher import ServicePair
    from tests.conftest import TINY_DENOISE_MODEL, TINY_MODEL

    denoise = {"LATENTWIRE_SENDER_DENOISE_MODEL": TINY_DENOISE_MODEL,
               "LATENTWIRE_RECEIVER_DENOISE_MODEL": TINY_DENOISE_MODEL}
    pair = ServicePair(work_dir=tmp_path / "services", secret=secrets.token_hex(32), model=TINY_MODEL,
                       models_dir=tiny_models_dir, extra_env=denoise)
    try:
        pair.start()
        page = browser.new_page()
        page.goto(pair.sender.url + "/")
        path = tmp_path / "noisy.png"
        path.write_bytes(png_bytes(80, 60, seed=5))
        page.check("input[name=mode][value=denoise]")
        page.set_input_files("input[type=file]", str(path))
        page.locator("form [type=submit], form button").first.click()
        page.wait_for_function("document.querySelectorAll('[data-id] img').length >= 3", timeout=30_000)
        text = page.locator("[data-id] .ours").first.inner_text()
        image_id = page.locator("[data-id]").first.get_attribute("data-id")
        record = httpx.get(f"{pair.sender.url}/v1/images/{image_id}").json()
        page.close()
    finally:
        pair.stop()
    assert record["mode"] == "denoise" and record["cleaned"] is True and record["noise"] > 50
    assert text.startswith("latentwire (denoise):")
    assert f"noise estimate {record['noise']:.1f} grey levels, coded its clean reconstruction" in text


def test_a_budget_below_the_lowest_rate_shows_the_coded_size(services, browser, tmp_path, tiny_models_dir):
    """Byte budget on the upload page, below what the full size needs: the card says the picture
    was coded smaller and is shown at its own size."""
    from shared.codec import Codec
    from shared.images import load_image
    from tests.conftest import TINY_MODEL

    data = png_bytes(192, 128, seed=13)
    codec = Codec.load(TINY_MODEL, tiny_models_dir)
    budget = codec.encode(load_image(data).rgb, quality=0.0).nbytes - 1
    enc = codec.encode(load_image(data).rgb, max_bytes=budget)
    path = tmp_path / "budget.png"
    path.write_bytes(data)
    page = browser.new_page()
    page.goto(services.sender.url + "/")
    page.check("input[name=rate][value=max_bytes]")
    page.fill("#max-bytes", str(budget))
    page.set_input_files("input[type=file]", str(path))
    page.locator("form [type=submit], form button").first.click()
    page.wait_for_function("document.querySelectorAll('[data-id] img').length >= 3", timeout=30_000)
    text = page.locator("[data-id] .ours").first.inner_text()
    reconstruction = page.locator("[data-id] .reconstruction").first
    page.wait_for_function(  # the element exists before its picture has loaded
        "el => el.complete && el.naturalWidth > 0", arg=reconstruction.element_handle(), timeout=10_000)
    shown = reconstruction.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    page.close()
    h, w = enc.stream.coded_size
    assert f"coded at {w}x{h} to fit the budget, shown at 192x128" in text
    assert text.startswith(f"latentwire: {enc.nbytes} B, ")  # the same stream this codec makes
    assert shown == [192, 128]


def test_api_docs_render_with_no_request_leaving_the_machine(services, browser):
    """Swagger UI of both services lists their operations, and every request the page made
    (script, style, schema, icon) went to the service itself."""
    for service, operation in ((services.sender, "/v1/images"), (services.receiver, "/v1/frames")):
        page = browser.new_page()
        requested: list[str] = []
        errors: list[str] = []
        page.on("request", lambda request, requested=requested: requested.append(request.url))
        page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
        page.goto(service.url + "/docs")
        page.wait_for_selector(f'.opblock-summary-path[data-path="{operation}"]', timeout=15_000)
        page.wait_for_load_state("networkidle")
        shown = page.locator(".opblock").count()
        page.close()
        schema = httpx.get(service.url + "/openapi.json").json()
        assert shown == sum(len(methods) for methods in schema["paths"].values())
        assert {urlsplit(url).hostname for url in requested} == {"127.0.0.1"}, requested
        assert service.url + "/openapi.json" in requested, requested
        assert errors == []
