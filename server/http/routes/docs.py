"""GET /docs (Swagger UI) and /redoc (ReDoc), served from local files: no CDN, so the API docs
work on a host without internet access.

FastAPI's own pages load their scripts from a CDN. Here the scripts and styles come from the
`fastapi-offline` package (it ships Swagger UI's and ReDoc's built files), served at
/static-docs.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
PREFIX = "/static-docs"

router = APIRouter(include_in_schema=False)


def _root(request: Request) -> str:
    return request.scope.get("root_path", "")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{root}{PREFIX}/favicon.png",
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{PREFIX}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{PREFIX}/favicon.png",
        with_google_fonts=False,
    )


def mount_assets(app: FastAPI) -> None:
    """Serve the Swagger UI and ReDoc files at /static-docs."""
    app.mount(PREFIX, StaticFiles(directory=ASSETS), name="static-docs")
