"""Headless Chromium on the sender's upload page with a latency target: the link panel shows the
link and follows it (GET /v1/link polled every 2 s), a quality=auto upload's card says which
budget was chosen and why, and a max_bytes upload's card says whether its budget bound."""

from __future__ import annotations


import httpx
import pytest

from tests.e2e.conftest import png_bytes, started, tiny_pair


@pytest.fixture
def auto_services(tmp_path, tiny_models_dir):
    """The pair with a 5 s latency target, so quality=auto is the page's default rate."""
    env = {"LATENTWIRE_SENDER_LATENCY_TARGET_S": "5"}
    with started(tiny_pair(tmp_path / "services", tiny_models_dir, env)) as pair:
        yield pair


def kib(n: int) -> str:
    """sender.js's byte count."""
    return f"{n / 1024:.1f} KiB" if n >= 10240 else f"{n} B"


def _submit(page, path) -> str:
    before = page.locator("[data-id]").count()
    page.set_input_files("input[type=file]", str(path))
    page.locator("form [type=submit], form button").first.click()
    page.wait_for_function(f"document.querySelectorAll('[data-id]').length > {before}", timeout=30_000)
    return page.locator("[data-id]").first.get_attribute("data-id")


def test_the_link_panel_and_the_auto_budget(auto_services, browser, tmp_path):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(auto_services.sender.url + "/")
    assert page.locator("#link-source").inner_text() == "none"
    assert page.locator("#link-goodput").inner_text() == "not measured yet"
    assert page.locator("#link-target").inner_text() == "5 s"
    assert page.is_checked("input[name=rate][value=auto]")

    path = tmp_path / "auto.png"
    path.write_bytes(png_bytes(96, 64, seed=21))
    image_id = _submit(page, path)
    record = httpx.get(f"{auto_services.sender.url}/v1/images/{image_id}").json()
    budget = page.locator(f'[data-id="{image_id}"] .budget')
    assert budget.is_visible()
    text = budget.inner_text()
    b = record["budget"]
    assert b["reason"] == "ceiling"  # 64 kbit/s x 5 s is far more than the tiny model's quality 1
    assert text.startswith(f"auto budget {kib(b['bytes'])}: not binding: quality 1 fitted in the link's share; ")
    assert f"link {b['link_kbps']:g} kbit/s ({b['link_source']})" in text
    assert f"of a {b['target_s']:g} s target" in text
    # Once delivered, the panel shows the measured link without a reload (it polls /v1/link).
    page.wait_for_function("document.getElementById('link-source').textContent === 'measured'", timeout=15_000)
    assert page.locator("#link-goodput").inner_text().endswith(" kbit/s")
    assert page.locator("#link-rtt").inner_text().endswith(" ms")
    assert page.locator("#link-queued").inner_text().endswith(" frame(s)")

    page.check("input[name=rate][value=max_bytes]")
    page.fill("#max-bytes", str(10**9))
    path = tmp_path / "huge.png"
    path.write_bytes(png_bytes(96, 64, seed=22))
    image_id = _submit(page, path)
    assert page.locator(f'[data-id="{image_id}"] .budget').inner_text() == (
        f"byte budget {kib(10**9)}: not binding (the best stream fits under it)")
    assert errors == []
    page.close()
