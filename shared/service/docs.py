"""/docs that work with no internet, on both services: Swagger UI with its script and style
served by the app itself (the fastapi-offline package's copies, mounted at /docs/assets) and
/favicon.ico. FastAPI's own /docs and /redoc load their files from a CDN, so each app turns them
off (``docs_url=None, redoc_url=None``) and calls ``install_docs``. ReDoc stays off: it always
fetches its logo from the web.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles


def install_docs(app: FastAPI, favicon: Path) -> None:
    """GET /docs (Swagger UI of /openapi.json), /docs/assets/* (its files), /favicon.ico (``favicon``)."""
    app.mount("/docs/assets", StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")
    router = APIRouter()

    @router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        """validatorUrl off: served from any host but localhost, Swagger UI would load a badge from
        an online validator and hand it the schema's URL."""
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=root + request.app.openapi_url, title=f"{request.app.title} API",
                                   swagger_js_url=request.url_for("docs-assets", path="swagger-ui-bundle.js").path,
                                   swagger_css_url=request.url_for("docs-assets", path="swagger-ui.css").path,
                                   swagger_favicon_url=request.url_for("favicon").path,
                                   swagger_ui_parameters={"validatorUrl": None})

    @router.get("/favicon.ico", name="favicon", response_class=FileResponse, include_in_schema=False)
    async def favicon_ico() -> FileResponse:
        return FileResponse(favicon, media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"})

    app.include_router(router)
