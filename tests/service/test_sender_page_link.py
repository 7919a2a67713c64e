"""The upload page's link panel, as the server renders it (no JavaScript): goodput, round trip,
source, queued bytes, the latency target, and the auto rate choice when a target is set.
tests/e2e/test_upload_link_page.py checks the same page in a browser, with a quality=auto upload."""

from __future__ import annotations

import re

from tests.service.conftest import wait_status
from tests.service.test_sender_link import Link, client_for, down, smooth_png, upload


def field(html: str, name: str) -> str:
    match = re.search(rf'<dd id="link-{name}">([^<]*)</dd>', html)
    assert match, f"no #link-{name} on the page"
    return match.group(1)


def test_the_page_shows_a_pinned_link_and_its_backlog(tmp_path, tiny_models_dir):
    with client_for(tmp_path, tiny_models_dir, down(), link_kbps=8, latency_target_s=5) as client:
        (image,) = upload(client, smooth_png(), quality=0.5)
        html = client.get("/").text
    assert (field(html, "goodput"), field(html, "source"), field(html, "rtt")) == ("8.0 kbit/s", "pinned", "-")
    assert field(html, "queued") == f"{image['bytes']} B in 1 frame(s)"
    assert field(html, "drain") == f"{image['bytes'] / 1000:.1f} s"
    assert field(html, "target") == "5 s"
    assert re.search(r'<input type="radio" name="rate" value="auto" checked>', html)
    assert '<p class="budget" hidden></p>' in html  # the card template's slot for the budget line


def test_the_page_shows_a_measured_link(tmp_path, tiny_models_dir):
    with client_for(tmp_path, tiny_models_dir, Link(bytes_per_s=4000)) as client:
        before = client.get("/").text
        (image,) = upload(client, smooth_png(), quality=1)
        wait_status(client, image["id"], "delivered")
        after = client.get("/").text
        rtt_ms = client.get("/v1/link").json()["rtt_s"] * 1000
    assert (field(before, "goodput"), field(before, "source")) == ("not measured yet", "none")
    assert field(before, "target").startswith("off (quality=auto needs LATENTWIRE_SENDER_LATENCY_TARGET_S)")
    assert 'value="auto"' not in before  # no target: no auto choice, quality is the default
    assert re.search(r'<input type="radio" name="rate" value="quality" checked>', before)
    assert field(after, "source") == "measured"
    assert float(field(after, "goodput").split()[0]) > 0
    assert field(after, "rtt") == f"{rtt_ms:.0f} ms"
    assert field(after, "queued") == "0 B in 0 frame(s)"
