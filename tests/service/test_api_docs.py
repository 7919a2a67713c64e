"""Both services in process: /docs loads only files the app serves itself (no CDN), /redoc is
off, /favicon.ico is an icon, and /metrics is an operation of the OpenAPI schema. The browser
check that /docs renders offline is in tests/e2e/test_browser.py."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from receiver.app import create_app as create_receiver
from sender.app import create_app as create_sender
from tests.service.conftest import TestClient, sender_settings, storing_receiver

# Every URL the page names: src, href and Swagger UI's `url: '...'` (the schema it fetches).
_REFERENCE = re.compile(r"""(?:src|href)="([^"]+)"|url: ?'([^']+)'""")


@pytest.fixture(params=["sender", "receiver"])
def client(request, tmp_path, tiny_models_dir, receiver_settings):
    if request.param == "sender":
        app = create_sender(sender_settings(tmp_path / "sender", tiny_models_dir), transport=storing_receiver())
    else:
        app = create_receiver(receiver_settings)
    with TestClient(app) as c:
        yield c


def test_docs_page_loads_only_files_the_app_serves(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    references = [a or b for a, b in _REFERENCE.findall(r.text)]
    assert sorted(references) == ["/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css",
                                  "/favicon.ico", "/openapi.json"]
    assert "http://" not in r.text and "https://" not in r.text  # no CDN
    assert '"validatorUrl": null' in r.text  # else off localhost it asks an online validator for a badge
    for ref in references:
        asset = client.get(ref)
        assert asset.status_code == 200 and len(asset.content) > 1000, ref
    assert client.get("/redoc").status_code == 404  # ReDoc always loads its logo from the web


def test_favicon_is_an_icon(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/x-icon"
    icon = Image.open(io.BytesIO(r.content))
    assert icon.format == "ICO" and icon.size == (32, 32)


def test_metrics_is_in_the_schema_and_the_docs_pages_are_not(client):
    paths = client.app.openapi()["paths"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert not {"/docs", "/redoc", "/favicon.ico"} & set(paths)
