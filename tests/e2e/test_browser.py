"""Headless Chromium: the receiver's live page shows a new reconstruction without a reload; the
sender's page shows its comparison; both services' /docs render with no request leaving the
machine; receiver cards keep their text apart and say mode and coded size."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx

from tests.e2e.conftest import png_bytes

def test_live_gallery_updates_without_reload(module_services, browser):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(module_services.receiver.url + "/")
    page.wait_for_selector("#gallery", state="attached", timeout=15_000)
    # Mark this document: a reload would create a new one without the marker.
    page.evaluate("window.__latentwire_marker = 42")
    before = page.locator("#gallery [data-id]").count()

    with httpx.Client(base_url=module_services.sender.url, timeout=60) as sender:
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


def test_sender_upload_page_shows_comparison(module_services, browser, tmp_path):
    """The upload page posts a file and shows original, reconstruction and same-size JPEG."""
    page = browser.new_page()
    page.goto(module_services.sender.url + "/")
    path = tmp_path / "upload.png"
    path.write_bytes(png_bytes(80, 60, seed=9))
    page.set_input_files("input[type=file]", str(path))
    page.locator("form [type=submit], form button").first.click()
    # Three images per result: original, reconstruction, JPEG at the same byte count.
    page.wait_for_function("document.querySelectorAll('[data-id] img').length >= 3", timeout=30_000)
    text = page.locator("[data-id]").first.inner_text()
    assert "PSNR" in text or "dB" in text
    page.close()


def test_denoise_uploads_show_the_noise_estimate(tmp_path, module_services, browser):
    """mode=denoise on the upload page: the card says what clean first decided (the random tiny
    denoiser's estimate is far above any limit, so it codes its reconstruction)."""
    pair = module_services
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
    assert record["mode"] == "denoise" and record["cleaned"] is True and record["noise"] > 50
    assert text.startswith("latentwire (denoise):")
    assert f"noise estimate {record['noise']:.1f} grey levels, coded its clean reconstruction" in text


def test_a_budget_below_the_lowest_rate_shows_the_coded_size(module_services, browser, tmp_path, tiny_models_dir):
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
    page.goto(module_services.sender.url + "/")
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


def test_api_docs_render_with_no_request_leaving_the_machine(module_services, browser):
    """Swagger UI of both services lists their operations, and every request the page made
    (script, style, schema, icon) went to the service itself."""
    for service, operation in ((module_services.sender, "/v1/images"), (module_services.receiver, "/v1/frames")):
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


# Every text box of a receiver card: the number labels and values, the id and the time. For each,
# the box of its text itself (a Range over its contents), not of its element: text that does not
# fit runs out of its element's box (white-space: nowrap did that) without the boxes overlapping.
_CARD_TEXT_BOXES = """card => [...card.querySelectorAll("dt, dd, footer > *")]
    .filter(el => el.offsetParent !== null && el.textContent.trim() !== "")
    .map(el => {
        const range = document.createRange();
        range.selectNodeContents(el);
        const r = range.getBoundingClientRect();
        return {text: el.textContent, left: r.left, right: r.right, top: r.top, bottom: r.bottom};
    })"""


def _overlapping(boxes: list[dict]) -> list[tuple[str, str]]:
    def overlap(a, b):
        return a["left"] < b["right"] and b["left"] < a["right"] and a["top"] < b["bottom"] and b["top"] < a["bottom"]
    return [(a["text"], b["text"]) for k, a in enumerate(boxes) for b in boxes[k + 1:] if overlap(a, b)]


def _photo_png(width: int, height: int) -> bytes:
    """A sample photo resized to an ordinary camera-ish size (made here: no big file in the repo)."""
    import io

    from PIL import Image

    from shared.tools import SAMPLES

    sample = SAMPLES / "kodim23_half.png"
    buf = io.BytesIO()
    Image.open(sample).convert("RGB").resize((width, height), Image.Resampling.LANCZOS).save(buf, format="PNG")
    return buf.getvalue()


def test_receiver_cards_show_mode_and_coded_size_without_overlapping_text(tiny_models_dir, module_services,
                                                                          browser):
    """A 1136x818 photo through the sender twice: at a quality (full size, mode standard) and in
    mode denoise with a byte budget below what the full size needs (coded smaller). Each card
    says its mode, the reduced one its coded size, and no two text boxes of a card overlap, in
    windows 1280 px wide, 1366 and 1920 (where the grid's cards are narrowest: the old layout ran
    "1136×818" into "22.6 kB" there) and 400 px narrow."""
    from shared.codec import Codec
    from shared.images import load_image
    from tests.conftest import TINY_DENOISE_MODEL

    pair = module_services
    photo = _photo_png(1136, 818)
    denoiser = Codec.load(TINY_DENOISE_MODEL, tiny_models_dir)
    budget = denoiser.encode(load_image(photo).rgb, quality=0.0).nbytes // 2  # the full size cannot fit
    with httpx.Client(base_url=pair.sender.url, timeout=120) as sender:
        uploads = [sender.post("/v1/images", params=params, files={"file": ("photo.png", photo, "image/png")})
                   for params in ({"quality": 0.5, "preview": False},
                                  {"mode": "denoise", "max_bytes": budget, "preview": False})]
    assert [r.status_code for r in uploads] == [202, 202], [r.text for r in uploads]
    full, reduced = (r.json()["images"][0] for r in uploads)
    assert (full["coded_width"], full["coded_height"]) == (1136, 818)
    coded = (reduced["coded_width"], reduced["coded_height"])
    assert coded[0] < 1136 and coded[1] < 818, reduced

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(pair.receiver.url + "/")
    for image in (full, reduced):  # arrive live, or are listed when the page loads after them
        page.wait_for_selector(f'#gallery [data-id="{image["id"]}"]', timeout=60_000)
    cards = {image["id"]: page.locator(f'#gallery [data-id="{image["id"]}"]') for image in (full, reduced)}
    shown = {}
    for width in (1280, 1366, 1920, 400):
        page.set_viewport_size({"width": width, "height": 900})
        for image_id, card in cards.items():
            card.scroll_into_view_if_needed()
            boxes = card.evaluate(_CARD_TEXT_BOXES)
            texts = [box["text"] for box in boxes]
            assert "1136×818" in texts and len(texts) >= 16, texts
            assert _overlapping(boxes) == [], (width, texts)
            frame = card.bounding_box()
            assert all(frame["x"] <= box["left"] and box["right"] <= frame["x"] + frame["width"] + 0.5
                       for box in boxes), (width, boxes, frame)  # nothing runs out of the card
            shown[image_id] = texts
    time_text = cards[full["id"]].locator("time").inner_text()
    page.close()
    assert errors == []
    full_texts, reduced_texts = shown[full["id"]], shown[reduced["id"]]
    assert "standard" in full_texts and "coded at" not in full_texts
    assert "denoise" in reduced_texts and "coded at" in reduced_texts and f"{coded[0]}×{coded[1]}" in reduced_texts
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", time_text), time_text  # a date with the time
